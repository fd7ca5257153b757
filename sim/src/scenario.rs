//! Scenarios are data: `scenarios/*.toml` files describe the cluster, the workload and the
//! faults of a simulation, so new situations are written as files, not code.
//!
//! A scenario names the cluster size, how long the workload runs (in simulated seconds),
//! what the clients do (how many, which operations in which proportions, over how many
//! keys, with how much think time) and which faults are injected, how often and for how
//! long. Every random choice a run makes (which operation, which member, when a fault
//! strikes) is drawn from generators seeded from the run's seed, so one seed replays one
//! run exactly.
//!
//! Clock drift is simulated per member: madsim keeps one clock for the whole simulation,
//! and detcd's runtime seam (`detcd::rt`) runs each member's timers and `now` on a clock
//! that goes faster or slower than it, as a drifting oscillator does.

use serde::{Deserialize, Serialize};

/// One simulation scenario, as a `scenarios/*.toml` file describes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short name, used in reports.
    pub name: String,
    /// The default seed (a command-line seed overrides it).
    pub seed: u64,
    /// How many members the cluster has.
    pub members: usize,
    /// How long the clients issue operations and faults are injected, in simulated
    /// seconds; afterwards every fault is healed and the cluster must converge.
    #[serde(default = "default_duration_s")]
    pub duration_s: u64,
    /// What the clients do.
    pub workload: Workload,
    /// Network conditions for the whole run.
    #[serde(default)]
    pub network: Network,
    /// What goes wrong, and how often.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Whether faults of different entries may be active at once. By default one fault
    /// is active at a time; with overlap each entry follows its own schedule, so a crash
    /// can strike during a partition. A member killed by two faults comes back when the
    /// last of them heals, and a link cut by two partitions is restored likewise; two
    /// clock drifts of one member are the exception (the first heal restores its rate).
    #[serde(default)]
    pub overlapping_faults: bool,
    /// Planned faults that are not injected, by their index in the schedule the seed
    /// draws (as `detcd-sim run` lists it). `detcd-sim shrink` writes this to remove single
    /// faults from a failing run without changing anything else it draws.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_faults: Vec<usize>,
}

fn default_duration_s() -> u64 {
    10
}

/// The client workload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// How many puts the smoke test's single sequential client issues (the explorer's
    /// clients run for [`Scenario::duration_s`] instead).
    #[serde(default)]
    pub writes: u32,
    /// How many distinct keys the operations go to.
    pub keys: u32,
    /// Simulated think time between two operations of a client is drawn from
    /// `0..=think_time_max_ms`.
    #[serde(default)]
    pub think_time_max_ms: u64,
    /// How many concurrent clients the explorer runs.
    #[serde(default = "default_clients")]
    pub clients: u32,
    /// How long a client waits for an answer before recording the outcome as unknown,
    /// in simulated milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// The TTL of the leases the clients grant, in seconds.
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: i64,
    /// The relative weights of the operations.
    #[serde(default)]
    pub mix: Mix,
    /// How many watchers record their streams for the watch checker. The first two watch
    /// every key (and pin the order of writes for the linearizability checker); the
    /// others watch a few keys, some with filters.
    #[serde(default = "default_watchers")]
    pub watchers: u32,
    /// How long a watcher sleeps after each response it reads, in simulated
    /// milliseconds: a slow reader that the server must not drop events for.
    #[serde(default)]
    pub watch_read_delay_ms: u64,
}

fn default_watchers() -> u32 {
    2
}

fn default_clients() -> u32 {
    3
}

fn default_request_timeout_ms() -> u64 {
    3_000
}

fn default_lease_ttl_s() -> i64 {
    30
}

/// Relative weights of the operations a client issues; an operation of weight 0 is never
/// issued.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// A linearizable read of one key.
    #[serde(default)]
    pub get: u32,
    /// A linearizable read of every key, with a small limit.
    #[serde(default)]
    pub range: u32,
    /// A put of one key.
    #[serde(default)]
    pub put: u32,
    /// A delete of one key.
    #[serde(default)]
    pub delete: u32,
    /// A compare-and-swap txn: if the key's mod revision is the one last seen, put it,
    /// else read it.
    #[serde(default)]
    pub txn: u32,
    /// A lease grant (with a client-chosen id).
    #[serde(default)]
    pub lease_grant: u32,
    /// A put attached to one of the client's leases.
    #[serde(default)]
    pub lease_put: u32,
    /// A revoke of one of the client's leases.
    #[serde(default)]
    pub lease_revoke: u32,
    /// One renewal of one of the client's leases.
    #[serde(default)]
    pub lease_keepalive: u32,
    /// A compaction at a revision the client has seen.
    #[serde(default)]
    pub compact: u32,
    /// A serializable read of one key (served from the member's local state, so it may be
    /// stale) recorded as if it were linearizable. This tests the explorer itself: with it
    /// and a partition the checker must find stale reads. No real scenario uses it.
    #[serde(default)]
    pub serializable_get: u32,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            get: 30,
            range: 10,
            put: 30,
            delete: 5,
            txn: 15,
            lease_grant: 2,
            lease_put: 4,
            lease_revoke: 2,
            lease_keepalive: 0,
            compact: 2,
            serializable_get: 0,
        }
    }
}

impl Mix {
    /// The weights in a fixed order, with the operation names, for drawing and reports.
    pub fn weights(&self) -> [(&'static str, u32); 11] {
        [
            ("get", self.get),
            ("range", self.range),
            ("put", self.put),
            ("delete", self.delete),
            ("txn", self.txn),
            ("lease_grant", self.lease_grant),
            ("lease_put", self.lease_put),
            ("lease_revoke", self.lease_revoke),
            ("lease_keepalive", self.lease_keepalive),
            ("compact", self.compact),
            ("serializable_get", self.serializable_get),
        ]
    }
}

/// Network conditions for the whole run (madsim's `NetSim` configuration).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The probability that a packet is lost (connections retransmit, so a loss is a
    /// delay on a stream and a failed attempt on a connect).
    #[serde(default)]
    pub packet_loss_rate: f64,
    /// The one-way latency of a packet is drawn from `latency_ms[0]..latency_ms[1]`;
    /// absent means madsim's default (1 to 10 ms).
    #[serde(default)]
    pub latency_ms: Option<[u64; 2]>,
}

/// The kinds of faults a scenario can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Kills a random member, and restarts it when the fault heals.
    KillRandom,
    /// Kills the current leader, and restarts it when the fault heals.
    KillLeader,
    /// Splits the members into two random groups that cannot talk to each other.
    Partition,
    /// Cuts the links from one random group of members to the others, in one direction
    /// only (messages the other way still arrive).
    OneWayPartition,
    /// Cuts the leader off from every other member (clients can still reach it).
    IsolateLeader,
    /// Kills a majority of the members, and restarts them when the fault heals.
    QuorumLoss,
    /// Raises packet loss and latency for every link (clients' too) while it lasts.
    NetDegrade,
    /// Kills a random member and crashes its disk, losing (or tearing) every write that
    /// was not yet fsynced; the member restarts from what survived.
    DiskCrash,
    /// Makes a random member's fsyncs slow while it lasts.
    SlowDisk,
    /// Flips a byte in the middle of a random member's WAL while it is down, then
    /// restarts it: the member must refuse to start (a corrupt record is never taken for
    /// a torn tail, nor served), and is then replaced as in `replace-member`.
    CorruptWal,
    /// Replaces a random member by a new one on the same machine, as an operator replaces
    /// a failed disk: the member is removed from the cluster (MemberRemove through the
    /// leader) and stopped; when the fault heals, a new member with an empty data
    /// directory is added (MemberAdd) and joins. The clients' address for it stays the
    /// same.
    ReplaceMember,
    /// Makes a random member's clock run fast or slow by up to `drift_ppm` while it lasts:
    /// its heartbeats, election timeouts, lease expiry checks and request timeouts follow.
    ClockDrift,
}

/// One kind of fault and how often it strikes. Unless [`Scenario::overlapping_faults`] is
/// set, the injector handles one fault at a time: it picks the fault that is due first,
/// maybe injects it, holds it, heals it, and schedules that fault's next opportunity.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// What goes wrong.
    pub kind: FaultKind,
    /// The first opportunity comes this long after the workload starts, in simulated
    /// milliseconds.
    #[serde(default = "default_start_ms")]
    pub start_ms: u64,
    /// The gap from one opportunity (or from the heal of the previous injection) to the
    /// next is drawn from this range, in simulated milliseconds.
    pub every_ms: [u64; 2],
    /// The probability that an opportunity injects the fault.
    #[serde(default = "default_probability")]
    pub probability: f64,
    /// How long the fault lasts before it is healed is drawn from this range, in
    /// simulated milliseconds.
    pub hold_ms: [u64; 2],
    /// For `net-degrade`: the packet loss rate while it lasts.
    #[serde(default)]
    pub packet_loss_rate: f64,
    /// For `net-degrade`: the latency range while it lasts, in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<[u64; 2]>,
    /// For `slow-disk`: the fsync latency while it lasts, in milliseconds.
    #[serde(default)]
    pub sync_delay_ms: u64,
    /// For `quorum-loss`: the majority loses power, so each of their disks also loses (or
    /// tears) what it had not fsynced, as in `disk-crash`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crash_disks: bool,
    /// For `clock-drift`: the most a member's clock gains or loses, in parts per million
    /// (50000 is 5%).
    #[serde(default)]
    pub drift_ppm: u64,
}

fn default_start_ms() -> u64 {
    1_000
}

fn default_probability() -> f64 {
    1.0
}

/// Why a scenario could not be loaded.
#[derive(Debug)]
pub struct ScenarioError(pub String);

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScenarioError {}

/// Checks that `range` is a non-empty `[low, high]` range.
fn check_range(name: &str, what: &str, range: [u64; 2]) -> Result<(), ScenarioError> {
    if range[0] > range[1] {
        return Err(ScenarioError(format!(
            "scenario {name}: {what} must be [low, high] with low <= high, not {range:?}"
        )));
    }
    Ok(())
}

/// Checks that `p` is a probability.
fn check_probability(name: &str, what: &str, p: f64) -> Result<(), ScenarioError> {
    if !(0.0..=1.0).contains(&p) {
        return Err(ScenarioError(format!(
            "scenario {name}: {what} must be between 0 and 1, not {p}"
        )));
    }
    Ok(())
}

impl Scenario {
    /// The most any member's clock may gain in this scenario, in parts per million.
    pub fn max_drift_ppm(&self) -> u64 {
        self.faults
            .iter()
            .filter(|f| f.kind == FaultKind::ClockDrift)
            .map(|f| f.drift_ppm)
            .max()
            .unwrap_or(0)
    }

    /// Parses a scenario from TOML text and checks that it makes sense.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario =
            toml::from_str(text).map_err(|e| ScenarioError(format!("scenario: {e}")))?;
        let name = &s.name;
        if s.members == 0 || s.members > 9 {
            return Err(ScenarioError(format!(
                "scenario {name}: members must be 1 to 9, not {}",
                s.members
            )));
        }
        if s.workload.keys == 0 {
            return Err(ScenarioError(format!(
                "scenario {name}: workload.keys must be at least 1"
            )));
        }
        if s.workload.clients == 0 || s.workload.clients > 64 {
            return Err(ScenarioError(format!(
                "scenario {name}: workload.clients must be 1 to 64, not {}",
                s.workload.clients
            )));
        }
        if s.duration_s == 0 || s.duration_s > 3_600 {
            return Err(ScenarioError(format!(
                "scenario {name}: duration_s must be 1 to 3600, not {}",
                s.duration_s
            )));
        }
        if s.workload.watchers > 64 {
            return Err(ScenarioError(format!(
                "scenario {name}: workload.watchers must be 0 to 64, not {}",
                s.workload.watchers
            )));
        }
        if s.workload.request_timeout_ms == 0 {
            return Err(ScenarioError(format!(
                "scenario {name}: workload.request_timeout_ms must be positive"
            )));
        }
        if s.workload.lease_ttl_s <= 0 {
            return Err(ScenarioError(format!(
                "scenario {name}: workload.lease_ttl_s must be positive"
            )));
        }
        let total: u64 = s
            .workload
            .mix
            .weights()
            .iter()
            .map(|(_, w)| u64::from(*w))
            .sum();
        if total > 1_000_000 {
            return Err(ScenarioError(format!(
                "scenario {name}: workload.mix weights must add up to at most 1000000"
            )));
        }
        if total == 0 {
            return Err(ScenarioError(format!(
                "scenario {name}: workload.mix gives every operation weight 0"
            )));
        }
        check_probability(name, "network.packet_loss_rate", s.network.packet_loss_rate)?;
        if let Some(l) = s.network.latency_ms {
            check_range(name, "network.latency_ms", l)?;
        }
        for (i, f) in s.faults.iter().enumerate() {
            let what = |field: &str| format!("faults[{i}].{field}");
            if f.kind == FaultKind::ClockDrift && (f.drift_ppm == 0 || f.drift_ppm > 500_000) {
                return Err(ScenarioError(format!(
                    "scenario {name}: {} must be 1 to 500000 for clock-drift, not {}",
                    what("drift_ppm"),
                    f.drift_ppm
                )));
            }
            check_range(name, &what("every_ms"), f.every_ms)?;
            check_range(name, &what("hold_ms"), f.hold_ms)?;
            check_probability(name, &what("probability"), f.probability)?;
            check_probability(name, &what("packet_loss_rate"), f.packet_loss_rate)?;
            if let Some(l) = f.latency_ms {
                check_range(name, &what("latency_ms"), l)?;
            }
            if f.every_ms[1] == 0 {
                return Err(ScenarioError(format!(
                    "scenario {name}: {} must allow a positive gap",
                    what("every_ms")
                )));
            }
            let needs_two = matches!(
                f.kind,
                FaultKind::Partition
                    | FaultKind::OneWayPartition
                    | FaultKind::IsolateLeader
                    | FaultKind::QuorumLoss
                    | FaultKind::ReplaceMember
                    | FaultKind::CorruptWal
            );
            if needs_two && s.members < 2 {
                return Err(ScenarioError(format!(
                    "scenario {name}: faults[{i}] ({:?}) needs at least 2 members",
                    f.kind
                )));
            }
        }
        Ok(s)
    }

    /// Loads a scenario from a file path.
    pub fn load_path(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError(format!("{}: {e}", path.display())))?;
        Scenario::parse(&text).map_err(|e| ScenarioError(format!("{}: {e}", path.display())))
    }

    /// The repository's `scenarios/` directory.
    pub fn dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("scenarios")
    }

    /// Loads `scenarios/NAME.toml` from the repository.
    pub fn load(name: &str) -> Result<Scenario, ScenarioError> {
        Scenario::load_path(&Scenario::dir().join(format!("{name}.toml")))
    }

    /// The names of every scenario shipped in `scenarios/`, sorted.
    pub fn shipped() -> Result<Vec<String>, ScenarioError> {
        let dir = Scenario::dir();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| ScenarioError(format!("{}: {e}", dir.display())))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(String::from))?
            })
            .collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smoke_scenario_loads() {
        let s = Scenario::load("smoke").unwrap();
        assert_eq!(s.name, "smoke");
        assert_eq!(s.members, 1);
        assert_eq!(s.workload.writes, 50);
        assert_eq!(s.workload.keys, 7);
    }

    #[test]
    fn every_shipped_scenario_loads() {
        let names = Scenario::shipped().unwrap();
        assert!(names.len() >= 11, "{names:?}");
        for name in names {
            let s = Scenario::load(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.name, name, "a scenario's name is its file name");
        }
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        let e = Scenario::parse(
            "name = \"x\"\nseed = 1\nmembers = 0\n[workload]\nwrites = 1\nkeys = 1\n",
        )
        .unwrap_err();
        assert!(e.0.contains("members must be 1 to 9"), "{e}");
        let e = Scenario::parse(
            "name = \"x\"\nseed = 1\nmembers = 1\nbogus = 2\n[workload]\nwrites = 1\nkeys = 1\n",
        )
        .unwrap_err();
        assert!(e.0.contains("bogus"), "{e}");
        let e = Scenario::parse("name = \"x\"").unwrap_err();
        assert!(e.0.contains("missing field"), "{e}");
        let base = "name = \"x\"\nseed = 1\nmembers = 3\n[workload]\nkeys = 1\n";
        let e = Scenario::parse(&format!(
            "{base}[[faults]]\nkind = \"clock-drift\"\nevery_ms = [1, 2]\nhold_ms = [1, 2]\n"
        ))
        .unwrap_err();
        assert!(e.0.contains("drift_ppm"), "{e}");
        let e = Scenario::parse(&format!(
            "{base}[[faults]]\nkind = \"partition\"\nevery_ms = [5, 2]\nhold_ms = [1, 2]\n"
        ))
        .unwrap_err();
        assert!(e.0.contains("low <= high"), "{e}");
        let e = Scenario::parse(&format!(
            "{base}[[faults]]\nkind = \"meteor\"\nevery_ms = [1, 2]\nhold_ms = [1, 2]\n"
        ))
        .unwrap_err();
        assert!(e.0.contains("unknown variant"), "{e}");
        let e = Scenario::parse(&format!("{base}[network]\npacket_loss_rate = 2.0\n")).unwrap_err();
        assert!(e.0.contains("between 0 and 1"), "{e}");
    }
}

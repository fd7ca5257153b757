//! Injecting a scenario's faults on a schedule drawn from the seed, and healing them.
//!
//! The whole schedule (when each fault strikes, for how long, and the random number that
//! picks its target) is drawn before the run starts, so it can be printed first and a
//! seed names it completely. Targets that depend on the cluster's state (the leader) are
//! looked up when the fault strikes.

use std::sync::Arc;
use std::time::Duration;

use detcd::pb::etcdserverpb::cluster_client::ClusterClient;
use detcd::pb::etcdserverpb::{MemberAddRequest, MemberRemoveRequest};
use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::time::{sleep, timeout, Instant};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use detcd::storage::disk::Disk;

use crate::harness::SimMember;
use crate::report::FaultSpan;
use crate::scenario::{FaultKind, Network, Scenario};
use crate::workload::RunCtx;

/// The length of a WAL segment's records: the segment is preallocated, its records
/// followed by zeros up to its size. (A last record that ends in zero bytes loses them
/// here, which moves the corrupted byte by as much at most.) Compared a block at a time,
/// since the zeros run to 64 MiB and the simulator is built unoptimised.
fn data_len_bytes(data: &[u8]) -> u64 {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut end = data.len();
    while end > 0 {
        let start = end.saturating_sub(ZEROS.len());
        if data[start..end] != ZEROS[..end - start] {
            break;
        }
        end = start;
    }
    data[..end]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// One planned injection.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// When it strikes, in simulated milliseconds after the start.
    pub at_ms: u64,
    /// How long it lasts, in milliseconds (cut short at the end of the run).
    pub hold_ms: u64,
    /// The index of the scenario's fault entry.
    pub fault: usize,
    /// What it does.
    pub kind: FaultKind,
    /// The random number that picks its targets.
    pub pick: u64,
}

/// The faults of `scenario` under `seed` that are injected: [`plan_all`] without the
/// ones the scenario skips.
pub fn plan(scenario: &Scenario, seed: u64) -> Vec<Planned> {
    plan_all(scenario, seed)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !scenario.skip_faults.contains(i))
        .map(|(_, p)| p)
        .collect()
}

/// Draws the schedule of `scenario` under `seed`, in time order: after each opportunity
/// (injected or skipped by its probability) the entry's next one comes a gap later,
/// counted from the heal. Faults strike one at a time unless the scenario lets them
/// overlap, in which case each entry keeps its own timeline.
pub fn plan_all(scenario: &Scenario, seed: u64) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17_5eed);
    let end_ms = scenario.duration_s * 1000;
    let mut next: Vec<u64> = scenario.faults.iter().map(|f| f.start_ms).collect();
    let mut out = Vec::new();
    let mut now = 0u64;
    // Bounded: every opportunity moves time forward by at least 1 ms.
    while let Some((i, &at)) = next.iter().enumerate().min_by_key(|(_, t)| **t) {
        let at = if scenario.overlapping_faults {
            at
        } else {
            at.max(now)
        };
        if at >= end_ms || out.len() >= 10_000 {
            break;
        }
        let f = &scenario.faults[i];
        let mut free_at = at;
        if rng.gen_bool(f.probability) {
            let hold_ms = rng.gen_range(f.hold_ms[0]..=f.hold_ms[1]);
            out.push(Planned {
                at_ms: at,
                hold_ms,
                fault: i,
                kind: f.kind,
                pick: rng.gen(),
            });
            free_at = (at + hold_ms).min(end_ms);
        }
        now = free_at;
        next[i] = free_at + rng.gen_range(f.every_ms[0]..=f.every_ms[1]).max(1);
    }
    out
}

/// How many injected faults currently hold each member down. With overlapping faults a
/// member may be killed by two at once; it comes back when the last of them heals.
/// Restarting it only then matters beyond the semantics: madsim 0.2's `restart` of a
/// running node starts a second incarnation without closing the first one's sockets, so
/// its peers keep talking to the dead incarnation and the member never rejoins. It also
/// counts the partitions cutting each link, for the same reason.
///
/// Every kill also crashes the member's backend: batches it had not synced survive only
/// as a random prefix, as with detcd's background backend commit (`storage::pipelined`)
/// and sled's own unflushed writes. The third field counts kills, seeding those crashes.
#[derive(Default)]
pub struct DownCounts(
    std::sync::Mutex<Vec<usize>>,
    LinkCuts,
    std::sync::atomic::AtomicU64,
);

/// How many active partitions cut each one-way link, so that with overlapping faults a
/// heal restores a link only when no other partition still cuts it.
#[derive(Default)]
struct LinkCuts(std::sync::Mutex<std::collections::BTreeMap<(usize, usize), usize>>);

impl DownCounts {
    /// Counts one more partition cutting the link `a -> b`; true if it was open (the
    /// caller then clogs it).
    fn cut(&self, a: usize, b: usize) -> bool {
        let mut c = self.1 .0.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry((a, b)).or_default();
        *n += 1;
        *n == 1
    }

    /// Counts one partition fewer cutting `a -> b`; true if none is left (the caller then
    /// unclogs it).
    fn mend(&self, a: usize, b: usize) -> bool {
        let mut c = self.1 .0.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry((a, b)).or_default();
        *n = n.saturating_sub(1);
        *n == 0
    }

    fn counts(&self, n: usize) -> std::sync::MutexGuard<'_, Vec<usize>> {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let len = n.max(c.len());
        c.resize(len, 0);
        c
    }

    /// Kills member `i` unless a fault already holds it down.
    fn kill(&self, members: &[SimMember], i: usize) {
        let mut c = self.counts(members.len());
        if c[i] == 0 {
            Handle::current().kill(members[i].node.id());
            self.crash_backend(members, i);
        }
        c[i] += 1;
    }

    /// Crashes member `i`'s backend after its node was killed.
    fn crash_backend(&self, members: &[SimMember], i: usize) {
        let kills = self.2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        members[i].crash_backend(kills.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64);
    }

    /// Restarts member `i` if no other fault still holds it down; the node is killed
    /// first, which closes its sockets (see above).
    fn restart(&self, members: &[SimMember], i: usize) {
        let mut c = self.counts(members.len());
        c[i] = c[i].saturating_sub(1);
        if c[i] == 0 {
            let handle = Handle::current();
            handle.kill(members[i].node.id());
            self.crash_backend(members, i);
            handle.restart(members[i].node.id());
        }
    }
}

/// How to undo an injected fault.
enum Heal {
    Restart(Vec<usize>),
    Unclog(Vec<(usize, usize)>),
    Network,
    Disk(usize),
    Clock(usize),
    /// Add a new member in place of the removed one and start it.
    Rejoin(usize),
    /// Remove the member, then add a new one in its place and start it.
    Replace(usize),
    Nothing,
}

/// How long a member whose WAL was corrupted has to refuse to start.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits for member `victim`, restarted on a corrupted WAL, to refuse to start; records a
/// failure if it serves instead, or says nothing within [`REFUSAL_TIMEOUT`].
async fn await_refusal(ctx: &RunCtx, members: &[SimMember], victim: usize) -> String {
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    let m = &members[victim];
    while Instant::now() < deadline {
        if let Some(e) = m.last_start_error() {
            // Either the bad record itself is found, or (a corrupted length that reads as
            // a torn tail) the log turns out shorter than what the backend applied.
            if e.contains("WAL corrupt") || e.contains("lost committed entries") {
                return format!("refused to start ({})", short(&e));
            }
        }
        if crate::client::status_of(&m.client_url()).await.is_some() {
            ctx.lock().failures.push(format!(
                "{} started and served on a WAL with a corrupted record",
                m.name
            ));
            return "SERVED".to_string();
        }
        sleep(Duration::from_millis(100)).await;
    }
    let why = m.last_start_error().unwrap_or_else(|| "nothing".into());
    ctx.lock().failures.push(format!(
        "{} neither refused to start nor served within {REFUSAL_TIMEOUT:?} on a corrupted \
         WAL (last start error: {why})",
        m.name
    ));
    "no verdict".to_string()
}

/// The first 80 characters of `s`, for trace lines.
fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// How long the injector keeps trying a membership change.
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks member `via` to do a membership change, bounded.
async fn cluster_client(
    members: &[SimMember],
    via: usize,
) -> Result<ClusterClient<tonic::transport::Channel>, String> {
    Ok(ClusterClient::new(
        crate::client::channel(&members[via].client_url()).await?,
    ))
}

/// Removes member `victim` through the leader (which must be another member); returns the
/// member it went through.
async fn remove_member(members: &[SimMember], victim: usize) -> Result<usize, String> {
    let leader = find_leader(members).await.ok_or("no leader")?;
    let via = if leader == victim {
        // etcd lets the leader remove itself, but then the request's answer races its
        // stepping down; going through another member keeps the outcome certain.
        (0..members.len())
            .find(|&i| i != victim)
            .ok_or("no other member")?
    } else {
        leader
    };
    let id = crate::client::id_of(&members[victim]);
    let mut c = cluster_client(members, via).await?;
    match timeout(
        Duration::from_secs(5),
        c.member_remove(MemberRemoveRequest { id }),
    )
    .await
    {
        Ok(Ok(_)) => Ok(via),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err("member remove timed out".into()),
    }
}

/// Adds a new member with the peer URL of `victim`'s machine, retrying until it works or
/// [`MEMBERSHIP_CHANGE_TIMEOUT`] passes, then boots the machine as that new member.
async fn rejoin(ctx: &RunCtx, members: &[SimMember], down: &DownCounts, victim: usize) {
    let deadline = Instant::now() + MEMBERSHIP_CHANGE_TIMEOUT;
    let peer_url = crate::harness::member_peer_url(
        members[victim]
            .ip
            .to_string()
            .rsplit('.')
            .next()
            .and_then(|d| d.parse::<usize>().ok())
            .unwrap_or(1)
            - 1,
    );
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let via = find_leader(members).await.unwrap_or(0);
        let added = match cluster_client(members, via).await {
            Err(e) => Err(e),
            Ok(mut c) => match timeout(
                Duration::from_secs(5),
                c.member_add(MemberAddRequest {
                    peer_ur_ls: vec![peer_url.clone()],
                    is_learner: false,
                }),
            )
            .await
            {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(s.message().to_string()),
                Err(_) => Err("member add timed out".into()),
            },
        };
        match added {
            Ok(r) => {
                let id = r.member.map_or(0, |m| m.id);
                // As etcdctl prints it for the new member's flags: every member under its
                // name (empty for one that has not started yet), the new one under its own.
                let mut initial_cluster: Vec<(String, Vec<String>)> = r
                    .members
                    .iter()
                    .map(|m| {
                        let name = if m.id == id {
                            members[victim].name.clone()
                        } else {
                            m.name.clone()
                        };
                        (name, m.peer_ur_ls.clone())
                    })
                    .collect();
                initial_cluster.sort();
                members[victim].rejoin_as_new(id, initial_cluster);
                ctx.event(format!(
                    "{} rejoins as new member {id:x} (through {})",
                    members[victim].name, members[via].name
                ));
                down.restart(members, victim);
                // The heal lasts until the new member serves, so that the next fault
                // does not strike a cluster still waiting for it (a member that is added
                // but not running counts against the quorum).
                while Instant::now() < deadline {
                    if crate::client::status_of(&members[victim].client_url())
                        .await
                        .is_some()
                    {
                        ctx.event(format!("{} serves as the new member", members[victim].name));
                        return;
                    }
                    sleep(Duration::from_millis(200)).await;
                }
                ctx.lock().failures.push(format!(
                    "the new member on {}'s machine did not serve within \
                     {MEMBERSHIP_CHANGE_TIMEOUT:?} of its addition",
                    members[victim].name
                ));
                return;
            }
            Err(e) => last_error = e,
        }
        sleep(Duration::from_millis(500)).await;
    }
    ctx.lock().failures.push(format!(
        "could not add a new member in place of {} within {MEMBERSHIP_CHANGE_TIMEOUT:?}: {last_error}",
        members[victim].name
    ));
}

/// The index of the member every reachable member names as leader, if any.
pub async fn find_leader(members: &[SimMember]) -> Option<usize> {
    for m in members {
        if let Some((_, leader)) = crate::client::status_of(&m.client_url()).await {
            if leader != 0 {
                return members
                    .iter()
                    .position(|x| crate::client::id_of(x) == leader);
            }
        }
    }
    None
}

fn names(members: &[SimMember], idx: &[usize]) -> String {
    idx.iter()
        .map(|&i| members[i].name.clone())
        .collect::<Vec<_>>()
        .join(",")
}

/// Sets the network's baseline conditions from the scenario.
pub fn set_network(net: &Network) {
    let (loss, latency) = (net.packet_loss_rate, net.latency_ms);
    NetSim::current().update_config(|c| {
        c.packet_loss_rate = loss;
        c.send_latency = match latency {
            Some([a, b]) => Duration::from_millis(a)..Duration::from_millis(b.max(a + 1)),
            None => madsim::net::Config::default().send_latency,
        };
    });
}

/// Injects `p`, returning how to heal it and a description.
async fn inject(
    ctx: &RunCtx,
    members: &[SimMember],
    down: &DownCounts,
    p: &Planned,
) -> (Heal, String) {
    let n = members.len();
    let mut rng = ChaCha8Rng::seed_from_u64(p.pick);
    let f = &ctx.scenario.faults[p.fault];
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let leader_or_random = |leader: Option<usize>| leader.unwrap_or(order[0]);
    match p.kind {
        FaultKind::KillRandom | FaultKind::KillLeader | FaultKind::DiskCrash => {
            let victim = if p.kind == FaultKind::KillLeader {
                leader_or_random(find_leader(members).await)
            } else {
                order[0]
            };
            down.kill(members, victim);
            let mut what = format!("{:?} {}", p.kind, members[victim].name);
            if p.kind == FaultKind::DiskCrash {
                let disk_seed = rng.gen();
                members[victim].disk.crash(disk_seed);
                what.push_str(&format!(" (disk crash seed {disk_seed})"));
            }
            (Heal::Restart(vec![victim]), what)
        }
        FaultKind::QuorumLoss => {
            let victims: Vec<usize> = order[..n / 2 + 1].to_vec();
            for &v in &victims {
                down.kill(members, v);
            }
            let mut what = format!("QuorumLoss killed {}", names(members, &victims));
            if f.crash_disks {
                // A power failure of the majority: every one of them loses what its disk
                // had not fsynced.
                for &v in &victims {
                    let disk_seed = rng.gen();
                    members[v].disk.crash(disk_seed);
                    what.push_str(&format!(
                        " ({} disk crash seed {disk_seed})",
                        members[v].name
                    ));
                }
            }
            (Heal::Restart(victims), what)
        }
        FaultKind::Partition | FaultKind::OneWayPartition | FaultKind::IsolateLeader => {
            let side: Vec<usize> = if p.kind == FaultKind::IsolateLeader {
                vec![leader_or_random(find_leader(members).await)]
            } else {
                let k = rng.gen_range(1..=n / 2);
                order[..k].to_vec()
            };
            let rest: Vec<usize> = (0..n).filter(|i| !side.contains(i)).collect();
            let net = NetSim::current();
            let mut links = Vec::new();
            for &a in &side {
                for &b in &rest {
                    links.push((a, b));
                    if p.kind != FaultKind::OneWayPartition {
                        links.push((b, a));
                    }
                }
            }
            for &(a, b) in &links {
                if down.cut(a, b) {
                    net.clog_link(members[a].node.id(), members[b].node.id());
                }
            }
            let arrow = if p.kind == FaultKind::OneWayPartition {
                "->"
            } else {
                "<->"
            };
            let what = format!(
                "{:?} {{{}}} {arrow} {{{}}}",
                p.kind,
                names(members, &side),
                names(members, &rest)
            );
            (Heal::Unclog(links), what)
        }
        FaultKind::NetDegrade => {
            let degraded = Network {
                packet_loss_rate: f.packet_loss_rate,
                latency_ms: f.latency_ms,
            };
            set_network(&degraded);
            (
                Heal::Network,
                format!(
                    "NetDegrade loss {} latency {:?} ms",
                    f.packet_loss_rate, f.latency_ms
                ),
            )
        }
        FaultKind::SlowDisk => {
            let m = order[0];
            members[m]
                .disk
                .set_sync_delay(Duration::from_millis(f.sync_delay_ms));
            (
                Heal::Disk(m),
                format!("SlowDisk {} fsync {} ms", members[m].name, f.sync_delay_ms),
            )
        }
        FaultKind::CorruptWal => {
            let victim = order[0];
            down.kill(members, victim);
            let m = &members[victim];
            let wal_dir = m.data_dir().join("member").join("wal");
            let disk: &dyn Disk = &m.disk;
            let target = disk
                .list_dir(&wal_dir)
                .ok()
                .and_then(|names| names.into_iter().find(|n| n.ends_with(".wal")))
                .map(|n| wal_dir.join(n))
                .and_then(|p| disk.read_file(&p).ok().map(|d| (p, data_len_bytes(&d))));
            let Some((path, len)) = target.filter(|(_, len)| *len >= 4096) else {
                down.restart(members, victim);
                return (
                    Heal::Nothing,
                    format!("CorruptWal of {} not done: no WAL long enough", m.name),
                );
            };
            // A quarter in: inside a record with complete records after it.
            let offset = len / 4 + rng.gen_range(0..len / 8);
            if let Err(e) = m.disk.corrupt(&path, offset) {
                down.restart(members, victim);
                return (
                    Heal::Nothing,
                    format!("CorruptWal of {} not done: {e}", m.name),
                );
            }
            down.restart(members, victim);
            let verdict = await_refusal(ctx, members, victim).await;
            let what = format!(
                "CorruptWal {} at byte {offset} of {}: {verdict}",
                m.name,
                path.display()
            );
            // An operator's remedy, when the fault heals: replace the member. Until then
            // it stays down.
            down.kill(members, victim);
            (Heal::Replace(victim), what)
        }
        FaultKind::ReplaceMember => {
            let victim = order[0];
            match remove_member(members, victim).await {
                Ok(via) => {
                    down.kill(members, victim);
                    (
                        Heal::Rejoin(victim),
                        format!(
                            "ReplaceMember removed {} (through {})",
                            members[victim].name, members[via].name
                        ),
                    )
                }
                Err(e) => (
                    Heal::Nothing,
                    format!("ReplaceMember of {} not done: {e}", members[victim].name),
                ),
            }
        }
        FaultKind::ClockDrift => {
            let m = order[0];
            let drift = rng.gen_range(1..=f.drift_ppm.max(1));
            let fast = rng.gen_bool(0.5);
            let rate_ppm = if fast {
                1_000_000 + drift
            } else {
                1_000_000 - drift
            };
            detcd::rt::set_clock_rate(members[m].node.id(), rate_ppm);
            (
                Heal::Clock(m),
                format!(
                    "ClockDrift {} runs {} by {drift} ppm",
                    members[m].name,
                    if fast { "fast" } else { "slow" }
                ),
            )
        }
    }
}

async fn heal(ctx: &RunCtx, members: &[SimMember], down: &DownCounts, h: Heal) {
    match h {
        Heal::Restart(v) => {
            for i in v {
                down.restart(members, i);
            }
        }
        Heal::Unclog(links) => {
            let net = NetSim::current();
            for (a, b) in links {
                if down.mend(a, b) {
                    net.unclog_link(members[a].node.id(), members[b].node.id());
                }
            }
        }
        Heal::Network => set_network(&ctx.scenario.network),
        Heal::Disk(m) => members[m].disk.set_sync_delay(Duration::ZERO),
        Heal::Clock(m) => detcd::rt::set_clock_rate(members[m].node.id(), 1_000_000),
        Heal::Rejoin(m) => rejoin(ctx, members, down, m).await,
        Heal::Replace(m) => {
            let deadline = Instant::now() + MEMBERSHIP_CHANGE_TIMEOUT;
            loop {
                match remove_member(members, m).await {
                    Ok(via) => {
                        ctx.event(format!(
                            "{} removed through {}",
                            members[m].name, members[via].name
                        ));
                        rejoin(ctx, members, down, m).await;
                        break;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        ctx.lock().failures.push(format!(
                            "could not remove {} within {MEMBERSHIP_CHANGE_TIMEOUT:?}: {e}",
                            members[m].name
                        ));
                        break;
                    }
                    Err(_) => sleep(Duration::from_millis(500)).await,
                }
            }
        }
        Heal::Nothing => {}
    }
}

/// Runs the schedule: each planned fault is injected at its time, held, and healed
/// (at the latest when the run's duration is over), and recorded in the trace.
pub async fn run_faults(ctx: Arc<RunCtx>, members: Arc<Vec<SimMember>>, schedule: Vec<Planned>) {
    let down = Arc::new(DownCounts::default());
    if !ctx.scenario.overlapping_faults {
        return run_sequence(ctx, members, down, schedule).await;
    }
    // Each entry's faults follow one another; different entries' run side by side.
    let mut tasks = Vec::new();
    for i in 0..ctx.scenario.faults.len() {
        let mine: Vec<Planned> = schedule.iter().filter(|p| p.fault == i).cloned().collect();
        tasks.push(madsim::task::spawn(run_sequence(
            ctx.clone(),
            members.clone(),
            down.clone(),
            mine,
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Injects, holds and heals each planned fault in turn.
async fn run_sequence(
    ctx: Arc<RunCtx>,
    members: Arc<Vec<SimMember>>,
    down: Arc<DownCounts>,
    schedule: Vec<Planned>,
) {
    let end = Duration::from_secs(ctx.scenario.duration_s);
    for p in schedule {
        let at = Duration::from_millis(p.at_ms);
        let now = ctx.start.elapsed();
        if at > now {
            sleep(at - now).await;
        }
        let start_ns = ctx.now_ns();
        let (h, what) = inject(&ctx, &members, &down, &p).await;
        ctx.event(format!("fault inject: {what}"));
        let until = (ctx.start.elapsed() + Duration::from_millis(p.hold_ms)).min(end);
        let now = ctx.start.elapsed();
        if until > now {
            sleep(until - now).await;
        }
        heal(&ctx, &members, &down, h).await;
        let end_ns = ctx.now_ns();
        ctx.event(format!("fault heal: {what}"));
        ctx.lock().faults.push(FaultSpan {
            start_ns,
            end_ns: Some(end_ns),
            description: what,
        });
    }
}

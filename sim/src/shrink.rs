//! Shrinking a failing run: make its scenario smaller, one step at a time, for as long as
//! the same seed still fails the same way, so that a person reads the smallest schedule
//! that shows the bug.
//!
//! Each step tries, in order: leaving out one planned fault (by its index in the schedule,
//! which leaves everything else the seed draws unchanged), dropping a whole fault entry,
//! halving the duration, removing the last client or watcher, and never issuing one kind of
//! operation. The first candidate that still fails the same way is kept and the search
//! starts over from it; shrinking ends when no candidate fails, or after a bounded number
//! of runs. This is plain Rust: the caller supplies how to run a scenario.

use crate::scenario::Scenario;

/// What kind of failure a run had, from its first failure message, so that shrinking
/// keeps the bug it started with rather than wandering to another, and so that
/// `detcd-sim explore` can name it (`ci/planted-bugs.sh` requires the kind each planted
/// bug must cause). One of "linearizability" (the clients' history is not linearizable),
/// "watch-guarantee" (a watch stream breaks etcd's watch guarantees), "watch-reconcile"
/// (the clients' history is linearizable, but in no order the watch events agree with),
/// "hashkv" (members disagree on HashKV after the heal), "lost-entries" (no progress
/// after the heal because a member cannot start: its WAL lost entries its backend had
/// applied; or raft finds that a member's log lost entries it had acknowledged), "progress" (no write or read succeeds after the heal, for another reason),
/// "panic" (the simulation panicked), "other", or "none" for no failure.
pub fn failure_class(failures: &[String]) -> &'static str {
    let Some(first) = failures.first() else {
        return "none";
    };
    if first.contains("not linearizable") {
        "linearizability"
    } else if first.contains("watch guarantee violation") {
        "watch-guarantee"
    } else if first.contains("watch events cannot be reconciled") {
        "watch-reconcile"
    } else if first.contains("HashKV at revision") {
        "hashkv"
    } else if first.contains("the WAL lost committed entries") || raft_log_lost(first) {
        "lost-entries"
    } else if first.contains("no progress") || first.contains("did not answer") {
        "progress"
    } else if first.contains("the simulation panicked") {
        "panic"
    } else {
        "other"
    }
}

/// Whether `failure` is raft's own detection of a member whose log lost entries it had
/// acknowledged: the leader's commit index lies beyond the member's last index (etcd's
/// "tocommit(N) is out of range [lastIndex(M)]. Was the raft log corrupted, truncated,
/// or lost?"). It shows when the member's backend lost the same entries in the crash, so
/// the restart's own check, backend ahead of WAL, cannot see it.
fn raft_log_lost(failure: &str) -> bool {
    failure.contains("the simulation panicked")
        && failure.contains("to_commit")
        && failure.contains("is out of range [last_index")
}

/// The smaller scenarios to try after `s`, each with a description of the step. `planned`
/// is how many faults the schedule of `s` has (skipped ones included).
pub fn candidates(s: &Scenario, planned: usize) -> Vec<(String, Scenario)> {
    let mut out = Vec::new();
    for i in 0..planned {
        if !s.skip_faults.contains(&i) {
            let mut c = s.clone();
            c.skip_faults.push(i);
            c.skip_faults.sort_unstable();
            out.push((format!("leave out planned fault {i}"), c));
        }
    }
    for j in 0..s.faults.len() {
        let mut c = s.clone();
        let kind = c.faults.remove(j).kind;
        // The schedule is drawn anew without the entry, so old indices mean nothing.
        c.skip_faults.clear();
        out.push((format!("drop fault entry {j} ({kind:?})"), c));
    }
    if s.duration_s > 1 {
        let mut c = s.clone();
        c.duration_s = s.duration_s.div_ceil(2);
        out.push((format!("shorten to {} s", c.duration_s), c));
    }
    if s.workload.clients > 1 {
        let mut c = s.clone();
        c.workload.clients -= 1;
        out.push((format!("{} clients", c.workload.clients), c));
    }
    if s.workload.watchers > 0 {
        let mut c = s.clone();
        c.workload.watchers -= 1;
        out.push((format!("{} watchers", c.workload.watchers), c));
    }
    let weights = s.workload.mix.weights();
    let live = weights.iter().filter(|(_, w)| *w > 0).count();
    if live > 1 {
        for (name, w) in weights {
            if w == 0 {
                continue;
            }
            let mut c = s.clone();
            let m = &mut c.workload.mix;
            let slot = match name {
                "get" => &mut m.get,
                "range" => &mut m.range,
                "put" => &mut m.put,
                "delete" => &mut m.delete,
                "txn" => &mut m.txn,
                "lease_grant" => &mut m.lease_grant,
                "lease_put" => &mut m.lease_put,
                "lease_revoke" => &mut m.lease_revoke,
                "lease_keepalive" => &mut m.lease_keepalive,
                "compact" => &mut m.compact,
                _ => &mut m.serializable_get,
            };
            *slot = 0;
            out.push((format!("no {name}"), c));
        }
    }
    out
}

/// The result of shrinking.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The smallest scenario found that still fails the same way.
    pub scenario: Scenario,
    /// The steps taken, in order.
    pub steps: Vec<String>,
    /// How many runs it took.
    pub runs: usize,
}

/// Shrinks `start` (which must fail): `planned` says how many faults a scenario's schedule
/// has, `fails` runs a scenario under the seed and says whether it fails the same way.
/// At most `max_runs` runs are made.
pub fn shrink(
    start: Scenario,
    planned: impl Fn(&Scenario) -> usize,
    mut fails: impl FnMut(&Scenario) -> bool,
    max_runs: usize,
) -> Shrunk {
    let mut current = start;
    let mut steps = Vec::new();
    let mut runs = 0;
    'outer: loop {
        for (what, candidate) in candidates(&current, planned(&current)) {
            if runs >= max_runs {
                break 'outer;
            }
            runs += 1;
            if fails(&candidate) {
                steps.push(what);
                current = candidate;
                continue 'outer;
            }
        }
        break;
    }
    Shrunk {
        scenario: current,
        steps,
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::FaultKind;

    fn scenario() -> Scenario {
        Scenario::parse(
            r#"
name = "t"
seed = 1
members = 3
duration_s = 16
[workload]
clients = 4
keys = 3
[[faults]]
kind = "kill-leader"
every_ms = [1000, 2000]
hold_ms = [100, 200]
[[faults]]
kind = "partition"
every_ms = [1000, 2000]
hold_ms = [100, 200]
"#,
        )
        .expect("scenario")
    }

    #[test]
    fn shrinking_keeps_only_what_the_failure_needs() {
        // A made-up bug: it shows when planned fault 3 of a partition entry is injected,
        // at least two clients run and puts are issued; each scenario plans 6 faults.
        let fails = |s: &Scenario| {
            s.faults.iter().any(|f| f.kind == FaultKind::Partition)
                && !s.skip_faults.contains(&3)
                && s.workload.clients >= 2
                && s.workload.mix.put > 0
                && s.duration_s >= 4
        };
        let out = shrink(scenario(), |_| 6, fails, 500);
        let s = &out.scenario;
        assert!(fails(s));
        assert_eq!(s.faults.len(), 1);
        assert_eq!(s.faults[0].kind, FaultKind::Partition);
        assert_eq!(s.skip_faults, vec![0, 1, 2, 4, 5]);
        assert_eq!(s.workload.clients, 2);
        assert_eq!(s.workload.watchers, 0);
        assert_eq!(s.duration_s, 4);
        let live: Vec<&str> = s
            .workload
            .mix
            .weights()
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(live, vec!["put"]);
        // Every step it reports was kept, and no candidate of the result still fails.
        assert!(!out.steps.is_empty());
        assert!(candidates(s, 6).iter().all(|(_, c)| !fails(c)));
    }

    #[test]
    fn shrunk_scenarios_are_written_as_loadable_toml() {
        // `shrink` saves its result as TOML; every shipped scenario, and one with skipped
        // faults, must read back as the same scenario.
        let mut all: Vec<Scenario> = Scenario::shipped()
            .expect("shipped scenarios")
            .iter()
            .map(|n| Scenario::load(n).expect("scenario"))
            .collect();
        let mut skipping = scenario();
        skipping.skip_faults = vec![1, 4];
        all.push(skipping);
        for s in all {
            let text = toml::to_string(&s).expect("serialize");
            assert_eq!(Scenario::parse(&text).expect("parse"), s, "{text}");
        }
    }

    #[test]
    fn shrinking_stops_at_its_run_budget() {
        let out = shrink(scenario(), |_| 6, |_| true, 3);
        assert_eq!(out.runs, 3);
        assert_eq!(out.steps.len(), 3);
    }

    #[test]
    fn failures_are_classed_by_their_first_message() {
        let c = |m: &str| failure_class(&[m.to_string()]);
        assert_eq!(
            c("the history is not linearizable (operations [1])"),
            "linearizability"
        );
        assert_eq!(
            c("2 watch guarantee violation(s); the first: ..."),
            "watch-guarantee"
        );
        assert_eq!(
            c("the watch events cannot be reconciled with the clients' history: ..."),
            "watch-reconcile"
        );
        assert_eq!(c("members disagree on HashKV at revision 9: ..."), "hashkv");
        assert_eq!(
            c("node2 did not answer a linearizable read and HashKV within 60s"),
            "progress"
        );
        assert_eq!(c("the watch history could not be built: ..."), "other");
        assert_eq!(
            c(
                "no progress: no write succeeded within 60s after every fault was healed; \
               node1 did not start: raft: the backend has applied index 75 but the WAL ends \
               at 70: the WAL lost committed entries"
            ),
            "lost-entries"
        );
        assert_eq!(
            c(
                "the simulation panicked: to_commit 67 is out of range [last_index 65], \
               raft_id: 4520489976140230000"
            ),
            "lost-entries"
        );
        assert_eq!(c("no progress: no write succeeded"), "progress");
        assert_eq!(c("the simulation panicked: boom"), "panic");
        assert_eq!(failure_class(&[]), "none");
    }
}

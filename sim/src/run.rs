//! One chaos run: boot the scenario's cluster, run its clients and faults, heal, wait for
//! the cluster to converge, and check what the clients saw (linearizability), that every
//! member holds the same data (HashKV at one revision) and that writes resume.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Handle;
use madsim::time::{sleep, timeout, Instant};

use crate::check::linearizability::{
    check, CheckConfig, CheckResult, Exhausted, Linearization, Operation, Violation,
};
use crate::check::model::{Input, Model, PutRequest, RangeRequest};
use crate::check::watch::{
    check_watches, check_watches_without_history, observed_changes, KvHistory, WatchViolation,
};
use crate::faults::{self, Planned};
use crate::harness::{self, MemberOptions, SimMember};
use crate::report::{RunRecord, Verdict};
use crate::scenario::Scenario;
use crate::workload::{self, RunCtx};

/// What a run produced.
pub struct RunOutcome {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The trace, history, faults and failures.
    pub record: RunRecord,
    /// The linearizability checker's verdict (`None` if the run panicked first).
    pub check: Option<CheckResult>,
    /// The watch guarantees found broken.
    pub watch_violations: Vec<WatchViolation>,
    /// How much simulated time the run took, in seconds.
    pub simulated_s: f64,
    /// How long the linearizability check took, in wall-clock seconds.
    pub check_wall_s: f64,
}

impl RunOutcome {
    /// What the checks made of the run (see [`RunRecord::verdict`]).
    pub fn verdict(&self) -> Verdict {
        self.record.verdict()
    }

    /// Whether every check ran to the end and found nothing wrong: not failed, and not
    /// inconclusive either.
    pub fn passed(&self) -> bool {
        self.verdict() == Verdict::Passed
    }
}

/// Every parameter a run under `seed` draws before it starts, one per line: the fault
/// schedule and the clients' seeds.
pub fn parameters(scenario: &Scenario, seed: u64) -> Vec<String> {
    let mut out = vec![
        format!("seed {seed}"),
        format!(
            "scenario {}: {} members, {} s, {} clients, {} keys, think 0..={} ms, timeout {} ms",
            scenario.name,
            scenario.members,
            scenario.duration_s,
            scenario.workload.clients,
            scenario.workload.keys,
            scenario.workload.think_time_max_ms,
            scenario.workload.request_timeout_ms
        ),
        format!("mix {:?}", scenario.workload.mix.weights()),
        format!("network {:?}", scenario.network),
    ];
    for c in 1..=u64::from(scenario.workload.clients) {
        out.push(format!(
            "client {c} seed {}",
            workload::client_seed(seed, c)
        ));
    }
    for w in 1..=u64::from(scenario.workload.watchers) {
        out.push(format!(
            "watcher {w} seed {}",
            crate::watcher::watcher_seed(seed, w)
        ));
    }
    if scenario.workload.watch_read_delay_ms > 0 {
        out.push(format!(
            "watchers read slowly: {} ms after each response",
            scenario.workload.watch_read_delay_ms
        ));
    }
    for (i, p) in faults::plan_all(scenario, seed).into_iter().enumerate() {
        let skipped = if scenario.skip_faults.contains(&i) {
            " (skipped)"
        } else {
            ""
        };
        out.push(format!(
            "fault {i} at {} ms for {} ms: {:?} (pick {}){skipped}",
            p.at_ms, p.hold_ms, p.kind, p.pick
        ));
    }
    out
}

/// How long convergence may take after the heal, in simulated time.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `scenario` under `seed` on a fresh thread with its own madsim runtime, then
/// checks the history. Never panics: a panic inside the simulation is a failure.
pub fn run(scenario: &Scenario, seed: u64) -> RunOutcome {
    let record = Arc::new(Mutex::new(RunRecord::default()));
    let sim_record = record.clone();
    let sim_scenario = scenario.clone();
    let limit = Duration::from_secs(scenario.duration_s) + Duration::from_secs(600);
    let joined = std::thread::spawn(move || {
        // `DETCD_SIM_LOG=info` (or targets, as `detcd=debug,info`) prints the members'
        // logs, stamped with simulated time, to stderr. The filter is a `Targets`, not an
        // `EnvFilter`: the latter builds std hash maps, whose random keys must first be
        // drawn inside the simulation for a seed to replay.
        let _logs = std::env::var("DETCD_SIM_LOG").ok().map(|filter| {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::Layer;
            let targets: tracing_subscriber::filter::Targets = filter.parse().unwrap_or_default();
            tracing::subscriber::set_default(
                tracing_subscriber::registry().with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(std::io::stderr)
                        .with_filter(targets),
                ),
            )
        });
        let mut rt =
            madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.set_time_limit(limit);
        rt.block_on(simulate(sim_scenario, seed, sim_record))
    })
    .join();
    let mut rec = std::mem::take(&mut *record.lock().unwrap_or_else(|e| e.into_inner()));
    let simulated_s = match joined {
        Ok(s) => s,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            rec.failures.push(format!("the simulation panicked: {msg}"));
            rec.trace.push(format!("panic: {msg}"));
            rec.history
                .last()
                .map(|o| o.return_ns.unwrap_or(o.call_ns) as f64 / 1e9)
                .unwrap_or(0.0)
        }
    };
    add_possible_expiries(&mut rec, scenario.max_drift_ppm());
    let mut verdict = None;
    let mut watch_violations = Vec::new();
    // Outside the simulation's thread, so this is the real clock.
    let check_started = std::time::Instant::now();
    if rec.failures.is_empty() {
        let (result, violations) = check_history(&mut rec, CHECK_MAX_STEPS);
        verdict = result;
        watch_violations = violations;
    }
    RunOutcome {
        scenario: scenario.name.clone(),
        seed,
        record: rec,
        check: verdict,
        watch_violations,
        simulated_s,
        check_wall_s: check_started.elapsed().as_secs_f64(),
    }
}

/// The search budget of one linearizability check: a run whose check needs more is
/// inconclusive.
pub const CHECK_MAX_STEPS: u64 = 5_000_000;

/// Checks the history for linearizability, constrained by what the watchers that see
/// everything saw change at each revision, and then every watch stream against the
/// history in the order found. Adds what fails to the record's failures, and why the run
/// cannot be judged to its `inconclusive` list when the checker gives up (after
/// `max_steps` steps) without a violation to show.
///
/// When the history cannot be linearized in an order the watches agree with, or the
/// search for one gives up, it is checked once more on its own (see [`recheck_alone`]).
fn check_history(
    rec: &mut RunRecord,
    max_steps: u64,
) -> (Option<CheckResult>, Vec<WatchViolation>) {
    let (observed, mut watch_violations) = observed_changes(&rec.watches);
    let constrained = !observed.is_empty();
    let config = CheckConfig {
        max_steps,
        observed: Arc::new(observed),
        ..Default::default()
    };
    let result = match check(&rec.history, &config) {
        Ok(r) => r,
        Err(e) => {
            rec.failures.push(format!("malformed history: {e}"));
            return (None, watch_violations);
        }
    };
    let result = match result {
        CheckResult::Linearizable(lin) => {
            watch_violations.extend(watch_check(rec, &lin, &config.initial));
            CheckResult::Linearizable(lin)
        }
        other if constrained => recheck_alone(rec, other, max_steps, &mut watch_violations),
        CheckResult::Violation(v) => {
            rec.failures.push(not_linearizable(&v));
            CheckResult::Violation(v)
        }
        CheckResult::Unknown(e) => {
            rec.inconclusive.push(gave_up(&e, ""));
            watch_violations.extend(watch_check_without_history(rec));
            CheckResult::Unknown(e)
        }
    };
    if !watch_violations.is_empty() {
        rec.failures.push(format!(
            "{} watch guarantee violation(s); the first: {}",
            watch_violations.len(),
            watch_violations[0]
        ));
    }
    (Some(result), watch_violations)
}

/// Checks the history without the watches' constraint, after the constrained search
/// (`first`) found no linearization the watches agree with or gave up. Returns the
/// verdict to report and adds the watch violations found.
///
/// - The history alone is not linearizable: a failure, whatever the watches say.
/// - The constrained search proved that no order agrees with the watches, yet the history
///   alone is linearizable: a failure, the clients' answers are fine and the watches tell
///   another story. If the search alone gives up, it is a failure still: no order of the
///   clients' history agrees with what watchers saw.
/// - The constrained search gave up and the history alone is linearizable: if the watches
///   agree with the order found, the run passed; if not, another order might agree, so
///   the run is inconclusive (violations that need no order still fail it).
/// - Both searches gave up: inconclusive.
fn recheck_alone(
    rec: &mut RunRecord,
    first: CheckResult,
    max_steps: u64,
    watch_violations: &mut Vec<WatchViolation>,
) -> CheckResult {
    let config = CheckConfig {
        max_steps,
        ..Default::default()
    };
    let alone = match check(&rec.history, &config) {
        Ok(r) => r,
        Err(e) => {
            rec.failures.push(format!("malformed history: {e}"));
            return first;
        }
    };
    match (first, alone) {
        (_, CheckResult::Violation(v)) => {
            rec.failures.push(not_linearizable(&v));
            CheckResult::Violation(v)
        }
        (CheckResult::Violation(v), CheckResult::Linearizable(lin)) => {
            rec.failures.push(format!(
                "the watch events cannot be reconciled with the clients' history: no \
                 linearization writes each revision as the watchers saw it\n{}",
                v.explanation
            ));
            watch_violations.extend(watch_check(rec, &lin, &config.initial));
            CheckResult::Linearizable(lin)
        }
        (CheckResult::Violation(v), CheckResult::Unknown(e)) => {
            rec.failures.push(format!(
                "the history is not linearizable in any order that agrees with the watch \
                 events (operations {:?}; {})",
                v.ops,
                gave_up(&e, " on the history alone")
            ));
            watch_violations.extend(watch_check_without_history(rec));
            CheckResult::Violation(v)
        }
        (first, CheckResult::Linearizable(lin)) => {
            let found = watch_check(rec, &lin, &config.initial);
            if let (Some(v), CheckResult::Unknown(e)) = (found.first(), &first) {
                rec.inconclusive.push(format!(
                    "{}, and the order found without the watch events does not agree with \
                     them ({v})",
                    gave_up(e, " searching for an order the watch events agree with")
                ));
                watch_violations.extend(watch_check_without_history(rec));
            }
            CheckResult::Linearizable(lin)
        }
        (_, CheckResult::Unknown(e)) => {
            rec.inconclusive.push(gave_up(&e, ""));
            watch_violations.extend(watch_check_without_history(rec));
            CheckResult::Unknown(e)
        }
    }
}

/// The failure of a history that is not linearizable.
fn not_linearizable(v: &Violation) -> String {
    format!("the history is not linearizable (operations {:?})", v.ops)
}

/// Why a run is inconclusive when the checker ran out of budget `while` doing something.
fn gave_up(e: &Exhausted, while_: &str) -> String {
    format!(
        "the linearizability checker gave up{while_} after {} steps (longest linearizable \
         prefix: {} operations)",
        e.steps, e.longest_prefix
    )
}

/// Checks every watch stream against the history in the order `lin` gives it.
fn watch_check(rec: &mut RunRecord, lin: &Linearization, initial: &Model) -> Vec<WatchViolation> {
    match KvHistory::from_linearization(&rec.history, lin, initial) {
        Ok(history) => check_watches(&rec.watches, &history),
        Err(e) => {
            rec.failures
                .push(format!("the watch history could not be built: {e}"));
            Vec::new()
        }
    }
}

/// Checks every watch stream for what needs no order of the history, when the checker
/// gave none. Every revision a compaction was asked for counts as one the store may have
/// been compacted at, whatever the request's outcome.
fn watch_check_without_history(rec: &RunRecord) -> Vec<WatchViolation> {
    let compactions = rec
        .history
        .iter()
        .filter_map(|op| match op.input {
            Input::Compact { revision } => Some(revision),
            _ => None,
        })
        .collect();
    check_watches_without_history(&rec.watches, compactions)
}

/// Adds, for every lease that may have expired before the history ends, a revoke whose
/// outcome is unknown, called when the lease could first expire (client 0 stands for the
/// cluster): the model counts an expiry as such a revoke. Leases that cannot have expired
/// within the history add nothing, which keeps the checker's search small.
///
/// A member whose clock runs fast measures a TTL in less real time: with clocks that gain
/// at most `max_drift_ppm`, a lease may expire that much sooner.
fn add_possible_expiries(rec: &mut RunRecord, max_drift_ppm: u64) {
    let end_ns = rec
        .history
        .iter()
        .map(|o| o.return_ns.unwrap_or(o.call_ns))
        .max()
        .unwrap_or(0);
    // A renewal that certainly took effect restarts the TTL no earlier than its call.
    let mut renewed: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
    for op in &rec.history {
        if let (Input::LeaseKeepAlive { id }, Some(Ok(_))) = (&op.input, &op.output) {
            let at = renewed.entry(*id).or_default();
            *at = (*at).max(op.call_ns);
        }
    }
    for &(id, grant_ns, ttl_s) in &rec.lease_grants {
        let call_ns = grant_ns.max(renewed.get(&id).copied().unwrap_or(0));
        let ttl_ns = (ttl_s.max(0) as u128) * 1_000_000_000 * 1_000_000
            / (1_000_000 + u128::from(max_drift_ppm));
        let earliest_ns = call_ns.saturating_add(u64::try_from(ttl_ns).unwrap_or(u64::MAX));
        if earliest_ns <= end_ns {
            rec.history.push(Operation::unknown(
                0,
                earliest_ns,
                Input::LeaseRevoke { id },
            ));
        }
    }
}

/// The simulation itself; returns the simulated seconds it took.
async fn simulate(scenario: Scenario, seed: u64, record: Arc<Mutex<RunRecord>>) -> f64 {
    let handle = Handle::current();
    let members = harness::start_cluster_with(&handle, scenario.members, MemberOptions::default());
    let urls: Vec<String> = members.iter().map(|m| m.client_url()).collect();
    let schedule = faults::plan(&scenario, seed);
    let members = Arc::new(members);
    harness::client_node(&handle)
        .spawn(drive(scenario, seed, record, urls, members, schedule))
        .await
        .unwrap_or_else(|e| panic!("the client node failed: {e}"))
}

async fn drive(
    scenario: Scenario,
    seed: u64,
    record: Arc<Mutex<RunRecord>>,
    urls: Vec<String>,
    members: Arc<Vec<SimMember>>,
    schedule: Vec<Planned>,
) -> f64 {
    let origin = Instant::now();
    // Let the cluster elect its first leader before the clock of the run starts.
    let all: Vec<usize> = (0..members.len()).collect();
    for u in &urls {
        harness::connect_kv(u).await;
    }
    crate::client::wait_leader(&members, &all).await;
    // The scenario's packet loss and latency start with the workload: the cluster boots on
    // a clean network, since a slow boot (a member publishes itself only once a proposal
    // commits) is not what the scenarios are about and would only trip the harness's
    // bounded waits.
    faults::set_network(&scenario.network);
    let ctx = Arc::new(RunCtx::new(scenario.clone(), urls.clone(), record));
    ctx.event(format!("start: {} members, leader elected", members.len()));
    let stop_monitor = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = madsim::task::spawn(crate::monitor::run_monitor(
        ctx.clone(),
        members.clone(),
        stop_monitor.clone(),
    ));
    let injector = madsim::task::spawn(faults::run_faults(ctx.clone(), members.clone(), schedule));
    let mut watchers = Vec::new();
    for id in 1..=u64::from(scenario.workload.watchers) {
        watchers.push(madsim::task::spawn(crate::watcher::run_watcher(
            ctx.clone(),
            seed,
            id,
        )));
    }
    let mut clients = Vec::new();
    for id in 1..=u64::from(scenario.workload.clients) {
        clients.push(madsim::task::spawn(workload::run_client(
            ctx.clone(),
            seed,
            id,
        )));
    }
    let _ = injector.await;
    for c in clients {
        let _ = c.await;
    }
    // The injector healed its own faults; the scenario's baseline packet loss and latency
    // end too, so that convergence is judged on a healthy network.
    faults::set_network(&crate::scenario::Network::default());
    ctx.event("workload over, every fault healed");
    let final_revision = converge(&ctx, &members).await;
    // Every watcher must now be told about everything up to the write that proved
    // convergence; without one, they stop where they are.
    ctx.final_revision.store(
        final_revision.unwrap_or(-1),
        std::sync::atomic::Ordering::Relaxed,
    );
    for w in watchers {
        let _ = w.await;
    }
    stop_monitor.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = monitor.await;
    if let Some(r) = final_revision {
        // Events after the final write (a lease expiring meanwhile) have no counterpart
        // in the history, which ends there, so they are left out of the check.
        trim_watches(&mut ctx.lock().watches, r);
    }
    origin.elapsed().as_secs_f64()
}

/// Drops every event after revision `last` from the recorded watch streams, and the
/// responses left without any.
fn trim_watches(watches: &mut [crate::check::watch::WatchStream], last: i64) {
    for stream in watches {
        for segment in &mut stream.segments {
            segment.responses.retain_mut(|r| {
                let had_events = !r.events.is_empty();
                r.events.retain(|e| e.kv.mod_revision <= last);
                // A response whose events were all dropped must go too, or it would read as
                // a progress notification.
                !(had_events && r.events.is_empty())
            });
        }
    }
}

/// The last error of every member whose last start failed, as "; NAME did not start:
/// ERROR" each, to tell a cluster that cannot recover its data from one that is slow.
fn start_errors(members: &[SimMember]) -> String {
    members
        .iter()
        .filter_map(|m| {
            m.last_start_error()
                .map(|e| format!("; {} did not start: {e}", m.name))
        })
        .collect()
}

/// After the heal: a leader is elected, a write succeeds (recorded in the history as
/// client 0), and every member reports the same HashKV at that write's revision. Returns
/// that write's revision.
async fn converge(ctx: &RunCtx, members: &[SimMember]) -> Option<i64> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut progress_rev = None;
    let mut attempt = 0usize;
    while progress_rev.is_none() && Instant::now() < deadline {
        let m = attempt % members.len();
        attempt += 1;
        let input = Input::Put(PutRequest {
            key: b"progress".to_vec(),
            value: format!("after-heal-{attempt}").into_bytes(),
            lease: 0,
            prev_kv: false,
        });
        let idx = ctx.call(0, m, input.clone());
        let outcome = match crate::client::channel(&ctx.urls[m]).await {
            Err(e) => Err(e),
            Ok(ch) => {
                match timeout(Duration::from_secs(5), workload::issue(ch, &input, false)).await {
                    Ok(Ok(reply)) => {
                        progress_rev = Some(reply.revision);
                        Ok(Ok(reply))
                    }
                    Ok(Err(s)) => Err(s.message().to_string()),
                    Err(_) => Err("timed out".into()),
                }
            }
        };
        ctx.finish(idx, outcome);
        if progress_rev.is_none() {
            sleep(Duration::from_millis(300)).await;
        }
    }
    let Some(rev) = progress_rev else {
        ctx.lock().failures.push(format!(
            "no progress: no write succeeded within {CONVERGE_TIMEOUT:?} after every fault was \
             healed{}",
            start_errors(members)
        ));
        return None;
    };
    ctx.event(format!("progress: a write succeeded at revision {rev}"));
    let mut hashes = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            // A linearizable read makes the member apply everything up to the commit
            // index, so its HashKV at `rev` covers the whole history.
            let read = Input::Get(RangeRequest {
                key: b"progress".to_vec(),
                ..Default::default()
            });
            let ok = match crate::client::channel(&m.client_url()).await {
                Ok(ch) => matches!(
                    timeout(Duration::from_secs(5), workload::issue(ch, &read, false)).await,
                    Ok(Ok(_))
                ),
                Err(_) => false,
            };
            if ok {
                if let Ok((h, at)) = crate::client::hash_kv(&m.client_url(), rev).await {
                    got = Some((h, at));
                }
            }
            if got.is_none() {
                sleep(Duration::from_millis(300)).await;
            }
        }
        match got {
            Some((h, at)) => {
                ctx.event(format!(
                    "hashkv {} at {rev}: {h:#010x} (member at {at})",
                    m.name
                ));
                hashes.push((i, h));
            }
            None => ctx.lock().failures.push(format!(
                "{} did not answer a linearizable read and HashKV within {CONVERGE_TIMEOUT:?} \
                     after every fault was healed{}",
                m.name,
                start_errors(std::slice::from_ref(m))
            )),
        }
    }
    if let Some(&(_, first)) = hashes.first() {
        if hashes.iter().any(|&(_, h)| h != first) {
            let list: Vec<String> = hashes
                .iter()
                .map(|&(i, h)| format!("{}={h:#010x}", members[i].name))
                .collect();
            ctx.lock().failures.push(format!(
                "members disagree on HashKV at revision {rev}: {}",
                list.join(" ")
            ));
        }
    }
    Some(rev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::model::{KeyValue, PutResult, Reply, Response};
    use crate::check::watch::{
        EventKind, Segment, WatchEvent, WatchRequest, WatchResponse, WatchStream,
    };

    /// How many sequential puts the test history has; each needs a step of the search.
    const PUTS: i64 = 20;

    /// The key-value that put `i` (from 0) leaves, at revision `i + 2`.
    fn kv(i: i64) -> KeyValue {
        KeyValue {
            key: format!("k{i}").into_bytes(),
            value: b"v".to_vec(),
            create_revision: i + 2,
            mod_revision: i + 2,
            version: 1,
            lease: 0,
        }
    }

    /// A record of `PUTS` sequential puts to distinct keys, revisions 2 and up.
    fn record() -> RunRecord {
        let history = (0..PUTS)
            .map(|i| {
                let t = u64::try_from(i).unwrap_or_default() * 10;
                let input = Input::Put(PutRequest {
                    key: kv(i).key,
                    value: kv(i).value,
                    lease: 0,
                    prev_kv: false,
                });
                let output = Ok(Reply {
                    revision: i + 2,
                    response: Response::Put(PutResult::default()),
                });
                Operation::returned(1, t, t + 5, input, output)
            })
            .collect();
        RunRecord {
            history,
            ..Default::default()
        }
    }

    /// A watcher of every key that got the events of `revisions`, in this order.
    fn watcher(revisions: &[i64]) -> WatchStream {
        let mut responses = vec![WatchResponse {
            header_revision: 1,
            created: true,
            ..Default::default()
        }];
        for &r in revisions {
            responses.push(WatchResponse {
                header_revision: PUTS + 1,
                events: vec![WatchEvent {
                    kind: EventKind::Put,
                    kv: kv(r - 2),
                    prev_kv: None,
                }],
                ..Default::default()
            });
        }
        WatchStream {
            watcher: 1,
            request: WatchRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            },
            segments: vec![Segment {
                start_revision: 2,
                responses,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_check_that_runs_out_of_budget_is_inconclusive_not_passed() {
        let mut rec = record();
        check_history(&mut rec, CHECK_MAX_STEPS);
        assert_eq!(rec.verdict(), Verdict::Passed, "{:?}", rec.inconclusive);
        let mut rec = record();
        let (result, _) = check_history(&mut rec, 5);
        assert!(matches!(result, Some(CheckResult::Unknown(_))));
        assert_eq!(rec.verdict(), Verdict::Inconclusive);
        assert!(
            rec.inconclusive[0].contains("gave up after"),
            "{:?}",
            rec.inconclusive
        );
    }

    #[test]
    fn the_watches_are_checked_when_the_linearizability_check_is_inconclusive() {
        let mut rec = record();
        rec.watches = vec![watcher(&[2, 3, 4])];
        check_history(&mut rec, CHECK_MAX_STEPS);
        assert_eq!(rec.verdict(), Verdict::Passed, "{:?}", rec.failures);
        let mut rec = record();
        // Revision 4 before revision 3: out of order, whatever the history's order.
        rec.watches = vec![watcher(&[2, 4, 3])];
        let (_, violations) = check_history(&mut rec, 5);
        assert_eq!(rec.verdict(), Verdict::Failed);
        assert!(!rec.inconclusive.is_empty());
        assert!(
            rec.failures[0].contains("watch guarantee violation"),
            "{:?}",
            rec.failures
        );
        assert_eq!(violations.len(), 1, "{violations:?}");
    }
}

//! Every shipped chaos scenario, for a few fixed seeds and with its duration scaled down,
//! must pass (linearizable history, watch guarantees kept, equal HashKV on every member,
//! writes resume after the heal), and two runs of one seed must produce the same trace. A
//! run the linearizability checker gives up on is inconclusive, and fails these tests as a
//! failure does: CI's scenarios must be checked to the end.
#![cfg(madsim)]

use detcd_sim::report;
use detcd_sim::run;
use detcd_sim::scenario::Scenario;

/// The seeds every scenario runs with (the CI's fixed range; `detcd-sim explore
/// --all-scenarios --seeds 1..1000` is the longer sweep).
const SEEDS: std::ops::RangeInclusive<u64> = 1..=8;
/// Simulated seconds of workload per run: enough for a few faults each.
const DURATION_S: u64 = 10;

/// Runs `name` for every seed on its own thread, the scenarios side by side.
fn run_all(names: Vec<String>) {
    let mut threads = Vec::new();
    for name in names {
        threads.push(std::thread::spawn(move || {
            let mut scenario = Scenario::load(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            scenario.duration_s = DURATION_S;
            let mut failures = Vec::new();
            for seed in SEEDS.clone() {
                let out = run::run(&scenario, seed);
                println!(
                    "{name} seed {seed}: {}, {} operations, {} faults, {:.2} s and {} steps \
                     (of {}) checking, fingerprint {:016x}",
                    out.verdict(),
                    out.record.history.len(),
                    out.record.faults.len(),
                    out.check_wall_s,
                    out.check.as_ref().map_or(0, |c| c.steps()),
                    run::CHECK_MAX_STEPS,
                    out.record.fingerprint()
                );
                if !out.passed() {
                    failures.push(format!(
                        "{name} seed {seed} {}: {:?}\n  detcd-sim run --scenario scenarios/{name}.toml \
                         --seed {seed} --duration-s {DURATION_S}",
                        out.verdict(),
                        not_passed_because(&out)
                    ));
                }
            }
            failures
        }));
    }
    let failures: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("scenario thread"))
        .collect();
    assert!(
        failures.is_empty(),
        "failing runs:\n{}",
        failures.join("\n")
    );
}

/// Why a run did not pass: its failures, then why it is inconclusive.
fn not_passed_because(out: &run::RunOutcome) -> Vec<&String> {
    out.record
        .failures
        .iter()
        .chain(&out.record.inconclusive)
        .collect()
}

#[test]
fn every_shipped_scenario_passes_for_fixed_seeds() {
    let names = Scenario::shipped().expect("scenarios/");
    assert!(names.len() >= 16, "{names:?}");
    run_all(names);
}

#[test]
fn a_seed_replays_the_same_trace() {
    for name in [
        "random-crash",
        "partitions",
        "disk-crash",
        "membership",
        "clock-drift",
        "slow-watchers",
    ] {
        let mut scenario = Scenario::load(name).expect("scenario");
        scenario.duration_s = 6;
        let a = run::run(&scenario, 11);
        let b = run::run(&scenario, 11);
        assert!(
            a.passed(),
            "{name} {}: {:?}",
            a.verdict(),
            not_passed_because(&a)
        );
        assert!(!a.record.faults.is_empty(), "{name}: no fault was injected");
        if let Some((line, x, y)) = report::first_divergence(&a.record.trace, &b.record.trace) {
            panic!("{name} seed 11 diverged at trace line {line}:\n  {x}\n  {y}");
        }
        assert_eq!(a.record.fingerprint(), b.record.fingerprint());
    }
}

/// The explorer must find a real violation: serializable reads, which a member serves
/// from its own possibly stale state, recorded as linearizable reads while the leader is
/// isolated, are caught by the checker, and the report names the operations.
#[test]
fn stale_reads_are_found_and_reported() {
    let mut scenario = Scenario::load("leader-isolation").expect("scenario");
    scenario.duration_s = 10;
    scenario.workload.mix.serializable_get = 40;
    let mut found = None;
    for seed in 1..=6 {
        let out = run::run(&scenario, seed);
        if let Some(v) = out.check.as_ref().and_then(|c| c.violation()) {
            let page = report::html(&report::ReportInput {
                title: "stale reads",
                reproduce: "detcd-sim run ...",
                record: &out.record,
                check: out.check.as_ref(),
                watch_violations: &out.watch_violations,
            });
            for i in &v.ops {
                assert!(page.contains(&format!("flag\" data-op=\"{i}\"")), "#{i}");
            }
            assert!(!out.passed());
            found = Some(seed);
            break;
        }
    }
    assert!(
        found.is_some(),
        "no seed exposed the stale serializable reads"
    );
}

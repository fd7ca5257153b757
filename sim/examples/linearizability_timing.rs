//! Times the linearizability checker on generated histories and prints the figures.
//!
//! Run with `cargo run --release -p detcd-sim --example linearizability_timing`. For each
//! size and concurrency it checks a linearizable history (from a sequential run of the
//! model with random call/return windows and some unknown outcomes) and the same history
//! with one read answered with a value that was never written.

use std::time::Instant;

use detcd_sim::check::generate::{random_history, GenerateConfig};
use detcd_sim::check::linearizability::{check, CheckConfig, CheckResult};
use detcd_sim::check::model::{Input, Response};

/// A one-word summary of a result.
fn verdict(r: &CheckResult) -> String {
    match r {
        CheckResult::Linearizable(l) => format!("linearizable ({} steps)", l.steps),
        CheckResult::Violation(v) => format!(
            "violation ({} steps, prefix {}, ops {:?})",
            v.steps,
            v.prefix.len(),
            v.ops
        ),
        CheckResult::Unknown(e) => format!("unknown ({} steps)", e.steps),
    }
}

fn main() {
    let config = CheckConfig::default();
    println!("operations clients  window_ns  check_ms  result");
    for &(operations, clients, window_ns) in &[
        (1_000, 10, 5_000),
        (10_000, 10, 5_000),
        (10_000, 30, 15_000),
        (100_000, 10, 5_000),
    ] {
        let generated = random_history(&GenerateConfig {
            seed: 2024,
            operations,
            clients,
            window_max_ns: window_ns,
            ..GenerateConfig::default()
        });
        let mut history = generated.history;
        let start = Instant::now();
        let result = check(&history, &config);
        let elapsed = start.elapsed();
        let summary = match &result {
            Ok(r) => verdict(r),
            Err(e) => format!("malformed: {e}"),
        };
        println!(
            "{operations:>10} {clients:>7} {window_ns:>10} {:>9.1}  {summary}",
            elapsed.as_secs_f64() * 1e3
        );

        // The same history with the middle read answering a value nobody wrote.
        let reads: Vec<usize> = history
            .iter()
            .enumerate()
            .filter(|(_, o)| {
                matches!(o.input, Input::Get(_))
                    && matches!(&o.output, Some(Ok(r)) if matches!(&r.response, Response::Get(g) if !g.kvs.is_empty()))
            })
            .map(|(i, _)| i)
            .collect();
        let Some(&victim) = reads.get(reads.len() / 2) else {
            continue;
        };
        if let Some(Ok(reply)) = &mut history[victim].output {
            if let Response::Get(g) = &mut reply.response {
                g.kvs[0].value = b"never written".to_vec();
            }
        }
        let start = Instant::now();
        let result = check(&history, &config);
        let elapsed = start.elapsed();
        let summary = match &result {
            Ok(r) => verdict(r),
            Err(e) => format!("malformed: {e}"),
        };
        println!(
            "{operations:>10} {clients:>7} {window_ns:>10} {:>9.1}  bad read #{victim}: {summary}",
            elapsed.as_secs_f64() * 1e3
        );
    }
}

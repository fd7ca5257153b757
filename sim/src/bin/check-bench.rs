//! `check-bench`: how long the linearizability checker takes on generated histories of
//! 10,000 operations, as the share of operations with an unknown outcome grows. Prints
//! one line per configuration; nothing is asserted (speed targets are read from figures,
//! not from timed tests).
//!
//! ```text
//! cargo run --release -p detcd-sim --bin check-bench
//! ```

use std::time::Instant;

use detcd_sim::check::generate::{random_history, GenerateConfig};
use detcd_sim::check::linearizability::{check, CheckConfig, CheckResult};

fn main() {
    println!("operations clients unknown_per_mille lost_per_mille verdict steps wall_ms");
    for (clients, unknown, lost) in [
        (10, 5, 5),
        (10, 20, 20),
        (10, 50, 50),
        (20, 20, 20),
        (4, 100, 100),
    ] {
        for seed in 1..=3 {
            let generated = random_history(&GenerateConfig {
                seed,
                operations: 10_000,
                clients,
                unknown_per_mille: unknown,
                lost_per_mille: lost,
                ..GenerateConfig::default()
            });
            let started = Instant::now();
            let result = check(&generated.history, &CheckConfig::default());
            let wall_ms = started.elapsed().as_millis();
            let (verdict, steps) = match &result {
                Ok(CheckResult::Linearizable(l)) => ("linearizable", l.steps),
                Ok(CheckResult::Violation(v)) => ("VIOLATION", v.steps),
                Ok(CheckResult::Unknown(e)) => ("inconclusive", e.steps),
                Err(_) => ("malformed", 0),
            };
            println!(
                "{} {clients} {unknown} {lost} {verdict} {steps} {wall_ms}",
                generated.history.len()
            );
        }
    }
}

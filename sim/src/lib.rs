//! The detcd simulator: whole detcd clusters in one process under madsim, driven from a
//! seed, with faults injected from data files (`scenarios/*.toml`).
//!
//! The harness only exists in the madsim build (`RUSTFLAGS="--cfg madsim"`); a normal
//! build of this crate has only the pure parts (the scenario format and the
//! linearizability checker), so that `cargo build` of the whole workspace works
//! everywhere and the checker is unit-tested without madsim.

pub mod check;
#[cfg(madsim)]
pub mod client;
#[cfg(madsim)]
pub mod faults;
#[cfg(madsim)]
pub mod harness;
#[cfg(madsim)]
pub mod monitor;
pub mod report;
#[cfg(madsim)]
pub mod run;
pub mod scenario;
pub mod shrink;
#[cfg(madsim)]
pub mod watcher;
#[cfg(madsim)]
pub mod workload;

//! The detcd simulator: whole detcd clusters in one process under madsim, driven from a
//! seed, with faults injected from data files (`scenarios/*.toml`).
//!
//! The harness only exists in the madsim build (`RUSTFLAGS="--cfg madsim"`); a normal
//! build of this crate has only the scenario format, so that `cargo build` of the whole
//! workspace works everywhere.

#[cfg(madsim)]
pub mod client;
#[cfg(madsim)]
pub mod harness;
pub mod scenario;

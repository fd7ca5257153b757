//! Checking what clients saw: a sequential model of etcd's key-value semantics
//! ([`model`]), a linearizability checker over histories of requests
//! ([`linearizability`]), a generator of random linearizable histories to test and
//! time it ([`generate`]), and a checker of etcd's watch guarantees over recorded watch
//! streams against the linearized history ([`watch`]).
//!
//! Everything here is plain Rust without madsim, so it builds and is unit-tested in the
//! normal build of this crate.

pub mod generate;
pub mod linearizability;
pub mod model;
pub mod watch;

#[cfg(test)]
mod tests;

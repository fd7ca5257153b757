//! detcd: an etcd v3-compatible, strongly consistent key-value store built as a set of
//! actors around pure, deterministic state machines, tested by deterministic simulation.
//!
//! Layout:
//! - [`rt`]: the runtime seam (real tokio, or madsim under `--cfg madsim`).
//! - [`core`]: pure state machines (MVCC, request validation, the apply step).
//! - [`storage`]: the write-ahead log over a [`storage::disk::Disk`] seam, and the MVCC backend.
//! - [`raft`]: glue between the `raft` crate and detcd's WAL.
//! - [`actors`]: thin async loops that own the state machines.
//! - [`gateway`]: one file per gRPC service.
//! - [`msg`]: every message the actors exchange.
//! - [`tls`]: TLS configurations for client and peer connections, from etcd's flags.
//! - [`metrics`]: etcd's Prometheus metrics, fed by the actors.
//! - [`planted`]: deliberate bugs for the simulator to catch (a test-only feature).

pub mod actors;
pub mod config;
pub mod core;
pub mod error;
pub mod gateway;
pub mod gojson;
pub mod logging;
pub mod metrics;
pub mod msg;
pub mod pb;
pub mod planted;
pub mod raft;
pub mod rt;
pub mod server;
pub mod snapshot_cmd;
pub mod storage;
pub mod tls;

/// The etcd server version detcd reports to clients (`Status.version`, `/version`): the
/// API level detcd speaks, so clients enable exactly the features detcd serves.
pub const ETCD_VERSION: &str = "3.4.23";
/// The etcd cluster version detcd reports (major.minor.0).
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";
/// detcd's own version.
pub const DETCD_VERSION: &str = env!("CARGO_PKG_VERSION");

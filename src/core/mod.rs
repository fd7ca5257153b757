//! Pure, synchronous, deterministic state machines.
//!
//! - [`mvcc`]: etcd's multi-version key-value store, in memory, persisted through
//!   [`WriteBatch`](crate::storage::backend::WriteBatch)es in etcd's bbolt layout.
//! - [`validate`]: the request checks etcd's gRPC layer runs before proposing a request.
//! - [`watch`]: the watch hub: streams, watchers, synced and unsynced groups.
//! - [`apply`]: the apply step that runs one committed
//!   [`InternalRequest`](crate::pb::detcdpb::InternalRequest) against the store.
//!
//! Nothing here reads a clock, draws randomness or does I/O, so every replica that applies
//! the same log reaches the same state byte for byte.

pub mod alarm;
pub mod apply;
pub mod auth;
pub mod auth_apply;
pub mod corrupt;
pub(crate) mod crc32c;
pub mod jwt;
pub mod lease;
pub mod mvcc;
pub mod quota;
pub mod state;
pub mod token;
pub mod validate;
pub mod watch;

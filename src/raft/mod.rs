//! Glue between the `raft` crate and detcd: member and cluster identity, the raft
//! configuration, and rebuilding raft's in-memory log from detcd's WAL at start.

pub mod ids;
pub mod log;
pub mod membership;
pub mod store;

/// Peer messages are bounded in size before they are decoded, because the `protobuf` 2
/// decoder the raft crate uses can be driven into deep recursion by hostile input.
pub const MAX_PEER_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

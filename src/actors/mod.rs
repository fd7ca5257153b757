//! The actors: thin async loops, each owning one pure state machine (or the raft node)
//! and talking to the others only through the bounded channels of [`crate::msg`].
//!
//! - [`raft_node`]: the raft `RawNode` and the WAL; turns proposals into committed entries.
//! - [`storage`]: the MVCC state machine and its backend; applies committed entries and
//!   serves reads.
//! - [`snapshot`]: the storage actor's backend in etcd's bbolt bucket layout, for
//!   `Maintenance.Snapshot`.
//! - [`watch_hub`]: the watch hub; turns applied events into watch responses.
//!
//! - [`lease_timer`]: the leader's lease expiry schedule; proposes revocations.
//! - [`transport`]: raft messages to and from peers, and lease calls forwarded to the
//!   leader.
//! - [`corrupt_check`]: the initial and periodic comparisons of KV hashes with peers.

pub mod corrupt_check;
pub mod lease_timer;
pub mod raft_node;
pub mod snapshot;
pub mod storage;
pub mod transport;
pub mod watch_hub;

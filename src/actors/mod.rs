//! The actors: thin async loops, each owning one pure state machine (or the raft node)
//! and talking to the others only through the bounded channels of [`crate::msg`].
//!
//! - [`raft_node`]: the raft `RawNode` and the WAL; turns proposals into committed entries.
//! - [`storage`]: the MVCC state machine and its backend; applies committed entries and
//!   serves reads.
//! - [`watch_hub`]: the watch hub; turns applied events into watch responses.
//!
//! The lease timer joins them as its own actor.

pub mod raft_node;
pub mod storage;
pub mod watch_hub;

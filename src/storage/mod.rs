//! Durable storage, split as etcd splits it: the raft log and hard state in detcd's own
//! write-ahead log ([`wal`]) over the [`disk::Disk`] seam, and the MVCC state in a
//! key-value [`backend::Backend`] (sled in production, memory under simulation) that
//! records the last applied raft index so the WAL can replay whatever it lacks.

pub mod backend;
pub mod bbolt;
pub mod disk;
pub mod pipelined;
pub mod snapshot;
pub mod wal;

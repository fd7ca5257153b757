//! The MVCC backend: named buckets of ordered byte keys, written in atomic batches.
//!
//! INTERFACE (implementation pending): see the types below.

/// A bucket (etcd's bbolt buckets): each is an ordered map of byte keys to byte values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    /// Revisions to `mvccpb.KeyValue` (etcd's `key` bucket, etcd's revision encoding).
    Key,
    /// Consistent index, compaction progress and other bookkeeping (etcd's `meta` bucket).
    Meta,
    /// Leases (etcd's `lease` bucket).
    Lease,
    /// Auth switch and revision (etcd's `auth` bucket).
    Auth,
    /// Users (etcd's `authUsers` bucket).
    AuthUsers,
    /// Roles (etcd's `authRoles` bucket).
    AuthRoles,
    /// Cluster membership (etcd's `members` bucket).
    Members,
}

/// One change in a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` in `bucket` to `value`.
    Put {
        /// The bucket.
        bucket: Bucket,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` from `bucket` (no error if absent).
    Delete {
        /// The bucket.
        bucket: Bucket,
        /// The key.
        key: Vec<u8>,
    },
}

/// A set of changes applied atomically: after a crash either all or none are visible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The changes, applied in order.
    pub ops: Vec<BatchOp>,
}

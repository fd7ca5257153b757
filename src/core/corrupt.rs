//! etcd's corruption checks, as decisions over KV hashes: whether a starting member's
//! data disagrees with its peers' (`--experimental-initial-corrupt-check`), and which
//! member the leader's periodic check finds inconsistent (`--experimental-corrupt-check-time`).

/// One member's `HashKV` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// The answering member.
    pub member_id: u64,
    /// The hash of the key-value history up to the asked revision.
    pub hash: u32,
    /// The member's current revision (its answer's header revision).
    pub revision: i64,
    /// The member's compact revision.
    pub compact_revision: i64,
}

/// The peers whose hash at the local member's revision differs from the local hash while
/// their compact revision is the same (etcd's `CheckInitialHashKV`): a starting member
/// with any such peer has data inconsistent with the cluster. A peer with another compact
/// revision cannot be compared and is not counted.
pub fn initial_mismatches(local: &KvHash, peers: &[KvHash]) -> Vec<u64> {
    peers
        .iter()
        .filter(|p| p.hash != local.hash && p.compact_revision == local.compact_revision)
        .map(|p| p.member_id)
        .collect()
}

/// The member the leader's periodic check (etcd's `checkHashKV`) raises CORRUPT for, if
/// any. `before` is the leader's hash when it asked its peers (at its then current
/// revision), `after` its hash again after a read barrier, and `peers` the peers' hashes
/// at `before.revision`. In etcd's order, the first of:
/// - the leader itself, when its own hash changed though its revision and compact
///   revision did not;
/// - a peer ahead of the leader's revision or compact revision;
/// - a peer with the leader's earlier compact revision but another hash.
pub fn periodic_mismatch(before: &KvHash, after: &KvHash, peers: &[KvHash]) -> Option<u64> {
    if after.hash != before.hash
        && after.revision == before.revision
        && after.compact_revision == before.compact_revision
    {
        return Some(before.member_id);
    }
    peers
        .iter()
        .find(|p| {
            p.revision > after.revision
                || p.compact_revision > after.compact_revision
                || (p.compact_revision == before.compact_revision && p.hash != before.hash)
        })
        .map(|p| p.member_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(member_id: u64, hash: u32, revision: i64, compact_revision: i64) -> KvHash {
        KvHash {
            member_id,
            hash,
            revision,
            compact_revision,
        }
    }

    #[test]
    fn initial_check_counts_only_comparable_peers() {
        let local = h(1, 100, 10, 3);
        assert!(initial_mismatches(&local, &[]).is_empty());
        assert!(initial_mismatches(&local, &[h(2, 100, 12, 3)]).is_empty());
        // Another compact revision: not comparable.
        assert!(initial_mismatches(&local, &[h(2, 999, 12, 5)]).is_empty());
        assert_eq!(
            initial_mismatches(&local, &[h(2, 100, 12, 3), h(3, 7, 10, 3)]),
            vec![3]
        );
    }

    #[test]
    fn periodic_check_follows_etcd() {
        let before = h(1, 100, 10, 3);
        assert_eq!(
            periodic_mismatch(&before, &before, &[h(2, 100, 10, 3)]),
            None
        );
        // The leader moved on between the two hashes: its own hash may change.
        assert_eq!(periodic_mismatch(&before, &h(1, 5, 11, 3), &[]), None);
        // Its hash changed at the same revision: the leader itself is corrupt.
        assert_eq!(periodic_mismatch(&before, &h(1, 5, 10, 3), &[]), Some(1));
        // A peer ahead of the leader.
        assert_eq!(
            periodic_mismatch(&before, &before, &[h(2, 100, 10, 3), h(3, 100, 11, 3)]),
            Some(3)
        );
        assert_eq!(
            periodic_mismatch(&before, &before, &[h(2, 100, 10, 4)]),
            Some(2)
        );
        // Same compact revision, another hash.
        assert_eq!(
            periodic_mismatch(&before, &before, &[h(2, 1, 9, 3)]),
            Some(2)
        );
        // A peer that compacted less cannot be compared.
        assert_eq!(periodic_mismatch(&before, &before, &[h(2, 1, 9, 2)]), None);
    }
}

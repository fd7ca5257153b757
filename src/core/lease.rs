//! Leases, split the way their state is actually shared.
//!
//! etcd 3.4's lessor (`lease/lessor.go`) keeps two kinds of state in one object: the set of
//! granted leases with their TTLs and attached keys, which every member changes identically
//! while applying the raft log, and the expiry deadlines, which only the leader (the
//! "primary" lessor) tracks and which depend on its wall clock. detcd keeps them apart:
//!
//! - [`LeaseTable`] is the REPLICATED state. Only applied raft entries change it (grant,
//!   revoke, and the MVCC events of puts and deletes), so it is identical on every member
//!   and persists itself into [`Bucket::Lease`] in etcd's bbolt format.
//! - [`LeaseClock`] is the LEADER-LOCAL expiry schedule. It is rebuilt from the table on
//!   every promotion, forgotten on demotion, and tells the leader's lease timer which leases
//!   to propose for revocation and when to wake up next.
//!
//! Neither reads a clock: time arrives as `now_ms` arguments, so both are deterministic.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use crate::error::EtcdError;
use crate::pb::etcdserverpb::{LeaseLeasesResponse, LeaseStatus, LeaseTimeToLiveResponse};
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};
use crate::storage::backend::{BatchOp, Bucket, WriteBatch};

/// The lease id meaning "no lease" (etcd's `lease.NoLease`).
pub const NO_LEASE: i64 = 0;

/// The largest TTL etcd grants (`lease.MaxLeaseTTL`); larger requests fail with
/// [`EtcdError::LeaseTtlTooLarge`].
pub const MAX_LEASE_TTL_S: i64 = 9_000_000_000;

/// The most leases etcd revokes per second (`leaseRevokeRate`). Expired leases are handed
/// out at most [`REVOKE_BATCH_MAX`] per [`EXPIRY_CHECK_INTERVAL_MS`], which is this rate.
pub const LEASE_REVOKE_RATE_PER_S: usize = 1000;

/// How often etcd's lessor looks for expired leases (its `runLoop` sleeps 500 ms).
pub const EXPIRY_CHECK_INTERVAL_MS: u64 = 500;

/// The most expired leases etcd hands out per check (`leaseRevokeRate / 2` every 500 ms);
/// pass it as `max` to [`LeaseClock::expired`] to revoke at etcd's rate.
pub const REVOKE_BATCH_MAX: usize = LEASE_REVOKE_RATE_PER_S / 2;

/// Milliseconds per second, named so conversions read as what they are.
const MS_PER_S: u64 = 1000;

/// The election timeout etcd actually runs with: a whole number of heartbeat ticks
/// (`ElectionTicks = ElectionMs / TickMs`, integer division), times the tick.
///
/// etcd derives the minimum lease TTL, the promotion extension and the expired-lease retry
/// interval from this value rather than from the configured `--election-timeout`, so detcd
/// does too. A zero heartbeat interval is treated as 1 ms instead of dividing by zero.
pub fn effective_election_timeout_ms(election_timeout_ms: u64, heartbeat_interval_ms: u64) -> u64 {
    let heartbeat_ms = heartbeat_interval_ms.max(1);
    (election_timeout_ms / heartbeat_ms).saturating_mul(heartbeat_ms)
}

/// etcd's minimum lease TTL (`minLeaseTTL`): one and a half election timeouts, counted in
/// whole heartbeat ticks (`(3 * electionTicks / 2) * heartbeat`), rounded up to seconds.
///
/// A lease shorter than this could expire merely because a leader election is under way,
/// which is why etcd silently raises shorter requests to it. With etcd's defaults (100 ms
/// heartbeat, 1000 ms election timeout) it is 2 s, as `etcdctl lease grant 1` shows.
pub fn min_ttl_s(election_timeout_ms: u64, heartbeat_interval_ms: u64) -> i64 {
    let heartbeat_ms = heartbeat_interval_ms.max(1);
    let election_ticks = election_timeout_ms / heartbeat_ms;
    let min_ttl_ms = (3 * election_ticks / 2).saturating_mul(heartbeat_ms);
    let min_ttl_s = min_ttl_ms.div_ceil(MS_PER_S);
    i64::try_from(min_ttl_s).unwrap_or(MAX_LEASE_TTL_S)
}

/// How much etcd extends every lease when a member becomes leader: one election timeout
/// (`lessor.Promote(s.Cfg.electionTimeout())`), so no lease expires because the cluster
/// was leaderless for a while and its keep-alives had nowhere to go.
pub fn promote_extend_ms(election_timeout_ms: u64, heartbeat_interval_ms: u64) -> u64 {
    effective_election_timeout_ms(election_timeout_ms, heartbeat_interval_ms)
}

/// How long etcd waits before handing out an expired lease again when its revocation has
/// not been applied yet (`ExpiredLeasesRetryInterval = ReqTimeout()`, which is 5 s plus two
/// election timeouts): by then the first revoke proposal has either been applied or lost.
pub fn expired_retry_ms(election_timeout_ms: u64, heartbeat_interval_ms: u64) -> u64 {
    let election_ms = effective_election_timeout_ms(election_timeout_ms, heartbeat_interval_ms);
    5_000u64.saturating_add(election_ms.saturating_mul(2))
}

/// Converts a TTL in seconds to milliseconds, treating negative TTLs as zero and saturating
/// instead of overflowing, because TTLs come from clients.
fn ttl_ms(ttl_s: i64) -> u64 {
    u64::try_from(ttl_s).unwrap_or(0).saturating_mul(MS_PER_S)
}

/// etcd's persisted lease record (`leasepb.Lease`), the value stored in the `lease` bucket.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct LeasePb {
    /// The lease id (`ID = 1`).
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The granted TTL in seconds (`TTL = 2`).
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// The checkpointed remaining TTL in seconds (`RemainingTTL = 3`); zero means unset.
    /// Only etcd's optional lease checkpointing writes it; detcd always writes zero.
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// The `lease` bucket key of a lease: its id as 8 big-endian bytes (etcd's `int64ToBytes`).
pub fn lease_key(id: i64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// One granted lease in the [`LeaseTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseEntry {
    /// The granted TTL, already raised to the minimum.
    ttl_s: i64,
    /// The checkpointed remaining TTL read back from the bucket (zero when unset). It is
    /// kept only so a restore is lossless; detcd does not checkpoint leases (etcd 3.4 does
    /// not either unless `--experimental-enable-lease-checkpoint` is set).
    remaining_ttl_s: i64,
    /// The keys currently attached, in byte order, which is the order revocation deletes
    /// them in (etcd sorts them so every member's backend stays byte-identical).
    keys: BTreeSet<Vec<u8>>,
}

/// The replicated lease state: granted leases, their TTLs and their attached keys.
///
/// Only applied raft entries change it, so every member holds the same table. It writes its
/// changes into the caller's [`WriteBatch`] so they commit atomically with the MVCC changes
/// of the same entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTable {
    /// TTLs below this are raised to it (etcd's `minLeaseTTL`).
    min_ttl_s: i64,
    /// The granted leases by id.
    leases: BTreeMap<i64, LeaseEntry>,
    /// Which lease each attached key belongs to (etcd's `itemMap`); the inverse of
    /// `LeaseEntry::keys`, so a put can detach a key from its previous lease directly.
    key_leases: BTreeMap<Vec<u8>, i64>,
}

impl LeaseTable {
    /// An empty table that raises TTLs below `min_ttl_s` (see [`min_ttl_s`]) to it.
    pub fn new(min_ttl_s: i64) -> Self {
        debug_assert!(min_ttl_s >= 0, "negative minimum TTL {min_ttl_s}");
        LeaseTable {
            min_ttl_s: min_ttl_s.max(0),
            leases: BTreeMap::new(),
            key_leases: BTreeMap::new(),
        }
    }

    /// The minimum TTL this table grants.
    pub fn min_ttl_s(&self) -> i64 {
        self.min_ttl_s
    }

    /// Grants lease `id` with `ttl_s` seconds and persists it into `batch`, returning the
    /// id and the TTL actually granted (raised to the minimum TTL if shorter, as etcd does).
    ///
    /// `id` must be non-zero: the proposer picks an id for requests without one before
    /// proposing, so every member applies the same id. The checks run in etcd's order:
    /// a zero id is [`EtcdError::LeaseNotFound`], a TTL above [`MAX_LEASE_TTL_S`] is
    /// [`EtcdError::LeaseTtlTooLarge`], an id already granted is [`EtcdError::LeaseExist`].
    /// On error neither the table nor `batch` changes.
    pub fn grant(
        &mut self,
        id: i64,
        ttl_s: i64,
        batch: &mut WriteBatch,
    ) -> Result<(i64, i64), EtcdError> {
        if id == NO_LEASE {
            return Err(EtcdError::LeaseNotFound);
        }
        if ttl_s > MAX_LEASE_TTL_S {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExist);
        }
        let ttl_s = ttl_s.max(self.min_ttl_s);
        debug_assert!((self.min_ttl_s..=MAX_LEASE_TTL_S.max(self.min_ttl_s)).contains(&ttl_s));
        let record = LeasePb {
            id,
            ttl: ttl_s,
            remaining_ttl: 0,
        };
        batch.ops.push(BatchOp::Put {
            bucket: Bucket::Lease,
            key: lease_key(id),
            value: record.encode_to_vec(),
        });
        self.leases.insert(
            id,
            LeaseEntry {
                ttl_s,
                remaining_ttl_s: 0,
                keys: BTreeSet::new(),
            },
        );
        Ok((id, ttl_s))
    }

    /// Revokes lease `id`: forgets it, deletes it from the bucket through `batch`, and
    /// returns its attached keys in byte order.
    ///
    /// The caller must delete exactly these keys in the MVCC store within the same revision
    /// and the same batch, as etcd does, so a crash never leaves keys of a revoked lease.
    /// The keys are detached here already, so the DELETE events of those deletions, when
    /// [`observed`](Self::observe), find nothing left to do. An unknown id is
    /// [`EtcdError::LeaseNotFound`] and changes nothing.
    pub fn revoke(&mut self, id: i64, batch: &mut WriteBatch) -> Result<Vec<Vec<u8>>, EtcdError> {
        let entry = self.leases.remove(&id).ok_or(EtcdError::LeaseNotFound)?;
        for key in &entry.keys {
            let owner = self.key_leases.remove(key);
            debug_assert_eq!(owner, Some(id), "key map disagrees with lease {id}");
        }
        batch.ops.push(BatchOp::Delete {
            bucket: Bucket::Lease,
            key: lease_key(id),
        });
        Ok(entry.keys.into_iter().collect())
    }

    /// Updates key attachments from the MVCC events of one applied entry, in order.
    ///
    /// A PUT attaches its key to `kv.lease` and detaches it from whatever lease it had
    /// before (a key belongs to at most one lease); a PUT without a lease only detaches. A
    /// DELETE detaches. Keeping `ignore_lease` semantics is the MVCC store's business: it
    /// writes the key's previous lease into the event's `kv.lease`, so re-attaching it here
    /// is a no-op. A PUT naming a lease that is not granted attaches nothing, as etcd's
    /// recovery does (the apply step has already rejected such puts with
    /// [`EtcdError::LeaseNotFound`]). Events without a kv or with an unknown type are
    /// ignored.
    pub fn observe(&mut self, events: &[Event]) {
        for event in events {
            let Some(kv) = &event.kv else {
                continue;
            };
            match EventType::try_from(event.r#type) {
                Ok(EventType::Put) => {
                    if self.key_leases.get(&kv.key) == Some(&kv.lease) {
                        // Re-putting a key under the same lease changes nothing; skipping
                        // it avoids cloning the key twice on the hot keep-the-lease path.
                        continue;
                    }
                    self.detach(&kv.key);
                    self.attach(&kv.key, kv.lease);
                }
                Ok(EventType::Delete) => self.detach(&kv.key),
                Err(_) => {}
            }
        }
    }

    /// Attaches `key` to lease `id` if that lease is granted; the key must be detached.
    fn attach(&mut self, key: &[u8], id: i64) {
        debug_assert!(
            !self.key_leases.contains_key(key),
            "attach of an attached key"
        );
        if id == NO_LEASE {
            return;
        }
        if let Some(entry) = self.leases.get_mut(&id) {
            entry.keys.insert(key.to_vec());
            self.key_leases.insert(key.to_vec(), id);
        }
    }

    /// Detaches `key` from its lease, if it has one.
    fn detach(&mut self, key: &[u8]) {
        if let Some(id) = self.key_leases.remove(key) {
            let removed = self
                .leases
                .get_mut(&id)
                .is_some_and(|entry| entry.keys.remove(key));
            debug_assert!(removed, "key map names lease {id} which lacks the key");
        }
    }

    /// Whether lease `id` is granted.
    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// The granted TTL of lease `id`, or `None` if it is not granted.
    pub fn ttl_s(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|entry| entry.ttl_s)
    }

    /// The keys attached to lease `id` in byte order, or `None` if it is not granted.
    pub fn keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        self.leases
            .get(&id)
            .map(|entry| entry.keys.iter().cloned().collect())
    }

    /// The lease `key` is attached to, or `None` (etcd's `GetLease`).
    pub fn lease_of(&self, key: &[u8]) -> Option<i64> {
        self.key_leases.get(key).copied()
    }

    /// The ids of all granted leases, ascending.
    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// Every granted lease as `(id, ttl_s)`, by ascending id: what [`LeaseClock::promote`]
    /// needs when this member becomes leader.
    pub fn leases(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.leases.iter().map(|(&id, entry)| (id, entry.ttl_s))
    }

    /// The number of granted leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no lease is granted.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The `LeaseLeases` answer: every granted lease id, ascending, without a header (the
    /// caller fills it).
    pub fn leases_response(&self) -> LeaseLeasesResponse {
        LeaseLeasesResponse {
            header: None,
            leases: self.leases.keys().map(|&id| LeaseStatus { id }).collect(),
        }
    }

    /// Rebuilds the table from the `lease` bucket's entries and the live keys of the MVCC
    /// store (every current `KeyValue`), as etcd's `initAndRecover` followed by the MVCC
    /// restore's re-attachment does.
    ///
    /// TTLs below `min_ttl_s` are raised to it, as etcd does when the minimum grew since the
    /// lease was granted. Keys naming a lease that is not in the bucket stay unattached
    /// (etcd logs and ignores them). A bucket entry whose key is not 8 bytes, whose value
    /// does not decode, whose id is zero or disagrees with its key, or whose id repeats is
    /// [`EtcdError::Corrupt`].
    pub fn restore(
        min_ttl_s: i64,
        lease_bucket: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        current_kvs: impl IntoIterator<Item = KeyValue>,
    ) -> Result<LeaseTable, EtcdError> {
        let mut table = LeaseTable::new(min_ttl_s);
        for (key, value) in lease_bucket {
            let key_bytes: [u8; 8] = key.as_slice().try_into().map_err(|_| {
                EtcdError::Corrupt(format!("lease bucket key of {} bytes", key.len()))
            })?;
            let key_id = i64::from_be_bytes(key_bytes);
            let record = LeasePb::decode(value.as_slice()).map_err(|e| {
                EtcdError::Corrupt(format!("lease {key_id:016x} does not decode: {e}"))
            })?;
            if record.id != key_id || record.id == NO_LEASE {
                return Err(EtcdError::Corrupt(format!(
                    "lease bucket key {key_id:016x} holds lease {:016x}",
                    record.id
                )));
            }
            let entry = LeaseEntry {
                ttl_s: record.ttl.max(table.min_ttl_s),
                remaining_ttl_s: record.remaining_ttl,
                keys: BTreeSet::new(),
            };
            if table.leases.insert(record.id, entry).is_some() {
                return Err(EtcdError::Corrupt(format!(
                    "lease {key_id:016x} appears twice in the lease bucket"
                )));
            }
        }
        for kv in current_kvs {
            // A key listed twice keeps its last lease, as replaying puts would.
            table.detach(&kv.key);
            table.attach(&kv.key, kv.lease);
        }
        table.check_invariants();
        Ok(table)
    }

    /// The checkpointed remaining TTL read back by [`restore`](Self::restore), or `None` if
    /// the lease is not granted; zero means unset.
    pub fn remaining_ttl_checkpoint_s(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|entry| entry.remaining_ttl_s)
    }

    /// Checks (in debug builds) that the key map and the per-lease key sets are inverses.
    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            let attached: usize = self.leases.values().map(|entry| entry.keys.len()).sum();
            debug_assert_eq!(attached, self.key_leases.len());
            for (key, id) in &self.key_leases {
                debug_assert!(self.leases.get(id).is_some_and(|e| e.keys.contains(key)));
            }
            debug_assert!(!self.leases.contains_key(&NO_LEASE));
        }
    }
}

/// The leader's view of one lease's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadline {
    /// The granted TTL, for renewals.
    ttl_s: i64,
    /// When the lease expires unless renewed.
    expiry_ms: u64,
    /// When [`LeaseClock::expired`] should next report it: its expiry at first, then a
    /// retry interval after each report until it is revoked.
    due_ms: u64,
}

/// The leader-local expiry schedule of leases (etcd's primary lessor's deadlines).
///
/// It is not replicated: a member that becomes leader [`promote`](Self::promote)s it from
/// the [`LeaseTable`], keeps it current through [`on_grant`](Self::on_grant),
/// [`on_revoke`](Self::on_revoke) and [`renew`](Self::renew), and
/// [`demote`](Self::demote)s it when it stops leading, because only the leader expires
/// leases. Deadlines live in an ordered set keyed by due time, so finding expired leases,
/// renewing and revoking are all logarithmic even with 10^5 leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClock {
    /// How long after reporting a lease expired it is reported again if still not revoked.
    retry_after_ms: u64,
    /// The revoke rate [`promote`](Self::promote) spreads expiries for (etcd's
    /// `leaseRevokeRate`, configurable for tests as in etcd).
    revoke_rate_per_s: usize,
    /// Whether this member is the leader (etcd's `isPrimary`).
    primary: bool,
    /// Each tracked lease's deadline by id.
    deadlines: BTreeMap<i64, Deadline>,
    /// `(due_ms, id)` of every tracked lease, earliest first.
    due: BTreeSet<(u64, i64)>,
}

impl LeaseClock {
    /// A demoted clock that re-reports unrevoked expired leases every `retry_after_ms`
    /// (see [`expired_retry_ms`]; raised to at least 1 ms so one call never reports a
    /// lease twice) and spreads expiries for [`LEASE_REVOKE_RATE_PER_S`].
    pub fn new(retry_after_ms: u64) -> Self {
        LeaseClock {
            retry_after_ms: retry_after_ms.max(1),
            revoke_rate_per_s: LEASE_REVOKE_RATE_PER_S,
            primary: false,
            deadlines: BTreeMap::new(),
            due: BTreeSet::new(),
        }
    }

    /// The same clock spreading expiries for `revoke_rate_per_s` instead (at least 1);
    /// etcd makes the rate configurable for tests, and so does detcd.
    pub fn with_revoke_rate(mut self, revoke_rate_per_s: usize) -> Self {
        self.revoke_rate_per_s = revoke_rate_per_s.max(1);
        self
    }

    /// Whether this clock is promoted (its member is the leader).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// The number of leases with a deadline.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    /// Whether no lease has a deadline.
    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    /// Makes this member's clock the primary one, as etcd's `Promote(extend)`: every lease
    /// in `leases` (`(id, ttl_s)`, normally [`LeaseTable::leases`]) expires `ttl_s` seconds
    /// plus `extend_ms` (see [`promote_extend_ms`]) from `now_ms`, forgetting any earlier
    /// deadline, since keep-alives could not reach a leader while there was none.
    ///
    /// When at least the revoke rate's worth of leases exist, leases that would expire in
    /// the same second beyond three quarters of the revoke rate are pushed later, exactly
    /// as etcd 3.4 does, so a leader change does not make thousands of leases expire at
    /// once and saturate revocation. This only ever delays expiries, never advances them.
    pub fn promote(
        &mut self,
        now_ms: u64,
        extend_ms: u64,
        leases: impl IntoIterator<Item = (i64, i64)>,
    ) {
        self.primary = true;
        self.deadlines.clear();
        self.due.clear();
        for (id, ttl_s) in leases {
            let expiry_ms = now_ms
                .saturating_add(ttl_ms(ttl_s))
                .saturating_add(extend_ms);
            self.set_deadline(id, ttl_s, expiry_ms);
        }
        if self.deadlines.len() >= self.revoke_rate_per_s {
            self.spread_expiries(now_ms);
        }
        self.check_invariants_full();
    }

    /// etcd 3.4's pile-up adjustment at the end of `Promote`, in integer milliseconds.
    ///
    /// Leases are visited by remaining time (ties by id, so every run is deterministic). A
    /// window opens at the first lease's remaining time; up to three quarters of the revoke
    /// rate may expire in it. Each lease beyond that is delayed so that the n-th lease of
    /// the window expires n / target seconds after the window's base, minus how far past
    /// the base it already was; the window then extends to that delay. A lease beyond the
    /// window opens a new one.
    fn spread_expiries(&mut self, now_ms: u64) {
        let mut order: Vec<(u64, i64)> = self
            .deadlines
            .iter()
            .map(|(&id, d)| (d.expiry_ms.saturating_sub(now_ms), id))
            .collect();
        order.sort_unstable();
        let Some(&(first_remaining_ms, _)) = order.first() else {
            return;
        };
        let target_per_s = u64::try_from((3 * self.revoke_rate_per_s) / 4)
            .unwrap_or(u64::MAX)
            .max(1);
        let mut base_ms = first_remaining_ms;
        let mut next_window_ms = base_ms.saturating_add(MS_PER_S);
        let mut expires: u64 = 0;
        for (remaining_ms, id) in order {
            if remaining_ms > next_window_ms {
                base_ms = remaining_ms;
                next_window_ms = base_ms.saturating_add(MS_PER_S);
                expires = 1;
                continue;
            }
            expires += 1;
            if expires <= target_per_s {
                continue;
            }
            // The lease is `remaining_ms - base_ms` past the window's base already, so it
            // needs only the rest of its share of delay. The result is positive because
            // each lease's share grows by more than a millisecond over the previous one's.
            let share_ms = MS_PER_S.saturating_mul(expires) / target_per_s;
            debug_assert!(remaining_ms >= base_ms);
            let delay_ms = share_ms.saturating_sub(remaining_ms - base_ms);
            debug_assert!(delay_ms > 0, "spreading must only delay");
            next_window_ms = base_ms.saturating_add(delay_ms);
            let ttl_s = self.deadlines[&id].ttl_s;
            let expiry_ms = now_ms.saturating_add(remaining_ms).saturating_add(delay_ms);
            self.set_deadline(id, ttl_s, expiry_ms);
        }
    }

    /// Stops expiring leases, as etcd's `Demote`: a follower never expires leases, and the
    /// next promotion recomputes every deadline anyway.
    pub fn demote(&mut self) {
        self.primary = false;
        self.deadlines.clear();
        self.due.clear();
    }

    /// Starts the deadline of a lease the table just granted with `ttl_s` (the TTL
    /// [`LeaseTable::grant`] returned): it expires `ttl_s` from `now_ms`. A follower's
    /// clock ignores grants; its next promotion picks the lease up from the table.
    pub fn on_grant(&mut self, id: i64, ttl_s: i64, now_ms: u64) {
        if !self.primary {
            return;
        }
        self.set_deadline(id, ttl_s, now_ms.saturating_add(ttl_ms(ttl_s)));
        self.check_invariants();
    }

    /// Forgets the deadline of a revoked lease (no-op if it had none).
    pub fn on_revoke(&mut self, id: i64) {
        if let Some(d) = self.deadlines.remove(&id) {
            let removed = self.due.remove(&(d.due_ms, id));
            debug_assert!(removed, "deadline of lease {id} missing from the due set");
        }
        self.check_invariants();
    }

    /// Renews lease `id` (a keep-alive): it now expires its TTL from `now_ms`. Returns the
    /// TTL, or `None` if this clock is not primary (the request belongs to the leader), the
    /// lease is unknown, or it has already expired. etcd refuses to renew an expired lease
    /// because its revocation may already be on its way through raft; the keep-alive then
    /// answers TTL 0.
    pub fn renew(&mut self, id: i64, now_ms: u64) -> Option<i64> {
        if !self.primary {
            return None;
        }
        let d = *self.deadlines.get(&id)?;
        if now_ms >= d.expiry_ms {
            return None;
        }
        self.set_deadline(id, d.ttl_s, now_ms.saturating_add(ttl_ms(d.ttl_s)));
        self.check_invariants();
        Some(d.ttl_s)
    }

    /// The remaining TTL of lease `id` as `LeaseTimeToLive` reports it, or `None` if this
    /// clock is not primary or does not know the lease.
    ///
    /// etcd answers `int64(l.Remaining().Seconds())`: whole seconds truncated toward zero,
    /// so 1.9 s left reads 1, and a lease expired but not yet revoked reads 0 or a negative
    /// number of seconds.
    pub fn remaining_ttl_s(&self, id: i64, now_ms: u64) -> Option<i64> {
        if !self.primary {
            return None;
        }
        let d = self.deadlines.get(&id)?;
        let remaining_ms = i128::from(d.expiry_ms) - i128::from(now_ms);
        // i128 division truncates toward zero, matching Go's float-to-int conversion.
        let remaining_s = remaining_ms / i128::from(MS_PER_S);
        Some(i64::try_from(remaining_s).unwrap_or(i64::MIN))
    }

    /// When lease `id` expires unless renewed, or `None` if it has no deadline.
    pub fn expiry_ms(&self, id: i64) -> Option<u64> {
        self.deadlines.get(&id).map(|d| d.expiry_ms)
    }

    /// Takes up to `max` leases that are due at `now_ms`, earliest due first (ties by id):
    /// the leases the leader should now propose to revoke.
    ///
    /// A lease is due when its expiry has passed (expiry at or before `now_ms`, as etcd
    /// compares). Each reported lease is not reported again until `retry_after_ms` later,
    /// and then only if it still has not been revoked, which happens when its revoke
    /// proposal was lost (etcd re-checks on the same interval). Pass
    /// [`REVOKE_BATCH_MAX`] every [`EXPIRY_CHECK_INTERVAL_MS`] to revoke at etcd's rate.
    pub fn expired(&mut self, now_ms: u64, max: usize) -> Vec<i64> {
        // Collect first and reschedule afterwards, so a lease whose retry time saturates
        // at u64::MAX cannot be handed out twice by one call.
        let due: Vec<(u64, i64)> = self
            .due
            .range(..=(now_ms, i64::MAX))
            .take(max)
            .copied()
            .collect();
        let retry_ms = now_ms.saturating_add(self.retry_after_ms);
        let mut out = Vec::with_capacity(due.len());
        for (due_ms, id) in due {
            self.due.remove(&(due_ms, id));
            let Some(d) = self.deadlines.get_mut(&id) else {
                debug_assert!(false, "due lease {id} has no deadline");
                continue;
            };
            debug_assert!(d.expiry_ms <= now_ms, "lease {id} reported before expiry");
            d.due_ms = retry_ms;
            self.due.insert((retry_ms, id));
            out.push(id);
        }
        self.check_invariants();
        out
    }

    /// The earliest time a lease becomes due (expires, or is due for a re-report), so the
    /// leader's timer knows when to wake; `None` if no lease has a deadline.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.due.first().map(|&(due_ms, _)| due_ms)
    }

    /// Sets lease `id`'s deadline to `expiry_ms`, due at that time, replacing any other.
    fn set_deadline(&mut self, id: i64, ttl_s: i64, expiry_ms: u64) {
        let deadline = Deadline {
            ttl_s,
            expiry_ms,
            due_ms: expiry_ms,
        };
        if let Some(old) = self.deadlines.insert(id, deadline) {
            let removed = self.due.remove(&(old.due_ms, id));
            debug_assert!(removed, "deadline of lease {id} missing from the due set");
        }
        self.due.insert((expiry_ms, id));
    }

    /// Checks (in debug builds) the invariants that cost O(1), after every change: a full
    /// scan per keep-alive would make debug runs with many leases quadratic.
    fn check_invariants(&self) {
        debug_assert_eq!(self.deadlines.len(), self.due.len());
        debug_assert!(self.primary || self.deadlines.is_empty());
    }

    /// Checks (in debug builds) that the due set mirrors the deadlines exactly; O(n log n),
    /// so it runs after promotion (itself O(n log n)) and in tests.
    fn check_invariants_full(&self) {
        self.check_invariants();
        if cfg!(debug_assertions) {
            for (&id, d) in &self.deadlines {
                debug_assert!(self.due.contains(&(d.due_ms, id)));
                debug_assert!(d.due_ms >= d.expiry_ms);
            }
        }
    }
}

/// The `LeaseTimeToLive` answer for lease `id` at `now_ms`, without a header, or `None`
/// when this member is not the leader and must forward the request (only the leader knows
/// deadlines).
///
/// As etcd's gRPC layer does, an unknown lease is not an error but TTL -1 with granted TTL
/// 0. With `with_keys` the attached keys are listed, in byte order.
pub fn time_to_live(
    table: &LeaseTable,
    clock: &LeaseClock,
    id: i64,
    with_keys: bool,
    now_ms: u64,
) -> Option<LeaseTimeToLiveResponse> {
    if !clock.is_primary() {
        return None;
    }
    let (Some(granted_ttl), Some(ttl)) = (table.ttl_s(id), clock.remaining_ttl_s(id, now_ms))
    else {
        debug_assert!(
            !table.exists(id) || clock.expiry_ms(id).is_some(),
            "lease {id} granted but without a deadline on the leader"
        );
        return Some(LeaseTimeToLiveResponse {
            header: None,
            id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        });
    };
    Some(LeaseTimeToLiveResponse {
        header: None,
        id,
        ttl,
        granted_ttl,
        keys: if with_keys {
            table.keys(id).unwrap_or_default()
        } else {
            Vec::new()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// etcd's default minimum TTL (100 ms heartbeat, 1000 ms election timeout).
    const MIN_TTL_S: i64 = 2;
    /// A retry interval for the clock tests.
    const RETRY_MS: u64 = 7_000;

    fn put(key: &[u8], lease: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                lease,
                ..KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    fn delete(key: &[u8]) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                ..KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    /// Applies the lease-bucket ops of `batch` to `bucket`, as a backend would.
    fn apply_batch(bucket: &mut BTreeMap<Vec<u8>, Vec<u8>>, batch: &WriteBatch) {
        for op in &batch.ops {
            match op {
                BatchOp::Put {
                    bucket: Bucket::Lease,
                    key,
                    value,
                } => {
                    bucket.insert(key.clone(), value.clone());
                }
                BatchOp::Delete {
                    bucket: Bucket::Lease,
                    key,
                } => {
                    bucket.remove(key);
                }
                other => panic!("lease table wrote outside its bucket: {other:?}"),
            }
        }
    }

    fn keys(list: &[&[u8]]) -> Vec<Vec<u8>> {
        list.iter().map(|k| k.to_vec()).collect()
    }

    #[test]
    fn min_ttl_matches_etcd() {
        // Defaults: 10 ticks, 15 ticks of 100 ms = 1.5 s, rounded up to 2 s.
        assert_eq!(min_ttl_s(1000, 100), 2);
        // Checked against etcd 3.4.23 with --election-timeout 2100: 31 ticks, 3.1 s -> 4 s.
        assert_eq!(min_ttl_s(2100, 100), 4);
        // The tick count is truncated first: 1000 / 300 = 3 ticks, 4 ticks = 1.2 s -> 2 s.
        assert_eq!(min_ttl_s(1000, 300), 2);
        assert_eq!(min_ttl_s(2000, 1000), 3);
        assert_eq!(min_ttl_s(0, 0), 0);
        assert_eq!(promote_extend_ms(1050, 100), 1000);
        assert_eq!(expired_retry_ms(1000, 100), 7_000);
    }

    #[test]
    fn grant_raises_ttl_to_minimum_and_persists_in_etcd_format() {
        let mut table = LeaseTable::new(MIN_TTL_S);
        let mut batch = WriteBatch::default();
        assert_eq!(table.grant(7, 1, &mut batch), Ok((7, 2)));
        assert_eq!(table.grant(8, -5, &mut batch), Ok((8, 2)));
        assert_eq!(table.grant(9, 60, &mut batch), Ok((9, 60)));
        assert_eq!(
            table.grant(10, MAX_LEASE_TTL_S, &mut batch),
            Ok((10, MAX_LEASE_TTL_S))
        );
        assert_eq!(table.ttl_s(7), Some(2));
        assert_eq!(table.ids(), vec![7, 8, 9, 10]);
        assert_eq!(table.len(), 4);
        assert_eq!(batch.ops.len(), 4);
        // Key: the id as 8 big-endian bytes. Value: gogoproto leasepb.Lease with the zero
        // RemainingTTL omitted, i.e. 08 09 10 3c for {ID: 9, TTL: 60}.
        assert_eq!(
            batch.ops[2],
            BatchOp::Put {
                bucket: Bucket::Lease,
                key: vec![0, 0, 0, 0, 0, 0, 0, 9],
                value: vec![0x08, 9, 0x10, 60],
            }
        );
    }

    #[test]
    fn grant_errors_leave_everything_unchanged() {
        let mut table = LeaseTable::new(MIN_TTL_S);
        let mut batch = WriteBatch::default();
        table.grant(1, 10, &mut batch).unwrap();
        let before = (table.clone(), batch.clone());
        assert_eq!(table.grant(1, 20, &mut batch), Err(EtcdError::LeaseExist));
        assert_eq!(
            table.grant(2, MAX_LEASE_TTL_S + 1, &mut batch),
            Err(EtcdError::LeaseTtlTooLarge)
        );
        // etcd checks the TTL before the id's existence.
        assert_eq!(
            table.grant(1, MAX_LEASE_TTL_S + 1, &mut batch),
            Err(EtcdError::LeaseTtlTooLarge)
        );
        assert_eq!(
            table.grant(0, 10, &mut batch),
            Err(EtcdError::LeaseNotFound)
        );
        assert_eq!((table, batch), before);
    }

    #[test]
    fn revoke_returns_keys_in_order_and_deletes_the_record() {
        let mut table = LeaseTable::new(MIN_TTL_S);
        let mut batch = WriteBatch::default();
        table.grant(5, 10, &mut batch).unwrap();
        table.grant(6, 10, &mut batch).unwrap();
        table.observe(&[put(b"k1", 5), put(b"a", 5), put(b"b", 6), put(b"z", 0)]);
        let mut batch = WriteBatch::default();
        assert_eq!(table.revoke(5, &mut batch), Ok(keys(&[b"a", b"k1"])));
        assert_eq!(
            batch.ops,
            vec![BatchOp::Delete {
                bucket: Bucket::Lease,
                key: lease_key(5)
            }]
        );
        assert!(!table.exists(5));
        assert_eq!(table.lease_of(b"a"), None);
        assert_eq!(table.lease_of(b"b"), Some(6));
        // The MVCC deletes of the revoked keys find nothing left to detach.
        table.observe(&[delete(b"a"), delete(b"k1")]);
        assert_eq!(table.keys(6), Some(keys(&[b"b"])));
        let mut batch = WriteBatch::default();
        assert_eq!(table.revoke(5, &mut batch), Err(EtcdError::LeaseNotFound));
        assert!(batch.ops.is_empty());
        table.check_invariants();
    }

    #[test]
    fn events_attach_and_detach_keys() {
        let mut table = LeaseTable::new(MIN_TTL_S);
        let mut batch = WriteBatch::default();
        table.grant(1, 10, &mut batch).unwrap();
        table.grant(2, 10, &mut batch).unwrap();

        table.observe(&[put(b"k", 1)]);
        assert_eq!(table.lease_of(b"k"), Some(1));
        assert_eq!(table.keys(1), Some(keys(&[b"k"])));

        // Re-putting under another lease moves the key.
        table.observe(&[put(b"k", 2)]);
        assert_eq!(table.lease_of(b"k"), Some(2));
        assert_eq!(table.keys(1), Some(vec![]));
        assert_eq!(table.keys(2), Some(keys(&[b"k"])));

        // With ignore_lease the MVCC store repeats the old lease in the event: no change.
        table.observe(&[put(b"k", 2)]);
        assert_eq!(table.keys(2), Some(keys(&[b"k"])));

        // A put without a lease detaches.
        table.observe(&[put(b"k", 0)]);
        assert_eq!(table.lease_of(b"k"), None);
        assert_eq!(table.keys(2), Some(vec![]));

        // Deletes detach; events apply in order within one batch.
        table.observe(&[put(b"x", 1), put(b"y", 1), delete(b"x")]);
        assert_eq!(table.keys(1), Some(keys(&[b"y"])));

        // A put naming an ungranted lease attaches nothing (and detaches the old lease).
        table.observe(&[put(b"y", 99)]);
        assert_eq!(table.lease_of(b"y"), None);
        assert_eq!(table.keys(1), Some(vec![]));

        // Malformed events are ignored rather than panicking.
        table.observe(&[Event {
            r#type: 42,
            kv: Some(KeyValue::default()),
            prev_kv: None,
        }]);
        table.observe(&[Event::default()]);
        assert_eq!(table.keys(99), None);
        table.check_invariants();
    }

    #[test]
    fn restore_round_trips_through_the_bucket() {
        let mut table = LeaseTable::new(MIN_TTL_S);
        let mut bucket = BTreeMap::new();
        let mut batch = WriteBatch::default();
        table.grant(1, 10, &mut batch).unwrap();
        table.grant(-3, 1, &mut batch).unwrap();
        table.grant(i64::MAX, 100, &mut batch).unwrap();
        table.grant(4, 5, &mut batch).unwrap();
        table.revoke(4, &mut batch).unwrap();
        apply_batch(&mut bucket, &batch);
        let kvs = vec![
            KeyValue {
                key: b"a".to_vec(),
                lease: 1,
                ..KeyValue::default()
            },
            KeyValue {
                key: b"b".to_vec(),
                lease: -3,
                ..KeyValue::default()
            },
            KeyValue {
                key: b"c".to_vec(),
                lease: 0,
                ..KeyValue::default()
            },
            KeyValue {
                key: b"d".to_vec(),
                lease: 4,
                ..KeyValue::default()
            },
        ];
        table.observe(&[put(b"a", 1), put(b"b", -3), put(b"c", 0), put(b"d", 4)]);
        let restored = LeaseTable::restore(MIN_TTL_S, bucket.clone(), kvs).unwrap();
        assert_eq!(restored, table);
        assert_eq!(restored.ids(), vec![-3, 1, i64::MAX]);

        // A larger minimum raises restored TTLs, as etcd's recovery does.
        let raised = LeaseTable::restore(50, bucket, Vec::new()).unwrap();
        assert_eq!(raised.ttl_s(1), Some(50));
        assert_eq!(raised.ttl_s(i64::MAX), Some(100));
    }

    #[test]
    fn restore_rejects_corrupt_entries() {
        let good = LeasePb {
            id: 1,
            ttl: 10,
            remaining_ttl: 3,
        }
        .encode_to_vec();
        let ok = LeaseTable::restore(0, vec![(lease_key(1), good.clone())], Vec::new()).unwrap();
        assert_eq!(ok.remaining_ttl_checkpoint_s(1), Some(3));
        let cases: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![
            vec![(vec![1, 2, 3], good.clone())],
            vec![(lease_key(1), vec![0xff, 0xff])],
            vec![(lease_key(2), good.clone())],
            vec![(lease_key(0), Vec::new())],
            vec![(lease_key(1), good.clone()), (lease_key(1), good)],
        ];
        for case in cases {
            let result = LeaseTable::restore(0, case.clone(), Vec::new());
            assert!(
                matches!(result, Err(EtcdError::Corrupt(_))),
                "{case:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn leases_response_lists_ids() {
        let mut table = LeaseTable::new(MIN_TTL_S);
        let mut batch = WriteBatch::default();
        table.grant(9, 10, &mut batch).unwrap();
        table.grant(3, 10, &mut batch).unwrap();
        let ids: Vec<i64> = table
            .leases_response()
            .leases
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, vec![3, 9]);
        assert_eq!(table.leases().collect::<Vec<_>>(), vec![(3, 10), (9, 10)]);
    }

    #[test]
    fn promote_extends_every_lease_and_demote_forgets() {
        let mut clock = LeaseClock::new(RETRY_MS);
        // A follower tracks nothing and answers nothing.
        clock.on_grant(1, 10, 0);
        assert!(clock.is_empty());
        assert_eq!(clock.renew(1, 0), None);
        assert_eq!(clock.remaining_ttl_s(1, 0), None);

        clock.promote(1_000, 1_000, vec![(1, 10), (2, 5)]);
        assert!(clock.is_primary());
        assert_eq!(clock.expiry_ms(1), Some(12_000));
        assert_eq!(clock.expiry_ms(2), Some(7_000));
        assert_eq!(clock.next_expiry_ms(), Some(7_000));
        assert_eq!(clock.expired(6_999, 10), Vec::<i64>::new());
        assert_eq!(clock.expired(7_000, 10), vec![2]);

        // Promotion resets deadlines, including already reported ones.
        clock.promote(20_000, 500, vec![(1, 10), (2, 5)]);
        assert_eq!(clock.expiry_ms(2), Some(25_500));

        clock.demote();
        assert!(!clock.is_primary());
        assert!(clock.is_empty());
        assert_eq!(clock.next_expiry_ms(), None);
        assert_eq!(clock.expired(u64::MAX, 10), Vec::<i64>::new());
    }

    #[test]
    fn renew_refreshes_until_expiry_only() {
        let mut clock = LeaseClock::new(RETRY_MS);
        clock.promote(0, 0, Vec::new());
        clock.on_grant(1, 10, 1_000);
        assert_eq!(clock.expiry_ms(1), Some(11_000));
        assert_eq!(clock.renew(1, 5_000), Some(10));
        assert_eq!(clock.expiry_ms(1), Some(15_000));
        assert_eq!(clock.next_expiry_ms(), Some(15_000));
        assert_eq!(clock.renew(1, 14_999), Some(10));
        assert_eq!(clock.renew(1, 24_999), None);
        assert_eq!(clock.renew(2, 0), None);
        // Expired: refused even before it was reported.
        assert_eq!(clock.expiry_ms(1), Some(24_999));
        assert_eq!(clock.renew(1, 30_000), None);
        clock.on_revoke(1);
        assert_eq!(clock.renew(1, 30_000), None);
        assert!(clock.is_empty());
    }

    #[test]
    fn remaining_ttl_truncates_like_etcd() {
        let mut clock = LeaseClock::new(RETRY_MS);
        clock.promote(0, 0, vec![(1, 3)]);
        assert_eq!(clock.remaining_ttl_s(1, 0), Some(3));
        assert_eq!(clock.remaining_ttl_s(1, 1), Some(2));
        assert_eq!(clock.remaining_ttl_s(1, 1_100), Some(1));
        assert_eq!(clock.remaining_ttl_s(1, 2_001), Some(0));
        assert_eq!(clock.remaining_ttl_s(1, 3_999), Some(0));
        assert_eq!(clock.remaining_ttl_s(1, 4_500), Some(-1));
        assert_eq!(clock.remaining_ttl_s(2, 0), None);
    }

    #[test]
    fn time_to_live_answers_like_etcd() {
        let mut table = LeaseTable::new(MIN_TTL_S);
        let mut clock = LeaseClock::new(RETRY_MS);
        let mut batch = WriteBatch::default();
        let (id, ttl_s) = table.grant(5, 3, &mut batch).unwrap();
        assert_eq!(time_to_live(&table, &clock, id, true, 0), None);
        clock.promote(0, 0, table.leases());
        table.observe(&[put(b"k1", 5), put(b"a", 5)]);
        let resp = time_to_live(&table, &clock, id, true, 1_500).unwrap();
        assert_eq!((resp.id, resp.ttl, resp.granted_ttl), (5, 1, ttl_s));
        assert_eq!(resp.keys, keys(&[b"a", b"k1"]));
        let resp = time_to_live(&table, &clock, id, false, 1_500).unwrap();
        assert!(resp.keys.is_empty());
        let missing = time_to_live(&table, &clock, 77, true, 0).unwrap();
        assert_eq!((missing.id, missing.ttl, missing.granted_ttl), (77, -1, 0));
    }

    #[test]
    fn expired_is_ordered_bounded_and_retried() {
        let mut clock = LeaseClock::new(RETRY_MS);
        clock.promote(0, 0, Vec::new());
        clock.on_grant(3, 5, 0);
        clock.on_grant(1, 5, 0);
        clock.on_grant(2, 4, 0);
        clock.on_grant(4, 100, 0);
        assert_eq!(clock.expired(3_999, 10), Vec::<i64>::new());
        // Earliest first, ties by id, at most `max` per call.
        assert_eq!(clock.expired(5_000, 2), vec![2, 1]);
        assert_eq!(clock.expired(5_000, 2), vec![3]);
        assert_eq!(clock.expired(5_000, 2), Vec::<i64>::new());
        assert_eq!(clock.expired(5_000, 0), Vec::<i64>::new());
        // Lease 3 gets revoked; 1 and 2 are re-reported after the retry interval.
        clock.on_revoke(3);
        assert_eq!(clock.next_expiry_ms(), Some(5_000 + RETRY_MS));
        assert_eq!(clock.expired(5_000 + RETRY_MS - 1, 10), Vec::<i64>::new());
        assert_eq!(clock.expired(5_000 + RETRY_MS, 10), vec![1, 2]);
        clock.on_revoke(1);
        clock.on_revoke(2);
        assert_eq!(clock.next_expiry_ms(), Some(100_000));
    }

    #[test]
    fn promote_spreads_piled_up_expiries() {
        const RATE: usize = 100;
        const TARGET: usize = 3 * RATE / 4;
        let mut clock = LeaseClock::new(RETRY_MS).with_revoke_rate(RATE);
        let leases: Vec<(i64, i64)> = (1..=400).map(|id| (id, 10)).collect();
        clock.promote(1_000, 2_000, leases.clone());
        let base_ms = 1_000 + 10_000 + 2_000;
        let mut per_second = BTreeMap::<u64, usize>::new();
        for &(id, _) in &leases {
            let expiry_ms = clock.expiry_ms(id).unwrap();
            assert!(expiry_ms >= base_ms, "lease {id} expires early");
            *per_second.entry((expiry_ms - base_ms) / 1_000).or_default() += 1;
        }
        // 400 leases at 75 per second need six seconds, none fuller than the target.
        assert_eq!(per_second.len(), 6, "{per_second:?}");
        assert!(per_second.values().all(|&n| n <= TARGET), "{per_second:?}");
        // Lower ids keep their expiry; the pile-up is spread in id order.
        assert_eq!(clock.expiry_ms(1), Some(base_ms));
        assert_eq!(clock.expiry_ms(TARGET as i64), Some(base_ms));
        assert!(clock.expiry_ms(TARGET as i64 + 1).unwrap() > base_ms);

        // Below the rate nothing moves.
        let mut small = LeaseClock::new(RETRY_MS).with_revoke_rate(RATE);
        small.promote(0, 0, (1..RATE as i64).map(|id| (id, 10)));
        assert!((1..RATE as i64).all(|id| small.expiry_ms(id) == Some(10_000)));

        // Spread-out leases are not delayed either.
        let mut sparse = LeaseClock::new(RETRY_MS).with_revoke_rate(RATE);
        sparse.promote(0, 0, (1..=200).map(|id| (id, id)));
        assert!((1..=200).all(|id| sparse.expiry_ms(id) == Some(id as u64 * 1_000)));
    }

    #[test]
    fn saturated_clock_reports_each_lease_once_per_call() {
        let mut clock = LeaseClock::new(RETRY_MS);
        clock.promote(u64::MAX - 5, 0, vec![(1, 10), (2, 10)]);
        assert_eq!(clock.expiry_ms(1), Some(u64::MAX));
        assert_eq!(clock.expired(u64::MAX, 10), vec![1, 2]);
        assert_eq!(clock.expired(u64::MAX, 10), vec![1, 2]);
        assert_eq!(clock.remaining_ttl_s(1, 0), Some((u64::MAX / 1_000) as i64));
        clock.check_invariants_full();
    }

    #[test]
    fn hundred_thousand_leases_expire_at_the_revoke_rate() {
        const N: i64 = 100_000;
        let mut table = LeaseTable::new(MIN_TTL_S);
        let mut batch = WriteBatch::default();
        for id in 1..=N {
            table.grant(id, 60, &mut batch).unwrap();
        }
        let mut clock = LeaseClock::new(RETRY_MS);
        clock.promote(0, 1_000, table.leases());
        assert_eq!(clock.len(), N as usize);
        // Spreading at 750 per second stretches the pile-up over 134 seconds.
        let last_ms = (1..=N).filter_map(|id| clock.expiry_ms(id)).max().unwrap();
        assert!(last_ms >= 61_000 + 133_000, "{last_ms}");
        let mut now_ms = 0;
        let mut revoked = 0usize;
        while let Some(wake_ms) = clock.next_expiry_ms() {
            now_ms = wake_ms.max(now_ms + EXPIRY_CHECK_INTERVAL_MS);
            let ids = clock.expired(now_ms, REVOKE_BATCH_MAX);
            assert!(ids.len() <= REVOKE_BATCH_MAX);
            for id in ids {
                table.revoke(id, &mut batch).unwrap();
                clock.on_revoke(id);
                revoked += 1;
            }
        }
        assert_eq!(revoked, N as usize);
        assert!(table.is_empty());
    }

    /// One step of a random lease workload.
    #[derive(Debug, Clone)]
    enum Op {
        Grant { id: i64, ttl_s: i64 },
        Renew { id: i64 },
        Revoke { id: i64 },
        Advance { ms: u64 },
        Expired { max: usize },
        Reelect { extend_ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1i64..8, -1i64..8).prop_map(|(id, ttl_s)| Op::Grant { id, ttl_s }),
            3 => (1i64..8).prop_map(|id| Op::Renew { id }),
            1 => (1i64..8).prop_map(|id| Op::Revoke { id }),
            2 => (0u64..4_000).prop_map(|ms| Op::Advance { ms }),
            // Whole half-seconds make the clock land exactly on expiries, where the
            // at-or-before comparisons matter.
            2 => (0u64..8).prop_map(|n| Op::Advance { ms: n * 500 }),
            3 => (0usize..4).prop_map(|max| Op::Expired { max }),
            1 => (0u64..2_000).prop_map(|extend_ms| Op::Reelect { extend_ms }),
        ]
    }

    /// The naive model: a list of leases scanned linearly.
    #[derive(Debug, Clone)]
    struct ModelLease {
        id: i64,
        ttl_s: i64,
        expiry_ms: u64,
        due_ms: u64,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// The table and clock behave exactly like a linear scan over a list of leases.
        #[test]
        fn matches_naive_model(ops in prop::collection::vec(op(), 1..80)) {
            const RETRY: u64 = 3_000;
            let mut table = LeaseTable::new(MIN_TTL_S);
            let mut clock = LeaseClock::new(RETRY);
            let mut model: Vec<ModelLease> = Vec::new();
            let mut now_ms = 0u64;
            clock.promote(now_ms, 0, table.leases());
            for op in ops {
                let mut batch = WriteBatch::default();
                match op {
                    Op::Grant { id, ttl_s } => {
                        let got = table.grant(id, ttl_s, &mut batch);
                        if model.iter().any(|l| l.id == id) {
                            prop_assert_eq!(got, Err(EtcdError::LeaseExist));
                        } else {
                            let ttl_s = ttl_s.max(MIN_TTL_S);
                            prop_assert_eq!(got, Ok((id, ttl_s)));
                            clock.on_grant(id, ttl_s, now_ms);
                            let expiry_ms = now_ms + ttl_s as u64 * 1_000;
                            model.push(ModelLease { id, ttl_s, expiry_ms, due_ms: expiry_ms });
                        }
                    }
                    Op::Renew { id } => {
                        let want = model.iter_mut().find(|l| l.id == id).and_then(|l| {
                            (now_ms < l.expiry_ms).then(|| {
                                l.expiry_ms = now_ms + l.ttl_s as u64 * 1_000;
                                l.due_ms = l.expiry_ms;
                                l.ttl_s
                            })
                        });
                        prop_assert_eq!(clock.renew(id, now_ms), want);
                    }
                    Op::Revoke { id } => {
                        let got = table.revoke(id, &mut batch);
                        match model.iter().position(|l| l.id == id) {
                            Some(i) => {
                                prop_assert!(got.is_ok());
                                clock.on_revoke(id);
                                model.remove(i);
                            }
                            None => prop_assert_eq!(got, Err(EtcdError::LeaseNotFound)),
                        }
                    }
                    Op::Advance { ms } => now_ms += ms,
                    Op::Expired { max } => {
                        let mut due: Vec<&mut ModelLease> =
                            model.iter_mut().filter(|l| l.due_ms <= now_ms).collect();
                        due.sort_by_key(|l| (l.due_ms, l.id));
                        let mut want = Vec::new();
                        for l in due.into_iter().take(max) {
                            l.due_ms = now_ms + RETRY;
                            want.push(l.id);
                        }
                        let got = clock.expired(now_ms, max);
                        for id in &got {
                            let l = model.iter().find(|l| l.id == *id).unwrap();
                            prop_assert!(l.expiry_ms <= now_ms, "lease {} reported early", id);
                        }
                        prop_assert_eq!(got, want);
                    }
                    Op::Reelect { extend_ms } => {
                        clock.demote();
                        prop_assert_eq!(clock.renew(1, now_ms), None);
                        clock.promote(now_ms, extend_ms, table.leases());
                        for l in &mut model {
                            l.expiry_ms = now_ms + l.ttl_s as u64 * 1_000 + extend_ms;
                            l.due_ms = l.expiry_ms;
                        }
                    }
                }
                clock.check_invariants_full();
                table.check_invariants();
                prop_assert_eq!(clock.len(), model.len());
                prop_assert_eq!(table.len(), model.len());
                prop_assert_eq!(clock.next_expiry_ms(), model.iter().map(|l| l.due_ms).min());
                for l in &model {
                    let want = (l.expiry_ms as i64 - now_ms as i64) / 1_000;
                    prop_assert_eq!(clock.remaining_ttl_s(l.id, now_ms), Some(want));
                    prop_assert_eq!(table.ttl_s(l.id), Some(l.ttl_s));
                }
            }
        }

        /// A leader timer that wakes exactly at `next_expiry_ms` and revokes everything it
        /// is handed sees every lease expire exactly at its deadline, never earlier.
        #[test]
        fn timer_revokes_exactly_at_expiry(
            grants in prop::collection::vec((0u64..5_000, 0i64..20), 1..40),
            renew_every_ms in prop::option::of(500u64..3_000),
        ) {
            let mut table = LeaseTable::new(MIN_TTL_S);
            let mut clock = LeaseClock::new(RETRY_MS);
            clock.promote(0, 0, Vec::new());
            let mut pending: Vec<(u64, i64, i64)> = grants
                .iter()
                .enumerate()
                .map(|(i, &(at_ms, ttl_s))| (at_ms, i as i64 + 1, ttl_s))
                .collect();
            pending.sort();
            // Leases with an even id are kept alive until 10 s, then abandoned.
            let mut deadlines: BTreeMap<i64, u64> = BTreeMap::new();
            let mut now_ms = 0u64;
            let mut next_renew_ms = renew_every_ms.unwrap_or(u64::MAX);
            let mut wakes = 0u32;
            loop {
                // A clock that reported a due lease late would wake the timer forever.
                wakes += 1;
                prop_assert!(wakes < 10_000, "timer spins at {} ms", now_ms);
                let next_grant = pending.first().map(|g| g.0);
                let next_expiry = clock.next_expiry_ms();
                let Some(wake_ms) = [next_grant, next_expiry, Some(next_renew_ms)]
                    .into_iter()
                    .flatten()
                    .min()
                else {
                    break;
                };
                if wake_ms == u64::MAX {
                    break;
                }
                prop_assert!(wake_ms >= now_ms);
                now_ms = wake_ms;
                while pending.first().is_some_and(|g| g.0 <= now_ms) {
                    let (_, id, ttl_s) = pending.remove(0);
                    let mut batch = WriteBatch::default();
                    let (id, ttl_s) = table.grant(id, ttl_s, &mut batch).unwrap();
                    clock.on_grant(id, ttl_s, now_ms);
                    deadlines.insert(id, now_ms + ttl_s as u64 * 1_000);
                }
                if now_ms == next_renew_ms {
                    for (&id, deadline) in deadlines.iter_mut() {
                        if id % 2 == 0 && now_ms < 10_000 {
                            if let Some(ttl_s) = clock.renew(id, now_ms) {
                                *deadline = now_ms + ttl_s as u64 * 1_000;
                            }
                        }
                    }
                    next_renew_ms = match renew_every_ms {
                        Some(every) if now_ms < 10_000 => now_ms + every,
                        _ => u64::MAX,
                    };
                }
                for id in clock.expired(now_ms, REVOKE_BATCH_MAX) {
                    prop_assert_eq!(deadlines.remove(&id), Some(now_ms), "lease {}", id);
                    let mut batch = WriteBatch::default();
                    prop_assert!(table.revoke(id, &mut batch).is_ok());
                    clock.on_revoke(id);
                }
            }
            prop_assert!(deadlines.is_empty(), "never expired: {:?}", deadlines);
            prop_assert!(table.is_empty() && clock.is_empty());
        }

        /// Attachments always match a model map of key to lease built from the same events.
        #[test]
        fn attachments_match_model(
            events in prop::collection::vec((0u8..6, 0i64..4, any::<bool>()), 0..60),
        ) {
            let mut table = LeaseTable::new(MIN_TTL_S);
            let mut batch = WriteBatch::default();
            for id in 1..3 {
                table.grant(id, 10, &mut batch).unwrap();
            }
            let mut model: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            for (key, lease, is_put) in events {
                let key = vec![b'k', key];
                if is_put {
                    table.observe(&[put(&key, lease)]);
                    model.remove(&key);
                    if table.exists(lease) {
                        model.insert(key, lease);
                    }
                } else {
                    table.observe(&[delete(&key)]);
                    model.remove(&key);
                }
                table.check_invariants();
            }
            for id in 1..3 {
                let want: Vec<Vec<u8>> = model
                    .iter()
                    .filter(|(_, &l)| l == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                prop_assert_eq!(table.keys(id), Some(want));
            }
            let kvs: Vec<KeyValue> = model
                .iter()
                .map(|(k, &lease)| KeyValue { key: k.clone(), lease, ..KeyValue::default() })
                .collect();
            let mut bucket = BTreeMap::new();
            apply_batch(&mut bucket, &batch);
            prop_assert_eq!(LeaseTable::restore(MIN_TTL_S, bucket, kvs).unwrap(), table);
        }
    }
}

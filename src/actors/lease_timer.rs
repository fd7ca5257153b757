//! The lease timer: the leader-local expiry schedule around the pure
//! [`LeaseClock`](crate::core::lease::LeaseClock).
//!
//! Granted and revoked leases arrive from the storage actor once they are applied; keep-
//! alives and TTL questions arrive from the gateway; leadership arrives from the raft
//! actor's status. Only while this member leads does it keep expiries, and when a lease
//! expires it *proposes* the revocation through raft — it never deletes anything itself,
//! so every member applies the same deletes at the same revision. Time is read only
//! through the runtime seam.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::core::lease::{self, LeaseClock};
use crate::core::state::LeaseChange;
use crate::error::EtcdError;
use crate::msg::{RaftMsg, RaftStatus};
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::LeaseRevokeRequest;
use crate::rt;
use crate::rt::watch;

/// Messages to the lease timer.
#[derive(Debug)]
pub enum LeaseMsg {
    /// Leases granted or revoked by applied entries, in apply order.
    Applied(Vec<LeaseChange>),
    /// A keep-alive: `reply` receives the lease's TTL, or 0 if it is unknown or expired
    /// (etcd's answer for a lease it no longer has). For a lease that has expired but is
    /// not revoked yet, the 0 comes once the revocation is applied, as in etcd.
    KeepAlive {
        /// The lease id.
        id: i64,
        /// Receives the TTL in seconds (0: the lease does not exist or has expired), or
        /// [`EtcdError::LeaderChanged`] when this member's clock is not the primary one:
        /// only the leader knows whether a lease still exists, so a member that lost the
        /// leadership must not answer "not found" for it (etcd's `ErrNotPrimary`).
        reply: oneshot::Sender<Result<i64, EtcdError>>,
    },
    /// Asks for the remaining TTL of a lease (`None`: unknown here).
    Remaining {
        /// The lease id.
        id: i64,
        /// Receives the remaining seconds.
        reply: oneshot::Sender<Option<i64>>,
    },
    /// Orders lease ids as etcd's `Leases()` does: by expiry, earliest first (ties in the
    /// order the leases were granted or last renewed); ids without a deadline here go last,
    /// in the order given.
    ExpiryOrder {
        /// The granted lease ids.
        ids: Vec<i64>,
        /// Receives the same ids, reordered.
        reply: oneshot::Sender<Vec<i64>>,
    },
    /// The state machine was replaced by a raft snapshot: `leases` (id, TTL in seconds)
    /// are now all the granted leases.
    Restored(Vec<(i64, i64)>),
    /// Stops the actor.
    Shutdown,
}

/// Settings of the lease timer.
#[derive(Debug, Clone)]
pub struct LeaseTimerConfig {
    /// This member's id.
    pub member_id: u64,
    /// `--election-timeout`.
    pub election_timeout_ms: u64,
    /// `--heartbeat-interval`.
    pub heartbeat_interval_ms: u64,
}

/// The lease timer's state.
pub struct LeaseTimer {
    clock: LeaseClock,
    ttls: BTreeMap<i64, i64>,
    /// When each lease was last granted or renewed, as a sequence number: the tie-break of
    /// [`LeaseMsg::ExpiryOrder`] for leases whose millisecond expiries coincide (etcd
    /// compares nanosecond expiries, which in practice follow that order).
    refreshed: BTreeMap<i64, u64>,
    next_refresh: u64,
    /// Keep-alives for leases that have expired but whose revocation is not applied yet,
    /// answered (TTL 0) once it is: etcd's `Renew` waits for the revocation, so a client
    /// told TTL 0 never finds the lease's keys still there.
    waiting: BTreeMap<i64, Vec<oneshot::Sender<Result<i64, EtcdError>>>>,
    config: LeaseTimerConfig,
    inbox: mpsc::Receiver<LeaseMsg>,
    raft_tx: mpsc::Sender<RaftMsg>,
    status_rx: watch::Receiver<RaftStatus>,
    /// The raft term of the leadership the clock was promoted for.
    leader_term: u64,
    start: rt::Instant,
}

impl LeaseTimer {
    /// Builds the timer over the leases the state machine holds at start.
    pub fn new(
        config: LeaseTimerConfig,
        leases: impl IntoIterator<Item = (i64, i64)>,
        inbox: mpsc::Receiver<LeaseMsg>,
        raft_tx: mpsc::Sender<RaftMsg>,
        status_rx: watch::Receiver<RaftStatus>,
    ) -> LeaseTimer {
        let retry_ms =
            lease::expired_retry_ms(config.election_timeout_ms, config.heartbeat_interval_ms);
        LeaseTimer {
            clock: LeaseClock::new(retry_ms),
            ttls: leases.into_iter().collect(),
            refreshed: BTreeMap::new(),
            next_refresh: 0,
            waiting: BTreeMap::new(),
            config,
            inbox,
            raft_tx,
            status_rx,
            leader_term: 0,
            start: rt::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        rt::now().duration_since(self.start).as_millis() as u64
    }

    /// Runs until stopped.
    pub async fn run(mut self) {
        let mut check = rt::Ticker::new(Duration::from_millis(lease::EXPIRY_CHECK_INTERVAL_MS));
        loop {
            tokio::select! {
                // Branches are polled in order, not at random, so a simulation replays from its
                // seed; the expiry check comes first so a busy inbox cannot starve it.
                biased;
                _ = check.tick() => {
                    self.sync_leadership();
                    self.revoke_expired();
                }
                msg = self.inbox.recv() => match msg {
                    None | Some(LeaseMsg::Shutdown) => return,
                    Some(msg) => {
                        self.sync_leadership();
                        self.handle(msg);
                    }
                },
                changed = self.status_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.sync_leadership();
                }
            }
        }
    }

    /// Promotes or demotes the clock to match raft's view of leadership.
    fn sync_leadership(&mut self) {
        let status = self.status_rx.borrow().clone();
        let leading = status.leader_id != 0 && status.leader_id == self.config.member_id;
        // Every new leadership, even this member's own re-election in a later term, starts
        // the clock afresh, as etcd promotes its lessor on each becoming leader.
        if leading && (!self.clock.is_primary() || status.term != self.leader_term) {
            self.leader_term = status.term;
            let extend_ms = lease::promote_extend_ms(
                self.config.election_timeout_ms,
                self.config.heartbeat_interval_ms,
            );
            let now_ms = self.now_ms();
            self.clock.promote(
                now_ms,
                extend_ms,
                self.ttls.iter().map(|(&id, &ttl)| (id, ttl)),
            );
            tracing::debug!(leases = self.ttls.len(), "lease timer: promoted");
        } else if !leading
            && self.clock.is_primary()
            && !crate::planted::active(crate::planted::Bug::StaleLeaseRevoke)
        {
            self.clock.demote();
            // No longer the member that revokes: the new leader may never revoke these
            // leases, so waiting keep-alives are told leadership moved (etcd's
            // `ErrNotPrimary`), not that the lease is gone.
            for reply in std::mem::take(&mut self.waiting).into_values().flatten() {
                let _ = reply.send(Err(EtcdError::LeaderChanged));
            }
            tracing::debug!("lease timer: demoted");
        }
    }

    fn handle(&mut self, msg: LeaseMsg) {
        match msg {
            LeaseMsg::Restored(leases) => {
                // Start over as at boot: the clock is rebuilt (and promoted again if this
                // member leads) from the restored table.
                let retry_ms = lease::expired_retry_ms(
                    self.config.election_timeout_ms,
                    self.config.heartbeat_interval_ms,
                );
                self.clock = LeaseClock::new(retry_ms);
                self.ttls = leases.into_iter().collect();
                self.refreshed.clear();
                self.leader_term = 0;
                for reply in std::mem::take(&mut self.waiting).into_values().flatten() {
                    let _ = reply.send(Err(EtcdError::LeaderChanged));
                }
                self.sync_leadership();
            }
            LeaseMsg::Applied(changes) => {
                let now_ms = self.now_ms();
                for change in changes {
                    match change {
                        LeaseChange::Granted { id, ttl_s } => {
                            self.ttls.insert(id, ttl_s);
                            self.clock.on_grant(id, ttl_s, now_ms);
                            self.mark_refreshed(id);
                        }
                        LeaseChange::Revoked { id } => {
                            self.ttls.remove(&id);
                            self.refreshed.remove(&id);
                            self.clock.on_revoke(id);
                            for reply in self.waiting.remove(&id).unwrap_or_default() {
                                let _ = reply.send(Ok(0));
                            }
                        }
                    }
                }
            }
            LeaseMsg::KeepAlive { id, reply } => {
                let now_ms = self.now_ms();
                match self.clock.renew(id, now_ms) {
                    Some(ttl) => {
                        self.mark_refreshed(id);
                        let _ = reply.send(Ok(ttl));
                    }
                    None if !self.clock.is_primary() => {
                        let _ = reply.send(Err(EtcdError::LeaderChanged));
                    }
                    // Expired, revocation pending: answer once it is applied.
                    None if self.clock.is_primary() && self.clock.expiry_ms(id).is_some() => {
                        self.waiting.entry(id).or_default().push(reply);
                    }
                    None => {
                        let _ = reply.send(Ok(0));
                    }
                }
            }
            LeaseMsg::ExpiryOrder { mut ids, reply } => {
                // A stable sort: ids without a deadline keep the order they came in.
                ids.sort_by_key(|id| match self.clock.expiry_ms(*id) {
                    Some(expiry_ms) => (0, expiry_ms, self.refreshed.get(id).copied()),
                    None => (1, 0, None),
                });
                let _ = reply.send(ids);
            }
            LeaseMsg::Remaining { id, reply } => {
                let now_ms = self.now_ms();
                let _ = reply.send(self.clock.remaining_ttl_s(id, now_ms));
            }
            LeaseMsg::Shutdown => {}
        }
    }

    fn mark_refreshed(&mut self, id: i64) {
        self.refreshed.insert(id, self.next_refresh);
        self.next_refresh += 1;
    }

    /// Proposes the revocation of expired leases, at etcd's bounded rate. A proposal that
    /// cannot be queued now is retried by the clock after its retry interval.
    fn revoke_expired(&mut self) {
        if !self.clock.is_primary() {
            return;
        }
        let now_ms = self.now_ms();
        let term = self.leader_term;
        for id in self.clock.expired(now_ms, lease::REVOKE_BATCH_MAX) {
            tracing::info!(
                lease = format!("{id:x}"),
                "lease expired; proposing its revocation"
            );
            let (reply, _ignored) = oneshot::channel();
            let request = InternalRequest {
                lease_revoke: Some(LeaseRevokeRequest { id }),
                expiry_term: term,
                ..Default::default()
            };
            if self
                .raft_tx
                .try_send(RaftMsg::Propose {
                    request: Box::new(request),
                    reply,
                })
                .is_err()
            {
                tracing::warn!(
                    lease = format!("{id:x}"),
                    "raft inbox full; lease revocation retried later"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_alive(timer: &mut LeaseTimer, id: i64) -> Option<Result<i64, EtcdError>> {
        let (tx, mut rx) = oneshot::channel();
        timer.handle(LeaseMsg::KeepAlive { id, reply: tx });
        rx.try_recv().ok()
    }

    /// Only the leader's clock knows whether a lease still exists: a member that is not
    /// (or no longer) the leader answers a keep-alive with "leader changed", never with
    /// TTL 0, which a client reads as "lease not found" while its keys are still there.
    #[test]
    fn keep_alives_off_the_leader_are_refused_not_answered_not_found() {
        crate::rt::block_on_main(async {
            let (status_tx, status_rx) = watch::channel(RaftStatus {
                member_id: 1,
                leader_id: 2,
                term: 2,
                ..RaftStatus::default()
            });
            let (_inbox_tx, inbox) = mpsc::channel(8);
            let (raft_tx, _raft_rx) = mpsc::channel(8);
            let config = LeaseTimerConfig {
                member_id: 1,
                election_timeout_ms: 1000,
                heartbeat_interval_ms: 100,
            };
            let mut timer = LeaseTimer::new(config, [(7, 10)], inbox, raft_tx, status_rx);
            timer.sync_leadership();
            assert_eq!(
                keep_alive(&mut timer, 7),
                Some(Err(EtcdError::LeaderChanged))
            );
            // Leading: the lease is renewed, and an unknown one is reported as gone.
            let _ = status_tx.send(RaftStatus {
                member_id: 1,
                leader_id: 1,
                term: 3,
                ..RaftStatus::default()
            });
            timer.sync_leadership();
            assert_eq!(keep_alive(&mut timer, 7), Some(Ok(10)));
            assert_eq!(keep_alive(&mut timer, 99), Some(Ok(0)));
            // Deposed again: refused once more.
            let _ = status_tx.send(RaftStatus {
                member_id: 1,
                leader_id: 0,
                term: 4,
                ..RaftStatus::default()
            });
            timer.sync_leadership();
            assert_eq!(
                keep_alive(&mut timer, 7),
                Some(Err(EtcdError::LeaderChanged))
            );
        })
        .unwrap();
    }
}

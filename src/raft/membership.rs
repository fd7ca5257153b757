//! Membership changes as etcd 3.4 makes them, as pure functions: how a change is encoded in
//! a raft conf change, which changes are valid, the `--strict-reconfig-check` rules that
//! protect the quorum, when a learner may be promoted, and how a joining member matches
//! itself against the cluster it joins.
//!
//! Everything here is deterministic and free of I/O, so the gateway (which checks a
//! request before proposing it), the raft actor (which decides at apply time whether a
//! committed change takes effect) and the tests all share one definition.

use std::collections::BTreeSet;

use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType};

use crate::error::EtcdError;
use crate::pb::detcdpb::{ConfChangeContext, MemberRecord};

/// etcd 3.4 allows at most this many learners in a cluster.
pub const MAX_LEARNERS: usize = 1;
/// A learner is in sync, and may be promoted, once its match index is at least this
/// fraction of the leader's (etcd's `readyPercent`).
pub const LEARNER_READY_FRACTION: f64 = 0.9;
/// `--strict-reconfig-check` counts a peer as connected only after it has been reachable
/// for this long (etcd's `HealthInterval`).
pub const HEALTH_INTERVAL_MS: u64 = 5_000;

/// What a membership change through raft's configuration does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Adds a voting member.
    AddVoter,
    /// Adds a learner (non-voting) member.
    AddLearner,
    /// Turns a learner into a voting member.
    Promote,
    /// Removes a member.
    Remove,
}

/// One membership change: the kind and the member it concerns. For additions the record
/// carries the peer URLs and the learner flag; otherwise only the id matters.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberChange {
    /// What the change does.
    pub kind: ChangeKind,
    /// The member.
    pub member: MemberRecord,
}

impl MemberChange {
    /// The raft conf change that carries this change, with the member record in its
    /// context as etcd carries its `ConfigChangeContext`.
    pub fn to_conf_change(&self) -> ConfChange {
        let mut cc = ConfChange {
            node_id: self.member.id,
            ..Default::default()
        };
        cc.set_change_type(match self.kind {
            ChangeKind::AddVoter | ChangeKind::Promote => ConfChangeType::AddNode,
            ChangeKind::AddLearner => ConfChangeType::AddLearnerNode,
            ChangeKind::Remove => ConfChangeType::RemoveNode,
        });
        if self.kind != ChangeKind::Remove {
            let ctx = ConfChangeContext {
                member: Some(self.member.clone()),
                is_promote: self.kind == ChangeKind::Promote,
            };
            cc.context = ctx.encode_to_vec().into();
        }
        cc
    }

    /// Decodes a committed conf change. A change this module did not produce (a context
    /// that does not decode, or names another member than the change) is an error, which
    /// the caller treats as a rejected change rather than a reason to stop.
    pub fn from_conf_change(cc: &ConfChange) -> Result<MemberChange, String> {
        let id = cc.node_id;
        match cc.get_change_type() {
            ConfChangeType::RemoveNode => Ok(MemberChange {
                kind: ChangeKind::Remove,
                member: MemberRecord {
                    id,
                    ..Default::default()
                },
            }),
            t => {
                let ctx = ConfChangeContext::decode(&cc.context[..])
                    .map_err(|e| format!("conf change context does not decode: {e}"))?;
                let member = ctx.member.unwrap_or_default();
                if member.id != id {
                    return Err(format!(
                        "conf change for member {id:x} carries member {:x}",
                        member.id
                    ));
                }
                let kind = match (t, ctx.is_promote) {
                    (ConfChangeType::AddNode, true) => ChangeKind::Promote,
                    (ConfChangeType::AddNode, false) => ChangeKind::AddVoter,
                    (ConfChangeType::AddLearnerNode, false) => ChangeKind::AddLearner,
                    _ => return Err(format!("unexpected conf change {t:?}")),
                };
                Ok(MemberChange { kind, member })
            }
        }
    }
}

/// The member ids of raft's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfIds {
    /// Voting members.
    pub voters: BTreeSet<u64>,
    /// Learners.
    pub learners: BTreeSet<u64>,
}

impl ConfIds {
    /// The ids of a raft configuration.
    pub fn from_conf_state(cs: &ConfState) -> ConfIds {
        ConfIds {
            voters: cs.voters.iter().copied().collect(),
            learners: cs.learners.iter().copied().collect(),
        }
    }

    /// Applies a change that [`check_conf_change`] accepted.
    pub fn apply(&mut self, change: &MemberChange) {
        let id = change.member.id;
        match change.kind {
            ChangeKind::AddVoter | ChangeKind::Promote => {
                self.learners.remove(&id);
                self.voters.insert(id);
            }
            ChangeKind::AddLearner => {
                self.learners.insert(id);
            }
            ChangeKind::Remove => {
                self.voters.remove(&id);
                self.learners.remove(&id);
            }
        }
    }

    /// The configuration after the conf-change entries among `entries`, each taking
    /// effect exactly when the raft actor would let it (see [`check_conf_change`]).
    pub fn replay(&mut self, entries: &[Entry]) {
        for e in entries {
            if e.get_entry_type() != EntryType::EntryConfChange {
                continue;
            }
            let mut cc = ConfChange::default();
            if protobuf::Message::merge_from_bytes(&mut cc, &e.data).is_err() {
                continue;
            }
            if let Ok(change) = MemberChange::from_conf_change(&cc) {
                if check_conf_change(self, &change).is_ok() {
                    self.apply(&change);
                }
            }
        }
    }
}

/// The conf changes that turn `conf` into a one-member cluster of `local_id`
/// (`--force-new-cluster`): every other voter and learner removed, in id order, as
/// etcd's `restartAsStandaloneNode` removes them. Fails if `local_id` is not a voter,
/// since a learner or a removed member cannot carry the cluster on alone.
pub fn standalone_changes(conf: &ConfIds, local_id: u64) -> Result<Vec<ConfChange>, String> {
    if !conf.voters.contains(&local_id) {
        return Err(format!(
            "member {local_id:x} is not a voting member of its cluster and cannot be forced into a new one"
        ));
    }
    Ok(conf
        .voters
        .iter()
        .chain(conf.learners.iter())
        .filter(|&&id| id != local_id)
        .map(|&id| {
            MemberChange {
                kind: ChangeKind::Remove,
                member: MemberRecord {
                    id,
                    ..Default::default()
                },
            }
            .to_conf_change()
        })
        .collect())
}

/// Whether a committed change takes effect, judged by the configuration it applies to
/// (etcd's `ValidateConfigurationChange`, for the rules that depend on member ids only).
/// Every member judges the same entries against the same configuration, so all agree;
/// peer-URL conflicts are checked before proposing.
pub fn check_conf_change(conf: &ConfIds, change: &MemberChange) -> Result<(), EtcdError> {
    let id = change.member.id;
    let known = conf.voters.contains(&id) || conf.learners.contains(&id);
    match change.kind {
        ChangeKind::AddVoter | ChangeKind::AddLearner => {
            if id == 0 || known {
                return Err(EtcdError::MemberExist);
            }
            if change.kind == ChangeKind::AddLearner && conf.learners.len() + 1 > MAX_LEARNERS {
                return Err(EtcdError::TooManyLearners);
            }
            Ok(())
        }
        ChangeKind::Promote => {
            if !known {
                Err(EtcdError::MemberNotFound)
            } else if !conf.learners.contains(&id) {
                Err(EtcdError::MemberNotLearner)
            } else {
                Ok(())
            }
        }
        ChangeKind::Remove => {
            if known {
                Ok(())
            } else {
                Err(EtcdError::MemberNotFound)
            }
        }
    }
}

/// Checks an addition against the recorded members before it is proposed: its id must be
/// new, its peer URLs unused, and the learner limit kept.
pub fn check_add(members: &[MemberRecord], new: &MemberRecord) -> Result<(), EtcdError> {
    if members.iter().any(|m| m.id == new.id) {
        return Err(EtcdError::MemberExist);
    }
    if members
        .iter()
        .flat_map(|m| &m.peer_urls)
        .any(|u| new.peer_urls.contains(u))
    {
        return Err(EtcdError::PeerUrlExist);
    }
    if new.is_learner && members.iter().filter(|m| m.is_learner).count() + 1 > MAX_LEARNERS {
        return Err(EtcdError::TooManyLearners);
    }
    Ok(())
}

/// Checks a MemberUpdate: the member must exist and no other member may use the new URLs.
pub fn check_update(
    members: &[MemberRecord],
    id: u64,
    peer_urls: &[String],
) -> Result<(), EtcdError> {
    if !members.iter().any(|m| m.id == id) {
        return Err(EtcdError::MemberNotFound);
    }
    if members
        .iter()
        .filter(|m| m.id != id)
        .flat_map(|m| &m.peer_urls)
        .any(|u| peer_urls.contains(u))
    {
        return Err(EtcdError::PeerUrlExist);
    }
    Ok(())
}

/// A member counts as started once it has published its name.
pub fn is_started(m: &MemberRecord) -> bool {
    !m.name.is_empty()
}

fn started_voters(members: &[MemberRecord], skip: Option<u64>) -> (usize, usize) {
    let voting = members
        .iter()
        .filter(|m| !m.is_learner && Some(m.id) != skip);
    let (mut n, mut started) = (0, 0);
    for m in voting {
        n += 1;
        if is_started(m) {
            started += 1;
        }
    }
    (n, started)
}

/// etcd's `IsReadyToAddVotingMember`: after adding one more voter, the started voters must
/// still be a quorum (except when a second member joins a one-member cluster).
pub fn ready_to_add_voter(members: &[MemberRecord]) -> bool {
    let (n, started) = started_voters(members, None);
    let n = n + 1;
    if started == 1 && n == 2 {
        return true;
    }
    started >= quorum(n)
}

/// The majority of `n` voters.
fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// etcd's `IsReadyToRemoveVotingMember`: without `id`, the started voters must still be
/// a quorum of the remaining voters.
pub fn ready_to_remove_voter(members: &[MemberRecord], id: u64) -> bool {
    let (n, started) = started_voters(members, Some(id));
    started >= quorum(n)
}

/// etcd's `IsReadyToPromoteMember`: counting the learner as a started voter, the started
/// voters must be a quorum.
pub fn ready_to_promote(members: &[MemberRecord]) -> bool {
    let (n, started) = started_voters(members, None);
    started + 1 >= quorum(n + 1)
}

/// etcd's `isConnectedFullySince`: every voting member but this one has been connected
/// for the health interval (`connected` answers that per member).
pub fn connected_fully(
    local_id: u64,
    members: &[MemberRecord],
    connected: impl Fn(u64) -> bool,
) -> bool {
    members
        .iter()
        .filter(|m| !m.is_learner && m.id != local_id)
        .all(|m| connected(m.id))
}

/// The part of etcd's `mayRemoveMember` that looks at connections: removing a voter that
/// is down is always safe; otherwise the voters connected for the health interval (this
/// member included), less the one removed, must be a quorum of the voters.
pub fn remove_keeps_active_quorum(
    local_id: u64,
    members: &[MemberRecord],
    id: u64,
    active: impl Fn(u64) -> bool,
    connected: impl Fn(u64) -> bool,
) -> bool {
    if id != local_id && !active(id) {
        return true;
    }
    let voters: Vec<&MemberRecord> = members.iter().filter(|m| !m.is_learner).collect();
    let connected_count = voters
        .iter()
        .filter(|m| m.id == local_id || connected(m.id))
        .count();
    // etcd: `(active - 1) < 1 + (len - 1) / 2` rejects.
    let needed = 1 + voters.len().saturating_sub(1) / 2;
    connected_count.saturating_sub(1) >= needed
}

/// etcd's `isLearnerReady`, given the leader's and the learner's match indexes.
pub fn learner_ready(leader_match: u64, learner_match: u64) -> bool {
    learner_match as f64 >= leader_match as f64 * LEARNER_READY_FRACTION
}

/// etcd's `ValidateClusterAndAssignIDs` for a member joining an existing cluster: every
/// existing member must match one `--initial-cluster` entry by peer URLs, and each entry
/// takes the id of the member it matches. Returns `(name, peer URLs, id)` per entry.
pub fn assign_ids(
    local: &[(String, Vec<String>)],
    existing: &[MemberRecord],
) -> Result<Vec<(String, Vec<String>, u64)>, String> {
    if local.len() != existing.len() {
        return Err("member count is unequal".to_string());
    }
    let sorted = |urls: &[String]| {
        let mut v = urls.to_vec();
        v.sort();
        v
    };
    let mut out: Vec<(String, Vec<String>, u64)> = local
        .iter()
        .map(|(name, urls)| (name.clone(), urls.clone(), 0))
        .collect();
    for e in existing {
        let want = sorted(&e.peer_urls);
        match out
            .iter_mut()
            .find(|(_, urls, _)| sorted(urls) == want)
        {
            Some(entry) => entry.2 = e.id,
            None => {
                return Err(format!(
                    "PeerURLs: no match found for existing member ({:x}, [{}]), last resolver error (<nil>)",
                    e.id,
                    e.peer_urls.join(" ")
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf_entry(index: u64, change: &MemberChange) -> Entry {
        let mut e = Entry {
            index,
            term: 1,
            data: protobuf::Message::write_to_bytes(&change.to_conf_change())
                .unwrap()
                .into(),
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryConfChange);
        e
    }

    fn change(kind: ChangeKind, id: u64) -> MemberChange {
        MemberChange {
            kind,
            member: MemberRecord {
                id,
                peer_urls: vec![format!("http://m{id}:2380")],
                ..Default::default()
            },
        }
    }

    #[test]
    fn replay_follows_the_apply_time_rules() {
        let mut conf = ConfIds::from_conf_state(&ConfState::from((vec![1, 2, 3], vec![])));
        conf.replay(&[
            conf_entry(4, &change(ChangeKind::AddLearner, 4)),
            // A second learner is refused at apply time, so replay skips it too.
            conf_entry(5, &change(ChangeKind::AddLearner, 5)),
            conf_entry(6, &change(ChangeKind::Promote, 4)),
            conf_entry(7, &change(ChangeKind::Remove, 2)),
            // Removing an unknown member takes no effect.
            conf_entry(8, &change(ChangeKind::Remove, 9)),
            Entry {
                index: 9,
                ..Default::default()
            },
        ]);
        assert_eq!(conf.voters, [1, 3, 4].into_iter().collect());
        assert!(conf.learners.is_empty());
    }

    #[test]
    fn standalone_removes_everyone_else_and_needs_a_voter() {
        let conf = ConfIds {
            voters: [1, 2, 3].into_iter().collect(),
            learners: [7].into_iter().collect(),
        };
        let changes = standalone_changes(&conf, 2).unwrap();
        let removed: Vec<(ConfChangeType, u64)> = changes
            .iter()
            .map(|cc| (cc.get_change_type(), cc.node_id))
            .collect();
        assert_eq!(
            removed,
            [1, 3, 7].map(|id| (ConfChangeType::RemoveNode, id))
        );
        let mut after = conf.clone();
        for cc in &changes {
            let c = MemberChange::from_conf_change(cc).unwrap();
            check_conf_change(&after, &c).unwrap();
            after.apply(&c);
        }
        assert_eq!(after.voters, [2].into_iter().collect());
        assert!(after.learners.is_empty());
        assert!(
            standalone_changes(&conf, 7).is_err(),
            "a learner cannot go alone"
        );
        assert!(standalone_changes(&conf, 9).is_err(), "nor can a stranger");
        let alone = ConfIds {
            voters: [2].into_iter().collect(),
            learners: Default::default(),
        };
        assert!(standalone_changes(&alone, 2).unwrap().is_empty());
    }

    fn member(id: u64, name: &str, url: &str, learner: bool) -> MemberRecord {
        MemberRecord {
            id,
            name: name.to_string(),
            peer_urls: vec![url.to_string()],
            client_urls: vec![],
            is_learner: learner,
        }
    }

    fn three() -> Vec<MemberRecord> {
        vec![
            member(1, "a", "http://a:2380", false),
            member(2, "b", "http://b:2380", false),
            member(3, "c", "http://c:2380", false),
        ]
    }

    #[test]
    fn conf_change_round_trips() {
        for kind in [
            ChangeKind::AddVoter,
            ChangeKind::AddLearner,
            ChangeKind::Promote,
            ChangeKind::Remove,
        ] {
            let mut m = member(9, "", "http://d:2380", kind == ChangeKind::AddLearner);
            if kind == ChangeKind::Remove {
                m = MemberRecord {
                    id: 9,
                    ..Default::default()
                };
            }
            let change = MemberChange { kind, member: m };
            let back = MemberChange::from_conf_change(&change.to_conf_change()).unwrap();
            assert_eq!(back, change);
        }
        let mut bad = MemberChange {
            kind: ChangeKind::AddVoter,
            member: member(9, "", "http://d:2380", false),
        }
        .to_conf_change();
        bad.node_id = 8;
        assert!(MemberChange::from_conf_change(&bad).is_err());
        bad.context = vec![0xff, 0xff].into();
        assert!(MemberChange::from_conf_change(&bad).is_err());
    }

    #[test]
    fn apply_time_rules() {
        let conf = ConfIds {
            voters: [1, 2, 3].into_iter().collect(),
            learners: [4].into_iter().collect(),
        };
        let ch = |kind, id| MemberChange {
            kind,
            member: MemberRecord {
                id,
                ..Default::default()
            },
        };
        assert_eq!(
            check_conf_change(&conf, &ch(ChangeKind::AddVoter, 5)),
            Ok(())
        );
        assert_eq!(
            check_conf_change(&conf, &ch(ChangeKind::AddVoter, 2)),
            Err(EtcdError::MemberExist)
        );
        assert_eq!(
            check_conf_change(&conf, &ch(ChangeKind::AddLearner, 5)),
            Err(EtcdError::TooManyLearners)
        );
        assert_eq!(
            check_conf_change(&conf, &ch(ChangeKind::Promote, 4)),
            Ok(())
        );
        assert_eq!(
            check_conf_change(&conf, &ch(ChangeKind::Promote, 1)),
            Err(EtcdError::MemberNotLearner)
        );
        assert_eq!(
            check_conf_change(&conf, &ch(ChangeKind::Promote, 7)),
            Err(EtcdError::MemberNotFound)
        );
        assert_eq!(check_conf_change(&conf, &ch(ChangeKind::Remove, 4)), Ok(()));
        assert_eq!(
            check_conf_change(&conf, &ch(ChangeKind::Remove, 7)),
            Err(EtcdError::MemberNotFound)
        );
    }

    #[test]
    fn propose_time_rules() {
        let ms = three();
        assert_eq!(
            check_add(&ms, &member(4, "", "http://d:2380", false)),
            Ok(())
        );
        assert_eq!(
            check_add(&ms, &member(2, "", "http://d:2380", false)),
            Err(EtcdError::MemberExist)
        );
        assert_eq!(
            check_add(&ms, &member(4, "", "http://b:2380", false)),
            Err(EtcdError::PeerUrlExist)
        );
        let mut with_learner = ms.clone();
        with_learner.push(member(4, "", "http://d:2380", true));
        assert_eq!(
            check_add(&with_learner, &member(5, "", "http://e:2380", true)),
            Err(EtcdError::TooManyLearners)
        );
        assert_eq!(check_update(&ms, 2, &["http://b2:2380".into()]), Ok(()));
        assert_eq!(check_update(&ms, 2, &["http://b:2380".into()]), Ok(()));
        assert_eq!(
            check_update(&ms, 2, &["http://c:2380".into()]),
            Err(EtcdError::PeerUrlExist)
        );
        assert_eq!(
            check_update(&ms, 9, &["http://z:2380".into()]),
            Err(EtcdError::MemberNotFound)
        );
    }

    #[test]
    fn strict_reconfig_counts_started_voters() {
        let mut ms = three();
        assert!(ready_to_add_voter(&ms));
        // One unstarted voter of three: adding a fourth leaves 2 started of 4 (quorum 3).
        ms[2].name.clear();
        assert!(!ready_to_add_voter(&ms));
        // Removing the unstarted one is fine; removing a started one is not.
        assert!(ready_to_remove_voter(&ms, 3));
        assert!(!ready_to_remove_voter(&ms, 1));
        assert!(ready_to_promote(&ms));
        // A second member may always join a one-member cluster.
        assert!(ready_to_add_voter(&ms[..1]));
        assert!(connected_fully(1, &ms, |id| id != 9));
        assert!(!connected_fully(1, &ms, |id| id != 3));
        // Removing a down member is safe; removing a live one needs a connected quorum.
        assert!(remove_keeps_active_quorum(
            1,
            &ms,
            3,
            |id| id != 3,
            |id| id != 3
        ));
        assert!(remove_keeps_active_quorum(1, &ms, 2, |_| true, |_| true));
        assert!(!remove_keeps_active_quorum(
            1,
            &ms,
            2,
            |id| id != 3,
            |id| id == 2
        ));
    }

    #[test]
    fn learner_readiness_is_ninety_percent_of_the_leader() {
        assert!(learner_ready(100, 90));
        assert!(!learner_ready(100, 89));
        assert!(learner_ready(0, 0));
    }

    #[test]
    fn joining_member_matches_by_peer_urls() {
        let existing = three();
        let local = vec![
            ("x".to_string(), vec!["http://c:2380".to_string()]),
            ("y".to_string(), vec!["http://a:2380".to_string()]),
            ("z".to_string(), vec!["http://b:2380".to_string()]),
        ];
        let got = assign_ids(&local, &existing).unwrap();
        assert_eq!(
            got.iter()
                .map(|(n, _, id)| (n.as_str(), *id))
                .collect::<Vec<_>>(),
            [("x", 3), ("y", 1), ("z", 2)]
        );
        assert_eq!(
            assign_ids(&local[..2], &existing).unwrap_err(),
            "member count is unequal"
        );
        let mut other = local.clone();
        other[0].1 = vec!["http://q:2380".to_string()];
        assert_eq!(
            assign_ids(&other, &existing).unwrap_err(),
            "PeerURLs: no match found for existing member (3, [http://c:2380]), last resolver error (<nil>)"
        );
    }
}

//! Tests of the watch hub: etcd's answers (checked against etcd 3.4.23) and a model test
//! of the delivery guarantees with slow consumers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::core::mvcc::Mvcc;
use crate::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
use crate::pb::mvccpb::KeyValue;
use crate::storage::backend::WriteBatch;

/// A hub driven like the actor drives it, with bounded stream queues and a storage side
/// that answers history reads in order with applied batches.
struct Rig {
    hub: WatchHub,
    mvcc: Mvcc,
    /// Per stream: capacity and queued responses.
    queues: BTreeMap<StreamId, (usize, VecDeque<WatchResponse>)>,
    /// Reads waiting for the storage side.
    fetches: VecDeque<HistoryFetch>,
    /// What the storage side sent to the hub, in order.
    hub_inbox: VecDeque<HubInput>,
    closed: Vec<StreamId>,
    /// Bytes each stream queue holds at most (a larger response only into an empty one).
    byte_budget: usize,
    /// Streams the hub waits on: reading half of the queue tells it (`on_room`).
    waiting: BTreeSet<StreamId>,
}

enum HubInput {
    Events(i64, Vec<Event>),
    History(HistoryAnswer),
    Compacted(i64),
}

impl Rig {
    fn new(config: WatchConfig) -> Rig {
        let mvcc = Mvcc::new();
        Rig {
            hub: WatchHub::new(config, mvcc.current_revision()),
            mvcc,
            queues: BTreeMap::new(),
            fetches: VecDeque::new(),
            hub_inbox: VecDeque::new(),
            closed: Vec::new(),
            byte_budget: usize::MAX,
            waiting: BTreeSet::new(),
        }
    }

    fn open(&mut self, stream: StreamId, capacity: usize) {
        self.queues.insert(stream, (capacity, VecDeque::new()));
        self.hub.open_stream(stream);
    }

    fn run(
        &mut self,
        f: impl FnOnce(&mut WatchHub, &mut dyn FnMut(StreamId) -> Room) -> Vec<Output>,
    ) {
        let queues = &self.queues;
        let budget = self.byte_budget;
        let mut room = |s: StreamId| match queues.get(&s) {
            None => Room::count(0),
            Some((cap, q)) => Room {
                responses: cap - q.len(),
                bytes: budget.saturating_sub(q.iter().map(|r| r.encoded_len()).sum()),
                empty: q.is_empty(),
            },
        };
        let out = f(&mut self.hub, &mut room);
        for o in out {
            match o {
                Output::Send { stream, frame } => {
                    let response = frame.decode();
                    assert_eq!(frame.len(), response.encoded_len());
                    let (cap, q) = self.queues.get_mut(&stream).expect("known stream");
                    assert!(q.len() < *cap, "the hub sent without room");
                    let queued: usize = q.iter().map(|r| r.encoded_len()).sum();
                    let small = response.events.is_empty();
                    assert!(
                        small
                            || q.is_empty()
                            || queued + response.encoded_len() <= self.byte_budget,
                        "the hub exceeded the byte budget"
                    );
                    q.push_back(response);
                }
                Output::Fetch(f) => self.fetches.push_back(f),
                Output::WaitForRoom { stream } => {
                    self.waiting.insert(stream);
                }
                Output::Close { stream, .. } => self.closed.push(stream),
            }
        }
    }

    fn create(&mut self, stream: StreamId, req: WatchCreateRequest) {
        self.run(|h, room| h.create(stream, &req, room));
    }

    fn cancel(&mut self, stream: StreamId, id: i64) {
        self.run(|h, room| h.cancel(stream, id, room));
    }

    fn progress(&mut self, stream: StreamId) {
        self.run(|h, room| h.progress(stream, room));
    }

    fn tick(&mut self, now_ms: u64) {
        self.run(|h, room| h.tick(now_ms, room));
    }

    /// Applies a write on the storage side; its events queue for the hub.
    fn write(&mut self, w: &Write) {
        let mut events = Vec::new();
        let mut batch = WriteBatch::default();
        let no_lease = |_| false;
        match w {
            Write::Put(k, v) => {
                let req = PutRequest {
                    key: k.clone(),
                    value: v.clone(),
                    ..Default::default()
                };
                self.mvcc
                    .put(&req, &no_lease, &mut batch, &mut events)
                    .unwrap();
            }
            Write::Delete(k, end) => {
                let req = DeleteRangeRequest {
                    key: k.clone(),
                    range_end: end.clone(),
                    prev_kv: false,
                };
                self.mvcc
                    .delete_range(&req, &mut batch, &mut events)
                    .unwrap();
            }
            Write::Txn(puts) => {
                let t = TxnRequest {
                    compare: vec![],
                    success: puts
                        .iter()
                        .map(|(k, v)| RequestOp {
                            request: Some(
                                crate::pb::etcdserverpb::request_op::Request::RequestPut(
                                    PutRequest {
                                        key: k.clone(),
                                        value: v.clone(),
                                        ..Default::default()
                                    },
                                ),
                            ),
                        })
                        .collect(),
                    failure: vec![],
                };
                // Duplicate keys in one txn are rejected by validation, not by MVCC;
                // they are fine here.
                self.mvcc
                    .txn(&t, &no_lease, &mut batch, &mut events)
                    .unwrap();
            }
            Write::Compact => {
                let rev = self.mvcc.current_revision();
                if rev > self.mvcc.compact_revision() {
                    self.mvcc.compact(rev, &mut batch).unwrap();
                    self.hub_inbox.push_back(HubInput::Compacted(rev));
                }
            }
        }
        if !events.is_empty() {
            self.hub_inbox
                .push_back(HubInput::Events(self.mvcc.current_revision(), events));
        }
    }

    /// The storage side answers the oldest read, at its current state.
    fn answer_fetch(&mut self) {
        if let Some(f) = self.fetches.pop_front() {
            let result = self.mvcc.history(
                &f.key,
                &f.range_end,
                f.from_revision,
                i64::MAX,
                f.max_events,
                f.max_bytes,
            );
            self.hub_inbox.push_back(HubInput::History(HistoryAnswer {
                fetch_id: f.fetch_id,
                result,
                compact_revision: self.mvcc.compact_revision(),
            }));
        }
    }

    /// The hub handles the batches at the front of its inbox as one, as the storage side
    /// sends them when it applies several writes at once.
    fn hub_batch(&mut self) {
        let mut revision = 0;
        let mut events = Vec::new();
        while let Some(HubInput::Events(rev, evs)) = self.hub_inbox.front() {
            revision = *rev;
            events.extend(evs.iter().cloned());
            self.hub_inbox.pop_front();
        }
        if events.is_empty() {
            self.hub_step();
        } else {
            self.run(|h, room| h.on_events(revision, events, room));
        }
    }

    /// The hub handles the oldest message from the storage side.
    fn hub_step(&mut self) {
        match self.hub_inbox.pop_front() {
            Some(HubInput::Events(rev, evs)) => self.run(|h, room| h.on_events(rev, evs, room)),
            Some(HubInput::History(a)) => self.run(|h, room| h.on_history(a, room)),
            Some(HubInput::Compacted(rev)) => self.hub.on_compacted(rev),
            None => {}
        }
    }

    /// Reads up to `n` responses of `stream`, telling the hub (as the gateway does) if
    /// it waits on the stream and the queue has drained to half.
    fn read(&mut self, stream: StreamId, n: usize) -> Vec<WatchResponse> {
        let (cap, q) = self.queues.get_mut(&stream).unwrap();
        let n = n.min(q.len());
        let got: Vec<WatchResponse> = q.drain(..n).collect();
        if n > 0 && q.len() * 2 <= *cap && self.waiting.remove(&stream) {
            self.run(|h, room| h.on_room(room));
        }
        got
    }

    /// Runs storage and hub until nothing is left to do, reading everything.
    fn settle(&mut self, now_ms: &mut u64) -> BTreeMap<StreamId, Vec<WatchResponse>> {
        let mut got: BTreeMap<StreamId, Vec<WatchResponse>> = BTreeMap::new();
        for _ in 0..10_000 {
            while !self.hub_inbox.is_empty() || !self.fetches.is_empty() {
                self.answer_fetch();
                self.hub_step();
            }
            let streams: Vec<StreamId> = self.queues.keys().copied().collect();
            for s in streams {
                let r = self.read(s, usize::MAX);
                got.entry(s).or_default().extend(r);
            }
            *now_ms += 100;
            self.tick(*now_ms);
            if self.fetches.is_empty()
                && self.hub_inbox.is_empty()
                && self.queues.values().all(|(_, q)| q.is_empty())
                && self.hub.unsynced_count() == 0
            {
                return got;
            }
        }
        panic!("the hub did not settle");
    }
}

#[derive(Debug, Clone)]
enum Write {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>, Vec<u8>),
    Txn(Vec<(Vec<u8>, Vec<u8>)>),
    Compact,
}

fn put(k: &str, v: &str) -> Write {
    Write::Put(k.into(), v.into())
}

fn watch(key: &str, end: &[u8], start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        range_end: end.to_vec(),
        start_revision: start,
        ..Default::default()
    }
}

fn kv(k: &str, v: &str, create: i64, modr: i64, ver: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
        create_revision: create,
        mod_revision: modr,
        version: ver,
        lease: 0,
    }
}

fn put_ev(kv: KeyValue, prev: Option<KeyValue>) -> Event {
    Event {
        r#type: EventType::Put as i32,
        kv: Some(kv),
        prev_kv: prev,
    }
}

fn resp(rev: i64, id: i64) -> WatchResponse {
    WatchResponse {
        header: header(rev),
        watch_id: id,
        ..Default::default()
    }
}

fn created(rev: i64, id: i64) -> WatchResponse {
    WatchResponse {
        created: true,
        ..resp(rev, id)
    }
}

#[test]
fn create_ids_and_errors_match_etcd() {
    let mut r = Rig::new(WatchConfig::default());
    r.open(1, 16);
    // etcd picks ids from 0 on; a client-chosen id is kept; a reused one fails.
    r.create(1, watch("a", b"", 0));
    r.create(
        1,
        WatchCreateRequest {
            watch_id: 1,
            ..watch("b", b"", 0)
        },
    );
    r.create(1, watch("c", b"", 0));
    r.create(
        1,
        WatchCreateRequest {
            watch_id: 2,
            ..watch("d", b"", 0)
        },
    );
    r.create(1, watch("z", b"a", 0));
    let got = r.read(1, 10);
    let failed = |reason: &str| WatchResponse {
        created: true,
        canceled: true,
        cancel_reason: reason.into(),
        ..resp(1, -1)
    };
    assert_eq!(
        got,
        vec![
            created(1, 0),
            created(1, 1),
            created(1, 2),
            failed(DUPLICATE_ID_REASON),
            failed(EMPTY_RANGE_REASON),
        ]
    );
    // Cancel answers once; an unknown id gets no answer.
    r.cancel(1, 1);
    r.cancel(1, 1);
    r.cancel(1, 42);
    assert_eq!(
        r.read(1, 10),
        vec![WatchResponse {
            canceled: true,
            ..resp(1, 1)
        }]
    );
    assert_eq!(r.hub.watcher_count(), 2);
    r.hub.close_stream(1);
    assert_eq!(r.hub.watcher_count(), 0);
}

#[test]
fn live_events_filters_and_prev_kv() {
    let mut r = Rig::new(WatchConfig::default());
    r.open(1, 16);
    r.create(
        1,
        WatchCreateRequest {
            prev_kv: true,
            ..watch("a", b"", 0)
        },
    );
    r.create(
        1,
        WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..watch("a", b"b", 0)
        },
    );
    r.create(
        1,
        WatchCreateRequest {
            filters: vec![FilterType::Nodelete as i32],
            ..watch("", &[0], 0)
        },
    );
    r.read(1, 10);
    r.write(&put("a", "1"));
    r.write(&put("a", "2"));
    r.write(&Write::Delete("a".into(), vec![]));
    while !r.hub_inbox.is_empty() {
        r.hub_step();
    }
    let got = r.read(1, 20);
    let a1 = kv("a", "1", 2, 2, 1);
    let a2 = kv("a", "2", 2, 3, 2);
    let del = Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key: "a".into(),
            mod_revision: 4,
            ..Default::default()
        }),
        prev_kv: None,
    };
    let with = |mut r: WatchResponse, evs: Vec<Event>| {
        r.events = evs;
        r
    };
    assert_eq!(
        got,
        vec![
            with(resp(2, 0), vec![put_ev(a1.clone(), None)]),
            with(resp(2, 2), vec![put_ev(a1.clone(), None)]),
            with(resp(3, 0), vec![put_ev(a2.clone(), Some(a1))]),
            with(resp(3, 2), vec![put_ev(a2.clone(), None)]),
            with(
                resp(4, 0),
                vec![Event {
                    prev_kv: Some(a2),
                    ..del.clone()
                }]
            ),
            with(resp(4, 1), vec![del]),
        ]
    );
}

#[test]
fn compacted_start_is_created_then_canceled() {
    let mut r = Rig::new(WatchConfig::default());
    r.open(1, 16);
    for w in [put("a", "1"), put("a", "2"), put("b", "1"), Write::Compact] {
        r.write(&w);
    }
    while !r.hub_inbox.is_empty() {
        r.hub_step();
    }
    r.create(1, watch("a", b"", 1));
    let mut now = 0;
    let got = r.settle(&mut now).remove(&1).unwrap();
    assert_eq!(
        got,
        vec![
            created(4, 0),
            WatchResponse {
                canceled: true,
                compact_revision: 4,
                ..resp(0, 0)
            }
        ]
    );
    assert_eq!(r.hub.watcher_count(), 0);
}

#[test]
fn slow_watcher_catches_up_in_order_without_blocking_others() {
    let mut r = Rig::new(WatchConfig {
        max_history_events: 7,
        ..WatchConfig::default()
    });
    r.open(1, 2); // slow: never read during the writes
    r.open(2, 1000);
    r.create(1, watch("k", b"", 0));
    r.create(2, watch("k", b"", 0));
    r.read(1, 1);
    r.read(2, 1);
    for i in 0..100 {
        r.write(&put("k", &i.to_string()));
        r.hub_step();
    }
    // The fast stream got every revision live; the slow one is behind.
    assert_eq!(r.queues[&2].1.len(), 100);
    assert_eq!(r.hub.unsynced_count(), 1);
    let mut now = 0;
    let got = r.settle(&mut now);
    let slow: Vec<i64> = got[&1]
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision))
        .collect();
    assert_eq!(slow, (2..102).collect::<Vec<_>>());
    // Headers never go back.
    let revs: Vec<i64> = got[&1].iter().map(|r| r.header.unwrap().revision).collect();
    assert!(revs.windows(2).all(|w| w[0] <= w[1]), "{revs:?}");
}

/// The revisions of the events a stream's responses carry, per response.
fn revisions_of(resps: &[WatchResponse]) -> Vec<Vec<i64>> {
    resps
        .iter()
        .filter(|r| !r.events.is_empty())
        .map(|r| r.events.iter().map(event_revision).collect())
        .collect()
}

#[test]
fn fallen_behind_watchers_catch_up_from_recent_revisions_without_reads() {
    let mut r = Rig::new(WatchConfig::default());
    r.open(1, 3); // three watchers, room for one revision
    r.open(2, 1000);
    for _ in 0..3 {
        r.create(1, watch("k", b"", 0));
    }
    r.create(2, watch("k", b"", 0));
    r.read(1, 3);
    r.read(2, 1);
    for i in 0..30 {
        r.write(&put("k", &i.to_string()));
        r.hub_step();
    }
    assert_eq!(r.hub.unsynced_count(), 3);
    assert!(
        r.waiting.contains(&1),
        "the hub waits for stream 1 to drain"
    );
    // Reading drains the queue: the hub hears it and the watchers catch up at once,
    // from memory, each in one response holding every revision it missed.
    let first = r.read(1, 3);
    assert_eq!(revisions_of(&first), vec![vec![2], vec![2], vec![2]]);
    let rest = r.read(1, 100);
    assert_eq!(rest.len(), 3);
    for resp in &rest {
        assert_eq!(resp.header.unwrap().revision, 31);
    }
    assert_eq!(revisions_of(&rest), vec![(3..32).collect::<Vec<_>>(); 3]);
    assert_eq!(r.hub.unsynced_count(), 0);
    assert!(r.fetches.is_empty(), "no history read: {:?}", r.fetches);
    // Synced again: the next write is delivered live.
    r.write(&put("k", "x"));
    r.hub_step();
    assert_eq!(revisions_of(&r.read(1, 100)), vec![vec![32]; 3]);
}

#[test]
fn catching_up_from_recent_revisions_cuts_as_history_does() {
    let mut r = Rig::new(WatchConfig {
        max_history_events: 4,
        ..WatchConfig::default()
    });
    r.open(1, 1);
    r.create(1, watch("", &[0], 0));
    r.read(1, 1);
    r.write(&put("a", "0"));
    r.hub_step();
    // Behind from revision 3 on: revisions of 1, 3 and 2 events.
    r.write(&put("a", "1"));
    r.write(&Write::Txn(vec![
        ("a".into(), "2".into()),
        ("b".into(), "2".into()),
        ("c".into(), "2".into()),
    ]));
    r.write(&Write::Txn(vec![
        ("a".into(), "3".into()),
        ("b".into(), "3".into()),
    ]));
    while !r.hub_inbox.is_empty() {
        r.hub_step();
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(r.read(1, 1));
    }
    // What the store's history read with the same limits answers, response by response.
    let want_first = r
        .mvcc
        .history(b"\0", &[0], 3, i64::MAX, 4, usize::MAX)
        .unwrap();
    assert_eq!(want_first.through_revision, 4);
    assert_eq!(
        revisions_of(&got),
        vec![vec![2], vec![3, 4, 4, 4], vec![5, 5]]
    );
    assert!(r.fetches.is_empty());
}

#[test]
fn compaction_past_a_fallen_behind_watcher_cancels_it() {
    let mut r = Rig::new(WatchConfig::default());
    r.open(1, 1);
    r.create(1, watch("k", b"", 0));
    r.read(1, 1);
    r.write(&put("k", "0"));
    r.hub_step();
    // Revision 3 does not fit: the watcher is behind from there.
    r.write(&put("k", "1"));
    r.hub_step();
    assert_eq!(r.hub.unsynced_count(), 1);
    r.write(&put("k", "2"));
    r.write(&Write::Compact);
    while !r.hub_inbox.is_empty() {
        r.hub_step();
    }
    // The events it misses are still in memory, but the store compacted them: as etcd,
    // the watcher learns it was compacted (through the store's history read).
    let mut now = 0;
    let got = r.settle(&mut now).remove(&1).unwrap();
    assert_eq!(revisions_of(&got), vec![vec![2]]);
    assert_eq!(
        got.last().unwrap(),
        &WatchResponse {
            canceled: true,
            compact_revision: 4,
            ..resp(0, 0)
        }
    );
    assert_eq!(r.hub.watcher_count(), 0);
}

#[test]
fn watchers_behind_the_recent_revisions_read_history() {
    let mut r = Rig::new(WatchConfig {
        max_recent_events: 5,
        ..WatchConfig::default()
    });
    r.open(1, 1);
    r.create(1, watch("k", b"", 0));
    r.read(1, 1);
    for i in 0..20 {
        r.write(&put("k", &i.to_string()));
        r.hub_step();
    }
    // It fell behind at revision 3; memory holds revisions 17 to 21 only.
    assert!(r.fetches.is_empty());
    let mut now = 0;
    let got = r.settle(&mut now).remove(&1).unwrap();
    let revs: Vec<i64> = revisions_of(&got).concat();
    assert_eq!(revs, (2..22).collect::<Vec<_>>());
    assert_eq!(r.hub.unsynced_count(), 0);
}

#[test]
fn a_watcher_created_in_the_past_catches_up_from_memory_at_once() {
    let mut r = Rig::new(WatchConfig::default());
    r.open(1, 16);
    for i in 0..5 {
        r.write(&put("k", &i.to_string()));
        r.hub_step();
    }
    r.create(
        1,
        WatchCreateRequest {
            prev_kv: true,
            filters: vec![FilterType::Nodelete as i32],
            ..watch("k", b"", 4)
        },
    );
    let got = r.read(1, 16);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], created(6, 0));
    assert_eq!(
        got[1],
        WatchResponse {
            events: vec![
                put_ev(kv("k", "2", 2, 4, 3), Some(kv("k", "1", 2, 3, 2))),
                put_ev(kv("k", "3", 2, 5, 4), Some(kv("k", "2", 2, 4, 3))),
                put_ev(kv("k", "4", 2, 6, 5), Some(kv("k", "3", 2, 5, 4))),
            ],
            ..resp(6, 0)
        }
    );
    assert!(r.fetches.is_empty());
    assert_eq!(r.hub.unsynced_count(), 0);
}

#[test]
fn a_batch_of_revisions_goes_out_in_one_response_per_watcher() {
    let mut r = Rig::new(WatchConfig {
        max_history_events: 3,
        ..WatchConfig::default()
    });
    r.open(1, 16);
    r.create(1, watch("k", b"", 0));
    r.create(
        1,
        WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..watch("k", b"", 0)
        },
    );
    r.create(1, watch("", &[0], 0));
    r.read(1, 3);
    for w in [
        put("k", "1"),
        put("j", "1"),
        Write::Delete("k".into(), vec![]),
        put("k", "2"),
        put("k", "3"),
    ] {
        r.write(&w);
    }
    r.hub_batch();
    let got = r.read(1, 16);
    // Whole revisions, at most 3 events of the range a response (cut as history is), the
    // batch's revision in every header; the NOPUT watcher gets only the delete.
    let shape: Vec<(i64, Vec<i64>, i64)> = got
        .iter()
        .map(|r| {
            let revs = r.events.iter().map(event_revision).collect();
            (r.watch_id, revs, r.header.unwrap().revision)
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (0, vec![2, 4, 5], 6),
            (0, vec![6], 6),
            (1, vec![4], 6),
            (2, vec![2, 3, 4], 6),
            (2, vec![5, 6], 6),
        ]
    );
    assert_eq!(r.hub.unsynced_count(), 0);
}

#[test]
fn a_batch_that_does_not_fit_is_caught_up_whole() {
    let mut r = Rig::new(WatchConfig {
        max_history_events: 2,
        ..WatchConfig::default()
    });
    r.open(1, 1);
    r.create(1, watch("k", b"", 0));
    r.read(1, 1);
    for i in 0..5 {
        r.write(&put("k", &i.to_string()));
    }
    r.hub_batch();
    // Room for the first chunk only; the rest follows as the stream is read.
    let mut revs = Vec::new();
    for _ in 0..5 {
        revs.extend(revisions_of(&r.read(1, 1)));
    }
    assert_eq!(revs, vec![vec![2, 3], vec![4, 5], vec![6]]);
    assert!(r.fetches.is_empty());
    assert_eq!(r.hub.unsynced_count(), 0);
}

#[test]
fn headers_carry_the_member_and_its_term() {
    let mut r = Rig::new(WatchConfig::default());
    r.hub.set_identity(7, 9);
    r.hub.set_raft_term(3);
    r.open(1, 16);
    r.create(1, watch("k", b"", 0));
    r.write(&put("k", "1"));
    r.hub_step();
    r.hub.set_raft_term(4);
    r.write(&put("k", "2"));
    r.hub_step();
    let headers: Vec<ResponseHeader> = r.read(1, 16).iter().map(|r| r.header.unwrap()).collect();
    let h = |revision, raft_term| ResponseHeader {
        cluster_id: 7,
        member_id: 9,
        revision,
        raft_term,
    };
    assert_eq!(headers, vec![h(1, 3), h(2, 3), h(3, 4)]);
}

#[test]
fn fragments_split_large_revisions() {
    let mut r = Rig::new(WatchConfig {
        max_request_bytes: 100,
        ..WatchConfig::default()
    });
    r.open(1, 16);
    r.create(
        1,
        WatchCreateRequest {
            fragment: true,
            ..watch("", &[0], 0)
        },
    );
    r.create(1, watch("", &[0], 0));
    r.read(1, 2);
    let big = "x".repeat(40);
    r.write(&Write::Txn(vec![
        ("a".into(), big.clone().into()),
        ("b".into(), big.clone().into()),
        ("c".into(), big.into()),
    ]));
    r.hub_step();
    let got = r.read(1, 10);
    let shape: Vec<(i64, usize, bool)> = got
        .iter()
        .map(|r| (r.watch_id, r.events.len(), r.fragment))
        .collect();
    assert_eq!(
        shape,
        vec![(0, 1, true), (0, 1, true), (0, 1, false), (1, 3, false)]
    );
}

#[test]
fn progress_request_and_notify() {
    let mut r = Rig::new(WatchConfig {
        progress_notify_interval_ms: 1000,
        // Catching up reads the store's history, so the progress request below waits.
        max_recent_events: 0,
        ..WatchConfig::default()
    });
    r.open(1, 4);
    r.create(
        1,
        WatchCreateRequest {
            progress_notify: true,
            ..watch("a", b"", 0)
        },
    );
    r.read(1, 1);
    r.write(&put("b", "1"));
    r.hub_step();
    r.progress(1);
    assert_eq!(r.read(1, 5), vec![resp(2, -1)]);
    r.tick(0);
    r.tick(999);
    assert!(r.read(1, 5).is_empty());
    r.tick(1000);
    assert_eq!(r.read(1, 5), vec![resp(2, 0)]);
    // An event in the interval suppresses the next notification.
    r.write(&put("a", "1"));
    r.hub_step();
    assert_eq!(r.read(1, 5).len(), 1);
    r.tick(2000);
    assert!(r.read(1, 5).is_empty());
    r.tick(3000);
    assert_eq!(r.read(1, 5), vec![resp(3, 0)]);
    // A progress request waits while a watcher of the stream catches up.
    r.create(1, watch("a", b"", 2));
    r.progress(1);
    assert_eq!(r.read(1, 5), vec![created(3, 1)]);
    let mut now = 3000;
    let rest = r.settle(&mut now).remove(&1).unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].events.len(), 1);
    assert_eq!(rest[1], resp(3, -1));
}

#[test]
fn control_backlog_is_bounded() {
    let mut r = Rig::new(WatchConfig::default());
    r.open(1, 0);
    for _ in 0..=MAX_CONTROL_BACKLOG {
        r.progress(1);
    }
    assert_eq!(r.closed, vec![1]);
}

// ---- The model test ----

#[derive(Debug, Clone)]
enum Step {
    Write(Write),
    Create {
        stream: StreamId,
        range: u8,
        start_back: i64,
        filter: u8,
        prev_kv: bool,
        progress: bool,
    },
    Cancel(StreamId, i64),
    Progress(StreamId),
    Read(StreamId, usize),
    AnswerFetch,
    HubTurn,
    HubBatch,
    Tick,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["a", "ab", "b", "c"]).prop_map(|k| k.as_bytes().to_vec())
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        4 => (key(), any::<u8>()).prop_map(|(k, v)| Write::Put(k, vec![v])),
        1 => (key(), prop::sample::select(vec![vec![], b"b".to_vec(), vec![0]]))
            .prop_map(|(k, e)| Write::Delete(k, e)),
        1 => prop::collection::vec((key(), any::<u8>()), 1..4).prop_map(|kvs| {
            let mut seen = std::collections::BTreeSet::new();
            Write::Txn(kvs.into_iter().filter(|(k, _)| seen.insert(k.clone())).map(|(k, v)| (k, vec![v])).collect())
        }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => write().prop_map(Step::Write),
        2 => (0u64..3, 0u8..5, 0i64..8, 0u8..3, any::<bool>(), any::<bool>()).prop_map(
            |(stream, range, start_back, filter, prev_kv, progress)| Step::Create {
                stream, range, start_back, filter, prev_kv, progress
            }),
        1 => (0u64..3, 0i64..4).prop_map(|(s, id)| Step::Cancel(s, id)),
        1 => (0u64..3).prop_map(Step::Progress),
        3 => (0u64..3, 0usize..4).prop_map(|(s, n)| Step::Read(s, n)),
        3 => Just(Step::AnswerFetch),
        6 => Just(Step::HubTurn),
        2 => Just(Step::HubBatch),
        1 => Just(Step::Tick),
    ]
}

/// What the model knows about one watcher, from its create request.
#[derive(Debug, Clone)]
struct ModelWatcher {
    req: WatchCreateRequest,
    /// Set from the created response.
    id: Option<i64>,
    start: i64,
    events: Vec<Event>,
    canceled: bool,
}

fn range_of(code: u8) -> (Vec<u8>, Vec<u8>) {
    match code {
        0 => (b"a".to_vec(), vec![]),
        1 => (b"a".to_vec(), b"b".to_vec()),
        2 => (b"b".to_vec(), vec![0]),
        3 => (vec![], vec![0]),
        _ => (b"c".to_vec(), vec![]),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Every watcher receives exactly the events of its range from its start revision on,
    /// in order, each revision in one response, with filters and prev_kv applied, however
    /// slowly its stream is read; progress responses never run ahead of delivered events.
    #[test]
    fn watchers_get_exactly_their_events(
        steps in prop::collection::vec(step(), 1..120),
        caps in prop::collection::vec(1usize..4, 3),
        byte_budget in prop::sample::select(vec![usize::MAX, 150, 400]),
        (max_recent_events, max_recent_bytes) in prop::sample::select(vec![(0, 0), (4, 300), (1000, usize::MAX)]),
    ) {
        let mut r = Rig::new(WatchConfig {
            max_history_events: 3,
            max_fetches_in_flight: 2,
            progress_notify_interval_ms: 300,
            max_history_bytes: 120,
            max_recent_events,
            max_recent_bytes,
            ..WatchConfig::default()
        });
        r.byte_budget = byte_budget;
        for (s, cap) in caps.iter().enumerate() {
            r.open(s as StreamId, *cap);
        }
        // Per stream: watchers in create order, and creates still waiting for an answer.
        let mut watchers: BTreeMap<StreamId, Vec<ModelWatcher>> = BTreeMap::new();
        let mut now = 0u64;
        let mut received: BTreeMap<StreamId, Vec<WatchResponse>> = BTreeMap::new();
        for step in &steps {
            match step {
                Step::Write(w) => r.write(w),
                Step::Create { stream, range, start_back, filter, prev_kv, progress } => {
                    let (key, range_end) = range_of(*range);
                    let cur = r.hub.current_revision();
                    let start = if *start_back == 0 { 0 } else { (cur + 2 - start_back).max(1) };
                    let req = WatchCreateRequest {
                        key, range_end, start_revision: start,
                        filters: match filter { 1 => vec![FilterType::Noput as i32], 2 => vec![FilterType::Nodelete as i32], _ => vec![] },
                        prev_kv: *prev_kv, progress_notify: *progress,
                        ..Default::default()
                    };
                    watchers.entry(*stream).or_default().push(ModelWatcher {
                        req: req.clone(), id: None, start: if start == 0 { cur + 1 } else { start },
                        events: vec![], canceled: false,
                    });
                    r.create(*stream, req);
                }
                Step::Cancel(s, id) => r.cancel(*s, *id),
                Step::Progress(s) => r.progress(*s),
                Step::Read(s, n) => {
                    let got = r.read(*s, *n);
                    received.entry(*s).or_default().extend(got);
                }
                Step::AnswerFetch => r.answer_fetch(),
                Step::HubTurn => r.hub_step(),
                Step::HubBatch => r.hub_batch(),
                Step::Tick => { now += 100; r.tick(now); }
            }
        }
        for (s, got) in r.settle(&mut now) {
            received.entry(s).or_default().extend(got);
        }
        let cur = r.mvcc.current_revision();
        for (s, resps) in &received {
            let ws = watchers.entry(*s).or_default();
            let mut next_create = 0;
            let mut by_id: BTreeMap<i64, usize> = BTreeMap::new();
            let mut last_header = 0;
            for resp in resps {
                // Headers on a stream never go back (the compacted answer has none).
                if resp.compact_revision == 0 {
                    let h = resp.header.unwrap().revision;
                    prop_assert!(h >= last_header, "header went back: {} after {}", h, last_header);
                    last_header = h;
                }
                if resp.created {
                    let w = &mut ws[next_create];
                    next_create += 1;
                    if !resp.canceled {
                        w.id = Some(resp.watch_id);
                        by_id.insert(resp.watch_id, next_create - 1);
                    }
                    continue;
                }
                if resp.watch_id == INVALID_WATCH_ID {
                    // A progress response: every live watcher has all events up to it.
                    for &i in by_id.values() {
                        let w = &ws[i];
                        let want = r.mvcc.history(&w.req.key, &w.req.range_end, w.start, resp.header.unwrap().revision, usize::MAX, usize::MAX);
                        if let Ok(h) = want {
                            let want_n = h.events.iter().filter(|e| passes(&w.req, e)).count();
                            prop_assert_eq!(w.events.len(), want_n, "progress ran ahead on stream {}", s);
                        }
                    }
                    continue;
                }
                let Some(&i) = by_id.get(&resp.watch_id) else {
                    prop_assert!(false, "response for unknown watch id: {:?}", resp);
                    unreachable!()
                };
                if resp.canceled {
                    ws[i].canceled = true;
                    by_id.remove(&resp.watch_id);
                    continue;
                }
                let w = &mut ws[i];
                let h = resp.header.unwrap().revision;
                if resp.events.is_empty() {
                    // A progress notification: nothing up to h is still owed.
                    let want = r.mvcc.history(&w.req.key, &w.req.range_end, w.start, h, usize::MAX, usize::MAX).unwrap();
                    let want_n = want.events.iter().filter(|e| passes(&w.req, e)).count();
                    prop_assert_eq!(w.events.len(), want_n, "progress notify ran ahead");
                    continue;
                }
                // Atomic: the revisions of this response are not continued later.
                let first = event_revision(&resp.events[0]);
                if let Some(last) = w.events.last() {
                    prop_assert!(event_revision(last) < first, "revision split or repeated");
                }
                for e in &resp.events {
                    prop_assert!(event_revision(e) <= h, "header behind its events");
                }
                w.events.extend(resp.events.iter().cloned());
            }
        }
        // Exactly the events of the range from the start on, filtered.
        for ws in watchers.values() {
            for w in ws {
                if w.id.is_none() || w.canceled {
                    continue;
                }
                let want: Vec<Event> = r.mvcc.history(&w.req.key, &w.req.range_end, w.start, cur, usize::MAX, usize::MAX)
                    .unwrap()
                    .events
                    .into_iter()
                    .filter(|e| passes(&w.req, e))
                    .map(|mut e| { if !w.req.prev_kv { e.prev_kv = None; } e })
                    .collect();
                prop_assert_eq!(&w.events, &want, "watcher {:?}", w.req);
            }
        }
    }
}

fn passes(req: &WatchCreateRequest, e: &Event) -> bool {
    let is_put = e.r#type == EventType::Put as i32;
    let key = &e.kv.as_ref().unwrap().key;
    let in_range = match req.range_end.as_slice() {
        [] => key == &req.key,
        [0] => key >= &req.key,
        end => key >= &req.key && key.as_slice() < end,
    };
    in_range
        && !(is_put && req.filters.contains(&(FilterType::Noput as i32)))
        && (is_put || !req.filters.contains(&(FilterType::Nodelete as i32)))
}

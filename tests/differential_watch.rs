//! Differential test of watch streams: the server under test against the real etcd 3.4.23.
//!
//! For a handful of fixed seeds both servers get the same watchers (on three watch
//! streams per server: stream 0 with server-assigned ids, streams 1 and 2 with
//! client-chosen ids) and the same seeded random write workload (puts, deletes incl.
//! ranges, txns with several writes, leases with client-chosen ids and long TTLs, put
//! with lease, revoke, compactions). Watchers are key, prefix, range, from-key and
//! all-keys, with and without prev_kv, with NOPUT / NODELETE filters, starting now, at
//! a past revision (also below the compaction: canceled with compact_revision), at the
//! compaction revision itself, or in the future; some are created and some canceled
//! mid-run, and some creates are invalid (duplicate id, empty range).
//!
//! Each watcher's whole response sequence is compared: header revision, created /
//! canceled, compact_revision, cancel_reason, and every event (type, key, value,
//! create/mod revision, version, lease, prev_kv) with its grouping into responses.
//! Only cluster_id, member_id and raft_term are ignored.
//!
//! Determinism: etcd's grouping depends on timing when writes race with a watcher's
//! catch-up (the unsynced watchers are synced every 100 ms), and prev_kv is read when an
//! event is sent. So the test settles after every step: it waits until every watcher on
//! both servers has received what it must have by now. What that is comes from a model:
//! a watcher over all keys (watcher 0, created first) gives the reference's full event
//! log; each watcher's expected events are the log's events in its range, not filtered,
//! from its start revision (after the current revision if started "now") up to its
//! cancel. Past-revision watchers also get 250 ms to be synced even if they have no
//! history to catch up on, and a non-physical compaction 300 ms to finish. Then the
//! sequences so far are compared, so a mismatch is reported at the step that caused it.
//!
//! One etcd quirk is modelled: a watcher that starts exactly at the compaction revision
//! C does not see delete events of revision C, because compaction removes tombstones at
//! C from the backend (physical compaction; the test waits for it).
//!
//! Env knobs: DETCD_WDIFF_OPS (steps per seed, default 150), DETCD_WDIFF_SEED (run this
//! extra seed too, in the `extra_seed` test).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{within, Server};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, LeaseGrantOptions, PutOptions, Txn, TxnOp,
    WatchFilterType, WatchOptions, WatchRequestSender, WatchResponse,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

const KEYS: [&str; 12] = [
    "a", "a/1", "a/2", "a/2/x", "ab", "b", "b/1", "b/2", "ba", "c", "c/1", "d",
];
/// Keys never written: range bounds.
const BOUNDS: [&str; 6] = ["a/", "b/", "0", "aa", "c0", "z"];
const PREFIXES: [&str; 7] = ["a", "a/", "a/2", "b", "b/", "c", "x"];
const VALUES: [&str; 5] = ["", "v", "w", "x1", "zz"];
/// Lease ids granted, attached and revoked; 9 is never granted.
const LEASE_IDS: [i64; 4] = [1, 2, 3, 9];
const LEASE_TTLS: [i64; 3] = [600, 900, 1200];
const STREAMS: usize = 3;
/// How long one settle step may take on one server.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

// ---- normalised responses ----

#[derive(Debug, Clone, PartialEq)]
struct Kv {
    key: String,
    value: String,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct Ev {
    typ: &'static str,
    kv: Option<Kv>,
    prev: Option<Kv>,
}

#[derive(Debug, Clone, PartialEq)]
struct Resp {
    /// Header revision (None: no header).
    rev: Option<i64>,
    created: bool,
    canceled: bool,
    compact_revision: i64,
    cancel_reason: String,
    events: Vec<Ev>,
}

fn kv(k: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: String::from_utf8_lossy(k.value()).into_owned(),
        create: k.create_revision(),
        modr: k.mod_revision(),
        version: k.version(),
        lease: k.lease(),
    }
}

fn norm(r: &WatchResponse) -> Resp {
    Resp {
        rev: r.header().map(|h| h.revision()),
        created: r.created(),
        canceled: r.canceled(),
        compact_revision: r.compact_revision(),
        cancel_reason: r.cancel_reason().to_string(),
        events: r
            .events()
            .iter()
            .map(|e| Ev {
                typ: match e.event_type() {
                    etcd_client::EventType::Put => "PUT",
                    etcd_client::EventType::Delete => "DELETE",
                },
                kv: e.kv().map(kv),
                prev: e.prev_kv().map(kv),
            })
            .collect(),
    }
}

// ---- watchers ----

#[derive(Debug, Clone)]
struct WSpec {
    /// key / prefix / range / from-key / all (shown in reports)
    #[allow(dead_code)]
    kind: &'static str,
    key: String,
    end: String,
    start: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    stream: usize,
    /// Client-chosen id (0: the server assigns one).
    id: i64,
}

impl WSpec {
    fn options(&self) -> WatchOptions {
        let mut o = WatchOptions::new();
        if !self.end.is_empty() {
            o = o.with_range(self.end.clone());
        }
        if self.start != 0 {
            o = o.with_start_revision(self.start);
        }
        if self.prev_kv {
            o = o.with_prev_key();
        }
        let mut f = Vec::new();
        if self.no_put {
            f.push(WatchFilterType::NoPut);
        }
        if self.no_delete {
            f.push(WatchFilterType::NoDelete);
        }
        if !f.is_empty() {
            o = o.with_filters(f);
        }
        if self.id != 0 {
            o = o.with_watch_id(self.id);
        }
        o
    }

    fn contains(&self, k: &[u8]) -> bool {
        let (key, end) = (self.key.as_bytes(), self.end.as_bytes());
        if end.is_empty() {
            k == key
        } else if end == [0] {
            k >= key
        } else {
            k >= key && k < end
        }
    }
}

/// What the test expects of one watcher.
#[derive(Debug, Clone)]
struct Model {
    spec: WSpec,
    /// The watch id it must get.
    wid: i64,
    /// First revision it reports.
    from: i64,
    /// Last revision it reports (set when canceled).
    until: Option<i64>,
    /// Canceled by the client.
    cancel_sent: bool,
    /// Start revision below the compaction: canceled by the server.
    compacted: bool,
    /// Starts exactly at this (physically done) compaction revision: its tombstones
    /// are gone.
    skip_deletes_at: i64,
}

impl Model {
    fn active(&self) -> bool {
        !self.cancel_sent && !self.compacted
    }

    /// Events expected from the reference's global log.
    fn expected_events(&self, log: &[(i64, bool, Vec<u8>)]) -> usize {
        if self.compacted {
            return 0;
        }
        log.iter()
            .filter(|(rev, put, key)| {
                *rev >= self.from
                    && self.until.is_none_or(|u| *rev <= u)
                    && self.spec.contains(key)
                    && !(self.spec.no_put && *put)
                    && (!self.spec.no_delete || *put)
                    && (*put || *rev != self.skip_deletes_at)
            })
            .count()
    }
}

// ---- one server with its watch streams ----

type Msg = (usize, Result<WatchResponse, String>);

struct Side {
    server: Server,
    client: Client,
    senders: Vec<Option<WatchRequestSender>>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// (stream, watch id) -> responses in arrival order.
    got: BTreeMap<(usize, i64), Vec<Resp>>,
}

impl Side {
    async fn new(server: Server) -> Side {
        let client = server.client().await;
        let (tx, rx) = mpsc::unbounded_channel();
        Side {
            server,
            client,
            senders: (0..STREAMS).map(|_| None).collect(),
            tx,
            rx,
            got: BTreeMap::new(),
        }
    }

    fn name(&self) -> &'static str {
        self.server.kind().name()
    }

    /// Creates a watcher: opens its stream if this is the stream's first one.
    async fn watch(&mut self, spec: &WSpec) {
        let s = spec.stream;
        if let Some(sender) = self.senders[s].as_mut() {
            within(
                10,
                "watch create",
                sender.watch(spec.key.clone(), Some(spec.options())),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: watch create: {e}", self.name()));
            return;
        }
        let ws = within(
            10,
            "watch",
            self.client.watch(spec.key.clone(), Some(spec.options())),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: watch: {e}", self.name()));
        let (sender, mut stream) = ws.split();
        self.senders[s] = Some(sender);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            loop {
                let m = match stream.message().await {
                    Ok(Some(r)) => Ok(r),
                    Ok(None) => Err("watch stream ended".to_string()),
                    Err(e) => Err(format!("watch stream error: {e}")),
                };
                let end = m.is_err();
                if tx.send((s, m)).is_err() || end {
                    break;
                }
            }
        });
    }

    async fn cancel(&mut self, stream: usize, wid: i64) {
        let sender = self.senders[stream].as_mut().expect("stream open");
        within(10, "watch cancel", sender.cancel(wid))
            .await
            .unwrap_or_else(|e| panic!("watch cancel: {e}"));
    }

    fn file(&mut self, (s, m): Msg) {
        let r = m.unwrap_or_else(|e| panic!("{} stream {s}: {e}", self.name()));
        self.got
            .entry((s, r.watch_id()))
            .or_default()
            .push(norm(&r));
    }

    /// Files what has arrived; waits until `deadline` for one more if `wait`.
    async fn pump(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.rx.recv()).await {
            Ok(Some(m)) => {
                self.file(m);
                while let Ok(m) = self.rx.try_recv() {
                    self.file(m);
                }
                true
            }
            Ok(None) => panic!("channel closed"),
            Err(_) => false,
        }
    }

    fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.file(m);
        }
    }

    fn responses(&self, stream: usize, wid: i64) -> &[Resp] {
        self.got
            .get(&(stream, wid))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Highest event revision the global watcher has seen.
    fn global_rev(&self) -> i64 {
        self.responses(0, 0)
            .iter()
            .flat_map(|r| r.events.iter())
            .filter_map(|e| e.kv.as_ref().map(|k| k.modr))
            .max()
            .unwrap_or(1)
    }

    /// Whether watcher `m` has everything it must have.
    fn satisfied(&self, m: &Model, log: &[(i64, bool, Vec<u8>)]) -> bool {
        let rs = self.responses(m.spec.stream, m.wid);
        let created = rs.iter().filter(|r| r.created).count();
        let canceled = rs.iter().filter(|r| r.canceled).count();
        let events: usize = rs.iter().map(|r| r.events.len()).sum();
        created >= 1
            && events >= m.expected_events(log)
            && (canceled >= 1 || !(m.cancel_sent || m.compacted))
    }
}

// ---- workload ----

#[derive(Debug, Clone)]
enum WOp {
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    Del {
        key: String,
        end: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Write(WOp),
    Txn {
        cmp_key: String,
        cmp_op: CompareOp,
        cmp_version: i64,
        success: Vec<WOp>,
        failure: Vec<WOp>,
    },
    Grant {
        id: i64,
        ttl: i64,
    },
    Revoke {
        id: i64,
    },
    Compact {
        rev: i64,
        physical: bool,
    },
    Watch(WSpec),
    Cancel(usize),
    /// An invalid create on a stream: duplicate id (if `dup` != 0) or empty range.
    BadWatch {
        stream: usize,
        dup: i64,
    },
}

fn prefix_end(p: &str) -> String {
    let mut e = p.as_bytes().to_vec();
    *e.last_mut().unwrap() += 1;
    String::from_utf8(e).unwrap()
}

struct Run {
    seed: u64,
    rng: StdRng,
    cur_rev: i64,
    compacted: i64,
    /// The last compaction was physical (or waited for).
    models: Vec<Model>,
    /// Successful creates on stream 0 (server-assigned ids).
    auto_ids: i64,
    /// Invalid creates sent per stream (answered with watch id -1).
    bad: [usize; STREAMS],
    sides: [Side; 2],
}

impl Run {
    fn key(&mut self) -> String {
        KEYS.choose(&mut self.rng).unwrap().to_string()
    }

    fn any_key(&mut self) -> String {
        if self.rng.gen_bool(0.75) {
            self.key()
        } else {
            BOUNDS.choose(&mut self.rng).unwrap().to_string()
        }
    }

    fn put(&mut self) -> WOp {
        let key = self.key();
        self.put_to(key)
    }

    fn put_to(&mut self, key: String) -> WOp {
        let lease = match self.rng.gen_range(0..20) {
            0..=5 => *LEASE_IDS[..3].choose(&mut self.rng).unwrap(),
            6 => LEASE_IDS[3],
            _ => 0,
        };
        WOp::Put {
            key,
            value: VALUES.choose(&mut self.rng).unwrap().to_string(),
            lease,
        }
    }

    /// `n` writes on distinct single keys (so that the txn is valid), the last one
    /// sometimes any write (a range delete, or a conflict: an error).
    fn txn_ops(&mut self, n: usize) -> Vec<WOp> {
        let mut keys = KEYS.to_vec();
        keys.shuffle(&mut self.rng);
        let mut ops: Vec<WOp> = keys[..n]
            .iter()
            .map(|k| {
                if self.rng.gen_bool(0.7) {
                    self.put_to(k.to_string())
                } else {
                    WOp::Del {
                        key: k.to_string(),
                        end: Vec::new(),
                    }
                }
            })
            .collect();
        if n > 0 && self.rng.gen_bool(0.15) {
            ops[n - 1] = self.wop();
        }
        ops
    }

    fn del(&mut self) -> WOp {
        let key = self.any_key();
        let end = match self.rng.gen_range(0..6) {
            0..=2 => Vec::new(),
            3 => vec![0],
            4 => prefix_end(&key).into_bytes(),
            _ => {
                let e = self.any_key();
                if e > key {
                    e.into_bytes()
                } else {
                    format!("{key}\u{7f}").into_bytes()
                }
            }
        };
        WOp::Del { key, end }
    }

    fn wop(&mut self) -> WOp {
        if self.rng.gen_bool(0.7) {
            self.put()
        } else {
            self.del()
        }
    }

    fn wspec(&mut self, start: i64) -> WSpec {
        let (kind, key, end) = match self.rng.gen_range(0..10) {
            0..=2 => ("key", self.key(), String::new()),
            3..=4 => {
                let p = PREFIXES.choose(&mut self.rng).unwrap().to_string();
                let e = prefix_end(&p);
                ("prefix", p, e)
            }
            5..=6 => {
                let mut a = self.any_key();
                let mut b = self.any_key();
                if a > b {
                    std::mem::swap(&mut a, &mut b);
                }
                if a == b {
                    b.push('~');
                }
                ("range", a, b)
            }
            7..=8 => ("from-key", self.any_key(), "\0".to_string()),
            _ => ("all", "\0".to_string(), "\0".to_string()),
        };
        let (no_put, no_delete) = match self.rng.gen_range(0..20) {
            0..=2 => (true, false),
            3..=5 => (false, true),
            6 => (true, true),
            _ => (false, false),
        };
        let stream = self.rng.gen_range(0..STREAMS);
        WSpec {
            kind,
            key,
            end,
            start,
            prev_kv: self.rng.gen_bool(0.5),
            no_put,
            no_delete,
            stream,
            id: 0,
        }
    }

    fn start_rev(&mut self) -> i64 {
        match self.rng.gen_range(0..10) {
            0..=4 => 0,
            5..=8 => {
                let lo = (self.compacted - 2).max(1);
                self.rng.gen_range(lo..=self.cur_rev.max(lo))
            }
            _ => self.cur_rev + self.rng.gen_range(1..=3),
        }
    }

    fn step(&mut self) -> Step {
        match self.rng.gen_range(0..100) {
            0..=29 => Step::Write(self.put()),
            30..=41 => Step::Write(self.del()),
            42..=61 => {
                let ns = self.rng.gen_range(1..=4);
                let nf = self.rng.gen_range(0..=2);
                Step::Txn {
                    cmp_key: self.key(),
                    cmp_op: *[CompareOp::Equal, CompareOp::Greater, CompareOp::Less]
                        .choose(&mut self.rng)
                        .unwrap(),
                    cmp_version: self.rng.gen_range(0..3),
                    success: self.txn_ops(ns),
                    failure: self.txn_ops(nf),
                }
            }
            62..=68 => Step::Grant {
                id: *LEASE_IDS[..3].choose(&mut self.rng).unwrap(),
                ttl: *LEASE_TTLS.choose(&mut self.rng).unwrap(),
            },
            69..=73 => Step::Revoke {
                id: *LEASE_IDS.choose(&mut self.rng).unwrap(),
            },
            74..=77 => {
                let lo = self.compacted.max(1);
                Step::Compact {
                    rev: self.rng.gen_range(lo..=self.cur_rev + 1),
                    physical: self.rng.gen_bool(0.5),
                }
            }
            78..=87 => {
                let start = self.start_rev();
                Step::Watch(self.wspec(start))
            }
            88..=95 => {
                let active: Vec<usize> = (1..self.models.len())
                    .filter(|&i| self.models[i].active())
                    .collect();
                match active.choose(&mut self.rng) {
                    Some(&i) => Step::Cancel(i),
                    None => Step::Write(self.put()),
                }
            }
            _ => {
                let stream = self.rng.gen_range(1..STREAMS);
                let dups: Vec<i64> = self
                    .models
                    .iter()
                    .filter(|m| m.spec.stream == stream && m.active())
                    .map(|m| m.wid)
                    .collect();
                let dup = if self.rng.gen_bool(0.6) {
                    dups.choose(&mut self.rng).copied().unwrap_or(0)
                } else {
                    0
                };
                Step::BadWatch { stream, dup }
            }
        }
    }

    // ---- executing ----

    async fn create(&mut self, mut spec: WSpec) {
        let idx = self.models.len();
        let wid = if spec.stream == 0 {
            spec.id = 0;
            self.auto_ids += 1;
            self.auto_ids - 1
        } else {
            spec.id = 100 + idx as i64;
            spec.id
        };
        let compacted = spec.start != 0 && spec.start < self.compacted;
        let from = if spec.start == 0 {
            self.cur_rev + 1
        } else {
            spec.start
        };
        let skip_deletes_at = if spec.start != 0 && spec.start == self.compacted {
            self.compacted
        } else {
            0
        };
        for side in self.sides.iter_mut() {
            side.watch(&spec).await;
        }
        let past = spec.start != 0 && spec.start <= self.cur_rev;
        self.models.push(Model {
            spec,
            wid,
            from,
            until: None,
            cancel_sent: false,
            compacted,
            skip_deletes_at,
        });
        if past {
            // Let the servers sync it even if it has no history to catch up on.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn exec_write(c: &mut Client, step: &Step) -> Result<i64, String> {
        fn txn_op(w: &WOp) -> TxnOp {
            match w {
                WOp::Put { key, value, lease } => TxnOp::put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(*lease)),
                ),
                WOp::Del { key, end } => TxnOp::delete(
                    key.clone(),
                    Some(etcd_client::DeleteOptions::new().with_range(end.clone())),
                ),
            }
        }
        fn err(e: etcd_client::Error) -> String {
            match e {
                etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
                other => panic!("non-gRPC client error: {other:?}"),
            }
        }
        let rev = |h: Option<&etcd_client::ResponseHeader>| h.map(|h| h.revision()).unwrap_or(-1);
        let fut = async {
            match step {
                Step::Write(WOp::Put { key, value, lease }) => c
                    .put(
                        key.clone(),
                        value.clone(),
                        Some(PutOptions::new().with_lease(*lease)),
                    )
                    .await
                    .map(|r| rev(r.header()))
                    .map_err(err),
                Step::Write(WOp::Del { key, end }) => c
                    .delete(
                        key.clone(),
                        Some(etcd_client::DeleteOptions::new().with_range(end.clone())),
                    )
                    .await
                    .map(|r| rev(r.header()))
                    .map_err(err),
                Step::Txn {
                    cmp_key,
                    cmp_op,
                    cmp_version,
                    success,
                    failure,
                } => c
                    .txn(
                        Txn::new()
                            .when([Compare::version(cmp_key.clone(), *cmp_op, *cmp_version)])
                            .and_then(success.iter().map(txn_op).collect::<Vec<_>>())
                            .or_else(failure.iter().map(txn_op).collect::<Vec<_>>()),
                    )
                    .await
                    .map(|r| rev(r.header()))
                    .map_err(err),
                Step::Grant { id, ttl } => c
                    .lease_grant(*ttl, Some(LeaseGrantOptions::new().with_id(*id)))
                    .await
                    .map(|r| rev(r.header()))
                    .map_err(err),
                Step::Revoke { id } => c
                    .lease_revoke(*id)
                    .await
                    .map(|r| rev(r.header()))
                    .map_err(err),
                Step::Compact { rev: r, physical } => c
                    .compact(
                        *r,
                        physical.then(|| CompactionOptions::new().with_physical()),
                    )
                    .await
                    .map(|r| rev(r.header()))
                    .map_err(err),
                _ => unreachable!(),
            }
        };
        within(30, &format!("{step:?}"), fut).await
    }

    async fn exec(&mut self, i: usize, step: Step) {
        match step {
            Step::Watch(spec) => self.create(spec).await,
            Step::Cancel(idx) => {
                let (stream, wid) = (self.models[idx].spec.stream, self.models[idx].wid);
                for side in self.sides.iter_mut() {
                    side.cancel(stream, wid).await;
                }
                let m = &mut self.models[idx];
                m.cancel_sent = true;
                m.until = Some(self.cur_rev);
            }
            Step::BadWatch { stream, dup } => {
                let spec = WSpec {
                    kind: if dup != 0 {
                        "duplicate id"
                    } else {
                        "empty range"
                    },
                    key: "b".to_string(),
                    end: if dup != 0 {
                        String::new()
                    } else {
                        "a".to_string()
                    },
                    start: 0,
                    prev_kv: false,
                    no_put: false,
                    no_delete: false,
                    stream,
                    id: if dup != 0 { dup } else { 200 + i as i64 },
                };
                for side in self.sides.iter_mut() {
                    side.watch(&spec).await;
                }
                self.bad[stream] += 1;
            }
            _ => {
                let want = Run::exec_write(&mut self.sides[0].client, &step).await;
                let got = Run::exec_write(&mut self.sides[1].client, &step).await;
                if want != got {
                    panic!(
                        "write response mismatch: seed {}, step #{i}: {step:?}\netcd: {want:?}\n{}: {got:?}",
                        self.seed,
                        self.sides[1].name()
                    );
                }
                if let Ok(rev) = want {
                    match step {
                        Step::Compact { rev: c, physical } => {
                            self.compacted = c;
                            if !physical {
                                // Let the background compaction finish.
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                        }
                        _ => self.cur_rev = rev,
                    }
                }
            }
        }
    }

    /// Waits until both servers delivered everything the model expects by now, then
    /// compares the sequences so far.
    async fn settle(&mut self, what: &str) {
        let cur = self.cur_rev;
        for s in 0..2 {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            while self.sides[s].global_rev() < cur {
                if !self.sides[s].pump(deadline).await {
                    self.report(what, &format!(
                        "{}: the all-keys watcher did not reach revision {cur} within {SETTLE_TIMEOUT:?}",
                        self.sides[s].name()
                    ));
                }
            }
        }
        // The reference's global event log.
        let log: Vec<(i64, bool, Vec<u8>)> = self.sides[0]
            .responses(0, 0)
            .iter()
            .flat_map(|r| r.events.iter())
            .filter_map(|e| {
                e.kv.as_ref()
                    .map(|k| (k.modr, e.typ == "PUT", k.key.clone().into_bytes()))
            })
            .collect();
        for s in 0..2 {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            loop {
                self.sides[s].drain();
                let side = &self.sides[s];
                let pending = self.models.iter().position(|m| !side.satisfied(m, &log));
                let bad_pending =
                    (0..STREAMS).find(|&st| side.responses(st, -1).len() < self.bad[st]);
                if pending.is_none() && bad_pending.is_none() {
                    break;
                }
                if !self.sides[s].pump(deadline).await {
                    let why = match pending {
                        Some(i) => format!(
                            "{}: watcher #{i} did not get what it must within {SETTLE_TIMEOUT:?} \
                             (expected {} events, created, canceled: {}):\n{:#?}",
                            self.sides[s].name(),
                            self.models[i].expected_events(&log),
                            self.models[i].cancel_sent || self.models[i].compacted,
                            self.models[i]
                        ),
                        None => format!(
                            "{}: no answer to an invalid create on stream {}",
                            self.sides[s].name(),
                            bad_pending.unwrap()
                        ),
                    };
                    self.report(what, &why);
                }
            }
        }
        self.compare(what);
    }

    fn compare(&self, what: &str) {
        let (a, b) = (&self.sides[0].got, &self.sides[1].got);
        if a == b {
            return;
        }
        let mut keys: Vec<&(usize, i64)> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if a.get(k) != b.get(k) {
                self.report(
                    what,
                    &format!("responses for stream {} watch id {} differ", k.0, k.1),
                );
            }
        }
    }

    /// Panics with the seed, the step, and for every watcher whose sequences differ (or
    /// all if none do) its spec and both sequences.
    fn report(&self, what: &str, why: &str) -> ! {
        let mut out = String::new();
        let (a, b) = (&self.sides[0].got, &self.sides[1].got);
        let mut keys: Vec<(usize, i64)> = a.keys().chain(b.keys()).copied().collect();
        keys.sort();
        keys.dedup();
        let differing: Vec<(usize, i64)> = keys
            .iter()
            .copied()
            .filter(|k| a.get(k) != b.get(k))
            .collect();
        let show = if differing.is_empty() {
            keys
        } else {
            differing
        };
        for k in show {
            let spec = self
                .models
                .iter()
                .find(|m| (m.spec.stream, m.wid) == k)
                .map(|m| format!("{m:#?}"))
                .unwrap_or_else(|| "(no watcher with this id: invalid creates)".into());
            out.push_str(&format!(
                "\n=== stream {} watch id {}: {spec}\n--- etcd:\n{:#?}\n--- {}:\n{:#?}\n",
                k.0,
                k.1,
                a.get(&k).map(|v| v.as_slice()).unwrap_or(&[]),
                self.sides[1].name(),
                b.get(&k).map(|v| v.as_slice()).unwrap_or(&[]),
            ));
        }
        panic!(
            "watch differential mismatch: seed {}, {what} ({} under test): {why}{out}",
            self.seed,
            self.sides[1].name()
        );
    }
}

fn steps_per_seed() -> usize {
    std::env::var("DETCD_WDIFF_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

async fn run_seed(seed: u64) {
    let reference = Side::new(Server::start_etcd()).await;
    let sut = Side::new(Server::start()).await;
    let mut run = Run {
        seed,
        rng: StdRng::seed_from_u64(seed),
        cur_rev: 1,
        compacted: 0,
        models: Vec::new(),
        auto_ids: 0,
        bad: [0; STREAMS],
        sides: [reference, sut],
    };
    // Watcher 0: all keys, from now, on stream 0 (id 0): the model's event log.
    let global = WSpec {
        kind: "all",
        key: "\0".to_string(),
        end: "\0".to_string(),
        start: 0,
        prev_kv: false,
        no_put: false,
        no_delete: false,
        stream: 0,
        id: 0,
    };
    run.create(global).await;
    // One watcher opening each other stream, then a few more.
    for stream in 1..STREAMS {
        let mut spec = run.wspec(0);
        spec.stream = stream;
        run.create(spec).await;
    }
    for _ in 0..4 {
        let spec = run.wspec(0);
        run.create(spec).await;
    }
    run.settle("initial watchers").await;
    for id in &LEASE_IDS[..3] {
        let step = Step::Grant {
            id: *id,
            ttl: LEASE_TTLS[2],
        };
        run.exec(0, step).await;
    }
    let n = steps_per_seed();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for i in 0..n {
        let step = run.step();
        let name = match &step {
            Step::Write(_) => "write",
            Step::Txn { .. } => "txn",
            Step::Grant { .. } => "grant",
            Step::Revoke { .. } => "revoke",
            Step::Compact { .. } => "compact",
            Step::Watch(_) => "watch",
            Step::Cancel(_) => "cancel",
            Step::BadWatch { .. } => "bad watch",
        };
        *counts.entry(name).or_default() += 1;
        let what = format!("step #{i} {step:?}");
        run.exec(i, step).await;
        run.settle(&what).await;
        if i == n / 2 && run.cur_rev > 4 {
            // A physical compaction, then watchers below it (canceled with
            // compact_revision), at it, and just above it.
            let c = run.cur_rev - 3;
            if c > run.compacted {
                let step = Step::Compact {
                    rev: c,
                    physical: true,
                };
                run.exec(i, step).await;
                for start in [c - 1, c, c + 1] {
                    let mut spec = run.wspec(start);
                    spec.prev_kv = true;
                    spec.no_put = false;
                    spec.no_delete = false;
                    run.create(spec).await;
                }
                run.settle(&format!("forced compaction at {c} after step #{i}"))
                    .await;
            }
        }
    }
    // Anything late or extra.
    let deadline = Instant::now() + Duration::from_millis(300);
    for s in 0..2 {
        while run.sides[s].pump(deadline).await {}
    }
    run.compare("after the last step");
    // What was covered (from the reference's side).
    let all: Vec<&Resp> = run.sides[0].got.values().flatten().collect();
    let events: usize = all.iter().map(|r| r.events.len()).sum();
    let multi_rev = all
        .iter()
        .filter(|r| {
            let mut revs: Vec<i64> = r
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref().map(|k| k.modr))
                .collect();
            revs.dedup();
            revs.len() > 1
        })
        .count();
    let multi_event = all.iter().filter(|r| r.events.len() > 1).count();
    let deletes = all
        .iter()
        .flat_map(|r| r.events.iter())
        .filter(|e| e.typ == "DELETE")
        .count();
    let prevs = all
        .iter()
        .flat_map(|r| r.events.iter())
        .filter(|e| e.prev.is_some())
        .count();
    let leased = all
        .iter()
        .flat_map(|r| r.events.iter())
        .filter(|e| e.kv.as_ref().is_some_and(|k| k.lease != 0))
        .count();
    let compact_cancels = all.iter().filter(|r| r.compact_revision != 0).count();
    let cancels = all.iter().filter(|r| r.canceled).count();
    println!(
        "watch differential seed {seed}: {n} steps {counts:?}, {} watchers; compared {} responses, \
         {events} events ({deletes} deletes, {prevs} with prev_kv, {leased} with a lease), \
         {multi_event} responses with several events ({multi_rev} with several revisions), \
         {cancels} cancels ({compact_cancels} by compaction); final revision {}, compacted at {}",
        run.models.len(),
        all.len(),
        run.cur_rev,
        run.compacted
    );
}

#[tokio::test]
async fn seed_1() {
    run_seed(1).await;
}
#[tokio::test]
async fn seed_2() {
    run_seed(2).await;
}
#[tokio::test]
async fn seed_3() {
    run_seed(3).await;
}
#[tokio::test]
async fn seed_4() {
    run_seed(4).await;
}

/// One more seed, chosen by `DETCD_WDIFF_SEED=<n>`, for exploring beyond the fixed seeds above.
/// It is ignored by default (it has no seed of its own, and an ignored test is reported
/// as such rather than passing as a no-op); run it with
/// `DETCD_WDIFF_SEED=<n> cargo test --test differential_watch extra_seed -- --ignored`.
#[tokio::test]
#[ignore = "needs DETCD_WDIFF_SEED=<n>; run with `DETCD_WDIFF_SEED=<n> cargo test --test differential_watch extra_seed -- --ignored`"]
async fn extra_seed() {
    let seed = std::env::var("DETCD_WDIFF_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!("extra_seed runs the seed in DETCD_WDIFF_SEED=<n>, which is not set to a number")
        });
    run_seed(seed).await;
}

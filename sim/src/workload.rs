//! The clients of a chaos run: each issues random operations (drawn from the scenario's
//! mix with its own seeded generator) through random members over real gRPC, with a
//! bounded timeout, and records every one in the run's history and trace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detcd::pb::etcdserverpb as pb;
use detcd::pb::etcdserverpb::compare::{CompareResult, CompareTarget as PbTarget, TargetUnion};
use detcd::pb::etcdserverpb::kv_client::KvClient;
use detcd::pb::etcdserverpb::lease_client::LeaseClient;
use detcd::pb::etcdserverpb::request_op::Request;
use detcd::pb::etcdserverpb::response_op::Response as PbResponse;
use madsim::time::{sleep, timeout, Instant};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::transport::Channel;

use crate::check::linearizability::Operation;
use crate::check::model::{
    Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResult, Input, KeyValue, KvError,
    Output, PutRequest, PutResult, RangeRequest, RangeResult, Reply, Response, ShowOutput, TxnOp,
    TxnOpResult, TxnRequest, TxnResult,
};
use crate::report::RunRecord;
use crate::scenario::Scenario;

/// What every task of a run shares: the scenario, the member URLs, the start of the run
/// and the record the run writes.
pub struct RunCtx {
    /// The scenario being run.
    pub scenario: Scenario,
    /// The client URL of each member, by index.
    pub urls: Vec<String>,
    /// When the run started (simulated time).
    pub start: Instant,
    /// What the run records; shared with the thread that started the run, so that it
    /// survives a panic inside the simulation.
    pub record: Arc<Mutex<RunRecord>>,
    /// The highest revision any answer carried so far, for watchers that start from a
    /// past revision.
    pub max_revision: AtomicI64,
    /// The highest revision a compaction that returned successfully compacted at.
    pub compacted: AtomicI64,
    /// 0 while the run goes on; then the revision of the write that proved the cluster
    /// converged, which every watcher must reach; or -1 if the run ends without one.
    pub final_revision: AtomicI64,
}

impl RunCtx {
    /// A context for a run of `scenario` against the members at `urls`, starting now.
    pub fn new(scenario: Scenario, urls: Vec<String>, record: Arc<Mutex<RunRecord>>) -> RunCtx {
        RunCtx {
            scenario,
            urls,
            start: Instant::now(),
            record,
            max_revision: AtomicI64::new(0),
            compacted: AtomicI64::new(0),
            final_revision: AtomicI64::new(0),
        }
    }

    /// Simulated nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Appends a trace line stamped with the current simulated time.
    pub fn event(&self, what: impl std::fmt::Display) {
        let now = self.now_ns();
        self.lock().event(now, what);
    }

    /// The run's record, locked. A panic elsewhere never leaves it half-written in a way
    /// that matters for a report, so a poisoned lock is recovered.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, RunRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the call of `input` by `client` through member `via`; returns its index.
    pub fn call(&self, client: u64, via: usize, input: Input) -> usize {
        let now = self.now_ns();
        let mut rec = self.lock();
        let idx = rec.history.len();
        rec.event(
            now,
            format!("client {client} call #{idx} via node{}: {input}", via + 1),
        );
        rec.history.push(Operation::unknown(client, now, input));
        rec.via.insert(idx, format!("node{}", via + 1));
        idx
    }

    /// Records how operation `idx` ended: an output, or (`Err(why)`) an unknown outcome.
    pub fn finish(&self, idx: usize, outcome: Result<Output, String>) {
        let now = self.now_ns();
        let mut rec = self.lock();
        let client = rec.history[idx].client_id;
        match outcome {
            Ok(out) => {
                if let Ok(reply) = &out {
                    self.max_revision
                        .fetch_max(reply.revision, Ordering::Relaxed);
                    if let Input::Compact { revision } = &rec.history[idx].input {
                        self.compacted.fetch_max(*revision, Ordering::Relaxed);
                    }
                }
                rec.event(
                    now,
                    format!("client {client} return #{idx}: {}", ShowOutput(&out)),
                );
                rec.history[idx].return_ns = Some(now);
                rec.history[idx].output = Some(out);
            }
            Err(why) => rec.event(now, format!("client {client} unknown #{idx}: {why}")),
        }
    }
}

/// etcd's message for an unknown lease.
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

/// A request stream that sends `item` and then stays open (a keep-alive stream that ends
/// at once could be taken as the client going away before the answer).
fn once_then_open<T: Send + 'static>(item: T) -> impl tokio_stream::Stream<Item = T> {
    use tokio_stream::StreamExt;
    tokio_stream::once(item).chain(tokio_stream::pending())
}

/// The errors that certainly changed nothing, by etcd's message.
fn certain_error(message: &str) -> Option<KvError> {
    Some(match message {
        "etcdserver: key is not provided" => KvError::EmptyKey,
        "etcdserver: duplicate key given in txn request" => KvError::DuplicateKey,
        LEASE_NOT_FOUND => KvError::LeaseNotFound,
        "etcdserver: lease already exists" => KvError::LeaseExist,
        "etcdserver: mvcc: required revision has been compacted" => KvError::Compacted,
        "etcdserver: mvcc: required revision is a future revision" => KvError::FutureRevision,
        _ => return None,
    })
}

pub(crate) fn kv_of(kv: detcd::pb::mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

fn range_pb(r: &RangeRequest) -> pb::RangeRequest {
    pb::RangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        ..Default::default()
    }
}

fn range_result(r: pb::RangeResponse) -> RangeResult {
    RangeResult {
        kvs: r.kvs.into_iter().map(kv_of).collect(),
        count: r.count,
        more: r.more,
    }
}

fn put_pb(p: &PutRequest) -> pb::PutRequest {
    pb::PutRequest {
        key: p.key.clone(),
        value: p.value.clone(),
        lease: p.lease,
        prev_kv: p.prev_kv,
        ..Default::default()
    }
}

fn delete_pb(d: &DeleteRequest) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: d.key.clone(),
        range_end: d.range_end.clone(),
        prev_kv: d.prev_kv,
    }
}

fn delete_result(r: pb::DeleteRangeResponse) -> DeleteResult {
    DeleteResult {
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_of).collect(),
    }
}

fn compare_pb(c: &Compare) -> pb::Compare {
    let (target, union) = match &c.target {
        CompareTarget::Value(v) => (PbTarget::Value, TargetUnion::Value(v.clone())),
        CompareTarget::Version(v) => (PbTarget::Version, TargetUnion::Version(*v)),
        CompareTarget::CreateRevision(v) => (PbTarget::Create, TargetUnion::CreateRevision(*v)),
        CompareTarget::ModRevision(v) => (PbTarget::Mod, TargetUnion::ModRevision(*v)),
        CompareTarget::Lease(v) => (PbTarget::Lease, TargetUnion::Lease(*v)),
    };
    let result = match c.op {
        CompareOp::Equal => CompareResult::Equal,
        CompareOp::NotEqual => CompareResult::NotEqual,
        CompareOp::Less => CompareResult::Less,
        CompareOp::Greater => CompareResult::Greater,
    };
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        target_union: Some(union),
    }
}

fn txn_op_pb(op: &TxnOp) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(match op {
            TxnOp::Get(r) => Request::RequestRange(range_pb(r)),
            TxnOp::Put(p) => Request::RequestPut(put_pb(p)),
            TxnOp::Delete(d) => Request::RequestDeleteRange(delete_pb(d)),
        }),
    }
}

fn txn_result(r: pb::TxnResponse) -> Result<TxnResult, String> {
    let mut responses = Vec::with_capacity(r.responses.len());
    for op in r.responses {
        responses.push(match op.response {
            Some(PbResponse::ResponseRange(r)) => TxnOpResult::Get(range_result(r)),
            Some(PbResponse::ResponsePut(p)) => TxnOpResult::Put(PutResult {
                prev_kv: p.prev_kv.map(kv_of),
            }),
            Some(PbResponse::ResponseDeleteRange(d)) => TxnOpResult::Delete(delete_result(d)),
            other => return Err(format!("unexpected txn response {other:?}")),
        });
    }
    Ok(TxnResult {
        succeeded: r.succeeded,
        responses,
    })
}

fn rev(h: Option<pb::ResponseHeader>) -> i64 {
    h.map(|h| h.revision).unwrap_or(0)
}

/// Sends `input` over `channel` and converts the answer for the checker. `Err` carries a
/// gRPC status (its message decides whether the outcome is certain).
/// With `serializable`, a read is served from the member's local state (for testing the
/// explorer: such reads may be stale).
pub async fn issue(
    channel: Channel,
    input: &Input,
    serializable: bool,
) -> Result<Reply, tonic::Status> {
    let mut kv = KvClient::new(channel.clone());
    let (revision, response) = match input {
        Input::Get(r) => {
            let mut req = range_pb(r);
            req.serializable = serializable;
            let a = kv.range(req).await?.into_inner();
            (rev(a.header), Response::Get(range_result(a)))
        }
        Input::Put(p) => {
            let a = kv.put(put_pb(p)).await?.into_inner();
            let body = PutResult {
                prev_kv: a.prev_kv.map(kv_of),
            };
            (rev(a.header), Response::Put(body))
        }
        Input::Delete(d) => {
            let a = kv.delete_range(delete_pb(d)).await?.into_inner();
            (rev(a.header), Response::Delete(delete_result(a)))
        }
        Input::Txn(t) => {
            let req = pb::TxnRequest {
                compare: t.compares.iter().map(compare_pb).collect(),
                success: t.success.iter().map(txn_op_pb).collect(),
                failure: t.failure.iter().map(txn_op_pb).collect(),
            };
            let a = kv.txn(req).await?.into_inner();
            let header = a.header;
            let body = txn_result(a).map_err(tonic::Status::internal)?;
            (rev(header), Response::Txn(body))
        }
        Input::LeaseGrant { id, ttl_s } => {
            let mut lease = LeaseClient::new(channel);
            let a = lease
                .lease_grant(pb::LeaseGrantRequest {
                    ttl: *ttl_s,
                    id: *id,
                })
                .await?
                .into_inner();
            (rev(a.header), Response::LeaseGrant)
        }
        Input::LeaseKeepAlive { id } => {
            // One renewal on a fresh keep-alive stream: the request, then its answer. A
            // TTL of 0 or less is etcd's way of saying the lease does not exist.
            let mut lease = LeaseClient::new(channel);
            let request = once_then_open(pb::LeaseKeepAliveRequest { id: *id });
            let mut answers = lease.lease_keep_alive(request).await?.into_inner();
            let a = answers
                .message()
                .await?
                .ok_or_else(|| tonic::Status::unavailable("keep-alive stream ended"))?;
            if a.ttl <= 0 {
                return Err(tonic::Status::not_found(LEASE_NOT_FOUND));
            }
            // The header revision is the leader's, outside the log's order: not recorded
            // (see `Input::LeaseKeepAlive`).
            let _ = a.header;
            (0, Response::LeaseKeepAlive)
        }
        Input::LeaseRevoke { id } => {
            let mut lease = LeaseClient::new(channel);
            let a = lease
                .lease_revoke(pb::LeaseRevokeRequest { id: *id })
                .await?
                .into_inner();
            (rev(a.header), Response::LeaseRevoke)
        }
        Input::Compact { revision } => {
            let a = kv
                .compact(pb::CompactionRequest {
                    revision: *revision,
                    physical: false,
                })
                .await?
                .into_inner();
            (rev(a.header), Response::Compact)
        }
    };
    Ok(Reply { revision, response })
}

/// One client: its generator, connections and what it has seen.
struct Client {
    id: u64,
    rng: ChaCha8Rng,
    channels: Vec<Option<Channel>>,
    /// Leases this client asked for (granted or not), by id.
    leases: Vec<i64>,
    next_lease: i64,
    next_value: u64,
    /// The highest revision any answer carried.
    last_revision: i64,
    /// The mod revision each key had when this client last read it (0: missing).
    mod_revisions: HashMap<Vec<u8>, i64>,
    /// Whether the operation just drawn is a serializable read (see
    /// [`crate::scenario::Mix::serializable_get`]).
    serializable: bool,
}

/// The seed of client `id`'s generator in a run with `seed`.
pub fn client_seed(seed: u64, id: u64) -> u64 {
    seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn key_of(i: u32) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

impl Client {
    /// Draws the next operation from the mix.
    fn next_input(&mut self, ctx: &RunCtx) -> Input {
        let w = &ctx.scenario.workload;
        let weights = w.mix.weights();
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.gen_range(0..total);
        let mut name = "get";
        for (n, weight) in weights {
            if pick < weight {
                name = n;
                break;
            }
            pick -= weight;
        }
        let key = key_of(self.rng.gen_range(0..w.keys));
        self.next_value += 1;
        let value = format!("c{}-{}", self.id, self.next_value).into_bytes();
        let get = |key: Vec<u8>| RangeRequest {
            key,
            ..Default::default()
        };
        match name {
            "range" => Input::Get(RangeRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                limit: self.rng.gen_range(1..=3),
            }),
            "put" => Input::Put(PutRequest {
                key,
                value,
                lease: 0,
                prev_kv: self.rng.gen_bool(0.5),
            }),
            "delete" => Input::Delete(DeleteRequest {
                key,
                range_end: vec![],
                prev_kv: self.rng.gen_bool(0.5),
            }),
            "txn" => {
                let seen = self.mod_revisions.get(&key).copied().unwrap_or(0);
                Input::Txn(TxnRequest {
                    compares: vec![Compare {
                        key: key.clone(),
                        range_end: vec![],
                        target: CompareTarget::ModRevision(seen),
                        op: CompareOp::Equal,
                    }],
                    success: vec![TxnOp::Put(PutRequest {
                        key: key.clone(),
                        value,
                        lease: 0,
                        prev_kv: true,
                    })],
                    failure: vec![TxnOp::Get(get(key))],
                })
            }
            "lease_put" | "lease_revoke" | "lease_keepalive" if !self.leases.is_empty() => {
                let id = self.leases[self.rng.gen_range(0..self.leases.len())];
                if name == "lease_keepalive" {
                    Input::LeaseKeepAlive { id }
                } else if name == "lease_put" {
                    Input::Put(PutRequest {
                        key,
                        value,
                        lease: id,
                        prev_kv: false,
                    })
                } else {
                    Input::LeaseRevoke { id }
                }
            }
            "lease_grant" | "lease_put" | "lease_revoke" | "lease_keepalive" => {
                // Lease ids are chosen by the client, distinct across clients and never 0.
                self.next_lease += 1;
                let id = ((self.id as i64) << 32) | self.next_lease;
                self.leases.push(id);
                Input::LeaseGrant {
                    id,
                    ttl_s: w.lease_ttl_s,
                }
            }
            "compact" if self.last_revision > 1 => {
                let low = (self.last_revision - 10).max(1);
                Input::Compact {
                    revision: self.rng.gen_range(low..=self.last_revision),
                }
            }
            "serializable_get" => {
                self.serializable = true;
                Input::Get(get(key))
            }
            _ => Input::Get(get(key)),
        }
    }

    /// Learns revisions from an answer, for later txns and compactions.
    fn learn(&mut self, input: &Input, reply: &Reply) {
        self.last_revision = self.last_revision.max(reply.revision);
        let mut see = |kvs: &[KeyValue]| {
            for kv in kvs {
                self.mod_revisions.insert(kv.key.clone(), kv.mod_revision);
            }
        };
        match (&reply.response, input) {
            (Response::Get(r), Input::Get(req)) => {
                see(&r.kvs);
                if req.range_end.is_empty() && r.kvs.is_empty() {
                    self.mod_revisions.insert(req.key.clone(), 0);
                }
            }
            (Response::Put(_), Input::Put(p)) => {
                self.mod_revisions.insert(p.key.clone(), reply.revision);
            }
            (Response::Txn(t), _) => {
                for r in &t.responses {
                    if let TxnOpResult::Get(g) = r {
                        see(&g.kvs);
                    }
                }
            }
            _ => {}
        }
    }

    /// A connection to member `m`, made if needed (bounded by `client::channel`).
    async fn channel(&mut self, ctx: &RunCtx, m: usize) -> Result<Channel, String> {
        if let Some(c) = &self.channels[m] {
            return Ok(c.clone());
        }
        let c = crate::client::channel(&ctx.urls[m]).await?;
        self.channels[m] = Some(c.clone());
        Ok(c)
    }
}

/// Runs client `id` (1-based) until the scenario's duration has passed: think, pick a
/// member and an operation, issue it with the scenario's timeout, record it.
pub async fn run_client(ctx: Arc<RunCtx>, seed: u64, id: u64) {
    let w = ctx.scenario.workload.clone();
    let n = ctx.urls.len();
    let mut c = Client {
        id,
        rng: ChaCha8Rng::seed_from_u64(client_seed(seed, id)),
        channels: vec![None; n],
        leases: Vec::new(),
        next_lease: 0,
        next_value: 0,
        last_revision: 0,
        mod_revisions: HashMap::new(),
        serializable: false,
    };
    let end = Duration::from_secs(ctx.scenario.duration_s);
    let request_timeout = Duration::from_millis(w.request_timeout_ms);
    while ctx.start.elapsed() < end {
        let think_ms = c.rng.gen_range(0..=w.think_time_max_ms);
        sleep(Duration::from_millis(think_ms)).await;
        let m = c.rng.gen_range(0..n);
        let input = c.next_input(&ctx);
        // A request that could not even be sent never happened: it is traced but kept out
        // of the history, where it would be one more unknown outcome to search.
        let channel = match c.channel(&ctx, m).await {
            Ok(channel) => channel,
            Err(e) => {
                ctx.event(format!(
                    "client {id} could not connect to node{}: {e}",
                    m + 1
                ));
                continue;
            }
        };
        if let Input::LeaseGrant { id: lease, ttl_s } = input {
            // The lease may expire any time from `ttl_s` after this call on; the run adds
            // that possible expiry to the history when the history reaches that far.
            let now = ctx.now_ns();
            ctx.lock().lease_grants.push((lease, now, ttl_s));
        }
        let idx = ctx.call(id, m, input.clone());
        let serializable = std::mem::take(&mut c.serializable);
        let outcome = match timeout(request_timeout, issue(channel, &input, serializable)).await {
            Err(_) => Err("timed out".to_string()),
            Ok(Ok(reply)) => {
                c.learn(&input, &reply);
                Ok(Ok(reply))
            }
            Ok(Err(status)) => match certain_error(status.message()) {
                Some(e) => Ok(Err(e)),
                None => Err(format!("{:?}: {}", status.code(), status.message())),
            },
        };
        if outcome.is_err() {
            // The connection may be dead (a killed member): make a new one next time.
            c.channels[m] = None;
        }
        ctx.finish(idx, outcome);
    }
}

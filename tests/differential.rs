//! Differential test: the server under test against the real etcd 3.4.23.
//!
//! For a handful of fixed seeds a random operation sequence (puts, deletes,
//! ranges with every option, txns with random compares and nested txns,
//! compactions, and lease operations) is sent to both servers through `etcd-client`,
//! and the full responses (or gRPC errors, code + message) are compared. Only
//! cluster_id, member_id and raft_term are ignored.
//!
//! Leases use client-chosen ids from a small set (so duplicate grants, unknown
//! leases and re-grants after revocation all happen) and long TTLs, so nothing
//! expires during a run. Remaining TTLs depend on each server's clock, so
//! TimeToLive compares only whether the TTL is -1; attached keys are compared as a
//! set, because etcd returns them in Go map order.
//!
//! The key space is kept at 12 keys: etcd sorts ranges with Go's `sort.Sort`,
//! which is an insertion sort (stable) for at most 12 elements, so ties under
//! non-key sort targets are deterministic — ascending ties keep key order, and
//! DESCEND (sort.Reverse) ties *also* keep ascending key order.
//!
//! Env knobs: DETCD_DIFF_OPS (ops per seed, default 300),
//! DETCD_DIFF_SEED (run this extra seed too, in the `extra_seed` test).

mod common;

use common::{within, Server};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const KEYS: [&str; 12] = [
    "a", "a/1", "a/2", "a/2/x", "ab", "b", "b/1", "b/2", "ba", "c", "c/1", "d",
];
/// Extra keys that are never written, used as range bounds / missing keys.
const BOUNDS: [&str; 7] = ["", "a/", "b/", "0", "aa", "c0", "z"];
const VALUES: [&str; 6] = ["", "v", "w", "x1", "x2", "zz"];
/// Lease ids the generator grants, attaches and revokes; 99 is never granted.
const LEASE_IDS: [i64; 4] = [1, 2, 3, 0x7fff_ffff_ffff];
const UNKNOWN_LEASE: i64 = 99;
/// Lease TTLs: all far longer than a run, different so that expiry order is neither
/// id order nor grant order.
const LEASE_TTLS: [i64; 3] = [600, 900, 1200];

#[derive(Debug, Clone)]
enum RangeSpec {
    Single,
    Interval(String),
    Prefix,
    FromKey,
    All,
}

#[derive(Debug, Clone)]
struct RangeOp {
    key: String,
    range: RangeSpec,
    limit: i64,
    sort: Option<(SortTarget, SortOrder)>,
    keys_only: bool,
    count_only: bool,
    revision: i64,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

#[derive(Debug, Clone)]
enum CmpTarget {
    Value(String),
    Version(i64),
    Create(i64),
    Mod(i64),
    Lease(i64),
}

#[derive(Debug, Clone)]
struct CmpSpec {
    key: String,
    range: RangeSpec,
    op: CompareOp,
    target: CmpTarget,
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: String,
        value: String,
        prev_kv: bool,
        ignore_value: bool,
        lease: i64,
        ignore_lease: bool,
    },
    Delete {
        key: String,
        range: RangeSpec,
        prev_kv: bool,
    },
    Range(RangeOp),
    Txn(TxnSpec),
    Compact {
        revision: i64,
        physical: bool,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    LeaseTtl {
        id: i64,
        keys: bool,
    },
    LeaseList,
}

#[derive(Debug, Clone)]
struct TxnSpec {
    compares: Vec<CmpSpec>,
    success: Vec<Op>,
    failure: Vec<Op>,
}

/// Generator state: what revisions are interesting right now.
struct Gen {
    rng: StdRng,
    cur_rev: i64,
    compacted: i64,
}

impl Gen {
    fn key(&mut self) -> String {
        if self.rng.gen_bool(0.85) {
            KEYS.choose(&mut self.rng).unwrap().to_string()
        } else {
            BOUNDS.choose(&mut self.rng).unwrap().to_string()
        }
    }
    fn written_key(&mut self) -> String {
        KEYS.choose(&mut self.rng).unwrap().to_string()
    }
    fn range_spec(&mut self, key: &str) -> RangeSpec {
        match self.rng.gen_range(0..10) {
            0..=3 => RangeSpec::Single,
            4 | 5 => {
                let mut end = self.key();
                if end.is_empty() {
                    end = "z".into();
                }
                // Mostly a proper interval; sometimes end <= key.
                if end.as_str() <= key && self.rng.gen_bool(0.7) {
                    end = format!("{key}\u{7f}");
                }
                RangeSpec::Interval(end)
            }
            6 | 7 => RangeSpec::Prefix,
            8 => RangeSpec::FromKey,
            _ => RangeSpec::All,
        }
    }
    /// A revision: mostly 0 (current), else anywhere from compacted-1 to future.
    fn revision(&mut self) -> i64 {
        if self.rng.gen_bool(0.6) {
            0
        } else {
            let lo = (self.compacted - 1).max(0);
            self.rng.gen_range(lo..=self.cur_rev + 2)
        }
    }
    fn small_rev(&mut self) -> i64 {
        if self.rng.gen_bool(0.5) {
            0
        } else {
            self.rng.gen_range(0..=self.cur_rev + 1)
        }
    }
    fn value(&mut self) -> String {
        VALUES.choose(&mut self.rng).unwrap().to_string()
    }

    fn range_op(&mut self) -> RangeOp {
        let key = self.key();
        let range = self.range_spec(&key);
        let sort = if self.rng.gen_bool(0.35) {
            let t = *[
                SortTarget::Key,
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value,
            ]
            .choose(&mut self.rng)
            .unwrap();
            let o = *[SortOrder::None, SortOrder::Ascend, SortOrder::Descend]
                .choose(&mut self.rng)
                .unwrap();
            Some((t, o))
        } else {
            None
        };
        let filt = self.rng.gen_bool(0.25);
        RangeOp {
            key,
            range,
            limit: if self.rng.gen_bool(0.3) {
                self.rng.gen_range(0..4)
            } else {
                0
            },
            sort,
            keys_only: self.rng.gen_bool(0.15),
            count_only: self.rng.gen_bool(0.1),
            revision: self.revision(),
            min_mod: if filt { self.small_rev() } else { 0 },
            max_mod: if filt { self.small_rev() } else { 0 },
            min_create: if filt { self.small_rev() } else { 0 },
            max_create: if filt { self.small_rev() } else { 0 },
        }
    }

    fn lease_id(&mut self) -> i64 {
        if self.rng.gen_bool(0.9) {
            *LEASE_IDS.choose(&mut self.rng).unwrap()
        } else {
            UNKNOWN_LEASE
        }
    }

    fn lease_op(&mut self) -> Op {
        match self.rng.gen_range(0..10) {
            0..=3 => Op::LeaseGrant {
                id: *LEASE_IDS.choose(&mut self.rng).unwrap(),
                ttl: if self.rng.gen_bool(0.05) {
                    9_000_000_001
                } else {
                    *LEASE_TTLS.choose(&mut self.rng).unwrap()
                },
            },
            4 | 5 => Op::LeaseRevoke {
                id: self.lease_id(),
            },
            6..=8 => Op::LeaseTtl {
                id: self.lease_id(),
                keys: self.rng.gen_bool(0.7),
            },
            _ => Op::LeaseList,
        }
    }

    /// A put outside a txn.
    fn put(&mut self) -> Op {
        self.put_op(false)
    }

    /// A put; inside a txn without `ignore_lease`: etcd 3.4.23 panics ("unexpected error
    /// during txn: etcdserver: key not found") when a txn deletes a key and then puts it
    /// with `ignore_lease`, because it checks the key's existence before the txn runs.
    fn put_op(&mut self, in_txn: bool) -> Op {
        let ignore_value = self.rng.gen_bool(0.1);
        let value = if ignore_value && self.rng.gen_bool(0.8) {
            String::new()
        } else {
            self.value()
        };
        let key = if self.rng.gen_bool(0.97) {
            self.written_key()
        } else {
            String::new()
        };
        let lease = if self.rng.gen_bool(0.35) {
            self.lease_id()
        } else {
            0
        };
        // Mostly alone; sometimes together with a lease (an error).
        let ignore_lease = !in_txn && self.rng.gen_bool(if lease == 0 { 0.12 } else { 0.03 });
        Op::Put {
            key,
            value,
            prev_kv: self.rng.gen_bool(0.4),
            ignore_value,
            lease,
            ignore_lease,
        }
    }

    fn delete(&mut self) -> Op {
        let key = self.key();
        let range = self.range_spec(&key);
        Op::Delete {
            key,
            range,
            prev_kv: self.rng.gen_bool(0.5),
        }
    }

    fn compare(&mut self) -> CmpSpec {
        let key = if self.rng.gen_bool(0.8) {
            self.written_key()
        } else {
            self.key()
        };
        let range = match self.rng.gen_range(0..10) {
            0..=6 => RangeSpec::Single,
            7 => RangeSpec::Prefix,
            8 => RangeSpec::Interval(format!("{key}\u{7f}")),
            _ => RangeSpec::FromKey,
        };
        let op = *[
            CompareOp::Equal,
            CompareOp::NotEqual,
            CompareOp::Greater,
            CompareOp::Less,
        ]
        .choose(&mut self.rng)
        .unwrap();
        let target = match self.rng.gen_range(0..5) {
            0 => CmpTarget::Value(self.value()),
            1 => CmpTarget::Version(self.rng.gen_range(0..4)),
            2 => CmpTarget::Create(self.small_rev()),
            3 => CmpTarget::Mod(self.small_rev()),
            _ => CmpTarget::Lease(if self.rng.gen_bool(0.3) {
                0
            } else {
                self.lease_id()
            }),
        };
        CmpSpec {
            key,
            range,
            op,
            target,
        }
    }

    fn txn_op(&mut self, depth: u32) -> Op {
        match self.rng.gen_range(0..10) {
            0..=3 => self.put_op(true),
            4..=6 => Op::Range(self.range_op()),
            7 | 8 => self.delete(),
            _ if depth < 2 => Op::Txn(self.txn(depth + 1)),
            _ => Op::Range(self.range_op()),
        }
    }

    fn txn(&mut self, depth: u32) -> TxnSpec {
        let nc = self.rng.gen_range(0..=3);
        let compares = (0..nc).map(|_| self.compare()).collect();
        let ns = self.rng.gen_range(0..=3);
        let success = (0..ns).map(|_| self.txn_op(depth)).collect();
        let nf = self.rng.gen_range(0..=3);
        let failure = (0..nf).map(|_| self.txn_op(depth)).collect();
        TxnSpec {
            compares,
            success,
            failure,
        }
    }

    fn op(&mut self) -> Op {
        match self.rng.gen_range(0..100) {
            0..=29 => self.put(),
            30..=40 => self.delete(),
            41..=61 => Op::Range(self.range_op()),
            62..=81 => Op::Txn(self.txn(0)),
            82..=96 => self.lease_op(),
            _ => {
                let lo = (self.compacted - 2).max(0);
                Op::Compact {
                    revision: self.rng.gen_range(lo..=self.cur_rev + 1),
                    physical: self.rng.gen_bool(0.5),
                }
            }
        }
    }
}

fn get_options(r: &RangeOp) -> GetOptions {
    let mut o = GetOptions::new();
    o = match &r.range {
        RangeSpec::Single => o,
        RangeSpec::Interval(end) => o.with_range(end.clone()),
        RangeSpec::Prefix => o.with_prefix(),
        RangeSpec::FromKey => o.with_from_key(),
        RangeSpec::All => o.with_all_keys(),
    };
    if let Some((t, ord)) = r.sort {
        o = o.with_sort(t, ord);
    }
    if r.keys_only {
        o = o.with_keys_only();
    }
    if r.count_only {
        o = o.with_count_only();
    }
    o.with_limit(r.limit)
        .with_revision(r.revision)
        .with_min_mod_revision(r.min_mod)
        .with_max_mod_revision(r.max_mod)
        .with_min_create_revision(r.min_create)
        .with_max_create_revision(r.max_create)
}

fn delete_options(range: &RangeSpec, prev_kv: bool) -> DeleteOptions {
    let mut o = DeleteOptions::new();
    o = match range {
        RangeSpec::Single => o,
        RangeSpec::Interval(end) => o.with_range(end.clone()),
        RangeSpec::Prefix => o.with_prefix(),
        RangeSpec::FromKey => o.with_from_key(),
        RangeSpec::All => o.with_all_keys(),
    };
    if prev_kv {
        o = o.with_prev_key();
    }
    o
}

fn put_options(prev_kv: bool, ignore_value: bool, lease: i64, ignore_lease: bool) -> PutOptions {
    let mut o = PutOptions::new().with_lease(lease);
    if prev_kv {
        o = o.with_prev_key();
    }
    if ignore_value {
        o = o.with_ignore_value();
    }
    if ignore_lease {
        o = o.with_ignore_lease();
    }
    o
}

fn compare(c: &CmpSpec) -> Compare {
    let k = c.key.clone();
    let cmp = match &c.target {
        CmpTarget::Value(v) => Compare::value(k, c.op, v.clone()),
        CmpTarget::Version(v) => Compare::version(k, c.op, *v),
        CmpTarget::Create(v) => Compare::create_revision(k, c.op, *v),
        CmpTarget::Mod(v) => Compare::mod_revision(k, c.op, *v),
        CmpTarget::Lease(v) => Compare::lease(k, c.op, *v),
    };
    match &c.range {
        RangeSpec::Single => cmp,
        RangeSpec::Interval(end) => cmp.with_range(end.clone()),
        RangeSpec::Prefix => cmp.with_prefix(),
        // from-key: range_end "\0"
        RangeSpec::FromKey | RangeSpec::All => cmp.with_range(vec![0u8]),
    }
}

fn txn_op(op: &Op) -> TxnOp {
    match op {
        Op::Put {
            key,
            value,
            prev_kv,
            ignore_value,
            lease,
            ignore_lease,
        } => TxnOp::put(
            key.clone(),
            value.clone(),
            Some(put_options(*prev_kv, *ignore_value, *lease, *ignore_lease)),
        ),
        Op::Delete {
            key,
            range,
            prev_kv,
        } => TxnOp::delete(key.clone(), Some(delete_options(range, *prev_kv))),
        Op::Range(r) => TxnOp::get(r.key.clone(), Some(get_options(r))),
        Op::Txn(t) => TxnOp::txn(txn(t)),
        Op::Compact { .. }
        | Op::LeaseGrant { .. }
        | Op::LeaseRevoke { .. }
        | Op::LeaseTtl { .. }
        | Op::LeaseList => unreachable!("no compaction or lease op inside txn"),
    }
}

fn txn(t: &TxnSpec) -> Txn {
    Txn::new()
        .when(t.compares.iter().map(compare).collect::<Vec<_>>())
        .and_then(t.success.iter().map(txn_op).collect::<Vec<_>>())
        .or_else(t.failure.iter().map(txn_op).collect::<Vec<_>>())
}

// ---- normalisation of responses (drops cluster_id, member_id, raft_term) ----

fn hdr(h: Option<&etcd_client::ResponseHeader>) -> Value {
    match h {
        None => Value::Null,
        Some(h) => json!({ "revision": h.revision() }),
    }
}

fn kv(kv: &etcd_client::KeyValue) -> Value {
    json!({
        "key": String::from_utf8_lossy(kv.key()),
        "value": String::from_utf8_lossy(kv.value()),
        "create_revision": kv.create_revision(),
        "mod_revision": kv.mod_revision(),
        "version": kv.version(),
        "lease": kv.lease(),
    })
}

fn norm_put(r: &etcd_client::PutResponse) -> Value {
    json!({ "header": hdr(r.header()), "prev_kv": r.prev_key().map(kv) })
}
fn norm_get(r: &etcd_client::GetResponse) -> Value {
    json!({ "header": hdr(r.header()), "kvs": r.kvs().iter().map(kv).collect::<Vec<_>>(), "more": r.more(), "count": r.count() })
}
fn norm_del(r: &etcd_client::DeleteResponse) -> Value {
    json!({ "header": hdr(r.header()), "deleted": r.deleted(), "prev_kvs": r.prev_kvs().iter().map(kv).collect::<Vec<_>>() })
}
fn norm_txn(r: &etcd_client::TxnResponse) -> Value {
    let responses: Vec<Value> = r
        .op_responses()
        .iter()
        .map(|o| match o {
            TxnOpResponse::Put(p) => json!({ "put": norm_put(p) }),
            TxnOpResponse::Get(g) => json!({ "range": norm_get(g) }),
            TxnOpResponse::Delete(d) => json!({ "delete": norm_del(d) }),
            TxnOpResponse::Txn(t) => json!({ "txn": norm_txn(t) }),
        })
        .collect();
    json!({ "header": hdr(r.header()), "succeeded": r.succeeded(), "responses": responses })
}

fn norm_err(e: etcd_client::Error) -> Value {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            json!({ "error": { "code": s.code() as i32, "message": s.message() } })
        }
        other => panic!("non-gRPC client error (transport failure?): {other:?}"),
    }
}

fn norm<T>(r: Result<T, etcd_client::Error>, f: impl Fn(&T) -> Value) -> Value {
    match r {
        Ok(v) => f(&v),
        Err(e) => norm_err(e),
    }
}

async fn exec(c: &mut Client, op: &Op) -> Value {
    let fut = async {
        match op {
            Op::Put {
                key,
                value,
                prev_kv,
                ignore_value,
                lease,
                ignore_lease,
            } => norm(
                c.put(
                    key.clone(),
                    value.clone(),
                    Some(put_options(*prev_kv, *ignore_value, *lease, *ignore_lease)),
                )
                .await,
                norm_put,
            ),
            Op::Delete {
                key,
                range,
                prev_kv,
            } => norm(
                c.delete(key.clone(), Some(delete_options(range, *prev_kv)))
                    .await,
                norm_del,
            ),
            Op::Range(r) => norm(c.get(r.key.clone(), Some(get_options(r))).await, norm_get),
            Op::Txn(t) => norm(c.txn(txn(t)).await, norm_txn),
            Op::Compact { revision, physical } => {
                let o = if *physical {
                    Some(CompactionOptions::new().with_physical())
                } else {
                    None
                };
                norm(
                    c.compact(*revision, o).await,
                    |r| json!({ "header": hdr(r.header()) }),
                )
            }
            Op::LeaseGrant { id, ttl } => norm(
                c.lease_grant(*ttl, Some(LeaseGrantOptions::new().with_id(*id)))
                    .await,
                |r| json!({ "header": hdr(r.header()), "id": r.id(), "ttl": r.ttl(), "error": r.error() }),
            ),
            Op::LeaseRevoke { id } => norm(
                c.lease_revoke(*id).await,
                |r| json!({ "header": hdr(r.header()) }),
            ),
            Op::LeaseTtl { id, keys } => {
                let o = keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
                norm(c.lease_time_to_live(*id, o).await, |r| {
                    let mut keys: Vec<String> = r
                        .keys()
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect();
                    keys.sort();
                    json!({
                        "header": hdr(r.header()),
                        "id": r.id(),
                        "ttl_is_minus_1": r.ttl() == -1,
                        "granted_ttl": r.granted_ttl(),
                        "keys": keys,
                    })
                })
            }
            Op::LeaseList => norm(c.leases().await, |r| {
                json!({
                    "header": hdr(r.header()),
                    "leases": r.leases().iter().map(|l| l.id()).collect::<Vec<_>>(),
                })
            }),
        }
    };
    within(30, &format!("{op:?}"), fut).await
}

fn ops_per_seed() -> usize {
    std::env::var("DETCD_DIFF_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

async fn run_seed(seed: u64) {
    let reference = Server::start_etcd();
    let sut = Server::start();
    let mut rc = reference.client().await;
    let mut sc = sut.client().await;
    let n = ops_per_seed();
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        cur_rev: 1,
        compacted: 0,
    };
    let mut errors = 0;
    for i in 0..n {
        let op = g.op();
        let want = exec(&mut rc, &op).await;
        let got = exec(&mut sc, &op).await;
        if want != got {
            panic!(
                "differential mismatch: seed {seed}, op #{i} ({} under test):\nop: {op:#?}\n\
                 etcd:\n{}\n{}:\n{}",
                sut.kind().name(),
                serde_json::to_string_pretty(&want).unwrap(),
                sut.kind().name(),
                serde_json::to_string_pretty(&got).unwrap()
            );
        }
        if want.get("error").is_some() {
            errors += 1;
        } else if let Some(r) = want["header"]["revision"].as_i64() {
            g.cur_rev = r;
            if let Op::Compact { revision, .. } = op {
                g.compacted = revision;
            }
        }
    }
    // Final full-state comparison.
    let all = Op::Range(RangeOp {
        key: String::new(),
        range: RangeSpec::All,
        limit: 0,
        sort: None,
        keys_only: false,
        count_only: false,
        revision: 0,
        min_mod: 0,
        max_mod: 0,
        min_create: 0,
        max_create: 0,
    });
    let want = exec(&mut rc, &all).await;
    let got = exec(&mut sc, &all).await;
    assert_eq!(want, got, "final state differs (seed {seed})");
    let mut finals = vec![Op::LeaseList];
    finals.extend(LEASE_IDS.iter().map(|&id| Op::LeaseTtl { id, keys: true }));
    for op in &finals {
        let want_l = exec(&mut rc, op).await;
        let got_l = exec(&mut sc, op).await;
        assert_eq!(
            want_l, got_l,
            "final lease state differs (seed {seed}): {op:?}"
        );
    }
    println!(
        "differential seed {seed}: {n} ops compared ({errors} errors agreed), final revision {}, {} keys, \
         compacted at {}",
        g.cur_rev,
        want["kvs"].as_array().map(|a| a.len()).unwrap_or(0),
        g.compacted
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
#[tokio::test]
async fn seed_5() {
    run_seed(5).await;
}

/// One more seed, chosen by `DETCD_DIFF_SEED=<n>`, for exploring beyond the fixed seeds above.
/// It is ignored by default (it has no seed of its own, and an ignored test is reported
/// as such rather than passing as a no-op); run it with
/// `DETCD_DIFF_SEED=<n> cargo test --test differential extra_seed -- --ignored`.
#[tokio::test]
#[ignore = "needs DETCD_DIFF_SEED=<n>; run with `DETCD_DIFF_SEED=<n> cargo test --test differential extra_seed -- --ignored`"]
async fn extra_seed() {
    let seed = std::env::var("DETCD_DIFF_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!("extra_seed runs the seed in DETCD_DIFF_SEED=<n>, which is not set to a number")
        });
    run_seed(seed).await;
}

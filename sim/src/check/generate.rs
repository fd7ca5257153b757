//! Random histories that are linearizable by construction, to test and time the checker.
//!
//! The generator runs random requests one by one through the sequential [`Model`], each
//! at its own *linearization instant*, and gives each one a random call time before and a
//! random return time after that instant, with each client's requests one after another.
//! Some requests get an unknown outcome: either they took effect (at their instant) or
//! they were lost and never did. Either way the history has a linearization: the
//! generation order.

use super::linearizability::Operation;
use super::model::{
    Compare, CompareOp, CompareTarget, DeleteRequest, Input, Model, PutRequest, RangeRequest,
    TxnOp, TxnRequest,
};

/// What kind of history to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateConfig {
    /// The seed; the same configuration always gives the same history.
    pub seed: u64,
    /// How many operations.
    pub operations: usize,
    /// How many clients (at least 1); each has one operation in flight at a time.
    pub clients: usize,
    /// How many distinct keys (at least 1).
    pub keys: usize,
    /// The largest gap between two consecutive linearization instants, in nanoseconds.
    pub step_max_ns: u64,
    /// The largest time from a call to its linearization instant, and from that instant
    /// to the return, in nanoseconds.
    pub window_max_ns: u64,
    /// Per mille of operations that take effect but whose outcome is recorded as unknown.
    pub unknown_per_mille: u32,
    /// Per mille of operations that never take effect and whose outcome is unknown.
    pub lost_per_mille: u32,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        // About ten operations overlap at any instant: windows reach 5 gaps either way.
        GenerateConfig {
            seed: 1,
            operations: 1000,
            clients: 10,
            keys: 8,
            step_max_ns: 1000,
            window_max_ns: 5000,
            unknown_per_mille: 5,
            lost_per_mille: 5,
        }
    }
}

/// A generated history with the order it was generated in.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The operations, in linearization-instant order.
    pub history: Vec<Operation>,
    /// The indices of the operations that took effect, in the order they did: a valid
    /// linearization.
    pub order: Vec<usize>,
}

/// SplitMix64: small, fast, and good enough for test data.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 if `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// A number in `lo..=hi` (`lo` if the range is empty).
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.below(hi - lo + 1)
        }
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// The name of key number `i`.
fn key(i: u64) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

/// A random request, shaped by the current state so that compares sometimes hold.
fn random_input(rng: &mut Rng, model: &Model, keys: u64, next_lease: &mut i64, n: u64) -> Input {
    let k = key(rng.below(keys));
    let value = format!("v{n}").into_bytes();
    let roll = rng.below(100);
    match roll {
        0..=29 => Input::Get(RangeRequest {
            key: k,
            ..RangeRequest::default()
        }),
        30..=34 => Input::Get(RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            limit: i64::try_from(rng.below(4)).unwrap_or(0),
        }),
        35..=57 => {
            let lease = if rng.chance(200) {
                // Mostly a granted lease, sometimes one that is gone or never was.
                i64::try_from(rng.below(u64::try_from(*next_lease).unwrap_or(1) + 1)).unwrap_or(0)
            } else {
                0
            };
            Input::Put(PutRequest {
                key: k,
                value,
                lease,
                prev_kv: rng.chance(300),
            })
        }
        58..=63 => Input::Delete(DeleteRequest {
            key: k,
            range_end: Vec::new(),
            prev_kv: rng.chance(300),
        }),
        64..=65 => {
            let a = rng.below(keys);
            let b = rng.between(a, keys);
            Input::Delete(DeleteRequest {
                key: key(a),
                range_end: key(b),
                prev_kv: rng.chance(500),
            })
        }
        66..=81 => {
            let current = model.get(&k).cloned();
            let target = match rng.below(3) {
                0 => CompareTarget::ModRevision(match &current {
                    Some(kv) if rng.chance(600) => kv.mod_revision,
                    _ => i64::try_from(rng.below(u64::try_from(model.revision()).unwrap_or(1) + 1))
                        .unwrap_or(0),
                }),
                1 => CompareTarget::Version(match &current {
                    Some(kv) if rng.chance(600) => kv.version,
                    _ => i64::try_from(rng.below(3)).unwrap_or(0),
                }),
                _ => CompareTarget::Value(match &current {
                    Some(kv) if rng.chance(600) => kv.value.clone(),
                    _ => format!("v{}", rng.below(n + 1)).into_bytes(),
                }),
            };
            let op = match rng.below(10) {
                0 => CompareOp::NotEqual,
                1 => CompareOp::Less,
                2 => CompareOp::Greater,
                _ => CompareOp::Equal,
            };
            let other = key(rng.below(keys));
            let mut success = vec![TxnOp::Put(PutRequest {
                key: k.clone(),
                value,
                lease: 0,
                prev_kv: rng.chance(300),
            })];
            if other != k && rng.chance(300) {
                success.push(TxnOp::Delete(DeleteRequest {
                    key: other,
                    range_end: Vec::new(),
                    prev_kv: false,
                }));
            }
            Input::Txn(TxnRequest {
                compares: vec![Compare {
                    key: k.clone(),
                    range_end: Vec::new(),
                    target,
                    op,
                }],
                success,
                failure: vec![TxnOp::Get(RangeRequest {
                    key: k,
                    ..RangeRequest::default()
                })],
            })
        }
        82..=87 => {
            *next_lease += 1;
            Input::LeaseGrant {
                id: *next_lease,
                ttl_s: 10,
            }
        }
        88..=92 => Input::LeaseRevoke {
            id: i64::try_from(rng.between(1, u64::try_from(*next_lease).unwrap_or(1))).unwrap_or(1),
        },
        93..=95 => {
            let rev = model.revision();
            let lo = model.compact_revision().max(0);
            // Mostly a valid revision, sometimes a compacted or a future one.
            let pick = rng.between(
                u64::try_from(lo).unwrap_or(0),
                u64::try_from(rev).unwrap_or(0) + 1,
            );
            Input::Compact {
                revision: i64::try_from(pick).unwrap_or(0),
            }
        }
        _ => Input::Txn(TxnRequest {
            compares: vec![Compare {
                key: k.clone(),
                range_end: Vec::new(),
                target: CompareTarget::Version(0),
                op: CompareOp::Greater,
            }],
            success: vec![
                TxnOp::Get(RangeRequest {
                    key: k,
                    ..RangeRequest::default()
                }),
                TxnOp::Get(RangeRequest {
                    key: key(rng.below(keys)),
                    ..RangeRequest::default()
                }),
            ],
            failure: Vec::new(),
        }),
    }
}

/// Generates a random history that is linearizable by construction.
pub fn random_history(config: &GenerateConfig) -> Generated {
    let mut rng = Rng(config.seed);
    let clients = config.clients.max(1);
    let keys = u64::try_from(config.keys.max(1)).unwrap_or(1);
    let mut model = Model::new();
    let mut history = Vec::with_capacity(config.operations);
    let mut order = Vec::with_capacity(config.operations);
    // When each client's last operation returned (it is busy until then).
    let mut busy_until_ns: Vec<Option<u64>> = vec![None; clients];
    let mut next_lease = 0;
    let mut now_ns: u64 = config.window_max_ns;
    for n in 0..config.operations {
        now_ns = now_ns.saturating_add(rng.between(1, config.step_max_ns.max(1)));
        let idle: Vec<usize> = (0..clients)
            .filter(|&c| busy_until_ns[c].is_none_or(|b| b < now_ns))
            .collect();
        let client = if idle.is_empty() {
            // Everyone is busy: wait for the first client to be free.
            let (c, free_ns) = busy_until_ns
                .iter()
                .enumerate()
                .map(|(c, b)| (c, b.unwrap_or(0)))
                .min_by_key(|&(_, b)| b)
                .unwrap_or((0, now_ns));
            now_ns = now_ns.max(free_ns.saturating_add(1));
            c
        } else {
            idle[usize::try_from(rng.below(idle.len() as u64)).unwrap_or(0)]
        };
        let earliest_ns = busy_until_ns[client]
            .map_or(0, |b| b + 1)
            .max(now_ns.saturating_sub(config.window_max_ns));
        let call_ns = rng.between(earliest_ns, now_ns);
        let input = random_input(&mut rng, &model, keys, &mut next_lease, n as u64);
        let index = history.len();
        let client_id = client as u64;
        if rng.chance(config.lost_per_mille) {
            history.push(Operation::unknown(client_id, call_ns, input));
            busy_until_ns[client] = Some(now_ns.saturating_add(config.window_max_ns));
            continue;
        }
        let output = model.step(&input);
        order.push(index);
        if rng.chance(config.unknown_per_mille) {
            history.push(Operation::unknown(client_id, call_ns, input));
            busy_until_ns[client] = Some(now_ns.saturating_add(config.window_max_ns));
        } else {
            let return_ns = rng.between(now_ns, now_ns.saturating_add(config.window_max_ns));
            history.push(Operation::returned(
                client_id, call_ns, return_ns, input, output,
            ));
            busy_until_ns[client] = Some(return_ns);
        }
    }
    Generated { history, order }
}

//! `detcd snapshot status FILE` and `detcd snapshot restore FILE ...`: the offline
//! snapshot commands of `etcdctl`/`etcdutl` 3.4, working on detcd's and on a real etcd's
//! snapshots alike (both are bbolt files with etcd's buckets and key encoding, with a
//! SHA-256 of the database appended).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::actors::storage::{CONSISTENT_INDEX_KEY, TERM_KEY};
use crate::core::crc32c::Crc32c;
use crate::core::mvcc::{FINISHED_COMPACT_KEY, SCHEDULED_COMPACT_KEY};
use crate::storage::backend::{Backend, Bucket, SledBackend, WriteBatch};
use crate::storage::bbolt::{self, Database};

/// The length of the SHA-256 digest a snapshot carries after the database.
const SHA256_BYTES: usize = 32;
/// How many puts go into one backend batch while restoring.
const RESTORE_BATCH_OPS: usize = 10_000;
/// The revision bump a restore applies unless told otherwise: the amount etcd's
/// documentation recommends for `etcdutl snapshot restore --bump-revision`, far more than
/// any cluster writes between its last snapshot and the restore.
pub const DEFAULT_BUMP_REVISION: u64 = 1_000_000_000;

/// What `snapshot status` reports, as etcdutl computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// CRC-32 (Castagnoli) of every bucket name, key and value, in file order.
    pub hash: u32,
    /// The main revision of the last entry in the `key` bucket.
    pub revision: i64,
    /// The number of entries in all buckets.
    pub total_key: u64,
    /// The database's size: its page count times its page size.
    pub total_size: u64,
}

/// A command failure: the message etcdctl prints after `Error: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError(pub String);

/// Computes what `snapshot status` reports for a database.
pub fn status_of(db: &Database) -> Status {
    let mut h = Crc32c::new();
    let mut revision = 0;
    let mut total_key = 0;
    for (name, entries) in &db.buckets {
        h.update(name);
        let is_key = name.as_slice() == b"key";
        for (k, v) in entries {
            h.update(k);
            h.update(v);
            if is_key && k.len() >= 8 {
                let mut a = [0u8; 8];
                a.copy_from_slice(&k[..8]);
                revision = i64::from_be_bytes(a);
            }
            total_key += 1;
        }
    }
    Status {
        hash: h.sum(),
        revision,
        total_key,
        total_size: db.page_count * db.page_size_bytes as u64,
    }
}

/// Reads a snapshot file's database. With `check_hash`, a file that carries a SHA-256
/// (its length is 32 more than a multiple of 512, as etcd checks) must match it, and one
/// without a digest is refused, as `etcdctl snapshot restore` does.
pub fn read_snapshot(path: &Path, check_hash: bool) -> Result<Database, CmdError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CmdError(format!("open {}: {}", path.display(), io_text(&e))))?;
    let has_hash = bytes.len() % 512 == SHA256_BYTES;
    if check_hash {
        if !has_hash {
            return Err(CmdError(
                "snapshot missing hash but --skip-hash-check=false".into(),
            ));
        }
        let (db, digest) = bytes.split_at(bytes.len() - SHA256_BYTES);
        if Sha256::digest(db).as_slice() != digest {
            return Err(CmdError("expected sha256 mismatch".into()));
        }
    }
    bbolt::read(&bytes).map_err(|e| CmdError(format!("snapshot file integrity check failed: {e}")))
}

fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
pub fn humanize_bytes(s: u64) -> String {
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if s < 10 {
        return format!("{s} B");
    }
    let e = ((s as f64).ln() / 1000f64.ln()).floor();
    let suffix = SIZES[e as usize];
    let val = ((s as f64) / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {suffix}")
    } else {
        format!("{val:.0} {suffix}")
    }
}

/// Formats a status as `etcdctl snapshot status -w FORMAT` prints it.
pub fn format_status(s: &Status, write_out: &str) -> Result<String, CmdError> {
    let size = humanize_bytes(s.total_size);
    match write_out {
        "simple" => Ok(format!(
            "{:x}, {}, {}, {}\n",
            s.hash, s.revision, s.total_key, size
        )),
        "json" => Ok(format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            s.hash, s.revision, s.total_key, s.total_size
        )),
        "table" => {
            let header = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let row = [
                format!("{:x}", s.hash),
                s.revision.to_string(),
                s.total_key.to_string(),
                size,
            ];
            let widths: Vec<usize> = header
                .iter()
                .zip(&row)
                .map(|(h, r)| h.len().max(r.len()))
                .collect();
            let line = {
                let mut l = String::from("+");
                for w in &widths {
                    l.push_str(&"-".repeat(w + 2));
                    l.push('+');
                }
                l.push('\n');
                l
            };
            let mut out = line.clone();
            out.push('|');
            for (h, w) in header.iter().zip(&widths) {
                // tablewriter centres headers.
                let pad = w - h.len();
                let left = pad / 2;
                out.push_str(&format!(
                    " {}{}{} |",
                    " ".repeat(left),
                    h,
                    " ".repeat(pad - left)
                ));
            }
            out.push('\n');
            out.push_str(&line);
            out.push('|');
            // etcdctl right-aligns every cell.
            for (r, w) in row.iter().zip(&widths) {
                out.push_str(&format!(" {r:>w$} |"));
            }
            out.push('\n');
            out.push_str(&line);
            Ok(out)
        }
        other => Err(CmdError(format!("unsupported output format {other:?}"))),
    }
}

/// The options of `snapshot restore`, with etcdctl's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// `--data-dir` (default `<name>.etcd`).
    pub data_dir: Option<PathBuf>,
    /// `--name`.
    pub name: String,
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--initial-advertise-peer-urls`.
    pub initial_advertise_peer_urls: String,
    /// `--skip-hash-check`.
    pub skip_hash_check: bool,
    /// `--bump-revision`: how far past the snapshot's revision the restored store starts.
    pub bump_revision: u64,
    /// `--mark-compacted`: whether every revision up to the bumped one is compacted.
    pub mark_compacted: bool,
}

impl Default for RestoreOptions {
    fn default() -> RestoreOptions {
        RestoreOptions {
            data_dir: None,
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: "http://localhost:2380".into(),
            skip_hash_check: false,
            bump_revision: DEFAULT_BUMP_REVISION,
            mark_compacted: true,
        }
    }
}

/// Parses `name=url,name=url` into peer URLs by name, as etcd does.
fn parse_initial_cluster(s: &str) -> Result<BTreeMap<String, Vec<String>>, CmdError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(CmdError(format!("{part:?} is not a valid name=url pair")));
        };
        out.entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    for urls in out.values_mut() {
        urls.sort();
    }
    Ok(out)
}

fn bucket_by_name(name: &[u8]) -> Option<Bucket> {
    Bucket::ALL
        .into_iter()
        .find(|b| b.etcd_name().as_bytes() == name)
}

/// An etcd revision key (`main`, `_`, `sub`: 17 bytes).
fn revision_key(main: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&0i64.to_be_bytes());
    k
}

/// Restores a snapshot into a new detcd data directory: the MVCC data, leases, auth and
/// alarms of the snapshot in detcd's backend, without raft state or membership, which the
/// member creates from its `--initial-cluster` flags when it first starts. Returns the
/// data directory and the revision the restored store starts at.
pub fn restore(file: &Path, opts: &RestoreOptions) -> Result<(PathBuf, i64), CmdError> {
    let data_dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", opts.name)));
    if data_dir.exists() {
        return Err(CmdError(format!(
            "data-dir {:?} exists",
            data_dir.display().to_string()
        )));
    }
    let cluster = parse_initial_cluster(&opts.initial_cluster)?;
    let Some(own) = cluster.get(&opts.name) else {
        return Err(CmdError(format!(
            "couldn't find local name {:?} in the initial cluster configuration",
            opts.name
        )));
    };
    let mut advertised: Vec<String> = opts
        .initial_advertise_peer_urls
        .split(',')
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    advertised.sort();
    if &advertised != own {
        return Err(CmdError(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} (\"{}\"(resolved from {:?}) != \"{}\"(resolved from {:?}))",
            opts.name,
            own.join(","),
            advertised.join(","),
            advertised.join(","),
            advertised.join(","),
            own.join(","),
            own.join(","),
        )));
    }
    if opts.bump_revision > 0 && !opts.mark_compacted {
        return Err(CmdError(
            "--bump-revision without --mark-compacted is not supported by detcd".into(),
        ));
    }
    let db = read_snapshot(file, !opts.skip_hash_check)?;
    let status = status_of(&db);
    let snap_dir = data_dir.join("member").join("snap");
    std::fs::create_dir_all(&snap_dir)
        .map_err(|e| CmdError(format!("mkdir {}: {}", snap_dir.display(), io_text(&e))))?;
    let result = write_backend(&snap_dir.join("db"), db, status.revision, opts);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result.map(|rev| (data_dir, rev))
}

fn write_backend(
    path: &Path,
    db: Database,
    snapshot_revision: i64,
    opts: &RestoreOptions,
) -> Result<i64, CmdError> {
    let fail = |e: std::io::Error| CmdError(format!("backend {}: {e}", path.display()));
    let mut backend = SledBackend::open(path).map_err(fail)?;
    let mut batch = WriteBatch::new();
    let mut compacted = None;
    for (name, entries) in db.buckets {
        let Some(bucket) = bucket_by_name(&name) else {
            // etcd's `cluster` bucket and any other detcd keeps no state in.
            continue;
        };
        // Membership comes from the restore's flags, and raft state starts afresh.
        if matches!(bucket, Bucket::Members | Bucket::MembersRemoved) {
            continue;
        }
        for (k, v) in entries {
            if bucket == Bucket::Meta {
                if k == CONSISTENT_INDEX_KEY || k == TERM_KEY {
                    continue;
                }
                if k == FINISHED_COMPACT_KEY && v.len() >= 8 {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&v[..8]);
                    compacted = Some(i64::from_be_bytes(a));
                }
            }
            batch.put(bucket, k, v);
            if batch.ops.len() >= RESTORE_BATCH_OPS {
                backend.write(&batch).map_err(fail)?;
                batch = WriteBatch::new();
            }
        }
    }
    let mut revision = snapshot_revision.max(compacted.unwrap_or(0));
    if opts.mark_compacted {
        revision = revision.saturating_add(i64::try_from(opts.bump_revision).unwrap_or(i64::MAX));
        batch.put(Bucket::Meta, SCHEDULED_COMPACT_KEY, revision_key(revision));
        batch.put(Bucket::Meta, FINISHED_COMPACT_KEY, revision_key(revision));
    }
    backend.write(&batch).map_err(fail)?;
    Ok(revision)
}

/// Splits command-line arguments into flags (`--name value`, `--name=value`, one or two
/// dashes, as Go's flag packages accept) and positional arguments.
fn parse_args(
    args: &[String],
    bool_flags: &[&str],
) -> Result<(BTreeMap<String, String>, Vec<String>), CmdError> {
    let mut flags = BTreeMap::new();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            positional.extend(args[i..].iter().cloned());
            break;
        }
        let Some(stripped) = arg.strip_prefix('-') else {
            positional.push(arg.clone());
            continue;
        };
        let stripped = stripped.strip_prefix('-').unwrap_or(stripped);
        let (name, value) = match stripped.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None if bool_flags.contains(&stripped) => (stripped.to_string(), "true".into()),
            None => {
                let Some(v) = args.get(i) else {
                    return Err(CmdError(format!("flag needs an argument: {arg}")));
                };
                i += 1;
                (stripped.to_string(), v.clone())
            }
        };
        flags.insert(name, value);
    }
    Ok((flags, positional))
}

fn parse_bool(name: &str, v: &str) -> Result<bool, CmdError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(CmdError(format!(
            "invalid argument {v:?} for \"--{name}\" flag: strconv.ParseBool: parsing {v:?}: invalid syntax"
        ))),
    }
}

const USAGE: &str = "Usage:\n  detcd snapshot status <filename> [-w simple|table|json]\n  detcd snapshot restore <filename> [--data-dir DIR] [--name NAME] [--initial-cluster CLUSTER] [--initial-cluster-token TOKEN] [--initial-advertise-peer-urls URLS] [--skip-hash-check] [--bump-revision N] [--mark-compacted=true|false]\n";

/// Runs `detcd snapshot ARGS...` (the arguments after `snapshot`) and returns the exit
/// code, printing as etcdctl does: results on stdout, `Error: ...` on stderr.
pub fn run(args: &[String]) -> u8 {
    match run_inner(args) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(CmdError(msg)) => {
            eprintln!("Error: {msg}");
            1
        }
    }
}

fn run_inner(args: &[String]) -> Result<String, CmdError> {
    let Some((sub, rest)) = args.split_first() else {
        return Ok(USAGE.to_string());
    };
    match sub.as_str() {
        "status" => {
            let (flags, positional) = parse_args(rest, &[])?;
            let [file] = positional.as_slice() else {
                return Err(CmdError(
                    "snapshot status requires exactly one argument".into(),
                ));
            };
            let write_out = flags
                .get("w")
                .or_else(|| flags.get("write-out"))
                .map_or("simple", String::as_str);
            let db = read_snapshot(Path::new(file), false)?;
            format_status(&status_of(&db), write_out)
        }
        "restore" => {
            let (flags, positional) = parse_args(rest, &["skip-hash-check", "mark-compacted"])?;
            let [file] = positional.as_slice() else {
                return Err(CmdError(
                    "snapshot restore requires exactly one argument".into(),
                ));
            };
            let mut opts = RestoreOptions::default();
            for (name, value) in &flags {
                match name.as_str() {
                    "data-dir" => opts.data_dir = Some(PathBuf::from(value)),
                    "name" => opts.name = value.clone(),
                    "initial-cluster" => opts.initial_cluster = value.clone(),
                    "initial-cluster-token" => opts.initial_cluster_token = value.clone(),
                    "initial-advertise-peer-urls" => {
                        opts.initial_advertise_peer_urls = value.clone()
                    }
                    "skip-hash-check" => opts.skip_hash_check = parse_bool(name, value)?,
                    "mark-compacted" => opts.mark_compacted = parse_bool(name, value)?,
                    "bump-revision" => {
                        opts.bump_revision = value.parse().map_err(|_| {
                            CmdError(format!(
                                "invalid argument {value:?} for \"--bump-revision\" flag"
                            ))
                        })?
                    }
                    // Accepted for compatibility; detcd keeps its WAL under the data dir.
                    "wal-dir" | "endpoints" | "w" | "write-out" => {}
                    other => return Err(CmdError(format!("unknown flag: --{other}"))),
                }
            }
            let (dir, revision) = restore(Path::new(file), &opts)?;
            eprintln!(
                "restored snapshot {file} into {} (revision {revision}, name {}, initial-cluster {}, initial-cluster-token {})",
                dir.display(),
                opts.name,
                opts.initial_cluster,
                opts.initial_cluster_token
            );
            Ok(String::new())
        }
        "-h" | "--help" | "help" => Ok(USAGE.to_string()),
        other => Err(CmdError(format!(
            "unknown command {other:?} for \"snapshot\""
        ))),
    }
}

//! detcd's write-ahead log for the raft log and hard state, in etcd's style.
//!
//! A WAL is a directory of segment files named `{seq:016x}-{index:016x}.wal`, where `seq`
//! counts segments from 0 and `index` is the raft index the segment's first new entry was
//! expected to have when the segment was created (0 for the first segment). Only the last
//! segment is ever appended to. Every segment is created whole and durable by
//! [`Disk::create_preallocated`] and starts with a Metadata record followed by the latest
//! Snapshot and HardState records, so older segments can be deleted after log compaction
//! without losing anything the newer ones need.
//!
//! Segments are preallocated, as etcd's are: a new segment's records are followed by zero
//! bytes up to the segment size (64 MiB), with its blocks reserved and its size durable, and
//! appends overwrite those zeros. The fdatasync after each append then need not persist a
//! new file size or allocate blocks, which makes it cheaper (see docs/performance.md). When
//! the WAL moves on to a new segment it first cuts the full one's unused zeros off, durably,
//! so every segment but the last ends exactly at its last record; a segment written by an
//! older detcd, without preallocation, simply grows with each append.
//!
//! Each record is framed as `[u32 LE payload length][u32 LE crc32(type byte ++ payload)]
//! [u8 type][payload]`. Payloads of Entry, HardState and Snapshot records are raft's own
//! protobuf encodings of `eraftpb::Entry`, `eraftpb::HardState` and
//! `eraftpb::SnapshotMetadata`; Metadata payloads are opaque bytes. No record is all zeros
//! (its CRC is not), so zeros where a record would start are the end of the data.
//!
//! Recovery ([`Wal::open`]) reads the last segment up to where only zeros follow a record
//! (its unused preallocated space, which also hides any unsynced append a crash lost
//! whole) and continues appending there. It truncates a torn tail of the last segment,
//! which is what a crash during an unsynced append leaves behind, and refuses to start on
//! anything else that does not decode: it never skips a bad record to serve what follows.
//!
//! What counts as torn: in the last segment only, a final record whose header or payload
//! runs past the end of the file, or whose CRC fails with only zero bytes after it (file
//! systems can persist a file's size before its data, and a lost write into preallocated
//! space reads as zeros) and no whole record inside it. Like etcd, recovery cannot tell a
//! torn tail from media damage to a length field in the last segment that makes its record
//! run past the end of the file, nor from damage that zeroes the last segment from a record
//! boundary on; a length above [`MAX_RECORD_PAYLOAD_BYTES`] is always reported as
//! corruption, since a torn write never grows a length.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message;
use raft::eraftpb::{Entry, HardState, SnapshotMetadata};

use super::disk::{Disk, DiskFile};

/// The size at which [`Wal::save`] starts a new segment unless configured otherwise.
pub const DEFAULT_SEGMENT_SIZE_BYTES: u64 = 64 * 1024 * 1024;

/// The largest record payload the WAL writes or reads; a larger length field on disk is
/// corruption, and rejecting it keeps recovery from trusting a garbage length.
pub const MAX_RECORD_PAYLOAD_BYTES: u32 = 64 * 1024 * 1024;

/// How much of a segment the simulator preallocates, at most. A simulated restart reads
/// and scans the whole last segment in memory, and 64 MiB of zeros per restart made the
/// simulator's sweeps more than twice as slow; a 1 MiB zero tail still exercises every
/// path (appends inside it, the end of the data before zeros, appends growing the file
/// past it).
const SIMULATED_PREALLOCATION_MAX_BYTES: u64 = 1024 * 1024;

/// The size a new segment is preallocated to: the whole segment on a real disk.
fn preallocated_bytes(segment_size_bytes: u64) -> u64 {
    if crate::rt::SIMULATED {
        segment_size_bytes.min(SIMULATED_PREALLOCATION_MAX_BYTES)
    } else {
        segment_size_bytes
    }
}

/// Length of the record header: payload length, CRC and type.
const HEADER_LEN_BYTES: usize = 9;

/// The record types; the numbers are the on-disk type bytes and must never change.
const RECORD_METADATA: u8 = 1;
const RECORD_ENTRY: u8 = 2;
const RECORD_HARD_STATE: u8 = 3;
const RECORD_SNAPSHOT: u8 = 4;

/// Why [`Wal::open`] failed.
#[derive(Debug)]
pub enum WalError {
    /// The disk failed (or there is no WAL in the directory: kind `NotFound`).
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The WAL is damaged in a way a crash cannot explain; the member must not start from it.
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// The byte offset of the bad record within the segment.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io { path, source } => {
                write!(f, "WAL I/O error on {}: {source}", path.display())
            }
            WalError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "WAL corrupt in {} at byte offset {offset}: {reason}; refusing to start \
                 (restore this member from a snapshot or remove and re-add it)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(source),
            WalError::Corrupt { .. } => None,
        }
    }
}

impl From<WalError> for io::Error {
    fn from(e: WalError) -> io::Error {
        match e {
            WalError::Io { source, .. } => source,
            corrupt @ WalError::Corrupt { .. } => {
                io::Error::new(io::ErrorKind::InvalidData, corrupt.to_string())
            }
        }
    }
}

/// What [`Wal::open`] recovered, already resolved: later entries replaced conflicting
/// earlier ones, and entries covered by the snapshot are gone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WalContents {
    /// The metadata given to [`Wal::create`].
    pub metadata: Vec<u8>,
    /// The latest snapshot saved with [`Wal::save_snapshot`]; the log starts after it.
    pub snapshot: Option<SnapshotMetadata>,
    /// The latest hard state saved.
    pub hard_state: Option<HardState>,
    /// The log after the snapshot, contiguous by index.
    pub entries: Vec<Entry>,
    /// How many bytes of a torn tail recovery cut off the last segment (0 after a clean
    /// shutdown), up to its last nonzero byte: the unused zeros of a preallocated segment
    /// after it do not count. Worth logging.
    pub torn_tail_bytes: u64,
}

/// One segment file.
#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    /// The `index` from the file name.
    start_index: u64,
    path: PathBuf,
}

fn segment_name(seq: u64, start_index: u64) -> String {
    format!("{seq:016x}-{start_index:016x}.wal")
}

/// Parses a segment file name; other names (temporary files, strays) yield `None`.
fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, index) = stem.split_once('-')?;
    if seq.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

fn record_crc(record_type: u8, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[record_type]);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one framed record to `out`.
fn encode_record(out: &mut Vec<u8>, record_type: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len <= MAX_RECORD_PAYLOAD_BYTES)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "WAL record of {} bytes exceeds the {MAX_RECORD_PAYLOAD_BYTES}-byte limit",
                    payload.len()
                ),
            )
        })?;
    out.reserve(HEADER_LEN_BYTES + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(record_type, payload).to_le_bytes());
    out.push(record_type);
    out.extend_from_slice(payload);
    Ok(())
}

fn encode_message(out: &mut Vec<u8>, record_type: u8, message: &dyn Message) -> io::Result<()> {
    let payload = message
        .write_to_bytes()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    encode_record(out, record_type, &payload)
}

/// Why a record could not be read.
#[derive(Debug)]
enum BadRecord {
    /// The incomplete last record a crash during an append leaves; safe to cut off.
    Torn,
    /// Anything else.
    Corrupt(String),
}

/// One record as read from a segment.
#[derive(Debug)]
struct RawRecord<'a> {
    record_type: u8,
    payload: &'a [u8],
    /// The offset just past the record.
    next_offset: usize,
}

/// Reads the record at `offset` of a segment (`Ok(None)` at the end). Only the last
/// segment can have a torn tail, because a segment is synced before the next one is created.
fn read_record(
    data: &[u8],
    offset: usize,
    is_last_segment: bool,
) -> Result<Option<RawRecord<'_>>, BadRecord> {
    let rest = &data[offset..];
    if rest.is_empty() {
        return Ok(None);
    }
    if is_all_zero(rest) {
        // The unused preallocated space of the last segment. Every other segment was cut
        // to its last record before the next one was created, so zeros there are damage.
        if is_last_segment {
            return Ok(None);
        }
        return Err(BadRecord::Corrupt(format!(
            "{} zero bytes follow the last record of a segment that is not the last \
             (only the last segment is ever left preallocated)",
            rest.len()
        )));
    }
    let torn_or_corrupt = |reason: String| {
        if is_last_segment {
            BadRecord::Torn
        } else {
            BadRecord::Corrupt(reason)
        }
    };
    if rest.len() < HEADER_LEN_BYTES {
        return Err(torn_or_corrupt(format!(
            "{} trailing bytes are too few for a record header",
            rest.len()
        )));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let record_type = rest[8];
    // A torn write only ever shortens what was written (or zeroes its end, which shrinks a
    // length), so an over-long length is damage, never a torn tail.
    if len > MAX_RECORD_PAYLOAD_BYTES {
        return Err(BadRecord::Corrupt(format!(
            "record length {len} exceeds the {MAX_RECORD_PAYLOAD_BYTES}-byte limit"
        )));
    }
    let end = HEADER_LEN_BYTES + len as usize;
    if end > rest.len() {
        let reason = format!("record of {len} bytes runs past the end of the segment");
        // A torn append cuts the last record short. A length field damaged in the middle
        // of the segment looks the same, except that whole records follow it: if one
        // does, this is not a torn tail, and cutting here would drop what follows.
        if is_last_segment && valid_record_after(rest) {
            return Err(BadRecord::Corrupt(format!(
                "{reason}, yet whole records follow it"
            )));
        }
        return Err(torn_or_corrupt(reason));
    }
    let payload = &rest[HEADER_LEN_BYTES..end];
    if record_crc(record_type, payload) != crc {
        // A crash can leave the end of the file zero-filled (size journaled, data not, or
        // an unsynced append into a preallocated segment lost), so a bad last record
        // followed only by zeros is torn; anything after it means the damage is in the
        // middle of the log. So does a whole record inside the bad one's extent: its length
        // field was damaged and now swallows the records after it, up into the zeros.
        if is_last_segment && is_all_zero(&rest[end..]) {
            if valid_record_after(&rest[..end]) {
                return Err(BadRecord::Corrupt(
                    "CRC mismatch in a record that spans whole records after it".to_string(),
                ));
            }
            return Err(BadRecord::Torn);
        }
        return Err(BadRecord::Corrupt(
            "CRC mismatch in a record that is not the torn tail of the log".to_string(),
        ));
    }
    Ok(Some(RawRecord {
        record_type,
        payload,
        next_offset: offset + end,
    }))
}

/// Whether every byte of `bytes` is zero. It compares blocks with `memcmp` rather than
/// looking at one byte at a time, since it runs over the whole unused tail of a
/// preallocated segment (64 MiB) at every open, and the crate is built unoptimised in tests.
fn is_all_zero(bytes: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// The length of `bytes` without its trailing zeros.
fn len_without_trailing_zeros(bytes: &[u8]) -> usize {
    let mut len = bytes.len();
    // Skip whole zero blocks quickly, then find the last nonzero byte in the block left.
    while len > 0 {
        let block_start = len.saturating_sub(4096);
        if !is_all_zero(&bytes[block_start..len]) {
            break;
        }
        len = block_start;
    }
    bytes[..len]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1)
}

/// Whether a whole record (a header whose length fits and whose CRC matches its payload)
/// starts anywhere in `rest` after its first byte. A random match needs a 32-bit CRC to
/// agree, and a length that fits is rare in random bytes, so the scan is cheap.
fn valid_record_after(rest: &[u8]) -> bool {
    (1..rest.len().saturating_sub(HEADER_LEN_BYTES - 1)).any(|at| {
        let r = &rest[at..];
        let len = u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize;
        let end = HEADER_LEN_BYTES + len;
        len > 0
            && end <= r.len()
            && record_crc(r[8], &r[HEADER_LEN_BYTES..end])
                == u32::from_le_bytes([r[4], r[5], r[6], r[7]])
    })
}

/// The state replay builds, and the state a running WAL keeps for validation and for the
/// header of each new segment.
#[derive(Debug, Default)]
struct LogState {
    metadata: Option<Vec<u8>>,
    snapshot: Option<SnapshotMetadata>,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
}

impl LogState {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    /// The index of the last entry, or of the snapshot if no entries follow it.
    fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or_else(|| self.snapshot_index(), |e| e.index)
    }

    /// Appends an entry read from disk. It may replace a suffix of the log (a raft
    /// conflict) but not reach into the snapshot or leave a gap. While the log is empty its
    /// start is not yet known, because the segments holding the beginning may have been
    /// released before the snapshot record that covers them is read (it can come later in
    /// the same segment); [`LogState::check_start`] checks the start once replay is done.
    fn append_entry(&mut self, entry: Entry) -> Result<(), String> {
        let lowest = self.snapshot_index() + 1;
        let highest = self.entries.last().map_or(u64::MAX, |e| e.index + 1);
        if entry.index < lowest || entry.index > highest {
            return Err(format!(
                "entry index {} is outside the appendable range {lowest}..={highest}",
                entry.index
            ));
        }
        let first = self.entries.first().map_or(entry.index, |e| e.index);
        // An index below the first known one replaces everything known.
        let keep = usize::try_from(entry.index.saturating_sub(first)).expect("log fits in memory");
        self.entries.truncate(keep);
        self.entries.push(entry);
        Ok(())
    }

    /// Checks that the replayed log starts right after the snapshot (or at 1 without one).
    fn check_start(&self) -> Result<(), String> {
        match self.entries.first() {
            Some(first) if first.index != self.snapshot_index() + 1 => Err(format!(
                "the log starts at index {} but the snapshot covers only up to {}: the \
                 entries in between are missing",
                first.index,
                self.snapshot_index()
            )),
            _ => Ok(()),
        }
    }

    fn apply_snapshot(&mut self, snapshot: SnapshotMetadata) -> Result<(), String> {
        if snapshot.index < self.snapshot_index() {
            return Err(format!(
                "snapshot index {} is below the earlier snapshot index {}",
                snapshot.index,
                self.snapshot_index()
            ));
        }
        let covered = self.entries.partition_point(|e| e.index <= snapshot.index);
        self.entries.drain(..covered);
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// Applies one record read from disk; `first_in_segment` says whether it opens a segment.
    fn apply_record(
        &mut self,
        record_type: u8,
        payload: &[u8],
        first_in_segment: bool,
    ) -> Result<(), String> {
        if first_in_segment != (record_type == RECORD_METADATA) {
            return Err(if first_in_segment {
                format!("segment starts with record type {record_type}, not metadata")
            } else {
                "metadata record in the middle of a segment".to_string()
            });
        }
        let undecodable = |what: &str, e: protobuf::ProtobufError| format!("bad {what}: {e}");
        match record_type {
            RECORD_METADATA => match &self.metadata {
                Some(metadata) if metadata.as_slice() != payload => {
                    Err("metadata differs from the earlier segments' metadata".to_string())
                }
                Some(_) => Ok(()),
                None => {
                    self.metadata = Some(payload.to_vec());
                    Ok(())
                }
            },
            RECORD_ENTRY => {
                let entry =
                    Entry::parse_from_bytes(payload).map_err(|e| undecodable("entry", e))?;
                self.append_entry(entry)
            }
            RECORD_HARD_STATE => {
                let hard_state = HardState::parse_from_bytes(payload)
                    .map_err(|e| undecodable("hard state", e))?;
                self.hard_state = Some(hard_state);
                Ok(())
            }
            RECORD_SNAPSHOT => {
                let snapshot = SnapshotMetadata::parse_from_bytes(payload)
                    .map_err(|e| undecodable("snapshot metadata", e))?;
                self.apply_snapshot(snapshot)
            }
            other => Err(format!("unknown record type {other}")),
        }
    }
}

/// An open write-ahead log, appending to its last segment.
pub struct Wal {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    segments: Vec<Segment>,
    file: Box<dyn DiskFile>,
    metadata: Vec<u8>,
    snapshot: Option<SnapshotMetadata>,
    hard_state: Option<HardState>,
    /// The index of the last entry saved, or of the snapshot if no entries follow it.
    last_index: u64,
    segment_size_bytes: u64,
    /// Set when an append or sync failed: what reached the disk is then unknown (and after
    /// a failed fsync the kernel may have dropped the dirty pages), so the only safe way
    /// on is to reopen, which re-reads what is actually there.
    poisoned: bool,
    /// Whether the current segment ends in records written by [`Wal::save_commit`] that
    /// no fsync has covered yet.
    unsynced: bool,
    /// Where fsync latencies are recorded (`etcd_disk_wal_fsync_duration_seconds`).
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments)
            .field("last_index", &self.last_index)
            .field("snapshot_index", &self.snapshot_index())
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// Removes the temporary files a crash can leave behind while a segment is created (see
/// [`Disk::create_preallocated`]); each may be a whole preallocated segment in size. They
/// are never part of the log: a segment exists only once renamed to its name.
fn remove_half_created_segments(disk: &dyn Disk, dir: &Path) -> io::Result<()> {
    let mut removed = false;
    for name in disk.list_dir(dir)? {
        let half_created = name
            .strip_suffix(".tmp")
            .is_some_and(|segment| parse_segment_name(segment).is_some());
        if half_created {
            disk.remove_file(&dir.join(&name))?;
            removed = true;
        }
    }
    if removed {
        disk.sync_dir(dir)?;
    }
    Ok(())
}

/// Lists the segments in `dir` sorted by sequence number.
fn list_segments(disk: &dyn Disk, dir: &Path) -> io::Result<Vec<Segment>> {
    let mut segments: Vec<Segment> = disk
        .list_dir(dir)?
        .into_iter()
        .filter_map(|name| {
            let (seq, start_index) = parse_segment_name(&name)?;
            Some(Segment {
                seq,
                start_index,
                path: dir.join(name),
            })
        })
        .collect();
    segments.sort_by_key(|s| s.seq);
    Ok(segments)
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, offset: usize, reason: String) -> WalError {
    WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    }
}

impl Wal {
    /// Whether `dir` holds a WAL (at least one segment file).
    pub fn exists(disk: &dyn Disk, dir: &Path) -> bool {
        list_segments(disk, dir).is_ok_and(|segments| !segments.is_empty())
    }

    /// Creates a new WAL in `dir` (created if missing) whose segments all carry `metadata`
    /// (for example the member and cluster ids). Fails with `AlreadyExists` if `dir`
    /// already holds a WAL.
    pub fn create(disk: Arc<dyn Disk>, dir: &Path, metadata: &[u8]) -> io::Result<Wal> {
        disk.create_dir_all(dir)?;
        if Wal::exists(&*disk, dir) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("a WAL already exists in {}", dir.display()),
            ));
        }
        let segment = Segment {
            seq: 0,
            start_index: 0,
            path: dir.join(segment_name(0, 0)),
        };
        let mut header = Vec::new();
        encode_record(&mut header, RECORD_METADATA, metadata)?;
        // Preallocated to the default size: a test's smaller size is set after `create`,
        // and the first rotation cuts the zeros off anyway.
        disk.create_preallocated(
            &segment.path,
            &header,
            preallocated_bytes(DEFAULT_SEGMENT_SIZE_BYTES),
        )?;
        let file = disk.open_at(&segment.path, header.len() as u64)?;
        Ok(Wal {
            disk,
            dir: dir.to_path_buf(),
            segments: vec![segment],
            file,
            metadata: metadata.to_vec(),
            snapshot: None,
            hard_state: None,
            last_index: 0,
            segment_size_bytes: DEFAULT_SEGMENT_SIZE_BYTES,
            poisoned: false,
            unsynced: false,
            metrics: None,
        })
    }

    /// The metadata of the WAL in `dir`, read from the first record of its first segment
    /// alone, without reading the rest of the log or repairing anything: what a restart
    /// needs to know whose WAL it is before it opens it. [`Wal::open`] checks everything
    /// else (every segment starts with the same metadata).
    pub fn read_metadata(disk: &dyn Disk, dir: &Path) -> Result<Vec<u8>, WalError> {
        let segments = list_segments(disk, dir).map_err(io_error(dir))?;
        let Some(first) = segments.first() else {
            return Err(WalError::Io {
                path: dir.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotFound, "no WAL segments"),
            });
        };
        let data = disk.read_file(&first.path).map_err(io_error(&first.path))?;
        let is_last_segment = segments.len() == 1;
        let record = match read_record(&data, 0, is_last_segment) {
            Ok(Some(record)) => record,
            Ok(None) => return Err(corrupt(&first.path, 0, "the segment is empty".into())),
            Err(BadRecord::Torn) => {
                return Err(corrupt(
                    &first.path,
                    0,
                    "the segment's first record is incomplete".into(),
                ))
            }
            Err(BadRecord::Corrupt(reason)) => return Err(corrupt(&first.path, 0, reason)),
        };
        let mut state = LogState::default();
        state
            .apply_record(record.record_type, record.payload, true)
            .map_err(|reason| corrupt(&first.path, 0, reason))?;
        Ok(state.metadata.unwrap_or_default())
    }

    /// Opens the WAL in `dir`, returning it ready to append and everything it holds.
    /// A torn tail of the last segment is cut off (durably) first; any other damage is
    /// [`WalError::Corrupt`]. A missing WAL is [`WalError::Io`] of kind `NotFound`.
    /// Appends continue at the end of the last segment's records, inside its preallocated
    /// space if it has some. Segment files a crash left half-created are removed.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path) -> Result<(Wal, WalContents), WalError> {
        remove_half_created_segments(&*disk, dir).map_err(io_error(dir))?;
        let segments = list_segments(&*disk, dir).map_err(io_error(dir))?;
        let Some(last) = segments.last() else {
            return Err(WalError::Io {
                path: dir.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotFound, "no WAL segments"),
            });
        };
        // Old segments are deleted oldest first with a directory sync after each, so the
        // segments left are always a contiguous run; a hole means lost log.
        for pair in segments.windows(2) {
            if pair[1].seq != pair[0].seq + 1 {
                return Err(corrupt(
                    &pair[1].path,
                    0,
                    format!("segment {} is missing", pair[0].seq + 1),
                ));
            }
        }
        let mut state = LogState::default();
        let mut torn_tail_bytes = 0;
        // Where the last segment's records end, and appends continue.
        let mut data_len_bytes = 0;
        for segment in &segments {
            let is_last_segment = segment.seq == last.seq;
            let path = &segment.path;
            let data = disk.read_file(path).map_err(io_error(path))?;
            let mut offset = 0;
            loop {
                match read_record(&data, offset, is_last_segment) {
                    Ok(None) => break,
                    Ok(Some(record)) => {
                        state
                            .apply_record(record.record_type, record.payload, offset == 0)
                            .map_err(|reason| corrupt(path, offset, reason))?;
                        offset = record.next_offset;
                    }
                    Err(BadRecord::Torn) if offset > 0 => {
                        torn_tail_bytes =
                            len_without_trailing_zeros(&data).saturating_sub(offset) as u64;
                        // The preallocated zeros after the torn bytes go with them, so the
                        // segment grows with each append until the next rotation starts a
                        // preallocated one; a crash is rare enough not to refill them.
                        disk.truncate(path, offset as u64).map_err(io_error(path))?;
                        break;
                    }
                    Err(BadRecord::Torn) => {
                        return Err(corrupt(
                            path,
                            0,
                            "the segment's first record is incomplete, which a crash cannot \
                             cause because segments are created atomically"
                                .to_string(),
                        ))
                    }
                    Err(BadRecord::Corrupt(reason)) => return Err(corrupt(path, offset, reason)),
                }
            }
            if offset == 0 {
                return Err(corrupt(path, 0, "the segment is empty".to_string()));
            }
            data_len_bytes = offset as u64;
        }
        state
            .check_start()
            .map_err(|reason| corrupt(&segments[0].path, 0, reason))?;
        let metadata = state
            .metadata
            .take()
            .expect("every segment starts with metadata");
        let file = disk
            .open_at(&last.path, data_len_bytes)
            .map_err(io_error(&last.path))?;
        let wal = Wal {
            disk,
            dir: dir.to_path_buf(),
            segments,
            file,
            metadata: metadata.clone(),
            snapshot: state.snapshot.clone(),
            hard_state: state.hard_state.clone(),
            last_index: state.last_index(),
            segment_size_bytes: DEFAULT_SEGMENT_SIZE_BYTES,
            poisoned: false,
            unsynced: false,
            metrics: None,
        };
        let contents = WalContents {
            metadata,
            snapshot: state.snapshot,
            hard_state: state.hard_state,
            entries: state.entries,
            torn_tail_bytes,
        };
        Ok((wal, contents))
    }

    /// Sets the size at which [`Wal::save`] and [`Wal::save_snapshot`] start a new segment
    /// (a segment can exceed it by one batch). Not persisted; small values are for tests.
    pub fn set_segment_size_bytes(&mut self, segment_size_bytes: u64) {
        assert!(segment_size_bytes > 0, "segment size must be positive");
        self.segment_size_bytes = segment_size_bytes;
    }

    /// The directory this WAL lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The metadata given to [`Wal::create`].
    pub fn metadata(&self) -> &[u8] {
        &self.metadata
    }

    /// The index of the last entry saved, or of the snapshot if no entries follow it
    /// (0 for an empty WAL).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The index of the latest snapshot saved (0 if none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    /// The latest hard state saved.
    pub fn hard_state(&self) -> Option<&HardState> {
        self.hard_state.as_ref()
    }

    /// The number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(
                "an earlier WAL write failed; reopen the WAL before writing again",
            ));
        }
        Ok(())
    }

    /// Appends `entries` and then `hard_state` (if any) and syncs once. Entries must be
    /// contiguous, and the first may replace a suffix of the log (a raft conflict) but must
    /// lie after the snapshot and leave no gap; violations are `InvalidInput` and write
    /// nothing. Ok means the whole batch is durable. An error from the disk means the batch
    /// may or may not be durable, and the WAL refuses further writes until reopened.
    pub fn save(&mut self, hard_state: Option<&HardState>, entries: &[Entry]) -> io::Result<()> {
        self.check_usable()?;
        if hard_state.is_none() && entries.is_empty() {
            return Ok(());
        }
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            let snapshot_index = self.snapshot_index();
            let (lowest, highest) = (snapshot_index + 1, self.last_index + 1);
            let contiguous = entries.windows(2).all(|w| w[1].index == w[0].index + 1);
            if !contiguous || first.index < lowest || first.index > highest {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "cannot save entries {}..={} (contiguous: {contiguous}): the first \
                         must be in {lowest}..={highest}",
                        first.index, last.index
                    ),
                ));
            }
        }
        let mut batch = Vec::new();
        for entry in entries {
            encode_message(&mut batch, RECORD_ENTRY, entry)?;
        }
        if let Some(hard_state) = hard_state {
            encode_message(&mut batch, RECORD_HARD_STATE, hard_state)?;
        }
        self.write_synced(&batch)?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        if let Some(hard_state) = hard_state {
            self.hard_state = Some(hard_state.clone());
        }
        self.maybe_rotate()
    }

    /// Saves a hard state that differs from the last one saved only in its commit index,
    /// without an fsync, as etcd's WAL does (`raft.MustSync`): a commit index lost in a
    /// crash is learned again from the leader, and the backend's applied index raises it
    /// at start (see `RaftLog::reconcile`). The record becomes durable with the next
    /// synced write. A hard state whose term or vote changed is saved synced.
    pub fn save_commit(&mut self, hard_state: &HardState) -> io::Result<()> {
        self.check_usable()?;
        let must_sync = self
            .hard_state
            .as_ref()
            .is_none_or(|old| old.term != hard_state.term || old.vote != hard_state.vote);
        if must_sync {
            return self.save(Some(hard_state), &[]);
        }
        let mut batch = Vec::new();
        encode_message(&mut batch, RECORD_HARD_STATE, hard_state)?;
        if let Err(e) = self.file.append(&batch) {
            self.poisoned = true;
            return Err(e);
        }
        self.unsynced = true;
        self.hard_state = Some(hard_state.clone());
        self.maybe_rotate()
    }

    /// Records that the log now starts after `snapshot` (the state machine holds
    /// everything up to `snapshot.index`) and syncs. Entries after the snapshot index stay.
    /// The index must not go below an earlier snapshot's (`InvalidInput`).
    pub fn save_snapshot(&mut self, snapshot: &SnapshotMetadata) -> io::Result<()> {
        self.check_usable()?;
        if snapshot.index < self.snapshot_index() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "snapshot index {} is below the saved snapshot index {}",
                    snapshot.index,
                    self.snapshot_index()
                ),
            ));
        }
        let mut record = Vec::new();
        encode_message(&mut record, RECORD_SNAPSHOT, snapshot)?;
        self.write_synced(&record)?;
        self.snapshot = Some(snapshot.clone());
        self.last_index = self.last_index.max(snapshot.index);
        self.maybe_rotate()
    }

    fn write_synced(&mut self, bytes: &[u8]) -> io::Result<()> {
        let result = self.file.append(bytes).and_then(|()| self.sync_file());
        if result.is_err() {
            self.poisoned = true;
        } else {
            self.unsynced = false;
        }
        result
    }

    /// Syncs the current segment, recording the latency. A failure poisons the WAL.
    fn sync_file(&mut self) -> io::Result<()> {
        if !self.disk.syncs() {
            // `--unsafe-no-fsync`: nothing to wait for, and, as in etcd, nothing to time.
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result = self.file.sync();
        if let Some(m) = &self.metrics {
            m.wal_fsync.observe(started.elapsed());
        }
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Starts a new segment once the current one reaches the size limit.
    fn maybe_rotate(&mut self) -> io::Result<()> {
        if self.file.len_bytes() < self.segment_size_bytes {
            return Ok(());
        }
        // A segment is left only whole and durable: a torn record may end the last
        // segment (it is cut off at open), never an earlier one.
        if self.unsynced {
            self.sync_file()?;
            self.unsynced = false;
        }
        let result = self.start_segment();
        if result.is_err() {
            // What a failed rotation left is unknown: the new segment may exist (renamed into
            // place, its directory sync failed). Appending more to the old segment would
            // then put records where replay reads them before the new segment's older
            // header, and where a torn one would be taken for corruption, since the old
            // segment is no longer the last. Reopening decides from what is on disk.
            self.poisoned = true;
        }
        result
    }

    /// Cuts the current segment's preallocated zeros off and creates the next segment,
    /// preallocated, holding the header.
    fn start_segment(&mut self) -> io::Result<()> {
        let last = self.segments.last().expect("a WAL has a segment");
        // First, durably: every segment but the last ends exactly at its last record, so
        // that zeros after the records are corruption anywhere but in the last segment.
        // A crash after this and before the new segment exists leaves this one the last
        // segment, merely no longer preallocated: appends to it grow it again.
        self.disk.truncate(&last.path, self.file.len_bytes())?;
        let seq = last.seq + 1;
        let start_index = self.last_index + 1;
        let path = self.dir.join(segment_name(seq, start_index));
        // The header repeats what replay needs from older segments, so those can go.
        let mut header = Vec::new();
        encode_record(&mut header, RECORD_METADATA, &self.metadata)?;
        if let Some(snapshot) = &self.snapshot {
            encode_message(&mut header, RECORD_SNAPSHOT, snapshot)?;
        }
        if let Some(hard_state) = &self.hard_state {
            encode_message(&mut header, RECORD_HARD_STATE, hard_state)?;
        }
        // The current segment is already synced (every write is), so once the new one
        // exists durably nothing more is ever appended to the old one. It is created whole
        // or not at all: a crash before its rename leaves at most a temporary file, which
        // the next open removes.
        self.disk.create_preallocated(
            &path,
            &header,
            preallocated_bytes(self.segment_size_bytes),
        )?;
        self.file = self.disk.open_at(&path, header.len() as u64)?;
        self.segments.push(Segment {
            seq,
            start_index,
            path,
        });
        Ok(())
    }

    /// Records every later fsync's latency in `metrics`.
    pub fn set_metrics(&mut self, metrics: Arc<crate::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    /// The simulated time the WAL's syncs since the last call would have taken (zero on
    /// a real disk; see [`Disk::take_io_delay`]).
    pub fn take_io_delay(&self) -> std::time::Duration {
        self.disk.take_io_delay()
    }

    /// Deletes whole segments holding only entries at or below `index`, for use after a
    /// snapshot at `index` was saved; `index` is capped at the saved snapshot index, so log
    /// not covered by a snapshot is never deleted. The last segment always stays. Returns
    /// how many segments were deleted.
    pub fn release_before(&mut self, index: u64) -> io::Result<usize> {
        let index = index.min(self.snapshot_index());
        let mut released = 0;
        // Live entries of a segment all lie below the next segment's start index (a conflict
        // that rewrote lower indexes set the next start lower), so a segment can go once the
        // next one starts at or before index + 1.
        while self.segments.len() > 1 && self.segments[1].start_index <= index + 1 {
            self.disk.remove_file(&self.segments[0].path)?;
            self.segments.remove(0);
            released += 1;
            // Sync after each removal so a crash can only undo the latest one, which keeps
            // the remaining segments contiguous.
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests;

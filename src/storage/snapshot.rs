//! Raft snapshots of the state machine: the whole backend in one checksummed blob.
//!
//! When a follower has fallen behind the leader's compacted raft log (or is new), the
//! leader sends it the state machine instead of the missing entries, as etcd sends its
//! bbolt file. detcd's blob is a dump of every backend bucket, including the consistent
//! index, so the receiver knows exactly which raft entries the blob already reflects and
//! skips them when the log continues.
//!
//! Layout: the magic [`MAGIC`], then one record per key (bucket tag, key length, key,
//! value length, value; lengths as 4-byte big-endian), then an end marker byte and the
//! CRC-32C of everything before the checksum. A blob that does not check out is refused
//! whole, so a member never installs a damaged state.
//!
//! A received blob is written to `<data-dir>/member/snap/` and synced before the raft log
//! records the snapshot, so that a member that crashes between recording the snapshot and
//! loading it into the backend can finish loading at restart.

use std::io;
use std::path::{Path, PathBuf};

use crate::core::crc32c::Crc32c;
use crate::storage::backend::{Backend, Bucket, WriteBatch};
use crate::storage::disk::Disk;

/// The first bytes of every snapshot blob (format version 1).
pub const MAGIC: &[u8; 8] = b"DETCDSN1";
/// Marks the end of the records.
const END_MARKER: u8 = 0xff;

/// Why a snapshot blob was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotError(pub String);

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "snap: {}", self.0)
    }
}

impl std::error::Error for SnapshotError {}

fn bucket_from_tag(tag: u8) -> Option<Bucket> {
    Bucket::ALL.into_iter().find(|b| b.tag() == tag)
}

fn put_len(out: &mut Vec<u8>, len: usize) -> io::Result<()> {
    let len = u32::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "a key or value of 4 GiB or more cannot be snapshotted",
        )
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Dumps every bucket of `backend` into a snapshot blob.
pub fn encode(backend: &dyn Backend) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(backend.size_bytes().min(1 << 30) as usize + 64);
    out.extend_from_slice(MAGIC);
    for bucket in Bucket::ALL {
        for (key, value) in backend.scan(bucket)? {
            out.push(bucket.tag());
            put_len(&mut out, key.len())?;
            out.extend_from_slice(&key);
            put_len(&mut out, value.len())?;
            out.extend_from_slice(&value);
        }
    }
    out.push(END_MARKER);
    let mut crc = Crc32c::new();
    crc.update(&out);
    out.extend_from_slice(&crc.sum().to_be_bytes());
    Ok(out)
}

/// Checks a blob's framing and checksum without decoding its records.
pub fn verify(blob: &[u8]) -> Result<(), SnapshotError> {
    if blob.len() < MAGIC.len() + 1 + 4 || &blob[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError(
            "the snapshot is not a detcd snapshot (bad magic or too short)".into(),
        ));
    }
    let (body, sum) = blob.split_at(blob.len() - 4);
    let mut crc = Crc32c::new();
    crc.update(body);
    let expected = u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]);
    if crc.sum() != expected {
        return Err(SnapshotError(format!(
            "crc mismatch: the snapshot's checksum is {expected:08x} but its content hashes to {:08x}",
            crc.sum()
        )));
    }
    if body.last() != Some(&END_MARKER) {
        return Err(SnapshotError("the snapshot has no end marker".into()));
    }
    Ok(())
}

fn take<'a>(body: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], SnapshotError> {
    let end = at
        .checked_add(len)
        .filter(|&end| end <= body.len())
        .ok_or_else(|| SnapshotError(format!("a record at offset {at} runs past the end")))?;
    let out = &body[*at..end];
    *at = end;
    Ok(out)
}

fn take_len(body: &[u8], at: &mut usize) -> Result<usize, SnapshotError> {
    let b = take(body, at, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Decodes a verified blob into batches of puts for a backend, about `batch_bytes` each,
/// so that loading a large snapshot does not build one giant batch.
pub fn decode(blob: &[u8], batch_bytes: usize) -> Result<Vec<WriteBatch>, SnapshotError> {
    verify(blob)?;
    let body = &blob[..blob.len() - 4 - 1];
    let mut at = MAGIC.len();
    let mut batches = Vec::new();
    let mut batch = WriteBatch::new();
    let mut size = 0usize;
    while at < body.len() {
        let tag = take(body, &mut at, 1)?[0];
        let bucket = bucket_from_tag(tag)
            .ok_or_else(|| SnapshotError(format!("unknown bucket tag {tag} at offset {at}")))?;
        let key_len = take_len(body, &mut at)?;
        let key = take(body, &mut at, key_len)?.to_vec();
        let value_len = take_len(body, &mut at)?;
        let value = take(body, &mut at, value_len)?.to_vec();
        size += key.len() + value.len();
        batch.put(bucket, key, value);
        if size >= batch_bytes {
            batches.push(std::mem::take(&mut batch));
            size = 0;
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    Ok(batches)
}

/// Replaces everything in `backend` with the blob's content, and syncs. The blob is
/// decoded (and so fully checked) before anything is deleted.
pub fn install(backend: &mut dyn Backend, blob: &[u8]) -> Result<(), SnapshotError> {
    let batches = decode(blob, 4 << 20)?;
    let io = |e: io::Error| SnapshotError(format!("backend: {e}"));
    let mut clear = WriteBatch::new();
    for bucket in Bucket::ALL {
        for (key, _) in backend.scan(bucket).map_err(io)? {
            clear.delete(bucket, key);
        }
    }
    backend.write(&clear).map_err(io)?;
    for batch in &batches {
        backend.write(batch).map_err(io)?;
    }
    backend.sync().map_err(io)
}

/// The file a received snapshot at raft `index` (of raft `term`) is kept in.
pub fn file_path(snap_dir: &Path, term: u64, index: u64) -> PathBuf {
    snap_dir.join(format!("{term:016x}-{index:016x}.snap"))
}

/// Writes a received blob durably to `snap_dir`, and deletes older snapshot files (the
/// newest is the only one a restart can need).
pub fn save_file(
    disk: &dyn Disk,
    snap_dir: &Path,
    term: u64,
    index: u64,
    blob: &[u8],
) -> io::Result<()> {
    disk.create_dir_all(snap_dir)?;
    let path = file_path(snap_dir, term, index);
    disk.write_atomic(&path, blob)?;
    for name in disk.list_dir(snap_dir)? {
        if name.ends_with(".snap") && snap_dir.join(&name) != path {
            disk.remove_file(&snap_dir.join(&name))?;
        }
    }
    disk.sync_dir(snap_dir)
}

/// Reads the saved blob for the snapshot at `index`, if there is one.
pub fn load_file(disk: &dyn Disk, snap_dir: &Path, index: u64) -> io::Result<Option<Vec<u8>>> {
    if !disk.exists(snap_dir) {
        return Ok(None);
    }
    let suffix = format!("-{index:016x}.snap");
    for name in disk.list_dir(snap_dir)? {
        if name.ends_with(&suffix) {
            return disk.read_file(&snap_dir.join(name)).map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::MemBackend;
    use crate::storage::disk::SimDisk;

    fn sample() -> MemBackend {
        let mut b = MemBackend::new();
        let mut batch = WriteBatch::new();
        batch.put(Bucket::Key, b"k1".to_vec(), b"v1".to_vec());
        batch.put(Bucket::Key, b"k2".to_vec(), vec![7u8; 10_000]);
        batch.put(
            Bucket::Meta,
            b"consistent_index".to_vec(),
            9u64.to_be_bytes(),
        );
        batch.put(Bucket::Members, b"m".to_vec(), Vec::new());
        b.write(&batch).expect("write");
        b
    }

    type Contents = Vec<(Bucket, Vec<(Vec<u8>, Vec<u8>)>)>;

    fn contents(b: &dyn Backend) -> Contents {
        Bucket::ALL
            .into_iter()
            .map(|bucket| (bucket, b.scan(bucket).expect("scan")))
            .collect()
    }

    #[test]
    fn install_replaces_the_backend_with_the_snapshot() {
        let source = sample();
        let blob = encode(&source).expect("encode");
        let mut target = MemBackend::new();
        let mut stale = WriteBatch::new();
        stale.put(Bucket::Key, b"old".to_vec(), b"x".to_vec());
        stale.put(Bucket::Lease, b"l".to_vec(), b"y".to_vec());
        target.write(&stale).expect("write");
        install(&mut target, &blob).expect("install");
        assert_eq!(contents(&target), contents(&source));
    }

    #[test]
    fn every_damaged_byte_is_detected_and_nothing_is_installed() {
        let blob = encode(&sample()).expect("encode");
        for i in (0..blob.len()).step_by(97).chain([blob.len() - 1]) {
            let mut bad = blob.clone();
            bad[i] ^= 0x10;
            let mut target = MemBackend::new();
            let mut keep = WriteBatch::new();
            keep.put(Bucket::Key, b"keep".to_vec(), b"me".to_vec());
            target.write(&keep).expect("write");
            assert!(install(&mut target, &bad).is_err(), "byte {i} flipped");
            assert_eq!(
                target.get(Bucket::Key, b"keep").expect("get"),
                Some(b"me".to_vec())
            );
        }
        assert!(verify(&blob[..blob.len() - 1]).is_err());
        assert!(verify(b"").is_err());
    }

    #[test]
    fn decode_splits_large_snapshots_into_bounded_batches() {
        let blob = encode(&sample()).expect("encode");
        let batches = decode(&blob, 1).expect("decode");
        assert_eq!(batches.len(), 4);
        assert!(batches.iter().all(|b| b.ops.len() == 1));
    }

    #[test]
    fn saved_files_are_found_by_index_and_older_ones_removed() {
        let disk = SimDisk::new();
        let dir = Path::new("/d/snap");
        save_file(&disk, dir, 2, 10, b"first").expect("save");
        save_file(&disk, dir, 3, 20, b"second").expect("save");
        assert_eq!(load_file(&disk, dir, 10).expect("load"), None);
        assert_eq!(
            load_file(&disk, dir, 20).expect("load"),
            Some(b"second".to_vec())
        );
        assert_eq!(
            load_file(&disk, Path::new("/none"), 20).expect("load"),
            None
        );
    }
}

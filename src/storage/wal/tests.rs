//! Tests for the write-ahead log, mostly over `SimDisk` so crashes and damage are exact.

use super::*;
use crate::storage::disk::{RealDisk, SimDisk};
use proptest::prelude::*;
use raft::eraftpb::ConfState;

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::new();
    e.index = index;
    e.term = term;
    e.data = format!("payload {index} at term {term}")
        .into_bytes()
        .into();
    e
}

fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    indexes.map(|i| entry(i, term)).collect()
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    let mut hs = HardState::new();
    hs.term = term;
    hs.vote = vote;
    hs.commit = commit;
    hs
}

fn snapshot(index: u64, term: u64) -> SnapshotMetadata {
    let mut conf_state = ConfState::new();
    conf_state.voters = vec![1, 2, 3];
    let mut s = SnapshotMetadata::new();
    s.index = index;
    s.term = term;
    s.set_conf_state(conf_state);
    s
}

fn wal_dir() -> PathBuf {
    PathBuf::from("/data/member/wal")
}

fn new_sim() -> (SimDisk, Arc<dyn Disk>) {
    let sim = SimDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    (sim, disk)
}

fn reopen(disk: &Arc<dyn Disk>) -> (Wal, WalContents) {
    Wal::open(disk.clone(), &wal_dir()).unwrap_or_else(|e| panic!("reopen failed: {e}"))
}

fn segment_paths(disk: &dyn Disk) -> Vec<PathBuf> {
    list_segments(disk, &wal_dir())
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect()
}

/// Where the records of a segment's contents end: the rest is the unused zeros of a
/// preallocated segment (or nothing).
fn records_end(data: &[u8]) -> u64 {
    let mut offset = 0;
    while let Ok(Some(record)) = read_record(data, offset, true) {
        offset = record.next_offset;
    }
    offset as u64
}

fn assert_corrupt(result: Result<(Wal, WalContents), WalError>) -> (PathBuf, u64, String) {
    match result {
        Err(e @ WalError::Corrupt { .. }) => {
            let message = e.to_string();
            assert!(message.contains("corrupt"), "{message}");
            let WalError::Corrupt {
                path,
                offset,
                reason,
            } = e
            else {
                unreachable!()
            };
            (path, offset, reason)
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok((_, contents)) => panic!("expected Corrupt, got {contents:?}"),
    }
}

#[test]
fn wal_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Wal>();
    assert_send::<WalError>();
}

#[test]
fn segment_names_round_trip() {
    assert_eq!(
        segment_name(1, 0xab),
        "0000000000000001-00000000000000ab.wal"
    );
    assert_eq!(parse_segment_name(&segment_name(7, 99)), Some((7, 99)));
    assert_eq!(
        parse_segment_name("0000000000000001-00000000000000ab.wal.tmp"),
        None
    );
    assert_eq!(parse_segment_name("1-2.wal"), None);
    assert_eq!(
        parse_segment_name("000000000000000g-0000000000000000.wal"),
        None
    );
}

#[test]
fn create_then_open_empty() {
    let (_, disk) = new_sim();
    assert!(!Wal::exists(&*disk, &wal_dir()));
    let err = Wal::open(disk.clone(), &wal_dir()).unwrap_err();
    assert!(
        matches!(&err, WalError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    );
    let wal = Wal::create(disk.clone(), &wal_dir(), b"member=1 cluster=9").unwrap();
    assert_eq!(wal.last_index(), 0);
    assert!(Wal::exists(&*disk, &wal_dir()));
    let err = Wal::create(disk.clone(), &wal_dir(), b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    let (wal, contents) = reopen(&disk);
    assert_eq!(contents.metadata, b"member=1 cluster=9");
    assert_eq!(contents.snapshot, None);
    assert_eq!(contents.hard_state, None);
    assert!(contents.entries.is_empty());
    assert_eq!(contents.torn_tail_bytes, 0);
    assert_eq!(wal.metadata(), b"member=1 cluster=9");
}

#[test]
fn round_trip_across_restarts_and_rotation() {
    let (_, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"meta").unwrap();
    wal.set_segment_size_bytes(300);
    let mut expected = Vec::new();
    for i in 1..=40u64 {
        let batch = vec![entry(i, 1 + i / 10)];
        wal.save(Some(&hard_state(1 + i / 10, 2, i - 1)), &batch)
            .unwrap();
        expected.extend(batch);
        if i % 13 == 0 {
            drop(wal);
            let (reopened, contents) = reopen(&disk);
            assert_eq!(contents.entries, expected);
            assert_eq!(contents.hard_state, Some(hard_state(1 + i / 10, 2, i - 1)));
            wal = reopened;
            wal.set_segment_size_bytes(300);
        }
    }
    assert!(wal.segment_count() > 5, "{wal:?}");
    assert_eq!(wal.segment_count(), segment_paths(&*disk).len());
    assert_eq!(wal.last_index(), 40);
    assert_eq!(wal.hard_state(), Some(&hard_state(5, 2, 39)));
    drop(wal);
    let (wal, contents) = reopen(&disk);
    assert_eq!(contents.entries, expected);
    assert_eq!(contents.metadata, b"meta");
    assert_eq!(wal.last_index(), 40);
}

#[test]
fn hard_state_only_and_empty_saves() {
    let (_, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"").unwrap();
    wal.save(None, &[]).unwrap();
    wal.save(Some(&hard_state(3, 1, 0)), &[]).unwrap();
    wal.save(None, &entries(1..=3, 3)).unwrap();
    let (_, contents) = reopen(&disk);
    assert_eq!(contents.hard_state, Some(hard_state(3, 1, 0)));
    assert_eq!(contents.entries, entries(1..=3, 3));
}

#[test]
fn conflicting_entries_overwrite_the_suffix() {
    let (_, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"m").unwrap();
    wal.set_segment_size_bytes(200);
    wal.save(None, &entries(1..=10, 1)).unwrap();
    // A new leader at term 2 replaces 6..=10 with 6..=7.
    wal.save(Some(&hard_state(2, 3, 5)), &entries(6..=7, 2))
        .unwrap();
    assert_eq!(wal.last_index(), 7);
    let mut expected = entries(1..=5, 1);
    expected.extend(entries(6..=7, 2));
    let (mut wal, contents) = reopen(&disk);
    assert_eq!(contents.entries, expected);
    wal.set_segment_size_bytes(200);
    // Appending right after the new end, then overwriting across a segment boundary.
    wal.save(None, &entries(8..=12, 2)).unwrap();
    assert!(wal.segment_count() > 1);
    wal.save(None, &entries(3..=4, 3)).unwrap();
    wal.save(None, &entries(5..=5, 3)).unwrap();
    let (wal, contents) = reopen(&disk);
    let mut expected = entries(1..=2, 1);
    expected.extend(entries(3..=5, 3));
    assert_eq!(contents.entries, expected);
    assert_eq!(wal.last_index(), 5);
}

#[test]
fn save_rejects_gaps_and_entries_inside_the_snapshot() {
    let (sim, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"m").unwrap();
    let before = disk.read_file(&segment_paths(&*disk)[0]).unwrap();
    let invalid =
        |r: io::Result<()>| assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    invalid(wal.save(None, &entries(2..=3, 1)));
    invalid(wal.save(None, &[entry(1, 1), entry(3, 1)]));
    invalid(wal.save(None, &[entry(0, 1)]));
    assert_eq!(disk.read_file(&segment_paths(&*disk)[0]).unwrap(), before);
    wal.save(None, &entries(1..=5, 1)).unwrap();
    invalid(wal.save(None, &entries(7..=7, 1)));
    wal.save_snapshot(&snapshot(3, 1)).unwrap();
    invalid(wal.save(None, &entries(3..=4, 2)));
    invalid(wal.save_snapshot(&snapshot(2, 1)));
    wal.save(None, &entries(4..=4, 2)).unwrap();
    // Rejections never poison the WAL.
    wal.save(None, &entries(5..=5, 2)).unwrap();
    drop(wal);
    let (_, contents) = reopen(&disk);
    assert_eq!(contents.entries, entries(4..=5, 2));
    assert_eq!(contents.snapshot, Some(snapshot(3, 1)));
    assert_eq!(sim.unsynced_len_bytes(&segment_paths(&*disk)[0]), 0);
}

#[test]
fn snapshot_beyond_the_log_restarts_it() {
    let (_, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"m").unwrap();
    wal.save(None, &entries(1..=5, 1)).unwrap();
    // A follower receives a snapshot at 20 from the leader: the log restarts at 21.
    wal.save_snapshot(&snapshot(20, 4)).unwrap();
    assert_eq!(wal.last_index(), 20);
    wal.save(Some(&hard_state(4, 0, 20)), &entries(21..=22, 4))
        .unwrap();
    let (_, contents) = reopen(&disk);
    assert_eq!(contents.snapshot, Some(snapshot(20, 4)));
    assert_eq!(contents.entries, entries(21..=22, 4));
    assert_eq!(contents.hard_state, Some(hard_state(4, 0, 20)));
}

#[test]
fn release_before_deletes_only_segments_covered_by_a_snapshot() {
    let (_, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"m").unwrap();
    wal.set_segment_size_bytes(150);
    for i in 1..=30 {
        wal.save(Some(&hard_state(1, 1, i - 1)), &[entry(i, 1)])
            .unwrap();
    }
    let segments_before = wal.segment_count();
    assert!(segments_before > 5);
    // No snapshot yet: nothing may go.
    assert_eq!(wal.release_before(25).unwrap(), 0);
    wal.save_snapshot(&snapshot(20, 1)).unwrap();
    let released = wal.release_before(25).unwrap();
    assert!(released > 0);
    assert_eq!(wal.segment_count(), segments_before - released);
    assert_eq!(segment_paths(&*disk).len(), wal.segment_count());
    drop(wal);
    let (mut wal, contents) = reopen(&disk);
    assert_eq!(contents.snapshot, Some(snapshot(20, 1)));
    assert_eq!(contents.entries, entries(21..=30, 1));
    assert_eq!(contents.hard_state, Some(hard_state(1, 1, 29)));
    assert_eq!(contents.metadata, b"m");
    // Everything up to the snapshot is releasable except the last segment.
    wal.save_snapshot(&snapshot(30, 1)).unwrap();
    wal.release_before(30).unwrap();
    assert_eq!(wal.segment_count(), 1);
    wal.save(None, &[entry(31, 2)]).unwrap();
    drop(wal);
    let (_, contents) = reopen(&disk);
    assert_eq!(contents.snapshot, Some(snapshot(30, 1)));
    assert_eq!(contents.entries, vec![entry(31, 2)]);
    assert_eq!(contents.hard_state, Some(hard_state(1, 1, 29)));
}

#[test]
fn release_survives_crashes_that_undo_removals() {
    for seed in 0..16 {
        let (sim, disk) = new_sim();
        let mut wal = Wal::create(disk.clone(), &wal_dir(), b"m").unwrap();
        wal.set_segment_size_bytes(150);
        for i in 1..=20 {
            wal.save(None, &[entry(i, 1)]).unwrap();
        }
        wal.save_snapshot(&snapshot(15, 1)).unwrap();
        // Fail the directory sync after the first removal so it is not durable.
        sim.set_fail_syncs(true);
        assert!(wal.release_before(15).is_err());
        sim.set_fail_syncs(false);
        drop(wal);
        sim.crash(seed);
        let (_, contents) = reopen(&disk);
        assert_eq!(contents.snapshot, Some(snapshot(15, 1)));
        assert_eq!(contents.entries, entries(16..=20, 1));
    }
}

/// Builds a WAL whose last record is one entry, returning the disk, the last segment, where
/// its records end before and after that record, and the entries before it. The last
/// segment is preallocated to 200 bytes, past its records.
fn wal_with_last_record() -> (SimDisk, PathBuf, u64, u64, Vec<Entry>) {
    let (sim, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"meta").unwrap();
    wal.set_segment_size_bytes(200);
    let mut expected = Vec::new();
    for i in 1..=12 {
        let batch = vec![entry(i, 1)];
        wal.save(None, &batch).unwrap();
        expected.extend(batch);
    }
    let last_path = segment_paths(&*disk).pop().unwrap();
    let before_len = wal.file.len_bytes();
    wal.save(None, &[entry(13, 1)]).unwrap();
    let after_len = wal.file.len_bytes();
    // The last segment is preallocated past its records.
    assert_eq!(disk.read_file(&last_path).unwrap().len(), 200);
    assert_eq!(
        segment_paths(&*disk).pop().unwrap(),
        last_path,
        "the last record must not rotate"
    );
    assert!(segment_paths(&*disk).len() > 1);
    (sim, last_path, before_len, after_len, expected)
}

/// How a crash mid-append can leave the last record.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tear {
    /// The file ends where the write stopped: a segment that grows with each append (one
    /// written by an older detcd, or one whose zeros a torn-tail repair cut off).
    Cut,
    /// The bytes past where the write stopped are zeros up to the preallocated size.
    Zeroed,
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record() {
    let (sim, last_path, before_len, after_len, expected) = wal_with_last_record();
    let preallocated_len = sim.read_file(&last_path).unwrap().len() as u64;
    for tear in [Tear::Cut, Tear::Zeroed] {
        for cut in before_len..=after_len {
            let fork = sim.fork();
            let disk: Arc<dyn Disk> = Arc::new(fork.clone());
            let mut data = disk.read_file(&last_path).unwrap();
            match tear {
                Tear::Cut => data.truncate(cut as usize),
                Tear::Zeroed => data[cut as usize..].fill(0),
            }
            disk.write_atomic(&last_path, &data).unwrap();
            let whole = cut == after_len;
            // Nothing of the record, in a preallocated segment, is just the end of the
            // data: nothing is torn or cut.
            let clean_end = whole || (tear == Tear::Zeroed && cut == before_len);
            let (mut wal, contents) = reopen(&disk);
            let mut want = expected.clone();
            if whole {
                want.push(entry(13, 1));
            }
            assert_eq!(contents.entries, want, "{tear:?} at {cut}");
            let torn_bytes = data[before_len as usize..cut as usize]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i as u64 + 1);
            assert_eq!(
                contents.torn_tail_bytes,
                if whole { 0 } else { torn_bytes },
                "{tear:?} at {cut}"
            );
            // The torn bytes are gone (with the zeros after them); a clean end keeps the
            // segment as it was, preallocated or not.
            let len_after_open = disk.read_file(&last_path).unwrap().len() as u64;
            let want_len = match (clean_end, tear) {
                (true, Tear::Cut) => cut,
                (true, Tear::Zeroed) => preallocated_len,
                (false, _) => before_len,
            };
            assert_eq!(len_after_open, want_len, "{tear:?} at {cut}");
            // The WAL accepts new appends right after the last good record.
            let next = want.last().unwrap().index + 1;
            wal.save(Some(&hard_state(2, 1, next)), &[entry(next, 2)])
                .unwrap();
            drop(wal);
            let (_, contents) = reopen(&disk);
            want.push(entry(next, 2));
            assert_eq!(contents.entries, want, "{tear:?} at {cut}");
            assert_eq!(contents.hard_state, Some(hard_state(2, 1, next)));
            assert_eq!(contents.torn_tail_bytes, 0);
        }
    }
}

#[test]
fn zeros_after_a_record_end_the_data_and_after_a_zeroed_record_are_torn() {
    for zeros in [1usize, 8, 9, 10, 100, 5000] {
        for zero_last_bytes in [0usize, 1, 5, 20] {
            let (sim, last_path, before_len, after_len, expected) = wal_with_last_record();
            let disk: Arc<dyn Disk> = Arc::new(sim.clone());
            // Zero the end of the last record (its data pages never made it) and follow it
            // with zeros only (the size did, or the segment was preallocated).
            let mut data = disk.read_file(&last_path).unwrap();
            data.truncate(after_len as usize);
            data[after_len as usize - zero_last_bytes..].fill(0);
            data.extend(std::iter::repeat_n(0u8, zeros));
            disk.write_atomic(&last_path, &data).unwrap();
            let (_, contents) = reopen(&disk);
            let mut want = expected.clone();
            let what = format!("zeros {zeros}, zeroed {zero_last_bytes}");
            if zero_last_bytes == 0 {
                // A whole record followed by zeros: the end of the data, nothing cut.
                want.push(entry(13, 1));
                assert_eq!(contents.torn_tail_bytes, 0, "{what}");
                assert_eq!(disk.read_file(&last_path).unwrap(), data, "{what}");
            } else {
                // A zeroed record end followed by zeros: torn, cut off with the zeros.
                assert!(contents.torn_tail_bytes > 0, "{what}");
                assert!(
                    contents.torn_tail_bytes <= after_len - before_len - zero_last_bytes as u64,
                    "{what}: {}",
                    contents.torn_tail_bytes
                );
                assert_eq!(
                    disk.read_file(&last_path).unwrap().len() as u64,
                    before_len,
                    "{what}"
                );
            }
            assert_eq!(contents.entries, want, "{what}");
        }
    }
}

#[test]
fn zeros_after_the_records_of_an_earlier_segment_are_corrupt() {
    // Every segment but the last was cut to its last record before the next one was
    // created, so a zero tail there is damage (or a rotation that did not cut it).
    let (sim, _, _, _, _) = wal_with_last_record();
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    let paths = segment_paths(&*disk);
    let middle = &paths[paths.len() - 2];
    let mut data = disk.read_file(middle).unwrap();
    let len = data.len() as u64;
    assert_eq!(
        records_end(&data),
        len,
        "an earlier segment has no zero tail"
    );
    data.extend([0u8; 64]);
    disk.write_atomic(middle, &data).unwrap();
    let (path, offset, reason) = assert_corrupt(Wal::open(disk.clone(), &wal_dir()));
    assert_eq!((&path, offset), (middle, len));
    assert!(reason.contains("zero bytes"), "{reason}");
}

#[test]
fn flipped_byte_in_the_middle_is_corrupt() {
    let (sim, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"meta").unwrap();
    wal.set_segment_size_bytes(400);
    for i in 1..=20 {
        wal.save(Some(&hard_state(1, 1, i)), &[entry(i, 1)])
            .unwrap();
    }
    drop(wal);
    let paths = segment_paths(&*disk);
    assert!(paths.len() >= 3);
    for path in [&paths[0], &paths[1], paths.last().unwrap()] {
        let data = disk.read_file(path).unwrap();
        let is_last_segment = path == paths.last().unwrap();
        let mut record_starts = vec![0];
        while let Some(RawRecord { next_offset, .. }) =
            read_record(&data, *record_starts.last().unwrap(), is_last_segment).unwrap()
        {
            record_starts.push(next_offset);
        }
        // Only the last segment is left preallocated past its records.
        let end = record_starts.pop().unwrap();
        assert_eq!(end == data.len(), !is_last_segment, "{}", path.display());
        // Every byte of every record must be caught, except the last record of the last
        // segment, whose damage is indistinguishable from a torn write. A length field
        // grown past the end of the file in an earlier record is caught too, because whole
        // records follow it (etcd takes that for a torn tail and cuts the log there).
        let offsets: Vec<u64> = (0..data.len())
            .filter(|&offset| !is_last_segment || offset < *record_starts.last().unwrap())
            .map(|offset| offset as u64)
            .collect();
        assert!(offsets.len() > 100);
        for offset in offsets {
            let fork = sim.fork();
            fork.corrupt(path, offset).unwrap();
            let result = Wal::open(Arc::new(fork.clone()), &wal_dir());
            let (bad_path, bad_offset, reason) = assert_corrupt(result);
            assert_eq!(&bad_path, path);
            assert!(bad_offset <= offset, "{bad_offset} > {offset}: {reason}");
            // Nothing was truncated or otherwise "repaired".
            let mut damaged = sim.read_file(path).unwrap();
            damaged[offset as usize] ^= 0xff;
            assert_eq!(fork.read_file(path).unwrap(), damaged);
        }
    }
}

#[test]
fn oversized_or_inconsistent_records_are_corrupt() {
    // A huge length field is corruption even at the end of the last segment.
    let (sim, last_path, before_len, _, _) = wal_with_last_record();
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    for (i, byte) in (MAX_RECORD_PAYLOAD_BYTES + 1)
        .to_le_bytes()
        .iter()
        .enumerate()
    {
        let mut data = disk.read_file(&last_path).unwrap();
        data[before_len as usize + i] = *byte;
        disk.write_atomic(&last_path, &data).unwrap();
    }
    let (_, offset, reason) = assert_corrupt(Wal::open(disk.clone(), &wal_dir()));
    assert_eq!(offset, before_len);
    assert!(reason.contains("limit"), "{reason}");

    // A segment whose metadata differs from the others'.
    let (sim, last_path, _, _, _) = wal_with_last_record();
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    let mut data = disk.read_file(&last_path).unwrap();
    let mut other = Vec::new();
    encode_record(&mut other, RECORD_METADATA, b"atem").unwrap();
    data[..other.len()].copy_from_slice(&other);
    disk.write_atomic(&last_path, &data).unwrap();
    let (_, _, reason) = assert_corrupt(Wal::open(disk.clone(), &wal_dir()));
    assert!(reason.contains("metadata"), "{reason}");

    // A missing middle segment.
    let (sim, _, _, _, _) = wal_with_last_record();
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    assert!(segment_paths(&*disk).len() >= 3);
    disk.remove_file(&segment_paths(&*disk)[1]).unwrap();
    let (_, _, reason) = assert_corrupt(Wal::open(disk.clone(), &wal_dir()));
    assert!(reason.contains("missing"), "{reason}");

    // A missing first segment when no snapshot covers its entries.
    let (sim, _, _, _, _) = wal_with_last_record();
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    disk.remove_file(&segment_paths(&*disk)[0]).unwrap();
    let (_, _, reason) = assert_corrupt(Wal::open(disk.clone(), &wal_dir()));
    assert!(reason.contains("missing"), "{reason}");

    // A valid record of an unknown type, and an undecodable entry.
    for (record_type, payload) in [(9u8, &b"x"[..]), (RECORD_ENTRY, &[0xffu8, 0xff, 0xff][..])] {
        let (sim, last_path, _, after_len, _) = wal_with_last_record();
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let mut record = Vec::new();
        encode_record(&mut record, record_type, payload).unwrap();
        let mut file = disk.open_at(&last_path, after_len).unwrap();
        file.append(&record).unwrap();
        file.sync().unwrap();
        let (_, offset, _) = assert_corrupt(Wal::open(disk.clone(), &wal_dir()));
        assert_eq!(offset, after_len);
    }
}

#[test]
fn crash_keeps_synced_data_and_tears_unsynced_data() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..64 {
        let (sim, disk) = new_sim();
        let mut wal = Wal::create(disk.clone(), &wal_dir(), b"m").unwrap();
        wal.set_segment_size_bytes(500);
        wal.save(Some(&hard_state(1, 1, 0)), &entries(1..=10, 1))
            .unwrap();
        // This batch is written but its fsync fails, so it sits in the unsynced tail.
        sim.set_fail_syncs(true);
        let in_flight = entries(11..=14, 1);
        assert!(wal.save(Some(&hard_state(1, 1, 10)), &in_flight).is_err());
        sim.set_fail_syncs(false);
        // A failed write poisons the WAL until reopened.
        assert!(wal.save(None, &entries(15..=15, 1)).is_err());
        drop(wal);
        sim.crash(seed);
        let (mut wal, contents) = reopen(&disk);
        let kept = contents.entries.len() - 10;
        assert_eq!(
            contents.entries[..10],
            entries(1..=10, 1)[..],
            "seed {seed}"
        );
        assert_eq!(contents.entries[10..], in_flight[..kept], "seed {seed}");
        // The hard state comes after the entries, so it survives only with all of them.
        if contents.hard_state == Some(hard_state(1, 1, 10)) {
            assert_eq!(kept, in_flight.len());
        } else {
            assert_eq!(contents.hard_state, Some(hard_state(1, 1, 0)));
        }
        outcomes.insert(kept);
        let next = contents.entries.last().unwrap().index + 1;
        wal.save(None, &[entry(next, 2)]).unwrap();
        drop(wal);
        let (_, again) = reopen(&disk);
        assert_eq!(again.entries.len(), contents.entries.len() + 1);
    }
    assert!(
        outcomes.len() > 2,
        "crashes should keep varying amounts: {outcomes:?}"
    );
}

#[test]
fn commit_only_hard_states_are_written_without_an_fsync() {
    let mut commits_after_crash = std::collections::BTreeSet::new();
    for seed in 0..64 {
        let (sim, disk) = new_sim();
        let mut wal = Wal::create(disk.clone(), &wal_dir(), b"m").unwrap();
        wal.save(Some(&hard_state(2, 1, 0)), &entries(1..=3, 2))
            .unwrap();
        // Only the commit index moves: written, not synced, so a crash may lose it.
        wal.save_commit(&hard_state(2, 1, 3)).unwrap();
        assert_eq!(wal.hard_state(), Some(&hard_state(2, 1, 3)));
        drop(wal);
        sim.crash(seed);
        let (mut wal, contents) = reopen(&disk);
        assert_eq!(contents.entries, entries(1..=3, 2), "seed {seed}");
        let commit = contents.hard_state.as_ref().map(|hs| hs.commit);
        assert!(
            contents.hard_state == Some(hard_state(2, 1, 3))
                || contents.hard_state == Some(hard_state(2, 1, 0)),
            "seed {seed}: {:?}",
            contents.hard_state
        );
        commits_after_crash.insert(commit);
        // A new term or vote is synced even without entries.
        wal.save_commit(&hard_state(3, 2, 3)).unwrap();
        drop(wal);
        sim.crash(seed + 1_000);
        let (mut wal, contents) = reopen(&disk);
        assert_eq!(
            contents.hard_state,
            Some(hard_state(3, 2, 3)),
            "seed {seed}"
        );
        // A commit-only record becomes durable with the next synced write.
        wal.save_commit(&hard_state(3, 2, 3)).unwrap();
        wal.save(None, &entries(4..=4, 3)).unwrap();
        drop(wal);
        sim.crash(seed + 2_000);
        let (_, contents) = reopen(&disk);
        assert_eq!(
            contents.hard_state,
            Some(hard_state(3, 2, 3)),
            "seed {seed}"
        );
        assert_eq!(contents.entries.len(), 4);
    }
    assert_eq!(
        commits_after_crash,
        [Some(0), Some(3)].into_iter().collect(),
        "crashes should both keep and lose the unsynced commit index"
    );
}

#[test]
fn unsynced_commit_records_never_tear_an_earlier_segment() {
    for seed in 0..64 {
        let (sim, disk) = new_sim();
        let mut wal = Wal::create(disk.clone(), &wal_dir(), b"m").unwrap();
        // Small segments, so that commit-only records end segments and rotate them.
        wal.set_segment_size_bytes(150);
        let mut synced_commit = 0;
        for i in 1..=30u64 {
            wal.save(None, &entries(i..=i, 1)).unwrap();
            wal.save_commit(&hard_state(1, 1, i)).unwrap();
            if i % 7 == 0 {
                wal.save(Some(&hard_state(1, 1, i)), &[]).unwrap();
                synced_commit = i;
            }
        }
        assert!(wal.segment_count() > 3, "{wal:?}");
        drop(wal);
        sim.crash(seed);
        // Whatever was torn, it was at the end of the last segment: the WAL opens.
        let (_, contents) = reopen(&disk);
        assert_eq!(contents.entries, entries(1..=30, 1), "seed {seed}");
        let commit = contents.hard_state.map_or(0, |hs| hs.commit);
        assert!(commit >= synced_commit, "seed {seed}: commit {commit}");
    }
}

#[test]
fn failed_writes_write_nothing_and_poison() {
    let (sim, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"m").unwrap();
    wal.save(None, &entries(1..=2, 1)).unwrap();
    sim.set_fail_writes(true);
    assert!(wal.save(None, &entries(3..=3, 1)).is_err());
    sim.set_fail_writes(false);
    assert!(wal.save(None, &entries(3..=3, 1)).is_err());
    drop(wal);
    let (mut wal, contents) = reopen(&disk);
    assert_eq!(contents.entries, entries(1..=2, 1));
    wal.save(None, &entries(3..=3, 1)).unwrap();
}

#[test]
fn wal_on_real_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("member/wal");
    let disk: Arc<dyn Disk> = Arc::new(RealDisk::new());
    let mut wal = Wal::create(disk.clone(), &dir, b"real").unwrap();
    wal.set_segment_size_bytes(1024);
    for i in 1..=50 {
        wal.save(Some(&hard_state(1, 1, i - 1)), &[entry(i, 1)])
            .unwrap();
    }
    wal.save(Some(&hard_state(2, 1, 40)), &entries(45..=46, 2))
        .unwrap();
    wal.save_snapshot(&snapshot(30, 1)).unwrap();
    assert!(wal.segment_count() > 2);
    drop(wal);
    let (mut wal, contents) = Wal::open(disk.clone(), &dir).unwrap();
    let mut expected = entries(31..=44, 1);
    expected.extend(entries(45..=46, 2));
    assert_eq!(contents.entries, expected);
    assert_eq!(contents.snapshot, Some(snapshot(30, 1)));
    assert_eq!(contents.hard_state, Some(hard_state(2, 1, 40)));
    assert!(wal.release_before(30).unwrap() > 0);
    // Tear the tail of the last segment the way a crash mid-append would.
    wal.save(None, &entries(47..=47, 2)).unwrap();
    drop(wal);
    let last = list_segments(&*disk, &dir).unwrap().pop().unwrap().path;
    let len = records_end(&disk.read_file(&last).unwrap());
    disk.truncate(&last, len - 3).unwrap();
    let (_, contents) = Wal::open(disk.clone(), &dir).unwrap();
    assert_eq!(contents.entries, expected);
    assert!(contents.torn_tail_bytes > 0);
}

/// One step of the random WAL workload.
#[derive(Debug, Clone)]
enum Op {
    /// Append `count` entries starting `back` entries before the end (a conflict if > 0).
    Save {
        back: u64,
        count: u64,
        with_hard_state: bool,
    },
    /// Save a snapshot `back` entries before the end, and maybe release segments.
    Snapshot { back: u64, release: bool },
    /// Crash mid-save (the batch's fsync fails), then power loss with `seed`, then reopen.
    CrashInFlight { count: u64, seed: u64 },
    /// Power loss with `seed` between saves, then reopen.
    Crash { seed: u64 },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4u64, 1..5u64, any::<bool>())
            .prop_map(|(back, count, with_hard_state)| Op::Save { back, count, with_hard_state }),
        1 => (0..6u64, any::<bool>()).prop_map(|(back, release)| Op::Snapshot { back, release }),
        1 => (1..5u64, any::<u64>()).prop_map(|(count, seed)| Op::CrashInFlight { count, seed }),
        1 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
    ]
}

/// The acknowledged state the WAL must recover.
#[derive(Debug, Clone, Default)]
struct Model {
    snapshot: Option<SnapshotMetadata>,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
}

impl Model {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// The batch a save with these parameters writes.
    fn batch(&self, back: u64, count: u64, term: u64) -> Vec<Entry> {
        let first = (self.last_index() + 1)
            .saturating_sub(back)
            .max(self.snapshot_index() + 1);
        (first..first + count).map(|i| entry(i, term)).collect()
    }

    fn apply(&mut self, hard_state: Option<HardState>, batch: &[Entry]) {
        if let Some(first) = batch.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend_from_slice(batch);
        }
        if hard_state.is_some() {
            self.hard_state = hard_state;
        }
    }

    fn matches(&self, contents: &WalContents) -> bool {
        self.snapshot == contents.snapshot
            && self.hard_state == contents.hard_state
            && self.entries == contents.entries
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn everything_acknowledged_survives_random_crashes(
        ops in proptest::collection::vec(op_strategy(), 1..40),
        segment_size_bytes in 100..2000u64,
    ) {
        let (sim, disk) = new_sim();
        let mut wal = Wal::create(disk.clone(), &wal_dir(), b"prop").unwrap();
        wal.set_segment_size_bytes(segment_size_bytes);
        let mut model = Model::default();
        let mut term = 1;
        for op in ops {
            term += 1;
            match op {
                Op::Save { back, count, with_hard_state } => {
                    let batch = model.batch(back, count, term);
                    let hs = with_hard_state.then(|| hard_state(term, 1, model.last_index()));
                    wal.save(hs.as_ref(), &batch).unwrap();
                    model.apply(hs, &batch);
                }
                Op::Snapshot { back, release } => {
                    let index = model.last_index().saturating_sub(back).max(model.snapshot_index());
                    let snap = snapshot(index, term);
                    wal.save_snapshot(&snap).unwrap();
                    let covered = model.entries.partition_point(|e| e.index <= index);
                    model.entries.drain(..covered);
                    model.snapshot = Some(snap);
                    if release {
                        wal.release_before(index).unwrap();
                    }
                }
                Op::CrashInFlight { count, seed } => {
                    let batch = model.batch(0, count, term);
                    let hs = hard_state(term, 2, model.last_index());
                    sim.set_fail_syncs(true);
                    prop_assert!(wal.save(Some(&hs), &batch).is_err());
                    sim.set_fail_syncs(false);
                    drop(wal);
                    sim.crash(seed);
                    let (reopened, contents) = reopen(&disk);
                    // The in-flight batch may survive in part: some prefix of its entries,
                    // and the hard state only after all of them.
                    let mut candidates = Vec::new();
                    for kept in 0..=batch.len() {
                        let mut candidate = model.clone();
                        candidate.apply(None, &batch[..kept]);
                        candidates.push(candidate);
                    }
                    let mut whole = model.clone();
                    whole.apply(Some(hs), &batch);
                    candidates.push(whole);
                    let recovered = candidates.into_iter().find(|c| c.matches(&contents));
                    prop_assert!(
                        recovered.is_some(),
                        "recovered {:?}, model {:?}",
                        contents,
                        model
                    );
                    model = recovered.unwrap();
                    wal = reopened;
                    wal.set_segment_size_bytes(segment_size_bytes);
                }
                Op::Crash { seed } => {
                    drop(wal);
                    sim.crash(seed);
                    let (reopened, contents) = reopen(&disk);
                    prop_assert!(
                        model.matches(&contents),
                        "recovered {:?}, model {:?}",
                        contents,
                        model
                    );
                    wal = reopened;
                    wal.set_segment_size_bytes(segment_size_bytes);
                }
            }
            prop_assert_eq!(wal.last_index(), model.last_index());
        }
        drop(wal);
        let (_, contents) = reopen(&disk);
        prop_assert!(model.matches(&contents), "recovered {:?}, model {:?}", contents, model);
    }
}

/// `read_metadata` reads only the first record of the first segment: it finds the
/// metadata of a WAL of several segments, leaves a torn tail for `open` to repair, and
/// refuses a first segment that does not start with metadata.
#[test]
fn read_metadata_reads_only_the_first_record() {
    let (_sim, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"identity").unwrap();
    wal.set_segment_size_bytes(256);
    for i in 1..=40 {
        wal.save(Some(&hard_state(1, 1, i)), &entries(i..=i, 1))
            .unwrap();
    }
    drop(wal);
    assert!(segment_paths(disk.as_ref()).len() > 2, "several segments");
    let last = segment_paths(disk.as_ref()).pop().unwrap();
    let before = disk.read_file(&last).unwrap();
    // The first bytes of a record, as a crash mid-append leaves them.
    let mut record = Vec::new();
    encode_message(&mut record, RECORD_ENTRY, &entry(41, 1)).unwrap();
    let mut torn = disk.open_at(&last, records_end(&before)).unwrap();
    torn.append(&record[..5]).unwrap();
    torn.sync().unwrap();
    let with_torn_tail = disk.read_file(&last).unwrap();
    assert_ne!(with_torn_tail, before);
    assert_eq!(
        Wal::read_metadata(disk.as_ref(), &wal_dir()).unwrap(),
        b"identity"
    );
    assert_eq!(
        disk.read_file(&last).unwrap(),
        with_torn_tail,
        "nothing repaired"
    );
    let (_, contents) = reopen(&disk);
    assert_eq!(contents.metadata, b"identity");

    let (_sim, empty) = new_sim();
    assert!(Wal::read_metadata(empty.as_ref(), &wal_dir()).is_err());
}

mod preallocation;

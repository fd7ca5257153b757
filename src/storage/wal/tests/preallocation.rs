//! Tests for preallocated segments: what each new step of writing them leaves after a
//! crash, WALs written before segments were preallocated, and the real file system.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A disk that fails every mutating operation from the `fail_at`-th on (counting from 0),
/// as if the process died just before it. With [`SimDisk::crash`] deciding afterwards what
/// of the unsynced data survives, failing each step in turn crashes the WAL between every
/// two of its disk operations.
#[derive(Debug, Clone)]
struct DyingDisk {
    inner: SimDisk,
    fail_at: usize,
    /// The steps done so far, by name.
    steps: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
}

impl DyingDisk {
    fn new(inner: SimDisk, fail_at: usize) -> DyingDisk {
        DyingDisk {
            inner,
            fail_at,
            steps: Arc::default(),
            count: Arc::default(),
        }
    }

    fn step(&self, what: String) -> io::Result<()> {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_at {
            return Err(io::Error::other(format!("died before step {n}: {what}")));
        }
        self.steps.lock().unwrap().push(what);
        Ok(())
    }

    fn steps(&self) -> Vec<String> {
        self.steps.lock().unwrap().clone()
    }
}

fn name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

impl Disk for DyingDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.step(format!("create_dir_all {}", dir.display()))?;
        self.inner.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_file(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(DyingFile {
            inner: self.inner.open_append(path)?,
            disk: self.clone(),
            name: name(path),
        }))
    }

    fn open_at(&self, path: &Path, data_len_bytes: u64) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(DyingFile {
            inner: self.inner.open_at(path, data_len_bytes)?,
            disk: self.clone(),
            name: name(path),
        }))
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.step(format!("write_atomic {}", name(path)))?;
        self.inner.write_atomic(path, data)
    }

    fn create_preallocated(&self, path: &Path, data: &[u8], len_bytes: u64) -> io::Result<()> {
        self.step(format!("create_preallocated {} {len_bytes}", name(path)))?;
        self.inner.create_preallocated(path, data, len_bytes)
    }

    fn truncate(&self, path: &Path, len_bytes: u64) -> io::Result<()> {
        self.step(format!("truncate {} {len_bytes}", name(path)))?;
        self.inner.truncate(path, len_bytes)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.step(format!("remove_file {}", name(path)))?;
        self.inner.remove_file(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step("sync_dir".to_string())?;
        self.inner.sync_dir(dir)
    }
}

/// A file of a [`DyingDisk`].
struct DyingFile {
    inner: Box<dyn DiskFile>,
    disk: DyingDisk,
    name: String,
}

impl DiskFile for DyingFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.disk
            .step(format!("append {} {} bytes", self.name, data.len()))?;
        self.inner.append(data)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.disk.step(format!("sync {}", self.name))?;
        self.inner.sync()
    }

    fn len_bytes(&self) -> u64 {
        self.inner.len_bytes()
    }
}

/// One step of the scripted workload.
#[derive(Debug, Clone)]
enum Step {
    Save(Option<HardState>, Vec<Entry>),
    /// A commit-only hard state ([`Wal::save_commit`]), not synced.
    Commit(HardState),
    /// A snapshot, then releasing the segments it covers.
    Snapshot(SnapshotMetadata),
}

const SEGMENT_SIZE_BYTES: u64 = 256;

/// The crashes tried at each point, each tearing the unsynced data its own way.
const SEEDS: u64 = 8;

/// Saves and commits across about ten rotations, with a snapshot and a release halfway.
fn script() -> Vec<Step> {
    let mut steps = Vec::new();
    let mut last = 0;
    for i in 1..=24u64 {
        let term = 1 + i / 8;
        steps.push(Step::Save(
            Some(hard_state(term, 1, last)),
            entries(last + 1..=last + 2, term),
        ));
        last += 2;
        if i % 3 == 0 {
            steps.push(Step::Commit(hard_state(term, 1, last)));
        }
        if i % 5 == 0 {
            // A save without a hard state makes the commit records before it durable.
            steps.push(Step::Save(None, vec![entry(last + 1, term)]));
            last += 1;
        }
        if i == 12 {
            steps.push(Step::Snapshot(snapshot(14, term)));
        }
    }
    steps
}

/// What the WAL has acknowledged, and what a crash may leave of the step in flight.
#[derive(Debug, Clone, Default)]
struct Acked {
    snapshot: Option<SnapshotMetadata>,
    entries: Vec<Entry>,
    /// The hard states a crash may leave: the last synced one and the commit-only ones
    /// saved after it, which may be lost.
    hard_states: Vec<Option<HardState>>,
}

impl Acked {
    fn new() -> Acked {
        Acked {
            hard_states: vec![None],
            ..Acked::default()
        }
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Save(None, batch) if batch.is_empty() => {}
            Step::Save(hard_state, batch) => {
                if let Some(first) = batch.first() {
                    self.entries.retain(|e| e.index < first.index);
                    self.entries.extend_from_slice(batch);
                }
                // The save's sync made everything written before it durable too.
                let latest = hard_state
                    .clone()
                    .or_else(|| self.hard_states.pop().unwrap());
                self.hard_states = vec![latest];
            }
            Step::Commit(hard_state) => self.hard_states.push(Some(hard_state.clone())),
            Step::Snapshot(snapshot) => {
                self.entries.retain(|e| e.index > snapshot.index);
                self.snapshot = Some(snapshot.clone());
                let latest = self.hard_states.pop().unwrap();
                self.hard_states = vec![latest];
            }
        }
    }

    /// The states a crash during `step` may leave, with the hard states each allows.
    fn candidates(&self, step: &Step) -> Vec<Acked> {
        let mut candidates = vec![self.clone()];
        match step {
            Step::Save(hard_state, batch) => {
                for kept in 1..=batch.len() {
                    let mut partial = self.clone();
                    partial.apply(&Step::Save(None, batch[..kept].to_vec()));
                    // Without the batch's own hard state (written after its entries), any
                    // commit-only record before the batch may have survived or not.
                    partial.hard_states = self.hard_states.clone();
                    candidates.push(partial);
                }
                let mut whole = self.clone();
                whole.apply(step);
                if hard_state.is_none() {
                    whole.hard_states = self.hard_states.clone();
                }
                candidates.push(whole);
            }
            Step::Commit(_) | Step::Snapshot(_) => {
                let mut done = self.clone();
                done.apply(step);
                done.hard_states = self.hard_states.clone();
                if let Step::Commit(hard_state) = step {
                    done.hard_states.push(Some(hard_state.clone()));
                }
                candidates.push(done);
            }
        }
        candidates
    }

    fn allows(&self, contents: &WalContents) -> bool {
        self.snapshot == contents.snapshot
            && self.entries == contents.entries
            && self.hard_states.contains(&contents.hard_state)
    }
}

/// Runs `steps` on a WAL over `disk` until one fails, returning what was acknowledged
/// and the step in flight when the disk died (`None` if none did).
fn run(disk: Arc<dyn Disk>, steps: &[Step]) -> (Acked, Option<Step>) {
    let mut acked = Acked::new();
    let Ok(mut wal) = Wal::create(disk, &wal_dir(), b"dying") else {
        return (acked, None);
    };
    wal.set_segment_size_bytes(SEGMENT_SIZE_BYTES);
    for step in steps {
        let result = match step {
            Step::Save(hard_state, batch) => wal.save(hard_state.as_ref(), batch),
            Step::Commit(hard_state) => wal.save_commit(hard_state),
            Step::Snapshot(snapshot) => wal
                .save_snapshot(snapshot)
                .and_then(|()| wal.release_before(snapshot.index).map(|_| ())),
        };
        if result.is_err() {
            return (acked, Some(step.clone()));
        }
        acked.apply(step);
    }
    (acked, None)
}

/// Checks the shape a WAL's segments must have after any crash and recovery: every
/// segment but the last ends exactly at its last record, and no temporary file is left.
fn assert_segments_well_formed(disk: &dyn Disk, what: &str) {
    let paths = segment_paths(disk);
    for path in &paths[..paths.len() - 1] {
        let data = disk.read_file(path).unwrap();
        assert_eq!(
            records_end(&data),
            data.len() as u64,
            "{what}: {} has a zero tail",
            path.display()
        );
    }
    let names = disk.list_dir(&wal_dir()).unwrap();
    assert!(
        names.iter().all(|n| n.ends_with(".wal")),
        "{what}: {names:?}"
    );
}

#[test]
fn a_crash_between_any_two_disk_operations_loses_nothing_acknowledged() {
    let steps = script();
    // A run that never dies counts the disk operations and checks the script rotates.
    let counting = DyingDisk::new(SimDisk::new(), usize::MAX);
    let (acked, in_flight) = run(Arc::new(counting.clone()), &steps);
    assert!(in_flight.is_none());
    assert_eq!(acked.entries.first().map(|e| e.index), Some(15));
    let all_steps = counting.steps();
    let segments_created = all_steps
        .iter()
        .filter(|s| s.starts_with("create_preallocated"))
        .count();
    assert!(segments_created > 8, "{all_steps:#?}");
    let mut outcomes = std::collections::BTreeSet::new();
    for fail_at in 0..=all_steps.len() {
        for seed in 0..SEEDS {
            let sim = SimDisk::new();
            let dying = DyingDisk::new(sim.clone(), fail_at);
            let (acked, in_flight) = run(Arc::new(dying.clone()), &steps);
            sim.crash(seed + 1000 * fail_at as u64);
            let what = format!(
                "crash before step {fail_at} ({:?}), seed {seed}",
                all_steps.get(fail_at)
            );
            let disk: Arc<dyn Disk> = Arc::new(sim.clone());
            if !Wal::exists(&*disk, &wal_dir()) {
                // Only a crash while the WAL was created can leave none; the member then
                // creates it again.
                assert!(fail_at <= 1, "{what}");
                continue;
            }
            let (mut wal, contents) = Wal::open(disk.clone(), &wal_dir())
                .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
            let candidates = match &in_flight {
                Some(step) => acked.candidates(step),
                None => vec![acked.clone()],
            };
            assert!(
                candidates.iter().any(|c| c.allows(&contents)),
                "{what}: recovered {contents:?}, acknowledged {acked:?}, in flight {in_flight:?}"
            );
            assert_segments_well_formed(&*disk, &what);
            outcomes.insert(contents.torn_tail_bytes > 0);
            // Appends continue after the last record recovered, across a rotation.
            wal.set_segment_size_bytes(SEGMENT_SIZE_BYTES);
            let mut want = contents.entries.clone();
            let last_index = wal.last_index();
            for index in last_index + 1..=last_index + 8 {
                wal.save(Some(&hard_state(9, 1, index)), &[entry(index, 9)])
                    .unwrap_or_else(|e| panic!("{what}: save after reopen failed: {e}"));
                want.push(entry(index, 9));
            }
            drop(wal);
            let (_, again) = reopen(&disk);
            assert_eq!(again.entries, want, "{what}");
            assert_eq!(again.hard_state, Some(hard_state(9, 1, last_index + 8)));
            assert_eq!(again.torn_tail_bytes, 0, "{what}");
            assert_segments_well_formed(&*disk, &what);
        }
    }
    assert_eq!(
        outcomes.len(),
        2,
        "crashes should both tear records and lose them whole"
    );
    println!(
        "crashed before each of {} disk operations ({segments_created} segments created), \
         {SEEDS} seeds each",
        all_steps.len() + 1
    );
}

#[test]
fn new_segments_are_preallocated_and_cut_to_their_records_when_full() {
    let (sim, disk) = new_sim();
    let mut wal = Wal::create(disk.clone(), &wal_dir(), b"m").unwrap();
    let first = segment_paths(&*disk).pop().unwrap();
    assert_eq!(
        disk.read_file(&first).unwrap().len() as u64,
        DEFAULT_SEGMENT_SIZE_BYTES
    );
    wal.set_segment_size_bytes(300);
    for i in 1..=30 {
        wal.save(Some(&hard_state(1, 1, i - 1)), &[entry(i, 1)])
            .unwrap();
        // Each save lands inside the preallocated space: nothing of it is left unsynced.
        let last = segment_paths(&*disk).pop().unwrap();
        assert_eq!(sim.unsynced_len_bytes(&last), 0);
        let data = disk.read_file(&last).unwrap();
        assert_eq!(records_end(&data), wal.file.len_bytes());
        if wal.segment_count() > 1 && wal.file.len_bytes() < 300 {
            assert_eq!(
                data.len(),
                300,
                "the last segment keeps its preallocated size"
            );
        }
    }
    assert!(wal.segment_count() > 4);
    assert_segments_well_formed(&*disk, "after rotations");
    let lens: Vec<usize> = segment_paths(&*disk)
        .iter()
        .map(|p| disk.read_file(p).unwrap().len())
        .collect();
    drop(wal);
    // A clean reopen cuts nothing: the zeros are the end of the data, not a torn tail.
    let (mut wal, contents) = reopen(&disk);
    assert_eq!(contents.entries, entries(1..=30, 1));
    assert_eq!(contents.torn_tail_bytes, 0);
    let lens_after: Vec<usize> = segment_paths(&*disk)
        .iter()
        .map(|p| disk.read_file(p).unwrap().len())
        .collect();
    assert_eq!(lens_after, lens);
    // Appends continue at the end of the records, over the zeros.
    let last = segment_paths(&*disk).pop().unwrap();
    let end = records_end(&disk.read_file(&last).unwrap());
    wal.save(None, &[entry(31, 1)]).unwrap();
    let data = disk.read_file(&last).unwrap();
    assert!(records_end(&data) > end);
    assert_eq!(data.len(), lens[lens.len() - 1]);
    drop(wal);
    let (_, contents) = reopen(&disk);
    assert_eq!(contents.entries, entries(1..=31, 1));
}

/// Writes a WAL the way detcd did before segments were preallocated: each segment created
/// holding exactly its records.
fn write_old_format_wal(disk: &dyn Disk) -> Vec<Entry> {
    disk.create_dir_all(&wal_dir()).unwrap();
    let mut first = Vec::new();
    encode_record(&mut first, RECORD_METADATA, b"old").unwrap();
    for i in 1..=5 {
        encode_message(&mut first, RECORD_ENTRY, &entry(i, 1)).unwrap();
    }
    encode_message(&mut first, RECORD_HARD_STATE, &hard_state(1, 1, 5)).unwrap();
    disk.write_atomic(&wal_dir().join(segment_name(0, 0)), &first)
        .unwrap();
    let mut second = Vec::new();
    encode_record(&mut second, RECORD_METADATA, b"old").unwrap();
    encode_message(&mut second, RECORD_HARD_STATE, &hard_state(1, 1, 5)).unwrap();
    for i in 6..=8 {
        encode_message(&mut second, RECORD_ENTRY, &entry(i, 1)).unwrap();
    }
    disk.write_atomic(&wal_dir().join(segment_name(1, 6)), &second)
        .unwrap();
    entries(1..=8, 1)
}

#[test]
fn a_wal_without_preallocated_segments_opens_appends_and_rotates() {
    let (_, disk) = new_sim();
    let mut want = write_old_format_wal(&*disk);
    let paths = segment_paths(&*disk);
    let last_len = disk.read_file(&paths[1]).unwrap().len() as u64;
    let (mut wal, contents) = reopen(&disk);
    assert_eq!(contents.metadata, b"old");
    assert_eq!(contents.entries, want);
    assert_eq!(contents.hard_state, Some(hard_state(1, 1, 5)));
    assert_eq!(contents.torn_tail_bytes, 0);
    // Appends grow the old segment.
    wal.save(Some(&hard_state(1, 1, 8)), &[entry(9, 1)])
        .unwrap();
    want.push(entry(9, 1));
    let data = disk.read_file(&paths[1]).unwrap();
    assert!(data.len() as u64 > last_len);
    assert_eq!(records_end(&data), data.len() as u64);
    drop(wal);
    let (mut wal, contents) = reopen(&disk);
    assert_eq!(contents.entries, want);
    // Its first rotation leaves it as it is and starts a preallocated segment.
    wal.set_segment_size_bytes(150);
    let old = disk.read_file(&paths[1]).unwrap();
    while wal.segment_count() < 3 {
        let next = entry(want.len() as u64 + 1, 1);
        wal.save(None, std::slice::from_ref(&next)).unwrap();
        want.push(next);
    }
    let paths = segment_paths(&*disk);
    assert_segments_well_formed(&*disk, "after rotating an old WAL");
    let grown = disk.read_file(&paths[1]).unwrap();
    assert_eq!(grown[..old.len()], old[..]);
    assert_eq!(disk.read_file(&paths[2]).unwrap().len(), 150);
    drop(wal);
    let (_, contents) = reopen(&disk);
    assert_eq!(contents.entries, want);

    // A torn tail of an old segment is cut off as before.
    let (_, disk) = new_sim();
    let want = write_old_format_wal(&*disk);
    let last = segment_paths(&*disk).pop().unwrap();
    let len = disk.read_file(&last).unwrap().len() as u64;
    disk.truncate(&last, len - 4).unwrap();
    let (mut wal, contents) = reopen(&disk);
    assert_eq!(contents.entries, want[..7]);
    assert_eq!(
        contents.torn_tail_bytes,
        len - 4 - records_end(&disk.read_file(&last).unwrap())
    );
    wal.save(None, &[entry(8, 2)]).unwrap();
    drop(wal);
    let (_, contents) = reopen(&disk);
    assert_eq!(contents.entries.last(), Some(&entry(8, 2)));
}

/// Saves one entry at a time until the WAL has two segments, returning what was saved.
fn save_until_the_first_rotation(disk: Arc<dyn Disk>) -> io::Result<Vec<Entry>> {
    let mut wal = Wal::create(disk, &wal_dir(), b"m")?;
    wal.set_segment_size_bytes(200);
    let mut saved = Vec::new();
    while wal.segment_count() < 2 {
        let next = entry(saved.len() as u64 + 1, 1);
        if let Err(e) = wal.save(None, std::slice::from_ref(&next)) {
            // A failed rotation poisons the WAL, even though the batch was synced first.
            let after = entry(next.index + 1, 1);
            let poisoned = wal.save(None, &[after]).unwrap_err();
            assert!(poisoned.to_string().contains("reopen"), "{poisoned}");
            return Err(e);
        }
        saved.push(next);
    }
    Ok(saved)
}

#[test]
fn a_failed_rotation_poisons_the_wal_and_a_reopen_goes_on() {
    // The steps of a run that does not fail: the rotation is a truncate and a creation.
    let counting = DyingDisk::new(SimDisk::new(), usize::MAX);
    let mut wal = Wal::create(Arc::new(counting.clone()), &wal_dir(), b"m").unwrap();
    wal.set_segment_size_bytes(200);
    let mut saved = 0;
    while wal.segment_count() < 2 {
        saved += 1;
        wal.save(None, &[entry(saved, 1)]).unwrap();
    }
    let steps = counting.steps();
    let truncate = steps
        .iter()
        .position(|s| s.starts_with("truncate"))
        .unwrap();
    assert!(
        steps[truncate + 1].starts_with("create_preallocated"),
        "{steps:?}"
    );
    assert_eq!(steps.len(), truncate + 2, "{steps:?}");
    for fail_at in [truncate, truncate + 1] {
        let sim = SimDisk::new();
        let dying = DyingDisk::new(sim.clone(), fail_at);
        let err = save_until_the_first_rotation(Arc::new(dying)).unwrap_err();
        assert!(err.to_string().contains("died"), "{err}");
        // Every batch was synced before the rotation failed; the reopened WAL has one
        // segment and rotates as usual.
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let (mut wal, contents) = reopen(&disk);
        assert_eq!(contents.entries, entries(1..=saved, 1));
        assert_eq!(wal.segment_count(), 1);
        wal.set_segment_size_bytes(200);
        wal.save(None, &[entry(saved + 1, 1)]).unwrap();
        assert_eq!(wal.segment_count(), 2);
        assert_segments_well_formed(&*disk, "after a failed rotation");
    }
}

#[test]
fn preallocated_segments_on_a_real_disk() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("member/wal");
    let disk: Arc<dyn Disk> = Arc::new(RealDisk::new());
    let mut wal = Wal::create(disk.clone(), &dir, b"real").unwrap();
    let on_disk = |path: &Path| std::fs::metadata(path).unwrap();
    let first = list_segments(&*disk, &dir).unwrap()[0].path.clone();
    let meta = on_disk(&first);
    assert_eq!(meta.len(), DEFAULT_SEGMENT_SIZE_BYTES);
    // fallocate reserved the blocks (a file extended with set_len alone would be sparse).
    assert!(
        meta.blocks() * 512 >= DEFAULT_SEGMENT_SIZE_BYTES,
        "{} blocks",
        meta.blocks()
    );
    wal.set_segment_size_bytes(4096);
    let mut want = Vec::new();
    for i in 1..=400 {
        wal.save(Some(&hard_state(1, 1, i - 1)), &[entry(i, 1)])
            .unwrap();
        want.push(entry(i, 1));
    }
    let segments = list_segments(&*disk, &dir).unwrap();
    assert!(segments.len() > 2, "{segments:?}");
    for segment in &segments[..segments.len() - 1] {
        let data = std::fs::read(&segment.path).unwrap();
        assert_eq!(records_end(&data), data.len() as u64, "{segment:?}");
    }
    let last = &segments.last().unwrap().path;
    assert_eq!(on_disk(last).len(), 4096);
    assert!(on_disk(last).blocks() * 512 >= 4096);
    drop(wal);
    // A temporary file a crash left while creating a segment is removed; others stay.
    let stray = dir.join(format!("{}.tmp", segment_name(9, 999)));
    std::fs::write(&stray, [0u8; 100]).unwrap();
    std::fs::write(dir.join("notes.tmp"), b"keep").unwrap();
    let (mut wal, contents) = Wal::open(disk.clone(), &dir).unwrap();
    assert_eq!(contents.entries, want);
    assert_eq!(contents.torn_tail_bytes, 0);
    assert!(!stray.exists());
    assert!(dir.join("notes.tmp").exists());
    // Appends continue at the end of the records, inside the preallocated size.
    wal.save(None, &[entry(401, 1)]).unwrap();
    want.push(entry(401, 1));
    assert_eq!(on_disk(last).len(), 4096);
    drop(wal);
    let (_, contents) = Wal::open(disk.clone(), &dir).unwrap();
    assert_eq!(contents.entries, want);
}

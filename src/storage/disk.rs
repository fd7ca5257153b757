//! The `Disk` seam: the few file-system operations the write-ahead log and small metadata
//! files need, with a real implementation ([`RealDisk`]) and an in-memory one ([`SimDisk`])
//! that models what survives a power loss, so simulation tests can crash nodes honestly.
//!
//! Durability contract shared by both implementations (callers must rely on nothing more):
//! - Bytes appended through a [`DiskFile`] are durable only once [`DiskFile::sync`] returns Ok.
//! - A newly created file's directory entry is durable only once [`Disk::sync_dir`] has been
//!   called on its parent directory (or it was written by [`Disk::write_atomic`] or
//!   [`Disk::create_preallocated`]).
//! - [`Disk::write_atomic`], [`Disk::create_preallocated`] and [`Disk::truncate`] are
//!   durable when they return Ok, including the file's size.
//! - A file's size, once durable, survives a crash even where the bytes written inside it
//!   do not: a preallocated file whose unsynced writes are lost reads as zeros there.
//! - [`Disk::remove_file`] is durable only once [`Disk::sync_dir`] has been called on the parent.
//! - [`Disk::create_dir_all`] is durable when it returns Ok.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The file-system operations detcd's durable storage needs. Paths are used as given;
/// implementations do not canonicalise them, so callers should build paths consistently
/// (always `dir.join(name)` from the same `dir`).
pub trait Disk: Send + Sync + fmt::Debug {
    /// Creates `dir` and all missing parents; durable on return.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Returns the names (not paths) of the entries directly inside `dir`, sorted.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Reads the whole file at `path`.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens `path` for appending, creating it empty if it does not exist. A created file's
    /// directory entry is durable only after [`Disk::sync_dir`] on its parent.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Opens the existing file at `path` for writing at `data_len_bytes`, the end of its
    /// data, which may lie inside a preallocated tail (see [`Disk::create_preallocated`]):
    /// appends go there, overwriting the tail's zeros, and [`DiskFile::len_bytes`] starts
    /// there. Every byte of the file from `data_len_bytes` on must be zero (callers cut
    /// anything else off first with [`Disk::truncate`]); an offset past the end of the
    /// file is `InvalidInput`.
    fn open_at(&self, path: &Path, data_len_bytes: u64) -> io::Result<Box<dyn DiskFile>>;
    /// Replaces the contents of `path` with `data` atomically and durably: after a crash
    /// the file holds either its old contents (or is absent) or exactly `data`.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Like [`Disk::write_atomic`], but the file is preallocated to `len_bytes`: `data` is
    /// followed by zero bytes up to that size, whose blocks are reserved and whose size is
    /// durable, so that syncing a later append inside it ([`Disk::open_at`]) need not
    /// persist a new file size or allocate blocks. A `len_bytes` at or below `data.len()`
    /// adds nothing. Where the file system cannot reserve blocks, the file is still
    /// extended to `len_bytes`, as a sparse tail that reads as zeros.
    fn create_preallocated(&self, path: &Path, data: &[u8], len_bytes: u64) -> io::Result<()>;
    /// Sets the size of the file at `path` to `len_bytes`, cutting off what lies past it
    /// (or extending it with zeros); durable on return.
    fn truncate(&self, path: &Path, len_bytes: u64) -> io::Result<()>;
    /// Removes the file at `path`; durable only after [`Disk::sync_dir`] on its parent.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Makes the creation and removal of entries directly inside `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether syncs reach the device. False only for a real disk opened with
    /// `--unsafe-no-fsync`, whose syncs return at once: callers then neither time them
    /// nor count them, as etcd does not.
    fn syncs(&self) -> bool {
        true
    }
    /// The time the syncs done since the last call would have taken on this disk, for a
    /// simulated disk to charge to simulated time (the caller sleeps it). A real disk
    /// answers zero: its time was really spent.
    fn take_io_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// A file opened for appending by [`Disk::open_append`] or [`Disk::open_at`].
pub trait DiskFile: Send {
    /// Writes `data` at the end of the file's data (not yet durable): at the end of the
    /// file, or inside its preallocated tail for a file opened with [`Disk::open_at`].
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes every byte appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// The length of the file's data in bytes, where the next append goes, including
    /// bytes not yet synced; the zeros of a preallocated tail after it do not count.
    fn len_bytes(&self) -> u64;
}

/// The temporary path [`Disk::write_atomic`] writes before renaming over `path`.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The real file system through `std::fs`, with real fsync/fdatasync unless made with
/// [`RealDisk::without_fsync`].
#[derive(Debug, Clone, Copy)]
pub struct RealDisk {
    /// Whether syncs are done; false only with `--unsafe-no-fsync`.
    fsync: bool,
}

impl Default for RealDisk {
    fn default() -> Self {
        RealDisk::new()
    }
}

impl RealDisk {
    /// Returns the real disk, syncing as the [`Disk`] contract says.
    pub fn new() -> RealDisk {
        RealDisk { fsync: true }
    }

    /// Returns the real disk with every sync skipped (`--unsafe-no-fsync`): writes reach
    /// the operating system's page cache only, so a process crash loses nothing but a
    /// power loss or kernel crash may lose acknowledged writes. For tests and throwaway
    /// clusters, as etcd's flag is.
    pub fn without_fsync() -> RealDisk {
        RealDisk { fsync: false }
    }

    fn sync_all(&self, file: &fs::File) -> io::Result<()> {
        if self.fsync {
            file.sync_all()
        } else {
            Ok(())
        }
    }
}

/// Reserves the blocks of `file` up to `len_bytes` and extends its size to it with zeros
/// (`fallocate` mode 0, as etcd's `fileutil.Preallocate` with `extendFile`). Where the file
/// system does not support that (`EOPNOTSUPP`, say), the size is extended alone, as etcd
/// falls back to: the tail is sparse, so a later sync may still allocate blocks, but the
/// size it need not persist is already durable.
fn preallocate(file: &fs::File, len_bytes: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{fallocate, FallocateFlags};
        use rustix::io::Errno;
        loop {
            match fallocate(file, FallocateFlags::empty(), 0, len_bytes) {
                Ok(()) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e @ (Errno::OPNOTSUPP | Errno::NOSYS)) => {
                    tracing::debug!(
                        error = %e,
                        "fallocate is not supported here; extending the file without \
                         reserving its blocks"
                    );
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if file.metadata()?.len() < len_bytes {
        file.set_len(len_bytes)?;
    }
    Ok(())
}

/// A file on the real file system opened for appending.
struct RealFile {
    file: fs::File,
    /// The end of the file's data, where the next append is written (`pwrite`): the end of
    /// the file, or a point inside its preallocated tail.
    len_bytes: u64,
    /// Whether [`DiskFile::sync`] reaches the device.
    fsync: bool,
}

impl DiskFile for RealFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.len_bytes)?;
        self.len_bytes += data.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if !self.fsync {
            return Ok(());
        }
        // fdatasync also persists the file size when an append grew it, which is all the
        // metadata an append changes; inside a preallocated tail there is no new size or
        // block to persist, which is what makes it cheaper there.
        self.file.sync_data()
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
}

impl Disk for RealDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        // Sync the new directory and its parent so the directory itself survives a crash.
        self.sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.sync_dir(parent)?;
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        // Not `O_APPEND`: appends are positioned writes at the end of the data, and Linux
        // ignores the position of a `pwrite` to a file opened with `O_APPEND`.
        let file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        let len_bytes = file.metadata()?.len();
        Ok(Box::new(RealFile {
            file,
            len_bytes,
            fsync: self.fsync,
        }))
    }

    fn open_at(&self, path: &Path, data_len_bytes: u64) -> io::Result<Box<dyn DiskFile>> {
        let file = fs::OpenOptions::new().write(true).open(path)?;
        let file_len_bytes = file.metadata()?.len();
        if data_len_bytes > file_len_bytes {
            return Err(past_the_end(path, data_len_bytes, file_len_bytes));
        }
        Ok(Box::new(RealFile {
            file,
            len_bytes: data_len_bytes,
            fsync: self.fsync,
        }))
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.create_preallocated(path, data, 0)
    }

    fn create_preallocated(&self, path: &Path, data: &[u8], len_bytes: u64) -> io::Result<()> {
        let temp = temp_path(path);
        {
            let mut file = fs::File::create(&temp)?;
            file.write_all(data)?;
            if len_bytes > data.len() as u64 {
                preallocate(&file, len_bytes)?;
            }
            // One sync makes the data, the reserved blocks and the size durable together.
            self.sync_all(&file)?;
        }
        fs::rename(&temp, path)?;
        match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => self.sync_dir(parent),
            None => self.sync_dir(Path::new(".")),
        }
    }

    fn truncate(&self, path: &Path, len_bytes: u64) -> io::Result<()> {
        let file = fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(len_bytes)?;
        self.sync_all(&file)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.sync_all(&fs::File::open(dir)?)
    }

    fn syncs(&self) -> bool {
        self.fsync
    }
}

/// One file of a [`SimDisk`]. Reads see `data` followed by zeros up to `len_bytes`: the
/// tail of a preallocated (or extended) file that was never written, which is kept as a
/// length rather than as bytes so that a 64 MiB segment costs no memory.
#[derive(Debug, Clone, Default)]
struct SimFile {
    /// The bytes written, as reads see them.
    data: Vec<u8>,
    /// `data[..synced_len_bytes]` survives a crash; the rest is the unsynced tail.
    synced_len_bytes: usize,
    /// The size of the file, never below `data.len()`.
    len_bytes: usize,
    /// The size that survives a crash (made durable by a sync, an atomic write, a
    /// preallocation or a truncation): after a crash the file is at least this long, and
    /// reads zeros wherever its lost unsynced bytes were.
    durable_len_bytes: usize,
    /// Whether the directory entry survives a crash (set by `sync_dir` or `write_atomic`).
    entry_durable: bool,
}

impl SimFile {
    /// A file holding `data` followed by zeros up to `len_bytes`, all of it durable.
    fn durable(data: &[u8], len_bytes: usize) -> SimFile {
        let len_bytes = len_bytes.max(data.len());
        SimFile {
            data: data.to_vec(),
            synced_len_bytes: data.len(),
            len_bytes,
            durable_len_bytes: len_bytes,
            entry_durable: true,
        }
    }

    /// The contents as reads see them.
    fn contents(&self) -> Vec<u8> {
        // `vec!` of zeros is a calloc: the zero tail of a preallocated file costs no writes.
        let mut contents = vec![0; self.len_bytes];
        contents[..self.data.len()].copy_from_slice(&self.data);
        contents
    }

    /// Writes `bytes` at `offset` (not yet durable), extending the file if they reach past
    /// its end.
    fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        if offset < self.synced_len_bytes {
            // The bytes written over were durable. A crash keeps a prefix of what was
            // written and zeros after it, which is exact for what `Disk::open_at` allows
            // writing over: zeros (a preallocated tail, or a crash's zero-filled end).
            self.durable_len_bytes = self.durable_len_bytes.max(self.synced_len_bytes);
            self.synced_len_bytes = offset;
        }
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(bytes);
        self.len_bytes = self.len_bytes.max(end);
    }
}

/// The shared state of a [`SimDisk`].
#[derive(Debug, Default)]
struct SimState {
    files: BTreeMap<PathBuf, SimFile>,
    dirs: BTreeSet<PathBuf>,
    /// Files removed whose removal is not yet durable: a crash brings them back with their
    /// synced contents.
    removed: BTreeMap<PathBuf, SimFile>,
    /// When set, every mutating operation fails with an injected error.
    fail_writes: bool,
    /// When set, file and directory syncs fail with an injected error.
    fail_syncs: bool,
    /// Incremented by every crash so that file handles opened before it stop working, as
    /// the process that held them would be gone.
    epoch: u64,
    /// What one file or directory sync costs.
    sync_delay: std::time::Duration,
    /// Sync time not yet charged ([`Disk::take_io_delay`]).
    pending_delay: std::time::Duration,
}

/// An in-memory disk that models durability, shared by clones (it is an `Arc` inside), so a
/// simulated node's disk outlives the node: crash the node, call [`SimDisk::crash`], and
/// hand a clone of the same disk to the restarted node.
///
/// Each file has a synced prefix and an unsynced tail. [`SimDisk::crash`] drops or tears
/// every unsynced tail and forgets unsynced directory changes, deterministically from its
/// seed; nothing else in `SimDisk` is random.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

/// The error every mutating operation returns while faults are injected.
fn injected_fault() -> io::Error {
    io::Error::other("injected disk fault (SimDisk::set_fail_writes)")
}

/// The error for opening `path` at an offset past its end.
fn past_the_end(path: &Path, offset: u64, file_len_bytes: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "cannot write {} at offset {offset}: the file is only {file_len_bytes} bytes long",
            path.display()
        ),
    )
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no such file: {}", path.display()),
    )
}

/// The parent directory of `path`, with "" meaning the current directory.
fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl SimDisk {
    /// Returns an empty disk with no files or directories.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves the state consistent enough for a test to
        // report the original panic, so recover from poisoning instead of panicking again.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every mutating operation (appends, syncs, atomic writes, truncation, removal,
    /// directory creation and sync) fail with an `io::Error` while `fail` is true. Reads
    /// keep working.
    pub fn set_fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    /// Simulates power loss: every unsynced tail is dropped, kept whole, torn at an
    /// arbitrary byte, or kept with a zero-filled end (the file size reached the disk but
    /// the data did not); a file whose directory entry was never synced may vanish; an
    /// unsynced removal may be undone. Which happens is decided by `rng_seed` alone. File
    /// handles opened before the crash fail afterwards.
    pub fn crash(&self, rng_seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
        let mut state = self.lock();
        state.epoch += 1;
        // Undo unsynced removals: the removal never reached the disk, so the file comes
        // back with its durable contents (the unsynced tail is handled below like any other).
        let removed = std::mem::take(&mut state.removed);
        for (path, file) in removed {
            if rng.gen_bool(0.5) {
                state.files.entry(path).or_insert(file);
            }
        }
        let mut vanished = Vec::new();
        for (path, file) in state.files.iter_mut() {
            if !file.entry_durable && rng.gen_bool(0.5) {
                vanished.push(path.clone());
                continue;
            }
            let synced = file.synced_len_bytes;
            let tail_len = file.data.len() - synced;
            if tail_len > 0 {
                let kept = match rng.gen_range(0..4u8) {
                    0 => 0,
                    1 => tail_len,
                    _ => rng.gen_range(0..=tail_len),
                };
                file.data.truncate(synced + kept);
                // Sometimes the end of what was kept is zeros: the size update was journaled
                // but the data pages were not written.
                if kept > 0 && rng.gen_bool(0.25) {
                    let zero_from = synced + rng.gen_range(0..kept);
                    file.data[zero_from..].fill(0);
                }
            }
            // The durable size stays (a preallocated file keeps its length, reading zeros
            // where the lost bytes were); a size that was never synced stays only as far
            // as the data kept reaches.
            file.len_bytes = file.durable_len_bytes.max(file.data.len());
            file.durable_len_bytes = file.len_bytes;
            file.synced_len_bytes = file.data.len();
            file.entry_durable = true;
        }
        for path in vanished {
            state.files.remove(&path);
        }
    }

    /// Flips every bit of the byte at `offset` in the file at `path` (media corruption; it
    /// affects the durable contents too, and may lie in a preallocated tail). Fails if the
    /// file or offset does not exist.
    pub fn corrupt(&self, path: &Path, offset: u64) -> io::Result<()> {
        let mut state = self.lock();
        let file = state.files.get_mut(path).ok_or_else(|| not_found(path))?;
        let at = usize::try_from(offset)
            .ok()
            .filter(|&at| at < file.len_bytes)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("offset {offset} past end of {}", path.display()),
                )
            })?;
        if at >= file.data.len() {
            // The byte is in the zero tail: write its zeros out, as durable as they were.
            let all_synced = file.synced_len_bytes == file.data.len();
            file.data.resize(at + 1, 0);
            if all_synced {
                file.synced_len_bytes = file.data.len();
            }
        }
        file.data[at] ^= 0xff;
        Ok(())
    }

    /// The number of unsynced bytes in the file at `path` (0 if it does not exist); lets
    /// tests assert what a crash could lose.
    pub fn unsynced_len_bytes(&self, path: &Path) -> u64 {
        let state = self.lock();
        state
            .files
            .get(path)
            .map_or(0, |f| (f.data.len() - f.synced_len_bytes) as u64)
    }

    /// Makes every file and directory sync cost `delay` of simulated time (a slow disk).
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.lock().sync_delay = delay;
    }

    /// Makes syncs (file and directory) fail with an `io::Error` while `fail` is true, while
    /// appends still succeed: the state a process is in when its fsync fails, with written
    /// bytes sitting unsynced in the page cache.
    pub fn set_fail_syncs(&self, fail: bool) {
        self.lock().fail_syncs = fail;
    }

    /// Returns an independent copy of this disk's current state (including unsynced data),
    /// so a test can try many crashes or truncations from one starting point.
    pub fn fork(&self) -> SimDisk {
        let state = self.lock();
        let copy = SimState {
            files: state.files.clone(),
            dirs: state.dirs.clone(),
            removed: state.removed.clone(),
            fail_writes: state.fail_writes,
            fail_syncs: state.fail_syncs,
            epoch: state.epoch,
            sync_delay: state.sync_delay,
            pending_delay: std::time::Duration::ZERO,
        };
        SimDisk {
            state: Arc::new(Mutex::new(copy)),
        }
    }

    fn check_syncable(state: &SimState) -> io::Result<()> {
        if state.fail_syncs {
            return Err(io::Error::other(
                "injected sync fault (SimDisk::set_fail_syncs)",
            ));
        }
        SimDisk::check_writable(state)
    }

    fn check_writable(state: &SimState) -> io::Result<()> {
        if state.fail_writes {
            return Err(injected_fault());
        }
        Ok(())
    }
}

/// A [`SimDisk`] file opened for appending.
struct SimDiskFile {
    disk: SimDisk,
    path: PathBuf,
    /// The crash epoch this handle was opened in; stale handles fail.
    epoch: u64,
    /// Where the next append is written: the end of the file's data.
    len_bytes: u64,
}

impl SimDiskFile {
    fn with_file<T>(&self, is_sync: bool, op: impl FnOnce(&mut SimFile) -> T) -> io::Result<T> {
        let mut state = self.disk.lock();
        if is_sync {
            SimDisk::check_syncable(&state)?;
        } else {
            SimDisk::check_writable(&state)?;
        }
        if state.epoch != self.epoch {
            return Err(io::Error::other(format!(
                "stale handle for {} opened before a simulated crash",
                self.path.display()
            )));
        }
        let file = state
            .files
            .get_mut(&self.path)
            .ok_or_else(|| not_found(&self.path))?;
        Ok(op(file))
    }
}

impl DiskFile for SimDiskFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let offset = usize::try_from(self.len_bytes).expect("a simulated file fits in memory");
        self.with_file(false, |f| f.write_at(offset, data))?;
        self.len_bytes += data.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.with_file(true, |f| {
            // fdatasync makes the data written and the file's size durable.
            f.synced_len_bytes = f.data.len();
            f.durable_len_bytes = f.len_bytes;
        })?;
        let mut state = self.disk.lock();
        let delay = state.sync_delay;
        state.pending_delay += delay;
        Ok(())
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        SimDisk::check_writable(&state)?;
        // Directories are made durable at once: the WAL creates its directory once, and
        // modelling lost directories would only test the test.
        for ancestor in dir.ancestors() {
            if state.files.contains_key(ancestor) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is a file", ancestor.display()),
                ));
            }
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let files = state.files.keys();
        let dirs = state.dirs.iter().filter(|d| d.as_path() != dir);
        let mut names: Vec<String> = files
            .chain(dirs)
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        let file = state.files.get(path).ok_or_else(|| not_found(path))?;
        Ok(file.contents())
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let mut state = self.lock();
        if !state.files.contains_key(path) {
            SimDisk::check_writable(&state)?;
            if !state.dirs.contains(&parent_of(path)) {
                return Err(not_found(&parent_of(path)));
            }
            state.files.insert(path.to_path_buf(), SimFile::default());
        }
        Ok(Box::new(SimDiskFile {
            disk: self.clone(),
            path: path.to_path_buf(),
            epoch: state.epoch,
            len_bytes: state.files[path].len_bytes as u64,
        }))
    }

    fn open_at(&self, path: &Path, data_len_bytes: u64) -> io::Result<Box<dyn DiskFile>> {
        let state = self.lock();
        let file = state.files.get(path).ok_or_else(|| not_found(path))?;
        let at = usize::try_from(data_len_bytes).unwrap_or(usize::MAX);
        if at > file.len_bytes {
            return Err(past_the_end(path, data_len_bytes, file.len_bytes as u64));
        }
        // Appends may only write over zeros: that is all detcd does, and all the crash
        // model of `SimFile::write_at` is exact for.
        if file
            .data
            .get(at..)
            .is_some_and(|rest| rest.iter().any(|&b| b != 0))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} holds data past offset {data_len_bytes}, which appends there would \
                     overwrite",
                    path.display()
                ),
            ));
        }
        Ok(Box::new(SimDiskFile {
            disk: self.clone(),
            path: path.to_path_buf(),
            epoch: state.epoch,
            len_bytes: data_len_bytes,
        }))
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.create_preallocated(path, data, 0)
    }

    fn create_preallocated(&self, path: &Path, data: &[u8], len_bytes: u64) -> io::Result<()> {
        let mut state = self.lock();
        // The real sequence fsyncs, so it fails when syncs do.
        SimDisk::check_syncable(&state)?;
        if !state.dirs.contains(&parent_of(path)) {
            return Err(not_found(&parent_of(path)));
        }
        // The real sequence (write temp, preallocate, fsync, rename, fsync dir) is atomic
        // and durable once it returns, size included, so model just its outcome.
        state.removed.remove(path);
        let len = usize::try_from(len_bytes).expect("a simulated file fits in memory");
        state
            .files
            .insert(path.to_path_buf(), SimFile::durable(data, len));
        Ok(())
    }

    fn truncate(&self, path: &Path, len_bytes: u64) -> io::Result<()> {
        let mut state = self.lock();
        SimDisk::check_writable(&state)?;
        let file = state.files.get_mut(path).ok_or_else(|| not_found(path))?;
        let len = usize::try_from(len_bytes).expect("a simulated file fits in memory");
        if len < file.data.len() {
            file.data.truncate(len);
        }
        // Truncation is durable on return (RealDisk fsyncs it), size included, and what is
        // left is a prefix of what was there (or zeros past it), so it all counts as synced.
        file.synced_len_bytes = file.data.len();
        file.len_bytes = len;
        file.durable_len_bytes = len;
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        SimDisk::check_writable(&state)?;
        let mut file = state.files.remove(path).ok_or_else(|| not_found(path))?;
        // Only a file whose entry was durable can come back after a crash, and then only
        // with its synced prefix.
        if file.entry_durable {
            file.data.truncate(file.synced_len_bytes);
            state.removed.insert(path.to_path_buf(), file);
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.lock();
        state.files.contains_key(path) || state.dirs.contains(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        SimDisk::check_syncable(&state)?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        for (path, file) in state.files.iter_mut() {
            if path.parent() == Some(dir) {
                file.entry_durable = true;
            }
        }
        state.removed.retain(|path, _| path.parent() != Some(dir));
        let delay = state.sync_delay;
        state.pending_delay += delay;
        Ok(())
    }

    fn take_io_delay(&self) -> std::time::Duration {
        std::mem::take(&mut self.lock().pending_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/data")
    }

    #[test]
    fn synced_data_survives_crash_and_unsynced_tail_is_a_prefix() {
        for seed in 0..64 {
            let disk = SimDisk::new();
            disk.create_dir_all(&dir()).unwrap();
            let path = dir().join("f");
            let mut f = disk.open_append(&path).unwrap();
            f.append(b"hello ").unwrap();
            f.sync().unwrap();
            disk.sync_dir(&dir()).unwrap();
            f.append(b"world").unwrap();
            assert_eq!(f.len_bytes(), 11);
            assert_eq!(disk.unsynced_len_bytes(&path), 5);
            disk.crash(seed);
            let data = disk.read_file(&path).unwrap();
            assert!(data.starts_with(b"hello "), "seed {seed}: {data:?}");
            assert!(data.len() <= 11);
            // What is kept of the tail is the written bytes, possibly ending in zeros.
            for (i, &b) in data.iter().enumerate().skip(6) {
                assert!(b == b"hello world"[i] || b == 0, "seed {seed}: {data:?}");
            }
            assert_eq!(disk.unsynced_len_bytes(&path), 0);
            // The handle from before the crash is stale.
            assert!(f.append(b"x").is_err());
        }
    }

    #[test]
    fn crash_is_deterministic_per_seed() {
        let run = |seed| {
            let disk = SimDisk::new();
            disk.create_dir_all(&dir()).unwrap();
            let mut f = disk.open_append(&dir().join("f")).unwrap();
            f.append(&[7u8; 1000]).unwrap();
            disk.crash(seed);
            disk.read_file(&dir().join("f")).ok()
        };
        for seed in 0..16 {
            assert_eq!(run(seed), run(seed));
        }
        let outcomes: BTreeSet<_> = (0..64).map(run).collect();
        assert!(outcomes.len() > 3, "crash outcomes should vary by seed");
    }

    #[test]
    fn unsynced_directory_entries_may_vanish_and_synced_ones_stay() {
        let mut vanished = 0;
        for seed in 0..32 {
            let disk = SimDisk::new();
            disk.create_dir_all(&dir()).unwrap();
            let mut a = disk.open_append(&dir().join("a")).unwrap();
            a.append(b"a").unwrap();
            a.sync().unwrap();
            disk.sync_dir(&dir()).unwrap();
            let mut b = disk.open_append(&dir().join("b")).unwrap();
            b.append(b"b").unwrap();
            b.sync().unwrap();
            disk.crash(seed);
            assert_eq!(disk.read_file(&dir().join("a")).unwrap(), b"a");
            if !disk.exists(&dir().join("b")) {
                vanished += 1;
            }
        }
        assert!(vanished > 0 && vanished < 32);
    }

    #[test]
    fn removal_is_durable_only_after_dir_sync() {
        let mut resurrected = 0;
        for seed in 0..32 {
            let disk = SimDisk::new();
            disk.create_dir_all(&dir()).unwrap();
            disk.write_atomic(&dir().join("x"), b"x").unwrap();
            disk.write_atomic(&dir().join("y"), b"y").unwrap();
            disk.remove_file(&dir().join("x")).unwrap();
            disk.sync_dir(&dir()).unwrap();
            disk.remove_file(&dir().join("y")).unwrap();
            assert!(!disk.exists(&dir().join("y")));
            disk.crash(seed);
            assert!(!disk.exists(&dir().join("x")));
            if disk.exists(&dir().join("y")) {
                assert_eq!(disk.read_file(&dir().join("y")).unwrap(), b"y");
                resurrected += 1;
            }
        }
        assert!(resurrected > 0 && resurrected < 32);
    }

    #[test]
    fn write_atomic_truncate_corrupt_list_and_faults() {
        let disk = SimDisk::new();
        disk.create_dir_all(&dir()).unwrap();
        disk.write_atomic(&dir().join("m"), b"abcdef").unwrap();
        disk.truncate(&dir().join("m"), 3).unwrap();
        disk.corrupt(&dir().join("m"), 1).unwrap();
        assert!(disk.corrupt(&dir().join("m"), 3).is_err());
        disk.crash(1);
        assert_eq!(
            disk.read_file(&dir().join("m")).unwrap(),
            [b'a', !b'b', b'c']
        );
        disk.create_dir_all(&dir().join("sub")).unwrap();
        assert_eq!(disk.list_dir(&dir()).unwrap(), vec!["m", "sub"]);
        assert!(disk.list_dir(Path::new("/nope")).is_err());
        assert!(disk.open_append(Path::new("/nope/f")).is_err());

        let mut f = disk.open_append(&dir().join("m")).unwrap();
        disk.set_fail_writes(true);
        assert!(f.append(b"z").is_err());
        assert!(f.sync().is_err());
        assert!(disk.write_atomic(&dir().join("m"), b"q").is_err());
        assert!(disk.sync_dir(&dir()).is_err());
        assert!(disk.remove_file(&dir().join("m")).is_err());
        assert_eq!(disk.read_file(&dir().join("m")).unwrap().len(), 3);
        disk.set_fail_writes(false);
        f.append(b"z").unwrap();
        f.sync().unwrap();
        assert_eq!(disk.read_file(&dir().join("m")).unwrap().len(), 4);
    }

    #[test]
    fn real_disk_basic_operations() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = RealDisk::new();
        let d = tmp.path().join("a/b");
        disk.create_dir_all(&d).unwrap();
        let mut f = disk.open_append(&d.join("f")).unwrap();
        f.append(b"hello").unwrap();
        f.sync().unwrap();
        assert_eq!(f.len_bytes(), 5);
        drop(f);
        let f = disk.open_append(&d.join("f")).unwrap();
        assert_eq!(f.len_bytes(), 5);
        disk.write_atomic(&d.join("meta"), b"m1").unwrap();
        disk.write_atomic(&d.join("meta"), b"m2").unwrap();
        assert_eq!(disk.read_file(&d.join("meta")).unwrap(), b"m2");
        assert_eq!(disk.list_dir(&d).unwrap(), vec!["f", "meta"]);
        disk.truncate(&d.join("f"), 2).unwrap();
        assert_eq!(disk.read_file(&d.join("f")).unwrap(), b"he");
        disk.remove_file(&d.join("f")).unwrap();
        disk.sync_dir(&d).unwrap();
        assert!(!disk.exists(&d.join("f")));
        assert!(disk.exists(&d.join("meta")));
    }

    #[test]
    fn preallocated_file_reads_as_data_then_zeros_and_a_crash_keeps_its_size() {
        let mut kept_lens = BTreeSet::new();
        for seed in 0..64 {
            let disk = SimDisk::new();
            disk.create_dir_all(&dir()).unwrap();
            let path = dir().join("seg");
            disk.create_preallocated(&path, b"head", 64).unwrap();
            let mut want = b"head".to_vec();
            want.resize(64, 0);
            assert_eq!(disk.read_file(&path).unwrap(), want);
            let mut f = disk.open_at(&path, 4).unwrap();
            assert_eq!(f.len_bytes(), 4);
            f.append(b"synced").unwrap();
            f.sync().unwrap();
            assert_eq!(
                f.len_bytes(),
                10,
                "the length is the data's, not the file's"
            );
            want[4..10].copy_from_slice(b"synced");
            assert_eq!(disk.read_file(&path).unwrap(), want);
            f.append(b"unsynced").unwrap();
            assert_eq!(disk.unsynced_len_bytes(&path), 8);
            disk.crash(seed);
            let data = disk.read_file(&path).unwrap();
            assert_eq!(
                data.len(),
                64,
                "seed {seed}: the preallocated size is durable"
            );
            assert_eq!(data[..10], want[..10], "seed {seed}");
            // What is kept of the unsynced bytes is a prefix of them, possibly ending in
            // zeros, and zeros follow it up to the preallocated size.
            for (i, &b) in data[10..].iter().enumerate() {
                assert!(
                    b == 0 || b"unsynced".get(i) == Some(&b),
                    "seed {seed}: {data:?}"
                );
            }
            let kept = data[10..]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i + 1);
            kept_lens.insert(kept);
            assert!(f.append(b"x").is_err(), "the handle is stale after a crash");
            // Appends after the crash continue at the end of what survived.
            let mut f = disk.open_at(&path, 10 + kept as u64).unwrap();
            f.append(b"!").unwrap();
            f.sync().unwrap();
            disk.crash(seed + 1);
            let data = disk.read_file(&path).unwrap();
            assert_eq!((data.len(), data[10 + kept]), (64, b'!'), "seed {seed}");
        }
        assert!(
            kept_lens.contains(&0) && kept_lens.contains(&8) && kept_lens.len() > 3,
            "crashes should keep varying amounts: {kept_lens:?}"
        );
    }

    #[test]
    fn preallocated_files_grow_past_their_size_truncate_and_refuse_overwrites() {
        let disk = SimDisk::new();
        disk.create_dir_all(&dir()).unwrap();
        let path = dir().join("seg");
        disk.create_preallocated(&path, b"ab", 4).unwrap();
        let mut f = disk.open_at(&path, 2).unwrap();
        f.append(b"cdef").unwrap();
        assert_eq!(disk.read_file(&path).unwrap(), b"abcdef");
        assert_eq!(f.len_bytes(), 6);
        // Unsynced bytes past the preallocated size may be lost, but never the size.
        for seed in 0..16 {
            let fork = disk.fork();
            fork.crash(seed);
            let data = fork.read_file(&path).unwrap();
            assert!(data.len() >= 4 && data.starts_with(b"ab"), "{data:?}");
        }
        f.sync().unwrap();
        // Appends may only go over zeros, and not past the end of the file.
        let err = |r: io::Result<Box<dyn DiskFile>>| r.err().map(|e| e.kind());
        assert_eq!(
            err(disk.open_at(&path, 1)),
            Some(io::ErrorKind::InvalidInput)
        );
        assert_eq!(
            err(disk.open_at(&path, 7)),
            Some(io::ErrorKind::InvalidInput)
        );
        assert_eq!(
            err(disk.open_at(&dir().join("none"), 0)),
            Some(io::ErrorKind::NotFound)
        );
        // Truncation cuts a preallocated tail off durably.
        disk.create_preallocated(&path, b"ab", 100).unwrap();
        disk.truncate(&path, 2).unwrap();
        disk.crash(3);
        assert_eq!(disk.read_file(&path).unwrap(), b"ab");
        // A length at or below the data's adds nothing; media damage may hit the zeros.
        disk.create_preallocated(&path, b"abc", 2).unwrap();
        assert_eq!(disk.read_file(&path).unwrap(), b"abc");
        disk.create_preallocated(&path, b"x", 8).unwrap();
        disk.corrupt(&path, 5).unwrap();
        assert!(disk.corrupt(&path, 8).is_err());
        disk.crash(4);
        assert_eq!(
            disk.read_file(&path).unwrap(),
            [b'x', 0, 0, 0, 0, 0xff, 0, 0]
        );
        assert_eq!(disk.list_dir(&dir()).unwrap(), vec!["seg"]);
    }

    #[test]
    fn real_disk_preallocates_and_appends_at_the_end_of_the_data() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let disk = RealDisk::new();
        let path = tmp.path().join("seg");
        const LEN: u64 = 1 << 20;
        disk.create_preallocated(&path, b"head", LEN).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), LEN);
        // fallocate reserved the blocks (set_len alone would have left a sparse file).
        assert!(meta.blocks() * 512 >= LEN, "{} blocks", meta.blocks());
        let mut f = disk.open_at(&path, 4).unwrap();
        f.append(b"tail").unwrap();
        f.sync().unwrap();
        assert_eq!(f.len_bytes(), 8);
        drop(f);
        let data = disk.read_file(&path).unwrap();
        assert_eq!(data.len() as u64, LEN);
        assert_eq!(&data[..8], b"headtail");
        assert!(data[8..].iter().all(|&b| b == 0));
        let past_the_end = disk.open_at(&path, LEN + 1).err().map(|e| e.kind());
        assert_eq!(past_the_end, Some(io::ErrorKind::InvalidInput));
        // Appends at the end of the file grow it; open_append still appends at the end.
        let mut f = disk.open_at(&path, LEN).unwrap();
        f.append(b"x").unwrap();
        drop(f);
        let mut f = disk.open_append(&path).unwrap();
        assert_eq!(f.len_bytes(), LEN + 1);
        f.append(b"y").unwrap();
        let data = disk.read_file(&path).unwrap();
        assert_eq!(&data[LEN as usize..], b"xy");
        // Nothing but the file is left: the temporary file was renamed over it.
        assert_eq!(disk.list_dir(tmp.path()).unwrap(), vec!["seg"]);
        // Without fsync the file is preallocated all the same.
        RealDisk::without_fsync()
            .create_preallocated(&path, b"new", 4096)
            .unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 4096);
    }
}

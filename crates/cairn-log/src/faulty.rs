//! [`FaultyStorage`]: an in-memory file system for tests that injects the faults real
//! disks have.
//!
//! - **Power cut** ([`FaultyStorage::power_cut`]): every write not yet flushed is kept,
//!   lost, or torn at a random byte, independently; flushed data always survives. Every
//!   handle opened before the cut fails from then on, as if its process died, and the
//!   directory locks are released.
//! - **Crash at a random point** ([`FaultyStorage::crash_after`]): a power cut happens by
//!   itself in the middle of the n-th write or flush from now.
//! - **Failed flushes** ([`FaultyStorage::fail_flushes`]): `sync_data` returns an error and
//!   makes nothing durable.
//!
//! Directory operations (create, rename, remove) are durable at once. Randomness comes from
//! a seed, so a failing history can be replayed.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::storage::{OpenMode, Storage, StorageFile};

/// An in-memory file system that tears writes, loses unflushed data and fails flushes on
/// command. Clones share the same file system.
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    fs: Arc<Mutex<Fs>>,
}

#[derive(Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct File {
    /// What survives a power cut.
    durable: Vec<u8>,
    /// What reads see.
    current: Vec<u8>,
    /// Changes since the last flush, in order.
    pending: Vec<Op>,
}

#[derive(Debug, Default)]
struct Fs {
    /// Path → file id.
    names: BTreeMap<PathBuf, u64>,
    files: HashMap<u64, File>,
    dirs: HashSet<PathBuf>,
    locks: HashSet<PathBuf>,
    next_id: u64,
    /// Bumped by every power cut; handles of an older generation are dead.
    generation: u64,
    rng: u64,
    crash_countdown: Option<u64>,
    fail_flushes: bool,
    power_cuts: u64,
}

fn lost_power() -> io::Error {
    io::Error::other("power lost (injected fault)")
}

fn apply(bytes: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            if let Some(slot) = bytes.get_mut(start..end) {
                slot.copy_from_slice(data);
            }
        }
        Op::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

impl Fs {
    fn random(&mut self) -> u64 {
        // xorshift64*: small, fast, reproducible from the seed.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn power_cut(&mut self) {
        self.generation += 1;
        self.power_cuts += 1;
        self.crash_countdown = None;
        self.locks.clear();
        let ids: Vec<u64> = self.files.keys().copied().collect();
        for id in ids {
            let Some(mut file) = self.files.remove(&id) else {
                continue;
            };
            let pending = std::mem::take(&mut file.pending);
            let mut image = std::mem::take(&mut file.durable);
            for op in pending {
                match (self.random() % 3, op) {
                    (0, _) => {}
                    (1, Op::Write { offset, data }) => {
                        let keep = (self.random() % (data.len() as u64 + 1)) as usize;
                        let torn = Op::Write {
                            offset,
                            data: data.get(..keep).unwrap_or_default().to_vec(),
                        };
                        apply(&mut image, &torn);
                    }
                    (_, op) => apply(&mut image, &op),
                }
            }
            file.current = image.clone();
            file.durable = image;
            self.files.insert(id, file);
        }
    }

    /// Counts one write or flush towards a scheduled crash; true when it must not happen.
    fn crash_now(&mut self) -> bool {
        match self.crash_countdown {
            Some(0) => true,
            Some(n) => {
                self.crash_countdown = Some(n - 1);
                false
            }
            None => false,
        }
    }
}

impl FaultyStorage {
    /// An empty file system whose random choices follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            fs: Arc::new(Mutex::new(Fs {
                rng: seed | 1,
                ..Fs::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Fs> {
        self.fs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power now: unflushed writes are kept, lost or torn at random, and every
    /// handle opened so far fails from now on.
    pub fn power_cut(&self) {
        self.lock().power_cut();
    }

    /// Cuts the power during the `n`-th write or flush from now (0: the next one). A write
    /// caught by the cut is itself torn at random, like the other unflushed ones.
    pub fn crash_after(&self, n: u64) {
        self.lock().crash_countdown = Some(n);
    }

    /// Makes every flush fail (or succeed again).
    pub fn fail_flushes(&self, fail: bool) {
        self.lock().fail_flushes = fail;
    }

    /// How many power cuts happened.
    pub fn power_cuts(&self) -> u64 {
        self.lock().power_cuts
    }

    /// A separate file system holding a copy of what this one holds durably now (as a
    /// power cut that lost every unflushed write would leave it).
    pub fn duplicate(&self, seed: u64) -> Self {
        let fs = self.lock();
        let files = fs
            .files
            .iter()
            .map(|(&id, file)| {
                (
                    id,
                    File {
                        durable: file.durable.clone(),
                        current: file.durable.clone(),
                        pending: Vec::new(),
                    },
                )
            })
            .collect();
        Self {
            fs: Arc::new(Mutex::new(Fs {
                names: fs.names.clone(),
                files,
                dirs: fs.dirs.clone(),
                next_id: fs.next_id,
                rng: seed | 1,
                ..Fs::default()
            })),
        }
    }

    /// The paths of every file, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }

    /// The current bytes of the file at `path`, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.lock();
        let id = fs.names.get(path)?;
        fs.files.get(id).map(|f| f.current.clone())
    }

    /// Replaces the bytes of the file at `path`, durably (to simulate damage at rest).
    ///
    /// # Errors
    ///
    /// `NotFound` when there is no such file.
    pub fn overwrite(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let mut fs = self.lock();
        let id = *fs.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        let file = fs.files.get_mut(&id).ok_or(io::ErrorKind::NotFound)?;
        file.pending.clear();
        file.current.clone_from(&bytes);
        file.durable = bytes;
        Ok(())
    }
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        for ancestor in path.ancestors() {
            fs.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let fs = self.lock();
        if !fs.dirs.contains(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let files = fs.names.keys().map(PathBuf::as_path);
        let dirs = fs.dirs.iter().map(PathBuf::as_path);
        Ok(files
            .chain(dirs)
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut fs = self.lock();
        if !path.parent().is_some_and(|parent| fs.dirs.contains(parent)) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let id = match (fs.names.get(path).copied(), mode) {
            (Some(id), OpenMode::CreateTruncate) => {
                if let Some(file) = fs.files.get_mut(&id) {
                    file.pending.push(Op::SetLen(0));
                    file.current.clear();
                }
                id
            }
            (Some(id), _) => id,
            (None, OpenMode::CreateTruncate) => {
                let id = fs.next_id;
                fs.next_id += 1;
                fs.files.insert(id, File::default());
                fs.names.insert(path.to_path_buf(), id);
                id
            }
            (None, _) => return Err(io::ErrorKind::NotFound.into()),
        };
        Ok(Arc::new(FaultyFile {
            fs: Arc::clone(&self.fs),
            id,
            generation: fs.generation,
            path: path.to_path_buf(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        let id = fs.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        if let Some(replaced) = fs.names.insert(to.to_path_buf(), id) {
            fs.files.remove(&replaced);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        let id = fs.names.remove(path).ok_or(io::ErrorKind::NotFound)?;
        fs.files.remove(&id);
        Ok(())
    }

    fn sync_dir(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }

    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut fs = self.lock();
        if !fs.locks.insert(path.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            ));
        }
        Ok(Box::new(DirLock {
            fs: Arc::clone(&self.fs),
            path: path.to_path_buf(),
            generation: fs.generation,
        }))
    }
}

/// Releases a directory lock when dropped (unless a power cut already did).
struct DirLock {
    fs: Arc<Mutex<Fs>>,
    path: PathBuf,
    generation: u64,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let mut fs = self.fs.lock().unwrap_or_else(PoisonError::into_inner);
        if fs.generation == self.generation {
            fs.locks.remove(&self.path);
        }
    }
}

#[derive(Debug)]
struct FaultyFile {
    fs: Arc<Mutex<Fs>>,
    id: u64,
    generation: u64,
    path: PathBuf,
}

impl FaultyFile {
    fn fs(&self) -> io::Result<MutexGuard<'_, Fs>> {
        let fs = self.fs.lock().unwrap_or_else(PoisonError::into_inner);
        if fs.generation != self.generation {
            return Err(lost_power());
        }
        Ok(fs)
    }
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let fs = self.fs()?;
        let file = fs.files.get(&self.id).ok_or(io::ErrorKind::NotFound)?;
        let start = (offset as usize).min(file.current.len());
        let available = file.current.get(start..).unwrap_or_default();
        let n = available.len().min(buf.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), available.get(..n)) {
            to.copy_from_slice(from);
        }
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut fs = self.fs()?;
        let crash = fs.crash_now();
        let file = fs.files.get_mut(&self.id).ok_or(io::ErrorKind::NotFound)?;
        let op = Op::Write {
            offset,
            data: buf.to_vec(),
        };
        apply(&mut file.current, &op);
        file.pending.push(op);
        if crash {
            fs.power_cut();
            return Err(lost_power());
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut fs = self.fs()?;
        if fs.crash_now() {
            fs.power_cut();
            return Err(lost_power());
        }
        if fs.fail_flushes {
            return Err(io::Error::other(format!(
                "flush of {} failed (injected fault)",
                self.path.display()
            )));
        }
        let file = fs.files.get_mut(&self.id).ok_or(io::ErrorKind::NotFound)?;
        file.pending.clear();
        file.durable.clone_from(&file.current);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let fs = self.fs()?;
        let file = fs.files.get(&self.id).ok_or(io::ErrorKind::NotFound)?;
        Ok(file.current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut fs = self.fs()?;
        let file = fs.files.get_mut(&self.id).ok_or(io::ErrorKind::NotFound)?;
        let op = Op::SetLen(len);
        apply(&mut file.current, &op);
        file.pending.push(op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn flushed_data_survives_a_power_cut_and_old_handles_die() {
        let storage = FaultyStorage::new(7);
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        let file = storage
            .open(&dir.join("f"), OpenMode::CreateTruncate)
            .unwrap();
        file.write_all_at(b"durable", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"-maybe", 7).unwrap();
        storage.power_cut();
        assert!(file.read_at(&mut [0; 4], 0).is_err());
        let reopened = storage.open(&dir.join("f"), OpenMode::Read).unwrap();
        let mut buf = vec![0; reopened.len().unwrap() as usize];
        reopened.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.starts_with(b"durable"));
        assert!(b"durable-maybe".starts_with(&buf));
    }

    #[test]
    fn failed_flushes_make_nothing_durable() {
        let storage = FaultyStorage::new(3);
        storage.create_dir_all(Path::new("/d")).unwrap();
        let path = Path::new("/d/f");
        let file = storage.open(path, OpenMode::CreateTruncate).unwrap();
        file.write_all_at(&[1; 64], 0).unwrap();
        storage.fail_flushes(true);
        assert!(file.sync_data().is_err());
        // Cut until the unflushed write is lost entirely at least once.
        let mut lost = false;
        for _ in 0..32 {
            storage.power_cut();
            let file = storage.open(path, OpenMode::ReadWrite).unwrap();
            if file.len().unwrap() == 0 {
                lost = true;
                break;
            }
            file.set_len(0).unwrap();
            file.write_all_at(&[1; 64], 0).unwrap();
        }
        assert!(lost);
    }

    #[test]
    fn locks_exclude_until_dropped_or_power_cut() {
        let storage = FaultyStorage::new(1);
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        let lock = storage.lock_dir(dir).unwrap();
        assert!(storage.lock_dir(dir).is_err());
        drop(lock);
        let _again = storage.lock_dir(dir).unwrap();
        storage.power_cut();
        assert!(storage.lock_dir(dir).is_ok());
    }
}

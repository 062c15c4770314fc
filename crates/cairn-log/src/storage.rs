//! The storage trait: every byte the engine reads or writes goes through [`Storage`] and
//! [`StorageFile`], so tests can swap the operating system's files for ones that tear
//! writes, lose what was not flushed, or fail a flush
//! ([`FaultyStorage`](crate::faulty::FaultyStorage)).
//!
//! [`OsStorage`] is the real thing: `std::fs` with positional reads and writes and
//! `fdatasync`.

use std::any::Any;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write, creating the file (empty) or truncating it to empty.
    CreateTruncate,
}

/// A file system as the engine needs it.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Creates `path` and its parents as directories.
    ///
    /// # Errors
    ///
    /// The underlying I/O error.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// The names of the entries of directory `path` (not their full paths), in no order.
    ///
    /// # Errors
    ///
    /// The underlying I/O error.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;

    /// Opens the file at `path`.
    ///
    /// # Errors
    ///
    /// The underlying I/O error (`NotFound` when it must exist and does not).
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;

    /// Renames `from` to `to`, replacing `to`.
    ///
    /// # Errors
    ///
    /// The underlying I/O error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes the file at `path`.
    ///
    /// # Errors
    ///
    /// The underlying I/O error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Makes the directory's entries (creations, renames, removals) durable.
    ///
    /// # Errors
    ///
    /// The underlying I/O error.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// Takes an exclusive lock on the directory `path`, held until the returned guard is
    /// dropped.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when another owner holds it; otherwise the underlying I/O error.
    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
}

/// An open file, read and written at explicit offsets (no shared cursor), so readers and the
/// writer use one handle concurrently.
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads into `buf` from `offset`, returning how many bytes were read (0 at the end).
    ///
    /// # Errors
    ///
    /// The underlying I/O error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes all of `buf` at `offset`.
    ///
    /// # Errors
    ///
    /// The underlying I/O error; part of `buf` may have been written.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes everything written so far durable (`fdatasync`).
    ///
    /// # Errors
    ///
    /// The underlying I/O error. After a failed flush nothing written since the last
    /// successful one may be assumed durable, and retrying does not make it so.
    fn sync_data(&self) -> io::Result<()>;

    /// The file's length in bytes.
    ///
    /// # Errors
    ///
    /// The underlying I/O error.
    fn len(&self) -> io::Result<u64>;

    /// Sets the file's length, cutting or extending it with zeros.
    ///
    /// # Errors
    ///
    /// The underlying I/O error.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes from `offset`.
    ///
    /// # Errors
    ///
    /// `UnexpectedEof` when the file ends first; otherwise the underlying I/O error.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = buf.get_mut(n..).unwrap_or_default();
                    offset += n as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// The operating system's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsStorage;

impl OsStorage {
    /// The operating system's file system, shared.
    pub fn shared() -> Arc<dyn Storage> {
        Arc::new(Self)
    }
}

#[derive(Debug)]
struct OsFile(File);

impl Storage for OsStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateTruncate => options.read(true).write(true).create(true).truncate(true),
        };
        Ok(Arc::new(OsFile(options.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let lock_path: PathBuf = path.join("LOCK");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", lock_path.display()),
            )),
            Err(TryLockError::Error(error)) => Err(error),
        }
    }
}

impl StorageFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

//! [`FileCheckpoints`]: durable subscriber checkpoints, one small file per subscriber in a
//! directory of their own.
//!
//! Each file holds the position as 8 little-endian bytes followed by their CRC32C (4
//! little-endian bytes). A save writes a temporary file, flushes it, renames it over the
//! old one and flushes the directory, so a crash leaves either the old or the new
//! checkpoint, never a torn one; a file whose checksum fails is reported, not read as a
//! position.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::{
    CheckpointError, Checkpoints, Position, StorageError, StorageErrorKind,
    validate_subscriber_name,
};

const SUFFIX: &str = "checkpoint";
const LEN: usize = 12;

/// Checkpoints in files under one directory. Clones share the directory; one process
/// should own it (as it owns the store's data directory).
#[derive(Debug, Clone)]
pub struct FileCheckpoints {
    dir: Arc<PathBuf>,
}

impl FileCheckpoints {
    /// Uses `dir` for checkpoints, creating it when missing.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| {
            StorageError::io(
                format!("creating the checkpoint directory {}", dir.display()),
                e,
            )
        })?;
        Ok(Self { dir: Arc::new(dir) })
    }

    /// The directory the checkpoints live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, subscriber: &str) -> PathBuf {
        self.dir.join(format!("{subscriber}.{SUFFIX}"))
    }
}

fn load(path: &Path) -> Result<Option<Position>, StorageError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(format!("reading {}", path.display()), e)),
    };
    let corrupt = || {
        StorageError::new(
            StorageErrorKind::Corruption,
            format!("the checkpoint file {} is damaged", path.display()),
        )
    };
    let array: [u8; LEN] = bytes.as_slice().try_into().map_err(|_| corrupt())?;
    let (value, crc) = array.split_at(8);
    let value: [u8; 8] = value.try_into().map_err(|_| corrupt())?;
    let crc: [u8; 4] = crc.try_into().map_err(|_| corrupt())?;
    if crc32c::crc32c(&value) != u32::from_le_bytes(crc) {
        return Err(corrupt());
    }
    Ok(Some(Position(u64::from_le_bytes(value))))
}

fn save(dir: &Path, path: &Path, position: Position) -> Result<(), StorageError> {
    let io = |what: &str, e: io::Error| StorageError::io(format!("{what} {}", path.display()), e);
    let value = position.0.to_le_bytes();
    let mut bytes = Vec::with_capacity(LEN);
    bytes.extend_from_slice(&value);
    bytes.extend_from_slice(&crc32c::crc32c(&value).to_le_bytes());
    let temporary = path.with_extension(format!("{SUFFIX}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(|e| io("creating a temporary file for", e))?;
    file.write_all(&bytes).map_err(|e| io("writing", e))?;
    file.sync_data().map_err(|e| io("flushing", e))?;
    drop(file);
    fs::rename(&temporary, path).map_err(|e| io("renaming the new checkpoint over", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("flushing the directory of", e))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, CheckpointError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| {
            StorageError::new(
                StorageErrorKind::Other,
                "a checkpoint file operation panicked",
            )
            .with_source(e)
        })?
        .map_err(CheckpointError::from)
}

#[async_trait]
impl Checkpoints for FileCheckpoints {
    async fn load(&self, subscriber: &str) -> Result<Option<Position>, CheckpointError> {
        validate_subscriber_name(subscriber)?;
        let path = self.path(subscriber);
        blocking(move || load(&path)).await
    }

    async fn save(&self, subscriber: &str, position: Position) -> Result<(), CheckpointError> {
        validate_subscriber_name(subscriber)?;
        let path = self.path(subscriber);
        let dir = Arc::clone(&self.dir);
        blocking(move || save(&dir, &path, position)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cairn-checkpoints-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn saved_checkpoints_survive_reopening() {
        let path = dir("reopen");
        let checkpoints = FileCheckpoints::open(&path).unwrap();
        assert_eq!(checkpoints.load("relay").await.unwrap(), None);
        checkpoints.save("relay", Position(7)).await.unwrap();
        checkpoints.save("relay", Position(u64::MAX)).await.unwrap();
        checkpoints.save("other", Position(0)).await.unwrap();
        drop(checkpoints);
        let reopened = FileCheckpoints::open(&path).unwrap();
        assert_eq!(
            reopened.load("relay").await.unwrap(),
            Some(Position(u64::MAX))
        );
        assert_eq!(reopened.load("other").await.unwrap(), Some(Position(0)));
        fs::remove_dir_all(&path).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_file_is_reported_not_misread() {
        let path = dir("damaged");
        let checkpoints = FileCheckpoints::open(&path).unwrap();
        checkpoints.save("relay", Position(1234)).await.unwrap();
        let file = checkpoints.path("relay");
        let mut bytes = fs::read(&file).unwrap();
        bytes[0] ^= 1;
        fs::write(&file, &bytes).unwrap();
        let error = checkpoints.load("relay").await.unwrap_err();
        assert!(error.to_string().contains("damaged"), "{error}");
        fs::write(&file, &bytes[..5]).unwrap();
        assert!(checkpoints.load("relay").await.is_err());
        fs::remove_dir_all(&path).unwrap();
    }

    #[tokio::test]
    async fn names_that_are_not_safe_file_names_are_refused() {
        let path = dir("names");
        let checkpoints = FileCheckpoints::open(&path).unwrap();
        for bad in ["../escape", "a/b", "", ".hidden"] {
            let error = checkpoints.save(bad, Position(1)).await.unwrap_err();
            assert_eq!(error.code(), "invalid_subscriber_name");
        }
        assert_eq!(fs::read_dir(&path).unwrap().count(), 0);
        fs::remove_dir_all(&path).unwrap();
    }
}

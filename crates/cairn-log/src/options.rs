//! How a log store is opened: durability, segment size, limits and the storage underneath,
//! and the errors opening can end with.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::StoreLimits;

use crate::format::SEGMENT_HEADER_LEN;
use crate::segments::Preallocation;
use crate::storage::{OsStorage, Storage};

/// The default size of a segment file: 64 MiB, small enough that the next one is
/// zero-filled well before a busy writer needs it.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// The smallest segment size accepted: 64 KiB. Segment sizes are multiples of it.
pub const MIN_SEGMENT_SIZE: u64 = 64 << 10;

/// When an append is acknowledged, relative to its data reaching stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Flush (`fdatasync`) before acknowledging: an acknowledged append survives a power
    /// cut. Concurrent appends share flushes (group commit). The default.
    #[default]
    Always,
    /// Acknowledge once written to the operating system, and flush at least this often.
    /// **Weaker**: a power cut or kernel crash may lose up to this much acknowledged
    /// history (a crash of the process alone loses nothing).
    Interval(Duration),
    /// Acknowledge once written to the operating system; flush only when a segment fills
    /// and on close. **Weakest**: a power cut may lose any acknowledged history not yet
    /// flushed.
    None,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Interval(every) => write!(f, "interval:{}ms", every.as_millis()),
            Self::None => f.write_str("none"),
        }
    }
}

/// A durability mode that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown durability {0:?}: expected always, none or interval:<milliseconds>ms")]
pub struct ParseDurabilityError(String);

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    /// Parses `always`, `none` or `interval:<n>ms` (also `interval:<n>`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseDurabilityError(text.to_owned());
        match text {
            "always" => Ok(Self::Always),
            "none" => Ok(Self::None),
            _ => {
                let millis = text.strip_prefix("interval:").ok_or_else(error)?;
                let millis = millis.strip_suffix("ms").unwrap_or(millis);
                let millis: u64 = millis.parse().map_err(|_| error())?;
                if millis == 0 {
                    return Err(error());
                }
                Ok(Self::Interval(Duration::from_millis(millis)))
            }
        }
    }
}

/// How to open a [`LogStore`](crate::LogStore).
///
/// # Examples
///
/// ```
/// use cairn_log::{Durability, LogOptions};
///
/// let options = LogOptions::default().durability("interval:50ms".parse().unwrap());
/// assert_eq!(options.durability.to_string(), "interval:50ms");
/// ```
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// When appends are acknowledged.
    pub durability: Durability,
    /// The size of each segment file, at least [`MIN_SEGMENT_SIZE`]; one append must fit in
    /// one segment. Fixed when the store is created.
    pub segment_size: u64,
    /// How new segment files get their space.
    pub preallocation: Preallocation,
    /// Limits enforced on appends.
    pub limits: StoreLimits,
    /// The file system underneath.
    pub storage: Arc<dyn Storage>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Always,
            segment_size: DEFAULT_SEGMENT_SIZE,
            preallocation: Preallocation::Zeroed,
            limits: StoreLimits::default(),
            storage: OsStorage::shared(),
        }
    }
}

impl LogOptions {
    /// Sets the durability mode.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the segment size.
    #[must_use]
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Sets how segments are preallocated.
    #[must_use]
    pub fn preallocation(mut self, preallocation: Preallocation) -> Self {
        self.preallocation = preallocation;
        self
    }

    /// Sets the limits enforced on appends.
    #[must_use]
    pub fn limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the file system underneath.
    #[must_use]
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = storage;
        self
    }

    pub(crate) fn check(&self) -> Result<(), OpenError> {
        let invalid = |reason: String| Err(OpenError::InvalidOptions { reason });
        if self.segment_size < MIN_SEGMENT_SIZE || self.segment_size > u64::from(u32::MAX) {
            return invalid(format!(
                "segment size {} is outside {MIN_SEGMENT_SIZE}..={}",
                self.segment_size,
                u32::MAX
            ));
        }
        if !self.segment_size.is_multiple_of(MIN_SEGMENT_SIZE) {
            return invalid(format!(
                "segment size {} is not a multiple of {MIN_SEGMENT_SIZE}",
                self.segment_size
            ));
        }
        let room = self.segment_size - SEGMENT_HEADER_LEN - 1024;
        if self.limits.max_event_size as u64 > room {
            return invalid(format!(
                "max event size {} does not fit a segment of {} bytes",
                self.limits.max_event_size, self.segment_size
            ));
        }
        if self.limits.max_event_size == 0 {
            return invalid("max event size is zero".to_owned());
        }
        Ok(())
    }
}

/// Why a log store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process (or another handle in this one) owns the data directory.
    #[error("data directory {dir} is in use by another process")]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// The log holds a damaged record that is not a torn tail: opening stops rather than
    /// lose what follows it.
    #[error("corrupt log: {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// The offset of the damage in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds data of a format this build does not read.
    #[error("{file} has format version {found}; this build reads version {supported}")]
    UnsupportedFormat {
        /// The file whose version does not match.
        file: PathBuf,
        /// The version found.
        found: String,
        /// The version this build reads.
        supported: u32,
    },
    /// The options are inconsistent.
    #[error("invalid options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
    /// An I/O operation failed.
    #[error("cannot open {path}: {source}")]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl OpenError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Locked { .. } => "data_dir_locked",
            Self::Corrupt { .. } => "log_corrupt",
            Self::UnsupportedFormat { .. } => "unsupported_format",
            Self::InvalidOptions { .. } => "invalid_options",
            Self::Io { .. } => "storage_io",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durability_parses_its_names() {
        assert_eq!("always".parse::<Durability>().unwrap(), Durability::Always);
        assert_eq!("none".parse::<Durability>().unwrap(), Durability::None);
        assert_eq!(
            "interval:25ms".parse::<Durability>().unwrap(),
            Durability::Interval(Duration::from_millis(25))
        );
        assert_eq!(
            "interval:7".parse::<Durability>().unwrap(),
            Durability::Interval(Duration::from_millis(7))
        );
        assert!("interval:0ms".parse::<Durability>().is_err());
        assert!("sometimes".parse::<Durability>().is_err());
    }

    #[test]
    fn options_refuse_segments_too_small_for_an_event() {
        assert!(LogOptions::default().check().is_ok());
        assert!(LogOptions::default().segment_size(1024).check().is_err());
        let tight = LogOptions::default()
            .segment_size(MIN_SEGMENT_SIZE)
            .limits(StoreLimits {
                max_event_size: 1 << 20,
            });
        assert!(tight.check().is_err());
    }
}

//! Typed errors, one enum per operation family: writes ([`WriteError`]), reads
//! ([`ReadError`]) and subscriptions ([`SubscriptionError`]), sharing [`StorageError`] for
//! failures of the machinery underneath.
//!
//! Every error has a stable `code()` that crosses process boundaries (HTTP, brokers) and
//! is never reused for another meaning.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;
use uuid::Uuid;

use crate::name::StreamName;
use crate::position::{CurrentRevision, ExpectedRevision};

/// What kind of storage failure happened; decides whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// An I/O operation failed (disk, network).
    Io,
    /// Stored data failed a checksum or cannot be decoded.
    Corruption,
    /// The store stopped accepting work (closed, or stopped after a failed flush) and must
    /// be reopened.
    Stopped,
    /// The backend is temporarily unreachable or overloaded; retrying later may work.
    Unavailable,
    /// Another owner holds the store (for example a locked data directory).
    Locked,
    /// Anything else.
    Other,
}

/// A failure of the machinery under the store (files, database, network).
///
/// Cheap to clone, so one failure can be handed to every caller it affects (for example
/// every append waiting on a flush that failed).
#[derive(Clone)]
pub struct StorageError {
    kind: StorageErrorKind,
    message: String,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl StorageError {
    /// A storage error of `kind` described by `message`.
    pub fn new(kind: StorageErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// An I/O failure with its cause.
    pub fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        Self::new(StorageErrorKind::Io, message).with_source(source)
    }

    /// The kind of failure.
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// The description, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self.kind {
            StorageErrorKind::Io => "storage_io",
            StorageErrorKind::Corruption => "storage_corruption",
            StorageErrorKind::Stopped => "storage_stopped",
            StorageErrorKind::Unavailable => "storage_unavailable",
            StorageErrorKind::Locked => "storage_locked",
            StorageErrorKind::Other => "storage_failure",
        }
    }
}

impl fmt::Debug for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for StorageError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

/// Why an append, delete, tombstone or metadata change was refused or failed.
///
/// Nothing of a refused write is visible: appends are all-or-nothing.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The stream's current revision does not match the writer's expectation.
    #[error("wrong expected revision on stream {stream}: expected {expected}, actual {actual}")]
    WrongExpectedRevision {
        /// The stream whose expectation failed.
        stream: StreamName,
        /// What the writer expected.
        expected: ExpectedRevision,
        /// The stream's revision when the write was checked.
        actual: CurrentRevision,
    },
    /// The stream was tombstoned and can never be written again.
    #[error("stream {stream} is deleted for good (tombstoned)")]
    StreamDeleted {
        /// The tombstoned stream.
        stream: StreamName,
    },
    /// An event is larger than the store's configured limit.
    #[error("event {id} is {size} bytes; the limit is {limit}")]
    EventTooLarge {
        /// The event's id.
        id: Uuid,
        /// Its size as [`EventData::size`](crate::EventData::size) counts it.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// An event id is already recorded with other content or in another place, so this
    /// write is not a retry of the one that recorded it.
    #[error("event id {id} is already recorded with different content or elsewhere")]
    EventIdReused {
        /// The reused id.
        id: Uuid,
    },
    /// An event is malformed (for example an empty or over-long type).
    #[error("event {id} is invalid: {reason}")]
    InvalidEvent {
        /// The event's id.
        id: Uuid,
        /// What is wrong with it.
        reason: String,
    },
    /// The request as a whole is malformed (for example an empty batch, or the same
    /// stream twice in one multi-stream append).
    #[error("invalid append: {reason}")]
    InvalidRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// The storage underneath failed; the write may not have happened (it is never half
    /// visible).
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
}

impl WriteError {
    /// A stable, machine-readable code, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::WrongExpectedRevision { .. } => "wrong_expected_revision",
            Self::StreamDeleted { .. } => "stream_deleted",
            Self::EventTooLarge { .. } => "event_too_large",
            Self::EventIdReused { .. } => "event_id_reused",
            Self::InvalidEvent { .. } => "invalid_event",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Storage(error) => error.code(),
        }
    }
}

/// Why a read failed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The stream was tombstoned.
    #[error("stream {stream} is deleted for good (tombstoned)")]
    StreamDeleted {
        /// The tombstoned stream.
        stream: StreamName,
    },
    /// The storage underneath failed.
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
}

impl ReadError {
    /// A stable, machine-readable code, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::StreamDeleted { .. } => "stream_deleted",
            Self::Storage(error) => error.code(),
        }
    }
}

/// Why a subscription ended. A subscription yields at most one error, then ends.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// The subscribed stream was tombstoned.
    #[error("stream {stream} is deleted for good (tombstoned)")]
    StreamDeleted {
        /// The tombstoned stream.
        stream: StreamName,
    },
    /// The subscriber asked to be dropped rather than caught up when it falls behind
    /// ([`OnFallingBehind::End`](crate::OnFallingBehind::End)), and it fell behind.
    #[error("subscriber fell a full buffer of {buffer} events or more behind the live log")]
    FellBehind {
        /// The subscription's buffer size, in events.
        buffer: usize,
    },
    /// The storage underneath failed.
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
}

impl SubscriptionError {
    /// A stable, machine-readable code, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::StreamDeleted { .. } => "stream_deleted",
            Self::FellBehind { .. } => "subscriber_fell_behind",
            Self::Storage(error) => error.code(),
        }
    }
}

impl From<ReadError> for SubscriptionError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::StreamDeleted { stream } => Self::StreamDeleted { stream },
            ReadError::Storage(error) => Self::Storage(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_keep_their_cause_and_code() {
        let io = std::io::Error::other("disk on fire");
        let error = StorageError::io("flush failed", io);
        assert_eq!(error.kind(), StorageErrorKind::Io);
        assert_eq!(error.code(), "storage_io");
        assert_eq!(error.source().unwrap().to_string(), "disk on fire");
        let write: WriteError = error.clone().into();
        assert_eq!(write.code(), "storage_io");
        assert_eq!(write.to_string(), "storage failure: flush failed");
    }

    #[test]
    fn conflicts_say_what_was_expected_and_what_was_found() {
        let error = WriteError::WrongExpectedRevision {
            stream: StreamName::new("a").unwrap(),
            expected: ExpectedRevision::Exact(3),
            actual: CurrentRevision::NoStream,
        };
        assert_eq!(
            error.to_string(),
            "wrong expected revision on stream a: expected revision 3, actual no stream"
        );
        assert_eq!(error.code(), "wrong_expected_revision");
    }
}

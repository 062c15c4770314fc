//! [`Checkpoints`]: where a subscriber (a projection, a saga, the outbox relay) records how
//! far through `$all` it has processed, so that after a restart it resumes right after the
//! last event whose effects were done.
//!
//! A checkpoint is saved after the effects of the events up to it; a crash between the two
//! redelivers those events, so subscribers are idempotent (or, with PostgreSQL, save the
//! checkpoint in the transaction of their effects).

use async_trait::async_trait;
use thiserror::Error;

use crate::error::StorageError;
use crate::position::Position;

/// The longest subscriber name, in bytes.
pub const MAX_SUBSCRIBER_NAME_LEN: usize = 128;

/// Why a checkpoint could not be loaded or saved.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The subscriber name is empty, too long or has characters other than ASCII letters,
    /// digits, `-`, `_` and `.`.
    #[error("invalid subscriber name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The storage underneath failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl CheckpointError {
    /// A stable code for the error, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidName { .. } => "invalid_subscriber_name",
            Self::Storage(error) => error.code(),
        }
    }
}

/// Durable positions of subscribers, by name.
#[async_trait]
pub trait Checkpoints: Send + Sync + 'static {
    /// The position `subscriber` saved last, `None` when it never saved one.
    ///
    /// # Errors
    ///
    /// [`CheckpointError::InvalidName`] for a name [`validate_subscriber_name`] refuses;
    /// [`CheckpointError::Storage`] when the storage failed.
    async fn load(&self, subscriber: &str) -> Result<Option<Position>, CheckpointError>;

    /// Saves `position` as `subscriber`'s checkpoint; durable once this returns.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    async fn save(&self, subscriber: &str, position: Position) -> Result<(), CheckpointError>;
}

/// Checks a subscriber name: 1 to [`MAX_SUBSCRIBER_NAME_LEN`] bytes of ASCII letters,
/// digits, `-`, `_` and `.`, not starting with `.` (so it is safe as a file name and a
/// key everywhere).
///
/// # Errors
///
/// [`CheckpointError::InvalidName`] saying what is wrong.
pub fn validate_subscriber_name(name: &str) -> Result<(), CheckpointError> {
    let refuse = |reason| {
        Err(CheckpointError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > MAX_SUBSCRIBER_NAME_LEN {
        return refuse("it is longer than 128 bytes");
    }
    if name.starts_with('.') {
        return refuse("it starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return refuse("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_names_are_checked() {
        for good in ["relay", "orders.projection-2", "A_b", &"x".repeat(128)] {
            assert!(validate_subscriber_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(129),
            "..",
        ] {
            let error = validate_subscriber_name(bad).unwrap_err();
            assert_eq!(error.code(), "invalid_subscriber_name", "{bad}");
        }
    }
}

//! [`DeadLetterError`] (the operations of [`DeadLetters`](super::DeadLetters)) and
//! [`StoreError`] (a [`DeadLetterStore`](super::DeadLetterStore) that failed).

use super::ParkingId;
use crate::transport::BoxError;

/// Why a [`DeadLetterStore`](super::DeadLetterStore) could not do what it was asked. Each
/// variant has a stable [`code`](Self::code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or failed; trying again may help.
    #[error("the dead-letter store is unavailable: {0}")]
    Unavailable(#[source] BoxError),
}

impl StoreError {
    /// A stable code for the error, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "dead_letter_store_unavailable",
        }
    }
}

/// Why an operation on parked messages was refused or failed. Each variant has a stable
/// [`code`](Self::code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// No message is parked under this id (never was, or was replayed or discarded).
    #[error("no message is parked under {id}")]
    NotFound {
        /// The parking id asked for.
        id: ParkingId,
    },
    /// Replaying this message alone would run it before an older parked message of its
    /// key: replay `oldest` first, or the whole key.
    #[error(
        "{id} is not the oldest parked message of key {key:?}; replay {oldest} first, or the whole key"
    )]
    NotOldestOfKey {
        /// The parking id asked for.
        id: ParkingId,
        /// Its key.
        key: String,
        /// The oldest parked message of the key.
        oldest: ParkingId,
    },
    /// The message, or its key, is being replayed or discarded by another call.
    #[error("{what} is being replayed or discarded already")]
    Busy {
        /// The parking id or key.
        what: String,
    },
    /// The layer has not wrapped a service yet, so there is nothing to replay through.
    #[error("the dead-letter layer has not wrapped a service yet")]
    NoService,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DeadLetterError {
    /// A stable code for the error, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "dead_letter_not_found",
            Self::NotOldestOfKey { .. } => "dead_letter_not_oldest_of_key",
            Self::Busy { .. } => "dead_letter_busy",
            Self::NoService => "dead_letter_no_service",
            Self::Store(error) => error.code(),
        }
    }
}

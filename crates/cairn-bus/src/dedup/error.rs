//! [`InboxError`]: why an inbox could not answer.

use std::sync::Arc;

use uuid::Uuid;

use crate::handler::HandlerError;
use crate::transport::BoxError;

/// Why an [`Inbox`](super::Inbox) could not check or record a message id. Each variant
/// has a stable [`code`](Self::code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// The consumer name was refused (empty, too long, control characters); nothing was
    /// read or written.
    #[error("invalid consumer name: {reason}")]
    InvalidConsumer {
        /// Why.
        reason: String,
    },
    /// The store could not be reached or failed; trying again may help.
    #[error("the inbox is unavailable: {0}")]
    Unavailable(#[source] BoxError),
}

impl InboxError {
    /// A stable code for the error, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidConsumer { .. } => "inbox_invalid_consumer",
            Self::Unavailable(_) => "inbox_unavailable",
        }
    }
}

impl From<InboxError> for HandlerError {
    /// An unavailable inbox is a transient failure of the message; a refused consumer
    /// name, a permanent one.
    fn from(error: InboxError) -> Self {
        match error {
            InboxError::Unavailable(_) => HandlerError::transient(error),
            InboxError::InvalidConsumer { .. } => HandlerError::permanent(error),
        }
    }
}

/// Why [`Dedup`](super::Dedup) failed a copy of a message without running it: another
/// run of the same id for the same consumer, through another
/// [`DedupLayer`](super::DedupLayer) over the same inbox, has not finished and may still
/// fail. Acknowledging the copy could settle the message before that run's outcome is
/// known, so the copy fails as a transient [`HandlerError`] and its redelivery finds the
/// outcome.
#[derive(Debug, thiserror::Error)]
#[error(
    "message {id} is already running for consumer {consumer:?}; a redelivery will find its outcome"
)]
#[non_exhaustive]
pub struct RunningElsewhere {
    /// The consumer name.
    pub consumer: Arc<str>,
    /// The message id.
    pub id: Uuid,
}

impl RunningElsewhere {
    /// A stable code for the error, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        "inbox_running_elsewhere"
    }
}

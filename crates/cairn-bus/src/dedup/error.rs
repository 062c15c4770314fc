//! [`InboxError`]: why an inbox could not answer.

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

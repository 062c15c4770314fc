//! What every handler and every middleware sees: the request [`Incoming`] and the error
//! [`HandlerError`].
//!
//! A handler, the router and each middleware are tower `Service<Incoming, Response = (),
//! Error = HandlerError>`s, so the middleware compose in any order a `ServiceBuilder`
//! gives them. `Ok(())` means the message's effects are done and it may be acknowledged;
//! an error says whether trying again may help ([`HandlerError::is_retryable`]).

use std::sync::Arc;
use std::time::Duration;

use crate::message::Message;
use crate::transport::BoxError;

/// One message on its way through the middleware to a handler. Cheap to clone (the
/// retry middleware clones it for each attempt).
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The topic it was delivered from.
    pub topic: Arc<str>,
    /// The message.
    pub message: Arc<Message>,
    /// The transport's delivery count, from 1 (above 1 after a redelivery).
    pub attempt: u32,
}

impl Incoming {
    /// A first delivery of `message` from `topic`.
    pub fn new(topic: impl Into<Arc<str>>, message: Message) -> Self {
        Self {
            topic: topic.into(),
            message: Arc::new(message),
            attempt: 1,
        }
    }
}

/// Why a message was not handled. Each variant has a stable [`code`](Self::code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// A failure that may pass: a database briefly away, a busy downstream service.
    #[error("transient failure: {0}")]
    Transient(#[source] BoxError),
    /// A failure that trying again will not fix: invalid content, a broken invariant.
    #[error("permanent failure: {0}")]
    Permanent(#[source] BoxError),
    /// The handler took longer than its deadline and was abandoned.
    #[error("the handler did not finish within {0:?}")]
    Timeout(Duration),
    /// No handler is routed for the message's type or topic.
    #[error("no handler for type {message_type:?} on topic {topic:?}")]
    NoRoute {
        /// The message's type.
        message_type: String,
        /// The topic it came from.
        topic: String,
    },
    /// The payload is not what the handler's type expects.
    #[error("the payload of a {message_type:?} message does not decode as {target}: {source}")]
    Decode {
        /// The message's type.
        message_type: String,
        /// The Rust type it was decoded into.
        target: &'static str,
        /// The decoder's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The retry middleware gave up.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted {
        /// Attempts made, the first included.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<HandlerError>,
    },
    /// The consumer is shutting down and the message was not handled.
    #[error("shutting down")]
    ShuttingDown,
}

impl HandlerError {
    /// A transient failure caused by `error`.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::Transient(error.into())
    }

    /// A permanent failure caused by `error`.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::Permanent(error.into())
    }

    /// Whether trying again may succeed: transient failures and timeouts.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Timeout(_))
    }

    /// How many attempts led to this error: the count of [`HandlerError::Exhausted`], else 1.
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Exhausted { attempts, .. } => *attempts,
            _ => 1,
        }
    }

    /// A stable code for the error, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Transient(_) => "transient",
            Self::Permanent(_) => "permanent",
            Self::Timeout(_) => "timeout",
            Self::NoRoute { .. } => "no_route",
            Self::Decode { .. } => "decode",
            Self::Exhausted { .. } => "exhausted",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_and_timeouts_are_retryable() {
        assert!(HandlerError::transient("db away").is_retryable());
        assert!(HandlerError::Timeout(Duration::from_millis(5)).is_retryable());
        assert!(!HandlerError::permanent("bad").is_retryable());
        assert!(!HandlerError::ShuttingDown.is_retryable());
        let exhausted = HandlerError::Exhausted {
            attempts: 3,
            last: Box::new(HandlerError::transient("db away")),
        };
        assert!(!exhausted.is_retryable());
        assert_eq!(exhausted.attempts(), 3);
        assert_eq!(exhausted.code(), "exhausted");
        assert_eq!(
            exhausted.to_string(),
            "gave up after 3 attempts: transient failure: db away"
        );
    }
}

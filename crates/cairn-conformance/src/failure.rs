//! How a case says it failed: [`Failure`], a message that names what was expected and what
//! was found, and the small helpers the cases use to build one instead of panicking.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// Why a conformance case failed: what the contract expected, what the store did instead,
/// and where in the case it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    message: String,
}

impl Failure {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Adds a line of context (for example the seed that reproduces the run).
    #[must_use]
    pub fn with_note(mut self, note: impl fmt::Display) -> Self {
        self.message = format!("{}\n  {note}", self.message);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Returns a [`Failure`] from the enclosing function unless `$cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err($crate::failure::Failure::new(format!($($message)+)));
        }
    };
}

/// Returns a [`Failure`] from the enclosing function.
macro_rules! fail {
    ($($message:tt)+) => {
        return Err($crate::failure::Failure::new(format!($($message)+)))
    };
}

pub(crate) use {ensure, fail};

/// Turns a store error into a [`Failure`] that says which step produced it.
pub(crate) trait Context<T> {
    /// Fails with "`what`: unexpected error ..." when `self` is an error.
    fn context(self, what: impl fmt::Display) -> Result<T, Failure>;
}

impl<T, E: fmt::Debug> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|error| Failure::new(format!("{what}: unexpected error {error:?}")))
    }
}

/// Awaits `future` for at most `limit`; a hang becomes a [`Failure`] naming `what` was
/// awaited.
pub(crate) async fn within<T>(
    limit: Duration,
    what: impl fmt::Display,
    future: impl Future<Output = T>,
) -> Result<T, Failure> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| Failure::new(format!("{what}: no answer within {limit:?}")))
}

/// The text of a panic payload, as far as it is text.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}

//! Timeout middleware: abandons a handler that does not finish within a deadline.
//!
//! [`TimeoutLayer::new`]`(duration)` wraps a service in a [`Timeout`]. When the inner
//! future has not finished `duration` after the call, the response is
//! [`HandlerError::Timeout`]`(duration)` (retryable by default) and the inner future is
//! dropped with the response future, which cancels the handler at its current `.await`.
//!
//! Inside a [`Retry`](crate::retry::Retry) each attempt gets its own deadline; outside it,
//! the deadline bounds all the attempts and their waits together.

mod layer;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tower::Service;

use crate::handler::{HandlerError, Incoming};

pub use layer::TimeoutLayer;

/// A service whose calls fail with [`HandlerError::Timeout`] when the inner service takes
/// longer than a deadline; built by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    duration: Duration,
}

impl<S> Timeout<S> {
    /// Wraps `inner` with a deadline of `duration` per call.
    pub fn new(inner: S, duration: Duration) -> Self {
        Self { inner, duration }
    }

    /// The deadline of each call.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Incoming> for Timeout<S>
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
{
    type Response = ();
    type Error = HandlerError;
    type Future = ResponseFuture<S::Future>;

    /// # Errors
    ///
    /// The inner service's readiness error, as it is: waiting to be ready is not timed.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    /// # Panics
    ///
    /// When called outside a Tokio runtime with its timer enabled.
    fn call(&mut self, request: Incoming) -> Self::Future {
        ResponseFuture {
            inner: tokio::time::timeout(self.duration, self.inner.call(request)),
            duration: self.duration,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Timeout`].
    ///
    /// # Errors
    ///
    /// Resolves to [`HandlerError::Timeout`] when the deadline passes first, else to the
    /// inner service's result.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        duration: Duration,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<(), HandlerError>>,
{
    type Output = Result<(), HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(result) => Poll::Ready(result),
            Err(_elapsed) => Poll::Ready(Err(HandlerError::Timeout(*this.duration))),
        }
    }
}

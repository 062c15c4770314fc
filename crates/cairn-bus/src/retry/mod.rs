//! Retry middleware: calls the inner service again, after an exponential backoff with
//! jitter, while its error is retryable and attempts remain.
//!
//! [`RetryLayer::new`]`(`[`RetryPolicy`]`)` wraps a service in a [`Retry`]. On success the
//! response is `Ok(())`. When it gives up, because the attempts are used up or the error is
//! permanent, the error is always [`HandlerError::Exhausted`] with the number of attempts
//! made, even after a single one, so that the layers outside (dead letters, metrics) know
//! the count and the cause.
//!
//! The waits are `tokio::time::sleep`s on the message's own task: the message holds its
//! place (and, under ordered concurrency, its key) while it waits. Retries are in-process;
//! [`Incoming::attempt`] keeps the transport's delivery count and is not changed by them.
//! Put a [`Timeout`](crate::timeout::Timeout) inside the retry to bound each attempt, or
//! outside to bound them all.
//!
//! The first attempt costs the inner call plus a clone of the service, of the request and
//! of the policy's handle (reference counts), and no allocation; the backoff's timer is
//! only created when an attempt fails.

mod layer;
mod policy;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::time::Sleep;
use tower::Service;

use crate::handler::{HandlerError, Incoming};

pub use layer::RetryLayer;
pub use policy::{Jitter, RetryPolicy};

/// A service that retries its inner service by a [`RetryPolicy`]; built by [`RetryLayer`].
///
/// The inner service must be `Clone`: each call takes the service made ready by
/// `poll_ready` and leaves a clone in its place, and the response future keeps it to call
/// again (after waiting for it to be ready again) on each retry. A readiness error during a
/// retry counts as that attempt's error.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
}

impl<S> Retry<S> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self::from_shared(inner, Arc::new(policy))
    }

    pub(crate) fn from_shared(inner: S, policy: Arc<RetryPolicy>) -> Self {
        Self { inner, policy }
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
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

impl<S> Service<Incoming> for Retry<S>
where
    S: Service<Incoming, Response = (), Error = HandlerError> + Clone,
{
    type Response = ();
    type Error = HandlerError;
    type Future = ResponseFuture<S>;

    /// # Errors
    ///
    /// The inner service's readiness error, as it is.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Incoming) -> Self::Future {
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let future = service.call(request.clone());
        ResponseFuture {
            state: State::Calling { future },
            service,
            request,
            attempt: 1,
            policy: Arc::clone(&self.policy),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Retry`].
    ///
    /// # Errors
    ///
    /// Resolves to [`HandlerError::Exhausted`] with the attempts made and the last error
    /// when the policy gives up.
    pub struct ResponseFuture<S>
    where
        S: Service<Incoming>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        request: Incoming,
        // The attempt under way (from 1).
        attempt: u32,
        policy: Arc<RetryPolicy>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is running.
        Calling { #[pin] future: F },
        // Waiting out the backoff before the next attempt.
        Sleeping { sleep: Pin<Box<Sleep>> },
        // Waiting for the service to be ready for the next attempt.
        Readying,
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
{
    type Output = Result<(), HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let error = match this.state.as_mut().project() {
                StateProj::Calling { future } => match ready!(future.poll(cx)) {
                    Ok(()) => return Poll::Ready(Ok(())),
                    Err(error) => error,
                },
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                    continue;
                }
                StateProj::Readying => match ready!(this.service.poll_ready(cx)) {
                    Ok(()) => {
                        let future = this.service.call(this.request.clone());
                        this.state.set(State::Calling { future });
                        continue;
                    }
                    // A service that cannot take the attempt fails it.
                    Err(error) => error,
                },
            };

            let failed = *this.attempt;
            if failed >= this.policy.max_attempts() || !this.policy.is_retryable(&error) {
                return Poll::Ready(Err(HandlerError::Exhausted {
                    attempts: failed,
                    last: Box::new(error),
                }));
            }
            let delay = this.policy.delay(failed);
            tracing::debug!(
                message.id = %this.request.message.id,
                attempt = failed,
                ?delay,
                error = %error,
                "retrying the message",
            );
            this.policy
                .notify_retry(this.request, failed, &error, delay);
            *this.attempt = failed + 1;
            if delay.is_zero() {
                this.state.set(State::Readying);
            } else {
                this.state.set(State::Sleeping {
                    sleep: Box::pin(tokio::time::sleep(delay)),
                });
            }
        }
    }
}

//! Ordered concurrency: many messages in flight at once, but the messages of one ordering
//! key ([`Message::key`](crate::Message::key)) one at a time, in delivery order.
//!
//! [`OrderedLayer::new(n)`](OrderedLayer::new) wraps a service so that:
//!
//! - at most `n` messages are in flight in total (running, or waiting behind an earlier
//!   message of their key); while `n` are, `poll_ready` is pending, so the consumer stops
//!   pulling from the transport;
//! - messages with the same key run one at a time, in the order `call` was invoked. The
//!   consumer calls `call` in delivery order, and the message's place in its key's queue
//!   is taken inside `call` itself, not when the returned future is first polled;
//! - messages without a key only count against `n`.
//!
//! Each key with a message in flight has a lane; the lane goes when its last message is
//! done, so memory is bounded by the messages in flight, not by the keys ever seen.
//! Dropping a response future (cancelling the message) gives back its slot and its place:
//! the next message of its key gets the turn.
//!
//! On the hot path (a free lane or no key) `call` takes one short lock on the lane table
//! and calls the inner service directly; nothing is boxed. Only a message that has to wait
//! behind its key is boxed, with its wait.
//!
//! This is not a per-key queue with its own tasks: messages wait inside their own
//! futures, which the consumer drives.
//!
//! # Examples
//!
//! ```
//! use cairn_bus::ordered::OrderedLayer;
//! use cairn_bus::{HandlerError, Incoming};
//! use tower::{ServiceBuilder, service_fn};
//!
//! let layer = OrderedLayer::new(64);
//! let service = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service(service_fn(|_: Incoming| async { Ok::<(), HandlerError>(()) }));
//! assert_eq!(layer.in_flight(), 0);
//! # drop(service);
//! ```

mod lanes;
mod layer;
mod slots;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either};
use tower::Service;

pub use self::lanes::Release;
pub use self::layer::OrderedLayer;

use self::lanes::{Entry, LaneKey, Lanes};
use crate::handler::{HandlerError, Incoming};

/// The response future of [`Ordered`]: the inner future run with the message's release
/// beside it (dropped when the message is done or cancelled), or, for a message that
/// waits behind its key, a boxed wait-then-run.
pub type ResponseFuture<F> = Either<Running<F>, BoxFuture<'static, Result<(), HandlerError>>>;

pin_project_lite::pin_project! {
    /// The inner future of a message that holds its lane, with its [`Release`] beside it,
    /// dropped when the inner future is done (or dropped with it).
    pub struct Running<F> {
        #[pin]
        inner: F,
        release: Option<Release>,
    }
}

impl<F> Future for Running<F>
where
    F: Future<Output = Result<(), HandlerError>>,
{
    type Output = Result<(), HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        drop(this.release.take());
        Poll::Ready(result)
    }
}

/// The service made by [`OrderedLayer`]; see the [module docs](self).
#[derive(Debug)]
pub struct Ordered<S> {
    inner: S,
    /// Whether this service holds a slot, taken by `poll_ready` and spent by the next
    /// `call` (or given back if the service is dropped first).
    has_slot: bool,
    lanes: Arc<Lanes>,
}

impl<S: Clone> Clone for Ordered<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            // A slot belongs to the service that took it.
            has_slot: false,
            lanes: Arc::clone(&self.lanes),
        }
    }
}

impl<S> Drop for Ordered<S> {
    fn drop(&mut self) {
        if self.has_slot {
            self.lanes.slots.give_back();
        }
    }
}

impl<S> Ordered<S> {
    fn new(inner: S, lanes: Arc<Lanes>) -> Self {
        Self {
            inner,
            has_slot: false,
            lanes,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn running<F>(inner: F, release: Release) -> Running<F> {
    Running {
        inner,
        release: Some(release),
    }
}

impl<S> Service<Incoming> for Ordered<S>
where
    S: Service<Incoming, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = ResponseFuture<S::Future>;

    /// Ready when a slot of the global bound is free and the inner service is ready.
    ///
    /// # Errors
    ///
    /// The inner service's readiness error.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        if !self.has_slot {
            std::task::ready!(self.lanes.slots.poll_take(cx));
            self.has_slot = true;
        }
        self.inner.poll_ready(cx)
    }

    /// Takes the message's place in its key's queue now, then runs it when its turn
    /// comes.
    ///
    /// # Panics
    ///
    /// When called without a successful `poll_ready` before it, as tower's contract
    /// forbids.
    fn call(&mut self, request: Incoming) -> Self::Future {
        assert!(
            std::mem::replace(&mut self.has_slot, false),
            "Ordered::call without poll_ready: the slot was not acquired"
        );
        // From here the slot belongs to the message's release (or its turn).
        let Some(key) = LaneKey::of(&request.message) else {
            let release = Release::unkeyed(Arc::clone(&self.lanes));
            return Either::Left(running(self.inner.call(request), release));
        };
        match self.lanes.enter(key) {
            Entry::Free(release) => Either::Left(running(self.inner.call(request), release)),
            Entry::Queued(turn) => {
                // The inner service was made ready for this message: take that one, leave
                // a clone for the next.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Either::Right(Box::pin(async move {
                    let release = turn.await;
                    let result = inner.call(request).await;
                    drop(release);
                    result
                }))
            }
        }
    }
}

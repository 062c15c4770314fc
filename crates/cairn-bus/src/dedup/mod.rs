//! Inbox de-duplication: a message whose id the consumer has already processed is skipped,
//! so a message delivered twice takes effect once.
//!
//! [`DedupLayer::new(consumer, inbox)`](DedupLayer::new) wraps a service so that, for each
//! message:
//!
//! - if `inbox` has recorded the message id for `consumer`, the message is skipped: the
//!   inner service is not called and the result is `Ok` (the consumer acknowledges it);
//! - otherwise the inner service runs; after `Ok` the id is recorded, after an error (or
//!   when the message is cancelled) it is not, so a redelivery runs it again.
//!
//! An inbox that answers without waiting ([`Inbox::as_immediate`], as [`MemoryInbox`]
//! does) records the id as the message starts, with the same table access that checks it
//! ([`ImmediateInbox::start_now`]), and marks it as running until the message ends
//! ([`ImmediateInbox::finish_now`]): success leaves the id recorded, failure or
//! cancellation removes it again. Other inboxes record it after `Ok`. Either way the
//! outcome is the one above.
//!
//! Two deliveries of one id racing through one layer never both run the inner service:
//! the first claims the id in the layer's in-process set, the second waits (on a channel,
//! without polling) for the first's outcome, then skips if it succeeded or runs if it
//! failed or was cancelled (a failed first delivery's id is removed before the second is
//! told). A copy reaching *another* [`DedupLayer`] on the same inbox and consumer name
//! (two consumers of one group in one process, each with a layer over a clone of one
//! [`MemoryInbox`]) while the first runs is never acknowledged before the first's outcome
//! is known:
//!
//! - with an immediate inbox it finds the id running and fails at once, without running,
//!   with a transient [`HandlerError`] caused by [`RunningElsewhere`], so it is nacked and
//!   its redelivery is skipped if the first succeeded, or runs if it failed. It does not
//!   wait for the first: retry middleware outside this one retries it, and counts it as an
//!   attempt (a dead-letter layer may park it once the attempts run out);
//! - with another inbox it finds the id unrecorded until the first succeeds, and runs
//!   beside it: its effects may happen twice.
//!
//! # The guarantee
//!
//! - **No message is acknowledged unrun while a run of it may still fail**: a skipped
//!   message's effects are done (a run of it succeeded and recorded its id).
//! - **Within one layer**, the effects of a message happen once per window of the inbox
//!   (the [`MemoryInbox`] forgets the oldest ids beyond its window, a generation at a time,
//!   counting an id from when its message started; [`PgInbox`] has no window), however
//!   often and however concurrently it is delivered. Across layers sharing an immediate
//!   inbox the same holds, the copies that overlap a run being failed rather than run;
//!   across layers sharing another inbox, copies that overlap a run may run too.
//! - **Across processes and crashes**, the id is recorded *after* the effects: a crash (or
//!   a failed record) between the two leaves the message unrecorded and the broker
//!   redelivers it, so its effects may happen again. Two processes handling one id at the
//!   same moment may both run it. Handlers that need strictly exactly-once effects record
//!   the id in the transaction of their own effects with `cairn_postgres::inbox::record`
//!   and skip the message when it returns `false`; this middleware then only spares them
//!   the work of duplicates it knows.
//!
//! A failure to *check* the inbox (for an immediate inbox, to record the id as the message
//! starts) fails the message ([`InboxError`] becomes a transient [`HandlerError`], or a
//! permanent one for a refused consumer name) without running it. A failure to *record*
//! after the effects succeeded is logged and the message is still acknowledged: its
//! effects are done, and failing it would only make the broker redeliver it into an inbox
//! that does not know it.
//!
//! # Cost
//!
//! With an inbox that answers without waiting, a new id costs a claim and a release in the
//! in-process set, one start in the inbox (a lookup in the small set of running ids and an
//! insert-if-absent in the large table, under one lock) and one finish (a removal from the
//! running ids, under the lock again), each a hash operation under a short lock, and no
//! allocated future; a failure adds a removal from the large table. Other inboxes
//! (PostgreSQL) go through a boxed future, with a lookup before the call and an insert
//! after it.
//!
//! # Feature flags
//!
//! | Feature    | Adds                                                   |
//! |------------|--------------------------------------------------------|
//! | `postgres` | [`PgInbox`], the inbox in PostgreSQL (`cairn-postgres`) |
//!
//! # Examples
//!
//! ```
//! use cairn_bus::dedup::{DedupLayer, MemoryInbox};
//! use cairn_bus::{HandlerError, Incoming, Message};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), HandlerError> {
//! let inbox = MemoryInbox::new();
//! let mut service = ServiceBuilder::new()
//!     .layer(DedupLayer::new("billing", inbox.clone()))
//!     .service(service_fn(|_: Incoming| async { Ok::<(), HandlerError>(()) }));
//! let incoming = Incoming::new("orders", Message::new("order.placed", "{}"));
//! service.ready().await?.call(incoming.clone()).await?;
//! service.ready().await?.call(incoming).await?; // skipped
//! assert_eq!(inbox.remembered("billing"), 1);
//! # Ok(())
//! # }
//! ```

mod error;
mod ids;
mod in_progress;
mod layer;
#[cfg(feature = "postgres")]
mod postgres;
mod store;
#[cfg(test)]
mod tests;
mod window;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future;
use futures::future::{BoxFuture, Either, Ready};
use tower::Service;
use uuid::Uuid;

pub use self::error::{InboxError, RunningElsewhere};
pub use self::layer::DedupLayer;
#[cfg(feature = "postgres")]
pub use self::postgres::PgInbox;
pub use self::store::{ImmediateInbox, Inbox, MemoryInbox, Start};

use self::in_progress::{Claim, InProgress, Owner};
use crate::handler::{HandlerError, Incoming};

/// What every service of one [`DedupLayer`] shares.
struct Shared {
    consumer: Arc<str>,
    inbox: Arc<dyn Inbox>,
    in_progress: InProgress,
}

/// The response future of [`Dedup`]: an immediate answer (a skipped duplicate), the inner
/// future with its [`Finish`] beside it (the hot path), or a boxed future for the rest
/// (waiting for a racing duplicate, an inbox that has to wait).
pub type ResponseFuture<F> = Either<
    Either<Ready<Result<(), HandlerError>>, Running<F>>,
    BoxFuture<'static, Result<(), HandlerError>>,
>;

pin_project_lite::pin_project! {
    /// The inner future of a message claimed on the hot path, with its [`Finish`] beside
    /// it, run when the inner future is done (or dropped with it).
    pub struct Running<F> {
        #[pin]
        inner: F,
        finish: Option<Finish>,
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
        Poll::Ready(match this.finish.take() {
            Some(finish) => finish.run(result),
            None => result,
        })
    }
}

/// What a message started in an immediate inbox does when the inner service is done: it
/// [finishes](ImmediateInbox::finish_now) the run there (on success the id stays recorded,
/// on an error it is removed again), then releases the claim. Dropped unused (a cancelled
/// message), it finishes the run and releases the claim as failed.
pub struct Finish {
    shared: Arc<Shared>,
    id: Uuid,
    /// Whether the claim on `id` is still held; cleared when it runs (or is dropped).
    claimed: bool,
}

impl fmt::Debug for Finish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finish")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Finish {
    fn run(mut self, result: Result<(), HandlerError>) -> Result<(), HandlerError> {
        self.release(result.is_ok());
        result
    }

    /// Finishes the run in the inbox (a failed one's id is removed there) before waking a
    /// waiting duplicate, which then finds the id new or done; then ends the claim.
    fn release(&mut self, succeeded: bool) {
        if !std::mem::replace(&mut self.claimed, false) {
            return;
        }
        if let Some(inbox) = self.shared.inbox.as_immediate() {
            inbox.finish_now(&self.shared.consumer, self.id, succeeded);
        }
        self.shared.in_progress.release(self.id, succeeded);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.release(false);
    }
}

fn not_recorded(consumer: &str, id: Uuid, error: &InboxError) {
    tracing::warn!(
        consumer,
        message_id = %id,
        code = error.code(),
        %error,
        "message handled but not recorded in the inbox; a redelivery would run it again"
    );
}

/// The service made by [`DedupLayer`]; see the [module docs](self).
pub struct Dedup<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Dedup<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Dedup<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedup")
            .field("inner", &self.inner)
            .field("consumer", &self.shared.consumer)
            .finish_non_exhaustive()
    }
}

impl<S> Dedup<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> Service<Incoming> for Dedup<S>
where
    S: Service<Incoming, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = ResponseFuture<S::Future>;

    /// # Errors
    ///
    /// The inner service's readiness error.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Incoming) -> Self::Future {
        let id = request.message.id;
        let claim = self.shared.in_progress.claim(id);
        let claim = match (claim, self.shared.inbox.as_immediate()) {
            (Claim::Owner, Some(inbox)) => {
                // One table access: the id is recorded as the message starts, and removed
                // again if it fails or is cancelled (see `Finish`).
                let answer = match start_immediate(&self.shared, inbox, id) {
                    Ok(Some(finish)) => {
                        let running = Running {
                            inner: self.inner.call(request),
                            finish: Some(finish),
                        };
                        return Either::Left(Either::Right(running));
                    }
                    Ok(None) => Ok(()),
                    Err(error) => Err(error),
                };
                return Either::Left(Either::Left(future::ready(answer)));
            }
            (claim, _) => claim,
        };
        // The inner service was made ready for this message: take that one, leave a clone
        // for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(run_waiting(
            Arc::clone(&self.shared),
            inner,
            request,
            claim,
        )))
    }
}

/// Starts `id`, whose claim the caller holds, in an immediate inbox: the [`Finish`] of a
/// new id, which then holds the claim; `None` for an id whose effects are done; an error
/// for an id another layer's run holds (it may still fail, so this copy must not be
/// acknowledged) or an inbox that failed. Except for a new id, the claim is released.
fn start_immediate(
    shared: &Arc<Shared>,
    inbox: &dyn ImmediateInbox,
    id: Uuid,
) -> Result<Option<Finish>, HandlerError> {
    let (succeeded, answer) = match inbox.start_now(&shared.consumer, id) {
        Ok(Start::New) => {
            return Ok(Some(Finish {
                shared: Arc::clone(shared),
                id,
                claimed: true,
            }));
        }
        Ok(Start::Done) => (true, Ok(None)),
        Ok(Start::Running) => {
            let running = RunningElsewhere {
                consumer: Arc::clone(&shared.consumer),
                id,
            };
            (false, Err(HandlerError::transient(running)))
        }
        Err(error) => (false, Err(error.into())),
    };
    shared.in_progress.release(id, succeeded);
    answer
}

/// The path that may wait: for a racing duplicate's outcome, or for the inbox.
async fn run_waiting<S>(
    shared: Arc<Shared>,
    mut inner: S,
    request: Incoming,
    mut claim: Claim,
) -> Result<(), HandlerError>
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
{
    let id = request.message.id;
    loop {
        if let Claim::Wait(outcome) = claim {
            if outcome.await == Ok(true) {
                return Ok(());
            }
            claim = shared.in_progress.claim(id);
            continue;
        }
        if let Some(inbox) = shared.inbox.as_immediate() {
            return match start_immediate(&shared, inbox, id)? {
                Some(finish) => finish.run(inner.call(request).await),
                None => Ok(()),
            };
        }
        let owner = Owner::new(&shared.in_progress, id);
        // On an error `owner` drops, which releases the claim as failed.
        if shared.inbox.contains(&shared.consumer, id).await? {
            owner.finish(true);
            return Ok(());
        }
        let result = inner.call(request).await;
        if result.is_ok()
            && let Err(error) = shared.inbox.record(&shared.consumer, id).await
        {
            not_recorded(&shared.consumer, id, &error);
        }
        owner.finish(result.is_ok());
        return result;
    }
}

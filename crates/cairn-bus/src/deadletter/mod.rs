//! Dead letters: a message whose handling failed is parked with its error, so the consumer
//! can acknowledge it and go on; an operator lists, inspects, replays or discards it later.
//!
//! [`DeadLetterLayer::new(store, policy)`](DeadLetterLayer::new) wraps a service so that
//! when the service fails (any error: with the retry middleware inside, that is
//! [`HandlerError::Exhausted`]), the message is parked in `store` as a [`Parked`]: the
//! whole message as delivered (headers included), its topic, the error's code and text,
//! the attempts made ([`HandlerError::attempts`]), when it was parked and a [`ParkingId`];
//! and the layer returns `Ok`, so the consumer acknowledges it at the broker.
//! [`HandlerError::ShuttingDown`] is the exception: the message was not handled because
//! the consumer is stopping, so the error passes through and the broker redelivers it.
//!
//! # Keys
//!
//! With [`KeyPolicy::Block`] (the default), once a message with a key is parked, every
//! later message of that key is parked behind it without being handled (code
//! [`WAITING_BEHIND`], `behind` naming the parked message), so a key's order is never
//! silently broken; other keys flow on. With [`KeyPolicy::Continue`] later messages are
//! handled normally. Which keys are blocked is kept in memory beside the store; the check
//! on the hot path is one atomic load while no key is blocked. Order is only meaningful if
//! a key's messages reach this layer one at a time: put it inside
//! [`OrderedLayer`](crate::ordered::OrderedLayer) (or run the consumer sequentially).
//!
//! [`DeadLetters`] (from [`DeadLetterLayer::dead_letters`]) lists and replays: see its
//! docs for the order guarantees of replay.
//!
//! If the store fails while parking, the layer returns the handler's error (or a transient
//! one, for a message that was to wait behind its key), so the broker keeps the message
//! and redelivers it.
//!
//! # Where it goes
//!
//! Outside the retry and timeout middleware (it parks what they gave up on), inside the
//! ordered-concurrency middleware. The de-duplication middleware goes inside it, so that
//! a parked message is not recorded as processed and is recorded when a replay succeeds.
//!
//! # Examples
//!
//! ```
//! use cairn_bus::deadletter::{DeadLetterLayer, KeyPolicy, ListFilter, MemoryDeadLetters};
//! use cairn_bus::{HandlerError, Incoming, Message};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = DeadLetterLayer::new(MemoryDeadLetters::new(), KeyPolicy::Block)
//!     .on_parked(|parked| println!("parked {} ({})", parked.id, parked.code));
//! let dead_letters = layer.dead_letters();
//! let mut service = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|_: Incoming| async {
//!         Err::<(), _>(HandlerError::permanent("cannot apply"))
//!     }));
//! let message = Message::new("order.placed", "{}").with_key("order-1");
//! service.ready().await?.call(Incoming::new("orders", message)).await?; // parked: Ok
//! let parked = dead_letters.list(&ListFilter::new().key("order-1")).await?;
//! assert_eq!(parked[0].code, "permanent");
//! assert!(dead_letters.is_blocked("order-1"));
//! # Ok(())
//! # }
//! ```

mod blocks;
mod error;
mod layer;
mod letters;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::future::{BoxFuture, Either, Join, Ready, Then};
use futures::{FutureExt, future};
use tower::Service;

pub use self::error::{DeadLetterError, StoreError};
pub use self::layer::DeadLetterLayer;
pub use self::letters::{DeadLetters, ReplayReport};
pub use self::store::{
    DeadLetterStore, ListFilter, MemoryDeadLetters, Parked, ParkingId, WAITING_BEHIND,
};

use self::blocks::Blocks;
use self::letters::ReplayService;
use crate::handler::{HandlerError, Incoming};

/// What to do with later messages of a key that has a parked message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyPolicy {
    /// Park them behind it without handling them, until the key's parked messages are
    /// replayed or discarded: a key's order is never broken.
    #[default]
    Block,
    /// Handle them normally: for keys whose order does not matter after a failure.
    Continue,
}

/// A hook told of every parked message.
type Hook = Arc<dyn Fn(&Parked) + Send + Sync>;

/// What the layer, its services and its [`DeadLetters`] share.
struct Shared {
    store: Arc<dyn DeadLetterStore>,
    policy: KeyPolicy,
    blocks: Arc<Blocks>,
    /// Set by [`DeadLetterLayer::on_parked`]; read after each parking.
    on_parked: RwLock<Option<Hook>>,
    /// Set by each `Layer::layer` call; cloned by each replay.
    service: Mutex<Option<ReplayService>>,
}

impl Shared {
    /// The key that orders `parked` against others: its key, under [`KeyPolicy::Block`].
    fn blocking_key<'a>(&self, parked: &'a Parked) -> Option<&'a str> {
        match self.policy {
            KeyPolicy::Block => parked.key(),
            KeyPolicy::Continue => None,
        }
    }

    fn parked(&self, parked: &Parked) {
        let hook = self
            .on_parked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook(parked);
        }
    }

    fn replay_service(&self) -> Result<ReplayService, DeadLetterError> {
        self.service
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(DeadLetterError::NoService)
    }
}

/// The response future of [`DeadLetter`]: the inner future followed, only on failure, by
/// a boxed parking; or, for a message parked behind its key, a boxed parking alone.
pub type ResponseFuture<F> = Either<Handling<F>, BoxFuture<'static, Result<(), HandlerError>>>;

/// What follows the inner future: nothing on success, the parking on failure.
pub type AfterHandling =
    Either<Ready<Result<(), HandlerError>>, BoxFuture<'static, Result<(), HandlerError>>>;

/// The inner future, with what parking its message needs beside it.
pub type Handling<F> = Then<
    Join<F, Ready<ParkOnFailure>>,
    AfterHandling,
    fn((Result<(), HandlerError>, ParkOnFailure)) -> AfterHandling,
>;

/// What parking a message that fails needs: the message and the layer's state.
pub struct ParkOnFailure {
    shared: Arc<Shared>,
    incoming: Incoming,
}

impl fmt::Debug for ParkOnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParkOnFailure")
            .field("message", &self.incoming.message.id)
            .finish_non_exhaustive()
    }
}

fn after_handling((result, park): (Result<(), HandlerError>, ParkOnFailure)) -> AfterHandling {
    match result {
        Ok(()) => Either::Left(future::ready(Ok(()))),
        Err(HandlerError::ShuttingDown) => {
            Either::Left(future::ready(Err(HandlerError::ShuttingDown)))
        }
        Err(error) => Either::Right(Box::pin(park_failed(park, error))),
    }
}

/// Parks a message whose handling failed.
async fn park_failed(park: ParkOnFailure, error: HandlerError) -> Result<(), HandlerError> {
    let ParkOnFailure { shared, incoming } = park;
    let parked = Parked {
        id: ParkingId::next(),
        topic: incoming.topic,
        message: incoming.message,
        code: error.code().to_owned(),
        error: error.to_string(),
        attempts: error.attempts(),
        parked_at: SystemTime::now(),
        behind: None,
    };
    let key = shared.blocking_key(&parked);
    if let Some(key) = key {
        shared.blocks.park_failed(key, parked.id);
    }
    if let Err(store_error) = shared.store.park(&parked).await {
        if let Some(key) = key {
            shared.blocks.unpark(key);
        }
        tracing::error!(
            message_id = %parked.message.id,
            code = store_error.code(),
            error = %store_error,
            "a failed message could not be parked; it is left to the broker"
        );
        return Err(error);
    }
    tracing::warn!(
        parking_id = %parked.id,
        message_id = %parked.message.id,
        code = %parked.code,
        error = %parked.error,
        "message parked"
    );
    shared.parked(&parked);
    Ok(())
}

/// Parks a message behind the parked message `blocker` of its key, without handling it.
async fn park_behind(
    shared: Arc<Shared>,
    incoming: Incoming,
    id: ParkingId,
    blocker: ParkingId,
) -> Result<(), HandlerError> {
    let parked = Parked {
        id,
        topic: incoming.topic,
        message: incoming.message,
        code: WAITING_BEHIND.to_owned(),
        error: format!("waiting behind parking id {blocker}"),
        attempts: 0,
        parked_at: SystemTime::now(),
        behind: Some(blocker),
    };
    if let Err(store_error) = shared.store.park(&parked).await {
        if let Some(key) = parked.key() {
            shared.blocks.unpark(key);
        }
        return Err(HandlerError::transient(store_error));
    }
    shared.parked(&parked);
    Ok(())
}

/// The service made by [`DeadLetterLayer`]; see the [module docs](self).
pub struct DeadLetter<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for DeadLetter<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for DeadLetter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl<S> DeadLetter<S> {
    /// The handle on this service's parked messages.
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> Service<Incoming> for DeadLetter<S>
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
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
        if self.shared.policy == KeyPolicy::Block
            && self.shared.blocks.any()
            && let Some(key) = request.message.key.as_deref()
            && let Some((id, blocker)) = self.shared.blocks.park_behind(key)
        {
            let shared = Arc::clone(&self.shared);
            return Either::Right(Box::pin(park_behind(shared, request, id, blocker)));
        }
        let park = ParkOnFailure {
            shared: Arc::clone(&self.shared),
            incoming: request.clone(),
        };
        Either::Left(
            future::join(self.inner.call(request), future::ready(park))
                .then(after_handling as fn(_) -> _),
        )
    }
}

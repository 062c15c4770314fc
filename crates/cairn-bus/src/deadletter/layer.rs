//! [`DeadLetterLayer`]: builds [`DeadLetter`] services and hands out their
//! [`DeadLetters`].

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tower::util::BoxCloneService;
use tower::{Layer, Service};

use super::{DeadLetter, DeadLetterStore, DeadLetters, KeyPolicy, Parked, Shared};
use crate::handler::{HandlerError, Incoming};

/// Parks failed messages in a store; see the [module docs](super).
///
/// Apply it to one service: [`DeadLetters`] replays through the service the layer wrapped
/// (if it wraps several, through the last). Every service it makes, and their clones,
/// share the store and the blocked keys.
#[derive(Clone)]
pub struct DeadLetterLayer {
    shared: Arc<Shared>,
}

impl DeadLetterLayer {
    /// Parks failed messages in `store`, treating later messages of their key by `policy`.
    pub fn new(store: impl DeadLetterStore, policy: KeyPolicy) -> Self {
        Self::from_shared(Arc::new(store), policy)
    }

    /// As [`new`](Self::new), with a store already shared. One store per layer: the
    /// blocked keys are kept by the layer.
    pub fn from_shared(store: Arc<dyn DeadLetterStore>, policy: KeyPolicy) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                policy,
                blocks: Arc::default(),
                on_parked: RwLock::new(None),
                service: Mutex::new(None),
            }),
        }
    }

    /// Calls `hook` with each message parked (after the store kept it), for metrics and
    /// alerts. It runs on the consumer's path: keep it short. Replaces an earlier hook.
    #[must_use]
    pub fn on_parked(self, hook: impl Fn(&Parked) + Send + Sync + 'static) -> Self {
        *self
            .shared
            .on_parked
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(hook));
        self
    }

    /// The handle on the parked messages.
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl fmt::Debug for DeadLetterLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterLayer")
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for DeadLetterLayer
where
    S: Service<Incoming, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Service = DeadLetter<S>;

    fn layer(&self, inner: S) -> DeadLetter<S> {
        *self
            .shared
            .service
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(BoxCloneService::new(inner.clone()));
        DeadLetter {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

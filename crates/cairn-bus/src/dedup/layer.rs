//! [`DedupLayer`]: builds [`Dedup`] services for one consumer.

use std::sync::Arc;

use tower::Layer;

use super::in_progress::InProgress;
use super::{Dedup, Inbox, Shared};

/// Inbox de-duplication for the consumer named `consumer`; see the [module docs](super).
///
/// Every service this layer makes (and every clone of one) shares the consumer's
/// in-progress set, so duplicates racing through any of them are seen.
#[derive(Clone)]
pub struct DedupLayer {
    pub(super) shared: Arc<Shared>,
}

impl DedupLayer {
    /// De-duplication of the messages of `consumer` (the name ids are recorded under,
    /// usually the subscription's group) in `inbox`.
    pub fn new(consumer: impl Into<Arc<str>>, inbox: impl Inbox) -> Self {
        Self::from_shared(consumer, Arc::new(inbox))
    }

    /// As [`new`](Self::new), with an inbox already shared.
    pub fn from_shared(consumer: impl Into<Arc<str>>, inbox: Arc<dyn Inbox>) -> Self {
        Self {
            shared: Arc::new(Shared {
                consumer: consumer.into(),
                inbox,
                in_progress: InProgress::default(),
            }),
        }
    }

    /// The consumer name.
    pub fn consumer(&self) -> &str {
        &self.shared.consumer
    }
}

impl std::fmt::Debug for DedupLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupLayer")
            .field("consumer", &self.shared.consumer)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;

    fn layer(&self, inner: S) -> Dedup<S> {
        Dedup {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

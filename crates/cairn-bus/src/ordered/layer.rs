//! [`OrderedLayer`]: builds [`Ordered`] services that share one bound and one lane table.

use std::sync::Arc;

use tower::Layer;

use super::Ordered;
use super::lanes::Lanes;

/// Per-key ordered concurrency with a global bound; see the [module docs](super).
///
/// Every service this layer makes (and every clone of one) shares the bound and the
/// lanes: `max_in_flight` counts the messages of all of them together.
#[derive(Debug, Clone)]
pub struct OrderedLayer {
    lanes: Arc<Lanes>,
}

impl OrderedLayer {
    /// At most `max_in_flight` messages in flight in total, one at a time per key.
    /// `max_in_flight` is taken as at least 1.
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            lanes: Arc::new(Lanes::new(max_in_flight)),
        }
    }

    /// The bound.
    pub fn max_in_flight(&self) -> usize {
        self.lanes.slots.limit()
    }

    /// Messages in flight now: called, or made ready for a call, and not yet done.
    pub fn in_flight(&self) -> usize {
        self.lanes.slots.taken()
    }

    /// Keys with a message in flight now (each has a lane).
    pub fn keys_in_flight(&self) -> usize {
        self.lanes.len()
    }
}

impl<S> Layer<S> for OrderedLayer {
    type Service = Ordered<S>;

    fn layer(&self, inner: S) -> Ordered<S> {
        Ordered::new(inner, Arc::clone(&self.lanes))
    }
}

//! [`OrderedLayer`]: builds [`Ordered`] services that share one bound and one lane table.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::PollSemaphore;
use tower::Layer;

use super::Ordered;
use super::lanes::Lanes;

/// Per-key ordered concurrency with a global bound; see the [module docs](super).
///
/// Every service this layer makes (and every clone of one) shares the bound and the
/// lanes: `max_in_flight` counts the messages of all of them together.
#[derive(Debug, Clone)]
pub struct OrderedLayer {
    semaphore: Arc<Semaphore>,
    max_in_flight: usize,
    lanes: Arc<Lanes>,
}

impl OrderedLayer {
    /// At most `max_in_flight` messages in flight in total, one at a time per key.
    /// `max_in_flight` is taken as at least 1 and at most [`Semaphore::MAX_PERMITS`].
    pub fn new(max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            lanes: Arc::default(),
        }
    }

    /// The bound.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Messages in flight now: called, or made ready for a call, and not yet done.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.semaphore.available_permits()
    }

    /// Keys with a message in flight now (each has a lane).
    pub fn keys_in_flight(&self) -> usize {
        self.lanes.len()
    }
}

impl<S> Layer<S> for OrderedLayer {
    type Service = Ordered<S>;

    fn layer(&self, inner: S) -> Ordered<S> {
        Ordered::new(
            inner,
            PollSemaphore::new(Arc::clone(&self.semaphore)),
            Arc::clone(&self.lanes),
        )
    }
}

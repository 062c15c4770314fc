//! [`TimeoutLayer`]: wraps services in [`Timeout`].

use std::time::Duration;

use tower::Layer;

use super::Timeout;

/// Wraps a service in [`Timeout`] with one deadline per call.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    duration: Duration,
}

impl TimeoutLayer {
    /// A layer abandoning calls that take longer than `duration`.
    pub fn new(duration: Duration) -> Self {
        Self { duration }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.duration)
    }
}

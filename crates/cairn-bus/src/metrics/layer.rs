//! [`MetricsLayer`]: wraps services in [`Metrics`].

use tower::Layer;

use super::{BusMetrics, Metrics};

/// Wraps a service in [`Metrics`], recording into one shared [`BusMetrics`].
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: BusMetrics,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: BusMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(inner, self.metrics.clone())
    }
}

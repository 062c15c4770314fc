//! [`TraceLayer`]: wraps services in [`Trace`].

use tower::Layer;

use super::Trace;

/// Wraps a service in [`Trace`]: a span and a W3C trace context per message.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer {
    _private: (),
}

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace::new(inner)
    }
}

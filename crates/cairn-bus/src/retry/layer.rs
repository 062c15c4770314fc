//! [`RetryLayer`]: wraps services in [`Retry`].

use std::sync::Arc;

use tower::Layer;

use super::{Retry, RetryPolicy};

/// Wraps a service in [`Retry`] with a [`RetryPolicy`] shared by every service it wraps.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
}

impl RetryLayer {
    /// A layer retrying by `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_shared(inner, Arc::clone(&self.policy))
    }
}

//! Metrics middleware: counts the messages going through the handler stack and times them,
//! into a shared [`BusMetrics`] registry that renders as Prometheus text.
//!
//! [`MetricsLayer::new`]`(metrics)` wraps a service in a [`Metrics`], which counts each
//! message received, its result (handled for `Ok`, failed for an error), the messages in
//! flight and the handler latency. Put it outermost to count each delivered message once,
//! whatever the retries inside do; the retry and dead-letter middleware feed the retried
//! and parked counters through their hooks ([`BusMetrics::retry_hook`],
//! [`BusMetrics::record_parked`]), and the consumer lag gauges are set by whoever samples
//! the brokers ([`BusMetrics::set_lag`]).
//!
//! [`BusMetrics::snapshot`] gives the values as plain data; [`BusMetrics::render_prometheus`]
//! writes the text a `/metrics` endpoint serves. This module serves nothing itself.

mod layer;
mod prometheus;
mod registry;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tower::Service;

use crate::handler::{HandlerError, Incoming};

pub use layer::MetricsLayer;
pub use registry::{
    BusMetrics, ConsumerLag, LATENCY_BUCKETS_MICROS, LatencySnapshot, MetricsSnapshot,
};

use registry::InFlight;

/// A service that records each call into [`BusMetrics`]; built by [`MetricsLayer`].
///
/// The latency runs from the call to the result, so it includes the retries' waits of a
/// retry middleware inside.
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
    metrics: BusMetrics,
}

impl<S> Metrics<S> {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: S, metrics: BusMetrics) -> Self {
        Self { inner, metrics }
    }

    /// The registry recorded into.
    pub fn metrics(&self) -> &BusMetrics {
        &self.metrics
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Incoming> for Metrics<S>
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
{
    type Response = ();
    type Error = HandlerError;
    type Future = ResponseFuture<S::Future>;

    /// # Errors
    ///
    /// The inner service's readiness error, as it is (not counted: no message was given).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Incoming) -> Self::Future {
        let in_flight = self.metrics.start();
        ResponseFuture {
            inner: self.inner.call(request),
            in_flight,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Metrics`]. It resolves to the inner service's result;
    /// dropped before that, it leaves the in-flight gauge without counting a result.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        in_flight: InFlight,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<(), HandlerError>>,
{
    type Output = Result<(), HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        this.in_flight.finish(result.is_ok());
        Poll::Ready(result)
    }
}

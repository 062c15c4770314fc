//! Tracing middleware: one `tracing` span per message, and the W3C trace context that
//! carries one trace across services through message headers.
//!
//! [`TraceLayer`] wraps a service in a [`Trace`]. For each message it reads the message's
//! `traceparent` (and `tracestate`) header, makes the context of this handling (the same
//! trace id with a fresh span id, or a new trace when the header is absent or malformed:
//! bad input never fails a message), opens a `handle_message` span with the message id,
//! type, topic, key, attempt and the trace and span ids, and runs the inner service inside
//! both the span and the context.
//!
//! While a handler runs, [`current`] returns its [`TraceContext`], and [`inject`] writes it
//! into the headers of a message the handler publishes, so the receiver continues the same
//! trace with this handling as the parent. The context is a Tokio task-local: it follows
//! the handler's future, not tasks the handler spawns (wrap those in [`scope`]).
//!
//! This module does not export spans anywhere: a `tracing` subscriber (an OpenTelemetry
//! bridge, a log formatter) decides what to do with them and their fields.

mod context;
mod error;
mod layer;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::task::{Context, Poll};

use tokio::task::futures::TaskLocalFuture;
use tower::Service;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::handler::{HandlerError, Incoming};
use crate::message::Headers;

pub use context::{SpanId, TraceContext, TraceId};
pub use error::TraceParentError;
pub use layer::TraceLayer;

tokio::task_local! {
    /// The trace context of the message being handled on this task. Written only by
    /// [`Trace::call`] and [`scope`]; read by [`current`] and [`inject`].
    static CURRENT: TraceContext;
}

/// The trace context of the message being handled, when called from inside a handler run
/// by [`Trace`] (or a future run by [`scope`]); `None` elsewhere.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(TraceContext::clone).ok()
}

/// Writes the current trace context into `headers` (`traceparent` with this handling as
/// the parent, and `tracestate`), so that a message published with them continues the
/// trace. Returns whether there was a context to write; outside a handler `headers` are
/// left alone.
pub fn inject(headers: &mut Headers) -> bool {
    CURRENT
        .try_with(|context| context.inject_into(headers))
        .is_ok()
}

/// Runs `future` with `context` as the [`current`] trace context: for work that is not a
/// handler (an HTTP request publishing messages) or a task a handler spawns.
pub fn scope<F: Future>(context: TraceContext, future: F) -> TaskLocalFuture<TraceContext, F> {
    CURRENT.scope(context, future)
}

/// A service that runs each call inside a `tracing` span and a W3C trace context; built by
/// [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S> Trace<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
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

/// The response future of [`Trace`]: the inner future, inside the message's trace context
/// and span. It resolves to the inner service's result.
pub type ResponseFuture<F> = Instrumented<TaskLocalFuture<TraceContext, F>>;

impl<S> Service<Incoming> for Trace<S>
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
{
    type Response = ();
    type Error = HandlerError;
    type Future = ResponseFuture<S::Future>;

    /// # Errors
    ///
    /// The inner service's readiness error, as it is.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Incoming) -> Self::Future {
        let message = &request.message;
        let context = match TraceContext::extract(&message.headers) {
            Ok(Some(sender)) => sender.child(),
            Ok(None) => TraceContext::new_root(),
            Err(error) => {
                tracing::debug!(
                    message.id = %message.id,
                    %error,
                    "ignoring a malformed traceparent and starting a new trace",
                );
                TraceContext::new_root()
            }
        };
        let span = tracing::info_span!(
            "handle_message",
            "message.id" = %message.id,
            "message.type" = %message.message_type,
            topic = %request.topic,
            key = message.key.as_deref(),
            attempt = request.attempt,
            trace_id = %context.trace_id(),
            span_id = %context.span_id(),
            parent_id = context.parent_id().map(tracing::field::display),
        );
        // The inner service may do work when called, before its future is polled: that
        // too runs inside the span and the context.
        let future = {
            let _entered = span.enter();
            CURRENT.sync_scope(context.clone(), || self.inner.call(request))
        };
        CURRENT.scope(context, future).instrument(span)
    }
}

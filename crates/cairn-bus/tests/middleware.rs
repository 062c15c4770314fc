//! The middleware stacked as a consumer runs them: metrics outermost, then tracing, retry,
//! and a timeout per attempt around the handler.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_bus::message::headers;
use cairn_bus::metrics::{BusMetrics, MetricsLayer};
use cairn_bus::retry::{RetryLayer, RetryPolicy};
use cairn_bus::timeout::TimeoutLayer;
use cairn_bus::trace::{self, TraceContext, TraceLayer};
use cairn_bus::{HandlerError, Incoming, Message};
use tower::{Service, ServiceBuilder, ServiceExt};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The stack around `handler`, recording into `metrics`.
fn stack<H>(
    metrics: &BusMetrics,
    handler: H,
) -> impl Service<Incoming, Response = (), Error = HandlerError, Future: Send> + Clone + Send
where
    H: Service<Incoming, Response = (), Error = HandlerError> + Clone + Send + 'static,
    H::Future: Send,
{
    ServiceBuilder::new()
        .layer(MetricsLayer::new(metrics.clone()))
        .layer(TraceLayer::new())
        .layer(RetryLayer::new(
            RetryPolicy::default().on_retry(metrics.retry_hook()),
        ))
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(handler)
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_hangs_twice_is_retried_within_one_trace_and_counted_once() {
    let metrics = BusMetrics::new();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (calls, seen) = (Arc::clone(&calls), Arc::clone(&seen));
        tower::service_fn(move |_: Incoming| {
            let (calls, seen) = (Arc::clone(&calls), Arc::clone(&seen));
            async move {
                seen.lock().unwrap().push(trace::current());
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        })
    };
    let message =
        Message::new("order.placed", &b"{}"[..]).with_header(headers::TRACEPARENT, TRACEPARENT);
    stack(&metrics, handler)
        .oneshot(Incoming::new("orders", message))
        .await
        .unwrap();

    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let seen = seen.lock().unwrap();
    let sender = TraceContext::parse(TRACEPARENT).unwrap();
    let first = seen[0].clone().unwrap();
    assert_eq!(first.trace_id(), sender.trace_id());
    assert!(seen.iter().all(|context| context.as_ref() == Some(&first)));

    let snapshot = metrics.snapshot();
    assert_eq!(
        (
            snapshot.received,
            snapshot.handled,
            snapshot.failed,
            snapshot.retried
        ),
        (1, 1, 0, 2)
    );
    assert_eq!(snapshot.in_flight, 0);
    // Two timeouts of 1 s and two waits of about 100 and 200 ms.
    assert!(snapshot.latency.sum >= Duration::from_millis(2_000 + 80 + 160));
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_gives_up_at_once_and_counts_as_failed() {
    let metrics = BusMetrics::new();
    let handler = tower::service_fn(|_: Incoming| async { Err(HandlerError::permanent("bad")) });
    let error = stack(&metrics, handler)
        .oneshot(Incoming::new(
            "orders",
            Message::new("order.placed", &b"{}"[..]),
        ))
        .await
        .unwrap_err();
    assert_eq!(error.attempts(), 1);
    assert_eq!(error.code(), "exhausted");

    let snapshot = metrics.snapshot();
    assert_eq!(
        (
            snapshot.received,
            snapshot.handled,
            snapshot.failed,
            snapshot.retried
        ),
        (1, 0, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_published_from_a_handler_continues_the_trace_downstream() {
    let metrics = BusMetrics::new();
    let published = Arc::new(Mutex::new(None));
    let upstream = {
        let published = Arc::clone(&published);
        tower::service_fn(move |_: Incoming| {
            let published = Arc::clone(&published);
            async move {
                let mut next = Message::new("invoice.requested", &b"{}"[..]);
                assert!(trace::inject(&mut next.headers));
                *published.lock().unwrap() = Some((next, trace::current().unwrap()));
                Ok(())
            }
        })
    };
    let message =
        Message::new("order.placed", &b"{}"[..]).with_header(headers::TRACEPARENT, TRACEPARENT);
    stack(&metrics, upstream)
        .oneshot(Incoming::new("orders", message))
        .await
        .unwrap();
    let (next, upstream_context) = published.lock().unwrap().take().unwrap();

    let downstream_context = Arc::new(Mutex::new(None));
    let downstream = {
        let seen = Arc::clone(&downstream_context);
        tower::service_fn(move |_: Incoming| {
            let seen = Arc::clone(&seen);
            async move {
                *seen.lock().unwrap() = trace::current();
                Ok(())
            }
        })
    };
    stack(&metrics, downstream)
        .oneshot(Incoming::new("invoices", next))
        .await
        .unwrap();
    let downstream_context = downstream_context.lock().unwrap().clone().unwrap();
    assert_eq!(downstream_context.trace_id(), upstream_context.trace_id());
    assert_eq!(
        downstream_context.parent_id(),
        Some(upstream_context.span_id())
    );
    assert_eq!(metrics.snapshot().handled, 2);
}

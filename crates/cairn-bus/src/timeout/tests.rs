use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::TimeoutLayer;
use crate::handler::{HandlerError, Incoming};
use crate::message::Message;

fn request() -> Incoming {
    Incoming::new("orders", Message::new("order.placed", &b"{}"[..]))
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A handler that takes `work` and reports whether its future was dropped unfinished.
fn slow_handler(
    work: Duration,
    finished: Arc<AtomicBool>,
    dropped: Arc<AtomicBool>,
) -> impl tower::Service<Incoming, Response = (), Error = HandlerError, Future: Send> + Clone {
    tower::service_fn(move |_request: Incoming| {
        let (finished, dropped) = (Arc::clone(&finished), Arc::clone(&dropped));
        async move {
            let flag = DropFlag(dropped);
            tokio::time::sleep(work).await;
            finished.store(true, Ordering::SeqCst);
            std::mem::forget(flag);
            Ok(())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_handler_within_the_deadline_succeeds() {
    let (finished, dropped) = (Arc::default(), Arc::default());
    let service = TimeoutLayer::new(Duration::from_secs(1)).layer(slow_handler(
        Duration::from_millis(999),
        Arc::clone(&finished),
        Arc::clone(&dropped),
    ));
    service.oneshot(request()).await.unwrap();
    assert!(finished.load(Ordering::SeqCst));
    assert!(!dropped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_handler_past_the_deadline_times_out_and_is_dropped() {
    let (finished, dropped) = (Arc::default(), Arc::default());
    let service = TimeoutLayer::new(Duration::from_secs(1)).layer(slow_handler(
        Duration::from_secs(5),
        Arc::clone(&finished),
        Arc::clone(&dropped),
    ));
    let start = Instant::now();
    let error = service.oneshot(request()).await.unwrap_err();
    assert!(
        matches!(error, HandlerError::Timeout(d) if d == Duration::from_secs(1)),
        "{error:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(dropped.load(Ordering::SeqCst));
    assert!(!finished.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn the_inner_error_passes_through() {
    let service = TimeoutLayer::new(Duration::from_secs(1)).layer(tower::service_fn(
        |_request: Incoming| async { Err(HandlerError::permanent("bad")) },
    ));
    let error = service.oneshot(request()).await.unwrap_err();
    assert!(matches!(error, HandlerError::Permanent(_)), "{error:?}");
}

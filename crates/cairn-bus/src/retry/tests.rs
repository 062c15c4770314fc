use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::{Jitter, RetryLayer, RetryPolicy};
use crate::handler::{HandlerError, Incoming};
use crate::message::Message;

/// A service whose `n`th call (from 1) answers `outcome(n)`, and the instants of its calls.
fn scripted(
    outcome: impl Fn(u32) -> Result<(), HandlerError> + Clone + Send + 'static,
) -> (
    impl Service<Incoming, Response = (), Error = HandlerError, Future: Send> + Clone + Send,
    Arc<Mutex<Vec<Instant>>>,
) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&calls);
    let service = tower::service_fn(move |_request: Incoming| {
        let mut calls = seen.lock().unwrap();
        calls.push(Instant::now());
        let result = outcome(u32::try_from(calls.len()).unwrap());
        async move { result }
    });
    (service, calls)
}

fn request() -> Incoming {
    Incoming::new("orders", Message::new("order.placed", &b"{}"[..]))
}

fn exhausted(result: Result<(), HandlerError>) -> (u32, HandlerError) {
    match result {
        Err(HandlerError::Exhausted { attempts, last }) => (attempts, *last),
        other => panic!("expected Exhausted, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn success_calls_the_inner_service_once() {
    let (inner, calls) = scripted(|_| Ok(()));
    let service = RetryLayer::new(RetryPolicy::default()).layer(inner);
    service.oneshot(request()).await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn transient_errors_then_success_return_ok_after_the_right_number_of_calls() {
    let (inner, calls) = scripted(|n| {
        if n < 3 {
            Err(HandlerError::transient("db away"))
        } else {
            Ok(())
        }
    });
    let service = RetryLayer::new(RetryPolicy::default()).layer(inner);
    service.oneshot(request()).await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_not_retried() {
    let (inner, calls) = scripted(|_| Err(HandlerError::permanent("bad content")));
    let service = RetryLayer::new(RetryPolicy::default()).layer(inner);
    let (attempts, last) = exhausted(service.oneshot(request()).await);
    assert_eq!(attempts, 1);
    assert!(matches!(last, HandlerError::Permanent(_)), "{last:?}");
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded_by_the_policy() {
    let (inner, calls) = scripted(|_| Err(HandlerError::transient("db away")));
    let policy = RetryPolicy::default().with_max_attempts(4);
    let service = RetryLayer::new(policy).layer(inner);
    let (attempts, last) = exhausted(service.oneshot(request()).await);
    assert_eq!(attempts, 4);
    assert!(matches!(last, HandlerError::Transient(_)), "{last:?}");
    assert_eq!(calls.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_single_allowed_attempt_still_reports_exhausted() {
    let (inner, calls) = scripted(|_| Err(HandlerError::transient("db away")));
    let policy = RetryPolicy::default().with_max_attempts(1);
    let (attempts, _) = exhausted(
        RetryLayer::new(policy)
            .layer(inner)
            .oneshot(request())
            .await,
    );
    assert_eq!(attempts, 1);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn delays_grow_exponentially_within_jitter_bounds_and_cap_at_max() {
    let (inner, calls) = scripted(|_| Err(HandlerError::transient("db away")));
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&hooked);
    let policy = RetryPolicy::default()
        .with_max_attempts(8)
        .with_initial_backoff(Duration::from_millis(100))
        .with_multiplier(2.0)
        .with_max_backoff(Duration::from_secs(1))
        .with_jitter(Jitter::Proportional(0.2))
        .on_retry(move |_, failed, error, delay| {
            assert!(error.is_retryable());
            seen.lock().unwrap().push((failed, delay));
        });
    let (attempts, _) = exhausted(
        RetryLayer::new(policy)
            .layer(inner)
            .oneshot(request())
            .await,
    );
    assert_eq!(attempts, 8);

    let hooked = hooked.lock().unwrap().clone();
    let failed: Vec<u32> = hooked.iter().map(|(failed, _)| *failed).collect();
    assert_eq!(failed, [1, 2, 3, 4, 5, 6, 7]);
    let backoffs_ms = [100, 200, 400, 800, 1000, 1000, 1000];
    for ((_, delay), backoff_ms) in hooked.iter().zip(backoffs_ms) {
        let low = Duration::from_millis(backoff_ms * 8 / 10);
        let high = Duration::from_millis((backoff_ms * 12 / 10).min(1000));
        assert!(
            (low..=high).contains(delay),
            "{delay:?} outside {low:?}..={high:?}"
        );
    }

    // The attempts really are that far apart (the timer has millisecond resolution).
    let calls = calls.lock().unwrap();
    for (pair, (_, delay)) in calls.windows(2).zip(&hooked) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= *delay && gap <= *delay + Duration::from_millis(2),
            "{gap:?} for a delay of {delay:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_classifier_override_decides_what_is_retried() {
    // Retry permanent errors only: the opposite of the default.
    let policy =
        RetryPolicy::default().retry_if(|error| matches!(error, HandlerError::Permanent(_)));

    let (inner, calls) = scripted(|n| {
        if n < 2 {
            Err(HandlerError::permanent("not yet"))
        } else {
            Ok(())
        }
    });
    RetryLayer::new(policy.clone())
        .layer(inner)
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(calls.lock().unwrap().len(), 2);

    let (inner, calls) = scripted(|_| Err(HandlerError::transient("db away")));
    let (attempts, _) = exhausted(
        RetryLayer::new(policy)
            .layer(inner)
            .oneshot(request())
            .await,
    );
    assert_eq!(attempts, 1);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn each_retry_calls_a_ready_service() {
    // A service that is ready only every other poll, and counts the calls made while it
    // was not ready.
    #[derive(Clone)]
    struct Flaky {
        polls: Arc<AtomicU32>,
        ready: bool,
        calls: Arc<AtomicU32>,
        unready_calls: Arc<AtomicU32>,
    }
    impl Service<Incoming> for Flaky {
        type Response = ();
        type Error = HandlerError;
        type Future = std::future::Ready<Result<(), HandlerError>>;
        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), HandlerError>> {
            if self.polls.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            self.ready = true;
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _request: Incoming) -> Self::Future {
            if !std::mem::take(&mut self.ready) {
                self.unready_calls.fetch_add(1, Ordering::SeqCst);
            }
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(if n < 3 {
                Err(HandlerError::transient("busy"))
            } else {
                Ok(())
            })
        }
    }
    let flaky = Flaky {
        polls: Arc::default(),
        ready: false,
        calls: Arc::default(),
        unready_calls: Arc::default(),
    };
    let (calls, unready_calls) = (Arc::clone(&flaky.calls), Arc::clone(&flaky.unready_calls));
    RetryLayer::new(RetryPolicy::default())
        .layer(flaky)
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(unready_calls.load(Ordering::SeqCst), 0);
}

#[test]
fn backoff_grows_by_the_multiplier_and_stops_at_the_ceiling() {
    let policy = RetryPolicy::default()
        .with_initial_backoff(Duration::from_millis(100))
        .with_multiplier(3.0)
        .with_max_backoff(Duration::from_secs(2));
    let backoffs: Vec<Duration> = (1..=5).map(|n| policy.backoff(n)).collect();
    assert_eq!(
        backoffs,
        [100, 300, 900, 2000, 2000].map(Duration::from_millis)
    );
    assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(2));
}

#[test]
fn proportional_jitter_spans_the_fraction_either_side_and_never_passes_the_ceiling() {
    let policy = RetryPolicy::default()
        .with_max_backoff(Duration::from_secs(1))
        .with_jitter(Jitter::Proportional(0.2));
    let backoff = Duration::from_millis(500);
    assert_eq!(policy.jittered(backoff, 0.0), Duration::from_millis(400));
    assert_eq!(policy.jittered(backoff, 0.5), Duration::from_millis(500));
    assert_eq!(policy.jittered(backoff, 1.0), Duration::from_millis(600));
    assert_eq!(
        policy.jittered(Duration::from_secs(1), 1.0),
        Duration::from_secs(1)
    );
    for _ in 0..1000 {
        let delay = policy.delay(3);
        assert!(
            (Duration::from_millis(320)..=Duration::from_millis(480)).contains(&delay),
            "{delay:?}"
        );
    }
}

#[test]
fn full_jitter_spans_zero_to_the_backoff() {
    let policy = RetryPolicy::default().with_jitter(Jitter::Full);
    let backoff = Duration::from_millis(800);
    assert_eq!(policy.jittered(backoff, 0.0), Duration::ZERO);
    assert_eq!(policy.jittered(backoff, 1.0), backoff);
    for _ in 0..1000 {
        assert!(policy.delay(2) <= Duration::from_millis(200));
    }
}

#[test]
fn out_of_range_settings_are_clamped() {
    let policy = RetryPolicy::default()
        .with_max_attempts(0)
        .with_multiplier(f64::NAN)
        .with_jitter(Jitter::Proportional(7.0));
    assert_eq!(policy.max_attempts(), 1);
    assert_eq!(policy.backoff(4), Duration::from_millis(100));
    assert_eq!(
        policy.jittered(Duration::from_millis(100), 0.0),
        Duration::ZERO
    );
    assert_eq!(
        policy.jittered(Duration::from_millis(100), 1.0),
        Duration::from_millis(200)
    );
    let no_wait = RetryPolicy::default().with_initial_backoff(Duration::ZERO);
    assert_eq!(no_wait.backoff(1_000), Duration::ZERO);
}

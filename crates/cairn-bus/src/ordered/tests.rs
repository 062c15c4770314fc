use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::message::Message;

/// Longer than any test needs (on the paused clock): a wait that outlasts it is stuck.
const LONG: Duration = Duration::from_secs(60);

/// What the test handler saw: who ran when, and the most that ran together.
#[derive(Default)]
struct Seen {
    /// Message names in the order they started.
    started: Vec<String>,
    running: usize,
    most_running: usize,
    running_per_key: HashMap<String, usize>,
    overlapped_within_a_key: bool,
}

/// A handler that sleeps for the milliseconds in the payload (or forever, for "block"),
/// recording what runs at the same time.
fn handler(
    seen: Arc<Mutex<Seen>>,
) -> impl Service<Incoming, Response = (), Error = HandlerError, Future: Send> + Clone + Send + 'static
{
    service_fn(move |incoming: Incoming| {
        let seen = Arc::clone(&seen);
        async move {
            let message = &incoming.message;
            let key = message.key.as_deref().unwrap_or_default().to_owned();
            {
                let mut seen = seen.lock().unwrap();
                seen.started.push(message.message_type.to_string());
                seen.running += 1;
                seen.most_running = seen.most_running.max(seen.running);
                let per_key = seen.running_per_key.entry(key.clone()).or_default();
                *per_key += 1;
                if *per_key > 1 && !key.is_empty() {
                    seen.overlapped_within_a_key = true;
                }
            }
            let payload = std::str::from_utf8(&message.payload).unwrap().to_owned();
            if payload == "block" {
                futures::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(payload.parse().unwrap())).await;
            let mut seen = seen.lock().unwrap();
            seen.running -= 1;
            *seen.running_per_key.get_mut(&key).unwrap() -= 1;
            Ok(())
        }
    })
}

fn message(name: &str, key: Option<&str>, millis: &str) -> Incoming {
    let mut message = Message::new(name, millis.to_owned());
    message.key = key.map(Into::into);
    Incoming::new("orders", message)
}

/// Calls the service for each message in order, as a consumer does, running each future
/// on its own task.
async fn deliver<S>(service: &mut S, messages: Vec<Incoming>) -> Vec<JoinHandle<()>>
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
    S::Future: Send + 'static,
{
    let mut tasks = Vec::new();
    for incoming in messages {
        let future = service.ready().await.unwrap().call(incoming);
        tasks.push(tokio::spawn(async move { future.await.unwrap() }));
    }
    tasks
}

fn started(seen: &Mutex<Seen>) -> Vec<String> {
    seen.lock().unwrap().started.clone()
}

#[tokio::test(start_paused = true)]
async fn same_key_messages_run_one_at_a_time_in_call_order_while_keys_overlap() {
    let seen = Arc::default();
    let layer = OrderedLayer::new(16);
    let mut service = layer.layer(handler(Arc::clone(&seen)));
    // Earlier messages take longer: without ordering, later ones would overtake them.
    let mut messages = Vec::new();
    for i in 0..5 {
        for key in ["a", "b", "c"] {
            let millis = (50 - i * 10).to_string();
            messages.push(message(&format!("{key}{i}"), Some(key), &millis));
        }
    }
    for task in deliver(&mut service, messages).await {
        task.await.unwrap();
    }

    let seen = seen.lock().unwrap();
    assert!(!seen.overlapped_within_a_key);
    assert_eq!(seen.most_running, 3, "the three keys ran side by side");
    for key in ["a", "b", "c"] {
        let order: Vec<&String> = seen.started.iter().filter(|n| n.starts_with(key)).collect();
        let expected: Vec<String> = (0..5).map(|i| format!("{key}{i}")).collect();
        assert_eq!(order, expected.iter().collect::<Vec<_>>());
    }
    assert_eq!(layer.keys_in_flight(), 0);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_global_bound_holds_and_poll_ready_waits_for_a_slot() {
    let seen = Arc::default();
    let layer = OrderedLayer::new(3);
    let mut service = layer.layer(handler(Arc::clone(&seen)));
    let first = (0..3)
        .map(|i| message(&i.to_string(), None, "10"))
        .collect();
    let mut tasks = deliver(&mut service, first).await;
    assert_eq!(layer.in_flight(), 3);
    assert!(service.ready().now_or_never().is_none(), "no slot is free");

    let more = (3..20)
        .map(|i| message(&i.to_string(), None, "10"))
        .collect();
    tasks.extend(deliver(&mut service, more).await);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(seen.lock().unwrap().most_running, 3);
    assert_eq!(seen.lock().unwrap().started.len(), 20);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn messages_waiting_behind_a_key_count_against_the_bound() {
    let seen = Arc::default();
    let layer = OrderedLayer::new(2);
    let mut service = layer.layer(handler(Arc::clone(&seen)));
    let first = service
        .ready()
        .await
        .unwrap()
        .call(message("a0", Some("a"), "block"));
    let _second = service
        .ready()
        .await
        .unwrap()
        .call(message("a1", Some("a"), "1"));
    assert!(service.ready().now_or_never().is_none());
    drop(first);
    assert!(service.ready().now_or_never().is_some());
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_message_hands_its_key_to_the_next() {
    let seen = Arc::default();
    let layer = OrderedLayer::new(4);
    let mut service = layer.layer(handler(Arc::clone(&seen)));
    let first = tokio::spawn(service.ready().await.unwrap().call(message(
        "a0",
        Some("a"),
        "block",
    )));
    let second = tokio::spawn(
        service
            .ready()
            .await
            .unwrap()
            .call(message("a1", Some("a"), "1")),
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(started(&seen), ["a0"]);

    first.abort();
    timeout(LONG, second).await.unwrap().unwrap().unwrap();
    assert_eq!(started(&seen), ["a0", "a1"]);
    assert_eq!(layer.keys_in_flight(), 0);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_waiting_message_gives_its_place_up() {
    let seen = Arc::default();
    let layer = OrderedLayer::new(4);
    let mut service = layer.layer(handler(Arc::clone(&seen)));
    let first = tokio::spawn(
        service
            .ready()
            .await
            .unwrap()
            .call(message("a0", Some("a"), "10")),
    );
    let second = service
        .ready()
        .await
        .unwrap()
        .call(message("a1", Some("a"), "1"));
    let third = tokio::spawn(
        service
            .ready()
            .await
            .unwrap()
            .call(message("a2", Some("a"), "1")),
    );
    drop(second);
    first.await.unwrap().unwrap();
    timeout(LONG, third).await.unwrap().unwrap().unwrap();
    assert_eq!(started(&seen), ["a0", "a2"]);
    assert_eq!(layer.keys_in_flight(), 0);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_message_dropped_after_its_turn_came_passes_the_turn_on() {
    let seen = Arc::default();
    let layer = OrderedLayer::new(4);
    let mut service = layer.layer(handler(Arc::clone(&seen)));
    let first = service
        .ready()
        .await
        .unwrap()
        .call(message("a0", Some("a"), "1"));
    let second = service
        .ready()
        .await
        .unwrap()
        .call(message("a1", Some("a"), "1"));
    let third = tokio::spawn(
        service
            .ready()
            .await
            .unwrap()
            .call(message("a2", Some("a"), "1")),
    );
    first.await.unwrap();
    // The turn went to the second, which was never polled.
    drop(second);
    timeout(LONG, third).await.unwrap().unwrap().unwrap();
    assert_eq!(started(&seen), ["a0", "a2"]);
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn no_lane_outlives_a_run_of_many_keys() {
    let seen = Arc::default();
    let layer = OrderedLayer::new(32);
    let mut service = layer.layer(handler(Arc::clone(&seen)));
    let messages = (0..500)
        .map(|i| {
            let key = format!("k{}", i % 37);
            message(&i.to_string(), Some(&key), &(i % 3).to_string())
        })
        .collect();
    for task in deliver(&mut service, messages).await {
        task.await.unwrap();
    }
    assert!(!seen.lock().unwrap().overlapped_within_a_key);
    assert_eq!(layer.keys_in_flight(), 0);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test]
async fn clones_share_the_bound() {
    let seen = Arc::default();
    let layer = OrderedLayer::new(1);
    let mut one = layer.layer(handler(Arc::clone(&seen)));
    let mut two = one.clone();
    let running = one.ready().await.unwrap().call(message("x", None, "block"));
    assert!(two.ready().now_or_never().is_none());
    drop(running);
    assert!(two.ready().now_or_never().is_some());
}

#[tokio::test]
async fn a_service_dropped_with_an_unspent_slot_gives_it_back() {
    let layer = OrderedLayer::new(1);
    let mut one = layer.layer(handler(Arc::default()));
    one.ready().await.unwrap();
    assert_eq!(layer.in_flight(), 1);
    let mut two = one.clone();
    assert!(
        two.ready().now_or_never().is_none(),
        "the clone has no slot"
    );
    drop(one);
    assert_eq!(layer.in_flight(), 0);
    assert!(two.ready().now_or_never().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_racing_for_few_slots_never_exceed_them_and_all_finish() {
    // Tasks on two threads take and give back slots as fast as they can: a bad count lets
    // too many in, a wake-up lost at the end leaves a task waiting (the timeout).
    let layer = OrderedLayer::new(2);
    let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (inside, most) = (Arc::clone(&inside), Arc::clone(&most));
            let mut service = layer.layer(tower::service_fn(move |_: Incoming| {
                let (inside, most) = (Arc::clone(&inside), Arc::clone(&most));
                async move {
                    let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, HandlerError>(())
                }
            }));
            tokio::spawn(async move {
                for _ in 0..2_000 {
                    let call = service.ready().await.unwrap().call(message("x", None, "0"));
                    call.await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        timeout(LONG, task)
            .await
            .expect("a task never got a slot")
            .unwrap();
    }
    assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    assert_eq!(layer.in_flight(), 0);
}

//! Graceful shutdown over a real transport: cancelling a consumer stops intake, lets the
//! handlers in flight finish until the deadline, nacks the rest back to the broker, and
//! the next consumer gets exactly those.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn_bus::memory::MemoryBroker;
use cairn_bus::{
    Consumer, ConsumerOptions, Incoming, Message, Publisher, Router, Subscriber, SubscriptionSpec,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_consumers_finish_or_give_back_their_messages_and_nothing_is_lost() {
    let broker = MemoryBroker::new();
    let spec = SubscriptionSpec::new("jobs", "workers").prefetch(8);
    let deliveries = broker.subscribe(&spec).await.unwrap();
    let messages: Vec<Message> = (0..6)
        .map(|n| {
            let kind = if n == 2 { "slow" } else { "quick" };
            Message::new(kind, format!("{n}").into_bytes())
        })
        .collect();
    let slow_id = messages[2].id;
    broker.publish("jobs", messages).await.unwrap();

    let started = Arc::new(AtomicUsize::new(0));
    let router = {
        let started = Arc::clone(&started);
        let counting = move |pause: Duration| {
            let started = Arc::clone(&started);
            move |_: Incoming| {
                started.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(pause).await;
                    Ok(())
                }
            }
        };
        Router::new()
            .on_raw("quick", counting(Duration::from_millis(50)))
            .on_raw("slow", counting(Duration::from_secs(3_600)))
    };
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let options = ConsumerOptions {
        shutdown_deadline: Duration::from_millis(500),
        ..ConsumerOptions::default()
    };
    let consumer = tracker.spawn(
        Consumer::new(router)
            .options(options)
            .run(deliveries, cancel.clone()),
    );
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), async {
        while started.load(Ordering::SeqCst) < 6 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("all six messages started");

    cancel.cancel();
    // Published after the cancellation: must stay with the broker.
    let late = Message::new("quick", &b"late"[..]);
    let late_id = late.id;
    broker.publish("jobs", vec![late]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .expect("the consumer stopped within its deadline");
    let summary = consumer.await.unwrap().unwrap();
    assert_eq!(
        summary.handled, 5,
        "the quick ones finished and were acknowledged"
    );
    assert_eq!(summary.abandoned, 1, "the slow one was given back");

    // The next consumer of the group gets the slow message again and the late one,
    // nothing else.
    let mut next = broker.subscribe(&spec).await.unwrap();
    let mut redelivered = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), next.next())
            .await
            .expect("a redelivery")
            .unwrap()
            .unwrap();
        redelivered.push((delivery.message.id, delivery.attempt));
        delivery.ack().await.unwrap();
    }
    redelivered.sort();
    let mut expected = vec![(slow_id, 2), (late_id, 1)];
    expected.sort();
    assert_eq!(redelivered, expected);
    let more = tokio::time::timeout(Duration::from_millis(300), next.next()).await;
    assert!(more.is_err(), "nothing else was left: {more:?}");
}

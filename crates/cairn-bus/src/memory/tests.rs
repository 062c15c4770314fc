//! Unit tests of the memory transport's own mechanics: queues, answers, connections,
//! severs, capacity, de-duplication. The conformance suite checks the shared contract
//! (`tests/transport.rs`); these check what only this transport promises. Time is paused,
//! so delays and quiet periods cost nothing.

use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::transport::Delivery;

fn message(n: usize) -> Message {
    Message::new("test.numbered", n.to_string())
}

fn numbers(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
        .collect()
}

async fn next(deliveries: &mut Deliveries) -> Delivery {
    tokio::time::timeout(Duration::from_secs(300), deliveries.next())
        .await
        .expect("a delivery within 300 s")
        .expect("the stream goes on")
        .expect("a delivery, not an error")
}

async fn take(deliveries: &mut Deliveries, count: usize) -> Vec<Delivery> {
    let mut taken = Vec::with_capacity(count);
    for _ in 0..count {
        taken.push(next(deliveries).await);
    }
    taken
}

async fn assert_quiet(deliveries: &mut Deliveries) {
    if let Ok(item) = tokio::time::timeout(Duration::from_secs(1), deliveries.next()).await {
        panic!("expected no delivery, got {item:?}");
    }
}

async fn publish(publisher: &impl Publisher, topic: &str, range: std::ops::Range<usize>) {
    publisher
        .publish(topic, range.map(message).collect())
        .await
        .expect("publish");
}

fn spec(group: &str) -> SubscriptionSpec {
    SubscriptionSpec::new("t", group)
}

#[tokio::test(start_paused = true)]
async fn a_group_keeps_only_what_is_published_after_it_exists() {
    let broker = MemoryBroker::new();
    publish(&broker, "t", 0..2).await;
    broker.ensure_group("t", "early").expect("ensure_group");
    publish(&broker, "t", 2..4).await;
    let mut early = broker.subscribe(&spec("early")).await.expect("subscribe");
    let mut late = broker.subscribe(&spec("late")).await.expect("subscribe");
    let kept = take(&mut early, 2).await;
    assert_eq!(numbers(&kept), ["2", "3"]);
    for delivery in kept {
        delivery.ack().await.expect("ack");
    }
    assert_quiet(&mut early).await;
    assert_quiet(&mut late).await;
    publish(&broker, "t", 4..5).await;
    assert_eq!(numbers(&take(&mut late, 1).await), ["4"]);
}

#[tokio::test(start_paused = true)]
async fn ack_removes_and_nack_redelivers_with_the_next_attempt() {
    let broker = MemoryBroker::new();
    let mut deliveries = broker.subscribe(&spec("g")).await.expect("subscribe");
    publish(&broker, "t", 0..2).await;
    let [first, second]: [Delivery; 2] = take(&mut deliveries, 2).await.try_into().expect("2");
    assert_eq!((first.attempt, second.attempt), (1, 1));
    first.ack().await.expect("ack");
    second.nack(None).await.expect("nack");
    let again = next(&mut deliveries).await;
    assert_eq!(numbers(std::slice::from_ref(&again)), ["1"]);
    assert_eq!(again.attempt, 2);
    again.nack(None).await.expect("nack");
    let third = next(&mut deliveries).await;
    assert_eq!(third.attempt, 3);
    third.ack().await.expect("ack");
    assert_quiet(&mut deliveries).await;
    assert_eq!(broker.lag(&spec("g")).await.expect("lag"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn nack_with_a_delay_redelivers_once_the_delay_has_passed() {
    let broker = MemoryBroker::new();
    let mut deliveries = broker.subscribe(&spec("g")).await.expect("subscribe");
    publish(&broker, "t", 0..1).await;
    let delivery = next(&mut deliveries).await;
    let nacked_at = tokio::time::Instant::now();
    delivery
        .nack(Some(Duration::from_secs(30)))
        .await
        .expect("nack");
    let again = next(&mut deliveries).await;
    assert!(nacked_at.elapsed() >= Duration::from_secs(30));
    assert!(nacked_at.elapsed() < Duration::from_secs(31));
    assert_eq!(again.attempt, 2);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_message_does_not_hold_back_the_others() {
    let broker = MemoryBroker::new();
    let mut deliveries = broker.subscribe(&spec("g")).await.expect("subscribe");
    publish(&broker, "t", 0..1).await;
    next(&mut deliveries)
        .await
        .nack(Some(Duration::from_secs(60)))
        .await
        .expect("nack");
    publish(&broker, "t", 1..2).await;
    let other = next(&mut deliveries).await;
    assert_eq!(numbers(std::slice::from_ref(&other)), ["1"]);
    assert_eq!(broker.lag(&spec("g")).await.expect("lag"), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_delivery_dropped_unanswered_is_redelivered() {
    let broker = MemoryBroker::new();
    let mut deliveries = broker.subscribe(&spec("g")).await.expect("subscribe");
    publish(&broker, "t", 0..1).await;
    drop(next(&mut deliveries).await);
    let again = next(&mut deliveries).await;
    assert_eq!(again.attempt, 2);
}

#[tokio::test(start_paused = true)]
async fn a_closed_connection_gives_its_deliveries_to_another_consumer() {
    let broker = MemoryBroker::new();
    let dying = broker.connect();
    let mut doomed = dying.subscribe(&spec("g")).await.expect("subscribe");
    publish(&broker, "t", 0..1).await;
    let held = next(&mut doomed).await;
    let survivor = broker.connect();
    let mut deliveries = survivor.subscribe(&spec("g")).await.expect("subscribe");
    assert_quiet(&mut deliveries).await;

    drop(doomed);
    assert_quiet(&mut deliveries).await; // the connection is still open
    drop(dying);
    let again = next(&mut deliveries).await;
    assert_eq!(again.message.id, held.message.id);
    assert_eq!(again.attempt, 2);

    let error = held.ack().await.expect_err("the held delivery is stale");
    assert!(matches!(error, TransportError::Broker { .. }), "{error:?}");
    let cause = std::error::Error::source(&error).expect("a cause");
    assert!(cause.is::<StaleDelivery>(), "{cause:?}");
    again.ack().await.expect("ack");
    assert_eq!(broker.lag(&spec("g")).await.expect("lag"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_keeps_handed_out_deliveries_and_returns_buffered_ones_in_order() {
    let broker = MemoryBroker::new();
    let mut first = broker.subscribe(&spec("g")).await.expect("subscribe");
    publish(&broker, "t", 0..5).await;
    // The stream takes all five at once; it hands out one.
    let handed = next(&mut first).await;
    drop(first);
    let mut second = broker.subscribe(&spec("g")).await.expect("subscribe");
    let rest = take(&mut second, 4).await;
    assert_eq!(numbers(&rest), ["1", "2", "3", "4"]);
    assert!(rest.iter().all(|d| d.attempt == 1));
    assert_quiet(&mut second).await;
    handed
        .ack()
        .await
        .expect("a handed-out delivery stays answerable");
}

#[tokio::test(start_paused = true)]
async fn sever_redelivers_what_was_outstanding_and_the_streams_carry_on() {
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    let mut deliveries = connection
        .subscribe(&spec("g").prefetch(4))
        .await
        .expect("subscribe");
    publish(&connection, "t", 0..6).await;
    let before = take(&mut deliveries, 3).await;
    broker.sever();
    // The three handed out and the one buffered were outstanding: attempt 2, first.
    let redelivered = take(&mut deliveries, 4).await;
    assert_eq!(numbers(&redelivered), ["0", "1", "2", "3"]);
    assert!(redelivered.iter().all(|d| d.attempt == 2));
    for delivery in before {
        let error = delivery.ack().await.expect_err("stale after the sever");
        assert_eq!(error.code(), "broker");
    }
    for delivery in redelivered {
        delivery.ack().await.expect("ack after the sever");
    }
    let rest = take(&mut deliveries, 2).await;
    assert_eq!(numbers(&rest), ["4", "5"]);
    assert!(rest.iter().all(|d| d.attempt == 1));
    for delivery in rest {
        delivery.ack().await.expect("ack");
    }
    assert_quiet(&mut deliveries).await;
    publish(&connection, "t", 6..7).await;
    assert_eq!(numbers(&take(&mut deliveries, 1).await), ["6"]);
}

#[tokio::test(start_paused = true)]
async fn prefetch_bounds_the_deliveries_outstanding() {
    let broker = MemoryBroker::new();
    let mut deliveries = broker
        .subscribe(&spec("g").prefetch(3))
        .await
        .expect("subscribe");
    publish(&broker, "t", 0..10).await;
    let mut held = take(&mut deliveries, 3).await;
    assert_quiet(&mut deliveries).await;
    held.remove(0).ack().await.expect("ack");
    held.push(next(&mut deliveries).await);
    assert_quiet(&mut deliveries).await;
    assert_eq!(numbers(&held), ["1", "2", "3"]);
    assert_eq!(broker.lag(&spec("g")).await.expect("lag"), Some(9));
}

#[tokio::test(start_paused = true)]
async fn publish_waits_while_a_group_is_full() {
    let broker = MemoryBroker::with_options(MemoryOptions::default().queue_capacity(4));
    let mut deliveries = broker
        .subscribe(&spec("g").prefetch(1))
        .await
        .expect("subscribe");
    let publisher = broker.clone();
    let mut publishing = tokio::spawn(async move { publish(&publisher, "t", 0..10).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !publishing.is_finished(),
        "publish returned past a full queue"
    );
    // 4 queued; the publisher goes on once the consumer took a quarter of them.
    assert_eq!(broker.lag(&spec("g")).await.expect("lag"), Some(4));
    let mut received = Vec::new();
    while received.len() < 10 {
        let delivery = next(&mut deliveries).await;
        received.push(String::from_utf8_lossy(&delivery.message.payload).into_owned());
        delivery.ack().await.expect("ack");
        assert!(broker.lag(&spec("g")).await.expect("lag") <= Some(5));
    }
    tokio::time::timeout(Duration::from_secs(5), &mut publishing)
        .await
        .expect("publish finishes once there is room")
        .expect("the publisher did not panic");
    let expected: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    assert_eq!(received, expected);
}

#[tokio::test(start_paused = true)]
async fn a_publisher_waiting_on_a_full_queue_resumes_once_a_quarter_of_it_was_taken() {
    let broker = MemoryBroker::with_options(MemoryOptions::default().queue_capacity(8));
    let mut deliveries = broker
        .subscribe(&spec("g").prefetch(1))
        .await
        .expect("subscribe");
    let publisher = broker.clone();
    let mut publishing = tokio::spawn(async move { publish(&publisher, "t", 0..10).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(broker.lag(&spec("g")).await.expect("lag"), Some(8));
    for taken in 1..=2 {
        next(&mut deliveries).await.ack().await.expect("ack");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!publishing.is_finished(), "woken after {taken} taken");
        assert_eq!(
            broker.lag(&spec("g")).await.expect("lag"),
            Some(8 - taken as u64)
        );
    }
    // The third leaves 5 of 8 queued, below three quarters: the publisher goes on.
    next(&mut deliveries).await.ack().await.expect("ack");
    tokio::time::timeout(Duration::from_secs(5), &mut publishing)
        .await
        .expect("the publisher resumed")
        .expect("the publisher did not panic");
    assert_eq!(broker.lag(&spec("g")).await.expect("lag"), Some(7));
}

#[tokio::test(start_paused = true)]
async fn answered_messages_are_freed_by_the_next_publish_up_to_a_bound() {
    let broker = MemoryBroker::new();
    let mut deliveries = broker
        .subscribe(&spec("g").prefetch(2_000))
        .await
        .expect("subscribe");
    publish(&broker, "t", 0..1_100).await;
    let delivered = take(&mut deliveries, 1_100).await;
    let messages: Vec<Arc<Message>> = delivered
        .iter()
        .map(|delivery| Arc::clone(&delivery.message))
        .collect();
    for delivery in delivered {
        delivery.ack().await.expect("ack");
    }
    // The first 1,024 wait for the next publish, which drops the group's reference; the
    // answers dropped the rest.
    let references = |at: usize| Arc::strong_count(&messages[at]);
    assert_eq!((references(0), references(1_023)), (2, 2));
    assert_eq!((references(1_024), references(1_099)), (1, 1));
    assert_eq!(broker.lag(&spec("g")).await.expect("lag"), Some(0));
    publish(&broker, "t", 0..1).await;
    assert!((0..messages.len()).all(|at| references(at) == 1));
}

#[tokio::test(start_paused = true)]
async fn an_oversized_message_refuses_the_whole_batch() {
    let broker = MemoryBroker::with_options(MemoryOptions::default().max_message_size(100));
    let mut deliveries = broker.subscribe(&spec("g")).await.expect("subscribe");
    let small = message(0);
    let large = Message::new("test.large", vec![0u8; 100]);
    let large_id = large.id;
    let error = broker
        .publish("t", vec![small, large])
        .await
        .expect_err("refused");
    match error {
        TransportError::PayloadTooLarge { id, size, max } => {
            assert_eq!((id, max), (large_id, 100));
            assert!(size > 100);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_quiet(&mut deliveries).await;
    assert_eq!(broker.max_message_size(), 100);
}

#[tokio::test(start_paused = true)]
async fn duplicate_ids_are_dropped_within_the_window() {
    let broker =
        MemoryBroker::with_options(MemoryOptions::default().dedup_window(Duration::from_secs(60)));
    let mut deliveries = broker.subscribe(&spec("g")).await.expect("subscribe");
    let original = message(0);
    broker
        .publish("t", vec![original.clone(), original.clone()])
        .await
        .expect("publish");
    broker
        .publish("t", vec![original.clone()])
        .await
        .expect("a duplicate publish succeeds");
    broker
        .publish("other", vec![original.clone()])
        .await
        .expect("another topic");
    next(&mut deliveries).await.ack().await.expect("ack");
    assert_quiet(&mut deliveries).await;
    tokio::time::advance(Duration::from_secs(61)).await;
    broker
        .publish("t", vec![original.clone()])
        .await
        .expect("publish");
    assert_eq!(next(&mut deliveries).await.message.id, original.id);
}

#[tokio::test(start_paused = true)]
async fn every_group_gets_every_message_and_one_groups_consumers_share() {
    let broker = MemoryBroker::new();
    let mut solo = broker.subscribe(&spec("solo")).await.expect("subscribe");
    let mut a = broker
        .subscribe(&spec("shared").prefetch(1))
        .await
        .expect("subscribe");
    let mut b = broker
        .subscribe(&spec("shared").prefetch(1))
        .await
        .expect("subscribe");
    publish(&broker, "t", 0..4).await;
    assert_eq!(numbers(&take(&mut solo, 4).await), ["0", "1", "2", "3"]);
    let from_a = next(&mut a).await;
    let from_b = next(&mut b).await;
    assert_ne!(from_a.message.id, from_b.message.id);
    assert_quiet(&mut a).await;
    from_a.ack().await.expect("ack");
    from_b.ack().await.expect("ack");
    let mut rest = vec![next(&mut a).await, next(&mut b).await];
    rest.sort_by_key(|d| String::from_utf8_lossy(&d.message.payload).into_owned());
    assert_eq!(numbers(&rest), ["2", "3"]);
}

#[tokio::test(start_paused = true)]
async fn empty_names_are_invalid() {
    let broker = MemoryBroker::new();
    let error = broker
        .subscribe(&SubscriptionSpec::new("", "g"))
        .await
        .expect_err("empty topic");
    assert_eq!(error.code(), "invalid");
    let error = broker.ensure_group("t", "").expect_err("empty group");
    assert_eq!(error.code(), "invalid");
    let error = broker
        .publish("", vec![message(0)])
        .await
        .expect_err("empty topic");
    assert_eq!(error.code(), "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_consumers_through_severs_and_nacks_lose_nothing() {
    const COUNT: usize = 20_000;
    let broker = MemoryBroker::with_options(MemoryOptions::default().queue_capacity(512));
    let mut consumers = tokio::task::JoinSet::new();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    for index in 0..3 {
        let connection = broker.connect();
        let mut deliveries = connection
            .subscribe(&spec("g").prefetch(16 << index))
            .await
            .expect("subscribe");
        let seen = seen_tx.clone();
        consumers.spawn(async move {
            let _connection = connection;
            let mut handled = 0usize;
            while let Some(item) = deliveries.next().await {
                let delivery = item.expect("a delivery");
                handled += 1;
                // Every seventh first attempt is refused once.
                if delivery.attempt == 1 && handled.is_multiple_of(7) {
                    let _ = delivery.nack(None).await;
                    continue;
                }
                let n: usize = String::from_utf8_lossy(&delivery.message.payload)
                    .parse()
                    .expect("a number");
                if delivery.ack().await.is_ok() {
                    seen.send(n).expect("the test is listening");
                }
            }
        });
    }
    drop(seen_tx);
    let publisher = broker.clone();
    let producing = tokio::spawn(async move {
        for first in (0..COUNT).step_by(100) {
            publish(&publisher, "t", first..first + 100).await;
        }
    });
    let mut acknowledged = vec![0u32; COUNT];
    let mut distinct = 0;
    let mut severs = 0;
    while distinct < COUNT {
        let n = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled after {distinct} of {COUNT} messages"))
            .expect("consumers run");
        if acknowledged[n] == 0 {
            distinct += 1;
        }
        acknowledged[n] += 1;
        if distinct.is_multiple_of(5_000) && severs < distinct / 5_000 {
            severs += 1;
            broker.sever();
        }
    }
    producing.await.expect("the producer finished");
    // An acknowledged message is acknowledged once: a redelivery after a sever is only
    // acknowledged when the first delivery's ack failed.
    let twice: Vec<usize> = (0..COUNT).filter(|&n| acknowledged[n] > 1).collect();
    assert!(twice.is_empty(), "acknowledged twice: {twice:?}");
    assert_eq!(broker.lag(&spec("g")).await.expect("lag"), Some(0));
    consumers.abort_all();
}

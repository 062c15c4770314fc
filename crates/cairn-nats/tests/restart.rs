//! Durability across a real server restart: a private `nats-server` (JetStream, a store
//! directory of its own) is stopped with SIGTERM and started again on the same port and
//! store while a producer publishes steadily and a consumer, through `cairn_bus::Consumer`
//! and the router, acknowledges. Every publish that returned `Ok` must reach the consumer
//! (at least once; duplicates only with the same id), and the consumer must resume by
//! itself on the stream it subscribed to before the restart.
//!
//! This binary runs alone and serially (`scripts/test` runs `binary(restart)` last): it
//! starts and stops a server process of its own and never touches the shared one.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_bus::{
    Consumer, ConsumerOptions, Incoming, Message, Publisher, Router, Subscriber, SubscriptionSpec,
};
use cairn_nats::NatsTransport;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use support::{PrivateServer, fresh_namespace, test_options};

const TOPIC: &str = "ledger";
/// Messages per publish.
const BATCH: usize = 10;

type Ids = Arc<Mutex<HashSet<Uuid>>>;

fn count(ids: &Ids) -> usize {
    ids.lock().unwrap().len()
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_a_server_restart_and_the_consumer_resumes_by_itself() {
    let mut server = PrivateServer::start(None).await;
    let url = format!("nats://{}", server.addr());
    let options = test_options(&fresh_namespace());
    let consumer_side = NatsTransport::connect_with(&url, options.clone())
        .await
        .unwrap();
    let producer_side = NatsTransport::connect_with(&url, options).await.unwrap();
    let producer_connections = producer_side.clone();

    // The consumer: records every id it handles.
    let received: Ids = Arc::default();
    let deliveries = consumer_side
        .subscribe(&SubscriptionSpec::new(TOPIC, "auditors").prefetch(64))
        .await
        .unwrap();
    let router = {
        let received = Arc::clone(&received);
        Router::new().fallback(move |incoming: Incoming| {
            received.lock().unwrap().insert(incoming.message.id);
            async { Ok(()) }
        })
    };
    let stop_consumer = CancellationToken::new();
    let consumer = tokio::spawn(
        Consumer::new(router)
            .options(ConsumerOptions {
                redelivery_delay: None,
                ..ConsumerOptions::default()
            })
            .run(deliveries, stop_consumer.clone()),
    );

    // The producer: publishes batches steadily, retrying a failed batch with the same ids,
    // and records what was confirmed.
    let confirmed: Ids = Arc::default();
    let failures = Arc::new(Mutex::new(0u64));
    let stop_producer = Arc::new(AtomicBool::new(false));
    let producer = {
        let (confirmed, failures, stop) = (
            Arc::clone(&confirmed),
            Arc::clone(&failures),
            Arc::clone(&stop_producer),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<Message> = (0..BATCH)
                    .map(|i| Message::new("ledger.entry", format!("{{\"n\":{}}}", n + i as u64)))
                    .collect();
                n += BATCH as u64;
                while producer_side.publish(TOPIC, batch.clone()).await.is_err() {
                    *failures.lock().unwrap() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                confirmed
                    .lock()
                    .unwrap()
                    .extend(batch.iter().map(|message| message.id));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    wait_for(
        "messages before the restart",
        Duration::from_secs(20),
        || count(&confirmed) >= 300 && count(&received) >= 200,
    )
    .await;
    server.stop().await;
    let confirmed_while_down = count(&confirmed);
    // Down for longer than a publish waits for its ack, so that the producer sees
    // publishes fail and retries them.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    server.launch().await;

    wait_for(
        "messages confirmed after the restart",
        Duration::from_secs(30),
        || count(&confirmed) >= confirmed_while_down + 300,
    )
    .await;
    stop_producer.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let producer_side_connections = producer_connections.connections();

    let confirmed = confirmed.lock().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !received.lock().unwrap().is_superset(&confirmed) {
        if tokio::time::Instant::now() >= deadline {
            let missing = confirmed.difference(&received.lock().unwrap()).count();
            panic!(
                "{missing} of {} confirmed messages never reached the consumer (the group's \
                 lag says {:?})",
                confirmed.len(),
                consumer_side
                    .lag(&SubscriptionSpec::new(TOPIC, "auditors"))
                    .await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !consumer.is_finished(),
        "the consumer kept running on its original subscription"
    );
    stop_consumer.cancel();
    let summary = consumer.await.unwrap().unwrap();
    let received = received.lock().unwrap();
    eprintln!(
        "{} confirmed, {} distinct received, {} handled, {} publish failures retried, \
         {} stream errors, {} answer errors, {} connections",
        confirmed.len(),
        received.len(),
        summary.handled,
        failures.lock().unwrap(),
        summary.transport_errors,
        summary.answer_errors,
        consumer_side.connections(),
    );
    assert!(
        consumer_side.connections() >= 2 && producer_side_connections >= 2,
        "the clients never reconnected: was the server really stopped?"
    );
    assert!(
        *failures.lock().unwrap() > 0,
        "no publish failed while the server was down, so no retry was tested"
    );
}

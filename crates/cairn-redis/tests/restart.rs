//! The server stops for real mid-run and starts again: a private `redis-server` (never the
//! shared one) with its data in an append-only file synced on every write, killed while a
//! producer publishes steadily and a consumer acknowledges, then started again on the same
//! port and directory. Every publish that returned `Ok` must reach the consumer, whose
//! stream resumes by itself.

mod common;

use std::collections::HashSet;
use std::net::TcpStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_bus::{Message, Publisher, Subscriber, SubscriptionSpec};
use cairn_redis::RedisTransport;
use common::{PrivateServer, test_options, unique_prefix};
use futures::StreamExt;
use uuid::Uuid;

const MESSAGES: usize = 400;
const PAUSE: Duration = Duration::from_millis(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_arrives_across_a_server_restart() -> anyhow::Result<()> {
    let mut server = PrivateServer::start(&["--appendonly", "yes", "--appendfsync", "always"])?;
    let url = format!("redis://{}", server.addr());
    let options = test_options(&unique_prefix());
    let consumer_side = RedisTransport::connect_with(&url, options.clone()).await?;
    let producer_side = RedisTransport::connect_with(&url, options).await?;
    let spec = SubscriptionSpec::new("orders", "billing").prefetch(32);
    let mut deliveries = consumer_side.subscribe(&spec).await?;

    let received: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let consumer = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let mut errors = 0usize;
            while let Some(item) = deliveries.next().await {
                match item {
                    Ok(delivery) => {
                        let id = delivery.message.id;
                        received
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(id);
                        // An ack lost in the outage only means the message comes again.
                        let _ = delivery.ack().await;
                    }
                    Err(_) => errors += 1,
                }
            }
            errors
        })
    };

    let confirmed: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let producer = {
        let confirmed = Arc::clone(&confirmed);
        tokio::spawn(async move {
            let mut failures = 0usize;
            for n in 0..MESSAGES {
                let message = Message::new("order.placed", format!("{{\"n\":{n}}}"));
                // Retried with the same id until the server takes it.
                while producer_side
                    .publish("orders", vec![message.clone()])
                    .await
                    .is_err()
                {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                confirmed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(message.id);
                tokio::time::sleep(PAUSE).await;
            }
            failures
        })
    };

    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = confirmed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    server.stop();
    assert!(
        TcpStream::connect(server.addr()).is_err(),
        "the server still accepts connections after it was killed"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.run()?;

    let failures = producer.await?;
    assert!(
        before < MESSAGES,
        "the producer had finished before the server stopped"
    );
    assert!(
        failures > 0,
        "no publish failed: the server did not really stop mid-run"
    );
    let confirmed: HashSet<Uuid> = confirmed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    assert_eq!(confirmed.len(), MESSAGES);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let missing: Vec<Uuid> = {
            let received = received.lock().unwrap_or_else(PoisonError::into_inner);
            confirmed.difference(&received).copied().collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {MESSAGES} confirmed messages never arrived after the restart, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert!(
        received.is_subset(&confirmed),
        "the consumer received messages nobody published"
    );
    consumer_side.close().await;
    let _stream_errors = consumer.await?;
    Ok(())
}

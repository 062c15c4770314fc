//! RabbitMQ restarted under load: while a producer publishes steadily and a consumer
//! acknowledges, the broker's application is stopped (`rabbitmqctl stop_app`, its
//! listeners close and every connection drops) and started again. Every publish that was
//! confirmed is received, and the consumer's stream resumes by itself.
//!
//! This binary is named `restart` so that `scripts/test` runs it alone, after every other
//! test, since it stops the broker everyone shares.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_amqp::AmqpTransport;
use cairn_bus::{Message, Publisher, Subscriber, SubscriptionSpec};
use futures::StreamExt;
use support::{Cleanup, broker_addr, options, unique, url};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Confirmed publishes before the restart, and again after it.
const BEFORE: usize = 200;
const AFTER: usize = 200;

async fn rabbitmqctl(command: &str) {
    let status = tokio::process::Command::new("rabbitmqctl")
        .arg(command)
        .status()
        .await
        .unwrap_or_else(|error| panic!("running rabbitmqctl {command}: {error}"));
    assert!(status.success(), "rabbitmqctl {command} failed: {status}");
}

async fn port_open() -> bool {
    TcpStream::connect(broker_addr()).await.is_ok()
}

/// Starts the broker's application again if the test stopped it and did not get to
/// start it (a failure in between): the broker is shared.
struct Restarter {
    stopped: bool,
}

impl Drop for Restarter {
    fn drop(&mut self) {
        if self.stopped {
            let _ = std::process::Command::new("rabbitmqctl")
                .arg("start_app")
                .status();
        }
    }
}

#[test]
fn confirmed_messages_survive_a_broker_restart_and_the_consumer_resumes_by_itself() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let cleanup = Cleanup::default();
    let spec = SubscriptionSpec::new(
        cleanup.topic(unique("topic")),
        cleanup.group(unique("group")),
    )
    .prefetch(32);
    // A short confirm timeout: a subscription whose reopening the stopping broker left
    // unanswered gives up and tries again on a new connection within the test's patience.
    let transport = AmqpTransport::connect_with(
        &url(broker_addr()),
        options().confirm_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("connecting to RabbitMQ");
    let mut deliveries = transport.subscribe(&spec).await.expect("subscribing");

    let confirmed = Arc::new(Mutex::new(HashSet::new()));
    let received = Arc::new(Mutex::new(HashSet::new()));
    let stream_errors = Arc::new(Mutex::new(0usize));

    let consumer = {
        let received = Arc::clone(&received);
        let stream_errors = Arc::clone(&stream_errors);
        tokio::spawn(async move {
            while let Some(item) = deliveries.next().await {
                match item {
                    Ok(delivery) => {
                        received
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(delivery.message.id);
                        // An ack lost in the restart only means a redelivery.
                        let _ = delivery.ack().await;
                    }
                    Err(_) => *stream_errors.lock().unwrap_or_else(PoisonError::into_inner) += 1,
                }
            }
        })
    };

    let restarted = Arc::new(tokio::sync::Notify::new());
    let producer = {
        let transport = transport.clone();
        let topic = spec.topic.clone();
        let confirmed = Arc::clone(&confirmed);
        let restarted = Arc::clone(&restarted);
        tokio::spawn(async move {
            let mut failures = 0usize;
            let mut after = 0usize;
            let mut after_restart = false;
            let mut n = 0usize;
            let restart = restarted.notified();
            tokio::pin!(restart);
            loop {
                if !after_restart && futures::poll!(restart.as_mut()).is_ready() {
                    after_restart = true;
                }
                let message = Message::new("restart.test", format!("{{\"n\":{n}}}"));
                // Retry with the same id until the broker confirms it.
                loop {
                    match transport.publish(&topic, vec![message.clone()]).await {
                        Ok(()) => break,
                        Err(_) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                confirmed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(message.id);
                n += 1;
                if after_restart {
                    after += 1;
                    if after >= AFTER {
                        return (n, failures);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Let the producer get ahead, then restart the broker under it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while confirmed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len()
        < BEFORE
    {
        assert!(Instant::now() < deadline, "the producer did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut restarter = Restarter { stopped: true };
    rabbitmqctl("stop_app").await;
    assert!(
        !port_open().await,
        "the broker still listens after stop_app"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    rabbitmqctl("start_app").await;
    restarter.stopped = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !port_open().await {
        assert!(Instant::now() < deadline, "the broker did not listen again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restarted.notify_one();

    let (published, failures) = tokio::time::timeout(Duration::from_secs(60), producer)
        .await
        .expect("the producer finished after the restart")
        .expect("the producer task");
    assert!(
        failures > 0,
        "no publish failed: the restart did not happen under the producer"
    );

    let confirmed = confirmed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(confirmed.len(), published);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let received = received.lock().unwrap_or_else(PoisonError::into_inner);
            // Every publish was retried until confirmed, so nothing else can arrive.
            assert!(
                received.is_subset(&confirmed),
                "the consumer received messages that were never published"
            );
            confirmed.difference(&received).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} confirmed messages never arrived (stream errors: {})",
            confirmed.len(),
            stream_errors.lock().unwrap_or_else(PoisonError::into_inner)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stream_errors = *stream_errors.lock().unwrap_or_else(PoisonError::into_inner);
    assert!(
        stream_errors > 0,
        "the stream never saw the connection drop"
    );
    transport.close().await;
    consumer.await.expect("the consumer task");
    drop(cleanup);
}

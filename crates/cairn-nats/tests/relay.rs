//! The outbox relay end to end over NATS JetStream: events appended to the embedded store
//! reach a consumer through the shared server while the relay is killed again and again,
//! including right after a publish was confirmed and before its checkpoint was saved.
//! JetStream drops the republished events as duplicates (`Nats-Msg-Id` is the event id)
//! and the consumer keeps its inbox for anything that comes twice: each event's effect
//! happens exactly once.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn_bus::dedup::{DedupLayer, MemoryInbox};
use cairn_bus::{
    Consumer, ConsumerOptions, Incoming, Message, OutboxRelay, Publisher, RelayOptions, Router,
    Subscriber, SubscriptionSpec, TransportError,
};
use cairn_core::{EventData, EventStore, ExpectedRevision, ReadAll, StreamName, Uuid};
use cairn_log::{FileCheckpoints, LogOptions, LogStore};
use cairn_nats::NatsTransport;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

const TOPIC: &str = "accounts";
const EVENTS: usize = 600;

/// A publisher that counts what it publishes and, once armed, confirms one publish and
/// then hangs, so that the relay is killed exactly between a confirmed publish and the
/// checkpoint after it.
#[derive(Clone)]
struct HangAfterPublish {
    broker: NatsTransport,
    published: Arc<AtomicU64>,
    armed: Arc<AtomicBool>,
    hung: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Publisher for HangAfterPublish {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TransportError> {
        let count = messages.len() as u64;
        self.broker.publish(topic, messages).await?;
        self.published.fetch_add(count, Ordering::Relaxed);
        if self.armed.swap(false, Ordering::SeqCst) {
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    fn max_message_size(&self) -> usize {
        self.broker.max_message_size()
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cairn-relay-{name}-{}", Uuid::now_v7().simple()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_restarts_and_every_effect_happens_once() {
    let store = LogStore::open_temporary(LogOptions::default()).unwrap();
    let checkpoint_dir = temp_dir("checkpoints");
    let checkpoints = FileCheckpoints::open(&checkpoint_dir).unwrap();
    let namespace = support::fresh_namespace();
    let _cleanup = support::Cleanup {
        addr: support::shared_addr(),
        namespace: namespace.clone(),
    };
    let broker = NatsTransport::connect_with(
        &format!("nats://{}", support::shared_addr()),
        support::test_options(&namespace),
    )
    .await
    .unwrap();
    let spec = SubscriptionSpec::new(TOPIC, "ledger");
    let deliveries = broker.subscribe(&spec).await.unwrap();

    // The consumer: its effect is one increment per event id.
    let effects: Arc<Mutex<HashMap<Uuid, u32>>> = Arc::default();
    let deliveries_seen = Arc::new(AtomicU64::new(0));
    let router = {
        let (effects, seen) = (Arc::clone(&effects), Arc::clone(&deliveries_seen));
        Router::new().fallback(move |incoming: Incoming| {
            *effects
                .lock()
                .unwrap()
                .entry(incoming.message.id)
                .or_default() += 1;
            seen.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
    };
    let handled = Arc::new(AtomicU64::new(0));
    let service = {
        let handled = Arc::clone(&handled);
        ServiceBuilder::new()
            .map_response(move |()| {
                handled.fetch_add(1, Ordering::Relaxed);
            })
            .layer(DedupLayer::new("ledger", MemoryInbox::new()))
            .service(router)
    };
    let stop_consumer = CancellationToken::new();
    let consumer = tokio::spawn(
        Consumer::new(service)
            .options(ConsumerOptions::default())
            .run(deliveries, stop_consumer.clone()),
    );

    // A writer appends throughout.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..EVENTS {
                let stream = StreamName::new(format!("account-{}", n % 9)).unwrap();
                let event = EventData::new("Deposited", format!("{{\"n\":{n}}}").into_bytes());
                store
                    .append(&stream, ExpectedRevision::Any, vec![event])
                    .await
                    .unwrap();
                if n % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        })
    };

    let publisher = HangAfterPublish {
        broker: broker.clone(),
        published: Arc::new(AtomicU64::new(0)),
        armed: Arc::new(AtomicBool::new(false)),
        hung: Arc::new(tokio::sync::Notify::new()),
    };
    let relay = || {
        OutboxRelay::new(
            "ledger-relay",
            store.clone(),
            publisher.clone(),
            checkpoints.clone(),
            RelayOptions::to_topic(TOPIC).batch(16),
        )
    };

    // Kill the relay twice right after a confirmed publish, then several times at
    // arbitrary moments; each time a new relay starts from the saved checkpoint.
    let mut kills = 0;
    for round in 0..8u64 {
        let running = tokio::spawn(relay().run(CancellationToken::new()));
        if round < 2 {
            publisher.armed.store(true, Ordering::SeqCst);
            tokio::time::timeout(Duration::from_secs(10), publisher.hung.notified())
                .await
                .expect("the relay published while armed");
        } else {
            tokio::time::sleep(Duration::from_millis(3 + round * 4)).await;
        }
        running.abort();
        let _ = running.await;
        kills += 1;
    }
    writer.await.unwrap();

    // The last relay runs to the end and is stopped gracefully.
    let cancel = CancellationToken::new();
    let last = tokio::spawn(relay().run(cancel.clone()));
    let ids: Vec<Uuid> = store
        .read_all(ReadAll::forwards().limit(EVENTS))
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), EVENTS);
    tokio::time::timeout(Duration::from_secs(30), async {
        while effects.lock().unwrap().len() < EVENTS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every event reached the consumer");
    cancel.cancel();
    let summary = last.await.unwrap().unwrap();
    assert_eq!(
        checkpoints_position(&checkpoints).await,
        summary.checkpoint,
        "the graceful stop saved its checkpoint"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_consumer.cancel();
    consumer.await.unwrap().unwrap();

    let effects = effects.lock().unwrap();
    for id in &ids {
        assert_eq!(
            effects.get(id),
            Some(&1),
            "event {id}: its effect happened exactly once"
        );
    }
    assert_eq!(
        effects.len(),
        EVENTS,
        "no effect for anything but the store's events"
    );
    let deliveries = handled.load(Ordering::Relaxed);
    let published = publisher.published.load(Ordering::Relaxed);
    assert!(
        published > EVENTS as u64,
        "the kills after a confirmed publish must have made the relay publish some events \
         again ({published} messages published for {EVENTS} events), or the \
         de-duplication was not tested"
    );
    assert!(deliveries >= EVENTS as u64);
    assert_eq!(deliveries_seen.load(Ordering::Relaxed), EVENTS as u64);
    eprintln!(
        "{kills} kills; {published} messages published and {deliveries} deliveries for \
         {EVENTS} events"
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&checkpoint_dir);
}

async fn checkpoints_position(checkpoints: &FileCheckpoints) -> Option<cairn_core::Position> {
    use cairn_core::Checkpoints;
    checkpoints.load("ledger-relay").await.unwrap()
}

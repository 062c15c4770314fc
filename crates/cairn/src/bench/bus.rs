//! The `bus` workloads: messages through `cairn-bus` over the in-memory transport.
//!
//! - `bus-raw`: the transport alone: a producer publishes batches of messages while one
//!   consumer takes each delivery and acknowledges it. The baseline of the run.
//! - `bus-router`: the same traffic through a [`Consumer`] running the router behind the
//!   metrics, ordered-concurrency (256 in flight, 1,024 keys), inbox de-duplication and
//!   retry middleware; the handler decodes nothing and counts.
//!
//! Latencies are publish → handled, sampled on one message in 64.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use cairn_bus::dedup::{DedupLayer, MemoryInbox};
use cairn_bus::memory::{MemoryBroker, MemoryOptions};
use cairn_bus::metrics::{BusMetrics, MetricsLayer};
use cairn_bus::ordered::OrderedLayer;
use cairn_bus::retry::{RetryLayer, RetryPolicy};
use cairn_bus::{
    Consumer, ConsumerOptions, Incoming, Message, Publisher, Router, Subscriber, SubscriptionSpec,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use super::Measured;
use super::stats::Samples;

/// Messages per publish.
const PUBLISH_BATCH: usize = 256;
/// Distinct ordering keys.
const KEYS: usize = 1_024;
/// Calls in flight through the ordered-concurrency middleware.
pub(crate) const IN_FLIGHT: usize = 256;
/// One message in this many has its latency recorded.
const SAMPLE_EVERY: u64 = 64;
const TOPIC: &str = "bench";
const GROUP: &str = "bench";
const MESSAGE_TYPE: &str = "bench.happened";

/// The messages' payload: the publish time (nanoseconds since `epoch`) then padding.
fn payload(epoch: Instant, size: usize) -> Bytes {
    let nanos = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut payload = vec![0u8; size.max(8)];
    payload[..8].copy_from_slice(&nanos.to_le_bytes());
    Bytes::from(payload)
}

fn published_at(epoch: Instant, message: &Message) -> Option<Instant> {
    let nanos: [u8; 8] = message.payload.get(..8)?.try_into().ok()?;
    Some(epoch + Duration::from_nanos(u64::from_le_bytes(nanos)))
}

/// Publishes up to `count` messages in batches until `stop` is cancelled.
async fn produce(
    broker: MemoryBroker,
    count: u64,
    size: usize,
    epoch: Instant,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let mut published = 0u64;
    while published < count && !stop.is_cancelled() {
        let batch = (count - published).min(PUBLISH_BATCH as u64) as usize;
        let payload = payload(epoch, size);
        let messages = (0..batch)
            .map(|i| {
                let key = &keys[(published as usize + i) % KEYS];
                Message::new(MESSAGE_TYPE, payload.clone()).with_key(key.clone())
            })
            .collect();
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            done = broker.publish(TOPIC, messages) => done.context("publishing to the memory broker")?,
        }
        published += batch as u64;
    }
    Ok(published)
}

/// Records one latency in `SAMPLE_EVERY` messages.
#[derive(Clone)]
struct Recorder {
    epoch: Instant,
    seen: Arc<AtomicU64>,
    samples: Arc<Mutex<Samples>>,
}

impl Recorder {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            seen: Arc::new(AtomicU64::new(0)),
            samples: Arc::new(Mutex::new(Samples::with_capacity(1 << 16))),
        }
    }

    fn handled(&self, message: &Message, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        let seen = self.seen.fetch_add(1, Ordering::Relaxed);
        if seen.is_multiple_of(SAMPLE_EVERY)
            && let Some(at) = published_at(self.epoch, message)
        {
            let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
            samples.record(at.elapsed());
        }
    }

    fn finish(self, seconds: f64) -> Measured {
        let events = self.seen.load(Ordering::Relaxed);
        let samples =
            std::mem::take(&mut *self.samples.lock().unwrap_or_else(PoisonError::into_inner));
        Measured {
            events,
            seconds,
            latency: samples.summary(),
        }
    }
}

fn broker() -> MemoryBroker {
    // The producer publishes as fast as it can; a bounded queue makes it wait for the
    // consumer, as a real broker's flow control would. The broker's own de-duplication of
    // published ids is off: the router's inbox is the de-duplication being measured.
    MemoryBroker::with_options(
        MemoryOptions::default()
            .queue_capacity(16 * 1_024)
            .dedup_ids(0),
    )
}

/// Waits until `count` messages were handled or `duration` passed, then stops `stop`.
async fn until_done(
    counter: &AtomicU64,
    start: u64,
    count: u64,
    duration: Duration,
    stop: &CancellationToken,
) {
    let deadline = Instant::now() + duration;
    while counter.load(Ordering::Relaxed) - start < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
}

/// `bus-raw`: the transport alone, publish → deliver → ack.
pub(crate) async fn raw(
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let broker = broker();
    let spec = SubscriptionSpec::new(TOPIC, GROUP).prefetch(IN_FLIGHT);
    let mut deliveries = broker
        .subscribe(&spec)
        .await
        .context("subscribing to the memory broker")?;
    let epoch = Instant::now();
    let stop = CancellationToken::new();
    let recorder = Recorder::new(epoch);
    let start = counter.load(Ordering::Relaxed);
    let producer = tokio::spawn(produce(broker.clone(), count, size, epoch, stop.clone()));
    let consumer = {
        let (stop, recorder, counter) = (stop.clone(), recorder.clone(), Arc::clone(counter));
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    next = deliveries.next() => next,
                };
                let Some(delivery) = next else { break };
                let delivery = delivery.context("the memory broker's delivery stream")?;
                recorder.handled(&delivery.message, &counter);
                delivery.ack().await.context("acknowledging")?;
            }
            anyhow::Ok(())
        })
    };
    until_done(counter, start, count, duration, &stop).await;
    let seconds = epoch.elapsed().as_secs_f64();
    producer.await.context("the producer task failed")??;
    consumer.await.context("the consumer task failed")??;
    Ok(recorder.finish(seconds))
}

/// `bus-router`: the same traffic through the consumer, the middleware and the router.
pub(crate) async fn router(
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let broker = broker();
    let spec = SubscriptionSpec::new(TOPIC, GROUP).prefetch(IN_FLIGHT);
    let deliveries = broker
        .subscribe(&spec)
        .await
        .context("subscribing to the memory broker")?;
    let epoch = Instant::now();
    let stop = CancellationToken::new();
    let recorder = Recorder::new(epoch);
    let start = counter.load(Ordering::Relaxed);
    let router = {
        let (recorder, counter) = (recorder.clone(), Arc::clone(counter));
        Router::new().on_raw(MESSAGE_TYPE, move |incoming: Incoming| {
            recorder.handled(&incoming.message, &counter);
            std::future::ready(Ok(()))
        })
    };
    let metrics = BusMetrics::new();
    let service = ServiceBuilder::new()
        .layer(MetricsLayer::new(metrics.clone()))
        .layer(OrderedLayer::new(IN_FLIGHT))
        .layer(DedupLayer::new("bench", MemoryInbox::new()))
        .layer(RetryLayer::new(
            RetryPolicy::new().on_retry(metrics.retry_hook()),
        ))
        .service(router);
    let options = ConsumerOptions {
        max_in_flight: IN_FLIGHT,
        ..ConsumerOptions::default()
    };
    let producer = tokio::spawn(produce(broker.clone(), count, size, epoch, stop.clone()));
    let consumer = tokio::spawn(
        Consumer::new(service)
            .options(options)
            .run(deliveries, stop.clone()),
    );
    until_done(counter, start, count, duration, &stop).await;
    let seconds = epoch.elapsed().as_secs_f64();
    producer.await.context("the producer task failed")??;
    let summary = consumer.await.context("the consumer task failed")??;
    let snapshot = metrics.snapshot();
    anyhow::ensure!(
        snapshot.failed == 0 && summary.failed == 0,
        "{} messages failed in the router",
        snapshot.failed.max(summary.failed)
    );
    Ok(recorder.finish(seconds))
}

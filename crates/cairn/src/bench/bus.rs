//! The `bus` workloads: messages through `cairn-bus`.
//!
//! Over the in-memory transport (`--transport memory`, the default):
//!
//! - `bus-raw`: the transport alone: a producer publishes batches of messages while one
//!   consumer takes each delivery and acknowledges it. The baseline of the run.
//! - `bus-router`: the same traffic through a [`Consumer`] running the router behind the
//!   metrics, ordered-concurrency (256 in flight, 1,024 keys), inbox de-duplication and
//!   retry middleware; the handler decodes nothing and counts.
//!
//! Over a broker (`--transport nats|amqp|redis`), `<broker>-raw` is the broker's own client
//! library publishing with confirms and consuming with acks (the `raw_<broker>` modules),
//! and `<broker>-router` the same traffic through Cairn's transport for that broker and
//! the same consumer, router and middleware as `bus-router`.
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
/// The most messages the producer may publish beyond those handled, as a broker's flow
/// control would allow (the raw Redis baseline keeps the same window).
const WINDOW: u64 = 50_000;
/// One message in this many has its latency recorded.
const SAMPLE_EVERY: u64 = 64;
const TOPIC: &str = "bench";
const GROUP: &str = "bench";
const MESSAGE_TYPE: &str = "bench.happened";

/// A payload of `size` bytes (at least 8): the publish time (nanoseconds since `epoch`),
/// then padding; every bus workload, raw clients included, sends these.
pub(crate) fn payload(epoch: Instant, size: usize) -> Bytes {
    let nanos = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut payload = vec![0u8; size.max(8)];
    payload[..8].copy_from_slice(&nanos.to_le_bytes());
    Bytes::from(payload)
}

/// When a [`payload`] was made, if it is one.
pub(crate) fn published_at(epoch: Instant, payload: &[u8]) -> Option<Instant> {
    let nanos: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(epoch + Duration::from_nanos(u64::from_le_bytes(nanos)))
}

/// Publishes up to `count` messages to `topic` in batches until `stop` is cancelled,
/// staying at most [`WINDOW`] messages ahead of `handled` (which counts from `start`).
async fn produce<P: Publisher>(
    broker: Arc<P>,
    topic: String,
    count: u64,
    size: usize,
    epoch: Instant,
    (handled, start): (Arc<AtomicU64>, u64),
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let mut published = 0u64;
    while published < count && !stop.is_cancelled() {
        let done = handled.load(Ordering::Relaxed).saturating_sub(start);
        if published.saturating_sub(done) >= WINDOW {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
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
            done = broker.publish(&topic, messages) => done.context("publishing")?,
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
            && let Some(at) = published_at(self.epoch, &message.payload)
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
    let producer = tokio::spawn(produce(
        Arc::new(broker.clone()),
        TOPIC.to_owned(),
        count,
        size,
        epoch,
        (Arc::clone(counter), start),
        stop.clone(),
    ));
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
    router_over(
        Arc::new(broker()),
        TOPIC,
        GROUP,
        duration,
        count,
        size,
        counter,
    )
    .await
}

/// The router workload over any transport, on `topic` as `group`.
pub(crate) async fn router_over<T: Publisher + Subscriber>(
    transport: Arc<T>,
    topic: &str,
    group: &str,
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let spec = SubscriptionSpec::new(topic, group).prefetch(IN_FLIGHT);
    let deliveries = transport.subscribe(&spec).await.context("subscribing")?;
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
    let producer = tokio::spawn(produce(
        Arc::clone(&transport),
        topic.to_owned(),
        count,
        size,
        epoch,
        (Arc::clone(counter), start),
        stop.clone(),
    ));
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

/// The transports `--transport` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TransportKind {
    /// The in-memory broker of `cairn-bus`.
    Memory,
    /// NATS JetStream (`cairn-nats`; a build with the `nats` feature).
    Nats,
    /// RabbitMQ (`cairn-amqp`; a build with the `amqp` feature).
    Amqp,
    /// Redis Streams (`cairn-redis`; a build with the `redis` feature).
    Redis,
}

impl TransportKind {
    /// The names of the two rows: the baseline and the router.
    pub(crate) fn rows(self) -> (&'static str, &'static str) {
        match self {
            Self::Memory => ("bus-raw", "bus-router"),
            Self::Nats => ("nats-raw", "nats-router"),
            Self::Amqp => ("amqp-raw", "amqp-router"),
            Self::Redis => ("redis-raw", "redis-router"),
        }
    }

    /// The broker's URL on this machine, unless `--broker-url` names another.
    pub(crate) fn default_url(self) -> &'static str {
        match self {
            Self::Memory => "",
            Self::Nats => "nats://127.0.0.1:4222",
            Self::Amqp => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Self::Redis => "redis://127.0.0.1:6379",
        }
    }
}

/// The baseline row: the in-memory transport alone, or the broker's own client.
pub(crate) async fn baseline(
    kind: TransportKind,
    url: &str,
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let _ = url;
    match kind {
        TransportKind::Memory => raw(duration, count, size, counter).await,
        #[cfg(feature = "nats")]
        TransportKind::Nats => super::raw_nats::raw(url, duration, count, size, counter).await,
        #[cfg(feature = "amqp")]
        TransportKind::Amqp => super::raw_amqp::raw(url, duration, count, size, counter).await,
        #[cfg(feature = "redis")]
        TransportKind::Redis => super::raw_redis::raw(url, duration, count, size, counter).await,
        #[allow(
            unreachable_patterns,
            reason = "reached in builds without a broker feature"
        )]
        other => Err(missing_feature(other)),
    }
}

/// The router row: Cairn's transport through the consumer, router and middleware.
pub(crate) async fn routed(
    kind: TransportKind,
    url: &str,
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let _ = url;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let topic = format!("bench-{}", run.get(20..).unwrap_or("run"));
    let name = topic.as_str();
    let work = (name, duration, count, size, counter);
    let _ = &work;
    match kind {
        TransportKind::Memory => router(duration, count, size, counter).await,
        #[cfg(feature = "nats")]
        TransportKind::Nats => {
            let transport = cairn_nats::NatsTransport::connect(url)
                .await
                .context("connecting to NATS")?;
            routed_then_cleaned(transport, work, |transport| async move {
                transport
                    .delete_topic(name)
                    .await
                    .context("deleting the bench's JetStream stream")?;
                Ok(())
            })
            .await
        }
        #[cfg(feature = "amqp")]
        TransportKind::Amqp => {
            let transport = cairn_amqp::AmqpTransport::connect(url)
                .await
                .context("connecting to RabbitMQ")?;
            routed_then_cleaned(transport, work, |transport| async move {
                let group = transport.delete_group(name, GROUP).await;
                let exchange = transport.delete_topic(name).await;
                transport.close().await;
                group.context("deleting the bench's queue")?;
                exchange.context("deleting the bench's exchange")?;
                Ok(())
            })
            .await
        }
        #[cfg(feature = "redis")]
        TransportKind::Redis => {
            let options = cairn_redis::RedisOptions::default().prefix(format!("cairn-bench-{run}"));
            let transport = cairn_redis::RedisTransport::connect_with(url, options)
                .await
                .context("connecting to Redis")?;
            routed_then_cleaned(transport, work, |transport| async move {
                let key = transport.stream_key(name);
                transport.close().await;
                let client = redis::Client::open(url).context("the Redis URL")?;
                let mut connection = client
                    .get_multiplexed_async_connection()
                    .await
                    .context("connecting to Redis to clean up")?;
                redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<u64>(&mut connection)
                    .await
                    .context("deleting the bench's stream")?;
                Ok(())
            })
            .await
        }
        #[allow(
            unreachable_patterns,
            reason = "reached in builds without a broker feature"
        )]
        other => Err(missing_feature(other)),
    }
}

/// The router workload on `transport` (topic, duration, count, size, counter as in
/// `work`), then `clean` removes what it created, whether or not the workload succeeded.
#[cfg(any(feature = "nats", feature = "amqp", feature = "redis"))]
async fn routed_then_cleaned<T, C, F>(
    transport: T,
    (topic, duration, count, size, counter): (&str, Duration, u64, usize, &Arc<AtomicU64>),
    clean: C,
) -> anyhow::Result<Measured>
where
    T: Publisher + Subscriber,
    C: FnOnce(Arc<T>) -> F,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let transport = Arc::new(transport);
    let measured = router_over(
        Arc::clone(&transport),
        topic,
        GROUP,
        duration,
        count,
        size,
        counter,
    )
    .await;
    let cleaned = clean(transport).await;
    let measured = measured?;
    cleaned?;
    Ok(measured)
}

fn missing_feature(kind: TransportKind) -> anyhow::Error {
    let feature = match kind {
        TransportKind::Memory => "",
        TransportKind::Nats => "nats",
        TransportKind::Amqp => "amqp",
        TransportKind::Redis => "redis",
    };
    anyhow::anyhow!("this build has no {kind:?} transport; build cairn with `--features {feature}`")
}

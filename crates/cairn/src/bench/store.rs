//! The workloads run against a Cairn store (the embedded [`LogStore`](cairn::log::LogStore),
//! or with `--store postgres` the PostgreSQL store): concurrent appends, reading `$all`
//! back, and append-to-delivery latency through a live subscription.
//!
//! Every writer appends to its own stream with [`ExpectedRevision::Any`], so writers never
//! conflict and the figures measure the log, not optimistic retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use cairn::{
    EventData, EventFilter, EventStore, ExpectedRevision, MAX_PAGE_SIZE, ReadAll, StreamName,
    SubscribeAll, SubscriptionMessage,
};
use futures::StreamExt as _;
use tokio::task::JoinSet;

use super::stats::Samples;
use super::{AppendSpec, Measured};

/// The type of every benchmark event.
const EVENT_TYPE: &str = "BenchEvent";

/// The streams the latency workload writes to (and its subscriber filters on).
const LATENCY_PREFIX: &str = "bench-latency-";
/// How many streams the latency workload appends to, round-robin.
const LATENCY_STREAMS: u64 = 64;

/// How long the latency workload waits for stragglers after its last append.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// How long the latency workload offers its rate before it starts counting: a fresh store's
/// first appends pay one-time costs (PostgreSQL: the database just created still flushing,
/// each connection preparing its statements and compiling the schema's functions) that
/// are not the steady state the workload measures.
pub(crate) const LATENCY_WARM_UP: Duration = Duration::from_secs(1);

/// The timestamp of an event sent during the warm-up: delivered, but not counted.
const WARM_UP_STAMP: u64 = u64::MAX;

/// A payload of `size` bytes (a repeating pattern of letters).
pub(crate) fn payload(size: usize) -> Bytes {
    (0..size)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Runs a write workload: `spec.writers` tasks, each appending batches of `spec.batch`
/// events to its own stream and awaiting each acknowledgement, until the workload's count
/// or duration runs out.
pub(crate) async fn append<S: EventStore + Clone>(
    store: &S,
    workload: &str,
    spec: &AppendSpec,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let payload = payload(spec.size);
    let appends = spec.appends_per_writer();
    let started = Instant::now();
    let deadline = started + spec.duration;
    let mut writers = JoinSet::new();
    for writer in 0..spec.writers {
        let store = store.clone();
        let stream = StreamName::new(format!("bench-{workload}-{writer}"))?;
        let payload = payload.clone();
        let counter = Arc::clone(counter);
        let batch = spec.batch;
        writers.spawn(async move {
            let mut samples = Samples::with_capacity(capacity(appends));
            for _ in 0..appends {
                if Instant::now() >= deadline {
                    break;
                }
                let events = (0..batch)
                    .map(|_| EventData::new(EVENT_TYPE, payload.clone()))
                    .collect();
                let append_started = Instant::now();
                store
                    .append(&stream, ExpectedRevision::Any, events)
                    .await
                    .with_context(|| format!("appending to {stream}"))?;
                samples.record(append_started.elapsed());
                counter.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(samples)
        });
    }
    let mut samples = Samples::default();
    while let Some(joined) = writers.join_next().await {
        samples.merge(joined.context("a writer task failed")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Measured {
        events: samples.len() as u64 * spec.batch as u64,
        seconds,
        latency: samples.summary(),
    })
}

/// Room for the samples of `appends` appends, bounded so a huge count does not reserve
/// memory up front.
fn capacity(appends: u64) -> usize {
    usize::try_from(appends.min(1 << 20)).unwrap_or(1 << 20)
}

/// Reads the whole of `$all` forwards, page by page, counting events and payload bytes.
/// Latencies are those of each page read.
pub(crate) async fn read_all<S: EventStore>(
    store: &S,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<(Measured, u64)> {
    let mut request = ReadAll::forwards().limit(MAX_PAGE_SIZE);
    let mut events = 0u64;
    let mut bytes = 0u64;
    let mut samples = Samples::default();
    let started = Instant::now();
    loop {
        let page_started = Instant::now();
        let page = store.read_all(request.clone()).await?;
        samples.record(page_started.elapsed());
        events += page.events.len() as u64;
        bytes += page
            .events
            .iter()
            .map(|e| e.payload.len() as u64)
            .sum::<u64>();
        counter.fetch_add(page.events.len() as u64, Ordering::Relaxed);
        match page.next {
            Some(next) if !page.end => request.from = Some(next),
            _ => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        Measured {
            events,
            seconds,
            latency: samples.summary(),
        },
        bytes,
    ))
}

/// What the latency workload measured.
pub(crate) struct LatencyMeasured {
    /// Deliveries and their append-start → delivery latencies.
    pub(crate) measured: Measured,
    /// The events appended.
    pub(crate) sent: u64,
    /// How often the subscriber fell behind and caught up from storage.
    pub(crate) fell_behind: u64,
}

/// Offers `rate` events per second for [`LATENCY_WARM_UP`] and then for `duration`, one
/// event per append, each append started on schedule without waiting for earlier ones; a
/// live `$all` subscriber measures from the start of each append after the warm-up to its
/// delivery.
///
/// The appends go round-robin to [`LATENCY_STREAMS`] streams.
///
/// The start time travels in the first 8 bytes of the payload (nanoseconds since the
/// workload began), so no shared map sits between writer and subscriber.
pub(crate) async fn latency<S: EventStore + Clone>(
    store: &S,
    rate: u32,
    duration: Duration,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<LatencyMeasured> {
    let total = ((f64::from(rate) * duration.as_secs_f64()).round() as u64).max(1);
    let warm_up = (f64::from(rate) * LATENCY_WARM_UP.as_secs_f64()).round() as u64;
    let offered = warm_up + total;
    let head = store.head_position().await?;
    let request = head
        .map_or_else(SubscribeAll::from_start, SubscribeAll::after)
        .filter(EventFilter::stream_prefix(LATENCY_PREFIX));
    let mut subscription = store.subscribe_all(request);
    let epoch = Instant::now();
    // In a set, so that the subscriber is stopped if this function returns early.
    let mut subscriber = JoinSet::new();
    subscriber.spawn({
        let counter = Arc::clone(counter);
        async move {
            let mut samples = Samples::with_capacity(capacity(total));
            let mut fell_behind = 0u64;
            let mut received = 0u64;
            while received < offered {
                match subscription.next().await {
                    Some(Ok(SubscriptionMessage::Event(event))) => {
                        let stamp = event
                            .payload
                            .get(..8)
                            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                            .map(u64::from_le_bytes)
                            .context("a latency event lost its timestamp")?;
                        received += 1;
                        if stamp == WARM_UP_STAMP {
                            continue;
                        }
                        let delivered = epoch.elapsed();
                        samples.record(delivered.saturating_sub(Duration::from_nanos(stamp)));
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(SubscriptionMessage::FellBehind)) => fell_behind += 1,
                    Some(Ok(SubscriptionMessage::CaughtUp)) => {}
                    Some(Err(error)) => return Err(error).context("the subscription failed"),
                    None => bail!("the subscription ended early"),
                }
            }
            anyhow::Ok((samples, fell_behind))
        }
    });

    let template = payload(size.max(8));
    // Spread over streams, as events from many aggregates are: a store that orders
    // appends per stream (PostgreSQL's per-stream lock) is not measured on one stream.
    let streams = (0..LATENCY_STREAMS)
        .map(|n| StreamName::new(format!("{LATENCY_PREFIX}{n}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut appends = JoinSet::new();
    let mut sent = 0u64;
    let mut measuring_since = None;
    let tick = Duration::from_millis(1);
    while sent < offered {
        let due = ((epoch.elapsed().as_secs_f64() * f64::from(rate)) as u64).min(offered);
        while sent < due {
            let mut bytes = template.to_vec();
            let stamp = if sent < warm_up {
                WARM_UP_STAMP
            } else {
                let now = epoch.elapsed();
                measuring_since.get_or_insert(now);
                u64::try_from(now.as_nanos()).unwrap_or(u64::MAX - 1)
            };
            if let Some(head) = bytes.get_mut(..8) {
                head.copy_from_slice(&stamp.to_le_bytes());
            }
            let store = store.clone();
            let stream = streams[(sent % LATENCY_STREAMS) as usize].clone();
            appends.spawn(async move {
                store
                    .append(
                        &stream,
                        ExpectedRevision::Any,
                        vec![EventData::new(EVENT_TYPE, bytes)],
                    )
                    .await
            });
            sent += 1;
        }
        while let Some(done) = appends.try_join_next() {
            done.context("an append task failed")??;
        }
        tokio::time::sleep(tick).await;
    }
    while let Some(done) = appends.join_next().await {
        done.context("an append task failed")??;
    }
    let writing = epoch
        .elapsed()
        .saturating_sub(measuring_since.unwrap_or_default());
    let (samples, fell_behind) = tokio::time::timeout(DELIVERY_GRACE, subscriber.join_next())
        .await
        .context("the subscriber did not receive every event in time")?
        .context("the subscriber task is missing")?
        .context("the subscriber task failed")??;
    Ok(LatencyMeasured {
        measured: Measured {
            events: samples.len() as u64,
            seconds: writing.as_secs_f64(),
            latency: samples.summary(),
        },
        sent: sent - warm_up,
        fell_behind,
    })
}

/// Writes `count` events (16 writers, batches of 100) so that `read-all` has something to
/// read when no write workload ran before it.
pub(crate) async fn fill<S: EventStore + Clone>(
    store: &S,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let spec = AppendSpec {
        writers: 16,
        batch: 100,
        count,
        duration: Duration::from_secs(3600),
        size,
    };
    append(store, "fill", &spec, counter).await?;
    Ok(())
}

//! [`BusMetrics`]: the counters, gauges and latency histogram of a consumer, and the plain
//! [`MetricsSnapshot`] they are read into.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZero;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::handler::{HandlerError, Incoming};

/// The upper bounds of the handler latency histogram's buckets, in microseconds (50 µs to
/// 10 s); a last bucket, `+Inf`, takes the rest.
pub const LATENCY_BUCKETS_MICROS: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// The number of histogram buckets, `+Inf` included.
const BUCKETS: usize = LATENCY_BUCKETS_MICROS.len() + 1;

/// [`LATENCY_BUCKETS_MICROS`] in nanoseconds, what latencies are compared with.
const LATENCY_BUCKETS_NANOS: [u64; BUCKETS - 1] = {
    let mut nanos = [0; BUCKETS - 1];
    let mut at = 0;
    while at < nanos.len() {
        nanos[at] = LATENCY_BUCKETS_MICROS[at] * 1_000;
        at += 1;
    }
    nanos
};

/// One stripe of the counters. Each thread updates the stripe it was given on first use,
/// so threads handling messages side by side do not fight over one cache line; readers
/// add the stripes up. Aligned to keep stripes off each other's cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    received: AtomicU64,
    handled: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    parked: AtomicU64,
    /// Messages dropped before their result (cancelled). The messages in flight are the
    /// ones received and not yet handled, failed or abandoned, so a message costs no
    /// counter of its own for them.
    abandoned: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS],
    latency_sum_nanos: AtomicU64,
}

impl Shard {
    fn observe(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // Most latencies fall in the first buckets: a scan from the start finds theirs in
        // a comparison or two.
        let bucket = LATENCY_BUCKETS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKETS - 1);
        if let Some(count) = self.latency_buckets.get(bucket) {
            count.fetch_add(1, Relaxed);
        }
        self.latency_sum_nanos.fetch_add(nanos, Relaxed);
    }
}

/// Hands each thread its stripe, round robin.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD_OF_THREAD: usize = NEXT_SHARD.fetch_add(1, Relaxed);
}

/// The registry behind [`BusMetrics`].
struct Registry {
    /// A power-of-two number of stripes.
    shards: Box<[Arc<Shard>]>,
    /// Consumer lag by topic, then group. Written by whoever samples the lag, read by
    /// snapshots; the only lock, and never on a message's path.
    lag: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
}

/// A consumer's metrics: messages received, handled, failed, retried and parked, messages
/// in flight, a histogram of handler latency, and consumer lag per topic and group.
///
/// A cheap handle: clones share one registry. [`MetricsLayer`](super::MetricsLayer) feeds
/// the message counts and latency; [`record_retry`](Self::record_retry) and
/// [`record_parked`](Self::record_parked) are for the retry and dead-letter middleware's
/// hooks; [`set_lag`](Self::set_lag) for whoever samples the brokers' lag. Read it with
/// [`snapshot`](Self::snapshot) or [`render_prometheus`](Self::render_prometheus).
///
/// Recording is a few relaxed atomic operations on counters striped per thread: no lock,
/// no allocation, no cache line shared between threads. Reads add the stripes up without
/// stopping writers, so a snapshot taken while messages flow is a close approximation
/// rather than one instant's exact state.
#[derive(Clone)]
pub struct BusMetrics {
    registry: Arc<Registry>,
}

impl Default for BusMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for BusMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusMetrics")
            .field("stripes", &self.registry.shards.len())
            .finish_non_exhaustive()
    }
}

impl BusMetrics {
    /// An empty registry.
    pub fn new() -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, NonZero::get);
        let stripes = parallelism
            .saturating_mul(2)
            .clamp(4, 64)
            .next_power_of_two();
        Self {
            registry: Arc::new(Registry {
                shards: (0..stripes).map(|_| Arc::default()).collect(),
                lag: Mutex::default(),
            }),
        }
    }

    /// This thread's stripe.
    fn shard(&self) -> &Arc<Shard> {
        let shards = &self.registry.shards;
        let index = SHARD_OF_THREAD.with(|index| *index) & (shards.len() - 1);
        // The index is masked to the power-of-two length.
        &shards[index]
    }

    /// Counts a message entering the handler stack, and starts its clock.
    pub(crate) fn start(&self) -> InFlight {
        let shard = self.shard();
        shard.received.fetch_add(1, Relaxed);
        InFlight {
            shard: Arc::clone(shard),
            started: Instant::now(),
            finished: false,
        }
    }

    /// Counts one retry (an attempt that failed and will be tried again).
    pub fn record_retry(&self) {
        self.shard().retried.fetch_add(1, Relaxed);
    }

    /// Counts one message parked as a dead letter.
    pub fn record_parked(&self) {
        self.shard().parked.fetch_add(1, Relaxed);
    }

    /// A hook for [`RetryPolicy::on_retry`](crate::retry::RetryPolicy::on_retry) that
    /// counts each retry here.
    pub fn retry_hook(
        &self,
    ) -> impl Fn(&Incoming, u32, &HandlerError, Duration) + Send + Sync + use<> {
        let metrics = self.clone();
        move |_, _, _, _| metrics.record_retry()
    }

    /// Sets how far `group` is behind on `topic` (messages not yet delivered or not yet
    /// acknowledged, as the transport counts them); `None` removes the gauge, for a group
    /// that is gone or a transport that cannot tell.
    pub fn set_lag(&self, topic: &str, group: &str, lag: Option<u64>) {
        let mut by_topic = self
            .registry
            .lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match lag {
            Some(lag) => {
                let groups = match by_topic.get_mut(topic) {
                    Some(groups) => groups,
                    None => by_topic.entry(topic.to_owned()).or_default(),
                };
                match groups.get_mut(group) {
                    Some(gauge) => *gauge = lag,
                    None => {
                        groups.insert(group.to_owned(), lag);
                    }
                }
            }
            None => {
                if let Some(groups) = by_topic.get_mut(topic) {
                    groups.remove(group);
                    if groups.is_empty() {
                        by_topic.remove(topic);
                    }
                }
            }
        }
    }

    /// The current values, added up over the stripes.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut snapshot = MetricsSnapshot::default();
        let mut abandoned = 0;
        for shard in &self.registry.shards {
            snapshot.received += shard.received.load(Relaxed);
            snapshot.handled += shard.handled.load(Relaxed);
            snapshot.failed += shard.failed.load(Relaxed);
            snapshot.retried += shard.retried.load(Relaxed);
            snapshot.parked += shard.parked.load(Relaxed);
            abandoned += shard.abandoned.load(Relaxed);
            for (total, count) in snapshot
                .latency
                .buckets
                .iter_mut()
                .zip(&shard.latency_buckets)
            {
                *total += count.load(Relaxed);
            }
            snapshot.latency.sum += Duration::from_nanos(shard.latency_sum_nanos.load(Relaxed));
        }
        // Stripes read one after the other can briefly disagree by a message or two (a
        // result counted before its message was received, say): never below zero.
        snapshot.in_flight = snapshot
            .received
            .saturating_sub(snapshot.handled + snapshot.failed + abandoned);
        snapshot.latency.count = snapshot.latency.buckets.iter().sum();
        let by_topic = self
            .registry
            .lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        snapshot.lag = by_topic
            .iter()
            .flat_map(|(topic, groups)| {
                groups.iter().map(move |(group, lag)| ConsumerLag {
                    topic: topic.clone(),
                    group: group.clone(),
                    lag: *lag,
                })
            })
            .collect();
        snapshot
    }

    /// Records a latency without a message, for tests of the histogram.
    #[cfg(test)]
    pub(crate) fn observe_latency(&self, latency: Duration) {
        self.shard().observe(latency);
    }
}

/// One message in the handler stack, from [`BusMetrics::start`] to
/// [`finish`](Self::finish); dropped unfinished (the message's future was cancelled), it
/// only leaves the in-flight gauge.
#[derive(Debug)]
pub(crate) struct InFlight {
    shard: Arc<Shard>,
    started: Instant,
    finished: bool,
}

impl InFlight {
    /// Counts the result and the latency, and leaves the in-flight gauge.
    pub(crate) fn finish(&mut self, ok: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.shard.observe(self.started.elapsed());
        if ok {
            self.shard.handled.fetch_add(1, Relaxed);
        } else {
            self.shard.failed.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.shard.abandoned.fetch_add(1, Relaxed);
        }
    }
}

/// The values of a [`BusMetrics`] at one moment: plain data, for tests, the console and the
/// HTTP API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Messages that entered the handler stack.
    pub received: u64,
    /// Messages whose handling ended in `Ok`.
    pub handled: u64,
    /// Messages whose handling ended in an error. (Received messages that are neither
    /// handled, failed nor in flight were abandoned mid-way, by shutdown for example.)
    pub failed: u64,
    /// Retries: attempts that failed and were tried again.
    pub retried: u64,
    /// Messages parked as dead letters.
    pub parked: u64,
    /// Messages in the handler stack now.
    pub in_flight: u64,
    /// Handler latency.
    pub latency: LatencySnapshot,
    /// Consumer lag by topic and group, sorted by topic then group.
    pub lag: Vec<ConsumerLag>,
}

/// The handler latency histogram of a [`MetricsSnapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySnapshot {
    /// How many latencies fell in each bucket (not cumulative): bucket `i` holds those
    /// above the previous bound and at most [`LATENCY_BUCKETS_MICROS`]`[i]`; the last, those
    /// above every bound.
    pub buckets: [u64; BUCKETS],
    /// The sum of all latencies.
    pub sum: Duration,
    /// How many latencies were recorded (the sum of the buckets).
    pub count: u64,
}

impl LatencySnapshot {
    /// The bucket counts as Prometheus reports them: each the count at or below its bound.
    pub fn cumulative(&self) -> [u64; BUCKETS] {
        let mut running = 0;
        self.buckets.map(|count| {
            running += count;
            running
        })
    }
}

/// How far a consumer group is behind on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerLag {
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Messages behind, as last sampled.
    pub lag: u64,
}

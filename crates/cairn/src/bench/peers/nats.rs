//! NATS JetStream as a peer: the write workloads as publishes to a fresh stream (file
//! storage, the server's defaults otherwise) with a name and subjects of its own, deleted at
//! the end.
//!
//! How each shape is driven:
//! - one writer, one event per append: publish, await the ack, publish the next;
//! - several writers, one event each: asynchronous publishes sharing a window of
//!   [`WINDOW`] pending acks;
//! - batches: a writer publishes the batch's messages, then awaits all their acks (JetStream
//!   has no atomic multi-message publish, so a batch is not one commit as it is for Cairn
//!   and PostgreSQL).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::super::report::PeerInfo;
use super::super::stats::Samples;
use super::super::store::payload;
use super::super::{AppendSpec, Measured};
use super::postgres::split_addr;

/// The pending acks the multi-writer workload keeps in flight, over all its writers.
pub(crate) const WINDOW: usize = 256;

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A NATS server with a JetStream stream created for this run.
pub(crate) struct Nats {
    client: async_nats::Client,
    stream: String,
    /// Subjects are `<prefix>.<workload>.<writer>`.
    prefix: String,
    endpoint: String,
    version: String,
}

impl Nats {
    /// Connects to `addr` (`host:port`) and creates the run's stream.
    pub(crate) async fn connect(addr: &str) -> anyhow::Result<Self> {
        let (host, port) = split_addr(addr, 4222)?;
        let endpoint = format!("nats://{host}:{port}");
        let unreachable = || format!("cannot reach NATS at {endpoint}");
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            async_nats::ConnectOptions::new()
                .name("cairn-bench")
                .connection_timeout(CONNECT_TIMEOUT)
                .connect(endpoint.as_str()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
        .with_context(unreachable)?
        .with_context(unreachable)?;
        let version = client.server_info().version;
        let pid = std::process::id();
        let stream = format!("CAIRN_BENCH_{pid}");
        let prefix = format!("cairn-bench-{pid}");
        let context = jetstream::new(client.clone());
        // A stream of this name can only be left over from a run that died with this pid.
        let _ = context.delete_stream(&stream).await;
        context
            .create_stream(stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{prefix}.>")],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| {
                format!("cannot create a JetStream stream on {endpoint} (is JetStream enabled?)")
            })?;
        Ok(Self {
            client,
            stream,
            prefix,
            endpoint,
            version,
        })
    }

    /// What this peer is, for the report.
    pub(crate) fn info(&self) -> PeerInfo {
        PeerInfo {
            name: "nats".to_owned(),
            version: self.version.clone(),
            endpoint: format!("{} stream {}", self.endpoint, self.stream),
            setup: format!(
                "JetStream stream with file storage and server defaults; one writer awaits \
                 each ack, several writers publish asynchronously with {WINDOW} pending acks, \
                 a batch is published then its acks awaited"
            ),
        }
    }

    /// Runs a write workload of the given shape.
    pub(crate) async fn append(
        &self,
        workload: &str,
        spec: &AppendSpec,
        counter: &Arc<AtomicU64>,
    ) -> anyhow::Result<Measured> {
        // Enough ack permits in the client that only this workload's own window limits it.
        let permits = WINDOW.max(spec.writers * spec.batch) + spec.writers;
        let context = jetstream::ContextBuilder::new()
            .max_ack_inflight(permits)
            .backpressure_on_inflight(true)
            .build(self.client.clone());
        let payload = payload(spec.size);
        let appends = spec.appends_per_writer();
        let window = Arc::new(Semaphore::new(WINDOW));
        let started = Instant::now();
        let deadline = started + spec.duration;
        let mut writers = JoinSet::new();
        for writer in 0..spec.writers {
            let writer = Writer {
                context: context.clone(),
                subject: format!("{}.{workload}.{writer}", self.prefix),
                payload: payload.clone(),
                appends,
                deadline,
                counter: Arc::clone(counter),
            };
            let window = Arc::clone(&window);
            let batch = spec.batch;
            let windowed = spec.writers > 1 && batch == 1;
            writers.spawn(async move {
                if windowed {
                    writer.windowed(&window).await
                } else {
                    writer.batches(batch).await
                }
            });
        }
        let mut samples = Samples::default();
        while let Some(joined) = writers.join_next().await {
            samples.merge(joined.context("a NATS writer task failed")??);
        }
        Ok(Measured {
            events: samples.len() as u64 * spec.batch as u64,
            seconds: started.elapsed().as_secs_f64(),
            latency: samples.summary(),
        })
    }

    /// Deletes the run's stream and disconnects.
    pub(crate) async fn cleanup(self) -> anyhow::Result<()> {
        let context = jetstream::new(self.client.clone());
        context.delete_stream(&self.stream).await.with_context(|| {
            format!(
                "cannot delete the JetStream stream {} on {}; delete it by hand",
                self.stream, self.endpoint
            )
        })?;
        self.client
            .drain()
            .await
            .context("closing the NATS connection")?;
        Ok(())
    }
}

/// One publishing task.
struct Writer {
    context: jetstream::Context,
    subject: String,
    payload: Bytes,
    appends: u64,
    deadline: Instant,
    counter: Arc<AtomicU64>,
}

impl Writer {
    /// Publishes `batch` messages, then awaits their acks, until done; one latency per
    /// batch (with `batch` 1: publish, await the ack, repeat).
    async fn batches(self, batch: usize) -> anyhow::Result<Samples> {
        let mut samples = Samples::with_capacity(capacity(self.appends));
        for _ in 0..self.appends {
            if Instant::now() >= self.deadline {
                break;
            }
            let started = Instant::now();
            let mut acks = Vec::with_capacity(batch);
            for _ in 0..batch {
                acks.push(
                    self.context
                        .publish(self.subject.clone(), self.payload.clone())
                        .await
                        .context("a JetStream publish failed")?,
                );
            }
            for ack in acks {
                ack.await
                    .context("a JetStream publish was not acknowledged")?;
            }
            samples.record(started.elapsed());
            self.counter.fetch_add(batch as u64, Ordering::Relaxed);
        }
        Ok(samples)
    }

    /// Publishes without waiting, holding one permit of the shared `window` per pending
    /// ack; one latency per message, publish to ack.
    async fn windowed(self, window: &Arc<Semaphore>) -> anyhow::Result<Samples> {
        let mut samples = Samples::with_capacity(capacity(self.appends));
        let mut pending = FuturesUnordered::new();
        let mut sent = 0u64;
        loop {
            let more = sent < self.appends && Instant::now() < self.deadline;
            if !more && pending.is_empty() {
                return Ok(samples);
            }
            tokio::select! {
                biased;
                Some((acked, started)) = pending.next(), if !pending.is_empty() => {
                    let acked: Result<_, _> = acked;
                    acked.context("a JetStream publish was not acknowledged")?;
                    samples.record(Instant::now().duration_since(started));
                    self.counter.fetch_add(1, Ordering::Relaxed);
                }
                permit = Arc::clone(window).acquire_owned(), if more => {
                    let permit = permit.context("the publish window closed")?;
                    let started = Instant::now();
                    let ack = self
                        .context
                        .publish(self.subject.clone(), self.payload.clone())
                        .await
                        .context("a JetStream publish failed")?;
                    pending.push(async move {
                        let acked = ack.await;
                        drop(permit);
                        (acked, started)
                    });
                    sent += 1;
                }
            }
        }
    }
}

/// Room for the samples of `appends` appends, bounded.
fn capacity(appends: u64) -> usize {
    usize::try_from(appends.min(1 << 20)).unwrap_or(1 << 20)
}

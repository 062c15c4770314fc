//! The raw-client baseline for the bus over NATS JetStream: `async-nats` alone, no
//! `cairn-bus`, so that the bus's own figures over `cairn-nats` have the client library's
//! ceiling beside them.
//!
//! One producer publishes batches of [`PUBLISH_BATCH`] messages, sending a whole batch
//! before awaiting its JetStream acks (pipelined confirms); one consumer reads a durable
//! pull consumer (explicit acks, [`IN_FLIGHT`] messages per pull) and acks each message
//! (`+ACK`, not confirmed: what the client does by default). The run uses a stream and
//! subject of its own, deleted at the end. Latencies are publish → consumed, sampled on
//! one message in 64, from the publish time the producer writes in each payload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::Measured;
use super::bus::{payload, published_at};
use super::redact;
use super::stats::Samples;

/// Messages per publish: sent together, then their acks awaited.
const PUBLISH_BATCH: usize = 256;
/// Messages the consumer asks for per pull request.
const IN_FLIGHT: usize = 256;
/// One message in this many has its latency recorded.
const SAMPLE_EVERY: u64 = 64;

/// Publishes and consumes `size`-byte messages through JetStream with the client library
/// directly, for up to `duration` or `count` messages, counting consumed messages in
/// `counter`.
pub(crate) async fn raw(
    url: &str,
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let client = async_nats::ConnectOptions::new()
        .name("cairn-bench-raw")
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("cannot reach NATS at {}", redact(url)))?;
    let context = jetstream::new(client.clone());
    let run = uuid::Uuid::now_v7().simple().to_string();
    let name = format!("cairn-bench-raw-{run}");
    let subject = format!("cairn-bench-raw.{run}");
    let created = context
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("cannot create a JetStream stream (is JetStream enabled?)");
    let measured = match created {
        Ok(stream) => measure(&context, &stream, subject, duration, count, size, counter).await,
        Err(error) => Err(error),
    };
    let deleted = context.delete_stream(&name).await;
    let _ = client.drain().await;
    let measured = measured?;
    deleted.with_context(|| format!("cannot delete the JetStream stream {name}"))?;
    Ok(measured)
}

async fn measure(
    context: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    subject: String,
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10 * IN_FLIGHT as i64,
            ..Default::default()
        })
        .await
        .context("cannot create the JetStream consumer")?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(IN_FLIGHT)
        .messages()
        .await
        .context("cannot pull from the JetStream consumer")?;

    let epoch = Instant::now();
    let stop = CancellationToken::new();
    let samples = Arc::new(Mutex::new(Samples::with_capacity(1 << 16)));
    let start = counter.load(Ordering::Relaxed);
    let producer = {
        let (context, stop) = (context.clone(), stop.clone());
        tokio::spawn(async move {
            let mut published = 0u64;
            while published < count && !stop.is_cancelled() {
                let batch = (count - published).min(PUBLISH_BATCH as u64);
                let payload = payload(epoch, size);
                let mut acks = Vec::with_capacity(PUBLISH_BATCH);
                for _ in 0..batch {
                    acks.push(
                        context
                            .publish(subject.clone(), payload.clone())
                            .await
                            .context("a JetStream publish failed")?,
                    );
                }
                for ack in acks {
                    ack.await
                        .context("a JetStream publish was not acknowledged")?;
                }
                published += batch;
            }
            anyhow::Ok(published)
        })
    };
    let consumer = {
        let (stop, samples, counter) = (stop.clone(), Arc::clone(&samples), Arc::clone(counter));
        tokio::spawn(async move {
            let mut seen = 0u64;
            loop {
                let next = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    next = messages.next() => next,
                };
                let Some(message) = next else { break };
                let message = message.context("pulling from JetStream")?;
                if seen.is_multiple_of(SAMPLE_EVERY)
                    && let Some(at) = published_at(epoch, &message.payload)
                {
                    samples
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(at.elapsed());
                }
                seen += 1;
                counter.fetch_add(1, Ordering::Relaxed);
                message
                    .ack()
                    .await
                    .map_err(|error| anyhow::anyhow!("acknowledging: {error}"))?;
            }
            anyhow::Ok(seen)
        })
    };

    let deadline = Instant::now() + duration;
    let mut producer = Some(producer);
    while counter.load(Ordering::Relaxed) - start < count && Instant::now() < deadline {
        // A producer that finished has published everything (then the consumer is given
        // the time to take it) or failed (then there is nothing more to wait for).
        if let Some(finished) = producer.take_if(|handle| handle.is_finished())
            && let Err(error) = finished.await.context("the producer task failed")?
        {
            stop.cancel();
            let _ = consumer.await;
            return Err(error);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
    let seconds = epoch.elapsed().as_secs_f64();
    if let Some(producer) = producer {
        producer.await.context("the producer task failed")??;
    }
    let events = consumer.await.context("the consumer task failed")??;
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(Measured {
        events,
        seconds,
        latency: samples.summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_an_error_message() {
        assert_eq!(redact("nats://u:secret@h:1"), "nats://u:***@h:1");
        assert_eq!(redact("nats://token@h:1"), "nats://***@h:1");
        assert_eq!(redact("nats://h:1"), "nats://h:1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_baseline_moves_every_message_through_the_shared_server() {
        let url =
            std::env::var("CAIRN_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let counter = Arc::new(AtomicU64::new(0));
        let measured = raw(&url, Duration::from_secs(20), 1_000, 64, &counter)
            .await
            .expect("the raw baseline runs");
        assert_eq!(measured.events, 1_000);
        assert_eq!(counter.load(Ordering::Relaxed), 1_000);
        assert!(measured.latency.samples > 0);
    }
}

//! The raw Redis Streams baseline of the bus workloads: the `redis` client alone, no
//! `cairn-bus`. One producer pipelines `XADD`s (256 per round trip, each batch confirmed
//! by its replies) while one consumer reads with `XREADGROUP` (256 per read) and
//! acknowledges each read with one `XACK`, for up to `duration` or `count` messages.
//!
//! The producer stays at most [`WINDOW`] messages ahead of the consumer, as a broker's
//! flow control would, and caps the stream at about twice that (`MAXLEN ~`), which never
//! drops an unread entry. Latencies are publish → consumed, sampled on one message in 64.
//! The stream has a name of its own (`cairn-bench-<uuid>`) and is deleted afterwards.

// Called by the bench's broker workloads when they are built with the `redis` feature.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use super::Measured;
use super::bus::payload;
use super::stats::Samples;

/// Messages per `XADD` pipeline.
const PUBLISH_BATCH: usize = 256;
/// Entries per `XREADGROUP`.
const READ_BATCH: usize = 256;
/// How far the producer may run ahead of the consumer.
const WINDOW: u64 = 50_000;
/// One message in this many has its latency recorded.
const SAMPLE_EVERY: u64 = 64;
const GROUP: &str = "bench";

/// The raw client's figures: `count` messages of `size` bytes at most, for `duration` at
/// most, counted in `counter` as they are consumed.
pub(crate) async fn raw(
    url: &str,
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let client = redis::Client::open(url).context("the Redis URL")?;
    let mut setup = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let key = format!("cairn-bench-{}", uuid::Uuid::now_v7().simple());
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async::<()>(&mut setup)
        .await
        .context("creating the stream and its group")?;
    let result = run(&client, &key, duration, count, size, counter).await;
    let deleted = redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut setup)
        .await
        .context("deleting the bench stream");
    let measured = result?;
    deleted?;
    Ok(measured)
}

async fn run(
    client: &redis::Client,
    key: &str,
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let producer_connection = client.get_multiplexed_async_connection().await?;
    let consumer_connection = client.get_multiplexed_async_connection().await?;
    let epoch = Instant::now();
    let stop = CancellationToken::new();
    let start = counter.load(Ordering::Relaxed);
    let consumed = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(
        producer_connection,
        key.to_owned(),
        count,
        size,
        epoch,
        Arc::clone(&consumed),
        stop.clone(),
    ));
    let consumer = tokio::spawn(consume(
        consumer_connection,
        key.to_owned(),
        epoch,
        Arc::clone(&consumed),
        Arc::clone(counter),
        stop.clone(),
    ));
    let deadline = Instant::now() + duration;
    while counter.load(Ordering::Relaxed) - start < count && Instant::now() < deadline {
        if producer.is_finished() && consumer.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
    let seconds = epoch.elapsed().as_secs_f64();
    producer.await.context("the producer task failed")??;
    let samples = consumer.await.context("the consumer task failed")??;
    Ok(Measured {
        events: counter.load(Ordering::Relaxed) - start,
        seconds,
        latency: samples.summary(),
    })
}

async fn produce(
    mut connection: MultiplexedConnection,
    key: String,
    count: u64,
    size: usize,
    epoch: Instant,
    consumed: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let cap = (2 * WINDOW).to_string();
    let mut published = 0u64;
    while published < count && !stop.is_cancelled() {
        if published.saturating_sub(consumed.load(Ordering::Relaxed)) >= WINDOW {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let batch = (count - published).min(PUBLISH_BATCH as u64);
        let payload = payload(epoch, size);
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(&cap)
                .arg("*")
                .arg("payload")
                .arg(&payload[..])
                .ignore();
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            done = pipe.query_async::<()>(&mut connection) => done.context("XADD")?,
        }
        published += batch;
    }
    Ok(published)
}

async fn consume(
    mut connection: MultiplexedConnection,
    key: String,
    epoch: Instant,
    consumed: Arc<AtomicU64>,
    counter: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::with_capacity(1 << 16);
    let mut seen = 0u64;
    let mut ids: Vec<Vec<u8>> = Vec::with_capacity(READ_BATCH);
    while !stop.is_cancelled() {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(GROUP)
            .arg("bench-consumer")
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&key)
            .arg(">");
        let read = command.query_async::<Value>(&mut connection);
        let reply = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            reply = read => reply.context("XREADGROUP")?,
        };
        ids.clear();
        for (id, payload) in entries(reply) {
            if seen.is_multiple_of(SAMPLE_EVERY)
                && let Some(nanos) = payload.get(..8).and_then(|b| b.try_into().ok())
            {
                let at = epoch + Duration::from_nanos(u64::from_le_bytes(nanos));
                samples.record(at.elapsed());
            }
            seen += 1;
            ids.push(id);
        }
        if ids.is_empty() {
            continue;
        }
        redis::cmd("XACK")
            .arg(&key)
            .arg(GROUP)
            .arg(&ids)
            .query_async::<()>(&mut connection)
            .await
            .context("XACK")?;
        consumed.fetch_add(ids.len() as u64, Ordering::Relaxed);
        counter.fetch_add(ids.len() as u64, Ordering::Relaxed);
    }
    Ok(samples)
}

/// The `(id, payload)` of each entry of an `XREADGROUP` reply of one stream.
fn entries(reply: Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(READ_BATCH);
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        let Some(Value::Array(list)) = parts.pop() else {
            continue;
        };
        for entry in list {
            let Value::Array(mut entry) = entry else {
                continue;
            };
            let (Some(Value::Array(fields)), Some(Value::BulkString(id))) =
                (entry.pop(), entry.pop())
            else {
                continue;
            };
            let payload = fields
                .into_iter()
                .nth(1)
                .and_then(|value| match value {
                    Value::BulkString(bytes) => Some(bytes),
                    _ => None,
                })
                .unwrap_or_default();
            out.push((id, payload));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_raw_baseline_consumes_what_it_publishes() {
        let counter = Arc::new(AtomicU64::new(0));
        let measured = raw(
            "redis://127.0.0.1:6379",
            Duration::from_secs(10),
            2_000,
            64,
            &counter,
        )
        .await
        .unwrap();
        assert_eq!(measured.events, 2_000);
        assert!(measured.latency.samples > 0);
    }
}

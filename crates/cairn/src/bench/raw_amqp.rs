//! The RabbitMQ baseline of the bus workloads: the `lapin` client alone, without
//! cairn-bus, doing what `cairn-amqp` does underneath, as fast as the client allows.
//!
//! One producer connection publishes persistent `size`-byte messages to a durable fanout
//! exchange in windows of [`WINDOW`] pipelined publishes, each window awaited on its
//! publisher confirms; one consumer connection consumes the durable quorum queue bound to
//! it with a prefetch of [`PREFETCH`] and acknowledges every delivery. Both run until
//! `count` messages were consumed or `duration` passed. The exchange and queue carry a
//! fresh name and are deleted afterwards. Latency is publish → consume, sampled on one
//! message in 64.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;

use super::Measured;
use super::bus::{payload, published_at};
use super::stats::Samples;

/// Publishes in flight before the producer waits for their confirms.
const WINDOW: usize = 256;
/// Unacknowledged deliveries the broker may push to the consumer.
const PREFETCH: u16 = 256;
/// One message in this many has its latency recorded.
const SAMPLE_EVERY: u64 = 64;

async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
    .with_context(|| format!("connecting the {name} to RabbitMQ"))
}

/// `bus-raw` on RabbitMQ: lapin alone, confirmed publishes → consume → ack.
pub(crate) async fn raw(
    url: &str,
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let name = format!("cairn-bench-raw-{}", uuid::Uuid::now_v7().simple());
    let producer_connection = connect(url, "bench producer").await?;
    let consumer_connection = connect(url, "bench consumer").await?;

    // Declared and deleted from the producer's connection: the consumer's may end in a
    // protocol error when its consumer is cancelled as the queue goes (the client library
    // can receive a cancel-ok it no longer waits for), and that must not fail the clean-up.
    let setup = producer_connection.create_channel().await?;
    setup
        .exchange_declare(
            name.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the bench exchange")?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    setup
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .context("declaring the bench queue")?;
    setup
        .queue_bind(
            name.as_str().into(),
            name.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the bench queue")?;

    let result = measure(
        &producer_connection,
        &consumer_connection,
        &name,
        duration,
        count,
        size,
        counter,
    )
    .await;

    let cleanup = async {
        setup
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await?;
        setup
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await
    };
    let cleaned = cleanup
        .await
        .context("deleting the bench queue and exchange");
    let _ = producer_connection.close(200, "done".into()).await;
    let _ = consumer_connection.close(200, "done".into()).await;
    let measured = result?;
    cleaned?;
    Ok(measured)
}

async fn measure(
    producer_connection: &Connection,
    consumer_connection: &Connection,
    name: &str,
    duration: Duration,
    count: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let consuming = consumer_connection.create_channel().await?;
    consuming
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = consuming
        .basic_consume(
            name.into(),
            "cairn-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("consuming the bench queue")?;
    let publishing = producer_connection.create_channel().await?;
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let epoch = Instant::now();
    let stop = CancellationToken::new();
    let start = counter.load(Ordering::Relaxed);
    let samples = Arc::new(Mutex::new(Samples::with_capacity(1 << 16)));

    let producer = {
        let (stop, exchange) = (stop.clone(), name.to_owned());
        tokio::spawn(async move {
            let mut published = 0u64;
            let properties = BasicProperties::default().with_delivery_mode(2);
            while published < count && !stop.is_cancelled() {
                let window = (count - published).min(WINDOW as u64);
                let mut confirms = Vec::with_capacity(window as usize);
                for _ in 0..window {
                    let confirm = publishing
                        .basic_publish(
                            exchange.as_str().into(),
                            "".into(),
                            BasicPublishOptions::default(),
                            &payload(epoch, size),
                            properties.clone(),
                        )
                        .await
                        .context("publishing to RabbitMQ")?;
                    confirms.push(confirm);
                }
                for confirm in confirms {
                    match confirm.await.context("waiting for a publisher confirm")? {
                        Confirmation::Ack(_) => {}
                        other => bail!("RabbitMQ did not confirm a publish: {other:?}"),
                    }
                }
                published += window;
            }
            anyhow::Ok(published)
        })
    };

    let consumer_task = {
        let (stop, counter, samples) = (stop.clone(), Arc::clone(counter), Arc::clone(&samples));
        tokio::spawn(async move {
            let mut seen = 0u64;
            loop {
                let next = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    next = consumer.next() => next,
                };
                let Some(delivery) = next else { break };
                let delivery = delivery.context("the bench consumer")?;
                if seen.is_multiple_of(SAMPLE_EVERY)
                    && let Some(at) = published_at(epoch, &delivery.data)
                {
                    samples
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(at.elapsed());
                }
                seen += 1;
                counter.fetch_add(1, Ordering::Relaxed);
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .context("acknowledging")?;
            }
            anyhow::Ok(seen)
        })
    };

    let deadline = Instant::now() + duration;
    while counter.load(Ordering::Relaxed) - start < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
    let seconds = epoch.elapsed().as_secs_f64();
    producer.await.context("the producer task failed")??;
    let events = consumer_task.await.context("the consumer task failed")??;
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

    #[tokio::test]
    async fn the_baseline_moves_every_message_through_rabbitmq_and_cleans_up() {
        let addr = std::env::var("CAIRN_AMQP_ADDR").unwrap_or_else(|_| "127.0.0.1:5672".into());
        let url = format!("amqp://guest:guest@{addr}/%2f");
        let counter = Arc::new(AtomicU64::new(0));
        let measured = raw(&url, Duration::from_secs(30), 2_000, 64, &counter)
            .await
            .unwrap();
        assert_eq!(measured.events, 2_000);
        assert_eq!(counter.load(Ordering::Relaxed), 2_000);
        assert!(measured.latency.samples > 0);
    }
}

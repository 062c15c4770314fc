//! Order: one consumer sees the messages of each key in the order they were published.

use std::collections::HashMap;

use cairn_bus::Message;
use rand::RngExt;

use crate::failure::{Failure, ensure};
use crate::settings::Settings;
use crate::transport::TransportFactory;
use crate::transport::support::{
    ack, connect, expect_quiet, message, next_delivery, number, publish, show, spec, subscribe,
    topic,
};

/// Two hundred messages over four keys, interleaved and batched at random (seeded), are
/// seen by one consumer in publish order within each key, each once.
pub(crate) async fn per_key_order<F: TransportFactory>(
    factory: &F,
    settings: Settings,
) -> Result<(), Failure> {
    const KEYS: usize = 4;
    const COUNT: usize = 200;
    let mut rng = settings.rng("one_consumer_sees_each_key_in_order");
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", 32);
    let connection = connect(factory, "the consumer and publisher").await?;
    let mut deliveries = subscribe(&connection, &spec, "the only consumer").await?;

    let mut expected: HashMap<String, Vec<usize>> = HashMap::new();
    let mut all: Vec<Message> = Vec::with_capacity(COUNT);
    for n in 0..COUNT {
        let key = format!("key-{}", rng.random_range(0..KEYS));
        expected.entry(key.clone()).or_default().push(n);
        all.push(message(n).with_key(key));
    }
    let mut rest = all.as_slice();
    while !rest.is_empty() {
        let size = rng.random_range(1..=20).min(rest.len());
        let (batch, tail) = rest.split_at(size);
        publish(
            &connection,
            &topic,
            batch.to_vec(),
            "a batch of keyed messages",
        )
        .await?;
        rest = tail;
    }

    let mut seen: HashMap<cairn_core::CompactString, Vec<usize>> = HashMap::new();
    for index in 0..COUNT {
        let delivery = next_delivery(
            &mut deliveries,
            &format!("the only consumer, after {index} of {COUNT} keyed messages"),
        )
        .await?;
        let key = delivery.message.key.clone().unwrap_or_default();
        let n = number(&delivery.message);
        let so_far = seen.entry(key.clone()).or_default();
        let position = so_far.len();
        let wanted = expected
            .get(key.as_str())
            .and_then(|list| list.get(position))
            .copied();
        ensure!(
            n.is_some() && n == wanted && delivery.attempt == 1,
            "key {key:?}: after #{so_far:?} the next message should be #{wanted:?} (publish \
             order), got {}",
            show(&delivery)
        );
        so_far.extend(n);
        ack(delivery, "a keyed message").await?;
    }
    expect_quiet(&mut deliveries, "after every keyed message").await
}

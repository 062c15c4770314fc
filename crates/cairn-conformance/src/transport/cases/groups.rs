//! Groups: each group of a topic gets every message; the consumers of one group share
//! its messages, each message going to one of them.

use std::collections::HashSet;

use cairn_bus::{Deliveries, SubscriptionSpec};
use futures::StreamExt;

use crate::failure::{Failure, ensure, fail, within};
use crate::settings::Settings;
use crate::transport::TransportFactory;
use crate::transport::support::{
    PATIENCE, ack, connect, expect_quiet, messages, next_delivery, number, publish, show, spec,
    subscribe, topic,
};

/// Two groups of one topic each receive all twenty messages, each once.
pub(crate) async fn every_group<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const COUNT: usize = 20;
    let topic = topic(factory);
    let connection = connect(factory, "both groups' consumer").await?;
    let a = spec(
        factory,
        &topic,
        "group-a",
        SubscriptionSpec::DEFAULT_PREFETCH,
    );
    let b = spec(
        factory,
        &topic,
        "group-b",
        SubscriptionSpec::DEFAULT_PREFETCH,
    );
    let mut from_a = subscribe(&connection, &a, "group a").await?;
    let mut from_b = subscribe(&connection, &b, "group b").await?;
    publish(&connection, &topic, messages(0..COUNT), "twenty messages").await?;
    for (name, deliveries) in [("group a", &mut from_a), ("group b", &mut from_b)] {
        receive_all_once(deliveries, COUNT, name).await?;
    }
    for (name, deliveries) in [("group a", &mut from_a), ("group b", &mut from_b)] {
        expect_quiet(deliveries, &format!("{name}, after all {COUNT} messages")).await?;
    }
    Ok(())
}

async fn receive_all_once(
    deliveries: &mut Deliveries,
    count: usize,
    name: &str,
) -> Result<(), Failure> {
    let mut seen = HashSet::new();
    while seen.len() < count {
        let delivery = next_delivery(
            deliveries,
            &format!("{name}, after {} of {count} messages", seen.len()),
        )
        .await?;
        let n = number(&delivery.message);
        ensure!(
            n.is_some_and(|n| n < count) && seen.insert(n),
            "{name} got {}, which is not one of the {count} messages or came twice",
            show(&delivery)
        );
        ack(delivery, name).await?;
    }
    Ok(())
}

/// Two consumers of one group on two connections, prefetch 1: while the first holds its
/// delivery, the second gets a different message; between them they get every message
/// once.
pub(crate) async fn consumers_share<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const COUNT: usize = 20;
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", 1);
    let first = connect(factory, "the first consumer").await?;
    let second = connect(factory, "the second consumer").await?;
    let mut from_first = subscribe(&first, &spec, "the first consumer").await?;
    let mut from_second = subscribe(&second, &spec, "the second consumer").await?;
    publish(&first, &topic, messages(0..COUNT), "twenty messages").await?;

    let held = next_delivery(&mut from_first, "the first consumer").await?;
    let other = next_delivery(
        &mut from_second,
        "the second consumer, while the first holds one delivery (prefetch 1)",
    )
    .await?;
    ensure!(
        held.message.id != other.message.id,
        "both consumers of one group got the same message {}: consumers of a group share \
         its messages, each message going to one of them",
        show(&held)
    );
    let mut seen: HashSet<_> = [number(&held.message), number(&other.message)].into();
    ack(held, "the first consumer").await?;
    ack(other, "the second consumer").await?;

    let mut both = futures::stream::select(
        from_first.by_ref().map(|item| ("the first consumer", item)),
        from_second
            .by_ref()
            .map(|item| ("the second consumer", item)),
    );
    while seen.len() < COUNT {
        let what = format!(
            "the two consumers, after {} of {COUNT} messages",
            seen.len()
        );
        match within(PATIENCE, &what, both.next()).await? {
            Some((who, Ok(delivery))) => {
                ensure!(
                    delivery.attempt == 1 && seen.insert(number(&delivery.message)),
                    "{who} got {}, which one of the consumers had already received and \
                     acknowledged",
                    show(&delivery)
                );
                ack(delivery, who).await?;
            }
            Some((who, Err(error))) => fail!("{what}: {who}'s stream reported {error:?}"),
            None => fail!("{what}: the streams ended"),
        }
    }
    drop(both);
    expect_quiet(&mut from_first, "the first consumer, after all messages").await?;
    expect_quiet(&mut from_second, "the second consumer, after all messages").await
}

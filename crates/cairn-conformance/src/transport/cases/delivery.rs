//! Publishing and receiving: what is published arrives intact, and a publish that
//! returned is the broker's.

use std::collections::HashSet;

use bytes::Bytes;
use cairn_bus::message::headers::{CORRELATION_ID, TRACEPARENT};
use cairn_bus::{Message, Subscriber, SubscriptionSpec};

use crate::failure::{Context, Failure, ensure, fail};
use crate::settings::Settings;
use crate::transport::TransportFactory;
use crate::transport::support::{
    ack, ack_all, connect, expect_quiet, messages, next_deliveries, next_delivery, publish, show,
    spec, subscribe, topic,
};

/// Three messages with every attribute set differently arrive with their id, type,
/// source, key, content type, headers and payload intact, on their topic, as attempt 1,
/// each once.
pub(crate) async fn arrive_intact<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let connection = connect(factory, "the consumer and publisher").await?;
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", SubscriptionSpec::DEFAULT_PREFETCH);
    let mut deliveries = subscribe(&connection, &spec, "the only consumer").await?;
    let sent = vec![
        Message::new(
            "cairn.conformance.full",
            Bytes::from_static(&[0, 159, 146, 150, 255, b'\n', 0]),
        )
        .with_key("order-7")
        .with_source("/conformance/transport")
        .with_content_type("application/octet-stream")
        .with_header(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .with_header(CORRELATION_ID, "c-42")
        .with_header("x-text", "héllo, wörld ✓"),
        Message::new("cairn.conformance.empty", Bytes::new()),
        Message::json("cairn.conformance.json", &[1, 2, 3])
            .context("the case's own JSON message")?
            .with_key("order-8"),
    ];
    publish(&connection, &topic, sent.clone(), "three varied messages").await?;
    let received = next_deliveries(&mut deliveries, sent.len(), "the only consumer").await?;
    let mut seen = HashSet::new();
    for delivery in &received {
        let Some(original) = sent.iter().find(|m| m.id == delivery.message.id) else {
            fail!(
                "received a message that was never published: {:?}",
                delivery.message
            );
        };
        ensure!(
            seen.insert(original.id),
            "message {} was delivered twice before being answered",
            original.id
        );
        ensure!(
            *delivery.message == *original,
            "a message changed on its way:\n  published {original:?}\n  received  {:?}",
            delivery.message
        );
        ensure!(
            &*delivery.topic == topic.as_str(),
            "{} came from topic {:?}, it was published to {topic:?}",
            show(delivery),
            delivery.topic
        );
        ensure!(
            delivery.attempt == 1,
            "the first delivery of {} should be attempt 1",
            show(delivery)
        );
    }
    ack_all(received, "the intact messages").await?;
    expect_quiet(
        &mut deliveries,
        "after every message was delivered and acknowledged",
    )
    .await
}

/// Once `publish` returned, the messages are the broker's: the group counts them in its
/// lag (when the transport tells lag), and they reach a consumer that connects after the
/// publisher's connection closed.
pub(crate) async fn publish_is_confirmed<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const COUNT: usize = 50;
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", SubscriptionSpec::DEFAULT_PREFETCH);
    let declarer = connect(factory, "the connection that creates the group").await?;
    drop(subscribe(&declarer, &spec, "to create the group").await?);

    let publisher = connect(factory, "the publisher").await?;
    let sent = messages(0..COUNT);
    let ids: HashSet<_> = sent.iter().map(|m| m.id).collect();
    publish(&publisher, &topic, sent, "a batch").await?;
    let lag = declarer
        .lag(&spec)
        .await
        .context("asking the group's lag right after the publish returned")?;
    if let Some(lag) = lag {
        ensure!(
            lag >= COUNT as u64,
            "right after publish returned for {COUNT} messages, the group's lag is {lag}: \
             publish must return only once the broker holds the messages"
        );
    }
    drop(publisher);

    let consumer = connect(factory, "a consumer that connects afterwards").await?;
    let mut deliveries = subscribe(&consumer, &spec, "the later consumer").await?;
    let mut received = HashSet::new();
    while received.len() < COUNT {
        let what = format!(
            "the later consumer, after {} of the {COUNT} messages published (and confirmed) \
             before the publisher's connection closed",
            received.len()
        );
        let delivery = next_delivery(&mut deliveries, &what).await?;
        ensure!(
            ids.contains(&delivery.message.id),
            "{what}: received {}, which was never published",
            show(&delivery)
        );
        received.insert(delivery.message.id);
        ack(delivery, "a confirmed message").await?;
    }
    drop(declarer);
    Ok(())
}

//! Helpers the transport cases share: numbered messages, connecting, subscribing and
//! publishing with the step in any error, waiting for deliveries with patience, and
//! checking that nothing arrives.

use std::time::Duration;

use cairn_bus::{Deliveries, Delivery, Message, Publisher, Subscriber, SubscriptionSpec};
use futures::StreamExt;

use super::TransportFactory;
use crate::failure::{Context, Failure, fail};

/// How long a case waits for something the transport owes it (a delivery, a redelivery)
/// before it calls the wait a hang: long enough for a loaded machine and a networked
/// broker, and only spent when the transport fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// How long a case watches for a delivery that must not come. Every such check waits
/// this long even when the transport is right, so it is kept short; a transport that is
/// wrong almost always shows it at once.
pub(crate) const QUIET: Duration = Duration::from_millis(750);

/// The header carrying a message's number within its case.
const NUMBER: &str = "cairn-conformance-n";

/// Message `n` of a case: type `cairn.conformance`, its number in a header and in the
/// payload.
pub(crate) fn message(n: usize) -> Message {
    Message::new("cairn.conformance", format!("{{\"n\":{n}}}")).with_header(NUMBER, n.to_string())
}

/// Messages `range`, numbered.
pub(crate) fn messages(range: std::ops::Range<usize>) -> Vec<Message> {
    range.map(message).collect()
}

/// The number of a message made by [`message`].
pub(crate) fn number(message: &Message) -> Option<usize> {
    message.header(NUMBER)?.parse().ok()
}

/// A delivery, briefly: `#n id (attempt a)`.
pub(crate) fn show(delivery: &Delivery) -> String {
    match number(&delivery.message) {
        Some(n) => format!(
            "#{n} {} (attempt {})",
            delivery.message.id, delivery.attempt
        ),
        None => format!(
            "{} {} (attempt {})",
            delivery.message.message_type, delivery.message.id, delivery.attempt
        ),
    }
}

/// A fresh topic name.
pub(crate) fn topic<F: TransportFactory>(factory: &F) -> String {
    factory.unique_name("topic")
}

/// A subscription spec for `group` (a fresh name for `purpose`) on `topic`.
pub(crate) fn spec<F: TransportFactory>(
    factory: &F,
    topic: &str,
    purpose: &str,
    prefetch: usize,
) -> SubscriptionSpec {
    SubscriptionSpec::new(topic, factory.unique_name(purpose)).prefetch(prefetch)
}

/// A fresh connection.
pub(crate) async fn connect<F: TransportFactory>(
    factory: &F,
    what: &str,
) -> Result<F::Connection, Failure> {
    crate::failure::within(PATIENCE, format!("connecting {what}"), factory.connect())
        .await?
        .context(format!("connecting {what}"))
}

/// Subscribes, naming the step in any failure.
pub(crate) async fn subscribe(
    subscriber: &impl Subscriber,
    spec: &SubscriptionSpec,
    what: &str,
) -> Result<Deliveries, Failure> {
    crate::failure::within(
        PATIENCE,
        format!("subscribing {what}"),
        subscriber.subscribe(spec),
    )
    .await?
    .context(format!(
        "subscribing {what} (topic {:?}, group {:?})",
        spec.topic, spec.group
    ))
}

/// Publishes, naming the step in any failure.
pub(crate) async fn publish(
    publisher: &impl Publisher,
    topic: &str,
    messages: Vec<Message>,
    what: &str,
) -> Result<(), Failure> {
    let count = messages.len();
    crate::failure::within(
        PATIENCE,
        format!("publishing {what}"),
        publisher.publish(topic, messages),
    )
    .await?
    .context(format!("publishing {what} ({count} messages to {topic:?})"))
}

/// The next delivery, failing when none comes within [`PATIENCE`], when the stream ends
/// or reports an error.
pub(crate) async fn next_delivery(
    deliveries: &mut Deliveries,
    what: &str,
) -> Result<Delivery, Failure> {
    match crate::failure::within(PATIENCE, what, deliveries.next()).await? {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(error)) => fail!("{what}: the stream reported {error:?}"),
        None => fail!("{what}: the stream ended"),
    }
}

/// `count` deliveries, in the order they came.
pub(crate) async fn next_deliveries(
    deliveries: &mut Deliveries,
    count: usize,
    what: &str,
) -> Result<Vec<Delivery>, Failure> {
    let mut taken = Vec::with_capacity(count);
    for index in 0..count {
        taken.push(
            next_delivery(
                deliveries,
                &format!("{what} (waiting for delivery {} of {count})", index + 1),
            )
            .await?,
        );
    }
    Ok(taken)
}

/// Checks that no delivery comes within [`QUIET`]. An error item is not a delivery and
/// is let pass; the stream ending is a failure.
pub(crate) async fn expect_quiet(deliveries: &mut Deliveries, what: &str) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + QUIET;
    loop {
        match tokio::time::timeout_at(deadline, deliveries.next()).await {
            Err(_) => return Ok(()),
            Ok(Some(Ok(delivery))) => {
                fail!("{what}: expected no delivery, got {}", show(&delivery))
            }
            Ok(Some(Err(_))) => {}
            Ok(None) => fail!("{what}: expected the stream to keep waiting, but it ended"),
        }
    }
}

/// Acknowledges, naming the step in any failure.
pub(crate) async fn ack(delivery: Delivery, what: &str) -> Result<(), Failure> {
    let shown = show(&delivery);
    crate::failure::within(
        PATIENCE,
        format!("acknowledging {shown}: {what}"),
        delivery.ack(),
    )
    .await?
    .context(format!("acknowledging {shown}: {what}"))
}

/// Acknowledges every delivery.
pub(crate) async fn ack_all(
    deliveries: impl IntoIterator<Item = Delivery>,
    what: &str,
) -> Result<(), Failure> {
    for delivery in deliveries {
        ack(delivery, what).await?;
    }
    Ok(())
}

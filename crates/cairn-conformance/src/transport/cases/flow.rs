//! Flow limits: prefetch bounds what a consumer holds unanswered, and messages over the
//! size limit are refused whole.

use std::collections::HashSet;

use bytes::Bytes;
use cairn_bus::{Message, Publisher, SubscriptionSpec, TransportError};

use crate::failure::{Failure, ensure, fail, within};
use crate::settings::Settings;
use crate::transport::TransportFactory;
use crate::transport::support::{
    PATIENCE, ack, ack_all, connect, expect_quiet, message, messages, next_deliveries,
    next_delivery, number, publish, show, spec, subscribe, topic,
};

/// With prefetch 4 and forty messages waiting, a consumer that does not answer gets four
/// deliveries and then nothing; each answer lets exactly one more through; answering as
/// it goes, it gets all forty once. This is the backpressure a slow consumer exerts
/// whatever the broker stores: what it holds is bounded by its prefetch, not by how far
/// the producer is ahead.
pub(crate) async fn prefetch_bound<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const PREFETCH: usize = 4;
    const COUNT: usize = 40;
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", PREFETCH);
    let connection = connect(factory, "the slow consumer").await?;
    let mut deliveries = subscribe(&connection, &spec, "the slow consumer").await?;
    publish(&connection, &topic, messages(0..COUNT), "forty messages").await?;

    let mut held = next_deliveries(&mut deliveries, PREFETCH, "the slow consumer").await?;
    expect_quiet(
        &mut deliveries,
        &format!("a consumer holding {PREFETCH} unanswered deliveries with prefetch {PREFETCH}"),
    )
    .await?;
    let mut seen: HashSet<_> = held.iter().map(|d| number(&d.message)).collect();
    ensure!(
        seen.len() == PREFETCH,
        "the first {PREFETCH} deliveries repeat a message: {:?}",
        held.iter().map(show).collect::<Vec<_>>()
    );
    ack(held.remove(0), "one held delivery").await?;
    let one_more = next_delivery(&mut deliveries, "after answering one held delivery").await?;
    ensure!(
        seen.insert(number(&one_more.message)),
        "after one answer the consumer got {} again",
        show(&one_more)
    );
    held.push(one_more);
    expect_quiet(
        &mut deliveries,
        &format!("a consumer holding {PREFETCH} unanswered deliveries again"),
    )
    .await?;

    ack_all(held, "the held deliveries").await?;
    while seen.len() < COUNT {
        let delivery = next_delivery(
            &mut deliveries,
            &format!("the consumer, after {} of {COUNT} messages", seen.len()),
        )
        .await?;
        ensure!(
            seen.insert(number(&delivery.message)),
            "the consumer got {} twice",
            show(&delivery)
        );
        ack(delivery, "the consumer").await?;
    }
    expect_quiet(&mut deliveries, "after all forty messages").await
}

/// A message one byte over [`Publisher::max_message_size`] (by
/// [`Message::encoded_len`]) is refused with `PayloadTooLarge` naming it, its size and
/// the limit, and nothing of its batch is delivered; a message of exactly the limit is
/// published and delivered intact.
pub(crate) async fn oversized_refused<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const TYPE: &str = "cairn.conformance.large";
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", SubscriptionSpec::DEFAULT_PREFETCH);
    let connection = connect(factory, "the consumer and publisher").await?;
    let max = connection.max_message_size();
    let base = Message::new(TYPE, Bytes::new()).encoded_len();
    ensure!(
        max >= base,
        "max_message_size() is {max}, less than an empty message's {base} bytes"
    );
    let over = Message::new(TYPE, vec![7u8; max + 1 - base]);
    let exact = Message::new(TYPE, vec![9u8; max - base]);
    let mut deliveries = subscribe(&connection, &spec, "the consumer").await?;

    let small = message(0);
    let refused = within(
        PATIENCE,
        "publishing an oversized message",
        connection.publish(&topic, vec![small.clone(), over.clone()]),
    )
    .await?;
    match refused {
        Err(TransportError::PayloadTooLarge {
            id,
            size,
            max: limit,
        }) if id == over.id && size == max + 1 && limit == max => {}
        other => fail!(
            "publishing a message of {} bytes with max_message_size() = {max}: expected \
             PayloadTooLarge {{ id: {}, size: {}, max: {max} }}, got {other:?}",
            max + 1,
            over.id,
            max + 1
        ),
    }
    publish(
        &connection,
        &topic,
        vec![exact.clone()],
        "a message of exactly the limit",
    )
    .await?;
    publish(&connection, &topic, vec![message(1)], "a marker").await?;
    let first = next_delivery(&mut deliveries, "the consumer").await?;
    if first.message.id != exact.id {
        fail!(
            "after a refused batch and a message of exactly the limit, the first delivery \
             should be that message, got {}{}",
            show(&first),
            if first.message.id == small.id || first.message.id == over.id {
                " from the refused batch, which must not be published at all"
            } else {
                ""
            }
        );
    }
    ensure!(
        *first.message == exact,
        "the message of exactly the limit arrived changed ({} payload bytes, {} sent)",
        first.message.payload.len(),
        exact.payload.len()
    );
    ack(first, "the message of exactly the limit").await?;
    let marker = next_delivery(&mut deliveries, "the consumer").await?;
    ensure!(
        number(&marker.message) == Some(1),
        "expected the marker #1, got {}",
        show(&marker)
    );
    ack(marker, "the marker").await?;
    expect_quiet(&mut deliveries, "after the marker").await
}

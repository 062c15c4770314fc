//! The transport suite against the RabbitMQ on this machine (connections through a proxy
//! that `disrupt()` severs), and the transport's own cases: errors, answers, lag and
//! dead letters.

mod support;

use std::time::Duration;

use bytes::Bytes;
use cairn_amqp::{AmqpOptions, AmqpTransport};
use cairn_bus::{Message, Publisher, Subscriber, SubscriptionSpec, TransportError};
use futures::StreamExt;
use support::{Cleanup, broker_addr, options, unique, url};

cairn_conformance::transport_suite!(support::Rabbit::new());

const PATIENCE: Duration = Duration::from_secs(10);

async fn transport() -> AmqpTransport {
    AmqpTransport::connect_with(&url(broker_addr()), options())
        .await
        .expect("connecting to RabbitMQ")
}

/// A fresh topic and group, deleted when the returned guard drops.
fn names() -> (Cleanup, SubscriptionSpec) {
    let cleanup = Cleanup::default();
    let topic = cleanup.topic(unique("topic"));
    let group = cleanup.group(unique("group"));
    (cleanup, SubscriptionSpec::new(topic, group))
}

async fn next(deliveries: &mut cairn_bus::Deliveries) -> cairn_bus::Delivery {
    tokio::time::timeout(PATIENCE, deliveries.next())
        .await
        .expect("a delivery in time")
        .expect("the stream goes on")
        .expect("a delivery, not an error")
}

#[tokio::test]
async fn an_unreachable_broker_is_unreachable_naming_the_endpoint_without_the_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let error = AmqpTransport::connect(&format!("amqp://guest:s3cret-pw@{addr}/%2f"))
        .await
        .unwrap_err();
    let TransportError::Unreachable { endpoint, .. } = &error else {
        panic!("expected Unreachable, got {error:?}");
    };
    assert!(endpoint.contains(&addr.to_string()), "{endpoint}");
    assert!(endpoint.contains("guest"), "{endpoint}");
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains("s3cret-pw"), "the password leaked: {text}");
    }
    assert_eq!(error.code(), "unreachable");
}

#[tokio::test]
async fn wrong_credentials_are_refused_without_the_password() {
    let error = AmqpTransport::connect(&format!(
        "amqp://guest:not-the-password-7f3a@{}/%2f",
        broker_addr()
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(error, TransportError::Refused { .. }),
        "expected Refused, got {error:?}"
    );
    assert!(!format!("{error:?}").contains("not-the-password-7f3a"));
}

#[tokio::test]
async fn a_url_that_is_not_amqp_is_invalid() {
    let error = AmqpTransport::connect("http://127.0.0.1:5672")
        .await
        .unwrap_err();
    assert!(
        matches!(error, TransportError::Invalid { what: "url", .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn debug_output_shows_the_endpoint_without_the_password() {
    let transport = transport().await;
    let shown = format!("{transport:?}");
    assert!(shown.contains("guest@"), "{shown}");
    assert!(!shown.contains("guest:guest"), "{shown}");
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_anything_is_sent() {
    let transport =
        AmqpTransport::connect_with(&url(broker_addr()), options().max_message_size(1_024))
            .await
            .unwrap();
    let (_cleanup, spec) = names();
    let message = Message::new("big", vec![0u8; 2_000]);
    let id = message.id;
    match transport.publish(&spec.topic, vec![message]).await {
        Err(TransportError::PayloadTooLarge {
            id: refused,
            size,
            max: 1_024,
        }) => {
            assert_eq!(refused, id);
            assert!(size > 2_000);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn topics_and_groups_with_dots_or_spaces_are_invalid() {
    let transport = transport().await;
    let publish = transport
        .publish("a.b", vec![Message::new("t", "{}")])
        .await;
    assert!(matches!(
        publish,
        Err(TransportError::Invalid { what: "topic", .. })
    ));
    let subscribe = transport
        .subscribe(&SubscriptionSpec::new("a", "b c"))
        .await;
    assert!(matches!(
        subscribe,
        Err(TransportError::Invalid { what: "group", .. })
    ));
}

#[tokio::test]
async fn a_delivery_dropped_unanswered_comes_back_as_the_next_attempt() {
    let transport = transport().await;
    let (_cleanup, spec) = names();
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let message = Message::new("t", "{}");
    transport
        .publish(&spec.topic, vec![message.clone()])
        .await
        .unwrap();
    let first = next(&mut deliveries).await;
    assert_eq!((first.message.id, first.attempt), (message.id, 1));
    drop(first);
    let again = next(&mut deliveries).await;
    assert_eq!((again.message.id, again.attempt), (message.id, 2));
    again.ack().await.unwrap();
}

#[tokio::test]
async fn deliveries_stay_answerable_after_their_stream_is_dropped() {
    let transport = transport().await;
    let (_cleanup, spec) = names();
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    transport
        .publish(&spec.topic, vec![Message::new("t", "{}")])
        .await
        .unwrap();
    let held = next(&mut deliveries).await;
    drop(deliveries);
    held.ack()
        .await
        .expect("the held delivery is still answerable");
    assert_eq!(transport.lag(&spec).await.unwrap(), Some(0));
}

#[tokio::test]
async fn lag_counts_ready_messages_and_unanswered_deliveries() {
    let transport = transport().await;
    let (_cleanup, spec) = names();
    let spec = spec.prefetch(2);
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let messages: Vec<_> = (0..5).map(|n| Message::new("t", format!("{n}"))).collect();
    transport.publish(&spec.topic, messages).await.unwrap();
    let first = next(&mut deliveries).await;
    let second = next(&mut deliveries).await;
    // Three ready, two handed out unanswered (and none buffered: prefetch 2).
    assert_eq!(transport.lag(&spec).await.unwrap(), Some(5));
    first.ack().await.unwrap();
    second.ack().await.unwrap();
    // Once the subscription ended, what the client had buffered is ready again.
    drop(deliveries);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let lag = transport.lag(&spec).await.unwrap();
        if lag == Some(3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lag stays at {lag:?}, not 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_lag_of_a_group_never_subscribed_is_zero() {
    let transport = transport().await;
    let spec = SubscriptionSpec::new(unique("topic"), unique("group"));
    assert_eq!(transport.lag(&spec).await.unwrap(), Some(0));
}

#[tokio::test]
async fn a_message_that_is_not_cairns_goes_to_the_dead_letter_queue() {
    let transport = transport().await;
    let (_cleanup, spec) = names();
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let queue = transport.queue_name(&spec.topic, &spec.group).unwrap();
    let dead = transport
        .dead_letter_queue(&spec.topic, &spec.group)
        .unwrap();

    // A foreign publisher: no message id.
    let connection =
        lapin::Connection::connect(&url(broker_addr()), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            b"not cairn's",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap();
    transport
        .publish(&spec.topic, vec![Message::new("t", "{}")])
        .await
        .unwrap();
    let delivery = next(&mut deliveries).await;
    assert_eq!(delivery.message.message_type, "t");
    delivery.ack().await.unwrap();

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let depth = channel
            .queue_declare(
                dead.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count();
        if depth == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead-letter queue holds {depth}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_closed_transport_ends_its_streams_and_refuses_to_publish() {
    let transport = transport().await;
    let (_cleanup, spec) = names();
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    transport.close().await;
    let end = tokio::time::timeout(PATIENCE, deliveries.next())
        .await
        .unwrap();
    assert!(end.is_none(), "the stream should end, got {end:?}");
    let publish = transport
        .publish(&spec.topic, vec![Message::new("t", Bytes::new())])
        .await;
    assert!(
        matches!(publish, Err(TransportError::Closed)),
        "{publish:?}"
    );
}

#[tokio::test]
async fn options_reach_the_transport() {
    let transport = AmqpTransport::connect_with(
        &url(broker_addr()),
        AmqpOptions::default().namespace("cairn-test"),
    )
    .await
    .unwrap();
    assert_eq!(transport.options().namespace, "cairn-test");
    assert_eq!(transport.queue_name("t", "g").unwrap(), "cairn-test.t.g");
}

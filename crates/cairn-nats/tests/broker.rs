//! What the conformance suite does not cover: the errors a real server gives (nobody
//! listening, wrong credentials, a message too large, a bad name), credentials kept out of
//! every message, lag read from the consumer's own figures, and answers that share one
//! confirmation.

mod support;

use std::time::Duration;

use bytes::Bytes;
use cairn_bus::{Message, Publisher, Subscriber, SubscriptionSpec, TransportError};
use cairn_nats::{NatsOptions, NatsTransport};
use futures::StreamExt;

use support::{Cleanup, PrivateServer, fresh_namespace, shared_addr, test_options};

async fn shared_transport() -> (NatsTransport, Cleanup) {
    let namespace = fresh_namespace();
    let transport = NatsTransport::connect_with(
        &format!("nats://{}", shared_addr()),
        test_options(&namespace),
    )
    .await
    .expect("the shared server is reachable");
    (
        transport,
        Cleanup {
            addr: shared_addr(),
            namespace,
        },
    )
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("nats://alice:hunter2@127.0.0.1:{port}");
    let options = NatsOptions::default().connect_timeout(Duration::from_secs(2));
    let error = NatsTransport::connect_with(&url, options)
        .await
        .expect_err("nobody listens on the port");
    match &error {
        TransportError::Unreachable { endpoint, .. } => {
            assert_eq!(endpoint, &format!("nats://alice:***@127.0.0.1:{port}"));
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(error.code(), "unreachable");
    assert!(error.is_transient());
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains("hunter2"), "the password leaked: {shown}");
    }
}

#[tokio::test]
async fn wrong_credentials_are_refused_and_right_ones_accepted() {
    let server = PrivateServer::start(Some(("cairn", "right-pass"))).await;
    let options = || NatsOptions::default().connect_timeout(Duration::from_secs(3));
    let wrong = format!("nats://cairn:wrong-pass@{}", server.addr());
    let error = NatsTransport::connect_with(&wrong, options())
        .await
        .expect_err("a wrong password");
    assert!(
        matches!(error, TransportError::Refused { .. }),
        "expected Refused, got {error:?}"
    );
    assert!(!format!("{error} {error:?}").contains("wrong-pass"));

    let anonymous = NatsTransport::connect_with(&format!("nats://{}", server.addr()), options())
        .await
        .expect_err("no credentials at all");
    assert!(
        matches!(anonymous, TransportError::Refused { .. }),
        "{anonymous:?}"
    );

    let right = format!("nats://cairn:right-pass@{}", server.addr());
    let transport = NatsTransport::connect_with(&right, options())
        .await
        .expect("the right password is accepted");
    assert!(!format!("{transport:?}").contains("right-pass"));
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_before_anything_is_sent() {
    let (transport, _cleanup) = shared_transport().await;
    let max = transport.max_message_size();
    assert!(
        max > 1_000,
        "the limit follows the server's max_payload: {max}"
    );
    let base = Message::new("t", Bytes::new()).encoded_len();
    let over = Message::new("t", vec![0u8; max + 1 - base]);
    let error = transport
        .publish("sizes", vec![Message::new("t", Bytes::new()), over.clone()])
        .await
        .expect_err("one byte over the limit");
    match error {
        TransportError::PayloadTooLarge {
            id,
            size,
            max: limit,
        } => {
            assert_eq!((id, size, limit), (over.id, max + 1, max));
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }

    // Within the limit by its own bytes, but its headers' framing takes it past what the
    // server accepts on the wire.
    let mut crowded = Message::new("t", vec![0u8; max - base - 30_000]);
    for n in 0..4_000 {
        crowded = crowded.with_header(format!("h{n}"), "v");
    }
    assert!(crowded.encoded_len() <= max);
    let error = transport
        .publish("sizes", vec![crowded])
        .await
        .expect_err("too large on the wire");
    assert!(
        matches!(error, TransportError::PayloadTooLarge { size, max: limit, .. } if size > limit),
        "{error:?}"
    );
}

#[tokio::test]
async fn names_that_are_not_letters_digits_and_dashes_are_invalid() {
    let (transport, _cleanup) = shared_transport().await;
    let error = transport
        .publish("orders.eu", vec![Message::new("t", Bytes::new())])
        .await
        .expect_err("a dot in a topic");
    assert!(
        matches!(error, TransportError::Invalid { what: "topic", .. }),
        "{error:?}"
    );
    let error = transport
        .subscribe(&SubscriptionSpec::new("orders", "a group"))
        .await
        .expect_err("a space in a group");
    assert!(
        matches!(error, TransportError::Invalid { what: "group", .. }),
        "{error:?}"
    );
    let error = NatsTransport::connect_with(
        &format!("nats://{}", shared_addr()),
        NatsOptions::default().namespace("a.b"),
    )
    .await
    .expect_err("a dot in the namespace");
    assert!(
        matches!(
            error,
            TransportError::Invalid {
                what: "namespace",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn lag_is_the_consumers_pending_and_unacknowledged_messages() {
    let (transport, _cleanup) = shared_transport().await;
    let spec = SubscriptionSpec::new("lagging", "slow").prefetch(2);
    assert_eq!(transport.lag(&spec).await.unwrap(), Some(0), "no group yet");
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let messages: Vec<_> = (0..5).map(|n| Message::new("t", format!("{n}"))).collect();
    transport.publish("lagging", messages).await.unwrap();
    assert_eq!(transport.lag(&spec).await.unwrap(), Some(5));

    let first = deliveries.next().await.unwrap().unwrap();
    let second = deliveries.next().await.unwrap().unwrap();
    assert_eq!(
        transport.lag(&spec).await.unwrap(),
        Some(5),
        "delivered but unacknowledged messages still count"
    );
    first.ack().await.unwrap();
    second.ack().await.unwrap();
    assert_eq!(transport.lag(&spec).await.unwrap(), Some(3));
}

#[tokio::test]
async fn answers_given_together_are_each_confirmed_once_recorded() {
    let (transport, _cleanup) = shared_transport().await;
    let spec = SubscriptionSpec::new("together", "readers").prefetch(64);
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let messages: Vec<_> = (0..64).map(|n| Message::new("t", format!("{n}"))).collect();
    transport.publish("together", messages).await.unwrap();
    let mut held = Vec::new();
    while held.len() < 64 {
        held.push(deliveries.next().await.unwrap().unwrap());
    }
    // Acked at once, the answers share confirmations; each `Ok` must still mean the
    // server recorded that answer.
    let answers = futures::future::join_all(held.into_iter().map(|d| d.ack())).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(
        transport.lag(&spec).await.unwrap(),
        Some(0),
        "every confirmed ack is recorded"
    );
}

#[tokio::test]
async fn a_republished_id_is_stored_once() {
    let (transport, _cleanup) = shared_transport().await;
    let spec = SubscriptionSpec::new("dedup", "readers");
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let message = Message::new("t", "once");
    transport
        .publish("dedup", vec![message.clone()])
        .await
        .unwrap();
    transport
        .publish("dedup", vec![message.clone()])
        .await
        .unwrap();
    assert_eq!(transport.lag(&spec).await.unwrap(), Some(1));
    let delivery = deliveries.next().await.unwrap().unwrap();
    assert_eq!(delivery.message.id, message.id);
    delivery.ack().await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await;
    assert!(quiet.is_err(), "the second publish was stored: {quiet:?}");
}

#[tokio::test]
async fn closing_the_transport_ends_its_streams() {
    let (transport, _cleanup) = shared_transport().await;
    let mut deliveries = transport
        .subscribe(&SubscriptionSpec::new("closing", "readers"))
        .await
        .unwrap();
    transport.clone().close().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), deliveries.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "{end:?}");
    let error = transport
        .subscribe(&SubscriptionSpec::new("closing", "readers"))
        .await
        .expect_err("a closed transport");
    assert!(matches!(error, TransportError::Closed), "{error:?}");
}

//! What the transport suite does not cover: connection errors, lag, a slow handler
//! keeping its delivery, and trimming. Against the shared server (under a prefix of the
//! test's own, deleted afterwards) or a private one.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use bytes::Bytes;
use cairn_bus::{Message, Publisher, Subscriber, SubscriptionSpec, TransportError};
use cairn_redis::RedisTransport;
use common::{Cleanup, PrivateServer, SHARED, test_options, unique_prefix};
use futures::StreamExt;

const PATIENCE: Duration = Duration::from_secs(10);

/// A transport on the shared server under a fresh prefix, with the guard that deletes its
/// keys.
async fn shared(
    tune: impl FnOnce(cairn_redis::RedisOptions) -> cairn_redis::RedisOptions,
) -> (RedisTransport, Cleanup) {
    let prefix = unique_prefix();
    let cleanup = Cleanup {
        server: SHARED,
        prefix: prefix.clone(),
    };
    let transport =
        RedisTransport::connect_with(&format!("redis://{SHARED}"), tune(test_options(&prefix)))
            .await
            .expect("the shared Redis");
    (transport, cleanup)
}

#[tokio::test]
async fn an_unreachable_server_is_unreachable_naming_the_endpoint_without_the_password() {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://alice:hunter2@127.0.0.1:{port}/0");
    let error = RedisTransport::connect(&url).await.unwrap_err();
    match &error {
        TransportError::Unreachable { endpoint, .. } => {
            assert_eq!(endpoint, &format!("redis://alice:***@127.0.0.1:{port}/0"));
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
    assert_eq!(error.code(), "unreachable");
}

#[tokio::test]
async fn wrong_credentials_are_refused_and_the_right_ones_accepted() {
    let server = PrivateServer::start(&["--requirepass", "right-password"]).unwrap();
    let wrong = format!("redis://:wrong-password@{}", server.addr());
    let error = RedisTransport::connect(&wrong).await.unwrap_err();
    assert!(
        matches!(error, TransportError::Refused { .. }),
        "expected Refused, got {error:?}"
    );
    assert!(!format!("{error} {error:?}").contains("wrong-password"));

    let missing = format!("redis://{}", server.addr());
    let error = RedisTransport::connect(&missing).await.unwrap_err();
    assert!(
        matches!(error, TransportError::Refused { .. }),
        "no password: expected Refused, got {error:?}"
    );

    let right = format!("redis://:right-password@{}", server.addr());
    let transport = RedisTransport::connect(&right).await.unwrap();
    assert!(!format!("{transport:?}").contains("right-password"));
}

#[tokio::test]
async fn an_oversized_message_is_payload_too_large_and_bad_names_are_invalid() {
    let (transport, _cleanup) = shared(|options| options.max_message_size(100)).await;
    let big = Message::new("t", Bytes::from(vec![0u8; 200]));
    match transport.publish("orders", vec![big.clone()]).await {
        Err(TransportError::PayloadTooLarge { id, size, max }) => {
            assert_eq!((id, size, max), (big.id, big.encoded_len(), 100));
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    let bad = transport
        .publish("a:b", vec![Message::new("t", Bytes::new())])
        .await;
    assert!(matches!(
        bad,
        Err(TransportError::Invalid { what: "topic", .. })
    ));
    let bad = transport
        .subscribe(&SubscriptionSpec::new("orders", ""))
        .await;
    assert!(matches!(
        bad,
        Err(TransportError::Invalid { what: "group", .. })
    ));
}

#[tokio::test]
async fn lag_counts_what_the_group_has_not_acknowledged() {
    let (transport, _cleanup) = shared(|options| options).await;
    let spec = SubscriptionSpec::new("orders", "billing").prefetch(2);
    assert_eq!(transport.lag(&spec).await.unwrap(), Some(0));
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let messages: Vec<Message> = (0..5).map(|n| Message::new("t", format!("{n}"))).collect();
    transport.publish("orders", messages).await.unwrap();
    assert_eq!(transport.lag(&spec).await.unwrap(), Some(5));
    for _ in 0..2 {
        let delivery = tokio::time::timeout(PATIENCE, deliveries.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        delivery.ack().await.unwrap();
    }
    assert_eq!(transport.lag(&spec).await.unwrap(), Some(3));
}

#[tokio::test]
async fn a_held_delivery_is_not_reclaimed_while_its_subscription_lives() {
    let claim_idle = Duration::from_millis(300);
    let (transport, _cleanup) = shared(|options| options.claim_idle(claim_idle)).await;
    let spec = SubscriptionSpec::new("orders", "billing").prefetch(1);
    let mut slow = transport.subscribe(&spec).await.unwrap();
    transport
        .publish("orders", vec![Message::new("t", Bytes::new())])
        .await
        .unwrap();
    let held = tokio::time::timeout(PATIENCE, slow.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut other = transport.subscribe(&spec).await.unwrap();
    // Several claim_idle periods: the slow consumer refreshes what it holds.
    let stolen = tokio::time::timeout(claim_idle * 5, other.next()).await;
    assert!(
        stolen.is_err(),
        "another consumer took a delivery its live consumer still held: {stolen:?}"
    );
    // Once the slow consumer is gone, the other takes it over, as the next attempt.
    drop(slow);
    let again = tokio::time::timeout(PATIENCE, other.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(again.message.id, held.message.id);
    assert_eq!(again.attempt, 2);
    again.ack().await.unwrap();
}

#[tokio::test]
async fn tidying_trims_what_every_group_acknowledged_and_nothing_else() {
    let (transport, _cleanup) =
        shared(|options| options.tidy_interval(Duration::from_secs(1))).await;
    let fast = SubscriptionSpec::new("orders", "fast");
    let slow = SubscriptionSpec::new("orders", "slow");
    let mut deliveries = transport.subscribe(&fast).await.unwrap();
    let idle = transport.subscribe(&slow).await.unwrap();
    let messages: Vec<Message> = (0..10).map(|n| Message::new("t", format!("{n}"))).collect();
    transport.publish("orders", messages.clone()).await.unwrap();
    for _ in 0..10 {
        let delivery = tokio::time::timeout(PATIENCE, deliveries.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        delivery.ack().await.unwrap();
    }
    let client = redis::Client::open(format!("redis://{SHARED}")).unwrap();
    let connection = client.get_multiplexed_async_connection().await.unwrap();
    let key = transport.stream_key("orders");
    let length = || {
        let mut connection = connection.clone();
        let key = key.clone();
        async move {
            redis::cmd("XLEN")
                .arg(&key)
                .query_async::<u64>(&mut connection)
                .await
                .unwrap()
        }
    };
    // The slow group has read nothing: nothing may go.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(length().await, 10);
    // Once the slow group has acknowledged everything too, the stream shrinks.
    drop(idle);
    let mut slow_deliveries = transport.subscribe(&slow).await.unwrap();
    for _ in 0..10 {
        let delivery = tokio::time::timeout(PATIENCE, slow_deliveries.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        delivery.ack().await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while length().await > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream was never trimmed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! What the transport suite does not cover: connection errors, lag, a slow handler
//! keeping its delivery, trimming, entries of the earlier layout and entries that cannot
//! be read. Against the shared server (under a prefix of the
//! test's own, deleted afterwards) or a private one.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use bytes::Bytes;
use cairn_bus::{
    Deliveries, Delivery, Message, Publisher, Subscriber, SubscriptionSpec, TransportError,
};
use cairn_redis::{MetaError, RedisTransport, UndecodableEntry};
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

/// A private server (so that taking a permission away touches nobody else) with a user
/// `worker` allowed everything, and the admin connection that changes its permissions.
struct Permissions {
    server: PrivateServer,
    admin: redis::aio::MultiplexedConnection,
}

impl Permissions {
    async fn start() -> Self {
        let server = PrivateServer::start(&[]).unwrap();
        let admin = redis::Client::open(format!("redis://{}", server.addr()))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut permissions = Self { server, admin };
        for rule in ["on", ">secret", "~*", "&*", "+@all"] {
            permissions.set(rule).await;
        }
        permissions
    }

    /// The URL that connects as `worker`.
    fn url(&self) -> String {
        format!("redis://worker:secret@{}", self.server.addr())
    }

    /// Asserts that group `billing` of topic `orders` has nothing pending.
    async fn assert_settled(&mut self, transport: &RedisTransport) {
        let key = transport.stream_key("orders");
        assert!(pending(&mut self.admin, &key, "billing").await.is_empty());
    }

    /// Applies one ACL rule to `worker` (`-xack`, `+xack`, ...).
    async fn set(&mut self, rule: &str) {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("worker")
            .arg(rule)
            .query_async::<()>(&mut self.admin)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_failed_ack_comes_back_as_the_next_attempt_within_the_prefetch() {
    let mut permissions = Permissions::start().await;
    let transport =
        RedisTransport::connect_with(&permissions.url(), test_options(&unique_prefix()))
            .await
            .unwrap();
    let spec = SubscriptionSpec::new("orders", "billing").prefetch(2);
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let sent: Vec<Message> = (0..3).map(|n| Message::new("t", format!("{n}"))).collect();
    transport.publish("orders", sent.clone()).await.unwrap();
    let first = next(&mut deliveries).await.unwrap();
    let second = next(&mut deliveries).await.unwrap();
    assert_quiet(
        &mut deliveries,
        "a third delivery while two of a prefetch of two are held",
    )
    .await;

    // The ack fails: its message comes back as the next attempt, and the prefetch still
    // bounds what is handed out meanwhile.
    permissions.set("-xack").await;
    let failed = first.message.id;
    assert!(first.ack().await.is_err(), "an XACK without permission");
    permissions.set("+xack").await;
    let mut seen = vec![(second.message.id, second.attempt)];
    let third = next(&mut deliveries).await.unwrap();
    seen.push((third.message.id, third.attempt));
    // `second` and `third` hold both slots: nothing more until one is answered.
    assert_quiet(
        &mut deliveries,
        "a delivery beyond the prefetch after a failed ack",
    )
    .await;
    second.ack().await.unwrap();
    let fourth = next(&mut deliveries).await.unwrap();
    seen.push((fourth.message.id, fourth.attempt));
    third.ack().await.unwrap();
    fourth.ack().await.unwrap();

    seen.sort();
    let mut expected = vec![(sent[1].id, 1), (sent[2].id, 1), (failed, 2)];
    expected.sort();
    assert_eq!(
        seen, expected,
        "every message once more after the failed ack"
    );
    assert_quiet(&mut deliveries, "nothing is left once all are acknowledged").await;
    permissions.assert_settled(&transport).await;
}

#[tokio::test]
async fn a_delayed_nack_stays_the_subscriptions_own_when_its_touches_fail() {
    // The keeper's touches (which claim with XCLAIM) fail while the reader's reclaims
    // work: the delayed entry grows idle past `claim_idle`, and the reclaim finds it. It
    // must still be handed out once, when its delay is up, as the second delivery (the
    // reclaim claimed nothing of its own), and take one slot.
    let mut permissions = Permissions::start().await;
    let options = test_options(&unique_prefix()).claim_idle(Duration::from_millis(150));
    let transport = RedisTransport::connect_with(&permissions.url(), options)
        .await
        .unwrap();
    let spec = SubscriptionSpec::new("orders", "billing").prefetch(2);
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let delayed = Message::new("t", "delayed");
    transport
        .publish("orders", vec![delayed.clone()])
        .await
        .unwrap();
    let first = next(&mut deliveries).await.unwrap();
    assert_eq!(first.message.id, delayed.id);
    let delay = Duration::from_secs(3);
    let nacked = tokio::time::Instant::now();
    permissions.set("-xclaim").await;
    first.nack(Some(delay)).await.unwrap();
    // Several reclaims run while the touches fail; the redelivery's own claim needs
    // XCLAIM again before the delay is up.
    tokio::time::sleep(Duration::from_millis(900)).await;
    permissions.set("+xclaim").await;
    let again = next(&mut deliveries).await.unwrap();
    assert_eq!(again.message.id, delayed.id);
    assert_eq!(again.attempt, 2);
    assert!(
        nacked.elapsed() >= delay,
        "handed out again {:?} after a nack delayed by {delay:?}",
        nacked.elapsed()
    );

    // The one delivery took one slot of the two: of two more messages one is handed out
    // while it is held, the other once it is answered, and the delayed message does not
    // come a second time.
    let more: Vec<Message> = (0..2).map(|n| Message::new("t", format!("{n}"))).collect();
    transport.publish("orders", more.clone()).await.unwrap();
    let third = next(&mut deliveries).await.unwrap();
    assert_quiet(&mut deliveries, "a delivery beyond the prefetch").await;
    again.ack().await.unwrap();
    let fourth = next(&mut deliveries).await.unwrap();
    let mut ids = vec![third.message.id, fourth.message.id];
    ids.sort();
    let mut expected: Vec<_> = more.iter().map(|m| m.id).collect();
    expected.sort();
    assert_eq!(ids, expected, "the two new messages, each once");
    third.ack().await.unwrap();
    fourth.ack().await.unwrap();
    assert_quiet(&mut deliveries, "nothing is left once all are acknowledged").await;
    permissions.assert_settled(&transport).await;
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

/// An entry as `XRANGE` returns it: its id and its fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// A connection of the test's own to the shared server.
async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{SHARED}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `XADD key * field value ...`, returning the entry id.
async fn raw_add(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
    fields: &[(&str, &[u8])],
) -> String {
    let mut command = redis::cmd("XADD");
    command.arg(key).arg("*");
    for (name, value) in fields {
        command.arg(*name).arg(*value);
    }
    command.query_async(connection).await.unwrap()
}

/// Asserts that nothing is delivered for a while; `what` says what would be wrong.
async fn assert_quiet(deliveries: &mut Deliveries, what: &str) {
    let quiet = Duration::from_millis(300);
    assert!(
        tokio::time::timeout(quiet, deliveries.next())
            .await
            .is_err(),
        "{what}"
    );
}

async fn next(deliveries: &mut Deliveries) -> Result<Delivery, TransportError> {
    tokio::time::timeout(PATIENCE, deliveries.next())
        .await
        .expect("an item in time")
        .expect("the stream goes on")
}

/// The ids pending in `group` of `key`.
async fn pending(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
    group: &str,
) -> Vec<String> {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(connection)
        .await
        .unwrap();
    rows.into_iter().map(|(id, ..)| id).collect()
}

#[tokio::test]
async fn entries_of_the_field_per_attribute_layout_still_arrive_beside_compact_ones() {
    let (transport, _cleanup) = shared(|options| options).await;
    let spec = SubscriptionSpec::new("orders", "billing");
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let key = transport.stream_key("orders");
    let mut connection = raw_connection().await;

    // What the previous release wrote, then this one, then the previous again: a
    // producer upgraded mid-stream, a consumer reading across it.
    let old = Message::new("order.placed", Bytes::from_static(b"{\"n\":1}"))
        .with_key("order-1")
        .with_source("/orders")
        .with_header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
    let old_id = old.id.hyphenated().to_string();
    let traceparent = old.header("traceparent").unwrap().to_owned();
    let old_fields: Vec<(&str, &[u8])> = vec![
        ("id", old_id.as_bytes()),
        ("type", b"order.placed"),
        ("source", b"/orders"),
        ("key", b"order-1"),
        ("content-type", b"application/json"),
        ("h:traceparent", traceparent.as_bytes()),
        ("payload", &old.payload),
    ];
    raw_add(&mut connection, &key, &old_fields).await;
    let new = Message::new("order.shipped", Bytes::from_static(b"{\"n\":2}"))
        .with_key("order-1")
        .with_header("x-tenant", "acme");
    transport
        .publish("orders", vec![new.clone()])
        .await
        .unwrap();
    let older = Message::new("order.paid", Bytes::new()).with_content_type("");
    let older_id = older.id.hyphenated().to_string();
    raw_add(
        &mut connection,
        &key,
        &[
            ("id", older_id.as_bytes()),
            ("type", b"order.paid"),
            ("content-type", b""),
        ],
    )
    .await;

    for expected in [old, new.clone(), older] {
        let delivery = next(&mut deliveries).await.unwrap();
        assert_eq!(*delivery.message, expected);
        assert_eq!(delivery.attempt, 1);
        delivery.ack().await.unwrap();
    }

    // What operators see of the compact entry: two fields, the payload as it was sent.
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    let (_, fields) = &entries[1];
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["cairn-meta", "payload"]);
    assert_eq!(fields[1].1, new.payload);
    assert_eq!(fields[0].1.first(), Some(&cairn_redis::codec::META_VERSION));
}

#[tokio::test]
async fn an_entry_that_cannot_be_read_is_reported_and_left_pending_while_others_flow() {
    let claim_idle = Duration::from_millis(300);
    let (transport, _cleanup) = shared(|options| options.claim_idle(claim_idle)).await;
    let spec = SubscriptionSpec::new("orders", "billing");
    let mut deliveries = transport.subscribe(&spec).await.unwrap();
    let key = transport.stream_key("orders");
    let mut connection = raw_connection().await;

    // A newer producer's layout, and a damaged one of the current version.
    let newer = raw_add(
        &mut connection,
        &key,
        &[("cairn-meta", &[2, 0xaa, 0xbb]), ("payload", b"kept")],
    )
    .await;
    let damaged = raw_add(
        &mut connection,
        &key,
        &[("cairn-meta", &[1, 0x01, 0x89]), ("payload", b"kept too")],
    )
    .await;
    let good = Message::new("order.placed", Bytes::from_static(b"{}"));
    transport
        .publish("orders", vec![good.clone()])
        .await
        .unwrap();

    let refused = |error: TransportError| -> (String, MetaError) {
        let TransportError::Broker { source, .. } = error else {
            panic!("expected a broker error, got {error:?}");
        };
        let undecodable = source
            .downcast::<UndecodableEntry>()
            .expect("the cause is UndecodableEntry");
        assert_eq!(undecodable.stream, key);
        (undecodable.entry, undecodable.reason)
    };
    let (entry, reason) = refused(next(&mut deliveries).await.unwrap_err());
    assert_eq!(entry, newer);
    assert_eq!(reason, MetaError::UnknownVersion { version: 2 });
    let (entry, reason) = refused(next(&mut deliveries).await.unwrap_err());
    assert_eq!(entry, damaged);
    assert!(
        matches!(reason, MetaError::Malformed { offset: 1, .. }),
        "{reason:?}"
    );
    let delivery = next(&mut deliveries).await.unwrap();
    assert_eq!(*delivery.message, good);
    delivery.ack().await.unwrap();

    // Neither is acknowledged: both stay pending, and after claim_idle they are taken
    // over again (here by the same consumer) and reported again, so a consumer that
    // knows the version would get them.
    assert_eq!(
        pending(&mut connection, &key, "billing").await,
        [newer.clone(), damaged.clone()]
    );
    let mut again = vec![
        refused(next(&mut deliveries).await.unwrap_err()).0,
        refused(next(&mut deliveries).await.unwrap_err()).0,
    ];
    again.sort();
    assert_eq!(again, [newer.clone(), damaged.clone()]);
    assert_eq!(
        pending(&mut connection, &key, "billing").await,
        [newer, damaged]
    );
}

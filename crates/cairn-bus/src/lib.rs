//! Cairn's message bus: [`Message`]s, the [`Publisher`] / [`Subscriber`] contract every
//! transport implements, a [`Router`] of handlers, the middleware a [`Consumer`] runs them
//! through, the in-memory transport and the [`OutboxRelay`].
//!
//! Handlers, the router and every middleware are tower services over [`Incoming`] with
//! [`HandlerError`] as the error, so they stack in a `tower::ServiceBuilder`, outermost
//! first:
//!
//! | Layer | Module | Does |
//! |---|---|---|
//! | metrics | [`metrics`] | counts received / handled / failed / retried / parked, in flight, latency, lag |
//! | trace | [`trace`] | a span per message; W3C `traceparent` in and out of headers |
//! | ordered concurrency | [`ordered`] | N in flight, one at a time per key, in delivery order |
//! | dead letters | [`deadletter`] | parks what failed; list, replay, discard; a parked key waits |
//! | inbox | [`dedup`] | a message id already handled is skipped |
//! | retry | [`retry`] | exponential backoff with jitter, retryable vs permanent |
//! | timeout | [`timeout`] | abandons a handler past its deadline |
//!
//! # Examples
//!
//! A consumer with the whole stack over the in-memory broker:
//!
//! ```
//! use std::time::Duration;
//!
//! use cairn_bus::deadletter::{DeadLetterLayer, KeyPolicy, MemoryDeadLetters};
//! use cairn_bus::dedup::{DedupLayer, MemoryInbox};
//! use cairn_bus::memory::MemoryBroker;
//! use cairn_bus::metrics::{BusMetrics, MetricsLayer};
//! use cairn_bus::ordered::OrderedLayer;
//! use cairn_bus::retry::{RetryLayer, RetryPolicy};
//! use cairn_bus::timeout::TimeoutLayer;
//! use cairn_bus::trace::TraceLayer;
//! use cairn_bus::{Consumer, HandlerError, Incoming, Message, Publisher, Router, Subscriber};
//! use cairn_bus::SubscriptionSpec;
//! use serde::Deserialize;
//! use tokio_util::sync::CancellationToken;
//! use tower::ServiceBuilder;
//!
//! #[derive(Deserialize)]
//! struct Deposited {
//!     account: String,
//!     amount: u64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MemoryBroker::new();
//! let spec = SubscriptionSpec::new("bank", "ledger");
//! let deliveries = broker.subscribe(&spec).await?;
//!
//! let router = Router::new().on("deposited", |deposit: Deposited, _: Incoming| async move {
//!     if deposit.amount == 0 {
//!         return Err(HandlerError::permanent(format!("an empty deposit to {}", deposit.account)));
//!     }
//!     Ok(())
//! });
//! let metrics = BusMetrics::new();
//! let dead_letters = DeadLetterLayer::new(MemoryDeadLetters::new(), KeyPolicy::Block)
//!     .on_parked({
//!         let metrics = metrics.clone();
//!         move |_| metrics.record_parked()
//!     });
//! let parked = dead_letters.dead_letters();
//! let service = ServiceBuilder::new()
//!     .layer(MetricsLayer::new(metrics.clone()))
//!     .layer(TraceLayer::new())
//!     .layer(OrderedLayer::new(64))
//!     .layer(dead_letters)
//!     .layer(DedupLayer::new("ledger", MemoryInbox::new()))
//!     .layer(RetryLayer::new(RetryPolicy::new().on_retry(metrics.retry_hook())))
//!     .layer(TimeoutLayer::new(Duration::from_secs(5)))
//!     .service(router);
//!
//! let deposit = |account: &str, amount: u64| {
//!     Message::json("deposited", &serde_json::json!({ "account": account, "amount": amount }))
//!         .map(|message| message.with_key(account))
//! };
//! broker.publish("bank", vec![deposit("alice", 10)?, deposit("bob", 0)?]).await?;
//!
//! let cancel = CancellationToken::new();
//! let consumer = tokio::spawn(Consumer::new(service).run(deliveries, cancel.clone()));
//! while metrics.snapshot().handled < 2 {
//!     tokio::time::sleep(Duration::from_millis(1)).await;
//! }
//! cancel.cancel();
//! consumer.await??;
//!
//! // Bob's empty deposit failed permanently: it was parked, not retried.
//! let letters = parked.list(&Default::default()).await?;
//! assert_eq!(letters.len(), 1);
//! assert_eq!(letters[0].key(), Some("bob"));
//! assert_eq!(metrics.snapshot().parked, 1);
//! # Ok(())
//! # }
//! ```
//!
//! This crate knows no broker: NATS JetStream, RabbitMQ and Redis Streams live in their
//! own crates and prove themselves with `cairn-conformance`'s transport suite.
//!
//! # Feature flags
//!
//! | Feature | Default | What it adds |
//! |---|---|---|
//! | `postgres` | no | [`dedup::PgInbox`]: the inbox in `cairn-postgres`'s `cairn_inbox` table |

pub mod consumer;
pub mod deadletter;
pub mod dedup;
pub mod handler;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod ordered;
pub mod relay;
pub mod retry;
pub mod router;
pub mod timeout;
pub mod trace;
pub mod transport;

pub use cairn_core::CompactString;
pub use consumer::{Consumer, ConsumerOptions, ConsumerSummary};
pub use handler::{HandlerError, Incoming};
pub use message::{Headers, Message};
pub use relay::{OutboxRelay, RelayError, RelayOptions, RelaySummary};
pub use router::Router;
pub use transport::{
    Acknowledge, BoxError, Deliveries, Delivery, Publisher, Subscriber, SubscriptionSpec,
    TransportError,
};

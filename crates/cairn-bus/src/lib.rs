//! Cairn's message bus: [`Message`]s, the [`Publisher`] / [`Subscriber`] contract every
//! transport implements, and the middleware a consumer runs its handlers through.
//!
//! Handlers, the router and every middleware are tower services over [`Incoming`] with
//! [`HandlerError`] as the error, so they stack in a `tower::ServiceBuilder`.
//!
//! This crate knows no broker: NATS JetStream, RabbitMQ, Redis Streams and Kafka live in
//! their own crates and prove themselves with `cairn-conformance`'s transport suite.

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

pub use consumer::{Consumer, ConsumerOptions, ConsumerSummary};
pub use handler::{HandlerError, Incoming};
pub use message::{Headers, Message};
pub use relay::{OutboxRelay, RelayError, RelayOptions, RelaySummary};
pub use router::Router;
pub use transport::{
    Acknowledge, BoxError, Deliveries, Delivery, Publisher, Subscriber, SubscriptionSpec,
    TransportError,
};

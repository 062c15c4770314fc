//! Cairn's message bus over RabbitMQ: [`AmqpTransport`] implements cairn-bus's
//! [`Publisher`] and [`Subscriber`] with the `lapin` client (AMQP 0-9-1).
//!
//! ```no_run
//! # async fn example() -> Result<(), cairn_bus::TransportError> {
//! use cairn_amqp::AmqpTransport;
//! use cairn_bus::{Message, Publisher, Subscriber, SubscriptionSpec};
//!
//! let transport = AmqpTransport::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! let deliveries = transport.subscribe(&SubscriptionSpec::new("orders", "billing")).await?;
//! transport.publish("orders", vec![Message::new("order.placed", "{}")]).await?;
//! # Ok(()) }
//! ```
//!
//! # How the contract maps onto RabbitMQ
//!
//! | Cairn | RabbitMQ |
//! |---|---|
//! | topic | a durable **fanout exchange** `{namespace}.{topic}`, one per topic (one exchange per topic rather than one shared exchange with routing keys: each topic's bindings and permissions stand alone, and deleting a topic is deleting its exchange) |
//! | group | a durable **quorum queue** `{namespace}.{topic}.{group}` bound to the exchange; it exists from the first subscription on and keeps every message published after that, consumer attached or not |
//! | publish | persistent messages (`delivery-mode` 2) on a channel in **confirm mode**: [`Publisher::publish`] returns once the broker confirmed every message of the batch (pipelined, then awaited together); a `basic.nack` is an error ([`AmqpError::NotConfirmed`]); no confirm within `confirm_timeout` is [`TransportError::Timeout`] |
//! | [`Delivery::ack`](cairn_bus::Delivery::ack) | `basic.ack` (manual acknowledgements) |
//! | `nack(None)` | `basic.nack` with `requeue`: delivered again as soon as the broker gets to it (where it goes back in the queue is the broker's choice: other messages may come first) |
//! | `nack(Some(delay))` | the message is republished (confirmed) to a **retry queue** of the group whose message TTL is the delay, then acknowledged; when the TTL expires the broker dead-letters it back into the group's queue. Delays are rounded up to a ladder of 92 steps (1 ms to ~27 h, each at most 25 % above the last), so a group has at most 92 retry queues, each deleted by the broker after 5 minutes unused. Other messages flow meanwhile |
//! | attempt | 1 + the quorum queue's `x-delivery-count` (redeliveries after a nack or a lost consumer) + the deliveries before the last retry wait (header `cairn.attempts`) |
//! | prefetch | `basic.qos` per consumer: the broker sends at most `prefetch` unacknowledged deliveries (capped at 65,535) |
//! | lag | the group queue's ready messages (`queue.declare` passive) plus the deliveries this transport handed out unanswered |
//! | dead letters | each group queue dead-letters (through the default exchange) into `{queue}.dead`, a durable quorum queue: messages rejected because they are not Cairn messages (no UUID `message-id`), and with [`AmqpOptions::delivery_limit`] messages redelivered more often than that |
//!
//! Message fields travel as AMQP properties and headers ([`codec`] has the table).
//!
//! # Connections
//!
//! A transport holds one connection, opened by [`AmqpTransport::connect`] (which reports
//! an unreachable broker or refused credentials at once) and opened again by whoever
//! needs it after it dropped: a publish, a subscription, an answer. Each subscription has
//! its own channel; when the connection drops, its [`Deliveries`] stream reports one
//! error item and opens its consumer again (with backoff, 100 ms doubling to 2 s by
//! default, reporting each failed attempt) until it succeeds or the transport is closed.
//! Deliveries unanswered when the connection dropped are redelivered by the broker as
//! later attempts; answering them afterwards fails with [`AmqpError::StaleDelivery`] and
//! changes nothing. A publish that fails while the connection is down may or may not have
//! reached the broker: publish again with the same ids. The connection closes once the
//! transport and every stream it gave are dropped, even while deliveries are held.
//!
//! # Limits
//!
//! - **No de-duplication by the broker**: RabbitMQ keeps no record of message ids, so a
//!   message published twice (a publish retried after an error) is delivered twice; the
//!   inbox (`cairn_bus::dedup`) makes that harmless.
//! - **Order**: one consumer sees a queue's messages in publish order until something is
//!   redelivered. A delayed nack puts the message behind everything published before its
//!   delay ran out, and a nack without delay or a lost consumer may let other messages
//!   pass too. Per-key order across retries is the ordered-concurrency middleware's job.
//! - **Retention**: queues keep what no consumer acknowledged, without limit or trimming
//!   (RabbitMQ's own `x-max-length` policies apply if an operator sets them). A topic
//!   without a group drops what is published to it.
//! - **Delays** are at least what was asked and at most 25 % more (ladder steps); longer
//!   than [`names::MAX_DELAY`] they are shortened to it. The retry queues are classic
//!   queues whose dead-lettering is at most once: a broker crash at the moment a delay
//!   ends can lose that message.
//! - **Lag** cannot see deliveries held unanswered by other processes (AMQP 0-9-1 does
//!   not tell them), nor messages waiting in retry queues, nor the (at most `prefetch`)
//!   messages the broker already pushed to this transport that its stream has not
//!   handed out yet: it is a lower bound, exact when nothing is in flight.
//! - **Size**: [`AmqpOptions::max_message_size`] (4 MiB by default) is checked before
//!   anything is sent; RabbitMQ refuses bodies over its own `max_message_size`.
//!
//! # TLS
//!
//! `amqps://` URLs need the `tls` feature (rustls with the `ring` provider and the
//! platform's root certificates); without it they are [`TransportError::Invalid`].
//!
//! # Feature flags
//!
//! | Flag | What it adds |
//! |---|---|
//! | `tls` | `amqps://` URLs |
//!
//! # What this crate is not
//!
//! An AMQP 1.0 client, a RabbitMQ Streams client, or an administration tool: it declares
//! the exchanges and queues it uses and deletes them only when asked
//! ([`AmqpTransport::delete_group`], [`AmqpTransport::delete_topic`]).

pub mod codec;
mod connection;
mod endpoint;
pub mod error;
pub mod names;
mod options;
mod subscription;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cairn_bus::{Deliveries, Message, Publisher, Subscriber, SubscriptionSpec, TransportError};

use connection::Shared;
use endpoint::Endpoint;

pub use error::AmqpError;
pub use options::AmqpOptions;

/// A connection to RabbitMQ as a cairn-bus transport. Cheap to clone: clones share the
/// connection.
#[derive(Clone)]
pub struct AmqpTransport {
    shared: Arc<Shared>,
}

impl AmqpTransport {
    /// Connects to the broker at `url` (`amqp://user:password@host:port/vhost`) with the
    /// default options.
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self, TransportError> {
        Self::connect_with(url, AmqpOptions::default()).await
    }

    /// Connects to the broker at `url` with `options`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a URL or namespace the transport cannot use;
    /// [`TransportError::Unreachable`] (naming the endpoint, never the password) when the
    /// broker cannot be reached within `connect_timeout`; [`TransportError::Refused`] for
    /// wrong credentials or a vhost the user may not use.
    pub async fn connect_with(url: &str, options: AmqpOptions) -> Result<Self, TransportError> {
        let endpoint = Endpoint::parse(url)?;
        names::validate_namespace(&options.namespace)?;
        let shared = Arc::new(Shared::new(endpoint, options));
        shared.live().await?;
        Ok(Self { shared })
    }

    /// The broker's endpoint, without the password.
    pub fn endpoint(&self) -> &str {
        self.shared.endpoint.shown()
    }

    /// The options in use.
    pub fn options(&self) -> &AmqpOptions {
        &self.shared.options
    }

    /// The name of the queue of `group` on `topic`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a name the transport cannot use.
    pub fn queue_name(&self, topic: &str, group: &str) -> Result<String, TransportError> {
        names::validate("topic", topic)?;
        names::validate("group", group)?;
        Ok(names::queue(&self.shared.options.namespace, topic, group))
    }

    /// The name of the dead-letter queue of `group` on `topic`, to inspect or move its
    /// messages with RabbitMQ's tools.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a name the transport cannot use.
    pub fn dead_letter_queue(&self, topic: &str, group: &str) -> Result<String, TransportError> {
        Ok(names::dead(&self.queue_name(topic, group)?))
    }

    /// Deletes the queue of `group` on `topic` with its dead-letter and retry queues, and
    /// every message in them. Deleting what does not exist succeeds.
    ///
    /// # Errors
    ///
    /// Connection and broker errors (`Refused` without the permission).
    pub async fn delete_group(&self, topic: &str, group: &str) -> Result<(), TransportError> {
        let queue = self.queue_name(topic, group)?;
        self.shared.delete_group(&queue).await
    }

    /// Deletes the exchange of `topic` (its groups' queues stay, unbound).
    ///
    /// # Errors
    ///
    /// Connection and broker errors.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), TransportError> {
        names::validate("topic", topic)?;
        let exchange = names::exchange(&self.shared.options.namespace, topic);
        self.shared.delete_exchange(&exchange).await
    }

    /// Closes the connection: streams end, publishes and answers fail with
    /// [`TransportError::Closed`] (unanswered deliveries go back to the broker).
    pub async fn close(&self) {
        self.shared.close().await;
    }
}

impl fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("endpoint", &self.shared.endpoint)
            .field("namespace", &self.shared.options.namespace)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Publisher for AmqpTransport {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TransportError> {
        self.shared.publish(topic, &messages).await
    }

    fn max_message_size(&self) -> usize {
        self.shared.options.max_message_size
    }
}

#[async_trait]
impl Subscriber for AmqpTransport {
    async fn subscribe(&self, spec: &SubscriptionSpec) -> Result<Deliveries, TransportError> {
        subscription::subscribe(Arc::clone(&self.shared), spec).await
    }

    async fn lag(&self, spec: &SubscriptionSpec) -> Result<Option<u64>, TransportError> {
        let queue = self.queue_name(&spec.topic, &spec.group)?;
        let ready = self.shared.ready(&queue).await?;
        Ok(Some(ready.unwrap_or(0) + self.shared.outstanding(&queue)))
    }
}

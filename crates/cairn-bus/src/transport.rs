//! The transport contract: [`Publisher`], [`Subscriber`] and the [`Delivery`] they hand
//! out, with explicit [`Delivery::ack`] and [`Delivery::nack`].
//!
//! The contract is the common ground of the brokers Cairn speaks to:
//!
//! | Cairn            | NATS JetStream            | RabbitMQ                     | Redis Streams              | Kafka                         |
//! |------------------|---------------------------|------------------------------|----------------------------|-------------------------------|
//! | topic            | subject (in a stream)     | exchange + routing key       | stream key                 | topic                         |
//! | group            | durable pull consumer     | queue bound to the exchange  | consumer group             | consumer group                |
//! | [`Delivery::ack`]  | `+ACK`                  | `basic.ack`                  | `XACK`                     | offset commit once contiguous |
//! | [`Delivery::nack`] | `-NAK` with delay       | reject + delayed requeue     | left pending, reclaimed    | seek back / retry topic       |
//! | attempt          | `num_delivered`           | `x-delivery-count` / redelivered | delivery count         | retry header                  |
//! | prefetch         | `max_ack_pending`         | `basic.qos`                  | `COUNT` per read           | `max.poll.records`            |
//!
//! **API Boundary:** a transport owns connection handling: a [`Deliveries`] stream survives
//! a dropped connection by reconnecting by itself, and only reports an error item for what
//! the consumer should know about. Nothing acknowledged is ever redelivered as new and
//! nothing unacknowledged is ever lost: a delivery that is dropped without an answer, or
//! whose consumer dies, is redelivered (to this or another consumer of the group).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use futures::future::BoxFuture;

use crate::message::Message;

/// The boxed error type of a cause from a client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong talking to a transport. Each variant has a stable [`code`](Self::code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The message is larger than the transport accepts; nothing was published.
    #[error("message {id} is {size} bytes, more than the {max} bytes the transport accepts")]
    PayloadTooLarge {
        /// The message's id.
        id: uuid::Uuid,
        /// Its encoded size ([`Message::encoded_len`]).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A topic, group or setting the transport cannot use.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid (`topic`, `group`, ...).
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The broker could not be reached (the endpoint never carries a password).
    #[error("cannot reach the broker at {endpoint}: {source}")]
    Unreachable {
        /// Where it was looked for.
        endpoint: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The broker refused: wrong credentials, missing permissions, a limit.
    #[error("the broker refused {operation}: {reason}")]
    Refused {
        /// What was refused.
        operation: String,
        /// The broker's reason.
        reason: String,
    },
    /// The broker did not confirm in time; the publish may or may not have happened, so it
    /// is safe to retry with the same message id.
    #[error("{operation} was not confirmed within {after:?}")]
    Timeout {
        /// What timed out.
        operation: String,
        /// After how long.
        after: Duration,
    },
    /// The transport was closed.
    #[error("the transport is closed")]
    Closed,
    /// Anything else the broker or the client reported.
    #[error("{operation} failed: {source}")]
    Broker {
        /// What failed.
        operation: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl TransportError {
    /// A stable code for the error, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Invalid { .. } => "invalid",
            Self::Unreachable { .. } => "unreachable",
            Self::Refused { .. } => "refused",
            Self::Timeout { .. } => "timeout",
            Self::Closed => "closed",
            Self::Broker { .. } => "broker",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Timeout { .. } | Self::Broker { .. }
        )
    }
}

/// Sends messages to a topic.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `messages` to `topic`, in order, returning once the transport has taken
    /// responsibility for all of them (a broker's publisher confirm, a JetStream ack). A
    /// message whose id the transport has seen recently may be dropped as a duplicate; the
    /// call still succeeds.
    ///
    /// # Errors
    ///
    /// [`TransportError::PayloadTooLarge`] (checked before anything is sent, for every
    /// message), [`TransportError::Invalid`] for a topic the transport cannot use, and
    /// connection or broker errors. After an error, some of the messages may have been
    /// published: publish them again with the same ids.
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TransportError>;

    /// The largest [`Message::encoded_len`] the transport accepts.
    fn max_message_size(&self) -> usize;
}

/// What to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// The topic to consume.
    pub topic: String,
    /// The consumer group: consumers of one group share the messages (each message goes to
    /// one of them); each group gets every message.
    pub group: String,
    /// How many deliveries may be outstanding (handed out, not yet answered) on this
    /// subscription: the transport's backpressure.
    pub prefetch: usize,
}

impl SubscriptionSpec {
    /// The default prefetch.
    pub const DEFAULT_PREFETCH: usize = 256;

    /// A subscription of `group` to `topic` with the default prefetch.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            prefetch: Self::DEFAULT_PREFETCH,
        }
    }

    /// Sets the prefetch (at least 1).
    #[must_use]
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }
}

/// Receives messages.
#[async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Starts consuming `spec.topic` as a member of `spec.group`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a topic or group the transport cannot use, and
    /// connection or broker errors while setting up.
    async fn subscribe(&self, spec: &SubscriptionSpec) -> Result<Deliveries, TransportError>;

    /// How many messages of `spec.topic` the group has not yet been handed or not yet
    /// acknowledged, when the transport can tell; `None` when it cannot.
    ///
    /// # Errors
    ///
    /// Connection or broker errors.
    async fn lag(&self, spec: &SubscriptionSpec) -> Result<Option<u64>, TransportError> {
        let _ = spec;
        Ok(None)
    }
}

/// How a transport answers one delivery. Implemented by each transport; consumed once.
pub trait Acknowledge: Send + 'static {
    /// The message was handled: it must not be delivered again.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>>;

    /// Acknowledges without waiting, when the transport can (an in-process broker can),
    /// sparing the future of [`ack`](Self::ack): `Some` with the outcome of the ack, after
    /// which the delivery is answered and dropping this does nothing more; `None` when it
    /// cannot, having done nothing, and then [`ack`](Self::ack) answers. The default is
    /// `None`.
    fn ack_now(&mut self) -> Option<Result<(), TransportError>> {
        None
    }

    /// The message was not handled: deliver it again, after `delay` when given.
    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>>;
}

/// One message handed to a consumer, to be answered with [`ack`](Self::ack) or
/// [`nack`](Self::nack). Dropping it unanswered counts as a nack without delay, as does the
/// death of the consumer that held it.
pub struct Delivery {
    /// The topic it came from.
    pub topic: Arc<str>,
    /// The message (shared, so that a transport keeping it for redelivery need not copy
    /// it).
    pub message: Arc<Message>,
    /// Which delivery of this message this is, from 1; greater than 1 after a nack, a
    /// timeout or a consumer's death.
    pub attempt: u32,
    acknowledge: Box<dyn Acknowledge>,
}

impl Delivery {
    /// A delivery answered through `acknowledge` (for transports).
    pub fn new(
        topic: Arc<str>,
        message: impl Into<Arc<Message>>,
        attempt: u32,
        acknowledge: Box<dyn Acknowledge>,
    ) -> Self {
        Self {
            topic,
            message: message.into(),
            attempt,
            acknowledge,
        }
    }

    /// Acknowledges the message.
    ///
    /// # Errors
    ///
    /// When the transport could not record the acknowledgement; the message may then be
    /// delivered again, which the inbox makes harmless.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.acknowledge.ack().await
    }

    /// Gives the message back for redelivery, after `delay` when given.
    ///
    /// # Errors
    ///
    /// When the transport could not record the nack; the message is then redelivered when
    /// the broker's own deadline passes.
    pub async fn nack(self, delay: Option<Duration>) -> Result<(), TransportError> {
        self.acknowledge.nack(delay).await
    }

    /// Splits the delivery into its message and its answer, for code that handles the two
    /// apart.
    pub fn into_parts(self) -> (Arc<str>, Arc<Message>, u32, Box<dyn Acknowledge>) {
        (self.topic, self.message, self.attempt, self.acknowledge)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// The stream of deliveries of one subscription. It ends when the transport is closed;
/// an `Err` item reports a problem the transport could not hide (it keeps trying).
/// Dropping it ends the subscription; deliveries still held stay answerable.
pub struct Deliveries {
    inner: Pin<Box<dyn Stream<Item = Result<Delivery, TransportError>> + Send>>,
}

impl Deliveries {
    /// Wraps a transport's stream.
    pub fn new(
        stream: impl Stream<Item = Result<Delivery, TransportError>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl Stream for Deliveries {
    type Item = Result<Delivery, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliveries").finish_non_exhaustive()
    }
}

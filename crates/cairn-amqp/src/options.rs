//! [`AmqpOptions`]: the transport's settings, with defaults fit for a RabbitMQ of its
//! default configuration.

use std::time::Duration;

/// How an [`AmqpTransport`](crate::AmqpTransport) names things and how long it waits.
///
/// The queue arguments (`delivery_limit`) are fixed when a group's queue is first
/// declared; connecting to an existing queue with different ones is refused by the broker
/// ([`TransportError::Refused`](cairn_bus::TransportError::Refused)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AmqpOptions {
    /// The first part of every exchange and queue name (default `cairn`): ASCII letters,
    /// digits, `-`, `_` and `.`.
    pub namespace: String,
    /// The largest [`Message::encoded_len`](cairn_bus::Message::encoded_len) published
    /// (default 4 MiB; RabbitMQ's own limit, `max_message_size`, is 128 MiB by default).
    pub max_message_size: usize,
    /// How long opening a connection may take before it counts as unreachable (default
    /// 10 s).
    pub connect_timeout: Duration,
    /// How long a publish waits for the broker's confirms (default 30 s), after which it
    /// fails with [`TransportError::Timeout`](cairn_bus::TransportError::Timeout).
    pub confirm_timeout: Duration,
    /// After how many redeliveries (nacks without delay, consumers lost) the broker moves a
    /// message to the group's dead-letter queue (`x-delivery-limit`); `None`, the default,
    /// never.
    pub delivery_limit: Option<u32>,
    /// The shortest and longest wait between two reconnection attempts (default 100 ms to
    /// 2 s, doubling).
    pub reconnect_backoff: (Duration, Duration),
    /// The connection name the broker's management tools show (default `cairn`).
    pub connection_name: String,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            namespace: "cairn".to_owned(),
            max_message_size: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(30),
            delivery_limit: None,
            reconnect_backoff: (Duration::from_millis(100), Duration::from_secs(2)),
            connection_name: "cairn".to_owned(),
        }
    }
}

impl AmqpOptions {
    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the largest message published.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the connection timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long a publish waits for its confirms.
    #[must_use]
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Sets the delivery limit of the group queues this transport declares.
    #[must_use]
    pub fn delivery_limit(mut self, limit: Option<u32>) -> Self {
        self.delivery_limit = limit;
        self
    }

    /// Sets the reconnection backoff.
    #[must_use]
    pub fn reconnect_backoff(mut self, shortest: Duration, longest: Duration) -> Self {
        self.reconnect_backoff = (shortest, longest.max(shortest));
        self
    }

    /// Sets the connection name.
    #[must_use]
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }
}

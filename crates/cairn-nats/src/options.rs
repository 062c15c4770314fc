//! [`NatsOptions`]: how a [`NatsTransport`](crate::NatsTransport) names its streams,
//! configures the streams and consumers it creates, and waits on the server.
//!
//! Stream and consumer settings apply when this transport creates the stream or the
//! consumer; an existing one is used as it is (JetStream keeps the configuration it was
//! created with).

use std::time::Duration;

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Storage {
    /// On disk, surviving a server restart (the default).
    File,
    /// In the server's memory: faster, lost when the server stops.
    Memory,
}

/// When a stream lets go of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retention {
    /// Only by the stream's limits ([`NatsOptions::max_age`],
    /// [`NatsOptions::max_messages`], [`NatsOptions::max_bytes`]), oldest first, whether
    /// or not groups acknowledged it (the default): the stream is a log, and a group that
    /// falls further behind than the limits loses what was trimmed.
    Limits,
    /// Once every group that existed when it was published has acknowledged it; a message
    /// published while the topic has no group is not kept. Beware: against nats-server
    /// 2.9, `tests/restart.rs` run with this retention loses a few confirmed messages
    /// (about twenty of seven hundred, none of them ever delivered) across a clean
    /// restart, where the default loses none.
    Interest,
}

/// How a [`NatsTransport`](crate::NatsTransport) behaves; every field has a default and a
/// setter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsOptions {
    /// The prefix of every stream (`{namespace}-{topic}`) and subject
    /// (`{namespace}.{topic}`) (default `cairn`); ASCII letters, digits, `-` and `_`.
    pub namespace: String,
    /// Where streams keep messages (default [`Storage::File`]).
    pub storage: Storage,
    /// When streams drop messages (default [`Retention::Limits`]).
    pub retention: Retention,
    /// The oldest message a stream keeps; zero keeps them regardless of age (default seven
    /// days).
    pub max_age: Duration,
    /// The most messages a stream keeps, the oldest dropped first; `None` for no limit.
    pub max_messages: Option<i64>,
    /// The most bytes a stream keeps, the oldest messages dropped first; `None` for no
    /// limit.
    pub max_bytes: Option<i64>,
    /// How long a stream remembers a message id to drop a second publish of it (default
    /// two minutes, JetStream's own).
    pub duplicate_window: Duration,
    /// How long the server waits for the answer to a delivery before delivering it again
    /// (default 30 s). A handler that takes longer sees its message delivered twice.
    pub ack_wait: Duration,
    /// How many times the server delivers a message before giving up on it; `None` (the
    /// default) for no limit, leaving dead letters to the bus's own middleware.
    pub max_deliver: Option<i64>,
    /// The most deliveries a whole group may have unanswered on the server (default
    /// 20,000); each subscription's own bound is its prefetch.
    pub max_ack_pending: i64,
    /// How long a publish, an API request or a confirmed answer waits for the server
    /// (default 5 s).
    pub request_timeout: Duration,
    /// How long one pull request waits at the server for messages before it expires and
    /// is renewed (default 10 s).
    pub pull_expiry: Duration,
    /// Whether `ack` and `nack` wait for the server to confirm them (default `true`): an
    /// answer that returned `Ok` was recorded. The answers of a subscription share
    /// confirmations (one per round trip, see [`subscription`](crate::subscription)), so
    /// this costs latency rather than throughput.
    pub confirm_answers: bool,
    /// The largest message accepted, by [`Message::encoded_len`]; the server's
    /// `max_payload` (less room for the headers) caps it (default 8 MiB, so the server's
    /// limit rules).
    ///
    /// [`Message::encoded_len`]: cairn_bus::Message::encoded_len
    pub max_message_size: usize,
    /// How long connecting may take (default 5 s).
    pub connect_timeout: Duration,
    /// The longest pause between attempts to reconnect (default 2 s).
    pub max_reconnect_delay: Duration,
    /// How often the client pings the server to notice a dead connection (default 10 s).
    pub ping_interval: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            namespace: "cairn".to_owned(),
            storage: Storage::File,
            retention: Retention::Limits,
            max_age: Duration::from_secs(7 * 24 * 3_600),
            max_messages: None,
            max_bytes: None,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            max_ack_pending: 20_000,
            request_timeout: Duration::from_secs(5),
            pull_expiry: Duration::from_secs(10),
            confirm_answers: true,
            max_message_size: 8 << 20,
            connect_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(2),
            ping_interval: Duration::from_secs(10),
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        impl NatsOptions {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, $name: $ty) -> Self {
                    self.$name = $name;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`storage`](Self::storage).
    storage: Storage;
    /// Sets [`retention`](Self::retention).
    retention: Retention;
    /// Sets [`max_age`](Self::max_age).
    max_age: Duration;
    /// Sets [`max_messages`](Self::max_messages).
    max_messages: Option<i64>;
    /// Sets [`max_bytes`](Self::max_bytes).
    max_bytes: Option<i64>;
    /// Sets [`duplicate_window`](Self::duplicate_window).
    duplicate_window: Duration;
    /// Sets [`ack_wait`](Self::ack_wait).
    ack_wait: Duration;
    /// Sets [`max_deliver`](Self::max_deliver).
    max_deliver: Option<i64>;
    /// Sets [`max_ack_pending`](Self::max_ack_pending).
    max_ack_pending: i64;
    /// Sets [`request_timeout`](Self::request_timeout).
    request_timeout: Duration;
    /// Sets [`pull_expiry`](Self::pull_expiry).
    pull_expiry: Duration;
    /// Sets [`confirm_answers`](Self::confirm_answers).
    confirm_answers: bool;
    /// Sets [`max_message_size`](Self::max_message_size).
    max_message_size: usize;
    /// Sets [`connect_timeout`](Self::connect_timeout).
    connect_timeout: Duration;
    /// Sets [`max_reconnect_delay`](Self::max_reconnect_delay).
    max_reconnect_delay: Duration;
    /// Sets [`ping_interval`](Self::ping_interval).
    ping_interval: Duration;
}

impl NatsOptions {
    /// Sets [`namespace`](Self::namespace).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }
}

//! [`RedisOptions`]: how a [`RedisTransport`](crate::RedisTransport) names its keys, how
//! long it waits, and when it reclaims, trims and tidies.

use std::time::Duration;

/// The default [`RedisOptions::prefix`].
pub const DEFAULT_PREFIX: &str = "cairn";
/// The default [`RedisOptions::max_message_size`]: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;
/// The default [`RedisOptions::claim_idle`]: 30 s.
pub const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);

/// How a [`RedisTransport`](crate::RedisTransport) behaves; every field has a default and
/// a setter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// The first part of every key: topic `t` is the stream `<prefix>:t`. Letters, digits,
    /// `.`, `_` and `-`. Transports that should see each other's topics use the same
    /// prefix; a test run uses a prefix of its own.
    pub prefix: String,
    /// The largest [`Message::encoded_len`](cairn_bus::Message::encoded_len) published.
    pub max_message_size: usize,
    /// How long a delivery may stay pending without its consumer showing signs of life
    /// before another consumer of the group takes it over (the min-idle-time of its claim).
    /// A live subscription refreshes what it holds three times per `claim_idle`, so this
    /// bounds how long the messages of a consumer that died wait, not how long a handler
    /// may take.
    pub claim_idle: Duration,
    /// How long one `XREADGROUP` blocks on the server waiting for new entries. It also
    /// bounds how late an entry whose nack delay is up is handed out, since the reader
    /// hands those out between reads; an idle subscription reads once per `block`.
    pub block: Duration,
    /// How long a command may wait for its reply before it fails with
    /// [`TransportError::Timeout`](cairn_bus::TransportError::Timeout).
    pub response_timeout: Duration,
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// When set, every `XADD` caps its stream at about this many entries
    /// (`MAXLEN ~`), whether or not every group has consumed them: a safety net against a
    /// group nobody consumes, at the price of losing what such a group has not read.
    pub max_len: Option<usize>,
    /// How often each subscription trims its stream of what every group has
    /// acknowledged and removes long-idle consumers with nothing pending.
    pub tidy_interval: Duration,
    /// How long a consumer with nothing pending may stay idle before tidying removes it
    /// from its group.
    pub consumer_idle_limit: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            claim_idle: DEFAULT_CLAIM_IDLE,
            block: Duration::from_millis(100),
            response_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_len: None,
            tidy_interval: Duration::from_secs(60),
            consumer_idle_limit: Duration::from_secs(3600),
        }
    }
}

impl RedisOptions {
    /// Sets [`prefix`](Self::prefix).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`max_message_size`](Self::max_message_size).
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`claim_idle`](Self::claim_idle) (at least 30 ms).
    #[must_use]
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle.max(Duration::from_millis(30));
        self
    }

    /// Sets [`block`](Self::block) (at least 1 ms).
    #[must_use]
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// Sets [`response_timeout`](Self::response_timeout).
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`max_len`](Self::max_len).
    #[must_use]
    pub fn max_len(mut self, entries: Option<usize>) -> Self {
        self.max_len = entries;
        self
    }

    /// Sets [`tidy_interval`](Self::tidy_interval) (at least 1 s).
    #[must_use]
    pub fn tidy_interval(mut self, interval: Duration) -> Self {
        self.tidy_interval = interval.max(Duration::from_secs(1));
        self
    }

    /// Sets [`consumer_idle_limit`](Self::consumer_idle_limit).
    #[must_use]
    pub fn consumer_idle_limit(mut self, idle: Duration) -> Self {
        self.consumer_idle_limit = idle;
        self
    }

    /// How often a subscription refreshes the idle time of what it holds.
    pub(crate) fn touch_every(&self) -> Duration {
        self.claim_idle / 3
    }

    /// How often a subscription looks for deliveries left by dead consumers.
    pub(crate) fn reclaim_every(&self) -> Duration {
        self.claim_idle / 2
    }
}

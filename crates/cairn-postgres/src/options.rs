//! [`PgOptions`]: how a [`PgStore`](crate::PgStore) connects, how long it waits, and how its
//! subscriptions learn about new commits.

use std::time::Duration;

use cairn_core::StoreLimits;

/// How a store connects and behaves. `PgOptions::default()` suits most services.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cairn_postgres::PgOptions;
///
/// let options = PgOptions::default()
///     .max_connections(32)
///     .acquire_timeout(Duration::from_secs(2))
///     .poll_interval(Duration::from_millis(250));
/// assert_eq!(options.max_connections, 32);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// The most connections the pool opens (the listener for notifications uses one more).
    pub max_connections: u32,
    /// How long an operation waits for a free connection before it fails with an
    /// [`Unavailable`](cairn_core::StorageErrorKind::Unavailable) storage error naming the
    /// exhausted pool.
    pub acquire_timeout: Duration,
    /// Whether live subscriptions are woken by `LISTEN`/`NOTIFY`. Polling at
    /// [`poll_interval`](Self::poll_interval) runs either way, as the fallback for lost
    /// notifications.
    pub notifications: bool,
    /// How often a live subscription reads even when no notification came.
    pub poll_interval: Duration,
    /// The longest a read waits for older transactions still in flight, whose commit
    /// could put events below the ones already committed (see the crate docs, "Gap
    /// safety"); past it the read fails with an
    /// [`Unavailable`](cairn_core::StorageErrorKind::Unavailable) storage error.
    pub release_timeout: Duration,
    /// How long a subscription keeps retrying after the database became unreachable
    /// (connection lost, restarted) before it ends with the error.
    pub subscription_retry: Duration,
    /// Whether opening the store applies the embedded migrations. When `false`, opening
    /// still refuses a database at a newer schema version than this build knows.
    pub migrate: bool,
    /// The limits enforced on appends.
    pub limits: StoreLimits,
    /// How many append transactions run side by side before further appends are
    /// combined (at least 1; the default is [`DEFAULT_APPEND_TRANSACTIONS`]).
    ///
    /// An append to one stream of at most
    /// [`MAX_EVENTS_TO_COMBINE`](crate::MAX_EVENTS_TO_COMBINE) events, outside the caller's
    /// transaction, that finds fewer
    /// transactions of appends in flight on this store runs at once, alone. One that finds
    /// this many waits in a queue; the next append transaction to start takes every
    /// queued append (up to [`MAX_COMBINED_EVENTS`](crate::MAX_COMBINED_EVENTS) events
    /// and [`MAX_COMBINED_BYTES`](crate::MAX_COMBINED_BYTES) bytes) and writes them in one database call and one transaction, so that they share one
    /// commit. Each is still judged on its own: a refusal refuses that append only. A lone
    /// writer never waits; many writers trade a little latency for far fewer commits.
    /// Appends to several streams and appends in the caller's transaction are never
    /// combined.
    ///
    /// A counted transaction never waits for a stream's lock: an append to a stream that
    /// another transaction holds (a long transaction around [`PgStore::append_in_tx`], a
    /// lifecycle change) leaves the count and waits for the lock on its own, so a held
    /// stream holds up only its own writers.
    ///
    /// [`PgStore::append_in_tx`]: crate::PgStore::append_in_tx
    pub append_transactions: usize,
}

/// The default of [`PgOptions::append_transactions`]: one, chosen by measurement with
/// `cairn bench --store postgres --workload custom --writers 32 --batch 1` against 2, 4
/// and 8 (see BENCHMARKS.md): one transaction at a time takes the most appends per commit.
pub const DEFAULT_APPEND_TRANSACTIONS: usize = 1;

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            notifications: true,
            poll_interval: Duration::from_secs(1),
            release_timeout: Duration::from_secs(30),
            subscription_retry: Duration::from_secs(60),
            migrate: true,
            limits: StoreLimits::default(),
            append_transactions: DEFAULT_APPEND_TRANSACTIONS,
        }
    }
}

impl PgOptions {
    /// Sets [`max_connections`](Self::max_connections) (at least 1).
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets [`acquire_timeout`](Self::acquire_timeout).
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`notifications`](Self::notifications).
    #[must_use]
    pub fn notifications(mut self, enabled: bool) -> Self {
        self.notifications = enabled;
        self
    }

    /// Sets [`poll_interval`](Self::poll_interval) (at least 1 ms).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets [`release_timeout`](Self::release_timeout).
    #[must_use]
    pub fn release_timeout(mut self, timeout: Duration) -> Self {
        self.release_timeout = timeout;
        self
    }

    /// Sets [`subscription_retry`](Self::subscription_retry).
    #[must_use]
    pub fn subscription_retry(mut self, retry: Duration) -> Self {
        self.subscription_retry = retry;
        self
    }

    /// Sets [`migrate`](Self::migrate).
    #[must_use]
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Sets [`limits`](Self::limits).
    #[must_use]
    pub fn limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`append_transactions`](Self::append_transactions) (at least 1).
    #[must_use]
    pub fn append_transactions(mut self, transactions: usize) -> Self {
        self.append_transactions = transactions.max(1);
        self
    }
}

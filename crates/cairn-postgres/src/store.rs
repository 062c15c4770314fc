//! [`PgStore`]: the handle, how it opens, and the [`EventStore`] implementation, which
//! delegates the write path to `append.rs` and the read path to `read.rs`.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cairn_core::subscription::{catch_up_all, catch_up_stream};
use cairn_core::{
    AllPage, AppendResult, EventStore, ExpectedRevision, Position, ReadAll, ReadError, ReadStream,
    StorageError, StorageErrorKind, StoreLimits, StreamAppend, StreamInfo, StreamMetadata,
    StreamName, StreamPage, SubscribeAll, SubscribeStream, Subscription, WriteError,
    validate_appends,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::combine::Combiner;
use crate::error::{ConnectError, SchemaError, redact_url, storage};
use crate::notify::{PgSignal, spawn_listener, spawn_notifier};
use crate::options::PgOptions;
use crate::parking::{Parked, spawn_reaper};
use crate::schema::{SCHEMA_VERSION, migrate, schema_version};
use crate::{append, combine, lifecycle, read};

/// How long a pooled connection sits idle before it is pinged when next acquired.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(10);

/// An event store in a PostgreSQL database. Cheap to clone: clones share one connection
/// pool and one notification listener.
///
/// See the [crate documentation](crate) for the schema, how `$all` stays gap-safe, and
/// the tables an application writes in its own transactions.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) inner: Arc<Inner>,
    /// Whether reads retry failures a reconnect may cure (set on the handles that
    /// subscriptions read through, so that they survive a dropped connection).
    retry_reads: bool,
    /// Set on the handle a subscription to `$all` reads through, once one of its reads
    /// reached the end with nothing held back (the subscription is live), and cleared by
    /// a full page (it fell behind): while set, a read that finds released events returns
    /// them without waiting for held-back ones (see `read::read_all`). Written and read by
    /// that subscription's reads only.
    pub(crate) live: Option<Arc<AtomicBool>>,
}

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    /// The pool's connections that appends keep between them (see `parking.rs`).
    pub(crate) parked: Arc<Parked>,
    /// Concurrent appends waiting to share a transaction (see `combine.rs`).
    pub(crate) combiner: Combiner,
    pub(crate) options: PgOptions,
    /// The connection string without its password, for messages.
    url: String,
    /// Bumped after every commit of this process and on every notification; live
    /// subscriptions wait on it, and so do `$all` reads waiting for the release horizon.
    /// Written by writers and the listener task.
    pub(crate) changes: watch::Sender<u64>,
    /// Asks the notifier task to send a `NOTIFY`; written by writers after commit.
    notify_requests: Arc<Notify>,
    /// The listener, the notifier and the reaper of parked connections, aborted when the
    /// last handle drops.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` with the default options, applies the schema
    /// migrations, and starts listening for commit notifications.
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ConnectError::InvalidUrl`], [`ConnectError::Unreachable`] (naming the URL without
    /// its password, and the cause), or [`ConnectError::Schema`] when the database is at a
    /// newer schema version than this build or a migration failed.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::connect_with(url, PgOptions::default()).await
    }

    /// Connects as [`connect`](Self::connect) does, with `options`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with(url: &str, options: PgOptions) -> Result<Self, ConnectError> {
        let redacted = redact_url(url);
        let connect =
            PgConnectOptions::from_str(url).map_err(|source| ConnectError::InvalidUrl {
                url: redacted.clone(),
                source,
            })?;
        // One connection first, so that an unreachable database is reported with its cause
        // (the pool would only report that it timed out); it then runs the migrations.
        let unreachable = |source| ConnectError::Unreachable {
            url: redacted.clone(),
            source,
        };
        let mut conn = tokio::time::timeout(
            options.acquire_timeout,
            PgConnection::connect_with(&connect),
        )
        .await
        .map_err(|_| {
            unreachable(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {:?}", options.acquire_timeout),
            )))
        })?
        .map_err(unreachable)?;
        let schema = async {
            if options.migrate {
                migrate(&mut conn).await?;
            } else {
                let found = schema_version(&mut conn).await?;
                if found > SCHEMA_VERSION {
                    return Err(SchemaError::NewerThanSupported {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
            Ok(())
        }
        .await;
        // Closing is a courtesy to the server; the connection is dropped either way.
        let _ = conn.close().await;
        if let Err(source) = schema {
            return Err(ConnectError::Schema {
                url: redacted,
                source,
            });
        }
        // A connection is checked with a ping only when it sat idle for a while (when it is
        // most likely to have been dropped): a ping on every acquire would cost every append
        // a round trip. A connection that died since its last use fails its next operation
        // with an `Unavailable` error, which appends may retry (they are idempotent).
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= IDLE_BEFORE_PING {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(connect.clone());

        let (changes, _) = watch::channel(0);
        let notify_requests = Arc::new(Notify::new());
        let parked = Parked::new(pool.clone());
        let mut tasks = vec![spawn_reaper(parked.clone())];
        if options.notifications {
            tasks.push(spawn_notifier(parked.clone(), notify_requests.clone()));
            tasks.push(spawn_listener(connect, changes.clone()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                parked,
                combiner: Combiner::new(
                    options.append_transactions,
                    tokio::runtime::Handle::current(),
                ),
                options,
                url: redacted,
                changes,
                notify_requests,
                tasks: Mutex::new(tasks),
            }),
            retry_reads: false,
            live: None,
        })
    }

    /// The connection pool, for the application's own queries and transactions (begin one
    /// with [`begin`](Self::begin) to use [`append_in_tx`](Self::append_in_tx)).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &PgOptions {
        &self.inner.options
    }

    /// Begins a transaction on the store's pool.
    ///
    /// # Errors
    ///
    /// A storage error when no connection could be had (for example
    /// [`Unavailable`](StorageErrorKind::Unavailable) when the pool stayed exhausted for
    /// [`PgOptions::acquire_timeout`]).
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, StorageError> {
        self.inner
            .pool
            .begin()
            .await
            .map_err(|error| self.storage("beginning a transaction", error))
    }

    /// Appends to one or more streams inside the caller's transaction, so that the
    /// application's own writes and the events commit (or roll back) together.
    ///
    /// Works like [`append_multi`](EventStore::append_multi) (expectations, idempotent
    /// retries, typed refusals), with three differences that follow from the caller owning
    /// the transaction:
    ///
    /// - the events become visible, and their positions become final, only when the caller
    ///   commits; if it rolls back they never existed (their positions are never reused);
    /// - a refused append is undone back to where it started (a savepoint), so the
    ///   caller's transaction stays usable;
    /// - the streams written stay locked until the caller commits or rolls back, so keep
    ///   the transaction short. Readers of `$all` also wait for it: no event committed
    ///   after it started is handed to them before it ends (see the crate docs, "Gap
    ///   safety").
    ///
    /// Live subscriptions of every process are woken by a `NOTIFY` sent with the commit.
    ///
    /// # Errors
    ///
    /// As [`EventStore::append_multi`].
    pub async fn append_in_tx(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, WriteError> {
        validate_appends(&appends, self.inner.options.limits)?;
        let results = append::append_on(self, tx, &appends, true).await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::notify::CHANNEL)
            .execute(&mut **tx)
            .await
            .map_err(|error| self.storage("notifying subscribers", error))?;
        Ok(results)
    }

    /// Closes the pool, waiting for connections in use to be returned; later operations
    /// fail with a [`Stopped`](StorageErrorKind::Stopped) storage error.
    pub async fn close(&self) {
        self.inner.parked.close();
        self.inner.pool.close().await;
    }

    /// Maps a database failure during `doing` onto the contract's storage error.
    pub(crate) fn storage(&self, doing: &str, error: sqlx::Error) -> StorageError {
        storage(doing, error, self.inner.options.acquire_timeout)
    }

    /// Tells live subscriptions, here and in other processes, that something committed.
    pub(crate) fn signal_commit(&self) {
        self.inner
            .changes
            .send_modify(|generation| *generation += 1);
        if self.inner.options.notifications {
            self.inner.notify_requests.notify_one();
        }
    }

    fn signal(&self) -> PgSignal {
        PgSignal {
            changes: self.inner.changes.subscribe(),
            poll_interval: self.inner.options.poll_interval,
        }
    }

    /// A handle whose reads retry failures a reconnect may cure, for one subscription.
    fn for_subscriptions(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            retry_reads: true,
            live: Some(Arc::new(AtomicBool::new(false))),
        }
    }

    /// Runs a read, retrying it on this handle when the failure may be cured by a new
    /// connection, for at most [`PgOptions::subscription_retry`].
    async fn read<T, F, Fut>(&self, mut run: F) -> Result<T, ReadError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ReadError>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            match run().await {
                Err(ReadError::Storage(error))
                    if self.retry_reads
                        && retryable(&error)
                        && started.elapsed() < self.inner.options.subscription_retry =>
                {
                    tracing::debug!(%error, "a subscription's read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }
}

impl PgStore {
    /// Appends `appends` (validated) in a transaction of its own on a parked or pooled
    /// connection, and wakes subscribers once it committed.
    pub(crate) async fn append_alone(
        &self,
        appends: &[StreamAppend],
    ) -> Result<Vec<AppendResult>, WriteError> {
        let mut conn = self
            .inner
            .parked
            .acquire()
            .await
            .map_err(|error| self.storage("appending", error))?;
        let appended = append::append_on(self, &mut conn, appends, false).await;
        // The append ran to its end. After a storage error the connection may be broken:
        // the pool checks it; otherwise it is parked for the next append. (A cancelled
        // append drops its connection into the pool, which checks it too.)
        if matches!(appended, Err(WriteError::Storage(_))) {
            drop(conn);
        } else {
            self.inner.parked.park(conn);
        }
        let results = appended?;
        self.signal_commit();
        Ok(results)
    }
}

fn retryable(error: &StorageError) -> bool {
    matches!(
        error.kind(),
        StorageErrorKind::Unavailable | StorageErrorKind::Io
    )
}

#[async_trait]
impl EventStore for PgStore {
    async fn append_multi(
        &self,
        mut appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, WriteError> {
        validate_appends(&appends, self.inner.options.limits)?;
        if appends.len() == 1
            && let Some(append) = appends.pop()
        {
            return combine::append(self, append)
                .await
                .map(|result| vec![result]);
        }
        self.append_alone(&appends).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        request: ReadStream,
    ) -> Result<StreamPage, ReadError> {
        self.read(|| read::read_stream(self, stream, &request))
            .await
    }

    async fn read_all(&self, request: ReadAll) -> Result<AllPage, ReadError> {
        self.read(|| read::read_all(self, &request)).await
    }

    fn subscribe_all(&self, request: SubscribeAll) -> Subscription {
        catch_up_all(self.for_subscriptions(), request, self.signal())
    }

    fn subscribe_stream(&self, stream: StreamName, request: SubscribeStream) -> Subscription {
        catch_up_stream(self.for_subscriptions(), stream, request, self.signal())
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, ReadError> {
        self.read(|| read::stream_info(self, stream)).await
    }

    async fn list_streams(
        &self,
        after: Option<StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, ReadError> {
        self.read(|| read::list_streams(self, after.as_ref(), limit))
            .await
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamName,
        metadata: StreamMetadata,
    ) -> Result<(), WriteError> {
        lifecycle::set_metadata(self, stream, metadata).await?;
        self.signal_commit();
        Ok(())
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<(), WriteError> {
        lifecycle::delete(self, stream, expected, false).await?;
        self.signal_commit();
        Ok(())
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<(), WriteError> {
        lifecycle::delete(self, stream, expected, true).await?;
        self.signal_commit();
        Ok(())
    }

    async fn head_position(&self) -> Result<Option<Position>, ReadError> {
        self.read(|| read::head_position(self)).await
    }

    fn limits(&self) -> StoreLimits {
        self.inner.options.limits
    }
}

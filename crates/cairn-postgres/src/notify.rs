//! Waking live subscriptions: a change counter bumped by this process's writes and by
//! `NOTIFY`s from every process, with polling as the fallback.
//!
//! - Writers of this process bump the counter after they commit, and ask the **notifier**
//!   task to send one `NOTIFY` on [`CHANNEL`]. The notify is sent after the commit, in its
//!   own statement, because a `NOTIFY` inside a transaction takes a cluster-wide lock at
//!   commit, which would make every append wait for the others; and it commits without
//!   waiting for a flush (`synchronous_commit` off for that transaction alone), being only
//!   a hint. Requests that pile up while one `NOTIFY` is on its way, or in the short pause
//!   after it, collapse into the next one. It runs on a connection kept between appends
//!   (see `parking.rs`), so it costs no extra round trip for the pool's check.
//! - The **listener** task holds its own connection, `LISTEN`s on [`CHANNEL`] and bumps the
//!   counter for every notification. When its connection drops it reconnects (with
//!   backoff) and bumps the counter, since notifications sent meanwhile are lost.
//! - A subscription waits on the counter or on [`PgOptions::poll_interval`], whichever comes
//!   first ([`PgSignal`]), so a lost notification delays it by one interval at most.
//!
//! Both tasks are aborted when the last handle of the store is dropped.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::subscription::CommitSignal;
use cairn_core::{StorageError, StorageErrorKind};
use futures::future::BoxFuture;
use sqlx::Executor;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::parking::Parked;

#[cfg(doc)]
use crate::PgOptions;

/// The channel every store of a database notifies and listens on.
pub const CHANNEL: &str = "cairn_events";

/// The least time between two `NOTIFY`s of one store: each is a transaction of its own that
/// takes the cluster-wide notification lock, so a writer committing thousands of appends a
/// second sends a few hundred. Subscribers in other processes wait this long at most
/// (those of this process are woken directly).
const NOTIFY_SPACING: Duration = Duration::from_millis(2);

/// One notification, in a transaction of its own that does not wait for its commit to be
/// flushed: a notification is a hint (a lost one costs a subscriber one poll interval), so
/// it need not hold a connection, and the cluster-wide notification lock, through a disk
/// flush.
const NOTIFY: &str = "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')";

/// The longest the listener waits between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Starts the notifier: sends one `NOTIFY` per batch of requests on `requests`, on a
/// connection taken from, and parked back with, those of the appends.
pub(crate) fn spawn_notifier(parked: Arc<Parked>, requests: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            requests.notified().await;
            let sent = match parked.acquire().await {
                Ok(mut conn) => {
                    let sent = conn.execute(sqlx::query(NOTIFY).bind(CHANNEL)).await;
                    if sent.is_ok() {
                        parked.park(conn);
                    }
                    sent.map(drop)
                }
                Err(error) => Err(error),
            };
            if let Err(error) = sent {
                // Subscribers elsewhere fall back to polling; nothing is lost.
                tracing::debug!(%error, "could not send a commit notification");
            }
            // Commits during the pause are covered by the next notification.
            tokio::time::sleep(NOTIFY_SPACING).await;
        }
    })
}

/// Starts the listener: bumps `changes` on every notification and after every reconnect.
pub(crate) fn spawn_listener(
    connect: PgConnectOptions,
    changes: watch::Sender<u64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let bump = || changes.send_modify(|generation| *generation += 1);
        let mut backoff = Duration::from_millis(10);
        loop {
            let listener = async {
                // A pool of one: PgListener uses it to reconnect after a lost connection.
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_lazy_with(connect.clone());
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            }
            .await;
            let mut listener = match listener {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::debug!(%error, "cannot listen for commit notifications; retrying");
                    bump();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            // Anything committed while we were not listening is found by the reads this
            // wakes.
            bump();
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => {
                        backoff = Duration::from_millis(10);
                        bump();
                    }
                    // The connection dropped and was re-established: notifications sent in
                    // between are lost, so wake everyone to read.
                    Ok(None) => bump(),
                    Err(error) => {
                        tracing::debug!(%error, "commit notification listener failed; reconnecting");
                        bump();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        break;
                    }
                }
            }
        }
    })
}

/// A subscription's wake-up: the change counter, or the poll interval, whichever first.
pub(crate) struct PgSignal {
    pub(crate) changes: watch::Receiver<u64>,
    pub(crate) poll_interval: Duration,
}

impl CommitSignal for PgSignal {
    fn mark_seen(&mut self) {
        self.changes.borrow_and_update();
    }

    fn changed(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            tokio::select! {
                changed = self.changes.changed() => changed.map_err(|_| {
                    StorageError::new(StorageErrorKind::Stopped, "the PostgreSQL store was dropped")
                }),
                () = tokio::time::sleep(self.poll_interval) => Ok(()),
            }
        })
    }
}

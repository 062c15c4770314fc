//! Connections kept between appends: a pooled connection that an append used is parked
//! here for the next append instead of going back to the pool.
//!
//! Giving a connection back to the sqlx pool costs a round trip: the pool pings it on the
//! way back, in a task of its own, to flush whatever a cancelled operation left behind. An
//! append that ran to its end leaves nothing behind, so the store parks its connection in
//! [`Parked`] and the next append takes it from there, with neither the ping nor the
//! pool's hand-off. Parked connections stay checked out of the pool, so they must not
//! keep anyone else waiting:
//!
//! - a connection is parked only while the pool could still open another one
//!   ([`PgOptions::max_connections`] not reached) or has an idle one; at the limit it goes
//!   back to the pool, where the next waiter gets it;
//! - the **reaper** task gives back every connection parked for longer than [`LINGER`],
//!   so a burst of appends does not hold the pool's connections once it is over;
//! - an append that did not run to its end (cancelled, or failed on the connection) drops
//!   its connection into the pool as before, which checks it;
//! - [`Parked::close`] gives every parked connection back, and parks nothing afterwards.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[cfg(doc)]
use crate::PgOptions;

/// The longest a connection stays parked without being used before it goes back to the
/// pool.
pub(crate) const LINGER: Duration = Duration::from_millis(10);

/// The connections parked between appends. Appends push and pop (the most recently parked
/// first); the reaper takes those parked for longer than [`LINGER`]; `close` takes all.
pub(crate) struct Parked {
    pool: PgPool,
    state: Mutex<State>,
    /// Wakes the reaper when a connection is parked while none was.
    parked: Notify,
}

struct State {
    /// Each with the time it was parked, the oldest first.
    connections: Vec<(PoolConnection<Postgres>, Instant)>,
    closed: bool,
}

impl Parked {
    pub(crate) fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            state: Mutex::new(State {
                connections: Vec::new(),
                closed: false,
            }),
            parked: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for an append: the most recently parked one, else one from the pool.
    ///
    /// # Errors
    ///
    /// As [`PgPool::acquire`] (for example when the pool stayed exhausted for its
    /// acquire timeout).
    pub(crate) async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let parked = self.state().connections.pop();
        match parked {
            Some((connection, _)) => Ok(connection),
            None => self.pool.acquire().await,
        }
    }

    /// Takes back `connection`, whose last operation ran to its end: parks it, or gives it
    /// back to the pool when the pool is at its limit with nothing idle (someone may be
    /// waiting for it) or closed.
    pub(crate) fn park(&self, connection: PoolConnection<Postgres>) {
        let at_limit = self.pool.size() >= self.pool.options().get_max_connections()
            && self.pool.num_idle() == 0;
        let mut state = self.state();
        if state.closed || at_limit || self.pool.is_closed() {
            drop(state);
            drop(connection);
            return;
        }
        let was_empty = state.connections.is_empty();
        state.connections.push((connection, Instant::now()));
        drop(state);
        if was_empty {
            self.parked.notify_one();
        }
    }

    /// Gives back to the pool every connection parked at or before `before`.
    fn release_parked_before(&self, before: Instant) -> bool {
        let mut state = self.state();
        let stale = state
            .connections
            .iter()
            .take_while(|(_, parked)| *parked <= before)
            .count();
        let released: Vec<_> = state.connections.drain(..stale).collect();
        let empty = state.connections.is_empty();
        drop(state);
        // Dropping a pooled connection returns it to the pool.
        drop(released);
        empty
    }

    /// Gives every parked connection back to the pool and parks nothing from now on.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        let released = std::mem::take(&mut state.connections);
        drop(state);
        drop(released);
    }
}

/// Starts the reaper: while connections are parked, gives back every [`LINGER`] those
/// parked for longer.
pub(crate) fn spawn_reaper(parked: Arc<Parked>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            parked.parked.notified().await;
            loop {
                tokio::time::sleep(LINGER).await;
                let before = Instant::now()
                    .checked_sub(LINGER)
                    .unwrap_or_else(Instant::now);
                if parked.release_parked_before(before) {
                    break;
                }
            }
        }
    })
}

//! Group commit on the client: appends that run concurrently on one store share a
//! transaction.
//!
//! Every append transaction costs the server a commit and a WAL flush, and a one-event
//! append costs it more CPU (locks, checks, indexes) than the same event in a batch. So an
//! append to one stream, outside the caller's transaction, goes through the [`Combiner`]:
//!
//! - one of more than [`MAX_EVENTS_TO_COMBINE`] events runs alone, uncounted;
//! - one that finds fewer than [`PgOptions::append_transactions`] append transactions in
//!   flight runs at once (`cairn_try_append_event` for one event, a batch of one for
//!   several): a lone writer does not wait;
//! - otherwise it joins the queue and waits. The next append transaction to start, when
//!   one in flight ends, takes every queued append (in queue order, up to
//!   [`MAX_COMBINED_EVENTS`] events and [`MAX_COMBINED_BYTES`] bytes) and writes them in
//!   one call of `cairn_append_batch`, in one transaction ([`append::write_batch`]).
//!   Each append is judged on its own there; the ones refused or already recorded are
//!   then told apart as a lone append's are (`append::find_retry`).
//!
//! A batch never waits for a stream's lock: it tries each, and the appends to a stream
//! that another transaction holds (a writer of that stream, an application's transaction
//! that appended to it and has not ended) come back busy and run on their own, outside the
//! count of transactions in flight, where they wait for the lock (`append::append_on`).
//! So a held stream holds up only its own writers, as without combining, and never the
//! queue.
//!
//! A transaction in flight holds a [`Turn`]. A lone append holds its turn in its own
//! future; when it ends (or is dropped) with appends queued, the turn passes to a task that
//! runs batches until the queue is empty, so no caller's cancellation can strand another
//! caller's append. A queued append whose caller dropped its future before a batch took it
//! is skipped; once taken, it is written, and whether it committed is unknown to the
//! caller that left, as for a lone append cancelled mid-call.
//!
//! Acknowledgements follow the commit: a batch's call returns after its transaction
//! committed (autocommit), and only then are its results sent. When the call fails with an
//! error the server reported for the statement (a deadlock, a unique violation from a
//! concurrent writer of the same event id, ...), the transaction rolled back and nothing
//! of the batch committed, so each of its appends runs alone, in queue order, as if it had
//! just arrived. When the connection or the server failed, whether the batch committed is
//! unknown, and every append of the batch gets the storage error (appends are idempotent:
//! a retry returns the original result if it had committed).

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use cairn_core::{
    AppendResult, EventData, StorageError, StorageErrorKind, StreamAppend, Uuid, WriteError,
};
use tokio::sync::oneshot;

use crate::append::{self, Outcome};
use crate::error::sqlstate;
use crate::store::PgStore;

#[cfg(doc)]
use crate::PgOptions;

/// The most events one combined transaction writes. An append of more runs alone.
pub const MAX_COMBINED_EVENTS: usize = 1024;

/// The most bytes of events (as [`EventData::size`](cairn_core::EventData::size) counts
/// them) one combined transaction writes, unless its first append alone has more. A batch
/// travels in one message, and PostgreSQL takes none of 1 GiB or more: a thousand events
/// near the default size limit would not fit, and each batch's arrays are held in memory
/// on both sides.
pub const MAX_COMBINED_BYTES: usize = 16 << 20;

/// The most events of an append that is combined. Larger appends already spread their
/// transaction over many events; they run alone, beside the combined ones, as before
/// (side runs of 4 writers of 100 events read fewer events/s when those were combined).
pub const MAX_EVENTS_TO_COMBINE: usize = 32;

/// The queue of appends waiting for a transaction, and the count of those in flight.
pub(crate) struct Combiner {
    /// [`PgOptions::append_transactions`].
    limit: usize,
    /// Written by appends entering, by turns ending and by batch tasks taking a batch.
    state: Mutex<State>,
    /// The runtime the store was opened in, where batch tasks run.
    runtime: tokio::runtime::Handle,
}

struct State {
    /// Append transactions in flight: lone appends and batch tasks, each holding a
    /// [`Turn`]. Appends queue only when it is at the limit, and a turn that ends with
    /// appends queued passes to a batch task, so the queue is empty whenever this is
    /// below the limit.
    in_flight: usize,
    queue: VecDeque<Queued>,
}

/// Where a queued append's result comes.
type Reply = oneshot::Receiver<Result<AppendResult, WriteError>>;

/// An append waiting for a batch, with where its result goes.
struct Queued {
    append: StreamAppend,
    reply: oneshot::Sender<Result<AppendResult, WriteError>>,
}

impl Combiner {
    pub(crate) fn new(limit: usize, runtime: tokio::runtime::Handle) -> Self {
        Self {
            limit: limit.max(1),
            state: Mutex::new(State {
                in_flight: 0,
                queue: VecDeque::new(),
            }),
            runtime,
        }
    }

    /// Takes a place among the transactions in flight for `append` (`Ok`: it runs alone,
    /// and its caller makes the [`Turn`]), or queues it (`Err`: where its result comes).
    fn enter(&self, append: StreamAppend) -> Result<StreamAppend, Reply> {
        let mut state = self.state();
        if state.in_flight < self.limit {
            state.in_flight += 1;
            return Ok(append);
        }
        let (reply, result) = oneshot::channel();
        state.queue.push_back(Queued { append, reply });
        Err(result)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A place among the append transactions in flight. Dropping it ends the transaction's
/// claim: the place passes to a batch task when appends are queued.
struct Turn {
    store: PgStore,
    /// Whether this turn is a batch task's, which gives its place back itself once the
    /// queue is empty ([`Turn::take_batch`]).
    batch: bool,
    /// Set once the place was given back.
    released: bool,
}

impl Turn {
    /// Takes the next batch off the queue: queued appends in order, skipping those whose
    /// caller left, up to [`MAX_COMBINED_EVENTS`] events and [`MAX_COMBINED_BYTES`] bytes
    /// (at least one append), and
    /// stopping before an append that shares an event id with one already taken (it
    /// starts the next batch, where it finds the other recorded). With nothing queued,
    /// gives the place back and returns `None`.
    fn take_batch(&mut self) -> Option<Vec<Queued>> {
        let mut state = self.store.inner.combiner.state();
        let mut batch: Vec<Queued> = Vec::new();
        let mut events = 0;
        let mut bytes = 0;
        let mut ids: HashSet<Uuid> = HashSet::new();
        while let Some(next) = state.queue.front() {
            if next.reply.is_closed() {
                state.queue.pop_front();
                continue;
            }
            let count = next.append.events.len();
            let size: usize = next.append.events.iter().map(EventData::size).sum();
            if !batch.is_empty()
                && (events + count > MAX_COMBINED_EVENTS
                    || bytes + size > MAX_COMBINED_BYTES
                    || next.append.events.iter().any(|e| ids.contains(&e.id)))
            {
                break;
            }
            ids.extend(next.append.events.iter().map(|e| e.id));
            events += count;
            bytes += size;
            batch.extend(state.queue.pop_front());
        }
        if batch.is_empty() {
            state.in_flight = state.in_flight.saturating_sub(1);
            self.released = true;
            return None;
        }
        Some(batch)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let combiner = &self.store.inner.combiner;
        let mut state = combiner.state();
        if state.queue.is_empty() {
            state.in_flight = state.in_flight.saturating_sub(1);
            return;
        }
        if self.batch {
            // A batch task ended before the queue did: it panicked, or the runtime is
            // shutting down. The queued appends were never sent; they fail (their callers
            // see the reply dropped) rather than wait for a task that may never run. The
            // batch it was writing, if any, may have committed: its callers cannot be told
            // apart from these, and are told the outcome is unknown (see `answer`).
            state.in_flight = state.in_flight.saturating_sub(1);
            let abandoned = std::mem::take(&mut state.queue);
            drop(state);
            drop(abandoned);
            return;
        }
        drop(state);
        let turn = Turn {
            store: self.store.clone(),
            batch: true,
            released: false,
        };
        // Runs to its end by itself; its results go to the callers through their replies.
        drop(combiner.runtime.spawn(run_batches(turn)));
    }
}

/// Appends `append` (validated, to one stream) on `store`: at once when fewer than the
/// limit of append transactions are in flight, else combined with other queued appends.
pub(crate) async fn append(
    store: &PgStore,
    append: StreamAppend,
) -> Result<AppendResult, WriteError> {
    if append.events.len() > MAX_EVENTS_TO_COMBINE {
        return one(store.append_alone(std::slice::from_ref(&append)).await);
    }
    let append = match store.inner.combiner.enter(append) {
        Ok(append) => append,
        Err(result) => return answer(result).await,
    };
    let turn = Turn {
        store: store.clone(),
        batch: false,
        released: false,
    };
    // The lone append does not wait for a held stream, so this transaction never holds
    // its turn, and the appends queued behind it, while another transaction holds the
    // stream. If it is held, the append leaves the turn and waits for it on its own.
    if let [event] = append.events.as_slice() {
        if let Some(result) = try_alone(store, &append, event).await {
            drop(turn);
            store.signal_commit();
            return Ok(result);
        }
        drop(turn);
        return one(store.append_alone(std::slice::from_ref(&append)).await);
    }
    // Several events: a batch of one, which does not wait for a held stream either.
    let (reply, result) = oneshot::channel();
    let alone = run_batch(store, vec![Queued { append, reply }]).await;
    drop(turn);
    run_alone(store, alone).await;
    answer(result).await
}

/// Writes a lone single-event append if its stream is free: `Some` with its result when it
/// committed; `None` when the stream is held, or when the call failed (a refusal, a
/// reused id, a lost connection), which leaves the caller to run the append on its own:
/// that path tells a refusal from a retry, and an append is idempotent by its ids, so
/// running it again after a lost connection cannot write it twice.
async fn try_alone(
    store: &PgStore,
    append: &StreamAppend,
    event: &EventData,
) -> Option<AppendResult> {
    let mut conn = store.inner.parked.acquire().await.ok()?;
    match append::try_write_event(&mut conn, append, event).await {
        Ok(written) => {
            store.inner.parked.park(conn);
            written
        }
        Err(error) => {
            tracing::debug!(%error, "a lone append failed; it runs again on its own");
            if rolled_back(&error) {
                store.inner.parked.park(conn);
            }
            None
        }
    }
}

/// The result a queued append was sent. A reply dropped unsent comes from a task that
/// ended before answering (the runtime shutting down, a panic): it may have been queued
/// still, or its batch's call may have been on its way, so whether it committed is
/// unknown, and a retry with the same ids tells.
async fn answer(result: Reply) -> Result<AppendResult, WriteError> {
    result.await.unwrap_or_else(|_| {
        Err(WriteError::Storage(StorageError::new(
            StorageErrorKind::Unavailable,
            "the store stopped before the append was answered; whether it committed is \
             unknown (retry it with the same event ids)",
        )))
    })
}

/// The result of an append of one part.
fn one(results: Result<Vec<AppendResult>, WriteError>) -> Result<AppendResult, WriteError> {
    results?.pop().ok_or_else(|| {
        WriteError::Storage(StorageError::new(
            StorageErrorKind::Corruption,
            "an append of one stream returned no result",
        ))
    })
}

/// A batch task: runs batches off the queue until it is empty.
async fn run_batches(mut turn: Turn) {
    while let Some(batch) = turn.take_batch() {
        let alone = run_batch(&turn.store, batch).await;
        if !alone.is_empty() {
            // Outside the turn: they may wait for a lock.
            let store = turn.store.clone();
            let runtime = &turn.store.inner.combiner.runtime;
            drop(runtime.spawn(async move { run_alone(&store, alone).await }));
        }
        // The callers just answered are ready to run, and most append again at once: let
        // them queue before the next batch is taken, or it would leave them for the one
        // after (a transaction, and a WAL flush, for a handful of appends).
        tokio::task::yield_now().await;
    }
}

/// Runs `appends` one after the other, each in a transaction of its own (where it waits
/// for its stream's lock), and answers each. Those whose caller left are skipped: none of
/// them was written.
async fn run_alone(store: &PgStore, appends: Vec<Queued>) {
    for queued in appends {
        if queued.reply.is_closed() {
            continue;
        }
        let appended = store
            .append_alone(std::slice::from_ref(&queued.append))
            .await;
        let _ = queued.reply.send(one(appended));
    }
}

/// Writes one batch and answers each of its appends, but for those it returns, in queue
/// order, which are still to run on their own ([`run_alone`]): appends to a stream another
/// transaction holds, and every append of a batch whose call the server refused (nothing
/// of it committed).
async fn run_batch(store: &PgStore, batch: Vec<Queued>) -> Vec<Queued> {
    let mut conn = match store.inner.parked.acquire().await {
        Ok(conn) => conn,
        Err(error) => {
            let error = WriteError::Storage(store.storage("appending", error));
            for queued in batch {
                let _ = queued.reply.send(Err(error.clone()));
            }
            return Vec::new();
        }
    };
    let appends: Vec<&StreamAppend> = batch.iter().map(|q| &q.append).collect();
    let written = append::write_batch(&mut conn, &appends).await;
    drop(appends);
    let outcomes = match written {
        Ok(outcomes) => outcomes,
        Err(error) if rolled_back(&error) => {
            // The server refused the call: its transaction rolled back, and nothing of the
            // batch committed. Each append runs alone, in queue order.
            tracing::debug!(%error, "a combined append failed; its appends run alone");
            store.inner.parked.park(conn);
            return batch;
        }
        Err(error) => {
            // The connection or the server failed: the batch may or may not have
            // committed. The connection goes back to the pool, which checks it.
            let error = WriteError::Storage(store.storage("appending", error));
            drop(conn);
            for queued in batch {
                let _ = queued.reply.send(Err(error.clone()));
            }
            return Vec::new();
        }
    };
    if outcomes.iter().any(|o| matches!(o, Outcome::Applied(_))) {
        store.signal_commit();
    }
    // The applied ones first: the others may take a query each to settle.
    let mut unsettled = Vec::new();
    let mut alone = Vec::new();
    for (queued, outcome) in batch.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Applied(result) => {
                let _ = queued.reply.send(Ok(result));
            }
            Outcome::Busy => alone.push(queued),
            other => unsettled.push((queued, other)),
        }
    }
    let mut healthy = true;
    for (queued, outcome) in unsettled {
        match settle(store, &mut conn, &queued.append, outcome).await {
            Some(settled) => {
                healthy &= !matches!(settled, Err(WriteError::Storage(_)));
                let _ = queued.reply.send(settled);
            }
            None => alone.push(queued),
        }
    }
    if healthy {
        store.inner.parked.park(conn);
    }
    alone
}

/// The result of an append the batch refused or found recorded: the original result when
/// it is a retry of a recorded append, else its refusal ([`WriteError::EventIdReused`] for
/// ids recorded with other content); `None` when it is to run on its own after all (its
/// ids were recorded when the batch looked and are gone now, with a stream deleted
/// meanwhile: it is a new append).
async fn settle(
    store: &PgStore,
    conn: &mut sqlx::PgConnection,
    append: &StreamAppend,
    outcome: Outcome,
) -> Option<Result<AppendResult, WriteError>> {
    let parts = std::slice::from_ref(append);
    let retry = match append::find_retry(store, conn, parts).await {
        Ok(retry) => retry,
        Err(error) => return Some(Err(error)),
    };
    match (retry, outcome) {
        (Some(results), _) => Some(one(Ok(results))),
        (None, Outcome::Refused(refusal)) => Some(Err(refusal)),
        (None, _) => None,
    }
}

/// Whether a failed call surely rolled back with the connection still usable: the server
/// reported an error for the statement (it ran in autocommit, so its transaction aborted),
/// and not one about the connection, resources or the server itself.
fn rolled_back(error: &sqlx::Error) -> bool {
    sqlstate(error).is_some_and(|code| rolls_back(&code))
}

/// Whether an error with SQLSTATE `code`, reported for a statement in autocommit, leaves
/// its transaction surely rolled back and the connection usable.
fn rolls_back(code: &str) -> bool {
    // Connection exceptions, insufficient resources, operator intervention (a terminated
    // backend), system and internal errors, and "statement completion unknown".
    code != "40003"
        && !["08", "53", "57", "58", "XX"]
            .iter()
            .any(|class| code.starts_with(class))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_errors_roll_back_and_connection_errors_leave_the_outcome_unknown() {
        assert!(rolls_back("40P01"), "a deadlock rolls back");
        assert!(rolls_back("23505"), "a unique violation rolls back");
        assert!(
            !rolls_back("57P01"),
            "a terminated backend may have committed"
        );
        assert!(!rolls_back("08006"), "a lost connection may have committed");
        assert!(
            !rolls_back("40003"),
            "a statement whose completion is unknown"
        );
        assert!(!rolled_back(&sqlx::Error::PoolClosed));
    }
}

//! One subscription: a consumer of a group, with two tasks of its own and the state they
//! share with the deliveries it hands out.
//!
//! - The **reader** ([`reader`]) owns a connection of its own for `XREADGROUP ... BLOCK`
//!   (a blocking read holds its connection, so nothing else may wait behind it). It reads
//!   new entries while the subscription has free slots, takes over the entries of dead
//!   consumers ([`claims::reclaim`]), and when its connection drops it connects again and
//!   hands out again everything the subscription had handed out before the break.
//! - The **keeper** ([`keeper`]) works on the transport's shared connection: it redelivers
//!   nacked entries (at once, or when their delay is up), refreshes the idle time of every
//!   entry the subscription holds so that no other consumer reclaims them, and tidies
//!   the stream now and then.
//!
//! **Architecture Invariant:** an entry takes one of the subscription's `prefetch` slots
//! exactly while it is in [`State::outstanding`] as [`Held::Handed`] or
//! [`Held::Redelivering`]: from the read, claim or redelivery that handed it out until it
//! is answered (its ack is queued, it is nacked with a delay) or its redelivery finds it
//! gone. An entry whose ack is on its way stays in `outstanding` as [`Held::Acking`]
//! without a slot, as a broker's prefetch counts an ack once it is sent: the next read
//! does not wait for the `XACK`'s reply. When that `XACK` fails, the entry goes the way
//! of a nack with no delay left, through the keeper to the reader, which takes a slot for
//! it again. Entries waiting out a nack delay (in the keeper, then in [`Shared::due`]) stay
//! in `outstanding` as [`Held::Delayed`], without a slot, so that a reclaim knows them as
//! the subscription's own; the reader takes a slot for one only while it is still
//! `Delayed`.

mod claims;
pub(crate) mod keeper;
pub(crate) mod reader;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_bus::{Acknowledge, Delivery, TransportError};
use futures::Stream;
use futures::future::BoxFuture;
use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::DropGuard;

use crate::codec::{Entry, EntryId, EntryMap, Refused, read_entry};
use crate::error;
use crate::options::RedisOptions;

/// Where a subscription's deliveries go, each with its epoch: read by its
/// [`Subscription`] stream, written by its two tasks (the channel closes when both have
/// ended).
pub(crate) type Outbox = mpsc::UnboundedSender<Result<(u64, Delivery), TransportError>>;

/// What answers and the reader ask of the keeper.
#[derive(Debug)]
pub(crate) enum Command {
    /// Claim these entries again and hand them out (they keep their slots).
    Redeliver(Vec<EntryId>),
    /// Redeliver this entry when the instant comes (it gave its slot back); the keeper
    /// then moves it to [`Shared::due`] for the reader.
    Delay(EntryId, Instant),
}

/// Where one outstanding entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Handed out in the given epoch, not yet answered.
    Handed {
        /// The epoch of the delivery: answers from older epochs are stale.
        epoch: u64,
    },
    /// Its ack is on its way to the server; it gave its slot back when the ack was queued.
    Acking,
    /// Waiting out a nack delay (or, after a failed ack, for the reader to take a slot for
    /// it): in the keeper or in [`Shared::due`], without a slot.
    Delayed,
    /// Being claimed again to be handed out (by the keeper, or by the reader for a due or
    /// an untracked entry); it holds a slot.
    Redelivering,
}

/// The state the tasks and the answers share, behind [`Shared::state`].
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Bumped by the reader each time its connection was made anew; deliveries of older
    /// epochs are stale.
    pub(crate) epoch: u64,
    /// Every entry handed out and not yet settled, and where it stands: the
    /// [`Held::Handed`] and [`Held::Redelivering`] ones take a slot each, the
    /// [`Held::Acking`] and [`Held::Delayed`] ones hold none.
    pub(crate) outstanding: EntryMap<Held>,
}

/// What a subscription's tasks and deliveries share.
pub(crate) struct Shared {
    pub(crate) topic: Arc<str>,
    /// The stream key.
    pub(crate) key: String,
    pub(crate) group: String,
    /// This subscription's consumer name in the group (unique per subscription).
    pub(crate) consumer: String,
    /// The redacted URL, for errors.
    pub(crate) endpoint: Arc<str>,
    pub(crate) options: Arc<RedisOptions>,
    /// The transport's shared, self-reconnecting connection.
    pub(crate) connection: ConnectionManager,
    /// Locked briefly by answers, the reader and the keeper; never held across an await.
    pub(crate) state: Mutex<State>,
    /// `prefetch` slots: taken by the reader and the keeper before they hand out an entry,
    /// given back when it is answered (its ack queued, its nack delayed) or leaves
    /// [`State::outstanding`] otherwise.
    pub(crate) slots: Semaphore,
    /// To the keeper; sent to by answers and the reader.
    pub(crate) keeper: mpsc::UnboundedSender<Command>,
    /// Entries whose nack delay is up, waiting for a free slot: pushed by the keeper,
    /// taken by the reader (the one task that takes free slots).
    pub(crate) due: Mutex<Vec<EntryId>>,
    /// [`State::epoch`], readable without the lock: the stream drops deliveries of older
    /// epochs still queued when the connection dropped.
    pub(crate) epoch: AtomicU64,
    /// Acks waiting for the next `XACK`: pushed by answers, taken by the flush task.
    pub(crate) acks: Mutex<AckQueue>,
}

/// Acks gathered into one `XACK` each round trip: while one `XACK` is on its way, the
/// acks that arrive wait and go together in the next, so a busy consumer sends one
/// command per round trip instead of one per message, and a quiet one sends at once.
#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    waiting: Vec<(EntryId, oneshot::Sender<Result<(), TransportError>>)>,
    /// Whether a flush task is running; it takes `waiting` until it finds it empty.
    flushing: bool,
}

impl State {
    /// Settles `id` if its ack is on its way (it holds no slot): it leaves when the `XACK`
    /// was recorded, and waits to be handed out again when it failed. Says whether it was.
    fn settle_acking(&mut self, id: &EntryId, recorded: bool) -> bool {
        let Some(held) = self.outstanding.get_mut(id) else {
            return false;
        };
        if *held != Held::Acking {
            return false;
        }
        if recorded {
            self.outstanding.remove(id);
        } else {
            *held = Held::Delayed;
        }
        true
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn map_error(&self, operation: &str, error: redis::RedisError) -> TransportError {
        error::map(
            operation,
            &self.endpoint,
            self.options.response_timeout,
            error,
        )
    }

    /// Hands `entry` out as delivery number `attempt`, in `epoch`.
    pub(crate) fn deliver(
        self: &Arc<Self>,
        outbox: &Outbox,
        entry: Entry,
        attempt: u32,
        epoch: u64,
    ) {
        let answer = Answer {
            shared: Arc::clone(self),
            id: entry.id,
            epoch,
            answered: false,
        };
        let delivery = Delivery::new(
            Arc::clone(&self.topic),
            entry.message,
            attempt,
            Box::new(answer),
        );
        // When the stream is gone the delivery is dropped here, which nacks it.
        let _ = outbox.send(Ok((epoch, delivery)));
    }

    /// Reports an entry whose `cairn-meta` field cannot be read. It is not handed out and
    /// takes no slot; it stays pending, untracked and not refreshed, so that after
    /// `claim_idle` a consumer of the group takes it over (and one that knows its version
    /// handles it).
    pub(crate) fn refuse(&self, outbox: &Outbox, refused: Refused) {
        tracing::warn!(topic = %self.topic, group = %self.group, entry = %refused.id, reason = %refused.reason, "an entry cannot be read; it stays pending");
        let _ = outbox.send(Err(error::undecodable(
            &self.key,
            refused.id.to_string(),
            refused.reason,
        )));
    }

    /// Frees `count` slots.
    pub(crate) fn free_slots(&self, count: usize) {
        if count > 0 {
            self.slots.add_permits(count);
        }
    }

    /// After the reader's connection was made anew: every delivery handed out before is
    /// stale, and its entry is handed out again (as the next attempt).
    pub(crate) fn resync(&self) {
        let ids: Vec<EntryId> = {
            let mut state = self.lock();
            state.epoch += 1;
            self.epoch.store(state.epoch, Ordering::Release);
            state
                .outstanding
                .iter_mut()
                .filter(|(_, held)| matches!(held, Held::Handed { .. }))
                .map(|(id, held)| {
                    *held = Held::Redelivering;
                    *id
                })
                .collect()
        };
        if !ids.is_empty() {
            let _ = self.keeper.send(Command::Redeliver(ids));
        }
    }

    async fn ack(self: Arc<Self>, id: EntryId, epoch: u64) -> Result<(), TransportError> {
        {
            let mut state = self.lock();
            match state.outstanding.get_mut(&id) {
                Some(held @ Held::Handed { .. }) if *held == (Held::Handed { epoch }) => {
                    *held = Held::Acking;
                }
                _ => return Err(error::stale("ack")),
            }
        }
        // Answered: the slot is free for the next read, which need not wait for the
        // `XACK`'s round trip (see the invariant above).
        self.free_slots(1);
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
            acks.waiting.push((id, done));
            !std::mem::replace(&mut acks.flushing, true)
        };
        if lead {
            // A task of its own, so that a caller dropping its future cannot strand the
            // acks gathered behind it.
            tokio::spawn(Arc::clone(&self).flush_acks());
        }
        answer.await.unwrap_or_else(|_| Err(error::stale("ack")))
    }

    /// Sends the waiting acks, one `XACK` per round, until none are left.
    async fn flush_acks(self: Arc<Self>) {
        // The batch and the command are made once per flush task, then cleared and
        // refilled each round: a busy subscription's rounds are hundreds of acks, and
        // buffers that large cost the allocator more than small ones.
        let mut batch = Vec::new();
        let mut command = redis::Cmd::new();
        loop {
            {
                let mut acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
                if acks.waiting.is_empty() {
                    acks.flushing = false;
                    return;
                }
                std::mem::swap(&mut acks.waiting, &mut batch);
            }
            let mut connection = self.connection.clone();
            command.clear();
            command.arg("XACK").arg(&self.key).arg(&self.group);
            for (id, _) in &batch {
                command.arg(*id);
            }
            let acked = command.query_async::<i64>(&mut connection).await;
            match acked {
                Ok(_) => {
                    {
                        let mut state = self.lock();
                        for (id, _) in &batch {
                            state.settle_acking(id, true);
                        }
                    }
                    for (_, done) in batch.drain(..) {
                        let _ = done.send(Ok(()));
                    }
                }
                Err(cause) => {
                    // Not recorded: the messages come back, as the contract allows. They
                    // gave their slots back, so they go the way of a nack whose delay is
                    // up: the reader takes a slot for each before it hands it out again.
                    let ids: Vec<EntryId> = {
                        let mut state = self.lock();
                        batch
                            .iter()
                            .map(|(id, _)| *id)
                            .filter(|id| state.settle_acking(id, false))
                            .collect()
                    };
                    let now = Instant::now();
                    for id in ids {
                        let _ = self.keeper.send(Command::Delay(id, now));
                    }
                    for (_, done) in batch.drain(..) {
                        let _ = done.send(Err(self.map_error("ack", cause.clone())));
                    }
                }
            }
        }
    }

    fn nack(&self, id: EntryId, epoch: u64, delay: Option<Duration>) -> Result<(), TransportError> {
        let mut state = self.lock();
        match state.outstanding.get_mut(&id) {
            Some(held) if *held == (Held::Handed { epoch }) => match delay {
                Some(delay) if !delay.is_zero() => {
                    *held = Held::Delayed;
                    drop(state);
                    self.free_slots(1);
                    let _ = self.keeper.send(Command::Delay(id, Instant::now() + delay));
                }
                _ => {
                    *held = Held::Redelivering;
                    drop(state);
                    let _ = self.keeper.send(Command::Redeliver(vec![id]));
                }
            },
            _ => return Err(error::stale("nack")),
        }
        Ok(())
    }
}

/// Entries claimed by the `CLAIM` or `RECLAIM` script, each with its delivery count, and
/// those among them that cannot be read.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    pub(crate) entries: Vec<(Entry, u32)>,
    pub(crate) refused: Vec<Refused>,
}

/// Reads the reply of the `CLAIM` and `RECLAIM` scripts' entry lists: `{id, fields,
/// delivery count}` each.
pub(crate) fn read_claimed(value: Value) -> Claimed {
    let mut claimed = Claimed::default();
    let Value::Array(items) = value else {
        return claimed;
    };
    for item in items {
        let Value::Array(mut parts) = item else {
            continue;
        };
        let count = match parts.pop() {
            Some(Value::Int(n)) => u32::try_from(n).unwrap_or(u32::MAX),
            Some(_) => 1,
            None => continue,
        };
        match read_entry(Value::Array(parts)) {
            Some(Ok(entry)) => claimed.entries.push((entry, count.max(1))),
            Some(Err(refused)) => claimed.refused.push(refused),
            None => {}
        }
    }
    claimed
}

/// The answer of one delivery.
struct Answer {
    shared: Arc<Shared>,
    id: EntryId,
    epoch: u64,
    /// Set once `ack` or `nack` took it, so that dropping it does not nack.
    answered: bool,
}

impl Acknowledge for Answer {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.answered = true;
        Box::pin(Arc::clone(&self.shared).ack(self.id, self.epoch))
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.answered = true;
        let result = self.shared.nack(self.id, self.epoch, delay);
        Box::pin(std::future::ready(result))
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.answered {
            // Dropped unanswered: a nack without delay. A stale one changes nothing.
            let _ = self.shared.nack(self.id, self.epoch, None);
        }
    }
}

/// The stream behind a subscription's [`Deliveries`](cairn_bus::Deliveries). Dropping it
/// stops the subscription's tasks.
pub(crate) struct Subscription {
    pub(crate) shared: Arc<Shared>,
    pub(crate) deliveries: mpsc::UnboundedReceiver<Result<(u64, Delivery), TransportError>>,
    pub(crate) _stop: DropGuard,
}

impl Stream for Subscription {
    type Item = Result<Delivery, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.deliveries.poll_recv(cx) {
                Poll::Ready(Some(Ok((epoch, delivery)))) => {
                    // Queued before the connection dropped: its entry is handed out again,
                    // so this one is dropped (a stale nack, which changes nothing).
                    if epoch == self.shared.epoch.load(Ordering::Acquire) {
                        return Poll::Ready(Some(Ok(delivery)));
                    }
                }
                other => return other.map(|item| item.map(|result| result.map(|(_, d)| d))),
            }
        }
    }
}

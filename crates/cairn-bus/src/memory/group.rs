//! [`Group`]: the queue of one (topic, group) pair, with the deliveries it has handed out
//! and the consumers that take from it.
//!
//! A message in a group is in exactly one place:
//!
//! - `ready`: published, never delivered, in publish order;
//! - `retry`: given back (nacked without delay, dropped unanswered, taken back from a
//!   consumer that died), served before `ready`;
//! - `delayed`: nacked with a delay, moved to `retry` by the first consumer that polls
//!   after it is due;
//! - `outstanding`: handed to a consumer (possibly still in its stream's buffer), until it
//!   is answered or taken back.
//!
//! Everything lives under one `std::sync::Mutex` per group, held for a few pointer moves at
//! a time and never across an `.await`; wakers are woken after the lock is released.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::message::Message;

/// The most messages a consumer takes from its group per lock.
const TAKE_BATCH: usize = 64;
/// The most answered messages a group keeps for its next publish to free...
const RECLAIM_MESSAGES: usize = 1_024;
/// ...and the most payload bytes among them.
const RECLAIM_BYTES: usize = 8 << 20;

/// One (topic, group) queue.
#[derive(Debug)]
pub(super) struct Group {
    /// The topic, for deliveries and errors.
    pub(super) topic: Arc<str>,
    /// The most messages `ready` holds before publishers wait.
    capacity: usize,
    /// Publishers that waited for room are woken when a consumer takes `ready` below
    /// this, three quarters of `capacity`: a full queue then wakes them once per quarter
    /// of it taken, not at every take (each wake-up a switch between their tasks).
    resume: usize,
    /// The queue and its consumers. Locked by publishers (to push), consumers (to take),
    /// answers (to remove or give back), and by severs and closing connections.
    state: Mutex<GroupState>,
    /// Counts the severs this group has seen. Written under `state`'s lock by
    /// [`Group::sever`]; read without the lock by a stream before it hands out a buffered
    /// delivery, which it drops when the count moved since it took it.
    epoch: AtomicU64,
    /// Publishers waiting for room in `ready` wait here; a consumer that takes from a full
    /// `ready` notifies them.
    space: Notify,
}

#[derive(Debug, Default)]
struct GroupState {
    ready: VecDeque<Queued>,
    retry: VecDeque<Queued>,
    delayed: BinaryHeap<Delayed>,
    /// Breaks ties between delayed messages due at the same instant (first nacked first).
    delayed_seq: u64,
    outstanding: Slab,
    consumers: Vec<Consumer>,
    /// Messages acknowledged since the last publish, which that publish drops (at most
    /// [`RECLAIM_MESSAGES`] of them and [`RECLAIM_BYTES`] of payload; past those the
    /// answering thread drops them itself). A publishing thread allocated them, and an
    /// allocator frees a block on the thread that allocated it without contending for
    /// a lock with that thread, as a consumer on another thread would at every message.
    answered: Vec<Arc<Message>>,
    /// The payload bytes of `answered`.
    answered_bytes: usize,
}

/// A message waiting in a queue.
#[derive(Debug)]
struct Queued {
    message: Arc<Message>,
    /// How many times it was delivered so far.
    delivered: u32,
}

#[derive(Debug)]
struct Delayed {
    due: Instant,
    seq: u64,
    item: Queued,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so that the max-heap pops the earliest due first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// A message handed to a consumer and not yet answered.
#[derive(Debug)]
struct Outstanding {
    message: Arc<Message>,
    /// The attempt number of this delivery (from 1).
    attempt: u32,
    consumer: u64,
    connection: u64,
}

/// Names one outstanding delivery; stale once the delivery was answered or taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tag {
    index: u32,
    generation: u32,
}

/// Outstanding deliveries by [`Tag`]: a vector of slots with a free list, so that handing
/// out and answering a delivery allocate nothing once the slab has grown.
#[derive(Debug, Default)]
struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    len: usize,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    entry: Option<Outstanding>,
}

impl Slab {
    fn insert(&mut self, entry: Outstanding) -> Tag {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.entry = Some(entry);
            return Tag {
                index,
                generation: slot.generation,
            };
        }
        let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 outstanding");
        self.slots.push(Slot {
            generation: 0,
            entry: Some(entry),
        });
        Tag {
            index,
            generation: 0,
        }
    }

    fn remove(&mut self, tag: Tag) -> Option<Outstanding> {
        let slot = self.slots.get_mut(tag.index as usize)?;
        if slot.generation != tag.generation {
            return None;
        }
        let entry = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(tag.index);
        self.len -= 1;
        Some(entry)
    }

    /// Removes every entry that `take` selects, in slot order.
    fn remove_where(&mut self, mut take: impl FnMut(&Outstanding) -> bool) -> Vec<Outstanding> {
        let mut removed = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.entry.as_ref().is_some_and(&mut take) {
                removed.extend(slot.entry.take());
                slot.generation = slot.generation.wrapping_add(1);
                self.free.push(index as u32);
                self.len -= 1;
            }
        }
        removed
    }
}

/// One subscription taking from the group.
#[derive(Debug)]
struct Consumer {
    id: u64,
    /// Deliveries taken and not yet answered, buffered ones included; at most its prefetch.
    in_flight: usize,
    /// Woken when messages arrive (set while the consumer found none).
    idle: Option<Waker>,
    /// Woken when one of its deliveries is answered (set while it had no credit).
    credit: Option<Waker>,
}

impl Consumer {
    fn wakers(&mut self, into: &mut Vec<Waker>) {
        into.extend(self.idle.take());
        into.extend(self.credit.take());
    }
}

/// A delivery taken by a stream and not yet handed to its reader.
#[derive(Debug)]
pub(super) struct Buffered {
    pub(super) tag: Tag,
    pub(super) message: Arc<Message>,
    pub(super) attempt: u32,
}

/// What [`Group::take`] found.
#[derive(Debug)]
pub(super) enum Take {
    /// Messages were moved into the buffer; the group's epoch at that moment.
    Took { epoch: u64 },
    /// The consumer has `prefetch` deliveries in flight; it is woken by an answer.
    NoCredit,
    /// Nothing to take; the consumer is woken by a publish or a give-back, or should wake
    /// itself at `next_due` for a delayed message.
    Empty { next_due: Option<Instant> },
}

fn wake_all(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

impl Group {
    pub(super) fn new(topic: Arc<str>, capacity: usize) -> Self {
        Self {
            topic,
            capacity: capacity.max(1),
            resume: capacity.max(1) - capacity.max(1) / 4,
            state: Mutex::new(GroupState::default()),
            epoch: AtomicU64::new(0),
            space: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // Nothing panics while holding the lock; should it ever, the state is still
        // consistent between statements, so the poison is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sever count, read by streams before handing out a buffered delivery.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// How many more messages `ready` takes before publishers wait.
    pub(super) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.lock().ready.len())
    }

    /// Resolves once a consumer took a full queue below three quarters of its capacity
    /// (right away when it is not full); registered before the room is checked, so that
    /// no notification is missed.
    pub(super) async fn wait_for_room(&self) {
        let notified = self.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.room() == 0 {
            notified.await;
        }
    }

    /// Appends `messages` to `ready` (the caller checked the room) and wakes idle
    /// consumers. The messages answered since the last publish are swapped into
    /// `answered`, which must be empty (its memory goes to the group for the next ones):
    /// the publisher drops them once the lock is released, on its own thread.
    pub(super) fn push(
        &self,
        messages: impl IntoIterator<Item = Arc<Message>>,
        answered: &mut Vec<Arc<Message>>,
    ) {
        let mut wakers = Vec::new();
        {
            let mut state = self.lock();
            state
                .ready
                .extend(messages.into_iter().map(|message| Queued {
                    message,
                    delivered: 0,
                }));
            for consumer in &mut state.consumers {
                wakers.extend(consumer.idle.take());
            }
            std::mem::swap(&mut state.answered, answered);
            state.answered_bytes = 0;
        }
        wake_all(wakers);
    }

    pub(super) fn add_consumer(&self, id: u64) {
        self.lock().consumers.push(Consumer {
            id,
            in_flight: 0,
            idle: None,
            credit: None,
        });
    }

    /// Removes a consumer whose stream was dropped, giving back the deliveries it had
    /// buffered but never handed out (they keep their attempt count). Deliveries it handed
    /// out stay answerable.
    pub(super) fn remove_consumer(&self, id: u64, buffered: impl DoubleEndedIterator<Item = Tag>) {
        let mut wakers = Vec::new();
        {
            let mut state = self.lock();
            state.consumers.retain(|consumer| consumer.id != id);
            let mut returned = false;
            for tag in buffered.rev() {
                if let Some(entry) = state.outstanding.remove(tag) {
                    state.retry.push_front(Queued {
                        message: entry.message,
                        delivered: entry.attempt - 1,
                    });
                    returned = true;
                }
            }
            if returned {
                state.wake_idle(&mut wakers);
            }
        }
        wake_all(wakers);
    }

    /// Moves up to the consumer's free credit (and at most a batch) of messages into
    /// `buffer`, due delayed messages first made ready. Registers `waker` when it takes
    /// nothing.
    pub(super) fn take(
        &self,
        consumer: u64,
        connection: u64,
        prefetch: usize,
        buffer: &mut VecDeque<Buffered>,
        waker: &Waker,
    ) -> Take {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(index) = state.consumers.iter().position(|c| c.id == consumer) else {
            return Take::Empty { next_due: None };
        };
        let credit = prefetch.saturating_sub(state.consumers[index].in_flight);
        if credit == 0 {
            register(&mut state.consumers[index].credit, waker);
            return Take::NoCredit;
        }
        if !state.delayed.is_empty() {
            let now = Instant::now();
            while state.delayed.peek().is_some_and(|d| d.due <= now) {
                if let Some(delayed) = state.delayed.pop() {
                    state.retry.push_back(delayed.item);
                }
            }
        }
        let ready_before = state.ready.len();
        let want = credit.min(TAKE_BATCH);
        let mut took = 0;
        while took < want {
            let Some(queued) = state.retry.pop_front().or_else(|| state.ready.pop_front()) else {
                break;
            };
            let attempt = queued.delivered.saturating_add(1);
            let message = Arc::clone(&queued.message);
            let tag = state.outstanding.insert(Outstanding {
                message: queued.message,
                attempt,
                consumer,
                connection,
            });
            buffer.push_back(Buffered {
                tag,
                message,
                attempt,
            });
            took += 1;
        }
        if took == 0 {
            register(&mut state.consumers[index].idle, waker);
            return Take::Empty {
                next_due: state.delayed.peek().map(|d| d.due),
            };
        }
        state.consumers[index].in_flight += took;
        if ready_before >= self.resume && state.ready.len() < self.resume {
            self.space.notify_waiters();
        }
        Take::Took {
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    /// Removes an answered delivery.
    ///
    /// # Errors
    ///
    /// `Err(())` when the delivery was already taken back.
    pub(super) fn ack(&self, tag: Tag) -> Result<(), ()> {
        let mut wakers = Vec::new();
        let answered = {
            let mut state = self.lock();
            let answered = state.outstanding.remove(tag);
            match answered {
                Some(entry) => {
                    state.credit_back(entry.consumer, &mut wakers);
                    Ok(state.keep_for_publisher(entry.message))
                }
                None => Err(()),
            }
        };
        wake_all(wakers);
        // Usually the message's last reference: when the next publish does not take it,
        // freed here, not under the lock the publishers and the other answers wait on.
        answered.map(drop)
    }

    /// Gives a delivery back for redelivery, after `delay` when it is not zero.
    ///
    /// # Errors
    ///
    /// `Err(())` when the delivery was already taken back (it is redelivered anyway).
    pub(super) fn nack(&self, tag: Tag, delay: Option<Duration>) -> Result<(), ()> {
        let mut wakers = Vec::new();
        let result = {
            let mut state = self.lock();
            match state.outstanding.remove(tag) {
                Some(entry) => {
                    state.credit_back(entry.consumer, &mut wakers);
                    let item = Queued {
                        message: entry.message,
                        delivered: entry.attempt,
                    };
                    match delay.filter(|delay| !delay.is_zero()) {
                        Some(delay) => {
                            let seq = state.delayed_seq;
                            state.delayed_seq += 1;
                            state.delayed.push(Delayed {
                                due: Instant::now() + delay,
                                seq,
                                item,
                            });
                        }
                        None => state.retry.push_back(item),
                    }
                    // Idle consumers either take the message or arm a timer for it.
                    state.wake_idle(&mut wakers);
                    Ok(())
                }
                None => Err(()),
            }
        };
        wake_all(wakers);
        result
    }

    /// Gives back every delivery held through `connection`, which closed.
    pub(super) fn close_connection(&self, connection: u64) {
        // The connection's streams are gone (each holds it open), so nothing it took is
        // buffered anywhere: the epoch stays, and other streams keep their buffers.
        self.take_back(false, |entry| entry.connection == connection);
    }

    /// Gives back every outstanding delivery and makes the ones still buffered in streams
    /// stale: the connections broke.
    pub(super) fn sever(&self) {
        self.take_back(true, |_| true);
    }

    fn take_back(&self, stale_buffers: bool, select: impl FnMut(&Outstanding) -> bool) {
        let mut wakers = Vec::new();
        {
            let mut state = self.lock();
            let taken = state.outstanding.remove_where(select);
            if taken.is_empty() {
                return;
            }
            if stale_buffers {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
            for entry in taken {
                if let Some(consumer) = state.consumers.iter_mut().find(|c| c.id == entry.consumer)
                {
                    consumer.in_flight = consumer.in_flight.saturating_sub(1);
                }
                state.retry.push_back(Queued {
                    message: entry.message,
                    delivered: entry.attempt,
                });
            }
            for consumer in &mut state.consumers {
                consumer.wakers(&mut wakers);
            }
        }
        wake_all(wakers);
    }

    /// Messages not yet acknowledged: queued, delayed and outstanding.
    pub(super) fn lag(&self) -> u64 {
        let state = self.lock();
        (state.ready.len() + state.retry.len() + state.delayed.len() + state.outstanding.len) as u64
    }
}

impl GroupState {
    fn credit_back(&mut self, consumer: u64, wakers: &mut Vec<Waker>) {
        if let Some(consumer) = self.consumers.iter_mut().find(|c| c.id == consumer) {
            consumer.in_flight = consumer.in_flight.saturating_sub(1);
            wakers.extend(consumer.credit.take());
        }
    }

    /// Keeps an answered message for the next publish to drop, unless enough are kept
    /// already: then it is given back to be dropped by the caller.
    fn keep_for_publisher(&mut self, message: Arc<Message>) -> Option<Arc<Message>> {
        let bytes = self.answered_bytes.saturating_add(message.payload.len());
        if self.answered.len() >= RECLAIM_MESSAGES || bytes > RECLAIM_BYTES {
            return Some(message);
        }
        self.answered_bytes = bytes;
        self.answered.push(message);
        None
    }

    fn wake_idle(&mut self, wakers: &mut Vec<Waker>) {
        for consumer in &mut self.consumers {
            wakers.extend(consumer.idle.take());
        }
    }
}

fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(current) if current.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

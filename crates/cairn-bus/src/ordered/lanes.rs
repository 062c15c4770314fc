//! The lane table: one lane per ordering key with a message in flight, and the queue of
//! messages of that key waiting for their turn.
//!
//! A lane exists while its key has a message running or waiting; the message that ends
//! the lane's last turn removes it, so the table holds at most as many lanes as there are
//! messages in flight. Every change happens under the table's one lock, which is held only
//! for a hash lookup and a queue push or pop.

use std::collections::{HashMap, VecDeque, hash_map};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::slots::Slots;
use crate::hash::KeyedHash;
use crate::message::Message;

/// A key of the table: the message that opened the lane, compared and hashed by its
/// ordering key, so that taking a lane costs a reference count, not a string copy.
#[derive(Debug, Clone)]
pub(super) struct LaneKey(Arc<Message>);

impl LaneKey {
    /// The key of `message`, if it has one.
    pub(super) fn of(message: &Arc<Message>) -> Option<Self> {
        message.key.as_ref().map(|_| Self(Arc::clone(message)))
    }

    fn as_str(&self) -> &str {
        self.0.key.as_deref().unwrap_or_default()
    }
}

impl PartialEq for LaneKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for LaneKey {}

impl Hash for LaneKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// The messages of one key waiting behind the one that holds the lane, in `call` order.
/// Each waiter is a ticket (to find it again when it is cancelled) and the sender that
/// hands it the turn.
#[derive(Debug, Default)]
struct Lane {
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

#[derive(Debug, Default)]
struct Table {
    lanes: HashMap<LaneKey, Lane, KeyedHash>,
    next_ticket: u64,
}

/// The lane table and the global bound shared by every service of one
/// [`OrderedLayer`](super::OrderedLayer).
#[derive(Debug)]
pub(super) struct Lanes {
    table: Mutex<Table>,
    /// The messages in flight: a slot is taken by `poll_ready` and given back by the
    /// message's [`Release`] (or its [`Turn`], or the service, when dropped unused).
    pub(super) slots: Slots,
}

/// Where a message stands once `call` has asked for its key's lane.
pub(super) enum Entry {
    /// The lane was free: the message runs now.
    Free(Release),
    /// The lane is busy: the message runs when the turn resolves.
    Queued(Turn),
}

impl Lanes {
    /// No lanes, and at most `max_in_flight` messages in flight.
    pub(super) fn new(max_in_flight: usize) -> Self {
        Self {
            table: Mutex::default(),
            slots: Slots::new(max_in_flight),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of keys with a message in flight.
    pub(super) fn len(&self) -> usize {
        self.lock().lanes.len()
    }

    /// Takes the lane of `key` for a message holding a slot, or the next place in its
    /// queue. Called synchronously from `call`, so places follow the order of `call`s.
    pub(super) fn enter(self: &Arc<Self>, key: LaneKey) -> Entry {
        let mut guard = self.lock();
        let table = &mut *guard;
        // One hash of the key, whichever way it goes.
        match table.lanes.entry(key.clone()) {
            hash_map::Entry::Occupied(mut lane) => {
                table.next_ticket += 1;
                let ticket = table.next_ticket;
                let (sender, receiver) = oneshot::channel();
                lane.get_mut().waiting.push_back((ticket, sender));
                drop(guard);
                Entry::Queued(Turn {
                    waiting: Some(Waiting {
                        lanes: Arc::clone(self),
                        key,
                        ticket,
                        receiver,
                    }),
                })
            }
            hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Lane::default());
                drop(guard);
                Entry::Free(Release {
                    lanes: Arc::clone(self),
                    key: Some(key),
                })
            }
        }
    }

    /// Ends the turn of the message holding `key`'s lane.
    fn hand_over(&self, key: &LaneKey) {
        self.lock().hand_over(key);
    }
}

impl Table {
    /// Hands `key`'s lane to its next waiter, or removes the lane when nobody waits.
    fn hand_over(&mut self, key: &LaneKey) {
        // Usually nobody waits: one hash to take the lane out, and a second only to put
        // it back for a waiter.
        let Some((key, mut lane)) = self.lanes.remove_entry(key) else {
            return;
        };
        while let Some((_, next)) = lane.waiting.pop_front() {
            if next.send(()).is_ok() {
                self.lanes.insert(key, lane);
                return;
            }
        }
    }
}

/// Held by a message while it runs: gives back its slot of the global bound and, if it has
/// a key, hands the key's lane to the next message of that key when dropped (when the
/// message is done, or when its future is dropped).
#[derive(Debug)]
pub struct Release {
    lanes: Arc<Lanes>,
    key: Option<LaneKey>,
}

impl Release {
    /// The release of a message without a key, holding a slot of `lanes`: only the slot.
    pub(super) fn unkeyed(lanes: Arc<Lanes>) -> Self {
        Self { lanes, key: None }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.lanes.hand_over(&key);
        }
        self.lanes.slots.give_back();
    }
}

#[derive(Debug)]
struct Waiting {
    lanes: Arc<Lanes>,
    key: LaneKey,
    ticket: u64,
    receiver: oneshot::Receiver<()>,
}

/// A message's place in its key's queue, holding its slot: resolves to its [`Release`]
/// when the message before it is done. Dropping it gives the place and the slot up, and
/// passes the turn on if the turn had already come.
#[derive(Debug)]
pub(super) struct Turn {
    /// Taken when the turn comes (or when dropped).
    waiting: Option<Waiting>,
}

impl Future for Turn {
    type Output = Release;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Release> {
        let Some(waiting) = self.waiting.as_mut() else {
            // Polled after completion: never hand out a second release.
            return Poll::Pending;
        };
        // The sender is only dropped unsent by `hand_over` when this receiver is gone, so
        // a ready receiver is the turn.
        if Pin::new(&mut waiting.receiver).poll(cx).is_pending() {
            return Poll::Pending;
        }
        match self.waiting.take() {
            Some(waiting) => Poll::Ready(Release {
                lanes: waiting.lanes,
                key: Some(waiting.key),
            }),
            None => Poll::Pending,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(mut waiting) = self.waiting.take() else {
            return;
        };
        {
            let mut table = waiting.lanes.lock();
            // Under the table's lock the turn cannot arrive meanwhile: it came or it did
            // not.
            if waiting.receiver.try_recv().is_ok() {
                table.hand_over(&waiting.key);
            } else if let Some(lane) = table.lanes.get_mut(&waiting.key) {
                lane.waiting.retain(|(ticket, _)| *ticket != waiting.ticket);
            }
        }
        waiting.lanes.slots.give_back();
    }
}

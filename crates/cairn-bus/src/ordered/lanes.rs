//! The lane table: one lane per ordering key with a message in flight, and the queue of
//! messages of that key waiting for their turn.
//!
//! A lane exists while its key has a message running or waiting; the message that ends
//! the lane's last turn removes it, so the table holds at most as many lanes as there are
//! messages in flight. Every change happens under the table's one lock, which is held only
//! for a hash lookup and a queue push or pop.
//!
//! A lane keeps the message that opened it, which is what the table compares keys with.
//! That message's [`Release`] finds the lane again by the key's hash and the message's
//! address, without hashing or comparing the key again and without a reference of its
//! own; a message that got the lane from a waiting turn finds it by its key.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use hashbrown::HashTable;
use hashbrown::hash_table;
use tokio::sync::oneshot;

use super::slots::Slots;
use crate::message::Message;
use cairn_core::KeyedHash;

/// A message with an ordering key, compared by that key.
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

    /// Where its message lives: the lane's opener is found by it while the lane holds
    /// the message (so no other live message has that address).
    fn address(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

/// One key's lane: the message that opened it, and the messages of that key waiting
/// behind the one running, in `call` order. Each waiter is a ticket (to find it again when
/// it is cancelled) and the sender that hands it the turn.
#[derive(Debug)]
struct Lane {
    hash: u64,
    opener: LaneKey,
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// How a message holding a lane finds it again.
#[derive(Debug)]
enum Held {
    /// It opened the lane: by the key's hash and its own address.
    Opened { hash: u64, address: usize },
    /// It got the lane from the message before it: by its key.
    HandedOver { hash: u64, key: LaneKey },
}

#[derive(Debug, Default)]
struct Table {
    lanes: HashTable<Lane>,
    hash: KeyedHash,
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
        let hash = table.hash.hash_one(key.as_str());
        match table.lanes.entry(
            hash,
            |lane| lane.opener.as_str() == key.as_str(),
            |lane| lane.hash,
        ) {
            hash_table::Entry::Occupied(mut lane) => {
                table.next_ticket += 1;
                let ticket = table.next_ticket;
                let (sender, receiver) = oneshot::channel();
                lane.get_mut().waiting.push_back((ticket, sender));
                drop(guard);
                Entry::Queued(Turn {
                    waiting: Some(Waiting {
                        lanes: Arc::clone(self),
                        hash,
                        key,
                        ticket,
                        receiver,
                    }),
                })
            }
            hash_table::Entry::Vacant(vacant) => {
                let address = key.address();
                vacant.insert(Lane {
                    hash,
                    opener: key,
                    waiting: VecDeque::new(),
                });
                drop(guard);
                Entry::Free(Release {
                    lanes: Arc::clone(self),
                    held: Some(Held::Opened { hash, address }),
                })
            }
        }
    }
}

impl Table {
    /// Hands the lane held as `held` to its next waiter, or removes the lane when nobody
    /// waits.
    fn hand_over(&mut self, held: &Held) {
        let found = match held {
            Held::Opened { hash, address } => self
                .lanes
                .find_entry(*hash, |lane| lane.opener.address() == *address),
            Held::HandedOver { hash, key } => self
                .lanes
                .find_entry(*hash, |lane| lane.opener.as_str() == key.as_str()),
        };
        let Ok(mut lane) = found else {
            return;
        };
        let waiting = &mut lane.get_mut().waiting;
        while let Some((_, next)) = waiting.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        lane.remove();
    }
}

/// Held by a message while it runs: gives back its slot of the global bound and, if it has
/// a key, hands the key's lane to the next message of that key when dropped (when the
/// message is done, or when its future is dropped).
#[derive(Debug)]
pub struct Release {
    lanes: Arc<Lanes>,
    held: Option<Held>,
}

impl Release {
    /// The release of a message without a key, holding a slot of `lanes`: only the slot.
    pub(super) fn unkeyed(lanes: Arc<Lanes>) -> Self {
        Self { lanes, held: None }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.lanes.lock().hand_over(&held);
        }
        self.lanes.slots.give_back();
    }
}

#[derive(Debug)]
struct Waiting {
    lanes: Arc<Lanes>,
    hash: u64,
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
                held: Some(Held::HandedOver {
                    hash: waiting.hash,
                    key: waiting.key,
                }),
            }),
            None => Poll::Pending,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(Waiting {
            lanes,
            hash,
            key,
            ticket,
            mut receiver,
        }) = self.waiting.take()
        else {
            return;
        };
        {
            let mut table = lanes.lock();
            // Under the table's lock the turn cannot arrive meanwhile: it came or it did
            // not.
            if receiver.try_recv().is_ok() {
                table.hand_over(&Held::HandedOver { hash, key });
            } else if let Some(lane) = table
                .lanes
                .find_mut(hash, |lane| lane.opener.as_str() == key.as_str())
            {
                lane.waiting.retain(|(waiter, _)| *waiter != ticket);
            }
        }
        lanes.slots.give_back();
    }
}

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

use tokio::sync::{OwnedSemaphorePermit, oneshot};

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

/// The lane table shared by every service of one [`OrderedLayer`](super::OrderedLayer).
#[derive(Debug, Default)]
pub(super) struct Lanes {
    table: Mutex<Table>,
}

/// Where a message stands once `call` has asked for its key's lane.
pub(super) enum Entry {
    /// The lane was free: the message runs now.
    Free(Release),
    /// The lane is busy: the message runs when the turn resolves.
    Queued(Turn),
}

impl Lanes {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of keys with a message in flight.
    pub(super) fn len(&self) -> usize {
        self.lock().lanes.len()
    }

    /// Takes the lane of `key` for a message, or the next place in its queue. Called
    /// synchronously from `call`, so places follow the order of `call`s.
    pub(super) fn enter(self: &Arc<Self>, key: LaneKey, permit: OwnedSemaphorePermit) -> Entry {
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
                    state: Some((
                        Waiting {
                            lanes: Arc::clone(self),
                            key,
                            ticket,
                            receiver,
                        },
                        permit,
                    )),
                })
            }
            hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Lane::default());
                drop(guard);
                Entry::Free(Release {
                    _permit: permit,
                    lane: Some((Arc::clone(self), key)),
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
    _permit: OwnedSemaphorePermit,
    lane: Option<(Arc<Lanes>, LaneKey)>,
}

impl Release {
    /// The release of a message without a key: only the slot.
    pub(super) fn unkeyed(permit: OwnedSemaphorePermit) -> Self {
        Self {
            _permit: permit,
            lane: None,
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some((lanes, key)) = self.lane.take() {
            lanes.hand_over(&key);
        }
    }
}

#[derive(Debug)]
struct Waiting {
    lanes: Arc<Lanes>,
    key: LaneKey,
    ticket: u64,
    receiver: oneshot::Receiver<()>,
}

/// A message's place in its key's queue: resolves to its [`Release`] when the message
/// before it is done. Dropping it gives the place up, and passes the turn on if the turn
/// had already come.
#[derive(Debug)]
pub(super) struct Turn {
    /// Taken when the turn comes (or when dropped).
    state: Option<(Waiting, OwnedSemaphorePermit)>,
}

impl Future for Turn {
    type Output = Release;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Release> {
        let Some((waiting, _)) = self.state.as_mut() else {
            // Polled after completion: never hand out a second release.
            return Poll::Pending;
        };
        // The sender is only dropped unsent by `hand_over` when this receiver is gone, so
        // a ready receiver is the turn.
        if Pin::new(&mut waiting.receiver).poll(cx).is_pending() {
            return Poll::Pending;
        }
        match self.state.take() {
            Some((waiting, permit)) => Poll::Ready(Release {
                _permit: permit,
                lane: Some((waiting.lanes, waiting.key)),
            }),
            None => Poll::Pending,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some((mut waiting, _permit)) = self.state.take() else {
            return;
        };
        let lanes = Arc::clone(&waiting.lanes);
        let mut table = lanes.lock();
        // Under the table's lock the turn cannot arrive meanwhile: it came or it did not.
        if waiting.receiver.try_recv().is_ok() {
            table.hand_over(&waiting.key);
        } else if let Some(lane) = table.lanes.get_mut(&waiting.key) {
            lane.waiting.retain(|(ticket, _)| *ticket != waiting.ticket);
        }
    }
}

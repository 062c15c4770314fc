//! The keys blocked by parked messages, and the replays and discards in progress.
//!
//! Under [`KeyPolicy::Block`](super::KeyPolicy::Block) this mirrors the store: a key is
//! here while it has parked messages (or is being replayed), with how many. It lives in
//! memory so that the hot path asks a counter, not the store. Every change happens under
//! one lock, held for a hash operation.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{DeadLetterError, ParkingId};

#[derive(Debug)]
struct KeyBlock {
    /// Parked messages of the key, counted from the moment parking is decided.
    parked: usize,
    /// The parked message later ones are said to wait behind: the one that blocked the key,
    /// then the one a replay is running.
    blocker: ParkingId,
    /// A replay or discard of the key holds it.
    claimed: bool,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, KeyBlock>,
    /// Parked messages claimed one by one (without a blocking key).
    ids: HashSet<ParkingId>,
}

/// Written by the service (parking) and by the handle (replays, discards); read by the
/// service on every keyed message.
#[derive(Debug, Default)]
pub(super) struct Blocks {
    state: Mutex<State>,
    /// `state.keys.len()`, readable without the lock: the hot path's check.
    blocked: AtomicUsize,
}

impl Blocks {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, state: &State) {
        self.blocked.store(state.keys.len(), Ordering::Release);
    }

    /// Whether any key is blocked (a hint: the answer may change right after).
    pub(super) fn any(&self) -> bool {
        self.blocked.load(Ordering::Acquire) > 0
    }

    /// Whether `key` is blocked.
    pub(super) fn is_blocked(&self, key: &str) -> bool {
        self.lock().keys.contains_key(key)
    }

    /// The blocked keys.
    pub(super) fn keys(&self) -> Vec<String> {
        self.lock().keys.keys().cloned().collect()
    }

    /// If `key` is blocked, counts a message parked behind it and returns the new parking
    /// id with the one it waits behind. Made under the lock, so ids follow `call` order.
    pub(super) fn park_behind(&self, key: &str) -> Option<(ParkingId, ParkingId)> {
        let mut state = self.lock();
        let block = state.keys.get_mut(key)?;
        block.parked += 1;
        Some((ParkingId::next(), block.blocker))
    }

    /// Counts a failed message of `key` being parked as `id`, blocking the key.
    pub(super) fn park_failed(&self, key: &str, id: ParkingId) {
        let mut state = self.lock();
        state
            .keys
            .entry(key.to_owned())
            .or_insert(KeyBlock {
                parked: 0,
                blocker: id,
                claimed: false,
            })
            .parked += 1;
        self.publish(&state);
    }

    /// Uncounts a parked message of `key` (replayed, discarded, or not parked after all);
    /// the key is unblocked when none is left and nothing holds it.
    pub(super) fn unpark(&self, key: &str) {
        let mut state = self.lock();
        if let Some(block) = state.keys.get_mut(key) {
            block.parked = block.parked.saturating_sub(1);
            if block.parked == 0 && !block.claimed {
                state.keys.remove(key);
            }
        }
        self.publish(&state);
    }

    /// Sets which parked message later ones of `key` wait behind.
    pub(super) fn set_blocker(&self, key: &str, id: ParkingId) {
        if let Some(block) = self.lock().keys.get_mut(key) {
            block.blocker = id;
        }
    }

    /// Claims `key` for a replay or discard; the key stays blocked while claimed, so
    /// messages arriving meanwhile are parked behind.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Busy`] when another replay or discard holds the key.
    pub(super) fn claim_key(
        self: &Arc<Self>,
        key: &str,
        blocker: ParkingId,
    ) -> Result<Claim, DeadLetterError> {
        let mut state = self.lock();
        let block = state.keys.entry(key.to_owned()).or_insert(KeyBlock {
            parked: 0,
            blocker,
            claimed: false,
        });
        if block.claimed {
            return Err(DeadLetterError::Busy {
                what: format!("key {key:?}"),
            });
        }
        block.claimed = true;
        self.publish(&state);
        Ok(Claim {
            blocks: Arc::clone(self),
            what: Claimed::Key(key.to_owned()),
        })
    }

    /// Claims the parked message `id` for a replay or discard.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Busy`] when another replay or discard holds it.
    pub(super) fn claim_id(self: &Arc<Self>, id: ParkingId) -> Result<Claim, DeadLetterError> {
        if !self.lock().ids.insert(id) {
            return Err(DeadLetterError::Busy {
                what: id.to_string(),
            });
        }
        Ok(Claim {
            blocks: Arc::clone(self),
            what: Claimed::Id(id),
        })
    }

    /// Replaces the blocked keys with `counts` (parked messages per key), keeping claims.
    pub(super) fn reset(&self, counts: HashMap<String, (usize, ParkingId)>) {
        let mut state = self.lock();
        state.keys.retain(|_, block| block.claimed);
        for (key, (parked, blocker)) in counts {
            let block = state.keys.entry(key).or_insert(KeyBlock {
                parked: 0,
                blocker,
                claimed: false,
            });
            block.parked = parked;
        }
        self.publish(&state);
    }
}

#[derive(Debug)]
enum Claimed {
    Key(String),
    Id(ParkingId),
}

/// A replay's or discard's hold on a key or a parked message, released when dropped (also
/// when the replay is cancelled).
#[derive(Debug)]
pub(super) struct Claim {
    blocks: Arc<Blocks>,
    what: Claimed,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut state = self.blocks.lock();
        match &self.what {
            Claimed::Id(id) => {
                state.ids.remove(id);
            }
            Claimed::Key(key) => {
                if let Some(block) = state.keys.get_mut(key) {
                    block.claimed = false;
                    if block.parked == 0 {
                        state.keys.remove(key);
                    }
                }
            }
        }
        self.blocks.publish(&state);
    }
}

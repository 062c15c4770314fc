//! [`Topic`]: the groups of one topic and the ids recently published to it, and the
//! publish path that fans a batch out to every group.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::group::Group;
use crate::message::Message;

/// One topic.
#[derive(Debug)]
pub(super) struct Topic {
    pub(super) name: Arc<str>,
    /// The capacity each new group gets.
    capacity: usize,
    /// Its groups and recent ids. Locked by publishers for a whole chunk of a batch (so
    /// that concurrent publishers interleave by chunks, never within one), by subscribers
    /// adding a group, and by `lag`. A group's lock may be taken while holding this one,
    /// never the other way round.
    state: Mutex<TopicState>,
}

#[derive(Debug)]
struct TopicState {
    groups: Vec<(Arc<str>, Arc<Group>)>,
    recent: Recent,
    /// The answered messages a group hands a publish to drop; empty between publishes,
    /// its memory passed from group to group so that neither side reallocates it.
    answered: Vec<Arc<Message>>,
}

impl Topic {
    pub(super) fn new(name: Arc<str>, capacity: usize, window: Duration, ids: usize) -> Self {
        Self {
            name,
            capacity,
            state: Mutex::new(TopicState {
                groups: Vec::new(),
                recent: Recent::new(window, ids),
                answered: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The group `name`, created (empty) when it does not exist.
    pub(super) fn group(&self, name: &str) -> Arc<Group> {
        let mut state = self.lock();
        if let Some((_, group)) = state.groups.iter().find(|(n, _)| &**n == name) {
            return Arc::clone(group);
        }
        let group = Arc::new(Group::new(Arc::clone(&self.name), self.capacity));
        state.groups.push((Arc::from(name), Arc::clone(&group)));
        group
    }

    /// The group `name`, when it exists.
    pub(super) fn existing_group(&self, name: &str) -> Option<Arc<Group>> {
        self.lock()
            .groups
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, group)| Arc::clone(group))
    }

    /// Every group, for a sever.
    pub(super) fn groups(&self) -> Vec<Arc<Group>> {
        self.lock()
            .groups
            .iter()
            .map(|(_, group)| Arc::clone(group))
            .collect()
    }

    /// Publishes `messages` in order to every group, waiting while a group is full.
    /// Duplicates of ids seen within the window are dropped.
    ///
    /// Cancel safety: when the future is dropped while waiting, a prefix of the batch is
    /// published and the rest is not (nor remembered as seen).
    pub(super) async fn publish(&self, messages: Vec<Message>) {
        let mut pending = VecDeque::from(messages);
        while !pending.is_empty() {
            let full = {
                let mut state = self.lock();
                let mut room = pending.len();
                let mut full = None;
                for (_, group) in &state.groups {
                    let free = group.room();
                    if free == 0 {
                        full = Some(Arc::clone(group));
                        break;
                    }
                    room = room.min(free);
                }
                if full.is_none() {
                    let now = Instant::now();
                    let state = &mut *state;
                    let accepted: Vec<Arc<Message>> = pending
                        .drain(..room)
                        .filter(|message| state.recent.first_time(message.id, now))
                        .map(Arc::new)
                        .collect();
                    if let Some(((_, last), others)) = state.groups.split_last() {
                        // Each group's answered messages are dropped here, after its lock.
                        for (_, group) in others {
                            group.push(accepted.iter().cloned(), &mut state.answered);
                            state.answered.clear();
                        }
                        last.push(accepted, &mut state.answered);
                        state.answered.clear();
                    }
                }
                full
            };
            if let Some(group) = full {
                group.wait_for_room().await;
            }
        }
    }
}

/// The ids published to a topic within the de-duplication window, at most `capacity` of
/// them (the oldest are forgotten first). A zero window or capacity turns it off.
#[derive(Debug)]
struct Recent {
    window: Duration,
    capacity: usize,
    ids: HashSet<Uuid, BuildHasherDefault<IdHasher>>,
    order: VecDeque<(Instant, Uuid)>,
}

impl Recent {
    fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            ids: HashSet::default(),
            order: VecDeque::new(),
        }
    }

    /// Records `id`, returning whether it was not seen within the window.
    fn first_time(&mut self, id: Uuid, now: Instant) -> bool {
        if self.window.is_zero() || self.capacity == 0 {
            return true;
        }
        while let Some(&(at, old)) = self.order.front() {
            if now.duration_since(at) < self.window && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&old);
        }
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back((now, id));
        true
    }
}

/// Hashes message ids: they are UUIDs (mostly v7, with 74 random bits), so folding their
/// two halves is as good as a general-purpose hash and much cheaper.
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(29) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 ^= n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_are_forgotten_after_the_window_or_beyond_the_capacity() {
        let start = Instant::now();
        let mut recent = Recent::new(Duration::from_secs(10), 3);
        let [a, b, c, d] = [(); 4].map(|()| Uuid::now_v7());
        assert!(recent.first_time(a, start));
        assert!(!recent.first_time(a, start));
        assert!(recent.first_time(b, start + Duration::from_secs(1)));
        assert!(!recent.first_time(a, start + Duration::from_secs(9)));
        // The window passed for a, not for b.
        assert!(recent.first_time(a, start + Duration::from_secs(10)));
        assert!(!recent.first_time(b, start + Duration::from_secs(10)));
        // Capacity 3: c and d push b out.
        assert!(recent.first_time(c, start + Duration::from_secs(10)));
        assert!(recent.first_time(d, start + Duration::from_secs(10)));
        assert!(recent.first_time(b, start + Duration::from_secs(10)));
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let mut recent = Recent::new(Duration::ZERO, 100);
        let id = Uuid::now_v7();
        assert!(recent.first_time(id, Instant::now()));
        assert!(recent.first_time(id, Instant::now()));
    }
}

//! [`Slots`]: the global bound of an [`OrderedLayer`](super::OrderedLayer), a counter of
//! messages in flight and the services waiting for one to end.
//!
//! Taking and giving back a slot is one atomic operation each; the list of waiting
//! services is locked only when the bound was reached. (A general semaphore keeps its
//! waiters in a queue it locks on every release.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Up to `limit` slots. A slot is taken by [`poll_take`](Self::poll_take) and given back
/// by [`give_back`](Self::give_back), once.
#[derive(Debug)]
pub(super) struct Slots {
    limit: usize,
    /// Slots taken. Raised by `poll_take`, lowered by `give_back`.
    taken: AtomicUsize,
    /// Whether `wakers` may hold a waker; set under its lock by a service that found no
    /// slot, cleared under it by the `give_back` that wakes them.
    waiting: AtomicBool,
    /// The services that found every slot taken, woken all at once when one is given back
    /// (they then race for it).
    wakers: Mutex<Vec<Waker>>,
}

impl Slots {
    /// `limit` slots (at least 1).
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            taken: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            wakers: Mutex::default(),
        }
    }

    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    pub(super) fn taken(&self) -> usize {
        self.taken.load(SeqCst)
    }

    fn wakers(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_take(&self) -> bool {
        self.taken
            .fetch_update(SeqCst, SeqCst, |taken| {
                (taken < self.limit).then_some(taken + 1)
            })
            .is_ok()
    }

    /// Takes a slot, or registers `cx` to be woken when one is given back.
    pub(super) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.try_take() {
            return Poll::Ready(());
        }
        {
            let mut wakers = self.wakers();
            if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            self.waiting.store(true, SeqCst);
        }
        // A slot given back before `waiting` was set woke nobody: look again. (One given
        // back after it sees `waiting` and wakes this service.)
        if self.try_take() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Gives a taken slot back and wakes the services waiting for one.
    pub(super) fn give_back(&self) {
        self.taken.fetch_sub(1, SeqCst);
        if self.waiting.load(SeqCst) {
            let wakers = {
                let mut wakers = self.wakers();
                self.waiting.store(false, SeqCst);
                std::mem::take(&mut *wakers)
            };
            for waker in wakers {
                waker.wake();
            }
        }
    }
}

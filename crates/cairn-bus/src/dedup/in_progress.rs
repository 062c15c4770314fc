//! The ids being handled in this process right now, so that a second delivery of one of
//! them waits for the first instead of running beside it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
use uuid::Uuid;

use cairn_core::KeyedHash;

/// The ids in progress, each with the deliveries waiting for its outcome. Written by
/// [`claim`](Self::claim) and by [`Owner`]s when they finish; a waiter holds only its
/// receiver.
#[derive(Debug, Default)]
pub(super) struct InProgress {
    ids: Mutex<HashMap<Uuid, Vec<oneshot::Sender<bool>>, KeyedHash>>,
}

/// What a delivery gets from [`InProgress::claim`].
pub(super) enum Claim {
    /// Nobody handles the id: this delivery does, and must
    /// [`release`](InProgress::release) it.
    Owner,
    /// Another delivery handles it: this one learns whether it succeeded (`true`); a
    /// failure, or a claim released without an answer, says to claim again.
    Wait(oneshot::Receiver<bool>),
}

impl InProgress {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Vec<oneshot::Sender<bool>>, KeyedHash>> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `id` for the calling delivery, or a place among its waiters.
    pub(super) fn claim(&self, id: Uuid) -> Claim {
        let mut ids = self.lock();
        if let Some(waiters) = ids.get_mut(&id) {
            let (sender, receiver) = oneshot::channel();
            waiters.push(sender);
            return Claim::Wait(receiver);
        }
        ids.insert(id, Vec::new());
        Claim::Owner
    }

    /// Ends the claim on `id` and tells the waiters whether the message's effects are
    /// done.
    pub(super) fn release(&self, id: Uuid, succeeded: bool) {
        let waiters = self.lock().remove(&id);
        for waiter in waiters.into_iter().flatten() {
            // A waiter that went away needs no answer.
            let _ = waiter.send(succeeded);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A claim held across awaits: dropped without [`finish`](Self::finish) (a cancelled
/// delivery), it releases the claim as failed, so a waiter runs the message.
#[derive(Debug)]
pub(super) struct Owner<'a> {
    in_progress: &'a InProgress,
    id: Uuid,
    finished: bool,
}

impl<'a> Owner<'a> {
    /// The claim on `id`, which the caller got from [`InProgress::claim`].
    pub(super) fn new(in_progress: &'a InProgress, id: Uuid) -> Self {
        Self {
            in_progress,
            id,
            finished: false,
        }
    }

    /// Ends the claim and tells the waiters whether the message's effects are done.
    pub(super) fn finish(mut self, succeeded: bool) {
        self.finished = true;
        self.in_progress.release(self.id, succeeded);
    }
}

impl Drop for Owner<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.in_progress.release(self.id, false);
        }
    }
}

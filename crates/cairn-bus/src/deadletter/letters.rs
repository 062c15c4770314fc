//! [`DeadLetters`]: the handle to list, inspect, replay and discard parked messages.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::blocks::Claim;
use super::{DeadLetterError, KeyPolicy, ListFilter, Parked, ParkingId, Shared};
use crate::handler::{HandlerError, Incoming};

/// The service parked messages are replayed through: the one the layer wrapped.
pub(super) type ReplayService = BoxCloneService<Incoming, (), HandlerError>;

/// How many parked messages a replay of everything reads per page.
const PAGE: usize = 256;

/// What a replay did, by parking id, in parking order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Handled: removed from the store.
    pub handled: Vec<ParkingId>,
    /// Failed again: still parked, with the new error and attempts.
    pub failed: Vec<ParkingId>,
    /// Not tried because an older message of their key failed in this replay: still
    /// parked, their key still blocked.
    pub held: Vec<ParkingId>,
}

impl ReplayReport {
    /// Whether every message tried was handled and none was held.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.held.is_empty()
    }

    fn extend(&mut self, other: Self) {
        self.handled.extend(other.handled);
        self.failed.extend(other.failed);
        self.held.extend(other.held);
    }
}

/// The parked messages of one [`DeadLetterLayer`](super::DeadLetterLayer): list and
/// inspect them, replay them through the service the layer wrapped, discard them. Cheap to
/// clone; every clone sees the same messages.
///
/// **Order:** replays run in parking order. Under [`KeyPolicy::Block`] a key stays blocked
/// until it has no parked message left and no replay holds it; messages of the key that
/// arrive meanwhile are parked behind, so none overtakes a parked one; a replay of a key
/// stops at the first message that fails again; a single message can only be replayed
/// when it is the oldest parked one of its key ([`DeadLetterError::NotOldestOfKey`]). One
/// replay or discard at a time per key (per message, for messages without a blocking key):
/// another gets [`DeadLetterError::Busy`].
///
/// A replayed message reaches the wrapped service as a first delivery (`attempt` 1) from
/// its original topic. If the store fails to remove a message after its replay succeeded,
/// the error is returned and the message stays parked although handled: the handler's
/// idempotency (or the de-duplication middleware inside this one) covers a second replay.
#[derive(Clone)]
pub struct DeadLetters {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// The key policy of the layer.
    pub fn policy(&self) -> KeyPolicy {
        self.shared.policy
    }

    /// The parked messages `filter` selects, in parking order.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Store`] when the store failed.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Parked>, DeadLetterError> {
        Ok(self.shared.store.list(filter).await?)
    }

    /// The parked message `id`.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::NotFound`] when it is not parked; [`DeadLetterError::Store`]
    /// when the store failed.
    pub async fn get(&self, id: ParkingId) -> Result<Parked, DeadLetterError> {
        self.shared
            .store
            .get(id)
            .await?
            .ok_or(DeadLetterError::NotFound { id })
    }

    /// Whether messages of `key` are being parked behind a parked one.
    pub fn is_blocked(&self, key: &str) -> bool {
        self.shared.blocks.is_blocked(key)
    }

    /// The keys whose messages are being parked behind a parked one.
    pub fn blocked_keys(&self) -> Vec<String> {
        self.shared.blocks.keys()
    }

    /// Replays the parked message `id`: on success it is removed (and its key unblocked if
    /// it was the key's last); on failure it stays parked with the new error.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::NotFound`]; [`DeadLetterError::NotOldestOfKey`] when an older
    /// message of its blocked key is parked; [`DeadLetterError::Busy`];
    /// [`DeadLetterError::NoService`]; [`DeadLetterError::Store`].
    pub async fn replay(&self, id: ParkingId) -> Result<ReplayReport, DeadLetterError> {
        let parked = self.get(id).await?;
        let mut report = ReplayReport::default();
        if let Some(key) = self.shared.blocking_key(&parked) {
            let _claim = self.shared.blocks.claim_key(key, id)?;
            let oldest = self.oldest_of(key).await?;
            match oldest {
                Some(oldest) if oldest.id == id => {
                    self.run(oldest, &mut report).await?;
                }
                Some(oldest) => {
                    return Err(DeadLetterError::NotOldestOfKey {
                        id,
                        key: key.to_owned(),
                        oldest: oldest.id,
                    });
                }
                None => return Err(DeadLetterError::NotFound { id }),
            }
        } else {
            let _claim = self.shared.blocks.claim_id(id)?;
            let parked = self.get(id).await?;
            self.run(parked, &mut report).await?;
        }
        Ok(report)
    }

    /// Replays the parked messages of `key` in parking order, including those parked behind
    /// while the replay runs. Under [`KeyPolicy::Block`] it stops at the first that fails
    /// again (the rest are `held`) and the key is unblocked when none is left; under
    /// [`KeyPolicy::Continue`] it tries each.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Busy`] when the key (or, under `Continue`, one of its messages)
    /// is being replayed or discarded; [`DeadLetterError::NoService`];
    /// [`DeadLetterError::Store`].
    pub async fn replay_key(&self, key: &str) -> Result<ReplayReport, DeadLetterError> {
        let mut report = ReplayReport::default();
        match self.shared.policy {
            KeyPolicy::Block => {
                let oldest = self.oldest_of(key).await?;
                let Some(oldest) = oldest else {
                    return Ok(report);
                };
                let _claim = self.shared.blocks.claim_key(key, oldest.id)?;
                self.replay_claimed_key(key, &mut report).await?;
            }
            KeyPolicy::Continue => {
                let filter = ListFilter::new().key(key);
                for parked in self.shared.store.list(&filter).await? {
                    let _claim = self.shared.blocks.claim_id(parked.id)?;
                    self.run(parked, &mut report).await?;
                }
            }
        }
        Ok(report)
    }

    /// Replays every parked message in parking order, key by key as
    /// [`replay_key`](Self::replay_key) does: a key whose message fails again keeps the
    /// rest of its messages parked, other keys go on. Messages busy in another replay are
    /// left for it.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::NoService`]; [`DeadLetterError::Store`].
    pub async fn replay_all(&self) -> Result<ReplayReport, DeadLetterError> {
        let mut report = ReplayReport::default();
        let mut keys_done = HashSet::new();
        let mut after = None;
        loop {
            let mut filter = ListFilter::new().limit(PAGE);
            filter.after = after;
            let page = self.shared.store.list(&filter).await?;
            let Some(last) = page.last() else {
                return Ok(report);
            };
            after = Some(last.id);
            for parked in page {
                if let Some(key) = self.shared.blocking_key(&parked) {
                    if keys_done.insert(key.to_owned()) {
                        match self.replay_key(key).await {
                            Ok(done) => report.extend(done),
                            Err(DeadLetterError::Busy { .. }) => {}
                            Err(error) => return Err(error),
                        }
                    }
                    continue;
                }
                let Ok(_claim) = self.shared.blocks.claim_id(parked.id) else {
                    continue;
                };
                // Fresh: it may have gone since the page was read.
                if let Some(parked) = self.shared.store.get(parked.id).await? {
                    self.run(parked, &mut report).await?;
                }
            }
        }
    }

    /// Removes the parked message `id` without handling it, and returns it. Discarding the
    /// oldest message of a blocked key lets the next one become the oldest; the key is
    /// unblocked when none is left.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::NotFound`]; [`DeadLetterError::Busy`] while it (or its blocked
    /// key) is being replayed; [`DeadLetterError::Store`].
    pub async fn discard(&self, id: ParkingId) -> Result<Parked, DeadLetterError> {
        let parked = self.get(id).await?;
        let _claim: Claim = match self.shared.blocking_key(&parked) {
            Some(key) => self.shared.blocks.claim_key(key, id)?,
            None => self.shared.blocks.claim_id(id)?,
        };
        let removed = self
            .shared
            .store
            .remove(id)
            .await?
            .ok_or(DeadLetterError::NotFound { id })?;
        if let Some(key) = self.shared.blocking_key(&removed) {
            self.shared.blocks.unpark(key);
        }
        Ok(removed)
    }

    /// Rebuilds the blocked keys from the store, returning how many keys are blocked. The
    /// layer keeps them in memory; with a store that outlives the process, call this once
    /// before the consumer starts, so that keys parked by an earlier run stay blocked.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Store`].
    pub async fn reload(&self) -> Result<usize, DeadLetterError> {
        let mut counts: HashMap<String, (usize, ParkingId)> = HashMap::new();
        let mut after = None;
        loop {
            let mut filter = ListFilter::new().limit(PAGE);
            filter.after = after;
            let page = self.shared.store.list(&filter).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for parked in &page {
                if let Some(key) = self.shared.blocking_key(parked) {
                    counts.entry(key.to_owned()).or_insert((0, parked.id)).0 += 1;
                }
            }
        }
        let blocked = counts.len();
        self.shared.blocks.reset(counts);
        Ok(blocked)
    }

    /// The oldest parked message of `key`.
    async fn oldest_of(&self, key: &str) -> Result<Option<Parked>, DeadLetterError> {
        let filter = ListFilter::new().key(key).limit(1);
        Ok(self.shared.store.list(&filter).await?.into_iter().next())
    }

    /// Replays `key`'s messages oldest first while they succeed; the caller holds the key.
    async fn replay_claimed_key(
        &self,
        key: &str,
        report: &mut ReplayReport,
    ) -> Result<(), DeadLetterError> {
        while let Some(oldest) = self.oldest_of(key).await? {
            self.shared.blocks.set_blocker(key, oldest.id);
            let id = oldest.id;
            if !self.run(oldest, report).await? {
                let rest = ListFilter::new().key(key).after(id);
                let held = self.shared.store.list(&rest).await?;
                report.held.extend(held.iter().map(|parked| parked.id));
                break;
            }
        }
        Ok(())
    }

    /// Runs `parked` through the wrapped service; the caller holds its claim. Returns
    /// whether it was handled.
    async fn run(
        &self,
        parked: Parked,
        report: &mut ReplayReport,
    ) -> Result<bool, DeadLetterError> {
        let mut service = self.shared.replay_service()?;
        let incoming = Incoming {
            topic: Arc::clone(&parked.topic),
            message: Arc::clone(&parked.message),
            attempt: 1,
        };
        let result = match service.ready().await {
            Ok(service) => service.call(incoming).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => {
                self.shared.store.remove(parked.id).await?;
                if let Some(key) = self.shared.blocking_key(&parked) {
                    self.shared.blocks.unpark(key);
                }
                report.handled.push(parked.id);
                Ok(true)
            }
            Err(error) => {
                let attempts = parked.attempts.saturating_add(error.attempts());
                self.shared
                    .store
                    .record_failure(parked.id, error.code(), &error.to_string(), attempts)
                    .await?;
                tracing::warn!(
                    parking_id = %parked.id,
                    message_id = %parked.message.id,
                    code = error.code(),
                    %error,
                    "a replayed message failed again and stays parked"
                );
                report.failed.push(parked.id);
                Ok(false)
            }
        }
    }
}

//! The repository: loads an aggregate (its latest snapshot, then the events after it),
//! runs a command through the decider, appends the events it causes with
//! `Exact(revision)`, and on a conflict reloads and decides again, up to a bound.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use cairn_core::{
    CurrentRevision, EventData, EventStore, ExpectedRevision, InvalidStreamName, MAX_PAGE_SIZE,
    Position, ReadError, ReadStream, Revision, StreamMetadata, StreamName, WriteError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;
use tracing::Instrument;

use crate::upcast::CheckError;
use crate::{CommandContext, Decider, DecodeError, EncodeError, Upcasters, codec};

/// How many times [`Repository::execute`] decides a command before it gives up on
/// conflicts, unless set with [`RepositoryBuilder::max_attempts`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// The event type of snapshot events.
pub const SNAPSHOT_EVENT_TYPE: &str = "cairn.snapshot";
/// Metadata of a snapshot event: the aggregate revision it covers.
pub const SNAPSHOT_REVISION: &str = "snapshotrevision";
/// Metadata of a snapshot event: the version of the state's layout.
pub const SNAPSHOT_VERSION: &str = "snapshotversion";

/// When the repository writes snapshots of an aggregate's state.
///
/// A snapshot is an optimisation: it lives in its own stream
/// (`snapshots.{category}-{id}`, keeping only the latest), records the revision it covers
/// and the [`version`](SnapshotPolicy::version) of the state's layout, and is ignored (and
/// rewritten) when that version is not the current one, so a changed state type is never
/// misread from an old snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    every: u64,
    version: u32,
}

impl SnapshotPolicy {
    /// A snapshot every `events` events of a stream (0: only on demand, through
    /// [`Repository::snapshot`]), layout version 1.
    pub fn every(events: u64) -> Self {
        Self {
            every: events,
            version: 1,
        }
    }

    /// Snapshots only when asked for.
    pub fn on_demand() -> Self {
        Self::every(0)
    }

    /// Sets the version of the state's layout: change it whenever the state type changes
    /// shape, and snapshots of other versions are ignored.
    #[must_use]
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }
}

type EncodeState<S> = fn(&S) -> Result<Value, serde_json::Error>;
type DecodeState<S> = fn(Value) -> Result<S, serde_json::Error>;

struct Snapshots<S> {
    policy: SnapshotPolicy,
    encode: EncodeState<S>,
    decode: DecodeState<S>,
}

impl<S> Clone for Snapshots<S> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy,
            encode: self.encode,
            decode: self.decode,
        }
    }
}

/// An aggregate's state as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<S> {
    /// The state after every event of the stream.
    pub state: S,
    /// The revision of the stream's last event (`None`: no events).
    pub revision: Option<Revision>,
    /// How many events were read and applied (after the snapshot, when one was used).
    pub replayed: u64,
    /// Whether the load started from a snapshot.
    pub from_snapshot: bool,
}

/// What a command did.
pub struct Executed<D: Decider> {
    /// The events it recorded (none when the decider decided nothing).
    pub events: Vec<D::Event>,
    /// The state after them.
    pub state: D::State,
    /// The stream's revision after them.
    pub revision: Option<Revision>,
    /// The position of the last event recorded, when any was.
    pub position: Option<Position>,
    /// How many times the command was decided (more than 1 after conflicts).
    pub attempts: u32,
}

impl<D: Decider> fmt::Debug for Executed<D>
where
    D::Event: fmt::Debug,
    D::State: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executed")
            .field("events", &self.events)
            .field("state", &self.state)
            .field("revision", &self.revision)
            .field("position", &self.position)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl<D: Decider> Clone for Executed<D> {
    fn clone(&self) -> Self {
        Self {
            events: self.events.clone(),
            state: self.state.clone(),
            revision: self.revision,
            position: self.position,
            attempts: self.attempts,
        }
    }
}

/// Why an aggregate could not be loaded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The aggregate id does not make a valid stream name.
    #[error("aggregate id {id:?} does not make a valid stream name: {source}")]
    InvalidId {
        /// The id.
        id: String,
        /// Why.
        #[source]
        source: InvalidStreamName,
    },
    /// Reading the stream failed (or it is tombstoned).
    #[error("reading the aggregate failed: {0}")]
    Read(#[from] ReadError),
    /// A stored event cannot be read as one of the aggregate's events.
    #[error("event {revision} of stream {stream} cannot be read: {source}")]
    Decode {
        /// The stream.
        stream: StreamName,
        /// The event's revision.
        revision: Revision,
        /// Why.
        #[source]
        source: DecodeError,
    },
}

impl LoadError {
    /// A stable, machine-readable code, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidId { .. } => "invalid_aggregate_id",
            Self::Read(error) => error.code(),
            Self::Decode { .. } => "event_undecodable",
        }
    }
}

/// Why a command was not carried out. Nothing of it was recorded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The decider refused the command.
    #[error("the command was refused: {0}")]
    Rejected(#[source] E),
    /// Other writers kept changing the aggregate: every attempt met a newer revision.
    #[error(
        "stream {stream} kept changing: {attempts} attempts met a conflict, the last at {actual}"
    )]
    Conflict {
        /// The aggregate's stream.
        stream: StreamName,
        /// How many times the command was decided.
        attempts: u32,
        /// The stream's revision at the last conflict.
        actual: CurrentRevision,
    },
    /// The aggregate could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// An event the decider produced cannot be written as JSON.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The store refused the write for another reason than a conflict.
    #[error("appending the command's events failed: {0}")]
    Write(#[source] WriteError),
}

impl<E: std::error::Error + 'static> CommandError<E> {
    /// A stable, machine-readable code, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rejected(_) => "command_rejected",
            Self::Conflict { .. } => "command_conflict",
            Self::Load(error) => error.code(),
            Self::Encode(_) => "event_unencodable",
            Self::Write(error) => error.code(),
        }
    }
}

/// Builds a [`Repository`]; [`RepositoryBuilder::build`] checks the store's event
/// versions against the upcasters first.
pub struct RepositoryBuilder<D: Decider, S: ?Sized> {
    store: Arc<S>,
    upcasters: Upcasters,
    snapshots: Option<Snapshots<D::State>>,
    cache: Option<Arc<StateCache<D::State>>>,
    max_attempts: u32,
}

impl<D: Decider, S: EventStore + ?Sized> RepositoryBuilder<D, S> {
    /// Sets the upcasters for the aggregate's older event versions.
    #[must_use]
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Writes snapshots of the state by `policy`.
    #[must_use]
    pub fn snapshots(mut self, policy: SnapshotPolicy) -> Self
    where
        D::State: Serialize + DeserializeOwned,
    {
        self.snapshots = Some(Snapshots {
            policy,
            encode: |state| serde_json::to_value(state),
            decode: serde_json::from_value,
        });
        self
    }

    /// Keeps the state of up to `capacity` aggregates in memory after each command, so
    /// that the next command on one of them decides without reading the store.
    ///
    /// This is safe because every append expects the revision the state was built at: if
    /// anything else wrote to the stream meanwhile (another process, another repository,
    /// a deletion), the append fails with a conflict, the entry is dropped and the command
    /// is decided again on a fresh load. When the cache is full, an arbitrary entry makes
    /// room. A capacity of 0 turns the cache off.
    #[must_use]
    pub fn cache(mut self, capacity: usize) -> Self
    where
        D::State: Clone,
    {
        self.cache = (capacity > 0).then(|| {
            Arc::new(StateCache {
                capacity,
                clone: D::State::clone,
                entries: Mutex::new(HashMap::new()),
            })
        });
        self
    }

    /// How many times a command is decided before conflicts make it fail (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Checks that every version of the aggregate's event types in the store can be
    /// upcast to the current one ([`Upcasters::check`]), then builds the repository.
    ///
    /// # Errors
    ///
    /// [`CheckError`] naming the first type and version that cannot be read, or the read
    /// failure.
    pub async fn build(self) -> Result<Repository<D, S>, CheckError> {
        self.upcasters
            .check::<D::Event>(self.store.as_ref())
            .await?;
        Ok(self.build_unchecked())
    }

    /// Builds the repository without scanning the store (for a store known to hold
    /// only current versions, such as a new one); an unbridged version then surfaces as
    /// a [`LoadError::Decode`] when it is read.
    pub fn build_unchecked(self) -> Repository<D, S> {
        Repository {
            store: self.store,
            upcasters: self.upcasters,
            snapshots: self.snapshots,
            cache: self.cache,
            max_attempts: self.max_attempts,
            decider: PhantomData,
        }
    }
}

/// Loads aggregates of decider `D` from store `S` and runs commands on them. Cheap to
/// clone; clones share the store.
///
/// # Examples
///
/// See the crate documentation.
pub struct Repository<D: Decider, S: ?Sized> {
    store: Arc<S>,
    upcasters: Upcasters,
    snapshots: Option<Snapshots<D::State>>,
    /// States after the last command on each aggregate, shared by the clones.
    cache: Option<Arc<StateCache<D::State>>>,
    max_attempts: u32,
    decider: PhantomData<fn() -> D>,
}

/// The aggregate states a [`Repository`] keeps between commands
/// ([`RepositoryBuilder::cache`]). Commands take an entry out while they run and put the
/// new state back after their append succeeded, so two commands never decide on one
/// entry.
struct StateCache<T> {
    capacity: usize,
    clone: fn(&T) -> T,
    entries: Mutex<HashMap<StreamName, (T, Option<Revision>)>>,
}

impl<T> StateCache<T> {
    fn take(&self, stream: &StreamName) -> Option<(T, Option<Revision>)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(stream)
    }

    fn put(&self, stream: &StreamName, state: &T, revision: Option<Revision>) {
        let state = (self.clone)(state);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Two commands may finish out of order; never let the older state win.
        if let Some((_, kept)) = entries.get(stream)
            && *kept > revision
        {
            return;
        }
        if entries.len() >= self.capacity && !entries.contains_key(stream) {
            let victim = entries.keys().next().cloned();
            if let Some(victim) = victim {
                entries.remove(&victim);
            }
        }
        entries.insert(stream.clone(), (state, revision));
    }
}

impl<D: Decider, S: ?Sized> Clone for Repository<D, S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            upcasters: self.upcasters.clone(),
            snapshots: self.snapshots.clone(),
            cache: self.cache.clone(),
            max_attempts: self.max_attempts,
            decider: PhantomData,
        }
    }
}

impl<D: Decider, S: ?Sized> fmt::Debug for Repository<D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("category", &D::CATEGORY)
            .field("upcasters", &self.upcasters)
            .field("snapshots", &self.snapshots.as_ref().map(|s| s.policy))
            .field("cache", &self.cache.as_ref().map(|c| c.capacity))
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<D: Decider, S: EventStore + ?Sized> Repository<D, S> {
    /// A builder for a repository over `store`.
    pub fn builder(store: Arc<S>) -> RepositoryBuilder<D, S> {
        RepositoryBuilder {
            store,
            upcasters: Upcasters::new(),
            snapshots: None,
            cache: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The stream of aggregate `id`: `{CATEGORY}-{id}`.
    ///
    /// # Errors
    ///
    /// [`LoadError::InvalidId`] when that is not a valid stream name.
    pub fn stream_of(&self, id: &str) -> Result<StreamName, LoadError> {
        // Built by hand: the formatter costs about ten times as much, on every command.
        let mut name = String::with_capacity(D::CATEGORY.len() + 1 + id.len());
        name.push_str(D::CATEGORY);
        name.push('-');
        name.push_str(id);
        StreamName::new(name).map_err(|source| LoadError::InvalidId {
            id: id.to_owned(),
            source,
        })
    }

    fn snapshot_stream_of(stream: &StreamName) -> Option<StreamName> {
        StreamName::new(format!("snapshots.{stream}")).ok()
    }

    /// Loads aggregate `id`: the latest usable snapshot, then every event after it.
    ///
    /// # Errors
    ///
    /// [`LoadError`] when the id is not valid, the stream cannot be read (or is
    /// tombstoned), or an event cannot be decoded.
    pub async fn load(&self, id: &str) -> Result<Loaded<D::State>, LoadError> {
        let stream = self.stream_of(id)?;
        self.load_stream(&stream).await
    }

    async fn load_stream(&self, stream: &StreamName) -> Result<Loaded<D::State>, LoadError> {
        let snapshot = match &self.snapshots {
            Some(snapshots) => self.read_snapshot(stream, snapshots).await,
            None => None,
        };
        let from_snapshot = snapshot.is_some();
        let (mut state, mut revision) = match snapshot {
            Some((state, revision)) => (state, Some(revision)),
            None => (D::State::default(), None),
        };
        let mut replayed = 0u64;
        let mut next = revision.map_or(Revision(0), Revision::next);
        loop {
            let page = self
                .store
                .read_stream(
                    stream,
                    ReadStream::forwards()
                        .from_revision(next)
                        .limit(MAX_PAGE_SIZE),
                )
                .await?;
            for recorded in &page.events {
                let event =
                    codec::decode::<D::Event>(&self.upcasters, recorded).map_err(|source| {
                        LoadError::Decode {
                            stream: stream.clone(),
                            revision: recorded.revision,
                            source,
                        }
                    })?;
                state = D::evolve(state, &event);
                revision = Some(recorded.revision);
                replayed += 1;
            }
            match page.next {
                Some(revision) if !page.events.is_empty() => next = revision,
                _ => break,
            }
        }
        let loaded = Loaded {
            state,
            revision,
            replayed,
            from_snapshot,
        };
        // A load that replayed a full snapshot interval (none was there, or it was of
        // another version) writes a fresh one.
        if let (Some(snapshots), Some(revision)) = (&self.snapshots, loaded.revision)
            && snapshots.policy.every > 0
            && loaded.replayed >= snapshots.policy.every
        {
            self.write_snapshot(stream, snapshots, &loaded.state, revision)
                .await;
        }
        Ok(loaded)
    }

    async fn read_snapshot(
        &self,
        stream: &StreamName,
        snapshots: &Snapshots<D::State>,
    ) -> Option<(D::State, Revision)> {
        let snapshot_stream = Self::snapshot_stream_of(stream)?;
        let page = self
            .store
            .read_stream(&snapshot_stream, ReadStream::backwards().limit(1))
            .await
            .ok()?;
        let event = page.events.first()?;
        let usable = event.event_type == SNAPSHOT_EVENT_TYPE
            && event.metadata.get(SNAPSHOT_VERSION)
                == Some(snapshots.policy.version.to_string().as_str());
        if !usable {
            tracing::debug!(%stream, "ignoring a snapshot of another version");
            return None;
        }
        let revision = Revision(event.metadata.get(SNAPSHOT_REVISION)?.parse().ok()?);
        let value: Value = serde_json::from_slice(&event.payload).ok()?;
        match (snapshots.decode)(value) {
            Ok(state) => Some((state, revision)),
            Err(error) => {
                tracing::warn!(%stream, %error, "ignoring a snapshot that does not fit the state");
                None
            }
        }
    }

    /// Writes a snapshot of `state` at `revision`. A failure only costs a slower next
    /// load, so it is logged, not returned.
    async fn write_snapshot(
        &self,
        stream: &StreamName,
        snapshots: &Snapshots<D::State>,
        state: &D::State,
        revision: Revision,
    ) {
        let Some(snapshot_stream) = Self::snapshot_stream_of(stream) else {
            tracing::warn!(%stream, "no snapshot stream name fits this stream");
            return;
        };
        let written = async {
            let value = (snapshots.encode)(state)?;
            let mut data = EventData::new(SNAPSHOT_EVENT_TYPE, serde_json::to_vec(&value)?);
            data.metadata
                .insert(SNAPSHOT_REVISION, revision.0.to_string());
            data.metadata
                .insert(SNAPSHOT_VERSION, snapshots.policy.version.to_string());
            let result = self
                .store
                .append(&snapshot_stream, ExpectedRevision::Any, vec![data])
                .await?;
            if result.revision == Revision(0) {
                // Only the latest snapshot is ever read.
                self.store
                    .set_stream_metadata(
                        &snapshot_stream,
                        StreamMetadata::default().with_max_count(1),
                    )
                    .await?;
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }
        .await;
        if let Err(error) = written {
            tracing::warn!(%stream, %error, "writing a snapshot failed");
        }
    }

    /// Writes a snapshot of aggregate `id` now (snapshots must be configured).
    ///
    /// # Errors
    ///
    /// [`LoadError`] when the aggregate cannot be loaded.
    pub async fn snapshot(&self, id: &str) -> Result<Option<Revision>, LoadError> {
        let stream = self.stream_of(id)?;
        let loaded = self.load_stream(&stream).await?;
        if let (Some(snapshots), Some(revision)) = (&self.snapshots, loaded.revision) {
            self.write_snapshot(&stream, snapshots, &loaded.state, revision)
                .await;
        }
        Ok(loaded.revision)
    }

    /// Runs `command` on aggregate `id` as a new command with no origin (see
    /// [`Repository::execute_with`]).
    ///
    /// # Errors
    ///
    /// As [`Repository::execute_with`].
    pub async fn execute(
        &self,
        id: &str,
        command: D::Command,
    ) -> Result<Executed<D>, CommandError<D::Error>> {
        self.execute_with(id, command, CommandContext::new()).await
    }

    /// Runs `command` on aggregate `id`: load, decide, append with the loaded revision
    /// expected; when another writer got there first, load and decide again, up to the
    /// configured number of attempts. Every event records the context's correlation,
    /// causation, trace and tenant (see [`CommandContext`]).
    ///
    /// # Errors
    ///
    /// - [`CommandError::Rejected`] with the decider's error;
    /// - [`CommandError::Conflict`] when every attempt met a conflict;
    /// - [`CommandError::Load`], [`CommandError::Encode`], [`CommandError::Write`] when
    ///   loading, encoding or appending failed otherwise.
    pub async fn execute_with(
        &self,
        id: &str,
        command: D::Command,
        context: CommandContext,
    ) -> Result<Executed<D>, CommandError<D::Error>> {
        let stream = self.stream_of(id)?;
        let traceparent = context.trace();
        let span = tracing::info_span!(
            "cairn.command",
            category = D::CATEGORY,
            aggregate = id,
            command_id = %context.command_id,
            traceparent = %traceparent,
            attempts = tracing::field::Empty,
        );
        let metadata = context.metadata(&traceparent);
        async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                tracing::Span::current().record("attempts", attempt);
                // The first attempt may start from the cached state; a retry after a
                // conflict always reads the store.
                let cached = if attempt == 1 {
                    self.cache.as_ref().and_then(|cache| cache.take(&stream))
                } else {
                    None
                };
                let loaded = match cached {
                    Some((state, revision)) => Loaded {
                        state,
                        revision,
                        replayed: 0,
                        from_snapshot: false,
                    },
                    None => self.load_stream(&stream).await?,
                };
                let events = match D::decide(&loaded.state, &command) {
                    Ok(events) => events,
                    Err(rejected) => {
                        self.remember(&stream, &loaded.state, loaded.revision);
                        return Err(CommandError::Rejected(rejected));
                    }
                };
                if events.is_empty() {
                    self.remember(&stream, &loaded.state, loaded.revision);
                    return Ok(Executed {
                        events,
                        state: loaded.state,
                        revision: loaded.revision,
                        position: None,
                        attempts: attempt,
                    });
                }
                let data = events
                    .iter()
                    .map(|event| codec::encode(event, &metadata))
                    .collect::<Result<Vec<_>, _>>()?;
                let expected = loaded
                    .revision
                    .map_or(ExpectedRevision::NoStream, |r| ExpectedRevision::Exact(r.0));
                match self.store.append(&stream, expected, data).await {
                    Ok(result) => {
                        let state = events.iter().fold(loaded.state, D::evolve);
                        self.remember(&stream, &state, Some(result.revision));
                        self.after_append(&stream, &state, loaded.revision, result.revision)
                            .await;
                        return Ok(Executed {
                            events,
                            state,
                            revision: Some(result.revision),
                            position: Some(result.position),
                            attempts: attempt,
                        });
                    }
                    Err(WriteError::WrongExpectedRevision { actual, .. }) => {
                        if attempt >= self.max_attempts {
                            return Err(CommandError::Conflict {
                                stream: stream.clone(),
                                attempts: attempt,
                                actual,
                            });
                        }
                        tracing::debug!(%actual, "conflict; deciding again on the newer state");
                    }
                    Err(error) => return Err(CommandError::Write(error)),
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Keeps `state` at `revision` for the next command on `stream`, when caching.
    fn remember(&self, stream: &StreamName, state: &D::State, revision: Option<Revision>) {
        if let Some(cache) = &self.cache {
            cache.put(stream, state, revision);
        }
    }

    /// Writes a snapshot when the append crossed a multiple of the policy's interval.
    async fn after_append(
        &self,
        stream: &StreamName,
        state: &D::State,
        before: Option<Revision>,
        after: Revision,
    ) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        let every = snapshots.policy.every;
        let count_before = before.map_or(0, |r| r.0 + 1);
        if every > 0 && count_before / every < (after.0 + 1) / every {
            self.write_snapshot(stream, snapshots, state, after).await;
        }
    }
}

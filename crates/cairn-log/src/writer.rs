//! The writer: two threads that own the tail of the log, as a two-stage pipeline.
//!
//! - The **planner** takes every queued command at once ([`Queue`]), checks each against
//!   the index plus what earlier, not yet applied commands will change (so commands behave
//!   exactly as if they ran one by one), encodes the accepted ones into one buffer and
//!   writes it with one `write` per segment touched. It then hands the batch to the syncer
//!   and plans the next one while the syncer flushes.
//! - The **syncer** flushes (`fdatasync`, once for the whole batch: group commit), applies
//!   the batch to the index, and only then answers every caller of the batch, rejected
//!   ones included, so no answer ever depends on a write that might not become durable.
//!
//! The hand-over is a rendezvous: the planner writes batch `k + 1` while batch `k` flushes,
//! but writes `k + 2` only after `k` is durable. Every batch header says which of those
//! guarantees held when it was written ([`PRIOR_DURABLE`], [`PRIOR_BUT_ONE_DURABLE`]);
//! recovery uses that to tell a torn tail from damage.
//!
//! Nothing is acknowledged, and nothing becomes visible to readers, before its flush (in the
//! default durability mode). A failed write or flush fails every command not yet answered
//! and stops the writer for good (fail-stop): the store must be reopened, and recovery
//! decides what is durable.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::{HashTable, hash_table};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use cairn_core::{
    AppendResult, CurrentRevision, EventData, ExpectedRevision, Position, Revision, StorageError,
    StorageErrorKind, StoreLimits, StreamAppend, StreamMetadata, StreamName, StreamState,
    Timestamp, Uuid, WriteError,
};
use tokio::sync::{oneshot, watch};

use crate::format::{
    BATCH_HEADER_LEN, PRIOR_BUT_ONE_DURABLE, PRIOR_DURABLE, begin_batch, encode_delete,
    encode_event, encode_metadata, encode_tombstone, event_record_len, finish_batch,
};
use crate::ids::MergeJob;
use crate::index::{Effect, Index, PremixedMap, id_key, label_hash};
use crate::options::Durability;
use crate::scan::LogReader;
use crate::segments::{Segments, WRITER_ZERO_STEP, zeros_pay};
use crate::storage::StorageFile;

/// The largest encoding buffer the planner keeps between batches; a rare huge batch gives
/// its memory back.
const MAX_SPARE_BUFFER: usize = 16 << 20;

/// A request to the preallocator: the base of the segment to prepare, and about when the
/// writer will need it.
type Prepare = (u64, std::time::Duration, u64);

/// What the store's handles and its writer share.
pub(crate) struct Shared {
    /// Written only by the syncer, after a batch is durable; read by everyone.
    pub(crate) index: RwLock<Index>,
    pub(crate) segments: Segments,
    /// Bumped by the syncer after every applied batch; subscriptions wait on it.
    pub(crate) changes: watch::Sender<u64>,
    pub(crate) queue: Queue,
    pub(crate) limits: StoreLimits,
    /// Written by the syncer, read by the planner.
    pub(crate) progress: Progress,
}

/// How far the pipeline got. The syncer writes both; the planner reads them.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The sequence number of the last batch frame known durable.
    synced_sequence: AtomicU64,
    /// The number of the last planned batch applied to the index, its event ids included.
    applied_batch: AtomicU64,
    /// Batches handed to the syncer and not yet answered. The planner increments, the
    /// syncer decrements.
    in_flight: AtomicU64,
    /// Moving average of a flush, in microseconds. Written by whoever flushes.
    flush_micros: AtomicU64,
    /// Moving average of the bytes a flush made durable. Written by the committer.
    flush_bytes: AtomicU64,
    /// Moving average of planning and writing a batch, in microseconds. Written by the
    /// planner.
    plan_micros: AtomicU64,
    /// Batches the syncer finished; the planner waits on `committed` for it to move.
    commits: Mutex<u64>,
    committed: Condvar,
    /// The failure that stopped the writer, if any. Set once, by either thread.
    failure: Mutex<Option<StorageError>>,
}

impl Progress {
    pub(crate) fn new(synced_sequence: u64) -> Self {
        Self {
            synced_sequence: AtomicU64::new(synced_sequence),
            ..Self::default()
        }
    }

    /// Whether the writer stopped after a storage failure.
    pub(crate) fn failed(&self) -> bool {
        self.failure().is_some()
    }

    fn failure(&self) -> Option<StorageError> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Folds a new sample into a moving average of durations.
    fn average(average: &AtomicU64, sample: std::time::Duration) {
        Self::fold(
            average,
            u64::try_from(sample.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// Folds a new sample into a moving average.
    fn fold(average: &AtomicU64, sample: u64) {
        let old = average.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old.saturating_mul(7).saturating_add(sample)) / 8
        };
        average.store(new, Ordering::Relaxed);
    }

    /// Waits (a bounded time) for the syncer to finish the batch it holds.
    fn wait_for_syncer(&self) {
        let deadline = Instant::now() + std::time::Duration::from_millis(50);
        let mut commits = self.commits.lock().unwrap_or_else(PoisonError::into_inner);
        while self.in_flight.load(Ordering::Acquire) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            commits = self
                .committed
                .wait_timeout(commits, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Tells a waiting planner that the syncer finished a batch.
    fn note_commit(&self) {
        *self.commits.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.committed.notify_all();
    }

    /// Records a failure (the first one wins) and returns the error callers get.
    fn fail(&self, what: String, error: std::io::Error) -> StorageError {
        let error = StorageError::io(what, error);
        tracing::error!(%error, "the log writer stopped");
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(error)
            .clone()
    }

    /// The error for commands that arrive after the writer stopped.
    fn stopped(&self) -> Option<WriteError> {
        self.failure().map(|cause| {
            WriteError::Storage(StorageError::new(
                StorageErrorKind::Stopped,
                format!("the store stopped after a storage failure and must be reopened: {cause}"),
            ))
        })
    }
}

/// The answer channel of a command.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, WriteError>>;

/// The answer to an append, with the appends given back: the caller's thread, which
/// allocated their events, frees them, rather than the thread that answers a whole batch
/// and would free every event of it between one answer and the next.
pub(crate) type AppendReply =
    oneshot::Sender<(Result<Vec<AppendResult>, WriteError>, Vec<StreamAppend>)>;

/// A change to a stream's lifecycle.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LifecycleChange {
    Metadata(StreamMetadata),
    Delete(ExpectedRevision),
    Tombstone(ExpectedRevision),
}

/// A request to the writer.
pub(crate) enum Command {
    Append {
        appends: Vec<StreamAppend>,
        reply: AppendReply,
        /// `Some(batch)` when the caller found none of the events' ids in the index while
        /// it held every batch up to `batch` (see [`precheck_ids`]); the planner then looks
        /// for them among later batches only.
        checked: Option<u64>,
    },
    Lifecycle {
        stream: StreamName,
        change: LifecycleChange,
        reply: Reply<()>,
    },
    /// Flush everything written so far (used by weaker durability modes and on close).
    Flush { reply: Reply<()> },
}

impl Command {
    /// Answers the command; a caller that stopped waiting is not an error.
    fn answer(self, outcome: Result<Vec<AppendResult>, WriteError>) {
        match self {
            Command::Append { reply, appends, .. } => drop(reply.send((outcome, appends))),
            Command::Lifecycle { reply, .. } | Command::Flush { reply } => {
                drop(reply.send(outcome.map(drop)));
            }
        }
    }
}

/// Commands waiting for the writer. Callers push and notify; the planner takes them all at
/// once, which is what batches concurrent appends into one flush.
#[derive(Default)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    commands: Vec<Command>,
    closed: bool,
    /// Whether the planner sleeps on `wake`; callers only signal it then, which spares a
    /// system call per append while the planner is busy.
    waiting: bool,
}

impl Queue {
    /// Queues `command`, or gives it back when the writer is gone.
    pub(crate) fn push(&self, command: Command) -> Result<(), Command> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed {
            return Err(command);
        }
        state.commands.push(command);
        let waiting = state.waiting;
        drop(state);
        if waiting {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Whether no command waits.
    fn is_empty(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .commands
            .is_empty()
    }

    /// Stops accepting commands; the writer finishes what is queued and exits.
    pub(crate) fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.wake.notify_all();
    }

    /// Takes every queued command, waiting for one. The flag says whether the queue is
    /// closed.
    fn take(&self, into: &mut Vec<Command>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.commands.is_empty() && !state.closed {
            state.waiting = true;
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.waiting = false;
        std::mem::swap(&mut state.commands, into);
        state.closed
    }
}

/// Where the writer starts: the end of the recovered log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterStart {
    /// The global offset where the next batch goes.
    pub(crate) write_at: u64,
    /// The sequence number of the next batch.
    pub(crate) sequence: u64,
}

/// Starts the writer's threads; the handle joins them all.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    durability: Durability,
    start: WriterStart,
) -> std::io::Result<JoinHandle<()>> {
    let (handoff, batches) = mpsc::sync_channel::<InFlight>(0);
    let committer = Arc::new(Mutex::new(Committer {
        shared: Arc::clone(&shared),
        durability,
        file: None,
        dirty: None,
        unflushed: 0,
        last_sync: Instant::now(),
    }));
    let syncer = Syncer {
        shared: Arc::clone(&shared),
        committer: Arc::clone(&committer),
        durability,
    };
    let syncer = std::thread::Builder::new()
        .name("cairn-log-sync".to_owned())
        .spawn(move || syncer.run(&batches))?;
    let planner = Planner::new(shared, start, handoff, syncer, committer);
    std::thread::Builder::new()
        .name("cairn-log-plan".to_owned())
        .spawn(move || planner.run())
}

/// One segment-sized part of a batch: one batch frame in one segment.
struct Chunk {
    base: u64,
    /// The global offset of the frame.
    start: u64,
    /// Where the frame starts in the batch buffer.
    buf_start: usize,
    count: u32,
}

/// A batch being built: encoded frames, and what they will do to the index.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    chunks: Vec<Chunk>,
    effects: Vec<Effect>,
}

impl Batch {
    /// The global offset the next record will get.
    fn position(&self) -> u64 {
        self.chunks
            .last()
            .map_or(0, |c| c.start + (self.buf.len() - c.buf_start) as u64)
    }

    /// Where each frame ends in the buffer.
    fn frame_ends(&self) -> Vec<usize> {
        self.chunks
            .iter()
            .skip(1)
            .map(|c| c.buf_start)
            .chain(std::iter::once(self.buf.len()))
            .collect()
    }

    /// Makes room for `count` records of `size` bytes in one segment, starting a frame in
    /// the next segment when the current one is full. False when they cannot fit any
    /// segment.
    fn reserve(&mut self, size: u64, count: u32, write_at: u64, segment_size: u64) -> bool {
        let header = BATCH_HEADER_LEN as u64;
        if size > segment_size - Segments::data_start(0) - header {
            return false;
        }
        // The end of the segment holding global offset `at`.
        let segment_end = |at: u64| at - at % segment_size + segment_size;
        // `at`, moved past the segment header when it points into one.
        let data_at = |at: u64| at.max(Segments::data_start(at - at % segment_size));
        let current = self.chunks.last().map(|_| self.position());
        let fits = current.is_some_and(|at| at + size <= segment_end(at - 1));
        if !fits {
            let candidate = data_at(match current {
                Some(at) => segment_end(at - 1),
                None => write_at,
            });
            let start = if candidate + header + size <= segment_end(candidate) {
                candidate
            } else {
                data_at(segment_end(candidate))
            };
            let buf_start = begin_batch(&mut self.buf);
            self.chunks.push(Chunk {
                base: start - start % segment_size,
                start,
                buf_start,
                count: 0,
            });
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.count += count;
        }
        true
    }
}

/// A written batch on its way to the syncer.
struct InFlight {
    /// The planner's number of this batch.
    number: u64,
    /// The sequence number of its last frame, if it wrote any.
    last_sequence: Option<u64>,
    /// Each frame: segment base, global start and end.
    frames: Vec<(u64, u64, u64)>,
    effects: Vec<Effect>,
    /// The segment its last frame went to.
    file: Option<Arc<dyn StorageFile>>,
    /// The commands and what they will be answered.
    answers: Vec<(Command, Result<Vec<AppendResult>, WriteError>)>,
    /// Whether a command asked for a flush.
    flush: bool,
}

/// What planned batches will change, until the syncer applied them: the state of the
/// streams they touch and the events they hold, tagged with the batch number.
///
/// Streams are found by the index's hash of their name ([`Index::name_hash`]), computed
/// once per append and used for both the overlay and the index.
#[derive(Default)]
struct Overlay {
    streams: HashTable<OverlayStream>,
    /// Planned events by [`id_key`] of their id.
    ids: PremixedMap<Pending>,
    /// The greatest id ever planned (nil before any): `ids` holds none above it, so an id
    /// above it needs no lookup there.
    ceiling: Uuid,
    /// Per batch: the id keys and the streams (with their hashes) it added, to forget
    /// once applied.
    batches: VecDeque<PlannedBatch>,
    /// Every batch after this one is here (applied or not): those up to it were forgotten.
    forgotten: u64,
}

/// A planned batch's number, the id keys of its events and the streams it set (with
/// their name hashes).
type PlannedBatch = (u64, Vec<u64>, Vec<(u64, StreamName)>);

/// A stream's state as planned batches leave it.
struct OverlayStream {
    hash: u64,
    name: StreamName,
    state: StreamState,
    /// The last batch that set it.
    batch: u64,
}

/// An event planned but not yet applied.
struct Pending {
    id: Uuid,
    stream: StreamName,
    revision: Revision,
    position: u64,
    batch: u64,
    /// Command, append and event indexes, while its batch is the one being planned.
    origin: (usize, usize, usize),
}

impl Overlay {
    /// The state of `stream`, whose [`Index::name_hash`] is `hash`.
    fn state(&self, index: &Index, stream: &StreamName, hash: u64) -> StreamState {
        self.streams
            .find(hash, |entry| entry.name == *stream)
            .map_or_else(
                || index.stream_state_hashed(stream.as_str(), hash),
                |entry| entry.state,
            )
    }

    fn set_state(&mut self, stream: &StreamName, hash: u64, state: StreamState, batch: u64) {
        match self
            .streams
            .entry(hash, |entry| entry.name == *stream, |entry| entry.hash)
        {
            hash_table::Entry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                entry.state = state;
                entry.batch = batch;
            }
            hash_table::Entry::Vacant(vacant) => {
                vacant.insert(OverlayStream {
                    hash,
                    name: stream.clone(),
                    state,
                    batch,
                });
            }
        }
        if let Some((_, _, streams)) = self.batches.back_mut() {
            streams.push((hash, stream.clone()));
        }
    }

    fn add_event(&mut self, pending: Pending) {
        self.ceiling = self.ceiling.max(pending.id);
        let key = id_key(pending.id);
        if let Some((_, keys, _)) = self.batches.back_mut() {
            keys.push(key);
        }
        self.ids.insert(key, pending);
    }

    /// Forgets what batches up to `applied` added: the index holds it now.
    fn forget_applied(&mut self, applied: u64) {
        self.forgotten = self.forgotten.max(applied);
        while self
            .batches
            .front()
            .is_some_and(|(batch, _, _)| *batch <= applied)
        {
            let Some((batch, keys, streams)) = self.batches.pop_front() else {
                break;
            };
            for key in keys {
                if self.ids.get(&key).is_some_and(|p| p.batch == batch) {
                    self.ids.remove(&key);
                }
            }
            for (hash, stream) in streams {
                if let Ok(entry) = self.streams.find_entry(hash, |e| e.name == stream)
                    && entry.get().batch == batch
                {
                    entry.remove();
                }
            }
        }
    }
}

/// An event found already recorded (or planned) under an id being appended.
struct Found {
    stream: StreamName,
    revision: Revision,
    position: u64,
    same_content: bool,
}

/// The first pipeline stage: plans, encodes and writes batches.
struct Planner {
    shared: Arc<Shared>,
    /// The segment being written, and its handle.
    base: u64,
    file: Option<Arc<dyn StorageFile>>,
    write_at: u64,
    sequence: u64,
    /// Every frame with a sequence number up to this one is durable, as this thread knows
    /// it from its own flushes (sealing a segment).
    sealed_sequence: u64,
    batch_number: u64,
    /// The last batch applied to the index (ids included) when this round started.
    applied: u64,
    /// Whether the planner waits for the syncer before planning (see `choose_mode`).
    serial: bool,
    /// Whether the segment after the current one was asked for.
    prepared_next: bool,
    overlay: Overlay,
    handoff: mpsc::SyncSender<InFlight>,
    syncer: Option<JoinHandle<()>>,
    /// Shared with the syncer: the planner commits a batch itself when the syncer is idle
    /// and nothing else waits, which spares a thread hand-over on the path of a lone writer.
    committer: Arc<Mutex<Committer>>,
    preallocator: Option<(mpsc::Sender<Prepare>, JoinHandle<()>)>,
    /// When the writer moved to its current segment.
    rolled_at: Instant,
    /// In a segment that was not zero-filled ahead of time: the global offset up to which
    /// this writer has written it (data, then zeros ahead of the data); `None` when the
    /// segment holds zeros to its end.
    zeroed_to: Option<u64>,
    /// [`WRITER_ZERO_STEP`] zeros, written ahead of the data in such a segment.
    zeros: Vec<u8>,
    /// The encoding buffer of the last batch, kept for the next one: a batch of large
    /// appends runs to megabytes, and growing a fresh buffer to that size each time would
    /// copy every byte about twice more.
    spare: Vec<u8>,
}

impl Planner {
    fn new(
        shared: Arc<Shared>,
        start: WriterStart,
        handoff: mpsc::SyncSender<InFlight>,
        syncer: JoinHandle<()>,
        committer: Arc<Mutex<Committer>>,
    ) -> Self {
        Self {
            shared,
            base: u64::MAX,
            file: None,
            write_at: start.write_at,
            sequence: start.sequence,
            sealed_sequence: start.sequence.saturating_sub(1),
            batch_number: 0,
            applied: 0,
            serial: true,
            prepared_next: false,
            overlay: Overlay::default(),
            handoff,
            syncer: Some(syncer),
            committer,
            preallocator: None,
            rolled_at: Instant::now(),
            zeroed_to: None,
            zeros: Vec::new(),
            spare: Vec::new(),
        }
    }

    fn run(mut self) {
        self.start_preallocator();
        let mut commands = Vec::new();
        loop {
            if self.serial {
                self.shared.progress.wait_for_syncer();
            }
            let closed = self.shared.queue.take(&mut commands);
            if !commands.is_empty() {
                self.process(&mut commands);
            }
            if closed && commands.is_empty() {
                break;
            }
        }
        let Self {
            handoff,
            syncer,
            preallocator,
            ..
        } = self;
        drop(handoff);
        if let Some(syncer) = syncer {
            let _ = syncer.join();
        }
        if let Some((sender, handle)) = preallocator {
            drop(sender);
            let _ = handle.join();
        }
    }

    /// Chooses between planning while the syncer flushes (pipelined) and waiting for it
    /// (serial). With writers that each wait for their answer, a pipeline splits them over
    /// two batches in flight: it only pays when planning a batch takes longer than a flush
    /// (large batches); otherwise one batch per flush holds more appends. The rule, with a
    /// margin against flapping: serial while planning all the waiting appends takes less
    /// than a flush.
    fn choose_mode(&mut self) {
        let progress = &self.shared.progress;
        let plan = progress.plan_micros.load(Ordering::Relaxed);
        let flush = progress.flush_micros.load(Ordering::Relaxed);
        if flush == 0 {
            return;
        }
        if self.serial && plan * 5 > flush * 6 {
            self.serial = false;
        } else if !self.serial && plan * 2 * 5 < flush * 4 {
            // A pipelined batch holds about half the waiting appends.
            self.serial = true;
        }
    }

    fn start_preallocator(&mut self) {
        let (sender, receiver) = mpsc::channel::<Prepare>();
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("cairn-log-prealloc".to_owned())
            .spawn(move || {
                for (base, needed_in, flush_bytes) in receiver {
                    if let Err(error) = shared.segments.prepare(base, needed_in, flush_bytes) {
                        tracing::warn!(%error, base, "preallocating a segment failed");
                    }
                }
            });
        if let Ok(handle) = spawned {
            self.preallocator = Some((sender, handle));
        }
    }

    fn process(&mut self, commands: &mut Vec<Command>) {
        let started = Instant::now();
        if let Some(error) = self.shared.progress.stopped() {
            for command in commands.drain(..) {
                command.answer(Err(error.clone()));
            }
            return;
        }
        // Batches that callers' id checks did not see stay in the overlay, so that those
        // checks hold: the overlay covers every batch after the oldest check.
        let mut oldest_check = u64::MAX;
        let mut events = 0;
        for command in commands.iter() {
            if let Command::Append {
                appends, checked, ..
            } = command
            {
                oldest_check = oldest_check.min(checked.unwrap_or(u64::MAX));
                events += appends.iter().map(|a| a.events.len()).sum::<usize>();
            }
        }
        let applied = self.shared.progress.applied_batch.load(Ordering::Acquire);
        self.applied = applied;
        self.overlay.forget_applied(applied.min(oldest_check));
        self.batch_number += 1;
        let number = self.batch_number;
        // Sized up front: growing them event by event copied each several times.
        self.overlay.ids.reserve(events);
        self.overlay.batches.push_back((
            number,
            Vec::with_capacity(events),
            Vec::with_capacity(commands.len()),
        ));
        let mut buf = std::mem::take(&mut self.spare);
        buf.clear();
        let mut batch = Batch {
            buf,
            effects: Vec::with_capacity(events + commands.len()),
            ..Batch::default()
        };
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut flush = false;
        let now = Timestamp::now();
        for (position_in_batch, command) in commands.iter().enumerate() {
            let outcome = match command {
                Command::Append {
                    appends, checked, ..
                } => {
                    // A check older than what the overlay forgot does not cover the
                    // batches in between: look in the index again.
                    let index_checked = checked.is_some_and(|c| c >= self.overlay.forgotten);
                    self.plan_append(
                        commands,
                        position_in_batch,
                        appends,
                        index_checked,
                        now,
                        &mut batch,
                    )
                }
                Command::Lifecycle { stream, change, .. } => self
                    .plan_lifecycle(stream, *change, &mut batch)
                    .map(|()| Vec::new()),
                Command::Flush { .. } => {
                    flush = true;
                    Ok(Vec::new())
                }
            };
            outcomes.push(outcome);
        }
        if !batch.chunks.is_empty()
            && let Err(error) = self.write(&mut batch)
        {
            let error = WriteError::Storage(error);
            for command in commands.drain(..) {
                command.answer(Err(error.clone()));
            }
            return;
        }
        let frames = batch
            .chunks
            .iter()
            .zip(batch.frame_ends())
            .map(|(c, end)| (c.base, c.start, c.start + (end - c.buf_start) as u64))
            .collect();
        if batch.buf.capacity() <= MAX_SPARE_BUFFER {
            self.spare = std::mem::take(&mut batch.buf);
        }
        let in_flight = InFlight {
            number,
            last_sequence: (!batch.chunks.is_empty()).then(|| self.sequence - 1),
            frames,
            effects: batch.effects,
            file: if batch.chunks.is_empty() {
                None
            } else {
                self.file.clone()
            },
            answers: commands.drain(..).zip(outcomes).collect(),
            flush,
        };
        Progress::average(&self.shared.progress.plan_micros, started.elapsed());
        self.choose_mode();
        let progress = &self.shared.progress;
        if progress.in_flight.load(Ordering::Acquire) == 0 && self.shared.queue.is_empty() {
            // Nothing to overlap with: commit here rather than wake the syncer.
            self.committer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .commit(in_flight);
            return;
        }
        progress.in_flight.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::SendError(in_flight)) = self.handoff.send(in_flight) {
            progress.in_flight.fetch_sub(1, Ordering::AcqRel);
            let error = WriteError::Storage(StorageError::new(
                StorageErrorKind::Stopped,
                "the log syncer stopped",
            ));
            for (command, _) in in_flight.answers {
                command.answer(Err(error.clone()));
            }
        }
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.shared
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks for an event already recorded, or planned and not yet applied, under `id`;
    /// in the index too unless `index_checked` (the caller found no candidate there, see
    /// [`precheck_ids`]).
    fn find(
        &self,
        index: &Index,
        commands: &[Command],
        data: &EventData,
        index_checked: bool,
    ) -> Result<Option<Found>, WriteError> {
        // Batches applied to the index stay in the overlay while a caller's check may need
        // them; their events are looked up in the index, as before the batch was applied
        // (a scavenge may have removed them since, and forgets their ids there).
        let pending = if data.id > self.overlay.ceiling {
            None
        } else {
            self.overlay
                .ids
                .get(&id_key(data.id))
                .filter(|p| p.id == data.id)
        };
        let index_checked = index_checked && pending.is_none();
        if let Some(pending) = pending.filter(|p| p.batch > self.applied) {
            let same_content = if pending.batch == self.batch_number {
                let (command, append, event) = pending.origin;
                match commands.get(command) {
                    Some(Command::Append { appends, .. }) => appends
                        .get(append)
                        .and_then(|a| a.events.get(event))
                        .is_some_and(|planned| same_data(planned, data)),
                    _ => false,
                }
            } else {
                // Written by an earlier batch: read it back from the file.
                let recorded = LogReader::new(&self.shared.segments)
                    .read_event(pending.position, self.write_at)
                    .map_err(|error| WriteError::Storage(error.into()))?;
                recorded.is_some_and(|recorded| data.same_content_as(&recorded))
            };
            return Ok(Some(Found {
                stream: pending.stream.clone(),
                revision: pending.revision,
                position: pending.position,
                same_content,
            }));
        }
        if index_checked {
            return Ok(None);
        }
        for candidate in index.id_candidates(data.id) {
            let recorded = LogReader::new(&self.shared.segments)
                .read_event(candidate, index.end)
                .map_err(|error| WriteError::Storage(error.into()))?;
            // Otherwise another id with a like key, or an event a scavenge removed.
            if let Some(recorded) = recorded.filter(|r| r.id == data.id) {
                return Ok(Some(Found {
                    same_content: data.same_content_as(&recorded),
                    stream: recorded.stream,
                    revision: recorded.revision,
                    position: candidate,
                }));
            }
        }
        Ok(None)
    }

    /// Decides whether `appends` is a retry: `Some(results)` when every event is recorded
    /// as this request would record it, `None` when none is.
    fn find_retry(
        &self,
        index: &Index,
        commands: &[Command],
        appends: &[StreamAppend],
        index_checked: bool,
    ) -> Result<Option<Vec<AppendResult>>, WriteError> {
        // Filled only when an event is found: a new append allocates nothing here.
        let mut results = Vec::new();
        let mut missing = None;
        let mut present = None;
        for append in appends {
            let mut previous: Option<Found> = None;
            for data in &append.events {
                let Some(found) = self.find(index, commands, data, index_checked)? else {
                    missing.get_or_insert(data.id);
                    continue;
                };
                present.get_or_insert(data.id);
                let in_place = found.same_content
                    && found.stream == append.stream
                    && previous
                        .as_ref()
                        .is_none_or(|p| found.revision == p.revision.next());
                if !in_place {
                    return Err(WriteError::EventIdReused { id: data.id });
                }
                previous = Some(found);
            }
            if let Some(last) = previous {
                results.push(AppendResult {
                    revision: last.revision,
                    position: Position(last.position),
                });
            }
        }
        match (present, missing) {
            (None, _) => Ok(None),
            (Some(_), None) => Ok(Some(results)),
            (Some(id), Some(_)) => Err(WriteError::EventIdReused { id }),
        }
    }

    fn plan_append(
        &mut self,
        commands: &[Command],
        command_number: usize,
        appends: &[StreamAppend],
        index_checked: bool,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<Vec<AppendResult>, WriteError> {
        let name_hash = {
            let index = self.index();
            if let Some(results) = self.find_retry(&index, commands, appends, index_checked)? {
                return Ok(results);
            }
            for append in appends {
                let hash = index.name_hash(append.stream.as_str());
                check_expected(
                    self.overlay.state(&index, &append.stream, hash),
                    &append.stream,
                    append.expected,
                )?;
            }
            index.name_hasher()
        };
        let mut size = 0u64;
        let mut count = 0u32;
        for append in appends {
            for data in &append.events {
                size += event_record_len(append.stream.as_str(), data) as u64;
                count += 1;
            }
        }
        if !batch.reserve(size, count, self.write_at, self.shared.segments.size()) {
            return Err(WriteError::InvalidRequest {
                reason: format!(
                    "the append encodes to {size} bytes, more than a segment of {} bytes holds",
                    self.shared.segments.size()
                ),
            });
        }
        let number = self.batch_number;
        let mut results = Vec::with_capacity(appends.len());
        for (append_number, append) in appends.iter().enumerate() {
            // Hashed again rather than kept in a list: a few instructions, no allocation.
            let hash = name_hash.hash_one(append.stream.as_str());
            let mut revision = {
                let index = self.index();
                self.overlay
                    .state(&index, &append.stream, hash)
                    .next_revision()
            };
            // Each event's overlay entry and effect hold a clone of the name, and the syncer
            // drops the effects' clones while the callers' threads clone and drop the
            // caller's name: a large append clones a copy of its own, so that these
            // reference counts are not one contended counter.
            let unshared;
            let stream = if append.events.len() > 1 {
                unshared = append.stream.unshared();
                &unshared
            } else {
                &append.stream
            };
            let mut last = None;
            for (event_number, data) in append.events.iter().enumerate() {
                let position = batch.position();
                encode_event(&mut batch.buf, stream.as_str(), revision, now, data);
                self.overlay.add_event(Pending {
                    id: data.id,
                    stream: stream.clone(),
                    revision,
                    position,
                    batch: number,
                    origin: (command_number, append_number, event_number),
                });
                batch.effects.push(Effect::Event {
                    stream: stream.clone(),
                    revision,
                    position: Position(position),
                    id: data.id,
                    event_type: label_hash(&data.event_type),
                });
                last = Some(AppendResult {
                    revision,
                    position: Position(position),
                });
                revision = revision.next();
            }
            if let Some(result) = last {
                self.overlay.set_state(
                    stream,
                    hash,
                    StreamState::Active {
                        last_revision: result.revision,
                    },
                    number,
                );
                results.push(result);
            }
        }
        Ok(results)
    }

    fn plan_lifecycle(
        &mut self,
        stream: &StreamName,
        change: LifecycleChange,
        batch: &mut Batch,
    ) -> Result<(), WriteError> {
        let (state, hash) = {
            let index = self.index();
            let hash = index.name_hash(stream.as_str());
            (self.overlay.state(&index, stream, hash), hash)
        };
        let expected = match change {
            LifecycleChange::Metadata(_) => ExpectedRevision::Any,
            LifecycleChange::Delete(expected) | LifecycleChange::Tombstone(expected) => expected,
        };
        let current = check_expected(state, stream, expected)?;
        let mut record = Vec::new();
        let (effect, next_state) = match change {
            LifecycleChange::Metadata(metadata) => {
                encode_metadata(&mut record, stream.as_str(), &metadata);
                (
                    Effect::Metadata {
                        stream: stream.clone(),
                        metadata,
                    },
                    state,
                )
            }
            LifecycleChange::Delete(_) => match current {
                CurrentRevision::NoStream => return Ok(()),
                CurrentRevision::Revision(last_revision) => {
                    encode_delete(&mut record, stream.as_str(), last_revision.next());
                    (
                        Effect::Delete {
                            stream: stream.clone(),
                            deleted_before: last_revision.next(),
                        },
                        StreamState::Deleted { last_revision },
                    )
                }
            },
            LifecycleChange::Tombstone(_) => {
                encode_tombstone(&mut record, stream.as_str());
                (
                    Effect::Tombstone {
                        stream: stream.clone(),
                    },
                    StreamState::Tombstoned,
                )
            }
        };
        if !batch.reserve(
            record.len() as u64,
            1,
            self.write_at,
            self.shared.segments.size(),
        ) {
            return Err(WriteError::InvalidRequest {
                reason: "the record does not fit a segment".to_owned(),
            });
        }
        batch.buf.extend_from_slice(&record);
        batch.effects.push(effect);
        self.overlay
            .set_state(stream, hash, next_state, self.batch_number);
        Ok(())
    }

    /// Writes the batch's frames, sealing (flushing) a segment before writing the next.
    fn write(&mut self, batch: &mut Batch) -> Result<(), StorageError> {
        let ends = batch.frame_ends();
        let synced = self
            .shared
            .progress
            .synced_sequence
            .load(Ordering::Acquire)
            .max(self.sealed_sequence);
        for (number, (chunk, &end)) in batch.chunks.iter().zip(&ends).enumerate() {
            let sequence = self.sequence + number as u64;
            // A frame that starts a segment is written after the move sealed the log.
            let seals = number > 0 || (chunk.base != self.base && self.file.is_some());
            let durable_before = if seals { sequence - 1 } else { synced };
            let mut flags = 0;
            if durable_before + 1 >= sequence {
                flags |= PRIOR_DURABLE;
            }
            if durable_before + 2 >= sequence {
                flags |= PRIOR_BUT_ONE_DURABLE;
            }
            finish_batch(
                &mut batch.buf,
                chunk.buf_start,
                end,
                chunk.count,
                sequence,
                flags,
            );
        }
        for (number, (chunk, &end)) in batch.chunks.iter().zip(&ends).enumerate() {
            if chunk.base != self.base || self.file.is_none() {
                self.roll(chunk.base, self.sequence + number as u64)?;
            }
            let file = self.file.as_ref().ok_or_else(|| {
                StorageError::new(StorageErrorKind::Other, "no segment is open for writing")
            })?;
            let bytes = batch.buf.get(chunk.buf_start..end).unwrap_or_default();
            if let Err(error) = file.write_all_at(bytes, chunk.start - chunk.base) {
                return Err(self.shared.progress.fail(
                    format!(
                        "writing {} bytes to {} failed",
                        bytes.len(),
                        self.shared.segments.path(chunk.base).display()
                    ),
                    error,
                ));
            }
            self.write_at = chunk.start + (end - chunk.buf_start) as u64;
            self.zero_ahead()?;
        }
        self.sequence += batch.chunks.len() as u64;
        self.prepare_next_when_due();
        Ok(())
    }

    /// In a segment that was not zero-filled ahead of time, writes zeros over the next
    /// [`WRITER_ZERO_STEP`] bytes once the data has reached past the zeros already written,
    /// so that the flushes of the appends that follow overwrite allocated blocks instead of
    /// each allocating (and journalling) its own. Only bytes past the end of the data are
    /// written, which the log reads as zeros either way.
    fn zero_ahead(&mut self) -> Result<(), StorageError> {
        let Some(zeroed_to) = self.zeroed_to else {
            return Ok(());
        };
        if self.write_at < zeroed_to
            || !zeros_pay(self.shared.progress.flush_bytes.load(Ordering::Relaxed))
        {
            return Ok(());
        }
        let segment_end = self.base + self.shared.segments.size();
        let to = (self.write_at + WRITER_ZERO_STEP).min(segment_end);
        let len = usize::try_from(to - self.write_at).unwrap_or(0);
        if self.zeros.len() < len {
            self.zeros.resize(len, 0);
        }
        if let Some(file) = &self.file
            && let Err(error) = file.write_all_at(
                self.zeros.get(..len).unwrap_or_default(),
                self.write_at - self.base,
            )
        {
            return Err(self.shared.progress.fail(
                format!(
                    "writing zeros ahead in {} failed",
                    self.shared.segments.path(self.base).display()
                ),
                error,
            ));
        }
        self.zeroed_to = Some(to);
        Ok(())
    }

    /// Moves writing to the segment based at `base`, sealing the current one first, so that
    /// a later segment never holds data while an earlier one is not durable.
    fn roll(&mut self, base: u64, next_sequence: u64) -> Result<(), StorageError> {
        if let Some(file) = &self.file {
            if let Err(error) = file.sync_data() {
                return Err(self.shared.progress.fail(
                    format!(
                        "flushing {} before moving to the next segment failed",
                        self.shared.segments.path(self.base).display()
                    ),
                    error,
                ));
            }
            self.sealed_sequence = next_sequence - 1;
        }
        let file = match self.shared.segments.ensure(base) {
            Ok(file) => file,
            Err(error) => {
                return Err(self.shared.progress.fail(
                    format!(
                        "creating segment {} failed",
                        self.shared.segments.path(base).display()
                    ),
                    error,
                ));
            }
        };
        self.file = Some(file);
        self.zeroed_to = self
            .shared
            .segments
            .needs_writer_zeros(base)
            .then(|| self.write_at.max(Segments::data_start(base)));
        self.base = base;
        self.prepared_next = false;
        self.rolled_at = Instant::now();
        Ok(())
    }

    /// Once the writer is half way through its segment, asks for the next one to be
    /// prepared: early enough for a steady writer, late enough that a store that is
    /// barely written to never spends disk time on zeros.
    fn prepare_next_when_due(&mut self) {
        let size = self.shared.segments.size();
        if self.prepared_next || self.file.is_none() || self.write_at - self.base < size / 2 {
            return;
        }
        if let Some((sender, _)) = &self.preallocator {
            // Writing the first half took this long; the second half will take about
            // as long, and then the next segment is needed.
            let flush_bytes = self.shared.progress.flush_bytes.load(Ordering::Relaxed);
            let _ = sender.send((self.base + size, self.rolled_at.elapsed(), flush_bytes));
        }
        self.prepared_next = true;
    }
}

/// Whether two events to append have the same content (their ids aside).
fn same_data(a: &EventData, b: &EventData) -> bool {
    a.event_type == b.event_type
        && a.payload == b.payload
        && a.content_type == b.content_type
        && a.metadata == b.metadata
}

/// The second pipeline stage: receives written batches and commits them.
struct Syncer {
    shared: Arc<Shared>,
    committer: Arc<Mutex<Committer>>,
    durability: Durability,
}

impl Syncer {
    fn committer(&self) -> std::sync::MutexGuard<'_, Committer> {
        self.committer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn run(self, batches: &mpsc::Receiver<InFlight>) {
        loop {
            // In the interval mode, wake at least once an interval: the planner may have
            // committed batches itself meanwhile.
            let timeout = match self.durability {
                Durability::Interval(every) => {
                    Some(self.committer().flush_due(every).unwrap_or(every))
                }
                _ => None,
            };
            let received = match timeout {
                Some(timeout) => batches.recv_timeout(timeout),
                None => batches
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(in_flight) => {
                    self.committer().commit(in_flight);
                    let progress = &self.shared.progress;
                    progress.in_flight.fetch_sub(1, Ordering::AcqRel);
                    progress.note_commit();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.committer().flush();
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.committer().flush();
                    break;
                }
            }
        }
    }
}

/// Flushes, applies and answers written batches, in order. Used by the syncer, and by the
/// planner when the syncer is idle.
struct Committer {
    shared: Arc<Shared>,
    durability: Durability,
    /// The segment the last batch went to (what a later flush must cover).
    file: Option<Arc<dyn StorageFile>>,
    /// The last frame's sequence number written but not yet flushed, in the weaker
    /// durability modes.
    dirty: Option<u64>,
    /// Bytes of the frames written since the last flush.
    unflushed: u64,
    last_sync: Instant,
}

impl Committer {
    /// How long until an interval flush is due, if anything is unflushed.
    fn flush_due(&self, every: std::time::Duration) -> Option<std::time::Duration> {
        self.dirty
            .map(|_| every.saturating_sub(self.last_sync.elapsed()))
    }

    /// Flushes the last segment written, if anything is unflushed.
    fn flush(&mut self) -> Result<(), StorageError> {
        let (Some(sequence), Some(file)) = (self.dirty, &self.file) else {
            return Ok(());
        };
        let started = Instant::now();
        let synced = file.sync_data();
        Progress::average(&self.shared.progress.flush_micros, started.elapsed());
        if let Err(error) = synced {
            return Err(self
                .shared
                .progress
                .fail("flushing the log failed".to_owned(), error));
        }
        self.dirty = None;
        self.last_sync = Instant::now();
        Progress::fold(
            &self.shared.progress.flush_bytes,
            std::mem::take(&mut self.unflushed),
        );
        self.shared
            .progress
            .synced_sequence
            .fetch_max(sequence, Ordering::AcqRel);
        Ok(())
    }

    fn commit(&mut self, in_flight: InFlight) {
        let InFlight {
            number,
            last_sequence,
            frames,
            effects,
            file,
            answers,
            flush,
        } = in_flight;
        if let Some(error) = self.shared.progress.stopped() {
            for (command, _) in answers {
                command.answer(Err(error.clone()));
            }
            return;
        }
        if let Some(file) = file {
            self.file = Some(file);
        }
        if let Some(sequence) = last_sequence {
            self.dirty = Some(sequence);
        }
        self.unflushed += frames
            .iter()
            .map(|&(_, start, end)| end - start)
            .sum::<u64>();
        let due = match self.durability {
            Durability::Always => true,
            Durability::Interval(every) => self.flush_due(every).is_some_and(|t| t.is_zero()),
            Durability::None => false,
        };
        if (flush || due)
            && let Err(error) = self.flush()
        {
            let error = WriteError::Storage(error);
            for (command, _) in answers {
                command.answer(Err(error.clone()));
            }
            return;
        }
        let mut ids = Vec::new();
        let frames_empty = frames.is_empty();
        if !frames_empty {
            // A batch that ends in a new segment seals the one it started in, which a
            // scavenge may then rewrite at once, forgetting the ids of the events it
            // removes: those ids must be in the index by then, so they go in now.
            let seals = frames.first().map(|frame| frame.0) != frames.last().map(|frame| frame.0);
            let mut index = self
                .shared
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (base, start, end) in frames {
                index.add_batch(base, start, end, 1);
            }
            if seals {
                for effect in &effects {
                    index.apply(effect);
                }
            } else {
                ids.reserve_exact(effects.len());
                for effect in &effects {
                    ids.extend(index.apply_but_id(effect));
                }
            }
        }
        if last_sequence.is_some() {
            self.shared
                .changes
                .send_modify(|generation| *generation += 1);
        }
        for (command, outcome) in answers {
            command.answer(outcome);
        }
        // The ids after the answers: only appends look them up, and the planner's overlay
        // holds this batch's until `applied_batch` says the index has them. (A scavenge
        // cannot remove these events meanwhile: they lie in the last segment, which it
        // never rewrites.)
        if !frames_empty {
            let mut index = self
                .shared
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (id, position) in ids {
                index.insert_id(id, position);
            }
            let job = index.ids.start_merge();
            drop(index);
            if let Some(job) = job {
                self.merge_away(job);
            }
        }
        self.shared
            .progress
            .applied_batch
            .store(number, Ordering::Release);
    }

    /// Runs an id index merge on a thread of its own, so that neither this thread nor the
    /// index's lock waits for it (merging a large index takes tens of milliseconds); the
    /// index keeps answering from the ids the merge froze until its result lands.
    fn merge_away(&self, job: MergeJob) {
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("cairn-log-merge".into())
            .spawn(move || {
                let merged = job.run();
                shared
                    .index
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .ids
                    .finish_merge(merged);
            });
        if spawned.is_err() {
            // No thread to spare: merge in place (the frozen ids included).
            self.shared
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .ids
                .merge();
        }
    }
}

/// Looks for the event ids of `appends` in the index on the caller's thread, sparing the
/// planner (one thread for every writer) that work: `Some(batch)` when none of them has a
/// candidate position in the index while it holds every batch up to `batch`; `None` when
/// one has (a retry, or another id with a like key: the planner looks properly) or when
/// the syncer is writing the index (the caller does not wait for it).
pub(crate) fn precheck_ids(shared: &Shared, appends: &[StreamAppend]) -> Option<u64> {
    let index = shared.index.try_read().ok()?;
    // Loaded under the lock: the syncer publishes a batch's number after releasing the
    // write lock it applied the batch under, so every batch up to this one is in `index`.
    let applied = shared.progress.applied_batch.load(Ordering::Acquire);
    let clear = appends
        .iter()
        .flat_map(|append| &append.events)
        .all(|event| index.id_candidates(event.id).next().is_none());
    clear.then_some(applied)
}

/// Checks `expected` against a stream in `state`, refusing tombstoned streams.
fn check_expected(
    state: StreamState,
    stream: &StreamName,
    expected: ExpectedRevision,
) -> Result<CurrentRevision, WriteError> {
    if state == StreamState::Tombstoned {
        return Err(WriteError::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let actual = state.current_revision();
    if expected.is_satisfied_by(actual) {
        Ok(actual)
    } else {
        Err(WriteError::WrongExpectedRevision {
            stream: stream.clone(),
            expected,
            actual,
        })
    }
}

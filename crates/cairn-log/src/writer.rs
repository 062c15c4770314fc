//! The writer: one thread that owns the tail of the log.
//!
//! Callers queue commands ([`Queue`]); the writer takes everything queued at once, checks
//! each command against the index plus what earlier commands of the same batch will change
//! (so the batch behaves exactly as if the commands ran one by one), encodes the accepted
//! ones into one buffer, writes it with one `write` per segment touched, flushes once
//! (group commit), then applies the batch to the index and answers every caller. Nothing is
//! acknowledged, and nothing becomes visible to readers, before its flush (in the default
//! durability mode).
//!
//! A failed write or flush fails every command of the batch and stops the writer for good
//! (fail-stop): the store must be reopened, and recovery decides what is durable.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_core::{
    AppendResult, CurrentRevision, EventData, ExpectedRevision, Position, Revision, StorageError,
    StorageErrorKind, StoreLimits, StreamAppend, StreamMetadata, StreamName, StreamState,
    Timestamp, Uuid, WriteError,
};
use tokio::sync::{oneshot, watch};

use crate::format::{
    BATCH_HEADER_LEN, PRIOR_DURABLE, begin_batch, encode_delete, encode_event, encode_metadata,
    encode_tombstone, event_record_len, finish_batch,
};
use crate::index::{Effect, Index, PremixedMap, id_key};
use crate::options::Durability;
use crate::scan::LogReader;
use crate::segments::Segments;
use crate::storage::StorageFile;

/// What the store's handles and its writer share.
pub(crate) struct Shared {
    /// Written only by the writer thread, after a batch is durable; read by everyone.
    pub(crate) index: RwLock<Index>,
    pub(crate) segments: Segments,
    /// Bumped by the writer after every applied batch; subscriptions wait on it.
    pub(crate) changes: watch::Sender<u64>,
    pub(crate) queue: Queue,
    pub(crate) limits: StoreLimits,
}

/// The answer channel of a command.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, WriteError>>;

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
        reply: Reply<Vec<AppendResult>>,
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
    fn fail(self, error: &WriteError) {
        // A caller that stopped waiting is not an error.
        match self {
            Command::Append { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Lifecycle { reply, .. } | Command::Flush { reply } => {
                drop(reply.send(Err(error.clone())));
            }
        }
    }
}

/// Commands waiting for the writer. Callers push and notify; the writer takes them all at
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
    /// Whether the writer sleeps on `wake`; callers only signal it then, which spares a
    /// system call per append while the writer is busy.
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

    /// Stops accepting commands; the writer finishes what is queued and exits.
    pub(crate) fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.wake.notify_all();
    }

    /// Takes every queued command, waiting for one (at most `timeout`). The flag says
    /// whether the queue is closed.
    fn take(&self, timeout: Option<Duration>, into: &mut Vec<Command>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = timeout.map(|t| Instant::now() + t);
        while state.commands.is_empty() && !state.closed {
            state.waiting = true;
            match deadline {
                None => {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    state = self
                        .wake
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
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

/// Starts the writer thread.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    durability: Durability,
    start: WriterStart,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cairn-log-writer".to_owned())
        .spawn(move || Writer::new(shared, durability, start).run())
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

/// The state of the streams a batch touches, as the commands before the current one left
/// it, and the events it holds by id.
#[derive(Default)]
struct Overlay {
    streams: HashMap<StreamName, StreamState>,
    /// Events planned in this batch, by [`id_key`] of their id.
    ids: PremixedMap<Pending>,
}

/// An event planned earlier in the same batch.
struct Pending {
    id: Uuid,
    command: usize,
    append: usize,
    event: usize,
    stream: StreamName,
    revision: Revision,
    position: u64,
}

impl Overlay {
    fn state(&self, index: &Index, stream: &StreamName) -> StreamState {
        self.streams
            .get(stream)
            .copied()
            .unwrap_or_else(|| index.stream_state(stream.as_str()))
    }
}

/// An event found already recorded (or planned) under an id being appended.
struct Found {
    stream: StreamName,
    revision: Revision,
    position: u64,
    same_content: bool,
}

struct Writer {
    shared: Arc<Shared>,
    durability: Durability,
    /// The segment being written, and its handle.
    base: u64,
    file: Option<Arc<dyn StorageFile>>,
    write_at: u64,
    sequence: u64,
    /// Whether everything written so far is durable.
    synced: bool,
    last_sync: Instant,
    failed: Option<StorageError>,
    preallocator: Option<(mpsc::Sender<u64>, JoinHandle<()>)>,
}

impl Writer {
    fn new(shared: Arc<Shared>, durability: Durability, start: WriterStart) -> Self {
        Self {
            shared,
            durability,
            base: u64::MAX,
            file: None,
            write_at: start.write_at,
            sequence: start.sequence,
            synced: true,
            last_sync: Instant::now(),
            failed: None,
            preallocator: None,
        }
    }

    fn run(mut self) {
        self.start_preallocator();
        let mut commands = Vec::new();
        loop {
            let timeout = match self.durability {
                Durability::Interval(every) if !self.synced => {
                    Some(every.saturating_sub(self.last_sync.elapsed()))
                }
                _ => None,
            };
            let closed = self.shared.queue.take(timeout, &mut commands);
            if !commands.is_empty() {
                self.process(&mut commands);
            }
            if let Durability::Interval(every) = self.durability
                && !self.synced
                && self.last_sync.elapsed() >= every
            {
                let _ = self.sync();
            }
            if closed && commands.is_empty() {
                if !self.synced {
                    let _ = self.sync();
                }
                break;
            }
        }
        if let Some((sender, handle)) = self.preallocator.take() {
            drop(sender);
            let _ = handle.join();
        }
    }

    fn start_preallocator(&mut self) {
        let (sender, receiver) = mpsc::channel::<u64>();
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("cairn-log-prealloc".to_owned())
            .spawn(move || {
                for base in receiver {
                    if let Err(error) = shared.segments.prepare(base) {
                        tracing::warn!(%error, base, "preallocating a segment failed");
                    }
                }
            });
        if let Ok(handle) = spawned {
            self.preallocator = Some((sender, handle));
        }
    }

    fn stopped_error(&self) -> Option<WriteError> {
        self.failed.as_ref().map(|cause| {
            WriteError::Storage(StorageError::new(
                StorageErrorKind::Stopped,
                format!("the store stopped after a storage failure and must be reopened: {cause}"),
            ))
        })
    }

    fn process(&mut self, commands: &mut Vec<Command>) {
        if let Some(error) = self.stopped_error() {
            for command in commands.drain(..) {
                command.fail(&error);
            }
            return;
        }
        let mut batch = Batch::default();
        let mut outcomes: Vec<Result<Vec<AppendResult>, WriteError>> =
            Vec::with_capacity(commands.len());
        let mut flush = false;
        {
            let shared = Arc::clone(&self.shared);
            let index = shared.index.read().unwrap_or_else(PoisonError::into_inner);
            let mut overlay = Overlay::default();
            let now = Timestamp::now();
            for (number, command) in commands.iter().enumerate() {
                let outcome = match command {
                    Command::Append { appends, .. } => self.plan_append(
                        &index,
                        &mut overlay,
                        commands,
                        number,
                        appends,
                        now,
                        &mut batch,
                    ),
                    Command::Lifecycle { stream, change, .. } => self
                        .plan_lifecycle(&index, &mut overlay, stream, *change, &mut batch)
                        .map(|()| Vec::new()),
                    Command::Flush { .. } => {
                        flush = true;
                        Ok(Vec::new())
                    }
                };
                outcomes.push(outcome);
            }
        }
        let written = if batch.chunks.is_empty() {
            Ok(())
        } else {
            self.write(&mut batch)
        };
        let durable = written.and_then(|()| {
            if flush || (self.durability == Durability::Always && !self.synced) {
                self.sync()
            } else {
                Ok(())
            }
        });
        if let Err(error) = durable {
            let error = WriteError::Storage(error);
            for command in commands.drain(..) {
                command.fail(&error);
            }
            return;
        }
        if !batch.chunks.is_empty() {
            self.apply(batch);
        }
        for (command, outcome) in commands.drain(..).zip(outcomes) {
            // A caller that stopped waiting is not an error.
            match command {
                Command::Append { reply, .. } => drop(reply.send(outcome)),
                Command::Lifecycle { reply, .. } | Command::Flush { reply } => {
                    drop(reply.send(outcome.map(drop)));
                }
            }
        }
    }

    /// Looks for an event already recorded, or planned earlier in this batch, under `id`.
    fn find(
        &self,
        index: &Index,
        overlay: &Overlay,
        commands: &[Command],
        data: &EventData,
    ) -> Result<Option<Found>, WriteError> {
        if let Some(pending) = overlay
            .ids
            .get(&id_key(data.id))
            .filter(|p| p.id == data.id)
        {
            let same_content = match commands.get(pending.command) {
                Some(Command::Append { appends, .. }) => appends
                    .get(pending.append)
                    .and_then(|a| a.events.get(pending.event))
                    .is_some_and(|planned| {
                        planned.event_type == data.event_type
                            && planned.payload == data.payload
                            && planned.content_type == data.content_type
                            && planned.metadata == data.metadata
                    }),
                _ => false,
            };
            return Ok(Some(Found {
                stream: pending.stream.clone(),
                revision: pending.revision,
                position: pending.position,
                same_content,
            }));
        }
        let Some(candidate) = index.id_candidate(data.id) else {
            return Ok(None);
        };
        let recorded = LogReader::new(&self.shared.segments)
            .read_event(candidate, index.end)
            .map_err(|error| WriteError::Storage(error.into()))?;
        if recorded.id != data.id {
            return Ok(None);
        }
        Ok(Some(Found {
            same_content: data.same_content_as(&recorded),
            stream: recorded.stream,
            revision: recorded.revision,
            position: candidate,
        }))
    }

    /// Decides whether `appends` is a retry: `Some(results)` when every event is recorded
    /// as this request would record it, `None` when none is.
    fn find_retry(
        &self,
        index: &Index,
        overlay: &Overlay,
        commands: &[Command],
        appends: &[StreamAppend],
    ) -> Result<Option<Vec<AppendResult>>, WriteError> {
        let mut results = Vec::with_capacity(appends.len());
        let mut missing = None;
        let mut present = None;
        for append in appends {
            let mut previous: Option<Found> = None;
            for data in &append.events {
                let Some(found) = self.find(index, overlay, commands, data)? else {
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

    #[allow(clippy::too_many_arguments)]
    fn plan_append(
        &self,
        index: &Index,
        overlay: &mut Overlay,
        commands: &[Command],
        number: usize,
        appends: &[StreamAppend],
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<Vec<AppendResult>, WriteError> {
        if let Some(results) = self.find_retry(index, overlay, commands, appends)? {
            return Ok(results);
        }
        let mut size = 0u64;
        let mut count = 0u32;
        for append in appends {
            check_expected(
                overlay.state(index, &append.stream),
                &append.stream,
                append.expected,
            )?;
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
        let mut results = Vec::with_capacity(appends.len());
        for (append_number, append) in appends.iter().enumerate() {
            let mut revision = overlay.state(index, &append.stream).next_revision();
            let mut last = None;
            for (event_number, data) in append.events.iter().enumerate() {
                let position = batch.position();
                encode_event(&mut batch.buf, append.stream.as_str(), revision, now, data);
                overlay.ids.insert(
                    id_key(data.id),
                    Pending {
                        id: data.id,
                        command: number,
                        append: append_number,
                        event: event_number,
                        stream: append.stream.clone(),
                        revision,
                        position,
                    },
                );
                batch.effects.push(Effect::Event {
                    stream: append.stream.clone(),
                    revision,
                    position: Position(position),
                    id: data.id,
                });
                last = Some(AppendResult {
                    revision,
                    position: Position(position),
                });
                revision = revision.next();
            }
            if let Some(result) = last {
                overlay.streams.insert(
                    append.stream.clone(),
                    StreamState::Active {
                        last_revision: result.revision,
                    },
                );
                results.push(result);
            }
        }
        Ok(results)
    }

    fn plan_lifecycle(
        &self,
        index: &Index,
        overlay: &mut Overlay,
        stream: &StreamName,
        change: LifecycleChange,
        batch: &mut Batch,
    ) -> Result<(), WriteError> {
        let state = overlay.state(index, stream);
        let expected = match change {
            LifecycleChange::Metadata(_) => ExpectedRevision::Any,
            LifecycleChange::Delete(expected) | LifecycleChange::Tombstone(expected) => expected,
        };
        let current = check_expected(state, stream, expected)?;
        let (effect, next_state) = match change {
            LifecycleChange::Metadata(metadata) => (
                Effect::Metadata {
                    stream: stream.clone(),
                    metadata,
                },
                state,
            ),
            LifecycleChange::Delete(_) => match current {
                CurrentRevision::NoStream => return Ok(()),
                CurrentRevision::Revision(last_revision) => (
                    Effect::Delete {
                        stream: stream.clone(),
                        deleted_before: last_revision.next(),
                    },
                    StreamState::Deleted { last_revision },
                ),
            },
            LifecycleChange::Tombstone(_) => (
                Effect::Tombstone {
                    stream: stream.clone(),
                },
                StreamState::Tombstoned,
            ),
        };
        let mut record = Vec::new();
        match &effect {
            Effect::Metadata { metadata, .. } => {
                encode_metadata(&mut record, stream.as_str(), metadata)
            }
            Effect::Delete { deleted_before, .. } => {
                encode_delete(&mut record, stream.as_str(), *deleted_before);
            }
            _ => encode_tombstone(&mut record, stream.as_str()),
        }
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
        overlay.streams.insert(stream.clone(), next_state);
        Ok(())
    }

    /// Writes the batch's frames, sealing (flushing) a segment before writing the next.
    fn write(&mut self, batch: &mut Batch) -> Result<(), StorageError> {
        let ends: Vec<usize> = batch
            .chunks
            .iter()
            .skip(1)
            .map(|c| c.buf_start)
            .chain(std::iter::once(batch.buf.len()))
            .collect();
        for (number, (chunk, &end)) in batch.chunks.iter().zip(&ends).enumerate() {
            let flags = if number > 0 || self.synced {
                PRIOR_DURABLE
            } else {
                0
            };
            finish_batch(
                &mut batch.buf,
                chunk.buf_start,
                end,
                chunk.count,
                self.sequence + number as u64,
                flags,
            );
        }
        for (chunk, &end) in batch.chunks.iter().zip(&ends) {
            if chunk.base != self.base || self.file.is_none() {
                self.roll(chunk.base)?;
            }
            let file = self.file.as_ref().ok_or_else(|| {
                StorageError::new(StorageErrorKind::Other, "no segment is open for writing")
            })?;
            let bytes = batch.buf.get(chunk.buf_start..end).unwrap_or_default();
            if let Err(error) = file.write_all_at(bytes, chunk.start - chunk.base) {
                return Err(self.fail(
                    format!(
                        "writing {} bytes to {} failed",
                        bytes.len(),
                        self.shared.segments.path(chunk.base).display()
                    ),
                    error,
                ));
            }
            self.synced = false;
            self.write_at = chunk.start + (end - chunk.buf_start) as u64;
        }
        self.sequence += batch.chunks.len() as u64;
        Ok(())
    }

    /// Moves writing to the segment based at `base`, sealing the current one first.
    fn roll(&mut self, base: u64) -> Result<(), StorageError> {
        if self.file.is_some() && !self.synced {
            self.sync()?;
        }
        let file = match self.shared.segments.ensure(base) {
            Ok(file) => file,
            Err(error) => {
                return Err(self.fail(
                    format!(
                        "creating segment {} failed",
                        self.shared.segments.path(base).display()
                    ),
                    error,
                ));
            }
        };
        self.file = Some(file);
        self.base = base;
        if let Some((sender, _)) = &self.preallocator {
            let _ = sender.send(base + self.shared.segments.size());
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let Some(file) = &self.file else {
            self.synced = true;
            return Ok(());
        };
        match file.sync_data() {
            Ok(()) => {
                self.synced = true;
                self.last_sync = Instant::now();
                Ok(())
            }
            Err(error) => Err(self.fail(
                format!(
                    "flushing {} failed",
                    self.shared.segments.path(self.base).display()
                ),
                error,
            )),
        }
    }

    /// Records a storage failure and stops the writer for good.
    fn fail(&mut self, what: String, error: std::io::Error) -> StorageError {
        let error = StorageError::io(what, error);
        tracing::error!(%error, "the log writer stopped");
        self.failed = Some(error.clone());
        error
    }

    fn apply(&self, batch: Batch) {
        let ends: Vec<u64> = batch
            .chunks
            .iter()
            .skip(1)
            .map(|c| c.buf_start)
            .chain(std::iter::once(batch.buf.len()))
            .zip(&batch.chunks)
            .map(|(end, c)| c.start + (end - c.buf_start) as u64)
            .collect();
        {
            let mut index = self
                .shared
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (chunk, end) in batch.chunks.iter().zip(ends) {
                index.add_batch(
                    chunk.base,
                    chunk.start,
                    end,
                    Segments::data_start(chunk.base),
                );
            }
            for effect in &batch.effects {
                index.apply(effect);
            }
        }
        self.shared
            .changes
            .send_modify(|generation| *generation += 1);
    }
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

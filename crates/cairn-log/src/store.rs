//! [`LogStore`]: opening a data directory, and the [`EventStore`] operations over the log,
//! the index and the writer.

use std::any::Any;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLockReadGuard};
use std::thread::JoinHandle;

use async_trait::async_trait;
use cairn_core::subscription::{CommitSignal, catch_up_all, catch_up_stream};
use cairn_core::{
    AllPage, AppendResult, Direction, EventStore, ExpectedRevision, MAX_LIST_STREAMS,
    MAX_PAGE_BYTES, Position, ReadAll, ReadError, ReadStream, RecordedEvent, StorageError,
    StorageErrorKind, StoreLimits, StreamAppend, StreamInfo, StreamMetadata, StreamName,
    StreamPage, StreamState, SubscribeAll, SubscribeStream, Subscription, Timestamp, Visibility,
    WriteError, page_limit, validate_appends,
};
use futures::future::BoxFuture;
use tokio::sync::{oneshot, watch};

use crate::format::{FORMAT_VERSION, Record};
use crate::index::{Index, REGION, REMOVED};
use crate::options::{Durability, LogOptions, OpenError};
use crate::recovery::recover;
use crate::scan::{LogReader, Materializer, ScanError};
use crate::scavenge::ScavengeReport;
use crate::segments::Segments;
use crate::storage::{OpenMode, Storage};
use crate::writer::{Command, LifecycleChange, Progress, Queue, Shared, precheck_ids, spawn};

/// The name of the file that records the data directory's format version.
const FORMAT_FILE: &str = "FORMAT";

/// The embedded durable event store: a log of segment files in one data directory.
///
/// Open it with [`LogStore::open`]; clones are cheap handles to the same store. The store
/// owns its directory exclusively (a second opener gets [`OpenError::Locked`]). It is closed
/// when the last handle (including subscriptions) is dropped, or explicitly with
/// [`LogStore::close`].
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// The writer thread; taken and joined on close.
    writer: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    durability: Durability,
    /// Whether to delete the data directory when the store is dropped.
    temporary: bool,
    /// The data directory's lock, released when the store is dropped.
    lock: Option<Box<dyn Any + Send + Sync>>,
}

impl Inner {
    /// Stops the writer (finishing what is queued) and, unless it failed, writes the index
    /// snapshot for a fast next open. Idempotent.
    fn shut_down(&self) {
        self.shared.queue.close();
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(writer) = writer else {
            return;
        };
        let _ = writer.join();
        if self.temporary || self.shared.progress.failed() {
            return;
        }
        let mut index = self
            .shared
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        index.compact();
        let storage = self.shared.segments.storage();
        let index_dir = self.dir.join("index");
        let written = crate::snapshot::write(storage.as_ref(), &self.dir, &index).and_then(|()| {
            storage.remove_file(&index_dir.join(OPEN_MARKER))?;
            storage.sync_dir(&index_dir)
        });
        if let Err(error) = written {
            tracing::warn!(%error, dir = %self.dir.display(), "writing the index snapshot failed");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shut_down();
        drop(self.lock.take());
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.inner.dir)
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (creating if needed) the store in directory `dir`, recovering from a crash if
    /// the last owner did not close it.
    ///
    /// # Errors
    ///
    /// - [`OpenError::Locked`] when another owner holds the directory;
    /// - [`OpenError::Corrupt`] when the log holds damage that is not a torn tail (the
    ///   error names the file and offset);
    /// - [`OpenError::UnsupportedFormat`] for data of another format version;
    /// - [`OpenError::InvalidOptions`], [`OpenError::Io`].
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Self, OpenError> {
        Self::open_inner(dir.as_ref(), &options, false)
    }

    /// Opens a new store in a fresh directory under the system's temporary directory,
    /// deleted when the last handle is dropped. Meant for tests.
    ///
    /// # Errors
    ///
    /// As [`LogStore::open`].
    pub fn open_temporary(options: LogOptions) -> Result<Self, OpenError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "cairn-log-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Self::open_inner(&dir, &options, true)
    }

    fn open_inner(dir: &Path, options: &LogOptions, temporary: bool) -> Result<Self, OpenError> {
        options.check()?;
        let dir = dir.to_path_buf();
        let storage = Arc::clone(&options.storage);
        storage
            .create_dir_all(&dir)
            .map_err(|e| OpenError::io(&dir, e))?;
        let lock = storage.lock_dir(&dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                OpenError::Locked { dir: dir.clone() }
            } else {
                OpenError::io(&dir, e)
            }
        })?;
        let log_dir = dir.join("log");
        check_format(storage.as_ref(), &dir, &log_dir)?;
        // An existing log keeps the segment size it was created with.
        let segment_size =
            existing_segment_size(storage.as_ref(), &log_dir)?.unwrap_or(options.segment_size);
        if segment_size != options.segment_size {
            LogOptions {
                segment_size,
                ..options.clone()
            }
            .check()?;
        }
        let segments = Segments::new(
            Arc::clone(&storage),
            log_dir,
            segment_size,
            options.preallocation,
        );
        // The marker exists from open to clean close: without it, the last owner closed
        // cleanly, nothing follows the snapshot and the tail needs no search.
        let marker = dir.join("index").join(OPEN_MARKER);
        let clean = storage.open(&marker, OpenMode::Read).is_err();
        let recovered = recover(&segments, &dir, clean)?;
        if !temporary {
            write_marker(storage.as_ref(), &dir).map_err(|e| OpenError::io(&marker, e))?;
        }
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            index: std::sync::RwLock::new(recovered.index),
            segments,
            changes,
            queue: Queue::default(),
            limits: options.limits,
            progress: Progress::new(recovered.start.sequence.saturating_sub(1)),
        });
        let writer = spawn(Arc::clone(&shared), options.durability, recovered.start)
            .map_err(|e| OpenError::io(&dir, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(Some(writer)),
                dir,
                durability: options.durability,
                temporary,
                lock: Some(lock),
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The durability mode appends are acknowledged under.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Flushes everything appended so far to stable storage (a no-op in the default
    /// durability mode, where every acknowledged append already is).
    ///
    /// # Errors
    ///
    /// [`WriteError::Storage`] when the flush failed or the store is closed.
    pub async fn flush(&self) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Flush { reply })?;
        answer.await.map_err(|_| closed())?
    }

    /// Flushes, then stops the writer: every handle's later writes fail; reads keep working.
    /// The data directory is released when the last handle is dropped.
    ///
    /// # Errors
    ///
    /// [`WriteError::Storage`] when the final flush failed.
    pub async fn close(&self) -> Result<(), WriteError> {
        let flushed = self.flush().await;
        let inner = Arc::clone(&self.inner);
        let _ = tokio::task::spawn_blocking(move || inner.shut_down()).await;
        match flushed {
            Err(WriteError::Storage(error)) if error.kind() == StorageErrorKind::Stopped => Ok(()),
            other => other,
        }
    }

    /// Reclaims the space of events that retention, soft deletes and tombstones hide, in
    /// the segments the writer has moved past, while the store keeps serving. Live events
    /// keep their positions. Events it removes are forgotten entirely: an append retried
    /// with their ids is no longer recognised as a retry.
    ///
    /// # Errors
    ///
    /// [`StorageError`] when reading or rewriting a segment failed; segments already
    /// rewritten stay rewritten, the others are untouched.
    pub async fn scavenge(&self) -> Result<ScavengeReport, StorageError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || crate::scavenge::scavenge(&inner.shared, &inner.dir))
            .await
            .map_err(|e| {
                StorageError::new(
                    StorageErrorKind::Other,
                    format!("the scavenge panicked: {e}"),
                )
            })?
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.shared()
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn submit(&self, command: Command) -> Result<(), WriteError> {
        self.shared().queue.push(command).map_err(|_| closed())
    }

    async fn lifecycle(
        &self,
        stream: &StreamName,
        change: LifecycleChange,
    ) -> Result<(), WriteError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Lifecycle {
            stream: stream.clone(),
            change,
            reply,
        })?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> WriteError {
    WriteError::Storage(StorageError::new(
        StorageErrorKind::Stopped,
        "the store is closed",
    ))
}

/// The file that exists while a process has the store open (see [`write_marker`]).
const OPEN_MARKER: &str = "open";

/// Room reserved up front for the events of a `$all` page: enough that a full page grows
/// its vector only twice, small enough that a filtered read finding little wastes little.
const FIRST_PAGE_CAPACITY: usize = 1024;

/// Records, durably, that the store is open: a crash leaves the marker behind, so the next
/// open knows to search the log's tail for a torn write.
fn write_marker(storage: &dyn Storage, dir: &Path) -> std::io::Result<()> {
    let index_dir = dir.join("index");
    storage.create_dir_all(&index_dir)?;
    let file = storage.open(&index_dir.join(OPEN_MARKER), OpenMode::CreateTruncate)?;
    file.sync_data()?;
    storage.sync_dir(&index_dir)
}

/// The segment size of an existing log, read from its first segment's header.
fn existing_segment_size(storage: &dyn Storage, log_dir: &Path) -> Result<Option<u64>, OpenError> {
    let mut bases: Vec<u64> = storage
        .list_dir(log_dir)
        .map_err(|e| OpenError::io(log_dir, e))?
        .iter()
        .filter_map(|name| name.strip_suffix(".seg")?.parse().ok())
        .collect();
    bases.sort_unstable();
    let Some(first) = bases.first() else {
        return Ok(None);
    };
    let path = log_dir.join(format!("{first:020}.seg"));
    let file = storage
        .open(&path, OpenMode::Read)
        .map_err(|e| OpenError::io(&path, e))?;
    let mut header = [0u8; crate::format::SEGMENT_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| OpenError::io(&path, e))?;
    match crate::format::decode_segment_header(&header) {
        Ok(header) => Ok(Some(header.size)),
        // Recovery reports a bad header with the details.
        Err(_) => Ok(None),
    }
}

/// Checks (or, for a new directory, writes) the format version file.
fn check_format(storage: &dyn Storage, dir: &Path, log_dir: &Path) -> Result<(), OpenError> {
    let path = dir.join(FORMAT_FILE);
    let expected = format!("cairn-log {FORMAT_VERSION}\n");
    match storage.open(&path, OpenMode::Read) {
        Ok(file) => {
            let len = file.len().map_err(|e| OpenError::io(&path, e))?;
            let mut content = vec![0u8; len.min(64) as usize];
            file.read_exact_at(&mut content, 0)
                .map_err(|e| OpenError::io(&path, e))?;
            if content != expected.as_bytes() {
                return Err(OpenError::UnsupportedFormat {
                    file: path,
                    found: String::from_utf8_lossy(&content).trim().to_owned(),
                    supported: FORMAT_VERSION,
                });
            }
            storage
                .create_dir_all(log_dir)
                .map_err(|e| OpenError::io(log_dir, e))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            storage
                .create_dir_all(log_dir)
                .map_err(|e| OpenError::io(log_dir, e))?;
            let existing = storage
                .list_dir(log_dir)
                .map_err(|e| OpenError::io(log_dir, e))?;
            if !existing.is_empty() {
                return Err(OpenError::UnsupportedFormat {
                    file: path,
                    found: "missing".to_owned(),
                    supported: FORMAT_VERSION,
                });
            }
            let file = storage
                .open(&path, OpenMode::CreateTruncate)
                .map_err(|e| OpenError::io(&path, e))?;
            file.write_all_at(expected.as_bytes(), 0)
                .and_then(|()| file.sync_data())
                .and_then(|()| storage.sync_dir(dir))
                .map_err(|e| OpenError::io(&path, e))
        }
        Err(error) => Err(OpenError::io(&path, error)),
    }
}

fn read_error(error: ScanError) -> ReadError {
    ReadError::Storage(error.into())
}

/// Drops the events of `events` that their streams hide, by the index as it is now.
fn retain_visible(index: &Index, events: &mut Vec<RecordedEvent>, now: Timestamp) {
    if index.all_visible() {
        return;
    }
    let mut last: Option<(StreamName, Option<Visibility>)> = None;
    events.retain(|event| {
        let visibility = match &last {
            Some((name, visibility)) if *name == event.stream => *visibility,
            _ => {
                let visibility = index
                    .stream(event.stream.as_str())
                    .map_or(Some(Visibility::everything()), |e| e.visibility(now));
                last = Some((event.stream.clone(), visibility));
                visibility
            }
        };
        visibility.is_some_and(|v| v.shows(event.revision, event.recorded))
    });
}

/// A stretch of the log to read: walk from the batch at `start`, within the segment's
/// batches up to `end`, keeping records from `lower` and stopping before `upper`.
struct Span {
    start: u64,
    end: u64,
    lower: u64,
    upper: u64,
}

impl LogStore {
    /// The stretches of the log to walk forwards from global offset `from`: every segment,
    /// or, when `regions` is given, only those regions.
    fn spans_from(&self, index: &Index, from: u64, regions: Option<&[u32]>) -> Vec<Span> {
        let segments = &self.shared().segments;
        let span = |lower: u64, upper: u64| -> Option<Span> {
            let base = segments.base_of(lower);
            let map = index.segments.get(&base)?;
            let end = base + map.end;
            let lower = lower.max(Segments::data_start(base));
            if lower >= end {
                return None;
            }
            let start = base + map.batch_before(lower - base)?;
            Some(Span {
                start,
                end,
                lower,
                upper: upper.min(end),
            })
        };
        match regions {
            None => {
                let first_base = segments.base_of(from);
                index
                    .segments
                    .range(first_base..)
                    .filter_map(|(&base, map)| span(from.max(base), base + map.end))
                    .collect()
            }
            Some(regions) => regions
                .iter()
                .filter_map(|&region| {
                    let lower = u64::from(region) * REGION;
                    span(from.max(lower), lower + REGION)
                })
                .collect(),
        }
    }

    fn read_all_forwards(&self, request: &ReadAll, limit: usize) -> Result<AllPage, ReadError> {
        let from = request.from.unwrap_or(Position::START).0;
        let segments = &self.shared().segments;
        let filter = &request.filter;
        let mut reader = LogReader::new(segments);
        let mut materializer = Materializer::default();
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut cursor = from;
        loop {
            let (spans, end) = {
                let index = self.index();
                let first = u32::try_from(cursor / REGION).unwrap_or(u32::MAX);
                let regions =
                    index.candidate_regions(filter.category.as_deref(), &filter.event_types, first);
                (
                    self.spans_from(&index, cursor, regions.as_deref()),
                    index.end,
                )
            };
            let wanted = limit - events.len();
            let mut bytes: usize = events.iter().map(|e| e.payload.len()).sum();
            let mut found = Vec::with_capacity(wanted.min(FIRST_PAGE_CAPACITY));
            let mut full = false;
            let mut next = cursor.max(end);
            for span in spans {
                let stopped = reader
                    .walk(span.start, span.end, |position, record, chunk| {
                        if position >= span.upper {
                            return Ok(ControlFlow::Break(()));
                        }
                        let Record::Event(view) = record else {
                            return Ok(ControlFlow::Continue(()));
                        };
                        if position < span.lower || !filter.matches(view.stream, view.event_type) {
                            return Ok(ControlFlow::Continue(()));
                        }
                        let event = materializer.event(segments, position, &view, chunk)?;
                        bytes += event.payload.len();
                        found.push(event);
                        if found.len() >= wanted || bytes >= MAX_PAGE_BYTES {
                            return Ok(ControlFlow::Break(()));
                        }
                        Ok(ControlFlow::Continue(()))
                    })
                    .map_err(read_error)?;
                if found.len() >= wanted || bytes >= MAX_PAGE_BYTES {
                    full = true;
                    next = stopped;
                    break;
                }
            }
            if !found.is_empty() {
                retain_visible(&self.index(), &mut found, Timestamp::now());
            }
            if events.is_empty() {
                events = found;
            } else {
                events.append(&mut found);
            }
            cursor = next;
            let bytes: usize = events.iter().map(|e| e.payload.len()).sum();
            if !full || events.len() >= limit || bytes >= MAX_PAGE_BYTES {
                return Ok(AllPage {
                    events,
                    next: Some(Position(next.max(from))),
                    end: !full,
                });
            }
            // Some events of a full page turned out hidden: read on to fill it.
        }
    }

    fn read_all_backwards(&self, request: &ReadAll, limit: usize) -> Result<AllPage, ReadError> {
        let segments = &self.shared().segments;
        let mut reader = LogReader::new(segments);
        let mut materializer = Materializer::default();
        let mut upper = {
            let index = self.index();
            request
                .from
                .map_or(index.end, |p| p.0.saturating_add(1))
                .min(index.end)
        };
        let mut events = Vec::new();
        let mut bytes = 0usize;
        loop {
            let Some((start, written_end)) = window_below(&self.index(), upper) else {
                return Ok(AllPage {
                    events,
                    next: None,
                    end: true,
                });
            };
            let mut found = Vec::new();
            reader
                .walk(start, written_end, |position, record, chunk| {
                    if position >= upper {
                        return Ok(ControlFlow::Break(()));
                    }
                    if let Record::Event(view) = record
                        && request.filter.matches(view.stream, view.event_type)
                    {
                        found.push(materializer.event(segments, position, &view, chunk)?);
                    }
                    Ok(ControlFlow::Continue(()))
                })
                .map_err(read_error)?;
            retain_visible(&self.index(), &mut found, Timestamp::now());
            for event in found.into_iter().rev() {
                let position = event.position.0;
                bytes += event.payload.len();
                events.push(event);
                if events.len() >= limit || bytes >= MAX_PAGE_BYTES {
                    let next = position.checked_sub(1).map(Position);
                    return Ok(AllPage {
                        end: next.is_none(),
                        events,
                        next,
                    });
                }
            }
            upper = start;
        }
    }
}

/// Where a backwards walk below global offset `upper` starts: the batch that covers the last
/// byte below it; and the end of that segment's batches, which bounds the walk (the
/// walk stops by itself at `upper`).
fn window_below(index: &Index, upper: u64) -> Option<(u64, u64)> {
    for (&base, map) in index.segments.range(..upper).rev() {
        let written_end = base + map.end;
        let until = upper.min(written_end);
        if until <= Segments::data_start(base) {
            continue;
        }
        let start = map.batch_before(until - 1 - base)?;
        return Some((base + start, written_end));
    }
    None
}

#[async_trait]
impl EventStore for LogStore {
    async fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, WriteError> {
        validate_appends(&appends, self.shared().limits)?;
        let checked = precheck_ids(self.shared(), &appends);
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Append {
            appends,
            reply,
            checked,
        })?;
        let (outcome, appends) = answer.await.map_err(|_| closed())?;
        drop(appends);
        outcome
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        request: ReadStream,
    ) -> Result<StreamPage, ReadError> {
        let limit = page_limit(request.limit);
        let forwards = request.direction == Direction::Forwards;
        let now = Timestamp::now();
        let mut reader = LogReader::new(&self.shared().segments);
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut bytes = 0usize;
        let mut visibility = None;
        // The next revision to consider, in the read's direction.
        let mut cursor: Option<u64> = request.from.map(|r| r.0);
        loop {
            // Copy the positions of the next few candidates, so that no I/O happens under
            // the index lock.
            let (candidates, readable_end): (Vec<(u64, u64)>, u64) = {
                let index = self.index();
                let Some(entry) = index.stream(stream.as_str()) else {
                    return Ok(StreamPage::default());
                };
                let Some(shown) = entry.visibility(now) else {
                    return Err(ReadError::StreamDeleted {
                        stream: stream.clone(),
                    });
                };
                let shown = *visibility.get_or_insert(shown);
                let first = shown.first_visible().0;
                let count = entry.positions.len() as u64;
                let want = (limit - events.len()) as u64 + 1;
                let revisions: Vec<u64> = if forwards {
                    let start = cursor.unwrap_or(0).max(first);
                    (start..count.min(start.saturating_add(want))).collect()
                } else {
                    match count.checked_sub(1) {
                        Some(last) => {
                            let start = cursor.unwrap_or(last).min(last);
                            if start < first {
                                Vec::new()
                            } else {
                                (first.max(start.saturating_sub(want - 1))..=start)
                                    .rev()
                                    .collect()
                            }
                        }
                        None => Vec::new(),
                    }
                };
                let candidates = revisions
                    .into_iter()
                    .filter_map(|r| {
                        let at = usize::try_from(r).ok()?;
                        entry.positions.get(at).map(|&p| (r, p))
                    })
                    .collect();
                (candidates, index.end)
            };
            let Some(&(last_candidate, _)) = candidates.last() else {
                return Ok(StreamPage { events, next: None });
            };
            let shown = visibility.unwrap_or_else(Visibility::everything);
            for (revision, position) in candidates {
                if position == REMOVED {
                    continue;
                }
                let Some(event) = reader
                    .read_event(position, readable_end)
                    .map_err(read_error)?
                else {
                    // A scavenge removed it (it was hidden when it did).
                    continue;
                };
                if event.revision.0 != revision || event.stream != *stream {
                    return Err(ReadError::Storage(StorageError::new(
                        StorageErrorKind::Corruption,
                        format!(
                            "the index places revision {revision} of {stream} at position \
                             {position}, which holds revision {} of {}",
                            event.revision, event.stream
                        ),
                    )));
                }
                if !shown.shows(event.revision, event.recorded) {
                    continue;
                }
                if events.len() >= limit || bytes >= MAX_PAGE_BYTES {
                    return Ok(StreamPage {
                        events,
                        next: Some(event.revision),
                    });
                }
                bytes += event.payload.len();
                events.push(event);
            }
            cursor = if forwards {
                Some(last_candidate + 1)
            } else {
                match last_candidate.checked_sub(1) {
                    Some(previous) => Some(previous),
                    None => return Ok(StreamPage { events, next: None }),
                }
            };
        }
    }

    async fn read_all(&self, request: ReadAll) -> Result<AllPage, ReadError> {
        let limit = page_limit(request.limit);
        match request.direction {
            Direction::Forwards => self.read_all_forwards(&request, limit),
            Direction::Backwards => self.read_all_backwards(&request, limit),
        }
    }

    fn subscribe_all(&self, request: SubscribeAll) -> Subscription {
        catch_up_all(
            self.clone(),
            request,
            WatchSignal(self.shared().changes.subscribe()),
        )
    }

    fn subscribe_stream(&self, stream: StreamName, request: SubscribeStream) -> Subscription {
        catch_up_stream(
            self.clone(),
            stream,
            request,
            WatchSignal(self.shared().changes.subscribe()),
        )
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, ReadError> {
        let index = self.index();
        let (state, metadata) = index
            .stream(stream.as_str())
            .map_or((StreamState::NoStream, StreamMetadata::default()), |e| {
                (e.state(), e.metadata())
            });
        Ok(StreamInfo {
            stream: stream.clone(),
            state,
            metadata,
        })
    }

    async fn list_streams(
        &self,
        after: Option<StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, ReadError> {
        let index = self.index();
        Ok(index
            .list(
                after.as_ref().map(StreamName::as_str),
                limit.clamp(1, MAX_LIST_STREAMS),
            )
            .into_iter()
            // Every name in the index was a valid stream name when it went in.
            .filter_map(|(name, entry)| {
                Some(StreamInfo {
                    stream: StreamName::new(name).ok()?,
                    state: entry.state(),
                    metadata: entry.metadata(),
                })
            })
            .collect())
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamName,
        metadata: StreamMetadata,
    ) -> Result<(), WriteError> {
        self.lifecycle(stream, LifecycleChange::Metadata(metadata))
            .await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<(), WriteError> {
        self.lifecycle(stream, LifecycleChange::Delete(expected))
            .await
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<(), WriteError> {
        self.lifecycle(stream, LifecycleChange::Tombstone(expected))
            .await
    }

    async fn head_position(&self) -> Result<Option<Position>, ReadError> {
        Ok(self.index().head)
    }

    fn limits(&self) -> StoreLimits {
        self.shared().limits
    }
}

/// Wakes a subscription when the writer applies a batch.
struct WatchSignal(watch::Receiver<u64>);

impl CommitSignal for WatchSignal {
    fn mark_seen(&mut self) {
        self.0.borrow_and_update();
    }

    fn changed(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.0.changed().await.map_err(|_| {
                StorageError::new(StorageErrorKind::Stopped, "the log store was dropped")
            })
        })
    }
}

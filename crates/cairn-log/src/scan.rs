//! Reading the log: walking batches and records of a segment from a chunk cache, checking
//! every record's checksum before it is decoded, and turning event records into
//! [`RecordedEvent`]s.

use std::cell::RefCell;
use std::io;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cairn_core::{Position, RecordedEvent, StorageError, StorageErrorKind, StreamName};

use crate::format::{
    BATCH_HEADER_LEN, EventView, FormatError, Record, checked_record_len, decode_batch_header,
    decode_record, record_extent,
};
use crate::segments::Segments;
use crate::storage::StorageFile;

/// How much a sequential scan reads at once.
pub(crate) const SCAN_CHUNK: usize = 256 * 1024;
/// How much a read of one record reads at once.
pub(crate) const POINT_CHUNK: usize = 4096;
/// The largest point-read chunk a reader leaves behind for the next reader on its thread.
const MAX_SPARE_POINT_CHUNK: usize = 4 * POINT_CHUNK;

thread_local! {
    /// The point-read chunk the last reader on this thread finished with: a stream read
    /// starts from it instead of allocating and zeroing a chunk of its own.
    static SPARE_POINT_CHUNK: RefCell<Option<BytesMut>> = const { RefCell::new(None) };
}

/// The bytes of a record's header needed to know its extent.
const RECORD_PREFIX: usize = 16;

/// A failure to read the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScanError {
    #[error("cannot read {path} at offset {offset}: {source}")]
    Io {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: FormatError,
    },
}

impl From<ScanError> for StorageError {
    fn from(error: ScanError) -> Self {
        let message = error.to_string();
        match error {
            ScanError::Io { source, .. } => StorageError::io(message, source),
            ScanError::Corrupt { .. } => StorageError::new(StorageErrorKind::Corruption, message),
        }
    }
}

/// Reads the log through a cache of one chunk.
pub(crate) struct LogReader<'a> {
    segments: &'a Segments,
    chunk_start: u64,
    chunk: Bytes,
    materializer: Materializer,
    /// The file each segment was first read from: kept for the reader's life, so that a
    /// scavenge replacing a segment meanwhile cannot mix two versions of it in one read.
    pinned: Vec<(u64, Arc<dyn StorageFile>)>,
}

impl<'a> LogReader<'a> {
    pub(crate) fn new(segments: &'a Segments) -> Self {
        Self {
            segments,
            chunk_start: 0,
            chunk: Bytes::new(),
            materializer: Materializer::default(),
            pinned: Vec::new(),
        }
    }

    fn corrupt(&self, offset: u64, reason: FormatError) -> ScanError {
        let base = self.segments.base_of(offset);
        ScanError::Corrupt {
            path: self.segments.path(base),
            offset: offset - base,
            reason,
        }
    }

    /// Makes global `[at, at + len)` available in the chunk, reading at most up to `limit`,
    /// and returns where it starts in the chunk.
    fn load(&mut self, at: u64, len: usize, limit: u64, chunk: usize) -> Result<usize, ScanError> {
        let end = at + len as u64;
        let chunk_end = self.chunk_start + self.chunk.len() as u64;
        if at >= self.chunk_start && end <= chunk_end {
            return Ok((at - self.chunk_start) as usize);
        }
        if end > limit {
            return Err(self.corrupt(at, FormatError::Truncated));
        }
        let read_len = (len.max(chunk) as u64).min(limit - at) as usize;
        let scanning = chunk >= SCAN_CHUNK;
        let mut buf = if scanning {
            self.segments.scan_buffer(read_len)
        } else {
            // A point read's chunk is not shared by the events read from it (they own
            // copies of their payloads), so the next point read reuses it, or the one the
            // last reader on this thread left, instead of allocating and zeroing one.
            let reused = std::mem::take(&mut self.chunk)
                .try_into_mut()
                .ok()
                .filter(|chunk| chunk.capacity() >= read_len)
                .or_else(|| {
                    SPARE_POINT_CHUNK
                        .with(|spare| spare.borrow_mut().take())
                        .filter(|chunk| chunk.capacity() >= read_len)
                });
            match reused {
                Some(mut chunk) => {
                    if chunk.len() >= read_len {
                        chunk.truncate(read_len);
                    } else {
                        chunk.resize(read_len, 0);
                    }
                    chunk
                }
                None => BytesMut::zeroed(read_len),
            }
        };
        let base = self.segments.base_of(at);
        let io_error = |source| ScanError::Io {
            path: self.segments.path(base),
            offset: at - base,
            source,
        };
        let file = match self.pinned.iter().find(|(b, _)| *b == base) {
            Some((_, file)) => Arc::clone(file),
            None => {
                let file = self.segments.file(base).ok_or_else(|| {
                    io_error(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no segment holds this offset",
                    ))
                })?;
                self.pinned.push((base, Arc::clone(&file)));
                file
            }
        };
        file.read_exact_at(&mut buf, at - base).map_err(io_error)?;
        let done = std::mem::replace(&mut self.chunk, buf.freeze());
        if scanning {
            self.segments.return_scan_buffer(done, SCAN_CHUNK);
        }
        self.chunk_start = at;
        Ok(0)
    }

    /// Walks the records of the segment holding `from_batch`, from the batch that starts
    /// there up to global offset `until` (the end of what may be read in that segment),
    /// calling `visit` with each record's position. Returns the offset right after the last
    /// record visited.
    pub(crate) fn walk(
        &mut self,
        from_batch: u64,
        until: u64,
        mut visit: impl FnMut(u64, Record<'_>, &Bytes) -> Result<ControlFlow<()>, ScanError>,
    ) -> Result<u64, ScanError> {
        let mut at = from_batch;
        while at < until {
            let start = self.load(at, BATCH_HEADER_LEN, until, SCAN_CHUNK)?;
            let header = self
                .chunk
                .get(start..)
                .ok_or(FormatError::Truncated)
                .and_then(decode_batch_header)
                .map_err(|reason| self.corrupt(at, reason))?;
            let batch_end = at + u64::from(header.len);
            if batch_end > until {
                return Err(self.corrupt(at, FormatError::Length));
            }
            let mut record_at = at + BATCH_HEADER_LEN as u64;
            while record_at < batch_end {
                let len = self.record_len(record_at, batch_end, SCAN_CHUNK)?;
                let start = (record_at - self.chunk_start) as usize;
                let record = decode_record(&self.chunk, start, len)
                    .map_err(|r| self.corrupt(record_at, r))?;
                let flow = visit(record_at, record, &self.chunk)?;
                record_at += len as u64;
                if flow.is_break() {
                    return Ok(record_at);
                }
            }
            at = batch_end;
        }
        Ok(at)
    }

    /// Loads the record at `at` (for a removed record, only its header and summary: the
    /// rest is a hole), checks it and returns its length.
    fn record_len(&mut self, at: u64, limit: u64, chunk: usize) -> Result<usize, ScanError> {
        let prefix = RECORD_PREFIX.min((limit - at.min(limit)) as usize).max(8);
        let start = self.load(at, prefix, limit, chunk)?;
        let (_, checked) = self
            .chunk
            .get(start..)
            .ok_or(FormatError::Truncated)
            .and_then(record_extent)
            .map_err(|reason| self.corrupt(at, reason))?;
        let start = self.load(at, checked, limit, chunk)?;
        self.chunk
            .get(start..)
            .ok_or(FormatError::Truncated)
            .and_then(checked_record_len)
            .map_err(|reason| self.corrupt(at, reason))
    }

    /// Reads the event recorded at `position`, checking its checksum. `readable_end` is
    /// the end of the log as the caller's index snapshot knows it: nothing past it is read,
    /// so the chunk cache never holds bytes that were not yet written when it was filled.
    ///
    /// `None` when a scavenge removed the event.
    pub(crate) fn read_event(
        &mut self,
        position: u64,
        readable_end: u64,
    ) -> Result<Option<RecordedEvent>, ScanError> {
        let limit = (self.segments.base_of(position) + self.segments.size()).min(readable_end);
        let len = self.record_len(position, limit, POINT_CHUNK)?;
        let start = (position - self.chunk_start) as usize;
        let chunk = self.chunk.clone();
        match decode_record(&chunk, start, len).map_err(|r| self.corrupt(position, r))? {
            Record::Event(view) => {
                let mut event = self
                    .materializer
                    .event(self.segments, position, &view, &chunk)?;
                // The payload gets bytes of its own rather than a share of the chunk: an
                // event kept for long would otherwise keep the whole chunk alive, and the
                // chunk could not serve the next read.
                event.payload = Bytes::copy_from_slice(&event.payload);
                Ok(Some(event))
            }
            Record::Removed { .. } => Ok(None),
            _ => Err(self.corrupt(position, FormatError::Kind(0))),
        }
    }
}

impl Drop for LogReader<'_> {
    fn drop(&mut self) {
        let chunk = std::mem::take(&mut self.chunk);
        if chunk.len() <= MAX_SPARE_POINT_CHUNK {
            if let Ok(chunk) = chunk.try_into_mut() {
                SPARE_POINT_CHUNK.with(|spare| *spare.borrow_mut() = Some(chunk));
            }
            return;
        }
        self.segments.return_scan_buffer(chunk, SCAN_CHUNK);
    }
}

/// Turns decoded event records into [`RecordedEvent`]s, sharing the stream name of
/// consecutive events of one stream.
#[derive(Default)]
pub(crate) struct Materializer {
    last: Option<StreamName>,
}

impl Materializer {
    /// The event recorded at `position`, decoded as `view`, its payload sharing `chunk`.
    pub(crate) fn event(
        &mut self,
        segments: &Segments,
        position: u64,
        view: &EventView<'_>,
        chunk: &Bytes,
    ) -> Result<RecordedEvent, ScanError> {
        let corrupt = |reason| {
            let base = segments.base_of(position);
            ScanError::Corrupt {
                path: segments.path(base),
                offset: position - base,
                reason,
            }
        };
        let stream = match &self.last {
            Some(name) if name.as_str() == view.stream => name.clone(),
            _ => {
                let name = StreamName::new(view.stream).map_err(|_| corrupt(FormatError::Utf8))?;
                self.last = Some(name.clone());
                name
            }
        };
        let metadata = view.metadata().map_err(corrupt)?;
        Ok(RecordedEvent {
            id: view.id,
            stream,
            revision: view.revision,
            position: Position(position),
            event_type: view.event_type.into(),
            content_type: view.content_type.into(),
            payload: view.payload_of(chunk),
            metadata,
            recorded: view.recorded,
        })
    }
}

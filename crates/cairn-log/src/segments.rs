//! Segment files: fixed-size, preallocated files that hold the log, named by the global
//! offset of their first byte. A global offset (an event's position) maps to a segment and
//! an offset inside it by division, so no table is needed to find a record.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::format::{SEGMENT_HEADER_LEN, encode_segment_header};
use crate::storage::{OpenMode, Storage, StorageFile};

/// How segment files get their space ahead of the writer.
///
/// Every segment has its full length from the start, so a flush never has to record a new
/// file size. Writing into a sparse file also allocates blocks, which the flush must then
/// journal; overwriting zeros does not. Measured here with 64 concurrent writers (about
/// 20 KiB per flush), zero-filled segments take about 20 % more appends per second, so
/// zero-filling ahead of the writer is the default.
///
/// Zeros cost a second write of every byte, though: when the writer fills segments faster
/// than zeros can go down (large batches), zero-filling would only compete with it for
/// the disk and the CPU and then be thrown away. So the filler measures how fast it
/// writes zeros, and when the writer will need the segment before the zeros could be done
/// it prepares that segment sparse instead.
///
/// A segment that is not zero-filled (a new store's first one, one the writer reached
/// first, or one made sparse for want of time) is zero-filled by the writer itself, a
/// little ahead of its data (256 KiB at a time, right after the write whose data reaches
/// past the zeros): block allocation then costs one journal commit per step rather than
/// one per flush. Measured here with 6 KiB flushes (64 writers of one event),
/// a sparse file takes 1,100 to 3,000 flushes per second against 6,500 for zeros.
///
/// Zeros pay only while flushes are small, though. Block allocation is a fixed cost per
/// flush, so the larger the flush the less of it that cost is, while zeros always double
/// the bytes written. Measured here with one writer flushing after each write, counting
/// the zeros' own writing and flushing: 64 KiB flushes went 232 MB/s over zeros against
/// 177 MB/s sparse, 128 KiB ones 393 against 430, and 256 KiB ones 512 against 641. So
/// while the writer's flushes average 128 KiB or more (large batches, or the
/// weaker durability modes), neither the filler nor the writer writes zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// A background thread writes zeros over the next segment, in small flushed steps,
    /// before the writer needs it, so later writes overwrite allocated blocks. When the
    /// writer gets there first, or would (it writes faster than the zeros go down), the
    /// segment is created sparse.
    #[default]
    Zeroed,
    /// Segments are sparse files: their length is set, nothing is written. Cheaper to
    /// create, dearer to flush.
    Sparse,
}

const SUFFIX: &str = ".seg";
/// A segment being created sparse by the writer.
const TEMP_SUFFIX: &str = ".seg.tmp";
/// A segment being zero-filled ahead of time.
const ZEROING_SUFFIX: &str = ".seg.zeroing";
/// A segment being rewritten by a scavenge.
const SCAVENGE_SUFFIX: &str = ".seg.scavenge";
/// How many scan buffers readers leave for later scans, at most.
const SPARE_BUFFERS: usize = 8;
/// How much the zero-filler writes (and flushes) at a time.
const ZERO_STEP: usize = 1 << 20;
/// How far ahead of its data the writer zero-fills a segment that is not zero-filled yet.
pub(crate) const WRITER_ZERO_STEP: u64 = 256 << 10;
/// How much sooner than the writer needs it zero-filling must be expected to finish.
const ZERO_MARGIN: f64 = 1.5;
/// Flushes of this many bytes on average or more gain less from zeros than the zeros cost
/// (see [`Preallocation`]).
pub(crate) const LARGE_FLUSH: u64 = 128 << 10;

/// Whether zeros ahead of the writer pay, given the average bytes of its recent flushes
/// (0 while none was measured).
pub(crate) fn zeros_pay(flush_bytes: u64) -> bool {
    flush_bytes < LARGE_FLUSH
}

/// The segment files of one log.
#[derive(Debug)]
pub(crate) struct Segments {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    size: u64,
    preallocation: Preallocation,
    /// Open segments by base. The writer inserts (when it creates one); readers look up.
    files: RwLock<BTreeMap<u64, Arc<dyn StorageFile>>>,
    /// Held while a segment file is renamed into place, so the writer and the
    /// preallocator never install the same one twice.
    creating: Mutex<()>,
    /// How fast the last zero-filling went, in bytes per second (0 before any). Written
    /// and read by the preallocator only.
    zero_rate: AtomicU64,
    /// The segments this process zero-filled whole (by base), so the writer knows it need
    /// not write zeros ahead of itself there.
    zero_filled: Mutex<BTreeSet<u64>>,
    /// Scan buffers readers are done with, for the next scans (see [`Segments::scan_buffer`]).
    spare_buffers: Mutex<Vec<Bytes>>,
}

impl Segments {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        size: u64,
        preallocation: Preallocation,
    ) -> Self {
        Self {
            storage,
            dir,
            size,
            preallocation,
            files: RwLock::new(BTreeMap::new()),
            creating: Mutex::new(()),
            zero_rate: AtomicU64::new(0),
            zero_filled: Mutex::new(BTreeSet::new()),
            spare_buffers: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The base of the segment holding global offset `offset`.
    pub(crate) fn base_of(&self, offset: u64) -> u64 {
        offset - offset % self.size
    }

    /// The global offset of the first batch in the segment based at `base`.
    pub(crate) fn data_start(base: u64) -> u64 {
        base + SEGMENT_HEADER_LEN
    }

    pub(crate) fn path(&self, base: u64) -> PathBuf {
        self.dir.join(format!("{base:020}{SUFFIX}"))
    }

    /// The bases named by the segment files in the directory, in order, and the temporary
    /// files a crash may have left behind.
    pub(crate) fn list(&self) -> io::Result<(Vec<u64>, Vec<String>)> {
        let mut bases = Vec::new();
        let mut leftovers = Vec::new();
        for name in self.storage.list_dir(&self.dir)? {
            if name.ends_with(TEMP_SUFFIX)
                || name.ends_with(ZEROING_SUFFIX)
                || name.ends_with(SCAVENGE_SUFFIX)
            {
                leftovers.push(name);
            } else if let Some(stem) = name.strip_suffix(SUFFIX)
                && let Ok(base) = stem.parse::<u64>()
            {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        Ok((bases, leftovers))
    }

    /// Registers an existing segment file.
    pub(crate) fn insert(&self, base: u64, file: Arc<dyn StorageFile>) {
        self.files
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(base, file);
    }

    /// Forgets (and deletes) the segment based at `base`.
    pub(crate) fn remove(&self, base: u64) -> io::Result<()> {
        self.files
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&base);
        self.zero_filled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&base);
        self.storage.remove_file(&self.path(base))?;
        self.storage.sync_dir(&self.dir)
    }

    /// The open segment based at `base`.
    pub(crate) fn file(&self, base: u64) -> Option<Arc<dyn StorageFile>> {
        self.files
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&base)
            .cloned()
    }

    /// The segment based at `base`; created at once (sparse, with its header, durable) if it
    /// does not exist yet. The writer calls this: it never waits for zeros.
    pub(crate) fn ensure(&self, base: u64) -> io::Result<Arc<dyn StorageFile>> {
        if let Some(file) = self.file(base) {
            return Ok(file);
        }
        let temp = self.dir.join(format!("{base:020}{TEMP_SUFFIX}"));
        let file = self.storage.open(&temp, OpenMode::CreateTruncate)?;
        file.set_len(self.size)?;
        self.install(base, &temp, file, false)
    }

    /// Creates the segment based at `base` ahead of need, as [`Preallocation`] says: zeros
    /// are written in small flushed steps, so that the dirty data never delays the
    /// writer's flushes for long. `needed_in` is about when the writer will need it; a
    /// segment that zeros could not fill by then, or whose writer's flushes average
    /// `flush_bytes` too many for zeros to pay ([`zeros_pay`]), is made sparse at once.
    /// Gives up quietly if the writer creates it first.
    pub(crate) fn prepare(
        &self,
        base: u64,
        needed_in: Duration,
        flush_bytes: u64,
    ) -> io::Result<()> {
        if self.file(base).is_some() {
            return Ok(());
        }
        let temp = self.dir.join(format!("{base:020}{ZEROING_SUFFIX}"));
        let file = self.storage.open(&temp, OpenMode::CreateTruncate)?;
        let mut zeroed = false;
        match self.preallocation {
            Preallocation::Zeroed if zeros_pay(flush_bytes) && self.zeros_in_time(needed_in) => {
                let zeros = vec![0u8; ZERO_STEP];
                let started = Instant::now();
                let mut at = 0;
                while at < self.size {
                    if self.file(base).is_some() {
                        self.note_zero_rate(at, started.elapsed());
                        return self.storage.remove_file(&temp);
                    }
                    let n = (self.size - at).min(ZERO_STEP as u64) as usize;
                    file.write_all_at(zeros.get(..n).unwrap_or_default(), at)?;
                    file.sync_data()?;
                    at += n as u64;
                }
                self.note_zero_rate(at, started.elapsed());
                zeroed = true;
            }
            Preallocation::Zeroed | Preallocation::Sparse => file.set_len(self.size)?,
        }
        if self.file(base).is_some() {
            return self.storage.remove_file(&temp);
        }
        self.install(base, &temp, file, zeroed).map(drop)
    }

    /// Whether the writer must zero-fill the segment based at `base` ahead of its data:
    /// the store zero-fills segments, and this one was not zero-filled whole.
    pub(crate) fn needs_writer_zeros(&self, base: u64) -> bool {
        self.preallocation == Preallocation::Zeroed
            && !self
                .zero_filled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&base)
    }

    /// Whether zeros, at the pace the last filling went, would cover a segment within
    /// `needed_in` (with a margin). True until a filling has been measured.
    fn zeros_in_time(&self, needed_in: Duration) -> bool {
        let rate = self.zero_rate.load(Ordering::Relaxed);
        if rate == 0 {
            return true;
        }
        let seconds = self.size as f64 / rate as f64;
        seconds * ZERO_MARGIN < needed_in.as_secs_f64()
    }

    /// Remembers how fast `bytes` of zeros went down in `took`, once enough of them did
    /// for the figure to mean something.
    fn note_zero_rate(&self, bytes: u64, took: Duration) {
        if bytes < 4 * ZERO_STEP as u64 || took.is_zero() {
            return;
        }
        let rate = (bytes as f64 / took.as_secs_f64()) as u64;
        self.zero_rate.store(rate.max(1), Ordering::Relaxed);
    }

    /// Writes the header of a fully sized file at `temp`, makes it durable and renames it
    /// into place as the segment based at `base` (unless that exists by now); `zeroed`
    /// says it was zero-filled whole.
    fn install(
        &self,
        base: u64,
        temp: &Path,
        file: Arc<dyn StorageFile>,
        zeroed: bool,
    ) -> io::Result<Arc<dyn StorageFile>> {
        file.write_all_at(&encode_segment_header(base, self.size), 0)?;
        file.sync_data()?;
        let _creating = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = self.file(base) {
            self.storage.remove_file(temp)?;
            return Ok(existing);
        }
        let path = self.path(base);
        self.storage.rename(temp, &path)?;
        self.storage.sync_dir(&self.dir)?;
        // Reopen under the final name, so the handle names the file that stays.
        let file = self.storage.open(&path, OpenMode::ReadWrite)?;
        if zeroed {
            self.zero_filled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(base);
        }
        self.insert(base, Arc::clone(&file));
        Ok(file)
    }

    /// A buffer of `len` bytes to read a scan chunk into: a spare one no reader shares any
    /// more when there is one (its old contents are about to be overwritten), else a new
    /// one. Reusing them spares a large allocation, its page faults and the zeroing of
    /// every chunk of a long scan.
    pub(crate) fn scan_buffer(&self, len: usize) -> BytesMut {
        let mut spares = self
            .spare_buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut at = spares.len();
        while at > 0 {
            at -= 1;
            let fits = spares
                .get(at)
                .is_some_and(|b| b.len() >= len && b.is_unique());
            if fits {
                let spare = spares.swap_remove(at);
                drop(spares);
                if let Ok(mut buf) = spare.try_into_mut() {
                    buf.truncate(len);
                    return buf;
                }
                break;
            }
        }
        BytesMut::zeroed(len)
    }

    /// Takes back a scan buffer a reader is done with (events may still share it; it is
    /// reused once they are gone). Only buffers of about a scan chunk are kept, a few.
    pub(crate) fn return_scan_buffer(&self, buffer: Bytes, chunk: usize) {
        if buffer.len() < chunk / 2 || buffer.len() > chunk * 2 {
            return;
        }
        let mut spares = self
            .spare_buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if spares.len() >= SPARE_BUFFERS {
            spares.remove(0);
        }
        spares.push(buffer);
    }

    /// Reads exactly `buf.len()` bytes at global offset `offset`, which must not cross the
    /// end of its segment.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let base = self.base_of(offset);
        let file = self.file(base).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no segment holds offset {offset}"),
            )
        })?;
        file.read_exact_at(buf, offset - base)
    }
}

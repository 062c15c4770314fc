//! The `open` workload: how long a large store takes to open, and how much memory it then
//! holds, after a clean shutdown and after a crash.
//!
//! It fills a store with `--open-events` events spread evenly over `--open-streams`
//! streams, closes it (which writes the index snapshot), and opens it in a child process
//! (`cairn open-probe`), which reports the time to open and its resident memory: a fresh
//! process, so nothing the filling left in this one's heap is counted. Then it removes the
//! snapshot and leaves the "open" marker, which is the state a crash leaves at worst (no
//! snapshot, whole log to replay), and measures again.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use cairn::log::{Durability, LogOptions, LogStore};
use cairn::{EventData, EventStore, ExpectedRevision, StreamAppend, StreamName};
use serde::{Deserialize, Serialize};

/// Streams per append while filling, and events per stream per append.
const STREAMS_PER_APPEND: u64 = 10;
const EVENTS_PER_STREAM: u64 = 10;
const FILL_WRITERS: u64 = 16;

/// What one open measured, as `cairn open-probe` prints it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct OpenMeasure {
    pub(crate) seconds: f64,
    /// Resident memory after opening, in bytes.
    pub(crate) resident_bytes: u64,
    /// The most resident memory while opening, in bytes.
    pub(crate) peak_bytes: u64,
}

/// The `open` workload's results.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenResult {
    pub(crate) events: u64,
    pub(crate) streams: u64,
    pub(crate) log_bytes: u64,
    pub(crate) clean: OpenMeasure,
    pub(crate) crash: OpenMeasure,
}

/// Fills a store in `dir` with `events` events over `streams` streams, `size` bytes each.
pub(crate) async fn fill(
    dir: &Path,
    events: u64,
    streams: u64,
    size: usize,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let store = LogStore::open(dir, LogOptions::default().durability(Durability::None))
        .with_context(|| format!("cannot open a store in {}", dir.display()))?;
    let payload = Bytes::from(vec![b'x'; size]);
    let per_append = STREAMS_PER_APPEND * EVENTS_PER_STREAM;
    let appends = events.div_ceil(per_append);
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..FILL_WRITERS {
        let store = store.clone();
        let payload = payload.clone();
        let next = Arc::clone(&next);
        let counter = Arc::clone(counter);
        writers.push(tokio::spawn(async move {
            loop {
                let append = next.fetch_add(1, Ordering::Relaxed);
                if append >= appends {
                    return Ok::<(), anyhow::Error>(());
                }
                let parts = (0..STREAMS_PER_APPEND)
                    .map(|part| {
                        let stream = (append * STREAMS_PER_APPEND + part) % streams.max(1);
                        let events = (0..EVENTS_PER_STREAM)
                            .map(|_| EventData::new("Filled", payload.clone()))
                            .collect();
                        StreamName::new(format!("open-{stream}"))
                            .map(|name| StreamAppend::new(name, ExpectedRevision::Any, events))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                store.append_multi(parts).await?;
                counter.fetch_add(per_append, Ordering::Relaxed);
            }
        }));
    }
    for writer in writers {
        writer.await.context("a filling writer stopped")??;
    }
    store.close().await.context("closing the filled store")?;
    Ok(())
}

/// Opens the store in `dir` in a child process and reports what it measured.
pub(crate) async fn probe_in_child(dir: &Path) -> anyhow::Result<OpenMeasure> {
    let exe = std::env::current_exe().context("cannot find this program to run the probe")?;
    let dir = dir.to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .arg("--data-dir")
            .arg(dir)
            .arg("open-probe")
            .output()
    })
    .await
    .context("the open probe stopped")?
    .context("cannot run the open probe")?;
    if !output.status.success() {
        bail!(
            "the open probe failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("the open probe printed something unexpected")
}

/// Makes `dir` look as a crash leaves it at worst: no snapshot, and the marker of an
/// unfinished session, so the next open replays and checks the whole log.
pub(crate) fn as_after_a_crash(dir: &Path) -> anyhow::Result<()> {
    let index = dir.join("index");
    match std::fs::remove_file(index.join("snapshot")) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).context("removing the index snapshot"),
    }
    std::fs::write(index.join("open"), b"").context("leaving the open marker")?;
    Ok(())
}

/// The bytes of the log's segment files.
pub(crate) fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("log"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `cairn open-probe`: opens the store in the data directory, prints what it took as one
/// JSON object, and exits without closing it (so the next probe finds the same state).
pub(crate) fn open_probe(dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = LogStore::open(dir, LogOptions::default())
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let (resident_bytes, peak_bytes) = memory();
    let measure = OpenMeasure {
        seconds,
        resident_bytes,
        peak_bytes,
    };
    println!("{}", serde_json::to_string(&measure)?);
    // Leave without the clean close: it would rewrite the snapshot.
    std::mem::forget(store);
    Ok(())
}

/// This process's resident memory now and at its peak, in bytes, from `/proc/self/status`.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

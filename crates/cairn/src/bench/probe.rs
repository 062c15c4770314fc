//! The disk probe: what the disk itself can flush, taken right before and right after the
//! durable workloads so a run on a disk in a slow phase is recognised as noisy.
//!
//! It overwrites a zero-filled, preallocated file on the same file system with 256-byte
//! records, each `write` followed by `fdatasync`, one at a time, for the probe's duration.
//! (Overwriting allocated blocks keeps the file size fixed, so a flush commits only data,
//! as the store's preallocated segments do.)

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::stats::{Percentiles, Samples};

/// The size of each probe record, in bytes.
pub(crate) const RECORD: usize = 256;

/// The size of the preallocated probe file; the probe wraps around at its end.
const FILE_SIZE: u64 = 32 << 20;

/// Two probes that differ by more than this fraction make the run noisy.
pub(crate) const NOISY_ABOVE: f64 = 0.30;

/// What one probe measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Probe {
    pub(crate) flushes: u64,
    pub(crate) seconds: f64,
    pub(crate) flushes_per_sec: f64,
    pub(crate) latency: Percentiles,
}

/// Probes the disk under `dir` for about `duration`.
///
/// # Errors
///
/// The I/O error that stopped it.
pub(crate) fn run(dir: &Path, duration: Duration) -> io::Result<Probe> {
    let path = dir.join("probe.dat");
    let outcome = probe_file(&path, duration);
    let removed = std::fs::remove_file(&path);
    let probe = outcome?;
    removed?;
    Ok(probe)
}

fn probe_file(path: &Path, duration: Duration) -> io::Result<Probe> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    preallocate(&file)?;
    let record = [0xa5u8; RECORD];
    let mut samples = Samples::with_capacity(1 << 16);
    let mut offset = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let flush_started = Instant::now();
        file.write_all_at(&record, offset)?;
        file.sync_data()?;
        samples.record(flush_started.elapsed());
        offset = (offset + RECORD as u64) % FILE_SIZE;
    }
    let seconds = started.elapsed().as_secs_f64();
    let flushes = samples.len() as u64;
    Ok(Probe {
        flushes,
        seconds,
        flushes_per_sec: flushes as f64 / seconds.max(f64::MIN_POSITIVE),
        latency: samples.summary(),
    })
}

/// Fills the file with zeros and makes them durable, so later writes only overwrite.
fn preallocate(file: &File) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < FILE_SIZE {
        file.write_all_at(&zeros, offset)?;
        offset += zeros.len() as u64;
    }
    file.sync_all()
}

/// How far apart two probes are: the difference over the larger one (0 when both are 0).
pub(crate) fn difference(before: &Probe, after: &Probe) -> f64 {
    let larger = before.flushes_per_sec.max(after.flushes_per_sec);
    if larger <= 0.0 {
        0.0
    } else {
        (before.flushes_per_sec - after.flushes_per_sec).abs() / larger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_probe_flushes_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("cairn-probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let probe = run(&dir, Duration::from_millis(50)).unwrap();
        assert!(probe.flushes > 0);
        assert!(probe.latency.p50_us > 0.0);
        assert!(!dir.join("probe.dat").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn probes_differ_by_the_fraction_of_the_larger() {
        let probe = |rate| Probe {
            flushes: 0,
            seconds: 1.0,
            flushes_per_sec: rate,
            latency: Percentiles::default(),
        };
        assert!((difference(&probe(1000.0), &probe(600.0)) - 0.4).abs() < 1e-9);
        assert!((difference(&probe(600.0), &probe(1000.0)) - 0.4).abs() < 1e-9);
        assert_eq!(difference(&probe(0.0), &probe(0.0)), 0.0);
    }
}

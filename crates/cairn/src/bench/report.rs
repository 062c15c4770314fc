//! The benchmark's report: what was measured, under which conditions, against which
//! targets, beside which peers; printed as a table for a person or as one JSON object.
//!
//! Every figure in it comes from the run that produced it. The targets are the goals Cairn
//! sets itself, and whether this run met them.

use std::fmt::Write as _;

use serde::Serialize;

use super::probe::{NOISY_ABOVE, Probe};
use super::stats::Percentiles;

/// Everything one `cairn bench` run found.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) conditions: Conditions,
    /// The disk probes around the durable workloads, when any ran.
    pub(crate) probes: Option<Probes>,
    pub(crate) workloads: Vec<WorkloadResult>,
    pub(crate) peers: Vec<PeerInfo>,
    /// Whether the probes disagree by more than 30 %: the figures are then not to be quoted.
    pub(crate) noisy: bool,
    pub(crate) notes: Vec<String>,
}

/// The conditions of a run, quoted with every figure.
#[derive(Debug, Serialize)]
pub(crate) struct Conditions {
    pub(crate) cairn_version: &'static str,
    /// `release` or `debug`: debug figures say little.
    pub(crate) build: &'static str,
    pub(crate) cpus: usize,
    /// Payload bytes of each event.
    pub(crate) event_size: usize,
    pub(crate) durability: String,
    pub(crate) segment_size: u64,
    /// The most events each write workload appends.
    pub(crate) count: u64,
    /// The longest each write workload runs, in seconds.
    pub(crate) duration_s: f64,
    /// Events per second the latency workload offers.
    pub(crate) latency_rate: u32,
    pub(crate) dir: String,
    /// The file system under `dir` (type and device).
    pub(crate) filesystem: String,
}

/// The disk probes before and after the durable workloads.
#[derive(Debug, Serialize)]
pub(crate) struct Probes {
    pub(crate) before: Probe,
    pub(crate) after: Probe,
    /// |before − after| / max(before, after), in flushes per second.
    pub(crate) difference: f64,
}

impl Probes {
    /// The mean of the two probes' flushes per second.
    pub(crate) fn mean_flushes_per_sec(&self) -> f64 {
        (self.before.flushes_per_sec + self.after.flushes_per_sec) / 2.0
    }

    /// Whether the probes disagree too much for the run to be quoted.
    pub(crate) fn noisy(&self) -> bool {
        self.difference > NOISY_ABOVE
    }
}

/// One workload's figures, for Cairn and for each peer that ran it.
#[derive(Debug, Serialize)]
pub(crate) struct WorkloadResult {
    pub(crate) name: String,
    pub(crate) writers: usize,
    pub(crate) batch: usize,
    pub(crate) events: u64,
    pub(crate) seconds: f64,
    pub(crate) events_per_sec: f64,
    /// Payload megabytes (10⁶ bytes) per second.
    pub(crate) mb_per_sec: f64,
    /// Per append (write workloads), per delivery (`latency`) or per page (`read-all`).
    pub(crate) latency: Percentiles,
    pub(crate) target: Option<Target>,
    pub(crate) peers: Vec<PeerResult>,
    /// What else the workload observed.
    pub(crate) detail: Option<String>,
}

/// A goal and whether this run met it.
#[derive(Debug, Serialize)]
pub(crate) struct Target {
    /// The goal, e.g. `>= 150,000 ev/s`.
    pub(crate) goal: String,
    /// The measured value the goal is about.
    pub(crate) measured: f64,
    pub(crate) met: bool,
}

/// A peer's figures for one workload.
#[derive(Debug, Serialize)]
pub(crate) struct PeerResult {
    pub(crate) peer: String,
    pub(crate) events: u64,
    pub(crate) seconds: f64,
    pub(crate) events_per_sec: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) latency: Percentiles,
    /// Cairn's events per second over the peer's.
    pub(crate) cairn_ratio: f64,
}

/// A peer that took part: what it is and how it was set up.
#[derive(Debug, Serialize)]
pub(crate) struct PeerInfo {
    pub(crate) name: String,
    pub(crate) version: String,
    /// Where it was reached (never with a password).
    pub(crate) endpoint: String,
    /// How it was configured and driven.
    pub(crate) setup: String,
}

/// Formats a number with thousands separators and no decimals (`1234567.8` → `1,234,568`).
pub(crate) fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_owned();
    }
    let rounded = value.round().abs() as u64;
    let digits = rounded.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < -0.5 {
        grouped.insert(0, '-');
    }
    grouped
}

/// Formats microseconds: one decimal below 100, none above.
pub(crate) fn micros(value: f64) -> String {
    if value < 100.0 {
        format!("{value:.1}")
    } else {
        thousands(value)
    }
}

impl Report {
    /// The report as a table with its conditions, for a person.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        let c = &self.conditions;
        let _ = writeln!(text, "Cairn {} bench ({} build)", c.cairn_version, c.build);
        let _ = writeln!(
            text,
            "conditions: {}-byte events, durability {}, {} MiB segments, {} CPUs; each write \
             workload up to {} events or {}s",
            c.event_size,
            c.durability,
            c.segment_size >> 20,
            c.cpus,
            thousands(c.count as f64),
            c.duration_s
        );
        let _ = writeln!(text, "disk: {} on {}", c.dir, c.filesystem);
        if let Some(probes) = &self.probes {
            let show = |probe: &Probe| {
                format!(
                    "{} flushes/s (p50 {} µs, p99 {} µs)",
                    thousands(probe.flushes_per_sec),
                    micros(probe.latency.p50_us),
                    micros(probe.latency.p99_us)
                )
            };
            let verdict = if probes.noisy() {
                "NOISY: the disk changed pace during the run; do not quote these figures"
            } else {
                "steady"
            };
            let _ = writeln!(
                text,
                "disk probe (256-byte write + fdatasync): before {}, after {}; they differ by \
                 {:.0}% ({verdict})",
                show(&probes.before),
                show(&probes.after),
                probes.difference * 100.0
            );
        }
        for peer in &self.peers {
            let _ = writeln!(
                text,
                "peer {} {} at {}: {}",
                peer.name, peer.version, peer.endpoint, peer.setup
            );
        }
        text.push('\n');
        text.push_str(&self.table());
        for note in &self.notes {
            let _ = writeln!(text, "note: {note}");
        }
        if self.noisy {
            let _ = writeln!(
                text,
                "NOISY RUN: the disk probes before and after differ by more than {:.0}%.",
                NOISY_ABOVE * 100.0
            );
        }
        text
    }

    fn table(&self) -> String {
        let mut header = vec![
            "workload".to_owned(),
            "writers".to_owned(),
            "batch".to_owned(),
            "events".to_owned(),
            "cairn ev/s".to_owned(),
            "MB/s".to_owned(),
            "p50 µs".to_owned(),
            "p99 µs".to_owned(),
            "p999 µs".to_owned(),
        ];
        for peer in &self.peers {
            header.push(format!("{} ev/s", peer.name));
            header.push(format!("cairn/{}", peer.name));
        }
        header.push("target".to_owned());
        header.push("met".to_owned());
        let mut rows = vec![header];
        if let Some(probes) = &self.probes {
            for (label, probe) in [
                ("probe (before)", &probes.before),
                ("probe (after)", &probes.after),
            ] {
                let mut row = vec![
                    label.to_owned(),
                    "1".to_owned(),
                    "1".to_owned(),
                    thousands(probe.flushes as f64),
                    format!("{} fl/s", thousands(probe.flushes_per_sec)),
                    "-".to_owned(),
                    micros(probe.latency.p50_us),
                    micros(probe.latency.p99_us),
                    micros(probe.latency.p999_us),
                ];
                for _ in &self.peers {
                    row.extend(["-".to_owned(), "-".to_owned()]);
                }
                row.extend(["-".to_owned(), "-".to_owned()]);
                rows.push(row);
            }
        }
        for workload in &self.workloads {
            let mut row = vec![
                workload.name.clone(),
                workload.writers.to_string(),
                workload.batch.to_string(),
                thousands(workload.events as f64),
                thousands(workload.events_per_sec),
                format!("{:.1}", workload.mb_per_sec),
                micros(workload.latency.p50_us),
                micros(workload.latency.p99_us),
                micros(workload.latency.p999_us),
            ];
            for peer in &self.peers {
                match workload.peers.iter().find(|p| p.peer == peer.name) {
                    Some(result) => row.extend([
                        thousands(result.events_per_sec),
                        format!("{:.2}", result.cairn_ratio),
                    ]),
                    None => row.extend(["-".to_owned(), "-".to_owned()]),
                }
            }
            match &workload.target {
                Some(target) => row.extend([
                    target.goal.clone(),
                    if target.met { "yes" } else { "NO" }.to_owned(),
                ]),
                None => row.extend(["-".to_owned(), "-".to_owned()]),
            }
            rows.push(row);
        }
        let columns = rows.first().map_or(0, Vec::len);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                rows.iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                let width = widths.get(column).copied().unwrap_or(0);
                // Names and targets read left to right; figures line up on the right.
                let left = column == 0 || column + 2 == columns;
                if column > 0 {
                    line.push_str("  ");
                }
                if left {
                    let _ = write!(line, "{cell:<width$}");
                } else {
                    let _ = write!(line, "{cell:>width$}");
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        for workload in &self.workloads {
            if let Some(detail) = &workload.detail {
                let _ = writeln!(text, "{}: {detail}", workload.name);
            }
        }
        for workload in &self.workloads {
            for peer in &workload.peers {
                let _ = writeln!(
                    text,
                    "{} on {}: {} events in {:.2}s, {} ev/s, {:.1} MB/s, p50 {} µs, p99 {} µs, \
                     p999 {} µs",
                    workload.name,
                    peer.peer,
                    thousands(peer.events as f64),
                    peer.seconds,
                    thousands(peer.events_per_sec),
                    peer.mb_per_sec,
                    micros(peer.latency.p50_us),
                    micros(peer.latency.p99_us),
                    micros(peer.latency.p999_us)
                );
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-1500.0), "-1,500");
        assert_eq!(thousands(f64::NAN), "-");
    }
}

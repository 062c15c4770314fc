//! `cairn bench`: Cairn's figures on this machine, and (with `--compare`) PostgreSQL's and
//! NATS JetStream's beside them, from one run.
//!
//! The run happens in a fresh directory on the real disk (never a memory file system),
//! removed afterwards. Durable workloads are bracketed by a raw disk probe
//! ([`probe`]); when the two probes differ by more than 30 % the run is reported as noisy.
//! The workloads, with names that stay stable because the published figures cite them:
//!
//! | name         | what it does                                                             |
//! |--------------|--------------------------------------------------------------------------|
//! | `probe`      | `write` + `fdatasync` of 256-byte records, one writer, before and after   |
//! | `append-1w`  | 1 writer, 1 event per append, each acknowledged before the next          |
//! | `append-64w` | 64 concurrent writers, 1 event per append                                |
//! | `batch-16w`  | 16 concurrent writers, 100 events per append                             |
//! | `read-all`   | reads `$all` from the page cache                                         |
//! | `latency`    | 10,000 events/s offered, append start → live subscriber delivery, after a 1 s warm-up at that rate |
//! | `custom`     | `--writers` × `--batch`, run when either is given                        |
//! | `open`       | opens a store of `--open-events` in `--open-streams` (10 M in 1 M by default), after a clean close and as after a crash; run only when named |
//! | `bus`        | the message bus over the in-memory transport: `bus-raw`, deliver and ack alone; `bus-router`, through the consumer, router and middleware; run only when named (`cairn bench bus`) |
//! | `es`         | event sourcing ([`es`]): `es-commands`, 64 clients running commands through a repository with its state cache (`es-commands-uncached` without it); `es-load`, loading an aggregate of 1 M events with a snapshot per 1,000; run only when named (`cairn bench es`) |
//!
//! `--store postgres` runs the write, latency and read workloads on `cairn-postgres`
//! instead, on a database created for the run ([`subject`]), with the PostgreSQL targets of
//! its own (32 writers at >= 0.8 x the naive insert, batches at >= 80,000 ev/s, p99 delivery
//! <= 20 ms at 2,000 ev/s); `--compare postgres` puts the naive insert beside it.
//!
//! Modules: [`store`] runs the workloads on Cairn, [`peers`] on the peers, [`probe`] the
//! disk probe, [`stats`] the percentiles, [`progress`] the progress line, [`report`] the
//! output.

mod bus;
mod es;
pub(crate) mod open;
mod peers;
mod probe;
mod progress;
#[cfg(feature = "amqp")]
mod raw_amqp;
#[cfg(feature = "nats")]
mod raw_nats;
#[cfg(feature = "redis")]
mod raw_redis;
mod report;
mod stats;
mod store;
mod subject;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use cairn::log::{DEFAULT_SEGMENT_SIZE, LogOptions, LogStore};
use clap::{Args, ValueEnum};

use crate::cli::output::Printer;
use crate::cli::{Global, UsageError, parse};
use peers::Peer;
use progress::Progress;
use report::{Conditions, PeerResult, Probes, Report, Target, WorkloadResult, micros, thousands};
use stats::Percentiles;
use subject::{StoreKind, Subject};

/// Measures the store on this machine's disk.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// What to measure: `store`, the event store's workloads (the default), or `es`, event
    /// sourcing through a repository (the `es` workload).
    #[arg(value_name = "SUITE", value_enum)]
    suite: Option<Suite>,

    /// The directory to run in, on the disk to measure; it must not exist or be empty, and
    /// what the run writes there is removed afterwards [default: ./cairn-bench-<pid>].
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,

    /// Run only these workloads (comma-separated): probe, append-1w, append-64w,
    /// batch-16w, read-all, latency, custom [default: all but custom].
    #[arg(long, value_name = "NAME", value_enum, value_delimiter = ',')]
    workload: Vec<Workload>,

    /// Payload bytes of each event.
    #[arg(long, value_name = "BYTES", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(8..=1_000_000))]
    size: u32,

    /// The most events each write workload appends.
    #[arg(long, value_name = "N", default_value_t = 2_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,

    /// The longest each write workload (and the latency workload) runs, e.g. 5s.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse::duration)]
    duration: Duration,

    /// Writers of the custom workload (running it) [default: 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    writers: Option<u32>,

    /// Events per append of the custom workload (running it) [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: Option<u32>,

    /// How long each disk probe runs.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse::duration)]
    probe: Duration,

    /// Events per second the latency workload offers.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,

    /// The store to measure: the embedded log, or cairn-postgres on a database created on
    /// the --postgres-addr server for the run (needs a build with the `postgres` feature).
    #[arg(long, value_name = "STORE", value_enum, default_value = "log")]
    store: StoreKind,

    /// Run the write workloads against these peers too (comma-separated: postgres, nats);
    /// needs a build with the `peers` feature.
    #[arg(long, value_name = "PEER", value_enum, value_delimiter = ',')]
    compare: Vec<PeerKind>,

    /// PostgreSQL for --compare postgres (user from $PGUSER, default postgres; password
    /// from $PGPASSWORD if set).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5432")]
    postgres_addr: String,

    /// NATS (with JetStream) for --compare nats.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:4222")]
    nats_addr: String,

    /// The transport of `cairn bench bus`: the in-memory broker, or a broker beside its own
    /// client library (nats, amqp and redis need a build with that feature).
    #[arg(long, value_name = "TRANSPORT", value_enum, default_value = "memory")]
    transport: bus::TransportKind,

    /// The broker's URL for --transport [default: the broker's port on 127.0.0.1].
    #[arg(long, value_name = "URL")]
    broker_url: Option<String>,

    /// Events in the store the open workload opens.
    #[arg(long, value_name = "N", default_value_t = 10_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    open_events: u64,

    /// Events in the aggregate the es-load workload loads.
    #[arg(long, value_name = "N", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1_000..))]
    es_history: u64,

    /// Streams those events are spread over.
    #[arg(long, value_name = "N", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    open_streams: u64,
}

/// The benchmark's workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Workload {
    /// Raw `write` + `fdatasync`.
    #[value(name = "probe")]
    Probe,
    /// One writer, one event per append.
    #[value(name = "append-1w")]
    Append1w,
    /// 64 writers, one event per append.
    #[value(name = "append-64w")]
    Append64w,
    /// 16 writers, 100 events per append.
    #[value(name = "batch-16w")]
    Batch16w,
    /// Reading `$all`.
    #[value(name = "read-all")]
    ReadAll,
    /// Append → live delivery.
    #[value(name = "latency")]
    Latency,
    /// `--writers` × `--batch`.
    #[value(name = "custom")]
    Custom,
    /// Opening a large store.
    #[value(name = "open")]
    Open,
    /// Event sourcing: commands through a repository, and loading a large aggregate.
    #[value(name = "es")]
    Es,
    /// The message bus: the in-memory transport alone, then through the router.
    #[value(name = "bus")]
    Bus,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::Probe => "probe",
            Self::Append1w => "append-1w",
            Self::Append64w => "append-64w",
            Self::Batch16w => "batch-16w",
            Self::ReadAll => "read-all",
            Self::Latency => "latency",
            Self::Custom => "custom",
            Self::Open => "open",
            Self::Es => "es",
            Self::Bus => "bus",
        }
    }

    /// Whether it writes durably (and so belongs between the disk probes).
    fn durable(self) -> bool {
        !matches!(self, Self::ReadAll | Self::Open | Self::Bus)
    }
}

/// The groups of workloads `cairn bench <SUITE>` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Suite {
    /// The event store's workloads.
    Store,
    /// Event sourcing: `es-commands` and `es-load`.
    Es,
    /// The message bus: `bus-raw` and `bus-router`.
    Bus,
}

/// The systems `--compare` can run the write workloads against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PeerKind {
    /// PostgreSQL, one event per transaction, `synchronous_commit=on`.
    Postgres,
    /// NATS JetStream, file storage.
    Nats,
}

/// The shape of a write workload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AppendSpec {
    pub(crate) writers: usize,
    /// Events per append.
    pub(crate) batch: usize,
    /// The most events, over all writers.
    pub(crate) count: u64,
    /// The longest it runs.
    pub(crate) duration: Duration,
    /// Payload bytes per event.
    pub(crate) size: usize,
}

impl AppendSpec {
    /// The appends each writer makes at most, so that the writers together append
    /// `count` events (at least one append each).
    pub(crate) fn appends_per_writer(&self) -> u64 {
        let per_append = (self.writers as u64 * self.batch as u64).max(1);
        self.count.div_ceil(per_append).max(1)
    }
}

/// What a workload measured, on Cairn or on a peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) events: u64,
    pub(crate) seconds: f64,
    pub(crate) latency: Percentiles,
}

impl Measured {
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    fn mb_per_sec(&self, size: usize) -> f64 {
        self.events_per_sec() * size as f64 / 1e6
    }
}

/// Runs `cairn bench`.
pub(crate) async fn run(global: &Global, args: BenchArgs) -> anyhow::Result<()> {
    let plan = plan(&args);
    let dir = BenchDir::create(args.dir.clone())?;
    let filesystem = filesystem_of(dir.path())?;
    let progress = Progress::stderr();
    let store_dir = dir.path().join("store");
    let options = LogOptions::default().durability(global.durability);
    let store = LogStore::open(&store_dir, options)
        .with_context(|| format!("cannot open a store in {}", store_dir.display()))?;
    let subject = match Subject::open(args.store, &store, &args.postgres_addr).await {
        Ok(subject) => subject,
        Err(error) => {
            let _ = store.close().await;
            return Err(error);
        }
    };
    let mut peers = Vec::new();
    for kind in dedup(&args.compare) {
        match Peer::connect(kind, &args.postgres_addr, &args.nats_addr).await {
            Ok(peer) => peers.push(peer),
            Err(error) => {
                let _ = store.close().await;
                drop(store);
                cleanup_peers(peers, progress).await;
                if let Err(cleanup) = subject.cleanup().await {
                    progress.note(&format!("cleaning up the store failed: {cleanup:#}"));
                }
                return Err(error);
            }
        }
    }
    let conditions = Conditions {
        cairn_version: env!("CARGO_PKG_VERSION"),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        event_size: args.size as usize,
        durability: global.durability.to_string(),
        segment_size: DEFAULT_SEGMENT_SIZE,
        count: args.count,
        duration_s: args.duration.as_secs_f64(),
        latency_rate: args.rate,
        dir: dir.path().display().to_string(),
        filesystem,
    };
    let bench = Bench {
        args: &args,
        store: &store,
        subject: &subject,
        peers: &peers,
        progress,
    };
    let outcome = tokio::select! {
        outcome = bench.measure(&plan, conditions) => outcome,
        () = interrupted() => Err(anyhow!("interrupted; the bench directory and peers' data were removed")),
    };
    let closed = store.close().await;
    drop(store);
    cleanup_peers(peers, progress).await;
    let subject_removed = subject.cleanup().await;
    let removed = dir.remove();
    let report = outcome?;
    closed.context("closing the bench store failed")?;
    subject_removed.context("removing the store's database failed")?;
    removed.context("removing the bench directory failed")?;
    let mut out = Printer::new(global.json);
    if out.json() {
        out.value(&serde_json::to_value(&report)?)?;
    } else {
        out.line(report.render())?;
    }
    out.flush()?;
    Ok(())
}

/// Resolves when the user presses Ctrl-C (never, if the signal cannot be listened for).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn cleanup_peers(peers: Vec<Peer>, progress: Progress) {
    for peer in peers {
        let name = peer.info().name;
        if let Err(error) = peer.cleanup().await {
            progress.note(&format!("cleaning up {name} failed: {error:#}"));
        }
    }
}

fn dedup(kinds: &[PeerKind]) -> Vec<PeerKind> {
    let mut unique = Vec::new();
    for kind in kinds {
        if !unique.contains(kind) {
            unique.push(*kind);
        }
    }
    unique
}

/// The workloads to run, in the order they run: the durable ones between the probes, then
/// `read-all`.
fn plan(args: &BenchArgs) -> Vec<Workload> {
    let custom = args.writers.is_some() || args.batch.is_some();
    let chosen = |workload: Workload| {
        if args.workload.is_empty() && args.suite == Some(Suite::Es) {
            workload == Workload::Es
        } else if args.workload.is_empty() && args.suite == Some(Suite::Bus) {
            workload == Workload::Bus
        } else if args.workload.is_empty() {
            (workload != Workload::Custom || custom)
                && !matches!(workload, Workload::Open | Workload::Es | Workload::Bus)
        } else {
            args.workload.contains(&workload)
        }
    };
    [
        Workload::Probe,
        Workload::Append1w,
        Workload::Append64w,
        Workload::Batch16w,
        Workload::Custom,
        Workload::Latency,
        Workload::Es,
        Workload::ReadAll,
        Workload::Open,
        Workload::Bus,
    ]
    .into_iter()
    .filter(|w| chosen(*w))
    .collect()
}

/// One run's shared state.
struct Bench<'a> {
    args: &'a BenchArgs,
    /// The embedded store: its directory hosts the disk probe and the open workload.
    store: &'a LogStore,
    /// The store the write, latency and read workloads measure.
    subject: &'a Subject,
    peers: &'a [Peer],
    progress: Progress,
}

impl Bench<'_> {
    async fn measure(&self, plan: &[Workload], conditions: Conditions) -> anyhow::Result<Report> {
        let mut workloads = Vec::new();
        let mut notes = Vec::new();
        let durable = plan.iter().any(|w| w.durable());
        let before = if durable {
            Some(self.probe("probe (before)").await?)
        } else {
            None
        };
        let mut wrote = false;
        for &workload in plan {
            let spec = match workload {
                Workload::Append1w => self.spec(1, 1),
                Workload::Append64w => self.spec(64, 1),
                Workload::Batch16w => self.spec(16, 100),
                Workload::Custom => self.spec(
                    self.args.writers.unwrap_or(8) as usize,
                    self.args.batch.unwrap_or(1) as usize,
                ),
                Workload::Probe
                | Workload::Latency
                | Workload::ReadAll
                | Workload::Open
                | Workload::Es
                | Workload::Bus => {
                    continue;
                }
            };
            workloads.push(self.append(workload, &spec).await?);
            wrote = true;
        }
        if plan.contains(&Workload::Latency) {
            workloads.push(self.latency().await?);
        }
        if plan.contains(&Workload::Es) {
            workloads.push(self.es_commands(true).await?);
            workloads.push(self.es_commands(false).await?);
            workloads.push(self.es_load().await?);
            wrote = true;
        }
        let probes = match before {
            Some(before) => {
                let after = self.probe("probe (after)").await?;
                let difference = probe::difference(&before, &after);
                Some(Probes {
                    before,
                    after,
                    difference,
                })
            }
            None => None,
        };
        if plan.contains(&Workload::ReadAll) {
            if !wrote {
                let stage = self.progress.stage("writing events for read-all", None);
                let size = self.args.size as usize;
                self.subject
                    .fill(self.args.count, size, &stage.counter())
                    .await?;
                stage.done("done").await;
                notes.push(format!(
                    "read-all read {} events written just before it (16 writers, batches of 100)",
                    thousands(self.args.count as f64)
                ));
            } else {
                notes.push(
                    "read-all read every event the write workloads above appended".to_owned(),
                );
            }
            workloads.push(self.read_all().await?);
        }
        if plan.contains(&Workload::Open) {
            let (clean, crash, note) = self.open().await?;
            workloads.push(clean);
            workloads.push(crash);
            notes.push(note);
        }
        if plan.contains(&Workload::Bus) {
            let raw = self.bus(false).await?;
            let mut routed = self.bus(true).await?;
            let ratio = routed.events_per_sec / raw.events_per_sec.max(1e-9);
            if let Some(detail) = &mut routed.detail {
                detail.push_str(&format!("; {ratio:.2} x {} of this run", raw.name));
            }
            if self.args.transport != bus::TransportKind::Memory {
                routed.target = Some(Target {
                    goal: format!(">= 0.8 x {}", raw.name),
                    measured: ratio,
                    met: ratio >= 0.8,
                });
            }
            workloads.push(raw);
            workloads.push(routed);
        }
        if !self.peers.is_empty() {
            notes.push(
                "peers run the write workloads only; read-all and latency are Cairn's alone"
                    .to_owned(),
            );
        }
        if conditions.durability != "always" {
            notes.push(format!(
                "durability {} is weaker than always: the targets assume always",
                conditions.durability
            ));
        }
        if conditions.build == "debug" {
            notes.push("a debug build: figures say little; use --release".to_owned());
        }
        if let Some(described) = self.subject.describe() {
            notes.push(described);
        }
        let postgres = self.subject.is_postgres();
        for workload in &mut workloads {
            if workload.target.is_none() {
                workload.target = if postgres {
                    postgres_target(workload)
                } else {
                    target(workload, probes.as_ref())
                };
            }
        }
        let noisy = probes.as_ref().is_some_and(Probes::noisy);
        Ok(Report {
            conditions,
            probes,
            workloads,
            peers: self.peers.iter().map(Peer::info).collect(),
            noisy,
            notes,
        })
    }

    fn spec(&self, writers: usize, batch: usize) -> AppendSpec {
        AppendSpec {
            writers,
            batch,
            count: self.args.count,
            duration: self.args.duration,
            size: self.args.size as usize,
        }
    }

    async fn probe(&self, label: &str) -> anyhow::Result<probe::Probe> {
        let stage = self.progress.stage(label, Some(self.args.probe));
        let dir = self.dir_for_probe();
        let duration = self.args.probe;
        let probe = tokio::task::spawn_blocking(move || probe::run(&dir, duration))
            .await
            .context("the disk probe stopped")?
            .context("the disk probe failed")?;
        stage
            .done(&format!(
                "{} flushes/s, p50 {} µs, p99 {} µs",
                thousands(probe.flushes_per_sec),
                micros(probe.latency.p50_us),
                micros(probe.latency.p99_us)
            ))
            .await;
        Ok(probe)
    }

    /// The probe writes beside the store, on the same file system.
    fn dir_for_probe(&self) -> PathBuf {
        self.store
            .dir()
            .parent()
            .map_or_else(|| self.store.dir().to_path_buf(), Path::to_path_buf)
    }

    async fn append(
        &self,
        workload: Workload,
        spec: &AppendSpec,
    ) -> anyhow::Result<WorkloadResult> {
        let name = workload.name();
        let stage = self.progress.stage(name, Some(spec.duration));
        let measured = self.subject.append(name, spec, &stage.counter()).await?;
        stage.done(&summary(&measured)).await;
        let mut peers = Vec::new();
        for peer in self.peers {
            let peer_name = peer.info().name;
            let stage = self
                .progress
                .stage(&format!("{name} on {peer_name}"), Some(spec.duration));
            let theirs = peer.append(name, spec, &stage.counter()).await?;
            stage.done(&summary(&theirs)).await;
            peers.push(PeerResult {
                peer: peer_name,
                events: theirs.events,
                seconds: theirs.seconds,
                events_per_sec: theirs.events_per_sec(),
                mb_per_sec: theirs.mb_per_sec(spec.size),
                latency: theirs.latency,
                cairn_ratio: measured.events_per_sec() / theirs.events_per_sec().max(1e-9),
            });
        }
        Ok(WorkloadResult {
            name: name.to_owned(),
            writers: spec.writers,
            batch: spec.batch,
            events: measured.events,
            seconds: measured.seconds,
            events_per_sec: measured.events_per_sec(),
            mb_per_sec: measured.mb_per_sec(spec.size),
            latency: measured.latency,
            target: None,
            peers,
            detail: None,
        })
    }

    async fn latency(&self) -> anyhow::Result<WorkloadResult> {
        let stage = self
            .progress
            .stage("latency", Some(self.args.duration + store::LATENCY_WARM_UP));
        let size = self.args.size as usize;
        let result = self
            .subject
            .latency(self.args.rate, self.args.duration, size, &stage.counter())
            .await?;
        let measured = result.measured;
        stage
            .done(&format!(
                "p50 {} µs, p99 {} µs, p999 {} µs",
                micros(measured.latency.p50_us),
                micros(measured.latency.p99_us),
                micros(measured.latency.p999_us)
            ))
            .await;
        Ok(WorkloadResult {
            name: Workload::Latency.name().to_owned(),
            writers: 1,
            batch: 1,
            events: measured.events,
            seconds: measured.seconds,
            events_per_sec: measured.events_per_sec(),
            mb_per_sec: measured.mb_per_sec(size.max(8)),
            latency: measured.latency,
            target: None,
            peers: Vec::new(),
            detail: Some(format!(
                "offered {} ev/s for {} after a warm-up of {} at the same rate (not counted), \
                 one event per append to 64 streams in turn, without waiting for earlier \
                 appends; {} appended, {} delivered to a live $all subscriber, which fell \
                 behind {} times",
                thousands(f64::from(self.args.rate)),
                parse::show_duration(self.args.duration),
                parse::show_duration(store::LATENCY_WARM_UP),
                thousands(result.sent as f64),
                thousands(measured.events as f64),
                result.fell_behind
            )),
        })
    }

    /// The `open` workload: two rows (after a clean close, as after a crash) and a note.
    async fn open(&self) -> anyhow::Result<(WorkloadResult, WorkloadResult, String)> {
        let dir = self.dir_for_probe().join("open-store");
        let (events, streams) = (self.args.open_events, self.args.open_streams);
        let stage = self.progress.stage("open: filling", None);
        let filled = Instant::now();
        let result = async {
            open::fill(
                &dir,
                events,
                streams,
                self.args.size as usize,
                &stage.counter(),
            )
            .await?;
            let fill_seconds = filled.elapsed().as_secs_f64();
            stage.done(&format!("{fill_seconds:.1}s")).await;
            let log_bytes = open::log_bytes(&dir);
            let clean = open::probe_in_child(&dir).await?;
            open::as_after_a_crash(&dir)?;
            let crash = open::probe_in_child(&dir).await?;
            anyhow::Ok(open::OpenResult {
                events,
                streams,
                log_bytes,
                clean,
                crash,
            })
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        let result = result?;
        let row = |name: &str, measure: open::OpenMeasure| {
            let micros = measure.seconds * 1e6;
            WorkloadResult {
                name: name.to_owned(),
                writers: 1,
                batch: 1,
                events: result.events,
                seconds: measure.seconds,
                events_per_sec: result.events as f64 / measure.seconds.max(1e-9),
                mb_per_sec: result.log_bytes as f64 / measure.seconds.max(1e-9) / 1e6,
                latency: Percentiles {
                    samples: 1,
                    mean_us: micros,
                    p50_us: micros,
                    p99_us: micros,
                    p999_us: micros,
                    max_us: micros,
                },
                target: None,
                peers: Vec::new(),
                detail: Some(format!(
                    "{} events in {} streams ({:.1} GB of log) opened in {:.2}s; resident \
                     memory {} MB after opening (peak {} MB)",
                    thousands(result.events as f64),
                    thousands(result.streams as f64),
                    result.log_bytes as f64 / 1e9,
                    measure.seconds,
                    measure.resident_bytes >> 20,
                    measure.peak_bytes >> 20
                )),
            }
        };
        let mut clean = row("open-clean", result.clean);
        clean.target = Some(open_target(3.0, &result.clean));
        let mut crash = row("open-crash", result.crash);
        crash.target = Some(open_target(10.0, &result.crash));
        Ok((
            clean,
            crash,
            "open: ev/s is events indexed per second of opening, p50 the time to open; \
             open-crash replays the whole log (no snapshot), the worst a crash leaves"
                .to_owned(),
        ))
    }

    async fn es_commands(&self, cached: bool) -> anyhow::Result<WorkloadResult> {
        let name = if cached {
            "es-commands"
        } else {
            "es-commands-uncached"
        };
        let stage = self.progress.stage(name, Some(self.args.duration));
        let measured = es::commands(
            self.store,
            cached,
            self.args.duration,
            self.args.count,
            &stage.counter(),
        )
        .await?;
        stage.done(&summary(&measured)).await;
        let round = if cached {
            "decide on the cached state, append with Exact"
        } else {
            "load, decide, append with Exact"
        };
        Ok(WorkloadResult {
            name: name.to_owned(),
            writers: es::CLIENTS,
            batch: 1,
            events: measured.events,
            seconds: measured.seconds,
            events_per_sec: measured.events_per_sec(),
            mb_per_sec: 0.0,
            latency: measured.latency,
            target: None,
            peers: Vec::new(),
            detail: Some(format!(
                "{} clients, each running commands one after another on its own 1,000 \
                 accounts ({round}); ev/s is commands/s, latencies are per command",
                es::CLIENTS
            )),
        })
    }

    async fn bus(&self, routed: bool) -> anyhow::Result<WorkloadResult> {
        let kind = self.args.transport;
        let (raw_name, router_name) = kind.rows();
        let name = if routed { router_name } else { raw_name };
        let url = self
            .args
            .broker_url
            .clone()
            .unwrap_or_else(|| kind.default_url().to_owned());
        let stage = self.progress.stage(name, Some(self.args.duration));
        let (duration, count, size) =
            (self.args.duration, self.args.count, self.args.size as usize);
        let measured = if routed {
            bus::routed(kind, &url, duration, count, size, &stage.counter()).await?
        } else {
            bus::baseline(kind, &url, duration, count, size, &stage.counter()).await?
        };
        stage.done(&summary(&measured)).await;
        let layers = format!(
            "the consumer and router behind the metrics, ordered concurrency ({} in flight), \
             inbox de-duplication and retry middleware",
            bus::IN_FLIGHT
        );
        let what = match (kind, routed) {
            (bus::TransportKind::Memory, false) => {
                "in-memory transport (its publish de-duplication off), the transport alone: \
                 deliver and ack"
                    .to_owned()
            }
            (bus::TransportKind::Memory, true) => {
                format!("in-memory transport (its publish de-duplication off), through {layers}")
            }
            (_, false) => format!(
                "{kind:?} at {}, its own client library alone: publish with confirms, \
                 consume and ack",
                redact(&url)
            ),
            (_, true) => format!(
                "{kind:?} at {}, Cairn's transport through {layers}",
                redact(&url)
            ),
        };
        Ok(WorkloadResult {
            name: name.to_owned(),
            writers: 1,
            batch: 1,
            events: measured.events,
            seconds: measured.seconds,
            events_per_sec: measured.events_per_sec(),
            mb_per_sec: measured.mb_per_sec(size),
            latency: measured.latency,
            target: None,
            peers: Vec::new(),
            detail: Some(format!(
                "{what}; one producer publishing batches of 256 on 1,024 keys, at most 50,000 \
                 ahead of one consumer; \
                 ev/s is messages/s, latencies are publish → handled"
            )),
        })
    }

    async fn es_load(&self) -> anyhow::Result<WorkloadResult> {
        let stage = self.progress.stage("es-load", Some(self.args.duration));
        let measured = es::load(
            self.store,
            self.args.es_history,
            self.args.duration,
            &stage.counter(),
        )
        .await?;
        stage.done(&summary(&measured)).await;
        Ok(WorkloadResult {
            name: "es-load".to_owned(),
            writers: 1,
            batch: 1,
            events: measured.events,
            seconds: measured.seconds,
            events_per_sec: measured.events_per_sec(),
            mb_per_sec: 0.0,
            latency: measured.latency,
            target: None,
            peers: Vec::new(),
            detail: Some(format!(
                "an aggregate of {} events with a snapshot per {}, loaded with {} events \
                 after its snapshot (the most the policy leaves); ev/s is loads/s, \
                 latencies are per load",
                thousands(self.args.es_history as f64),
                thousands(es::SNAPSHOT_EVERY as f64),
                thousands((es::SNAPSHOT_EVERY - 1) as f64)
            )),
        })
    }

    async fn read_all(&self) -> anyhow::Result<WorkloadResult> {
        let stage = self.progress.stage("read-all", None);
        let (measured, bytes) = self.subject.read_all(&stage.counter()).await?;
        stage.done(&summary(&measured)).await;
        Ok(WorkloadResult {
            name: Workload::ReadAll.name().to_owned(),
            writers: 1,
            batch: cairn::MAX_PAGE_SIZE,
            events: measured.events,
            seconds: measured.seconds,
            events_per_sec: measured.events_per_sec(),
            mb_per_sec: bytes as f64 / measured.seconds.max(1e-9) / 1e6,
            latency: measured.latency,
            target: None,
            peers: Vec::new(),
            detail: Some(format!(
                "pages of up to {} events; latencies are per page",
                cairn::MAX_PAGE_SIZE
            )),
        })
    }
}

fn summary(measured: &Measured) -> String {
    format!(
        "{} events in {:.2}s: {} ev/s, p50 {} µs, p99 {} µs",
        thousands(measured.events as f64),
        measured.seconds,
        thousands(measured.events_per_sec()),
        micros(measured.latency.p50_us),
        micros(measured.latency.p99_us)
    )
}

/// The goal Cairn sets for a workload, and whether this run met it.
fn target(workload: &WorkloadResult, probes: Option<&Probes>) -> Option<Target> {
    let at_least = |goal: f64, measured: f64| Target {
        goal: format!(">= {} ev/s", thousands(goal)),
        measured,
        met: measured >= goal,
    };
    match workload.name.as_str() {
        "append-1w" => probes.map(|probes| {
            let ratio = workload.events_per_sec / probes.mean_flushes_per_sec().max(1e-9);
            Target {
                goal: ">= 0.8 x probe".to_owned(),
                measured: ratio,
                met: ratio >= 0.8,
            }
        }),
        "append-64w" => Some(at_least(150_000.0, workload.events_per_sec)),
        "batch-16w" => Some(at_least(1_500_000.0, workload.events_per_sec)),
        "read-all" => Some(at_least(3_000_000.0, workload.events_per_sec)),
        "es-commands" => Some(Target {
            goal: ">= 100,000 commands/s".to_owned(),
            measured: workload.events_per_sec,
            met: workload.events_per_sec >= 100_000.0,
        }),
        "es-load" => Some(Target {
            goal: "p99 <= 2,000 µs".to_owned(),
            measured: workload.latency.p99_us,
            met: workload.latency.p99_us <= 2000.0,
        }),
        "latency" => Some(Target {
            goal: "p99 <= 2,000 µs".to_owned(),
            measured: workload.latency.p99_us,
            met: workload.latency.p99_us <= 2000.0,
        }),
        "bus-router" => Some(Target {
            goal: ">= 1,000,000 msg/s".to_owned(),
            measured: workload.events_per_sec,
            met: workload.events_per_sec >= 1_000_000.0,
        }),
        _ => None,
    }
}

/// `url` with any password or token replaced by `***`, for what the bench prints.
pub(crate) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => format!("{scheme}://***@{host}"),
            },
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The goals of `cairn-postgres` (`--store postgres`): gap safety costs at most 20 % of
/// the naive insert at the same concurrency (when `--compare postgres` ran it), batches of
/// 100 reach 80,000 ev/s, and a live subscriber gets an event within 20 ms (p99).
fn postgres_target(workload: &WorkloadResult) -> Option<Target> {
    if workload.name == "latency" {
        return Some(Target {
            goal: "p99 <= 20,000 µs".to_owned(),
            measured: workload.latency.p99_us,
            met: workload.latency.p99_us <= 20_000.0,
        });
    }
    if workload.name == "read-all" || workload.name.starts_with("open") {
        return None;
    }
    if workload.batch >= 100 {
        return Some(Target {
            goal: ">= 80,000 ev/s".to_owned(),
            measured: workload.events_per_sec,
            met: workload.events_per_sec >= 80_000.0,
        });
    }
    let naive = workload.peers.iter().find(|p| p.peer == "postgres")?;
    Some(Target {
        goal: ">= 0.8 x naive insert".to_owned(),
        measured: naive.cairn_ratio,
        met: naive.cairn_ratio >= 0.8,
    })
}

/// The open targets: at most `seconds` to open and 300 MB resident (measured: seconds).
fn open_target(seconds: f64, measure: &open::OpenMeasure) -> Target {
    Target {
        goal: format!("<= {seconds:.0} s, <= 300 MB"),
        measured: measure.seconds,
        met: measure.seconds <= seconds && measure.resident_bytes <= 300 << 20,
    }
}

/// The directory a run works in: created for the run, removed after it.
struct BenchDir {
    path: PathBuf,
    /// Whether the run created the directory itself (then it removes it whole; otherwise
    /// only what it put inside).
    created: bool,
    removed: bool,
}

impl BenchDir {
    fn create(dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let path =
            dir.unwrap_or_else(|| PathBuf::from(format!("./cairn-bench-{}", std::process::id())));
        let created = match std::fs::read_dir(&path) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(UsageError(format!(
                        "{} exists and is not empty: the bench needs a new or empty directory, \
                         since it removes what it writes there",
                        path.display()
                    ))
                    .into());
                }
                false
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                true
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot use {}", path.display()));
            }
        };
        Ok(Self {
            path,
            created,
            removed: false,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn remove(mut self) -> std::io::Result<()> {
        self.removed = true;
        self.remove_contents()
    }

    fn remove_contents(&self) -> std::io::Result<()> {
        if self.created {
            return std::fs::remove_dir_all(&self.path);
        }
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.remove_contents();
        }
    }
}

/// The file system under `dir` ("ext4 on /dev/vda"), refusing memory file systems: a
/// flush there costs nothing and the figures would mean nothing.
fn filesystem_of(dir: &Path) -> anyhow::Result<String> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return Ok("an unknown file system".to_owned());
    };
    let mut best: Option<(PathBuf, String, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(mount_point), Some(kind)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
        let longer = best
            .as_ref()
            .is_none_or(|(best, _, _)| mount_point.as_os_str().len() >= best.as_os_str().len());
        if dir.starts_with(&mount_point) && longer {
            best = Some((mount_point, kind.to_owned(), device.to_owned()));
        }
    }
    let Some((mount_point, kind, device)) = best else {
        return Ok("an unknown file system".to_owned());
    };
    if matches!(kind.as_str(), "tmpfs" | "ramfs" | "devtmpfs") {
        bail!(UsageError(format!(
            "{} is on {kind} ({}), which is memory, not a disk: pass --dir on the disk to measure",
            dir.display(),
            mount_point.display()
        )));
    }
    Ok(format!(
        "{kind} on {device} (mounted at {})",
        mount_point.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_share_the_count_and_each_appends_at_least_once() {
        let spec = |writers, batch, count| AppendSpec {
            writers,
            batch,
            count,
            duration: Duration::from_secs(1),
            size: 8,
        };
        assert_eq!(spec(64, 1, 1000).appends_per_writer(), 16);
        assert_eq!(spec(16, 100, 2_000_000).appends_per_writer(), 1250);
        assert_eq!(spec(16, 100, 10).appends_per_writer(), 1);
    }

    #[test]
    fn memory_file_systems_are_refused() {
        if Path::new("/dev/shm").is_dir() {
            let error = filesystem_of(Path::new("/dev/shm")).unwrap_err();
            assert!(error.to_string().contains("not a disk"), "{error}");
        }
        let here = filesystem_of(Path::new(".")).unwrap();
        assert!(!here.is_empty());
    }
}

//! The command line: the arguments ([`Cli`], parsed with clap), the options every command
//! shares ([`Global`]), opening the store in the data directory, and turning the outcome
//! into an exit code.
//!
//! One module per command (`append`, `read`, `tail`, `streams`, `demo`; `bench` lives in
//! its own tree). Exit codes: 0 on success (and when stdout is closed early, as by
//! `| head`), 2 for a usage error (clap's own, or a [`UsageError`] found after parsing), 1
//! for an operation that failed. Errors are one line on stderr, never a panic.

mod append;
mod demo;
pub(crate) mod output;
pub(crate) mod parse;
mod read;
mod streams;
mod tail;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use cairn::log::{Durability, LogOptions, LogStore, OpenError};
use clap::{Args, Parser, Subcommand};

use crate::bench::BenchArgs;

/// Cairn: an event store, embedded in this program, from the command line.
///
/// Start with `cairn demo`. The store lives in `--data-dir` (default ./cairn-data) and
/// belongs to one process at a time: a command waits up to `--lock-wait` for a directory
/// that another cairn process is using.
#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The options every command takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct Global {
    /// The data directory of the embedded store.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "./cairn-data"
    )]
    pub(crate) data_dir: PathBuf,

    /// When an append is acknowledged: `always` (after fdatasync), `interval:<n>ms` (flush at
    /// least that often; a power cut may lose that much) or `none` (flush only on close).
    #[arg(long, global = true, value_name = "MODE", default_value = "always")]
    pub(crate) durability: Durability,

    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// How long to wait for a data directory that another cairn process holds (for
    /// example `cairn tail` while it looks for new events), e.g. `500ms`, `2s`.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "2s",
        value_parser = parse::duration
    )]
    pub(crate) lock_wait: Duration,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Append one event to a stream.
    Append(append::AppendArgs),
    /// Read a stream, or the global log with --all.
    Read(read::ReadArgs),
    /// Follow a stream, or the global log, printing events as they are appended (Ctrl-C
    /// stops).
    Tail(tail::TailArgs),
    /// List streams with their state and last revision.
    Streams(streams::StreamsArgs),
    /// Write an example order's lifecycle to the store, read it back and show where it lives.
    Demo,
    /// Measure the store on this machine's disk, optionally beside PostgreSQL and NATS.
    Bench(Box<BenchArgs>),
    /// Open the store, print how long that took and the memory it holds as JSON, and exit
    /// (used by `cairn bench --workload open`).
    #[command(hide = true)]
    OpenProbe,
}

/// A mistake in how the program was called that only shows after parsing: exit code 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses the arguments, runs the command on a multi-threaded runtime and returns the exit
/// code.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => exit_with(&error),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Append(args) => append::run(&global, args).await,
        Command::Read(args) => read::run(&global, args).await,
        Command::Tail(args) => tail::run(&global, args).await,
        Command::Streams(args) => streams::run(&global, args).await,
        Command::Demo => demo::run(&global).await,
        Command::Bench(args) => crate::bench::run(&global, *args).await,
        Command::OpenProbe => crate::bench::open::open_probe(&global.data_dir),
    }
}

/// Prints `error` as one line and picks the exit code.
fn exit_with(error: &anyhow::Error) -> ExitCode {
    let broken_pipe = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        // The reader went away (`cairn read --all | head`): not a failure.
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {error:#}");
    if error.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// Opens the store in the data directory, waiting up to `--lock-wait` while another
/// process holds it.
///
/// With `create` false, a data directory that does not exist is an error rather than a new
/// empty store (reading should not leave directories behind).
pub(crate) async fn open_store(global: &Global, create: bool) -> anyhow::Result<LogStore> {
    let dir = &global.data_dir;
    if !create && !dir.exists() {
        bail!(
            "no store at {}: the directory does not exist (append an event or run `cairn demo` \
             first, or pass --data-dir)",
            dir.display()
        );
    }
    let deadline = Instant::now() + global.lock_wait;
    loop {
        if let Some(store) = try_open_store(dir, global.durability).await? {
            return Ok(store);
        }
        if Instant::now() >= deadline {
            bail!(
                "data directory {} is locked: another process holds {} (waited {})",
                dir.display(),
                dir.join("LOCK").display(),
                parse::show_duration(global.lock_wait)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens the store in `dir` once; `None` when another process holds the directory.
pub(crate) async fn try_open_store(
    dir: &Path,
    durability: Durability,
) -> anyhow::Result<Option<LogStore>> {
    let path = dir.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        LogStore::open(&path, LogOptions::default().durability(durability))
    })
    .await
    .map_err(|error| anyhow!("opening the store stopped: {error}"))?;
    match opened {
        Ok(store) => Ok(Some(store)),
        Err(OpenError::Locked { .. }) => Ok(None),
        Err(error) => {
            Err(error).with_context(|| format!("cannot open the store in {}", dir.display()))
        }
    }
}

/// Flushes and closes the store, so that the directory is released cleanly.
pub(crate) async fn close_store(store: LogStore) -> anyhow::Result<()> {
    store
        .close()
        .await
        .context("closing the store failed; the last appends may not be on disk")?;
    drop(store);
    Ok(())
}

//! Progress on stderr while a benchmark runs: on a terminal, one line per stage that
//! updates in place (events so far, rate, time against the stage's bound); elsewhere, a
//! line when a stage starts and one when it ends, so logs stay readable.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How often a terminal's progress line is redrawn.
const REDRAW: Duration = Duration::from_millis(250);

/// Where progress goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    terminal: bool,
}

impl Progress {
    /// Progress on this process's stderr.
    pub(crate) fn stderr() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Prints a note on its own line.
    pub(crate) fn note(&self, text: &str) {
        eprintln!("bench: {text}");
    }

    /// Starts a stage that runs for at most `bound`; its workers count what they did on
    /// [`Stage::counter`].
    pub(crate) fn stage(&self, label: &str, bound: Option<Duration>) -> Stage {
        let counter = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let ticker = if self.terminal {
            let counter = Arc::clone(&counter);
            let label = label.to_owned();
            Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REDRAW).await;
                    let done = counter.load(Ordering::Relaxed);
                    let elapsed = started.elapsed().as_secs_f64();
                    let rate = done as f64 / elapsed.max(1e-9);
                    let bound = bound.map_or_else(String::new, |b| {
                        format!(" / {:.0}s", b.as_secs_f64().ceil())
                    });
                    eprint!(
                        "\r\x1b[2Kbench: {label}: {} events, {}/s, {elapsed:.1}s{bound}",
                        super::report::thousands(done as f64),
                        super::report::thousands(rate)
                    );
                    let _ = std::io::stderr().flush();
                }
            }))
        } else {
            let bound = bound.map_or_else(String::new, |b| {
                format!(" (up to {})", crate::cli::parse::show_duration(b))
            });
            eprintln!("bench: {label}{bound} ...");
            None
        };
        Stage {
            label: label.to_owned(),
            counter,
            ticker,
            terminal: self.terminal,
        }
    }
}

/// A running stage of the benchmark.
pub(crate) struct Stage {
    label: String,
    counter: Arc<AtomicU64>,
    /// The redraw task on a terminal; stopped and awaited by [`Stage::done`], or stopped
    /// when the stage is dropped because the workload failed.
    ticker: Option<JoinHandle<()>>,
    terminal: bool,
}

impl Stage {
    /// The count the stage's workers add to.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.counter)
    }

    /// Ends the stage with a one-line summary.
    pub(crate) async fn done(mut self, summary: &str) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
            // It was aborted: its only outcome is the cancellation.
            let _ = ticker.await;
        }
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
        eprintln!("bench: {}: {summary}", self.label);
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }
}

//! `cairn tail`: follows a stream, or the global log, printing each new event, until
//! Ctrl-C.
//!
//! The embedded store belongs to one process at a time, and a tail that kept it would lock
//! out every writer. So the tail does not keep it: it looks every `--interval`, and a look
//! that finds something new opens the data directory, catches up with a subscription from
//! the last event it printed (so nothing is skipped or printed twice across looks), and
//! releases the directory again. Other cairn commands that find the directory held wait for
//! it (`--lock-wait`); when a writer holds it, the tail simply looks again later.
//!
//! Opening a store costs far more than looking at its files, so between looks the tail
//! compares the log's files (names, lengths, modification times, as `FORMAT.md` of
//! `cairn-log` lays them out): every write changes them. It opens the store only when they
//! changed, and at least every [`FULL_LOOK_EVERY`] whatever they say.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use cairn::log::LogStore;
use cairn::{
    EventFilter, EventStore, Position, Revision, StreamName, StreamState, SubscribeAll,
    SubscribeStream, Subscription, SubscriptionMessage, SubscriptionStart,
};
use clap::Args;
use futures::StreamExt as _;

use super::output::Printer;
use super::{Global, close_store, parse, try_open_store};

/// Follows a stream or the global log.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// The stream to follow; without it, the global log ($all).
    #[arg(value_name = "STREAM")]
    stream: Option<StreamName>,

    /// Print every event from the start first, then follow (default: only new events).
    #[arg(long)]
    from_start: bool,

    /// Following $all: only streams of this category.
    #[arg(long, value_name = "CATEGORY", conflicts_with = "stream")]
    category: Option<String>,

    /// Following $all: only events of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "stream")]
    event_types: Vec<String>,

    /// Following $all: only streams whose name starts with this prefix.
    #[arg(long, value_name = "PREFIX", conflicts_with = "stream")]
    prefix: Option<String>,

    /// How often to look for new events, e.g. 200ms.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse::duration)]
    interval: Duration,
}

/// The longest the tail trusts the log's files to tell it that nothing changed.
const FULL_LOOK_EVERY: Duration = Duration::from_secs(30);

/// Where the next look starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Not known yet: the end of the log (or stream) at the first look.
    End,
    /// From the first event.
    Start,
    /// After this position of `$all`.
    AfterPosition(Position),
    /// After this revision of the stream.
    AfterRevision(Revision),
}

/// Runs `cairn tail` until Ctrl-C.
pub(crate) async fn run(global: &Global, args: TailArgs) -> anyhow::Result<()> {
    let mut tail = Tail {
        cursor: if args.from_start {
            Cursor::Start
        } else {
            Cursor::End
        },
        filter: EventFilter {
            stream_prefix: args.prefix.clone(),
            category: args.category.clone(),
            event_types: args.event_types.clone(),
        },
        out: Printer::new(global.json),
        said_waiting: false,
        seen: None,
        last_open: None,
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut announced = false;
    loop {
        tokio::select! {
            signal = &mut ctrl_c => return stopped(signal),
            looked = tail.look(global, args.stream.as_ref()) => looked?,
        }
        if !announced && tail.cursor != Cursor::End {
            announced = true;
            let what = args
                .stream
                .as_ref()
                .map_or_else(|| "$all".to_owned(), |s| format!("stream {s}"));
            eprintln!(
                "following {what} in {} ({}); Ctrl-C to stop",
                global.data_dir.display(),
                tail.cursor.describe()
            );
        }
        tokio::select! {
            signal = &mut ctrl_c => return stopped(signal),
            () = tokio::time::sleep(args.interval) => {}
        }
    }
}

fn stopped(signal: std::io::Result<()>) -> anyhow::Result<()> {
    signal.context("cannot listen for Ctrl-C")
}

struct Tail {
    cursor: Cursor,
    filter: EventFilter,
    out: Printer,
    /// Whether the note that another process holds the directory was printed.
    said_waiting: bool,
    /// The log's files as they were right before the last look that opened the store.
    seen: Option<Fingerprint>,
    /// When the last look opened the store.
    last_open: Option<Instant>,
}

impl Tail {
    /// One look: unless the log's files are as they were at the last look (and that was
    /// recent), open the store, print what is new, release the store.
    async fn look(&mut self, global: &Global, stream: Option<&StreamName>) -> anyhow::Result<()> {
        let files = fingerprint(&global.data_dir);
        let trusted = self
            .last_open
            .is_some_and(|opened| opened.elapsed() < FULL_LOOK_EVERY);
        if self.cursor != Cursor::End && trusted && files.is_some() && files == self.seen {
            return Ok(());
        }
        let Some(store) = try_open_store(&global.data_dir, global.durability).await? else {
            if !self.said_waiting {
                self.said_waiting = true;
                eprintln!(
                    "waiting: another process holds {}",
                    global.data_dir.join("LOCK").display()
                );
            }
            return Ok(());
        };
        let caught_up = self.catch_up(&store, stream).await;
        close_store(store).await?;
        caught_up?;
        // Taken before opening: whatever was written after it is seen at the next look.
        self.seen = files;
        self.said_waiting = false;
        self.last_open = Some(Instant::now());
        Ok(())
    }

    async fn catch_up(
        &mut self,
        store: &LogStore,
        stream: Option<&StreamName>,
    ) -> anyhow::Result<()> {
        if self.cursor == Cursor::End {
            self.cursor = end_of(store, stream).await?;
        }
        let mut subscription = self.subscribe(store, stream);
        while let Some(message) = subscription.next().await {
            match message? {
                SubscriptionMessage::Event(event) => {
                    self.out.event(&event)?;
                    self.out.flush()?;
                    self.cursor = if stream.is_some() {
                        Cursor::AfterRevision(event.revision)
                    } else {
                        Cursor::AfterPosition(event.position)
                    };
                }
                SubscriptionMessage::CaughtUp => break,
                SubscriptionMessage::FellBehind => {}
            }
        }
        Ok(())
    }

    fn subscribe(&self, store: &LogStore, stream: Option<&StreamName>) -> Subscription {
        match stream {
            Some(stream) => {
                let from = match self.cursor {
                    Cursor::AfterRevision(revision) => SubscriptionStart::After(revision),
                    _ => SubscriptionStart::Start,
                };
                let request = SubscribeStream {
                    from,
                    ..SubscribeStream::from_start()
                };
                store.subscribe_stream(stream.clone(), request)
            }
            None => {
                let request = match self.cursor {
                    Cursor::AfterPosition(position) => SubscribeAll::after(position),
                    _ => SubscribeAll::from_start(),
                };
                store.subscribe_all(request.filter(self.filter.clone()))
            }
        }
    }
}

/// The log's files: name, length and modification time of each.
type Fingerprint = Vec<(OsString, u64, Option<SystemTime>)>;

/// The log's files as they are now; `None` when they cannot be listed.
fn fingerprint(data_dir: &Path) -> Option<Fingerprint> {
    let mut files: Fingerprint = std::fs::read_dir(data_dir.join("log"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let metadata = entry.metadata().ok()?;
            Some((entry.file_name(), metadata.len(), metadata.modified().ok()))
        })
        .collect();
    files.sort();
    Some(files)
}

/// Where "new events" start: after the log's (or stream's) last event now.
async fn end_of(store: &LogStore, stream: Option<&StreamName>) -> anyhow::Result<Cursor> {
    match stream {
        None => Ok(store
            .head_position()
            .await?
            .map_or(Cursor::Start, Cursor::AfterPosition)),
        Some(stream) => match store.stream_info(stream).await?.state {
            StreamState::Active { last_revision } | StreamState::Deleted { last_revision } => {
                Ok(Cursor::AfterRevision(last_revision))
            }
            StreamState::NoStream => Ok(Cursor::Start),
            StreamState::Tombstoned => {
                bail!("stream {stream} is deleted for good (tombstoned): nothing can follow")
            }
        },
    }
}

impl Cursor {
    fn describe(self) -> String {
        match self {
            Cursor::End | Cursor::Start => "from the start".to_owned(),
            Cursor::AfterPosition(position) => format!("after position {position}"),
            Cursor::AfterRevision(revision) => format!("after revision {revision}"),
        }
    }
}

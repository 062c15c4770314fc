//! `cairn read`: prints a stream's events by revision, or (with `--all`) the global log's
//! by position, forwards or backwards, optionally filtered, paging through the store.

use cairn::log::LogStore;
use cairn::{
    Direction, EventFilter, EventStore, MAX_PAGE_SIZE, Position, ReadAll, ReadStream, Revision,
    StreamName,
};
use clap::Args;

use super::output::Printer;
use super::{Global, close_store, open_store};

/// Reads a stream, or the global log.
#[derive(Debug, Args)]
pub(crate) struct ReadArgs {
    /// The stream to read; omit it and pass --all to read the global log.
    #[arg(value_name = "STREAM", required_unless_present = "all")]
    stream: Option<StreamName>,

    /// Read the global log ($all) instead of one stream.
    #[arg(long, conflicts_with = "stream")]
    all: bool,

    /// Read from newest to oldest.
    #[arg(long)]
    backwards: bool,

    /// Where to start (inclusive): a revision for a stream, a position with --all.
    #[arg(long, value_name = "N")]
    from: Option<u64>,

    /// The most events to print (default: every event).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,

    /// With --all: only streams of this category (the part of the name before the first -).
    #[arg(long, value_name = "CATEGORY", conflicts_with = "stream")]
    category: Option<String>,

    /// With --all: only events of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "stream")]
    event_types: Vec<String>,

    /// With --all: only streams whose name starts with this prefix.
    #[arg(long, value_name = "PREFIX", conflicts_with = "stream")]
    prefix: Option<String>,
}

/// Runs `cairn read`.
pub(crate) async fn run(global: &Global, args: ReadArgs) -> anyhow::Result<()> {
    let store = open_store(global, false).await?;
    let mut out = Printer::new(global.json);
    let printed = match &args.stream {
        Some(stream) => read_stream(&store, stream, &args, &mut out).await,
        None => read_all(&store, &args, &mut out).await,
    };
    close_store(store).await?;
    let printed = printed?;
    out.flush()?;
    if printed == 0 && !out.json() {
        match &args.stream {
            Some(stream) => eprintln!("no events in stream {stream} at that place"),
            None => eprintln!("no events in the log match"),
        }
    }
    Ok(())
}

fn direction(args: &ReadArgs) -> Direction {
    if args.backwards {
        Direction::Backwards
    } else {
        Direction::Forwards
    }
}

/// The page size for the next read when `remaining` events are still wanted.
fn page_size(remaining: Option<u64>) -> usize {
    remaining.map_or(MAX_PAGE_SIZE, |left| {
        usize::try_from(left).map_or(MAX_PAGE_SIZE, |left| left.min(MAX_PAGE_SIZE))
    })
}

async fn read_stream(
    store: &LogStore,
    stream: &StreamName,
    args: &ReadArgs,
    out: &mut Printer,
) -> anyhow::Result<u64> {
    let mut remaining = args.limit;
    let mut printed = 0;
    let mut request = ReadStream {
        direction: direction(args),
        from: args.from.map(Revision),
        limit: MAX_PAGE_SIZE,
    };
    while remaining != Some(0) {
        request.limit = page_size(remaining);
        let page = store.read_stream(stream, request.clone()).await?;
        for event in &page.events {
            out.event(event)?;
        }
        let count = page.events.len() as u64;
        printed += count;
        remaining = remaining.map(|left| left.saturating_sub(count));
        match page.next {
            Some(next) => request.from = Some(next),
            None => break,
        }
    }
    Ok(printed)
}

async fn read_all(store: &LogStore, args: &ReadArgs, out: &mut Printer) -> anyhow::Result<u64> {
    let filter = EventFilter {
        stream_prefix: args.prefix.clone(),
        category: args.category.clone(),
        event_types: args.event_types.clone(),
    };
    let mut remaining = args.limit;
    let mut printed = 0;
    let mut request = ReadAll {
        direction: direction(args),
        from: args.from.map(Position),
        limit: MAX_PAGE_SIZE,
        filter,
    };
    while remaining != Some(0) {
        request.limit = page_size(remaining);
        let page = store.read_all(request.clone()).await?;
        for event in &page.events {
            out.event(event)?;
        }
        let count = page.events.len() as u64;
        printed += count;
        remaining = remaining.map(|left| left.saturating_sub(count));
        match page.next {
            Some(next) if !page.end => request.from = Some(next),
            _ => break,
        }
    }
    Ok(printed)
}

//! `cairn streams`: lists the streams the store knows, in name order, with their state
//! and last revision.

use cairn::{EventStore, MAX_LIST_STREAMS, StreamInfo, StreamName, StreamState};
use clap::Args;
use serde_json::json;

use super::output::Printer;
use super::{Global, close_store, open_store};

/// Lists streams.
#[derive(Debug, Args)]
pub(crate) struct StreamsArgs {
    /// Start after this stream name.
    #[arg(long, value_name = "STREAM")]
    after: Option<StreamName>,

    /// The most streams to list (default: all).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

/// Runs `cairn streams`.
pub(crate) async fn run(global: &Global, args: StreamsArgs) -> anyhow::Result<()> {
    let store = open_store(global, false).await?;
    let listed = list(&store, args).await;
    close_store(store).await?;
    let streams = listed?;
    let mut out = Printer::new(global.json);
    if out.json() {
        for info in &streams {
            let (state, last_revision) = describe(info.state);
            out.value(&json!({
                "stream": info.stream.as_str(),
                "state": state,
                "last_revision": last_revision,
            }))?;
        }
    } else if streams.is_empty() {
        eprintln!("no streams");
    } else {
        let width = streams
            .iter()
            .map(|info| info.stream.as_str().chars().count())
            .max()
            .unwrap_or(0)
            .clamp(6, 60);
        out.line(format_args!(
            "{:width$}  {:10}  LAST REVISION",
            "STREAM", "STATE"
        ))?;
        for info in &streams {
            let (state, last_revision) = describe(info.state);
            let last = last_revision.map_or_else(|| "-".to_owned(), |r| r.to_string());
            out.line(format_args!(
                "{:width$}  {state:10}  {last}",
                info.stream.as_str()
            ))?;
        }
    }
    out.flush()?;
    Ok(())
}

async fn list(
    store: &impl EventStore,
    args: StreamsArgs,
) -> Result<Vec<StreamInfo>, cairn::ReadError> {
    let mut after = args.after;
    let mut streams = Vec::new();
    loop {
        let want = args.limit.map_or(MAX_LIST_STREAMS, |limit| {
            limit.saturating_sub(streams.len())
        });
        if want == 0 {
            return Ok(streams);
        }
        let page = store
            .list_streams(after.clone(), want.min(MAX_LIST_STREAMS))
            .await?;
        let Some(last) = page.last() else {
            return Ok(streams);
        };
        after = Some(last.stream.clone());
        let full = page.len() >= want.min(MAX_LIST_STREAMS);
        streams.extend(page);
        if !full {
            return Ok(streams);
        }
    }
}

/// A state's name and its last revision, if it has one.
fn describe(state: StreamState) -> (&'static str, Option<u64>) {
    match state {
        StreamState::NoStream => ("no stream", None),
        StreamState::Active { last_revision } => ("active", Some(last_revision.0)),
        StreamState::Deleted { last_revision } => ("deleted", Some(last_revision.0)),
        StreamState::Tombstoned => ("tombstoned", None),
    }
}

//! `cairn append`: appends one event, with a JSON payload checked before it is written,
//! and prints where it landed.

use cairn::{EventData, EventStore, ExpectedRevision, StreamName, Uuid};
use clap::Args;
use serde_json::json;

use super::output::Printer;
use super::parse::{self, JsonText};
use super::{Global, close_store, open_store};

/// Appends one event to a stream.
#[derive(Debug, Args)]
pub(crate) struct AppendArgs {
    /// The stream to append to, e.g. order-42 (its category is the part before the first -).
    #[arg(value_name = "STREAM")]
    stream: StreamName,

    /// The event type, e.g. OrderPlaced.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: String,

    /// The payload: one JSON document, e.g. '{"total": 42}'.
    #[arg(long, value_name = "JSON", value_parser = parse::json_text)]
    data: JsonText,

    /// What the stream's revision must be: a revision number, any, no-stream or exists.
    #[arg(long, value_name = "REVISION", default_value = "any", value_parser = parse::expected_revision)]
    expected: ExpectedRevision,

    /// A metadata entry, key=value (repeatable), e.g. correlationid=checkout-7.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse::metadata_entry)]
    metadata: Vec<(String, String)>,

    /// The event id (a UUID); retrying with the same id appends nothing twice. A new UUID
    /// v7 when absent.
    #[arg(long, value_name = "UUID")]
    id: Option<Uuid>,
}

/// Runs `cairn append`.
pub(crate) async fn run(global: &Global, args: AppendArgs) -> anyhow::Result<()> {
    let mut event = EventData::new(args.event_type, args.data.0.into_bytes());
    if let Some(id) = args.id {
        event = event.with_id(id);
    }
    for (key, value) in args.metadata {
        event.metadata.insert(key, value);
    }
    let id = event.id;
    let store = open_store(global, true).await?;
    let appended = store.append(&args.stream, args.expected, vec![event]).await;
    close_store(store).await?;
    // The store's errors name the stream (and, for a conflict, expected and actual).
    let written = appended?;
    let mut out = Printer::new(global.json);
    if out.json() {
        out.value(&json!({
            "stream": args.stream.as_str(),
            "id": id.to_string(),
            "revision": written.revision.0,
            "position": written.position.0,
        }))?;
    } else {
        out.line(format_args!(
            "appended to {} at revision {}, position {} (id {id})",
            args.stream, written.revision, written.position
        ))?;
    }
    out.flush()?;
    Ok(())
}

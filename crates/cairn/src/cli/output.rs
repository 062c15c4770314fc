//! How commands print: [`Printer`] writes events and results either for a person or, with
//! `--json`, as one JSON object per line; [`event_json`] is the JSON shape of an event
//! (CloudEvents attributes plus stream, revision and position).
//!
//! Output goes through a buffered stdout; a closed pipe surfaces as an `io::Error` that
//! the caller returns (the program then exits quietly), never as a panic.

use std::fmt::Display;
use std::io::{self, BufWriter, Stdout, Write};

use cairn::{CLOUDEVENTS_SPEC_VERSION, RecordedEvent};
use serde_json::{Map, Value, json};

/// Compact JSON payloads longer than this are pretty-printed on several lines.
const PRETTY_AFTER: usize = 100;

/// Writes command output to stdout, for a person or as JSON lines.
pub(crate) struct Printer {
    out: BufWriter<Stdout>,
    json: bool,
}

impl Printer {
    /// A printer for stdout; `json` selects machine output.
    pub(crate) fn new(json: bool) -> Self {
        Self {
            out: BufWriter::new(io::stdout()),
            json,
        }
    }

    /// Whether this printer writes JSON lines.
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// Prints one event.
    pub(crate) fn event(&mut self, event: &RecordedEvent) -> io::Result<()> {
        if self.json {
            self.value(&event_json(event))
        } else {
            write_event(&mut self.out, event)
        }
    }

    /// Prints one JSON object on its own line.
    pub(crate) fn value(&mut self, value: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }

    /// Prints one line of text.
    pub(crate) fn line(&mut self, text: impl Display) -> io::Result<()> {
        writeln!(self.out, "{text}")
    }

    /// Sends everything printed so far on its way (for output that follows live events).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The JSON shape of an event: CloudEvents 1.0 attributes (`specversion`, `id`, `type`,
/// `subject`, `time`, `datacontenttype`), Cairn's place (`stream`, `revision`, `position`),
/// `metadata`, and the payload as `data` (JSON, or text for `text/*`) or `data_base64`.
pub(crate) fn event_json(event: &RecordedEvent) -> Value {
    let mut object = Map::new();
    object.insert("specversion".into(), json!(CLOUDEVENTS_SPEC_VERSION));
    object.insert("id".into(), json!(event.id.to_string()));
    object.insert("stream".into(), json!(event.stream.as_str()));
    object.insert("revision".into(), json!(event.revision.0));
    object.insert("position".into(), json!(event.position.0));
    object.insert("type".into(), json!(event.event_type));
    object.insert("subject".into(), json!(event.subject()));
    object.insert("datacontenttype".into(), json!(event.content_type));
    object.insert("time".into(), json!(event.recorded.to_string()));
    let metadata: Map<String, Value> = event
        .metadata
        .iter()
        .map(|(key, value)| (key.to_owned(), json!(value)))
        .collect();
    object.insert("metadata".into(), Value::Object(metadata));
    match Payload::of(event) {
        Payload::Json(value) => object.insert("data".into(), value),
        Payload::Text(text) => object.insert("data".into(), json!(text)),
        Payload::Binary(bytes) => object.insert("data_base64".into(), json!(base64(bytes))),
    };
    Value::Object(object)
}

/// An event's payload, decoded as far as its content type allows.
enum Payload<'a> {
    Json(Value),
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'a> Payload<'a> {
    fn of(event: &'a RecordedEvent) -> Self {
        let bytes: &'a [u8] = &event.payload;
        if is_json_type(&event.content_type)
            && let Ok(value) = serde_json::from_slice(bytes)
        {
            return Self::Json(value);
        }
        if is_text_type(&event.content_type)
            && let Ok(text) = std::str::from_utf8(bytes)
        {
            return Self::Text(text);
        }
        Self::Binary(bytes)
    }
}

/// The media type without parameters, lowercased.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_json_type(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence == "application/json" || essence.ends_with("+json")
}

fn is_text_type(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence.starts_with("text/") || essence == "application/xml" || essence.ends_with("+xml")
}

/// An event for a person: a header line (position, stream@revision, type, time), then the
/// id and metadata, then the payload, indented.
fn write_event(out: &mut impl Write, event: &RecordedEvent) -> io::Result<()> {
    writeln!(
        out,
        "#{}  {}@{}  {}  {}",
        event.position, event.stream, event.revision, event.event_type, event.recorded
    )?;
    write!(out, "    id: {}", event.id)?;
    for (key, value) in event.metadata.iter() {
        write!(out, "  {key}: {value}")?;
    }
    writeln!(out)?;
    match Payload::of(event) {
        Payload::Json(value) => {
            let compact = value.to_string();
            if compact.len() <= PRETTY_AFTER {
                writeln!(out, "    {compact}")
            } else if let Some(object) = value.as_object() {
                // One line per top-level field, each value compact.
                writeln!(out, "    {{")?;
                let last = object.len().saturating_sub(1);
                for (i, (key, field)) in object.iter().enumerate() {
                    let comma = if i < last { "," } else { "" };
                    writeln!(out, "      {}: {field}{comma}", Value::from(key.as_str()))?;
                }
                writeln!(out, "    }}")
            } else {
                let pretty = serde_json::to_string_pretty(&value).unwrap_or(compact);
                for line in pretty.lines() {
                    writeln!(out, "    {line}")?;
                }
                Ok(())
            }
        }
        Payload::Text(text) => {
            for line in text.lines() {
                writeln!(out, "    {line}")?;
            }
            Ok(())
        }
        Payload::Binary(bytes) => writeln!(
            out,
            "    ({} bytes of {}, base64) {}",
            bytes.len(),
            event.content_type,
            base64(bytes)
        ),
    }
}

/// Standard base64 (RFC 4648, with padding).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let symbol = |index: u32| char::from(ALPHABET[(index & 63) as usize]);
    let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = u32::from(chunk[0]);
        let b1 = chunk.get(1).copied().map_or(0, u32::from);
        let b2 = chunk.get(2).copied().map_or(0, u32::from);
        let triple = (b0 << 16) | (b1 << 8) | b2;
        encoded.push(symbol(triple >> 18));
        encoded.push(symbol(triple >> 12));
        encoded.push(if chunk.len() > 1 {
            symbol(triple >> 6)
        } else {
            '='
        });
        encoded.push(if chunk.len() > 2 { symbol(triple) } else { '=' });
    }
    encoded
}

#[cfg(test)]
mod tests {
    use cairn::{EventData, Position, Revision, StreamName, Timestamp};

    use super::*;

    fn recorded(data: EventData) -> RecordedEvent {
        RecordedEvent::from_data(
            data,
            StreamName::new("order-1").unwrap(),
            Revision(3),
            Position(99),
            Timestamp(0),
        )
    }

    #[test]
    fn base64_matches_the_rfc_test_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn json_events_carry_their_payload_as_json() {
        let event = recorded(
            EventData::new("OrderPlaced", &br#"{"total":42}"#[..]).with_correlation_id("c-1"),
        );
        let value = event_json(&event);
        assert_eq!(value["data"]["total"], 42);
        assert_eq!(value["stream"], "order-1");
        assert_eq!(value["revision"], 3);
        assert_eq!(value["position"], 99);
        assert_eq!(value["type"], "OrderPlaced");
        assert_eq!(value["time"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(value["metadata"]["correlationid"], "c-1");
    }

    #[test]
    fn text_and_binary_payloads_become_a_string_or_base64() {
        let text = recorded(EventData::new("Note", &b"hello"[..]).with_content_type("text/plain"));
        assert_eq!(event_json(&text)["data"], "hello");
        let binary = recorded(
            EventData::new("Blob", &[0xffu8, 0xfe][..])
                .with_content_type("application/octet-stream"),
        );
        let value = event_json(&binary);
        assert_eq!(value["data_base64"], "//4=");
        assert!(value.get("data").is_none());
        // A JSON content type whose payload is not JSON is not passed off as JSON.
        let broken = recorded(EventData::new("Bad", &b"{oops"[..]));
        assert_eq!(event_json(&broken)["data_base64"], base64(b"{oops"));
    }

    #[test]
    fn people_see_a_header_the_metadata_and_the_payload() {
        let event = recorded(
            EventData::new("OrderPlaced", &br#"{"total":42}"#[..]).with_correlation_id("c-1"),
        );
        let mut out = Vec::new();
        write_event(&mut out, &event).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("#99  order-1@3  OrderPlaced  1970-01-01T00:00:00.000000Z\n"));
        assert!(text.contains("correlationid: c-1"));
        assert!(text.contains(r#"    {"total":42}"#));
    }
}

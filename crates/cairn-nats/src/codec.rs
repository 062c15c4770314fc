//! A [`Message`] on the wire: the payload is the NATS payload as it is, and everything
//! else travels in NATS headers, after the CloudEvents NATS binding (binary mode).
//!
//! | [`Message`] field | NATS header                                   |
//! |-------------------|-----------------------------------------------|
//! | `id`              | `Nats-Msg-Id` (the hyphenated UUID; JetStream de-duplicates on it) |
//! | `message_type`    | `ce-type`                                     |
//! | `source`          | `ce-source` (left out when empty)             |
//! | `key`             | `ce-subject` (present exactly when `Some`)    |
//! | `content_type`    | `content-type`                                |
//! | `headers`         | one header each, under its own name           |
//!
//! NATS headers are not arbitrary strings: names are printable ASCII without `:`, values
//! lose surrounding white space and cannot hold line breaks. A value that would not
//! survive (or is empty) travels percent-encoded instead: an attribute as
//! `cairn-pct-<attribute header>`, an application header as one `cairn-pct` header holding
//! `<name>=<value>`, both percent-encoded. So do application headers whose names are not
//! valid NATS header names, collide (ignoring case) with the attribute headers, or start
//! with `nats-` or `cairn-pct` (names the server or this codec interprets). Every message
//! therefore round-trips exactly.
//!
//! A message from a publisher that is not Cairn's (no valid `Nats-Msg-Id`) gets an id
//! derived from its stream and stream sequence, the same on every redelivery, so that the
//! inbox still recognises it.

use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use bytes::Bytes;
use cairn_bus::{CompactString, Message};
use uuid::Uuid;

/// The header carrying the message id (JetStream's de-duplication key).
pub const ID: &str = "Nats-Msg-Id";
/// The header carrying the message type.
pub const TYPE: &str = "ce-type";
/// The header carrying the source.
pub const SOURCE: &str = "ce-source";
/// The header carrying the ordering key.
pub const KEY: &str = "ce-subject";
/// The header carrying the content type.
pub const CONTENT_TYPE: &str = "content-type";
/// The header carrying a percent-encoded application header.
pub const ESCAPED: &str = "cairn-pct";
/// The prefix of a percent-encoded attribute header.
const ESCAPED_ATTRIBUTE: &str = "cairn-pct-";

/// The bytes NATS adds around the headers: `NATS/1.0\r\n` and the closing `\r\n`.
const HEADER_FRAME: usize = 12;

/// A message encoded for publishing.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
    /// What the server counts against its `max_payload`: the header block and payload.
    pub(crate) wire_len: usize,
}

/// Encodes `message` for publishing.
pub(crate) fn encode(message: &Message) -> Encoded {
    let mut headers = HeaderMap::new();
    let mut header_len = HEADER_FRAME;
    let mut id = Uuid::encode_buffer();
    let id = message.id.hyphenated().encode_lower(&mut id);
    set_static(&mut headers, &mut header_len, ID, id.to_owned());
    attribute(&mut headers, &mut header_len, TYPE, &message.message_type);
    if !message.source.is_empty() {
        attribute(&mut headers, &mut header_len, SOURCE, &message.source);
    }
    if let Some(key) = &message.key {
        attribute(&mut headers, &mut header_len, KEY, key);
    }
    attribute(
        &mut headers,
        &mut header_len,
        CONTENT_TYPE,
        &message.content_type,
    );
    for (name, value) in &message.headers {
        if plain_name(name) && plain_value(value) {
            if let Ok(header) = name.parse::<HeaderName>() {
                header_len += name.len() + value.len() + 4;
                headers.append(header, HeaderValue::from(value.clone()));
            }
        } else {
            let mut escaped = percent(name);
            escaped.push('=');
            escaped.push_str(&percent(value));
            header_len += ESCAPED.len() + escaped.len() + 4;
            headers.append(HeaderName::from_static(ESCAPED), HeaderValue::from(escaped));
        }
    }
    Encoded {
        headers,
        payload: message.payload.clone(),
        wire_len: header_len + message.payload.len(),
    }
}

/// Decodes a message delivered from `stream` at `sequence`.
pub(crate) fn decode(
    headers: Option<&HeaderMap>,
    payload: Bytes,
    stream: &str,
    sequence: u64,
) -> Message {
    let mut message = Message {
        id: Uuid::nil(),
        message_type: CompactString::default(),
        source: CompactString::default(),
        key: None,
        content_type: CompactString::default(),
        headers: cairn_bus::Headers::new(),
        payload,
    };
    let mut id = None;
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            let Some(last) = values.last() else { continue };
            match name {
                ID => id = Uuid::parse_str(last.as_str()).ok(),
                ESCAPED => {
                    for value in values {
                        let (name, value) = value
                            .as_str()
                            .split_once('=')
                            .unwrap_or((value.as_str(), ""));
                        message.headers.insert(unpercent(name), unpercent(value));
                    }
                }
                _ => match name.strip_prefix(ESCAPED_ATTRIBUTE) {
                    Some(attribute) => {
                        set_attribute(&mut message, attribute, &unpercent(last.as_str()));
                    }
                    None => {
                        if !set_attribute(&mut message, name, last.as_str()) {
                            message
                                .headers
                                .insert(name.to_owned(), last.as_str().to_owned());
                        }
                    }
                },
            }
        }
    }
    message.id = id.unwrap_or_else(|| derived_id(stream, sequence));
    message
}

/// Sets the attribute carried by header `name`; false when `name` names no attribute.
fn set_attribute(message: &mut Message, name: &str, value: &str) -> bool {
    match name {
        TYPE => message.message_type = value.into(),
        SOURCE => message.source = value.into(),
        KEY => message.key = Some(value.into()),
        CONTENT_TYPE => message.content_type = value.into(),
        _ => return false,
    }
    true
}

/// The id of a message that came without one: stable for its stream and sequence.
fn derived_id(stream: &str, sequence: u64) -> Uuid {
    let mut hasher = DefaultHasher::new();
    stream.hash(&mut hasher);
    Uuid::from_u64_pair(hasher.finish(), sequence)
}

/// Sets the header carrying one attribute: its own header when the value travels as it
/// is, its percent-encoded header otherwise.
///
/// Each attribute is set once, before any application header (whose names never equal
/// an attribute's or an escaped attribute's), so setting replaces nothing; unlike
/// appending, it hashes the name once.
fn attribute(headers: &mut HeaderMap, len: &mut usize, name: &'static str, value: &str) {
    if plain_value(value) {
        set_static(headers, len, name, value.to_owned());
    } else {
        let name = format!("{ESCAPED_ATTRIBUTE}{name}");
        let value = percent(value);
        if let Ok(header) = name.parse::<HeaderName>() {
            *len += name.len() + value.len() + 4;
            headers.insert(header, HeaderValue::from(value));
        }
    }
}

/// Sets one of the codec's own headers, whose name needs no parsing, to a value known to
/// be valid (plain, percent-encoded, or a UUID).
fn set_static(headers: &mut HeaderMap, len: &mut usize, name: &'static str, value: String) {
    *len += name.len() + value.len() + 4;
    headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
}

/// Whether an application header name can travel as it is.
fn plain_name(name: &str) -> bool {
    let reserved = [ID, TYPE, SOURCE, KEY, CONTENT_TYPE]
        .iter()
        .any(|attribute| attribute.eq_ignore_ascii_case(name))
        || starts_with_ignore_case(name, "nats-")
        || starts_with_ignore_case(name, ESCAPED);
    !name.is_empty() && !reserved && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Whether a value survives NATS header parsing unchanged: not empty, no line breaks, no
/// white space at either end (which the parser trims).
fn plain_value(value: &str) -> bool {
    let ends_kept = |end: Option<char>| end.is_some_and(|c| !c.is_whitespace());
    !value.bytes().any(|b| b == b'\r' || b == b'\n')
        && ends_kept(value.chars().next())
        && ends_kept(value.chars().next_back())
}

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Percent-encodes every byte that is not printable ASCII, and `%` and `=`.
fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for byte in text.bytes() {
        if byte.is_ascii_graphic() && byte != b'%' && byte != b'=' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Reverses [`percent`]; malformed escapes are kept as they are.
pub(crate) fn unpercent(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%'
            && let Some(decoded) = bytes
                .get(index + 1..index + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(decoded);
            index += 3;
        } else {
            out.push(byte);
            index += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: &Message) -> Message {
        let encoded = encode(message);
        decode(Some(&encoded.headers), encoded.payload, "s", 1)
    }

    #[test]
    fn a_message_with_every_field_set_round_trips() {
        let message = Message::new("order.placed", &b"{\"a\":1}"[..])
            .with_key("order-7")
            .with_source("/orders")
            .with_content_type("application/json; charset=utf-8")
            .with_header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .with_header("x-text", "héllo, wörld ✓");
        let back = round_trip(&message);
        assert_eq!(back, message);
        assert_eq!(
            encode(&message).headers.get(ID).map(HeaderValue::as_str),
            Some(message.id.hyphenated().to_string().as_str())
        );
    }

    #[test]
    fn empty_and_absent_attributes_stay_apart() {
        let bare = Message::new("", Bytes::new()).with_content_type("");
        assert_eq!(round_trip(&bare), bare);
        let empty_key = Message::new("t", Bytes::new()).with_key("");
        assert_eq!(round_trip(&empty_key), empty_key);
    }

    #[test]
    fn headers_nats_would_mangle_are_escaped_and_restored() {
        let message = Message::new("t", Bytes::new())
            .with_source(" spaced ")
            .with_header("", "empty name")
            .with_header("with space", "v")
            .with_header("colon:name", "v")
            .with_header("line", "a\r\nb")
            .with_header("padded", "  v  ")
            .with_header("empty", "")
            .with_header("Nats-Expected-Stream", "not for the server")
            .with_header("CE-TYPE", "not the type")
            .with_header("cairn-pct", "a=b%c")
            .with_header("naïve", "=%=");
        let encoded = encode(&message);
        assert!(encoded.headers.get("Nats-Expected-Stream").is_none());
        assert_eq!(round_trip(&message), message);
    }

    #[test]
    fn a_message_without_an_id_gets_one_stable_per_stream_and_sequence() {
        let first = decode(None, Bytes::from_static(b"x"), "orders", 7);
        let again = decode(None, Bytes::from_static(b"x"), "orders", 7);
        let other = decode(None, Bytes::from_static(b"x"), "orders", 8);
        assert_eq!(first.id, again.id);
        assert_ne!(first.id, other.id);
        assert_eq!(first.payload, Bytes::from_static(b"x"));
    }

    #[test]
    fn wire_len_counts_the_header_block_and_the_payload() {
        let message = Message::new("t", vec![0u8; 10]).with_content_type("c");
        let encoded = encode(&message);
        // NATS/1.0\r\n + Nats-Msg-Id: <36>\r\n + ce-type: t\r\n + content-type: c\r\n + \r\n
        let expected = 10 + (11 + 36 + 4) + (7 + 1 + 4) + (12 + 1 + 4) + 2 + 10;
        assert_eq!(encoded.wire_len, expected);
    }

    #[test]
    fn percent_encoding_reverses() {
        for text in ["", "plain", "a b=c%d", "é✓\r\n", "%zz", "%4"] {
            assert_eq!(unpercent(&percent(text)), text);
        }
    }
}

//! How a [`Message`] is written as the fields of a stream entry and read back, and
//! `EntryId`, a stream entry's id.
//!
//! One entry per message, its fields in this order:
//!
//! | field          | value                                        | when            |
//! |----------------|----------------------------------------------|-----------------|
//! | `id`           | the message id, as a hyphenated UUID         | always          |
//! | `type`         | `message_type`                               | always          |
//! | `source`       | `source`                                     | when not empty  |
//! | `key`          | the ordering key                             | when it has one |
//! | `content-type` | `content_type`                               | always          |
//! | `h:<name>`     | one field per header                         | per header      |
//! | `payload`      | the payload bytes, as they are               | always          |
//!
//! Reading is lenient, so that entries written by other producers still arrive: a missing
//! `id` becomes a UUID made of the entry id, missing text fields become empty, fields with
//! other names are ignored.

use std::fmt;

use bytes::Bytes;
use cairn_bus::{Headers, Message};
use redis::{Cmd, Value};
use uuid::Uuid;

const ID: &str = "id";
const TYPE: &str = "type";
const SOURCE: &str = "source";
const KEY: &str = "key";
const CONTENT_TYPE: &str = "content-type";
const HEADER_PREFIX: &str = "h:";
const PAYLOAD: &str = "payload";

/// A stream entry's id, `<milliseconds>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    /// Parses `<ms>-<seq>`.
    pub(crate) fn parse(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// Parses the id out of a reply value.
    pub(crate) fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::BulkString(bytes) => Self::parse(bytes),
            Value::SimpleString(text) => Self::parse(text.as_bytes()),
            _ => None,
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        out.write_arg_fmt(self);
    }
}

impl redis::ToSingleRedisArg for EntryId {}

/// Appends `message`'s fields to an `XADD` command.
pub(crate) fn write_fields(command: &mut Cmd, message: &Message) {
    let mut id = Uuid::encode_buffer();
    command
        .arg(ID)
        .arg(&*message.id.hyphenated().encode_lower(&mut id))
        .arg(TYPE)
        .arg(&message.message_type);
    // Left out when empty (the default), which reads back the same: one field pair less
    // for every reader to parse.
    if !message.source.is_empty() {
        command.arg(SOURCE).arg(&message.source);
    }
    if let Some(key) = &message.key {
        command.arg(KEY).arg(key);
    }
    command.arg(CONTENT_TYPE).arg(&message.content_type);
    let mut name = String::new();
    for (header, value) in &message.headers {
        name.clear();
        name.push_str(HEADER_PREFIX);
        name.push_str(header);
        command.arg(&name).arg(value);
    }
    command.arg(PAYLOAD).arg(&message.payload[..]);
}

/// One entry read from a stream.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: EntryId,
    pub(crate) message: Message,
}

/// Reads an entry, `[id, [field, value, ...]]`; `None` when the value has another shape
/// (an entry deleted from the stream while pending reads as `[id, nil]`).
pub(crate) fn read_entry(value: Value) -> Option<Entry> {
    let Value::Array(parts) = value else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id = EntryId::from_value(&parts.next()?)?;
    let fields = match parts.next()? {
        Value::Array(fields) => fields,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    Some(Entry {
        id,
        message: read_message(id, fields),
    })
}

/// Reads a list of entries; entries of another shape are left out.
pub(crate) fn read_entries(value: Value) -> Vec<Entry> {
    match value {
        Value::Array(entries) => entries.into_iter().filter_map(read_entry).collect(),
        _ => Vec::new(),
    }
}

fn read_message(entry: EntryId, fields: Vec<Value>) -> Message {
    let mut id = None;
    let mut message_type = String::new();
    let mut source = String::new();
    let mut key = None;
    let mut content_type = String::new();
    let mut headers = Headers::new();
    let mut payload = Bytes::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let Some(name) = bytes_of(name) else { continue };
        let Some(value) = bytes_of(value) else {
            continue;
        };
        match name.as_slice() {
            b"id" => {
                id = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|s| s.parse().ok())
            }
            b"type" => message_type = text(value),
            b"source" => source = text(value),
            b"key" => key = Some(text(value)),
            b"content-type" => content_type = text(value),
            b"payload" => payload = Bytes::from(value),
            other => {
                if let Some(header) = other.strip_prefix(HEADER_PREFIX.as_bytes()) {
                    headers.insert(String::from_utf8_lossy(header).into_owned(), text(value));
                }
            }
        }
    }
    Message {
        id: id.unwrap_or_else(|| Uuid::from_u64_pair(entry.ms, entry.seq)),
        message_type,
        source,
        key,
        content_type,
        headers,
        payload,
    }
}

fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_reply(command: &Cmd) -> Vec<Value> {
        // The arguments after `XADD key *`, as the server hands them back.
        command
            .args_iter()
            .skip(3)
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => Value::BulkString(bytes.to_vec()),
                _ => Value::Nil,
            })
            .collect()
    }

    #[test]
    fn every_field_of_a_message_round_trips() {
        let message = Message::new("order.placed", Bytes::from_static(&[0, 255, 10]))
            .with_key("order-7")
            .with_source("/orders")
            .with_content_type("application/octet-stream")
            .with_header("traceparent", "00-abc-def-01")
            .with_header("x-text", "héllo");
        let mut command = redis::cmd("XADD");
        command.arg("k").arg("*");
        write_fields(&mut command, &message);
        let entry_id = EntryId { ms: 5, seq: 1 };
        assert_eq!(read_message(entry_id, as_reply(&command)), message);
    }

    #[test]
    fn a_message_without_a_key_or_headers_round_trips() {
        let message = Message::new("t", Bytes::new()).with_content_type("");
        let mut command = redis::cmd("XADD");
        command.arg("k").arg("*");
        write_fields(&mut command, &message);
        let read = read_message(EntryId { ms: 1, seq: 0 }, as_reply(&command));
        assert_eq!(read, message);
        assert_eq!(read.key, None);
        assert!(
            !command
                .args_iter()
                .any(|arg| matches!(arg, redis::Arg::Simple(b"source"))),
            "an empty source is left out"
        );
    }

    #[test]
    fn an_entry_from_another_producer_still_reads() {
        let fields = vec![
            Value::BulkString(b"foo".to_vec()),
            Value::BulkString(b"bar".to_vec()),
            Value::BulkString(b"type".to_vec()),
            Value::BulkString(b"legacy".to_vec()),
        ];
        let message = read_message(EntryId { ms: 7, seq: 3 }, fields);
        assert_eq!(message.message_type, "legacy");
        assert_eq!(message.id, Uuid::from_u64_pair(7, 3));
        assert!(message.headers.is_empty());
        assert!(message.payload.is_empty());
    }

    #[test]
    fn entry_ids_parse_print_and_order_numerically() {
        let small = EntryId::parse(b"9-5").unwrap();
        let large = EntryId::parse(b"10-0").unwrap();
        assert!(small < large);
        assert_eq!(large.to_string(), "10-0");
        assert_eq!(EntryId::parse(b"nonsense"), None);
    }
}

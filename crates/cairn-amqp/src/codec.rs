//! How a [`Message`] travels as an AMQP message: its fields as basic properties and
//! headers, its payload as the body.
//!
//! | [`Message`] | AMQP 0-9-1 |
//! |---|---|
//! | `id` | `message-id` (the UUID, hyphenated) |
//! | `message_type` | `type` |
//! | `source` | `app-id` (absent when empty) |
//! | `content_type` | `content-type` (absent when empty) |
//! | `key` | header [`KEY`] (absent when `None`) |
//! | `headers` | headers, one long string each, under their own names |
//! | `payload` | the body |
//!
//! Every message is persistent (`delivery-mode` 2). Header names the transport or the
//! broker writes ([`KEY`], [`ATTEMPTS`], `x-delivery-count`, `x-death`,
//! `x-first-death-*`, `x-last-death-*`) cannot be used by messages and are never read
//! back as message headers. The type, source, content type and header names are AMQP short
//! strings: at most 255 bytes.
//!
//! A message without a UUID `message-id` (published by something else than Cairn) cannot
//! be decoded: the subscription rejects it to the group's dead-letter queue.

use bytes::Bytes;
use cairn_bus::{CompactString, Headers, Message, TransportError};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The header carrying the ordering key.
pub const KEY: &str = "cairn.key";

/// The header carrying how many deliveries a message had before it waited out a nack's
/// delay (so that `attempt` counts on across the retry queue).
pub const ATTEMPTS: &str = "cairn.attempts";

/// The header the broker counts a quorum queue's redeliveries in.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// Whether a header name belongs to the transport or the broker.
fn reserved(name: &str) -> bool {
    name == KEY
        || name == ATTEMPTS
        || name == DELIVERY_COUNT
        || name == "x-death"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

fn short(what: &'static str, value: &str) -> Result<ShortString, TransportError> {
    ShortString::try_new(value).map_err(|_| TransportError::Invalid {
        what,
        reason: format!("{} bytes, more than AMQP's 255", value.len()),
    })
}

/// The properties `message` travels with; `attempts` is how many deliveries it had
/// before (0 when first published).
///
/// # Errors
///
/// [`TransportError::Invalid`] for a reserved header name or a field over 255 bytes.
pub(crate) fn encode(message: &Message, attempts: u32) -> Result<BasicProperties, TransportError> {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        if reserved(name) {
            return Err(TransportError::Invalid {
                what: "header",
                reason: format!("{name:?} is reserved by the AMQP transport"),
            });
        }
        headers.insert(
            short("header name", name)?,
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    if let Some(key) = &message.key {
        headers.insert(
            KEY.into(),
            AMQPValue::LongString(LongString::from(key.as_str())),
        );
    }
    if attempts > 0 {
        headers.insert(ATTEMPTS.into(), AMQPValue::LongUInt(attempts));
    }
    let mut properties = BasicProperties::default()
        .with_message_id(ShortString::from(message.id.hyphenated().to_string()))
        .with_type(short("message type", &message.message_type)?)
        .with_delivery_mode(2)
        .with_headers(headers);
    if !message.source.is_empty() {
        properties = properties.with_app_id(short("source", &message.source)?);
    }
    if !message.content_type.is_empty() {
        properties = properties.with_content_type(short("content type", &message.content_type)?);
    }
    Ok(properties)
}

/// The message in a delivery and its attempt: 1, plus the deliveries before its last
/// retry wait ([`ATTEMPTS`]), plus the broker's count of redeliveries since
/// (`x-delivery-count`; on a queue without it, 1 when the `redelivered` flag is set).
///
/// # Errors
///
/// Why the delivery is not a Cairn message.
pub(crate) fn decode(
    properties: &BasicProperties,
    body: Vec<u8>,
    redelivered: bool,
) -> Result<(Message, u32), String> {
    let id = properties
        .message_id()
        .as_ref()
        .ok_or("it has no message-id")?;
    let id = uuid::Uuid::parse_str(id.as_str())
        .map_err(|_| format!("its message-id {:?} is not a UUID", id.as_str()))?;
    let text = |value: &Option<ShortString>| {
        value
            .as_ref()
            .map_or_else(CompactString::default, |value| value.as_str().into())
    };
    let mut headers = Headers::new();
    let mut key = None;
    let mut before = 0u32;
    let mut redeliveries = None;
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            match name.as_str() {
                KEY => key = string(value).map(CompactString::from),
                ATTEMPTS => before = count(value).unwrap_or(0),
                DELIVERY_COUNT => redeliveries = count(value),
                name if reserved(name) => {}
                name => {
                    if let Some(value) = string(value) {
                        headers.insert(name.to_owned(), value);
                    }
                }
            }
        }
    }
    let redeliveries = redeliveries.unwrap_or(u32::from(redelivered));
    let message = Message {
        id,
        message_type: text(properties.kind()),
        source: text(properties.app_id()),
        key,
        content_type: text(properties.content_type()),
        headers,
        payload: Bytes::from(body),
    };
    Ok((
        message,
        before.saturating_add(redeliveries).saturating_add(1),
    ))
}

/// A header value as text: strings as they are, numbers and booleans written out.
fn string(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::Boolean(flag) => flag.to_string(),
        other => count64(other)?.to_string(),
    })
}

fn count(value: &AMQPValue) -> Option<u32> {
    u32::try_from(count64(value)?).ok()
}

fn count64(value: &AMQPValue) -> Option<i128> {
    Some(match *value {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n.into(),
        AMQPValue::Timestamp(n) => n.into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Message {
        Message::new("order.placed", Bytes::from_static(&[0, 255, 10]))
            .with_key("order-7")
            .with_source("/orders")
            .with_content_type("application/octet-stream")
            .with_header("traceparent", "00-abc-01")
            .with_header("x-text", "héllo")
    }

    #[test]
    fn every_field_survives_encoding_and_decoding() {
        let message = full();
        let properties = encode(&message, 0).unwrap();
        assert_eq!(properties.delivery_mode(), &Some(2));
        let (decoded, attempt) = decode(&properties, message.payload.to_vec(), false).unwrap();
        assert_eq!(decoded, message);
        assert_eq!(attempt, 1);
    }

    #[test]
    fn a_bare_message_survives_too() {
        let message = Message::new("t", Bytes::new())
            .with_source("")
            .with_content_type("");
        let properties = encode(&message, 0).unwrap();
        let (decoded, _) = decode(&properties, Vec::new(), false).unwrap();
        assert_eq!(decoded, message);
    }

    #[test]
    fn the_attempt_adds_earlier_deliveries_and_the_brokers_count() {
        let mut properties = encode(&full(), 2).unwrap();
        let mut headers = properties.headers().clone().unwrap();
        headers.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        headers.insert("x-death".into(), AMQPValue::Boolean(true));
        properties = properties.with_headers(headers);
        let (decoded, attempt) = decode(&properties, Vec::new(), true).unwrap();
        assert_eq!(attempt, 6);
        assert_eq!(decoded.headers, full().headers);
    }

    #[test]
    fn without_a_delivery_count_the_redelivered_flag_counts_one() {
        let properties = encode(&full(), 0).unwrap();
        assert_eq!(decode(&properties, Vec::new(), true).unwrap().1, 2);
    }

    #[test]
    fn reserved_header_names_and_long_fields_are_invalid() {
        for message in [
            full().with_header(KEY, "k"),
            full().with_header("x-death", "d"),
            Message::new("t".repeat(256), Bytes::new()),
            full().with_header("h".repeat(256), "v"),
        ] {
            match encode(&message, 0) {
                Err(TransportError::Invalid { .. }) => {}
                other => panic!("expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_delivery_without_a_uuid_message_id_is_not_a_message() {
        assert!(decode(&BasicProperties::default(), Vec::new(), false).is_err());
        let properties = BasicProperties::default().with_message_id("seven".into());
        assert!(decode(&properties, Vec::new(), false).is_err());
    }
}

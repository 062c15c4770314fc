//! [`Message`]: what travels over the bus, shaped after CloudEvents 1.0 so that it maps onto
//! every broker's own envelope (NATS headers, AMQP properties, Redis stream fields, Kafka
//! record headers) and onto the CloudEvents HTTP binding.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use cairn_core::CompactString;
use serde::Serialize;
use uuid::Uuid;

/// Headers every transport carries beside the payload; keys are lower-case by convention.
pub type Headers = BTreeMap<String, String>;

/// The content type of a JSON payload, the default.
pub const JSON: &str = "application/json";

/// One message: an immutable envelope around an opaque payload.
///
/// `id` is the de-duplication key end to end: a broker that de-duplicates on publish (NATS
/// `Nats-Msg-Id`) uses it, and the inbox records it, so a message published twice or
/// delivered twice takes effect once. The outbox relay sets it to the event's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// CloudEvents `id`: unique per message (a UUID v7 unless the sender chose one).
    pub id: Uuid,
    /// CloudEvents `type`: what the message means, e.g. `order.placed`; the router
    /// dispatches on it.
    pub message_type: CompactString,
    /// CloudEvents `source`: who sent it, e.g. `/orders` or `cairn://store/orders-42`.
    pub source: CompactString,
    /// The ordering key (CloudEvents `subject`, a Kafka record key): messages with the same
    /// key are handled one at a time, in order, by the ordered-concurrency middleware.
    pub key: Option<CompactString>,
    /// CloudEvents `datacontenttype` of `payload`.
    pub content_type: CompactString,
    /// Everything else: `traceparent`, `correlationid`, `causationid`, application headers.
    pub headers: Headers,
    /// The body, as bytes.
    pub payload: Bytes,
}

impl Message {
    /// A message with a fresh UUID v7 id, no source, no key, no headers.
    pub fn new(message_type: impl Into<CompactString>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: cairn_core::new_id(),
            message_type: message_type.into(),
            source: CompactString::const_new(""),
            key: None,
            content_type: CompactString::const_new(JSON),
            headers: Headers::new(),
            payload: payload.into(),
        }
    }

    /// A message whose payload is `body` as JSON.
    ///
    /// # Errors
    ///
    /// When `body` cannot be serialized.
    pub fn json(
        message_type: impl Into<CompactString>,
        body: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(message_type, serde_json::to_vec(body)?))
    }

    /// Sets the id (the de-duplication key).
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the ordering key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<CompactString>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the source.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<CompactString>) -> Self {
        self.source = source.into();
        self
    }

    /// Sets the content type.
    #[must_use]
    pub fn with_content_type(mut self, content_type: impl Into<CompactString>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Adds (or replaces) a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The bytes a transport must carry for this message (payload, headers and attributes),
    /// which is what size limits apply to.
    pub fn encoded_len(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.payload.len()
            + headers
            + self.message_type.len()
            + self.source.len()
            + self.key.as_ref().map_or(0, |key| key.len())
            + self.content_type.len()
            + 16
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.message_type, self.id)?;
        if let Some(key) = &self.key {
            write!(f, " (key {key})")?;
        }
        Ok(())
    }
}

/// Well-known header names.
pub mod headers {
    /// The W3C trace context of the span that sent the message.
    pub const TRACEPARENT: &str = "traceparent";
    /// The W3C trace state that goes with `traceparent`.
    pub const TRACESTATE: &str = "tracestate";
    /// The id shared by every message and event of one business flow.
    pub const CORRELATION_ID: &str = "correlationid";
    /// The id of the message or command that caused this one.
    pub const CAUSATION_ID: &str = "causationid";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_what_they_name() {
        let message = Message::new("order.placed", &b"{}"[..])
            .with_key("order-1")
            .with_source("/orders")
            .with_header(headers::CORRELATION_ID, "c-1");
        assert_eq!(message.key.as_deref(), Some("order-1"));
        assert_eq!(message.source, "/orders");
        assert_eq!(message.header("correlationid"), Some("c-1"));
        assert_eq!(message.content_type, JSON);
        assert_eq!(
            message.to_string(),
            format!("order.placed {} (key order-1)", message.id)
        );
    }

    #[test]
    fn encoded_len_counts_payload_and_headers() {
        let bare = Message::new("t", vec![0u8; 100]);
        let with_header = bare.clone().with_header("a", "bc");
        assert!(bare.encoded_len() >= 100);
        assert_eq!(with_header.encoded_len(), bare.encoded_len() + 3);
    }
}

//! The event envelope: what a writer hands in ([`EventData`]) and what a reader gets back
//! ([`RecordedEvent`]), with CloudEvents 1.0 attributes and well-known metadata.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::name::StreamName;
use crate::position::{Position, Revision};

/// The content type given to events whose writer names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// The CloudEvents specification version of every recorded event.
pub const CLOUDEVENTS_SPEC_VERSION: &str = "1.0";

/// The longest event type accepted, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 256;

/// An instant, in whole microseconds since the Unix epoch (UTC).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current time of the system clock (the epoch if the clock is set before it).
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Converts a system time, clamping times before the epoch to the epoch.
    pub fn from_system_time(time: SystemTime) -> Self {
        let micros = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros());
        Self(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// This instant as a system time.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }

    /// This instant moved back by `duration`, saturating at the epoch.
    #[must_use]
    pub fn saturating_sub(self, duration: Duration) -> Self {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        Self(self.0.saturating_sub(micros))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds, as CloudEvents' `time` attribute.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0 % 1_000_000;
        let secs = self.0 / 1_000_000;
        let days = secs / 86_400;
        let of_day = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            of_day / 3600,
            of_day % 3600 / 60,
            of_day % 60
        )
    }
}

/// Converts a count of days since 1970-01-01 to a proleptic Gregorian (year, month, day),
/// by counting whole 400-year eras and then the years, months and days inside one.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a year.
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Key/value metadata carried with an event. Keys are ordered, so equal metadata encodes
/// equally.
///
/// A key given as a `&'static str` (the well-known keys below, a literal) is not copied:
/// metadata is built for every event written, mostly from the same few keys.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<Cow<'static, str>, String>);

impl Metadata {
    /// The id shared by every message and event of one business flow.
    pub const CORRELATION_ID: &'static str = "correlationid";
    /// The id of the command or message that caused this event.
    pub const CAUSATION_ID: &'static str = "causationid";
    /// The W3C trace context of the span that wrote the event.
    pub const TRACEPARENT: &'static str = "traceparent";
    /// The tenant the event belongs to.
    pub const TENANT: &'static str = "tenant";

    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(
        &mut self,
        key: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
    ) -> Option<String> {
        self.0.insert(key.into(), value.into())
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `correlationid` entry.
    pub fn correlation_id(&self) -> Option<&str> {
        self.get(Self::CORRELATION_ID)
    }

    /// The `causationid` entry.
    pub fn causation_id(&self) -> Option<&str> {
        self.get(Self::CAUSATION_ID)
    }

    /// The `traceparent` entry.
    pub fn traceparent(&self) -> Option<&str> {
        self.get(Self::TRACEPARENT)
    }

    /// The `tenant` entry.
    pub fn tenant(&self) -> Option<&str> {
        self.get(Self::TENANT)
    }

    /// The number of bytes of keys and values.
    pub fn encoded_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl<K: Into<Cow<'static, str>>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// An event as a writer hands it to the store.
///
/// The `id` makes appends idempotent: retrying an append with the same ids on the same
/// stream returns the first result and writes nothing. [`EventData::new`] draws a fresh
/// UUID v7; set a stable id with [`EventData::with_id`] when the caller may retry.
///
/// # Examples
///
/// ```
/// use cairn_core::EventData;
///
/// let event = EventData::json("OrderPlaced", &serde_json::json!({"total": 42}))
///     .unwrap()
///     .with_correlation_id("checkout-7");
/// assert_eq!(event.content_type, "application/json");
/// assert_eq!(event.metadata.correlation_id(), Some("checkout-7"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    /// The client-chosen id, unique in the whole store.
    pub id: Uuid,
    /// The event type (CloudEvents `type`), 1 to [`MAX_EVENT_TYPE_LEN`] bytes, no control
    /// characters.
    pub event_type: CompactString,
    /// The payload bytes.
    pub payload: Bytes,
    /// The payload's media type (CloudEvents `datacontenttype`).
    pub content_type: CompactString,
    /// Metadata, including the well-known keys of [`Metadata`].
    pub metadata: Metadata,
}

impl EventData {
    /// An event with a fresh UUID v7 id, the JSON content type and no metadata.
    pub fn new(event_type: impl Into<CompactString>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: crate::new_id(),
            event_type: event_type.into(),
            payload: payload.into(),
            content_type: CompactString::const_new(DEFAULT_CONTENT_TYPE),
            metadata: Metadata::new(),
        }
    }

    /// An event whose payload is `value` serialized as JSON.
    ///
    /// # Errors
    ///
    /// Returns the serializer's error when `value` cannot be written as JSON.
    pub fn json<T: Serialize + ?Sized>(
        event_type: impl Into<CompactString>,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(event_type, serde_json::to_vec(value)?))
    }

    /// Sets the id (use a stable id to make retries idempotent).
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the content type.
    #[must_use]
    pub fn with_content_type(mut self, content_type: impl Into<CompactString>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Sets one metadata entry.
    #[must_use]
    pub fn with_metadata(
        mut self,
        key: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
    ) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Sets the `correlationid` metadata entry.
    #[must_use]
    pub fn with_correlation_id(self, id: impl Into<String>) -> Self {
        self.with_metadata(Metadata::CORRELATION_ID, id)
    }

    /// Sets the `causationid` metadata entry.
    #[must_use]
    pub fn with_causation_id(self, id: impl Into<String>) -> Self {
        self.with_metadata(Metadata::CAUSATION_ID, id)
    }

    /// The size counted against the store's event size limit: payload, type, content type
    /// and metadata, in bytes.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.event_type.len()
            + self.content_type.len()
            + self.metadata.encoded_len()
    }

    /// Whether `recorded` holds the same content as this event (type, payload, content type
    /// and metadata); the id is not compared.
    pub fn same_content_as(&self, recorded: &RecordedEvent) -> bool {
        self.event_type == recorded.event_type
            && self.payload == recorded.payload
            && self.content_type == recorded.content_type
            && self.metadata == recorded.metadata
    }
}

/// An event as the store recorded it: the writer's content plus where and when it landed.
///
/// Maps onto a CloudEvents 1.0 event: `id` ↔ [`id`](Self::id), `type` ↔
/// [`event_type`](Self::event_type), `time` ↔ [`recorded`](Self::recorded),
/// `datacontenttype` ↔ [`content_type`](Self::content_type), `subject` ↔ the stream name,
/// `specversion` ↔ [`CLOUDEVENTS_SPEC_VERSION`]; `source` is the serving endpoint's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The writer's id.
    pub id: Uuid,
    /// The stream the event belongs to.
    pub stream: StreamName,
    /// Its revision in the stream.
    pub revision: Revision,
    /// Its position in the global log.
    pub position: Position,
    /// The event type.
    pub event_type: CompactString,
    /// The payload's media type.
    pub content_type: CompactString,
    /// The payload bytes.
    pub payload: Bytes,
    /// The writer's metadata.
    pub metadata: Metadata,
    /// When the store committed the event.
    pub recorded: Timestamp,
}

impl RecordedEvent {
    /// Records `data` at the given place and time.
    pub fn from_data(
        data: EventData,
        stream: StreamName,
        revision: Revision,
        position: Position,
        recorded: Timestamp,
    ) -> Self {
        Self {
            id: data.id,
            stream,
            revision,
            position,
            event_type: data.event_type,
            content_type: data.content_type,
            payload: data.payload,
            metadata: data.metadata,
            recorded,
        }
    }

    /// The CloudEvents `subject`: the stream name.
    pub fn subject(&self) -> &str {
        self.stream.as_str()
    }

    /// The payload decoded from JSON.
    ///
    /// # Errors
    ///
    /// Returns the deserializer's error when the payload is not JSON of type `T`.
    pub fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29T12:34:56.789012Z, a leap day in a year divisible by 400.
        assert_eq!(
            Timestamp(951_827_696_789_012).to_string(),
            "2000-02-29T12:34:56.789012Z"
        );
        // 2026-11-26T16:45:06Z.
        assert_eq!(
            Timestamp(1_795_711_506_000_000).to_string(),
            "2026-11-26T16:45:06.000000Z"
        );
        // 2100-03-01, just after a non-leap century's February.
        assert_eq!(
            Timestamp(4_107_542_400_000_000).to_string(),
            "2100-03-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn new_events_get_version_7_ids_and_json_content() {
        let event = EventData::new("Placed", &b"{}"[..]);
        assert_eq!(event.id.get_version_num(), 7);
        assert_eq!(event.content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(event.size(), 2 + 6 + DEFAULT_CONTENT_TYPE.len());
    }

    #[test]
    fn content_comparison_ignores_only_the_place() {
        let data = EventData::new("T", &b"x"[..]).with_metadata("k", "v");
        let stream = StreamName::new("s").unwrap();
        let recorded =
            RecordedEvent::from_data(data.clone(), stream, Revision(3), Position(9), Timestamp(1));
        assert!(data.same_content_as(&recorded));
        assert!(
            !data
                .clone()
                .with_metadata("k", "w")
                .same_content_as(&recorded)
        );
        let mut other = data;
        other.payload = Bytes::from_static(b"y");
        assert!(!other.same_content_as(&recorded));
    }
}

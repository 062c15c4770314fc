//! Domain events: the [`Event`] trait that `#[derive(Event)]` (from `cairn-macros`)
//! implements for an enum, and the errors of turning events into stored bytes and back.
//!
//! Each variant of an event enum has a **stable type name**, stored as the event's type,
//! so renaming a Rust variant never changes stored data, and a **schema version**, stored
//! in the event's metadata under [`SCHEMA_VERSION`]. Reading an event of an older version
//! goes through the upcasters ([`crate::Upcasters`]) first; [`Event::decode`] only ever
//! sees the current version of each type.

use serde_json::Value;
use thiserror::Error;

/// The metadata key under which an event's schema version is stored.
pub const SCHEMA_VERSION: &str = "schemaversion";

/// One event type an [`Event`] enum writes: its stable name and current schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventType {
    /// The stable name, stored as the event's type.
    pub name: &'static str,
    /// The current schema version (1 or more).
    pub version: u32,
}

/// A domain event type: usually an enum with `#[derive(Event)]`, one variant per event
/// type.
///
/// # Examples
///
/// Written by hand (the derive writes the same for you):
///
/// ```
/// use cairn_es::{DecodeError, EncodeError, Event, EventType};
/// use serde_json::{Value, json};
///
/// #[derive(Debug, Clone, PartialEq)]
/// enum Light {
///     SwitchedOn,
///     Dimmed { level: u8 },
/// }
///
/// impl Event for Light {
///     fn event_types() -> &'static [EventType] {
///         &[
///             EventType { name: "light.switched-on", version: 1 },
///             EventType { name: "light.dimmed", version: 2 },
///         ]
///     }
///     fn event_type(&self) -> EventType {
///         let [on, dimmed] = Self::event_types() else { unreachable!() };
///         match self {
///             Light::SwitchedOn => *on,
///             Light::Dimmed { .. } => *dimmed,
///         }
///     }
///     fn encode(&self) -> Result<Value, EncodeError> {
///         Ok(match self {
///             Light::SwitchedOn => json!({}),
///             Light::Dimmed { level } => json!({ "level": level }),
///         })
///     }
///     fn decode(event_type: &str, payload: Value) -> Result<Self, DecodeError> {
///         match event_type {
///             "light.switched-on" => Ok(Light::SwitchedOn),
///             "light.dimmed" => {
///                 let level = payload["level"].as_u64().ok_or_else(|| {
///                     DecodeError::payload(event_type, "`level` is missing")
///                 })?;
///                 Ok(Light::Dimmed { level: level as u8 })
///             }
///             other => Err(DecodeError::UnknownType(other.to_owned())),
///         }
///     }
/// }
///
/// let event = Light::Dimmed { level: 40 };
/// let payload = event.encode().unwrap();
/// assert_eq!(Light::decode(event.event_type().name, payload).unwrap(), event);
/// ```
pub trait Event: Sized + Send + Sync + 'static {
    /// Every type this enum writes, one per variant, names unique.
    fn event_types() -> &'static [EventType];

    /// This event's type (one of [`Event::event_types`]).
    fn event_type(&self) -> EventType;

    /// This event's payload as JSON.
    ///
    /// # Errors
    ///
    /// [`EncodeError`] when the payload cannot be written as JSON (a map with non-string
    /// keys, a failing `Serialize` implementation).
    fn encode(&self) -> Result<Value, EncodeError>;

    /// The event of type `event_type` whose payload, at the type's current version, is
    /// `payload`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownType`] for a type this enum does not have;
    /// [`DecodeError::Payload`] when the payload does not fit the type.
    fn decode(event_type: &str, payload: Value) -> Result<Self, DecodeError>;
}

/// An event that could not be written as JSON.
#[derive(Debug, Error)]
#[non_exhaustive]
#[error("event `{event_type}` cannot be written as JSON: {source}")]
pub struct EncodeError {
    /// The event's type name.
    pub event_type: String,
    /// Why.
    #[source]
    pub source: serde_json::Error,
}

impl EncodeError {
    /// An encoding failure of an event of type `event_type`.
    pub fn new(event_type: impl Into<String>, source: serde_json::Error) -> Self {
        Self {
            event_type: event_type.into(),
            source,
        }
    }
}

/// A stored event that could not be turned back into a domain event.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The event type is not one of the enum's.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// The payload does not fit the event type's current version.
    #[error("the payload of a `{event_type}` event does not fit its type: {reason}")]
    Payload {
        /// The event's type name.
        event_type: String,
        /// What did not fit.
        reason: String,
    },
    /// The payload is not JSON.
    #[error("the payload of a `{event_type}` event is not JSON: {reason}")]
    NotJson {
        /// The event's type name.
        event_type: String,
        /// The parser's message.
        reason: String,
    },
    /// The stored schema version is newer than the type's current version (written by a
    /// newer build), or malformed.
    #[error("a `{event_type}` event has schema version {found}, this build knows up to {current}")]
    UnknownVersion {
        /// The event's type name.
        event_type: String,
        /// The stored version.
        found: u32,
        /// The type's current version.
        current: u32,
    },
    /// No upcaster leads from the stored version to the current one.
    #[error("no upcaster turns version {from} of `{event_type}` into version {current}")]
    NoUpcastPath {
        /// The event's type name.
        event_type: String,
        /// The stored version.
        from: u32,
        /// The type's current version.
        current: u32,
    },
    /// An upcaster failed.
    #[error("upcasting version {from} of `{event_type}` failed: {reason}")]
    Upcast {
        /// The event's type name.
        event_type: String,
        /// The version the failing upcaster reads.
        from: u32,
        /// The upcaster's message.
        reason: String,
    },
}

impl DecodeError {
    /// A payload of type `event_type` that does not fit, and why.
    pub fn payload(event_type: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Payload {
            event_type: event_type.into(),
            reason: reason.to_string(),
        }
    }
}

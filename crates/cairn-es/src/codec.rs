//! Turning domain events into stored events and back, with their schema versions.

use cairn_core::{EventData, Metadata, RecordedEvent};
use serde_json::Value;

use crate::upcast::stored_version;
use crate::{DecodeError, EncodeError, Event, SCHEMA_VERSION, Upcasters};

/// The stored form of `event`, with `metadata` and its schema version.
pub(crate) fn encode<E: Event>(event: &E, metadata: &Metadata) -> Result<EventData, EncodeError> {
    let event_type = event.event_type();
    let payload = event.encode()?;
    let bytes = serde_json::to_vec(&payload).map_err(|e| EncodeError::new(event_type.name, e))?;
    let mut data = EventData::new(event_type.name, bytes);
    data.metadata = metadata.clone();
    data.metadata
        .insert(SCHEMA_VERSION, event_type.version.to_string());
    Ok(data)
}

/// The domain event a stored event holds, upcast to the current version of its type.
pub(crate) fn decode<E: Event>(
    upcasters: &Upcasters,
    event: &RecordedEvent,
) -> Result<E, DecodeError> {
    let name = event.event_type.as_str();
    let current = E::event_types()
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| DecodeError::UnknownType(name.to_owned()))?
        .version;
    let version = stored_version(event).ok_or_else(|| DecodeError::UnknownVersion {
        event_type: name.to_owned(),
        found: 0,
        current,
    })?;
    let payload: Value =
        serde_json::from_slice(&event.payload).map_err(|e| DecodeError::NotJson {
            event_type: name.to_owned(),
            reason: e.to_string(),
        })?;
    let payload = upcasters.upcast(name, version, current, payload)?;
    E::decode(name, payload)
}

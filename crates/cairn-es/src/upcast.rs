//! Upcasting: turning the payload of an older schema version of an event type into the
//! current one, on read, one version step at a time.
//!
//! An upcaster reads version `v` of one event type and writes version `v + 1`; a chain of
//! them takes any stored version to the current one. [`Upcasters::check`] scans a store
//! for the versions it holds and refuses to go on when one has no path, naming the type
//! and version, so a missing upcaster is found when a service starts rather than when a
//! customer's old event is read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cairn_core::{
    EventFilter, EventStore, MAX_PAGE_SIZE, Position, ReadAll, ReadError, RecordedEvent,
};
use serde_json::Value;
use thiserror::Error;

use crate::{DecodeError, Event, SCHEMA_VERSION};

type Step = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// The upcasters of a set of event types. Cheap to clone.
///
/// # Examples
///
/// ```
/// use cairn_es::Upcasters;
/// use serde_json::json;
///
/// // Version 1 of `Deposited` had `cents`; version 2 has `amount` in whole units; version 3
/// // adds a `currency`.
/// let upcasters = Upcasters::new()
///     .add("Deposited", 1, |mut v| {
///         let cents = v["cents"].as_u64().ok_or("no cents")?;
///         v["amount"] = json!(cents / 100);
///         Ok(v)
///     })
///     .add("Deposited", 2, |mut v| {
///         v["currency"] = json!("EUR");
///         Ok(v)
///     });
/// let current = upcasters.upcast("Deposited", 1, 3, json!({ "cents": 500 })).unwrap();
/// assert_eq!(current["amount"], 5);
/// assert_eq!(current["currency"], "EUR");
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    /// Event type → version read → the step to the next version.
    steps: HashMap<String, BTreeMap<u32, Step>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (event_type, steps) in &self.steps {
            map.entry(event_type, &steps.keys().collect::<Vec<_>>());
        }
        map.finish()
    }
}

impl Upcasters {
    /// No upcasters: every stored event must be at its type's current version.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the step that turns version `from` of `event_type` into version `from + 1`
    /// (replacing an earlier step for the same version).
    #[must_use]
    pub fn add(
        mut self,
        event_type: impl Into<String>,
        from: u32,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps
            .entry(event_type.into())
            .or_default()
            .insert(from, Arc::new(step));
        self
    }

    /// Whether versions `from` to `current` of `event_type` are all bridged.
    pub fn has_path(&self, event_type: &str, from: u32, current: u32) -> bool {
        from == current
            || (from < current
                && self
                    .steps
                    .get(event_type)
                    .is_some_and(|steps| (from..current).all(|v| steps.contains_key(&v))))
    }

    /// Turns `payload`, at version `from` of `event_type`, into version `current`.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownVersion`] when `from` is newer than `current` (or 0),
    /// [`DecodeError::NoUpcastPath`] when a step is missing, [`DecodeError::Upcast`] when
    /// a step fails.
    pub fn upcast(
        &self,
        event_type: &str,
        from: u32,
        current: u32,
        mut payload: Value,
    ) -> Result<Value, DecodeError> {
        if from == 0 || from > current {
            return Err(DecodeError::UnknownVersion {
                event_type: event_type.to_owned(),
                found: from,
                current,
            });
        }
        if from == current {
            return Ok(payload);
        }
        let steps = self.steps.get(event_type);
        for version in from..current {
            let step = steps.and_then(|steps| steps.get(&version)).ok_or_else(|| {
                DecodeError::NoUpcastPath {
                    event_type: event_type.to_owned(),
                    from,
                    current,
                }
            })?;
            payload = step(payload).map_err(|reason| DecodeError::Upcast {
                event_type: event_type.to_owned(),
                from: version,
                reason,
            })?;
        }
        Ok(payload)
    }

    /// Scans `store` for every event of `E`'s types and checks that each stored version
    /// has a path to the current one. Run it when a service starts (the repository's
    /// builder does).
    ///
    /// # Errors
    ///
    /// [`CheckError::Unbridged`] naming the first type and version without a path (or
    /// newer than this build knows); [`CheckError::Read`] when the store cannot be read.
    pub async fn check<E: Event>(
        &self,
        store: &(impl EventStore + ?Sized),
    ) -> Result<(), CheckError> {
        let types = E::event_types();
        let current: HashMap<&str, u32> = types.iter().map(|t| (t.name, t.version)).collect();
        let filter = EventFilter::event_types(types.iter().map(|t| t.name));
        let mut seen: BTreeSet<(cairn_core::CompactString, u32)> = BTreeSet::new();
        let mut from = Position::START;
        loop {
            let page = store
                .read_all(
                    ReadAll::forwards()
                        .from_position(from)
                        .limit(MAX_PAGE_SIZE)
                        .filter(filter.clone()),
                )
                .await?;
            for event in &page.events {
                let version = stored_version(event).unwrap_or(0);
                if !seen.insert((event.event_type.clone(), version)) {
                    continue;
                }
                let Some(&now) = current.get(event.event_type.as_str()) else {
                    continue;
                };
                if !self.has_path(&event.event_type, version, now) {
                    return Err(CheckError::Unbridged {
                        event_type: event.event_type.to_string(),
                        version,
                        current: now,
                    });
                }
            }
            match page.next {
                Some(next) if !page.end => from = next,
                _ => return Ok(()),
            }
        }
    }
}

/// The schema version recorded with `event` (1 when none is: events written before
/// versions were recorded, or by another writer); `None` when it is malformed.
pub(crate) fn stored_version(event: &RecordedEvent) -> Option<u32> {
    match event.metadata.get(SCHEMA_VERSION) {
        None => Some(1),
        Some(text) => text.parse().ok().filter(|&v| v > 0),
    }
}

/// Why [`Upcasters::check`] refused a store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The store holds a version of a type that no chain of upcasters turns into the
    /// current one.
    #[error(
        "the store holds version {version} of event type `{event_type}`, and no upcasters lead from it to the current version {current}"
    )]
    Unbridged {
        /// The event type.
        event_type: String,
        /// The stored version (0 when the stored version is malformed).
        version: u32,
        /// The current version.
        current: u32,
    },
    /// Reading the store failed.
    #[error("reading the store to check event versions failed: {0}")]
    Read(#[from] ReadError),
}

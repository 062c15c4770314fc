//! Event sourcing on any Cairn [`EventStore`](cairn_core::EventStore).
//!
//! A domain is written as plain Rust: events are enums ([`Event`], usually derived with
//! `#[derive(Event)]`), and an aggregate is a decider: `decide(&state, &command)` returns
//! the events a command causes, `evolve(state, &event)` folds an event into the state.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---------|---------|--------------|
//! | `derive` | yes | `#[derive(Event)]` for event enums (from `cairn-macros`) |

mod event;

pub use event::{DecodeError, EncodeError, Event, EventType, SCHEMA_VERSION};

#[cfg(feature = "derive")]
pub use cairn_macros::Event;

/// What `#[derive(Event)]` expands to refers to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use serde_json;
}

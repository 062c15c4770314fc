//! Event sourcing on any Cairn [`EventStore`](cairn_core::EventStore).
//!
//! A domain is written as plain Rust: events are enums ([`Event`], usually derived with
//! `#[derive(Event)]`), and an aggregate is a [`Decider`]: `decide(&state, &command)`
//! returns the events a command causes, `evolve(state, &event)` folds an event into the
//! state (or an [`Aggregate`] with the same two as methods). A [`Repository`] runs
//! commands against a store: load (snapshot + tail), decide, append with the revision it
//! loaded, decide again on conflict. [`Upcasters`] read old event versions; the
//! [`testkit`] checks deciders with given / when / then.
//!
//! - [`event`](Event): stable type names and schema versions;
//! - [`Decider`], [`Aggregate`], [`AggregateDecider`];
//! - [`Repository`], [`RepositoryBuilder`], [`SnapshotPolicy`], [`CommandContext`];
//! - [`Upcasters`];
//! - [`testkit`].
//!
//! It is not a store: it runs unchanged on every `EventStore` (memory, the embedded log,
//! PostgreSQL).
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---------|---------|--------------|
//! | `testkit` | yes | [`testkit`]: given / when / then, whole flows on the in-memory store |
//! | `derive` | yes | `#[derive(Event)]` for event enums (from `cairn-macros`) |

mod codec;
mod context;
mod decider;
mod event;
mod repository;
#[cfg(feature = "testkit")]
pub mod testkit;
mod upcast;

pub use context::CommandContext;
pub use decider::{Aggregate, AggregateDecider, Decider};
pub use event::{DecodeError, EncodeError, Event, EventType, SCHEMA_VERSION};
pub use repository::{
    CommandError, DEFAULT_MAX_ATTEMPTS, Executed, LoadError, Loaded, Repository, RepositoryBuilder,
    SNAPSHOT_EVENT_TYPE, SNAPSHOT_REVISION, SNAPSHOT_VERSION, SnapshotPolicy,
};
pub use upcast::{CheckError, Upcasters};

#[cfg(feature = "derive")]
pub use cairn_macros::Event;

/// What `#[derive(Event)]` expands to refers to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use serde_json;
}

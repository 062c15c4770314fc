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
//! # Example
//!
//! A light switch that refuses to be switched on twice, run through a repository on the
//! in-memory store, and checked with the test kit:
//!
//! ```
//! use std::sync::Arc;
//!
//! use cairn_es::testkit::given;
//! use cairn_es::{CommandError, Decider, Event, Repository};
//! use cairn_memory::MemoryStore;
//!
//! #[derive(Debug, Clone, PartialEq, Event)]
//! #[event(version = 1)]
//! enum LightEvent {
//!     #[event(name = "light.switched-on")]
//!     SwitchedOn { by: String },
//!     #[event(name = "light.switched-off")]
//!     SwitchedOff,
//! }
//!
//! #[derive(Debug)]
//! enum LightCommand {
//!     On { by: String },
//!     Off,
//! }
//!
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! enum LightError {
//!     #[error("the light is on already")]
//!     AlreadyOn,
//! }
//!
//! struct Light;
//!
//! impl Decider for Light {
//!     const CATEGORY: &'static str = "light";
//!     type State = bool; // on?
//!     type Command = LightCommand;
//!     type Event = LightEvent;
//!     type Error = LightError;
//!
//!     fn decide(on: &bool, command: &LightCommand) -> Result<Vec<LightEvent>, LightError> {
//!         match command {
//!             LightCommand::On { .. } if *on => Err(LightError::AlreadyOn),
//!             LightCommand::On { by } => Ok(vec![LightEvent::SwitchedOn { by: by.clone() }]),
//!             LightCommand::Off if *on => Ok(vec![LightEvent::SwitchedOff]),
//!             LightCommand::Off => Ok(vec![]),
//!         }
//!     }
//!
//!     fn evolve(_: bool, event: &LightEvent) -> bool {
//!         matches!(event, LightEvent::SwitchedOn { .. })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The rules, without a store.
//! given::<Light>([])
//!     .when(LightCommand::On { by: "ada".into() })
//!     .then([LightEvent::SwitchedOn { by: "ada".into() }]);
//! given::<Light>([LightEvent::SwitchedOn { by: "ada".into() }])
//!     .when(LightCommand::On { by: "bob".into() })
//!     .then_error(LightError::AlreadyOn);
//!
//! // The same decider on a store (any EventStore: memory, the embedded log, PostgreSQL).
//! let repository = Repository::<Light, _>::builder(Arc::new(MemoryStore::new()))
//!     .build()
//!     .await
//!     .expect("a store whose events this build can read");
//! repository.execute("hall", LightCommand::On { by: "ada".into() }).await.unwrap();
//! let refused = repository.execute("hall", LightCommand::On { by: "bob".into() }).await;
//! assert!(matches!(refused, Err(CommandError::Rejected(LightError::AlreadyOn))));
//! assert!(repository.load("hall").await.unwrap().state);
//! # }
//! ```
//!
//! # Contents
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

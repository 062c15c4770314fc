//! # Cairn
//!
//! Cairn is an event store for event-driven systems: named streams of events with gapless
//! revisions, a global log (`$all`) in commit order, optimistic concurrency, idempotent
//! appends, filtered reads and catch-up subscriptions that never skip or repeat an event.
//! It runs embedded in a Rust service, and (with the `cairn` program) from the command line.
//!
//! This crate is the front door: it re-exports the vocabulary and the
//! [`EventStore`] contract of `cairn-core`, so `cairn::EventData`, `cairn::StreamName`,
//! `cairn::ExpectedRevision` and friends are one import away, and it gives each backend
//! a short module name:
//!
//! - [`log`]: the embedded durable store ([`log::LogStore`]), the default. A log of
//!   CRC-framed segment files in one data directory, flushed with `fdatasync` before an
//!   append is acknowledged (group commit shares flushes between concurrent appends).
//! - [`memory`]: the in-memory reference store ([`memory::MemoryStore`]), for tests of code
//!   built on Cairn.
//!
//! Code written against the [`EventStore`] trait runs on either.
//!
//! This crate holds no logic of its own: the contract lives in `cairn-core`, the engines in
//! their own crates. The `cairn` binary (feature `cli`) is built from this package too:
//! `cairn demo`, `append`, `read`, `tail`, `streams` and `bench`.
//!
//! # Examples
//!
//! ```
//! use cairn::log::{LogOptions, LogStore};
//! use cairn::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("cairn-facade-doc-{}", std::process::id()));
//! let store = LogStore::open(&dir, LogOptions::default())?;
//! let order = StreamName::new("order-42")?;
//! let placed = EventData::json("OrderPlaced", &serde_json::json!({ "total": 42 }))?
//!     .with_correlation_id("checkout-7");
//! let written = store
//!     .append(&order, ExpectedRevision::NoStream, vec![placed])
//!     .await?;
//! assert_eq!(written.revision.0, 0);
//!
//! let page = store.read_stream(&order, ReadStream::forwards()).await?;
//! assert_eq!(page.events[0].metadata.correlation_id(), Some("checkout-7"));
//! store.close().await?;
//! # drop(store);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! | Feature  | Default | What it adds |
//! |----------|---------|--------------|
//! | `log`    | yes     | [`log`]: the embedded durable store, `cairn-log`. |
//! | `memory` | yes     | [`memory`]: the in-memory reference store, `cairn-memory`. |
//! | `es`     | with `cli` | [`es`]: event sourcing (deciders, repository, snapshots, upcasting, test kit), `cairn-es`. |
//! | `bus`    | with `cli` | [`bus`]: the message bus (router, middleware, in-memory transport, outbox relay), `cairn-bus`. |
//! | `cli`    | yes     | The `cairn` program (command line and `cairn bench`); implies `log`, `es` and `bus`. A library user can turn it off with `default-features = false`. |
//! | `peers`  | no      | `cairn bench --compare postgres,nats`: the same workloads against PostgreSQL and NATS JetStream, side by side; implies `cli`. |
//! | `postgres` | no    | `cairn bench --store postgres`: the workloads on `cairn-postgres`, with its own targets, beside the naive insert of `--compare postgres`; implies `peers`. |

pub use cairn_core::*;

/// The embedded durable store: [`LogStore`](log::LogStore), opened on a data directory
/// with [`LogOptions`](log::LogOptions).
#[cfg(feature = "log")]
pub use cairn_log as log;

/// The in-memory reference store: [`MemoryStore`](memory::MemoryStore).
#[cfg(feature = "memory")]
pub use cairn_memory as memory;

/// Event sourcing on any store: `cairn-es`.
#[cfg(feature = "es")]
pub use cairn_es as es;

/// The message bus: messages, transports, the router and its middleware, the outbox
/// relay: `cairn-bus`.
#[cfg(feature = "bus")]
pub use cairn_bus as bus;

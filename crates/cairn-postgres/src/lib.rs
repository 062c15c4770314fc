//! Cairn's PostgreSQL event store: the [`EventStore`](cairn_core::EventStore) contract on
//! a PostgreSQL database (13 or newer), for teams that already run PostgreSQL or have
//! outgrown one machine.
//!
//! [`PgStore`] passes the same `cairn-conformance` suite as the other backends. Beside the
//! events, the same database holds an **outbox**, an **inbox** and **checkpoints**
//! ([`outbox`], [`inbox`], [`checkpoints`]), which an application writes in its own
//! transaction together with its events ([`PgStore::append_in_tx`]), so that a handler's
//! effects and its progress commit as one.
//!
//! # Examples
//!
//! ```no_run
//! use cairn_core::{EventData, EventStore, ExpectedRevision, StreamName};
//! use cairn_postgres::PgStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgStore::connect("postgres://app@127.0.0.1/app").await?;
//! let stream = StreamName::new("order-1")?;
//! store
//!     .append(&stream, ExpectedRevision::NoStream, vec![EventData::new("Placed", &b"{}"[..])])
//!     .await?;
//!
//! // The application's row and its event, atomically.
//! let mut tx = store.begin().await?;
//! sqlx::query("UPDATE orders SET state = 'paid' WHERE id = 1").execute(&mut *tx).await?;
//! store
//!     .append_in_tx(
//!         &mut tx,
//!         vec![cairn_core::StreamAppend::new(
//!             stream,
//!             ExpectedRevision::Exact(0),
//!             vec![EventData::new("Paid", &b"{}"[..])],
//!         )],
//!     )
//!     .await?;
//! tx.commit().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Schema
//!
//! Opening a store applies the embedded migrations ([`schema`]); tables are prefixed
//! `cairn_` and live in the connection's default schema. `cairn_streams` holds one row per
//! stream (its lifecycle and retention; its last revision is that of its last event);
//! `cairn_events` one row per event, keyed by position, unique by event id and by (stream,
//! revision). The functions `cairn_append_event`, `cairn_append_stream` and `cairn_append`
//! write appends of one event, of several to one stream and to several streams (one round
//! trip each), `cairn_append_batch` many combined appends in one transaction,
//! `cairn_lock_streams` takes the per-stream write locks for lifecycle
//! changes, and `cairn_read_all` reads a page of `$all` with its release horizon.
//!
//! # Gap safety: positions from transaction ids
//!
//! A position is `xid * 2^20 + rank`: the id of the transaction that wrote the event
//! (`pg_current_xact_id()`) and the event's rank inside that transaction. Readers of `$all`
//! are handed only positions below `pg_snapshot_xmin(pg_current_snapshot()) * 2^20`, the
//! oldest transaction still in flight: everything below it has committed or never will, and
//! every transaction that could still write has a larger id. So a reader can never skip an
//! event that commits late with a smaller position, and no writer waits for another one:
//! writers of different streams share no lock (each stream has an advisory lock of its
//! own, taken before the transaction has an id, so that positions follow revisions inside
//! a stream). An append acknowledged before another starts
//! has the smaller positions, because the later one's transaction id is larger.
//!
//! The price: events of a committed transaction are held back while an older transaction
//! of this database is still running, and `$all` reads wait for it
//! ([`PgOptions::release_timeout`]); long transactions, including the application's own
//! around [`PgStore::append_in_tx`], delay `$all` readers. Transaction ids belong to the
//! whole cluster, so the plain horizon also waits for other databases' transactions; when
//! it has not moved for 20 ms, a read also asks for the horizon of this database
//! (`cairn_release_horizon`), which passes every transaction that holds a lock in another
//! database (one that has locked nothing there yet, and `DROP DATABASE`, still count). One transaction writes at most
//! [`MAX_EVENTS_PER_TRANSACTION`] events, and positions stay within `bigint` for 2^43
//! transaction ids of the cluster's life.
//!
//! # Concurrent appends share a transaction
//!
//! Appends to one stream that run concurrently on one store (outside the caller's
//! transaction) are combined: one that finds [`PgOptions::append_transactions`] append
//! transactions in flight queues, and the next transaction to start writes every queued
//! append in one call and one commit (`cairn_append_batch`), each judged on its own, in
//! queue order. A lone writer runs at once. A combined transaction never waits for a
//! stream's lock: appends to a stream another transaction holds run on their own, so a
//! held stream holds up only its own writers. An append is acknowledged only after the
//! transaction that wrote it committed; see `combine.rs` for the failure cases.
//!
//! # Live subscriptions
//!
//! Subscriptions use the shared driver of `cairn-core`; they are woken by this process's
//! commits and by `LISTEN`/`NOTIFY` from every process, and poll every
//! [`PgOptions::poll_interval`] as the fallback. Their reads retry through a lost
//! connection ([`PgOptions::subscription_retry`]), resuming from their cursor, so they
//! neither lose nor repeat an event.
//!
//! # Errors
//!
//! Contract operations return the contract's errors. Database failures become
//! [`StorageError`](cairn_core::StorageError)s whose kind says whether a retry can help: a
//! lost connection, an exhausted pool (after [`PgOptions::acquire_timeout`]) or a
//! serialization failure are [`Unavailable`](cairn_core::StorageErrorKind::Unavailable).
//! Opening fails with [`ConnectError`], which names the URL without its password.

#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

mod append;
pub mod checkpoints;
mod combine;
mod error;
pub mod inbox;
mod lifecycle;
mod notify;
mod options;
pub mod outbox;
mod parking;
mod read;
pub mod schema;
mod store;

pub use append::MAX_EVENTS_PER_TRANSACTION;
pub use combine::{MAX_COMBINED_BYTES, MAX_COMBINED_EVENTS, MAX_EVENTS_TO_COMBINE};
pub use error::{ConnectError, SchemaError, TableError, redact_url};
pub use notify::CHANNEL;
pub use options::{DEFAULT_APPEND_TRANSACTIONS, PgOptions};
pub use schema::SCHEMA_VERSION;
pub use store::PgStore;

pub use sqlx;

/// The longest consumer, subscriber or topic name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Checks a consumer, subscriber or topic name: 1 to [`MAX_NAME_LEN`] bytes, no control
/// characters.
fn validate_name(what: &'static str, name: &str) -> Result<(), TableError> {
    let reason = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > MAX_NAME_LEN {
        format!("it is {} bytes; the limit is {MAX_NAME_LEN}", name.len())
    } else if name.chars().any(char::is_control) {
        "it contains a control character".to_owned()
    } else {
        return Ok(());
    };
    Err(TableError::Invalid { what, reason })
}

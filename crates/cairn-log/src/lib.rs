//! Cairn's embedded durable event store, the default backend: [`LogStore`].
//!
//! The log is the source of truth: fixed-size, preallocated segment files of
//! CRC32C-framed records, written sequentially by one writer thread. Concurrent appends are
//! gathered into one write and one `fdatasync` (group commit), and acknowledged only after
//! it, unless a weaker [`Durability`] was chosen by name. Everything else (which revision of
//! which stream lies where, which event ids exist) is an index derived from the log, rebuilt
//! by replaying it. The byte layout is specified in `FORMAT.md`.
//!
//! All file I/O goes through the [`Storage`] trait, so tests run the engine on
//! [`faulty::FaultyStorage`], which tears writes, loses what was not flushed and fails
//! flushes on command.
//!
//! This crate is not a server and has no network protocol: it is a library that one
//! process embeds, and that process owns the data directory exclusively.
//!
//! # Examples
//!
//! ```
//! use cairn_core::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName};
//! use cairn_log::{LogOptions, LogStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # let dir = std::env::temp_dir().join(format!("cairn-log-doc-{}", std::process::id()));
//! let store = LogStore::open(&dir, LogOptions::default()).unwrap();
//! let stream = StreamName::new("order-1").unwrap();
//! let placed = EventData::new("OrderPlaced", &br#"{"total":42}"#[..]);
//! store.append(&stream, ExpectedRevision::NoStream, vec![placed]).await.unwrap();
//!
//! let page = store.read_stream(&stream, ReadStream::forwards()).await.unwrap();
//! assert_eq!(page.events[0].event_type, "OrderPlaced");
//! store.close().await.unwrap();
//! # drop(store);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # }
//! ```
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

mod checkpoints;
pub mod faulty;
mod format;
mod ids;
mod index;
mod options;
mod recovery;
mod scan;
mod scavenge;
mod segments;
mod snapshot;
pub mod storage;
mod store;
mod writer;

pub use checkpoints::FileCheckpoints;
pub use options::{
    DEFAULT_SEGMENT_SIZE, Durability, LogOptions, MIN_SEGMENT_SIZE, OpenError, ParseDurabilityError,
};
pub use scavenge::ScavengeReport;
pub use segments::Preallocation;
pub use storage::{OpenMode, OsStorage, Storage, StorageFile};
pub use store::LogStore;

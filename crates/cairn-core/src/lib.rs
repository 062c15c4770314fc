//! Cairn's vocabulary: the event envelope, the [`EventStore`] contract and its errors.
//!
//! This crate holds traits and plain data only. It knows no storage, broker, HTTP stack
//! or async runtime; backends (`cairn-memory`, `cairn-log`, `cairn-postgres`) implement
//! [`EventStore`] and prove it with `cairn-conformance`.
//!
//! # The contract in one screen
//!
//! - A **stream** is a named, ordered sequence of events ([`StreamName`]); each event has a
//!   gapless [`Revision`] in its stream and a [`Position`] in the global log, `$all`, that
//!   increases in commit order.
//! - [`EventStore::append`] is atomic and optimistic: it takes an [`ExpectedRevision`] and
//!   fails with a typed conflict carrying the actual revision. [`EventStore::append_multi`]
//!   commits several streams at once, all or nothing.
//! - Appends are **idempotent** by event id: a retry returns the first result and writes
//!   nothing.
//! - Reads page through a stream ([`ReadStream`]) or through `$all` ([`ReadAll`], with an
//!   [`EventFilter`]); subscriptions ([`SubscribeAll`], [`SubscribeStream`]) catch up and
//!   then follow live, with no gap or duplicate, in bounded memory.
//! - Streams have retention ([`StreamMetadata`]), soft delete and tombstones; hidden events
//!   are invisible everywhere at once.
//!
//! # Examples
//!
//! Writing code against the trait, so that it runs on any backend:
//!
//! ```
//! use cairn_core::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName, WriteError};
//!
//! async fn open_account(store: &impl EventStore, id: &str) -> Result<(), WriteError> {
//!     let stream = StreamName::new(format!("account-{id}")).expect("valid name");
//!     let opened = EventData::json("AccountOpened", &serde_json::json!({ "id": id }))
//!         .expect("serializable");
//!     store.append(&stream, ExpectedRevision::NoStream, vec![opened]).await?;
//!     Ok(())
//! }
//! ```

mod checkpoint;
mod error;
mod event;
mod hash;
mod id;
mod lifecycle;
mod name;
mod position;
mod read;
mod store;
pub mod subscription;

pub use checkpoint::{
    CheckpointError, Checkpoints, MAX_SUBSCRIBER_NAME_LEN, validate_subscriber_name,
};
pub use error::{ReadError, StorageError, StorageErrorKind, SubscriptionError, WriteError};
pub use event::{
    CLOUDEVENTS_SPEC_VERSION, DEFAULT_CONTENT_TYPE, EventData, MAX_EVENT_TYPE_LEN, Metadata,
    RecordedEvent, Timestamp,
};
pub use hash::{KeyedHash, KeyedHasher};
pub use id::new_id;
pub use lifecycle::{StreamInfo, StreamMetadata, StreamState, Visibility};
pub use name::{InvalidStreamName, MAX_STREAM_NAME_LEN, StreamName, category_of};
pub use position::{CurrentRevision, ExpectedRevision, Position, Revision};
pub use read::{
    AllPage, DEFAULT_PAGE_SIZE, Direction, EventFilter, MAX_PAGE_BYTES, MAX_PAGE_SIZE, ReadAll,
    ReadStream, StreamPage, page_limit,
};
pub use store::{
    AppendResult, DEFAULT_MAX_EVENT_SIZE, EventStore, MAX_LIST_STREAMS, StoreLimits, StreamAppend,
    validate_appends,
};
pub use subscription::{
    OnFallingBehind, SubscribeAll, SubscribeStream, Subscription, SubscriptionMessage,
    SubscriptionOptions, SubscriptionStart,
};

pub use bytes::Bytes;
pub use compact_str::{CompactString, ToCompactString, format_compact};
pub use uuid::Uuid;

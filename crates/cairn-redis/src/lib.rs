//! Redis Streams as a transport for Cairn's message bus: [`RedisTransport`] implements
//! [`Publisher`](cairn_bus::Publisher) and [`Subscriber`](cairn_bus::Subscriber) over the
//! `redis` client, and passes `cairn-conformance`'s transport suite against a real server.
//!
//! # The mapping
//!
//! | Cairn | Redis |
//! |---|---|
//! | topic `t` | the stream `<prefix>:t` ([`RedisOptions::prefix`]), one entry per message |
//! | message | an entry of two fields: `cairn-meta`, the id, type, source, key, content type and headers in a small versioned binary layout, and `payload`, the payload as it is (see [`codec`]) |
//! | publish | one `XADD` per message, the batch pipelined in one round trip (not a transaction: after an error, part of the batch may be stored, as the `Publisher` contract allows) |
//! | group | a consumer group, created at the group's first subscription (`XGROUP CREATE ... $ MKSTREAM`): it gets what is published from then on |
//! | subscription | a consumer of the group (a fresh name each time) reading with `XREADGROUP ... >` |
//! | prefetch | the subscription's slots: each read asks for `COUNT` = free slots, and a delivery holds its slot until answered |
//! | ack | `XACK`; acks that arrive while one is on its way go together in the next |
//! | nack | the entry stays pending; it is claimed again (`XCLAIM`, which counts a delivery) and handed out again, at once or when the delay is up |
//! | attempt | the entry's delivery count (`XPENDING`), 1 for a first read |
//! | a dead consumer | its pending entries, idle longer than [`RedisOptions::claim_idle`], are taken over by another consumer of the group (`XPENDING` and `XCLAIM` in one script, as `XAUTOCLAIM` would, except that a consumer does not claim its own entries that it still tracks) |
//! | lag | `lag` + `pending` of the group in `XINFO GROUPS` |
//!
//! Two fields per entry, rather than one per attribute, because the client parses every
//! element of an `XREADGROUP` reply one by one, and that parsing is the largest cost of
//! consuming: an entry is now its id, its field list and four elements, where a field per
//! attribute made ten or more. `redis-cli` still shows each payload as it was published.
//! Entries without `cairn-meta` (written by earlier releases, or by other producers, one
//! field per attribute) are still read, leniently, so a stream upgraded mid-way loses
//! nothing. The other way round does not hold: an earlier release reads an entry of two
//! fields as a message with no type and an id made of the entry id, which its router
//! cannot route, so upgrade the consumers of a topic before its producers.
//!
//! A live subscription refreshes the idle time of every entry it holds (`XCLAIM ...
//! JUSTID` on the entries it still owns) three times per `claim_idle`, so a slow handler
//! keeps its message; only a consumer that stopped (its process died, its stream was
//! dropped) loses its entries to the others. A delivery handed out before its
//! subscription's connection dropped is handed out again after the reconnect, as the next
//! attempt; answering the old one then returns an error carrying [`StaleDelivery`] and
//! changes nothing.
//!
//! # Limits, honestly
//!
//! - **Durability** is the server's: `publish` returns once the server has executed the
//!   `XADD`s. With `appendonly yes` and `appendfsync always` they are on disk by then;
//!   with the defaults (`everysec`, or no persistence at all) a crash of the server loses
//!   what it had not written. There is no replication wait (`WAIT`).
//! - **No de-duplication on publish**: Redis has no message-id de-duplication, so a
//!   publish retried after an error may store some of its messages twice (same message
//!   id): the outcome of an error on the wire is unknown, and a batch is not a
//!   transaction, so when one `XADD` fails the others are stored. The inbox
//!   (`cairn_bus::dedup`) makes the duplicates harmless.
//! - **Nack delays live in the subscription**: an entry nacked with a delay stays pending
//!   under its consumer, which holds it back until it is due. If that consumer dies
//!   meanwhile, another takes the entry over after `claim_idle`, which may be before the
//!   delay is up.
//! - **Order**: one consumer sees each topic's entries in publish order, except that
//!   redeliveries (after a nack, a reconnect or a reclaim) come when they come, after
//!   newer entries. Per-key order therefore holds only as long as nothing is redelivered,
//!   as with the in-memory broker.
//! - **Dead letters** are not the broker's: the router's dead-letter middleware parks
//!   messages; Redis only counts deliveries.
//! - **Entries that cannot be read** (a `cairn-meta` field of a version this release does
//!   not know, written by a newer one, or damaged; see [`MetaError`]) are not handed out:
//!   the subscription reports each as an error item on its stream, a
//!   [`TransportError::Broker`] carrying [`UndecodableEntry`] (stream, entry id, reason),
//!   and leaves it pending. It is never acknowledged, so it is not lost: after
//!   [`RedisOptions::claim_idle`] a consumer of the group takes it over, and one that
//!   knows its version handles it; until then it is reported again every `claim_idle`
//!   and holds back trimming. Start consumers that know a new version before producers
//!   that write it. An entry nobody will ever read is removed by hand (`XACK <stream>
//!   <group> <id>`).
//! - **Stopping**: a subscription whose stream is dropped while a read is on its way may
//!   leave the entries of that read pending under its name; they go to another consumer
//!   after `claim_idle`, as the next attempt. Entries it handed out and that are still
//!   held stay answerable, but are no longer refreshed, so another consumer may take them
//!   over after `claim_idle`.
//! - **Retention**: each subscription trims its stream every
//!   [`RedisOptions::tidy_interval`] of the entries that every group has acknowledged
//!   (below each group's oldest pending or last delivered entry, `XTRIM MINID`), and
//!   removes consumers idle for [`RedisOptions::consumer_idle_limit`] with nothing
//!   pending. A topic nobody subscribes to is never trimmed; [`RedisOptions::max_len`]
//!   caps every stream on `XADD` (`MAXLEN ~`) for that case, at the price of dropping
//!   entries a slow group has not read. Entries trimmed while pending are lost (logged).
//! - **A group that disappears** while subscribed (a server restarted without
//!   persistence, say) is created again, from the start of the stream as it then is.
//! - **Cluster** is not supported: the client connects to one server.
//!
//! # Connections and errors
//!
//! [`RedisTransport::connect`] checks that the server answers and accepts the
//! credentials: an unreachable server is [`TransportError::Unreachable`] naming the
//! endpoint (the URL with its password replaced by `***`, see [`redact`]), wrong
//! credentials or missing permissions are [`TransportError::Refused`]. Afterwards the
//! shared connection reconnects by itself on the next command, and each subscription
//! reconnects its reading connection with backoff, reporting each failed attempt as an
//! error item on its stream and carrying on.
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `tls` | `rediss://` URLs, through rustls; the application installs a rustls crypto provider before connecting |
//!
//! [`TransportError::Unreachable`]: cairn_bus::TransportError::Unreachable
//! [`TransportError::Refused`]: cairn_bus::TransportError::Refused
//! [`TransportError::Broker`]: cairn_bus::TransportError::Broker

pub mod codec;
mod error;
mod options;
mod scripts;
mod subscription;
mod transport;

pub use codec::MetaError;
pub use error::{StaleDelivery, UndecodableEntry, redact};
pub use options::{DEFAULT_CLAIM_IDLE, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PREFIX, RedisOptions};
pub use transport::RedisTransport;

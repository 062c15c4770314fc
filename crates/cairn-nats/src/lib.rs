//! Cairn's message bus over NATS JetStream: [`NatsTransport`] implements `cairn-bus`'s
//! [`Publisher`](cairn_bus::Publisher) and [`Subscriber`](cairn_bus::Subscriber) with
//! `async-nats`, and passes `cairn-conformance`'s transport suite against a real server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_bus::TransportError> {
//! use cairn_bus::{Message, Publisher, Subscriber, SubscriptionSpec};
//! use cairn_nats::NatsTransport;
//!
//! let nats = NatsTransport::connect("nats://127.0.0.1:4222").await?;
//! let deliveries = nats.subscribe(&SubscriptionSpec::new("orders", "billing")).await?;
//! nats.publish("orders", vec![Message::new("order.placed", "{}")]).await?;
//! # drop(deliveries);
//! # Ok(())
//! # }
//! ```
//!
//! # How the bus maps onto JetStream
//!
//! | Cairn | JetStream |
//! |---|---|
//! | topic `t` | the stream `{namespace}-t` holding the one subject `{namespace}.t` ([`NatsOptions::namespace`], default `cairn`), created on first use, file storage |
//! | group `g` | the durable pull consumer `g` on that stream: explicit acks, deliver policy *new* |
//! | [`publish`](cairn_bus::Publisher::publish) | one JetStream publish per message, all sent before any ack is awaited, then every `PubAck` awaited (slices of 1,024 for larger batches): `Ok` means the stream stored every message |
//! | message id | `Nats-Msg-Id`: a second publish of an id within [`NatsOptions::duplicate_window`] (default 2 min) is acknowledged and not stored again |
//! | other message fields | NATS headers after the CloudEvents NATS binding (`ce-type`, `ce-source`, `ce-subject` for the key, `content-type`, application headers as they are); see [`codec`] |
//! | `ack()` | `+ACK`, confirmed by the server unless [`NatsOptions::confirm_answers`] is off; one confirmation covers every answer sent since the previous one (see [`subscription`]) |
//! | `nack(None)` / `nack(Some(d))` | `-NAK` / `-NAK {"delay": d}`: delivered again at once / not before `d` |
//! | delivery dropped unanswered | `-NAK` sent on its own |
//! | `attempt` | the delivery count in the message's reply subject (`num_delivered`) |
//! | prefetch | pull requests for at most `prefetch − unanswered − already requested` messages, per subscription (see [`subscription`]) |
//! | group-wide bound | the consumer's `max_ack_pending` ([`NatsOptions::max_ack_pending`], default 20,000) |
//! | consumer death | the server redelivers what it held after `ack_wait` ([`NatsOptions::ack_wait`], default 30 s) |
//! | [`lag`](cairn_bus::Subscriber::lag) | the consumer's `num_pending + num_ack_pending` from `CONSUMER.INFO` |
//!
//! **Groups and history.** A group's consumer starts at the messages published after it
//! was created (deliver policy *new*), as a group of the in-memory transport does, so a
//! group never sees what was published before it existed. With the default
//! [`Retention::Limits`] a stream keeps messages by age, count and size
//! ([`NatsOptions::max_age`] — seven days by default —, [`NatsOptions::max_messages`],
//! [`NatsOptions::max_bytes`]), oldest dropped first, acknowledged or not: a group that
//! falls further behind than that loses what was trimmed. [`Retention::Interest`] drops a
//! message once every group acknowledged it instead, but lost confirmed messages across
//! a server restart in our tests against nats-server 2.9, so it is not the default.
//!
//! **Prefetch.** JetStream's `max_ack_pending` is one number for the whole consumer, so it
//! cannot be a per-subscription prefetch (two consumers of a group with prefetch 1 would
//! share a single delivery). Each subscription therefore bounds itself: it never asks the
//! server for more than its prefetch leaves room for, and never hands out more than its
//! prefetch; `max_ack_pending` is the group's ceiling above that.
//!
//! **Dead letters.** By default the server redelivers a message for as long as it is
//! nacked ([`NatsOptions::max_deliver`] `None`): retries and dead letters are the bus's
//! middleware's business, which parks a failing message with its error where it can be
//! inspected and replayed. Setting `max_deliver` makes the server give up on a message
//! after that many deliveries: it then stays in the stream unacknowledged, is never
//! delivered again, and the server only announces it on
//! `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<group>` — it does not reach
//! Cairn's dead letters.
//!
//! **Reconnection.** The client reconnects by itself (pauses doubling from 25 ms up to
//! [`NatsOptions::max_reconnect_delay`]); subscriptions renew their pull requests after
//! each reconnection, so a [`Deliveries`](cairn_bus::Deliveries) stream goes on without a
//! new `subscribe`. A publish whose acks were lost with the connection fails with
//! `Timeout` after [`NatsOptions::request_timeout`]; publishing it again with the same ids
//! is safe (de-duplication). Answers to deliveries from before a break may fail; the
//! messages come back after `ack_wait`.
//!
//! **Durability.** What a `PubAck` confirmed is in the stream's file storage. It survives
//! a clean server stop and restart (SIGTERM; `tests/restart.rs` checks it with the server
//! down for longer than a publish waits). Beyond that this crate promises nothing the
//! server does not: nats-server 2.9, on which it is tested, syncs its files to disk only
//! every two minutes and has no setting to sync sooner (`sync_interval` came with later
//! servers), so a machine crash can lose up to two minutes of confirmed messages; a
//! server killed with SIGKILL is not tested here and may lose what it had not yet written.
//! A replicated stream (an R3 cluster) is JetStream's answer to both; this crate creates
//! single-replica streams.
//!
//! **Sizes.** [`max_message_size`](cairn_bus::Publisher::max_message_size) is the server's
//! `max_payload` (1 MiB by default) less [`HEADER_ROOM`] for the headers, capped by
//! [`NatsOptions::max_message_size`]. A message with so many headers that its wire size
//! still exceeds `max_payload` is refused with `PayloadTooLarge` giving that wire size and
//! `max_payload`.
//!
//! **Names.** Topics, groups and the namespace are 1 to [`names::MAX_NAME_LEN`] ASCII
//! letters, digits, `-` or `_`; anything else is [`TransportError::Invalid`].
//!
//! # Connecting
//!
//! `nats://[user:password@|token@]host[:port]`, or `tls://...` with the `tls` feature (see
//! [`Endpoint`]). Passwords and tokens never appear in errors, `Debug` or `Display`.
//! Unreachable servers give [`TransportError::Unreachable`] naming the endpoint; rejected
//! credentials give [`TransportError::Refused`]; permission violations and JetStream being
//! disabled come back as `Refused` from the requests they stop.
//!
//! # Feature flags
//!
//! | Feature | Enables |
//! |---|---|
//! | `tls` | TLS through rustls with the ring provider: `tls://` URLs and servers that require TLS, verified against the system's roots |
//!
//! # Limits
//!
//! - Ordering: one consumer sees a key's messages in publish order until one is nacked
//!   or redelivered; redeliveries come when their delay or `ack_wait` says, not in place.
//! - A handler running longer than `ack_wait` sees its message delivered a second time
//!   (the inbox makes it harmless); raise `ack_wait` for slow handlers.
//! - Existing streams and consumers keep the configuration they were created with; this
//!   crate does not update them.
//!
//! [`TransportError::Invalid`]: cairn_bus::TransportError::Invalid
//! [`TransportError::Unreachable`]: cairn_bus::TransportError::Unreachable
//! [`TransportError::Refused`]: cairn_bus::TransportError::Refused

pub mod codec;
mod endpoint;
mod error;
pub mod names;
mod options;
pub mod subscription;
mod transport;

pub use endpoint::Endpoint;
pub use options::{NatsOptions, Retention, Storage};
pub use transport::{HEADER_ROOM, NatsTransport};

//! [`NatsTransport`]: one connection to a NATS server, publishing to and consuming from
//! JetStream streams as Cairn's [`Publisher`] and [`Subscriber`].

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, context::ContextBuilder};
use async_nats::{Client, ConnectOptions, Event, Subject};
use async_trait::async_trait;
use cairn_bus::{Deliveries, Message, Publisher, Subscriber, SubscriptionSpec, TransportError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{self, Encoded};
use crate::endpoint::{Credentials, Endpoint};
use crate::options::{NatsOptions, Retention, Storage};
use crate::{error, names, subscription};

/// Room left in the server's `max_payload` for the headers around a message's own bytes
/// when telling [`Publisher::max_message_size`]: the id as text, the header names and
/// separators of the attributes and of a few dozen application headers.
pub const HEADER_ROOM: usize = 512;

/// The most publishes one [`Publisher::publish`] call has waiting for their acks at once;
/// a larger batch goes out in slices of this many.
const PIPELINE: usize = 1_024;

/// A connection to a NATS server with JetStream, as a Cairn transport. Cloning gives
/// another handle to the same connection.
///
/// The connection closes once every handle and every [`Deliveries`] stream it gave are
/// dropped (deliveries still held then answer with [`TransportError::Closed`]), or at
/// [`close`](Self::close).
#[derive(Clone)]
pub struct NatsTransport {
    shared: Arc<Shared>,
}

/// What the handles, the subscriptions' tasks and (weakly) the deliveries share.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) options: NatsOptions,
    pub(crate) endpoint: Endpoint,
    /// The topics whose stream is known to exist; written by `ensure_stream`, read by
    /// every publish.
    streams: RwLock<HashSet<String>>,
    max_message_size: usize,
    server_max_payload: usize,
    /// Counts the client's (re)connections; the event callback writes it, subscriptions
    /// watch it to renew their pull requests.
    pub(crate) reconnects: watch::Receiver<u64>,
    /// Where subscriptions run; [`NatsTransport::close`] waits on it.
    pub(crate) tasks: TaskTracker,
    /// Cancelled by [`NatsTransport::close`]; every subscription's token is a child.
    pub(crate) shutdown: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTransport")
            .field("endpoint", &self.shared.endpoint)
            .field("namespace", &self.shared.options.namespace)
            .field("max_message_size", &self.shared.max_message_size)
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// Connects to the server at `url` with the default [`NatsOptions`].
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self, TransportError> {
        Self::connect_with(url, NatsOptions::default()).await
    }

    /// Connects to the server at `url` (see [`Endpoint`](crate::Endpoint) for the forms
    /// accepted). Once connected, the client reconnects by itself for as long as the
    /// transport lives.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a malformed URL or namespace,
    /// [`TransportError::Unreachable`] (naming the endpoint, never its password) when the
    /// server cannot be reached within [`NatsOptions::connect_timeout`], and
    /// [`TransportError::Refused`] when it rejects the credentials.
    pub async fn connect_with(url: &str, options: NatsOptions) -> Result<Self, TransportError> {
        names::check("namespace", &options.namespace)?;
        let endpoint = Endpoint::parse(url)?;
        let (generation, reconnects) = watch::channel(0u64);
        let max_delay = options.max_reconnect_delay;
        let mut connect = ConnectOptions::new()
            .name("cairn")
            .connection_timeout(options.connect_timeout)
            .ping_interval(options.ping_interval)
            .request_timeout(Some(options.request_timeout))
            .ignore_discovered_servers()
            .reconnect_delay_callback(move |attempts| {
                let exponent = u32::try_from(attempts.min(8)).unwrap_or(8);
                (Duration::from_millis(25) * 2u32.pow(exponent)).min(max_delay)
            })
            .event_callback(move |event| {
                match &event {
                    Event::Connected => {
                        generation.send_modify(|count| *count += 1);
                        tracing::debug!("connected to NATS");
                    }
                    Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
                std::future::ready(())
            });
        connect = match endpoint.credentials() {
            Credentials::None => connect,
            Credentials::UserPassword { user, password } => {
                connect.user_and_password(user.clone(), password.clone())
            }
            Credentials::Token(token) => connect.token(token.clone()),
        };
        let patience = options.connect_timeout + Duration::from_secs(1);
        let client = match tokio::time::timeout(patience, connect.connect(endpoint.address())).await
        {
            Err(_) => {
                return Err(TransportError::Unreachable {
                    endpoint: endpoint.to_string(),
                    source: format!("no connection within {patience:?}").into(),
                });
            }
            Ok(Err(cause)) => return Err(error::connect(&endpoint, cause)),
            Ok(Ok(client)) => client,
        };
        let server_max_payload = client.server_info().max_payload;
        let max_message_size = options
            .max_message_size
            .min(server_max_payload.saturating_sub(HEADER_ROOM));
        let jetstream = ContextBuilder::new()
            .timeout(options.request_timeout)
            .max_ack_inflight(1 << 24)
            .build(client.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                jetstream,
                options,
                endpoint,
                streams: RwLock::default(),
                max_message_size,
                server_max_payload,
                reconnects,
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// The options this transport was connected with.
    pub fn options(&self) -> &NatsOptions {
        &self.shared.options
    }

    /// The server, as it may be printed.
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// Ends every subscription of this transport (their [`Deliveries`] streams end, the
    /// deliveries they had taken but not handed out are given back), waits for that, and
    /// closes the connection after flushing what was sent.
    ///
    /// # Errors
    ///
    /// When the client could not flush and close the connection.
    pub async fn close(self) -> Result<(), TransportError> {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared
            .client
            .drain()
            .await
            .map_err(|cause| TransportError::Broker {
                operation: "closing the connection".to_owned(),
                source: Box::new(cause),
            })
    }

    /// How many times the client has connected: 1, plus one per reconnection after a
    /// dropped connection.
    pub fn connections(&self) -> u64 {
        *self.shared.reconnects.borrow()
    }

    /// The name of the JetStream stream holding `topic`.
    pub fn stream_name(&self, topic: &str) -> String {
        names::stream(&self.shared.options.namespace, topic)
    }

    /// Deletes the stream of `topic` with its groups and messages; `Ok(false)` when there
    /// was none.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a bad topic name, and connection or server errors.
    pub async fn delete_topic(&self, topic: &str) -> Result<bool, TransportError> {
        names::check("topic", topic)?;
        self.shared.forget_stream(topic);
        let name = self.stream_name(topic);
        match self.shared.jetstream.delete_stream(&name).await {
            Ok(status) => Ok(status.success),
            Err(cause) if cause.to_string().contains("not found") => Ok(false),
            Err(cause) => Err(error::request(
                format!("deleting the stream {name}"),
                self.shared.options.request_timeout,
                cause,
            )),
        }
    }

    async fn send_all(&self, subject: &Subject, encoded: Vec<Encoded>) -> Result<(), Failed> {
        let mut encoded = encoded.into_iter().peekable();
        let mut acks = Vec::with_capacity(encoded.len().min(PIPELINE));
        while encoded.peek().is_some() {
            for message in encoded.by_ref().take(PIPELINE) {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(message.payload)
                    .headers(message.headers);
                let ack = self
                    .shared
                    .jetstream
                    .send_publish(subject.clone(), publish)
                    .await
                    .map_err(Failed::from_publish)?;
                acks.push(ack);
            }
            for ack in acks.drain(..) {
                ack.await.map_err(Failed::from_publish)?;
            }
        }
        Ok(())
    }
}

/// Why sending a batch failed.
enum Failed {
    /// No stream takes the subject (it was deleted since it was created).
    NoStream,
    Other(async_nats::jetstream::context::PublishError),
}

impl Failed {
    fn from_publish(error: async_nats::jetstream::context::PublishError) -> Self {
        if error.kind() == PublishErrorKind::StreamNotFound {
            Self::NoStream
        } else {
            Self::Other(error)
        }
    }
}

impl Shared {
    /// Creates the stream of `topic` unless this transport already knows it exists.
    pub(crate) async fn ensure_stream(&self, topic: &str) -> Result<(), TransportError> {
        if self
            .streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
        {
            return Ok(());
        }
        let options = &self.options;
        let name = names::stream(&options.namespace, topic);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![names::subject(&options.namespace, topic)],
            storage: match options.storage {
                Storage::File => StorageType::File,
                Storage::Memory => StorageType::Memory,
            },
            retention: match options.retention {
                Retention::Interest => RetentionPolicy::Interest,
                Retention::Limits => RetentionPolicy::Limits,
            },
            discard: DiscardPolicy::Old,
            max_age: options.max_age,
            max_messages: options.max_messages.unwrap_or(-1),
            max_bytes: options.max_bytes.unwrap_or(-1),
            max_message_size: -1,
            max_consumers: -1,
            max_messages_per_subject: -1,
            duplicate_window: options.duplicate_window,
            num_replicas: 1,
            ..Default::default()
        };
        self.jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|cause| {
                error::request(
                    format!("creating the stream {name}"),
                    options.request_timeout,
                    cause,
                )
            })?;
        self.streams
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_owned());
        Ok(())
    }

    /// Forgets that the stream of `topic` exists, so that the next use creates it again.
    pub(crate) fn forget_stream(&self, topic: &str) {
        self.streams
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(topic);
    }
}

#[async_trait]
impl Publisher for NatsTransport {
    /// Publishes every message to the topic's subject with its id as `Nats-Msg-Id`, all
    /// at once, then waits for every JetStream ack. A message whose id the stream saw
    /// within its duplicate window is acknowledged without being stored again.
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TransportError> {
        names::check("topic", topic)?;
        let max = self.shared.max_message_size;
        for message in &messages {
            let size = message.encoded_len();
            if size > max {
                return Err(TransportError::PayloadTooLarge {
                    id: message.id,
                    size,
                    max,
                });
            }
        }
        let encode_all = || -> Result<Vec<Encoded>, TransportError> {
            messages
                .iter()
                .map(|message| {
                    let encoded = codec::encode(message);
                    if encoded.wire_len > self.shared.server_max_payload {
                        return Err(TransportError::PayloadTooLarge {
                            id: message.id,
                            size: encoded.wire_len,
                            max: self.shared.server_max_payload,
                        });
                    }
                    Ok(encoded)
                })
                .collect()
        };
        let encoded = encode_all()?;
        if encoded.is_empty() {
            return Ok(());
        }
        self.shared.ensure_stream(topic).await?;
        let subject = Subject::from(names::subject(&self.shared.options.namespace, topic));
        let timeout = self.shared.options.request_timeout;
        let operation = || format!("publishing {} messages to {topic}", messages.len());
        match self.send_all(&subject, encoded).await {
            Ok(()) => Ok(()),
            Err(Failed::Other(cause)) => Err(error::request(operation(), timeout, cause)),
            Err(Failed::NoStream) => {
                // The stream went away (deleted by hand, or the server lost it): create it
                // again and publish the batch once more; the ids keep it from doubling.
                self.shared.forget_stream(topic);
                self.shared.ensure_stream(topic).await?;
                match self.send_all(&subject, encode_all()?).await {
                    Ok(()) => Ok(()),
                    Err(Failed::Other(cause)) => Err(error::request(operation(), timeout, cause)),
                    Err(Failed::NoStream) => Err(TransportError::Broker {
                        operation: operation(),
                        source: format!(
                            "no stream takes the subject {subject} although it was just created"
                        )
                        .into(),
                    }),
                }
            }
        }
    }

    fn max_message_size(&self) -> usize {
        self.shared.max_message_size
    }
}

#[async_trait]
impl Subscriber for NatsTransport {
    /// Creates the topic's stream and the group's durable pull consumer when they do not
    /// exist, then pulls at most `spec.prefetch` messages ahead of the answers.
    async fn subscribe(&self, spec: &SubscriptionSpec) -> Result<Deliveries, TransportError> {
        subscription::open(Arc::clone(&self.shared), spec).await
    }

    /// The group consumer's `num_pending + num_ack_pending`: messages not yet delivered
    /// plus messages delivered and not yet acknowledged. `Some(0)` when the group does not
    /// exist yet.
    async fn lag(&self, spec: &SubscriptionSpec) -> Result<Option<u64>, TransportError> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind;
        names::check("topic", &spec.topic)?;
        names::check("group", &spec.group)?;
        let name = self.stream_name(&spec.topic);
        let timeout = self.shared.options.request_timeout;
        let stream = self
            .shared
            .jetstream
            .get_stream_no_info(&name)
            .await
            .map_err(|cause| {
                error::request(format!("finding the stream {name}"), timeout, cause)
            })?;
        match stream.consumer_info(&spec.group).await {
            Ok(info) => Ok(Some(info.num_pending + info.num_ack_pending as u64)),
            Err(cause)
                if matches!(
                    cause.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                Ok(Some(0))
            }
            Err(cause) => Err(error::request(
                format!("asking the lag of group {} on {name}", spec.group),
                timeout,
                cause,
            )),
        }
    }
}

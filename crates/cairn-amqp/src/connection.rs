//! [`Shared`]: one transport's connection to the broker, opened again whenever it
//! dropped, with the publishing channel, the topology it declares and the subscriptions'
//! bookkeeping.
//!
//! **Architecture Invariant:** the transport holds at most one live connection
//! ([`Live`]); every publisher, subscription and answer goes through it. A [`Live`] is
//! replaced, never repaired: once its connection or its publishing channel failed it is
//! marked broken, and the next caller of [`Shared::live`] opens a new one (callers that
//! race wait for that one connection instead of opening their own).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use cairn_bus::{Message, TransportError};
use lapin::Confirmation;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;

use crate::endpoint::Endpoint;
use crate::error::{self, AmqpError};
use crate::options::AmqpOptions;
use crate::{codec, names};

/// How long an unused retry queue lives on (beyond its delay) before the broker deletes
/// it.
const DELAY_QUEUE_LEASE: Duration = Duration::from_secs(300);

/// How often a retry queue in use is declared again, renewing its lease.
const DELAY_QUEUE_RENEW: Duration = Duration::from_secs(60);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every handle of one transport shares.
pub(crate) struct Shared {
    pub(crate) endpoint: Endpoint,
    pub(crate) options: AmqpOptions,
    /// The connection in use; replaced by [`Shared::live`] (under `connecting`).
    current: Mutex<Option<Arc<Live>>>,
    /// Held while a connection is being opened, so that only one is.
    connecting: tokio::sync::Mutex<()>,
    /// Cancelled by [`Shared::close`]; subscriptions end and publishes fail once it is.
    pub(crate) closed: CancellationToken,
    /// The channels of ended subscriptions that still have deliveries out, kept open so
    /// those stay answerable; each is dropped (and so closed) by the last answer.
    parked: Mutex<HashMap<u64, Channel>>,
    /// The subscriptions' counters, for [`Shared::outstanding`].
    subscriptions: Mutex<Vec<Weak<Outstanding>>>,
    next_subscription: AtomicU64,
}

/// The deliveries a subscription handed out and that are not yet answered.
#[derive(Debug)]
pub(crate) struct Outstanding {
    pub(crate) id: u64,
    pub(crate) queue: Arc<str>,
    /// Incremented by the subscription for each delivery, decremented by its answer.
    pub(crate) count: AtomicU64,
    /// Set when the subscription's stream is dropped.
    pub(crate) ended: AtomicBool,
}

impl Outstanding {
    /// Records one answer (or a delivery dropped unanswered); the last answer after the
    /// stream ended closes the subscription's channel.
    pub(crate) fn answered(&self, shared: &Weak<Shared>) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1
            && self.ended.load(Ordering::Acquire)
            && let Some(shared) = shared.upgrade()
        {
            shared.unpark(self.id);
        }
    }
}

/// One open connection and its publishing channel.
pub(crate) struct Live {
    pub(crate) connection: Connection,
    /// The channel publishes go through, in confirm mode.
    publisher: Channel,
    /// The exchanges declared on this connection.
    exchanges: Mutex<HashSet<String>>,
    /// The retry queues declared on this connection, and when.
    delay_queues: Mutex<HashMap<String, Instant>>,
    broken: AtomicBool,
}

impl Live {
    async fn open(endpoint: &Endpoint, options: &AmqpOptions) -> Result<Self, TransportError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(options.connection_name.as_str()));
        let connect = Connection::connect(endpoint.url(), properties);
        let connection = match tokio::time::timeout(options.connect_timeout, connect).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Err(error::connecting(endpoint, error)),
            Err(_) => {
                return Err(TransportError::Unreachable {
                    endpoint: endpoint.shown().to_owned(),
                    source: Box::new(AmqpError::Client(format!(
                        "no connection within {:?}",
                        options.connect_timeout
                    ))),
                });
            }
        };
        let publisher = connection
            .create_channel()
            .await
            .map_err(|e| error::operation(endpoint, "opening the publishing channel", e))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| error::operation(endpoint, "enabling publisher confirms", e))?;
        Ok(Self {
            connection,
            publisher,
            exchanges: Mutex::default(),
            delay_queues: Mutex::default(),
            broken: AtomicBool::new(false),
        })
    }

    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
            && self.connection.status().connected()
            && self.publisher.status().connected()
    }

    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }
}

impl Shared {
    pub(crate) fn new(endpoint: Endpoint, options: AmqpOptions) -> Self {
        Self {
            endpoint,
            options,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            closed: CancellationToken::new(),
            parked: Mutex::default(),
            subscriptions: Mutex::default(),
            next_subscription: AtomicU64::new(0),
        }
    }

    fn usable_live(&self) -> Option<Arc<Live>> {
        lock(&self.current)
            .as_ref()
            .filter(|live| live.usable())
            .cloned()
    }

    /// The connection in use, opened (again) when there is none or it failed.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] after [`Shared::close`]; `Unreachable` or `Refused` when
    /// no connection can be opened.
    pub(crate) async fn live(&self) -> Result<Arc<Live>, TransportError> {
        if self.closed.is_cancelled() {
            return Err(TransportError::Closed);
        }
        if let Some(live) = self.usable_live() {
            return Ok(live);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(live) = self.usable_live() {
            return Ok(live);
        }
        let live = Arc::new(Live::open(&self.endpoint, &self.options).await?);
        if self.closed.is_cancelled() {
            return Err(TransportError::Closed);
        }
        let previous = lock(&self.current).replace(Arc::clone(&live));
        drop(previous);
        Ok(live)
    }

    /// Closes the connection; subscriptions end, publishes fail with `Closed`.
    pub(crate) async fn close(&self) {
        self.closed.cancel();
        let live = lock(&self.current).take();
        lock(&self.parked).clear();
        if let Some(live) = live {
            let _ = live.connection.close(200, "closed".into()).await;
        }
    }

    fn operation_error(&self, what: &str, error: lapin::Error) -> TransportError {
        error::operation(&self.endpoint, what, error)
    }

    /// Publishes `messages` to `topic`'s exchange and waits for every confirm.
    pub(crate) async fn publish(
        &self,
        topic: &str,
        messages: &[Message],
    ) -> Result<(), TransportError> {
        names::validate("topic", topic)?;
        let max = self.options.max_message_size;
        if let Some(large) = messages.iter().find(|m| m.encoded_len() > max) {
            return Err(TransportError::PayloadTooLarge {
                id: large.id,
                size: large.encoded_len(),
                max,
            });
        }
        let properties = messages
            .iter()
            .map(|message| codec::encode(message, 0))
            .collect::<Result<Vec<_>, _>>()?;
        if messages.is_empty() {
            return Ok(());
        }
        let exchange = names::exchange(&self.options.namespace, topic);
        let publish = async {
            let live = self.live().await?;
            let result = self
                .publish_on(&live, &exchange, messages, properties)
                .await;
            if let Err(PublishError::Client(_)) = &result {
                live.mark_broken();
            }
            result.map_err(|error| match error {
                PublishError::Client(error) => {
                    self.operation_error(&format!("publishing to topic {topic:?}"), error)
                }
                PublishError::Transport(error) => error,
            })
        };
        self.confirmed(format!("publishing to topic {topic:?}"), publish)
            .await
    }

    async fn confirmed<T>(
        &self,
        operation: String,
        work: impl Future<Output = Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        let after = self.options.confirm_timeout;
        tokio::select! {
            () = self.closed.cancelled() => Err(TransportError::Closed),
            done = tokio::time::timeout(after, work) => {
                done.unwrap_or(Err(TransportError::Timeout { operation, after }))
            }
        }
    }

    async fn publish_on(
        &self,
        live: &Live,
        exchange: &str,
        messages: &[Message],
        properties: Vec<BasicProperties>,
    ) -> Result<(), PublishError> {
        let fresh = !lock(&live.exchanges).contains(exchange);
        if fresh {
            declare_exchange(&live.publisher, exchange).await?;
            lock(&live.exchanges).insert(exchange.to_owned());
        }
        let exchange = ShortString::from(exchange);
        let mut confirms = Vec::with_capacity(messages.len());
        for (message, properties) in messages.iter().zip(properties) {
            let confirm = live
                .publisher
                .basic_publish(
                    exchange.clone(),
                    ShortString::default(),
                    BasicPublishOptions::default(),
                    &message.payload,
                    properties,
                )
                .await?;
            confirms.push((message.id, confirm));
        }
        for (id, confirm) in confirms {
            match confirm.await? {
                Confirmation::Ack(_) => {}
                Confirmation::Nack(_) | Confirmation::NotRequested => {
                    return Err(PublishError::Transport(TransportError::Broker {
                        operation: "publishing".to_owned(),
                        source: Box::new(AmqpError::NotConfirmed { id }),
                    }));
                }
            }
        }
        Ok(())
    }

    /// Publishes `message` to the retry queue of `queue` that holds messages for
    /// `millis` ms, recording `attempts` deliveries so far, and waits for the confirm.
    pub(crate) async fn publish_delayed(
        &self,
        queue: &str,
        millis: u64,
        message: &Message,
        attempts: u32,
    ) -> Result<(), TransportError> {
        let properties = codec::encode(message, attempts)?;
        let name = names::delay(queue, millis);
        let work = async {
            let live = self.live().await?;
            let result = async {
                let renew = lock(&live.delay_queues)
                    .get(&name)
                    .is_none_or(|declared| declared.elapsed() >= DELAY_QUEUE_RENEW);
                if renew {
                    let mut arguments = FieldTable::default();
                    arguments.insert("x-message-ttl".into(), millis_value(millis));
                    arguments.insert("x-dead-letter-exchange".into(), text(""));
                    arguments.insert("x-dead-letter-routing-key".into(), text(queue));
                    let lease = Duration::from_millis(millis) + DELAY_QUEUE_LEASE;
                    arguments.insert("x-expires".into(), millis_value(lease.as_millis()));
                    live.publisher
                        .queue_declare(
                            name.as_str().into(),
                            QueueDeclareOptions::durable(),
                            arguments,
                        )
                        .await?;
                    lock(&live.delay_queues).insert(name.clone(), Instant::now());
                }
                let confirm = live
                    .publisher
                    .basic_publish(
                        ShortString::default(),
                        name.as_str().into(),
                        BasicPublishOptions::default(),
                        &message.payload,
                        properties,
                    )
                    .await?
                    .await?;
                Ok(confirm)
            }
            .await;
            match result {
                Ok(Confirmation::Ack(_)) => Ok(()),
                Ok(_) => Err(TransportError::Broker {
                    operation: format!("delaying a message in {name:?}"),
                    source: Box::new(AmqpError::NotConfirmed { id: message.id }),
                }),
                Err(error) => {
                    live.mark_broken();
                    Err(self.operation_error(&format!("delaying a message in {name:?}"), error))
                }
            }
        };
        self.confirmed(format!("delaying message {}", message.id), work)
            .await
    }

    /// Declares the topology of a group (exchange, dead-letter queue, queue, binding) on
    /// a fresh channel of the live connection and starts consuming its queue with
    /// `prefetch` unanswered deliveries at most.
    pub(crate) async fn open_consumer(
        &self,
        exchange: &str,
        queue: &str,
        prefetch: usize,
    ) -> Result<(Channel, lapin::Consumer), TransportError> {
        let live = self.live().await?;
        let opened = async {
            let channel = live.connection.create_channel().await?;
            declare_exchange(&channel, exchange).await?;
            let dead = names::dead(queue);
            channel
                .queue_declare(
                    dead.as_str().into(),
                    QueueDeclareOptions::durable(),
                    quorum(),
                )
                .await?;
            let mut arguments = quorum();
            arguments.insert("x-dead-letter-exchange".into(), text(""));
            arguments.insert("x-dead-letter-routing-key".into(), text(&dead));
            if let Some(limit) = self.options.delivery_limit {
                arguments.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(limit.into()),
                );
            }
            channel
                .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
                .await?;
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    ShortString::default(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let prefetch = u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX);
            channel
                .basic_qos(prefetch, BasicQosOptions { global: false })
                .await?;
            let tag = format!("cairn-{}", uuid::Uuid::now_v7().simple());
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((channel, consumer))
        };
        // A broker that is stopping may leave these requests unanswered on a connection
        // it has not closed yet: give up after the confirm timeout and take a fresh
        // connection next time, instead of waiting on the old one for good.
        let after = self.options.confirm_timeout;
        let Ok(opened) = tokio::time::timeout(after, opened).await else {
            live.mark_broken();
            return Err(TransportError::Timeout {
                operation: format!("subscribing to queue {queue:?}"),
                after,
            });
        };
        opened.map_err(|error| {
            if !live.connection.status().connected() {
                live.mark_broken();
            }
            self.operation_error(&format!("subscribing to queue {queue:?}"), error)
        })
    }

    /// A new subscription's counter of outstanding deliveries.
    pub(crate) fn track(&self, queue: Arc<str>) -> Arc<Outstanding> {
        let outstanding = Arc::new(Outstanding {
            id: self.next_subscription.fetch_add(1, Ordering::Relaxed),
            queue,
            count: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        });
        let mut subscriptions = lock(&self.subscriptions);
        subscriptions.retain(|weak| weak.strong_count() > 0);
        subscriptions.push(Arc::downgrade(&outstanding));
        outstanding
    }

    /// The deliveries of `queue` this transport handed out and that are not answered.
    pub(crate) fn outstanding(&self, queue: &str) -> u64 {
        lock(&self.subscriptions)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|outstanding| &*outstanding.queue == queue)
            .map(|outstanding| outstanding.count.load(Ordering::Relaxed))
            .sum()
    }

    /// Keeps an ended subscription's channel open until its last delivery is answered.
    pub(crate) fn park(&self, outstanding: &Outstanding, channel: Channel) {
        lock(&self.parked).insert(outstanding.id, channel);
        if outstanding.count.load(Ordering::Acquire) == 0 {
            self.unpark(outstanding.id);
        }
    }

    fn unpark(&self, id: u64) {
        let channel = lock(&self.parked).remove(&id);
        drop(channel);
    }

    /// The number of ready messages in `queue` (`None` when it does not exist).
    pub(crate) async fn ready(&self, queue: &str) -> Result<Option<u64>, TransportError> {
        let live = self.live().await?;
        let what = format!("reading the depth of queue {queue:?}");
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(|e| self.operation_error(&what, e))?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(declared) => {
                let _ = channel.close(200, "done".into()).await;
                Ok(Some(u64::from(declared.message_count())))
            }
            Err(error) if error::is_not_found(&error) => Ok(None),
            Err(error) => Err(self.operation_error(&what, error)),
        }
    }

    /// Deletes a group's queue, its dead-letter queue and its retry queues.
    pub(crate) async fn delete_group(&self, queue: &str) -> Result<(), TransportError> {
        let live = self.live().await?;
        let what = format!("deleting queue {queue:?}");
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(|e| self.operation_error(&what, e))?;
        let names = [queue.to_owned(), names::dead(queue)]
            .into_iter()
            .chain(names::delay_ladder().map(|millis| names::delay(queue, millis)));
        for name in names {
            channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| self.operation_error(&what, e))?;
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// Deletes a topic's exchange.
    pub(crate) async fn delete_exchange(&self, exchange: &str) -> Result<(), TransportError> {
        let live = self.live().await?;
        let what = format!("deleting exchange {exchange:?}");
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(|e| self.operation_error(&what, e))?;
        channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await
            .map_err(|e| self.operation_error(&what, e))?;
        lock(&live.exchanges).remove(exchange);
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }
}

/// What a publish on a live connection can fail with: the client (the connection is then
/// suspect) or the transport's own verdict.
enum PublishError {
    Client(lapin::Error),
    Transport(TransportError),
}

impl From<lapin::Error> for PublishError {
    fn from(error: lapin::Error) -> Self {
        Self::Client(error)
    }
}

async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), text("quorum"));
    arguments
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn millis_value(millis: impl TryInto<i64>) -> AMQPValue {
    AMQPValue::LongLongInt(millis.try_into().unwrap_or(i64::MAX))
}

//! The in-memory transport: [`MemoryBroker`], a broker living in the process, and
//! [`MemoryConnection`], one client's connection to it. It is the reference transport,
//! the one the conformance suite's transport cases are written against, and the fast path
//! the router's benchmarks run over.
//!
//! # Semantics
//!
//! - **Topics** are created on first use (publish, subscribe or [`MemoryBroker::ensure_group`]).
//! - **Groups**: each (topic, group) pair has one queue. A group exists from its first
//!   subscription (or [`MemoryBroker::ensure_group`]) on and receives every message
//!   published to the topic *after* that, whether or not a consumer is attached at the
//!   time. Messages published to a topic before a group exists are not kept for it; a topic
//!   with no group drops what is published to it. Groups are never deleted.
//! - **Consumers** of one group share its messages: each message goes to one of them. One
//!   consumer sees the messages of its group in publish order, except that redeliveries
//!   (below) come before messages never delivered. So per-key order holds for one
//!   consumer as long as nothing is redelivered.
//! - **Prefetch**: a subscription has at most `prefetch` deliveries outstanding (taken from
//!   the queue, not yet answered); it takes no more until one is answered.
//! - **Capacity**: each group's queue of never-delivered messages holds at most
//!   [`MemoryOptions::queue_capacity`] messages; [`Publisher::publish`] waits (without
//!   spinning) while a group of the topic is full, so a fast producer cannot outgrow a slow
//!   consumer, and goes on once the group's consumers took the queue below three quarters
//!   of its capacity (so that a full queue wakes its publishers once per quarter taken,
//!   not at every take). A group with no consumer that fills up makes publishers to its
//!   topic wait until someone consumes. Redeliveries never wait for room.
//! - **Size**: a message whose [`Message::encoded_len`] is above
//!   [`MemoryOptions::max_message_size`] is refused with
//!   [`TransportError::PayloadTooLarge`], and then nothing of the batch is published.
//! - **De-duplication**: a message whose id was published to the same topic within
//!   [`MemoryOptions::dedup_window`] is dropped as a duplicate (the publish still
//!   succeeds), like JetStream's `Nats-Msg-Id`. At most [`MemoryOptions::dedup_ids`] ids
//!   are remembered per topic, the oldest forgotten first.
//! - **Answers**: [`Delivery::ack`](crate::Delivery::ack) removes the message;
//!   [`Delivery::nack`](crate::Delivery::nack) gives it back, for delivery again after the
//!   delay when one is given, with `attempt` one higher. A delivery dropped unanswered is
//!   given back at once, as a nack without delay.
//! - **Connections**: [`MemoryBroker::connect`] opens a connection; it stays open while a
//!   [`MemoryConnection`] handle or one of its subscriptions' [`Deliveries`] lives. When it
//!   closes, every delivery handed out through it and not yet answered goes back to its
//!   queue for another consumer (`attempt` one higher), even while the delivery itself is
//!   still held somewhere. Dropping only a `Deliveries` stream ends that subscription; the
//!   deliveries it handed out stay answerable (as the [`Deliveries`] contract says), the
//!   ones it had taken but not yet handed out go back at once with their attempt count
//!   unchanged. The broker's own handle ([`MemoryBroker`] used as a publisher or
//!   subscriber) is a connection that never closes.
//! - **Severing**: [`MemoryBroker::sever`] simulates every connection dropping at once:
//!   each outstanding delivery goes back to its queue (`attempt` one higher), and the
//!   subscriptions carry on by themselves (their streams never see the break). Answering a
//!   delivery from before the break — ack or nack — returns
//!   [`TransportError::Broker`] with a [`StaleDelivery`] cause and changes nothing: the
//!   message is delivered again, which the inbox makes harmless.
//! - **Lag**: [`Subscriber::lag`] counts the group's messages not yet acknowledged: queued,
//!   delayed and outstanding.
//!
//! Nothing is persisted: dropping the last handle of a broker drops its messages.
//!
//! # Performance
//!
//! Publishing locks the topic once per batch and each group once per batch; a consumer
//! takes up to 64 messages per lock into its stream and hands them out without locking;
//! answers lock the group briefly. Consumers are woken through their wakers, never by
//! spawning tasks. A delivery costs one clone of its message (the queue keeps the original
//! for redelivery) and one small box for its answer. An acknowledged message is not freed
//! by the thread that answers it but by the next publish to its group (up to 1,024
//! messages and 8 MiB of payload waiting; past that the answer frees it): the publishing
//! thread allocated it, and with the system allocator a consumer freeing every message
//! on another thread contends with the publisher for the allocator's lock at each one.

mod error;
mod group;
mod subscription;
mod topic;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

pub use error::StaleDelivery;

use crate::message::Message;
use crate::transport::{Deliveries, Publisher, Subscriber, SubscriptionSpec, TransportError};
use group::Group;
use subscription::Subscription;
use topic::Topic;

/// The default [`MemoryOptions::queue_capacity`]: 100,000 messages per group.
pub const DEFAULT_QUEUE_CAPACITY: usize = 100_000;
/// The default [`MemoryOptions::max_message_size`]: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;
/// The default [`MemoryOptions::dedup_window`]: two minutes, as JetStream's.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// The default [`MemoryOptions::dedup_ids`]: 100,000 ids per topic.
pub const DEFAULT_DEDUP_IDS: usize = 100_000;

/// How a [`MemoryBroker`] behaves; every field has a default and a setter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryOptions {
    /// The most never-delivered messages one group's queue holds before publishers wait
    /// (at least 1).
    pub queue_capacity: usize,
    /// The largest [`Message::encoded_len`] accepted.
    pub max_message_size: usize,
    /// How long a published id is remembered to drop duplicates; zero turns
    /// de-duplication off.
    pub dedup_window: Duration,
    /// The most ids remembered per topic; zero turns de-duplication off.
    pub dedup_ids: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self {
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            dedup_ids: DEFAULT_DEDUP_IDS,
        }
    }
}

impl MemoryOptions {
    /// Sets [`queue_capacity`](Self::queue_capacity) (at least 1).
    #[must_use]
    pub fn queue_capacity(mut self, messages: usize) -> Self {
        self.queue_capacity = messages.max(1);
        self
    }

    /// Sets [`max_message_size`](Self::max_message_size).
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`dedup_window`](Self::dedup_window).
    #[must_use]
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// Sets [`dedup_ids`](Self::dedup_ids).
    #[must_use]
    pub fn dedup_ids(mut self, ids: usize) -> Self {
        self.dedup_ids = ids;
        self
    }
}

/// A broker in the process's memory. Cloning gives another handle to the same broker.
///
/// It is a [`Publisher`] and a [`Subscriber`] itself, through a connection of its own that
/// never closes; [`connect`](Self::connect) opens further connections, which close when
/// their last handle and subscription are dropped. The [module docs](self) give the
/// semantics.
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cairn_bus::memory::MemoryBroker;
/// use cairn_bus::{Message, Publisher, Subscriber, SubscriptionSpec};
/// use futures::StreamExt;
///
/// let broker = MemoryBroker::new();
/// let mut deliveries = broker.subscribe(&SubscriptionSpec::new("orders", "billing")).await?;
/// broker.publish("orders", vec![Message::new("order.placed", "{}")]).await?;
/// let delivery = deliveries.next().await.expect("a delivery")?;
/// assert_eq!(delivery.message.message_type, "order.placed");
/// delivery.ack().await?;
/// # Ok::<_, cairn_bus::TransportError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

struct Shared {
    options: MemoryOptions,
    /// Every topic by name. Locked to look a topic up or create it, and by `sever` to list
    /// them; never held while a topic or group lock is taken.
    topics: Mutex<HashMap<Arc<str>, Arc<Topic>>>,
    /// Numbers connections and consumers (0 is the broker's own connection).
    next_id: AtomicU64,
    /// The broker's own connection, which never closes.
    own: Arc<Connection>,
}

/// One connection's record of the groups it consumed from, so that closing it can take
/// back what it held. Held by its [`MemoryConnection`] handles and by its subscriptions.
struct Connection {
    id: u64,
    groups: Mutex<Vec<Arc<Group>>>,
}

impl Connection {
    fn new(id: u64) -> Self {
        Self {
            id,
            groups: Mutex::new(Vec::new()),
        }
    }

    fn joined(&self, group: &Arc<Group>) {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if !groups.iter().any(|g| Arc::ptr_eq(g, group)) {
            groups.push(Arc::clone(group));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let groups = self
            .groups
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for group in groups.drain(..) {
            group.close_connection(self.id);
        }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A broker with the default [`MemoryOptions`].
    pub fn new() -> Self {
        Self::with_options(MemoryOptions::default())
    }

    /// A broker with `options`.
    pub fn with_options(options: MemoryOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                options,
                topics: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                own: Arc::new(Connection::new(0)),
            }),
        }
    }

    /// The options the broker was made with.
    pub fn options(&self) -> &MemoryOptions {
        &self.shared.options
    }

    /// Opens a connection: a client of the broker that closes when its last handle and
    /// subscription are dropped, giving back every delivery it held unanswered.
    pub fn connect(&self) -> MemoryConnection {
        MemoryConnection {
            broker: self.clone(),
            connection: Arc::new(Connection::new(self.next_id())),
        }
    }

    /// Creates `group` on `topic` when it does not exist, so that it keeps the messages
    /// published from now on even before its first consumer subscribes.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for an empty topic or group name.
    pub fn ensure_group(&self, topic: &str, group: &str) -> Result<(), TransportError> {
        check_name("topic", topic)?;
        check_name("group", group)?;
        self.topic(topic).group(group);
        Ok(())
    }

    /// Simulates a dropped connection: every connection breaks at once. Each delivery
    /// outstanding at that moment goes back to its queue (`attempt` one higher); the
    /// subscriptions reconnect by themselves and deliver it again. Answers to deliveries
    /// from before the break return an error carrying [`StaleDelivery`] and change
    /// nothing.
    pub fn sever(&self) {
        let topics: Vec<Arc<Topic>> = self.lock_topics().values().cloned().collect();
        for topic in topics {
            for group in topic.groups() {
                group.sever();
            }
        }
    }

    fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock_topics(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Topic>>> {
        self.shared
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The topic `name`, created when it does not exist.
    fn topic(&self, name: &str) -> Arc<Topic> {
        let mut topics = self.lock_topics();
        if let Some(topic) = topics.get(name) {
            return Arc::clone(topic);
        }
        let name: Arc<str> = Arc::from(name);
        let options = &self.shared.options;
        let topic = Arc::new(Topic::new(
            Arc::clone(&name),
            options.queue_capacity,
            options.dedup_window,
            options.dedup_ids,
        ));
        topics.insert(name, Arc::clone(&topic));
        topic
    }

    async fn publish_batch(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<(), TransportError> {
        check_name("topic", topic)?;
        let max = self.shared.options.max_message_size;
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
        if messages.is_empty() {
            return Ok(());
        }
        self.topic(topic).publish(messages).await;
        Ok(())
    }

    fn subscribe_on(
        &self,
        connection: &Arc<Connection>,
        spec: &SubscriptionSpec,
    ) -> Result<Deliveries, TransportError> {
        check_name("topic", &spec.topic)?;
        check_name("group", &spec.group)?;
        let group = self.topic(&spec.topic).group(&spec.group);
        connection.joined(&group);
        let consumer = self.next_id();
        group.add_consumer(consumer);
        Ok(Deliveries::new(Subscription {
            group,
            consumer,
            prefetch: spec.prefetch.max(1),
            connection: Arc::clone(connection),
            buffer: VecDeque::new(),
            buffer_epoch: 0,
            timer: None,
        }))
    }

    fn group_lag(&self, spec: &SubscriptionSpec) -> u64 {
        let topic = self.lock_topics().get(spec.topic.as_str()).cloned();
        topic
            .and_then(|topic| topic.existing_group(&spec.group))
            .map_or(0, |group| group.lag())
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), TransportError> {
    if name.is_empty() {
        return Err(TransportError::Invalid {
            what,
            reason: "it is empty".to_owned(),
        });
    }
    Ok(())
}

#[async_trait]
impl Publisher for MemoryBroker {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TransportError> {
        self.publish_batch(topic, messages).await
    }

    fn max_message_size(&self) -> usize {
        self.shared.options.max_message_size
    }
}

#[async_trait]
impl Subscriber for MemoryBroker {
    async fn subscribe(&self, spec: &SubscriptionSpec) -> Result<Deliveries, TransportError> {
        self.subscribe_on(&self.shared.own, spec)
    }

    async fn lag(&self, spec: &SubscriptionSpec) -> Result<Option<u64>, TransportError> {
        Ok(Some(self.group_lag(spec)))
    }
}

/// One client connection to a [`MemoryBroker`]. Cloning gives another handle to the same
/// connection; it closes when the last handle and the last of its subscriptions are
/// dropped, and every delivery it handed out unanswered then goes back to its queue.
#[derive(Clone)]
pub struct MemoryConnection {
    broker: MemoryBroker,
    connection: Arc<Connection>,
}

impl fmt::Debug for MemoryConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConnection")
            .field("id", &self.connection.id)
            .finish_non_exhaustive()
    }
}

impl MemoryConnection {
    /// The broker this connection talks to.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }
}

#[async_trait]
impl Publisher for MemoryConnection {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TransportError> {
        self.broker.publish_batch(topic, messages).await
    }

    fn max_message_size(&self) -> usize {
        self.broker.shared.options.max_message_size
    }
}

#[async_trait]
impl Subscriber for MemoryConnection {
    async fn subscribe(&self, spec: &SubscriptionSpec) -> Result<Deliveries, TransportError> {
        self.broker.subscribe_on(&self.connection, spec)
    }

    async fn lag(&self, spec: &SubscriptionSpec) -> Result<Option<u64>, TransportError> {
        Ok(Some(self.broker.group_lag(spec)))
    }
}

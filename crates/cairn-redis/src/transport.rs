//! [`RedisTransport`]: the [`Publisher`] and [`Subscriber`] over Redis Streams.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cairn_bus::{Deliveries, Message, Publisher, Subscriber, SubscriptionSpec, TransportError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::xadd;
use crate::error::{self, redact};
use crate::options::RedisOptions;
use crate::subscription::{Shared, State, Subscription, keeper, reader};

/// The longest topic or group name.
const MAX_NAME: usize = 200;

/// A connection to one Redis server, publishing to and subscribing from its streams.
/// Cloning gives another handle to the same connection.
///
/// Publishing and answers go through one shared connection that reconnects by itself;
/// each subscription has a connection of its own for its blocking reads. The
/// [crate docs](crate) give the mapping and its limits.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), cairn_bus::TransportError> {
/// use cairn_bus::{Message, Publisher, Subscriber, SubscriptionSpec};
/// use cairn_redis::RedisTransport;
/// use futures::StreamExt;
///
/// let redis = RedisTransport::connect("redis://127.0.0.1:6379").await?;
/// let mut deliveries = redis.subscribe(&SubscriptionSpec::new("orders", "billing")).await?;
/// redis.publish("orders", vec![Message::new("order.placed", "{}")]).await?;
/// if let Some(delivery) = deliveries.next().await {
///     delivery?.ack().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisTransport {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Shared by publishing, lag and every subscription's keeper and answers.
    connection: ConnectionManager,
    /// The URL without its password.
    endpoint: Arc<str>,
    options: Arc<RedisOptions>,
    /// Cancelled by [`RedisTransport::close`]; each subscription runs under a child.
    stop: CancellationToken,
    /// Every subscription's tasks.
    tasks: TaskTracker,
    /// Numbers subscriptions, for their consumer names.
    consumers: Mutex<u64>,
}

impl fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTransport")
            .field("endpoint", &self.inner.endpoint)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl RedisTransport {
    /// Connects to the server at `url` (`redis://[user[:password]@]host[:port][/db]`, or
    /// `rediss://` with the `tls` feature) with the default [`RedisOptions`].
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self, TransportError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects to the server at `url` with `options`, checking that it answers and
    /// accepts the credentials.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] for a URL or prefix that cannot be used,
    /// [`TransportError::Unreachable`] (naming the endpoint, never the password) when the
    /// server cannot be reached, [`TransportError::Refused`] for wrong credentials.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, TransportError> {
        let endpoint: Arc<str> = Arc::from(redact(url));
        check_name("prefix", &options.prefix)?;
        let client = Client::open(url).map_err(|cause| TransportError::Invalid {
            what: "url",
            reason: format!("{endpoint}: {cause}"),
        })?;
        let probe = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout));
        let map = |cause| error::map("connecting", &endpoint, options.connect_timeout, cause);
        let mut first = client
            .get_multiplexed_async_connection_with_config(&probe)
            .await
            .map_err(map)?;
        redis::cmd("PING")
            .query_async::<()>(&mut first)
            .await
            .map_err(map)?;
        drop(first);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_secs(1));
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(map)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                connection,
                endpoint,
                options: Arc::new(options),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
                consumers: Mutex::new(0),
            }),
        })
    }

    /// The server's URL, without its password.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The options the transport was connected with.
    pub fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    /// The key of `topic`'s stream: `<prefix>:<topic>`.
    pub fn stream_key(&self, topic: &str) -> String {
        format!("{}:{topic}", self.inner.options.prefix)
    }

    /// Closes the transport: every subscription stops (its stream ends) and publishing
    /// fails with [`TransportError::Closed`]. Waits for the subscriptions' tasks.
    /// Deliveries still held stay pending on the server and go to another consumer after
    /// [`RedisOptions::claim_idle`].
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn map_error(&self, operation: &str, cause: redis::RedisError) -> TransportError {
        error::map(
            operation,
            &self.inner.endpoint,
            self.inner.options.response_timeout,
            cause,
        )
    }

    fn consumer_name(&self) -> String {
        let mut count = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *count += 1;
        format!("{}-{}", uuid::Uuid::now_v7().simple(), *count)
    }
}

/// Checks a topic, group or prefix: 1 to 200 ASCII letters, digits, `.`, `_` or `-`.
fn check_name(what: &'static str, name: &str) -> Result<(), TransportError> {
    let reason = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > MAX_NAME {
        format!("it is {} bytes long, more than {MAX_NAME}", name.len())
    } else if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        format!("{name:?} has {bad:?}; use ASCII letters, digits, '.', '_' and '-'")
    } else {
        return Ok(());
    };
    Err(TransportError::Invalid { what, reason })
}

#[async_trait]
impl Publisher for RedisTransport {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TransportError> {
        check_name("topic", topic)?;
        let max = self.inner.options.max_message_size;
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
        if self.inner.stop.is_cancelled() {
            return Err(TransportError::Closed);
        }
        let key = self.stream_key(topic);
        let mut pipe = redis::Pipeline::with_capacity(messages.len());
        let mut scratch = Vec::new();
        for message in &messages {
            // Not `ignore`d: each would cost a hash-set insert, and `()` takes any reply.
            pipe.add_command(xadd(
                &key,
                self.inner.options.max_len,
                message,
                &mut scratch,
            ));
        }
        let mut connection = self.inner.connection.clone();
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|cause| self.map_error("publish", cause))
    }

    fn max_message_size(&self) -> usize {
        self.inner.options.max_message_size
    }
}

#[async_trait]
impl Subscriber for RedisTransport {
    async fn subscribe(&self, spec: &SubscriptionSpec) -> Result<Deliveries, TransportError> {
        check_name("topic", &spec.topic)?;
        check_name("group", &spec.group)?;
        if self.inner.stop.is_cancelled() {
            return Err(TransportError::Closed);
        }
        let mut connection = reader::connect(&self.inner.client, &self.inner.options)
            .await
            .map_err(|cause| self.map_error("subscribing", cause))?;
        let (keeper_tx, keeper_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            topic: Arc::from(spec.topic.as_str()),
            key: self.stream_key(&spec.topic),
            group: spec.group.clone(),
            consumer: self.consumer_name(),
            endpoint: Arc::clone(&self.inner.endpoint),
            options: Arc::clone(&self.inner.options),
            connection: self.inner.connection.clone(),
            state: Mutex::new(State::default()),
            slots: Semaphore::new(spec.prefetch.clamp(1, Semaphore::MAX_PERMITS)),
            keeper: keeper_tx,
            due: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            acks: Mutex::default(),
        });
        reader::create_group(&shared, &mut connection, "$")
            .await
            .map_err(|cause| self.map_error("creating the group", cause))?;
        let stop = self.inner.stop.child_token();
        let (outbox, deliveries) = mpsc::unbounded_channel();
        let subscription = Arc::clone(&shared);
        self.inner.tasks.spawn(reader::run(
            Arc::clone(&shared),
            self.inner.client.clone(),
            connection,
            outbox.clone(),
            stop.clone(),
        ));
        self.inner
            .tasks
            .spawn(keeper::run(shared, keeper_rx, outbox, stop.clone()));
        Ok(Deliveries::new(Subscription {
            shared: subscription,
            deliveries,
            _stop: stop.drop_guard(),
        }))
    }

    async fn lag(&self, spec: &SubscriptionSpec) -> Result<Option<u64>, TransportError> {
        check_name("topic", &spec.topic)?;
        check_name("group", &spec.group)?;
        let mut connection = self.inner.connection.clone();
        let groups = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.stream_key(&spec.topic))
            .query_async::<Vec<Value>>(&mut connection)
            .await;
        let groups = match groups {
            Ok(groups) => groups,
            // No stream yet: nothing to consume.
            Err(cause)
                if cause.code() == Some("ERR") && cause.to_string().contains("no such key") =>
            {
                return Ok(Some(0));
            }
            Err(cause) => return Err(self.map_error("lag", cause)),
        };
        for group in groups {
            let fields = pairs(group);
            let name = fields.iter().find(|(k, _)| k == "name").map(|(_, v)| v);
            if !matches!(name, Some(Value::BulkString(n)) if n == spec.group.as_bytes()) {
                continue;
            }
            let number = |field: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == field)
                    .and_then(|(_, v)| match v {
                        Value::Int(n) => u64::try_from(*n).ok(),
                        _ => None,
                    })
            };
            // `lag` is nil when the server cannot tell (after deletions in the range).
            return Ok(number("lag")
                .zip(number("pending"))
                .map(|(lag, pending)| lag + pending));
        }
        Ok(Some(0))
    }
}

/// The field/value pairs of an `XINFO` record, flat (RESP2) or a map (RESP3).
fn pairs(record: Value) -> Vec<(String, Value)> {
    let flat = match record {
        Value::Array(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        let key = match key {
            Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Value::SimpleString(text) => text,
            _ => continue,
        };
        out.push((key, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_letters_digits_dots_underscores_and_dashes_pass() {
        assert!(check_name("topic", "orders-2024.v1_a").is_ok());
    }

    #[test]
    fn empty_long_and_odd_names_are_invalid() {
        for name in ["", "a:b", "a b", "ü", &"x".repeat(201)] {
            let error = check_name("topic", name).unwrap_err();
            assert!(
                matches!(error, TransportError::Invalid { what: "topic", .. }),
                "{name:?}: {error:?}"
            );
        }
    }
}

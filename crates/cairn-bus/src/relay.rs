//! [`OutboxRelay`]: publishes the events of an [`EventStore`] to a [`Publisher`], at
//! least once, resuming from a durable checkpoint.
//!
//! The relay follows a `$all` subscription (optionally filtered) from the position its
//! [`Checkpoints`] hold, turns each event into a [`Message`] whose id is the event's id
//! (the broker's and the inbox's de-duplication key) and whose key is the stream's name
//! (so the ordered-concurrency middleware keeps each stream's order), publishes a batch,
//! waits for the transport's confirmation and only then saves the checkpoint. A crash
//! between the publish and the checkpoint publishes those events again, with the same
//! ids: consumers behind an inbox apply each event's effects once.
//!
//! Messages carry the event's metadata (`correlationid`, `causationid`, `traceparent`,
//! `tenant`, ...) as headers, plus `cairn-stream`, `cairn-revision`, `cairn-position` and
//! `cairn-recorded` (microseconds since the Unix epoch).
//!
//! Cancelling the relay's token lets the batch being published finish and saves its
//! checkpoint before [`OutboxRelay::run`] returns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{
    CheckpointError, Checkpoints, EventFilter, EventStore, Position, RecordedEvent, SubscribeAll,
    SubscriptionMessage,
};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::message::Message;
use crate::transport::{Publisher, TransportError};

/// Header naming the event's stream.
pub const STREAM_HEADER: &str = "cairn-stream";
/// Header holding the event's revision in its stream.
pub const REVISION_HEADER: &str = "cairn-revision";
/// Header holding the event's position in `$all`.
pub const POSITION_HEADER: &str = "cairn-position";
/// Header holding when the event was recorded, in microseconds since the Unix epoch.
pub const RECORDED_HEADER: &str = "cairn-recorded";

type TopicOf = Arc<dyn Fn(&RecordedEvent) -> String + Send + Sync>;

/// How a relay runs.
#[derive(Clone)]
pub struct RelayOptions {
    /// The most events per publish (default 256).
    pub batch: usize,
    /// Which events to relay (default: all).
    pub filter: EventFilter,
    /// The first delay before trying a failed publish or a lost subscription again
    /// (doubling up to [`max_backoff`](Self::max_backoff); default 100 ms).
    pub backoff: Duration,
    /// The longest delay between tries (default 10 s).
    pub max_backoff: Duration,
    topic: TopicOf,
}

impl RelayOptions {
    /// Publishes every event to `topic`.
    pub fn to_topic(topic: impl Into<String>) -> Self {
        let topic = topic.into();
        Self::routed(move |_| topic.clone())
    }

    /// Publishes each event to the topic `topic_of` names for it (its category, say).
    pub fn routed(topic_of: impl Fn(&RecordedEvent) -> String + Send + Sync + 'static) -> Self {
        Self {
            batch: 256,
            filter: EventFilter::default(),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            topic: Arc::new(topic_of),
        }
    }

    /// Relays only the events `filter` passes.
    #[must_use]
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the most events per publish (at least 1).
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }
}

impl fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayOptions")
            .field("batch", &self.batch)
            .field("filter", &self.filter)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .finish_non_exhaustive()
    }
}

/// Why a relay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The checkpoint could not be loaded or saved.
    #[error("relay {name}: checkpoint failed: {source}")]
    Checkpoint {
        /// The relay's name.
        name: String,
        /// The cause.
        #[source]
        source: CheckpointError,
    },
    /// The transport refused an event for good (too large, a topic it cannot use): the
    /// relay stops rather than skip it.
    #[error("relay {name}: the transport refused the event at {position}: {source}")]
    Refused {
        /// The relay's name.
        name: String,
        /// The refused event's position.
        position: Position,
        /// The cause.
        #[source]
        source: TransportError,
    },
}

/// What a relay run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelaySummary {
    /// Events published (and confirmed) in this run.
    pub published: u64,
    /// The checkpoint saved last.
    pub checkpoint: Option<Position>,
}

/// Publishes a store's events to a transport; see the [module docs](self).
pub struct OutboxRelay<S, P, C> {
    name: String,
    store: S,
    publisher: P,
    checkpoints: C,
    options: RelayOptions,
}

impl<S, P, C> OutboxRelay<S, P, C>
where
    S: EventStore,
    P: Publisher,
    C: Checkpoints,
{
    /// A relay named `name` (its checkpoint's name) from `store` to `publisher`.
    pub fn new(
        name: impl Into<String>,
        store: S,
        publisher: P,
        checkpoints: C,
        options: RelayOptions,
    ) -> Self {
        Self {
            name: name.into(),
            store,
            publisher,
            checkpoints,
            options,
        }
    }

    /// Relays until `cancel` is cancelled, then saves the checkpoint and returns.
    ///
    /// A lost subscription and transient publish failures are retried with backoff for
    /// as long as the relay runs.
    ///
    /// # Errors
    ///
    /// [`RelayError::Checkpoint`] when the checkpoint cannot be loaded or saved (including
    /// an invalid relay name); [`RelayError::Refused`] when the transport refuses an event
    /// for good.
    pub async fn run(self, cancel: CancellationToken) -> Result<RelaySummary, RelayError> {
        let mut summary = RelaySummary::default();
        let mut checkpoint =
            self.checkpoints
                .load(&self.name)
                .await
                .map_err(|source| RelayError::Checkpoint {
                    name: self.name.clone(),
                    source,
                })?;
        summary.checkpoint = checkpoint;
        let mut backoff = Backoff::new(self.options.backoff, self.options.max_backoff);
        'subscribe: while !cancel.is_cancelled() {
            let start = match checkpoint {
                Some(position) => SubscribeAll::after(position),
                None => SubscribeAll::from_start(),
            };
            let mut subscription = self
                .store
                .subscribe_all(start.filter(self.options.filter.clone()));
            loop {
                let first = tokio::select! {
                    biased;
                    () = cancel.cancelled() => break 'subscribe,
                    next = subscription.next() => next,
                };
                let mut batch = Vec::new();
                let mut lost = match first {
                    Some(Ok(message)) => {
                        push_event(&mut batch, message);
                        false
                    }
                    Some(Err(error)) => {
                        tracing::warn!(relay = %self.name, %error, "the relay's subscription failed; resubscribing");
                        true
                    }
                    None => true,
                };
                while !lost && batch.len() < self.options.batch {
                    match subscription.next().now_or_never() {
                        Some(Some(Ok(message))) => push_event(&mut batch, message),
                        Some(Some(Err(_)) | None) => lost = true,
                        None => break,
                    }
                }
                if let Some(last) = batch.last().map(|e| e.position) {
                    if !self.publish(&batch, &cancel).await? {
                        break 'subscribe;
                    }
                    self.checkpoints
                        .save(&self.name, last)
                        .await
                        .map_err(|source| RelayError::Checkpoint {
                            name: self.name.clone(),
                            source,
                        })?;
                    summary.published += batch.len() as u64;
                    summary.checkpoint = Some(last);
                    checkpoint = Some(last);
                    backoff.reset();
                }
                if lost {
                    if !backoff.wait(&cancel).await {
                        break 'subscribe;
                    }
                    continue 'subscribe;
                }
            }
        }
        Ok(summary)
    }

    /// Publishes `batch` in order, runs of one topic together, retrying transient
    /// failures until they pass; `false` when cancelled while retrying (the batch is then
    /// not confirmed, and its checkpoint is not saved).
    async fn publish(
        &self,
        batch: &[RecordedEvent],
        cancel: &CancellationToken,
    ) -> Result<bool, RelayError> {
        let mut backoff = Backoff::new(self.options.backoff, self.options.max_backoff);
        let mut rest = batch;
        while let Some(first) = rest.first() {
            let topic = (self.options.topic)(first);
            let run = rest
                .iter()
                .take_while(|e| (self.options.topic)(e) == topic)
                .count();
            let (now, later) = rest.split_at(run);
            let messages: Vec<Message> = now.iter().map(to_message).collect();
            loop {
                match self.publisher.publish(&topic, messages.clone()).await {
                    Ok(()) => break,
                    Err(error) if error.is_transient() => {
                        tracing::warn!(relay = %self.name, %error, "publishing failed; trying again");
                        if !backoff.wait(cancel).await {
                            // Shutting down: the checkpoint before these events stays,
                            // so the next run sends them.
                            return Ok(false);
                        }
                    }
                    Err(source) => {
                        return Err(RelayError::Refused {
                            name: self.name.clone(),
                            position: first.position,
                            source,
                        });
                    }
                }
            }
            rest = later;
        }
        Ok(true)
    }
}

fn push_event(batch: &mut Vec<RecordedEvent>, message: SubscriptionMessage) {
    if let SubscriptionMessage::Event(event) = message {
        batch.push(event);
    }
}

/// The message the relay publishes for `event`.
pub fn to_message(event: &RecordedEvent) -> Message {
    let mut message = Message::new(event.event_type.clone(), event.payload.clone())
        .with_id(event.id)
        .with_key(event.stream.as_str())
        .with_source(format!("cairn:{}", event.stream.as_str()))
        .with_content_type(event.content_type.clone());
    for (name, value) in event.metadata.iter() {
        message.headers.insert(name.to_owned(), value.to_owned());
    }
    message
        .headers
        .insert(STREAM_HEADER.to_owned(), event.stream.as_str().to_owned());
    message
        .headers
        .insert(REVISION_HEADER.to_owned(), event.revision.0.to_string());
    message
        .headers
        .insert(POSITION_HEADER.to_owned(), event.position.0.to_string());
    message
        .headers
        .insert(RECORDED_HEADER.to_owned(), event.recorded.0.to_string());
    message
}

/// Exponential backoff between tries, cut short by cancellation.
struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    fn reset(&mut self) {
        self.next = self.first;
    }

    /// Waits the next delay; `false` when cancelled first.
    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            biased;
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use cairn_core::{EventData, ExpectedRevision, Metadata, StreamName};
    use cairn_memory::{MemoryCheckpoints, MemoryStore};

    use super::*;

    /// A publisher that records what it confirmed and fails as scripted.
    #[derive(Clone, Default)]
    struct Recording {
        published: Arc<Mutex<Vec<(String, Message)>>>,
        failures: Arc<Mutex<VecDeque<TransportError>>>,
    }

    impl Recording {
        fn fail_next(&self, error: TransportError) {
            self.failures.lock().unwrap().push_back(error);
        }

        fn published(&self) -> Vec<(String, Message)> {
            self.published.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Publisher for Recording {
        async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TransportError> {
            if let Some(error) = self.failures.lock().unwrap().pop_front() {
                return Err(error);
            }
            let mut published = self.published.lock().unwrap();
            published.extend(messages.into_iter().map(|m| (topic.to_owned(), m)));
            Ok(())
        }

        fn max_message_size(&self) -> usize {
            1 << 20
        }
    }

    async fn append(store: &MemoryStore, stream: &str, count: usize) {
        let stream = StreamName::new(stream).unwrap();
        let events = (0..count)
            .map(|i| {
                EventData::new("Happened", format!("{i}").into_bytes())
                    .with_metadata(Metadata::CORRELATION_ID, format!("c-{i}"))
            })
            .collect();
        store
            .append(&stream, ExpectedRevision::Any, events)
            .await
            .unwrap();
    }

    /// Runs a relay until it has published `until` events in all, then stops it.
    async fn relay_until(
        store: &MemoryStore,
        publisher: &Recording,
        checkpoints: &MemoryCheckpoints,
        options: RelayOptions,
        until: usize,
    ) -> RelaySummary {
        let cancel = CancellationToken::new();
        let relay = OutboxRelay::new(
            "relay",
            store.clone(),
            publisher.clone(),
            checkpoints.clone(),
            options,
        );
        let running = tokio::spawn(relay.run(cancel.clone()));
        tokio::time::timeout(Duration::from_secs(10), async {
            while publisher.published().len() < until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the relay published in time");
        cancel.cancel();
        running.await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn events_are_published_with_their_ids_keys_and_metadata_then_checkpointed() {
        let store = MemoryStore::new();
        append(&store, "order-1", 3).await;
        append(&store, "payment-1", 2).await;
        let (publisher, checkpoints) = (Recording::default(), MemoryCheckpoints::new());
        let options = RelayOptions::routed(|e| e.stream.category().to_owned()).batch(2);
        let summary = relay_until(&store, &publisher, &checkpoints, options, 5).await;

        let events = store
            .read_all(cairn_core::ReadAll::forwards())
            .await
            .unwrap()
            .events;
        let published = publisher.published();
        assert_eq!(published.len(), 5);
        for ((topic, message), event) in published.iter().zip(&events) {
            assert_eq!(topic, event.stream.category());
            assert_eq!(message.id, event.id);
            assert_eq!(message.message_type, "Happened");
            assert_eq!(message.key.as_deref(), Some(event.stream.as_str()));
            assert_eq!(message.payload, event.payload);
            assert_eq!(message.header(STREAM_HEADER), Some(event.stream.as_str()));
            assert_eq!(
                message.header(REVISION_HEADER),
                Some(&*event.revision.0.to_string())
            );
            assert_eq!(
                message.header(POSITION_HEADER),
                Some(&*event.position.0.to_string())
            );
            assert!(
                message
                    .header("correlationid")
                    .is_some_and(|c| c.starts_with("c-"))
            );
        }
        let last = events.last().unwrap().position;
        assert_eq!(
            summary,
            RelaySummary {
                published: 5,
                checkpoint: Some(last)
            }
        );
        assert_eq!(checkpoints.load("relay").await.unwrap(), Some(last));
    }

    #[tokio::test]
    async fn a_restarted_relay_resumes_after_its_checkpoint() {
        let store = MemoryStore::new();
        append(&store, "order-1", 4).await;
        let (publisher, checkpoints) = (Recording::default(), MemoryCheckpoints::new());
        relay_until(
            &store,
            &publisher,
            &checkpoints,
            RelayOptions::to_topic("t"),
            4,
        )
        .await;
        append(&store, "order-2", 3).await;
        let summary = relay_until(
            &store,
            &publisher,
            &checkpoints,
            RelayOptions::to_topic("t"),
            7,
        )
        .await;
        assert_eq!(summary.published, 3);
        let ids: Vec<_> = publisher.published().iter().map(|(_, m)| m.id).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 7, "nothing was published twice");
    }

    #[tokio::test(start_paused = true)]
    async fn transient_publish_failures_are_retried_until_they_pass() {
        let store = MemoryStore::new();
        append(&store, "order-1", 2).await;
        let (publisher, checkpoints) = (Recording::default(), MemoryCheckpoints::new());
        for _ in 0..3 {
            publisher.fail_next(TransportError::Timeout {
                operation: "publish".into(),
                after: Duration::from_secs(1),
            });
        }
        let summary = relay_until(
            &store,
            &publisher,
            &checkpoints,
            RelayOptions::to_topic("t"),
            2,
        )
        .await;
        assert_eq!(summary.published, 2);
        assert_eq!(publisher.published().len(), 2);
    }

    #[tokio::test]
    async fn an_event_the_transport_refuses_stops_the_relay_before_it() {
        let store = MemoryStore::new();
        append(&store, "order-1", 2).await;
        let (publisher, checkpoints) = (Recording::default(), MemoryCheckpoints::new());
        publisher.fail_next(TransportError::PayloadTooLarge {
            id: uuid::Uuid::nil(),
            size: 10,
            max: 5,
        });
        let relay = OutboxRelay::new(
            "relay",
            store.clone(),
            publisher.clone(),
            checkpoints.clone(),
            RelayOptions::to_topic("t"),
        );
        let error = relay.run(CancellationToken::new()).await.unwrap_err();
        assert!(
            matches!(&error, RelayError::Refused { source, .. } if source.code() == "payload_too_large")
        );
        assert_eq!(checkpoints.load("relay").await.unwrap(), None);
        assert!(publisher.published().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_while_a_publish_keeps_failing_saves_no_checkpoint_past_it() {
        let store = MemoryStore::new();
        append(&store, "order-1", 1).await;
        let (publisher, checkpoints) = (Recording::default(), MemoryCheckpoints::new());
        for _ in 0..1_000 {
            publisher.fail_next(TransportError::Timeout {
                operation: "publish".into(),
                after: Duration::from_secs(1),
            });
        }
        let cancel = CancellationToken::new();
        let relay = OutboxRelay::new(
            "relay",
            store.clone(),
            publisher.clone(),
            checkpoints.clone(),
            RelayOptions::to_topic("t"),
        );
        let running = tokio::spawn(relay.run(cancel.clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        cancel.cancel();
        let summary = running.await.unwrap().unwrap();
        assert_eq!(summary, RelaySummary::default());
        assert_eq!(checkpoints.load("relay").await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_invalid_relay_name_is_a_checkpoint_error() {
        let relay = OutboxRelay::new(
            "no/slashes",
            MemoryStore::new(),
            Recording::default(),
            MemoryCheckpoints::new(),
            RelayOptions::to_topic("t"),
        );
        let error = relay.run(CancellationToken::new()).await.unwrap_err();
        assert!(matches!(error, RelayError::Checkpoint { .. }), "{error}");
    }
}

//! Proof that the transport suite can fail: transports with one deliberate bug each,
//! wrapped around the memory broker, must fail the cases written to catch that bug, while
//! the memory broker itself passes every case.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cairn_bus::memory::{MemoryBroker, MemoryConnection, MemoryOptions};
use cairn_bus::{
    Acknowledge, Deliveries, Delivery, Message, Publisher, Subscriber, SubscriptionSpec,
    TransportError,
};
use cairn_conformance::transport::{self, TransportFactory};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A fresh two-worker runtime, as the suite's macro uses.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// Each bug and the cases written to catch it.
const CATCHES: &[(Bug, &[&str])] = &[
    (
        Bug::AckForgets,
        &["acknowledged_messages_are_not_redelivered"],
    ),
    (
        Bug::NackDrops,
        &[
            "nacked_messages_come_back_with_the_next_attempt",
            "nack_delay_is_respected",
        ],
    ),
    (Bug::NackIgnoresDelay, &["nack_delay_is_respected"]),
    (
        Bug::ReversesBatches,
        &["one_consumer_sees_each_key_in_order"],
    ),
    (
        Bug::LosesOnDisrupt,
        &["consumption_resumes_after_a_disruption"],
    ),
    (
        Bug::EndsOnDisrupt,
        &["consumption_resumes_after_a_disruption"],
    ),
    (Bug::IgnoresSizeLimit, &["oversized_messages_are_refused"]),
    (Bug::UnconfirmedPublish, &["publish_is_confirmed"]),
    (
        Bug::IgnoresPrefetch,
        &["prefetch_bounds_unanswered_deliveries"],
    ),
    (
        Bug::OneQueueForAllGroups,
        &["every_group_gets_every_message"],
    ),
    (
        Bug::OwnQueuePerConsumer,
        &[
            "consumers_of_a_group_share_its_messages",
            "a_dead_consumers_deliveries_go_to_another_consumer",
        ],
    ),
];

#[test]
fn the_memory_broker_passes_every_case() {
    let report = runtime().block_on(transport::check_all(MemoryBroker::new()));
    println!("{report}");
    assert_eq!(report.case_names(), transport::case_names());
    report.assert_passed();
}

/// Runs every (bug, case) pair at once: a bug caught by a missing delivery costs the
/// suite's whole patience, and waiting for them one after the other would take minutes.
#[test]
fn every_bug_fails_the_cases_meant_to_catch_it() {
    let missed = runtime().block_on(async {
        let mut checks = tokio::task::JoinSet::new();
        for &(bug, cases) in CATCHES {
            for &case in cases {
                assert!(
                    transport::case_names().contains(&case),
                    "{case} is not a transport case"
                );
                checks.spawn(async move {
                    let result = transport::run_case(&Broken::new(bug), case).await;
                    (bug, case, result)
                });
            }
        }
        let mut missed = Vec::new();
        while let Some(joined) = checks.join_next().await {
            let (bug, case, result) = joined.expect("a check panicked");
            match result {
                Ok(()) => missed.push(format!("{bug:?} passed {case}")),
                Err(failure) => println!("{bug:?} fails {case}:\n{failure}\n"),
            }
        }
        missed
    });
    assert!(
        missed.is_empty(),
        "broken transports passed the cases meant to catch them: {missed:#?}"
    );
}

/// The deliberate bugs, one per broken transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// `ack` drops the answer instead of acknowledging, so the message comes back.
    AckForgets,
    /// `nack` acknowledges, so the message is gone.
    NackDrops,
    /// `nack(Some(delay))` redelivers at once.
    NackIgnoresDelay,
    /// `publish` sends each batch in reverse order.
    ReversesBatches,
    /// After a disruption, redeliveries are acknowledged and skipped instead of delivered.
    LosesOnDisrupt,
    /// After a disruption, streams end instead of resuming.
    EndsOnDisrupt,
    /// Reports a 1 MiB limit but publishes up to 2 MiB.
    IgnoresSizeLimit,
    /// `publish` hands the messages to a background task and returns; the task stores them
    /// slowly and dies with the connection.
    UnconfirmedPublish,
    /// Subscribes with a prefetch of 10,000 whatever was asked.
    IgnoresPrefetch,
    /// Every group of a topic is the same queue.
    OneQueueForAllGroups,
    /// Every subscription gets a queue of its own, as if each were its own group.
    OwnQueuePerConsumer,
}

/// The memory broker with one bug.
struct Broken {
    broker: MemoryBroker,
    bug: Bug,
    /// Set by `disrupt`; read by the streams of the disruption bugs.
    disrupted: Arc<AtomicBool>,
}

impl Broken {
    fn new(bug: Bug) -> Self {
        let options = match bug {
            Bug::IgnoresSizeLimit => MemoryOptions::default().max_message_size(2 << 20),
            _ => MemoryOptions::default(),
        };
        Self {
            broker: MemoryBroker::with_options(options),
            bug,
            disrupted: Arc::default(),
        }
    }
}

impl TransportFactory for Broken {
    type Connection = BrokenConnection;

    async fn connect(&self) -> Result<BrokenConnection, TransportError> {
        let inner = self.broker.connect();
        let relay = (self.bug == Bug::UnconfirmedPublish).then(|| Relay::start(&self.broker));
        Ok(BrokenConnection {
            inner,
            bug: self.bug,
            disrupted: Arc::clone(&self.disrupted),
            relay,
        })
    }

    async fn disrupt(&self) -> bool {
        self.disrupted.store(true, Ordering::SeqCst);
        self.broker.sever();
        true
    }
}

/// The background publisher of [`Bug::UnconfirmedPublish`]: stores one message every few
/// milliseconds, and is aborted (losing what it still holds) when its connection is
/// dropped.
struct Relay {
    queue: mpsc::UnboundedSender<(String, Message)>,
    task: JoinHandle<()>,
}

impl Relay {
    fn start(broker: &MemoryBroker) -> Self {
        let (queue, mut pending) = mpsc::unbounded_channel::<(String, Message)>();
        let broker = broker.clone();
        let task = tokio::spawn(async move {
            while let Some((topic, message)) = pending.recv().await {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = broker.publish(&topic, vec![message]).await;
            }
        });
        Self { queue, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct BrokenConnection {
    inner: MemoryConnection,
    bug: Bug,
    disrupted: Arc<AtomicBool>,
    relay: Option<Relay>,
}

impl BrokenConnection {
    fn spec(&self, spec: &SubscriptionSpec) -> SubscriptionSpec {
        let mut spec = spec.clone();
        match self.bug {
            Bug::IgnoresPrefetch => spec.prefetch = 10_000,
            Bug::OneQueueForAllGroups => spec.group = "every-group".to_owned(),
            Bug::OwnQueuePerConsumer => {
                spec.group = format!("{}-{}", spec.group, uuid::Uuid::now_v7().simple());
            }
            _ => {}
        }
        spec
    }
}

#[async_trait]
impl Publisher for BrokenConnection {
    async fn publish(&self, topic: &str, mut messages: Vec<Message>) -> Result<(), TransportError> {
        match (&self.relay, self.bug) {
            (Some(relay), _) => {
                for message in messages {
                    let _ = relay.queue.send((topic.to_owned(), message));
                }
                Ok(())
            }
            (None, Bug::ReversesBatches) => {
                messages.reverse();
                self.inner.publish(topic, messages).await
            }
            (None, _) => self.inner.publish(topic, messages).await,
        }
    }

    fn max_message_size(&self) -> usize {
        match self.bug {
            Bug::IgnoresSizeLimit => 1 << 20,
            _ => self.inner.max_message_size(),
        }
    }
}

#[async_trait]
impl Subscriber for BrokenConnection {
    async fn subscribe(&self, spec: &SubscriptionSpec) -> Result<Deliveries, TransportError> {
        let inner = self.inner.subscribe(&self.spec(spec)).await?;
        let bug = self.bug;
        let disrupted = Arc::clone(&self.disrupted);
        Ok(match bug {
            Bug::AckForgets | Bug::NackDrops | Bug::NackIgnoresDelay => {
                Deliveries::new(inner.map(move |item| item.map(|d| rewrap(d, bug))))
            }
            Bug::LosesOnDisrupt => Deliveries::new(inner.filter_map(move |item| {
                let disrupted = disrupted.load(Ordering::SeqCst);
                async move {
                    match item {
                        Ok(delivery) if disrupted && delivery.attempt > 1 => {
                            let _ = delivery.ack().await;
                            None
                        }
                        other => Some(other),
                    }
                }
            })),
            Bug::EndsOnDisrupt => Deliveries::new(
                inner
                    .take_while(move |_| futures::future::ready(!disrupted.load(Ordering::SeqCst))),
            ),
            _ => inner,
        })
    }

    async fn lag(&self, spec: &SubscriptionSpec) -> Result<Option<u64>, TransportError> {
        self.inner.lag(&self.spec(spec)).await
    }
}

fn rewrap(delivery: Delivery, bug: Bug) -> Delivery {
    let (topic, message, attempt, inner) = delivery.into_parts();
    Delivery::new(topic, message, attempt, Box::new(BrokenAck { inner, bug }))
}

/// An answer with the bug of its transport.
struct BrokenAck {
    inner: Box<dyn Acknowledge>,
    bug: Bug,
}

impl Acknowledge for BrokenAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        match self.bug {
            Bug::AckForgets => {
                drop(self.inner);
                Box::pin(futures::future::ready(Ok(())))
            }
            _ => self.inner.ack(),
        }
    }

    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        match self.bug {
            Bug::NackDrops => self.inner.ack(),
            Bug::NackIgnoresDelay => self.inner.nack(None),
            _ => self.inner.nack(delay),
        }
    }
}

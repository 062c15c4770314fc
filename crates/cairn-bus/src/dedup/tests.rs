use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::message::Message;

/// A handler that counts its runs, fails while `failing` is set, and, when `gate` has no
/// permits, waits for one before finishing.
#[derive(Clone, Default)]
struct Handler {
    runs: Arc<AtomicUsize>,
    /// Runs that succeeded: the message's effect.
    done: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    gate: Option<Arc<Semaphore>>,
}

impl Handler {
    fn gated() -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let handler = Self {
            gate: Some(Arc::clone(&gate)),
            ..Self::default()
        };
        (handler, gate)
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn effects(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<Incoming, Response = (), Error = HandlerError, Future: Send> + Clone + Send + 'static
    {
        let handler = self.clone();
        service_fn(move |_: Incoming| {
            let handler = handler.clone();
            async move {
                handler.runs.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = &handler.gate {
                    gate.acquire().await.unwrap().forget();
                }
                if handler.failing.load(Ordering::SeqCst) {
                    return Err(HandlerError::transient("downstream away"));
                }
                handler.done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    }
}

/// An inbox that always has to wait: the memory inbox without its immediate side.
#[derive(Clone, Default)]
struct WaitingInbox {
    memory: MemoryInbox,
    broken: Arc<AtomicBool>,
}

#[async_trait]
impl Inbox for WaitingInbox {
    async fn contains(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        tokio::task::yield_now().await;
        if self.broken.load(Ordering::SeqCst) {
            return Err(InboxError::Unavailable("connection refused".into()));
        }
        self.memory.contains_now(consumer, id)
    }

    async fn record(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        tokio::task::yield_now().await;
        self.memory.record_now(consumer, id)
    }
}

fn incoming(id: Uuid) -> Incoming {
    Incoming::new("orders", Message::new("order.placed", "{}").with_id(id))
}

async fn deliver<S>(service: &mut S, id: Uuid) -> Result<(), HandlerError>
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
{
    service.ready().await?.call(incoming(id)).await
}

#[tokio::test]
async fn a_recorded_message_is_skipped_without_running_the_handler() {
    for inbox in [
        Arc::new(MemoryInbox::new()) as Arc<dyn Inbox>,
        Arc::new(WaitingInbox::default()),
    ] {
        let handler = Handler::default();
        let mut service =
            DedupLayer::from_shared("billing", inbox.clone()).layer(handler.service());
        let id = Uuid::now_v7();
        deliver(&mut service, id).await.unwrap();
        deliver(&mut service, id).await.unwrap();
        deliver(&mut service, Uuid::now_v7()).await.unwrap();
        assert_eq!(handler.runs(), 2);
        assert!(inbox.contains("billing", id).await.unwrap());
        assert!(
            !inbox.contains("shipping", id).await.unwrap(),
            "consumers are apart"
        );
    }
}

#[tokio::test]
async fn a_failed_message_is_not_recorded_so_its_redelivery_runs_again() {
    for inbox in [
        Arc::new(MemoryInbox::new()) as Arc<dyn Inbox>,
        Arc::new(WaitingInbox::default()),
    ] {
        let handler = Handler::default();
        let mut service =
            DedupLayer::from_shared("billing", inbox.clone()).layer(handler.service());
        let id = Uuid::now_v7();
        handler.failing.store(true, Ordering::SeqCst);
        let error = deliver(&mut service, id).await.unwrap_err();
        assert_eq!(error.code(), "transient");
        assert!(!inbox.contains("billing", id).await.unwrap());

        handler.failing.store(false, Ordering::SeqCst);
        deliver(&mut service, id).await.unwrap();
        deliver(&mut service, id).await.unwrap();
        assert_eq!(
            handler.runs(),
            2,
            "the failure and the redelivery ran, the duplicate not"
        );
    }
}

/// Starts a delivery on its own task and lets it reach the handler.
async fn start<S>(service: &mut S, id: Uuid) -> tokio::task::JoinHandle<Result<(), HandlerError>>
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
    S::Future: Send + 'static,
{
    let future = service.ready().await.unwrap().call(incoming(id));
    let task = tokio::spawn(future);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    task
}

#[tokio::test]
async fn concurrent_deliveries_of_one_id_run_the_handler_once() {
    for inbox in [
        Arc::new(MemoryInbox::new()) as Arc<dyn Inbox>,
        Arc::new(WaitingInbox::default()),
    ] {
        let (handler, gate) = Handler::gated();
        let layer = DedupLayer::from_shared("billing", inbox);
        let mut one = layer.layer(handler.service());
        let mut two = layer.layer(handler.service());
        let id = Uuid::now_v7();
        let first = start(&mut one, id).await;
        let second = start(&mut two, id).await;
        let third = start(&mut one, id).await;
        assert_eq!(handler.runs(), 1, "the duplicates wait");

        gate.add_permits(1);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        third.await.unwrap().unwrap();
        assert_eq!(handler.runs(), 1);
        assert_eq!(layer.shared.in_progress.len(), 0);
    }
}

#[tokio::test]
async fn a_waiting_duplicate_runs_when_the_first_delivery_fails() {
    let (handler, gate) = Handler::gated();
    let mut service = DedupLayer::new("billing", MemoryInbox::new()).layer(handler.service());
    let id = Uuid::now_v7();
    handler.failing.store(true, Ordering::SeqCst);
    let first = start(&mut service, id).await;
    let second = start(&mut service, id).await;
    assert_eq!(handler.runs(), 1);

    gate.add_permits(1);
    assert!(first.await.unwrap().is_err());
    handler.failing.store(false, Ordering::SeqCst);
    tokio::task::yield_now().await;
    gate.add_permits(1);
    second.await.unwrap().unwrap();
    assert_eq!(handler.runs(), 2);
}

#[tokio::test]
async fn a_cancelled_first_delivery_lets_the_duplicate_run() {
    let (handler, gate) = Handler::gated();
    let layer = DedupLayer::new("billing", MemoryInbox::new());
    let mut service = layer.layer(handler.service());
    let id = Uuid::now_v7();
    let first = start(&mut service, id).await;
    let second = start(&mut service, id).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the duplicate is not stuck")
        .unwrap()
        .unwrap();
    assert_eq!(handler.runs(), 2);
    deliver(&mut service, id).await.unwrap();
    assert_eq!(handler.runs(), 2, "recorded by the second");
    assert_eq!(layer.shared.in_progress.len(), 0);
}

#[tokio::test]
async fn an_immediate_inbox_holds_the_id_while_the_message_runs_and_a_failure_takes_it_back() {
    let (handler, gate) = Handler::gated();
    let inbox = MemoryInbox::new();
    let layer = DedupLayer::new("billing", inbox.clone());
    let mut service = layer.layer(handler.service());
    let id = Uuid::now_v7();
    handler.failing.store(true, Ordering::SeqCst);
    let first = start(&mut service, id).await;
    assert!(
        inbox.contains_now("billing", id).unwrap(),
        "recorded as it started"
    );
    gate.add_permits(1);
    assert!(first.await.unwrap().is_err());
    assert!(!inbox.contains_now("billing", id).unwrap());
    assert_eq!(inbox.remembered("billing"), 0);
    assert_eq!(layer.shared.in_progress.len(), 0);

    handler.failing.store(false, Ordering::SeqCst);
    gate.add_permits(2);
    deliver(&mut service, id).await.unwrap();
    deliver(&mut service, id).await.unwrap();
    assert_eq!(handler.runs(), 2, "the redelivery ran, its duplicate not");
    assert!(inbox.contains_now("billing", id).unwrap());
}

#[tokio::test]
async fn a_cancelled_message_leaves_its_id_unrecorded() {
    let (handler, _gate) = Handler::gated();
    let inbox = MemoryInbox::new();
    let layer = DedupLayer::new("billing", inbox.clone());
    let mut service = layer.layer(handler.service());
    let id = Uuid::now_v7();
    let first = start(&mut service, id).await;
    assert!(inbox.contains_now("billing", id).unwrap());
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert!(!inbox.contains_now("billing", id).unwrap());
    assert_eq!(layer.shared.in_progress.len(), 0);
}

#[tokio::test]
async fn a_duplicate_arriving_while_the_first_runs_waits_for_its_outcome() {
    let (handler, gate) = Handler::gated();
    let layer = DedupLayer::new("billing", MemoryInbox::new());
    let mut service = layer.layer(handler.service());
    let id = Uuid::now_v7();
    let first = start(&mut service, id).await;
    let second = start(&mut service, id).await;
    // The id is recorded, yet the duplicate neither skips nor runs before the first ends.
    assert!(!second.is_finished(), "the duplicate did not wait");
    assert_eq!(handler.runs(), 1);
    gate.add_permits(1);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(handler.runs(), 1);
}

#[tokio::test]
async fn an_unavailable_inbox_fails_the_message_without_running_it() {
    let inbox = WaitingInbox::default();
    inbox.broken.store(true, Ordering::SeqCst);
    let handler = Handler::default();
    let layer = DedupLayer::new("billing", inbox);
    let mut service = layer.layer(handler.service());
    let error = deliver(&mut service, Uuid::now_v7()).await.unwrap_err();
    assert!(error.is_retryable());
    assert!(
        error.to_string().contains("inbox is unavailable"),
        "{error}"
    );
    assert_eq!(handler.runs(), 0);
    assert_eq!(layer.shared.in_progress.len(), 0);
}

#[test]
fn the_memory_inbox_forgets_the_oldest_ids_beyond_its_window() {
    let inbox = MemoryInbox::with_window(3);
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        assert!(inbox.record_now("billing", *id).unwrap());
    }
    assert!(
        !inbox.record_now("billing", ids[4]).unwrap(),
        "a duplicate is not recorded twice"
    );
    let remembered: Vec<bool> = ids
        .iter()
        .map(|id| inbox.contains_now("billing", *id).unwrap())
        .collect();
    assert_eq!(remembered, [false, false, true, true, true]);
    assert_eq!(inbox.remembered("billing"), 3);
    assert_eq!(inbox.remembered("shipping"), 0);

    // A forgotten id is new again.
    assert!(inbox.record_now("billing", ids[0]).unwrap());
    assert!(!inbox.contains_now("billing", ids[2]).unwrap());
}

#[test]
fn each_consumer_has_its_own_window() {
    let inbox = MemoryInbox::with_window(1);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    inbox.record_now("billing", a).unwrap();
    inbox.record_now("shipping", b).unwrap();
    assert!(inbox.contains_now("billing", a).unwrap());
    assert!(inbox.contains_now("shipping", b).unwrap());
    assert_eq!(MemoryInbox::new().window(), MemoryInbox::DEFAULT_WINDOW);
}

/// Records `count` fresh ids for `consumer`, returning them in record order.
fn record_fresh(inbox: &MemoryInbox, consumer: &str, count: usize) -> Vec<Uuid> {
    (0..count)
        .map(|_| {
            let id = Uuid::now_v7();
            assert!(inbox.record_now(consumer, id).unwrap());
            id
        })
        .collect()
}

#[test]
fn an_id_is_remembered_through_its_window_and_forgotten_by_forgets_after() {
    // Small windows, where a generation is one id; a quarter that divides the window and
    // one that does not; a window whose table grows past the size where it stops doubling.
    for window in [1, 2, 3, 4, 5, 1_000, 1_001, 100_003] {
        remembered_through_the_window_and_forgotten_by_forgets_after(window);
    }
    assert_eq!(MemoryInbox::new().forgets_after(), 1_249_999);
}

fn remembered_through_the_window_and_forgotten_by_forgets_after(window: usize) {
    let inbox = MemoryInbox::with_window(window);
    // A generation is a quarter of the window, rounded up: an id is forgotten at the
    // latest less than two generations late, less than one when a quarter divides the
    // window, and exactly at the window for up to 4 ids.
    let generation = window.div_ceil(4);
    assert!(inbox.forgets_after() >= window);
    assert!(inbox.forgets_after() < window + 2 * generation);
    if window.is_multiple_of(4) {
        assert!(inbox.forgets_after() < window + generation);
    }
    if window <= 4 {
        assert_eq!(inbox.forgets_after(), window);
    }
    if window == 1_000 {
        assert_eq!(inbox.forgets_after(), 1_249);
    }
    // Every id recorded is checked after each number of newer ids, from 0 to past
    // `forgets_after`: remembered while fewer than `window` newer, forgotten from
    // `forgets_after` newer on, whatever its place in its generation.
    let ids = record_fresh(&inbox, "billing", 2 * inbox.forgets_after());
    let mut forgotten_at = Vec::new();
    for (at, id) in ids.iter().enumerate() {
        let newer = ids.len() - at - 1;
        let remembered = inbox.contains_now("billing", *id).unwrap();
        if newer < window {
            assert!(
                remembered,
                "window {window}: an id with {newer} newer ones was forgotten"
            );
        }
        if newer >= inbox.forgets_after() {
            assert!(
                !remembered,
                "window {window}: an id with {newer} newer ones is remembered"
            );
        }
        if !remembered {
            forgotten_at.push(newer);
        }
    }
    // Forgetting goes oldest first: the forgotten ids are the oldest ones, all of them.
    let oldest_forgotten = forgotten_at.len();
    assert!(
        forgotten_at
            .iter()
            .all(|newer| *newer >= ids.len() - oldest_forgotten)
    );
    assert!(inbox.remembered("billing") <= inbox.forgets_after());
    assert!(inbox.remembered("billing") >= window);
}

#[tokio::test]
async fn a_duplicate_inside_the_window_is_skipped_and_one_past_it_runs_again() {
    let inbox = MemoryInbox::with_window(100);
    let handler = Handler::default();
    let mut service = DedupLayer::new("billing", inbox.clone()).layer(handler.service());
    let first = Incoming::new("orders", Message::new("order.placed", "{}"));
    service
        .ready()
        .await
        .unwrap()
        .call(first.clone())
        .await
        .unwrap();
    // 99 newer ids: still inside the window, the duplicate is skipped.
    record_fresh(&inbox, "billing", 99);
    service
        .ready()
        .await
        .unwrap()
        .call(first.clone())
        .await
        .unwrap();
    assert_eq!(handler.runs(), 1, "a duplicate inside the window ran");
    // `forgets_after` newer ids in all: forgotten, the duplicate runs as documented.
    record_fresh(&inbox, "billing", inbox.forgets_after() - 99);
    service.ready().await.unwrap().call(first).await.unwrap();
    assert_eq!(
        handler.runs(),
        2,
        "a duplicate past the window was not run again"
    );
}

#[test]
fn an_id_recorded_and_removed_again_does_not_count_toward_the_window() {
    // Generations of one id: any record past the window that counted would forget `old`.
    let inbox = MemoryInbox::with_window(4);
    let old = Uuid::now_v7();
    assert!(inbox.record_now("billing", old).unwrap());
    for _ in 0..10 {
        let failed = Uuid::now_v7();
        assert_eq!(inbox.start_now("billing", failed).unwrap(), Start::New);
        inbox.finish_now("billing", failed, false);
        assert!(!inbox.contains_now("billing", failed).unwrap());
    }
    record_fresh(&inbox, "billing", 3);
    assert!(
        inbox.contains_now("billing", old).unwrap(),
        "3 newer ids and 10 removed ones forgot it"
    );
    assert_eq!(inbox.remembered("billing"), 4);
    // Failing an id not running (never recorded, recorded without a run, or of a
    // consumer without any) changes nothing.
    inbox.finish_now("billing", Uuid::now_v7(), false);
    inbox.finish_now("billing", old, false);
    inbox.finish_now("shipping", old, false);
    assert_eq!(inbox.remembered("billing"), 4);
    assert!(inbox.contains_now("billing", old).unwrap());
}

#[test]
fn a_started_id_is_running_for_every_clone_until_it_finishes() {
    let inbox = MemoryInbox::with_window(4);
    let other = inbox.clone();
    let (kept, failed) = (Uuid::now_v7(), Uuid::now_v7());
    for id in [kept, failed] {
        assert_eq!(inbox.start_now("billing", id).unwrap(), Start::New);
        assert_eq!(other.start_now("billing", id).unwrap(), Start::Running);
        assert_eq!(inbox.start_now("shipping", id).unwrap(), Start::New);
    }
    assert_eq!(inbox.running("billing"), 2);
    other.finish_now("billing", kept, true);
    other.finish_now("billing", failed, false);
    assert_eq!(inbox.start_now("billing", kept).unwrap(), Start::Done);
    assert_eq!(inbox.start_now("billing", failed).unwrap(), Start::New);
    assert_eq!(inbox.running("billing"), 1);
    // Still running after its generation was forgotten: never answered as new meanwhile.
    record_fresh(&inbox, "billing", inbox.forgets_after() + 1);
    assert!(!inbox.contains_now("billing", failed).unwrap());
    assert_eq!(inbox.start_now("billing", failed).unwrap(), Start::Running);
    inbox.finish_now("billing", failed, true);
    assert_eq!(inbox.running("billing"), 0);
}

#[tokio::test]
async fn a_copy_reaching_another_layer_while_the_first_runs_is_not_acknowledged_unrun() {
    // Two consumers of one group in one process, each with its layer over a clone of one
    // inbox: a redelivery (after an ack timeout) reaches the second while the first copy
    // still runs, and the first then fails. Acknowledging the second copy without running
    // it would settle the message on brokers that ack a message rather than a delivery.
    let (handler, gate) = Handler::gated();
    let inbox = MemoryInbox::new();
    let mut one = DedupLayer::new("billing", inbox.clone()).layer(handler.service());
    let mut two = DedupLayer::new("billing", inbox.clone()).layer(handler.service());
    let id = Uuid::now_v7();
    handler.failing.store(true, Ordering::SeqCst);
    let first = start(&mut one, id).await;
    assert_eq!(handler.runs(), 1);
    let second = start(&mut two, id).await;

    gate.add_permits(1);
    assert!(first.await.unwrap().is_err());
    handler.failing.store(false, Ordering::SeqCst);
    // Room for a second copy that waited for the first's outcome and runs now.
    gate.add_permits(1);
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second copy is not stuck")
        .unwrap();
    match second {
        Ok(()) => assert_eq!(handler.runs(), 2, "the second copy was acknowledged unrun"),
        Err(error) => assert!(error.is_retryable(), "{error}"),
    }

    // The broker redelivers what was not acknowledged, to either consumer.
    gate.add_permits(2);
    deliver(&mut two, id).await.unwrap();
    deliver(&mut one, id).await.unwrap();
    assert_eq!(handler.effects(), 1, "the effect happened once");
    assert_eq!(inbox.running("billing"), 0);
    assert!(inbox.contains_now("billing", id).unwrap());
}

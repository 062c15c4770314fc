use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::message::Message;

/// A handler that fails the message types in `failing` (as the retry middleware would
/// after three attempts), records the types it handled, and, with a gate, waits for a
/// permit before each message.
#[derive(Clone, Default)]
struct Handler {
    failing: Arc<Mutex<HashSet<String>>>,
    handled: Arc<Mutex<Vec<String>>>,
    gate: Option<Arc<Semaphore>>,
    /// Calls that reached the handler, before the gate.
    entered: Arc<AtomicUsize>,
}

impl Handler {
    fn fail(&self, message_type: &str) {
        self.failing.lock().unwrap().insert(message_type.to_owned());
    }

    fn heal(&self) {
        self.failing.lock().unwrap().clear();
    }

    fn handled(&self) -> Vec<String> {
        self.handled.lock().unwrap().clone()
    }

    fn service(
        &self,
    ) -> impl Service<Incoming, Response = (), Error = HandlerError, Future: Send> + Clone + Send + 'static
    {
        let handler = self.clone();
        service_fn(move |incoming: Incoming| {
            let handler = handler.clone();
            async move {
                handler.entered.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = &handler.gate {
                    gate.acquire().await.unwrap().forget();
                }
                let message_type = &incoming.message.message_type;
                if handler
                    .failing
                    .lock()
                    .unwrap()
                    .contains(message_type.as_str())
                {
                    return Err(HandlerError::Exhausted {
                        attempts: 3,
                        last: Box::new(HandlerError::transient("ledger unreachable")),
                    });
                }
                handler
                    .handled
                    .lock()
                    .unwrap()
                    .push(message_type.to_string());
                Ok(())
            }
        })
    }
}

struct Setup {
    handler: Handler,
    service: DeadLetter<tower::util::BoxCloneService<Incoming, (), HandlerError>>,
    letters: DeadLetters,
    store: MemoryDeadLetters,
    parked_count: Arc<AtomicUsize>,
}

fn setup(policy: KeyPolicy, handler: Handler) -> Setup {
    let store = MemoryDeadLetters::new();
    let parked_count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&parked_count);
    let layer = DeadLetterLayer::new(store.clone(), policy).on_parked(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let service = layer.layer(tower::util::BoxCloneService::new(handler.service()));
    Setup {
        handler,
        service,
        letters: layer.dead_letters(),
        store,
        parked_count,
    }
}

fn keyed(message_type: &str, key: &str) -> Message {
    Message::new(message_type, "{}").with_key(key)
}

impl Setup {
    async fn deliver(&mut self, message: Message) -> Result<(), HandlerError> {
        self.service
            .ready()
            .await?
            .call(Incoming::new("orders", message))
            .await
    }

    async fn parked_types(&self) -> Vec<String> {
        self.letters
            .list(&ListFilter::new())
            .await
            .unwrap()
            .into_iter()
            .map(|parked| parked.message.message_type.to_string())
            .collect()
    }
}

#[tokio::test]
async fn a_failed_message_is_parked_with_its_error_attempts_and_headers() {
    let mut s = setup(KeyPolicy::Block, Handler::default());
    s.handler.fail("order.placed");
    let message = keyed("order.placed", "order-1").with_header("traceparent", "00-abc-def-01");
    s.deliver(message.clone()).await.unwrap();

    let parked = s.letters.list(&ListFilter::new()).await.unwrap();
    assert_eq!(parked.len(), 1);
    let parked = &parked[0];
    assert_eq!(*parked.message, message);
    assert_eq!(&*parked.topic, "orders");
    assert_eq!(parked.code, "exhausted");
    assert_eq!(
        parked.error,
        "gave up after 3 attempts: transient failure: ledger unreachable"
    );
    assert_eq!(parked.attempts, 3);
    assert_eq!(parked.behind, None);
    assert_eq!(s.letters.get(parked.id).await.unwrap().id, parked.id);
    assert_eq!(s.parked_count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn later_messages_of_a_parked_key_wait_behind_it_while_other_keys_flow() {
    let mut s = setup(KeyPolicy::Block, Handler::default());
    s.handler.fail("a1");
    s.deliver(keyed("a1", "a")).await.unwrap();
    s.deliver(keyed("a2", "a")).await.unwrap();
    s.deliver(keyed("b1", "b")).await.unwrap();
    s.deliver(Message::new("n1", "{}")).await.unwrap();

    assert_eq!(s.handler.handled(), ["b1", "n1"]);
    let parked = s.letters.list(&ListFilter::new()).await.unwrap();
    assert_eq!(parked.len(), 2);
    assert_eq!(parked[1].message.message_type, "a2");
    assert_eq!(parked[1].code, WAITING_BEHIND);
    assert_eq!(parked[1].behind, Some(parked[0].id));
    assert_eq!(parked[1].attempts, 0);
    assert_eq!(
        parked[1].error,
        format!("waiting behind parking id {}", parked[0].id)
    );
    assert!(s.letters.is_blocked("a"));
    assert!(!s.letters.is_blocked("b"));
    assert_eq!(s.letters.blocked_keys(), ["a"]);
    assert_eq!(s.parked_count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_continue_policy_handles_later_messages_of_the_key() {
    let mut s = setup(KeyPolicy::Continue, Handler::default());
    s.handler.fail("a1");
    s.deliver(keyed("a1", "a")).await.unwrap();
    s.deliver(keyed("a2", "a")).await.unwrap();
    assert_eq!(s.handler.handled(), ["a2"]);
    assert_eq!(s.parked_types().await, ["a1"]);
    assert!(!s.letters.is_blocked("a"));

    s.handler.heal();
    let parked = s.letters.list(&ListFilter::new()).await.unwrap();
    let report = s.letters.replay(parked[0].id).await.unwrap();
    assert_eq!(report.handled, [parked[0].id]);
    assert!(s.store.is_empty());
}

#[tokio::test]
async fn a_shutting_down_error_passes_through_unparked() {
    let mut s = setup(KeyPolicy::Block, Handler::default());
    let mut service = DeadLetterLayer::new(s.store.clone(), KeyPolicy::Block).layer(service_fn(
        |_: Incoming| async { Err::<(), _>(HandlerError::ShuttingDown) },
    ));
    let incoming = Incoming::new("orders", keyed("a1", "a"));
    let error = service
        .ready()
        .await
        .unwrap()
        .call(incoming)
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::ShuttingDown));
    assert!(s.store.is_empty());
    s.deliver(keyed("a2", "a")).await.unwrap();
    assert_eq!(s.handler.handled(), ["a2"]);
}

#[tokio::test]
async fn replaying_the_oldest_message_removes_it_and_the_last_one_unblocks_the_key() {
    let mut s = setup(KeyPolicy::Block, Handler::default());
    s.handler.fail("a1");
    s.deliver(keyed("a1", "a")).await.unwrap();
    s.deliver(keyed("a2", "a")).await.unwrap();
    let parked = s.letters.list(&ListFilter::new()).await.unwrap();
    let (first, second) = (parked[0].id, parked[1].id);

    let refused = s.letters.replay(second).await.unwrap_err();
    assert!(
        matches!(&refused, DeadLetterError::NotOldestOfKey { id, oldest, .. } if *id == second && *oldest == first),
        "{refused}"
    );
    assert_eq!(refused.code(), "dead_letter_not_oldest_of_key");

    s.handler.heal();
    assert_eq!(s.letters.replay(first).await.unwrap().handled, [first]);
    assert!(s.letters.is_blocked("a"), "a2 is still parked");
    s.deliver(keyed("a3", "a")).await.unwrap();
    assert_eq!(s.parked_types().await, ["a2", "a3"]);

    assert_eq!(s.letters.replay(second).await.unwrap().handled, [second]);
    assert!(s.letters.is_blocked("a"));
    s.letters.replay_key("a").await.unwrap();
    assert!(!s.letters.is_blocked("a"));
    assert_eq!(s.handler.handled(), ["a1", "a2", "a3"]);

    s.deliver(keyed("a4", "a")).await.unwrap();
    assert_eq!(s.handler.handled(), ["a1", "a2", "a3", "a4"]);
    let missing = s.letters.replay(first).await.unwrap_err();
    assert!(matches!(missing, DeadLetterError::NotFound { id } if id == first));
}

#[tokio::test]
async fn a_replay_that_fails_again_keeps_the_message_parked_and_its_key_blocked() {
    let mut s = setup(KeyPolicy::Block, Handler::default());
    s.handler.fail("a1");
    s.deliver(keyed("a1", "a")).await.unwrap();
    s.deliver(keyed("a2", "a")).await.unwrap();
    let parked = s.letters.list(&ListFilter::new()).await.unwrap();

    let report = s.letters.replay_key("a").await.unwrap();
    assert_eq!(report.failed, [parked[0].id]);
    assert_eq!(report.held, [parked[1].id]);
    assert!(report.handled.is_empty());
    assert!(!report.is_complete());
    assert!(s.handler.handled().is_empty(), "a2 did not overtake a1");
    assert!(s.letters.is_blocked("a"));

    let again = s.letters.get(parked[0].id).await.unwrap();
    assert_eq!(again.attempts, 6, "three at first, three in the replay");
    assert_eq!(again.code, "exhausted");

    // A failing replay of a message that was only waiting records its own failure.
    s.letters.discard(parked[0].id).await.unwrap();
    s.handler.fail("a2");
    let report = s.letters.replay(parked[1].id).await.unwrap();
    assert_eq!(report.failed, [parked[1].id]);
    let a2 = s.letters.get(parked[1].id).await.unwrap();
    assert_eq!(
        (a2.code.as_str(), a2.attempts, a2.behind),
        ("exhausted", 3, None)
    );
}

#[tokio::test]
async fn replay_all_goes_in_parking_order_and_holds_only_the_failing_keys() {
    let mut s = setup(KeyPolicy::Block, Handler::default());
    s.handler.fail("a1");
    s.handler.fail("b1");
    s.handler.fail("n1");
    for message in [
        keyed("a1", "a"),
        keyed("b1", "b"),
        Message::new("n1", "{}"),
        keyed("a2", "a"),
        keyed("b2", "b"),
    ] {
        s.deliver(message).await.unwrap();
    }
    assert_eq!(s.parked_types().await, ["a1", "b1", "n1", "a2", "b2"]);

    s.handler.heal();
    s.handler.fail("b1");
    let report = s.letters.replay_all().await.unwrap();
    assert_eq!(s.handler.handled(), ["a1", "a2", "n1"]);
    assert_eq!(report.handled.len(), 3);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.held.len(), 1);
    assert_eq!(s.parked_types().await, ["b1", "b2"]);
    assert_eq!(s.letters.blocked_keys(), ["b"]);

    s.handler.heal();
    assert!(s.letters.replay_all().await.unwrap().is_complete());
    assert!(s.store.is_empty());
    assert!(s.letters.blocked_keys().is_empty());
}

#[tokio::test]
async fn no_message_overtakes_a_key_being_replayed() {
    let gate = Arc::new(Semaphore::new(1));
    let handler = Handler {
        gate: Some(Arc::clone(&gate)),
        ..Handler::default()
    };
    let mut s = setup(KeyPolicy::Block, handler);
    s.handler.fail("a1");
    s.deliver(keyed("a1", "a")).await.unwrap();
    s.deliver(keyed("a2", "a")).await.unwrap();
    s.handler.heal();

    // The replay waits in the handler on a1; a3 arrives meanwhile.
    let letters = s.letters.clone();
    let replay = tokio::spawn(async move { letters.replay_key("a").await });
    while s.handler.entered.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    assert!(s.letters.is_blocked("a"));
    assert!(matches!(
        s.letters.replay_key("a").await,
        Err(DeadLetterError::Busy { .. })
    ));
    s.deliver(keyed("a3", "a")).await.unwrap();
    assert_eq!(s.parked_types().await, ["a1", "a2", "a3"]);

    gate.add_permits(10);
    let report = replay.await.unwrap().unwrap();
    assert_eq!(
        report.handled.len(),
        3,
        "a3, parked during the replay, was replayed too"
    );
    assert_eq!(s.handler.handled(), ["a1", "a2", "a3"]);
    assert!(!s.letters.is_blocked("a"));
    assert!(s.store.is_empty());
}

#[tokio::test]
async fn discard_removes_a_message_and_unblocks_an_emptied_key() {
    let mut s = setup(KeyPolicy::Block, Handler::default());
    s.handler.fail("a1");
    s.deliver(keyed("a1", "a")).await.unwrap();
    let id = s.letters.list(&ListFilter::new()).await.unwrap()[0].id;
    let discarded = s.letters.discard(id).await.unwrap();
    assert_eq!(discarded.message.message_type, "a1");
    assert!(!s.letters.is_blocked("a"));
    assert!(s.store.is_empty());
    let missing = s.letters.discard(id).await.unwrap_err();
    assert_eq!(missing.code(), "dead_letter_not_found");
    assert!(s.handler.handled().is_empty());
}

#[tokio::test]
async fn list_filters_by_topic_key_and_page() {
    let mut s = setup(KeyPolicy::Continue, Handler::default());
    for t in ["a1", "a2", "b1", "n1"] {
        s.handler.fail(t);
    }
    s.deliver(keyed("a1", "a")).await.unwrap();
    s.deliver(keyed("b1", "b")).await.unwrap();
    s.deliver(keyed("a2", "a")).await.unwrap();
    let mut service = s.service.clone();
    let elsewhere = Incoming::new("payments", Message::new("n1", "{}"));
    service
        .ready()
        .await
        .unwrap()
        .call(elsewhere)
        .await
        .unwrap();

    let types = |parked: Vec<Parked>| -> Vec<String> {
        parked
            .iter()
            .map(|p| p.message.message_type.to_string())
            .collect()
    };
    let by_key = s.letters.list(&ListFilter::new().key("a")).await.unwrap();
    assert_eq!(types(by_key.clone()), ["a1", "a2"]);
    let by_topic = s
        .letters
        .list(&ListFilter::new().topic("payments"))
        .await
        .unwrap();
    assert_eq!(types(by_topic), ["n1"]);
    let first_page = s.letters.list(&ListFilter::new().limit(2)).await.unwrap();
    assert_eq!(types(first_page.clone()), ["a1", "b1"]);
    let next_page = ListFilter::new().after(first_page[1].id).limit(2);
    assert_eq!(
        types(s.letters.list(&next_page).await.unwrap()),
        ["a2", "n1"]
    );
    let key_page = ListFilter::new().key("a").after(by_key[0].id);
    assert_eq!(types(s.letters.list(&key_page).await.unwrap()), ["a2"]);
}

#[tokio::test]
async fn replay_without_a_wrapped_service_is_refused() {
    let store = MemoryDeadLetters::new();
    let layer = DeadLetterLayer::new(store.clone(), KeyPolicy::Block);
    let parked = Parked {
        id: ParkingId::next(),
        topic: "orders".into(),
        message: Arc::new(Message::new("a1", "{}")),
        code: "permanent".to_owned(),
        error: "bad".to_owned(),
        attempts: 1,
        parked_at: SystemTime::now(),
        behind: None,
    };
    store.park(&parked).await.unwrap();
    let error = layer.dead_letters().replay(parked.id).await.unwrap_err();
    assert!(matches!(error, DeadLetterError::NoService), "{error}");
}

#[test]
fn parking_ids_follow_parking_order_across_threads() {
    // One message parked on one worker thread, the next one on another, within the same
    // millisecond: the later id must sort after the earlier one.
    for _ in 0..2_000 {
        let first = std::thread::spawn(ParkingId::next)
            .join()
            .expect("a thread made an id");
        let second = std::thread::spawn(ParkingId::next)
            .join()
            .expect("a thread made an id");
        assert!(first < second, "{first:?} then {second:?}");
    }
}

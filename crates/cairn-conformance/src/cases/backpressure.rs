//! Backpressure: a subscriber that stops reading costs at most one buffer of memory, is
//! told it fell behind and then catches up from storage; one that asked to end when behind
//! ends with `SubscriptionError::FellBehind`.

use cairn_core::{
    EventData, EventStore, ExpectedRevision, OnFallingBehind, RecordedEvent, StreamName,
    SubscribeAll, SubscribeStream, Subscription, SubscriptionError, SubscriptionMessage,
    SubscriptionOptions, Uuid,
};

use crate::StoreFactory;
use crate::TrackingAllocator;
use crate::failure::{Context, Failure, ensure, fail};
use crate::settings::Settings;
use crate::support::{events, events_until_caught_up, name, next_message, show, show_all};

/// Events appended while the subscriber does not read: about 40 MiB.
const EVENTS: usize = 10_000;
/// Events per append.
const BATCH: usize = 100;
/// Payload bytes per event; with the metadata below an event is about 4 KiB.
const PAYLOAD: usize = 3_584;
/// Metadata entries per event, each about 60 bytes. Metadata is deep-copied when an event
/// is cloned, so a store that queued clones of every event for the subscriber would show.
const METADATA_ENTRIES: usize = 8;
/// How much more the store with an unread subscriber may grow than the one without.
const ALLOWED_EXTRA: usize = 3 << 20;
/// The buffer the subscriber asks for.
const BUFFER: usize = 64;

/// A subscriber that stops reading while 40 MiB are appended costs the store no more than
/// a few MiB over a store without subscribers; when it reads again it is told it fell
/// behind, then gets every event once, in order, then catches up.
pub(crate) async fn memory_stays_bounded<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    ensure!(
        TrackingAllocator::is_installed(),
        "this case measures heap growth and needs the test binary to install the tracking \
         allocator; add to the test file:\n\n    #[global_allocator]\n    static ALLOC: \
         cairn_conformance::TrackingAllocator = cairn_conformance::TrackingAllocator::new();\n"
    );
    let stream = name("memory-1")?;

    // Store A: no subscriber.
    let store_a = factory.create().await;
    let (growth_a, _) = append_measured(&store_a, &stream).await?;
    drop(store_a);

    // Store B: a subscriber that caught up and then stops reading.
    let store_b = factory.create().await;
    let options = SubscriptionOptions {
        buffer: BUFFER,
        on_falling_behind: OnFallingBehind::CatchUp,
    };
    let mut subscription = store_b.subscribe_all(SubscribeAll::from_start().options(options));
    let early =
        events_until_caught_up(&mut subscription, "a subscription to an empty store").await?;
    ensure!(
        early.is_empty(),
        "a subscription to an empty store delivered {}",
        show_all(&early)
    );
    let (growth_b, ids) = append_measured(&store_b, &stream).await?;
    let extra = growth_b - growth_a;
    ensure!(
        extra < ALLOWED_EXTRA as isize,
        "while a subscriber (buffer {BUFFER}) did not read, appending {EVENTS} events of about \
         4 KiB grew the heap by {} KiB, against {} KiB for the same appends to a store \
         without subscribers: {} KiB more, above the {} KiB allowed. A subscription must hold \
         at most one buffer of events, not queue everything for a slow reader.",
        growth_b / 1024,
        growth_a / 1024,
        extra / 1024,
        ALLOWED_EXTRA / 1024
    );

    // Reading again: FellBehind, every event once and in order, then CaughtUp.
    let mut received: Vec<RecordedEvent> = Vec::with_capacity(EVENTS);
    let mut fell_behind_at = None;
    loop {
        match next_message(&mut subscription, "the subscriber reading again").await? {
            Some(Ok(SubscriptionMessage::Event(event))) => received.push(event),
            Some(Ok(SubscriptionMessage::FellBehind)) => {
                ensure!(
                    fell_behind_at.is_none(),
                    "the subscriber was told FellBehind twice without catching up between"
                );
                fell_behind_at = Some(received.len());
            }
            Some(Ok(SubscriptionMessage::CaughtUp)) => break,
            Some(Err(error)) => fail!(
                "the subscriber reading again ended with {error:?} after {} events",
                received.len()
            ),
            None => fail!(
                "the subscriber reading again ended after {} events",
                received.len()
            ),
        }
    }
    let Some(fell_behind_at) = fell_behind_at else {
        fail!(
            "a subscriber that did not read while {EVENTS} events were appended (buffer \
             {BUFFER}) must be told FellBehind before it catches up; it got {} events and \
             CaughtUp without it",
            received.len()
        );
    };
    ensure!(
        fell_behind_at <= BUFFER,
        "the subscriber was told FellBehind only after {fell_behind_at} events, more than its \
         buffer of {BUFFER} could have held"
    );
    let received_ids: Vec<Uuid> = received.iter().map(|e| e.id).collect();
    if received_ids != ids {
        let first_difference = received_ids
            .iter()
            .zip(&ids)
            .position(|(a, b)| a != b)
            .unwrap_or(received_ids.len().min(ids.len()));
        fail!(
            "after falling behind the subscriber should get all {EVENTS} events once, in \
             order; it got {} events, the first wrong or missing one at index \
             {first_difference} (expected event {:?}): {}",
            received.len(),
            ids.get(first_difference),
            show_all(&received)
        );
    }
    Ok(())
}

/// Appends [`EVENTS`] events of about 4 KiB to `stream`, returning the heap growth over the
/// appends and the ids in order.
async fn append_measured<S: EventStore>(
    store: &S,
    stream: &StreamName,
) -> Result<(isize, Vec<Uuid>), Failure> {
    let mut ids = Vec::with_capacity(EVENTS);
    let before = TrackingAllocator::allocated_bytes();
    for first in (0..EVENTS).step_by(BATCH) {
        let batch: Vec<EventData> = (first..first + BATCH).map(large_event).collect();
        ids.extend(batch.iter().map(|e| e.id));
        store
            .append(stream, ExpectedRevision::Any, batch)
            .await
            .context("appending 4 KiB events")?;
    }
    let after = TrackingAllocator::allocated_bytes();
    Ok((after as isize - before as isize, ids))
}

fn large_event(n: usize) -> EventData {
    let mut event = EventData::new("Large", vec![(n % 251) as u8; PAYLOAD]);
    for key in 0..METADATA_ENTRIES {
        event = event.with_metadata(
            format!("key-{key}"),
            format!("{n:08}-value-of-metadata-entry-{key}-padded-to-about-sixty-bytes"),
        );
    }
    event
}

/// A subscriber that asked to end when it falls behind ends with
/// `SubscriptionError::FellBehind` naming its buffer, for `$all` and for a stream.
pub(crate) async fn ends_when_behind<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const SMALL: usize = 16;
    let options = SubscriptionOptions {
        buffer: SMALL,
        on_falling_behind: OnFallingBehind::End,
    };
    for target in ["$all", "stream"] {
        let store = factory.create().await;
        let stream = name("behind-1")?;
        let mut subscription = if target == "$all" {
            store.subscribe_all(SubscribeAll::from_end().options(options))
        } else {
            store.subscribe_stream(
                stream.clone(),
                SubscribeStream::from_start().options(options),
            )
        };
        let what = format!("a {target} subscription that ends when behind");
        let early = events_until_caught_up(&mut subscription, &what).await?;
        ensure!(
            early.is_empty(),
            "{what}: delivered {} before any append",
            show_all(&early)
        );
        let mut ids = Vec::new();
        for _ in 0..10 {
            let batch = events("Behind", 10);
            ids.extend(batch.iter().map(|e| e.id));
            store
                .append(&stream, ExpectedRevision::Any, batch)
                .await
                .context("appending while the subscriber does not read")?;
        }
        expect_end_behind(&mut subscription, &ids, SMALL, &what).await?;
    }
    Ok(())
}

async fn expect_end_behind(
    subscription: &mut Subscription,
    ids: &[Uuid],
    buffer: usize,
    what: &str,
) -> Result<(), Failure> {
    let mut received = Vec::new();
    loop {
        match next_message(subscription, what).await? {
            Some(Ok(SubscriptionMessage::Event(event))) => {
                ensure!(
                    ids.get(received.len()) == Some(&event.id),
                    "{what}: event {} is not the next one appended",
                    show(&event)
                );
                received.push(event);
            }
            Some(Ok(message)) => fail!(
                "{what}: after {} of {} events appended while it did not read, expected the \
                 subscription to end with FellBehind, got {message:?}",
                received.len(),
                ids.len()
            ),
            Some(Err(SubscriptionError::FellBehind { buffer: reported })) => {
                ensure!(
                    reported == buffer,
                    "{what}: FellBehind reports buffer {reported}, the subscription asked for \
                     {buffer}"
                );
                break;
            }
            Some(Err(error)) => {
                fail!("{what}: expected SubscriptionError::FellBehind, got {error:?}")
            }
            None => fail!(
                "{what}: the subscription ended without SubscriptionError::FellBehind after {} \
                 events",
                received.len()
            ),
        }
    }
    match next_message(subscription, what).await? {
        None => Ok(()),
        Some(other) => fail!("{what}: after its error the subscription must end, got {other:?}"),
    }
}

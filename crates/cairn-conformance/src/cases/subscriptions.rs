//! Subscriptions: a deterministic walk through every start point and target, and a seeded
//! property test of the catch-up → live hand-over under concurrent writers.
//!
//! # What a subscriber must receive
//!
//! Let `M` be the events of the final `$all` that the subscription selects (its filter, or
//! its stream), in order. A subscription started at
//!
//! - `Start` receives exactly `M`;
//! - `After(p)` receives exactly the events of `M` after `p` (by position for `$all`, by
//!   revision for a stream);
//! - `End` receives a contiguous suffix of `M` (possibly empty) that contains every event
//!   of `M` whose append *started* after the subscription yielded its first message. An
//!   `End` subscription is caught up at once, so its first message comes without waiting
//!   for a write; events appended concurrently with that first poll may or may not be
//!   included, but never with a hole.
//!
//! In every case each event comes once, in order, with the stream, revision and position
//! that reads report.
//!
//! # The message protocol
//!
//! Control messages follow `CaughtUp (FellBehind CaughtUp)*`: the first one is `CaughtUp`,
//! `FellBehind` only comes while live (after a `CaughtUp`) and is later followed by a
//! `CaughtUp`, and `CaughtUp` never repeats without a `FellBehind` between. Once writers
//! stop, every subscription ends up live. The first `CaughtUp` of a subscription not
//! started at `End` comes after every selected event whose append was acknowledged
//! before the subscribe call.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{
    EventFilter, EventStore, ExpectedRevision, OnFallingBehind, RecordedEvent, Revision,
    StreamName, SubscribeAll, SubscribeStream, Subscription, SubscriptionMessage,
    SubscriptionOptions, SubscriptionStart, Uuid,
};
use futures::StreamExt;
use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure, fail, within};
use crate::settings::Settings;
use crate::support::{
    PATIENCE, all_events, event, events, events_until_caught_up, expect_no_event, join_all, name,
    next_message, read_stream_fully, same_events, show_all,
};

/// Every start point of `$all` and stream subscriptions, filtered and not, catching up and
/// then following live appends.
pub(crate) async fn catch_up_then_live<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let a = name("sub-a")?;
    let b = name("sub-b")?;
    for (stream, count) in [(&a, 2), (&b, 1), (&a, 1), (&b, 2)] {
        store
            .append(stream, ExpectedRevision::Any, events("Before", count))
            .await
            .context("appending before subscribing")?;
    }
    let initial = all_events(&store).await?;
    let small = SubscriptionOptions {
        buffer: 3,
        on_falling_behind: OnFallingBehind::CatchUp,
    };

    // $all from the start, then live.
    let mut from_start = store.subscribe_all(SubscribeAll::from_start().options(small));
    let caught_up =
        events_until_caught_up(&mut from_start, "$all subscription from the start").await?;
    same_events(
        "$all subscription from the start, catching up",
        &caught_up,
        &initial,
    )?;
    let mut after = store.subscribe_all(SubscribeAll::after(initial[2].position).options(small));
    let caught_up = events_until_caught_up(&mut after, "$all subscription after event 2").await?;
    same_events(
        "$all subscription after event 2, catching up",
        &caught_up,
        &initial[3..],
    )?;
    let mut from_end = store.subscribe_all(SubscribeAll::from_end().options(small));
    let caught_up = events_until_caught_up(&mut from_end, "$all subscription from the end").await?;
    same_events(
        "$all subscription from the end, catching up",
        &caught_up,
        &[],
    )?;
    let mut only_a = store.subscribe_all(
        SubscribeAll::from_start()
            .filter(EventFilter::stream_prefix("sub-a"))
            .options(small),
    );
    let a_initial: Vec<RecordedEvent> = initial.iter().filter(|e| e.stream == a).cloned().collect();
    let caught_up =
        events_until_caught_up(&mut only_a, "$all subscription filtered to sub-a").await?;
    same_events(
        "$all subscription filtered to sub-a, catching up",
        &caught_up,
        &a_initial,
    )?;
    let mut stream_start =
        store.subscribe_stream(a.clone(), SubscribeStream::from_start().options(small));
    let caught_up =
        events_until_caught_up(&mut stream_start, "sub-a subscription from the start").await?;
    same_events(
        "sub-a subscription from the start, catching up",
        &caught_up,
        &a_initial,
    )?;
    let mut stream_after = store.subscribe_stream(
        a.clone(),
        SubscribeStream::after(Revision(1)).options(small),
    );
    let caught_up =
        events_until_caught_up(&mut stream_after, "sub-a subscription after revision 1").await?;
    same_events(
        "sub-a subscription after revision 1, catching up",
        &caught_up,
        &a_initial[2..],
    )?;
    let mut stream_end =
        store.subscribe_stream(a.clone(), SubscribeStream::from_end().options(small));
    let caught_up =
        events_until_caught_up(&mut stream_end, "sub-a subscription from the end").await?;
    same_events(
        "sub-a subscription from the end, catching up",
        &caught_up,
        &[],
    )?;
    let absent = name("sub-later")?;
    let mut waiting = store.subscribe_stream(absent.clone(), SubscribeStream::from_start());
    let caught_up =
        events_until_caught_up(&mut waiting, "a subscription to a stream not yet written").await?;
    same_events(
        "a subscription to a stream not yet written",
        &caught_up,
        &[],
    )?;

    // Live appends: more than one buffer, to several streams.
    for (stream, count) in [(&b, 1), (&a, 3), (&absent, 2), (&a, 2)] {
        store
            .append(stream, ExpectedRevision::Any, events("Live", count))
            .await
            .context("appending while subscribed")?;
    }
    let everything = all_events(&store).await?;
    let live = &everything[initial.len()..];
    let of = |stream: &StreamName| -> Vec<RecordedEvent> {
        live.iter()
            .filter(|e| e.stream == *stream)
            .cloned()
            .collect()
    };
    let checks: Vec<(&str, &mut Subscription, Vec<RecordedEvent>)> = vec![
        (
            "$all subscription from the start",
            &mut from_start,
            live.to_vec(),
        ),
        ("$all subscription after event 2", &mut after, live.to_vec()),
        (
            "$all subscription from the end",
            &mut from_end,
            live.to_vec(),
        ),
        ("$all subscription filtered to sub-a", &mut only_a, of(&a)),
        (
            "sub-a subscription from the start",
            &mut stream_start,
            of(&a),
        ),
        (
            "sub-a subscription after revision 1",
            &mut stream_after,
            of(&a),
        ),
        ("sub-a subscription from the end", &mut stream_end, of(&a)),
        (
            "a subscription to a stream written later",
            &mut waiting,
            of(&absent),
        ),
    ];
    for (what, subscription, expected) in checks {
        let received = events_through(subscription, &expected, what).await?;
        same_events(&format!("{what}, live"), &received, &expected)?;
        expect_no_event(subscription, Duration::from_millis(50), what).await?;
    }
    Ok(())
}

/// Receives events until the last of `expected` arrives (or the subscription stops
/// delivering), so that a missing event shows as a difference rather than a hang.
async fn events_through(
    subscription: &mut Subscription,
    expected: &[RecordedEvent],
    what: &str,
) -> Result<Vec<RecordedEvent>, Failure> {
    let Some(last) = expected.last().map(|e| e.id) else {
        return Ok(Vec::new());
    };
    let mut received = Vec::new();
    loop {
        match next_message(subscription, what).await {
            Ok(Some(Ok(SubscriptionMessage::Event(event)))) => {
                let done = event.id == last;
                received.push(event);
                if done {
                    return Ok(received);
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => fail!(
                "{what}: the subscription ended with {error:?}; it delivered {} of the expected {}",
                show_all(&received),
                show_all(expected)
            ),
            Ok(None) => fail!(
                "{what}: the subscription ended; it delivered {} of the expected {}",
                show_all(&received),
                show_all(expected)
            ),
            Err(hang) => fail!(
                "{hang}; it delivered {} of the expected {}",
                show_all(&received),
                show_all(expected)
            ),
        }
    }
}

/// How long a subscriber short of its last event waits in silence, after the writers
/// stopped, before the trial calls the event lost.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3);

const POOL: [&str; 5] = ["alpha-1", "alpha-2", "alphabet-1", "beta-1", "beta"];
const TYPES: [&str; 3] = ["A", "B", "C"];

fn filters() -> Vec<EventFilter> {
    vec![
        EventFilter::all(),
        EventFilter::category("alpha"),
        EventFilter::stream_prefix("alpha"),
        EventFilter::event_types(["A"]),
        EventFilter::event_types(["B", "C"]),
        EventFilter::category("beta").with_event_type("A"),
    ]
}

/// What a subscriber follows.
#[derive(Debug, Clone)]
enum Target {
    All(EventFilter),
    Stream(StreamName),
}

impl Target {
    fn selects(&self, event: &RecordedEvent) -> bool {
        match self {
            Self::All(filter) => filter.matches_event(event),
            Self::Stream(stream) => event.stream == *stream,
        }
    }

    /// Where an event stands in this target's order: its position in `$all`, its revision
    /// in a stream.
    fn key(&self, event: &RecordedEvent) -> u64 {
        match self {
            Self::All(_) => event.position.0,
            Self::Stream(_) => event.revision.0,
        }
    }
}

/// Where a subscriber starts, resolved when it subscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Start,
    /// After this position (`$all`) or revision (stream).
    After(u64),
    End,
}

/// One planned subscriber.
#[derive(Debug, Clone)]
struct Plan {
    index: usize,
    target: Target,
    start: Origin,
    buffer: usize,
    slow: bool,
    /// Subscribes once this many writer appends were acknowledged.
    after_appends: usize,
}

/// One message as a subscriber received it.
#[derive(Debug)]
enum Got {
    Event(RecordedEvent),
    CaughtUp,
    FellBehind,
    Error(String),
    Ended,
}

/// Everything one subscriber saw.
struct Log {
    plan: Plan,
    /// The start, with `After` resolved to an existing event.
    start: Origin,
    subscribed_at: Instant,
    received: Vec<(Instant, Got)>,
    gave_up: bool,
}

/// When writers stopped, and for each subscriber the key of the last event it must get.
struct Finish {
    at: Instant,
    targets: Vec<Option<u64>>,
}

/// When one append started and was acknowledged.
#[derive(Debug, Clone, Copy)]
struct Timing {
    started: Instant,
    acked: Instant,
}

/// Seeded random interleavings of writers and subscribers: every subscriber receives
/// exactly what it selected, once, in order, with a well-formed message protocol.
pub(crate) async fn hand_over_property<F: StoreFactory>(
    factory: &F,
    settings: Settings,
) -> Result<(), Failure> {
    let mut rng = settings.rng("subscriptions_hand_over_without_gap_or_duplicate");
    for trial in 0..settings.random_cases.max(1) {
        let trial_seed: u64 = rng.random();
        hand_over_trial(factory, trial_seed)
            .await
            .map_err(|failure| failure.with_note(format!("in random trial {trial}")))?;
    }
    Ok(())
}

async fn hand_over_trial<F: StoreFactory>(factory: &F, seed: u64) -> Result<(), Failure> {
    use rand::SeedableRng;
    let mut rng = StdRng::seed_from_u64(seed);
    let store = factory.create().await;
    let mut timings: HashMap<Uuid, Timing> = HashMap::new();

    // Some history before anyone subscribes.
    for _ in 0..rng.random_range(0..=8) {
        let (stream, batch) = random_append(&mut rng)?;
        let started = Instant::now();
        store
            .append(&stream, ExpectedRevision::Any, batch.clone())
            .await
            .context("appending history")?;
        let acked = Instant::now();
        for event in &batch {
            timings.insert(event.id, Timing { started, acked });
        }
    }

    let writer_count = rng.random_range(2..=4);
    let appends_per_writer: Vec<usize> = (0..writer_count)
        .map(|_| rng.random_range(8..=25))
        .collect();
    let total_appends: usize = appends_per_writer.iter().sum();
    let all_filters = filters();
    let plans: Vec<Plan> = (0..rng.random_range(8..=12))
        .map(|index| -> Result<Plan, Failure> {
            let target = if rng.random_bool(0.6) {
                Target::All(all_filters.choose(&mut rng).cloned().unwrap_or_default())
            } else {
                Target::Stream(name(POOL.choose(&mut rng).copied().unwrap_or(POOL[0]))?)
            };
            let start = match rng.random_range(0..3) {
                0 => Origin::Start,
                1 => Origin::After(0),
                _ => Origin::End,
            };
            Ok(Plan {
                index,
                target,
                start,
                buffer: rng.random_range(1..=8),
                slow: rng.random_bool(0.4),
                after_appends: rng.random_range(0..=total_appends),
            })
        })
        .collect::<Result<_, _>>()?;

    let (progress_tx, progress_rx) = watch::channel(0_usize);
    let progress_tx = Arc::new(progress_tx);
    let (ready_tx, mut ready_rx) = watch::channel(0_usize);
    let ready_tx = Arc::new(ready_tx);
    let (finish_tx, finish_rx) = watch::channel(None::<Arc<Finish>>);

    let mut subscribers = JoinSet::new();
    for plan in &plans {
        let seed: u64 = rng.random();
        subscribers.spawn(subscriber(
            store.clone(),
            plan.clone(),
            seed,
            progress_rx.clone(),
            ready_tx.clone(),
            finish_rx.clone(),
        ));
    }
    let mut writers = JoinSet::new();
    for appends in appends_per_writer {
        let seed: u64 = rng.random();
        writers.spawn(writer(store.clone(), appends, seed, progress_tx.clone()));
    }
    for batch in join_all(writers, "the writers").await? {
        timings.extend(batch);
    }

    // Every subscriber has subscribed and heard its first message; now one more event per
    // subscriber that it must receive whatever its start, so that each has a known last
    // event to wait for.
    let subscriber_count = plans.len();
    within(PATIENCE, "every subscriber's first message", async {
        ready_rx
            .wait_for(|ready| *ready >= subscriber_count)
            .await
            .is_ok()
    })
    .await
    .map_err(|failure| {
        failure.with_note(format!(
            "{} of {subscriber_count} subscribers heard from",
            *ready_rx.borrow()
        ))
    })?;
    for plan in &plans {
        let (stream, event_type) = fence_for(&plan.target)?;
        let fence = vec![event(event_type, plan.index)];
        let started = Instant::now();
        store
            .append(&stream, ExpectedRevision::Any, fence.clone())
            .await
            .context("appending a fence event")?;
        timings.insert(
            fence[0].id,
            Timing {
                started,
                acked: Instant::now(),
            },
        );
    }

    let all = all_events(&store).await?;
    for stream in POOL {
        let stream = name(stream)?;
        let read = read_stream_fully(&store, &stream).await?;
        let from_all: Vec<RecordedEvent> =
            all.iter().filter(|e| e.stream == stream).cloned().collect();
        same_events(
            &format!("stream {stream} read against $all"),
            &read,
            &from_all,
        )?;
        ensure!(
            read.iter()
                .enumerate()
                .all(|(i, e)| e.revision == Revision(i as u64)),
            "stream {stream} is not gapless after concurrent appends: {}",
            show_all(&read)
        );
    }
    let targets = plans
        .iter()
        .map(|plan| {
            all.iter()
                .rev()
                .find(|e| plan.target.selects(e))
                .map(|e| plan.target.key(e))
        })
        .collect();
    let _ = finish_tx.send(Some(Arc::new(Finish {
        at: Instant::now(),
        targets,
    })));
    let logs = join_all(subscribers, "the subscribers").await?;
    for log in &logs {
        verify(log, &all, &timings)?;
    }
    Ok(())
}

fn random_append(rng: &mut StdRng) -> Result<(StreamName, Vec<cairn_core::EventData>), Failure> {
    let stream = name(POOL.choose(rng).copied().unwrap_or(POOL[0]))?;
    let batch = (0..rng.random_range(1..=4))
        .map(|n| event(TYPES.choose(rng).copied().unwrap_or(TYPES[0]), n))
        .collect();
    Ok((stream, batch))
}

/// A stream and type whose event the target selects.
fn fence_for(target: &Target) -> Result<(StreamName, &'static str), Failure> {
    match target {
        Target::Stream(stream) => Ok((stream.clone(), "A")),
        Target::All(filter) => {
            for stream in POOL {
                for event_type in TYPES {
                    if filter.matches(stream, event_type) {
                        return Ok((name(stream)?, event_type));
                    }
                }
            }
            fail!("no stream of the pool matches {filter:?}")
        }
    }
}

async fn writer<S: EventStore>(
    store: S,
    appends: usize,
    seed: u64,
    progress: Arc<watch::Sender<usize>>,
) -> Result<Vec<(Uuid, Timing)>, Failure> {
    use rand::SeedableRng;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut timings = Vec::new();
    for _ in 0..appends {
        let (stream, batch) = random_append(&mut rng)?;
        let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
        let started = Instant::now();
        store
            .append(&stream, ExpectedRevision::Any, batch)
            .await
            .context("a concurrent append")?;
        let acked = Instant::now();
        timings.extend(ids.into_iter().map(|id| (id, Timing { started, acked })));
        progress.send_modify(|count| *count += 1);
        match rng.random_range(0..4) {
            0 => tokio::task::yield_now().await,
            1 => tokio::time::sleep(Duration::from_micros(rng.random_range(0..800))).await,
            _ => {}
        }
    }
    Ok(timings)
}

async fn subscriber<S: EventStore + Clone>(
    store: S,
    plan: Plan,
    seed: u64,
    mut progress: watch::Receiver<usize>,
    ready: Arc<watch::Sender<usize>>,
    finish: watch::Receiver<Option<Arc<Finish>>>,
) -> Result<Log, Failure> {
    use rand::SeedableRng;
    let mut rng = StdRng::seed_from_u64(seed);
    let _ = progress
        .wait_for(|count| *count >= plan.after_appends)
        .await;
    let start = match plan.start {
        Origin::After(_) => {
            let existing = match &plan.target {
                Target::All(_) => all_events(&store).await?,
                Target::Stream(stream) => read_stream_fully(&store, stream).await?,
            };
            match existing.choose(&mut rng) {
                Some(event) => Origin::After(plan.target.key(event)),
                None => Origin::Start,
            }
        }
        other => other,
    };
    let options = SubscriptionOptions {
        buffer: plan.buffer,
        on_falling_behind: OnFallingBehind::CatchUp,
    };
    let subscribed_at = Instant::now();
    let mut subscription = match &plan.target {
        Target::All(filter) => store.subscribe_all(SubscribeAll {
            from: match start {
                Origin::Start => SubscriptionStart::Start,
                Origin::After(position) => SubscriptionStart::After(cairn_core::Position(position)),
                Origin::End => SubscriptionStart::End,
            },
            filter: filter.clone(),
            options,
        }),
        Target::Stream(stream) => store.subscribe_stream(
            stream.clone(),
            SubscribeStream {
                from: match start {
                    Origin::Start => SubscriptionStart::Start,
                    Origin::After(revision) => SubscriptionStart::After(Revision(revision)),
                    Origin::End => SubscriptionStart::End,
                },
                options,
            },
        ),
    };
    let mut log = Log {
        plan,
        start,
        subscribed_at,
        received: Vec::new(),
        gave_up: false,
    };
    let mut live = false;
    let mut last_key: Option<u64> = None;
    let mut last_message_at = Instant::now();
    let mut draining_until: Option<Instant> = None;
    loop {
        if let Ok(message) =
            tokio::time::timeout(Duration::from_millis(20), subscription.next()).await
        {
            {
                let now = Instant::now();
                last_message_at = now;
                if log.received.is_empty() {
                    ready.send_modify(|count| *count += 1);
                }
                let got = match message {
                    Some(Ok(SubscriptionMessage::Event(event))) => {
                        last_key = Some(log.plan.target.key(&event));
                        Got::Event(event)
                    }
                    Some(Ok(SubscriptionMessage::CaughtUp)) => {
                        live = true;
                        Got::CaughtUp
                    }
                    Some(Ok(SubscriptionMessage::FellBehind)) => {
                        live = false;
                        Got::FellBehind
                    }
                    Some(Err(error)) => Got::Error(format!("{error:?}")),
                    None => Got::Ended,
                };
                let stop = matches!(got, Got::Error(_) | Got::Ended);
                let is_event = matches!(got, Got::Event(_));
                log.received.push((now, got));
                if stop {
                    // Make sure the trial does not wait for a first message that never comes.
                    return Ok(log);
                }
                if is_event && log.plan.slow && rng.random_bool(0.5) {
                    tokio::time::sleep(Duration::from_micros(rng.random_range(0..1500))).await;
                } else if rng.random_bool(0.2) {
                    tokio::task::yield_now().await;
                }
            }
        }
        let finished = finish.borrow().clone();
        if let Some(finished) = finished {
            let now = Instant::now();
            let target = finished.targets.get(log.plan.index).copied().flatten();
            if live && target.is_none_or(|target| last_key.is_some_and(|key| key >= target)) {
                let until = *draining_until.get_or_insert(now + Duration::from_millis(20));
                if now >= until {
                    return Ok(log);
                }
            }
            // Once the writers stopped, a subscriber short of its last event hears something
            // at least every so often; a long silence means the event will never come.
            if now.duration_since(finished.at.max(last_message_at)) > GIVE_UP_AFTER {
                log.gave_up = true;
                return Ok(log);
            }
        }
    }
}

/// Checks one subscriber's log against the final `$all`.
fn verify(
    log: &Log,
    all: &[RecordedEvent],
    timings: &HashMap<Uuid, Timing>,
) -> Result<(), Failure> {
    let plan = &log.plan;
    let describe = || {
        format!(
            "subscriber {} to {:?} from {:?} (buffer {}, {} reader)",
            plan.index,
            plan.target,
            log.start,
            plan.buffer,
            if plan.slow { "slow" } else { "fast" }
        )
    };
    let selected: Vec<&RecordedEvent> = all.iter().filter(|e| plan.target.selects(e)).collect();
    let received: Vec<RecordedEvent> = log
        .received
        .iter()
        .filter_map(|(_, got)| match got {
            Got::Event(event) => Some(event.clone()),
            _ => None,
        })
        .collect();
    let first_message_at = log.received.first().map(|(at, _)| *at);
    let expected: Vec<RecordedEvent> = match log.start {
        Origin::Start => selected.iter().map(|e| (*e).clone()).collect(),
        Origin::After(key) => selected
            .iter()
            .filter(|e| plan.target.key(e) > key)
            .map(|e| (*e).clone())
            .collect(),
        Origin::End => {
            let from = match received.first() {
                Some(first) => match selected.iter().position(|e| e.id == first.id) {
                    Some(index) => index,
                    None => fail!(
                        "{}: its first event {} is not one it selects",
                        describe(),
                        crate::support::show(first)
                    ),
                },
                None => selected.len(),
            };
            let Some(first_message_at) = first_message_at else {
                fail!(
                    "{}: a subscription from the end never said anything",
                    describe()
                );
            };
            if let Some(missed) = selected[..from].iter().find(|e| {
                timings
                    .get(&e.id)
                    .is_some_and(|timing| timing.started > first_message_at)
            }) {
                fail!(
                    "{}: event {} was appended after the subscription's first message, but \
                     the subscription started after it; received {}",
                    describe(),
                    crate::support::show(missed),
                    show_all(&received)
                );
            }
            selected[from..].iter().map(|e| (*e).clone()).collect()
        }
    };
    same_events(&describe(), &received, &expected)?;

    let mut live = false;
    let mut seen_caught_up = false;
    let mut delivered: HashSet<Uuid> = HashSet::new();
    let protocol = || {
        log.received
            .iter()
            .map(|(_, got)| match got {
                Got::Event(_) => "E",
                Got::CaughtUp => "C",
                Got::FellBehind => "F",
                Got::Error(_) => "X",
                Got::Ended => "end",
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (_, got) in &log.received {
        match got {
            Got::Event(event) => {
                delivered.insert(event.id);
            }
            Got::CaughtUp => {
                ensure!(
                    !live,
                    "{}: CaughtUp came twice without a FellBehind between: {}",
                    describe(),
                    protocol()
                );
                if !seen_caught_up
                    && log.start != Origin::End
                    && let Some(missing) = expected.iter().find(|e| {
                        !delivered.contains(&e.id)
                            && timings
                                .get(&e.id)
                                .is_some_and(|timing| timing.acked < log.subscribed_at)
                    })
                {
                    fail!(
                        "{}: said CaughtUp before delivering {}, acknowledged before it \
                         subscribed",
                        describe(),
                        crate::support::show(missing)
                    );
                }
                live = true;
                seen_caught_up = true;
            }
            Got::FellBehind => {
                ensure!(
                    live,
                    "{}: FellBehind came while it was not live (before a CaughtUp, or twice): {}",
                    describe(),
                    protocol()
                );
                live = false;
            }
            Got::Error(error) => fail!(
                "{}: the subscription failed with {error}; messages: {}",
                describe(),
                protocol()
            ),
            Got::Ended => fail!(
                "{}: the subscription ended without an error; messages: {}",
                describe(),
                protocol()
            ),
        }
    }
    ensure!(
        live && !log.gave_up,
        "{}: after the writers stopped it never became live (the last control message must \
         be CaughtUp); messages: {}",
        describe(),
        protocol()
    );
    Ok(())
}

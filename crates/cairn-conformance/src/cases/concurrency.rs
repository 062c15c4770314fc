//! Optimistic concurrency under contention: many tasks appending to one stream with exact
//! expectations must never fork it, lose an acknowledged event or let two writers win the
//! same revision.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_core::{
    AppendResult, CurrentRevision, EventStore, ExpectedRevision, Revision, Uuid, WriteError,
};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure, fail};
use crate::settings::Settings;
use crate::support::{all_events, event, join_all, name, read_stream_fully, show_all};

/// Tasks appending to the one contended stream.
const WRITERS: usize = 64;
/// Events they append in total, one per append.
const TOTAL: usize = 500;
/// Rounds of the race for one revision.
const ROUNDS: u64 = 20;
/// Tasks racing in each round.
const RACERS: usize = 16;

/// 64 tasks append to one stream in a read-expect-append loop until 500 events are
/// acknowledged; the stream must be gapless and hold each acknowledged event once, where
/// its acknowledgement said.
pub(crate) async fn concurrent_exact_writers<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let stream = name("contended-1")?;
    let claimed = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for writer in 0..WRITERS {
        let (store, stream, claimed) = (store.clone(), stream.clone(), claimed.clone());
        tasks.spawn(async move {
            let mut acks: Vec<(Uuid, AppendResult)> = Vec::new();
            while claimed.fetch_add(1, Ordering::SeqCst) < TOTAL {
                let event = event("Contended", writer);
                let mut attempts = 0_usize;
                loop {
                    attempts += 1;
                    ensure!(
                        attempts <= 100_000,
                        "writer {writer} could not append one event in {attempts} attempts"
                    );
                    let current = store
                        .stream_info(&stream)
                        .await
                        .context("stream_info of the contended stream")?
                        .state
                        .current_revision();
                    // Let the others read the same revision, so that they race.
                    tokio::task::yield_now().await;
                    let expected = match current {
                        CurrentRevision::NoStream => ExpectedRevision::NoStream,
                        CurrentRevision::Revision(revision) => ExpectedRevision::Exact(revision.0),
                    };
                    match store.append(&stream, expected, vec![event.clone()]).await {
                        Ok(result) => {
                            acks.push((event.id, result));
                            break;
                        }
                        Err(WriteError::WrongExpectedRevision {
                            stream: s,
                            expected: e,
                            actual,
                        }) => {
                            ensure!(
                                s == stream && e == expected,
                                "a conflict names stream {s} and expectation {e}, but the \
                                 append was to {stream} with {expected}"
                            );
                            let ahead = match (expected, actual) {
                                (ExpectedRevision::Exact(e), CurrentRevision::Revision(a)) => {
                                    a.0 > e
                                }
                                (ExpectedRevision::NoStream, CurrentRevision::Revision(_)) => true,
                                _ => false,
                            };
                            ensure!(
                                ahead,
                                "writer {writer} read revision {current} and appended with \
                                 {expected}; the conflict reports actual {actual}, but the \
                                 stream only grows, so the actual revision must lie after \
                                 the one read"
                            );
                            tokio::task::yield_now().await;
                        }
                        Err(other) => fail!(
                            "writer {writer}: append with {expected} failed with {other:?}, \
                             expected success or WrongExpectedRevision"
                        ),
                    }
                }
            }
            Ok(acks)
        });
    }
    let acks: Vec<(Uuid, AppendResult)> = join_all(tasks, "the contending writers")
        .await?
        .into_iter()
        .flatten()
        .collect();
    ensure!(
        acks.len() == TOTAL,
        "{} appends were acknowledged, expected {TOTAL}",
        acks.len()
    );
    let mut by_revision: HashMap<Revision, Uuid> = HashMap::new();
    for (id, result) in &acks {
        if let Some(other) = by_revision.insert(result.revision, *id) {
            fail!(
                "two appends with exact expectations were both acknowledged at revision {}: \
                 events {other} and {id}",
                result.revision
            );
        }
    }
    let read = read_stream_fully(&store, &stream).await?;
    ensure!(
        read.len() == TOTAL
            && read
                .iter()
                .enumerate()
                .all(|(index, event)| event.revision == Revision(index as u64)),
        "the contended stream should read as revisions 0..{TOTAL} without gap; it reads {}",
        show_all(&read)
    );
    for (id, result) in &acks {
        let found = read.get(result.revision.0 as usize);
        ensure!(
            found.is_some_and(|event| event.id == *id && event.position == result.position),
            "event {id} was acknowledged at revision {} position {}, but the stream holds {:?} \
             there",
            result.revision,
            result.position,
            found.map(|event| (event.id, event.position))
        );
    }
    let all = all_events(&store).await?;
    let in_all: HashSet<Uuid> = all.iter().map(|event| event.id).collect();
    ensure!(
        all.len() == TOTAL && acks.iter().all(|(id, _)| in_all.contains(id)),
        "$all should hold exactly the {TOTAL} acknowledged events once each; it holds {} \
         events, {} distinct",
        all.len(),
        in_all.len()
    );
    Ok(())
}

/// In each round 16 tasks released together append to the same stream with the same exact
/// expectation: exactly one wins and the others see its revision as the actual one.
pub(crate) async fn racing_writers<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let stream = name("race-1")?;
    for round in 0..ROUNDS {
        let expected = match round {
            0 => ExpectedRevision::NoStream,
            n => ExpectedRevision::Exact(n - 1),
        };
        let barrier = Arc::new(Barrier::new(RACERS));
        let mut tasks = JoinSet::new();
        for racer in 0..RACERS {
            let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
            tasks.spawn(async move {
                let event = event("Raced", racer);
                let id = event.id;
                barrier.wait().await;
                Ok((id, store.append(&stream, expected, vec![event]).await))
            });
        }
        let outcomes = join_all(tasks, "the racing writers").await?;
        let winners: Vec<_> = outcomes
            .iter()
            .filter_map(|(id, result)| result.as_ref().ok().map(|r| (*id, *r)))
            .collect();
        ensure!(
            winners.len() == 1,
            "round {round}: {} of {RACERS} writers appending with {expected} were \
             acknowledged, expected exactly one: {winners:?}",
            winners.len()
        );
        let (winner, result) = winners[0];
        ensure!(
            result.revision == Revision(round),
            "round {round}: the winner was acknowledged at revision {}, expected {round}",
            result.revision
        );
        for (id, outcome) in &outcomes {
            if *id == winner {
                continue;
            }
            match outcome {
                Err(WriteError::WrongExpectedRevision {
                    stream: s,
                    expected: e,
                    actual: CurrentRevision::Revision(actual),
                }) if *s == stream && *e == expected && *actual == Revision(round) => {}
                other => fail!(
                    "round {round}: a losing writer should get WrongExpectedRevision {{ \
                     stream: {stream}, expected: {expected}, actual: revision {round} }}, got \
                     {other:?}"
                ),
            }
        }
        let read = read_stream_fully(&store, &stream).await?;
        ensure!(
            read.len() as u64 == round + 1 && read.last().is_some_and(|e| e.id == winner),
            "round {round}: the stream should hold {} events ending with the winner {winner}; \
             it reads {}",
            round + 1,
            show_all(&read)
        );
    }
    Ok(())
}

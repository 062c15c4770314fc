//! Multi-stream appends: all or nothing, one commit whose events sit together in `$all`,
//! results in request order, and the malformed requests every append refuses.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_core::{
    CurrentRevision, EventData, EventStore, ExpectedRevision, Revision, StreamAppend, StreamName,
    StreamState, Uuid, WriteError,
};
use rand::RngExt;
use tokio::task::JoinSet;

use super::expected::check_landed;
use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure, fail};
use crate::settings::Settings;
use crate::support::{
    Snapshot, all_events, data_ids, event, events, expect_conflict, expect_id_reused,
    expect_invalid_request, expect_write_deleted, join_all, name, read_stream_fully, show_all,
};

/// How a refused multi-stream append must be refused.
enum Refusal {
    Conflict(StreamName, ExpectedRevision, CurrentRevision),
    Tombstoned(StreamName),
    TooLarge(Uuid, usize, usize),
    IdReused(Uuid),
}

/// A multi-stream append whose part fails (expectation, tombstone, size, reused id) writes
/// none of its parts; a valid one writes all, with results in request order.
pub(crate) async fn all_or_nothing<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    use ExpectedRevision::{Any, Exact, NoStream, StreamExists};
    let store = factory.create().await;
    let a = name("multi-a")?;
    let b = name("multi-b")?;
    let c = name("multi-c")?;
    let t = name("multi-t")?;
    let a_events = events("A", 2);
    store
        .append(&a, NoStream, a_events.clone())
        .await
        .context("creating stream multi-a")?;
    store
        .append(&c, NoStream, events("C", 1))
        .await
        .context("creating stream multi-c")?;
    store
        .append(&t, NoStream, events("T", 1))
        .await
        .context("creating stream multi-t")?;
    store
        .tombstone_stream(&t, Any)
        .await
        .context("tombstoning stream multi-t")?;
    let at = |n| CurrentRevision::Revision(Revision(n));
    let part = |stream: &StreamName, expected, count| {
        StreamAppend::new(stream.clone(), expected, events("Multi", count))
    };

    let limit = store.limits().max_event_size;
    let oversized = EventData::new("Big", vec![b'x'; limit + 1]);
    let reused = event("C", 9).with_id(a_events[0].id);

    let attempts: Vec<(&str, Vec<StreamAppend>, Refusal)> = vec![
        (
            "the last part's expectation fails",
            vec![
                part(&a, Exact(1), 2),
                part(&b, NoStream, 1),
                part(&c, Exact(5), 1),
            ],
            Refusal::Conflict(c.clone(), Exact(5), at(0)),
        ),
        (
            "the first part's expectation fails",
            vec![
                part(&a, Exact(0), 1),
                part(&b, NoStream, 2),
                part(&c, Exact(0), 1),
            ],
            Refusal::Conflict(a.clone(), Exact(0), at(1)),
        ),
        (
            "a middle part expects an absent stream to exist",
            vec![
                part(&c, Any, 1),
                part(&b, StreamExists, 1),
                part(&a, Any, 1),
            ],
            Refusal::Conflict(b.clone(), StreamExists, CurrentRevision::NoStream),
        ),
        (
            "the last part names a tombstoned stream",
            vec![part(&a, Any, 1), part(&b, NoStream, 1), part(&t, Any, 1)],
            Refusal::Tombstoned(t.clone()),
        ),
        (
            "the last part holds an event over the size limit",
            vec![
                part(&a, Any, 1),
                StreamAppend::new(b.clone(), Any, vec![event("Ok", 0), oversized.clone()]),
            ],
            Refusal::TooLarge(oversized.id, oversized.size(), limit),
        ),
        (
            "the last part reuses the id of a recorded event",
            vec![
                part(&a, Any, 1),
                StreamAppend::new(c.clone(), Any, vec![event("Ok", 0), reused.clone()]),
            ],
            Refusal::IdReused(reused.id),
        ),
    ];
    for (label, appends, refusal) in attempts {
        let what = format!("a multi-stream append where {label}");
        let before = Snapshot::take(&store).await?;
        let streams_before = (
            read_stream_fully(&store, &a).await?,
            read_stream_fully(&store, &c).await?,
        );
        let result = store.append_multi(appends).await;
        match refusal {
            Refusal::Conflict(stream, expected, actual) => {
                expect_conflict(&what, result, &stream, expected, actual)?;
            }
            Refusal::Tombstoned(stream) => expect_write_deleted(&what, result, &stream)?,
            Refusal::TooLarge(id, size, limit) => match result {
                Err(WriteError::EventTooLarge {
                    id: i,
                    size: s,
                    limit: l,
                }) if i == id && s == size && l == limit => {}
                other => fail!(
                    "{what}: expected EventTooLarge {{ id: {id}, size: {size}, limit: {limit} \
                     }}, got {other:?}"
                ),
            },
            Refusal::IdReused(id) => expect_id_reused(&what, result, id)?,
        }
        before.unchanged(&store, &what).await?;
        let streams_after = (
            read_stream_fully(&store, &a).await?,
            read_stream_fully(&store, &c).await?,
        );
        ensure!(
            streams_after == streams_before,
            "after {what}: the streams that were to be written changed (multi-a {} -> {}, \
             multi-c {} -> {}); nothing of a refused append may be visible",
            show_all(&streams_before.0),
            show_all(&streams_after.0),
            show_all(&streams_before.1),
            show_all(&streams_after.1)
        );
        let b_state = store
            .stream_info(&b)
            .await
            .context("stream_info(multi-b)")?
            .state;
        ensure!(
            b_state == StreamState::NoStream,
            "after {what}: stream multi-b, never written successfully, reports {b_state:?}"
        );
    }

    // Now a valid one: every part lands, results in request order.
    let parts = vec![
        part(&c, Exact(0), 1),
        part(&a, Exact(1), 3),
        part(&b, NoStream, 1),
    ];
    let results = store
        .append_multi(parts.clone())
        .await
        .context("a valid multi-stream append")?;
    ensure!(
        results.len() == parts.len(),
        "a multi-stream append of {} parts returned {} results",
        parts.len(),
        results.len()
    );
    let expected_revisions = [Revision(1), Revision(4), Revision(0)];
    for ((part, result), revision) in parts.iter().zip(&results).zip(expected_revisions) {
        let what = format!("part {} of a valid multi-stream append", part.stream);
        ensure!(
            result.revision == revision,
            "{what}: result says revision {}, expected {revision} (results must come in \
             request order: {results:?})",
            result.revision
        );
        check_landed(&store, &part.stream, &part.events, *result, &what).await?;
    }
    Ok(())
}

/// While other tasks append, each multi-stream append's events sit together in `$all` (no
/// other event between them) and each result names its part's last event.
pub(crate) async fn commits_as_one<F: StoreFactory>(
    factory: &F,
    settings: Settings,
) -> Result<(), Failure> {
    const ROUNDS: usize = 30;
    const NOISE_WRITERS: usize = 3;
    let mut rng = settings.rng("multi_stream_append_commits_as_one");
    let store = factory.create().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut noise = JoinSet::new();
    for writer in 0..NOISE_WRITERS {
        let (store, stop) = (store.clone(), stop.clone());
        noise.spawn(async move {
            let stream = name(&format!("noise-{writer}"))?;
            let mut written = 0_usize;
            while !stop.load(Ordering::SeqCst) || written == 0 {
                store
                    .append(
                        &stream,
                        ExpectedRevision::Any,
                        vec![event("Noise", written)],
                    )
                    .await
                    .context("a concurrent single-stream append")?;
                written += 1;
                tokio::task::yield_now().await;
            }
            Ok(written)
        });
    }

    let mut commits: Vec<(Vec<StreamAppend>, Vec<cairn_core::AppendResult>)> = Vec::new();
    for round in 0..ROUNDS {
        let parts: Vec<StreamAppend> = (0..rng.random_range(2..=4_usize))
            .map(|index| {
                let stream = name(&format!("commit-{round}-{index}"))?;
                let count = rng.random_range(1..=3_usize);
                Ok(StreamAppend::new(
                    stream,
                    ExpectedRevision::NoStream,
                    events("Part", count),
                ))
            })
            .collect::<Result<_, Failure>>()?;
        let results = store
            .append_multi(parts.clone())
            .await
            .context(format!("multi-stream append of round {round}"))?;
        ensure!(
            results.len() == parts.len(),
            "round {round}: {} parts gave {} results",
            parts.len(),
            results.len()
        );
        commits.push((parts, results));
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::SeqCst);
    join_all(noise, "the concurrent single-stream writers").await?;

    let all = all_events(&store).await?;
    let index: HashMap<Uuid, usize> = all
        .iter()
        .enumerate()
        .map(|(index, event)| (event.id, index))
        .collect();
    for (round, (parts, results)) in commits.iter().enumerate() {
        let mut places = Vec::new();
        for (part, result) in parts.iter().zip(results) {
            let mut last = None;
            for (offset, id) in data_ids(&part.events).into_iter().enumerate() {
                let Some(&place) = index.get(&id) else {
                    fail!(
                        "round {round}: event {id} of stream {} is missing from $all",
                        part.stream
                    );
                };
                let found = &all[place];
                ensure!(
                    found.stream == part.stream && found.revision == Revision(offset as u64),
                    "round {round}: event {id} should be {}@{offset}, $all has it at {}@{}",
                    part.stream,
                    found.stream,
                    found.revision
                );
                places.push(place);
                last = Some(found);
            }
            ensure!(
                last.is_some_and(
                    |last| last.position == result.position && last.revision == result.revision
                ),
                "round {round}: the result for {} is {result:?} but its last event reads as \
                 {:?} (results must come in request order)",
                part.stream,
                last.map(|e| (e.revision, e.position))
            );
        }
        places.sort_unstable();
        let (first, last) = (places[0], places[places.len() - 1]);
        ensure!(
            last - first + 1 == places.len(),
            "round {round}: the {} events of one multi-stream append are spread over $all \
             indexes {first}..={last} with other events between them: {}",
            places.len(),
            show_all(&all[first..=last])
        );
    }
    Ok(())
}

/// Malformed requests are refused with `InvalidRequest` and write nothing.
pub(crate) async fn malformed_requests<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    use ExpectedRevision::Any;
    let store = factory.create().await;
    let a = name("malformed-a")?;
    let b = name("malformed-b")?;
    store
        .append(&name("malformed-other")?, Any, events("Other", 2))
        .await
        .context("a valid append")?;
    let before = Snapshot::take(&store).await?;
    let twice = event("Twice", 0);
    let requests: Vec<(&str, Vec<StreamAppend>)> = vec![
        ("an append_multi naming no stream", vec![]),
        (
            "an append_multi naming one stream twice",
            vec![
                StreamAppend::new(a.clone(), Any, events("X", 1)),
                StreamAppend::new(a.clone(), Any, events("X", 1)),
            ],
        ),
        (
            "an append_multi with an empty batch",
            vec![
                StreamAppend::new(a.clone(), Any, events("X", 1)),
                StreamAppend::new(b.clone(), Any, vec![]),
            ],
        ),
        (
            "an append_multi with one id in two parts",
            vec![
                StreamAppend::new(a.clone(), Any, vec![twice.clone()]),
                StreamAppend::new(b.clone(), Any, vec![twice.clone()]),
            ],
        ),
    ];
    for (what, appends) in requests {
        expect_invalid_request(what, store.append_multi(appends).await)?;
        before.unchanged(&store, what).await?;
    }
    expect_invalid_request(
        "an append of no events",
        store.append(&a, Any, vec![]).await,
    )?;
    expect_invalid_request(
        "an append with one id twice",
        store.append(&a, Any, vec![twice.clone(), twice]).await,
    )?;
    before.unchanged(&store, "the malformed appends").await?;
    Ok(())
}

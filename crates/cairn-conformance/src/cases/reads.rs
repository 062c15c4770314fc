//! Reads: paging through a stream and through `$all` in both directions (inclusive `from`,
//! the `next` cursor and `end` flag as `cairn_core::read` documents them, the page size and
//! byte limits), and `$all` order being commit order under concurrent appends.

use std::collections::HashMap;
use std::time::Instant;

use cairn_core::{
    AppendResult, DEFAULT_CONTENT_TYPE, EventData, EventStore, ExpectedRevision, MAX_PAGE_BYTES,
    MAX_PAGE_SIZE, Position, ReadAll, ReadStream, RecordedEvent, Revision, StreamName, Uuid,
};
use rand::RngExt;
use tokio::task::JoinSet;

use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure, fail};
use crate::settings::Settings;
use crate::support::{
    all_events, data_ids, events, ids_of, join_all, name, read_all_page, read_stream_fully,
    same_events, show, show_all,
};

/// Pages through one stream forwards and backwards with many page sizes and start points.
pub(crate) async fn stream_paging<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let stream = name("paging-1")?;
    let other = name("paging-2")?;
    for (count, other_count) in [(4, 2), (3, 1), (3, 2)] {
        store
            .append(&stream, ExpectedRevision::Any, events("Paged", count))
            .await
            .context("appending to paging-1")?;
        store
            .append(&other, ExpectedRevision::Any, events("Other", other_count))
            .await
            .context("appending to paging-2")?;
    }
    let full = read_stream_fully(&store, &stream).await?;
    ensure!(
        full.len() == 10
            && full
                .iter()
                .enumerate()
                .all(|(i, e)| e.revision == Revision(i as u64) && e.stream == stream),
        "paging-1 should read as revisions 0..10 of paging-1, it reads {}",
        show_all(&full)
    );

    for limit in [1, 3, 5, 10, 11, 100] {
        for direction in ["forwards", "backwards"] {
            let mut request = if direction == "forwards" {
                ReadStream::forwards()
            } else {
                ReadStream::backwards()
            }
            .limit(limit);
            let mut found: Vec<RecordedEvent> = Vec::new();
            loop {
                let what = format!(
                    "reading paging-1 {direction}, limit {limit}, from {:?}",
                    request.from
                );
                let page = store
                    .read_stream(&stream, request.clone())
                    .await
                    .context(&what)?;
                let remaining = full.len() - found.len();
                ensure!(
                    page.events.len() == limit.min(remaining),
                    "{what}: expected {} events (the limit, or what remains), got {}",
                    limit.min(remaining),
                    show_all(&page.events)
                );
                found.extend(page.events);
                let expected_next = (found.len() < full.len()).then(|| {
                    let index = if direction == "forwards" {
                        found.len()
                    } else {
                        full.len() - 1 - found.len()
                    };
                    full[index].revision
                });
                ensure!(
                    page.next == expected_next,
                    "{what}: next is {:?}, expected {expected_next:?} (after {} of {} events)",
                    page.next,
                    found.len(),
                    full.len()
                );
                match page.next {
                    Some(next) => request = request.from_revision(next),
                    None => break,
                }
            }
            if direction == "backwards" {
                found.reverse();
            }
            same_events(
                &format!("paging-1 read {direction} with limit {limit}"),
                &found,
                &full,
            )?;
        }
    }

    // `from` is inclusive, in both directions; reads past the end are empty.
    let revisions =
        |events: &[RecordedEvent]| events.iter().map(|e| e.revision.0).collect::<Vec<_>>();
    let cases: [(ReadStream, &[u64], Option<u64>); 7] = [
        (
            ReadStream::forwards().from_revision(Revision(4)).limit(3),
            &[4, 5, 6],
            Some(7),
        ),
        (
            ReadStream::backwards().from_revision(Revision(4)).limit(3),
            &[4, 3, 2],
            Some(1),
        ),
        (
            ReadStream::backwards().from_revision(Revision(2)).limit(3),
            &[2, 1, 0],
            None,
        ),
        (
            ReadStream::forwards().from_revision(Revision(7)).limit(3),
            &[7, 8, 9],
            None,
        ),
        (
            ReadStream::forwards().from_revision(Revision(9)).limit(1),
            &[9],
            None,
        ),
        (
            ReadStream::forwards().from_revision(Revision(10)).limit(5),
            &[],
            None,
        ),
        (
            ReadStream::forwards().from_revision(Revision(1000)),
            &[],
            None,
        ),
    ];
    for (request, expected, next) in cases {
        let what = format!("reading paging-1 with {request:?}");
        let page = store.read_stream(&stream, request).await.context(&what)?;
        ensure!(
            revisions(&page.events) == expected && page.next == next.map(Revision),
            "{what}: expected revisions {expected:?} and next {next:?}, got {} and next {:?}",
            show_all(&page.events),
            page.next
        );
    }

    // A limit of 0 returns at most one event.
    let page = store
        .read_stream(&stream, ReadStream::forwards().limit(0))
        .await
        .context("reading with limit 0")?;
    ensure!(
        page.events.len() <= 1,
        "a read with limit 0 may return at most one event (page_limit), got {}",
        page.events.len()
    );

    // An absent stream reads as an empty page, both ways.
    let absent = name("paging-absent")?;
    for request in [ReadStream::forwards(), ReadStream::backwards()] {
        let page = store
            .read_stream(&absent, request.clone())
            .await
            .context(format!("reading an absent stream with {request:?}"))?;
        ensure!(
            page.events.is_empty() && page.next.is_none(),
            "reading an absent stream with {request:?} should give an empty page with no next, \
             got {} and next {:?}",
            show_all(&page.events),
            page.next
        );
    }

    // No page holds more than MAX_PAGE_SIZE events.
    let big = name("paging-big")?;
    let total = MAX_PAGE_SIZE + 4;
    let mut written = 0;
    while written < total {
        let count = (total - written).min(1000);
        store
            .append(&big, ExpectedRevision::Any, events("Many", count))
            .await
            .context("appending to paging-big")?;
        written += count;
    }
    for request in [
        ReadStream::forwards().limit(total + 100),
        ReadStream::backwards().limit(usize::MAX),
    ] {
        let what = format!("reading {total} events with {request:?}");
        let page = store.read_stream(&big, request).await.context(&what)?;
        ensure!(
            page.events.len() == MAX_PAGE_SIZE && page.next.is_some(),
            "{what}: a page holds exactly MAX_PAGE_SIZE = {MAX_PAGE_SIZE} events when more \
             were asked for and exist, and says where to continue; got {} events, next {:?}",
            page.events.len(),
            page.next
        );
    }
    Ok(())
}

/// Pages through `$all` forwards and backwards with many page sizes and start points,
/// checking `next` and `end`, and that a reader at the end sees exactly what comes later.
pub(crate) async fn all_paging<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;

    // An empty log.
    let page = read_all_page(&store, &ReadAll::forwards()).await?;
    ensure!(
        page.events.is_empty() && page.end && page.next.is_some(),
        "reading an empty $all forwards should give no events, end = true and a next \
         cursor; got {} events, end {}, next {:?}",
        page.events.len(),
        page.end,
        page.next
    );
    let page = read_all_page(&store, &ReadAll::backwards()).await?;
    ensure!(
        page.events.is_empty() && page.end && page.next.is_none(),
        "reading an empty $all backwards should give no events, end = true and no next; got \
         {} events, end {}, next {:?}",
        page.events.len(),
        page.end,
        page.next
    );
    let head = store.head_position().await.context("head_position()")?;
    ensure!(
        head.is_none(),
        "an empty store reports head position {head:?}"
    );

    let mut written: Vec<Uuid> = Vec::new();
    for i in 0..12 {
        let batch = events("Logged", 1 + i % 3);
        written.extend(data_ids(&batch));
        store
            .append(
                &name(&format!("all-{}", i % 3))?,
                ExpectedRevision::Any,
                batch,
            )
            .await
            .context("appending")?;
    }
    let full_page = read_all_page(&store, &ReadAll::forwards().limit(1000)).await?;
    let full = full_page.events;
    ensure!(
        ids_of(&full) == written,
        "$all read forwards should hold the {} appended events in append order, it holds {}",
        written.len(),
        show_all(&full)
    );
    ensure!(
        full.windows(2)
            .all(|pair| pair[0].position < pair[1].position),
        "$all positions must strictly increase: {}",
        show_all(&full)
    );
    let last = full[full.len() - 1].position;
    ensure!(
        full_page.end && full_page.next.is_some_and(|next| next > last),
        "a forwards read of all of $all should say end = true and give a next cursor past \
         the last event {last}; got end {}, next {:?}",
        full_page.end,
        full_page.next
    );
    let head = store.head_position().await.context("head_position()")?;
    ensure!(
        head == Some(last),
        "head_position is {head:?}, the last event is at {last}"
    );

    let mut end_cursor = None;
    for limit in [1, 4, 5, 24, 100] {
        // Forwards.
        let mut request = ReadAll::forwards().limit(limit);
        let mut found: Vec<RecordedEvent> = Vec::new();
        for _ in 0..=full.len() + 1 {
            let what = format!(
                "reading $all forwards, limit {limit}, from {:?}",
                request.from
            );
            let page = read_all_page(&store, &request).await?;
            ensure!(
                page.events.len() <= limit,
                "{what}: {} events exceed the limit",
                page.events.len()
            );
            ensure!(
                page.end || page.events.len() == limit,
                "{what}: a forwards page that is not the end must be full; got {} events with \
                 end = false",
                page.events.len()
            );
            let Some(next) = page.next else {
                fail!("{what}: a forwards page must always give a next cursor, got None");
            };
            if let Some(last) = page.events.last() {
                ensure!(
                    next > last.position,
                    "{what}: next {next} does not lie past the last event returned, {}",
                    show(last)
                );
            }
            found.extend(page.events);
            request = request.from_position(next);
            if page.end {
                end_cursor = Some(next);
                break;
            }
        }
        same_events(
            &format!("$all read forwards with limit {limit}"),
            &found,
            &full,
        )?;

        // Backwards.
        let mut request = ReadAll::backwards().limit(limit);
        let mut found: Vec<RecordedEvent> = Vec::new();
        let mut finished = false;
        for _ in 0..=full.len() + 1 {
            let what = format!(
                "reading $all backwards, limit {limit}, from {:?}",
                request.from
            );
            let page = read_all_page(&store, &request).await?;
            ensure!(
                page.events.len() <= limit,
                "{what}: {} events exceed the limit",
                page.events.len()
            );
            ensure!(
                page.end == page.next.is_none(),
                "{what}: backwards, end ({}) must be set exactly when next ({:?}) is None (the \
                 start of the log was reached)",
                page.end,
                page.next
            );
            ensure!(
                page.events.len() == limit || page.next.is_none(),
                "{what}: a backwards page with fewer events than the limit ({}) reached the \
                 start of the log and must have no next; got next {:?}",
                page.events.len(),
                page.next
            );
            if let (Some(next), Some(last)) = (page.next, page.events.last()) {
                ensure!(
                    next < last.position,
                    "{what}: next {next} does not lie before the last event returned, {}",
                    show(last)
                );
            }
            found.extend(page.events);
            match page.next {
                Some(next) => request = request.from_position(next),
                None => {
                    finished = true;
                    break;
                }
            }
        }
        ensure!(
            finished,
            "reading $all backwards with limit {limit} never reached the start"
        );
        found.reverse();
        same_events(
            &format!("$all read backwards with limit {limit}"),
            &found,
            &full,
        )?;
    }

    // `from` is inclusive and need not be an event's position.
    for k in [0, 7, full.len() - 2] {
        let at = full[k].position;
        let forwards =
            read_all_page(&store, &ReadAll::forwards().from_position(at).limit(3)).await?;
        same_events(
            &format!("$all forwards from event {k}'s position {at}"),
            &forwards.events,
            &full[k..k + 3.min(full.len() - k)],
        )?;
        let backwards =
            read_all_page(&store, &ReadAll::backwards().from_position(at).limit(3)).await?;
        let mut expected: Vec<RecordedEvent> = full[k.saturating_sub(2)..=k].to_vec();
        expected.reverse();
        same_events(
            &format!("$all backwards from event {k}'s position {at}"),
            &backwards.events,
            &expected,
        )?;
        let between = at.next();
        let forwards =
            read_all_page(&store, &ReadAll::forwards().from_position(between).limit(1)).await?;
        same_events(
            &format!("$all forwards from {between}, just after event {k}"),
            &forwards.events,
            &full[k + 1..k + 2],
        )?;
        let before_next = Position(full[k + 1].position.0 - 1);
        let backwards = read_all_page(
            &store,
            &ReadAll::backwards().from_position(before_next).limit(1),
        )
        .await?;
        same_events(
            &format!(
                "$all backwards from {before_next}, just before event {}",
                k + 1
            ),
            &backwards.events,
            &full[k..=k],
        )?;
    }
    let page = read_all_page(
        &store,
        &ReadAll::backwards().from_position(full[0].position),
    )
    .await?;
    ensure!(
        page.events.len() == 1
            && page.events[0].id == full[0].id
            && page.next.is_none()
            && page.end,
        "$all read backwards from the first event's position should give just that event, \
         no next and end = true; got {}, next {:?}, end {}",
        show_all(&page.events),
        page.next,
        page.end
    );

    // A reader that reached the end continues from its cursor with exactly the new events.
    let Some(cursor) = end_cursor else {
        fail!("no forwards read of $all reached the end");
    };
    let page = read_all_page(&store, &ReadAll::forwards().from_position(cursor)).await?;
    ensure!(
        page.events.is_empty() && page.end,
        "reading $all from the cursor of a page that reached the end, with nothing appended \
         since, should give nothing and end = true; got {}, end {}",
        show_all(&page.events),
        page.end
    );
    let later = events("Later", 3);
    store
        .append(&name("all-later")?, ExpectedRevision::Any, later.clone())
        .await
        .context("a later append")?;
    let page = read_all_page(&store, &ReadAll::forwards().from_position(cursor)).await?;
    ensure!(
        ids_of(&page.events) == data_ids(&later) && page.end,
        "reading $all from the end cursor {cursor} after one more append should give exactly \
         its 3 events and end = true; got {}, end {}",
        show_all(&page.events),
        page.end
    );
    Ok(())
}

/// Pages end early once their payloads reach `MAX_PAGE_BYTES`, and paging continues from
/// there without loss.
pub(crate) async fn byte_limit<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const EVENT_TYPE: &str = "Large";
    let store = factory.create().await;
    let event_size = store.limits().max_event_size.min(1 << 20);
    let payload = event_size.saturating_sub(EVENT_TYPE.len() + DEFAULT_CONTENT_TYPE.len());
    if payload == 0 || MAX_PAGE_BYTES.div_ceil(payload) > 2_000 {
        // Events this small would take tens of thousands to fill a page; the store's
        // limits make the byte limit unreachable in a case of moderate size.
        return Ok(());
    }
    let count = MAX_PAGE_BYTES.div_ceil(payload) + 3;
    let stream = name("bytes-1")?;
    // One event per append: the case is about pages, not about how large a batch may be.
    for n in 0..count {
        let event = EventData::new(EVENT_TYPE, vec![n as u8; payload]);
        store
            .append(&stream, ExpectedRevision::Any, vec![event])
            .await
            .context("appending large events")?;
    }
    let check = |what: &str, page: &[RecordedEvent]| -> Result<(), Failure> {
        let sizes: Vec<usize> = page.iter().map(|e| e.payload.len()).collect();
        let total: usize = sizes.iter().sum();
        let before_last = total - sizes.last().copied().unwrap_or(0);
        ensure!(
            !page.is_empty() && page.len() < count,
            "{what}: with {count} events of {payload} payload bytes and a limit of {}, the \
             page should end early at MAX_PAGE_BYTES = {MAX_PAGE_BYTES}; it holds {} events",
            MAX_PAGE_SIZE,
            page.len()
        );
        ensure!(
            before_last < MAX_PAGE_BYTES && total >= MAX_PAGE_BYTES,
            "{what}: a page ends once its payloads reach MAX_PAGE_BYTES = {MAX_PAGE_BYTES}: \
             the payloads before its last event must stay below it and all of them reach it; \
             got {} events with {total} payload bytes",
            page.len()
        );
        Ok(())
    };
    for request in [
        ReadStream::forwards().limit(MAX_PAGE_SIZE),
        ReadStream::backwards().limit(MAX_PAGE_SIZE),
    ] {
        let what = format!("reading bytes-1 with {request:?}");
        let page = store.read_stream(&stream, request).await.context(&what)?;
        check(&what, &page.events)?;
        ensure!(
            page.next.is_some(),
            "{what}: a page that ended early must give next"
        );
    }
    for request in [
        ReadAll::forwards().limit(MAX_PAGE_SIZE),
        ReadAll::backwards().limit(MAX_PAGE_SIZE),
    ] {
        let what = format!("reading $all with {request:?}");
        let page = read_all_page(&store, &request).await?;
        check(&what, &page.events)?;
        ensure!(
            page.next.is_some() && !page.end,
            "{what}: a page that ended early must give next and end = false; got next {:?}, \
             end {}",
            page.next,
            page.end
        );
    }
    let read = read_stream_fully(&store, &stream).await?;
    ensure!(
        read.len() == count
            && read
                .iter()
                .enumerate()
                .all(|(i, e)| e.revision == Revision(i as u64) && e.payload.len() == payload),
        "paging through bytes-1 should give all {count} large events in order; got {}",
        show_all(&read)
    );
    let all = all_events(&store).await?;
    ensure!(
        ids_of(&all) == ids_of(&read),
        "paging through $all should give all {count} large events in order; got {}",
        show_all(&all)
    );
    Ok(())
}

/// One acknowledged append, with when its call started and when it returned.
struct Timed {
    stream: StreamName,
    ids: Vec<Uuid>,
    result: AppendResult,
    started: Instant,
    acked: Instant,
}

/// Many tasks append to many streams at once; an append acknowledged before another
/// started has smaller positions, and `$all` holds every event once at the position its
/// append reported, in strictly increasing order, each append's events together.
pub(crate) async fn commit_order<F: StoreFactory>(
    factory: &F,
    settings: Settings,
) -> Result<(), Failure> {
    const TASKS: usize = 8;
    const APPENDS: usize = 30;
    const STREAMS: usize = 10;
    let store = factory.create().await;
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let store = store.clone();
        let mut rng = settings.rng(&format!("all_order_is_commit_order/{task}"));
        tasks.spawn(async move {
            let mut timed = Vec::with_capacity(APPENDS);
            for _ in 0..APPENDS {
                let stream = name(&format!("order-{}", rng.random_range(0..STREAMS)))?;
                let batch = events("Ordered", rng.random_range(1..=3_usize));
                let ids = data_ids(&batch);
                let started = Instant::now();
                let result = store
                    .append(&stream, ExpectedRevision::Any, batch)
                    .await
                    .context("a concurrent append")?;
                let acked = Instant::now();
                timed.push(Timed {
                    stream,
                    ids,
                    result,
                    started,
                    acked,
                });
                if rng.random_bool(0.5) {
                    tokio::task::yield_now().await;
                }
            }
            Ok(timed)
        });
    }
    let appends: Vec<Timed> = join_all(tasks, "the concurrent appenders")
        .await?
        .into_iter()
        .flatten()
        .collect();
    let all = all_events(&store).await?;
    ensure!(
        all.windows(2)
            .all(|pair| pair[0].position < pair[1].position),
        "$all positions must strictly increase: {}",
        show_all(&all)
    );
    let index: HashMap<Uuid, usize> = all.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
    let total: usize = appends.iter().map(|a| a.ids.len()).sum();
    ensure!(
        all.len() == total && index.len() == total,
        "$all should hold the {total} acknowledged events once each; it holds {} events, {} \
         distinct",
        all.len(),
        index.len()
    );
    let mut first_positions = Vec::with_capacity(appends.len());
    for append in &appends {
        let mut places = Vec::with_capacity(append.ids.len());
        for id in &append.ids {
            let Some(&place) = index.get(id) else {
                fail!(
                    "acknowledged event {id} of stream {} is missing from $all",
                    append.stream
                );
            };
            places.push(place);
        }
        let first = places[0];
        ensure!(
            places
                .iter()
                .enumerate()
                .all(|(offset, &place)| place == first + offset),
            "the {} events of one append to {} should sit together and in order in $all; they \
             are at indexes {places:?}",
            places.len(),
            append.stream
        );
        let last = &all[first + places.len() - 1];
        ensure!(
            last.position == append.result.position
                && last.revision == append.result.revision
                && last.stream == append.stream,
            "an append to {} was acknowledged as {:?}, but its last event reads as {}",
            append.stream,
            append.result,
            show(last)
        );
        first_positions.push(all[first].position);
    }
    for (b, later) in appends.iter().enumerate() {
        for earlier in &appends {
            if earlier.acked < later.started {
                ensure!(
                    earlier.result.position < first_positions[b],
                    "an append to {} acknowledged at position {} before an append to {} \
                     started got a larger position than it ({}): $all must follow commit order",
                    earlier.stream,
                    earlier.result.position,
                    later.stream,
                    first_positions[b]
                );
            }
        }
    }
    Ok(())
}

//! Filtered `$all` reads: stream prefix, category (`order-1` is in `order`, `orders-1` is
//! not), event types and their combinations, in both directions, with a `next` cursor that
//! moves past events that did not match.

use std::collections::BTreeSet;

use cairn_core::{EventFilter, EventStore, ExpectedRevision, ReadAll, RecordedEvent};

use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure, fail};
use crate::settings::Settings;
use crate::support::{all_events, event, ids_of, name, read_all_page, same_events, show, show_all};

const STREAMS: [&str; 7] = [
    "order-1",
    "order-2",
    "orders-1",
    "ordering",
    "order",
    "customer-1",
    "ord-er",
];
const TYPES: [&str; 3] = ["Placed", "Shipped", "Cancelled"];

/// Every kind of filter returns exactly the matching events, forwards and backwards, and a
/// filtered reader's cursor moves past what did not match.
pub(crate) async fn filtered_reads<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let mut n = 0;
    for round in 0..4 {
        for (index, stream) in STREAMS.iter().enumerate() {
            let batch = (0..1 + (round + index) % 2)
                .map(|k| {
                    n += 1;
                    event(TYPES[(round + index + k) % TYPES.len()], n)
                })
                .collect();
            store
                .append(&name(stream)?, ExpectedRevision::Any, batch)
                .await
                .context("appending")?;
        }
    }
    let full = all_events(&store).await?;
    let head = full[full.len() - 1].position;

    // The filters and, for the trickier ones, the streams they must select.
    let both = EventFilter {
        stream_prefix: Some("order-".to_owned()),
        category: Some("order".to_owned()),
        event_types: vec![],
    };
    let filters: Vec<(EventFilter, Option<&[&str]>)> = vec![
        (
            EventFilter::category("order"),
            Some(&["order-1", "order-2", "order"]),
        ),
        (
            EventFilter::stream_prefix("order"),
            Some(&["order-1", "order-2", "orders-1", "ordering", "order"]),
        ),
        (EventFilter::stream_prefix("orders"), Some(&["orders-1"])),
        (EventFilter::category("ord"), Some(&["ord-er"])),
        (EventFilter::category("customer"), Some(&["customer-1"])),
        (both, Some(&["order-1", "order-2"])),
        (EventFilter::event_types(["Placed"]), None),
        (EventFilter::event_types(["Placed", "Cancelled"]), None),
        (
            EventFilter::category("order").with_event_type("Shipped"),
            None,
        ),
        (
            EventFilter::stream_prefix("ord").with_event_type("Cancelled"),
            None,
        ),
        (EventFilter::all(), None),
    ];
    for (filter, streams) in &filters {
        let expected: Vec<RecordedEvent> = full
            .iter()
            .filter(|e| {
                filter.matches_event(e)
                    && streams.is_none_or(|streams| streams.contains(&e.stream.as_str()))
            })
            .cloned()
            .collect();
        if let Some(streams) = streams {
            let selected: BTreeSet<&str> = expected.iter().map(|e| e.stream.as_str()).collect();
            let wanted: BTreeSet<&str> = streams.iter().copied().collect();
            ensure!(
                selected == wanted,
                "EventFilter::matches disagrees with the contract for {filter:?}: it selects \
                 {selected:?}, the contract says {wanted:?}"
            );
        }
        for limit in [1, 2, 1000] {
            let found = read_filtered_forwards(&store, filter, limit, head).await?;
            same_events(
                &format!("$all read forwards with {filter:?}, limit {limit}"),
                &found,
                &expected,
            )?;
            let mut found = read_filtered_backwards(&store, filter, limit).await?;
            found.reverse();
            same_events(
                &format!("$all read backwards with {filter:?}, limit {limit}"),
                &found,
                &expected,
            )?;
        }
        // From the middle of the log.
        let middle = full[full.len() / 2].position;
        let page = read_all_page(
            &store,
            &ReadAll::forwards()
                .from_position(middle)
                .filter(filter.clone()),
        )
        .await?;
        let tail: Vec<RecordedEvent> = expected
            .iter()
            .filter(|e| e.position >= middle)
            .cloned()
            .collect();
        same_events(
            &format!("$all read forwards from {middle} with {filter:?}"),
            &page.events,
            &tail,
        )?;
    }

    // A filter that matches nothing still moves the cursor past everything it examined.
    for filter in [
        EventFilter::category("nothing"),
        EventFilter::event_types(["Nope"]),
    ] {
        let what = format!("a read of $all with {filter:?}, which matches nothing");
        let page = read_all_page(
            &store,
            &ReadAll::forwards().limit(10).filter(filter.clone()),
        )
        .await?;
        ensure!(
            page.events.is_empty() && page.end && page.next.is_some_and(|next| next > head),
            "{what}: expected no events, end = true and a next cursor past the last event \
             ({head}); got {}, end {}, next {:?}",
            show_all(&page.events),
            page.end,
            page.next
        );
    }

    // A poller at the end of a filtered read sees exactly the new matching events.
    let filter = EventFilter::category("order").with_event_type("Placed");
    let page = read_all_page(&store, &ReadAll::forwards().filter(filter.clone())).await?;
    let Some(cursor) = page.next.filter(|_| page.end) else {
        fail!(
            "a filtered read of the whole of $all with the default page size should reach the \
             end and give a cursor; got end {}, next {:?}",
            page.end,
            page.next
        );
    };
    let placed = event("Placed", 1000);
    let batch = vec![
        event("Shipped", 1001),
        placed.clone(),
        event("Placed", 1002),
    ];
    let third = batch[2].id;
    store
        .append(&name("order-3")?, ExpectedRevision::Any, batch)
        .await
        .context("appending to order-3")?;
    store
        .append(
            &name("orders-3")?,
            ExpectedRevision::Any,
            vec![event("Placed", 1003)],
        )
        .await
        .context("appending to orders-3")?;
    let page = read_all_page(
        &store,
        &ReadAll::forwards().from_position(cursor).filter(filter),
    )
    .await?;
    ensure!(
        ids_of(&page.events) == vec![placed.id, third] && page.end,
        "a filtered poller continuing from its end cursor should get exactly the two new \
         matching events (Placed in order-3, not Shipped, not orders-3) and end = true; got \
         {}, end {}",
        show_all(&page.events),
        page.end
    );
    Ok(())
}

/// Pages forwards with `filter` until the end, checking every page's cursor.
async fn read_filtered_forwards<S: EventStore>(
    store: &S,
    filter: &EventFilter,
    limit: usize,
    head: cairn_core::Position,
) -> Result<Vec<RecordedEvent>, Failure> {
    let mut request = ReadAll::forwards().limit(limit).filter(filter.clone());
    let mut found: Vec<RecordedEvent> = Vec::new();
    for _ in 0..10_000 {
        let what = format!(
            "reading $all forwards with {filter:?}, limit {limit}, from {:?}",
            request.from
        );
        let page = read_all_page(store, &request).await?;
        if let Some(bad) = page.events.iter().find(|e| !filter.matches_event(e)) {
            fail!(
                "{what}: returned {}, which does not match the filter",
                show(bad)
            );
        }
        ensure!(
            page.end || page.events.len() == page_size(limit),
            "{what}: a page that is not the end must be full; got {} events",
            page.events.len()
        );
        let Some(next) = page.next else {
            fail!("{what}: a forwards page must always give a next cursor");
        };
        ensure!(
            request.from.is_none_or(|from| next > from || page.end),
            "{what}: next {next} does not advance"
        );
        if let Some(last) = page.events.last() {
            ensure!(
                next > last.position,
                "{what}: next {next} is not past {}",
                show(last)
            );
        }
        found.extend(page.events);
        if page.end {
            ensure!(
                next > head,
                "{what}: the page reached the end, so it examined every event up to {head}; its \
                 next cursor {next} must lie past it"
            );
            return Ok(found);
        }
        request = request.from_position(next);
    }
    fail!("reading $all forwards with {filter:?}, limit {limit}: never reached the end")
}

/// Pages backwards with `filter` until the start.
async fn read_filtered_backwards<S: EventStore>(
    store: &S,
    filter: &EventFilter,
    limit: usize,
) -> Result<Vec<RecordedEvent>, Failure> {
    let mut request = ReadAll::backwards().limit(limit).filter(filter.clone());
    let mut found: Vec<RecordedEvent> = Vec::new();
    for _ in 0..10_000 {
        let what = format!(
            "reading $all backwards with {filter:?}, limit {limit}, from {:?}",
            request.from
        );
        let page = read_all_page(store, &request).await?;
        if let Some(bad) = page.events.iter().find(|e| !filter.matches_event(e)) {
            fail!(
                "{what}: returned {}, which does not match the filter",
                show(bad)
            );
        }
        if let (Some(next), Some(last)) = (page.next, page.events.last()) {
            ensure!(
                next < last.position,
                "{what}: next {next} is not before {}",
                show(last)
            );
        }
        found.extend(page.events);
        match page.next {
            Some(next) => {
                ensure!(
                    request.from.is_none_or(|from| next < from),
                    "{what}: next {next} does not move backwards"
                );
                request = request.from_position(next);
            }
            None => return Ok(found),
        }
    }
    fail!("reading $all backwards with {filter:?}, limit {limit}: never reached the start")
}

fn page_size(limit: usize) -> usize {
    cairn_core::page_limit(limit)
}

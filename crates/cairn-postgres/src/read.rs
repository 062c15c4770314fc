//! The read path: streams by revision, `$all` by position below the release horizon, and
//! the waits that make `$all` gap-safe.
//!
//! **The release horizon.** Every event's position is `xid * 2^20 + rank`, where `xid` is
//! the id of the transaction that wrote it. Transaction ids are handed out in increasing
//! order, but transactions commit in any order, so an event can commit below one a reader
//! has already seen. The horizon of a snapshot is `pg_snapshot_xmin(...) * 2^20`: every
//! transaction with a smaller id has ended, every transaction still running or yet to
//! start has a larger one. A read of `$all` returns only positions below the horizon of
//! its own snapshot, so nothing can ever appear below a position it handed out.
//!
//! **Settling.** Events committed above the horizon (their transaction ended, an older one
//! has not) are held back. So that a read still sees everything committed before it began
//! (an acknowledged append is readable at once, and `end` means nothing committed lies
//! beyond), `$all` reads and [`head_position`] **settle**: they note the highest committed
//! position and wait until the horizon passes its transaction, which only waits for
//! transactions that started before that one committed. A page of `$all` is one call of the
//! schema's `cairn_read_all`, which returns the horizon and the highest committed position
//! with the page, so a read settles (and reads again) only when held-back events belong in
//! its page; a full forwards page never waits. The wait polls the horizon on the read's
//! own connection, woken early by this process's commits; after 20 ms it polls the
//! horizon of this database (`cairn_release_horizon`), which passes the transactions that
//! provably belong to other databases of the cluster, and the page is read again with it.
//!
//! `cairn_read_all` fixes the plan of a page (the primary key in position order, stopping
//! at the limit) with planner settings of its own: a page costs the same however large the
//! log, even when the table's statistics are missing or stale.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_core::{
    AllPage, Direction, MAX_LIST_STREAMS, MAX_PAGE_BYTES, Metadata, Position, ReadAll, ReadError,
    ReadStream, RecordedEvent, StorageError, StorageErrorKind, StreamInfo, StreamMetadata,
    StreamName, StreamPage, StreamState, Timestamp, Uuid, page_limit,
};
use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::append::{LIVE, RANK_BITS, SOFT_DELETED, TOMBSTONED, to_position, to_revision};
use crate::store::PgStore;

/// Which events of a stream row are visible, as SQL over `s` (the stream) and `e` (the
/// event): the shared `Visibility` rule of the contract.
const VISIBLE: &str = "
    s.lifecycle <> 2
    AND e.revision >= GREATEST(
        COALESCE(s.truncate_before, 0),
        COALESCE(s.deleted_before, 0),
        CASE WHEN s.max_count IS NULL THEN 0
             ELSE COALESCE((SELECT max(l.revision) FROM cairn_events l
                            WHERE l.stream_id = s.id), 0) + 1 - s.max_count END)
    AND (s.max_age_us IS NULL
         OR e.recorded_us >= (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
                             - s.max_age_us)";

const EVENT_COLUMNS: &str = "e.position, s.name, e.revision, e.id, e.event_type, \
                             e.content_type, e.metadata, e.payload, e.recorded_us";

/// One page of `$all` with the horizon and the highest committed position of its snapshot
/// (see `cairn_read_all` in the schema); `$7` asks for the database horizon.
const READ_ALL: &str = "SELECT * FROM cairn_read_all($1, $2, $3, $4, $5, $6, $7)";

const SETTLE: &str = "
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
           (SELECT max(position) FROM cairn_events)";

const HORIZON: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

/// The horizon that transactions of other databases do not hold back (see
/// `cairn_release_horizon` in the schema).
const DATABASE_HORIZON: &str = "SELECT cairn_release_horizon(pg_current_snapshot())";

/// How long the plain horizon must stand still before a wait asks for the database
/// horizon, whose reading takes every partition of the server's lock table.
const DATABASE_HORIZON_AFTER: Duration = Duration::from_millis(20);

/// How often, at most, one wait asks for the database horizon.
const DATABASE_HORIZON_EVERY: Duration = Duration::from_millis(50);

const STREAM_INFO: &str = "
    SELECT s.name, s.lifecycle,
           (SELECT max(e.revision) FROM cairn_events e WHERE e.stream_id = s.id), s.metadata
    FROM cairn_streams s WHERE s.name = $1";

const LIST_STREAMS: &str = "
    SELECT s.name, s.lifecycle,
           (SELECT max(e.revision) FROM cairn_events e WHERE e.stream_id = s.id), s.metadata
    FROM cairn_streams s
    WHERE $1::text IS NULL OR s.name > $1
    ORDER BY s.name LIMIT $2";

/// The SQL of a stream page: `$1` the stream, `$2` the revision to start from, `$3` the
/// limit. The first column is the stream's lifecycle, the rest the event (NULL when none).
fn stream_page_sql(direction: Direction) -> String {
    let (bound, order) = match direction {
        Direction::Forwards => ("e.revision >= $2", "ASC"),
        Direction::Backwards => ("e.revision <= $2", "DESC"),
    };
    format!(
        "SELECT s.lifecycle, p.* FROM cairn_streams s LEFT JOIN LATERAL (
             SELECT {EVENT_COLUMNS}
             FROM cairn_events e
             WHERE e.stream_id = s.id AND {bound} AND {VISIBLE}
             ORDER BY e.revision {order}
             LIMIT $3
         ) p ON true
         WHERE s.name = $1"
    )
}

/// Reads one page of a stream.
pub(crate) async fn read_stream(
    store: &PgStore,
    stream: &StreamName,
    request: &ReadStream,
) -> Result<StreamPage, ReadError> {
    let limit = page_limit(request.limit);
    let from = match (request.direction, request.from) {
        (_, Some(revision)) => clamp(revision.0),
        (Direction::Forwards, None) => 0,
        (Direction::Backwards, None) => i64::MAX,
    };
    let sql = stream_page_sql(request.direction);
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(stream.as_str())
        .bind(from)
        // One more than the page, to know where the next page starts.
        .bind(limit as i64 + 1)
        .fetch(&store.inner.pool);
    let failed = |error| ReadError::Storage(store.storage("reading a stream", error));
    let mut events = Vec::new();
    let mut bytes = 0usize;
    let mut next = None;
    while let Some(row) = rows.try_next().await.map_err(failed)? {
        let lifecycle: i16 = row.try_get(0).map_err(failed)?;
        if lifecycle == TOMBSTONED {
            return Err(ReadError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let Some(event) = event_from(store, &row, 1)? else {
            break;
        };
        if events.len() >= limit || bytes >= MAX_PAGE_BYTES {
            next = Some(event.revision);
            break;
        }
        bytes += event.payload.len();
        events.push(event);
    }
    Ok(StreamPage { events, next })
}

/// Reads one page of `$all`.
///
/// One query reads the page below the release horizon together with the highest position
/// committed (`top`). Only when committed events are held back (`top` at or above the
/// horizon) and they belong in this page (a forwards page that is not full, a backwards
/// page starting above the horizon) does it wait for the horizon to pass `top` and read
/// again: then everything committed before the call is below the new horizon.
///
/// A live subscription's reads (`PgStore::live` set) do not wait when the page holds
/// released events: they hand those out at once, and the subscription's next read (which
/// starts at the horizon, so nothing is skipped) waits for the rest. Its first read to
/// reach the end, at first and after every full page (the subscription fell behind),
/// always waits, so `CaughtUp` still follows every event committed before.
pub(crate) async fn read_all(store: &PgStore, request: &ReadAll) -> Result<AllPage, ReadError> {
    let limit = page_limit(request.limit);
    let from = match (request.direction, request.from) {
        (_, Some(position)) => clamp(position.0),
        (Direction::Forwards, None) => 0,
        (Direction::Backwards, None) => i64::MAX,
    };
    // One connection for the page, the wait and the second read: were it returned to the
    // pool in between, each step would queue again behind appends waiting for one.
    let mut conn = store
        .inner
        .pool
        .acquire()
        .await
        .map_err(|error| store.storage("reading $all", error))?;
    // The transaction the horizon must pass (the one of the highest position committed
    // when the read first found events held back), and by when.
    let mut settling: Option<(i64, Instant)> = None;
    let mut database_horizon = false;
    loop {
        let page = read_all_page(store, &mut conn, request, from, limit, database_horizon).await?;
        let held_back = page.top.filter(|top| *top >= page.horizon);
        let relevant = match request.direction {
            Direction::Forwards => !page.full,
            Direction::Backwards => from >= page.horizon,
        };
        let live = store
            .live
            .as_deref()
            .filter(|_| request.direction == Direction::Forwards);
        match held_back {
            Some(_)
                if relevant
                    && !page.events.is_empty()
                    && live.is_some_and(|live| live.load(Ordering::Relaxed)) =>
            {
                return Ok(page.into_all_page(request.direction, from));
            }
            // Not settled yet: also when the read after a wait found the horizon short of
            // what the wait saw pass (the database horizon can fall back when a
            // transaction of another database lets go of the lock that told where it
            // belongs, see `cairn_release_horizon`).
            Some(top)
                if relevant
                    && settling.is_none_or(|(target, _)| page.horizon >> RANK_BITS <= target) =>
            {
                let (target, deadline) = *settling.get_or_insert((
                    top >> RANK_BITS,
                    Instant::now() + store.inner.options.release_timeout,
                ));
                database_horizon = wait_for_horizon(
                    store,
                    &mut conn,
                    target,
                    page.horizon >> RANK_BITS,
                    deadline,
                )
                .await?;
            }
            _ => {
                // A full page means the subscription is behind: until a read reaches the
                // end again, it must wait for held-back events, so that its CaughtUp
                // follows every event committed before.
                if let Some(live) = live {
                    live.store(!page.full, Ordering::Relaxed);
                }
                return Ok(page.into_all_page(request.direction, from));
            }
        }
    }
}

/// One page of `$all` as read, before the caller decides whether to settle.
struct RawAllPage {
    events: Vec<RecordedEvent>,
    /// The release horizon of the page's snapshot, as a position.
    horizon: i64,
    /// The highest position committed in that snapshot, released or not.
    top: Option<i64>,
    /// Whether the page ended at its limit (in events or bytes) rather than at the horizon.
    full: bool,
}

impl RawAllPage {
    fn into_all_page(self, direction: Direction, from: i64) -> AllPage {
        let Self {
            events,
            horizon,
            full,
            ..
        } = self;
        match direction {
            Direction::Forwards => {
                let next = match events.last() {
                    Some(last) if full => last.position.next(),
                    _ => to_position(horizon.max(from)),
                };
                AllPage {
                    events,
                    next: Some(next),
                    end: !full,
                }
            }
            Direction::Backwards => {
                let next = if full {
                    events
                        .last()
                        .and_then(|last| last.position.0.checked_sub(1))
                        .map(Position)
                } else {
                    None
                };
                AllPage {
                    events,
                    end: next.is_none(),
                    next,
                }
            }
        }
    }
}

async fn read_all_page(
    store: &PgStore,
    conn: &mut PgConnection,
    request: &ReadAll,
    from: i64,
    limit: usize,
    database_horizon: bool,
) -> Result<RawAllPage, ReadError> {
    let filter = &request.filter;
    let mut rows = sqlx::query(READ_ALL)
        .bind(from)
        .bind(limit as i64)
        .bind(request.direction == Direction::Backwards)
        .bind(filter.stream_prefix.as_deref())
        .bind(filter.category.as_deref())
        .bind(&filter.event_types)
        .bind(database_horizon)
        .fetch(&mut *conn);
    let failed = |error| ReadError::Storage(store.storage("reading $all", error));
    let mut events = Vec::new();
    let mut bytes = 0usize;
    let mut horizon = 0i64;
    let mut top = None;
    let mut cut_short = false;
    while let Some(row) = rows.try_next().await.map_err(failed)? {
        horizon = row.try_get(0).map_err(failed)?;
        top = row.try_get(1).map_err(failed)?;
        let Some(event) = event_from(store, &row, 2)? else {
            break;
        };
        bytes += event.payload.len();
        events.push(event);
        if bytes >= MAX_PAGE_BYTES && events.len() < limit {
            cut_short = true;
            break;
        }
    }
    drop(rows);
    let full = events.len() >= limit || cut_short;
    Ok(RawAllPage {
        events,
        horizon,
        top,
        full,
    })
}

/// The position of the last event committed, once it is released to readers.
pub(crate) async fn head_position(store: &PgStore) -> Result<Option<Position>, ReadError> {
    let failed = |error| store.storage("reading the release horizon", error);
    let mut conn = store.inner.pool.acquire().await.map_err(failed)?;
    let (horizon, top): (i64, Option<i64>) = sqlx::query_as(SETTLE)
        .fetch_one(&mut *conn)
        .await
        .map_err(failed)?;
    let Some(top) = top else {
        return Ok(None);
    };
    let deadline = Instant::now() + store.inner.options.release_timeout;
    wait_for_horizon(store, &mut conn, top >> RANK_BITS, horizon, deadline).await?;
    Ok(Some(to_position(top)))
}

/// Waits until the release horizon passes transaction `target`, given the horizon last
/// seen (`horizon`, a transaction id): until every transaction of this database that
/// started before `target` committed has ended. Says whether it took the database
/// horizon to pass it, which the read that follows must then use too.
///
/// It polls the horizon, sooner when this process committed something (the transaction
/// holding the horizon back is most often one of its own appends), at the latest after a
/// pause that grows from 0.2 to 5 ms, until `deadline` (a read's [`release_timeout`] from
/// its first wait). Once the plain horizon has not moved for [`DATABASE_HORIZON_AFTER`],
/// it also reads the database horizon, every [`DATABASE_HORIZON_EVERY`] at most, which
/// passes transactions of other databases of the cluster (see the crate docs, "Gap
/// safety").
///
/// [`release_timeout`]: crate::PgOptions::release_timeout
async fn wait_for_horizon(
    store: &PgStore,
    conn: &mut PgConnection,
    target: i64,
    mut horizon: i64,
    deadline: Instant,
) -> Result<bool, StorageError> {
    let failed = |error| store.storage("reading the release horizon", error);
    let mut commits = store.inner.changes.subscribe();
    let mut pause = Duration::from_micros(200);
    // The plain horizon last read, and when the database horizon may be read next: once
    // the plain one has not moved for a while, and then not often.
    let mut plain = horizon;
    let mut database_at = Instant::now() + DATABASE_HORIZON_AFTER;
    let mut database_horizon = false;
    while horizon <= target {
        if Instant::now() > deadline {
            return Err(StorageError::new(
                StorageErrorKind::Unavailable,
                format!(
                    "events committed by transaction {target} are held back: transaction \
                     {horizon}, which started before them, has been running for longer than \
                     {:?}",
                    store.inner.options.release_timeout
                ),
            ));
        }
        tokio::select! {
            // The sender lives as long as the store; a closed channel only ends the wait.
            _ = commits.changed() => {}
            () = tokio::time::sleep(pause) => {
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        }
        let read: i64 = sqlx::query_scalar(HORIZON)
            .fetch_one(&mut *conn)
            .await
            .map_err(failed)?;
        let now = Instant::now();
        if read > plain {
            plain = read;
            database_at = database_at.max(now + DATABASE_HORIZON_AFTER);
        }
        horizon = plain;
        database_horizon = false;
        if horizon <= target && now >= database_at {
            // Stuck, perhaps on a transaction of another database.
            database_at = now + DATABASE_HORIZON_EVERY;
            let database: i64 = sqlx::query_scalar(DATABASE_HORIZON)
                .fetch_one(&mut *conn)
                .await
                .map_err(failed)?;
            if database > horizon {
                horizon = database;
                database_horizon = true;
            }
        }
    }
    Ok(database_horizon)
}

/// What the store knows about one stream.
pub(crate) async fn stream_info(
    store: &PgStore,
    stream: &StreamName,
) -> Result<StreamInfo, ReadError> {
    let row = sqlx::query(STREAM_INFO)
        .bind(stream.as_str())
        .fetch_optional(&store.inner.pool)
        .await
        .map_err(|error| store.storage("reading a stream's state", error))?;
    match row {
        Some(row) => Ok(info_from(store, &row)?),
        None => Ok(StreamInfo {
            stream: stream.clone(),
            state: StreamState::NoStream,
            metadata: StreamMetadata::default(),
        }),
    }
}

/// Streams in name order after `after`.
pub(crate) async fn list_streams(
    store: &PgStore,
    after: Option<&StreamName>,
    limit: usize,
) -> Result<Vec<StreamInfo>, ReadError> {
    let rows = sqlx::query(LIST_STREAMS)
        .bind(after.map(StreamName::as_str))
        .bind(limit.clamp(1, MAX_LIST_STREAMS) as i64)
        .fetch_all(&store.inner.pool)
        .await
        .map_err(|error| store.storage("listing streams", error))?;
    rows.iter()
        .map(|row| info_from(store, row).map_err(ReadError::from))
        .collect()
}

fn info_from(store: &PgStore, row: &PgRow) -> Result<StreamInfo, StorageError> {
    let failed = |error| store.storage("decoding a stream", error);
    let name: String = row.try_get(0).map_err(failed)?;
    let lifecycle: i16 = row.try_get(1).map_err(failed)?;
    let last: Option<i64> = row.try_get(2).map_err(failed)?;
    let metadata: Option<String> = row.try_get(3).map_err(failed)?;
    let stream = StreamName::new(&name).map_err(|error| corrupt("stream name", &error))?;
    let state = match (lifecycle, last) {
        (TOMBSTONED, _) => StreamState::Tombstoned,
        (_, None) => StreamState::NoStream,
        (LIVE, Some(last)) => StreamState::Active {
            last_revision: to_revision(last),
        },
        (SOFT_DELETED, Some(last)) => StreamState::Deleted {
            last_revision: to_revision(last),
        },
        (other, _) => return Err(corrupt("stream lifecycle", &other)),
    };
    let metadata = match metadata {
        Some(text) => {
            serde_json::from_str(&text).map_err(|error| corrupt("stream metadata", &error))?
        }
        None => StreamMetadata::default(),
    };
    Ok(StreamInfo {
        stream,
        state,
        metadata,
    })
}

/// Decodes the event in `row` starting at column `at`; `None` when those columns are NULL
/// (an empty page's single row).
fn event_from(
    store: &PgStore,
    row: &PgRow,
    at: usize,
) -> Result<Option<RecordedEvent>, StorageError> {
    let failed = |error| store.storage("decoding an event", error);
    let Some(position): Option<i64> = row.try_get(at).map_err(failed)? else {
        return Ok(None);
    };
    let name: String = row.try_get(at + 1).map_err(failed)?;
    let revision: i64 = row.try_get(at + 2).map_err(failed)?;
    let id: Uuid = row.try_get(at + 3).map_err(failed)?;
    let event_type: &str = row.try_get(at + 4).map_err(failed)?;
    let content_type: &str = row.try_get(at + 5).map_err(failed)?;
    let metadata: Vec<u8> = row.try_get(at + 6).map_err(failed)?;
    let payload: Vec<u8> = row.try_get(at + 7).map_err(failed)?;
    let recorded: i64 = row.try_get(at + 8).map_err(failed)?;
    Ok(Some(RecordedEvent {
        id,
        stream: StreamName::new(&name).map_err(|error| corrupt("stream name", &error))?,
        revision: to_revision(revision),
        position: to_position(position),
        event_type: event_type.into(),
        content_type: content_type.into(),
        payload: payload.into(),
        metadata: decode_metadata(&metadata).map_err(|error| corrupt("event metadata", &error))?,
        recorded: Timestamp(u64::try_from(recorded).unwrap_or(0)),
    }))
}

/// Empty metadata as stored.
pub(crate) const EMPTY_METADATA: &[u8] = b"{}";

/// An event's metadata as stored: a JSON object of strings.
pub(crate) fn encode_metadata(metadata: &Metadata) -> Vec<u8> {
    if metadata.is_empty() {
        return EMPTY_METADATA.to_vec();
    }
    // A map of strings always serializes.
    serde_json::to_vec(metadata).unwrap_or_else(|_| EMPTY_METADATA.to_vec())
}

/// Decodes what [`encode_metadata`] wrote.
pub(crate) fn decode_metadata(bytes: &[u8]) -> Result<Metadata, serde_json::Error> {
    serde_json::from_slice(bytes)
}

fn corrupt(what: &str, error: &dyn std::fmt::Display) -> StorageError {
    StorageError::new(
        StorageErrorKind::Corruption,
        format!("the database holds an invalid {what}: {error}"),
    )
}

/// A position or revision as the `bigint` it is stored as (larger values clamp: nothing
/// is stored beyond `i64::MAX`).
pub(crate) fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use cairn_core::Revision;

    #[test]
    fn metadata_round_trips_including_control_characters_in_values() {
        let metadata: Metadata = [("traceparent", "00-ab"), ("note", "nul\u{0}inside")]
            .into_iter()
            .collect();
        let decoded = decode_metadata(&encode_metadata(&metadata)).unwrap();
        assert_eq!(decoded, metadata);
        assert_eq!(
            decode_metadata(&encode_metadata(&Metadata::new())).unwrap(),
            Metadata::new()
        );
    }

    #[test]
    fn revisions_beyond_bigint_clamp() {
        assert_eq!(clamp(5), 5);
        assert_eq!(clamp(u64::MAX), i64::MAX);
        assert_eq!(Revision(3), to_revision(3));
    }
}

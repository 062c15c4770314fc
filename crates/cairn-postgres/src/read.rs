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
//! beyond), `$all` reads and [`head_position`] first **settle**: they note the highest
//! committed position and wait until the horizon passes its transaction, which only
//! waits for transactions that started before that one committed.

use std::time::{Duration, Instant};

use cairn_core::{
    AllPage, Direction, MAX_LIST_STREAMS, MAX_PAGE_BYTES, Metadata, Position, ReadAll, ReadError,
    ReadStream, RecordedEvent, StorageError, StorageErrorKind, StreamInfo, StreamMetadata,
    StreamName, StreamPage, StreamState, Timestamp, Uuid, page_limit,
};
use futures::TryStreamExt;
use sqlx::Row;
use sqlx::postgres::PgRow;

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

const SETTLE: &str = "
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
           (SELECT max(position) FROM cairn_events)";

const HORIZON: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

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

/// The SQL of a forwards or backwards `$all` page: `$1` the position to start from, `$2`
/// the limit, `$3`..`$5` the filter. The first column is the horizon, the rest the event
/// (NULL when the page is empty).
fn all_page_sql(direction: Direction) -> String {
    let (bound, order) = match direction {
        Direction::Forwards => ("e.position >= $1", "ASC"),
        Direction::Backwards => ("e.position <= $1", "DESC"),
    };
    format!(
        "WITH h AS (
             SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {RANK_BITS} AS horizon
         )
         SELECT h.horizon, p.* FROM h LEFT JOIN LATERAL (
             SELECT {EVENT_COLUMNS}
             FROM cairn_events e JOIN cairn_streams s ON s.id = e.stream_id
             WHERE {bound} AND e.position < h.horizon AND {VISIBLE}
               AND ($3::text IS NULL OR starts_with(s.name, $3))
               AND ($4::text IS NULL OR s.category = $4)
               AND (cardinality($5::text[]) = 0 OR e.event_type = ANY($5))
             ORDER BY e.position {order}
             LIMIT $2
         ) p ON true"
    )
}

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
pub(crate) async fn read_all(store: &PgStore, request: &ReadAll) -> Result<AllPage, ReadError> {
    let limit = page_limit(request.limit);
    settle(store).await?;
    let from = match (request.direction, request.from) {
        (_, Some(position)) => clamp(position.0),
        (Direction::Forwards, None) => 0,
        (Direction::Backwards, None) => i64::MAX,
    };
    let sql = all_page_sql(request.direction);
    let filter = &request.filter;
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(from)
        .bind(limit as i64)
        .bind(filter.stream_prefix.as_deref())
        .bind(filter.category.as_deref())
        .bind(&filter.event_types)
        .fetch(&store.inner.pool);
    let failed = |error| ReadError::Storage(store.storage("reading $all", error));
    let mut events = Vec::new();
    let mut bytes = 0usize;
    let mut horizon = 0i64;
    let mut cut_short = false;
    while let Some(row) = rows.try_next().await.map_err(failed)? {
        horizon = row.try_get(0).map_err(failed)?;
        let Some(event) = event_from(store, &row, 1)? else {
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
    match request.direction {
        Direction::Forwards => {
            let next = match events.last() {
                Some(last) if full => last.position.next(),
                _ => to_position(horizon.max(from)),
            };
            Ok(AllPage {
                events,
                next: Some(next),
                end: !full,
            })
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
            Ok(AllPage {
                events,
                end: next.is_none(),
                next,
            })
        }
    }
}

/// The position of the last event committed, once it is released to readers.
pub(crate) async fn head_position(store: &PgStore) -> Result<Option<Position>, ReadError> {
    Ok(settle(store).await?.map(to_position))
}

/// Waits until every event committed when it was called is below the release horizon;
/// returns the highest position committed then.
async fn settle(store: &PgStore) -> Result<Option<i64>, StorageError> {
    let pool = &store.inner.pool;
    let failed = |error| store.storage("reading the release horizon", error);
    let (mut horizon, top): (i64, Option<i64>) = sqlx::query_as(SETTLE)
        .fetch_one(pool)
        .await
        .map_err(failed)?;
    let Some(top) = top else {
        return Ok(None);
    };
    let target = top >> RANK_BITS;
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    while horizon <= target {
        if started.elapsed() > store.inner.options.release_timeout {
            return Err(StorageError::new(
                StorageErrorKind::Unavailable,
                format!(
                    "events committed at position {top} are held back: transaction {horizon}, \
                     which started before them, has been running for longer than {:?}",
                    store.inner.options.release_timeout
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(5));
        horizon = sqlx::query_scalar(HORIZON)
            .fetch_one(pool)
            .await
            .map_err(failed)?;
    }
    Ok(Some(top))
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
    let event_type: String = row.try_get(at + 4).map_err(failed)?;
    let content_type: String = row.try_get(at + 5).map_err(failed)?;
    let metadata: Vec<u8> = row.try_get(at + 6).map_err(failed)?;
    let payload: Vec<u8> = row.try_get(at + 7).map_err(failed)?;
    let recorded: i64 = row.try_get(at + 8).map_err(failed)?;
    Ok(Some(RecordedEvent {
        id,
        stream: StreamName::new(&name).map_err(|error| corrupt("stream name", &error))?,
        revision: to_revision(revision),
        position: to_position(position),
        event_type,
        content_type,
        payload: payload.into(),
        metadata: decode_metadata(&metadata).map_err(|error| corrupt("event metadata", &error))?,
        recorded: Timestamp(u64::try_from(recorded).unwrap_or(0)),
    }))
}

/// An event's metadata as stored: a JSON object of strings.
pub(crate) fn encode_metadata(metadata: &Metadata) -> Vec<u8> {
    if metadata.is_empty() {
        return b"{}".to_vec();
    }
    // A map of strings always serializes.
    serde_json::to_vec(metadata).unwrap_or_else(|_| b"{}".to_vec())
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

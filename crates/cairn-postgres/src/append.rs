//! The write path of an append: lock the streams, check expectations, insert the events at
//! positions derived from the transaction id, and tell retries from reused ids.
//!
//! One append is one call of a schema function: `cairn_append_event` for a single event
//! (the common case: scalar arguments, and one statement that reads the stream, checks the
//! expectation and inserts), `cairn_append_stream` for several events to one stream,
//! `cairn_append` for several streams. One round trip, one statement in autocommit (or, inside the
//! caller's transaction, in a savepoint). It takes a per-stream advisory lock for every
//! named stream (writers of one stream queue there; writers of different streams never
//! meet), checks each part's expectation, takes the transaction id and inserts every event
//! at `xid * 2^20 + rank` (a stream's last revision is that of its last event, so an append
//! does not update the stream's row). Its refusals come back as SQLSTATEs
//! `CA001`..`CA004`, which [`refusal`] turns into the contract's errors.
//!
//! Appends that the store combined (see `combine.rs`) take [`write_batch`] instead: one call
//! of `cairn_append_batch` for many appends, each to one stream, whose refusals come back
//! as an outcome per append rather than as an error, so that the others still commit.
//!
//! Idempotency costs nothing on the happy path: a retried id trips the unique index on
//! event ids, and only then (or when an expectation fails) does [`find_retry`] compare the
//! recorded events with the request.

use std::collections::HashMap;

use cairn_core::{
    AppendResult, CurrentRevision, EventData, ExpectedRevision, Position, Revision, StorageError,
    StorageErrorKind, StreamAppend, Uuid, WriteError, category_of,
};
use sqlx::{Connection, PgConnection, Row};

use crate::error::{constraint, sqlstate};
use crate::read::{EMPTY_METADATA, decode_metadata, encode_metadata};
use crate::store::PgStore;

/// Bits of a position that rank an event inside its transaction.
pub(crate) const RANK_BITS: u32 = 20;

/// The most events one transaction can write: 2^20.
pub const MAX_EVENTS_PER_TRANSACTION: u64 = 1 << RANK_BITS;

/// Stream lifecycle codes, as stored.
pub(crate) const LIVE: i16 = 0;
pub(crate) const SOFT_DELETED: i16 = 1;
pub(crate) const TOMBSTONED: i16 = 2;

const LOCK_STREAMS: &str = "SELECT * FROM cairn_lock_streams($1)";

const CREATE_STREAMS: &str = "
    INSERT INTO cairn_streams (name, category)
    SELECT * FROM unnest($1::text[], $2::text[])
    ON CONFLICT (name) DO NOTHING
    RETURNING id, name, NULL::bigint, lifecycle";

const APPEND: &str = "
    SELECT last_revision, last_position
    FROM cairn_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

const APPEND_STREAM: &str = "
    SELECT r.last_revision, r.last_position
    FROM cairn_append_stream($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) AS r";

const APPEND_EVENT: &str = "SELECT cairn_append_event($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

const TRY_APPEND_EVENT: &str = "SELECT cairn_try_append_event($1, $2, $3, $4, $5, $6, $7, $8, $9)";

const APPEND_BATCH: &str = "
    SELECT outcome, actual, last_revision, last_position
    FROM cairn_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

const FIND_IDS: &str = "
    SELECT e.id, s.name, e.revision, e.position, e.event_type, e.content_type, e.metadata,
           e.payload
    FROM cairn_events e JOIN cairn_streams s ON s.id = e.stream_id
    WHERE e.id = ANY($1)";

const STREAM_NOW: &str = "
    SELECT s.lifecycle, NULL::bigint,
           (SELECT max(e.revision) FROM cairn_events e WHERE e.stream_id = s.id)
    FROM cairn_streams s WHERE s.name = $1";

/// Why one attempt did not commit.
enum Failure {
    /// The contract refuses the append (expectation, tombstone, size of a transaction).
    Refused(WriteError),
    /// The database failed or a constraint tripped.
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

/// Appends `appends` (already validated) on `conn`, in a transaction of its own, or in a
/// savepoint when `conn` is inside the caller's transaction (`in_caller_tx`).
pub(crate) async fn append_on(
    store: &PgStore,
    conn: &mut PgConnection,
    appends: &[StreamAppend],
    in_caller_tx: bool,
) -> Result<Vec<AppendResult>, WriteError> {
    // A unique violation on an event id whose holder then rolled back finds no retry; the
    // append is tried again, a bounded number of times.
    const ATTEMPTS: usize = 3;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failure = if in_caller_tx {
            // A savepoint, so that a refusal leaves the caller's transaction usable.
            let mut tx = conn
                .begin()
                .await
                .map_err(|error| store.storage("beginning an append", error))?;
            match write(&mut tx, appends, true).await {
                Ok(results) => {
                    tx.commit()
                        .await
                        .map_err(|error| store.storage("releasing an append's savepoint", error))?;
                    return Ok(results);
                }
                Err(failure) => {
                    if let Err(error) = tx.rollback().await {
                        return Err(match failure {
                            Failure::Database(original) => {
                                store.storage("appending", original).into()
                            }
                            Failure::Refused(_) => {
                                store.storage("rolling back an append", error).into()
                            }
                        });
                    }
                    failure
                }
            }
        } else {
            // One statement in autocommit: its own transaction, committed when it returns.
            match write(conn, appends, false).await {
                Ok(results) => return Ok(results),
                Err(failure) => failure,
            }
        };
        match failure {
            Failure::Refused(refusal) => {
                return match find_retry(store, conn, appends).await? {
                    Some(results) => Ok(results),
                    None => Err(refusal),
                };
            }
            Failure::Database(error) if constraint(&error) == Some("cairn_events_id_key") => {
                if let Some(results) = find_retry(store, conn, appends).await? {
                    return Ok(results);
                }
                if attempt >= ATTEMPTS {
                    return Err(store.storage("appending", error).into());
                }
            }
            Failure::Database(error) if constraint(&error) == Some("cairn_events_revision_key") => {
                return Err(revision_conflict(store, conn, appends).await?);
            }
            // Stream locks are taken in one order, so appends cannot deadlock each other, but
            // one can with a transaction holding other locks; PostgreSQL fails one of the two,
            // and an append fails only after a few tries.
            Failure::Database(error)
                if sqlstate(&error).as_deref() == Some("40P01") && attempt < ATTEMPTS => {}
            Failure::Database(error) => return Err(store.storage("appending", error).into()),
        }
    }
}

/// The expectation as `cairn_append` takes it: a kind (0 any, 1 no stream, 2 stream
/// exists, 3 exact) and the revision of an exact one.
fn expectation(expected: ExpectedRevision) -> (i16, i64) {
    match expected {
        ExpectedRevision::Any => (0, 0),
        ExpectedRevision::NoStream => (1, 0),
        ExpectedRevision::StreamExists => (2, 0),
        // A revision beyond bigint can never match a stored one.
        ExpectedRevision::Exact(revision) => (3, i64::try_from(revision).unwrap_or(-1)),
    }
}

/// The columns `cairn_append` and `cairn_append_batch` take as arrays: per append its
/// expectation and event count, per event the append it belongs to (numbered from 1), its
/// rank in that append and its content.
struct Columns<'a> {
    kinds: Vec<i16>,
    revisions: Vec<i64>,
    counts: Vec<i32>,
    parts: Vec<i32>,
    ranks: Vec<i32>,
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    content_types: Vec<&'a str>,
    metadata: Vec<Vec<u8>>,
    payloads: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn of(appends: impl ExactSizeIterator<Item = &'a StreamAppend> + Clone) -> Self {
        let total: usize = appends.clone().map(|a| a.events.len()).sum();
        let mut columns = Self {
            kinds: Vec::with_capacity(appends.len()),
            revisions: Vec::with_capacity(appends.len()),
            counts: Vec::with_capacity(appends.len()),
            parts: Vec::with_capacity(total),
            ranks: Vec::with_capacity(total),
            ids: Vec::with_capacity(total),
            types: Vec::with_capacity(total),
            content_types: Vec::with_capacity(total),
            metadata: Vec::with_capacity(total),
            payloads: Vec::with_capacity(total),
        };
        for (index, append) in appends.enumerate() {
            let (kind, revision) = expectation(append.expected);
            columns.kinds.push(kind);
            columns.revisions.push(revision);
            columns
                .counts
                .push(i32::try_from(append.events.len()).unwrap_or(i32::MAX));
            let part = i32::try_from(index + 1).unwrap_or(i32::MAX);
            for (rank, event) in append.events.iter().enumerate() {
                columns.parts.push(part);
                columns.ranks.push(i32::try_from(rank).unwrap_or(i32::MAX));
                columns.ids.push(event.id);
                columns.types.push(event.event_type.as_str());
                columns.content_types.push(event.content_type.as_str());
                columns.metadata.push(encode_metadata(&event.metadata));
                columns.payloads.push(event.payload.as_ref());
            }
        }
        columns
    }

    /// `query` with these columns bound next, in the order both functions take them.
    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.kinds)
            .bind(&self.revisions)
            .bind(&self.counts)
            .bind(&self.parts)
            .bind(&self.ranks)
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.content_types)
            .bind(&self.metadata)
            .bind(&self.payloads)
    }
}

/// One attempt inside an open transaction: one call of `cairn_append_event` for one event,
/// of `cairn_append_stream` for several to one stream, of `cairn_append` for several
/// streams (see the schema).
async fn write(
    conn: &mut PgConnection,
    appends: &[StreamAppend],
    in_caller_tx: bool,
) -> Result<Vec<AppendResult>, Failure> {
    if let [append] = appends {
        if let [event] = append.events.as_slice() {
            return write_event(conn, append, event, in_caller_tx)
                .await
                .map_err(|error| refusal(error, appends));
        }
        return write_stream(conn, append, in_caller_tx)
            .await
            .map_err(|error| refusal(error, appends))
            .and_then(|row| {
                Ok(vec![AppendResult {
                    revision: to_revision(row.try_get(0)?),
                    position: to_position(row.try_get(1)?),
                }])
            });
    }
    let names: Vec<&str> = appends.iter().map(|a| a.stream.as_str()).collect();
    let categories: Vec<&str> = appends.iter().map(|a| a.stream.category()).collect();
    let columns = Columns::of(appends.iter());
    let rows = columns
        .bind(sqlx::query(APPEND).bind(&names).bind(&categories))
        .bind(in_caller_tx)
        .fetch_all(&mut *conn)
        .await
        .map_err(|error| refusal(error, appends))?;
    let mut results = Vec::with_capacity(appends.len());
    for row in rows {
        results.push(AppendResult {
            revision: to_revision(row.try_get(0)?),
            position: to_position(row.try_get(1)?),
        });
    }
    if results.len() != appends.len() {
        return Err(Failure::Database(sqlx::Error::Protocol(format!(
            "an append of {} parts returned {} results",
            appends.len(),
            results.len()
        ))));
    }
    Ok(results)
}

/// An append of one event: one call of `cairn_append_event`, whose value is the pair
/// {last revision, last position}.
async fn write_event(
    conn: &mut PgConnection,
    append: &StreamAppend,
    event: &EventData,
    in_caller_tx: bool,
) -> Result<Vec<AppendResult>, sqlx::Error> {
    let metadata = event_metadata(event);
    let pair: Vec<i64> = event_query(APPEND_EVENT, append, event, &metadata)
        .bind(in_caller_tx)
        .fetch_one(&mut *conn)
        .await?;
    Ok(vec![event_result(&pair)?])
}

/// A single-event append in autocommit that does not wait for its stream: one call of
/// `cairn_try_append_event`. `None` when another transaction holds the stream (nothing was
/// written); an error as `cairn_append_event` raises it (nothing was written either,
/// unless the connection failed).
pub(crate) async fn try_write_event(
    conn: &mut PgConnection,
    append: &StreamAppend,
    event: &EventData,
) -> Result<Option<AppendResult>, sqlx::Error> {
    let metadata = event_metadata(event);
    let pair: Option<Vec<i64>> = event_query(TRY_APPEND_EVENT, append, event, &metadata)
        .fetch_one(&mut *conn)
        .await?;
    pair.map(|pair| event_result(&pair)).transpose()
}

/// `event`'s metadata as stored, without encoding the common empty case.
fn event_metadata(event: &EventData) -> std::borrow::Cow<'static, [u8]> {
    if event.metadata.is_empty() {
        std::borrow::Cow::Borrowed(EMPTY_METADATA)
    } else {
        std::borrow::Cow::Owned(encode_metadata(&event.metadata))
    }
}

/// `sql` (`cairn_append_event` or `cairn_try_append_event`) with the arguments both take
/// first: the stream, the expectation and the event.
fn event_query<'q, O>(
    sql: &'static str,
    append: &'q StreamAppend,
    event: &'q EventData,
    metadata: &'q [u8],
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let (kind, revision) = expectation(append.expected);
    sqlx::query_scalar(sql)
        .bind(append.stream.as_str())
        .bind(append.stream.category())
        .bind(kind)
        .bind(revision)
        .bind(event.id)
        .bind(event.event_type.as_str())
        .bind(event.content_type.as_str())
        .bind(metadata)
        .bind(event.payload.as_ref())
}

/// The result of `cairn_append_event`: the pair {last revision, last position}.
fn event_result(pair: &[i64]) -> Result<AppendResult, sqlx::Error> {
    match pair {
        [revision, position] => Ok(AppendResult {
            revision: to_revision(*revision),
            position: to_position(*position),
        }),
        _ => Err(sqlx::Error::Protocol(format!(
            "cairn_append_event returned {} values instead of 2",
            pair.len()
        ))),
    }
}

/// An append to one stream: one call of `cairn_append_stream`, one result row.
async fn write_stream(
    conn: &mut PgConnection,
    append: &StreamAppend,
    in_caller_tx: bool,
) -> Result<sqlx::postgres::PgRow, sqlx::Error> {
    let (kind, revision) = expectation(append.expected);
    let events = &append.events;
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let content_types: Vec<&str> = events.iter().map(|e| e.content_type.as_str()).collect();
    let metadata: Vec<Vec<u8>> = events
        .iter()
        .map(|e| encode_metadata(&e.metadata))
        .collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_ref()).collect();
    sqlx::query(APPEND_STREAM)
        .bind(append.stream.as_str())
        .bind(append.stream.category())
        .bind(kind)
        .bind(revision)
        .bind(&ids)
        .bind(&types)
        .bind(&content_types)
        .bind(&metadata)
        .bind(&payloads)
        .bind(in_caller_tx)
        .fetch_one(&mut *conn)
        .await
}

/// Turns the refusals `cairn_append`, `cairn_append_stream` and `cairn_append_event` raise
/// into the contract's errors.
fn refusal(error: sqlx::Error, appends: &[StreamAppend]) -> Failure {
    let Some(code) = sqlstate(&error) else {
        return Failure::Database(error);
    };
    let (part, detail) = match &error {
        sqlx::Error::Database(db) => {
            let part = db
                .message()
                .parse::<usize>()
                .ok()
                .and_then(|part| part.checked_sub(1))
                .and_then(|index| appends.get(index));
            let detail = db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| pg.detail())
                .map(str::to_owned);
            (part, detail)
        }
        _ => (None, None),
    };
    let Some(append) = part else {
        return Failure::Database(error);
    };
    let stream = append.stream.clone();
    Failure::Refused(match code.as_str() {
        "CA001" => {
            let actual = match detail.as_deref().map(str::parse::<i64>) {
                Some(Ok(revision)) => CurrentRevision::Revision(to_revision(revision)),
                _ => CurrentRevision::NoStream,
            };
            WriteError::WrongExpectedRevision {
                stream,
                expected: append.expected,
                actual,
            }
        }
        "CA002" => WriteError::StreamDeleted { stream },
        "CA003" => WriteError::Storage(StorageError::new(
            StorageErrorKind::Unavailable,
            format!(
                "the transaction started writing before the last append to stream {stream} \
                 committed, so its events cannot follow that append in $all; append in a new \
                 transaction (or one whose first write is the append)"
            ),
        )),
        "CA004" => WriteError::InvalidRequest {
            reason: format!(
                "one transaction can write at most {MAX_EVENTS_PER_TRANSACTION} events"
            ),
        },
        _ => return Failure::Database(error),
    })
}

/// What `cairn_append_batch` decided for one append of a combined batch.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Committed with the batch.
    Applied(AppendResult),
    /// Refused by its expectation or a tombstone. It may still be a retry of an append
    /// recorded earlier, which [`find_retry`] tells.
    Refused(WriteError),
    /// Not applied: some of its event ids are recorded already (a retry, or ids reused).
    Recorded,
    /// Not looked at: another transaction holds its stream's lock. It is to run on its
    /// own, where it waits for the lock.
    Busy,
}

/// Writes `appends` (each to one stream, validated, no event id in two of them) in one
/// call of `cairn_append_batch`, in autocommit: one transaction, whose outcomes say, per
/// append in order, whether it was applied.
///
/// # Errors
///
/// The database's error when the call failed; nothing of the batch committed then if the
/// error carries an SQLSTATE that is not about the connection or the server (see
/// `combine.rs`).
pub(crate) async fn write_batch(
    conn: &mut PgConnection,
    appends: &[&StreamAppend],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut slots: HashMap<&str, i32> = HashMap::with_capacity(appends.len());
    let mut names = Vec::with_capacity(appends.len());
    let mut categories = Vec::with_capacity(appends.len());
    let mut append_streams = Vec::with_capacity(appends.len());
    for append in appends {
        let name = append.stream.as_str();
        let slot = match slots.get(name) {
            Some(slot) => *slot,
            None => {
                names.push(name);
                categories.push(append.stream.category());
                let slot = i32::try_from(names.len()).unwrap_or(i32::MAX);
                slots.insert(name, slot);
                slot
            }
        };
        append_streams.push(slot);
    }
    let columns = Columns::of(appends.iter().copied());
    let rows = columns
        .bind(
            sqlx::query(APPEND_BATCH)
                .bind(&names)
                .bind(&categories)
                .bind(&append_streams),
        )
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() != appends.len() {
        return Err(sqlx::Error::Protocol(format!(
            "a batch of {} appends returned {} outcomes",
            appends.len(),
            rows.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(rows.len());
    for (row, append) in rows.iter().zip(appends) {
        let outcome: i16 = row.try_get(0)?;
        let stream = append.stream.clone();
        outcomes.push(match outcome {
            0 => Outcome::Applied(AppendResult {
                revision: to_revision(row.try_get(2)?),
                position: to_position(row.try_get(3)?),
            }),
            1 => {
                let actual: Option<i64> = row.try_get(1)?;
                Outcome::Refused(WriteError::WrongExpectedRevision {
                    stream,
                    expected: append.expected,
                    actual: actual.map_or(CurrentRevision::NoStream, |revision| {
                        CurrentRevision::Revision(to_revision(revision))
                    }),
                })
            }
            2 => Outcome::Refused(WriteError::StreamDeleted { stream }),
            3 => Outcome::Recorded,
            4 => Outcome::Busy,
            other => {
                return Err(sqlx::Error::Protocol(format!(
                    "a batch returned the unknown outcome {other}"
                )));
            }
        });
    }
    Ok(outcomes)
}

/// A stream's state as its writer sees it once it holds the stream.
#[derive(Clone, Copy)]
pub(crate) struct Locked {
    pub(crate) id: i64,
    pub(crate) last_revision: Option<i64>,
    pub(crate) lifecycle: i16,
}

/// Takes the write locks of the streams `names` (see `cairn_lock_streams` in the schema),
/// creating those that do not exist, and returns their state by name.
pub(crate) async fn lock_streams(
    conn: &mut PgConnection,
    names: &[&str],
) -> Result<HashMap<String, Locked>, sqlx::Error> {
    let mut streams = HashMap::with_capacity(names.len());
    let rows = sqlx::query(LOCK_STREAMS)
        .bind(names)
        .fetch_all(&mut *conn)
        .await?;
    let found = rows.len();
    collect_locked(rows, &mut streams)?;
    if found < names.len() {
        // Nobody else creates them meanwhile: every writer of a stream holds its lock.
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| !streams.contains_key(*name))
            .collect();
        let categories: Vec<&str> = missing.iter().map(|name| category_of(name)).collect();
        let rows = sqlx::query(CREATE_STREAMS)
            .bind(&missing)
            .bind(&categories)
            .fetch_all(&mut *conn)
            .await?;
        collect_locked(rows, &mut streams)?;
    }
    Ok(streams)
}

fn collect_locked(
    rows: Vec<sqlx::postgres::PgRow>,
    into: &mut HashMap<String, Locked>,
) -> Result<(), sqlx::Error> {
    for row in rows {
        let name: String = row.try_get(1)?;
        into.insert(
            name,
            Locked {
                id: row.try_get(0)?,
                last_revision: row.try_get(2)?,
                lifecycle: row.try_get(3)?,
            },
        );
    }
    Ok(())
}

/// Decides whether `appends` is a retry of an append already recorded: `Some(results)`
/// when every event is recorded exactly as this request would record it, `None` when none
/// is, [`WriteError::EventIdReused`] when some are or differ.
pub(crate) async fn find_retry(
    store: &PgStore,
    conn: &mut PgConnection,
    appends: &[StreamAppend],
) -> Result<Option<Vec<AppendResult>>, WriteError> {
    let ids: Vec<Uuid> = appends
        .iter()
        .flat_map(|a| a.events.iter().map(|e| e.id))
        .collect();
    let rows = sqlx::query(FIND_IDS)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(|error| store.storage("looking up event ids", error))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let decode = |error: sqlx::Error| store.storage("decoding a recorded event", error);
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get(0).map_err(decode)?;
        found.insert(id, row);
    }
    if found.len() < ids.len() {
        let first = ids
            .iter()
            .find(|id| found.contains_key(id))
            .copied()
            .unwrap_or_default();
        return Err(WriteError::EventIdReused { id: first });
    }
    let mut results = Vec::with_capacity(appends.len());
    for append in appends {
        let mut previous: Option<i64> = None;
        let mut last = None;
        for data in &append.events {
            let reused = WriteError::EventIdReused { id: data.id };
            let Some(row) = found.get(&data.id) else {
                return Err(reused);
            };
            let stream: String = row.try_get(1).map_err(decode)?;
            let revision: i64 = row.try_get(2).map_err(decode)?;
            let position: i64 = row.try_get(3).map_err(decode)?;
            let event_type: String = row.try_get(4).map_err(decode)?;
            let content_type: String = row.try_get(5).map_err(decode)?;
            let metadata: Vec<u8> = row.try_get(6).map_err(decode)?;
            let payload: Vec<u8> = row.try_get(7).map_err(decode)?;
            let same = stream == append.stream.as_str()
                && previous.is_none_or(|p| revision == p + 1)
                && event_type == data.event_type
                && content_type == data.content_type
                && payload == data.payload.as_ref()
                && decode_metadata(&metadata).is_ok_and(|m| m == data.metadata);
            if !same {
                return Err(reused);
            }
            previous = Some(revision);
            last = Some(AppendResult {
                revision: to_revision(revision),
                position: to_position(position),
            });
        }
        results.extend(last);
    }
    Ok(Some(results))
}

/// The conflict to report when the unique index on (stream, revision) refused an insert:
/// another writer put an event at a revision this append computed, so the stream is not
/// where the append found it. Reports the first part whose expectation fails against the
/// stream as it is now (or the first part, for expectations that held).
async fn revision_conflict(
    store: &PgStore,
    conn: &mut PgConnection,
    appends: &[StreamAppend],
) -> Result<WriteError, WriteError> {
    let mut first = None;
    for append in appends {
        let row = sqlx::query(STREAM_NOW)
            .bind(append.stream.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|error| store.storage("reading a stream after a conflict", error))?;
        let actual = match row {
            Some(row) => {
                let decode = |error| store.storage("decoding a stream", error);
                let lifecycle: i16 = row.try_get(0).map_err(decode)?;
                let last: Option<i64> = row.try_get(1).map_err(decode)?;
                let highest: Option<i64> = row.try_get(2).map_err(decode)?;
                match (lifecycle, last.max(highest)) {
                    (LIVE, Some(last)) => CurrentRevision::Revision(to_revision(last)),
                    _ => CurrentRevision::NoStream,
                }
            }
            None => CurrentRevision::NoStream,
        };
        let conflict = WriteError::WrongExpectedRevision {
            stream: append.stream.clone(),
            expected: append.expected,
            actual,
        };
        if !append.expected.is_satisfied_by(actual) {
            return Ok(conflict);
        }
        first.get_or_insert(conflict);
    }
    first.ok_or_else(|| WriteError::InvalidRequest {
        reason: "an append names no stream".to_owned(),
    })
}

pub(crate) fn to_revision(value: i64) -> Revision {
    Revision(u64::try_from(value).unwrap_or(0))
}

pub(crate) fn to_position(value: i64) -> Position {
    Position(u64::try_from(value).unwrap_or(0))
}

//! The outbox: messages to publish, written in the same transaction as the state change
//! that produced them, so a message is published if and only if its change committed.
//!
//! A relay [`claim`]s the oldest messages inside a transaction (locked with `SKIP LOCKED`,
//! so several relays share the work without waiting on each other), publishes them with
//! the message id as the broker's de-duplication key, and [`complete`]s them in the same
//! transaction. A relay that dies before committing leaves its messages to the next claim:
//! delivery is at least once.

use cairn_core::{Bytes, Metadata, Timestamp, Uuid};
use sqlx::{PgConnection, Row};

use crate::error::{TableError, constraint, storage};
use crate::read::{decode_metadata, encode_metadata};
use crate::validate_name;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The message id, unique in the outbox; the broker's de-duplication key.
    pub id: Uuid,
    /// Where to publish it (a subject, exchange or topic).
    pub topic: String,
    /// The partitioning or ordering key, if any.
    pub key: Option<String>,
    /// Headers, including the well-known keys of [`Metadata`].
    pub headers: Metadata,
    /// The payload bytes.
    pub payload: Bytes,
}

impl OutboxMessage {
    /// A message with a fresh UUID v7 id, no key and no headers.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: Uuid::now_v7(),
            topic: topic.into(),
            key: None,
            headers: Metadata::new(),
            payload: payload.into(),
        }
    }
}

/// A message in the outbox, as a relay claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its place in the outbox: older messages have smaller numbers.
    pub seq: i64,
    /// The message.
    pub message: OutboxMessage,
    /// When it was pushed, by the database's clock.
    pub created: Timestamp,
}

const PUSH: &str = "
    INSERT INTO cairn_outbox (id, topic, key, headers, payload, created_us)
    SELECT t.id, t.topic, t.key, t.headers, t.payload, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::bytea[])
         WITH ORDINALITY AS t(id, topic, key, headers, payload, n)
    ORDER BY t.n";

const CLAIM: &str = "
    SELECT seq, id, topic, key, headers, payload, created_us FROM cairn_outbox
    ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED";

const COMPLETE: &str = "DELETE FROM cairn_outbox WHERE seq = ANY($1)";

/// Adds `messages` to the outbox, in order, on `conn` (pass the caller's transaction, as
/// `&mut *tx`, to commit them with its other writes).
///
/// # Errors
///
/// [`TableError::Invalid`] for an empty topic; [`TableError::DuplicateMessage`] when a
/// message id is already in the outbox; [`TableError::Storage`] when the database failed.
pub async fn push(conn: &mut PgConnection, messages: &[OutboxMessage]) -> Result<(), TableError> {
    for message in messages {
        validate_name("outbox topic", &message.topic)?;
    }
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
    let keys: Vec<Option<&str>> = messages.iter().map(|m| m.key.as_deref()).collect();
    let headers: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| encode_metadata(&m.headers))
        .collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_ref()).collect();
    // Inside the caller's transaction a failed statement would abort it; a savepoint keeps
    // it usable when a duplicate is refused.
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(|e| storage("pushing to the outbox", e, Default::default()))?;
    let pushed = sqlx::query(PUSH)
        .bind(&ids)
        .bind(&topics)
        .bind(&keys)
        .bind(&headers)
        .bind(&payloads)
        .execute(&mut *tx)
        .await;
    match pushed {
        Ok(_) => tx
            .commit()
            .await
            .map_err(|e| storage("pushing to the outbox", e, Default::default()).into()),
        Err(error) if constraint(&error) == Some("cairn_outbox_id_key") => {
            tx.rollback()
                .await
                .map_err(|e| storage("pushing to the outbox", e, Default::default()))?;
            let taken: Vec<Uuid> =
                sqlx::query_scalar("SELECT id FROM cairn_outbox WHERE id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(|e| storage("pushing to the outbox", e, Default::default()))?;
            let id = ids
                .iter()
                .find(|id| taken.contains(id))
                .copied()
                .unwrap_or_default();
            Err(TableError::DuplicateMessage { id })
        }
        Err(error) => Err(storage("pushing to the outbox", error, Default::default()).into()),
    }
}

/// Claims up to `limit` of the oldest messages no other relay holds, locking them until
/// the transaction `conn` is in ends. Call it inside a transaction.
///
/// # Errors
///
/// [`TableError::Storage`] when the database failed or a stored message cannot be decoded.
pub async fn claim(conn: &mut PgConnection, limit: usize) -> Result<Vec<OutboxEntry>, TableError> {
    let failed = |e| TableError::from(storage("claiming outbox messages", e, Default::default()));
    let rows = sqlx::query(CLAIM)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(failed)?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let headers: Vec<u8> = row.try_get(4).map_err(failed)?;
        let payload: Vec<u8> = row.try_get(5).map_err(failed)?;
        let created: i64 = row.try_get(6).map_err(failed)?;
        entries.push(OutboxEntry {
            seq: row.try_get(0).map_err(failed)?,
            message: OutboxMessage {
                id: row.try_get(1).map_err(failed)?,
                topic: row.try_get(2).map_err(failed)?,
                key: row.try_get(3).map_err(failed)?,
                headers: decode_metadata(&headers).map_err(|error| TableError::Invalid {
                    what: "stored outbox headers",
                    reason: error.to_string(),
                })?,
                payload: payload.into(),
            },
            created: Timestamp(u64::try_from(created).unwrap_or(0)),
        });
    }
    Ok(entries)
}

/// Removes published messages from the outbox; returns how many were removed.
///
/// # Errors
///
/// [`TableError::Storage`] when the database failed.
pub async fn complete(conn: &mut PgConnection, seqs: &[i64]) -> Result<u64, TableError> {
    let done = sqlx::query(COMPLETE)
        .bind(seqs)
        .execute(&mut *conn)
        .await
        .map_err(|e| storage("completing outbox messages", e, Default::default()))?;
    Ok(done.rows_affected())
}

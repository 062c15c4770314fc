//! The inbox: the ids of messages a consumer has processed, recorded in the same
//! transaction as the message's effects, so that each message takes effect exactly once
//! however often it is delivered.
//!
//! In a handler: begin a transaction, [`record`] the message id; if it was already
//! recorded, skip the message; otherwise apply the effects and commit. Two deliveries of
//! one message racing in two transactions are serialized by the primary key: the second
//! waits for the first, then finds the id recorded (or records it, if the first rolled
//! back).

use cairn_core::Uuid;
use sqlx::PgConnection;

use crate::error::{TableError, storage};
use crate::validate_name;

const RECORD: &str = "
    INSERT INTO cairn_inbox (consumer, message_id, processed_us)
    VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
    ON CONFLICT DO NOTHING";

const CONTAINS: &str = "SELECT EXISTS (
    SELECT 1 FROM cairn_inbox WHERE consumer = $1 AND message_id = $2)";

/// Records that `consumer` processed `message_id`, on `conn` (pass the caller's
/// transaction, as `&mut *tx`). Returns `true` when this is the first time, `false` when
/// the id was already recorded (the message is a duplicate).
///
/// # Errors
///
/// [`TableError::Invalid`] for an empty, over-long or control-character consumer name;
/// [`TableError::Storage`] when the database failed.
pub async fn record(
    conn: &mut PgConnection,
    consumer: &str,
    message_id: Uuid,
) -> Result<bool, TableError> {
    validate_name("consumer name", consumer)?;
    let done = sqlx::query(RECORD)
        .bind(consumer)
        .bind(message_id)
        .execute(&mut *conn)
        .await
        .map_err(|e| storage("recording a processed message", e, Default::default()))?;
    Ok(done.rows_affected() == 1)
}

/// Whether `consumer` has recorded `message_id`.
///
/// # Errors
///
/// As [`record`].
pub async fn contains(
    conn: &mut PgConnection,
    consumer: &str,
    message_id: Uuid,
) -> Result<bool, TableError> {
    validate_name("consumer name", consumer)?;
    sqlx::query_scalar(CONTAINS)
        .bind(consumer)
        .bind(message_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| storage("reading the inbox", e, Default::default()).into())
}

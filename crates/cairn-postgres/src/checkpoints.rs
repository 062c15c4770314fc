//! Checkpoints: how far each subscriber (projection, saga, relay) has processed `$all`,
//! saved in the same transaction as the effects of the events up to there, so that after a
//! restart the subscriber resumes exactly after the last event whose effects committed.

use cairn_core::Position;
use sqlx::PgConnection;

use crate::error::{TableError, storage};
use crate::validate_name;

const SAVE: &str = "
    INSERT INTO cairn_checkpoints (subscriber, position, updated_us)
    VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
    ON CONFLICT (subscriber) DO UPDATE
    SET position = EXCLUDED.position, updated_us = EXCLUDED.updated_us";

const LOAD: &str = "SELECT position FROM cairn_checkpoints WHERE subscriber = $1";

/// Saves `subscriber`'s position (the last event it processed), on `conn` (pass the
/// caller's transaction, as `&mut *tx`).
///
/// # Errors
///
/// [`TableError::Invalid`] for an empty, over-long or control-character subscriber name
/// or a position beyond `i64::MAX`; [`TableError::Storage`] when the database failed.
pub async fn save(
    conn: &mut PgConnection,
    subscriber: &str,
    position: Position,
) -> Result<(), TableError> {
    validate_name("subscriber name", subscriber)?;
    let Ok(stored) = i64::try_from(position.0) else {
        return Err(TableError::Invalid {
            what: "checkpoint position",
            reason: format!("{position} is beyond the largest storable position"),
        });
    };
    sqlx::query(SAVE)
        .bind(subscriber)
        .bind(stored)
        .execute(&mut *conn)
        .await
        .map_err(|e| storage("saving a checkpoint", e, Default::default()))?;
    Ok(())
}

/// The position `subscriber` saved last, `None` when it never saved one.
///
/// # Errors
///
/// As [`save`].
pub async fn load(
    conn: &mut PgConnection,
    subscriber: &str,
) -> Result<Option<Position>, TableError> {
    validate_name("subscriber name", subscriber)?;
    let found: Option<i64> = sqlx::query_scalar(LOAD)
        .bind(subscriber)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| storage("loading a checkpoint", e, Default::default()))?;
    Ok(found.map(|p| Position(u64::try_from(p).unwrap_or(0))))
}

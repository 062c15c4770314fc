//! Stream lifecycle writes: retention metadata, soft delete and tombstone. Each takes the
//! stream's write lock, as appends do (creating its row when the contract allows acting on
//! a stream never written), checks, and updates the row in one transaction.

use crate::append::{LIVE, SOFT_DELETED, TOMBSTONED, lock_streams, to_revision};
use crate::read::clamp;
use crate::store::PgStore;
use cairn_core::{CurrentRevision, ExpectedRevision, StreamMetadata, StreamName, WriteError};

const SET_METADATA: &str = "
    UPDATE cairn_streams
    SET max_count = $2, max_age_us = $3, truncate_before = $4, metadata = $5
    WHERE id = $1";

const SOFT_DELETE: &str = "
    UPDATE cairn_streams SET lifecycle = 1, deleted_before = $2 + 1 WHERE id = $1";

const TOMBSTONE: &str = "UPDATE cairn_streams SET lifecycle = 2 WHERE id = $1";

/// Replaces the stream's retention metadata.
pub(crate) async fn set_metadata(
    store: &PgStore,
    stream: &StreamName,
    metadata: StreamMetadata,
) -> Result<(), WriteError> {
    let failed = |error| WriteError::from(store.storage("setting stream metadata", error));
    let mut tx = store.inner.pool.begin().await.map_err(failed)?;
    let (id, _, lifecycle) = lock(&mut tx, stream).await.map_err(failed)?;
    if lifecycle == TOMBSTONED {
        return Err(WriteError::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let exact = if metadata == StreamMetadata::default() {
        None
    } else {
        // Durations, options and integers always serialize.
        serde_json::to_string(&metadata).ok()
    };
    let max_age = metadata
        .max_age
        .map(|age| i64::try_from(age.as_micros()).unwrap_or(i64::MAX));
    sqlx::query(SET_METADATA)
        .bind(id)
        .bind(metadata.max_count.map(clamp))
        .bind(max_age)
        .bind(metadata.truncate_before.map(|r| clamp(r.0)))
        .bind(exact)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(())
}

/// Soft-deletes (`tombstone == false`) or tombstones the stream, if its revision is
/// `expected`.
pub(crate) async fn delete(
    store: &PgStore,
    stream: &StreamName,
    expected: ExpectedRevision,
    tombstone: bool,
) -> Result<(), WriteError> {
    let failed = |error| WriteError::from(store.storage("deleting a stream", error));
    let mut tx = store.inner.pool.begin().await.map_err(failed)?;
    let (id, last, lifecycle) = lock(&mut tx, stream).await.map_err(failed)?;
    if lifecycle == TOMBSTONED {
        return Err(WriteError::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let actual = match (lifecycle, last) {
        (LIVE, Some(last)) => CurrentRevision::Revision(to_revision(last)),
        _ => CurrentRevision::NoStream,
    };
    if !expected.is_satisfied_by(actual) {
        return Err(WriteError::WrongExpectedRevision {
            stream: stream.clone(),
            expected,
            actual,
        });
    }
    if tombstone {
        sqlx::query(TOMBSTONE)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
    } else if actual != CurrentRevision::NoStream && lifecycle != SOFT_DELETED {
        sqlx::query(SOFT_DELETE)
            .bind(id)
            .bind(last)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
    } else {
        // Deleting an absent stream is a no-op; the row the lock may have created for it
        // goes with the rollback.
        tx.rollback().await.map_err(failed)?;
        return Ok(());
    }
    tx.commit().await.map_err(failed)?;
    Ok(())
}

/// Takes the stream's write lock, creating its row if needed: (id, last revision,
/// lifecycle).
async fn lock(
    conn: &mut sqlx::PgConnection,
    stream: &StreamName,
) -> Result<(i64, Option<i64>, i16), sqlx::Error> {
    let locked = lock_streams(conn, &[stream.as_str()]).await?;
    let Some(state) = locked.get(stream.as_str()) else {
        return Err(sqlx::Error::Protocol(format!(
            "locking stream {stream} returned no row"
        )));
    };
    Ok((state.id, state.last_revision, state.lifecycle))
}

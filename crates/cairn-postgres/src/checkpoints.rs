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

/// [`Checkpoints`](cairn_core::Checkpoints) in the `cairn_checkpoints` table, each save in
/// a transaction of its own. A subscriber that writes its effects to the same database
/// saves its checkpoint with [`save`] in the transaction of those effects instead.
#[derive(Debug, Clone)]
pub struct PgCheckpoints {
    pool: sqlx::PgPool,
}

impl PgCheckpoints {
    /// Checkpoints on the database of `pool` (whose schema [`crate::PgStore`] created).
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self { pool }
    }
}

fn checkpoint_error(error: TableError) -> cairn_core::CheckpointError {
    match error {
        TableError::Invalid { reason, .. } => cairn_core::CheckpointError::Storage(
            cairn_core::StorageError::new(cairn_core::StorageErrorKind::Other, reason),
        ),
        TableError::Storage(error) => cairn_core::CheckpointError::Storage(error),
        other => cairn_core::CheckpointError::Storage(cairn_core::StorageError::new(
            cairn_core::StorageErrorKind::Other,
            other.to_string(),
        )),
    }
}

#[async_trait::async_trait]
impl cairn_core::Checkpoints for PgCheckpoints {
    async fn load(
        &self,
        subscriber: &str,
    ) -> Result<Option<Position>, cairn_core::CheckpointError> {
        cairn_core::validate_subscriber_name(subscriber)?;
        let mut conn = self.pool.acquire().await.map_err(|e| {
            cairn_core::CheckpointError::Storage(storage(
                "connecting to load a checkpoint",
                e,
                Default::default(),
            ))
        })?;
        load(&mut conn, subscriber).await.map_err(checkpoint_error)
    }

    async fn save(
        &self,
        subscriber: &str,
        position: Position,
    ) -> Result<(), cairn_core::CheckpointError> {
        cairn_core::validate_subscriber_name(subscriber)?;
        let mut conn = self.pool.acquire().await.map_err(|e| {
            cairn_core::CheckpointError::Storage(storage(
                "connecting to save a checkpoint",
                e,
                Default::default(),
            ))
        })?;
        save(&mut conn, subscriber, position)
            .await
            .map_err(checkpoint_error)
    }
}

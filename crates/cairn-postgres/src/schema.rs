//! Embedded, versioned schema migrations.
//!
//! Each migration is an SQL file under `migrations/`, compiled into the binary with its
//! version. [`migrate`] brings a database to [`SCHEMA_VERSION`]: it records every applied
//! version in `cairn_schema_migrations`, applies only the missing ones (so running it twice
//! changes nothing), serializes concurrent migrators with an advisory lock, and refuses a
//! database that a newer build already migrated ([`SchemaError::NewerThanSupported`]).

use sqlx::{Executor, PgConnection};

use crate::error::SchemaError;

/// One migration: a version and the SQL that reaches it from the previous one.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "streams and events",
        sql: include_str!("../migrations/0001_streams_and_events.sql"),
    },
    Migration {
        version: 2,
        name: "outbox, inbox and checkpoints",
        sql: include_str!("../migrations/0002_outbox_inbox_checkpoints.sql"),
    },
    Migration {
        version: 3,
        name: "$all pages",
        sql: include_str!("../migrations/0003_read_all.sql"),
    },
    Migration {
        version: 4,
        name: "one-stream appends",
        sql: include_str!("../migrations/0004_append_stream.sql"),
    },
    Migration {
        version: 5,
        name: "single-event appends",
        sql: include_str!("../migrations/0005_append_event.sql"),
    },
    Migration {
        version: 6,
        name: "combined appends",
        sql: include_str!("../migrations/0006_append_batch.sql"),
    },
    Migration {
        version: 7,
        name: "index plans for the write functions",
        sql: include_str!("../migrations/0007_append_plans.sql"),
    },
    Migration {
        version: 8,
        name: "a release horizon of this database",
        sql: include_str!("../migrations/0008_database_horizon.sql"),
    },
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i32 = 8;

/// The advisory lock key that serializes migrators of one database ("cairnmig").
const MIGRATION_LOCK: i64 = 0x6361_6972_6e6d_6967;

/// Brings the database behind `conn` to [`SCHEMA_VERSION`], returning the version it was
/// at before (0 for an empty database).
///
/// # Errors
///
/// [`SchemaError::NewerThanSupported`] when the database is at a newer version than this
/// build knows (nothing is changed); [`SchemaError::Migration`] when a statement failed
/// (the failed migration is rolled back entirely).
pub async fn migrate(conn: &mut PgConnection) -> Result<i32, SchemaError> {
    let failed = |version| move |source| SchemaError::Migration { version, source };
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(failed(0))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(failed(0))?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS cairn_schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(failed(0))?;
    let found: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM cairn_schema_migrations")
        .fetch_one(&mut *tx)
        .await
        .map_err(failed(0))?;
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(SchemaError::NewerThanSupported {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > found) {
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(failed(migration.version))?;
        sqlx::query("INSERT INTO cairn_schema_migrations (version, name) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(migration.name)
            .execute(&mut *tx)
            .await
            .map_err(failed(migration.version))?;
    }
    tx.commit().await.map_err(failed(SCHEMA_VERSION))?;
    Ok(found)
}

/// The schema version recorded in the database, 0 when it has none.
///
/// # Errors
///
/// [`SchemaError::Migration`] (version 0) when the query failed.
pub async fn schema_version(conn: &mut PgConnection) -> Result<i32, SchemaError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('cairn_schema_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .map_err(|source| SchemaError::Migration { version: 0, source })?;
    if !exists {
        return Ok(0);
    }
    let found: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM cairn_schema_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(|source| SchemaError::Migration { version: 0, source })?;
    Ok(found.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps_up_to_the_schema_version() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i32 + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty());
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}

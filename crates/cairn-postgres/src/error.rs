//! Errors of this crate's own operations ([`ConnectError`], [`SchemaError`],
//! [`TableError`]) and the mapping of database failures onto the contract's
//! [`StorageError`].
//!
//! The [`EventStore`](cairn_core::EventStore) methods return the contract's errors; a
//! failure of PostgreSQL itself becomes a [`StorageError`] whose kind says whether retrying
//! can help ([`StorageErrorKind::Unavailable`] for a lost connection, an exhausted pool or a
//! serialization failure).

use std::time::Duration;

use cairn_core::{StorageError, StorageErrorKind};
use thiserror::Error;

/// Why a store could not be opened.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection string could not be parsed.
    #[error("invalid PostgreSQL connection string {url}: {source}")]
    InvalidUrl {
        /// The connection string, password removed.
        url: String,
        /// The parser's complaint.
        #[source]
        source: sqlx::Error,
    },
    /// The database could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Unreachable {
        /// The connection string, password removed.
        url: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The schema could not be brought to this version.
    #[error("PostgreSQL schema at {url}: {source}")]
    Schema {
        /// The connection string, password removed.
        url: String,
        /// What went wrong.
        #[source]
        source: SchemaError,
    },
}

impl ConnectError {
    /// A stable, machine-readable code, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } => "postgres_invalid_url",
            Self::Unreachable { .. } => "postgres_unreachable",
            Self::Schema { source, .. } => source.code(),
        }
    }
}

/// Why the schema migrations could not be applied.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The database holds a newer schema than this binary knows: a newer version of Cairn
    /// migrated it. Running an older binary against it could corrupt it, so it is refused.
    #[error(
        "the database is at schema version {found}, newer than version {supported}, the \
         newest this build of cairn-postgres knows; upgrade cairn-postgres"
    )]
    NewerThanSupported {
        /// The version recorded in the database.
        found: i32,
        /// The newest version this build knows.
        supported: i32,
    },
    /// A migration or the version table failed.
    #[error("migration to schema version {version} failed: {source}")]
    Migration {
        /// The version being applied (0 while reading the version table).
        version: i32,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
}

impl SchemaError {
    /// A stable, machine-readable code, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NewerThanSupported { .. } => "postgres_schema_too_new",
            Self::Migration { .. } => "postgres_migration_failed",
        }
    }
}

/// Why an operation on the outbox, inbox or checkpoint tables failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TableError {
    /// A name or value given was refused before anything was written.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was refused (for example "consumer name").
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// An outbox message with this id was already pushed.
    #[error("outbox message {id} was already pushed")]
    DuplicateMessage {
        /// The message id.
        id: uuid::Uuid,
    },
    /// The database failed.
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
}

impl TableError {
    /// A stable, machine-readable code, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_request",
            Self::DuplicateMessage { .. } => "outbox_duplicate_message",
            Self::Storage(error) => error.code(),
        }
    }
}

/// The SQLSTATE of a database error, if `error` is one.
pub(crate) fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// The constraint a database error names, if any.
pub(crate) fn constraint(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// Maps a database failure during `doing` onto the contract's storage error.
pub(crate) fn storage(doing: &str, error: sqlx::Error, acquire_timeout: Duration) -> StorageError {
    let kind = match &error {
        sqlx::Error::PoolTimedOut => {
            return StorageError::new(
                StorageErrorKind::Unavailable,
                format!(
                    "{doing}: no PostgreSQL connection became free within {acquire_timeout:?} \
                     (the pool is exhausted; raise max_connections or acquire_timeout)"
                ),
            )
            .with_source(error);
        }
        sqlx::Error::PoolClosed => StorageErrorKind::Stopped,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => {
            StorageErrorKind::Unavailable
        }
        sqlx::Error::Protocol(_) => StorageErrorKind::Io,
        sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => StorageErrorKind::Corruption,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // Connection exceptions, admin shutdown / crash / cannot connect now,
            // insufficient resources, serialization failures and deadlocks: a retry may work.
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("57P")
                    || code.starts_with("53")
                    || code == "40001"
                    || code == "40P01" =>
            {
                StorageErrorKind::Unavailable
            }
            _ => StorageErrorKind::Other,
        },
        _ => StorageErrorKind::Other,
    };
    StorageError::new(kind, format!("{doing}: {error}")).with_source(error)
}

/// The connection string with its password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    // user:password@host in the authority.
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = out[authority_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| authority_start + i);
        if let Some(at) = out[authority_start..authority_end].rfind('@') {
            let userinfo = &out[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = authority_start + colon + 1;
                out.replace_range(start..authority_start + at, "***");
            }
        }
    }
    // password=... in the query string.
    if let Some(query_start) = out.find('?') {
        let (head, query) = out.split_at(query_start + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn passwords_are_removed_from_urls() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5432/events"),
            "postgres://app:***@db.example:5432/events"
        );
        assert_eq!(
            redact_url("postgres://app@db/events?sslmode=require&password=s3cret"),
            "postgres://app@db/events?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://127.0.0.1/test"),
            "postgres://127.0.0.1/test"
        );
        assert_eq!(
            redact_url("postgres://a:b@c@host/db"),
            "postgres://a:***@host/db"
        );
    }

    #[test]
    fn an_exhausted_pool_is_reported_as_unavailable_with_advice() {
        let error = storage(
            "appending",
            sqlx::Error::PoolTimedOut,
            Duration::from_secs(2),
        );
        assert_eq!(error.kind(), StorageErrorKind::Unavailable);
        assert!(error.message().contains("pool is exhausted"), "{error}");
        assert!(error.message().contains("2s"), "{error}");
    }
}

//! [`PgInbox`]: the inbox in PostgreSQL, over `cairn_postgres::inbox`.

use async_trait::async_trait;
use cairn_postgres::TableError;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Inbox, InboxError};

/// An [`Inbox`] in Cairn's PostgreSQL table `cairn_inbox`, shared by every process of a
/// consumer group and kept across restarts, without a window.
///
/// The pool's database must carry Cairn's schema: opening a
/// [`PgStore`](cairn_postgres::PgStore) on it applies it, or call
/// [`cairn_postgres::schema::migrate`]. Each call takes a connection from the pool for
/// one statement.
///
/// A handler that needs its effects exactly once across crashes records the id itself,
/// in the transaction of its effects, with [`cairn_postgres::inbox::record`]; this type
/// records after the effects (see the [module docs](super)).
#[derive(Debug, Clone)]
pub struct PgInbox {
    pool: PgPool,
}

impl PgInbox {
    /// An inbox on `pool`'s database.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn inbox_error(error: TableError) -> InboxError {
    match error {
        TableError::Invalid { reason, .. } => InboxError::InvalidConsumer { reason },
        other => InboxError::Unavailable(Box::new(other)),
    }
}

#[async_trait]
impl Inbox for PgInbox {
    async fn contains(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| InboxError::Unavailable(Box::new(e)))?;
        cairn_postgres::inbox::contains(&mut conn, consumer, id)
            .await
            .map_err(inbox_error)
    }

    async fn record(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| InboxError::Unavailable(Box::new(e)))?;
        cairn_postgres::inbox::record(&mut conn, consumer, id)
            .await
            .map_err(inbox_error)
    }
}

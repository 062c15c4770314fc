//! The store the workloads measure: the embedded log (the default) or, with
//! `--store postgres`, `cairn-postgres` on a database created for the run and dropped at
//! the end.
//!
//! On PostgreSQL every workload opens its own [`PgStore`](cairn_postgres::PgStore) with a
//! pool of one connection per writer (plus a few) and closes it afterwards, so that its
//! connections are gone before a peer opens its own: the server's connection limit is
//! shared.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use cairn::log::LogStore;

use super::store;
use super::{AppendSpec, Measured};

/// Which store `--store` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StoreKind {
    /// The embedded log store, in the bench directory.
    Log,
    /// `cairn-postgres`, on a fresh database of the `--postgres-addr` server.
    Postgres,
}

/// The store under measurement.
pub(crate) enum Subject {
    /// The embedded store.
    Log(LogStore),
    /// `cairn-postgres` on a database of its own.
    #[cfg(feature = "postgres")]
    Postgres(postgres::Database),
}

impl Subject {
    /// The subject for `kind`; `log` is the bench's own log store.
    ///
    /// # Errors
    ///
    /// PostgreSQL is unreachable or refused to create the run's database; without the
    /// `postgres` feature, `--store postgres` is a usage error.
    pub(crate) async fn open(
        kind: StoreKind,
        log: &LogStore,
        postgres_addr: &str,
    ) -> anyhow::Result<Self> {
        match kind {
            StoreKind::Log => Ok(Self::Log(log.clone())),
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => Ok(Self::Postgres(
                postgres::Database::create(postgres_addr).await?,
            )),
            #[cfg(not(feature = "postgres"))]
            StoreKind::Postgres => {
                let _ = postgres_addr;
                Err(crate::cli::UsageError(
                    "this cairn was built without the `postgres` feature, so it cannot bench \
                     --store postgres: build it with `cargo build --release --features \
                     postgres,peers`"
                        .to_owned(),
                )
                .into())
            }
        }
    }

    /// What the subject is, for the report's notes (`None` for the default).
    pub(crate) fn describe(&self) -> Option<String> {
        match self {
            Self::Log(_) => None,
            #[cfg(feature = "postgres")]
            Self::Postgres(db) => Some(db.describe()),
        }
    }

    /// Whether this is the PostgreSQL store.
    pub(crate) fn is_postgres(&self) -> bool {
        !matches!(self, Self::Log(_))
    }

    pub(crate) async fn append(
        &self,
        workload: &str,
        spec: &AppendSpec,
        counter: &Arc<AtomicU64>,
    ) -> anyhow::Result<Measured> {
        match self {
            Self::Log(log) => store::append(log, workload, spec, counter).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(db) => {
                let pg = db.store(spec.writers).await?;
                let measured = store::append(&pg, workload, spec, counter).await;
                pg.close().await;
                measured
            }
        }
    }

    pub(crate) async fn latency(
        &self,
        rate: u32,
        duration: Duration,
        size: usize,
        counter: &Arc<AtomicU64>,
    ) -> anyhow::Result<store::LatencyMeasured> {
        match self {
            Self::Log(log) => store::latency(log, rate, duration, size, counter).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(db) => {
                // Appends are started on schedule without waiting: room for a backlog.
                let pg = db.store(32).await?;
                let measured = store::latency(&pg, rate, duration, size, counter).await;
                pg.close().await;
                measured
            }
        }
    }

    pub(crate) async fn read_all(
        &self,
        counter: &Arc<AtomicU64>,
    ) -> anyhow::Result<(Measured, u64)> {
        match self {
            Self::Log(log) => store::read_all(log, counter).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(db) => {
                let pg = db.store(1).await?;
                let measured = store::read_all(&pg, counter).await;
                pg.close().await;
                measured
            }
        }
    }

    pub(crate) async fn fill(
        &self,
        count: u64,
        size: usize,
        counter: &Arc<AtomicU64>,
    ) -> anyhow::Result<()> {
        match self {
            Self::Log(log) => store::fill(log, count, size, counter).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(db) => {
                let pg = db.store(16).await?;
                let filled = store::fill(&pg, count, size, counter).await;
                pg.close().await;
                filled
            }
        }
    }

    /// Drops what the subject created (the PostgreSQL database).
    ///
    /// # Errors
    ///
    /// The database could not be dropped (the error names it).
    pub(crate) async fn cleanup(self) -> anyhow::Result<()> {
        match self {
            Self::Log(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Self::Postgres(db) => db.drop_database().await,
        }
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    //! The run's database for `--store postgres`.

    use std::time::Duration;

    use anyhow::Context as _;
    use cairn_postgres::{PgOptions, PgStore};
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use sqlx::{AssertSqlSafe, Connection as _};

    use super::super::peers::split_addr;

    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A database created for the run, dropped by [`drop_database`](Self::drop_database).
    pub(crate) struct Database {
        admin: PgConnection,
        url: String,
        name: String,
        version: String,
    }

    impl Database {
        /// Creates `cairn_bench_store_<pid>` on the server at `addr` (`host:port`), as
        /// `$PGUSER` (default `postgres`, password from `$PGPASSWORD`).
        pub(crate) async fn create(addr: &str) -> anyhow::Result<Self> {
            let (host, port) = split_addr(addr, 5432)?;
            let user = std::env::var("PGUSER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "postgres".to_owned());
            let password = std::env::var("PGPASSWORD").ok();
            let mut options = PgConnectOptions::new()
                .host(&host)
                .port(port)
                .username(&user)
                .database("postgres")
                .application_name("cairn-bench");
            if let Some(password) = &password {
                options = options.password(password);
            }
            let endpoint = format!("postgres://{user}@{host}:{port}");
            let unreachable = || format!("cannot reach PostgreSQL at {endpoint}/postgres");
            let mut admin =
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
                    .with_context(unreachable)?
                    .with_context(unreachable)?;
            let version: String = sqlx::query_scalar("SHOW server_version")
                .fetch_one(&mut admin)
                .await
                .context("PostgreSQL did not say its version")?;
            let name = format!("cairn_bench_store_{}", std::process::id());
            // Only an earlier run that died with the same process id leaves this name.
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot drop the leftover database {name}"))?;
            sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .with_context(|| format!("cannot create the database {name} on {endpoint}"))?;
            let url = match &password {
                Some(password) => format!("postgres://{user}:{password}@{host}:{port}/{name}"),
                None => format!("{endpoint}/{name}"),
            };
            Ok(Self {
                admin,
                url,
                name,
                version,
            })
        }

        /// A store on the run's database with a pool for `writers` writers.
        pub(crate) async fn store(&self, writers: usize) -> anyhow::Result<PgStore> {
            let connections = u32::try_from(writers + 4).unwrap_or(u32::MAX);
            PgStore::connect_with(&self.url, PgOptions::default().max_connections(connections))
                .await
                .with_context(|| format!("cannot open the PostgreSQL store on {}", self.name))
        }

        pub(crate) fn describe(&self) -> String {
            format!(
                "store: cairn-postgres on {} (PostgreSQL {}), synchronous_commit as the \
                 server sets it, a pool of one connection per writer, concurrent appends \
                 combined (one combined transaction at a time)",
                cairn_postgres::redact_url(&self.url),
                self.version
            )
        }

        pub(crate) async fn drop_database(mut self) -> anyhow::Result<()> {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut self.admin)
            .await
            .with_context(|| format!("cannot drop the database {}; drop it by hand", self.name))?;
            self.admin.close().await?;
            Ok(())
        }
    }
}

//! PostgreSQL as a peer: the write workloads as plain `INSERT`s into an `events` table in a
//! fresh database `cairn_bench_<pid>`, dropped at the end.
//!
//! One event per transaction (autocommit) with `synchronous_commit=on`, so an acknowledged
//! insert is flushed like Cairn's `always`; a batch is one multi-row `INSERT`, one
//! transaction. Each writer has its own connection, as many connections as writers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection as _, SqlSafeStr as _, SqlStr};
use tokio::task::JoinSet;

use super::super::report::PeerInfo;
use super::super::stats::Samples;
use super::super::store::payload;
use super::super::{AppendSpec, Measured};

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL server with a database created for this run.
pub(crate) struct Postgres {
    /// The connection that created the database, kept to drop it.
    admin: PgConnection,
    /// How the writers connect: to the run's database, with `synchronous_commit=on`.
    options: PgConnectOptions,
    database: String,
    endpoint: String,
    version: String,
}

impl Postgres {
    /// Connects to `addr` (`host:port`) as `$PGUSER` (default `postgres`), creates the
    /// run's database and its `events` table.
    pub(crate) async fn connect(addr: &str) -> anyhow::Result<Self> {
        let (host, port) = split_addr(addr, 5432)?;
        let user = std::env::var("PGUSER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "postgres".to_owned());
        let endpoint = format!("postgres://{user}@{host}:{port}");
        let mut admin_options = PgConnectOptions::new()
            .host(&host)
            .port(port)
            .username(&user)
            .database("postgres")
            .application_name("cairn-bench");
        if let Ok(password) = std::env::var("PGPASSWORD") {
            admin_options = admin_options.password(&password);
        }
        let unreachable = || format!("cannot reach PostgreSQL at {endpoint}/postgres");
        let mut admin =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&admin_options))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
                .with_context(unreachable)?
                .with_context(unreachable)?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut admin)
            .await
            .context("PostgreSQL did not say its version")?;
        let database = format!("cairn_bench_{}", std::process::id());
        // A database of this name can only be left over from an earlier run that died
        // with the same process id.
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cannot drop the leftover database {database}"))?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create the database {database} on {endpoint}"))?;
        let options = admin_options
            .database(&database)
            .options([("synchronous_commit", "on")]);
        let peer = Self {
            admin,
            options,
            database,
            endpoint,
            version,
        };
        if let Err(error) = peer.create_table().await {
            let _ = peer.cleanup().await;
            return Err(error);
        }
        Ok(peer)
    }

    async fn create_table(&self) -> anyhow::Result<()> {
        let mut connection = PgConnection::connect_with(&self.options)
            .await
            .with_context(|| format!("cannot connect to {}/{}", self.endpoint, self.database))?;
        sqlx::raw_sql(
            "CREATE TABLE events (
                id bigserial PRIMARY KEY,
                stream text NOT NULL,
                type text NOT NULL,
                data bytea NOT NULL,
                created timestamptz NOT NULL DEFAULT now()
            )",
        )
        .execute(&mut connection)
        .await
        .context("cannot create the events table")?;
        connection.close().await?;
        Ok(())
    }

    /// What this peer is, for the report.
    pub(crate) fn info(&self) -> PeerInfo {
        PeerInfo {
            name: "postgres".to_owned(),
            version: self.version.clone(),
            endpoint: format!("{}/{}", self.endpoint, self.database),
            setup: "table events(id bigserial primary key, stream text, type text, data bytea, \
                    created timestamptz default now()); synchronous_commit=on; one connection \
                    per writer; one event per transaction, a batch as one multi-row INSERT"
                .to_owned(),
        }
    }

    /// Runs a write workload: each writer inserts `spec.batch` rows per statement on its
    /// own connection, awaiting each commit.
    pub(crate) async fn append(
        &self,
        spec: &AppendSpec,
        counter: &Arc<AtomicU64>,
    ) -> anyhow::Result<Measured> {
        let mut connecting = JoinSet::new();
        for _ in 0..spec.writers {
            let options = self.options.clone();
            connecting.spawn(async move { PgConnection::connect_with(&options).await });
        }
        let mut connections = Vec::with_capacity(spec.writers);
        while let Some(connected) = connecting.join_next().await {
            connections.push(connected?.with_context(|| {
                format!(
                    "cannot open {} connections to {}/{}",
                    spec.writers, self.endpoint, self.database
                )
            })?);
        }
        let sql = insert_statement(spec.batch);
        let payload = payload(spec.size);
        let appends = spec.appends_per_writer();
        let batch = spec.batch;
        let started = Instant::now();
        let deadline = started + spec.duration;
        let mut writers = JoinSet::new();
        for (writer, mut connection) in connections.into_iter().enumerate() {
            let sql = sql.clone();
            let payload = payload.clone();
            let counter = Arc::clone(counter);
            writers.spawn(async move {
                let stream = format!("bench-{writer}");
                let samples = insert_loop(
                    &mut connection,
                    &sql,
                    &stream,
                    &payload,
                    batch,
                    appends,
                    deadline,
                    &counter,
                )
                .await;
                let _ = connection.close().await;
                samples
            });
        }
        let mut samples = Samples::default();
        while let Some(joined) = writers.join_next().await {
            samples.merge(joined.context("a PostgreSQL writer task failed")??);
        }
        Ok(Measured {
            events: samples.len() as u64 * batch as u64,
            seconds: started.elapsed().as_secs_f64(),
            latency: samples.summary(),
        })
    }

    /// Drops the run's database and disconnects.
    pub(crate) async fn cleanup(mut self) -> anyhow::Result<()> {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        )))
        .execute(&mut self.admin)
        .await
        .with_context(|| {
            format!(
                "cannot drop the database {} on {}; drop it by hand",
                self.database, self.endpoint
            )
        })?;
        self.admin.close().await?;
        Ok(())
    }
}

/// `INSERT INTO events (stream, type, data) VALUES ($1, $2, $3), …` for `rows` rows.
fn insert_statement(rows: usize) -> SqlStr {
    let values: Vec<String> = (0..rows)
        .map(|row| format!("(${}, ${}, ${})", 3 * row + 1, 3 * row + 2, 3 * row + 3))
        .collect();
    AssertSqlSafe(format!(
        "INSERT INTO events (stream, type, data) VALUES {}",
        values.join(", ")
    ))
    .into_sql_str()
}

#[allow(clippy::too_many_arguments)]
async fn insert_loop(
    connection: &mut PgConnection,
    sql: &SqlStr,
    stream: &str,
    payload: &Bytes,
    batch: usize,
    appends: u64,
    deadline: Instant,
    counter: &AtomicU64,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::with_capacity(usize::try_from(appends.min(1 << 20)).unwrap_or(0));
    for _ in 0..appends {
        if Instant::now() >= deadline {
            break;
        }
        let mut query = sqlx::query(sql.clone());
        for _ in 0..batch {
            query = query.bind(stream).bind("BenchEvent").bind(payload.as_ref());
        }
        let started = Instant::now();
        query
            .execute(&mut *connection)
            .await
            .context("an INSERT failed")?;
        samples.record(started.elapsed());
        counter.fetch_add(batch as u64, Ordering::Relaxed);
    }
    Ok(samples)
}

/// Splits `host:port`, with `default_port` when no port is given.
pub(crate) fn split_addr(addr: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            let port = port
                .parse()
                .with_context(|| format!("invalid port in {addr:?}"))?;
            Ok((host.to_owned(), port))
        }
        _ if !addr.is_empty() => Ok((addr.to_owned(), default_port)),
        _ => anyhow::bail!("empty address"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_inserts_number_their_parameters() {
        assert_eq!(
            insert_statement(2).as_str(),
            "INSERT INTO events (stream, type, data) VALUES ($1, $2, $3), ($4, $5, $6)"
        );
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_addr("127.0.0.1:6543", 5432).unwrap(),
            ("127.0.0.1".to_owned(), 6543)
        );
        assert_eq!(split_addr("db", 5432).unwrap(), ("db".to_owned(), 5432));
        assert!(split_addr("db:x", 5432).is_err());
    }
}

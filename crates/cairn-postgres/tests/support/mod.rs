//! Test databases on the PostgreSQL server of this machine: every test creates its own,
//! with a unique name, and drops it when the guard goes (also when the test fails).
//!
//! The server is `postgres://root@127.0.0.1:5432` unless `CAIRN_TEST_POSTGRES` names
//! another (a URL without a database). Databases left behind by test processes that died
//! are dropped by the next test that creates one, once they are old enough that no run
//! can still be using them: a database's name holds the creating process's id and the
//! time it was made, and a process id that is not running here may belong to a run in
//! another process namespace (a container) sharing the server.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_postgres::{PgOptions, PgStore};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// The prefix of every test database's name.
const PREFIX: &str = "cairn_test_";
/// A test database whose creating process is not running here is dropped after this long.
const ORPHANED_AFTER: Duration = Duration::from_secs(2 * 60 * 60);
/// Any test database is dropped after this long.
const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The server's URL, without a database.
pub fn server_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".to_owned())
}

/// The URL of a database of the server.
pub fn database_url(database: &str) -> String {
    format!("{}/{database}", server_url())
}

/// A database that exists for as long as this guard.
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// Creates a fresh, empty database.
    pub async fn create() -> Self {
        let mut admin = PgConnection::connect(&database_url("postgres"))
            .await
            .expect("the test PostgreSQL server at 127.0.0.1:5432 is reachable");
        sweep_stale(&mut admin).await;
        let random = Uuid::now_v7().simple().to_string();
        let name = format!(
            "{PREFIX}{}_{}_{}",
            std::process::id(),
            unix_seconds(),
            &random[20..]
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("creating a test database");
        let _ = admin.close().await;
        let url = database_url(&name);
        Self { name, url }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A store on this database with default options, except a short poll interval.
    pub async fn store(&self) -> PgStore {
        self.store_with(test_options()).await
    }

    /// A store on this database with `options`.
    pub async fn store_with(&self, options: PgOptions) -> PgStore {
        PgStore::connect_with(&self.url, options)
            .await
            .expect("the store opens on a fresh test database")
    }

    /// A plain connection to this database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connecting to the test database")
    }
}

/// Options for tests: the defaults, with a pool large enough for the concurrent cases.
pub fn test_options() -> PgOptions {
    PgOptions::default().max_connections(24)
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Drop may run inside a runtime, which cannot block on another future: use a
        // thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(drop_database(&name));
        })
        .join();
        if dropped.is_err() {
            eprintln!("dropping a test database panicked");
        }
    }
}

async fn drop_database(name: &str) {
    match PgConnection::connect(&database_url("postgres")).await {
        Ok(mut admin) => {
            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
            {
                eprintln!("could not drop test database {name}: {error}");
            }
            let _ = admin.close().await;
        }
        Err(error) => eprintln!("could not connect to drop test database {name}: {error}"),
    }
}

/// Seconds since the Unix epoch now.
fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Whether the test database `name` was left behind: made by a process not running here
/// more than [`ORPHANED_AFTER`] ago, or by any process more than [`ABANDONED_AFTER`] ago.
/// A name of the earlier layout (`<pid>_<random>`, no time) is left behind once its process
/// is not running; names of any other layout are left alone.
fn left_behind(name: &str, now: u64) -> bool {
    let parts: Vec<&str> = name
        .strip_prefix(PREFIX)
        .unwrap_or_default()
        .split('_')
        .collect();
    let running = |pid: &str| {
        pid.parse::<u32>()
            .map(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    match parts.as_slice() {
        [pid, _] => running(pid) == Ok(false),
        [pid, made, _] => {
            let (Ok(running), Ok(made)) = (running(pid), made.parse::<u64>()) else {
                return false;
            };
            let age = Duration::from_secs(now.saturating_sub(made));
            age > ABANDONED_AFTER || (!running && age > ORPHANED_AFTER)
        }
        _ => false,
    }
}

#[test]
fn only_databases_left_behind_are_swept() {
    let now = unix_seconds();
    let this = std::process::id();
    // No process has this id (the kernel's limit is below it).
    let gone = 4_194_304 + 1;
    let hour = 60 * 60;
    let named = |pid: u32, made: u64| format!("{PREFIX}{pid}_{made}_0123456789ab");
    assert!(!left_behind(&named(this, now), now));
    assert!(
        !left_behind(&named(gone, now - hour), now),
        "a run elsewhere"
    );
    assert!(left_behind(&named(gone, now - 3 * hour), now));
    assert!(
        !left_behind(&named(this, now - 3 * hour), now),
        "a long run here"
    );
    assert!(left_behind(&named(this, now - 25 * hour), now));
    assert!(left_behind(&format!("{PREFIX}{gone}_0123456789ab"), now));
    assert!(!left_behind(&format!("{PREFIX}{this}_0123456789ab"), now));
    assert!(!left_behind(&format!("{PREFIX}other"), now));
}

/// Drops the test databases that were left behind.
async fn sweep_stale(admin: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'cairn\\_test\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    let now = unix_seconds();
    for name in names {
        if !left_behind(&name, now) {
            continue;
        }
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *admin)
            .await;
    }
}

/// Several databases, dropped together when the last clone goes: for factories that
/// make a store per call.
#[derive(Clone, Default)]
pub struct Databases(Arc<Mutex<Vec<TestDb>>>);

impl Databases {
    /// A store on a new database, kept until the last clone of `self` drops.
    pub async fn store(&self) -> PgStore {
        let db = TestDb::create().await;
        let store = db.store().await;
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(db);
        store
    }
}

/// The sequential scans of `table` in `db` so far, and the rows they read, once every
/// other session of the database has ended (a session's table statistics reach the shared
/// counters when it ends). Close the stores on `db` first.
pub async fn sequential_scans(db: &TestDb, table: &str) -> (i64, i64) {
    let mut conn = db.connect().await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut conn)
    .await
    .expect("ending the database's other sessions");
    let patience = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (others,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await
        .expect("counting the database's other sessions");
        if others == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < patience,
            "the database's other sessions did not end"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sqlx::query_as("SELECT seq_scan, seq_tup_read FROM pg_stat_user_tables WHERE relname = $1")
        .bind(table)
        .fetch_one(&mut conn)
        .await
        .expect("reading the table's statistics")
}

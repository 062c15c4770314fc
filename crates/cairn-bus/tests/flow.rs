//! The flow-control middleware together, and the PostgreSQL inbox against the real
//! server of this machine (with the `postgres` feature).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cairn_bus::deadletter::{DeadLetterLayer, KeyPolicy, MemoryDeadLetters};
use cairn_bus::dedup::{DedupLayer, MemoryInbox};
use cairn_bus::ordered::OrderedLayer;
use cairn_bus::{HandlerError, Incoming, Message};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

/// The layers in the order a consumer stacks them: ordered outermost, so that dead letters
/// see a key's messages one at a time; de-duplication inside dead letters, so that a
/// replayed message is recorded when it finally succeeds.
#[tokio::test]
async fn ordered_dead_letters_and_dedup_stack_in_one_consumer() {
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let runs = Arc::new(AtomicUsize::new(0));
    let healed = Arc::new(AtomicBool::new(false));
    let handler = {
        let handled = Arc::clone(&handled);
        let runs = Arc::clone(&runs);
        let healed = Arc::clone(&healed);
        service_fn(move |incoming: Incoming| {
            let handled = Arc::clone(&handled);
            let runs = Arc::clone(&runs);
            let healed = Arc::clone(&healed);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if incoming.message.payload.as_ref() == b"poison" && !healed.load(Ordering::SeqCst)
                {
                    return Err(HandlerError::permanent("cannot apply"));
                }
                handled
                    .lock()
                    .unwrap()
                    .push(incoming.message.message_type.clone());
                Ok(())
            }
        })
    };
    let dead_letters = DeadLetterLayer::new(MemoryDeadLetters::new(), KeyPolicy::Block);
    let letters = dead_letters.dead_letters();
    let mut service = ServiceBuilder::new()
        .layer(OrderedLayer::new(8))
        .layer(dead_letters)
        .layer(DedupLayer::new("billing", MemoryInbox::new()))
        .service(handler);

    let a1 = Message::new("a1", "poison").with_key("a");
    let messages = [
        a1.clone(),
        Message::new("b1", "{}").with_key("b"),
        Message::new("a2", "{}").with_key("a"),
        a1.clone(),
        Message::new("b2", "{}").with_key("b"),
    ];
    let mut futures = Vec::new();
    for message in messages {
        let future = service
            .ready()
            .await
            .unwrap()
            .call(Incoming::new("orders", message));
        futures.push(tokio::spawn(future));
    }
    for future in futures {
        future.await.unwrap().unwrap();
    }
    assert_eq!(*handled.lock().unwrap(), ["b1", "b2"]);
    let parked = letters.list(&Default::default()).await.unwrap();
    let types: Vec<&str> = parked
        .iter()
        .map(|p| p.message.message_type.as_str())
        .collect();
    assert_eq!(
        types,
        ["a1", "a2", "a1"],
        "the key's later messages wait behind"
    );
    assert!(letters.is_blocked("a"));
    assert_eq!(runs.load(Ordering::SeqCst), 3, "a1 once; b1, b2");

    // Fixed: the key's messages run in order, and the duplicate of a1 parked behind is
    // recognized by the inbox once a1 has succeeded.
    healed.store(true, Ordering::SeqCst);
    let report = letters.replay_key("a").await.unwrap();
    assert_eq!(report.handled.len(), 3);
    assert_eq!(*handled.lock().unwrap(), ["b1", "b2", "a1", "a2"]);
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    assert!(!letters.is_blocked("a"));
}

/// [`PgInbox`](cairn_bus::dedup::PgInbox) on a database of its own, created for the test
/// and dropped after it.
#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use cairn_bus::dedup::{DedupLayer, Inbox, InboxError, PgInbox};
    use cairn_bus::{HandlerError, Incoming, Message};
    use cairn_postgres::sqlx::{self, Connection, PgConnection, PgPool};
    use tower::{Layer, Service, ServiceExt, service_fn};
    use uuid::Uuid;

    /// The prefix of every test database's name, shared with `cairn-postgres`'s tests so
    /// that either sweeps the other's leftovers.
    const PREFIX: &str = "cairn_test_";

    /// The server, without a database: `CAIRN_TEST_POSTGRES`, or the local superuser.
    fn server_url() -> String {
        std::env::var("CAIRN_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
    }

    /// A database with Cairn's schema that exists for as long as this guard.
    struct TestDb {
        name: String,
        pool: PgPool,
    }

    impl TestDb {
        async fn create() -> Self {
            let mut admin = PgConnection::connect(&format!("{}/postgres", server_url()))
                .await
                .expect("the test PostgreSQL server at 127.0.0.1:5432 is reachable");
            sweep_stale(&mut admin).await;
            let random = Uuid::now_v7().simple().to_string();
            let name = format!("{PREFIX}{}_{}", std::process::id(), &random[20..]);
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut admin)
                .await
                .expect("creating a test database");
            let _ = admin.close().await;
            let url = format!("{}/{name}", server_url());
            let mut conn = PgConnection::connect(&url).await.expect("connecting");
            cairn_postgres::schema::migrate(&mut conn)
                .await
                .expect("the schema applies to a fresh database");
            let _ = conn.close().await;
            let pool = PgPool::connect(&url)
                .await
                .expect("a pool on the test database");
            Self { name, pool }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let name = std::mem::take(&mut self.name);
            // Drop may run inside a runtime, which cannot block on a future: use a thread
            // with a runtime of its own. The pool's connections belong to the test's
            // runtime, blocked here: `WITH (FORCE)` ends them from the server's side.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime to drop the test database");
                runtime.block_on(async move {
                    let mut admin = PgConnection::connect(&format!("{}/postgres", server_url()))
                        .await
                        .expect("connecting to drop the test database");
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await
                        .expect("dropping the test database");
                });
            })
            .join();
            if dropped.is_err() {
                eprintln!("dropping a test database failed");
            }
        }
    }

    /// Drops test databases whose creating process no longer runs (a test killed before
    /// its guard dropped).
    async fn sweep_stale(admin: &mut PgConnection) {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'cairn\\_test\\_%'",
        )
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
        for name in names {
            let pid = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('_').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *admin)
                .await;
        }
    }

    #[tokio::test]
    async fn the_pg_inbox_records_each_id_once_per_consumer() {
        let db = TestDb::create().await;
        let inbox = PgInbox::new(db.pool.clone());
        let id = Uuid::now_v7();
        assert!(!inbox.contains("billing", id).await.unwrap());
        assert!(inbox.record("billing", id).await.unwrap());
        assert!(!inbox.record("billing", id).await.unwrap());
        assert!(inbox.contains("billing", id).await.unwrap());
        assert!(!inbox.contains("shipping", id).await.unwrap());

        let refused = inbox.record("", id).await.unwrap_err();
        assert!(
            matches!(refused, InboxError::InvalidConsumer { .. }),
            "{refused}"
        );
        assert_eq!(refused.code(), "inbox_invalid_consumer");
    }

    #[tokio::test]
    async fn dedup_over_the_pg_inbox_skips_duplicates_and_retries_failures() {
        let db = TestDb::create().await;
        let runs = Arc::new(AtomicUsize::new(0));
        let handler = {
            let runs = Arc::clone(&runs);
            service_fn(move |incoming: Incoming| {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    if incoming.message.payload.as_ref() == b"flaky" && run == 0 {
                        return Err(HandlerError::transient("downstream away"));
                    }
                    Ok(())
                }
            })
        };
        let layer = DedupLayer::new("billing", PgInbox::new(db.pool.clone()));
        let mut service = layer.layer(handler);
        let message = Message::new("order.placed", "flaky");
        let incoming = Incoming::new("orders", message.clone());

        let first = service.ready().await.unwrap().call(incoming.clone()).await;
        assert!(first.unwrap_err().is_retryable());
        assert!(
            !PgInbox::new(db.pool.clone())
                .contains("billing", message.id)
                .await
                .unwrap()
        );

        // The redelivery runs; then two duplicates racing are both skipped.
        service
            .ready()
            .await
            .unwrap()
            .call(incoming.clone())
            .await
            .unwrap();
        let a = service.ready().await.unwrap().call(incoming.clone());
        let b = service.ready().await.unwrap().call(incoming);
        let (a, b) = tokio::join!(a, b);
        a.unwrap();
        b.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(
            PgInbox::new(db.pool.clone())
                .contains("billing", message.id)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn dedup_over_the_pg_inbox_runs_concurrent_duplicates_once() {
        let db = TestDb::create().await;
        let runs = Arc::new(AtomicUsize::new(0));
        let handler = {
            let runs = Arc::clone(&runs);
            service_fn(move |_: Incoming| {
                let runs = Arc::clone(&runs);
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<(), HandlerError>(())
                }
            })
        };
        let mut service = DedupLayer::new("billing", PgInbox::new(db.pool.clone())).layer(handler);
        let incoming = Incoming::new("orders", Message::new("order.placed", "{}"));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let future = service.ready().await.unwrap().call(incoming.clone());
            tasks.push(tokio::spawn(future));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}

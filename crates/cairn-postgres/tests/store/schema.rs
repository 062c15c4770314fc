//! Embedded migrations: applied once, harmless twice, and a newer database is refused.

use cairn_core::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName};
use cairn_postgres::schema::{migrate, schema_version};
use cairn_postgres::{ConnectError, PgOptions, PgStore, SCHEMA_VERSION, SchemaError};

use crate::support::{TestDb, test_options};

async fn migration_rows(db: &TestDb) -> Vec<i32> {
    sqlx::query_scalar("SELECT version FROM cairn_schema_migrations ORDER BY version")
        .fetch_all(&mut db.connect().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_is_migrated_to_the_current_version() {
    let db = TestDb::create().await;
    assert_eq!(schema_version(&mut db.connect().await).await.unwrap(), 0);
    let _store = db.store().await;
    assert_eq!(
        schema_version(&mut db.connect().await).await.unwrap(),
        SCHEMA_VERSION
    );
    assert_eq!(
        migration_rows(&db).await,
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_twice_changes_nothing_and_keeps_the_data() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let stream = StreamName::new("kept-1").unwrap();
    let event = EventData::new("Kept", &b"{}"[..]);
    store
        .append(&stream, ExpectedRevision::NoStream, vec![event.clone()])
        .await
        .unwrap();

    let before = migration_rows(&db).await;
    let was = migrate(&mut db.connect().await).await.unwrap();
    assert_eq!(
        was, SCHEMA_VERSION,
        "the second run found the current version"
    );
    assert_eq!(
        migration_rows(&db).await,
        before,
        "no version was applied twice"
    );

    // A second store opening the same database migrates again, harmlessly.
    let again = db.store().await;
    let page = again
        .read_stream(&stream, ReadStream::forwards())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].id, event.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_openings_of_a_fresh_database_migrate_it_once() {
    let db = TestDb::create().await;
    let mut openings = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = db.url().to_owned();
        openings.spawn(async move { PgStore::connect_with(&url, test_options()).await });
    }
    while let Some(opened) = openings.join_next().await {
        opened.unwrap().expect("every concurrent opening succeeds");
    }
    assert_eq!(
        migration_rows(&db).await,
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_at_a_newer_schema_version_is_refused() {
    let db = TestDb::create().await;
    drop(db.store().await);
    let newer = SCHEMA_VERSION + 7;
    sqlx::query("INSERT INTO cairn_schema_migrations (version, name) VALUES ($1, 'future')")
        .bind(newer)
        .execute(&mut db.connect().await)
        .await
        .unwrap();

    for migrate_on_open in [true, false] {
        let options = PgOptions::default().migrate(migrate_on_open);
        match PgStore::connect_with(db.url(), options).await {
            Err(ConnectError::Schema {
                url,
                source: SchemaError::NewerThanSupported { found, supported },
            }) => {
                assert_eq!(found, newer);
                assert_eq!(supported, SCHEMA_VERSION);
                assert_eq!(url, db.url());
            }
            other => panic!(
                "opening a database at schema version {newer} (migrate: {migrate_on_open}) \
                 should be refused as too new, got {other:?}"
            ),
        }
    }
    let error = migrate(&mut db.connect().await).await.unwrap_err();
    assert_eq!(error.code(), "postgres_schema_too_new");
    assert!(
        error
            .to_string()
            .contains(&format!("schema version {newer}")),
        "{error}"
    );
    // Nothing was changed by the refused attempts.
    assert_eq!(
        migration_rows(&db).await,
        (1..=SCHEMA_VERSION).chain([newer]).collect::<Vec<_>>()
    );
}

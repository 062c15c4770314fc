//! A PostgreSQL restart under a live subscriber and a steady writer: the subscriber resumes
//! by itself and sees every acknowledged event exactly once, in order.
//!
//! The server restarts for real, so this binary must not run beside other tests that use
//! it: `scripts/test` runs the `restart` binaries on their own, one at a time, after the
//! rest. The restart command is `pg_ctlcluster --skip-systemctl-redirect <version> main
//! restart` for the cluster under `/etc/postgresql`, or the shell command in
//! `CAIRN_POSTGRES_RESTART`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use cairn_core::{
    EventData, EventStore, ExpectedRevision, StreamName, SubscribeAll, SubscriptionMessage,
    WriteError,
};
use futures::StreamExt;
use tokio::sync::mpsc;

use support::{TestDb, test_options};

/// The shell command that restarts the server.
fn restart_command() -> String {
    if let Ok(command) = std::env::var("CAIRN_POSTGRES_RESTART") {
        return command;
    }
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let [version] = versions.as_slice() else {
        panic!(
            "cannot tell how to restart PostgreSQL: /etc/postgresql holds {versions:?}; \
             set CAIRN_POSTGRES_RESTART to the command"
        );
    };
    format!("pg_ctlcluster --skip-systemctl-redirect {version} main restart")
}

fn restart_postgres() {
    let command = restart_command();
    let output = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .output()
        .unwrap_or_else(|e| panic!("running `{command}` to restart PostgreSQL: {e}"));
    assert!(
        output.status.success(),
        "restarting PostgreSQL with `{command}` failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// When the server process started, as the server says.
async fn postmaster_start(db: &TestDb) -> String {
    sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
        .fetch_one(&mut db.connect().await)
        .await
        .expect("reading the server's start time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_without_loss_or_duplicates_after_postgres_restarts() {
    let db = TestDb::create().await;
    let subscriber = db
        .store_with(test_options().poll_interval(Duration::from_millis(200)))
        .await;
    let writer = db.store().await;

    // The subscription is polled by a task of its own, so it keeps reading (and
    // reconnecting) while the server goes away and comes back.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let mut subscription = subscriber.subscribe_all(SubscribeAll::from_start());
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            if seen_tx.send(message).is_err() {
                return;
            }
        }
    });

    // A writer appends steadily, retrying each append with the same ids until it is
    // acknowledged (a retry of an append that did commit returns the first result).
    let appender = {
        let writer = writer.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut failures = 0usize;
            for n in 0..400usize {
                let events = vec![EventData::new(
                    "Steady",
                    format!("{{\"n\":{n}}}").into_bytes(),
                )];
                let stream = StreamName::new(format!("steady-{}", n % 7)).unwrap();
                let started = Instant::now();
                loop {
                    match writer
                        .append(&stream, ExpectedRevision::Any, events.clone())
                        .await
                    {
                        Ok(_) => break,
                        Err(WriteError::Storage(error)) => {
                            failures += 1;
                            assert!(
                                started.elapsed() < Duration::from_secs(60),
                                "appends kept failing for a minute: {error}"
                            );
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(other) => panic!("an append was refused: {other}"),
                    }
                }
                acknowledged.extend(events.iter().map(|e| e.id));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acknowledged, failures)
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    let started_before = postmaster_start(&db).await;
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    let (acknowledged, failures) = appender.await.unwrap();
    // Appends in flight during the restart fail and are retried, or wait in the pool until
    // the server is back; either way the server must really have restarted under them.
    assert_ne!(
        postmaster_start(&db).await,
        started_before,
        "PostgreSQL did not restart: the test proves nothing"
    );

    let mut seen = Vec::with_capacity(acknowledged.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < acknowledged.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, seen_rx.recv()).await {
            Ok(Some(Ok(SubscriptionMessage::Event(event)))) => seen.push(event.id),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => panic!("the subscription failed instead of resuming: {error}"),
            Ok(None) => panic!("the subscription ended"),
            Err(_) => panic!(
                "the subscriber saw {} of {} acknowledged events within a minute",
                seen.len(),
                acknowledged.len()
            ),
        }
    }
    assert_eq!(
        seen, acknowledged,
        "every acknowledged event once, in append order"
    );
    let late = tokio::time::timeout(Duration::from_millis(800), async {
        loop {
            match seen_rx.recv().await {
                Some(Ok(SubscriptionMessage::Event(event))) => return event,
                Some(Ok(_)) => {}
                other => panic!("the subscription ended: {other:?}"),
            }
        }
    })
    .await;
    assert!(late.is_err(), "an extra event arrived: {late:?}");
    eprintln!("the writer retried {failures} appends across the restart");
    drop(db);
}

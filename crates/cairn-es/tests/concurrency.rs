//! Many concurrent commands on few aggregates, on each store: every accepted command is
//! recorded exactly once, the state the repository loads equals a sequential replay of
//! the stored events, and every rule of the bank holds at every step of every history.
//!
//! `CAIRN_ES_SEED` replays a run; `CAIRN_ES_COMMANDS` sets commands per client.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

#[path = "../examples/bank/domain.rs"]
#[allow(dead_code, unreachable_pub)]
mod domain;

/// Test databases on the local PostgreSQL server, one per test, dropped afterwards.
#[path = "../../cairn-postgres/tests/support/mod.rs"]
mod postgres;

use std::sync::Arc;

use cairn_core::{EventStore, ReadStream, Revision};
use cairn_es::{CommandError, Decider, Repository};
use domain::{Account, AccountEvent, Bank, Command, Status};
use rand::prelude::*;
use tokio::task::JoinSet;

const ACCOUNTS: usize = 3;
const CLIENTS: usize = 12;

fn seed() -> u64 {
    std::env::var("CAIRN_ES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn commands_per_client() -> usize {
    std::env::var("CAIRN_ES_COMMANDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

fn random_command(rng: &mut StdRng) -> Command {
    match rng.random_range(0..100) {
        0..50 => Command::Deposit {
            amount: rng.random_range(0..60),
        },
        50..97 => Command::Withdraw {
            amount: rng.random_range(0..80),
        },
        _ => Command::Close,
    }
}

/// Runs the property on `store`; panics with the seed when it fails. With `cache` above
/// 0, every other client goes through a repository that caches up to `cache` states (its
/// entries go stale under the other clients' writes, which must be caught as conflicts).
async fn property<S: EventStore + 'static>(store: Arc<S>, prefix: &str, cache: usize) {
    let seed = seed();
    // A command meets a conflict only after another command on its account was accepted
    // since it loaded (its first attempt: since its cached state was current). So no
    // command needs more attempts than there are commands: with that bound, every command
    // ends accepted or rejected, whatever the scheduling, and the property below is about
    // correctness only. (How long a client may lose the race to faster ones is the
    // store's scheduling, not a property of the repository.)
    let attempts = u32::try_from(CLIENTS * commands_per_client() + 2).unwrap_or(u32::MAX);
    let repository: Repository<Bank, S> = Repository::builder(Arc::clone(&store))
        .max_attempts(attempts)
        .build_unchecked();
    let cached: Repository<Bank, S> = Repository::builder(Arc::clone(&store))
        .max_attempts(attempts)
        .cache(cache)
        .build_unchecked();
    let ids: Vec<String> = (0..ACCOUNTS).map(|n| format!("{prefix}{n}")).collect();
    for id in &ids {
        repository
            .execute(id, Command::Open { owner: id.clone() })
            .await
            .unwrap();
    }
    let mut clients = JoinSet::new();
    for client in 0..CLIENTS {
        let repository = if client % 2 == 0 {
            cached.clone()
        } else {
            repository.clone()
        };
        let ids = ids.clone();
        clients.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (client as u64).wrapping_mul(0x9E37_79B9));
            let mut accepted = vec![0u64; ids.len()];
            for _ in 0..commands_per_client() {
                let account = rng.random_range(0..ids.len());
                match repository
                    .execute(&ids[account], random_command(&mut rng))
                    .await
                {
                    Ok(executed) => accepted[account] += executed.events.len() as u64,
                    Err(CommandError::Rejected(_)) => {}
                    Err(other) => panic!("seed {seed}: a command failed: {other}"),
                }
            }
            accepted
        });
    }
    let mut accepted = [1u64; ACCOUNTS]; // the openings
    while let Some(joined) = clients.join_next().await {
        for (total, more) in accepted.iter_mut().zip(joined.unwrap()) {
            *total += more;
        }
    }
    for (n, id) in ids.iter().enumerate() {
        let stream = repository.stream_of(id).unwrap();
        let page = store
            .read_stream(&stream, ReadStream::forwards().limit(4096))
            .await
            .unwrap();
        let mut state = Account::default();
        for (revision, recorded) in page.events.iter().enumerate() {
            assert_eq!(recorded.revision, Revision(revision as u64));
            let event: AccountEvent = cairn_es::Event::decode(
                &recorded.event_type,
                serde_json::from_slice(&recorded.payload).unwrap(),
            )
            .unwrap();
            check_rules(&state, &event, seed, id, revision);
            state = Bank::evolve(state, &event);
        }
        assert_eq!(
            page.events.len() as u64,
            accepted[n],
            "seed {seed}: account {id}: every accepted command recorded once"
        );
        let loaded = repository.load(id).await.unwrap();
        assert_eq!(
            loaded.state, state,
            "seed {seed}: account {id}: loaded state equals the sequential replay"
        );
    }
}

/// The bank's rules for one step of a history.
fn check_rules(before: &Account, event: &AccountEvent, seed: u64, id: &str, revision: usize) {
    let context =
        format!("seed {seed}: account {id}, revision {revision}: {event:?} after {before:?}");
    match event {
        AccountEvent::Opened { .. } => assert_eq!(before.status, Status::New, "{context}"),
        AccountEvent::Deposited { amount, balance } => {
            assert_eq!(before.status, Status::Open, "{context}");
            assert!(*amount > 0, "{context}");
            assert_eq!(*balance, before.balance + amount, "{context}");
        }
        AccountEvent::Withdrawn { amount, balance } => {
            assert_eq!(before.status, Status::Open, "{context}");
            assert!(
                *amount > 0 && *amount <= before.balance,
                "{context}: overdraft"
            );
            assert_eq!(*balance, before.balance - amount, "{context}");
        }
        AccountEvent::Closed => {
            assert_eq!(before.status, Status::Open, "{context}");
            assert_eq!(before.balance, 0, "{context}: closed with money in it");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_the_memory_store() {
    property(Arc::new(cairn_memory::MemoryStore::new()), "mem", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_through_cached_states_on_the_memory_store() {
    property(Arc::new(cairn_memory::MemoryStore::new()), "memc", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_the_embedded_store() {
    let store = cairn_log::LogStore::open_temporary(cairn_log::LogOptions::default()).unwrap();
    property(Arc::new(store), "log", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_through_cached_states_on_the_embedded_store() {
    let store = cairn_log::LogStore::open_temporary(cairn_log::LogOptions::default()).unwrap();
    property(Arc::new(store), "logc", 1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_postgresql() {
    let db = postgres::TestDb::create().await;
    let store = db.store().await;
    property(Arc::new(store.clone()), "pg", 2).await;
    store.close().await;
}

//! The `es` workloads: event sourcing through `cairn-es` on the embedded store.
//!
//! - `es-commands`: 64 clients, each sending commands one after another to its own ring
//!   of 1,000 account aggregates (so no two clients ever touch the same aggregate),
//!   through a repository that caches aggregate states (decide on the cached state,
//!   append with `Exact`, durable; a stale state would surface as a conflict).
//! - `es-commands-uncached`: the same without the cache, so that every command is a full
//!   repository round: load, decide, append with `Exact`.
//! - `es-load`: loading one aggregate whose stream holds 1,000,000 events (`--es-history`), with a
//!   snapshot policy of one per 1,000 events and the worst case of it: 999 events after
//!   the latest snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cairn::es::{
    Decider, DecodeError, EncodeError, Event, EventType, Repository, SCHEMA_VERSION, SnapshotPolicy,
};
use cairn::log::LogStore;
use cairn::{EventData, EventStore, ExpectedRevision, StreamName};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::Measured;
use super::stats::Samples;

/// Clients of `es-commands`.
pub(crate) const CLIENTS: usize = 64;
/// Aggregates each client cycles through.
const AGGREGATES_PER_CLIENT: u64 = 1_000;
/// The snapshot interval of `es-load`.
pub(crate) const SNAPSHOT_EVERY: u64 = 1_000;

/// The benchmark's domain: an account that only takes deposits.
#[derive(Debug, Clone, PartialEq)]
enum AccountEvent {
    Deposited { amount: u64 },
}

const TYPES: &[EventType] = &[EventType {
    name: "BenchDeposited",
    version: 1,
}];

impl Event for AccountEvent {
    fn event_types() -> &'static [EventType] {
        TYPES
    }

    fn event_type(&self) -> EventType {
        TYPES.first().copied().unwrap_or(EventType {
            name: "BenchDeposited",
            version: 1,
        })
    }

    fn encode(&self) -> Result<Value, EncodeError> {
        let Self::Deposited { amount } = self;
        Ok(json!({ "amount": amount }))
    }

    fn decode(event_type: &str, payload: Value) -> Result<Self, DecodeError> {
        match event_type {
            "BenchDeposited" => payload
                .get("amount")
                .and_then(Value::as_u64)
                .map(|amount| Self::Deposited { amount })
                .ok_or_else(|| DecodeError::payload(event_type, "`amount` is missing")),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a deposit must be positive")]
struct ZeroDeposit;

struct Account;

impl Decider for Account {
    const CATEGORY: &'static str = "benchaccount";
    type State = u64;
    type Command = u64;
    type Event = AccountEvent;
    type Error = ZeroDeposit;

    fn decide(_: &u64, amount: &u64) -> Result<Vec<AccountEvent>, ZeroDeposit> {
        if *amount == 0 {
            return Err(ZeroDeposit);
        }
        Ok(vec![AccountEvent::Deposited { amount: *amount }])
    }

    fn evolve(balance: u64, event: &AccountEvent) -> u64 {
        let AccountEvent::Deposited { amount } = event;
        balance.saturating_add(*amount)
    }
}

/// `es-commands` (`cached`: through the repository's state cache) and
/// `es-commands-uncached`: commands per second and the latency of each.
pub(crate) async fn commands(
    store: &LogStore,
    cached: bool,
    duration: Duration,
    count: u64,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let capacity = if cached {
        CLIENTS * AGGREGATES_PER_CLIENT as usize
    } else {
        0
    };
    let repository: Repository<Account, LogStore> = Repository::builder(Arc::new(store.clone()))
        .cache(capacity)
        .build_unchecked();
    let per_client = count.div_ceil(CLIENTS as u64).max(1);
    let started = Instant::now();
    let deadline = started + duration;
    let mut clients = JoinSet::new();
    for client in 0..CLIENTS {
        let repository = repository.clone();
        let counter = Arc::clone(counter);
        clients.spawn(async move {
            let mut samples = Samples::with_capacity(1 << 16);
            for n in 0..per_client {
                if Instant::now() >= deadline {
                    break;
                }
                let id = format!("{client}-{}", n % AGGREGATES_PER_CLIENT);
                let command_started = Instant::now();
                repository
                    .execute(&id, 1 + n % 100)
                    .await
                    .with_context(|| format!("a command to account {id}"))?;
                samples.record(command_started.elapsed());
                counter.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(samples)
        });
    }
    let mut samples = Samples::default();
    while let Some(joined) = clients.join_next().await {
        samples.merge(joined.context("a client task failed")??);
    }
    Ok(Measured {
        events: samples.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        latency: samples.summary(),
    })
}

/// `es-load`: fills one aggregate with `history` events (at least [`SNAPSHOT_EVERY`]) and
/// a snapshot 999 events before the end, then loads it repeatedly for `duration`.
pub(crate) async fn load(
    store: &LogStore,
    history: u64,
    duration: Duration,
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<Measured> {
    let repository: Repository<Account, LogStore> = Repository::builder(Arc::new(store.clone()))
        .snapshots(SnapshotPolicy::every(SNAPSHOT_EVERY))
        .build_unchecked();
    let id = "load";
    let stream = repository.stream_of(id)?;
    let tail = SNAPSHOT_EVERY - 1;
    append_history(store, &stream, history.max(SNAPSHOT_EVERY) - tail).await?;
    repository
        .snapshot(id)
        .await
        .context("writing the snapshot")?;
    append_history(store, &stream, tail).await?;
    let mut samples = Samples::with_capacity(1 << 14);
    let started = Instant::now();
    while started.elapsed() < duration {
        let load_started = Instant::now();
        let loaded = repository.load(id).await?;
        samples.record(load_started.elapsed());
        anyhow::ensure!(
            loaded.from_snapshot && loaded.replayed == tail,
            "the load did not start from the snapshot ({} events replayed)",
            loaded.replayed
        );
        counter.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Measured {
        events: samples.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        latency: samples.summary(),
    })
}

/// Appends `count` deposits of 1 to `stream`, as commands would have, in batches.
async fn append_history(store: &LogStore, stream: &StreamName, count: u64) -> anyhow::Result<()> {
    let mut left = count;
    while left > 0 {
        let batch = left.min(1_000);
        let events = (0..batch)
            .map(|_| {
                let payload = AccountEvent::Deposited { amount: 1 }.encode()?;
                Ok(EventData::json("BenchDeposited", &payload)?.with_metadata(SCHEMA_VERSION, "1"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        store
            .append(stream, ExpectedRevision::Any, events)
            .await
            .with_context(|| format!("filling {stream}"))?;
        left -= batch;
    }
    Ok(())
}

//! The reader: the one task that takes the subscription's free slots. With the slots it
//! takes it hands out, in turn, the entries whose nack delay is up ([`Shared::due`]), the
//! entries dead consumers left ([`reclaim`], every `claim_idle / 2`), and new entries
//! (`XREADGROUP ... BLOCK` on a connection of its own, as many as slots are left, each
//! handed out as attempt 1). When its connection drops it connects again (with backoff,
//! reporting each failed attempt on the stream) and has the keeper hand out again what
//! was outstanding ([`Shared::resync`]).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::claims::{claim, reclaim, redelivered};
use super::keeper::CHUNK;
use super::{Held, Outbox, Shared};
use crate::codec::{Entry, EntryId, Refused, read_entries};
use crate::error;

/// The most entries one read asks for.
const MAX_READ: usize = 512;
/// The most entries one reclaim takes.
const MAX_RECLAIM: usize = 64;
/// The first and the longest wait between attempts to connect again.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// Connects the reader's own connection: its replies may take `block` longer than others.
pub(crate) async fn connect(
    client: &Client,
    shared_options: &crate::RedisOptions,
) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(shared_options.connect_timeout))
        .set_response_timeout(Some(shared_options.block + shared_options.response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Runs the reader until `stop` is cancelled or the stream is dropped.
pub(crate) async fn run(
    shared: Arc<Shared>,
    client: Client,
    connection: MultiplexedConnection,
    outbox: Outbox,
    stop: CancellationToken,
) {
    let mut reader = Reader {
        shared,
        outbox,
        cursor: "0-0".to_owned(),
        // Reclaims at once: a new consumer takes over what dead ones left.
        next_reclaim: Instant::now(),
        entries: Vec::new(),
    };
    let shared = Arc::clone(&reader.shared);
    let mut connection = Some(connection);
    let mut backoff = BACKOFF.0;
    loop {
        if stop.is_cancelled() || reader.outbox.is_closed() {
            return;
        }
        let Some(live) = connection.as_mut() else {
            let attempt = tokio::select! {
                () = stop.cancelled() => return,
                attempt = connect(&client, &shared.options) => attempt,
            };
            match attempt {
                Ok(fresh) => {
                    connection = Some(fresh);
                    backoff = BACKOFF.0;
                    shared.resync();
                    tracing::debug!(topic = %shared.topic, group = %shared.group, "the subscription's connection is back");
                }
                Err(cause) => {
                    let _ = reader
                        .outbox
                        .send(Err(shared.map_error("reconnecting", cause)));
                    if pause(&stop, &mut backoff).await {
                        return;
                    }
                }
            }
            continue;
        };
        let slots = tokio::select! {
            () = stop.cancelled() => return,
            slots = take_slots(&shared) => slots,
        };
        // A step cut short may have taken entries on the server: they stay pending,
        // untracked, and another consumer reclaims them after `claim_idle`.
        let stepped = tokio::select! {
            () = stop.cancelled() => return,
            stepped = reader.step(live, slots) => stepped,
        };
        let Err(cause) = stepped else {
            backoff = BACKOFF.0;
            continue;
        };
        if error::is_no_group(&cause) {
            // The group (or the whole stream) is gone, say after a restart of a server
            // without persistence: made anew, from the stream's start.
            if let Err(cause) = create_group(&shared, live, "0").await {
                let _ = reader
                    .outbox
                    .send(Err(shared.map_error("creating the group", cause)));
                if pause(&stop, &mut backoff).await {
                    return;
                }
            }
        } else if error::is_connection_error(&cause) {
            tracing::debug!(topic = %shared.topic, group = %shared.group, error = %cause, "the subscription's connection dropped");
            connection = None;
        } else {
            let _ = reader.outbox.send(Err(shared.map_error("reading", cause)));
            if pause(&stop, &mut backoff).await {
                return;
            }
        }
    }
}

/// The reader's own state.
struct Reader {
    shared: Arc<Shared>,
    outbox: Outbox,
    /// Where the next reclaim goes on.
    cursor: String,
    next_reclaim: Instant,
    /// The entries of the last read, kept empty between reads: a buffer for hundreds
    /// of entries, made once instead of for every read.
    entries: Vec<Result<Entry, Refused>>,
}

impl Reader {
    /// With `slots` free slots taken: hands out the entries whose nack delay is up, then
    /// (when it is time) reclaims dead consumers' entries, then reads new ones; gives back
    /// the slots it did not use, whatever happens.
    async fn step(
        &mut self,
        connection: &mut MultiplexedConnection,
        slots: usize,
    ) -> Result<(), RedisError> {
        let shared = Arc::clone(&self.shared);
        let mut used = 0;
        let mut due: Vec<EntryId> = {
            let mut due = shared.due.lock().unwrap_or_else(PoisonError::into_inner);
            let take = due.len().min(slots).min(CHUNK);
            due.drain(..take).collect()
        };
        if !due.is_empty() {
            {
                // Only those still delayed take a slot: one that left meanwhile (another
                // consumer took it over) is no longer the subscription's to hand out.
                let mut state = shared.lock();
                due.retain(|id| match state.outstanding.get_mut(id) {
                    Some(held @ Held::Delayed) => {
                        *held = Held::Redelivering;
                        true
                    }
                    _ => false,
                });
            }
        }
        if !due.is_empty() {
            match claim(&shared, connection, &due).await {
                Ok(claimed) => {
                    redelivered(&shared, &self.outbox, &due, claimed);
                    used += due.len();
                }
                Err(cause) => {
                    {
                        let mut state = shared.lock();
                        for id in &due {
                            if let Some(held @ Held::Redelivering) = state.outstanding.get_mut(id) {
                                *held = Held::Delayed;
                            }
                        }
                    }
                    shared
                        .due
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(due);
                    shared.free_slots(slots);
                    return Err(cause);
                }
            }
        }
        let now = Instant::now();
        if now >= self.next_reclaim && used < slots {
            self.next_reclaim = now + shared.options.reclaim_every();
            match reclaim(
                &shared,
                connection,
                &self.outbox,
                &mut self.cursor,
                (slots - used).min(MAX_RECLAIM),
            )
            .await
            {
                Ok(taken) => used += taken,
                Err(cause) => {
                    shared.free_slots(slots - used);
                    return Err(cause);
                }
            }
        }
        if used == slots {
            return Ok(());
        }
        // Wait for new entries no longer than until the next reclaim, and not at all
        // while entries are due.
        let more_due = !shared
            .due
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        let block = if more_due {
            None
        } else {
            let until_reclaim = self.next_reclaim.saturating_duration_since(Instant::now());
            Some(
                shared
                    .options
                    .block
                    .min(until_reclaim)
                    .max(Duration::from_millis(1)),
            )
        };
        match read(&shared, connection, slots - used, block).await {
            Ok(value) => {
                used += hand_out(&shared, &self.outbox, value, &mut self.entries);
                shared.free_slots(slots - used);
                Ok(())
            }
            Err(cause) => {
                shared.free_slots(slots - used);
                Err(cause)
            }
        }
    }
}

/// Waits for at least one free slot and takes as many as are free (up to [`MAX_READ`]).
async fn take_slots(shared: &Shared) -> usize {
    let Ok(first) = shared.slots.acquire().await else {
        // The semaphore is never closed.
        return 0;
    };
    first.forget();
    let more = shared.slots.available_permits().min(MAX_READ - 1);
    if more > 0
        && let Ok(extra) = shared
            .slots
            .try_acquire_many(u32::try_from(more).unwrap_or(u32::MAX))
    {
        extra.forget();
        return 1 + more;
    }
    1
}

async fn read(
    shared: &Shared,
    connection: &mut MultiplexedConnection,
    count: usize,
    block: Option<Duration>,
) -> Result<Value, RedisError> {
    let mut command = redis::cmd("XREADGROUP");
    command
        .arg("GROUP")
        .arg(&shared.group)
        .arg(&shared.consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(block) = block {
        command
            .arg("BLOCK")
            .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX));
    }
    command
        .arg("STREAMS")
        .arg(&shared.key)
        .arg(">")
        .query_async(connection)
        .await
}

/// Hands out the entries of an `XREADGROUP` reply, read through `entries` (empty, and
/// left empty); returns how many.
fn hand_out(
    shared: &Arc<Shared>,
    outbox: &Outbox,
    reply: Value,
    entries: &mut Vec<Result<Entry, Refused>>,
) -> usize {
    let list = match reply {
        Value::Array(streams) => streams.into_iter().find_map(|stream| match stream {
            Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
            _ => None,
        }),
        Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
        _ => None,
    };
    if let Some(list) = list {
        read_entries(list, entries);
    }
    if entries.is_empty() {
        return 0;
    }
    let mut count = 0;
    let epoch = {
        let mut state = shared.lock();
        let epoch = state.epoch;
        for entry in entries.iter().flatten() {
            state.outstanding.insert(entry.id, Held::Handed { epoch });
            count += 1;
        }
        epoch
    };
    for entry in entries.drain(..) {
        match entry {
            Ok(entry) => shared.deliver(outbox, entry, 1, epoch),
            Err(refused) => shared.refuse(outbox, refused),
        }
    }
    count
}

/// `XGROUP CREATE <key> <group> <start> MKSTREAM`; an existing group is fine.
pub(crate) async fn create_group(
    shared: &Shared,
    connection: &mut MultiplexedConnection,
    start: &str,
) -> Result<(), RedisError> {
    let created = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&shared.key)
        .arg(&shared.group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async::<()>(connection)
        .await;
    match created {
        Err(cause) if cause.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Sleeps `backoff` (doubling it for next time); `true` when stopped meanwhile.
async fn pause(stop: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF.1);
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

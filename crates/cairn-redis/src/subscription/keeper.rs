//! The keeper: what a subscription does besides reading, on the transport's shared
//! connection. It redelivers entries that keep their slot (nacked without delay, or
//! outstanding when the reader's connection dropped) by claiming them again, which counts
//! the next delivery; it holds entries nacked with a delay (and those whose `XACK` failed,
//! due at once) until their time and then passes them to the reader ([`Shared::due`]),
//! which takes the free slots; it refreshes
//! the idle time of everything the subscription holds, and tidies the stream. A step that
//! fails (the connection is down) is tried again later.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use redis::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::claims::{claim, redelivered};
use super::{Command, Held, Outbox, Shared};
use crate::codec::EntryId;
use crate::scripts;

/// How long a redelivery waits after its claim failed.
const RETRY: Duration = Duration::from_millis(200);
/// The most ids per script call.
pub(crate) const CHUNK: usize = 256;

/// Runs the keeper until `stop` is cancelled.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    outbox: Outbox,
    stop: CancellationToken,
) {
    let options = Arc::clone(&shared.options);
    let mut keeper = Keeper {
        shared,
        outbox,
        redeliver: Vec::new(),
        delayed: BinaryHeap::new(),
    };
    let start = Instant::now();
    let mut next_touch = start + options.touch_every();
    let mut next_tidy = start + options.tidy_interval;
    let mut retry_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let mut wake = next_touch.min(next_tidy);
        if let Some(at) = retry_at {
            wake = wake.min(at);
        }
        if let Some(Reverse((due, _))) = keeper.delayed.peek() {
            wake = wake.min((*due).max(now));
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            command = commands.recv() => match command {
                Some(command) => keeper.apply(command),
                None => return,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
        while let Ok(command) = commands.try_recv() {
            keeper.apply(command);
        }

        let now = Instant::now();
        keeper.pass_due(now);
        if retry_at.is_none_or(|at| at <= now) {
            retry_at = None;
            if !keeper.redeliver.is_empty() && !keeper.redeliver_now().await {
                retry_at = Some(now + RETRY);
            }
        }
        if now >= next_touch {
            keeper.touch().await;
            next_touch = now + options.touch_every();
        }
        if now >= next_tidy {
            keeper.tidy().await;
            next_tidy = now + options.tidy_interval;
        }
    }
}

struct Keeper {
    shared: Arc<Shared>,
    outbox: Outbox,
    /// Entries to claim again and hand out; each holds a slot and is
    /// [`Held::Redelivering`](super::Held::Redelivering).
    redeliver: Vec<EntryId>,
    /// Entries waiting out a nack delay, earliest first; they hold no slot.
    delayed: BinaryHeap<Reverse<(Instant, EntryId)>>,
}

impl Keeper {
    fn apply(&mut self, command: Command) {
        match command {
            Command::Redeliver(ids) => self.redeliver.extend(ids),
            Command::Delay(id, due) => self.delayed.push(Reverse((due, id))),
        }
    }

    /// Passes the entries whose delay is up to the reader.
    fn pass_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&Reverse((at, id))) = self.delayed.peek() {
            if at > now {
                break;
            }
            self.delayed.pop();
            due.push(id);
        }
        if !due.is_empty() {
            self.shared
                .due
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(due);
        }
    }

    /// Claims the entries to redeliver and hands them out; `false` when the claim failed
    /// (they stay to be tried again).
    async fn redeliver_now(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        while !self.redeliver.is_empty() {
            let take = self.redeliver.len().min(CHUNK);
            let ids: Vec<EntryId> = self.redeliver[..take].to_vec();
            let mut connection = shared.connection.clone();
            match claim(&shared, &mut connection, &ids).await {
                Ok(claimed) => {
                    self.redeliver.drain(..take);
                    redelivered(&shared, &self.outbox, &ids, claimed);
                }
                Err(cause) => {
                    tracing::debug!(topic = %shared.topic, group = %shared.group, error = %cause, "redelivery failed; trying again");
                    return false;
                }
            }
        }
        true
    }

    /// Refreshes the idle time of every entry the subscription holds or delays, so that
    /// no other consumer reclaims them; forgets delayed entries another consumer took.
    async fn touch(&mut self) {
        let shared = Arc::clone(&self.shared);
        let ids: Vec<EntryId> = shared.lock().outstanding.keys().copied().collect();
        let mut lost = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let mut command = scripts::touch(&shared.key, &shared.group, &shared.consumer);
            for id in chunk {
                command.arg(id);
            }
            let mut connection = shared.connection.clone();
            match command.query_async::<Vec<Value>>(&mut connection).await {
                Ok(reply) => lost.extend(reply.iter().filter_map(EntryId::from_value)),
                Err(cause) => {
                    tracing::debug!(topic = %shared.topic, group = %shared.group, error = %cause, "refreshing held entries failed");
                    return;
                }
            }
        }
        if !lost.is_empty() {
            tracing::debug!(topic = %shared.topic, group = %shared.group, lost = lost.len(), "held entries were taken over or acknowledged elsewhere");
            {
                let mut state = shared.lock();
                for id in &lost {
                    if state.outstanding.get(id) == Some(&Held::Delayed) {
                        state.outstanding.remove(id);
                    }
                }
            }
            self.delayed.retain(|Reverse((_, id))| !lost.contains(id));
        }
    }

    /// Trims what every group acknowledged and removes long-idle consumers.
    async fn tidy(&mut self) {
        let shared = &self.shared;
        let idle =
            u64::try_from(shared.options.consumer_idle_limit.as_millis()).unwrap_or(u64::MAX);
        let mut connection = shared.connection.clone();
        match scripts::tidy(&shared.key, idle)
            .query_async::<i64>(&mut connection)
            .await
        {
            Ok(trimmed) => {
                tracing::debug!(topic = %shared.topic, trimmed, "tidied the stream");
            }
            Err(cause) => {
                tracing::debug!(topic = %shared.topic, error = %cause, "tidying the stream failed");
            }
        }
    }
}

//! Claiming entries (again) for a subscription and handing them out: redeliveries of its
//! own entries, and reclaims of what dead consumers left.

use std::collections::hash_map::Entry as MapEntry;
use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::{RedisError, Value};

use super::{Claimed, Held, Outbox, Shared, read_claimed};
use crate::codec::EntryId;
use crate::scripts;

/// Claims `ids` for the subscription's consumer (counting one more delivery of each) and
/// returns those still pending and in the stream, with their delivery counts.
pub(crate) async fn claim(
    shared: &Shared,
    connection: &mut impl ConnectionLike,
    ids: &[EntryId],
) -> Result<Claimed, RedisError> {
    let mut command = scripts::claim(&shared.key, &shared.group, &shared.consumer);
    for id in ids {
        command.arg(id);
    }
    Ok(read_claimed(
        command.query_async::<Value>(connection).await?,
    ))
}

/// Hands out again the entries `ids` (each [`Held::Redelivering`], holding a slot) that
/// [`claim`] brought back; those it did not (acknowledged elsewhere, deleted from the
/// stream, or refused, which is reported) leave, freeing their slots.
pub(crate) fn redelivered(
    shared: &Arc<Shared>,
    outbox: &Outbox,
    ids: &[EntryId],
    claimed: Claimed,
) {
    let Claimed {
        entries: claimed,
        refused,
    } = claimed;
    for refused in refused {
        shared.refuse(outbox, refused);
    }
    let mut gone = 0;
    let mut handed = Vec::with_capacity(claimed.len());
    let epoch = {
        let mut state = shared.lock();
        let epoch = state.epoch;
        for id in ids {
            let back = claimed.iter().any(|(entry, _)| entry.id == *id);
            if let Some(held) = state.outstanding.get_mut(id)
                && *held == Held::Redelivering
            {
                if back {
                    *held = Held::Handed { epoch };
                } else {
                    state.outstanding.remove(id);
                    gone += 1;
                }
            }
        }
        for (entry, count) in claimed {
            if state.outstanding.get(&entry.id) == Some(&Held::Handed { epoch }) {
                handed.push((entry, count));
            }
        }
        epoch
    };
    shared.free_slots(gone);
    for (entry, count) in handed {
        shared.deliver(outbox, entry, count, epoch);
    }
}

/// Takes over up to `count` entries idle longer than `claim_idle` from `cursor` on: those
/// other (dead) consumers left, and those of this subscription's consumer that it does not
/// track (a read whose reply was lost, or an entry it refused). Hands them out and returns
/// how many; each takes one of the `count` slots the caller took. Its consumer's entries
/// that it tracks (handed out, delayed, being acknowledged or redelivered) are not claimed:
/// that would count a delivery that did not happen.
pub(crate) async fn reclaim(
    shared: &Arc<Shared>,
    connection: &mut impl ConnectionLike,
    outbox: &Outbox,
    cursor: &mut String,
    count: usize,
) -> Result<usize, RedisError> {
    let min_idle = u64::try_from(shared.options.claim_idle.as_millis()).unwrap_or(u64::MAX);
    let reply = scripts::reclaim(
        &shared.key,
        &shared.group,
        &shared.consumer,
        min_idle,
        cursor,
        count,
    )
    .query_async::<Value>(connection)
    .await?;
    let Value::Array(parts) = reply else {
        return Ok(0);
    };
    let Ok([next, claimed, deleted, own]) = <[Value; 4]>::try_from(parts) else {
        return Ok(0);
    };
    if let Ok(next) = redis::from_redis_value::<String>(next) {
        *cursor = next;
    }
    let Claimed {
        entries: claimed,
        refused,
    } = read_claimed(claimed);
    for refused in refused {
        shared.refuse(outbox, refused);
    }
    if let Value::Array(deleted) = deleted
        && !deleted.is_empty()
    {
        tracing::warn!(topic = %shared.topic, group = %shared.group, count = deleted.len(), "pending entries were trimmed from the stream before they were acknowledged; they are lost");
    }
    let own: Vec<EntryId> = match own {
        Value::Array(ids) => ids.iter().filter_map(EntryId::from_value).collect(),
        _ => Vec::new(),
    };
    let mut handed = Vec::with_capacity(claimed.len());
    let mut untracked = Vec::new();
    let epoch = {
        let mut state = shared.lock();
        let epoch = state.epoch;
        for (entry, count) in claimed {
            // Tracked already (another consumer took it over while this one's touches
            // failed, and this one took it back): it is left as it stands.
            if state.outstanding.contains_key(&entry.id) {
                continue;
            }
            state.outstanding.insert(entry.id, Held::Handed { epoch });
            handed.push((entry, count));
        }
        for id in own {
            if handed.len() + untracked.len() >= count {
                break;
            }
            if let MapEntry::Vacant(vacant) = state.outstanding.entry(id) {
                vacant.insert(Held::Redelivering);
                untracked.push(id);
            }
        }
        epoch
    };
    let taken = handed.len();
    if taken > 0 {
        tracing::debug!(topic = %shared.topic, group = %shared.group, count = taken, "reclaimed entries left pending by another consumer");
    }
    for (entry, count) in handed {
        shared.deliver(outbox, entry, count, epoch);
    }
    if untracked.is_empty() {
        return Ok(taken);
    }
    // Claimed as redeliveries (counting one more delivery each); `redelivered` frees the
    // slots of those that are gone meanwhile.
    match claim(shared, connection, &untracked).await {
        Ok(claimed) => {
            redelivered(shared, outbox, &untracked, claimed);
            Ok(taken + untracked.len())
        }
        Err(cause) => {
            // Untracked again, and taken up by a later reclaim; the caller frees their
            // slots (not by returning the error: the caller would free the slots of the
            // entries handed out above as well). A dropped connection shows on the
            // reader's next command; anything else is reported here.
            {
                let mut state = shared.lock();
                for id in &untracked {
                    if state.outstanding.get(id) == Some(&Held::Redelivering) {
                        state.outstanding.remove(id);
                    }
                }
            }
            if crate::error::is_connection_error(&cause) {
                tracing::debug!(topic = %shared.topic, group = %shared.group, error = %cause, "claiming untracked entries failed");
            } else {
                let _ = outbox.send(Err(shared.map_error("claiming untracked entries", cause)));
            }
            Ok(taken)
        }
    }
}

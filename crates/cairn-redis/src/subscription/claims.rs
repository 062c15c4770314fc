//! Claiming entries (again) for a subscription and handing them out: redeliveries of its
//! own entries, and reclaims of what dead consumers left.

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

/// `XAUTOCLAIM`s up to `count` entries idle longer than `claim_idle` (left by dead
/// consumers) from `cursor` on, hands them out and returns how many it handed out; each
/// takes one of the `count` slots the caller took.
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
    let Value::Array(mut parts) = reply else {
        return Ok(0);
    };
    if parts.len() != 3 {
        return Ok(0);
    }
    let deleted = parts.pop().unwrap_or(Value::Nil);
    let Claimed {
        entries: claimed,
        refused,
    } = read_claimed(parts.pop().unwrap_or(Value::Nil));
    for refused in refused {
        shared.refuse(outbox, refused);
    }
    if let Some(next) = parts.pop().as_ref().and_then(EntryId::from_value) {
        *cursor = next.to_string();
    }
    if let Value::Array(deleted) = deleted
        && !deleted.is_empty()
    {
        tracing::warn!(topic = %shared.topic, group = %shared.group, count = deleted.len(), "pending entries were trimmed from the stream before they were acknowledged; they are lost");
    }
    let mut handed = Vec::with_capacity(claimed.len());
    let epoch = {
        let mut state = shared.lock();
        let epoch = state.epoch;
        for (entry, count) in claimed {
            // One of ours (an entry whose read reply was lost): already tracked.
            if state.outstanding.contains_key(&entry.id) {
                continue;
            }
            state.outstanding.insert(entry.id, Held::Handed { epoch });
            handed.push((entry, count));
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
    Ok(taken)
}

//! New UUID v7 ids (RFC 9562): Unix milliseconds, a counter, random bits.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

/// The largest value of the 12-bit counter (the `rand_a` field).
const COUNTER_MAX: u16 = 0xFFF;

thread_local! {
    /// The milliseconds and counter of this thread's last id.
    static LAST: Cell<(u64, u16)> = const { Cell::new((0, 0)) };
}

/// A new UUID v7: 48 bits of Unix milliseconds, a 12-bit counter, 62 random bits from the
/// thread's cryptographically secure generator.
///
/// Ids made by one thread increase strictly, even when the clock steps back: within one
/// millisecond the counter counts up from a random start in its lower half, and when it
/// runs out, or the clock stepped back, the id takes the next millisecond after the last.
/// Ids of different threads in the same millisecond are ordered by their random parts.
/// This is what [`EventData::new`](crate::EventData::new) and the bus use; it does the
/// work of `Uuid::now_v7` without a lock shared by every thread of the process.
///
/// # Examples
///
/// ```
/// let (a, b) = (cairn_core::new_id(), cairn_core::new_id());
/// assert_eq!(a.get_version_num(), 7);
/// assert!(a < b);
/// ```
pub fn new_id() -> Uuid {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
        & ((1 << 48) - 1);
    let random: u128 = rand::random();
    let start = (random >> 64) as u16 & (COUNTER_MAX >> 1);
    let (millis, counter) = LAST.with(|last| {
        let (last_millis, last_counter) = last.get();
        let next = if now > last_millis {
            // A fresh millisecond: the counter starts at random in its lower half, so
            // that it can count a while before it runs out.
            (now, start)
        } else if last_counter < COUNTER_MAX {
            (last_millis, last_counter + 1)
        } else {
            (last_millis + 1, start)
        };
        last.set(next);
        next
    });
    let high = (millis << 16) | (0x7 << 12) | u64::from(counter);
    let low = (0b10 << 62) | (random as u64 & ((1 << 62) - 1));
    Uuid::from_u64_pair(high, low)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_version_7_rfc_variant_and_carry_the_time() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let id = new_id();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let millis = u128::from(id.as_u64_pair().0 >> 16);
        assert!(
            before <= millis && millis <= after + 1,
            "{before} {millis} {after}"
        );
    }

    #[test]
    fn ids_of_one_thread_increase_and_never_repeat() {
        let ids: Vec<Uuid> = (0..200_000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        let distinct: HashSet<Uuid> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn a_clock_that_stepped_back_does_not_break_the_order() {
        let id = new_id();
        // As if the last id had been made an hour from now.
        let ahead = (id.as_u64_pair().0 >> 16) + 3_600_000;
        LAST.with(|last| last.set((ahead, COUNTER_MAX - 1)));
        let (a, b, c) = (new_id(), new_id(), new_id());
        assert!(id < a && a < b && b < c);
        assert_eq!(a.as_u64_pair().0 >> 16, ahead);
        assert_eq!(b.as_u64_pair().0 >> 16, ahead + 1, "the counter ran out");
    }

    #[test]
    fn threads_make_distinct_ids() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..20_000).map(|_| new_id()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for handle in handles {
            for id in handle.join().unwrap_or_default() {
                assert!(all.insert(id), "{id} twice");
            }
        }
        assert_eq!(all.len(), 80_000);
    }
}

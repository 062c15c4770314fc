//! Names: which topic and group names the transport accepts, how they become RabbitMQ
//! exchange and queue names, and the ladder of retry delays.
//!
//! With the namespace `cairn`, topic `orders` and group `billing`:
//!
//! | What | Name | Kind |
//! |---|---|---|
//! | the topic | `cairn.orders` | durable fanout exchange |
//! | the group | `cairn.orders.billing` | durable quorum queue bound to the exchange |
//! | its dead letters | `cairn.orders.billing.dead` | durable quorum queue |
//! | its retries after 1.5 s | `cairn.orders.billing.delay.1500` | durable classic queue, message TTL 1,500 ms, dead-lettering back to the group's queue, deleted after 5 minutes unused |
//!
//! Topic and group names are made of ASCII letters, digits, `-` and `_` (no `.`, which
//! separates the parts), at most [`MAX_NAME`] bytes, so that every derived name stays
//! within AMQP's 255-byte limit.

use std::time::Duration;

use cairn_bus::TransportError;

/// The longest topic, group or namespace name, in bytes.
pub const MAX_NAME: usize = 75;

/// The longest delay a nack can ask for: longer delays are shortened to it (about 27 h).
pub const MAX_DELAY: Duration = Duration::from_millis(100_000_000);

/// Checks a topic or group name.
pub(crate) fn validate(what: &'static str, name: &str) -> Result<(), TransportError> {
    check(what, name, |c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    })
}

/// Checks a namespace, which may contain `.` as well.
pub(crate) fn validate_namespace(name: &str) -> Result<(), TransportError> {
    check("namespace", name, |c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
    })
}

fn check(
    what: &'static str,
    name: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), TransportError> {
    let reason = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > MAX_NAME {
        format!("{name:?} is longer than {MAX_NAME} bytes")
    } else if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        format!("{name:?} contains {bad:?}; use ASCII letters, digits, '-' and '_'")
    } else {
        return Ok(());
    };
    Err(TransportError::Invalid { what, reason })
}

/// The exchange of `topic`.
pub(crate) fn exchange(namespace: &str, topic: &str) -> String {
    format!("{namespace}.{topic}")
}

/// The queue of `group` on `topic`.
pub(crate) fn queue(namespace: &str, topic: &str, group: &str) -> String {
    format!("{namespace}.{topic}.{group}")
}

/// The dead-letter queue of a group's queue.
pub(crate) fn dead(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The retry queue of a group's queue whose messages wait `millis` ms.
pub(crate) fn delay(queue: &str, millis: u64) -> String {
    format!("{queue}.delay.{millis}")
}

/// Mantissas of the delay ladder (in tenths): each step is at most 25 % above the last.
const MANTISSAS: [u64; 12] = [10, 12, 15, 18, 22, 27, 33, 40, 50, 60, 75, 90];

/// Every delay a retry queue can have, in milliseconds, shortest first: 1 to 8 ms, then
/// 10, 12, 15, 18, 22, 27, 33, 40, 50, 60, 75, 90 times each power of ten up to 90,000,000,
/// then
/// [`MAX_DELAY`]: 92 steps, so a group has at most 92 retry queues.
pub(crate) fn delay_ladder() -> impl Iterator<Item = u64> {
    let small = [1, 2, 3, 4, 5, 6, 8].into_iter();
    let decades = (0..7u32).flat_map(|power| MANTISSAS.iter().map(move |m| m * 10u64.pow(power)));
    small
        .chain(decades)
        .chain(std::iter::once(max_delay_millis()))
}

fn max_delay_millis() -> u64 {
    u64::try_from(MAX_DELAY.as_millis()).unwrap_or(u64::MAX)
}

/// The step of the ladder a delay waits for: the shortest at least as long as `delay`
/// (rounded up to whole milliseconds), or [`MAX_DELAY`].
pub(crate) fn delay_step(delay: Duration) -> u64 {
    let millis = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    delay_ladder()
        .find(|&step| step >= millis)
        .unwrap_or_else(max_delay_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_letters_digits_dashes_and_underscores_are_accepted() {
        assert!(validate("topic", "orders-2_eu").is_ok());
        assert!(validate_namespace("cairn.test-1").is_ok());
    }

    #[test]
    fn empty_long_and_dotted_names_are_invalid() {
        for bad in ["", "a.b", "a b", "é", &"x".repeat(MAX_NAME + 1)] {
            match validate("topic", bad) {
                Err(TransportError::Invalid { what: "topic", .. }) => {}
                other => panic!("{bad:?}: expected Invalid, got {other:?}"),
            }
        }
        assert!(validate_namespace("a/b").is_err());
    }

    #[test]
    fn derived_names_join_the_parts_with_dots() {
        let queue = queue("cairn", "orders", "billing");
        assert_eq!(exchange("cairn", "orders"), "cairn.orders");
        assert_eq!(queue, "cairn.orders.billing");
        assert_eq!(dead(&queue), "cairn.orders.billing.dead");
        assert_eq!(delay(&queue, 1500), "cairn.orders.billing.delay.1500");
    }

    #[test]
    fn the_ladder_rises_by_at_most_a_quarter_per_step_after_ten_milliseconds() {
        let steps: Vec<u64> = delay_ladder().collect();
        assert_eq!(steps.len(), 92);
        assert!(steps.windows(2).all(|pair| pair[0] < pair[1]));
        for pair in steps.windows(2).filter(|pair| pair[0] >= 10) {
            assert!(pair[1] * 4 <= pair[0] * 5, "{pair:?}");
        }
    }

    #[test]
    fn a_delay_waits_for_the_first_step_not_shorter_than_itself() {
        assert_eq!(delay_step(Duration::from_secs(1)), 1_000);
        assert_eq!(delay_step(Duration::from_millis(1_001)), 1_200);
        assert_eq!(delay_step(Duration::from_micros(1)), 1);
        assert_eq!(delay_step(Duration::from_millis(7)), 8);
        assert_eq!(delay_step(Duration::from_secs(1_000_000)), 100_000_000);
    }
}

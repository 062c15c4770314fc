//! Disruption: when every connection drops, the streams resume by themselves and nothing
//! published is lost.

use std::collections::HashSet;
use std::time::Duration;

use cairn_bus::Publisher;
use futures::StreamExt;

use crate::failure::{Failure, ensure, fail, within};
use crate::settings::Settings;
use crate::transport::TransportFactory;
use crate::transport::support::{
    PATIENCE, ack, connect, messages, next_deliveries, number, publish, show, spec, subscribe,
    topic,
};

/// A consumer holding five unanswered deliveries, with more messages waiting, loses its
/// connection ([`TransportFactory::disrupt`]). Its stream goes on by itself; a publish
/// after the break succeeds (retried with the same ids while the transport reconnects);
/// and every message not acknowledged before the break arrives, the held ones as later
/// attempts. Answering the held deliveries afterwards does not hang. A message published
/// before the break and handed over before the transport noticed the break may have its
/// acknowledgement refused as stale, if it then comes again; acknowledging a message
/// published after the break must succeed.
///
/// Passes without checking when the factory cannot disrupt.
pub(crate) async fn resumes<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const BEFORE: usize = 20;
    const TOTAL: usize = 40;
    /// Error items the stream may report while it reconnects.
    const MAX_ERRORS: usize = 100;
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", 8);
    let connection = connect(factory, "the consumer and publisher").await?;
    let mut deliveries = subscribe(&connection, &spec, "the consumer").await?;
    publish(&connection, &topic, messages(0..BEFORE), "before the break").await?;

    let mut acknowledged = HashSet::new();
    for delivery in next_deliveries(&mut deliveries, 5, "before the break").await? {
        acknowledged.insert(number(&delivery.message));
        ack(delivery, "before the break").await?;
    }
    let held = next_deliveries(&mut deliveries, 5, "before the break").await?;
    let held_numbers: Vec<_> = held.iter().map(|d| number(&d.message)).collect();

    if !within(PATIENCE, "disrupt()", factory.disrupt()).await? {
        for delivery in held {
            ack(delivery, "the held deliveries (the factory cannot disrupt)").await?;
        }
        return Ok(());
    }

    publish_retrying(&connection, &topic, messages(BEFORE..TOTAL)).await?;

    let mut missing: HashSet<_> = (0..TOTAL)
        .map(Some)
        .filter(|n| !acknowledged.contains(n))
        .collect();
    let mut errors = Vec::new();
    while !missing.is_empty() {
        let item = match tokio::time::timeout(PATIENCE, deliveries.next()).await {
            Ok(item) => item,
            Err(_) => fail!(
                "{}: nothing came within {PATIENCE:?}",
                waiting(&missing, &held_numbers, &errors)
            ),
        };
        match item {
            Some(Ok(delivery)) => {
                let n = number(&delivery.message);
                if held_numbers.contains(&n) && missing.contains(&n) {
                    ensure!(
                        delivery.attempt >= 2,
                        "a delivery held unanswered across the break came back as {}, \
                         expected attempt 2 or later",
                        show(&delivery)
                    );
                }
                // A message published before the break may have been on its way to this
                // consumer when the connection dropped, and handed over before the
                // transport noticed: its answer may then be refused as stale, as long as
                // the message comes back. Messages published after the break may not.
                let in_flight_at_break = n.is_some_and(|n| n < BEFORE);
                if in_flight_at_break {
                    let shown = show(&delivery);
                    let answered = within(
                        PATIENCE,
                        format!("acknowledging {shown} after the break"),
                        delivery.ack(),
                    )
                    .await?;
                    if answered.is_ok() {
                        missing.remove(&n);
                    }
                } else {
                    missing.remove(&n);
                    ack(delivery, "after the break").await?;
                }
            }
            Some(Err(error)) => {
                errors.push(error.to_string());
                ensure!(
                    errors.len() <= MAX_ERRORS,
                    "{}: the stream keeps reporting errors instead of resuming",
                    waiting(&missing, &held_numbers, &errors)
                );
            }
            None => fail!(
                "{}: the stream ended instead of resuming",
                waiting(&missing, &held_numbers, &errors)
            ),
        }
    }
    for delivery in held {
        // Stale answers may fail or succeed; they must only not hang.
        let _ = within(
            PATIENCE,
            "answering a delivery from before the break",
            delivery.ack(),
        )
        .await?;
    }
    Ok(())
}

/// Publishes `messages`, trying again (same ids) while the transport reconnects.
async fn publish_retrying(
    publisher: &impl Publisher,
    topic: &str,
    messages: Vec<cairn_bus::Message>,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let attempt = publisher.publish(topic, messages.clone());
        match within(PATIENCE, "publishing after the break", attempt).await? {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() >= deadline => fail!(
                "publishing after the break: still failing after {PATIENCE:?} of retries: \
                 {error:?}"
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What the case is still waiting for, for a failure.
fn waiting(missing: &HashSet<Option<usize>>, held: &[Option<usize>], errors: &[String]) -> String {
    let mut missing: Vec<_> = missing.iter().copied().collect();
    missing.sort_unstable();
    format!(
        "after the break, still waiting for {} messages {missing:?} (the held ones were \
         {held:?}; stream errors so far: {errors:?})",
        missing.len()
    )
}

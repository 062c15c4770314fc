//! Answers: ack removes, nack gives back (at once or after its delay) with the attempt
//! counted, and the deliveries of a consumer whose connection closes go to another.

use std::time::Instant;

use cairn_bus::SubscriptionSpec;

use crate::failure::{Context, Failure, ensure, within};
use crate::settings::Settings;
use crate::transport::TransportFactory;
use crate::transport::support::{
    PATIENCE, ack, ack_all, connect, expect_quiet, message, messages, next_deliveries,
    next_delivery, number, publish, show, spec, subscribe, topic,
};

/// Acknowledged messages do not come back: not to the consumer, and not to a new consumer
/// of the group on a new connection, which gets the next message published instead.
pub(crate) async fn ack_removes<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", SubscriptionSpec::DEFAULT_PREFETCH);
    let first = connect(factory, "the first consumer").await?;
    let mut deliveries = subscribe(&first, &spec, "the first consumer").await?;
    publish(&first, &topic, messages(0..5), "five messages").await?;
    let received = next_deliveries(&mut deliveries, 5, "the first consumer").await?;
    ack_all(received, "the first consumer").await?;
    expect_quiet(
        &mut deliveries,
        "the first consumer, after acknowledging everything",
    )
    .await?;
    drop(deliveries);
    drop(first);

    let second = connect(factory, "a new consumer").await?;
    let mut deliveries = subscribe(&second, &spec, "a new consumer").await?;
    publish(&second, &topic, vec![message(5)], "a marker").await?;
    let next = next_delivery(&mut deliveries, "the new consumer").await?;
    ensure!(
        number(&next.message) == Some(5),
        "a new consumer of the group got {} before the marker #5 published after it \
         subscribed; messages 0 to 4 had been acknowledged and must not come back",
        show(&next)
    );
    ack(next, "the marker").await?;
    expect_quiet(&mut deliveries, "the new consumer, after the marker").await
}

/// `nack(None)` gives the message back at once: it comes again with `attempt` one higher,
/// each time, until it is acknowledged.
pub(crate) async fn nack_redelivers<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", SubscriptionSpec::DEFAULT_PREFETCH);
    let connection = connect(factory, "the consumer").await?;
    let mut deliveries = subscribe(&connection, &spec, "the consumer").await?;
    publish(&connection, &topic, vec![message(0)], "one message").await?;
    let mut delivery = next_delivery(&mut deliveries, "the first delivery").await?;
    let id = delivery.message.id;
    ensure!(
        delivery.attempt == 1,
        "the first delivery is {}, expected attempt 1",
        show(&delivery)
    );
    for attempt in 2..=3 {
        within(PATIENCE, "nack(None)", delivery.nack(None))
            .await?
            .context("nack(None)")?;
        delivery = next_delivery(
            &mut deliveries,
            &format!("the redelivery after nack {}", attempt - 1),
        )
        .await?;
        ensure!(
            delivery.message.id == id && delivery.attempt == attempt,
            "after nack number {} of message {id}, expected it again as attempt {attempt}, \
             got {}",
            attempt - 1,
            show(&delivery)
        );
    }
    ack(delivery, "the third attempt").await?;
    expect_quiet(&mut deliveries, "after the third attempt was acknowledged").await
}

/// `nack(Some(delay))` redelivers the message no sooner than `delay` after the nack, as
/// the next attempt; another message published meanwhile arrives too.
pub(crate) async fn nack_delay<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const DELAY: std::time::Duration = std::time::Duration::from_secs(1);
    /// Timer granularity the case forgives.
    const SLACK: std::time::Duration = std::time::Duration::from_millis(25);
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", SubscriptionSpec::DEFAULT_PREFETCH);
    let connection = connect(factory, "the consumer").await?;
    let mut deliveries = subscribe(&connection, &spec, "the consumer").await?;
    publish(&connection, &topic, vec![message(0)], "the delayed message").await?;
    let delivery = next_delivery(&mut deliveries, "the first delivery").await?;
    let id = delivery.message.id;
    let nacked = Instant::now();
    within(PATIENCE, "nack with a delay", delivery.nack(Some(DELAY)))
        .await?
        .context(format!("nack(Some({DELAY:?}))"))?;
    publish(&connection, &topic, vec![message(1)], "another message").await?;
    let mut others = 0;
    loop {
        let delivery = next_delivery(
            &mut deliveries,
            &format!("waiting for message {id}, nacked with a delay of {DELAY:?}"),
        )
        .await?;
        if delivery.message.id != id {
            ensure!(
                number(&delivery.message) == Some(1) && others == 0,
                "while message #0 waited out its delay, expected message #1 once, got {}",
                show(&delivery)
            );
            others += 1;
            ack(delivery, "the other message").await?;
            continue;
        }
        let after = nacked.elapsed();
        ensure!(
            after + SLACK >= DELAY,
            "message #0 was nacked with a delay of {DELAY:?} but came back after {after:?}"
        );
        ensure!(
            delivery.attempt == 2,
            "the redelivery after the delay is {}, expected attempt 2",
            show(&delivery)
        );
        ack(delivery, "the delayed message").await?;
        break;
    }
    if others == 0 {
        let delivery = next_delivery(&mut deliveries, "message #1").await?;
        ensure!(
            number(&delivery.message) == Some(1),
            "expected message #1, got {}",
            show(&delivery)
        );
        ack(delivery, "the other message").await?;
    }
    expect_quiet(&mut deliveries, "after both messages were acknowledged").await
}

/// A consumer whose connection closes while it holds a delivery unanswered (the delivery
/// itself is still held, as by a process that froze): another consumer of the group gets
/// the message, as a later attempt. Answering the dead consumer's delivery afterwards
/// neither hangs nor loses the message.
pub(crate) async fn dead_consumer<F: TransportFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let topic = topic(factory);
    let spec = spec(factory, &topic, "group", 8);
    let survivor = connect(factory, "the surviving consumer").await?;
    let dying = connect(factory, "the consumer that dies").await?;
    let mut doomed = subscribe(&dying, &spec, "the consumer that dies").await?;
    publish(&survivor, &topic, vec![message(0)], "one message").await?;
    let held = next_delivery(&mut doomed, "the consumer that dies").await?;
    let mut deliveries = subscribe(&survivor, &spec, "the surviving consumer").await?;
    drop(doomed);
    drop(dying);

    let again = next_delivery(
        &mut deliveries,
        "the surviving consumer, after the consumer holding the only message unanswered \
         closed its connection",
    )
    .await?;
    ensure!(
        again.message.id == held.message.id && again.attempt >= 2,
        "the surviving consumer should get the dead consumer's message {} as attempt 2 or \
         later, got {}",
        held.message.id,
        show(&again)
    );
    // The dead consumer's answer may fail or succeed; it must only not hang.
    let _ = within(
        PATIENCE,
        "acknowledging the dead consumer's delivery",
        held.ack(),
    )
    .await?;
    ack(again, "the redelivered message").await?;
    expect_quiet(
        &mut deliveries,
        "after the redelivered message was acknowledged",
    )
    .await
}

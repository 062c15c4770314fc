//! One subscription: the [`Deliveries`] stream over a group's queue, which opens its
//! consumer again after the connection dropped, and [`Answer`], how each delivery is
//! acknowledged.
//!
//! The stream polls the client's consumer directly: no task per subscription, none per
//! message. A delivery costs its decoded [`Message`] (behind an `Arc`) and one small box
//! for its answer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cairn_bus::{Acknowledge, Deliveries, Delivery, Message, SubscriptionSpec, TransportError};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::{Channel, Consumer};

use crate::connection::{Outstanding, Shared};
use crate::error::AmqpError;
use crate::{codec, names};

/// The state of one subscription's stream.
struct Subscription {
    shared: Arc<Shared>,
    prefetch: usize,
    topic: Arc<str>,
    exchange: String,
    queue: Arc<str>,
    outstanding: Arc<Outstanding>,
    /// The consumer and its channel, `None` while (re)connecting.
    current: Option<(Channel, Consumer)>,
    /// The wait before the next attempt to open the consumer, after a failure.
    retry_in: Option<Duration>,
    backoff: Duration,
}

/// Starts a subscription: opens its consumer (so that setup errors are the caller's) and
/// returns its stream.
pub(crate) async fn subscribe(
    shared: Arc<Shared>,
    spec: &SubscriptionSpec,
) -> Result<Deliveries, TransportError> {
    names::validate("topic", &spec.topic)?;
    names::validate("group", &spec.group)?;
    let namespace = &shared.options.namespace;
    let exchange = names::exchange(namespace, &spec.topic);
    let queue: Arc<str> = names::queue(namespace, &spec.topic, &spec.group).into();
    let current = shared
        .open_consumer(&exchange, &queue, spec.prefetch)
        .await?;
    let outstanding = shared.track(Arc::clone(&queue));
    let backoff = shared.options.reconnect_backoff.0;
    let subscription = Subscription {
        prefetch: spec.prefetch,
        topic: spec.topic.as_str().into(),
        exchange,
        queue,
        outstanding,
        current: Some(current),
        retry_in: None,
        backoff,
        shared,
    };
    Ok(Deliveries::new(futures::stream::unfold(
        subscription,
        |mut subscription| async move {
            let item = subscription.next().await?;
            Some((item, subscription))
        },
    )))
}

impl Subscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        loop {
            if self.shared.closed.is_cancelled() {
                return None;
            }
            let Some((_, consumer)) = self.current.as_mut() else {
                if let Some(wait) = self.retry_in.take() {
                    tokio::select! {
                        () = self.shared.closed.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                let opened = tokio::select! {
                    () = self.shared.closed.cancelled() => return None,
                    opened = self.shared.open_consumer(&self.exchange, &self.queue, self.prefetch) => opened,
                };
                match opened {
                    Ok(current) => {
                        tracing::debug!(queue = %self.queue, "the consumer is open again");
                        self.current = Some(current);
                        self.backoff = self.shared.options.reconnect_backoff.0;
                    }
                    Err(error) => {
                        self.retry_in = Some(self.backoff);
                        self.backoff =
                            (self.backoff * 2).min(self.shared.options.reconnect_backoff.1);
                        return Some(Err(error));
                    }
                }
                continue;
            };
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    let lapin::message::Delivery {
                        properties,
                        data,
                        redelivered,
                        acker,
                        ..
                    } = delivery;
                    if !acker.usable() {
                        // Taken from the client's buffer after its channel closed: the
                        // broker has given the message back, an answer would be lost.
                        continue;
                    }
                    match codec::decode(&properties, data, redelivered) {
                        Ok((message, attempt)) => {
                            return Some(Ok(self.deliver(message, attempt, acker)));
                        }
                        Err(reason) => {
                            tracing::warn!(queue = %self.queue, %reason, "a message that is not Cairn's goes to the dead-letter queue");
                            let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
                        }
                    }
                }
                Some(Err(error)) => {
                    self.current = None;
                    if self.shared.closed.is_cancelled() {
                        return None;
                    }
                    tracing::debug!(queue = %self.queue, %error, "the consumer broke; opening it again");
                    return Some(Err(TransportError::Broker {
                        operation: format!("consuming queue {:?}", self.queue),
                        source: Box::new(AmqpError::Client(
                            self.shared.endpoint.redact(&error.to_string()),
                        )),
                    }));
                }
                None => {
                    // The broker cancelled the consumer or the channel closed.
                    self.current = None;
                    self.retry_in = Some(self.backoff);
                }
            }
        }
    }

    fn deliver(&self, message: Message, attempt: u32, acker: lapin::Acker) -> Delivery {
        self.outstanding.count.fetch_add(1, Ordering::AcqRel);
        let message = Arc::new(message);
        let answer = Answer {
            acker,
            shared: Arc::downgrade(&self.shared),
            outstanding: Arc::clone(&self.outstanding),
            queue: Arc::clone(&self.queue),
            message: Arc::clone(&message),
            attempt,
            answered: false,
        };
        Delivery::new(Arc::clone(&self.topic), message, attempt, Box::new(answer))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.outstanding.ended.store(true, Ordering::Release);
        if let Some((channel, consumer)) = self.current.take() {
            // Cancel the consumer now; keep the channel while deliveries are out.
            drop(consumer);
            if self.outstanding.count.load(Ordering::Acquire) > 0 {
                self.shared.park(&self.outstanding, channel);
            }
        }
    }
}

/// How one delivery is answered.
///
/// It holds no strong reference to the transport: a delivery held after its transport
/// and streams were dropped does not keep the connection open, and answering it then
/// fails with [`AmqpError::StaleDelivery`] (the broker has given the message back).
struct Answer {
    acker: lapin::Acker,
    shared: Weak<Shared>,
    outstanding: Arc<Outstanding>,
    queue: Arc<str>,
    message: Arc<Message>,
    attempt: u32,
    answered: bool,
}

impl Answer {
    fn settle(&mut self) {
        if !self.answered {
            self.answered = true;
            self.outstanding.answered(&self.shared);
        }
    }

    fn outcome(
        &self,
        operation: &str,
        result: Result<bool, lapin::Error>,
    ) -> Result<(), TransportError> {
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(TransportError::Broker {
                operation: format!("{operation} of message {}", self.message.id),
                source: Box::new(AmqpError::StaleDelivery),
            }),
            Err(error) => Err(TransportError::Broker {
                operation: format!("{operation} of message {}", self.message.id),
                source: Box::new(AmqpError::Client(error.to_string())),
            }),
        }
    }

    async fn requeue(&self) -> Result<(), TransportError> {
        let result = self
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await;
        self.outcome("nack", result)
    }
}

impl Acknowledge for Answer {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async move {
            let result = self.acker.ack(BasicAckOptions::default()).await;
            self.settle();
            self.outcome("ack", result)
        })
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async move {
            let result = match delay.filter(|delay| *delay >= Duration::from_millis(1)) {
                None => self.requeue().await,
                Some(delay) => self.delay(delay).await,
            };
            self.settle();
            result
        })
    }
}

impl Answer {
    /// Republishes the message to the retry queue for `delay`, then acknowledges it; when
    /// the republish fails, gives it back at once instead.
    async fn delay(&self, delay: Duration) -> Result<(), TransportError> {
        let Some(shared) = self.shared.upgrade() else {
            return self.requeue().await.and(Err(TransportError::Closed));
        };
        let millis = names::delay_step(delay);
        match shared
            .publish_delayed(&self.queue, millis, &self.message, self.attempt)
            .await
        {
            Ok(()) => {
                let result = self.acker.ack(BasicAckOptions::default()).await;
                self.outcome("ack after the delay was set", result)
            }
            Err(error) => {
                let _ = self.requeue().await;
                Err(error)
            }
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.answered {
            self.settle();
            // Unanswered: give the message back at once. The client sends the nack when
            // the future is first polled, so polling it once is enough; its outcome is
            // not awaited.
            let _ = self
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .now_or_never();
        }
    }
}

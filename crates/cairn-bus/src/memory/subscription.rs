//! [`Subscription`]: the stream behind a memory [`Deliveries`](crate::Deliveries), and
//! [`MemoryAck`], the answer each of its deliveries carries.
//!
//! The stream takes up to a batch of messages from its group per lock into a local buffer
//! and hands them out one by one without locking; everything in the buffer already counts
//! against the subscription's prefetch.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::future::{self, BoxFuture};
use tokio::time::Sleep;
use uuid::Uuid;

use super::Connection;
use super::error::StaleDelivery;
use super::group::{Buffered, Group, Tag, Take};
use crate::transport::{Acknowledge, Delivery, TransportError};

/// One consumer of a group.
pub(super) struct Subscription {
    pub(super) group: Arc<Group>,
    pub(super) consumer: u64,
    pub(super) prefetch: usize,
    /// Keeps the connection open while the subscription lives.
    pub(super) connection: Arc<Connection>,
    pub(super) buffer: VecDeque<Buffered>,
    /// The group's epoch when the buffer was filled; a different epoch means a sever took
    /// the buffered deliveries back.
    pub(super) buffer_epoch: u64,
    /// Wakes the stream when the earliest delayed message is due; made on first need.
    pub(super) timer: Option<Pin<Box<Sleep>>>,
}

impl Subscription {
    fn deliver(&self, buffered: Buffered) -> Delivery {
        let ack = MemoryAck {
            group: Arc::clone(&self.group),
            tag: buffered.tag,
            id: buffered.message.id,
            answered: false,
        };
        Delivery::new(
            Arc::clone(&self.group.topic),
            buffered.message,
            buffered.attempt,
            Box::new(ack),
        )
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery, TransportError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if !this.buffer.is_empty() {
                if this.group.epoch() == this.buffer_epoch {
                    if let Some(buffered) = this.buffer.pop_front() {
                        return Poll::Ready(Some(Ok(this.deliver(buffered))));
                    }
                } else {
                    // A sever took these back; they are queued again.
                    this.buffer.clear();
                }
            }
            match this.group.take(
                this.consumer,
                this.connection.id,
                this.prefetch,
                &mut this.buffer,
                cx.waker(),
            ) {
                Take::Took { epoch } => this.buffer_epoch = epoch,
                Take::NoCredit | Take::Empty { next_due: None } => return Poll::Pending,
                Take::Empty {
                    next_due: Some(due),
                } => {
                    let timer = match &mut this.timer {
                        Some(timer) => {
                            timer.as_mut().reset(due);
                            timer
                        }
                        None => this.timer.insert(Box::pin(tokio::time::sleep_until(due))),
                    };
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Tags a sever already took back are stale and skipped.
        let tags: Vec<Tag> = self.buffer.drain(..).map(|b| b.tag).collect();
        self.group.remove_consumer(self.consumer, tags.into_iter());
    }
}

/// The answer of one memory delivery. Dropped unanswered, it gives the message back for
/// immediate redelivery.
#[derive(Debug)]
pub(super) struct MemoryAck {
    group: Arc<Group>,
    tag: Tag,
    id: Uuid,
    answered: bool,
}

impl MemoryAck {
    /// Acks, once.
    fn answer_now(&mut self) -> Result<(), TransportError> {
        self.answered = true;
        self.group.ack(self.tag).map_err(|()| self.stale())
    }

    fn stale(&self) -> TransportError {
        TransportError::Broker {
            operation: "answering a delivery".to_owned(),
            source: Box::new(StaleDelivery {
                topic: self.group.topic.to_string(),
                id: self.id,
            }),
        }
    }
}

impl Acknowledge for MemoryAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let result = self.answer_now();
        Box::pin(future::ready(result))
    }

    fn ack_now(&mut self) -> Option<Result<(), TransportError>> {
        if self.answered {
            return None;
        }
        Some(self.answer_now())
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.answered = true;
        let result = self.group.nack(self.tag, delay).map_err(|()| self.stale());
        Box::pin(future::ready(result))
    }
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        if !self.answered {
            // Already taken back when stale: nothing to do either way.
            let _ = self.group.nack(self.tag, None);
        }
    }
}

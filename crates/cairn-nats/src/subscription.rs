//! One subscription: a task that pulls messages from the group's durable consumer into
//! the subscription's [`Deliveries`], never more than the prefetch ahead of the answers,
//! and the answer each delivery carries back to the server.
//!
//! # Flow
//!
//! The task owns an inbox subscription and sends pull requests
//! (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<group>`) for as many messages as the prefetch
//! leaves room for: `prefetch − outstanding − requested`, where *outstanding* counts
//! deliveries handed out and not answered and *requested* the messages asked for and not
//! yet received. A new request goes out when nothing is requested, or when the room is at
//! least a quarter of the prefetch, so a fast consumer keeps a few requests in flight
//! without sending one per message. Each request expires at the server after
//! [`NatsOptions::pull_expiry`](crate::NatsOptions::pull_expiry); its `408` status gives
//! back what it did not deliver and the task asks again.
//!
//! When the client reconnects, requests the server held may be gone: the task forgets
//! them and asks again. Should an old request survive after all, the extra messages wait
//! in a backlog until the prefetch has room, so a consumer never holds more than its
//! prefetch.
//!
//! # Answers
//!
//! `ack` sends `+ACK`, `nack(None)` `-NAK`, `nack(Some(d))` `-NAK {"delay": d}` to the
//! delivery's reply subject. With [`NatsOptions::confirm_answers`] (the default) an answer
//! returns `Ok` only once the server confirmed it, and answers share confirmations: while
//! one round is on its way the answers given meanwhile gather, and the next round sends
//! them in order, the last one as a request. The server handles a connection's messages in
//! order and a consumer's answers one after another, so its reply to the last answer of a
//! round confirms the whole round; a busy subscription thus waits for one reply per round
//! trip instead of one per message. A round during which the client connected again
//! confirms nothing it wrote before: its earlier answers fail (their messages may come
//! again, which the inbox makes harmless). Without `confirm_answers` every answer is sent
//! as it is and `Ok` means it was handed to the connection.
//!
//! A delivery dropped unanswered sends `-NAK` on its own. A delivery keeps only a weak
//! link to the connection: once the transport and its streams are gone, answering returns
//! [`TransportError::Closed`] and the server redelivers the message after `ack_wait`.
//!
//! [`NatsOptions::confirm_answers`]: crate::NatsOptions::confirm_answers

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::{StatusCode, Subject};
use bytes::Bytes;
use cairn_bus::{Acknowledge, Deliveries, Delivery, SubscriptionSpec, TransportError};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::transport::Shared;
use crate::{codec, error, names};

/// How long after a pull request's expiry the task stops waiting for its `408`.
const PULL_GRACE: Duration = Duration::from_secs(2);
/// The pause after the server could not take a pull request.
const ERROR_PAUSE: Duration = Duration::from_millis(250);
/// The pause between attempts to create a deleted consumer again.
const RECOVERY_PAUSE: Duration = Duration::from_secs(1);
/// Room in the channel for error items beside the deliveries.
const ERROR_SLOTS: usize = 8;

/// Creates what `spec` needs on the server and starts the subscription's task.
pub(crate) async fn open(
    shared: Arc<Shared>,
    spec: &SubscriptionSpec,
) -> Result<Deliveries, TransportError> {
    names::check("topic", &spec.topic)?;
    names::check("group", &spec.group)?;
    if shared.shutdown.is_cancelled() {
        return Err(TransportError::Closed);
    }
    let stream = names::stream(&shared.options.namespace, &spec.topic);
    shared.ensure_stream(&spec.topic).await?;
    ensure_consumer(&shared, &stream, &spec.group).await?;
    let inbox = Subject::from(shared.client.new_inbox());
    let messages = shared
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|cause| TransportError::Broker {
            operation: format!("subscribing to the inbox of group {}", spec.group),
            source: Box::new(cause),
        })?;
    let prefetch = spec.prefetch.max(1);
    let (out, feed) = mpsc::channel(prefetch + ERROR_SLOTS);
    let cancel = shared.shutdown.child_token();
    let puller = Puller {
        next: Subject::from(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{}", spec.group)),
        topic: Arc::from(spec.topic.as_str()),
        spec: spec.clone(),
        stream,
        inbox,
        messages,
        flow: Arc::new(Flow {
            prefetch,
            outstanding: AtomicUsize::new(0),
            room: Notify::new(),
            answers: Mutex::default(),
        }),
        out,
        cancel: cancel.clone(),
        reconnects: shared.reconnects.clone(),
        requested: 0,
        pulls_end: None,
        paused_until: None,
        lost_consumer: false,
        backlog: VecDeque::new(),
        shared: Arc::clone(&shared),
    };
    shared.tasks.spawn(puller.run());
    Ok(Deliveries::new(Feed {
        feed,
        _stop: cancel.drop_guard(),
    }))
}

/// Creates the group's durable pull consumer on `stream` unless it exists.
async fn ensure_consumer(shared: &Shared, stream: &str, group: &str) -> Result<(), TransportError> {
    let options = &shared.options;
    let timeout = options.request_timeout;
    let handle = shared
        .jetstream
        .get_stream_no_info(stream)
        .await
        .map_err(|cause| error::request(format!("finding the stream {stream}"), timeout, cause))?;
    let config = pull::Config {
        durable_name: Some(group.to_owned()),
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_deliver: options.max_deliver.unwrap_or(-1),
        max_ack_pending: options.max_ack_pending,
        max_waiting: 512,
        ..Default::default()
    };
    handle
        .get_or_create_consumer::<pull::Config>(group, config)
        .await
        .map_err(|cause| {
            error::request(
                format!("creating the consumer {group} on {stream}"),
                timeout,
                cause,
            )
        })?;
    Ok(())
}

/// The subscription's [`Deliveries`]: the task's channel, and the guard that stops the
/// task when the stream is dropped.
struct Feed {
    feed: mpsc::Receiver<Result<Delivery, TransportError>>,
    _stop: DropGuard,
}

impl Stream for Feed {
    type Item = Result<Delivery, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.feed.poll_recv(cx)
    }
}

/// The prefetch bound, shared by the task (which takes room) and the answers (which give
/// it back), and the answers on their way to the server.
struct Flow {
    prefetch: usize,
    /// Deliveries handed out and not answered: incremented only by the task, decremented
    /// by answers.
    outstanding: AtomicUsize,
    /// Notified by every answer; the task waits on it for room.
    room: Notify,
    /// Confirmed answers waiting to be sent: pushed by answers, taken by the task that
    /// sends them ([`send_answers`]).
    answers: Mutex<AnswerQueue>,
}

impl Flow {
    fn free(&self) -> usize {
        self.prefetch
            .saturating_sub(self.outstanding.load(Ordering::Acquire))
    }

    /// Takes room for one delivery, when there is some.
    fn try_take(&self) -> bool {
        if self.free() == 0 {
            return false;
        }
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        true
    }

    fn release(&self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.room.notify_one();
    }
}

/// The task behind one subscription.
struct Puller {
    shared: Arc<Shared>,
    spec: SubscriptionSpec,
    topic: Arc<str>,
    stream: String,
    /// Where pull requests go.
    next: Subject,
    /// Where the server sends the messages and statuses.
    inbox: Subject,
    messages: async_nats::Subscriber,
    flow: Arc<Flow>,
    out: mpsc::Sender<Result<Delivery, TransportError>>,
    cancel: CancellationToken,
    reconnects: tokio::sync::watch::Receiver<u64>,
    /// Messages asked for and not yet received (an estimate the server's statuses
    /// correct).
    requested: usize,
    /// When every pull request sent so far has surely ended.
    pulls_end: Option<Instant>,
    /// No pull requests before this.
    paused_until: Option<Instant>,
    /// The consumer was deleted under the subscription; it is being created again.
    lost_consumer: bool,
    /// Messages received while the prefetch had no room (only after a reconnect).
    backlog: VecDeque<async_nats::Message>,
}

impl Puller {
    async fn run(mut self) {
        loop {
            self.hand_out_backlog();
            let now = Instant::now();
            if self.paused_until.is_some_and(|until| until <= now) {
                self.paused_until = None;
            }
            if self.paused_until.is_none() {
                if self.lost_consumer {
                    self.recover().await;
                } else {
                    self.pull().await;
                }
            }
            let timer = match (self.pulls_end, self.paused_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                () = self.out.closed() => break,
                changed = self.reconnects.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Requests the server held may be gone with the old connection.
                    self.requested = 0;
                    self.pulls_end = None;
                    self.paused_until = None;
                }
                message = self.messages.next() => match message {
                    Some(message) => self.receive(message),
                    None => break,
                },
                () = self.flow.room.notified() => {}
                () = sleep_until(timer), if timer.is_some() => {
                    if self.pulls_end.is_some_and(|end| end <= Instant::now()) {
                        self.requested = 0;
                        self.pulls_end = None;
                    }
                }
            }
        }
        // Messages taken but not handed out go back at once.
        for message in self.backlog.drain(..) {
            if let Some(reply) = message.reply {
                let _ = self
                    .shared
                    .client
                    .publish(reply, Bytes::from_static(b"-NAK"))
                    .await;
            }
        }
    }

    /// Sends a pull request for the room the prefetch leaves, when it is worth one.
    async fn pull(&mut self) {
        let room = self
            .flow
            .free()
            .saturating_sub(self.backlog.len())
            .saturating_sub(self.requested);
        let threshold = (self.flow.prefetch / 4).max(1);
        if room == 0 || (self.requested > 0 && room < threshold) {
            return;
        }
        let expiry = self.shared.options.pull_expiry;
        let request = format!("{{\"batch\":{room},\"expires\":{}}}", expiry.as_nanos());
        match self
            .shared
            .client
            .publish_with_reply(self.next.clone(), self.inbox.clone(), request.into())
            .await
        {
            Ok(()) => {
                self.requested += room;
                self.pulls_end = Some(Instant::now() + expiry + PULL_GRACE);
            }
            Err(cause) => {
                self.report(TransportError::Broker {
                    operation: format!("pulling messages for group {}", self.spec.group),
                    source: Box::new(cause),
                });
                self.pause(ERROR_PAUSE);
            }
        }
    }

    /// Handles one message or status from the server.
    fn receive(&mut self, message: async_nats::Message) {
        match message.status {
            None | Some(StatusCode::OK) => {
                self.requested = self.requested.saturating_sub(1);
                if self.backlog.is_empty() && self.flow.try_take() {
                    self.deliver(message);
                } else {
                    self.backlog.push_back(message);
                }
            }
            Some(StatusCode::IDLE_HEARTBEAT) => {}
            Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED) => {
                let left = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("Nats-Pending-Messages"))
                    .and_then(|value| value.as_str().parse::<usize>().ok());
                self.requested = match left {
                    Some(left) => self.requested.saturating_sub(left),
                    None => 0,
                };
                let description = message.description.as_deref().unwrap_or_default();
                if description.eq_ignore_ascii_case("consumer deleted") {
                    self.report(TransportError::Broker {
                        operation: format!("consuming as group {}", self.spec.group),
                        source: format!(
                            "the consumer {} on {} was deleted; creating it again",
                            self.spec.group, self.stream
                        )
                        .into(),
                    });
                    self.lost_consumer = true;
                    self.requested = 0;
                } else if message.status == Some(StatusCode::REQUEST_TERMINATED) && left.is_none() {
                    tracing::debug!(description, "pull request refused; asking again shortly");
                    self.pause(ERROR_PAUSE);
                }
            }
            Some(status) => {
                tracing::debug!(%status, description = ?message.description, "pull request ended");
                self.requested = 0;
                self.pause(ERROR_PAUSE);
            }
        }
        if self.requested == 0 {
            self.pulls_end = None;
        }
    }

    /// Hands out backlogged messages while the prefetch has room.
    fn hand_out_backlog(&mut self) {
        while !self.backlog.is_empty() && self.flow.try_take() {
            if let Some(message) = self.backlog.pop_front() {
                self.deliver(message);
            }
        }
    }

    /// Hands out `message`, for which room was taken.
    fn deliver(&mut self, message: async_nats::Message) {
        let Some((reply, attempt, sequence)) = message
            .reply
            .and_then(|reply| ack_info(&reply).map(|(attempt, seq)| (reply, attempt, seq)))
        else {
            tracing::warn!(subject = %message.subject, "a message without a JetStream reply subject; skipped");
            self.flow.release();
            return;
        };
        let decoded = codec::decode(
            message.headers.as_ref(),
            message.payload,
            &self.stream,
            sequence,
        );
        let answer = Answer {
            reply: Some(reply),
            shared: Arc::downgrade(&self.shared),
            flow: Arc::clone(&self.flow),
        };
        let delivery = Delivery::new(
            Arc::clone(&self.topic),
            decoded,
            u32::try_from(attempt).unwrap_or(u32::MAX),
            Box::new(answer),
        );
        // The channel holds the prefetch and some: a full channel means its reader is gone,
        // and the delivery, dropped, gives itself back.
        let _ = self.out.try_send(Ok(delivery));
    }

    /// Creates the stream and consumer again after the consumer was deleted.
    async fn recover(&mut self) {
        self.shared.forget_stream(&self.spec.topic);
        let result = match self.shared.ensure_stream(&self.spec.topic).await {
            Ok(()) => ensure_consumer(&self.shared, &self.stream, &self.spec.group).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => {
                self.lost_consumer = false;
                self.requested = 0;
                self.pulls_end = None;
            }
            Err(error) => {
                self.report(error);
                self.pause(RECOVERY_PAUSE);
            }
        }
    }

    fn pause(&mut self, pause: Duration) {
        self.paused_until = Some(Instant::now() + pause);
    }

    /// Reports a problem on the stream, unless its reader is not keeping up.
    fn report(&self, error: TransportError) {
        tracing::warn!(%error, topic = %self.topic, group = %self.spec.group, "subscription problem");
        let _ = self.out.try_send(Err(error));
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The delivery count and stream sequence in a JetStream reply subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or the same with `<domain>.<account hash>` before the stream and a token after.
fn ack_info(reply: &str) -> Option<(u64, u64)> {
    // The first six tokens and how many there are, without collecting them.
    let mut tokens = [""; 6];
    let mut count = 0;
    for token in reply.strip_prefix("$JS.ACK.")?.split('.') {
        if let Some(slot) = tokens.get_mut(count) {
            *slot = token;
        }
        count += 1;
    }
    let (delivered, sequence) = match count {
        7 => (tokens.get(2)?, tokens.get(3)?),
        n if n >= 9 => (tokens.get(4)?, tokens.get(5)?),
        _ => return None,
    };
    Some((delivered.parse().ok()?, sequence.parse().ok()?))
}

/// How one delivery is answered.
struct Answer {
    /// The delivery's reply subject; taken by the first answer.
    reply: Option<Subject>,
    shared: Weak<Shared>,
    flow: Arc<Flow>,
}

impl Answer {
    fn send(
        mut self,
        body: Bytes,
        what: &'static str,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let reply = self.reply.take();
        self.flow.release();
        let flow = Arc::clone(&self.flow);
        let weak = self.shared.clone();
        Box::pin(async move {
            let (Some(reply), Some(shared)) = (reply, weak.upgrade()) else {
                return Err(TransportError::Closed);
            };
            if !shared.options.confirm_answers {
                let timeout = shared.options.request_timeout;
                return shared
                    .client
                    .publish(reply, body)
                    .await
                    .map_err(|cause| error::request(what, timeout, cause));
            }
            let (done, confirmed) = oneshot::channel();
            let lead = {
                let mut queue = flow.answers.lock().unwrap_or_else(PoisonError::into_inner);
                queue.waiting.push(Waiting {
                    reply,
                    body,
                    what,
                    done,
                });
                !std::mem::replace(&mut queue.sending, true)
            };
            if lead {
                // A task of its own, so that a caller dropping its future cannot strand
                // the answers gathered behind it; `close` waits for it.
                shared.tasks.spawn(send_answers(flow, weak));
            }
            drop(shared);
            confirmed.await.unwrap_or(Err(TransportError::Closed))
        })
    }
}

/// Answers gathered for one confirmation, in the order they were given.
#[derive(Default)]
struct AnswerQueue {
    waiting: Vec<Waiting>,
    /// Whether a task is sending; it takes `waiting` until it finds it empty.
    sending: bool,
}

/// One answer waiting to be sent and confirmed.
struct Waiting {
    reply: Subject,
    body: Bytes,
    what: &'static str,
    done: oneshot::Sender<Result<(), TransportError>>,
}

/// Sends the gathered answers until none are left: each round sends every answer but the
/// last as it is and the last as a request, whose reply confirms the whole round. The
/// server takes a connection's messages in order and handles a consumer's answers one
/// after another, so the reply to the last answer comes after it handled the earlier ones
/// of the round. A round during which the client connected again proves nothing about the
/// answers written to the old connection: they fail (the messages may come again).
async fn send_answers(flow: Arc<Flow>, shared: Weak<Shared>) {
    loop {
        let mut round = {
            let mut queue = flow.answers.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.waiting.is_empty() {
                queue.sending = false;
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        let Some(shared) = shared.upgrade() else {
            for waiting in round {
                let _ = waiting.done.send(Err(TransportError::Closed));
            }
            continue;
        };
        let Some(last) = round.pop() else { continue };
        let client = &shared.client;
        let timeout = shared.options.request_timeout;
        let statistics = client.statistics();
        let connects = statistics.connects.load(Ordering::Acquire);
        let mut sent = Vec::with_capacity(round.len());
        for waiting in round {
            match client.publish(waiting.reply, waiting.body).await {
                Ok(()) => sent.push((waiting.what, waiting.done)),
                Err(cause) => {
                    let _ = waiting
                        .done
                        .send(Err(error::request(waiting.what, timeout, cause)));
                }
            }
        }
        let what = last.what;
        let confirmed =
            match tokio::time::timeout(timeout, client.request(last.reply, last.body)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(cause)) => Err(error::request(what, timeout, cause)),
                Err(_) => Err(TransportError::Timeout {
                    operation: what.to_owned(),
                    after: timeout,
                }),
            };
        let reconnected = statistics.connects.load(Ordering::Acquire) != connects;
        for (what, done) in sent {
            let outcome = match &confirmed {
                Ok(()) if !reconnected => Ok(()),
                Ok(()) => Err(TransportError::Broker {
                    operation: what.to_owned(),
                    source: "the connection was made anew before the server confirmed \
                             the answer; the message may be delivered again"
                        .into(),
                }),
                Err(failed) => Err(TransportError::Broker {
                    operation: what.to_owned(),
                    source: format!("the server did not confirm its round of answers: {failed}")
                        .into(),
                }),
            };
            let _ = done.send(outcome);
        }
        let _ = last.done.send(confirmed);
    }
}

impl Acknowledge for Answer {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        (*self).send(Bytes::from_static(b"+ACK"), "acknowledging a delivery")
    }

    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let body = match delay {
            Some(delay) if !delay.is_zero() => {
                Bytes::from(format!("-NAK {{\"delay\":{}}}", delay.as_nanos()))
            }
            _ => Bytes::from_static(b"-NAK"),
        };
        (*self).send(body, "giving a delivery back")
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        self.flow.release();
        // Unanswered: give it back now rather than after `ack_wait`, when a runtime is
        // there to send it.
        if let (Some(shared), Ok(runtime)) =
            (self.shared.upgrade(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = shared
                    .client
                    .publish(reply, Bytes::from_static(b"-NAK"))
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_and_sequence_come_from_either_reply_subject_form() {
        assert_eq!(
            ack_info("$JS.ACK.orders.ledger.3.42.40.1700000000000000000.5"),
            Some((3, 42))
        );
        assert_eq!(
            ack_info("$JS.ACK.hub.acc.orders.ledger.2.7.7.1700000000000000000.0.tok"),
            Some((2, 7))
        );
        assert_eq!(ack_info("_INBOX.x"), None);
        assert_eq!(ack_info("$JS.ACK.a.b.c"), None);
    }

    #[test]
    fn flow_hands_out_no_more_than_the_prefetch() {
        let flow = Flow {
            prefetch: 2,
            outstanding: AtomicUsize::new(0),
            room: Notify::new(),
            answers: Mutex::default(),
        };
        assert!(flow.try_take());
        assert!(flow.try_take());
        assert!(!flow.try_take());
        flow.release();
        assert_eq!(flow.free(), 1);
        assert!(flow.try_take());
    }
}

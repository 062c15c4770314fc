//! [`Consumer`]: drives one subscription's deliveries through a service stack (the
//! [`Router`](crate::router::Router) wrapped in middleware) and answers each delivery with
//! the outcome: ack after `Ok`, nack after an error.
//!
//! The consumer calls the service in delivery order, one `call` after another, and keeps up
//! to [`ConsumerOptions::max_in_flight`] calls running at once; it does not spawn a task
//! per message. A service that is not ready (the ordered-concurrency middleware at its
//! limit, say) stops intake until it is. Deliveries already waiting in the stream are
//! started in one go, up to 64 per turn of the loop, before the consumer looks at
//! cancellation and finished calls again; a call that finishes on its first poll is
//! answered at once (without a future, when the transport can ack without waiting).
//!
//! # Shutdown
//!
//! [`Consumer::run`] takes a `CancellationToken`. When it is cancelled the consumer stops
//! taking deliveries, lets the calls in flight finish for up to
//! [`ConsumerOptions::shutdown_deadline`], answers them, nacks (without delay) the ones
//! that did not finish in time, waits for every answer and returns a [`ConsumerSummary`].
//! Nothing that was acknowledged is left unfinished, and nothing unfinished is
//! acknowledged.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::handler::{HandlerError, Incoming};
use crate::metrics::BusMetrics;
use crate::transport::{
    Acknowledge, Deliveries, Delivery, Subscriber, SubscriptionSpec, TransportError,
};

/// How a [`Consumer`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// The most calls running at once (default 256).
    pub max_in_flight: usize,
    /// How long calls in flight may take to finish after shutdown begins (default 30 s).
    pub shutdown_deadline: Duration,
    /// The delay of the nack after a handler error (default 1 s; `None` redelivers at
    /// once). With the dead-letter middleware in the stack errors do not reach the consumer.
    pub redelivery_delay: Option<Duration>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            shutdown_deadline: Duration::from_secs(30),
            redelivery_delay: Some(Duration::from_secs(1)),
        }
    }
}

/// What one run of a [`Consumer`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerSummary {
    /// Deliveries handled and acknowledged.
    pub handled: u64,
    /// Deliveries whose handling failed, nacked for redelivery.
    pub failed: u64,
    /// Deliveries still running when the shutdown deadline passed, nacked.
    pub abandoned: u64,
    /// Acks or nacks the transport reported as failed (the messages come back).
    pub answer_errors: u64,
    /// Errors the delivery stream reported (the transport kept going).
    pub transport_errors: u64,
}

/// Why a consumer stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The service reported it can take no more messages; the messages in flight were
    /// nacked.
    #[error("the handler service failed: {source}")]
    Service {
        /// Its error.
        #[source]
        source: HandlerError,
        /// What the run did before.
        summary: ConsumerSummary,
    },
}

/// Runs a service stack over a subscription's deliveries.
pub struct Consumer<S> {
    service: S,
    options: ConsumerOptions,
    lag: Option<LagProbe>,
}

/// Samples a subscription's consumer lag into the metrics.
struct LagProbe {
    subscriber: Arc<dyn Subscriber>,
    spec: SubscriptionSpec,
    metrics: BusMetrics,
    every: Duration,
}

impl LagProbe {
    fn sample(&self) -> BoxFuture<'static, ()> {
        let subscriber = Arc::clone(&self.subscriber);
        let spec = self.spec.clone();
        let metrics = self.metrics.clone();
        async move {
            match subscriber.lag(&spec).await {
                Ok(lag) => metrics.set_lag(&spec.topic, &spec.group, lag),
                Err(error) => {
                    tracing::debug!(%error, topic = %spec.topic, "the consumer lag could not be read");
                }
            }
        }
        .boxed()
    }
}

impl<S> std::fmt::Debug for Consumer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("options", &self.options)
            .field("lag", &self.lag.as_ref().map(|l| (&l.spec, l.every)))
            .finish_non_exhaustive()
    }
}

impl<S> Consumer<S>
where
    S: Service<Incoming, Response = (), Error = HandlerError> + Send,
    S::Future: Send + 'static,
{
    /// A consumer running `service` with the default options.
    pub fn new(service: S) -> Self {
        Self {
            service,
            options: ConsumerOptions::default(),
            lag: None,
        }
    }

    /// Samples the consumer lag of `spec` from `subscriber` every `every` while running,
    /// into `metrics` (where the transport can tell it; see [`Subscriber::lag`]).
    #[must_use]
    pub fn sample_lag(
        mut self,
        subscriber: Arc<dyn Subscriber>,
        spec: SubscriptionSpec,
        metrics: BusMetrics,
        every: Duration,
    ) -> Self {
        self.lag = Some(LagProbe {
            subscriber,
            spec,
            metrics,
            every,
        });
        self
    }

    /// Sets the options.
    #[must_use]
    pub fn options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// Consumes `deliveries` until the stream ends or `cancel` is cancelled, then shuts
    /// down as the [module docs](self) say.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Service`] when the service's `poll_ready` fails.
    pub async fn run(
        mut self,
        mut deliveries: Deliveries,
        cancel: CancellationToken,
    ) -> Result<ConsumerSummary, ConsumerError> {
        let max_in_flight = self.options.max_in_flight.max(1);
        let mut run = Run::<S::Future>::new(self.options.redelivery_delay);
        let mut ready = false;
        let mut ended = false;
        let mut failure = None;
        let lag_every = self
            .lag
            .as_ref()
            .map_or(Duration::from_secs(3_600), |l| l.every);
        let mut lag_tick = tokio::time::interval(lag_every.max(Duration::from_millis(10)));
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sampling: Option<BoxFuture<'static, ()>> = None;
        // Made once: a cancellation future made afresh for every turn of the loop would
        // register with the token and deregister again for every message.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            if ended && run.running.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                () = &mut cancelled => break,
                _ = lag_tick.tick(), if self.lag.is_some() && sampling.is_none() => {
                    sampling = self.lag.as_ref().map(LagProbe::sample);
                }
                () = async {
                    match sampling.as_mut() {
                        Some(sample) => sample.await,
                        None => std::future::pending().await,
                    }
                }, if sampling.is_some() => {
                    sampling = None;
                }
                Some((slot, outcome)) = run.running.next(), if !run.running.is_empty() => {
                    run.finish(slot, outcome);
                }
                Some(answered) = run.answers.next(), if !run.answers.is_empty() => {
                    run.answered(answered);
                }
                polled = poll_fn(|cx| self.service.poll_ready(cx)), if !ready && !ended => {
                    match polled {
                        Ok(()) => ready = true,
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
                next = deliveries.next(), if ready && !ended && run.running.len() < max_in_flight => {
                    match next {
                        None => ended = true,
                        Some(Err(error)) => {
                            tracing::warn!(%error, code = error.code(), "the delivery stream reported an error");
                            run.summary.transport_errors += 1;
                        }
                        Some(Ok(delivery)) => {
                            ready = false;
                            let service = &mut self.service;
                            let mut delivery = Some(delivery);
                            let intake = poll_fn(|cx| {
                                if let Some(delivery) = delivery.take() {
                                    run.start(cx, service, delivery);
                                }
                                Poll::Ready(intake(cx, service, &mut deliveries, &mut run, max_in_flight))
                            })
                            .await;
                            match intake {
                                Intake::Waiting => {}
                                Intake::Ready => ready = true,
                                Intake::Ended => ended = true,
                                Intake::Failed(error) => {
                                    failure = Some(error);
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        run.shut_down(self.options.shutdown_deadline).await;
        drop(deliveries);
        match failure {
            None => Ok(run.summary),
            Some(source) => Err(ConsumerError::Service {
                source,
                summary: run.summary,
            }),
        }
    }
}

/// How many deliveries one turn of the consumer's loop starts at most before it looks at
/// cancellation, finished calls and answers again.
const INTAKE_BATCH: usize = 64;

/// Where [`intake`] stopped.
enum Intake {
    /// The service is not ready (or `max_in_flight` calls run, or the batch is done).
    Waiting,
    /// The service is ready; no delivery is there yet.
    Ready,
    /// The delivery stream ended.
    Ended,
    /// The service's readiness failed.
    Failed(HandlerError),
}

/// Starts the calls of the deliveries already waiting in the stream, up to
/// [`INTAKE_BATCH`], while the service is ready and fewer than `max_in_flight` calls run,
/// in delivery order; `cx` is registered wherever it stops.
fn intake<S>(
    cx: &mut Context<'_>,
    service: &mut S,
    deliveries: &mut Deliveries,
    run: &mut Run<S::Future>,
    max_in_flight: usize,
) -> Intake
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
    S::Future: Send + 'static,
{
    for _ in 0..INTAKE_BATCH {
        if run.running.len() >= max_in_flight {
            return Intake::Waiting;
        }
        match service.poll_ready(cx) {
            Poll::Pending => return Intake::Waiting,
            Poll::Ready(Err(error)) => return Intake::Failed(error),
            Poll::Ready(Ok(())) => {}
        }
        match deliveries.poll_next_unpin(cx) {
            Poll::Pending => return Intake::Ready,
            Poll::Ready(None) => return Intake::Ended,
            Poll::Ready(Some(Err(error))) => {
                tracing::warn!(%error, code = error.code(), "the delivery stream reported an error");
                run.summary.transport_errors += 1;
            }
            Poll::Ready(Some(Ok(delivery))) => run.start(cx, service, delivery),
        }
    }
    Intake::Waiting
}

type Answer = BoxFuture<'static, Result<(), TransportError>>;

/// A call still running after its first poll, in the box it was first polled in, with the
/// slot of its answer.
struct Running<F> {
    slot: usize,
    call: Pin<Box<Option<F>>>,
}

impl<F> Future for Running<F>
where
    F: Future<Output = Result<(), HandlerError>>,
{
    type Output = (usize, Result<(), HandlerError>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.call.as_mut().as_pin_mut() {
            Some(call) => call.poll(cx).map(|outcome| (this.slot, outcome)),
            // A running call always holds its future.
            None => Poll::Pending,
        }
    }
}

/// The state of one run: the deliveries in flight, their calls and pending answers.
struct Run<F> {
    /// The answers of the deliveries in flight, by slot; `None` marks a free slot.
    slots: Vec<Option<Box<dyn Acknowledge>>>,
    free: Vec<usize>,
    /// Where each call is first polled; a call that finishes there leaves it for the next,
    /// so a call that finishes at once allocates nothing. One that does not moves on to
    /// `running` in it, and a new one is made.
    nursery: Pin<Box<Option<F>>>,
    running: FuturesUnordered<Running<F>>,
    answers: FuturesUnordered<Answer>,
    redelivery_delay: Option<Duration>,
    summary: ConsumerSummary,
}

impl<F> Run<F>
where
    F: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn new(redelivery_delay: Option<Duration>) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            nursery: Box::pin(None),
            running: FuturesUnordered::new(),
            answers: FuturesUnordered::new(),
            redelivery_delay,
            summary: ConsumerSummary::default(),
        }
    }

    /// Calls `service` with `delivery` and polls the call once: a call that finishes then
    /// is answered at once, the others run on in `running`.
    fn start<S>(&mut self, cx: &mut Context<'_>, service: &mut S, delivery: Delivery)
    where
        S: Service<Incoming, Response = (), Error = HandlerError, Future = F>,
    {
        let (topic, message, attempt, acknowledge) = delivery.into_parts();
        self.nursery.set(Some(service.call(Incoming {
            topic,
            message,
            attempt,
        })));
        let polled = match self.nursery.as_mut().as_pin_mut() {
            Some(call) => call.poll(cx),
            None => Poll::Pending,
        };
        match polled {
            Poll::Ready(outcome) => {
                self.nursery.set(None);
                self.answer(acknowledge, outcome);
            }
            Poll::Pending => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                if let Some(free) = self.slots.get_mut(slot) {
                    *free = Some(acknowledge);
                }
                let call = std::mem::replace(&mut self.nursery, Box::pin(None));
                self.running.push(Running { slot, call });
            }
        }
    }

    fn finish(&mut self, slot: usize, outcome: Result<(), HandlerError>) {
        let Some(acknowledge) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        self.answer(acknowledge, outcome);
    }

    fn answer(&mut self, mut acknowledge: Box<dyn Acknowledge>, outcome: Result<(), HandlerError>) {
        let mut answer = match outcome {
            Ok(()) => {
                self.summary.handled += 1;
                if let Some(answered) = acknowledge.ack_now() {
                    self.answered(answered);
                    return;
                }
                acknowledge.ack()
            }
            Err(error) => {
                tracing::warn!(%error, code = error.code(), "a message failed; it will be redelivered");
                self.summary.failed += 1;
                acknowledge.nack(self.redelivery_delay)
            }
        };
        match (&mut answer).now_or_never() {
            Some(answered) => self.answered(answered),
            None => self.answers.push(answer),
        }
    }

    fn answered(&mut self, answered: Result<(), TransportError>) {
        if let Err(error) = answered {
            tracing::warn!(%error, code = error.code(), "the transport did not take an answer");
            self.summary.answer_errors += 1;
        }
    }

    /// Lets the calls in flight finish until `deadline`, nacks the rest, then waits for
    /// every answer.
    async fn shut_down(&mut self, deadline: Duration) {
        let expired = tokio::time::sleep(deadline);
        tokio::pin!(expired);
        while !self.running.is_empty() {
            tokio::select! {
                biased;
                Some((slot, outcome)) = self.running.next() => self.finish(slot, outcome),
                () = &mut expired => break,
            }
        }
        // Dropping the calls still running cancels them; their messages go back.
        self.running = FuturesUnordered::new();
        for acknowledge in self.slots.iter_mut().filter_map(Option::take) {
            self.summary.abandoned += 1;
            self.answers.push(acknowledge.nack(None));
        }
        while let Some(answered) = self.answers.next().await {
            self.answered(answered);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::channel::mpsc;
    use tower::service_fn;

    use super::*;
    use crate::message::Message;
    use crate::transport::Delivery;

    /// How each delivery was answered, by message type.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Answered {
        Ack(String),
        Nack(String, Option<Duration>),
    }

    type Log = Arc<Mutex<Vec<Answered>>>;

    struct Recorder {
        name: String,
        log: Log,
    }

    impl Acknowledge for Recorder {
        fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
            self.log
                .lock()
                .unwrap()
                .push(Answered::Ack(self.name.clone()));
            futures::future::ready(Ok(())).boxed()
        }

        fn nack(
            self: Box<Self>,
            delay: Option<Duration>,
        ) -> BoxFuture<'static, Result<(), TransportError>> {
            self.log
                .lock()
                .unwrap()
                .push(Answered::Nack(self.name.clone(), delay));
            futures::future::ready(Ok(())).boxed()
        }
    }

    /// A delivery stream fed by hand, and the log of answers.
    fn deliveries() -> (mpsc::UnboundedSender<Delivery>, Deliveries, Log) {
        let (sender, receiver) = mpsc::unbounded();
        (sender, Deliveries::new(receiver.map(Ok)), Log::default())
    }

    fn delivery(name: &str, log: &Log) -> Delivery {
        let recorder = Recorder {
            name: name.to_owned(),
            log: Arc::clone(log),
        };
        Delivery::new(
            "topic".into(),
            Message::new(name, Vec::new()),
            1,
            Box::new(recorder),
        )
    }

    fn answers(log: &Log) -> Vec<Answered> {
        let mut answers = log.lock().unwrap().clone();
        answers.sort_by_key(|a| format!("{a:?}"));
        answers
    }

    #[tokio::test]
    async fn ok_is_acknowledged_and_an_error_is_nacked_with_the_redelivery_delay() {
        let (sender, stream, log) = deliveries();
        for name in ["good", "bad"] {
            sender.unbounded_send(delivery(name, &log)).unwrap();
        }
        drop(sender);
        let service = service_fn(|incoming: Incoming| async move {
            match incoming.message.message_type.as_str() {
                "good" => Ok(()),
                _ => Err(HandlerError::transient("not now")),
            }
        });
        let summary = Consumer::new(service)
            .run(stream, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!((summary.handled, summary.failed), (1, 1));
        assert_eq!(
            answers(&log),
            vec![
                Answered::Ack("good".into()),
                Answered::Nack("bad".into(), Some(Duration::from_secs(1))),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_calls_finish_before_the_deadline_and_nacks_the_rest() {
        let (sender, stream, log) = deliveries();
        for name in ["quick", "slow"] {
            sender.unbounded_send(delivery(name, &log)).unwrap();
        }
        let started = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&started);
        let service = service_fn(move |incoming: Incoming| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let pause = match incoming.message.message_type.as_str() {
                    "quick" => Duration::from_secs(1),
                    _ => Duration::from_secs(3_600),
                };
                tokio::time::sleep(pause).await;
                Ok(())
            }
        });
        let cancel = CancellationToken::new();
        let options = ConsumerOptions {
            shutdown_deadline: Duration::from_secs(10),
            ..ConsumerOptions::default()
        };
        let consumer = tokio::spawn(
            Consumer::new(service)
                .options(options)
                .run(stream, cancel.clone()),
        );
        while started.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
        // A delivery arriving after the cancellation is not taken.
        sender.unbounded_send(delivery("late", &log)).unwrap();
        let summary = consumer.await.unwrap().unwrap();
        assert_eq!((summary.handled, summary.abandoned), (1, 1));
        assert_eq!(
            answers(&log),
            vec![
                Answered::Ack("quick".into()),
                Answered::Nack("slow".into(), None)
            ]
        );
        assert_eq!(started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_more_than_max_in_flight_calls_run_at_once() {
        let (sender, stream, log) = deliveries();
        for i in 0..50 {
            sender
                .unbounded_send(delivery(&format!("m{i}"), &log))
                .unwrap();
        }
        drop(sender);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (running2, peak2) = (Arc::clone(&running), Arc::clone(&peak));
        let service = service_fn(move |_: Incoming| {
            let (running, peak) = (Arc::clone(&running2), Arc::clone(&peak2));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        });
        let options = ConsumerOptions {
            max_in_flight: 4,
            ..ConsumerOptions::default()
        };
        let summary = Consumer::new(service)
            .options(options)
            .run(stream, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(summary.handled, 50);
        assert_eq!(peak.load(Ordering::SeqCst), 4);
        assert_eq!(log.lock().unwrap().len(), 50);
    }

    struct Lagging;

    #[async_trait::async_trait]
    impl Subscriber for Lagging {
        async fn subscribe(&self, _: &SubscriptionSpec) -> Result<Deliveries, TransportError> {
            Err(TransportError::Closed)
        }

        async fn lag(&self, _: &SubscriptionSpec) -> Result<Option<u64>, TransportError> {
            Ok(Some(7))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_consumer_lag_is_sampled_into_the_metrics_while_running() {
        let (sender, stream, _log) = deliveries();
        let metrics = BusMetrics::new();
        let service = service_fn(|_: Incoming| async { Ok(()) });
        let cancel = CancellationToken::new();
        let consumer = Consumer::new(service).sample_lag(
            Arc::new(Lagging),
            SubscriptionSpec::new("orders", "billing"),
            metrics.clone(),
            Duration::from_secs(5),
        );
        let running = tokio::spawn(consumer.run(stream, cancel.clone()));
        tokio::time::sleep(Duration::from_secs(6)).await;
        cancel.cancel();
        running.await.unwrap().unwrap();
        drop(sender);
        let lag = metrics.snapshot().lag;
        assert_eq!(lag.len(), 1);
        assert_eq!(
            (lag[0].topic.as_str(), lag[0].group.as_str(), lag[0].lag),
            ("orders", "billing", 7)
        );
    }

    #[derive(Clone)]
    struct Broken;

    impl Service<Incoming> for Broken {
        type Response = ();
        type Error = HandlerError;
        type Future = futures::future::Ready<Result<(), HandlerError>>;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), HandlerError>> {
            Poll::Ready(Err(HandlerError::permanent("broken")))
        }

        fn call(&mut self, _: Incoming) -> Self::Future {
            futures::future::ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failing_service_stops_the_consumer_with_its_error() {
        let (sender, stream, log) = deliveries();
        sender.unbounded_send(delivery("m", &log)).unwrap();
        let error = Consumer::new(Broken)
            .run(stream, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(error, ConsumerError::Service { .. }));
        assert!(error.to_string().contains("broken"), "{error}");
        assert!(
            log.lock().unwrap().is_empty(),
            "the delivery was never taken"
        );
    }
}

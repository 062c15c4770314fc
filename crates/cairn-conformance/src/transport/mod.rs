//! The executable definition of Cairn's transport contract ([`Publisher`] and
//! [`Subscriber`] in `cairn-bus`): one suite of cases that every transport runs, so that
//! "passes the transport suite" means the same for the in-memory broker, NATS JetStream,
//! RabbitMQ and Redis Streams.
//!
//! A transport hands the suite a [`TransportFactory`]: it opens fresh connections to one
//! broker, names topics and groups so that runs never see each other's data (real brokers
//! are shared), and, when it can, drops every connection on demand. Each case opens the
//! connections it needs, drives them and returns a [`Failure`] naming what the contract
//! expected and what the transport did instead. A panic, or a case that does not finish
//! within [`CASE_TIMEOUT`], is reported as a failure too.
//!
//! The usual way in is [`transport_suite!`](crate::transport_suite), which writes one test
//! per case:
//!
//! ```
//! // tests/transport.rs of a transport crate
//! cairn_conformance::transport_suite!(cairn_bus::memory::MemoryBroker::new());
//! # fn main() {}
//! ```
//!
//! [`check_all`] runs every case in turn and returns a [`Report`]; [`run_case`] runs one
//! case by name ([`case_names`] lists them). The in-memory broker is a factory as it is
//! (its connections are [`MemoryBroker::connect`], [`TransportFactory::disrupt`] is
//! [`MemoryBroker::sever`]).
//!
//! # What the suite assumes of a broker
//!
//! A group exists from its first subscription on and receives every message published to
//! its topic after that, even while no consumer is attached; the cases always subscribe
//! before they publish. Deliveries held by a connection that closes, or by one that
//! [`disrupt`](TransportFactory::disrupt) breaks, come back within the suite's patience
//! (10 s), which a broker with an acknowledgement deadline meets by setting it short
//! enough in tests.
//!
//! # The cases
//!
//! | Case | Checks |
//! |---|---|
//! | `published_messages_arrive_intact` | id, type, source, key, content type, headers and payload survive the trip; attempt 1 |
//! | `publish_is_confirmed` | once `publish` returned, the messages are the broker's: they survive the publisher's connection closing |
//! | `acknowledged_messages_are_not_redelivered` | not to a new consumer on a new connection |
//! | `nacked_messages_come_back_with_the_next_attempt` | `nack(None)` redelivers at once with `attempt + 1` |
//! | `nack_delay_is_respected` | `nack(Some(d))` redelivers after `d`, not before, without holding back other messages |
//! | `a_dead_consumers_deliveries_go_to_another_consumer` | a connection closed with a delivery unanswered: another consumer of the group gets it |
//! | `every_group_gets_every_message` | two groups of one topic each receive everything once |
//! | `consumers_of_a_group_share_its_messages` | each message goes to one consumer of the group |
//! | `one_consumer_sees_each_key_in_order` | per-key publish order, for a seeded interleaving of keys |
//! | `prefetch_bounds_unanswered_deliveries` | a consumer never holds more than `prefetch` unanswered deliveries, however far the producer is ahead |
//! | `oversized_messages_are_refused` | one byte over `max_message_size` is `PayloadTooLarge` and nothing of the batch is delivered; the limit itself passes |
//! | `consumption_resumes_after_a_disruption` | after every connection dropped, the same stream goes on and nothing published is lost (passes trivially when the factory cannot disrupt) |
//!
//! # What this suite is not
//!
//! A benchmark, or a test of durability across broker restarts.
//!
//! [`MemoryBroker::connect`]: cairn_bus::memory::MemoryBroker::connect
//! [`MemoryBroker::sever`]: cairn_bus::memory::MemoryBroker::sever

mod cases;
pub mod proxy;
mod support;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use cairn_bus::memory::{MemoryBroker, MemoryConnection};
use cairn_bus::{Publisher, Subscriber, TransportError};
use futures::FutureExt;

use crate::CASE_TIMEOUT;
use crate::failure::{self, Failure};
use crate::report::{Outcome, Report};
use crate::settings::Settings;

/// Gives the suite connections to one broker, names that no other run uses, and (when it
/// can) a way to drop every connection.
///
/// # Examples
///
/// A factory whose names carry the prefix a shared broker's permissions allow (a networked
/// broker's factory looks the same, with its own connect and a disruption through the
/// broker's admin interface):
///
/// ```
/// use cairn_bus::TransportError;
/// use cairn_bus::memory::{MemoryBroker, MemoryConnection};
/// use cairn_conformance::transport::TransportFactory;
///
/// struct Tenant {
///     broker: MemoryBroker,
/// }
///
/// impl TransportFactory for Tenant {
///     type Connection = MemoryConnection;
///
///     async fn connect(&self) -> Result<MemoryConnection, TransportError> {
///         Ok(self.broker.connect())
///     }
///
///     fn unique_name(&self, purpose: &str) -> String {
///         format!("tenant-a-{purpose}-{}", uuid::Uuid::now_v7().simple())
///     }
///
///     async fn disrupt(&self) -> bool {
///         self.broker.sever();
///         true
///     }
/// }
///
/// cairn_conformance::transport_suite!(Tenant { broker: MemoryBroker::new() });
/// # fn main() {}
/// ```
pub trait TransportFactory: Send + Sync + 'static {
    /// One client connection: a publisher and a subscriber. The suite drops it to close
    /// the connection; a connection must close once it and every stream it gave are
    /// dropped, even while a delivery it handed out is still held.
    type Connection: Publisher + Subscriber;

    /// Opens a fresh connection to the broker under test.
    fn connect(&self) -> impl Future<Output = Result<Self::Connection, TransportError>> + Send;

    /// A topic or group name no other case, test run or process sharing the broker has
    /// used, made of lower-case ASCII letters, digits and `-`; `purpose` (such as `topic`
    /// or `group-a`) is for people reading the broker's state. The default is
    /// `cairn-{purpose}-{a fresh UUID v7 in hex}`; override it to add a prefix or meet
    /// the broker's naming rules.
    fn unique_name(&self, purpose: &str) -> String {
        format!("cairn-{purpose}-{}", uuid::Uuid::now_v7().simple())
    }

    /// Drops every connection to the broker at once (consumers' and publishers'), as a
    /// network failure would, returning `true`; or returns `false` when the factory cannot,
    /// and the case that needs it passes without checking.
    fn disrupt(&self) -> impl Future<Output = bool> + Send {
        std::future::ready(false)
    }
}

/// The in-memory broker is its own factory: fresh [`MemoryConnection`]s to it, and
/// [`MemoryBroker::sever`] as the disruption.
impl TransportFactory for MemoryBroker {
    type Connection = MemoryConnection;

    fn connect(&self) -> impl Future<Output = Result<MemoryConnection, TransportError>> + Send {
        std::future::ready(Ok(MemoryBroker::connect(self)))
    }

    fn disrupt(&self) -> impl Future<Output = bool> + Send {
        self.sever();
        std::future::ready(true)
    }
}

/// The names of every transport case, in the order [`check_all`] runs them.
pub fn case_names() -> &'static [&'static str] {
    cases::NAMES
}

/// Runs the transport case `name` against connections from `factory`.
///
/// Must be awaited inside a Tokio runtime with the time driver enabled.
///
/// # Errors
///
/// The case's [`Failure`] when the transport broke the contract, when the case panicked
/// or hung, or when `name` names no case.
pub async fn run_case<F: TransportFactory>(factory: &F, name: &str) -> Result<(), Failure> {
    let settings = Settings::from_env()?;
    run_with(factory, name, settings).await
}

/// Runs every transport case in turn against connections from `factory` and reports each
/// outcome.
///
/// Must be awaited inside a Tokio runtime with the time driver enabled.
pub async fn check_all<F: TransportFactory>(factory: F) -> Report {
    let settings = Settings::from_env();
    let mut outcomes = Vec::with_capacity(cases::NAMES.len());
    for &name in cases::NAMES {
        let started = Instant::now();
        let result = match settings {
            Ok(settings) => run_with(&factory, name, settings).await,
            Err(ref failure) => Err(failure.clone()),
        };
        outcomes.push(Outcome {
            name,
            result,
            elapsed: started.elapsed(),
        });
    }
    Report { outcomes }
}

/// Runs every transport case and panics with a readable list of every failing case and
/// why.
///
/// # Panics
///
/// When any case failed.
pub async fn run_all<F: TransportFactory>(factory: F) {
    check_all(factory).await.assert_passed();
}

async fn run_with<F: TransportFactory>(
    factory: &F,
    name: &str,
    settings: Settings,
) -> Result<(), Failure> {
    let Some(case) = cases::find::<F>(name) else {
        return Err(Failure::new(format!(
            "no transport case is named {name:?}; \
             cairn_conformance::transport::case_names() lists them"
        )));
    };
    let run = AssertUnwindSafe(case(factory, settings)).catch_unwind();
    let result = match tokio::time::timeout(CASE_TIMEOUT, run).await {
        Err(_) => Err(Failure::new(format!(
            "the case hung: it did not finish within {CASE_TIMEOUT:?}"
        ))),
        Ok(Err(panic)) => Err(Failure::new(format!(
            "the case panicked: {}",
            failure::panic_text(&*panic)
        ))),
        Ok(Ok(result)) => result,
    };
    result.map_err(|failure| failure.with_note(settings.replay_note()))
}

/// Writes one test per transport case for the factory made by an expression.
///
/// Each test is named after its case, runs on its own multi-threaded Tokio runtime with
/// two workers (built by the macro, so the calling crate needs no Tokio features), and
/// panics with the case's [`Failure`] when the transport breaks the contract. The factory
/// expression is evaluated inside that runtime, once per test, and must give a
/// [`TransportFactory`](crate::transport::TransportFactory).
///
/// ```
/// cairn_conformance::transport_suite!(cairn_bus::memory::MemoryBroker::new());
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! transport_suite {
    // The list of cases, written once; `transport::case_names()` must list the same names
    // in the same order (a unit test of this crate checks it).
    (@with_cases $then:ident $($args:tt)*) => {
        $crate::transport_suite! { @$then [
            published_messages_arrive_intact
            publish_is_confirmed
            acknowledged_messages_are_not_redelivered
            nacked_messages_come_back_with_the_next_attempt
            nack_delay_is_respected
            a_dead_consumers_deliveries_go_to_another_consumer
            every_group_gets_every_message
            consumers_of_a_group_share_its_messages
            one_consumer_sees_each_key_in_order
            prefetch_bounds_unanswered_deliveries
            oversized_messages_are_refused
            consumption_resumes_after_a_disruption
        ] $($args)* }
    };
    (@names [$($case:ident)*]) => {
        [$(stringify!($case)),*]
    };
    (@tests [$($case:ident)*] ($factory:expr)) => {
        $(
            #[test]
            fn $case() {
                $crate::transport::__private::run_test(|| $factory, stringify!($case));
            }
        )*
    };
    ($factory:expr $(,)?) => {
        $crate::transport_suite! { @with_cases tests ($factory) }
    };
}

#[doc(hidden)]
pub mod __private {
    //! What [`transport_suite!`](crate::transport_suite) expands to; not a public API.

    use super::TransportFactory;

    /// Runs one case on a fresh two-worker runtime, panicking with its failure.
    pub fn run_test<F: TransportFactory>(make_factory: impl FnOnce() -> F, name: &str) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a Tokio runtime for the transport case");
        runtime.block_on(async {
            let factory = make_factory();
            if let Err(failure) = super::run_case(&factory, name).await {
                panic!("transport case {name} failed:\n{failure}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn the_macro_and_the_case_table_list_the_same_cases_in_the_same_order() {
        let from_macro: &[&str] = &crate::transport_suite!(@with_cases names);
        assert_eq!(from_macro, super::case_names());
    }

    #[test]
    fn case_names_are_unique() {
        let names = super::case_names();
        let unique: HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "a case name appears twice");
    }
}

//! The transport cases, one module per part of the contract, and the table that names
//! them.
//!
//! Every case is an `async fn(&F, Settings) -> Result<(), Failure>`: it opens the
//! connections it needs with the factory, drives them, and returns a [`Failure`] at the
//! first breach of the contract it sees. The table is written once, below; [`NAMES`] and
//! [`find`] are generated from it, and `transport_suite!` lists the same names (a unit test
//! checks it).

use futures::future::BoxFuture;

use super::TransportFactory;
use crate::failure::Failure;
use crate::settings::Settings;

mod answers;
mod delivery;
mod disruption;
mod flow;
mod groups;
mod order;

/// A case, monomorphised for one factory.
pub(crate) type CaseFn<F> = for<'a> fn(&'a F, Settings) -> BoxFuture<'a, Result<(), Failure>>;

macro_rules! case_table {
    ($($name:ident => $run:path;)*) => {
        /// The names of every case, in the order the suite runs them.
        pub(crate) const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// The case named `name`, if there is one.
        pub(crate) fn find<F: TransportFactory>(name: &str) -> Option<CaseFn<F>> {
            $(
                if name == stringify!($name) {
                    fn run<F: TransportFactory>(
                        factory: &F,
                        settings: Settings,
                    ) -> BoxFuture<'_, Result<(), Failure>> {
                        Box::pin($run(factory, settings))
                    }
                    return Some(run::<F>);
                }
            )*
            None
        }
    };
}

case_table! {
    published_messages_arrive_intact => delivery::arrive_intact;
    publish_is_confirmed => delivery::publish_is_confirmed;
    acknowledged_messages_are_not_redelivered => answers::ack_removes;
    nacked_messages_come_back_with_the_next_attempt => answers::nack_redelivers;
    nack_delay_is_respected => answers::nack_delay;
    a_dead_consumers_deliveries_go_to_another_consumer => answers::dead_consumer;
    every_group_gets_every_message => groups::every_group;
    consumers_of_a_group_share_its_messages => groups::consumers_share;
    one_consumer_sees_each_key_in_order => order::per_key_order;
    prefetch_bounds_unanswered_deliveries => flow::prefetch_bound;
    oversized_messages_are_refused => flow::oversized_refused;
    consumption_resumes_after_a_disruption => disruption::resumes;
}

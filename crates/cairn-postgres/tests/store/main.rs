//! PostgreSQL-specific behaviour beyond the shared contract: schema migrations, gap safety
//! of `$all` under concurrent writers, the cost of a page of `$all`, live subscriptions
//! through lost connections, the tables written in the application's transactions, and
//! faults. Every test runs on a database of its own.

#[path = "../support/mod.rs"]
mod support;

mod combine;
mod faults;
mod gaps;
mod live;
mod reads;
mod schema;
mod tables;

//! The transport suite against the shared Redis on this machine, through a proxy that can
//! drop every connection, under a key prefix per test that is deleted afterwards.

mod common;

cairn_conformance::transport_suite!(common::Factory::new());

//! The transport conformance suite on the in-memory broker, the reference transport: one
//! test per case, each on a fresh broker.

cairn_conformance::transport_suite!(cairn_bus::memory::MemoryBroker::new());

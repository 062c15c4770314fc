//! The memory store against the whole `cairn-conformance` suite, one test per case.

#[global_allocator]
static ALLOC: cairn_conformance::TrackingAllocator = cairn_conformance::TrackingAllocator::new();

cairn_conformance::store_suite!(|| async { cairn_memory::MemoryStore::new() });

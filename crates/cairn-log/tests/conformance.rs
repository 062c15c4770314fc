//! The event store contract, checked on the embedded engine with real files.

use cairn_log::{LogOptions, LogStore};

#[global_allocator]
static ALLOCATOR: cairn_conformance::TrackingAllocator =
    cairn_conformance::TrackingAllocator::new();

/// Small segments, so the suite also crosses segment boundaries.
fn options() -> LogOptions {
    LogOptions::default().segment_size(4 << 20)
}

cairn_conformance::store_suite!(|| async {
    LogStore::open_temporary(options()).expect("a temporary log store opens")
});

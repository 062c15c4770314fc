//! The event store contract, checked on PostgreSQL: every case gets stores on databases
//! of its own, dropped when the case ends.

mod support;

#[global_allocator]
static ALLOCATOR: cairn_conformance::TrackingAllocator =
    cairn_conformance::TrackingAllocator::new();

cairn_conformance::store_suite!({
    let databases = support::Databases::default();
    move || {
        let databases = databases.clone();
        async move { databases.store().await }
    }
});

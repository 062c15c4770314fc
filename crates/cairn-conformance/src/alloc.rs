//! [`TrackingAllocator`]: a global allocator that counts the bytes currently allocated, so
//! the memory-bound case can measure how much heap a subscriber that stops reading costs.
//!
//! It wraps [`std::alloc::System`] and adds one relaxed atomic add or subtract per call.
//! This is the crate's only `unsafe` code: implementing [`GlobalAlloc`] requires it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes currently allocated through any [`TrackingAllocator`]. Written by every allocation
/// and deallocation of the process (when a tracking allocator is installed); read by
/// [`TrackingAllocator::allocated_bytes`].
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that counts the bytes currently allocated; install it in a test binary
/// that runs the conformance suite so the memory-bound case can measure heap growth.
///
/// # Examples
///
/// ```standalone_crate
/// #[global_allocator]
/// static ALLOC: cairn_conformance::TrackingAllocator = cairn_conformance::TrackingAllocator::new();
/// ```
#[derive(Debug, Default)]
pub struct TrackingAllocator {
    _private: (),
}

impl TrackingAllocator {
    /// A tracking allocator, for a `#[global_allocator]` static.
    pub const fn new() -> Self {
        Self { _private: () }
    }

    /// The bytes currently allocated through tracking allocators (0 when none is installed).
    pub fn allocated_bytes() -> usize {
        ALLOCATED.load(Ordering::Relaxed)
    }

    /// Whether a tracking allocator is this process's global allocator: allocates a
    /// buffer and checks that the counter saw it.
    pub fn is_installed() -> bool {
        const PROBE: usize = 4 << 20;
        let before = Self::allocated_bytes();
        let probe = std::hint::black_box(Vec::<u8>::with_capacity(PROBE));
        let after = Self::allocated_bytes();
        drop(probe);
        after.saturating_sub(before) >= PROBE / 2
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so it
// upholds `GlobalAlloc`'s contract exactly as `System` does; the only addition is updating
// an atomic counter, which neither allocates nor unwinds.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` was allocated by `System` through this type.
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` was allocated by `System` through this type
        // with `layout`, and the caller upholds `realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                ALLOCATED.fetch_add(new_size - layout.size(), Ordering::Relaxed);
            } else {
                ALLOCATED.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

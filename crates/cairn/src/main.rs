//! The `cairn` program: Cairn's embedded event store from the command line.
//!
//! `cairn demo` writes an order's lifecycle to a fresh store and reads it back;
//! `append`, `read`, `tail` and `streams` work on the store in `--data-dir`; `bench`
//! measures the store on this machine's disk (and, with the `peers` feature, PostgreSQL and
//! NATS JetStream beside it). The command line lives in [`cli`], the benchmark in
//! [`bench`]; both use the library through the `cairn` facade.

mod bench;
mod cli;

/// The program allocates through mimalloc: reading and writing the store makes many small,
/// short-lived allocations (event types, metadata, pages of events) from several threads,
/// which it serves markedly faster than the system allocator. The library crates leave the
/// choice to the application that embeds them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}

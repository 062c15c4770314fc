//! The `cairn` program: Cairn's embedded event store from the command line.
//!
//! `cairn demo` writes an order's lifecycle to a fresh store and reads it back;
//! `append`, `read`, `tail` and `streams` work on the store in `--data-dir`; `bench`
//! measures the store on this machine's disk (and, with the `peers` feature, PostgreSQL and
//! NATS JetStream beside it). The command line lives in [`cli`], the benchmark in
//! [`bench`]; both use the library through the `cairn` facade.

mod bench;
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

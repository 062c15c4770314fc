//! Tests of `#[derive(Event)]`, used through `cairn_es` as a domain crate uses it:
//! what the generated implementation does (`encode_decode.rs`), and what the derive
//! refuses to compile (`compile_errors.rs`, with the cases in `tests/ui/`).

mod compile_errors;
mod encode_decode;

//! Tests of `#[derive(Event)]`, used through `cairn_es` as a domain crate uses it:
//! what the generated implementation does (`encode_decode.rs`).

mod encode_decode;

//! Every mistake the derive catches is a compile error with a clear message, pointed at
//! the right tokens. Each case in `tests/ui/` is compiled and its output compared with the
//! `.stderr` file beside it (regenerate with `TRYBUILD=overwrite`, then read the diff).

#[test]
fn mistakes_in_event_enums_are_compile_errors() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}

//! placeholder until the restart test lands
#[test]
fn placeholder() {}

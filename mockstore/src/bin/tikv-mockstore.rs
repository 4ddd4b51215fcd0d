//! tikv-mockstore binary.
fn main() {}

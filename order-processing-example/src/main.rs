//! The order processing example.

fn main() {}

//! Criterion benchmarks of `decide`.

fn main() {}

//! `splice-load`: the load generator and backends behind `cargo xtask bench`.

fn main() {}

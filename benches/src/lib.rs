//! The load generator and backends behind `cargo xtask bench`.

//! The load generator and backends behind `cargo xtask bench`.
//!
//! [`backend`] is the far end of every bench path (a sink that checks what it receives, an echo),
//! [`load`] drives it (bulk streams, request/response, new connections, idle connections), and
//! [`pattern`] is the byte stream both sides agree on. The `splice-load` binary puts each of them
//! behind a subcommand that prints one JSON object, which is how the xtask uses them.

pub mod backend;
pub mod load;
pub mod pattern;

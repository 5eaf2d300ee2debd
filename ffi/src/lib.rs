//! libtunnel: the splice-engine as a C library (`libtunnel.so.0`, `libtunnel.a`, `tunnel.h`).
//!
//! A thin translator over `splice_engine`'s public API: opaque handles (`tunnel_config`,
//! `tunnel_engine`), numbered `tunnel_result` codes mapped from the engine's errors in one
//! place (error.rs), a last-error message per thread, and a boundary (boundary.rs, the only
//! `unsafe`) that catches panics and checks pointers. It holds no forwarding logic; a tunnel
//! agent is an engine of its own with one `[[source]]` or `[[destination]]` (agent.rs), and
//! the tunnel API calls go through `splice_engine::TunnelApi`.
//!
//! The header `c-include/tunnel.h` is generated from this crate by cbindgen (`tests/header.rs`
//! fails when it is stale; `TUNNEL_BLESS=1` rewrites it).
#![allow(
    non_camel_case_types,
    reason = "the C names (tunnel_engine, tunnel_result, TUNNEL_OK) are the API"
)]

mod agent;
mod boundary;
mod connect;
mod engine;
mod error;
mod log;

use std::ffi::c_char;

pub use agent::*;
pub use connect::{
    tunnel_connect, tunnel_connect_opts, tunnel_default_engine_shutdown, tunnel_engine_connect,
};
pub use engine::*;
pub use error::{tunnel_last_error, tunnel_result, tunnel_result_name};
pub use log::*;

/// The library's version, `"MAJOR.MINOR.PATCH"` (static; thread-safe; never NULL).
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

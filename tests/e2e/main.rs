//! End-to-end tests: they drive the real `splice-engine` binary over loopback sockets, with real
//! TLS on the wire (rustls in the test process, and `openssl s_client` / `s_server` as an
//! independent peer).
//!
//! Run with `cargo test --release -p splice-engine --test e2e`.

mod support;

mod bad_input;
mod config_file;
mod data;
mod fallback;
mod garbage;
mod half_close;
mod limits;
mod metrics;
mod mtls;
mod openssl;
mod proxy_protocol;
mod reload;
mod systemd;
mod tls_params;
mod verify;
mod websocket;

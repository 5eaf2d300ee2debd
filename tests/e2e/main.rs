//! End-to-end tests: they drive the real `splice-engine` binary over loopback sockets, with real
//! TLS on the wire (rustls in the test process, and `openssl s_client` / `s_server` as an
//! independent peer).
//!
//! Run with `cargo test --release -p splice-engine-cli --test e2e`.

mod support;

mod bad_input;
mod browser;
mod cli;
mod config_file;
mod data;
mod ebpf;
mod fallback;
mod faults;
mod fleet;
mod garbage;
mod half_close;
mod handoff;
mod limits;
mod memory;
mod metrics;
mod mtls;
mod names;
mod openssl;
mod proxy_protocol;
mod relay;
mod relay_cookie;
mod relay_identity;
mod reload;
mod systemd;
mod tls_params;
mod trust;
mod tunnel_agents;
mod tunnel_cli;
mod verify;
mod websocket;

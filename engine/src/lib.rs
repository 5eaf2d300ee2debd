//! splice-engine: an encrypted TCP forwarding engine.
//!
//! It accepts plain TCP and forwards it over TLS (*client* mode), or terminates TLS and forwards
//! plain TCP (*server* mode), on shards that each own a ring (io_uring) or an epoll set. After a
//! rustls handshake, session keys go to the kernel (kTLS) where it supports them and bytes move
//! with `splice`; elsewhere our own record layer seals and opens records in user space.
//!
//! It does not (yet) run the relay, the C library or the Python bindings; those build on
//! [`Engine`].
#![deny(unsafe_code)]

pub mod config;
pub mod demo;
pub mod driver;
mod engine;
pub mod error;
mod explain;
mod kinds;
pub mod logging;
pub mod metrics;
pub mod shard;
pub mod stats;
pub mod sys;
pub mod systemd;
pub mod tls;

pub use config::{DriverKind, EngineConfig, ForwarderConfig, KtlsMode, LogFormat, Mode};
pub use engine::{CheckedForwarder, Engine, Listening};
pub use error::{Error, Result, Side, SyscallError};
pub use stats::{ListenerStats, StatsSnapshot};

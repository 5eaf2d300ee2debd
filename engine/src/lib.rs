//! splice-engine: an encrypted TCP forwarding engine.
//!
//! It accepts plain TCP and forwards it over TLS (*client* mode), or terminates TLS and forwards
//! plain TCP (*server* mode), on shards that each own a ring (io_uring) or an epoll set. After a
//! rustls handshake, session keys go to the kernel (kTLS) where it supports them and bytes move
//! with `splice`; elsewhere our own record layer seals and opens records in user space.
//!
//! This crate is the embedding API: the `splice-engine` command (package `splice-engine-cli`),
//! and the C library and Python package to come, are thin layers over it. Its surface is:
//!
//! - [`Engine`]: start forwarders from an [`EngineConfig`], read [`StatsSnapshot`]s, reload a
//!   new configuration, shut down with a drain;
//! - the configuration: [`EngineConfig`] and [`ForwarderConfig`] (with builders, or read from a
//!   TOML file) and the enums they use ([`Mode`], [`DriverKind`], [`KtlsMode`], [`EbpfMode`], [`LogFormat`],
//!   [`ProxyVersion`], [`UnresolvedUpstream`]);
//! - [`Error`] (with the [`Side`] a connection failed on), and [`Result`];
//! - [`probe()`]: which kernel fast paths the machine has;
//! - [`logging::init`]: structured logs to stderr, for programs that have no subscriber of their
//!   own.
//!
//! It does not parse command lines, handle signals, print reports or generate certificates
//! (the binary does), and it does not (yet) run the relay.
//!
//! # Example
//!
//! A server-mode forwarder (TLS in, plain TCP out) in front of a backend, and a client-mode
//! forwarder (plain TCP in, TLS out) in front of that, added by a reload once the first one's
//! port is known; bytes written to the client forwarder cross a TLS hop on loopback and reach
//! the backend.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::time::Duration;
//!
//! use splice_engine::{Engine, EngineConfig, ForwarderConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // A throwaway CA, and a server certificate for localhost signed by it.
//! # let pki = splice_test_pki::Pki::new();
//! # let (ca, cert, key) = (&pki.ca.path, &pki.server.cert, &pki.server.key);
//! // A backend that answers each 5 bytes in upper case.
//! let backend = TcpListener::bind("127.0.0.1:0")?;
//! let backend_addr = backend.local_addr()?.to_string();
//! std::thread::spawn(move || -> std::io::Result<()> {
//!     let (mut s, _) = backend.accept()?;
//!     let mut word = [0; 5];
//!     s.read_exact(&mut word)?;
//!     s.write_all(&word.to_ascii_uppercase())
//! });
//!
//! // TLS in on a free port, plain TCP out to the backend.
//! let server = ForwarderConfig::server("127.0.0.1:0", backend_addr, cert, key).name("tls-in");
//! let engine = Engine::start(EngineConfig::new().threads(1).forwarder(server.clone()))?;
//! let tls_port = engine.local_addr("tls-in").expect("started").port();
//!
//! // Plain TCP in, TLS out to it, verified against the CA.
//! let client = ForwarderConfig::client("127.0.0.1:0", format!("localhost:{tls_port}"))
//!     .name("tls-out")
//!     .ca(ca);
//! engine.reload(EngineConfig::new().threads(1).forwarder(server).forwarder(client))?;
//!
//! let mut app = TcpStream::connect(engine.local_addr("tls-out").expect("added"))?;
//! app.write_all(b"hello")?;
//! let mut answer = [0; 5];
//! app.read_exact(&mut answer)?;
//! assert_eq!(&answer, b"HELLO");
//! drop(app);
//!
//! for s in engine.stats() {
//!     println!("{}: {} connections, {} bytes in", s.name, s.accepted, s.bytes_down_to_up);
//! }
//! engine.shutdown(Duration::from_secs(5));
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod accounting;
mod config;
mod driver;
mod engine;
mod error;
mod explain;
mod http;
mod kinds;
pub mod logging;
mod metrics;
mod modes;
mod probe;
mod relay;
mod resolve;
mod shard;
mod stats;
mod sys;
mod systemd;
mod tls;

pub use config::{
    Balance, DestinationConfig, DriverKind, EbpfMode, EngineConfig, ForwarderConfig, KtlsMode,
    LogFormat, Mode, ProxyVersion, RelayConfig, SecretText, SourceConfig, TOKEN_ENV,
    TunnelProtocol, UnresolvedUpstream, split_service,
};
pub use engine::{Checked, CheckedForwarder, Engine, Listening};
pub use error::{Error, Result, Side, SyscallError};
pub use probe::{KernelProbe, probe};
pub use relay::client::{RotateSide, TunnelApi, TunnelTokens};
pub use shard::tunnel::agent::AgentState;
pub use stats::{HANDSHAKE_BUCKETS, HistogramSnapshot, KernelBytes, StatsSnapshot};

/// Internals that `splice-bench`'s criterion benchmarks measure. Not part of the API: only
/// built with the `bench-internals` feature, and may change in any release.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod bench_internals {
    pub use crate::relay::at_scale::{RegistryAtScale, RegistryOnDisk};
    pub use crate::shard::{PIPE_SIZE, PipePool};
    pub use crate::sys::pipe;
}

//! The sans-IO core of splice-engine.
//!
//! It holds the protocol logic of a forwarded connection — which socket to read or write next,
//! when a FIN or a reset passes from one side to the other, when the TLS session may go to the
//! kernel — as state machines that take bytes and results in (`handle_*`) and give operations out
//! (`poll_*`). It does no system calls, reads no clock and owns no socket; the engine's drivers
//! (io_uring, epoll) do the I/O. That keeps it testable in memory and fuzzable.
//!
//! It does not do the kTLS hand-off itself (that needs the kernel), nor name resolution.
#![forbid(unsafe_code)]

pub mod aead;
pub mod forward;
pub mod pool;
pub mod proxy_protocol;
mod record;
#[cfg(test)]
mod test_rng;
#[cfg(test)]
mod tests;
pub mod tls_conn;
pub mod tunnel;
pub mod ws;

pub use forward::{Buffers, Failure, Fault, Handoff, Io, Leg, Negotiated, Opens, TlsForward};
pub use record::alert_name;
pub use tls_conn::{TicketStore, TlsConn};

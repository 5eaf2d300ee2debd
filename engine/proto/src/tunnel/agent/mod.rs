//! The agents' logic (reference §5 to §9, §12), sans-IO: the source, which turns local
//! connections accepted on a service's listener into streams and connections of the tunnel, and
//! the destination, which opens a local connection to a service's target for each of them.
//!
//! Each agent is a state machine. The driver feeds it what happened: the tunnel's bytes
//! (`handle_tunnel_bytes`, the binary payload of the WebSocket messages, in order), local
//! connections accepted, connected, read, written and closed (`handle_*`), and the tunnel
//! lost (`handle_tunnel_lost`). It takes out what to do with [`Source::poll_action`] /
//! [`Destination::poll_action`] until `None`: frames to send, each as one WebSocket message
//! ([`Action::Send`]), local connections to open, write, finish (the peer closed: write out,
//! then FIN) or close (cut), listeners to open, and [`Action::PauseTunnelReads`] /
//! [`Action::ResumeTunnelReads`].
//!
//! **Flow control.** The protocol has none per stream, and localproxy keeps reading the
//! tunnel behind a slow local reader until it dies (§12.1). An agent counts the bytes it
//! handed the driver to write to each local connection ([`Action::Write`]) that the driver has
//! not reported written ([`Source::handle_written`]): when one connection's count passes
//! [`Limits::pending`], it asks the driver to stop reading the tunnel (head-of-line: every
//! stream waits), and to read again once every connection is back at half of it. So a
//! connection's memory is at most the bound plus what one tunnel read completes (the read and
//! the start of a frame the decoder held, at most [`super::MAX_FRAME`]).
//!
//! **Reconnects** are the driver's; [`Reconnect`] is the policy as a pure function
//! (exponential backoff with the jitter given as input).
//!
//! It does not do the WebSocket or the HTTP upgrade ([`crate::ws`]), read a clock or open a
//! socket; local connections are named by the [`LocalId`]s the agent hands out.

#[cfg(test)]
mod chaos;
mod core;
mod destination;
mod half_close;
mod reconnect;
mod source;
#[cfg(test)]
mod tests;

use std::fmt;

pub use destination::Destination;
pub use half_close::{EOF_WAIT, HALF_CLOSE, HELLO, LocalEof};
pub use reconnect::{Backoff, End, Jitter, Next, Reconnect};
pub use source::{START_WAIT, Source};

use super::Version;

/// A local connection, as the agent names it: a source gets one from
/// [`Source::handle_accept`], a destination hands one out in [`Action::Connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalId(pub u64);

impl fmt::Display for LocalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "local#{}", self.0)
    }
}

/// What the driver is to do, taken out with `poll_action`, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this tunnel frame (length prefix included) as one binary WebSocket message.
    Send(Vec<u8>),
    /// Source: open the listener of this service (the tunnel serves it). Given once per
    /// service, after SERVICE_IDS.
    Listen {
        /// The service's name as configured (empty for the bare, V1 form).
        service: String,
    },
    /// Destination: connect to the target of this service, then report the outcome with
    /// [`Destination::handle_connected`] or [`Destination::handle_connect_failed`].
    Connect {
        /// The connection's id from now on.
        local: LocalId,
        /// The service's name as configured (empty for the bare, V1 form).
        service: String,
    },
    /// Write these bytes to the local connection, after everything written to it before;
    /// report what is written with `handle_written`.
    Write {
        /// The connection.
        local: LocalId,
        /// The bytes, in order.
        data: Vec<u8>,
    },
    /// Close (reset) the local connection and forget its id: its stream was cut (replaced, a
    /// V3 STREAM_RESET, SESSION_RESET, a fall-back the connection cannot survive), or the
    /// tunnel was lost. Bytes not yet written to it are dropped, so a
    /// reset (RST) rather than a FIN says to its peer that it was cut.
    Close {
        /// The connection.
        local: LocalId,
    },
    /// The peer closed this local connection's counterpart (CONNECTION_RESET, or STREAM_RESET
    /// in the V1 and V2 formats): write out every [`Action::Write`] given for it, then close
    /// it (a FIN). Its id is forgotten: what is read from it from now on is dropped, and
    /// neither `handle_written` nor `handle_local_closed` is needed for it.
    Finish {
        /// The connection.
        local: LocalId,
    },
    /// The peer half-closed this local connection's counterpart ([`HALF_CLOSE`]): write out
    /// every [`Action::Write`] given for it, then shut its write side (a FIN), and go on
    /// reading it. Its id stays.
    ShutdownWrite {
        /// The connection.
        local: LocalId,
    },
    /// Stop reading the tunnel: a local connection has more than [`Limits::pending`] bytes
    /// waiting to be written.
    PauseTunnelReads,
    /// Read the tunnel again.
    ResumeTunnelReads,
}

/// An agent's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes waiting to be written to one local connection past which the agent pauses the
    /// tunnel's reads. It resumes them when every connection is at half of it or below.
    pub pending: usize,
    /// Simultaneous connections per service (localproxy's `tcp.max_active_connections`).
    pub connections_per_service: usize,
    /// The longest DATA payload the agent writes: local reads longer than this are cut into
    /// several DATA messages (so a V1 peer's long read is never stranded, §12.3).
    pub payload: usize,
    /// Negotiate half-closes with a splice-engine peer ([`HELLO`], [`HALF_CLOSE`]); off, the
    /// agent sends neither and drops both, as localproxy does.
    pub half_close: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pending: 256 * 1024,
            connections_per_service: 128,
            payload: super::MAX_PAYLOAD,
            half_close: false,
        }
    }
}

/// Why an agent refuses an input. [`Error::is_fatal`] says whether the tunnel connection must
/// go (the driver drops it and calls `handle_tunnel_lost`, then reconnects by [`Reconnect`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame the codec refuses, or a message the protocol forbids (§4). Fatal.
    #[error("bad tunnel frame: {0}")]
    Frame(#[from] super::Error),
    /// A configured service that the tunnel (SERVICE_IDS) does not have; localproxy exits on
    /// this. Fatal: the configuration does not fit the tunnel.
    #[error("service {0:?} is not one of the tunnel's services")]
    ServiceNotInTunnel(String),
    /// The bare (one-service, V1) form on a tunnel with several services. Fatal.
    #[error("a single unnamed service on a tunnel of {0} services: name them")]
    TooManyServices(usize),
    /// A stream started before SERVICE_IDS arrived (§5). Fatal.
    #[error("{0:?} before SERVICE_IDS")]
    BeforeServiceIds(super::Type),
    /// Source: a connection accepted for a service the tunnel does not serve, or while no
    /// tunnel is up. Close it.
    #[error("service {0:?} is not served now")]
    NotServed(String),
    /// Source: a connection accepted for a service that has as many as it may (one in the V1
    /// and V2 formats, [`Limits::connections_per_service`] in V3). Close it.
    #[error("service {0:?} has as many connections as it may")]
    Busy(String),
    /// A service name that is neither empty (the bare form) nor `[A-Za-z0-9:_-]{1,128}`, or
    /// given twice. The caller's error.
    #[error("bad service configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether the tunnel connection must be dropped (else only the local connection or
    /// nothing is refused).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Error::NotServed(_) | Error::Busy(_))
    }
}

/// The format to write to a peer that wrote `seen`, for an agent that may write up to `max`.
fn fall_back(max: Version, seen: Version) -> Version {
    max.min(seen)
}

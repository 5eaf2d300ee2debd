//! What each mode does with a connection, said in terms of legs: which of its sockets carries
//! TLS, in which role, and which pump moves its bytes.
//!
//! A mode is one file here whose `build` turns a `[[forwarder]]` table into a [`Plan`];
//! [`build`] below is the registry, one line per mode. The connection (`shard/conn/`) runs
//! plans: it knows legs, roles and pumps, never modes. A new mode (the relay, the tunnel's
//! source and destination) is a new file here, its line in [`build`], and — when its legs carry
//! something new, such as WebSocket frames — a new [`Plan`] variant with the pump that runs it.

mod client;
mod server;

use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use splice_proto::TlsConn;

use crate::config::ForwarderConfig;
use crate::error::{Error, Result, Side};
use crate::kinds::Mode;

/// Which of a connection's two sockets a leg is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The socket a listener accepted (or the engine adopted); its peer is downstream.
    Accepted,
    /// The socket the forwarder opened to its upstream.
    Dialed,
}

impl Role {
    /// The side a failure of this socket's TCP connection is reported on.
    pub(crate) fn side(self) -> Side {
        match self {
            Role::Accepted => Side::Downstream,
            Role::Dialed => Side::Upstream,
        }
    }

    /// The other socket.
    pub(crate) fn other(self) -> Role {
        match self {
            Role::Accepted => Role::Dialed,
            Role::Dialed => Role::Accepted,
        }
    }
}

/// The TLS a leg speaks, with the configuration its sessions start from.
#[derive(Debug)]
pub(crate) enum Tls {
    /// We are the TLS client and verify the peer as `name`.
    Client {
        /// The rustls configuration (trust, client certificate, ALPN, versions).
        config: Arc<rustls::ClientConfig>,
        /// The name sent (SNI) and verified.
        name: ServerName<'static>,
    },
    /// We are the TLS server.
    Server {
        /// The rustls configuration (certificate, client verification, ALPN, versions).
        config: Arc<rustls::ServerConfig>,
    },
}

impl Tls {
    /// A fresh session for one connection.
    pub(crate) fn session(&self) -> Result<TlsConn> {
        Ok(match self {
            Tls::Client { config, name } => {
                UnbufferedClientConnection::new(config.clone(), name.clone())?.into()
            }
            Tls::Server { config } => UnbufferedServerConnection::new(config.clone())?.into(),
        })
    }

    /// The wording for TLS errors: [`crate::tls::explain`] speaks as the TLS client (of "the
    /// upstream") or as the server (of "the client"), which are the roles of the two modes.
    pub(crate) fn explained_as(&self) -> Mode {
        match self {
            Tls::Client { .. } => Mode::Client,
            Tls::Server { .. } => Mode::Server,
        }
    }
}

/// How a mode's connections are set up and which pump moves their bytes.
#[derive(Debug)]
pub(crate) enum Plan {
    /// One leg carries TLS, the other plain TCP: the record pump (rustls for the handshake,
    /// then our record layer) moves the bytes, or the splice pump after a kernel hand-off.
    PlainTls {
        /// The leg that carries TLS.
        tls_on: Role,
        /// Its TLS.
        tls: Tls,
    },
}

/// A mode's part of a forwarder: its plan, and the certificate it presents (for the expiry
/// metric).
pub(crate) struct Built {
    pub(crate) plan: Plan,
    pub(crate) leaf: Option<CertificateDer<'static>>,
}

/// Builds the plan of `f`'s mode; `host` is the host part of its `connect`.
pub(crate) fn build(f: &ForwarderConfig, host: &str) -> Result<Built> {
    match f.mode {
        Mode::Client => client::build(f, host),
        Mode::Server => server::build(f),
    }
}

/// The error for a key a mode needs and `f` lacks (validation normally catches it first).
fn missing(f: &ForwarderConfig, key: &str) -> Error {
    Error::config(
        "configuration",
        format!(
            "forwarder \"{}\": {} mode needs `{key}`",
            f.display_name(),
            f.mode
        ),
    )
}

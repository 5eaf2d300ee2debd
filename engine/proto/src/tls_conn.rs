//! The rustls session that a [`TlsForward`](crate::TlsForward) drives, on rustls's unbuffered
//! API: either side, behind one type.
//!
//! The unbuffered API has no enum like rustls's `Connection`, and the client and server sessions
//! return differently typed states from `process_tls_records`. [`TlsConn`] is that enum, and the
//! crate-private `Records` trait lets the forwarder's run of rustls (`forward/records.rs`) be
//! written once, generic over the side.

use std::fmt;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::UnbufferedStatus;
use rustls::{CommonState, ExtractedSecrets};

/// A rustls session on the unbuffered API, client or server side.
pub enum TlsConn {
    /// The forwarder is the TLS client (client mode).
    Client(UnbufferedClientConnection),
    /// The forwarder is the TLS server (server mode).
    Server(UnbufferedServerConnection),
}

impl TlsConn {
    /// What the session negotiated: version, cipher suite, ALPN, peer certificates, handshake
    /// kind.
    pub fn common(&self) -> &CommonState {
        match self {
            Self::Client(c) => c,
            Self::Server(s) => s,
        }
    }

    /// Consumes the session for a kernel TLS hand-off and returns its traffic secrets and
    /// record sequence numbers, and for a TLS client the [`TicketStore`] that keeps the session
    /// tickets the server sends afterwards.
    ///
    /// Call it only where [`TlsForward`](crate::TlsForward) offered
    /// [`Io::Handoff`](crate::Io::Handoff): the handshake is over, no record is waiting to be sent
    /// and no byte past the handshake was read from the socket. The config must have
    /// `enable_secret_extraction` set.
    ///
    /// This goes through rustls's `dangerous_into_kernel_connection`. The `KernelConnection` could
    /// also derive KeyUpdate secrets, but the kernels we run on cannot take new receive keys, so
    /// after the hand-off the engine fails the connection on a KeyUpdate, as the kernel's control
    /// records tell it (see the engine's `tls::control`).
    ///
    /// # Errors
    ///
    /// rustls's error when extraction is disabled, the handshake is not complete or records are
    /// still queued.
    pub fn dangerous_into_kernel(
        self,
    ) -> Result<(ExtractedSecrets, Option<TicketStore>), rustls::Error> {
        match self {
            Self::Client(c) => c
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, Some(TicketStore(k)))),
            Self::Server(s) => s.dangerous_into_kernel_connection().map(|(s, _)| (s, None)),
        }
    }

    /// [`Self::dangerous_into_kernel`] without the ticket store.
    ///
    /// # Errors
    ///
    /// As [`Self::dangerous_into_kernel`].
    pub fn dangerous_extract_secrets(self) -> Result<ExtractedSecrets, rustls::Error> {
        self.dangerous_into_kernel().map(|(secrets, _)| secrets)
    }
}

/// What a TLS client keeps of its session after a kernel hand-off: the session store, so that
/// the TLS 1.3 tickets the server sends after the handshake let later connections resume.
pub struct TicketStore(KernelConnection<ClientConnectionData>);

impl TicketStore {
    /// Stores one NewSessionTicket message body (without its 4-byte handshake header).
    ///
    /// # Errors
    ///
    /// rustls's error for a malformed ticket.
    pub fn store(&mut self, ticket: &[u8]) -> Result<(), rustls::Error> {
        self.0.handle_new_session_ticket(ticket)
    }
}

impl fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketStore").finish_non_exhaustive()
    }
}

impl From<UnbufferedClientConnection> for TlsConn {
    fn from(c: UnbufferedClientConnection) -> Self {
        Self::Client(c)
    }
}

impl From<UnbufferedServerConnection> for TlsConn {
    fn from(s: UnbufferedServerConnection) -> Self {
        Self::Server(s)
    }
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self {
            Self::Client(_) => "Client",
            Self::Server(_) => "Server",
        };
        let common = self.common();
        f.debug_struct("TlsConn")
            .field("side", &side)
            .field("handshaking", &common.is_handshaking())
            .field("version", &common.protocol_version())
            .finish_non_exhaustive()
    }
}

/// The part of an unbuffered session whose types differ between the sides.
pub(crate) trait Records {
    /// `ClientConnectionData` or `ServerConnectionData`.
    type Data;

    /// rustls's `process_tls_records` on `incoming`, the records received and not yet discarded.
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;

    /// The negotiated parameters and flags.
    fn state(&self) -> &CommonState;
}

impl Records for UnbufferedClientConnection {
    type Data = ClientConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }

    fn state(&self) -> &CommonState {
        self
    }
}

impl Records for UnbufferedServerConnection {
    type Data = ServerConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }

    fn state(&self) -> &CommonState {
        self
    }
}

//! The forwarding state machine of one plain <-> TLS connection, in user space.
//!
//! A [`TlsForward`] owns a rustls session on rustls's unbuffered API ([`TlsConn`]) and four
//! buffers. The driver asks it what to do next with [`TlsForward::poll_io`], performs that I/O on
//! the real sockets, and reports the result with one of the `handle_*` methods, handing the buffer
//! back. Nothing here touches a socket or a clock.
//!
//! Flow control is by construction: a leg is read only when the bytes read last time have been
//! passed on, so each direction holds at most one buffer of plaintext and one of records.
//!
//! # Where the bytes are copied
//!
//! During the handshake rustls keeps no buffer of its own here; the record pump
//! (`forward/records.rs`) shows it our buffers, and the few records that carry application data
//! before the switch below are copied out of rustls.
//!
//! Once the handshake is over (and the connection is not waiting for a kernel hand-off), our own
//! record layer (`record.rs`) takes over from rustls with the session's secrets, as the kernel
//! would, and no byte is copied in user space besides the cipher's own pass:
//! * plain -> TLS: plaintext is received into one buffer and sealed from there straight into
//!   the records in the buffer the driver sends.
//! * TLS -> plain: records are received into the receive buffer and opened from there straight
//!   into the plaintext buffer the driver sends. Before the next receive, the unfinished record
//!   at the end of the receive buffer (at most one) moves to its front.
//!
//! [`TlsForward::keep_rustls_records`] keeps rustls's record layer for the whole connection
//! (for configs without secret extraction).

use std::io;

use rustls::{HandshakeKind, ProtocolVersion, SupportedCipherSuite};

use crate::record::{RecordError, RecordLayer};
use crate::tls_conn::TlsConn;

mod buffers;
mod poll;
pub(crate) mod records;

use buffers::{Rx, Slot, TxBuf};
use poll::fault_of;

/// Which socket of a connection an operation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The plain TCP socket.
    Plain,
    /// The socket that carries TLS records.
    Tls,
}

/// Which side of the proxy failed, in terms of the proxy's own listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The plain leg's TCP connection.
    Plain,
    /// The TLS leg's TCP connection.
    TlsTransport,
    /// The TLS protocol (handshake, verification, records).
    Tls,
}

/// Why a connection ended badly.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Where it failed.
    pub fault: Fault,
    /// What happened, for the log.
    pub reason: String,
    /// The TLS peer ended its TCP stream (a FIN, not a reset) after the handshake without
    /// `close_notify`, at a record boundary, with nothing of either direction left undelivered:
    /// no byte is known to be lost, but the end cannot be told from a truncation either. The
    /// connection is still reset; it is counted as an unclean close rather than an error.
    /// Browsers end `wss://` connections this way after the WebSocket close handshake.
    pub unclean_close: bool,
    /// The rustls error behind a [`Fault::Tls`] failure, when rustls reported one (for the
    /// driver to explain it; `reason` is its plain `Display`).
    pub tls_error: Option<rustls::Error>,
}

/// An operation the driver should perform, with the buffer it needs.
#[derive(Debug)]
pub enum Io {
    /// Open the TCP connection of the given leg (the upstream). Report with
    /// [`TlsForward::handle_connected`].
    Connect(Leg),
    /// Receive at most `len` bytes on `leg`, appended to `buf` (which has room for them).
    /// Report with [`TlsForward::handle_recv`].
    Recv {
        /// The socket.
        leg: Leg,
        /// The buffer to fill.
        buf: Vec<u8>,
        /// Most bytes to receive.
        len: usize,
    },
    /// Send the first `len` bytes of `buf` on `leg`; the rest of `buf` is scratch space to leave
    /// alone. Report with [`TlsForward::handle_send`] (partial sends are fine: the rest is asked
    /// for again).
    Send {
        /// The socket.
        leg: Leg,
        /// The buffer, handed back with the report.
        buf: Vec<u8>,
        /// How many bytes of `buf` to send (never 0).
        len: usize,
    },
    /// Shut down the write half of `leg` (a FIN); nothing to report.
    ShutdownWrite(Leg),
    /// The handshake is done, the TLS leg is quiet and the config allows extraction: the driver
    /// may now take the session with [`TlsForward::into_tls`] and hand its keys to the kernel
    /// ([`TlsConn::dangerous_extract_secrets`]), or decline with
    /// [`TlsForward::handle_handoff_declined`].
    Handoff,
    /// The connection is over: close both sockets (with a reset when `failure` is set, so that
    /// neither peer mistakes a cut stream for a complete one).
    Close {
        /// Why, when it did not end cleanly.
        failure: Option<Failure>,
    },
}

/// Which leg a forwarder opens itself, after the other was accepted: the TLS leg in client mode
/// (plain TCP in, TLS out), the plain leg in server mode (TLS in, plain TCP out, connected once
/// the handshake is over). The driver is asked for it with [`Io::Connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opens {
    /// The TLS leg is connected first, then the handshake runs over it (client mode).
    TlsLeg,
    /// The TLS leg is the accepted socket; the plain leg is connected after the handshake
    /// (server mode).
    PlainLeg,
}

/// Whether the session may go to the kernel (kTLS) once the handshake is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handoff {
    /// Read the handshake record by record, so that no byte past it is taken from the kernel,
    /// then offer the session with [`Io::Handoff`].
    Offer,
    /// Stay in user space for the connection's whole life.
    #[default]
    Never,
}

/// Sizes of the buffers.
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    /// Bytes read from the plain leg at once (becomes up to `plain/16 KiB` records), and about
    /// the most plaintext decrypted before it is sent on (up to one record more).
    pub plain: usize,
    /// Bytes of records read from the TLS leg at once.
    pub tls: usize,
}

impl Default for Buffers {
    fn default() -> Self {
        Self {
            plain: 256 * 1024,
            tls: 256 * 1024 + 512,
        }
    }
}

/// How far a leg's TCP connection has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not open: the forwarder opens it ([`Opens`]) when its time comes, or its connect failed.
    Unopened,
    /// [`Io::Connect`] is out.
    Connecting,
    /// Connected, or accepted.
    Open,
}

/// What the forwarder knows of one leg's TCP connection.
#[derive(Debug)]
struct LegState {
    link: Link,
    /// The peer's FIN arrived (a receive returned 0). On the plain leg, close_notify is to
    /// follow the last records; on the TLS leg, the stream ended (cleanly only after
    /// close_notify).
    read_ended: bool,
    /// Our write half is shut ([`Io::ShutdownWrite`] went out).
    write_shut: bool,
}

impl LegState {
    fn new(link: Link) -> Self {
        Self {
            link,
            read_ended: false,
            write_shut: false,
        }
    }
    fn is_open(&self) -> bool {
        self.link == Link::Open
    }
}

/// Where a kernel hand-off stands ([`Handoff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandoffState {
    /// Not for this connection (never asked for, or declined by the driver).
    Never,
    /// Asked for: the handshake is read record by record (*record mode*), so no byte past it is
    /// taken from the kernel, and the session is offered once the handshake is over.
    Candidate,
    /// [`Io::Handoff`] went out; nothing moves until the driver takes the session or declines.
    Offered,
}

/// Everything but the rustls session, so that `run_records` can borrow both at once.
#[derive(Debug)]
struct Core {
    sizes: Buffers,
    /// Plain bytes read, waiting to be encrypted.
    plain_rx: Slot,
    /// Records waiting to be sent on the TLS leg.
    tls_tx: TxBuf,
    /// Records read, waiting to be decrypted.
    rx: Rx,
    /// Plaintext waiting to be sent on the plain leg.
    plain_tx: TxBuf,
    /// Records made outside the data flow (by rustls: handshake messages, alerts; by our record
    /// layer: KeyUpdates, alerts) while the driver was sending `tls_tx`; they go out after it.
    /// After a failure, the alert that goes out alone.
    ctrl: Vec<u8>,
    /// The plain leg's TCP connection (server mode opens it after the handshake).
    plain_leg: LegState,
    /// The TLS leg's TCP connection (client mode opens it first).
    tls_leg: LegState,
    handoff: HandoffState,
    handshake_done: bool,
    /// Our close_notify is in `tls_tx` (or sent).
    close_notify_sent: bool,
    /// The TLS peer is done (close_notify seen; the plaintext before it is in `plain_tx`).
    close_notify_received: bool,
    closed: bool,
    failure: Option<Failure>,
    plain_in: u64,
    plain_out: u64,
    /// Bytes moved to the front of the receive buffer (unfinished records), for tests.
    compacted: u64,
    /// Our record layer may take over from rustls after the handshake.
    own_records: bool,
    /// Records sealed before our record layer changes its send key, for tests.
    #[cfg(test)]
    tx_limit: Option<u64>,
}

/// Who does the record layer of a connection.
#[derive(Debug)]
enum Session {
    /// rustls: the handshake, then (for kTLS candidates and when asked) everything. Boxed: it
    /// is large, and goes when our record layer takes over.
    Rustls(Box<TlsConn>),
    /// Our own record layer, after the handshake.
    Own(Box<RecordLayer>),
    /// Taken for a kernel hand-off, or lost while changing over.
    Gone,
}

/// What a finished handshake settled, kept for the connection's life (rustls's session object
/// goes when our record layer takes over).
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    /// The protocol version.
    pub version: ProtocolVersion,
    /// The cipher suite.
    pub suite: SupportedCipherSuite,
    /// The ALPN protocol, if one was agreed.
    pub alpn: Option<Vec<u8>>,
    /// Full, full with HelloRetryRequest, or resumed.
    pub kind: Option<HandshakeKind>,
}

/// One forwarded connection with TLS on one leg.
#[derive(Debug)]
pub struct TlsForward {
    tls: Session,
    core: Core,
    negotiated: Option<Negotiated>,
}

impl TlsForward {
    /// Starts a connection whose other leg was accepted and which `opens` the given leg itself.
    /// [`Handoff::Offer`] reads the handshake record by record so that the session can be
    /// handed to the kernel afterwards ([`Io::Handoff`]).
    pub fn new(tls: TlsConn, opens: Opens, handoff: Handoff, sizes: Buffers) -> Self {
        let (plain_link, tls_link) = match opens {
            Opens::TlsLeg => (Link::Open, Link::Unopened),
            Opens::PlainLeg => (Link::Unopened, Link::Open),
        };
        let mut fwd = Self {
            tls: Session::Rustls(Box::new(tls)),
            core: Core {
                sizes,
                plain_rx: Slot::new(),
                tls_tx: TxBuf::new(),
                rx: Rx {
                    buf: Some(Vec::new()),
                    off: 0,
                    win: 0,
                },
                plain_tx: TxBuf::new(),
                ctrl: Vec::new(),
                plain_leg: LegState::new(plain_link),
                tls_leg: LegState::new(tls_link),
                handoff: match handoff {
                    Handoff::Offer => HandoffState::Candidate,
                    Handoff::Never => HandoffState::Never,
                },
                handshake_done: false,
                close_notify_sent: false,
                close_notify_received: false,
                closed: false,
                failure: None,
                plain_in: 0,
                plain_out: 0,
                compacted: 0,
                own_records: true,
                #[cfg(test)]
                tx_limit: None,
            },
            negotiated: None,
        };
        // A client's first flight is ready at once.
        fwd.run_records();
        fwd
    }

    /// What the handshake settled, once it is over.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// rustls's session state, while rustls does the record layer (not after our record layer
    /// took over, nor after a hand-off).
    pub fn rustls(&self) -> Option<&rustls::CommonState> {
        match &self.tls {
            Session::Rustls(conn) => Some(conn.common()),
            _ => None,
        }
    }

    /// Keeps rustls's record layer after the handshake instead of our own (which needs the
    /// config's `enable_secret_extraction`). Call it before the handshake ends.
    pub fn keep_rustls_records(&mut self) {
        self.core.own_records = false;
    }

    /// Our record layer's next send and receive sequence numbers, once it has taken over.
    #[cfg(test)]
    pub(crate) fn record_seqs(&self) -> Option<(u64, u64)> {
        match &self.tls {
            Session::Own(rl) => Some(rl.seqs()),
            _ => None,
        }
    }

    /// Whether our own record layer has taken over from rustls.
    pub fn own_records(&self) -> bool {
        matches!(self.tls, Session::Own(_))
    }

    /// Has our record layer change its send key after this many records, to exercise the
    /// change.
    #[cfg(test)]
    pub(crate) fn set_tx_limit(&mut self, records: u64) {
        self.core.tx_limit = Some(records);
        if let Session::Own(rl) = &mut self.tls {
            rl.set_tx_limit(records);
        }
    }

    /// Whether the TLS handshake is still running (the driver applies its handshake timeout).
    pub fn is_handshaking(&self) -> bool {
        !self.core.handshake_done
    }

    /// Plaintext bytes received from the plain leg so far.
    pub fn plain_bytes_in(&self) -> u64 {
        self.core.plain_in
    }

    /// Plaintext bytes sent on the plain leg so far.
    pub fn plain_bytes_out(&self) -> u64 {
        self.core.plain_out
    }

    /// Bytes of unfinished records moved to the front of the receive buffer so far.
    #[cfg(test)]
    pub(crate) fn bytes_compacted(&self) -> u64 {
        self.core.compacted
    }

    /// Whether the driver is receiving into the buffer in which rustls keeps part of a
    /// handshake message.
    #[cfg(test)]
    pub(crate) fn handshake_fragment_out(&self) -> bool {
        self.core.rx.buf.is_none() && self.core.rx.off < self.core.rx.win
    }

    /// Gives up the session for a kernel hand-off. Only valid after [`Io::Handoff`], when
    /// rustls still has the session; `None` otherwise.
    pub fn into_tls(self) -> Option<TlsConn> {
        match self.tls {
            Session::Rustls(conn) => Some(*conn),
            _ => None,
        }
    }

    /// The driver will not hand this connection to the kernel: carry on in user space.
    pub fn handle_handoff_declined(&mut self) {
        self.core.handoff = HandoffState::Never;
        self.run_records();
    }

    /// Reports the result of [`Io::Connect`].
    pub fn handle_connected(&mut self, leg: Leg, result: io::Result<()>) {
        let c = &mut self.core;
        match result {
            Ok(()) => c.leg_mut(leg).link = Link::Open,
            Err(e) => {
                c.leg_mut(leg).link = Link::Unopened;
                c.fail(fault_of(leg), format!("connect: {e}"));
            }
        }
    }

    /// Reports the result of [`Io::Recv`]: `Ok(0)` is end of stream. `buf` holds the bytes.
    pub fn handle_recv(&mut self, leg: Leg, buf: Vec<u8>, result: io::Result<usize>) {
        let c = &mut self.core;
        let mut fin = false;
        match leg {
            Leg::Plain => {
                c.plain_rx = Slot {
                    buf: Some(buf),
                    off: 0,
                };
                match result {
                    Ok(0) => c.plain_leg.read_ended = true,
                    Ok(n) => c.plain_in += n as u64,
                    Err(e) => c.fail(Fault::Plain, format!("recv: {e}")),
                }
            }
            Leg::Tls => {
                // The bytes were appended after what the buffer held: `off` and `win` still hold.
                c.rx.buf = Some(buf);
                match result {
                    Ok(0) => fin = true,
                    Ok(_) => {}
                    Err(e) => c.fail(Fault::TlsTransport, format!("recv: {e}")),
                }
            }
        }
        self.run_records();
        if fin {
            self.core.tls_transport_eof();
        }
    }

    /// Reports the result of [`Io::Send`]; `buf` is the buffer that was sent from.
    pub fn handle_send(&mut self, leg: Leg, buf: Vec<u8>, result: io::Result<usize>) {
        let c = &mut self.core;
        let sent = match result {
            Ok(n) => n,
            Err(e) => {
                c.fail(fault_of(leg), format!("send: {e}"));
                usize::MAX // nothing more goes out of this buffer
            }
        };
        // The unsent bytes move to the front; the buffer stays initialised.
        match leg {
            Leg::Plain => {
                if sent != usize::MAX {
                    c.plain_out += sent as u64;
                }
                c.plain_tx.returned(buf, sent);
            }
            Leg::Tls => c.tls_tx.returned(buf, sent),
        }
        // Room again: plaintext may be decrypted into `plain_tx`, or encrypted into `tls_tx`.
        self.run_records();
    }

    /// A timer the driver runs expired: the handshake or the upstream connect took too long.
    pub fn handle_timeout(&mut self) {
        let c = &mut self.core;
        let (fault, what) = if c.tls_leg.link == Link::Connecting {
            (Fault::TlsTransport, "connect timed out")
        } else if c.plain_leg.link == Link::Connecting {
            (Fault::Plain, "connect timed out")
        } else if !c.handshake_done {
            (Fault::Tls, "handshake timed out")
        } else {
            return;
        };
        c.fail(fault, what.to_string());
    }

    /// The next operation to perform, if any. Call it until it returns `None` after every
    /// `handle_*` call and at the start.
    pub fn poll_io(&mut self) -> Option<Io> {
        let tls_idle = match &self.tls {
            Session::Rustls(conn) => !conn.common().wants_write(),
            _ => true,
        };
        self.core.poll_io(tls_idle)
    }

    /// Lets rustls, or our record layer, process what it can (see `forward/records.rs`): one
    /// run of the record pump. Every completion ends with it; tests call it as one would.
    pub(crate) fn run_records(&mut self) {
        match &mut self.tls {
            Session::Rustls(conn) => match conn.as_mut() {
                TlsConn::Client(c) => self.core.run_rustls(c),
                TlsConn::Server(s) => self.core.run_rustls(s),
            },
            Session::Own(rl) => return self.core.run_own(rl),
            Session::Gone => return,
        }
        if self.core.handshake_done && self.negotiated.is_none() {
            self.negotiated = match &self.tls {
                Session::Rustls(conn) => negotiated(conn.common()),
                _ => None,
            };
        }
        self.take_over_records();
    }

    /// Hands the record layer from rustls to ours once the handshake is over, rustls has
    /// nothing queued and holds no part of a message, and no kernel hand-off is pending; then
    /// processes what is waiting.
    fn take_over_records(&mut self) {
        let c = &self.core;
        let ready = match &self.tls {
            Session::Rustls(conn) => {
                c.own_records
                    && c.handshake_done
                    && c.handoff == HandoffState::Never
                    && c.failure.is_none()
                    && !c.closed
                    && !c.close_notify_received
                    && c.rx.off == c.rx.win
                    && !conn.common().wants_write()
            }
            _ => false,
        };
        if !ready {
            return;
        }
        let Session::Rustls(conn) = std::mem::replace(&mut self.tls, Session::Gone) else {
            return;
        };
        match RecordLayer::take_over(*conn) {
            Ok(mut rl) => {
                #[cfg(test)]
                if let Some(limit) = self.core.tx_limit {
                    rl.set_tx_limit(limit);
                }
                self.core.run_own(&mut rl);
                self.tls = Session::Own(Box::new(rl));
            }
            Err(e) => self.core.fail(Fault::Tls, format!("internal: {e}")),
        }
    }
}

/// What `common` says the handshake settled.
fn negotiated(common: &rustls::CommonState) -> Option<Negotiated> {
    Some(Negotiated {
        version: common.protocol_version()?,
        suite: common.negotiated_cipher_suite()?,
        alpn: common.alpn_protocol().map(<[u8]>::to_vec),
        kind: common.handshake_kind(),
    })
}

impl From<RecordError> for Failure {
    fn from(e: RecordError) -> Self {
        Failure {
            fault: Fault::Tls,
            reason: e.reason,
            unclean_close: false,
            tls_error: None,
        }
    }
}

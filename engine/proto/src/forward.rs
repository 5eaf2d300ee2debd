//! The forwarding state machine of one plain <-> TLS connection, in user space.
//!
//! A [`TlsForward`] owns a rustls connection and four buffers. The driver asks it what to do next
//! with [`TlsForward::poll_io`], performs that I/O on the real sockets, and reports the result
//! with one of the `handle_*` methods, handing the buffer back. Nothing here touches a socket or
//! a clock.
//!
//! Flow control is by construction: a leg is read only when the bytes read last time have been
//! passed on, so each direction holds at most one buffer of plaintext and one of records.

use std::io::{self, BufRead, Write};

use crate::pool;

use rustls::Connection;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where it failed.
    pub fault: Fault,
    /// What happened, for the log.
    pub reason: String,
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
    /// Send all of `buf` on `leg`. Report with [`TlsForward::handle_send`] (partial sends are
    /// fine: the rest is asked for again).
    Send {
        /// The socket.
        leg: Leg,
        /// The bytes.
        buf: Vec<u8>,
    },
    /// Shut down the write half of `leg` (a FIN); nothing to report.
    ShutdownWrite(Leg),
    /// The handshake is done, the TLS leg is quiet and the config allows extraction: the driver
    /// may now take the connection with [`TlsForward::into_tls`] and hand its keys to the kernel,
    /// or decline with [`TlsForward::handle_handoff_declined`].
    Handoff,
    /// The connection is over: close both sockets (with a reset when `failure` is set, so that
    /// neither peer mistakes a cut stream for a complete one).
    Close {
        /// Why, when it did not end cleanly.
        failure: Option<Failure>,
    },
}

/// Sizes of the buffers.
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    /// Bytes read from the plain leg at once (becomes up to `plain/16 KiB` records).
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

/// The largest TLS record on the wire: header, 2^14 payload, 256 bytes of expansion.
const MAX_RECORD: usize = 5 + 16384 + 256;

#[derive(Debug, Default)]
struct Slot {
    /// The buffer when we hold it; `None` while the driver has it.
    buf: Option<Vec<u8>>,
    /// Bytes at the front of `buf` already consumed.
    off: usize,
}

impl Slot {
    /// A slot with no memory yet: buffers come from the pool when bytes arrive.
    fn new() -> Self {
        Self {
            buf: Some(Vec::new()),
            off: 0,
        }
    }
    /// When everything in the buffer has been consumed, returns it to the pool.
    fn release_if_empty(&mut self) {
        if let Some(b) = &mut self.buf
            && self.off >= b.len()
        {
            pool::give(std::mem::take(b));
            self.off = 0;
        }
    }
    fn idle(&self) -> bool {
        self.buf.is_some()
    }
    fn pending(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len() - self.off)
    }
}

/// One forwarded connection with TLS on one leg, while rustls does the record layer.
#[derive(Debug)]
pub struct TlsForward {
    tls: Connection,
    sizes: Buffers,
    /// Plain bytes read, waiting to go into rustls.
    plain_rx: Slot,
    /// Records waiting to be sent on the TLS leg.
    tls_tx: Slot,
    /// Records read, waiting to go into rustls.
    tls_rx: Slot,
    /// Plaintext waiting to be sent on the plain leg.
    plain_tx: Slot,
    /// Whether the TLS leg's TCP connection must be opened first (client mode).
    tls_connected: bool,
    /// Whether the plain leg is open (server mode connects it after the handshake).
    plain_connected: bool,
    connect_pending: bool,
    /// Read the handshake record by record, so no byte past it is taken from the kernel.
    record_mode: bool,
    handoff_offered: bool,
    handshake_done: bool,
    /// The plain leg sent FIN: close_notify queued.
    plain_eof: bool,
    /// Our write half of the TLS leg is shut.
    tls_shut: bool,
    /// The TLS peer is done (close_notify seen and all plaintext taken).
    tls_eof: bool,
    /// The TLS leg's TCP stream ended (FIN received).
    tls_fin: bool,
    /// Our write half of the plain leg is shut.
    plain_shut: bool,
    closed: bool,
    failure: Option<Failure>,
    plain_in: u64,
    plain_out: u64,
}

impl TlsForward {
    /// Starts a connection. `tls_connected`/`plain_connected` say which legs are already open
    /// (client mode: plain open, TLS leg to be connected; server mode: the reverse).
    /// `ktls_candidate` asks for the handshake to be read record by record so that the session
    /// can be handed to the kernel afterwards ([`Io::Handoff`]).
    pub fn new(
        mut tls: Connection,
        tls_connected: bool,
        plain_connected: bool,
        ktls_candidate: bool,
        sizes: Buffers,
    ) -> Self {
        // Our own buffers bound what rustls holds: we never hand it more than one read.
        tls.set_buffer_limit(None);
        Self {
            tls,
            sizes,
            plain_rx: Slot::new(),
            tls_tx: Slot::new(),
            tls_rx: Slot::new(),
            plain_tx: Slot::new(),
            tls_connected,
            plain_connected,
            connect_pending: false,
            record_mode: ktls_candidate,
            handoff_offered: false,
            handshake_done: false,
            plain_eof: false,
            tls_shut: false,
            tls_eof: false,
            tls_fin: false,
            plain_shut: false,
            closed: false,
            failure: None,
            plain_in: 0,
            plain_out: 0,
        }
    }

    /// The rustls connection (for the negotiated version, cipher suite, ALPN, peer certs).
    pub fn tls(&self) -> &Connection {
        &self.tls
    }

    /// Whether the TLS handshake is still running (the driver applies its handshake timeout).
    pub fn is_handshaking(&self) -> bool {
        !self.handshake_done
    }

    /// Plaintext bytes received from the plain leg so far.
    pub fn plain_bytes_in(&self) -> u64 {
        self.plain_in
    }

    /// Plaintext bytes sent on the plain leg so far.
    pub fn plain_bytes_out(&self) -> u64 {
        self.plain_out
    }

    /// Gives up the connection for a kernel hand-off. Only valid after [`Io::Handoff`].
    pub fn into_tls(self) -> Connection {
        self.tls
    }

    /// The driver will not hand this connection to the kernel: carry on in user space.
    pub fn handle_handoff_declined(&mut self) {
        self.record_mode = false;
    }

    /// Reports the result of [`Io::Connect`].
    pub fn handle_connected(&mut self, leg: Leg, result: io::Result<()>) {
        self.connect_pending = false;
        match result {
            Ok(()) => match leg {
                Leg::Plain => self.plain_connected = true,
                Leg::Tls => self.tls_connected = true,
            },
            Err(e) => self.fail(fault_of(leg), format!("connect: {e}")),
        }
    }

    /// Reports the result of [`Io::Recv`]: `Ok(0)` is end of stream. `buf` holds the bytes.
    pub fn handle_recv(&mut self, leg: Leg, buf: Vec<u8>, result: io::Result<usize>) {
        match leg {
            Leg::Plain => {
                self.plain_rx = Slot {
                    buf: Some(buf),
                    off: 0,
                };
                match result {
                    Ok(0) => {
                        self.plain_eof = true;
                        self.tls.send_close_notify();
                    }
                    Ok(n) => {
                        self.plain_in += n as u64;
                        self.feed_plain();
                    }
                    Err(e) => self.fail(Fault::Plain, format!("recv: {e}")),
                }
            }
            Leg::Tls => {
                self.tls_rx = Slot {
                    buf: Some(buf),
                    off: 0,
                };
                match result {
                    Ok(0) => self.tls_transport_eof(),
                    Ok(_)
                        if self.record_mode && !self.handshake_done && !self.record_complete() => {}
                    Ok(_) => self.feed_tls(),
                    Err(e) => self.fail(Fault::TlsTransport, format!("recv: {e}")),
                }
            }
        }
    }

    /// Reports the result of [`Io::Send`]; `buf` is the buffer that was sent from.
    pub fn handle_send(&mut self, leg: Leg, mut buf: Vec<u8>, result: io::Result<usize>) {
        match result {
            Ok(n) => {
                if leg == Leg::Plain {
                    self.plain_out += n as u64;
                }
                buf.drain(..n.min(buf.len()));
            }
            Err(e) => {
                buf.clear();
                let fault = match leg {
                    Leg::Plain => Fault::Plain,
                    Leg::Tls => Fault::TlsTransport,
                };
                self.fail(fault, format!("send: {e}"));
            }
        }
        let slot = match leg {
            Leg::Plain => &mut self.plain_tx,
            Leg::Tls => &mut self.tls_tx,
        };
        *slot = Slot {
            buf: Some(buf),
            off: 0,
        };
        slot.release_if_empty();
        if leg == Leg::Plain {
            self.drain_plaintext();
        } else {
            // Plain bytes that did not fit may be waiting.
            self.feed_plain();
        }
    }

    /// A timer the driver runs expired: the handshake or the upstream connect took too long.
    pub fn handle_timeout(&mut self) {
        if !self.handshake_done || self.connect_pending {
            let (fault, what) = match (self.connect_pending, self.tls_connected) {
                (true, false) => (Fault::TlsTransport, "connect timed out"),
                (true, true) => (Fault::Plain, "connect timed out"),
                (false, _) => (Fault::Tls, "handshake timed out"),
            };
            self.fail(fault, what.to_string());
        }
    }

    /// The next operation to perform, if any. Call it until it returns `None` after every
    /// `handle_*` call and at the start.
    pub fn poll_io(&mut self) -> Option<Io> {
        if self.closed {
            return None;
        }
        if let Some(f) = &self.failure {
            // Flush a pending alert first if we can, then close with a reset.
            if f.fault == Fault::Tls
                && self.tls_connected
                && self.tls_tx.idle()
                && self.tls.wants_write()
            {
                let mut buf = self.tls_tx.buf.take().unwrap_or_default();
                buf.clear();
                let _ = self.tls.write_tls(&mut buf);
                return Some(Io::Send { leg: Leg::Tls, buf });
            }
            if !self.tls_tx.idle() {
                return None; // wait for the alert to go out
            }
            self.closed = true;
            return Some(Io::Close {
                failure: self.failure.clone(),
            });
        }
        // Open the legs that are not open yet.
        if !self.tls_connected {
            if self.connect_pending {
                return None;
            }
            self.connect_pending = true;
            return Some(Io::Connect(Leg::Tls));
        }
        if self.handshake_done && !self.plain_connected {
            if self.connect_pending {
                return self.poll_tls_send();
            }
            self.connect_pending = true;
            return Some(Io::Connect(Leg::Plain));
        }
        if let Some(io) = self.poll_tls_send() {
            return Some(io);
        }
        if self.handshake_done
            && self.record_mode
            && !self.handoff_offered
            && self.tls_tx.idle()
            && self.tls_tx.pending() == 0
            && !self.tls.wants_write()
            && self.plain_connected
        {
            self.handoff_offered = true;
            return Some(Io::Handoff);
        }
        if self.record_mode && self.handshake_done {
            return None; // waiting for the driver's hand-off decision
        }
        // Records in.
        let partial_record = self.record_mode
            && self
                .tls_rx
                .buf
                .as_ref()
                .is_some_and(|b| !b.is_empty() && record_want(b) > 0);
        if !self.tls_eof
            && !self.tls_fin
            && self.tls_rx.idle()
            && self.tls.plaintext_bytes_pending() == 0
            && (self.tls_rx.pending() == 0 || partial_record)
            && (self.handshake_done || self.tls.wants_read())
        {
            let mut buf = self.tls_rx.buf.take().unwrap_or_default();
            let len = if self.record_mode {
                record_want(&buf)
            } else {
                buf.clear();
                self.sizes.tls
            };
            if buf.capacity() == 0 {
                buf = pool::take(self.sizes.tls.max(MAX_RECORD));
            }
            if buf.capacity() - buf.len() < len {
                buf.reserve(len);
            }
            return Some(Io::Recv {
                leg: Leg::Tls,
                buf,
                len,
            });
        }
        if !self.handshake_done || !self.plain_connected {
            return None;
        }
        // Plaintext out.
        if self.plain_tx.idle() && self.plain_tx.pending() > 0 {
            let buf = self.plain_tx.buf.take().unwrap_or_default();
            return Some(Io::Send {
                leg: Leg::Plain,
                buf,
            });
        }
        // Peer finished and everything is delivered: pass the FIN on.
        if self.tls_eof
            && !self.plain_shut
            && self.plain_tx.idle()
            && self.plain_tx.pending() == 0
            && self.tls.plaintext_bytes_pending() == 0
        {
            self.plain_shut = true;
            return Some(Io::ShutdownWrite(Leg::Plain));
        }
        // Plain bytes in.
        if !self.plain_eof
            && self.plain_rx.idle()
            && self.plain_rx.pending() == 0
            && self.tls_tx.idle()
            && self.tls_tx.pending() == 0
            && !self.tls.wants_write()
        {
            let mut buf = self.plain_rx.buf.take().unwrap_or_default();
            buf.clear();
            if buf.capacity() < self.sizes.plain {
                pool::give(buf);
                buf = pool::take(self.sizes.plain);
            }
            return Some(Io::Recv {
                leg: Leg::Plain,
                buf,
                len: self.sizes.plain,
            });
        }
        // Our close_notify is out: pass the FIN on.
        if self.plain_eof
            && !self.tls_shut
            && self.tls_tx.idle()
            && self.tls_tx.pending() == 0
            && !self.tls.wants_write()
        {
            self.tls_shut = true;
            return Some(Io::ShutdownWrite(Leg::Tls));
        }
        if self.tls_shut
            && self.plain_shut
            && self.tls_tx.idle()
            && self.plain_tx.idle()
            && self.plain_rx.idle()
            && self.tls_rx.idle()
        {
            self.closed = true;
            return Some(Io::Close { failure: None });
        }
        None
    }

    fn poll_tls_send(&mut self) -> Option<Io> {
        if !self.tls_tx.idle() {
            return None;
        }
        if !self.tls.wants_write() && self.tls_tx.pending() == 0 {
            return None;
        }
        let buf = self.tls_tx.buf.as_mut().expect("idle slot has a buffer");
        if self.tls_tx.off > 0 {
            buf.drain(..self.tls_tx.off);
            self.tls_tx.off = 0;
        }
        if buf.capacity() == 0 {
            *buf = pool::take(self.sizes.tls);
        }
        while self.tls.wants_write() {
            if self.tls.write_tls(buf).is_err() {
                break;
            }
        }
        if buf.is_empty() {
            self.tls_tx.release_if_empty();
            return None;
        }
        let buf = self.tls_tx.buf.take().expect("checked above");
        Some(Io::Send { leg: Leg::Tls, buf })
    }

    /// Moves plain bytes read into rustls (which encrypts them into records).
    fn feed_plain(&mut self) {
        let Some(buf) = self.plain_rx.buf.as_mut() else {
            return;
        };
        if self.plain_rx.off < buf.len() {
            // With no buffer limit rustls takes everything once the handshake is done.
            match self.tls.writer().write(&buf[self.plain_rx.off..]) {
                Ok(n) => self.plain_rx.off += n,
                Err(e) => {
                    let reason = format!("encrypt: {e}");
                    self.fail(Fault::Tls, reason);
                    return;
                }
            }
        }
        self.plain_rx.release_if_empty();
    }

    /// In record mode, whether `tls_rx` now holds one whole record.
    fn record_complete(&self) -> bool {
        let buf = self.tls_rx.buf.as_ref().expect("just stored");
        record_want(buf) == 0
    }

    /// Moves received records into rustls and plaintext out of it.
    fn feed_tls(&mut self) {
        let Some(buf) = self.tls_rx.buf.as_mut() else {
            return;
        };
        while self.tls_rx.off < buf.len() {
            let mut rd = &buf[self.tls_rx.off..];
            match self.tls.read_tls(&mut rd) {
                // After close_notify rustls takes nothing more (RFC 8446 6.1: bytes after it
                // are ignored); drop them rather than offer them again forever.
                Ok(0) => self.tls_rx.off = buf.len(),
                Ok(n) => self.tls_rx.off += n,
                Err(e) => {
                    let reason = format!("read records: {e}");
                    self.fail(Fault::Tls, reason);
                    return;
                }
            }
            if let Err(e) = self.tls.process_new_packets() {
                self.fail(Fault::Tls, e.to_string());
                return;
            }
            if self.tls.plaintext_bytes_pending() > 0 {
                // Let plaintext drain before taking more records.
                break;
            }
        }
        self.tls_rx.release_if_empty();
        if !self.tls.is_handshaking() {
            self.handshake_done = true;
        }
        self.drain_plaintext();
    }

    /// Moves decrypted plaintext into `plain_tx` (when it is free) and notices close_notify.
    fn drain_plaintext(&mut self) {
        if !self.plain_tx.idle() || self.failure.is_some() {
            return;
        }
        let buf = self.plain_tx.buf.as_mut().expect("idle");
        if self.plain_tx.off > 0 {
            buf.drain(..self.plain_tx.off);
            self.plain_tx.off = 0;
        }
        let limit = self.sizes.plain;
        let mut eof = false;
        if !self.tls_eof {
            // Copy straight out of rustls's chunks (no zero-filling of our buffer).
            let mut reader = self.tls.reader();
            while buf.len() < limit {
                match reader.fill_buf() {
                    Ok([]) => {
                        eof = true;
                        break;
                    }
                    Ok(chunk) => {
                        let k = chunk.len().min(limit - buf.len());
                        if buf.capacity() == 0 {
                            *buf = pool::take(limit);
                        }
                        buf.extend_from_slice(&chunk[..k]);
                        reader.consume(k);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        let reason = format!("stream truncated: {e}");
                        self.fail(Fault::TlsTransport, reason);
                        return;
                    }
                }
            }
        }
        if eof {
            // close_notify: the peer's direction is complete.
            self.tls_eof = true;
        }
        self.plain_tx.release_if_empty();
        // Continue feeding records held back for flow control.
        if self.tls_rx.pending() > 0
            && self.tls.plaintext_bytes_pending() == 0
            && self.tls_rx.idle()
        {
            self.feed_tls();
        }
    }

    fn tls_transport_eof(&mut self) {
        // Tell rustls the transport ended; no more records will come.
        self.tls_fin = true;
        let _ = self.tls.read_tls(&mut io::empty());
        let state = match self.tls.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                self.fail(Fault::Tls, e.to_string());
                return;
            }
        };
        if !self.handshake_done {
            self.fail(
                Fault::TlsTransport,
                "connection closed during the TLS handshake".to_string(),
            );
            return;
        }
        if !state.peer_has_closed() {
            // The stream was cut: reset rather than pass on a clean end that never came.
            self.fail(
                Fault::TlsTransport,
                "peer closed the connection without close_notify (stream may be truncated)"
                    .to_string(),
            );
            return;
        }
        // close_notify came before the FIN: the reader reports the clean end once the
        // plaintext before it has been passed on.
        self.drain_plaintext();
    }

    fn fail(&mut self, fault: Fault, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(Failure { fault, reason });
        }
    }
}

/// How many more bytes complete the record at the start of `buf` (0 when complete).
fn record_want(buf: &[u8]) -> usize {
    if buf.len() < 5 {
        return 5 - buf.len();
    }
    let body = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if !(20..=24).contains(&buf[0]) || buf[1] != 3 || body > MAX_RECORD - 5 + 2048 {
        // No valid record starts like this (content type, major version, length): hand it to
        // rustls now, which rejects it, rather than wait for a record that never ends.
        return 0;
    }
    (5 + body).saturating_sub(buf.len())
}

fn fault_of(leg: Leg) -> Fault {
    match leg {
        Leg::Plain => Fault::Plain,
        Leg::Tls => Fault::TlsTransport,
    }
}

trait PlaintextPending {
    fn plaintext_bytes_pending(&mut self) -> usize;
}

impl PlaintextPending for Connection {
    fn plaintext_bytes_pending(&mut self) -> usize {
        match self.process_new_packets() {
            Ok(s) => s.plaintext_bytes_to_read(),
            Err(_) => 0,
        }
    }
}

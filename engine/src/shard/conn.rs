//! One proxied connection inside a shard: which state machine runs it (user-space TLS, or
//! the splice pump after a kTLS hand-off), which fd each leg is, and the glue between the
//! state machine's operations and the driver.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use splice_proto::proxy_protocol::{self, Addresses, Parsed};
use splice_proto::{Buffers, Fault, Io, Leg, Negotiated, TlsForward};

use super::splice::SplicePump;
use super::{
    Forwarder, Shard, TAG_CONNECT, TAG_HANGUP_PLAIN, TAG_HANGUP_TLS, TAG_RECV_PLAIN, TAG_RECV_TLS,
    TAG_SEND_PLAIN, TAG_SEND_TLS, TAG_WAIT_PLAIN, TAG_WAIT_TLS, token,
};
use crate::config::{Mode, ProxyVersion};
use crate::driver::{Completion, Fd, Op};
use crate::error::{Error, Side};
use crate::sys;

pub(crate) enum Outcome {
    Open,
    Closed(Option<(Side, String)>),
}

enum State {
    Tls(Box<TlsForward>),
    Spliced(Box<SplicePump>),
    Gone,
}

pub(crate) struct Conn {
    pub(crate) generation: u32,
    pub(crate) fwd: Arc<Forwarder>,
    /// The accepted socket.
    pub(crate) down: Fd,
    /// The socket we opened.
    pub(crate) up: Option<Fd>,
    peer: Option<SocketAddr>,
    state: State,
    /// When the running handshake or connect must be over.
    pub(crate) deadline: Option<Instant>,
    /// The deadline a timer was last set for (so each change arms exactly one timer).
    pub(crate) armed: Option<Instant>,
    counted_in: u64,
    counted_out: u64,
    started: Instant,
    /// When the TLS leg's TCP connection was made, until the handshake's time is recorded.
    handshake_from: Option<Instant>,
    /// Per leg (plain, TLS): the last read did not fill its buffer, so the next one waits for
    /// readiness before taking a buffer — idle connections hold no buffer memory.
    idle: [bool; 2],
    /// The TLS leg has the kernel's `tls` ULP (keys come at the hand-off).
    ulp_attached: bool,
    /// Per leg: a readiness wait is in flight for a read of this many bytes.
    waiting_len: [Option<usize>; 2],
    /// Per leg: readiness was spurious for a read of this many bytes; wait again.
    ready_read: [Option<usize>; 2],
    /// The failure the state machine closed with is an unclean close (see `Failure`).
    unclean_close: bool,
    /// What the handshake settled, kept past a kTLS hand-off for the access line.
    negotiated: Option<Negotiated>,
    /// Payload bytes moved over the connection's life: down to up, up to down.
    moved: (u64, u64),
    /// Per leg: an [`Op::Hangup`] watch is in flight, or no longer wanted (the peer's FIN
    /// came: what follows is read in order by the state machine).
    watched: [bool; 2],
    /// The upstream socket is connected (before that there is nothing to watch).
    up_connected: bool,
    /// Per leg: we shut its write side (so a hang-up there can be a clean end).
    shut_write: [bool; 2],
    /// A watch saw a reset, or the idle timeout fired: close with this at the next drive.
    hangup: Option<(Side, String)>,
    /// When the idle timeout next needs checking (`None`: no idle timeout).
    pub(crate) idle_deadline: Option<Instant>,
    /// The idle deadline a timer was last set for.
    pub(crate) idle_armed: Option<Instant>,
    /// When bytes last moved (only kept with an idle timeout).
    last_active: Instant,
    /// `accept_proxy`: the PROXY header still being read; nothing else runs until it is done.
    proxy_in: Option<Box<ProxyIn>>,
    /// The destination address a PROXY header carried (the source replaces `peer`).
    proxied_to: Option<SocketAddr>,
}

impl Conn {
    pub(crate) fn new(
        fwd: Arc<Forwarder>,
        down: Fd,
        peer: Option<SocketAddr>,
        generation: u32,
    ) -> Result<Self, Error> {
        // The kTLS module is attached as soon as the TLS leg is connected (here, for an accepted
        // socket; after the connect in client mode). Until keys are installed the socket is
        // plain TCP, and attaching early means a peer's FIN that arrives right after the
        // handshake no longer makes the kernel refuse (`ENOTCONN`).
        let ulp_attached = fwd.ktls.is_some() && fwd.mode == Mode::Server && attach_ulp(&down);
        let ktls = fwd.ktls.is_some() && (fwd.mode == Mode::Client || ulp_attached);
        let sm = match fwd.mode {
            Mode::Client => {
                let (cfg, name) = fwd
                    .client_tls
                    .as_ref()
                    .expect("client mode has a TLS config");
                let c = UnbufferedClientConnection::new(cfg.clone(), name.clone())?;
                TlsForward::new(c.into(), false, true, ktls, Buffers::default())
            }
            Mode::Server => {
                let cfg = fwd
                    .server_tls
                    .as_ref()
                    .expect("server mode has a TLS config");
                let c = UnbufferedServerConnection::new(cfg.clone())?;
                TlsForward::new(c.into(), true, false, ktls, Buffers::default())
            }
        };
        let budget = match fwd.mode {
            Mode::Client => fwd.connect_timeout + fwd.handshake_timeout,
            Mode::Server => fwd.handshake_timeout,
        };
        // Server mode's TLS leg is the accepted socket; client mode's is connected later.
        let handshake_from = (fwd.mode == Mode::Server).then(Instant::now);
        let now = Instant::now();
        let idle_deadline = fwd.idle_timeout.map(|t| now + t);
        let fwd_accepts_proxy = fwd.accept_proxy;
        Ok(Self {
            generation,
            fwd,
            down,
            up: None,
            peer,
            state: State::Tls(Box::new(sm)),
            deadline: Some(Instant::now() + budget),
            armed: None,
            counted_in: 0,
            counted_out: 0,
            started: Instant::now(),
            handshake_from,
            idle: [true; 2],
            ulp_attached,
            waiting_len: [None; 2],
            ready_read: [None; 2],
            unclean_close: false,
            negotiated: None,
            moved: (0, 0),
            watched: [false; 2],
            up_connected: false,
            shut_write: [false; 2],
            hangup: None,
            idle_deadline,
            idle_armed: None,
            last_active: now,
            proxy_in: fwd_accepts_proxy.then(Box::default),
            proxied_to: None,
        })
    }

    fn leg_fd(&self, leg: Leg) -> Option<Fd> {
        let down = matches!(
            (self.fwd.mode, leg),
            (Mode::Client, Leg::Plain) | (Mode::Server, Leg::Tls)
        );
        if down {
            Some(self.down.clone())
        } else {
            self.up.clone()
        }
    }

    /// The side a fault is on, for this connection's mode.
    fn side(&self, fault: Fault) -> Side {
        match (fault, self.fwd.mode) {
            (Fault::Tls, _) => Side::Tls,
            (Fault::Plain, Mode::Client) | (Fault::TlsTransport, Mode::Server) => Side::Downstream,
            (Fault::Plain, Mode::Server) | (Fault::TlsTransport, Mode::Client) => Side::Upstream,
        }
    }

    /// Hands a completion to the state machine.
    pub(crate) fn complete(&mut self, tag: u8, mut c: Completion) {
        if tag == TAG_HANGUP_PLAIN || tag == TAG_HANGUP_TLS {
            let leg = if tag == TAG_HANGUP_PLAIN {
                Leg::Plain
            } else {
                Leg::Tls
            };
            self.hangup_seen(leg, c.result);
            return;
        }
        if self.proxy_in.is_some() {
            // The only operation in flight while the header is read is its readiness wait.
            self.proxy_readable(c);
            return;
        }
        if let (TAG_CONNECT, Ok(_), Some(v)) = (tag, &c.result, self.fwd.send_proxy) {
            // Before the state machine sees the connection, so the header goes first.
            if let Err(e) = self.send_proxy_header(v) {
                c.result = Err(e);
            }
        }
        if tag == TAG_CONNECT && c.result.is_ok() {
            self.up_connected = true;
        }
        match &mut self.state {
            State::Tls(sm) => {
                let leg_of = |t| match t {
                    TAG_RECV_PLAIN | TAG_SEND_PLAIN => Leg::Plain,
                    _ => Leg::Tls,
                };
                match (tag, c.op) {
                    (TAG_CONNECT, _) => {
                        let leg = match self.fwd.mode {
                            Mode::Client => Leg::Tls,
                            Mode::Server => Leg::Plain,
                        };
                        let ok = c.result.is_ok();
                        if ok && self.fwd.mode == Mode::Client && self.fwd.ktls.is_some() {
                            match self.up.as_ref() {
                                Some(up) if attach_ulp(up) => self.ulp_attached = true,
                                _ => sm.handle_handoff_declined(),
                            }
                        }
                        sm.handle_connected(leg, c.result.map(|_| ()));
                        if ok && self.fwd.mode == Mode::Client {
                            self.handshake_from = Some(Instant::now());
                        }
                        self.deadline = match self.fwd.mode {
                            // Connected: now the handshake has its own budget.
                            Mode::Client if ok => Some(Instant::now() + self.fwd.handshake_timeout),
                            // Server mode connects after the handshake: nothing left to time.
                            _ => None,
                        };
                    }
                    (TAG_RECV_PLAIN | TAG_RECV_TLS, Op::Recv { buf, len, .. }) => {
                        let leg = leg_of(tag);
                        self.idle[leg as usize] = !matches!(c.result, Ok(n) if n == len);
                        sm.handle_recv(leg, buf, c.result)
                    }
                    (TAG_WAIT_PLAIN | TAG_WAIT_TLS, Op::Poll { fd, .. }) => {
                        // Readable (or an error the read will report): read now with a plain
                        // nonblocking recv; a second trip through the ring would only add
                        // latency. Spurious readiness goes back to waiting.
                        let leg = if tag == TAG_WAIT_PLAIN {
                            Leg::Plain
                        } else {
                            Leg::Tls
                        };
                        let len = self.waiting_len[leg as usize].take().unwrap_or(0);
                        let mut buf = splice_proto::pool::take(len);
                        match crate::sys::recv_into(fd.as_fd(), &mut buf, len) {
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                splice_proto::pool::give(buf);
                                self.ready_read[leg as usize] = Some(len);
                            }
                            res => {
                                self.idle[leg as usize] = !matches!(res, Ok(n) if n == len);
                                sm.handle_recv(leg, buf, res);
                            }
                        }
                    }
                    (TAG_SEND_PLAIN | TAG_SEND_TLS, Op::Send { buf, .. }) => {
                        sm.handle_send(leg_of(tag), buf, c.result)
                    }
                    _ => {}
                }
                if !sm.is_handshaking() && self.fwd.mode == Mode::Client && tag != TAG_CONNECT {
                    self.deadline = None;
                }
                if !sm.is_handshaking() {
                    if let Some(from) = self.handshake_from.take() {
                        self.fwd.stats.handshakes.observe(from.elapsed());
                    }
                }
            }
            State::Spliced(p) => p.complete(tag, c.result),
            State::Gone => {}
        }
    }

    /// A hang-up watch on `leg` completed.
    fn hangup_seen(&mut self, leg: Leg, result: std::io::Result<usize>) {
        let bits = match result {
            Ok(bits) => bits as i16,
            // Cancelled: the connection is closing anyway.
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return,
            Err(_) => libc::POLLERR,
        };
        // Both directions shut, though we never shut ours: the connection was reset or aborted
        // (a write in flight may already have taken the error itself, leaving no POLLERR).
        let shut_by_us = self.shut_write[leg as usize]
            || matches!(&self.state, State::Spliced(p) if p.wrote_eof(leg));
        // On a Unix socket (`Engine::connect`'s socketpair) a hang-up is the peer's close: what
        // it wrote is still to be read, as after a FIN. A reset there shows as POLLERR.
        let unix = || {
            self.leg_fd(leg)
                .is_some_and(|fd| sys::is_unix_socket(fd.as_fd()))
        };
        if bits & libc::POLLERR != 0 || (bits & libc::POLLHUP != 0 && !shut_by_us && !unix()) {
            // A reset (or another socket error) on a leg that may not be read or written for
            // a long time while the other direction is stalled. The socket error itself is left
            // for a read or write in flight to report; this one is closing the connection.
            let fault = match leg {
                Leg::Plain => Fault::Plain,
                Leg::Tls => Fault::TlsTransport,
            };
            let side = self.side(fault);
            self.hangup.get_or_insert((
                side,
                "the peer reset the connection (noticed while the other direction was stalled)"
                    .into(),
            ));
        }
        // Otherwise the peer's FIN (or both directions shut, ours first): the state machine
        // reads up to it in order. Stay unwatched: poll would report the FIN again at once.
    }

    /// Watches each connected leg for a reset, whatever its reads and writes are doing.
    fn watch_legs(&mut self, index: u32, shard: &mut Shard) {
        for (leg, tag) in [(Leg::Plain, TAG_HANGUP_PLAIN), (Leg::Tls, TAG_HANGUP_TLS)] {
            if self.watched[leg as usize] {
                continue;
            }
            let down = matches!(
                (self.fwd.mode, leg),
                (Mode::Client, Leg::Plain) | (Mode::Server, Leg::Tls)
            );
            if !down && !self.up_connected {
                continue;
            }
            let Some(fd) = self.leg_fd(leg) else { continue };
            self.watched[leg as usize] = true;
            shard
                .driver
                .submit(token(tag, index, self.generation), Op::Hangup { fd });
        }
    }

    /// The idle timer fired: reset the connection if no byte moved for `idle_timeout`.
    pub(crate) fn idle_timeout(&mut self, now: Instant) {
        let Some(limit) = self.fwd.idle_timeout else {
            return;
        };
        let handshaking = matches!(&self.state, State::Tls(sm) if sm.is_handshaking());
        if handshaking {
            // The handshake has its own timeout.
            self.idle_deadline = Some(now + limit);
        } else if self.last_active + limit > now {
            self.idle_deadline = Some(self.last_active + limit);
        } else {
            self.hangup.get_or_insert((
                Side::Downstream,
                format!(
                    "no bytes moved for {} (idle_timeout)",
                    humantime::format_duration(limit)
                ),
            ));
        }
    }

    pub(crate) fn timeout(&mut self) {
        if let Some(p) = &mut self.proxy_in {
            p.failed
                .get_or_insert_with(|| "no complete PROXY header before the deadline".into());
            return;
        }
        if let State::Tls(sm) = &mut self.state {
            sm.handle_timeout();
        }
    }

    /// Performs the state machine's operations until it has none; says whether it closed.
    pub(crate) fn drive(&mut self, index: u32, shard: &mut Shard) -> Outcome {
        if let Some(failure) = self.hangup.take() {
            self.account();
            return Outcome::Closed(Some(failure));
        }
        if self.proxy_in.is_some() {
            return self.drive_proxy_in(index, shard);
        }
        self.watch_legs(index, shard);
        for leg in [Leg::Plain, Leg::Tls] {
            if let Some(len) = self.ready_read[leg as usize].take() {
                let tag = if leg == Leg::Plain {
                    TAG_WAIT_PLAIN
                } else {
                    TAG_WAIT_TLS
                };
                let fd = self.leg_fd(leg).expect("a leg that was polled is open");
                self.waiting_len[leg as usize] = Some(len);
                shard.driver.submit(
                    token(tag, index, self.generation),
                    Op::Poll { fd, write: false },
                );
            }
        }
        loop {
            let io = match &mut self.state {
                State::Tls(sm) => match sm.poll_io() {
                    Some(io) => io,
                    None => break,
                },
                State::Spliced(p) => {
                    let r = p.drive(index, self.generation, shard);
                    self.account();
                    return match r {
                        None => Outcome::Open,
                        Some(failure) => Outcome::Closed(failure),
                    };
                }
                State::Gone => return Outcome::Closed(None),
            };
            match io {
                Io::Connect(_) => {
                    if let Err(e) = self.connect(index, shard) {
                        let leg = match self.fwd.mode {
                            Mode::Client => Leg::Tls,
                            Mode::Server => Leg::Plain,
                        };
                        if let State::Tls(sm) = &mut self.state {
                            sm.handle_connected(leg, Err(e));
                        }
                    }
                }
                Io::Recv { leg, buf, len } => {
                    let fd = self.leg_fd(leg).expect("state machine reads an open leg");
                    let plain = leg == Leg::Plain;
                    if buf.is_empty() && self.idle[leg as usize] {
                        // Wait for bytes before tying up a buffer.
                        splice_proto::pool::give(buf);
                        self.waiting_len[leg as usize] = Some(len);
                        let tag = if plain { TAG_WAIT_PLAIN } else { TAG_WAIT_TLS };
                        shard.driver.submit(
                            token(tag, index, self.generation),
                            Op::Poll { fd, write: false },
                        );
                    } else {
                        let tag = if plain { TAG_RECV_PLAIN } else { TAG_RECV_TLS };
                        shard.driver.submit(
                            token(tag, index, self.generation),
                            Op::Recv { fd, buf, len },
                        );
                    }
                }
                Io::Send { leg, buf, len } => {
                    let tag = if leg == Leg::Plain {
                        TAG_SEND_PLAIN
                    } else {
                        TAG_SEND_TLS
                    };
                    let fd = self.leg_fd(leg).expect("state machine writes an open leg");
                    shard.driver.submit(
                        token(tag, index, self.generation),
                        Op::Send { fd, buf, len },
                    );
                }
                Io::ShutdownWrite(leg) => {
                    self.shut_write[leg as usize] = true;
                    if let Some(fd) = self.leg_fd(leg) {
                        let _ = socket2::SockRef::from(&*fd).shutdown(std::net::Shutdown::Write);
                    }
                }
                Io::Handoff => self.handoff(shard),
                Io::Close { failure } => {
                    self.account();
                    self.unclean_close = failure.as_ref().is_some_and(|f| f.unclean_close);
                    let failure = failure.map(|f| {
                        let reason = match &f.tls_error {
                            Some(e) => crate::tls::explain(e, self.fwd.mode),
                            None => f.reason,
                        };
                        (self.side(f.fault), reason)
                    });
                    return Outcome::Closed(failure);
                }
            }
        }
        self.account();
        Outcome::Open
    }

    fn connect(&mut self, index: u32, shard: &mut Shard) -> std::io::Result<()> {
        let addr = &self.fwd.upstream;
        let sock = socket2::Socket::new(
            addr.domain(),
            socket2::Type::STREAM.nonblocking().cloexec(),
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_tcp_nodelay(true)?;
        let fd: Fd = Rc::new(sock.into());
        self.up = Some(fd.clone());
        self.deadline = Some(Instant::now() + self.fwd.connect_timeout);
        shard.driver.submit(
            token(TAG_CONNECT, index, self.generation),
            Op::Connect {
                fd,
                addr: Box::new(addr.clone()),
            },
        );
        Ok(())
    }

    /// The handshake is over: give the session to the kernel if it can take this cipher.
    fn handoff(&mut self, shard: &mut Shard) {
        let Some(tls_fd) = self.leg_fd(Leg::Tls) else {
            return;
        };
        let State::Tls(sm) = &mut self.state else {
            return;
        };
        let support = self.fwd.ktls.as_ref();
        self.negotiated = sm.negotiated().cloned();
        let settled = sm.negotiated().map(|n| (n.suite, n.version));
        let (Some(support), Some((suite, version))) = (support, settled) else {
            sm.handle_handoff_declined();
            return;
        };
        if !support.supports(suite) {
            tracing::debug!(suite = ?suite.suite(), "kernel lacks this cipher; staying in user space");
            sm.handle_handoff_declined();
            return;
        }
        // The ULP is normally attached already; if not, attach it while the rustls session is
        // still ours, so that a refusal leaves the connection in user space.
        if !self.ulp_attached && !attach_ulp(&tls_fd) {
            sm.handle_handoff_declined();
            return;
        }
        let State::Tls(sm) = std::mem::replace(&mut self.state, State::Gone) else {
            unreachable!()
        };
        let plain_fd = self
            .leg_fd(Leg::Plain)
            .expect("the plain leg is open before the hand-off");
        let extracted = sm
            .into_tls()
            .ok_or_else(|| "rustls no longer has the session".to_string())
            .and_then(|tls| tls.dangerous_into_kernel().map_err(|e| e.to_string()));
        let (secrets, tickets) = match extracted {
            Ok(s) => s,
            Err(e) => {
                self.state = State::Gone;
                self.fail_now(Side::Tls, format!("extract secrets: {e}"));
                return;
            }
        };
        if let Err(e) = sys::ktls::enable_attached(tls_fd.as_fd(), version, secrets) {
            self.fail_now(Side::Internal, format!("kTLS hand-off: {e}"));
            return;
        }
        self.fwd.stats.ktls.fetch_add(1, Relaxed);
        let pump = match SplicePump::new(plain_fd, tls_fd, self.fwd.mode, version, tickets, shard) {
            Ok(p) => p,
            Err(e) => {
                self.fail_now(Side::Internal, format!("pipes: {e}"));
                return;
            }
        };
        // Bytes counted so far stay counted (the handshake moves none); the pump counts from zero.
        self.counted_in = 0;
        self.counted_out = 0;
        self.state = State::Spliced(Box::new(pump));
    }

    fn fail_now(&mut self, side: Side, reason: String) {
        self.state = State::Spliced(Box::new(SplicePump::failed(side, reason)));
    }

    /// Adds the bytes moved since last time to the listener's counters.
    fn account(&mut self) {
        let (inn, out) = match &self.state {
            State::Tls(sm) => (sm.plain_bytes_in(), sm.plain_bytes_out()),
            State::Spliced(p) => p.bytes(),
            State::Gone => return,
        };
        let d_in = inn.saturating_sub(self.counted_in);
        let d_out = out.saturating_sub(self.counted_out);
        self.counted_in = inn;
        self.counted_out = out;
        if d_in == 0 && d_out == 0 {
            return;
        }
        if self.fwd.idle_timeout.is_some() {
            self.last_active = Instant::now();
        }
        // "in" is what the plain leg sent us; which direction that is depends on the mode.
        let (down_up, up_down) = match self.fwd.mode {
            Mode::Client => (d_in, d_out),
            Mode::Server => (d_out, d_in),
        };
        self.moved.0 += down_up;
        self.moved.1 += up_down;
        self.fwd.stats.bytes_down_to_up.fetch_add(down_up, Relaxed);
        self.fwd.stats.bytes_up_to_down.fetch_add(up_down, Relaxed);
    }

    /// Closes both sockets (resetting them on failure), logs and counts the outcome.
    pub(crate) fn close(&mut self, failure: Option<(Side, String)>, shard: &mut Shard) {
        self.account();
        if let State::Tls(sm) = &self.state
            && self.negotiated.is_none()
        {
            self.negotiated = sm.negotiated().cloned();
        }
        let stats = &self.fwd.stats;
        stats.active.fetch_sub(1, Relaxed);
        let fds = [Some(self.down.clone()), self.up.clone()];
        let peer = self.peer_text();
        let unclean = failure.is_some() && self.unclean_close;
        if let Some((side, reason)) = &failure {
            if unclean {
                // Not an error (browsers end `wss://` this way), but no clean end either.
                stats.unclean_closes.fetch_add(1, Relaxed);
                tracing::debug!(
                    forwarder = %self.fwd.name,
                    peer = %peer,
                    side = %side,
                    reason = %reason,
                    "unclean close: the other side was reset"
                );
            } else {
                stats.record_error(*side);
                if shard.log_allow(&self.fwd.name, failure_kind(*side)) {
                    tracing::warn!(
                        forwarder = %self.fwd.name,
                        peer = %peer,
                        upstream = %self.fwd.upstream_text,
                        side = %side,
                        reason = %reason,
                        "connection failed"
                    );
                }
            }
            for fd in fds.iter().flatten() {
                // A reset, so that neither peer mistakes a cut stream for a complete one.
                let _ = socket2::SockRef::from(&**fd).set_linger(Some(Duration::ZERO));
            }
        }
        if self.fwd.access_log {
            self.access_line(&peer, failure.as_ref(), unclean);
        }
        if let State::Spliced(p) = std::mem::replace(&mut self.state, State::Gone) {
            p.release(shard);
        }
        for fd in fds.iter().flatten() {
            shard.driver.cancel(fd.as_raw_fd());
        }
    }
}

impl Conn {
    /// The client's address for logs (`-` when unknown).
    fn peer_text(&self) -> String {
        self.peer.map_or_else(|| "-".to_string(), |p| p.to_string())
    }

    /// The access line: one per connection at `info`, with stable field names and types.
    fn access_line(&self, peer: &str, failure: Option<&(Side, String)>, unclean: bool) {
        let n = self.negotiated.as_ref();
        let tls = match n.map(|n| n.version) {
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            Some(_) => "other",
            None => "-",
        };
        let suite = n.and_then(|n| n.suite.suite().as_str()).unwrap_or("-");
        let resumed = n.is_some_and(|n| n.kind == Some(rustls::HandshakeKind::Resumed));
        let (end, side, reason) = match failure {
            None => ("clean", "-", ""),
            Some((side, reason)) if unclean => ("unclean", side.as_str(), reason.as_str()),
            Some((side, reason)) => ("error", side.as_str(), reason.as_str()),
        };
        tracing::info!(
            forwarder = %self.fwd.name,
            peer = %peer,
            upstream = %self.fwd.upstream_text,
            tls = %tls,
            suite = %suite,
            resumed = resumed,
            bytes_down_up = self.moved.0,
            bytes_up_down = self.moved.1,
            ms = self.started.elapsed().as_millis() as u64,
            end = %end,
            side = %side,
            reason = %reason,
            "access"
        );
    }
}

/// The rate-limit kind of a "connection failed" line: one per side.
fn failure_kind(side: Side) -> &'static str {
    match side {
        Side::Downstream => "connection failed: downstream",
        Side::Upstream => "connection failed: upstream",
        Side::Tls => "connection failed: tls",
        Side::Internal => "connection failed: internal",
    }
}

/// Attaches the kernel's `tls` ULP to a connected socket; false (logged) when the kernel refuses.
fn attach_ulp(fd: &Fd) -> bool {
    match sys::ktls::attach(fd.as_fd()) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "kTLS not attached; this connection stays in user space");
            false
        }
    }
}

/// The PROXY header of an `accept_proxy` connection, read before anything else.
#[derive(Default)]
struct ProxyIn {
    /// The header's bytes taken from the socket so far (every one of them is the header's).
    got: Vec<u8>,
    /// A readiness wait is in flight.
    waiting: bool,
    /// Why the connection is to be reset.
    failed: Option<String>,
}

/// The most header bytes looked at in one read; a longer v2 header takes several.
const PROXY_PEEK: usize = 512;

impl Conn {
    /// `accept_proxy`: waits for the accepted socket to be readable, or resets the connection
    /// when the header was refused or is late.
    fn drive_proxy_in(&mut self, index: u32, shard: &mut Shard) -> Outcome {
        let Some(p) = self.proxy_in.as_mut() else {
            return Outcome::Open;
        };
        if let Some(why) = p.failed.take() {
            return Outcome::Closed(Some((Side::Downstream, why)));
        }
        if !p.waiting {
            p.waiting = true;
            let tag = match self.fwd.mode {
                Mode::Client => TAG_WAIT_PLAIN,
                Mode::Server => TAG_WAIT_TLS,
            };
            shard.driver.submit(
                token(tag, index, self.generation),
                Op::Poll {
                    fd: self.down.clone(),
                    write: false,
                },
            );
        }
        Outcome::Open
    }

    /// The accepted socket is readable: look at what arrived and take the header's bytes, and
    /// only those, off the socket. While the header is incomplete every byte that arrived is
    /// part of it, so each byte is read once and a slow sender cannot make us spin.
    fn proxy_readable(&mut self, c: Completion) {
        let Some(p) = self.proxy_in.as_mut() else {
            return;
        };
        p.waiting = false;
        if let Err(e) = c.result {
            p.failed = Some(format!("waiting for the PROXY header: {e}"));
            return;
        }
        let at_most = match proxy_protocol::parse(&p.got) {
            Ok(Parsed::Incomplete { at_most }) => at_most.min(PROXY_PEEK),
            _ => 0,
        };
        let had = p.got.len();
        let mut seen = p.got.clone();
        let take = match sys::peek_into(self.down.as_fd(), &mut seen, at_most) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => Err(format!("reading the PROXY header: {e}")),
            Ok(0) => Err("the peer closed before its PROXY header was complete".into()),
            Ok(n) => match proxy_protocol::parse(&seen) {
                Ok(Parsed::Incomplete { .. }) => Ok(n),
                Ok(Parsed::Complete { len, .. }) => Ok(len - had),
                Err(e) => Err(format!("bad PROXY header: {e}")),
            },
        };
        let take = match take {
            Ok(n) => n,
            Err(why) => {
                p.failed = Some(why);
                return;
            }
        };
        if let Err(e) = sys::recv_into(self.down.as_fd(), &mut p.got, take) {
            p.failed = Some(format!("reading the PROXY header: {e}"));
            return;
        }
        let header = match proxy_protocol::parse(&p.got) {
            Ok(Parsed::Complete { header, .. }) => header,
            Ok(Parsed::Incomplete { .. }) => return,
            Err(e) => {
                p.failed = Some(format!("bad PROXY header: {e}"));
                return;
            }
        };
        self.proxy_in = None;
        tracing::debug!(
            forwarder = %self.fwd.name,
            peer = %self.peer_text(),
            header = ?header,
            "PROXY header read"
        );
        if let Addresses::Tcp {
            source,
            destination,
        } = header.addresses
        {
            self.peer = Some(source);
            self.proxied_to = Some(destination);
        }
    }

    /// `send_proxy`: writes the header on the freshly connected upstream socket, before any
    /// byte of the stream. Its send buffer is empty, so a header (at most 52 bytes here) goes
    /// out whole or the connect is reported failed.
    fn send_proxy_header(&self, version: ProxyVersion) -> std::io::Result<()> {
        let up = self
            .up
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no upstream socket"))?;
        let destination = self.proxied_to.or_else(|| {
            socket2::SockRef::from(&*self.down)
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
        });
        let addresses = match (self.peer, destination) {
            (Some(source), Some(destination)) => Addresses::Tcp {
                source,
                destination,
            },
            _ => Addresses::Unknown,
        };
        let version = match version {
            ProxyVersion::V1 => proxy_protocol::Version::V1,
            ProxyVersion::V2 => proxy_protocol::Version::V2,
        };
        let header = proxy_protocol::encode(version, &addresses);
        let n = sys::send(up.as_fd(), &header)?;
        if n < header.len() {
            return Err(std::io::Error::other(format!(
                "PROXY header: only {n} of {} bytes sent",
                header.len()
            )));
        }
        Ok(())
    }
}

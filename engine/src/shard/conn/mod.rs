//! One connection inside a shard, whatever its mode: its two legs (the accepted socket and the
//! one we dial), the pump that moves its bytes, and the glue between the pump's operations and
//! the driver.
//!
//! The mode's [`Plan`] says which leg carries TLS and in which role; from there on nothing here
//! asks which mode it is. The record pump ([`TlsForward`]: rustls for the handshake, then our
//! own record layer) runs a plain-TLS connection in user space; after a kernel hand-off
//! (`kernel.rs`) the splice pump (`splice.rs`) takes over. PROXY protocol headers (`proxy.rs`)
//! are read before the pump starts and written before the dialed leg carries a byte.

mod kernel;
mod legs;
mod proxy;
mod splice;

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use splice_proto::{Buffers, Fault, Handoff, Io, Leg, Negotiated, Opens, TlsForward};

use super::{
    Forwarder, Shard, TAG_CONNECT, TAG_HANGUP_PLAIN, TAG_HANGUP_TLS, TAG_RECV_PLAIN, TAG_RECV_TLS,
    TAG_SEND_PLAIN, TAG_SEND_TLS, TAG_WAIT_PLAIN, TAG_WAIT_TLS, token,
};
use crate::driver::{Completion, Fd, Op};
use crate::error::{Error, Side};
use crate::modes::{Plan, Role, Tls};
use crate::resolve::MAX_DIALS;
use crate::sys;
use legs::LegIo;
use proxy::ProxyIn;
use splice::SplicePump;

pub(crate) enum Outcome {
    Open,
    Closed(Option<(Side, String)>),
}

/// What moves the connection's bytes.
enum Pump {
    /// The record pump: user-space TLS between the plain leg and the TLS leg.
    Records(Box<TlsForward>),
    /// The splice pump, after the TLS session went to the kernel.
    Splice(Box<SplicePump>),
    Gone,
}

pub(crate) struct Conn {
    pub(crate) generation: u32,
    pub(crate) fwd: Arc<Forwarder>,
    /// The legs, indexed by what they carry ([`Leg`]: plain, TLS).
    legs: [LegIo; 2],
    peer: Option<SocketAddr>,
    pump: Pump,
    /// When the running handshake or connect must be over.
    pub(crate) deadline: Option<Instant>,
    /// The deadline a timer was last set for (so each change arms exactly one timer).
    pub(crate) armed: Option<Instant>,
    counted_in: u64,
    counted_out: u64,
    started: Instant,
    /// When the TLS leg's TCP connection was made, until the handshake's time is recorded.
    handshake_from: Option<Instant>,
    /// The TLS leg has the kernel's `tls` ULP (keys come at the hand-off).
    ulp_attached: bool,
    /// The failure the pump closed with is an unclean close (see `Failure`).
    unclean_close: bool,
    /// What the handshake settled, kept past a kernel hand-off for the access line (boxed, as
    /// the other rarely used state below: an idle connection's memory is mostly this struct).
    negotiated: Option<Box<Negotiated>>,
    /// Payload bytes moved over the connection's life: down to up, up to down.
    moved: (u64, u64),
    /// A watch saw a reset, or the idle timeout fired: close with this at the next drive.
    hangup: Option<Box<(Side, String)>>,
    /// The idle timeout's clock, when the forwarder has one.
    idle: Option<Box<IdleClock>>,
    /// `accept_proxy`: the PROXY header still being read; nothing else runs until it is done.
    proxy_in: Option<Box<ProxyIn>>,
    /// The destination address a PROXY header carried (the source replaces `peer`).
    proxied_to: Option<Box<SocketAddr>>,
    /// The dial of a named upstream, until it connects (an upstream given as an address has
    /// no other address to try, and no `Dial`).
    dial: Option<Box<Dial>>,
}

/// A connection's dial of a named upstream: the address its connect goes to, and a failure
/// held back from the pump while the next address is tried.
struct Dial {
    /// The address of the connect in flight.
    to: Option<SocketAddr>,
    /// Addresses tried after the first.
    redials: u8,
    /// The connect failed: dial the name's next address at the next drive.
    next: Option<Failed>,
}

/// Why a connect to one of a named upstream's addresses ended.
enum Failed {
    /// It failed (refused, unreachable): its completion, for the pump if no address is left.
    Completion(Completion),
    /// Its deadline passed first.
    TimedOut,
}

/// When an idle connection is to be reset.
struct IdleClock {
    /// When the idle timeout next needs checking.
    deadline: Option<Instant>,
    /// The deadline a timer was last set for.
    armed: Option<Instant>,
    /// When bytes last moved.
    last_active: Instant,
}

impl Conn {
    pub(crate) fn new(
        fwd: Arc<Forwarder>,
        accepted: Fd,
        peer: Option<SocketAddr>,
        generation: u32,
    ) -> Result<Self, Error> {
        let Plan::PlainTls { tls_on, tls } = &fwd.plan;
        let tls_on = *tls_on;
        // The kTLS module is attached as soon as the TLS leg is connected (here, for an accepted
        // socket; after the connect for a dialed one). Until keys are installed the socket is
        // plain TCP, and attaching early means a peer's FIN that arrives right after the
        // handshake no longer makes the kernel refuse (`ENOTCONN`).
        let ulp_attached =
            fwd.ktls.is_some() && tls_on == Role::Accepted && kernel::attach_ulp(&accepted);
        let ktls = fwd.ktls.is_some() && (tls_on == Role::Dialed || ulp_attached);
        // Which leg the pump opens itself, and whether the session may go to the kernel.
        let opens = match tls_on {
            Role::Dialed => Opens::TlsLeg,
            Role::Accepted => Opens::PlainLeg,
        };
        let handoff = if ktls { Handoff::Offer } else { Handoff::Never };
        let records = TlsForward::new(tls.session()?, opens, handoff, Buffers::default());
        // The handshake's budget starts now when the TLS leg is the accepted one; a dialed one
        // must connect first.
        let budget = match tls_on {
            Role::Dialed => fwd.connect_timeout + fwd.handshake_timeout,
            Role::Accepted => fwd.handshake_timeout,
        };
        let handshake_from = (tls_on == Role::Accepted).then(Instant::now);
        let now = Instant::now();
        let idle = fwd.idle_timeout.map(|t| {
            Box::new(IdleClock {
                deadline: Some(now + t),
                armed: None,
                last_active: now,
            })
        });
        let proxy_in = fwd.accept_proxy.then(Box::default);
        let mut legs = [LegIo::new(tls_on.other()), LegIo::new(tls_on)];
        let accepted_leg = match opens {
            Opens::TlsLeg => Leg::Plain,
            Opens::PlainLeg => Leg::Tls,
        };
        legs[accepted_leg as usize].open(accepted);
        Ok(Self {
            generation,
            fwd,
            legs,
            peer,
            pump: Pump::Records(Box::new(records)),
            deadline: Some(now + budget),
            armed: None,
            counted_in: 0,
            counted_out: 0,
            started: now,
            handshake_from,
            ulp_attached,
            unclean_close: false,
            negotiated: None,
            moved: (0, 0),
            hangup: None,
            idle,
            proxy_in,
            proxied_to: None,
            dial: None,
        })
    }

    /// The TLS leg's TLS, from the forwarder's plan.
    fn tls(&self) -> &Tls {
        let Plan::PlainTls { tls, .. } = &self.fwd.plan;
        tls
    }

    fn leg(&self, leg: Leg) -> &LegIo {
        &self.legs[leg as usize]
    }

    fn leg_mut(&mut self, leg: Leg) -> &mut LegIo {
        &mut self.legs[leg as usize]
    }

    /// The leg that is the socket of `role`.
    fn leg_of(&self, role: Role) -> Leg {
        if self.legs[Leg::Plain as usize].role == role {
            Leg::Plain
        } else {
            Leg::Tls
        }
    }

    fn leg_fd(&self, leg: Leg) -> Option<Fd> {
        self.leg(leg).fd.clone()
    }

    /// The accepted socket.
    fn accepted_fd(&self) -> &Fd {
        self.leg(self.leg_of(Role::Accepted))
            .fd
            .as_ref()
            .expect("the accepted leg is open from the start")
    }

    /// The socket of `role`, once there is one (for the shard's tests).
    #[cfg(test)]
    pub(crate) fn socket(&self, role: Role) -> Option<Fd> {
        self.leg_fd(self.leg_of(role))
    }

    /// Whether the connection opened a socket of its own (it gives back two fds on close).
    pub(crate) fn dialed(&self) -> bool {
        self.leg(self.leg_of(Role::Dialed)).fd.is_some()
    }

    /// The side a fault is on.
    fn side(&self, fault: Fault) -> Side {
        match fault {
            Fault::Tls => Side::Tls,
            Fault::Plain => self.leg(Leg::Plain).role.side(),
            Fault::TlsTransport => self.leg(Leg::Tls).role.side(),
        }
    }

    /// Hands a completion to the pump.
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
            // Before the pump sees the connection, so the header goes first.
            if let Err(e) = self.send_proxy_header(v) {
                c.result = Err(e);
            }
        }
        let dialed = self.leg_of(Role::Dialed);
        if tag == TAG_CONNECT {
            let current = match (&c.op, &self.leg(dialed).fd) {
                (Op::Connect { fd, .. }, Some(now)) => std::rc::Rc::ptr_eq(fd, now),
                _ => true,
            };
            if !current {
                // The connect of an address given up for the next (timed out, then cancelled).
                return;
            }
            let cancelled =
                matches!(&c.result, Err(e) if e.raw_os_error() == Some(libc::ECANCELED));
            if c.result.is_ok() {
                self.leg_mut(dialed).connected = true;
                self.dial = None;
            } else if !cancelled {
                let tried = match &c.op {
                    Op::Connect { addr, .. } => addr.as_socket(),
                    _ => None,
                };
                match self.dial_next(tried, Failed::Completion(c)) {
                    Some(Failed::Completion(back)) => c = back,
                    _ => return,
                }
            }
        }
        match &mut self.pump {
            Pump::Records(sm) => {
                let leg_of = |t| match t {
                    TAG_RECV_PLAIN | TAG_SEND_PLAIN => Leg::Plain,
                    _ => Leg::Tls,
                };
                match (tag, c.op) {
                    (TAG_CONNECT, _) => {
                        let ok = c.result.is_ok();
                        let tls_dialed = dialed == Leg::Tls;
                        if ok && tls_dialed && self.fwd.ktls.is_some() {
                            match self.legs[Leg::Tls as usize].fd.as_ref() {
                                Some(up) if kernel::attach_ulp(up) => self.ulp_attached = true,
                                _ => sm.handle_handoff_declined(),
                            }
                        }
                        sm.handle_connected(dialed, c.result.map(|_| ()));
                        if ok && tls_dialed {
                            self.handshake_from = Some(Instant::now());
                        }
                        // Connected: a handshake on this leg now has its own budget; a plain leg
                        // connects after the handshake, so nothing is left to time.
                        self.deadline =
                            (ok && tls_dialed).then(|| Instant::now() + self.fwd.handshake_timeout);
                    }
                    (TAG_RECV_PLAIN | TAG_RECV_TLS, Op::Recv { buf, len, .. }) => {
                        let leg = leg_of(tag);
                        self.legs[leg as usize].idle = !matches!(c.result, Ok(n) if n == len);
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
                        let io = &mut self.legs[leg as usize];
                        let len = io.waiting_len.take().unwrap_or(0) as usize;
                        let mut buf = splice_proto::pool::take(len);
                        match sys::recv_into(fd.as_fd(), &mut buf, len) {
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                splice_proto::pool::give(buf);
                                io.ready_read = Some(len as u32);
                            }
                            res => {
                                io.idle = !matches!(res, Ok(n) if n == len);
                                sm.handle_recv(leg, buf, res);
                            }
                        }
                    }
                    (TAG_SEND_PLAIN | TAG_SEND_TLS, Op::Send { buf, .. }) => {
                        sm.handle_send(leg_of(tag), buf, c.result)
                    }
                    _ => {}
                }
                // Nothing left to time once the handshake is over and no connect is running.
                let connecting = self.legs[dialed as usize].connecting();
                if !sm.is_handshaking() && !connecting && tag != TAG_CONNECT {
                    self.deadline = None;
                }
                if !sm.is_handshaking()
                    && let Some(from) = self.handshake_from.take()
                {
                    self.fwd.stats.handshakes.observe(from.elapsed());
                }
            }
            Pump::Splice(p) => p.complete(tag, c.result),
            Pump::Gone => {}
        }
    }

    /// The idle deadline to set a timer for, when it changed since the last one was set.
    pub(crate) fn idle_timer_to_arm(&mut self) -> Option<Instant> {
        let clock = self.idle.as_mut()?;
        if clock.deadline == clock.armed {
            return None;
        }
        clock.armed = clock.deadline;
        clock.deadline
    }

    /// An idle timer fired at `now`: reset the connection if no byte moved for `idle_timeout`,
    /// else move the deadline. False when the timer was stale (nothing to do).
    pub(crate) fn idle_timer_fired(&mut self, now: Instant) -> bool {
        let (Some(limit), Some(clock)) = (self.fwd.idle_timeout, self.idle.as_mut()) else {
            return false;
        };
        if clock.deadline.is_none_or(|d| d > now) {
            return false;
        }
        let handshaking = matches!(&self.pump, Pump::Records(sm) if sm.is_handshaking());
        if handshaking {
            // The handshake has its own timeout.
            clock.deadline = Some(now + limit);
        } else if clock.last_active + limit > now {
            clock.deadline = Some(clock.last_active + limit);
        } else {
            clock.deadline = None;
            let why = format!(
                "no bytes moved for {} (idle_timeout)",
                humantime::format_duration(limit)
            );
            self.hangup.get_or_insert(Box::new((Side::Downstream, why)));
        }
        true
    }

    /// The connection's deadline (its connect, its handshake or its PROXY header) passed. A
    /// connect in flight goes on to the upstream name's next address if there is one to try.
    pub(crate) fn timeout(&mut self) {
        if self.leg(self.leg_of(Role::Dialed)).connecting() {
            // The connect deadline: the upstream may have moved away from this address, and
            // its name may have another.
            let tried = self.dial.as_ref().and_then(|d| d.to);
            if self.dial_next(tried, Failed::TimedOut).is_none() {
                return;
            }
        }
        self.timed_out();
    }

    /// The deadline passed, and nothing is left to try: the pump (or the PROXY header's read)
    /// fails.
    fn timed_out(&mut self) {
        if let Some(p) = &mut self.proxy_in {
            p.failed
                .get_or_insert_with(|| "no complete PROXY header before the deadline".into());
            return;
        }
        if let Pump::Records(sm) = &mut self.pump {
            sm.handle_timeout();
        }
    }

    /// A connect to `tried` failed: the next connection starts at the upstream's next address,
    /// and this one dials it at the next drive while its name has addresses this connection
    /// has not tried (at most [`MAX_DIALS`]), so a name whose first address is dead
    /// (`localhost` as `::1` for an IPv4-only upstream, or an address that drops SYNs) costs
    /// no connection. `None` when the next address is to be dialled; else the failure, for the
    /// pump.
    fn dial_next(&mut self, tried: Option<SocketAddr>, failed: Failed) -> Option<Failed> {
        self.fwd.upstream_failed(tried);
        let known = self.fwd.upstream_name.as_ref().map_or(0, |n| n.known());
        let Some(dial) = self.dial.as_mut() else {
            return Some(failed);
        };
        if usize::from(dial.redials) + 1 >= known.min(MAX_DIALS) {
            return Some(failed);
        }
        if let Some(tried) = tried {
            let error = match &failed {
                Failed::Completion(Completion { result: Err(e), .. }) => e.to_string(),
                _ => crate::resolve::no_connection_within(self.fwd.connect_timeout),
            };
            tracing::debug!(forwarder = %self.fwd.name, %tried, %error, "an address of the upstream failed; trying its next");
        }
        dial.next = Some(failed);
        None
    }

    /// Connects the dialed leg to the upstream's next address, in place of the one that
    /// failed (its connect, if still in flight, is cancelled); if no socket can be made, the
    /// pump gets the first failure after all.
    fn redial_now(&mut self, index: u32, shard: &mut Shard) {
        let Some(failed) = self.dial.as_mut().and_then(|d| {
            d.redials += 1;
            d.next.take()
        }) else {
            return;
        };
        let old = self.leg_fd(self.leg_of(Role::Dialed));
        if self.connect(index, shard).is_ok() {
            if let Some(old) = old {
                // A timed-out connect is still in flight; its completion is ignored.
                shard.driver.cancel(old.as_raw_fd());
            }
        } else {
            self.dial = None;
            match failed {
                Failed::Completion(c) => self.complete(TAG_CONNECT, c),
                Failed::TimedOut => self.timed_out(),
            }
        }
    }

    /// Performs the pump's operations until it has none; says whether it closed.
    pub(crate) fn drive(&mut self, index: u32, shard: &mut Shard) -> Outcome {
        if self.dial.as_ref().is_some_and(|d| d.next.is_some()) {
            self.redial_now(index, shard);
        }
        if let Some(failure) = self.hangup.take() {
            self.account();
            return Outcome::Closed(Some(*failure));
        }
        if self.proxy_in.is_some() {
            return self.drive_proxy_in(index, shard);
        }
        self.watch_legs(index, shard);
        for leg in [Leg::Plain, Leg::Tls] {
            if let Some(len) = self.leg_mut(leg).ready_read.take() {
                let fd = self.leg_fd(leg).expect("a leg that was polled is open");
                self.leg_mut(leg).waiting_len = Some(len);
                shard.driver.submit(
                    token(wait_tag(leg), index, self.generation),
                    Op::Poll { fd, write: false },
                );
            }
        }
        loop {
            let io = match &mut self.pump {
                Pump::Records(sm) => match sm.poll_io() {
                    Some(io) => io,
                    None => break,
                },
                Pump::Splice(p) => {
                    let r = p.drive(index, self.generation, shard);
                    self.account();
                    return match r {
                        None => Outcome::Open,
                        Some(failure) => Outcome::Closed(failure),
                    };
                }
                Pump::Gone => return Outcome::Closed(None),
            };
            match io {
                Io::Connect(leg) => {
                    if let Err(e) = self.connect(index, shard)
                        && let Pump::Records(sm) = &mut self.pump
                    {
                        sm.handle_connected(leg, Err(e));
                    }
                }
                Io::Recv { leg, buf, len } => {
                    let fd = self.leg_fd(leg).expect("the pump reads an open leg");
                    if buf.is_empty() && self.leg(leg).idle {
                        // Wait for bytes before tying up a buffer.
                        splice_proto::pool::give(buf);
                        // Reads are at most a buffer (256 KiB): a u32 keeps each leg small.
                        self.leg_mut(leg).waiting_len = Some(len as u32);
                        shard.driver.submit(
                            token(wait_tag(leg), index, self.generation),
                            Op::Poll { fd, write: false },
                        );
                    } else {
                        let tag = match leg {
                            Leg::Plain => TAG_RECV_PLAIN,
                            Leg::Tls => TAG_RECV_TLS,
                        };
                        shard.driver.submit(
                            token(tag, index, self.generation),
                            Op::Recv { fd, buf, len },
                        );
                    }
                }
                Io::Send { leg, buf, len } => {
                    let tag = match leg {
                        Leg::Plain => TAG_SEND_PLAIN,
                        Leg::Tls => TAG_SEND_TLS,
                    };
                    let fd = self.leg_fd(leg).expect("the pump writes an open leg");
                    shard.driver.submit(
                        token(tag, index, self.generation),
                        Op::Send { fd, buf, len },
                    );
                }
                Io::ShutdownWrite(leg) => {
                    self.leg_mut(leg).shut_write = true;
                    if let Some(fd) = self.leg_fd(leg) {
                        let _ = sys::socket::shutdown_write(fd.as_fd());
                    }
                }
                Io::Handoff => self.handoff(shard),
                Io::Close { failure } => {
                    self.account();
                    self.unclean_close = failure.as_ref().is_some_and(|f| f.unclean_close);
                    let failure = failure.map(|f| {
                        let reason = match &f.tls_error {
                            Some(e) => crate::tls::explain(e, self.tls().explained_as()),
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

    /// Opens the dialed leg's socket and starts its connect to the upstream.
    fn connect(&mut self, index: u32, shard: &mut Shard) -> std::io::Result<()> {
        let fwd = self.fwd.clone();
        let (addr, fd) = fwd.open_upstream()?;
        let fd: Fd = std::rc::Rc::new(fd);
        if let Some(kernel) = fwd.stats.kernel.get() {
            kernel.register(fd.as_fd(), crate::accounting::Leg::Upstream, true);
        }
        let dialed = self.leg_of(Role::Dialed);
        self.leg_mut(dialed).open(fd.clone());
        if fwd.upstream_name.is_some() {
            let dial = self.dial.get_or_insert_with(|| {
                Box::new(Dial {
                    to: None,
                    redials: 0,
                    next: None,
                })
            });
            dial.to = addr.as_socket();
        }
        self.deadline = Some(Instant::now() + self.fwd.connect_timeout);
        shard.driver.submit(
            token(TAG_CONNECT, index, self.generation),
            Op::Connect {
                fd,
                addr: Box::new(addr),
            },
        );
        Ok(())
    }

    /// Adds the bytes moved since last time to the listener's counters.
    fn account(&mut self) {
        let (inn, out) = match &self.pump {
            Pump::Records(sm) => (sm.plain_bytes_in(), sm.plain_bytes_out()),
            Pump::Splice(p) => p.bytes(),
            Pump::Gone => return,
        };
        let d_in = inn.saturating_sub(self.counted_in);
        let d_out = out.saturating_sub(self.counted_out);
        self.counted_in = inn;
        self.counted_out = out;
        if d_in == 0 && d_out == 0 {
            return;
        }
        if let Some(clock) = &mut self.idle {
            clock.last_active = Instant::now();
        }
        // "in" is what the plain leg sent us: downstream to upstream when it is the accepted one.
        let (down_up, up_down) = match self.leg(Leg::Plain).role {
            Role::Accepted => (d_in, d_out),
            Role::Dialed => (d_out, d_in),
        };
        self.moved.0 += down_up;
        self.moved.1 += up_down;
        self.fwd.stats.bytes_down_to_up.fetch_add(down_up, Relaxed);
        self.fwd.stats.bytes_up_to_down.fetch_add(up_down, Relaxed);
    }

    /// Closes both sockets (resetting them on failure), logs and counts the outcome.
    pub(crate) fn close(&mut self, failure: Option<(Side, String)>, shard: &mut Shard) {
        self.account();
        if let Pump::Records(sm) = &self.pump
            && self.negotiated.is_none()
        {
            self.negotiated = sm.negotiated().cloned().map(Box::new);
        }
        let stats = &self.fwd.stats;
        stats.active.fetch_sub(1, Relaxed);
        let fds: Vec<Fd> = self.legs.iter().filter_map(|l| l.fd.clone()).collect();
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
            for fd in &fds {
                // A reset, so that neither peer mistakes a cut stream for a complete one.
                let _ = sys::socket::set_linger_zero(fd.as_fd());
            }
        }
        if self.fwd.access_log {
            self.access_line(&peer, failure.as_ref(), unclean);
        }
        if let Pump::Splice(p) = std::mem::replace(&mut self.pump, Pump::Gone) {
            p.release(shard);
        }
        for fd in &fds {
            shard.driver.cancel(fd.as_raw_fd());
        }
    }

    /// The client's address for logs (`-` when unknown).
    fn peer_text(&self) -> String {
        self.peer.map_or_else(|| "-".to_string(), |p| p.to_string())
    }

    /// The access line: one per connection at `info`, with stable field names and types.
    fn access_line(&self, peer: &str, failure: Option<&(Side, String)>, unclean: bool) {
        let n = self.negotiated.as_deref();
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

/// The tag of a readiness wait before a read on `leg`.
fn wait_tag(leg: Leg) -> u8 {
    match leg {
        Leg::Plain => TAG_WAIT_PLAIN,
        Leg::Tls => TAG_WAIT_TLS,
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
#[cfg(test)]
mod tests {
    /// An idle connection's user-space memory is mostly this struct (its buffers go back to the
    /// pool while it waits), so state that few connections use is boxed. A field that grows it
    /// past this budget should be boxed too, or the budget raised knowingly (the `idle` bench
    /// scenario shows the cost per connection).
    #[test]
    fn conn_stays_small() {
        let size = std::mem::size_of::<super::Conn>();
        assert!(size <= 272, "Conn is {size} bytes");
    }
}

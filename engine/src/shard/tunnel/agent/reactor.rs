//! One agent's I/O: the tunnel connection to the relay (the shared sans-IO [`Link`] in its
//! client role, over a TCP socket, see [`super::link`]), the
//! source's service listeners or the destination's dialed connections, and the local
//! connections, all driven by the driver's ops and the sans-IO [`Source`] / [`Destination`].
//!
//! Everything of one agent lives on one thread, so a local connection and its tunnel never
//! cross threads. Its ops carry tokens `token(tag, index, generation)` with the tags below;
//! its timers are kept by the loop that hosts it ([`Io::timers`]).
//!
//! Flow control, both ways:
//! - tunnel to local: the sans-IO agent counts each local connection's unwritten bytes and
//!   says [`Action::PauseTunnelReads`]; the reactor then stops polling the link and stops
//!   reading the relay's socket (head-of-line, as the protocol has no per-stream window), so
//!   memory stays at the bound plus one read.
//! - local to tunnel: while more than [`BACKLOG_HIGH`] bytes wait to go to the relay, local
//!   reads that complete are not renewed (the connections wait, parked) until the backlog is
//!   under half of it.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use socket2::SockAddr;
use splice_proto::tunnel::agent::{
    Action, Backoff, Destination, EOF_WAIT, End, Error as AgentError, Jitter, Limits, LocalEof,
    LocalId, Next, Reconnect, START_WAIT, Source,
};
use splice_proto::tunnel::link::{Event, Link, SEND_HEADROOM, SEND_TAILROOM};
use splice_proto::tunnel::{
    DATA_HEADROOM, DATA_TAILROOM, DataFraming, MAX_PAYLOAD, Message, Type, Version,
};
use splice_proto::ws::{Mode, close_code};

mod local;

use local::Local;

use super::link::{client_link, refused_status, version_of};
use super::spec::{AgentSpec, ServiceSpec};
use super::status::{AgentShared, AgentState};
use crate::driver::{Completion, Driver, Fd, Op};
use crate::resolve::{Attempt, Name};
use crate::sys;

// Op tags, offset by `TAG_AGENT_FIRST` on the shard.
pub(crate) const TAG_LINK_CONNECT: u8 = 1;
pub(crate) const TAG_LINK_RECV: u8 = 2;
pub(crate) const TAG_LINK_SEND: u8 = 3;
pub(crate) const TAG_ACCEPT: u8 = 4;
pub(crate) const TAG_LOCAL_CONNECT: u8 = 5;
pub(crate) const TAG_LOCAL_RECV: u8 = 6;
pub(crate) const TAG_LOCAL_SEND: u8 = 7;
/// Timers: the reconnect delay, the tunnel connection's handshake deadline, a local
/// connection's connect deadline.
pub(crate) const TIMER_RETRY: u8 = 20;
pub(crate) const TIMER_LINK: u8 = 21;
pub(crate) const TIMER_LOCAL_CONNECT: u8 = 22;
/// A local EOF waiting for the peer's word on half-close ([`EOF_WAIT`]).
pub(crate) const TIMER_EOF_WAIT: u8 = 23;
/// A source's new stream waiting for the destination's first word ([`START_WAIT`]): the
/// token's index is the start's number, its generation the service.
pub(crate) const TIMER_START_WAIT: u8 = 24;

/// Bytes waiting to go to the relay past which local reads pause.
pub(crate) const BACKLOG_HIGH: usize = 1 << 20;
/// Bytes read from the relay's socket at a time.
const LINK_READ: usize = 64 * 1024;
/// Room in front of a local read: the TLS record's header and the WebSocket header
/// ([`SEND_HEADROOM`]), then the DATA frame's head: the frame is sealed where it was read.
const HEADROOM: usize = SEND_HEADROOM + DATA_HEADROOM;
/// Time for the TCP connect, TLS handshake and upgrade to the relay together.
const LINK_DEADLINE: Duration = Duration::from_secs(10);

/// SERVICE_IDS naming the agent's own services (none for the bare form), as a tunnel frame.
fn own_service_ids(spec: &AgentSpec) -> Vec<u8> {
    let ids: Vec<&str> = spec
        .services
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    let message = Message {
        kind: Type::SERVICE_IDS,
        available_service_ids: ids,
        ..Message::default()
    };
    let mut frame = Vec::new();
    message
        .append_frame(&mut frame)
        .expect("checked service names fit a frame");
    frame
}

/// An op's token on the shard: the plane's agent tags, the agent's slot on this shard in the
/// index's top 8 bits, the socket's index below.
fn op_token(slot: u32, tag: u8, index: u32, generation: u32) -> u64 {
    crate::shard::token(
        crate::shard::tunnel::TAG_AGENT_FIRST + tag,
        (slot << 24) | (index & 0xff_ffff),
        generation,
    )
}

/// A timer's token, within the agent's own heap.
pub(crate) fn token(tag: u8, index: u32, generation: u32) -> u64 {
    (u64::from(generation & 0xff_ffff) << 40) | (u64::from(index) << 8) | u64::from(tag)
}

fn untoken(t: u64) -> (u8, u32, u32) {
    (
        (t & 0xff) as u8,
        (t >> 8) as u32,
        ((t >> 40) & 0xff_ffff) as u32,
    )
}

/// What the reactor needs from the loop hosting it.
pub(crate) struct Io<'a> {
    pub driver: &'a mut Driver,
    /// Timers to arm: (when, token); the host calls [`Reactor::timer`] with the token then.
    pub timers: &'a mut Vec<(Instant, u64)>,
    pub now: Instant,
}

/// The sans-IO agent.
pub(crate) enum Sans {
    Source(Source),
    Destination(Destination),
}

impl Sans {
    /// The agent for `spec`: checks its services against the protocol's rules.
    pub fn new(spec: &AgentSpec) -> Result<Sans, AgentError> {
        let names = spec.service_names();
        let limits = Limits {
            payload: MAX_PAYLOAD,
            half_close: spec.half_close,
            connections_per_service: spec.connections_per_service,
            ..Limits::default()
        };
        Ok(match spec.mode {
            Mode::Source => Sans::Source(Source::new(&names, spec.version, limits)?),
            Mode::Destination => Sans::Destination(Destination::new(&names, spec.version, limits)?),
        })
    }

    fn poll_action(&mut self) -> Option<Action> {
        match self {
            Sans::Source(s) => s.poll_action(),
            Sans::Destination(d) => d.poll_action(),
        }
    }
    fn handle_tunnel_bytes(&mut self, b: &[u8]) -> Result<(), AgentError> {
        match self {
            Sans::Source(s) => s.handle_tunnel_bytes(b),
            Sans::Destination(d) => d.handle_tunnel_bytes(b),
        }
    }
    fn handle_tunnel_lost(&mut self) {
        match self {
            Sans::Source(s) => s.handle_tunnel_lost(),
            Sans::Destination(d) => d.handle_tunnel_lost(),
        }
    }
    fn handle_local_closed(&mut self, id: LocalId) {
        match self {
            Sans::Source(s) => s.handle_local_closed(id),
            Sans::Destination(d) => d.handle_local_closed(id),
        }
    }
    fn handle_local_eof(&mut self, id: LocalId) -> LocalEof {
        match self {
            Sans::Source(s) => s.handle_local_eof(id),
            Sans::Destination(d) => d.handle_local_eof(id),
        }
    }
    fn handle_eof_wait_over(&mut self, id: LocalId) {
        match self {
            Sans::Source(s) => s.handle_eof_wait_over(id),
            Sans::Destination(d) => d.handle_eof_wait_over(id),
        }
    }
    fn handle_written(&mut self, id: LocalId, n: usize) {
        match self {
            Sans::Source(s) => s.handle_written(id, n),
            Sans::Destination(d) => d.handle_written(id, n),
        }
    }
    fn data_framing(&self, id: LocalId, n: usize) -> Option<DataFraming> {
        match self {
            Sans::Source(s) => s.data_framing(id, n),
            Sans::Destination(d) => d.data_framing(id, n),
        }
    }
}

/// The tunnel connection.
struct Tunnel {
    fd: Fd,
    generation: u32,
    link: Link,
    upgraded: bool,
    /// Head-of-line pause: the link is not polled and the socket not read.
    paused: bool,
    recv_in_flight: bool,
    /// Ciphertext handed to a Send op (it comes back in the completion).
    sending: Option<usize>,
    /// A spare buffer for the next Send.
    spare: Vec<u8>,
    recv_buf: Option<Vec<u8>>,
    /// When the relay last sent a byte (or the connection began).
    last_rx: Instant,
}

impl Tunnel {
    /// Ciphertext not yet written: what the watermarks bound.
    fn backlog(&self) -> usize {
        self.link.pending_output() + self.sending.unwrap_or(0)
    }
}

/// One source or destination agent.
pub(crate) struct Reactor {
    /// The relay's name, looked up again for each reconnect.
    relay_name: Name,
    /// The addresses of the current connection attempt (the next is tried when one refuses).
    attempt: Option<Attempt>,
    /// Destination: each service's target, looked up again after a connect to it failed.
    targets: Vec<Name>,
    spec: Arc<AgentSpec>,
    shared: Arc<AgentShared>,
    sans: Sans,
    /// Source: the services' listeners (bound at start), and whether an accept is running.
    listeners: Vec<(Fd, bool)>,
    tunnel: Option<Tunnel>,
    link_generation: u32,
    reconnect: Reconnect,
    /// A reconnect is due at this time (its timer is armed).
    retry_at: Option<Instant>,
    locals: Vec<Option<Local>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    by_id: HashMap<LocalId, u32>,
    parked: Vec<u32>,
    jitter: Jitter,
    /// Gave up or stopped: nothing new starts.
    done: bool,
    /// Draining: no new local connections; stops once the open ones end.
    draining: bool,
    /// Its place among the agents of its shard (in its ops' tokens).
    slot: u32,
}

/// A destination service's target as a [`Name`] (its host and port were checked at start).
fn target_name(s: &ServiceSpec) -> Name {
    let (host, port) = crate::config::split_host_port(&s.given).unwrap_or_default();
    Name::new(&host, port, s.addrs.clone())
        .unresolved(s.unresolved.clone())
        .called("the service's target")
}

impl Reactor {
    /// An agent for `spec` running `sans`; `listeners` are the source's bound listeners, one
    /// per service in order (none for a destination); `slot` is its place on its shard.
    pub fn new(
        spec: Arc<AgentSpec>,
        shared: Arc<AgentShared>,
        sans: Sans,
        listeners: Vec<OwnedFd>,
        slot: u32,
    ) -> Reactor {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let relay_name = Name::new(&spec.host, spec.port, spec.relay_addrs.clone())
            .unresolved(spec.unresolved.clone());
        let targets = match spec.mode {
            Mode::Destination => spec.services.iter().map(target_name).collect(),
            Mode::Source => Vec::new(),
        };
        Reactor {
            targets,
            spec,
            shared,
            sans,
            listeners: listeners
                .into_iter()
                .map(|fd| (Rc::new(fd), false))
                .collect(),
            relay_name,
            attempt: None,
            tunnel: None,
            link_generation: 0,
            reconnect: Reconnect::new(Backoff::default(), false),
            retry_at: None,
            locals: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            parked: Vec::new(),
            jitter: Jitter::new(seed),
            done: false,
            draining: false,
            slot,
        }
    }

    /// Starts the first tunnel connection.
    pub fn start(&mut self, io: &mut Io<'_>) {
        self.reconnect = Reconnect::new(Backoff::default(), self.spec.keep_trying);
        self.connect_tunnel(io);
    }

    fn log_name(&self) -> &str {
        &self.spec.name
    }

    // ---- the tunnel connection ----

    fn connect_tunnel(&mut self, io: &mut Io<'_>) {
        if self.done {
            return;
        }
        // The first attempt is `Connecting` from the start; a retry stays `Reconnecting`.
        let attempt = self
            .attempt
            .get_or_insert_with(|| self.relay_name.attempt());
        let (relay, fd) = match attempt.open_next(|a| sys::socket::tcp_stream(&SockAddr::from(a))) {
            Some(Ok(opened)) => opened,
            Some(Err(e)) => {
                return self.tunnel_failed(io, End::Dropped, &format!("socket: {e}"));
            }
            None => {
                let why = self.relay_name.no_address();
                return self.tunnel_failed(io, End::Dropped, &why);
            }
        };
        let spec = &self.spec;
        let link = match client_link(
            spec.tls.clone(),
            spec.server_name.clone(),
            &spec.host,
            spec.mode,
            spec.token.as_ref(),
            spec.client_token.as_ref(),
            &spec.announced(),
            spec.version,
        ) {
            Ok(l) => l,
            Err(e) => return self.tunnel_failed(io, End::Dropped, &e),
        };
        let addr = SockAddr::from(relay);
        let fd = Rc::new(fd);
        self.link_generation = (self.link_generation + 1) & 0xff_ffff;
        let generation = self.link_generation;
        io.driver.submit(
            op_token(self.slot, TAG_LINK_CONNECT, 0, generation),
            Op::Connect {
                fd: fd.clone(),
                addr: Box::new(addr),
            },
        );
        io.timers
            .push((io.now + LINK_DEADLINE, token(TIMER_LINK, 0, generation)));
        self.tunnel = Some(Tunnel {
            fd,
            generation,
            link,
            upgraded: false,
            paused: false,
            recv_in_flight: false,
            sending: None,
            spare: Vec::new(),
            recv_buf: None,
            last_rx: io.now,
        });
    }

    /// Drops the tunnel connection (if any) and decides, by the reconnect policy, whether and
    /// when to connect again.
    fn tunnel_failed(&mut self, io: &mut Io<'_>, end: End, why: &str) {
        // The next attempt starts from the first address again, of a fresh lookup if it
        // comes back in time.
        self.attempt = None;
        self.relay_name.refresh();
        let was_up = self.tunnel.as_ref().is_some_and(|t| t.upgraded);
        if let Some(t) = self.tunnel.take() {
            let _ = sys::socket::set_linger_zero(t.fd.as_fd());
            io.driver.cancel(t.fd.as_raw_fd());
        }
        self.sans.handle_tunnel_lost();
        self.apply_actions(io);
        if self.done {
            return;
        }
        if self.draining {
            return self.finish(io, AgentState::Stopped);
        }
        let jitter = self.jitter.sample();
        match self.reconnect.handle_end(end, jitter) {
            Next::Retry(delay) => {
                self.shared.reconnects.fetch_add(1, Relaxed);
                self.shared.set_state(AgentState::Reconnecting);
                // "lost" when it was up; an attempt that never got there "failed".
                let what = if was_up { "lost" } else { "failed" };
                tracing::warn!(
                    agent = %self.log_name(),
                    relay = %self.spec.relay,
                    error = %why,
                    was_up,
                    retry_in_ms = delay.as_millis() as u64,
                    "tunnel connection {what}; reconnecting"
                );
                let at = io.now + delay;
                self.retry_at = Some(at);
                io.timers
                    .push((at, token(TIMER_RETRY, 0, self.link_generation)));
            }
            Next::Stop => {
                let why = format!("{} gave up: {why}", self.spec.mode.as_str());
                tracing::error!(agent = %self.log_name(), relay = %self.spec.relay, "{why}");
                self.finish(io, AgentState::Finished(why));
            }
        }
    }

    /// Gives up for good: closes everything.
    fn finish(&mut self, io: &mut Io<'_>, state: AgentState) {
        self.done = true;
        self.shared.set_state(state);
        if let Some(mut t) = self.tunnel.take() {
            // A last close frame, best effort: the socket goes now.
            t.link.close(close_code::GOING_AWAY, "");
            let mut out = Vec::new();
            t.link.take_output(&mut out);
            let _ = sys::send(t.fd.as_fd(), &out);
            io.driver.cancel(t.fd.as_raw_fd());
        }
        for (fd, _) in self.listeners.drain(..) {
            io.driver.cancel(fd.as_raw_fd());
        }
        for i in 0..self.locals.len() {
            if self.locals[i].is_some() {
                self.reset_local(io, i as u32);
            }
        }
        self.by_id.clear();
    }

    /// The engine drains: no new local connections; the agent stops once the open ones
    /// ended ([`Reactor::is_finished`]).
    pub fn drain(&mut self, io: &mut Io<'_>) {
        self.draining = true;
        for (fd, accepting) in &mut self.listeners {
            *accepting = false;
            io.driver.cancel(fd.as_raw_fd());
        }
        self.listeners.clear();
        if self.locals.iter().all(Option::is_none) {
            self.stop(io);
        }
    }

    /// Whether the agent is done (stopped, or drained with nothing left open): its host may
    /// drop it.
    pub fn is_finished(&mut self, io: &mut Io<'_>) -> bool {
        if self.draining && !self.done && self.locals.iter().all(Option::is_none) {
            self.stop(io);
        }
        self.done
    }

    /// The engine stops the agent.
    pub fn stop(&mut self, io: &mut Io<'_>) {
        if !self.done {
            self.finish(io, AgentState::Stopped);
        }
    }

    fn link_completed(&mut self, io: &mut Io<'_>, tag: u8, generation: u32, c: Completion) {
        let Some(t) = self.tunnel.as_mut().filter(|t| t.generation == generation) else {
            return;
        };
        match (tag, c.op) {
            (TAG_LINK_CONNECT, _) => {
                if let Err(e) = c.result {
                    if self.attempt.as_ref().is_some_and(Attempt::has_next) {
                        // The name has another address (`::1` refused, `127.0.0.1` next).
                        tracing::info!(agent = %self.log_name(), error = %e, "connecting to one of the relay's addresses failed; trying the next");
                        if let Some(t) = self.tunnel.take() {
                            io.driver.cancel(t.fd.as_raw_fd());
                        }
                        return self.connect_tunnel(io);
                    }
                    return self.tunnel_failed(io, End::Dropped, &format!("connect: {e}"));
                }
                self.flush_tunnel(io);
                self.read_tunnel(io);
            }
            (TAG_LINK_RECV, Op::Recv { mut buf, .. }) => {
                t.recv_in_flight = false;
                t.last_rx = io.now;
                let n = match c.result {
                    Ok(0) => {
                        return self.tunnel_failed(
                            io,
                            End::Dropped,
                            "the relay closed the connection",
                        );
                    }
                    Ok(n) => n,
                    Err(e) => return self.tunnel_failed(io, End::Dropped, &format!("read: {e}")),
                };
                let r = t.link.receive_tls(&buf[..n]);
                buf.clear();
                t.recv_buf = Some(buf);
                if let Err(e) = r {
                    self.flush_tunnel(io); // its alert, if one goes
                    let why = crate::shard::tunnel::link::tls_failure(e, true);
                    return self.tunnel_failed(io, End::Dropped, &why);
                }
                self.tunnel_events(io);
            }
            (TAG_LINK_SEND, Op::Send { mut buf, len, .. }) => {
                let n = match c.result {
                    Ok(n) => n,
                    Err(e) => return self.tunnel_failed(io, End::Dropped, &format!("write: {e}")),
                };
                if n < len {
                    buf.drain(..n);
                    let len = buf.len();
                    t.sending = Some(len);
                    io.driver.submit(
                        op_token(self.slot, TAG_LINK_SEND, 0, generation),
                        Op::Send {
                            fd: t.fd.clone(),
                            buf,
                            len,
                        },
                    );
                    return;
                }
                t.sending = None;
                buf.clear();
                t.spare = buf;
                self.flush_tunnel(io);
                self.unpark(io);
            }
            _ => {}
        }
    }

    /// Reads the relay's socket unless paused or a read is running.
    fn read_tunnel(&mut self, io: &mut Io<'_>) {
        let Some(t) = self.tunnel.as_mut() else {
            return;
        };
        if t.recv_in_flight || t.paused || !t.link.wants_read() {
            return;
        }
        let mut buf = t.recv_buf.take().unwrap_or_default();
        buf.clear();
        buf.reserve(LINK_READ);
        t.recv_in_flight = true;
        io.driver.submit(
            op_token(self.slot, TAG_LINK_RECV, 0, t.generation),
            Op::Recv {
                fd: t.fd.clone(),
                buf,
                len: LINK_READ,
            },
        );
    }

    /// Hands the link's events to the agent until the link has none (or is paused).
    fn tunnel_events(&mut self, io: &mut Io<'_>) {
        loop {
            let Some(t) = self.tunnel.as_mut() else {
                return;
            };
            if t.paused {
                break;
            }
            let Some(event) = t.link.poll() else {
                if t.link.is_done() || t.link.peer_ended() {
                    // TLS ended (the relay's close_notify, or an error of ours): no close
                    // frame came, so this is a dropped connection.
                    self.flush_tunnel(io);
                    return self.tunnel_failed(io, End::Dropped, "the relay ended TLS");
                }
                break;
            };
            let r = match event {
                Event::Open(accepted) => {
                    let version = version_of(accepted.protocol);
                    t.upgraded = true;
                    self.reconnect.handle_connected();
                    self.retry_at = None;
                    self.shared.tunnel_connects.fetch_add(1, Relaxed);
                    self.shared.set_state(AgentState::Connected);
                    io.timers.push((
                        io.now + self.spec.ping_after,
                        token(TIMER_LINK, 2, t.generation),
                    ));
                    tracing::info!(
                        agent = %self.spec.name,
                        relay = %self.spec.relay,
                        protocol = %version.subprotocol(),
                        "tunnel connection up"
                    );
                    if version == Version::V1 {
                        // The V1 format has no SERVICE_IDS (the relay sends none to a V1
                        // peer): the agent's own service list stands for it.
                        self.sans.handle_tunnel_bytes(&own_service_ids(&self.spec))
                    } else {
                        Ok(())
                    }
                }
                Event::Message(bytes) => self.sans.handle_tunnel_bytes(bytes),
                Event::Refused(e) => {
                    let end = refused_status(&e).map_or(End::Dropped, End::Status);
                    let why = format!("upgrade refused: {e}");
                    return self.tunnel_failed(io, end, &why);
                }
                Event::Closed { code, reason } => {
                    self.flush_tunnel(io);
                    let why = format!(
                        "the relay closed the tunnel (code {}{}{})",
                        code.map_or("none".to_string(), |c| c.to_string()),
                        if reason.is_empty() { "" } else { ": " },
                        reason
                    );
                    return self.tunnel_failed(io, End::from_close(code), &why);
                }
                Event::Failed(e) => {
                    self.flush_tunnel(io);
                    let why = format!("WebSocket: {e}");
                    return self.tunnel_failed(io, End::Dropped, &why);
                }
                Event::Request(_) | Event::BadRequest(_) | Event::Http(_) | Event::Standby(_) => {
                    unreachable!("a client link sees no requests")
                }
                Event::Standing => unreachable!("an agent's link is not a standby channel"),
            };
            if let Err(e) = r {
                let why = format!("bad input from the relay: {e}");
                if matches!(
                    e,
                    AgentError::ServiceNotInTunnel(_) | AgentError::TooManyServices(_)
                ) {
                    // The configuration does not fit the tunnel: retrying cannot help.
                    tracing::error!(agent = %self.spec.name, "{why}");
                    self.sans.handle_tunnel_lost();
                    self.apply_actions(io);
                    return self.finish(io, AgentState::Finished(why));
                }
                return self.tunnel_failed(io, End::Dropped, &why);
            }
            self.apply_actions(io);
        }
        self.flush_tunnel(io);
        self.read_tunnel(io);
    }

    /// The relay's silence: a ping after `ping_after`, a drop after `idle_timeout`.
    fn keepalive(&mut self, io: &mut Io<'_>) {
        let (ping_after, idle) = (self.spec.ping_after, self.spec.idle_timeout);
        let Some(t) = self.tunnel.as_mut() else {
            return;
        };
        let silent = io.now.saturating_duration_since(t.last_rx);
        if silent >= idle {
            let why = format!("the relay was silent for {} s", silent.as_secs());
            return self.tunnel_failed(io, End::Dropped, &why);
        }
        let next = if silent >= ping_after {
            t.link.send_ping();
            (idle - silent).min(ping_after)
        } else {
            ping_after - silent
        };
        io.timers.push((
            io.now + next.max(Duration::from_millis(10)),
            token(TIMER_LINK, 2, t.generation),
        ));
        self.flush_tunnel(io);
    }

    /// Moves the link's ciphertext to the socket.
    fn flush_tunnel(&mut self, io: &mut Io<'_>) {
        let Some(t) = self.tunnel.as_mut() else {
            return;
        };
        if t.sending.is_some() || t.link.pending_output() == 0 {
            return;
        }
        let mut buf = std::mem::take(&mut t.spare);
        t.link.take_output(&mut buf);
        let len = buf.len();
        t.sending = Some(len);
        io.driver.submit(
            op_token(self.slot, TAG_LINK_SEND, 0, t.generation),
            Op::Send {
                fd: t.fd.clone(),
                buf,
                len,
            },
        );
    }

    fn backlog_high(&self) -> bool {
        self.tunnel
            .as_ref()
            .is_some_and(|t| t.backlog() > BACKLOG_HIGH)
    }

    fn unpark(&mut self, io: &mut Io<'_>) {
        if self.parked.is_empty()
            || self
                .tunnel
                .as_ref()
                .is_some_and(|t| t.backlog() > BACKLOG_HIGH / 2)
        {
            return;
        }
        for index in std::mem::take(&mut self.parked) {
            if let Some(l) = self.locals.get_mut(index as usize).and_then(Option::as_mut)
                && l.parked
            {
                l.parked = false;
                self.read_local(io, index);
            }
        }
    }

    // ---- the agent's actions ----

    fn apply_actions(&mut self, io: &mut Io<'_>) {
        self.count_over_limit();
        while let Some(action) = self.sans.poll_action() {
            match action {
                Action::Send(frame) => {
                    if let Some(t) = self.tunnel.as_mut() {
                        t.link.send_message(&frame);
                    }
                }
                Action::Listen { service } => self.listen(io, &service),
                Action::Connect { local, service } => self.dial(io, local, &service),
                Action::Write { local, data } => {
                    if let Some(&index) = self.by_id.get(&local) {
                        if let Some(l) = self.locals[index as usize].as_mut() {
                            l.queue.push_back(data);
                        }
                        self.write_local(io, index);
                    }
                }
                Action::Close { local } => {
                    tracing::debug!(agent = %self.spec.name, %local, "local connection cut (reset)");
                    if let Some(index) = self.by_id.remove(&local) {
                        self.reset_local(io, index);
                    }
                }
                Action::Finish { local } => {
                    tracing::debug!(agent = %self.spec.name, %local, "local connection ended by the peer");
                    if let Some(index) = self.by_id.remove(&local)
                        && let Some(l) = self.locals[index as usize].as_mut()
                    {
                        l.id = None;
                        l.finishing = true;
                        self.write_local(io, index);
                    }
                }
                Action::ShutdownWrite { local } => {
                    tracing::debug!(agent = %self.spec.name, %local, "local connection half-closed by the peer");
                    if let Some(&index) = self.by_id.get(&local) {
                        if let Some(l) = self.locals[index as usize].as_mut() {
                            l.shut_write = true;
                        }
                        self.write_local(io, index);
                    }
                }
                Action::PauseTunnelReads => {
                    if let Some(t) = self.tunnel.as_mut() {
                        t.paused = true;
                    }
                }
                Action::ResumeTunnelReads => {
                    if let Some(t) = self.tunnel.as_mut()
                        && t.paused
                    {
                        t.paused = false;
                        // Deferred: the events waiting are handed out from the loop, not from
                        // inside this one (which may be inside `tunnel_events`).
                        io.timers.push((io.now, token(TIMER_LINK, 1, t.generation)));
                    }
                }
            }
        }
        self.flush_tunnel(io);
    }

    // ---- entry points for the host loop ----

    /// A completion of one of this agent's ops: its tag (less `TAG_AGENT_FIRST`), socket
    /// index and generation.
    pub fn complete(
        &mut self,
        io: &mut Io<'_>,
        tag: u8,
        index: u32,
        generation: u32,
        c: Completion,
    ) {
        match tag {
            TAG_LINK_CONNECT | TAG_LINK_RECV | TAG_LINK_SEND => {
                self.link_completed(io, tag, generation, c)
            }
            TAG_ACCEPT => self.accepted(io, index, c),
            TAG_LOCAL_CONNECT | TAG_LOCAL_RECV | TAG_LOCAL_SEND => {
                self.local_completed(io, tag, index, generation, c)
            }
            _ => {}
        }
    }

    /// A timer armed through [`Io::timers`] is due.
    pub fn timer(&mut self, io: &mut Io<'_>, tok: u64) {
        let (tag, index, generation) = untoken(tok);
        let link_is = |r: &Reactor| {
            r.tunnel
                .as_ref()
                .filter(|t| t.generation == generation)
                .map(|t| t.upgraded)
        };
        let retry_due =
            generation == self.link_generation && self.retry_at.is_some_and(|at| at <= io.now);
        let connecting = self
            .locals
            .get(index as usize)
            .and_then(Option::as_ref)
            .is_some_and(|l| l.generation == generation && l.connecting);
        match (tag, index) {
            (TIMER_RETRY, 0) if retry_due => {
                self.retry_at = None;
                self.connect_tunnel(io);
            }
            (TIMER_RETRY, 1) => {
                // An accept paused for lack of fds.
                let i = generation;
                if let Some((fd, true)) = self.listeners.get(i as usize) {
                    let fd = fd.clone();
                    io.driver
                        .submit(op_token(self.slot, TAG_ACCEPT, i, 0), Op::Accept { fd });
                }
            }
            (TIMER_LINK, 0) if link_is(self) == Some(false) => {
                let why = format!("no upgrade within {} s", LINK_DEADLINE.as_secs());
                self.tunnel_failed(io, End::Dropped, &why);
            }
            (TIMER_LINK, 1) if link_is(self).is_some() => self.tunnel_events(io),
            (TIMER_LINK, 2) if link_is(self) == Some(true) => self.keepalive(io),
            (TIMER_LOCAL_CONNECT, _) if connecting => {
                let why = crate::resolve::no_connection_within(self.spec.connect_timeout);
                self.connect_failed(io, index, &why);
            }
            (TIMER_START_WAIT, start) => {
                let Some(name) =
                    (self.spec.services.get(generation as usize)).map(|s| s.name.clone())
                else {
                    return;
                };
                if let Sans::Source(s) = &mut self.sans {
                    let lost = s.lost_starts();
                    s.handle_start_wait_over(&name, start);
                    if s.lost_starts() > lost {
                        tracing::warn!(agent = %self.spec.name, service = %name, wait = ?START_WAIT, "the destination never answered a stream's start (a relay dropped it?): its connections are reset, the next one starts a new stream");
                    }
                    self.apply_actions(io);
                }
            }
            (TIMER_EOF_WAIT, _) => {
                if let Some(id) = (self.locals.get(index as usize))
                    .and_then(Option::as_ref)
                    .filter(|l| l.generation == generation)
                    .and_then(|l| l.id)
                {
                    self.sans.handle_eof_wait_over(id);
                    self.apply_actions(io);
                }
            }
            _ => {}
        }
    }
}

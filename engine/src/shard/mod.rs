//! A shard: one thread, one driver, its own listeners (SO_REUSEPORT) and the connections it
//! accepted, which it owns outright — no locks on the data path.
//!
//! The loop is thin: wait for completions, hand each to the connection (or listener) it belongs
//! to, let that connection's state machine say what to do next, submit it; fire due timers;
//! apply commands from the control thread (new listeners, new configs, drain, stop) and
//! connections handed over by other shards or by [`crate::Engine::connect`] (see [`Handoff`]).

mod busy;
mod conn;
mod pipes;
mod reclaim;
#[cfg(test)]
mod tests;
pub(crate) mod tunnel;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use socket2::SockAddr;

use crate::config::{Balance, DriverKind};
use crate::driver::{Completion, Driver, Fd, Op};
use crate::error::Error;
use crate::logging::{LOG_INTERVAL, RateLimiter};
use crate::stats::ListenerStats;
use crate::sys;
use crate::sys::ktls::KtlsSupport;
use busy::BusyPoll;

pub(crate) use conn::Conn;
pub use pipes::{PIPE_SIZE, PipePool};

/// Everything a shard needs to serve one forwarder; replaced whole on reload.
#[derive(Debug)]
pub struct Forwarder {
    /// Name for logs and metrics.
    pub name: String,
    /// The resolved upstream.
    pub upstream: SockAddr,
    /// The upstream as configured, for logs.
    pub upstream_text: String,
    /// The upstream's name, when it is one: looked up again after a connect to it failed.
    pub(crate) upstream_name: Option<crate::resolve::Name>,
    /// How its connections' legs are set up, from its mode (`crate::modes`).
    pub(crate) plan: crate::modes::Plan,
    /// Counters, kept across reloads.
    pub stats: Arc<ListenerStats>,
    /// Most open connections.
    pub max_connections: usize,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// TLS handshake timeout.
    pub handshake_timeout: Duration,
    /// Reset connections with no bytes moving for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// What the kernel offers for kTLS, when it is to be used.
    pub ktls: Option<Arc<KtlsSupport>>,
    /// The not-after time (unix seconds) of the certificate it presents, if any.
    pub cert_not_after: Option<i64>,
    /// Log an access line (`info`) for each connection when it closes.
    pub access_log: bool,
    /// Read a PROXY protocol header first on each accepted connection.
    pub accept_proxy: bool,
    /// Send a PROXY protocol header of this version to the upstream (server mode).
    pub send_proxy: Option<crate::config::ProxyVersion>,
}

impl Forwarder {
    /// A socket for the upstream and the address to connect it to: `upstream`, or the
    /// current address of its name's latest answer, past any of a family this host lacks
    /// ([`crate::resolve::Name::open`]).
    pub(crate) fn open_upstream(&self) -> std::io::Result<(SockAddr, OwnedFd)> {
        let tcp = |a: SocketAddr| sys::socket::tcp_stream(&a.into());
        if let Some(name) = &self.upstream_name {
            let Some(opened) = name.open(tcp) else {
                // Not resolved since start (`unresolved_upstream = "reset"`): look again.
                name.refresh();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    name.no_address(),
                ));
            };
            return opened.map(|(a, fd)| (a.into(), fd));
        }
        Ok((
            self.upstream.clone(),
            sys::socket::tcp_stream(&self.upstream)?,
        ))
    }

    /// The upstream's first address now, if it has one (a name that has not resolved since
    /// start has none).
    pub(crate) fn resolved(&self) -> Option<SocketAddr> {
        match &self.upstream_name {
            Some(name) => name.current(),
            None => self.upstream.as_socket(),
        }
    }

    /// Why the upstream's name has no address: it has not resolved since start.
    pub(crate) fn unresolved(&self) -> Option<String> {
        let name = self.upstream_name.as_ref()?;
        name.current().is_none().then(|| name.no_address())
    }

    /// A connect to `addr` (`None`: not known which) failed: the next connection goes to the
    /// next address known, and the name is looked up again (the upstream may have moved).
    pub(crate) fn upstream_failed(&self, addr: Option<SocketAddr>) {
        if let Some(n) = &self.upstream_name {
            n.failed(addr);
            n.refresh();
        }
    }
}

/// Orders from the control thread.
pub enum Command {
    /// Start accepting on this (per-shard, SO_REUSEPORT) listener.
    AddListener {
        /// The listener key.
        id: u32,
        /// The listening socket.
        fd: OwnedFd,
        /// What to do with its connections.
        fwd: Arc<Forwarder>,
    },
    /// New connections of listener `id` use `fwd` (certificates reloaded).
    UpdateListener {
        /// The listener key.
        id: u32,
        /// The new forwarder.
        fwd: Arc<Forwarder>,
    },
    /// Stop accepting on listener `id` (its open connections carry on).
    RemoveListener {
        /// The listener key.
        id: u32,
    },
    /// Every shard of the engine (this one included, at its index) and how accepted
    /// connections are spread over them. Sent once, before any listener.
    Peers {
        /// The shards, by index.
        peers: Vec<Peer>,
        /// Whether the shard keeps what it accepts or hands it out in turn.
        balance: Balance,
    },
    /// Start this connection here (a hand-off from another shard, or [`crate::Engine::connect`]).
    Adopt {
        /// The socket and what the connection needs.
        conn: Handoff,
    },
    /// Answer on this channel once every command sent before it is applied: the control
    /// thread's barrier, so that a change it made is in force on return.
    Sync(mpsc::Sender<()>),
    /// Stop accepting; exit once every connection has ended.
    Drain,
    /// Close everything now and exit.
    Stop,
    /// For the tunnel plane (relay listeners, relay peers moving to their tunnel's shard,
    /// control events, the agents' entities).
    Tunnel(tunnel::Cmd),
}

/// A connection on its way to a shard: the socket of its first leg (accepted by another
/// shard, or the engine's end of [`crate::Engine::connect`]'s socketpair), the client's address
/// and the forwarder it belongs to. The forwarder's `accepted` and `active` counters already
/// count it. Dropped before a shard starts it (that shard has exited), it resets the socket and
/// leaves `active`, so that no connection is lost without a trace.
pub struct Handoff {
    sock: Option<OwnedFd>,
    peer: Option<SocketAddr>,
    fwd: Arc<Forwarder>,
}

impl Handoff {
    /// A connection of `fwd` on `sock`, already counted in `accepted` and `active`.
    pub(crate) fn new(sock: OwnedFd, peer: Option<SocketAddr>, fwd: Arc<Forwarder>) -> Self {
        Self {
            sock: Some(sock),
            peer,
            fwd,
        }
    }

    fn into_parts(mut self) -> (OwnedFd, Option<SocketAddr>, Arc<Forwarder>) {
        let sock = self.sock.take().expect("taken once, here");
        (sock, self.peer, self.fwd.clone())
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if let Some(sock) = self.sock.take() {
            let _ = sys::socket::set_linger_zero(sock.as_fd());
            self.fwd.stats.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A way to reach a shard from any thread: its command channel and the eventfd that wakes it.
#[derive(Clone)]
pub struct Peer {
    tx: mpsc::Sender<Command>,
    wake: Arc<OwnedFd>,
    /// Hand-offs sent and not yet started: a draining shard waits for them before it exits.
    incoming: Arc<AtomicUsize>,
}

impl Peer {
    /// Sends a command and wakes the shard; gives the command back when the shard has exited.
    fn send(&self, cmd: Command) -> Result<(), Command> {
        self.tx.send(cmd).map_err(|e| e.0)?;
        sys::eventfd_signal(self.wake.as_fd());
        Ok(())
    }

    /// Sends a tunnel command; gives it back when the shard has exited.
    pub(crate) fn send_tunnel(&self, cmd: tunnel::Cmd) -> Result<(), tunnel::Cmd> {
        self.send(Command::Tunnel(cmd)).map_err(|cmd| match cmd {
            Command::Tunnel(cmd) => cmd,
            _ => unreachable!("the command sent was a Tunnel"),
        })
    }

    /// Hands `conn` to the shard; gives it back when the shard has exited.
    pub(crate) fn adopt(&self, conn: Handoff) -> Result<(), Handoff> {
        self.incoming.fetch_add(1, Ordering::SeqCst);
        self.send(Command::Adopt { conn }).map_err(|cmd| {
            self.incoming.fetch_sub(1, Ordering::SeqCst);
            match cmd {
                Command::Adopt { conn } => conn,
                _ => unreachable!("the command sent was an Adopt"),
            }
        })
    }
}

/// The control thread's handle on a running shard.
pub struct ShardHandle {
    peer: Peer,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShardHandle {
    /// Sends a command and wakes the shard.
    pub fn send(&self, cmd: Command) {
        let _ = self.peer.send(cmd);
    }

    /// How other threads reach this shard.
    pub fn peer(&self) -> Peer {
        self.peer.clone()
    }

    /// Hands `conn` to this shard; gives it back when the shard has exited.
    pub(crate) fn adopt(&self, conn: Handoff) -> Result<(), Handoff> {
        self.peer.adopt(conn)
    }

    /// Whether the shard thread has exited.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the shard thread to exit.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a shard thread with a driver of `kind` (never `Auto` here).
///
/// `busy_poll`: after activity, how long the shard polls before it sleeps (see
/// [`crate::EngineConfig::busy_poll`]).
pub fn spawn(index: usize, kind: DriverKind, busy_poll: Duration) -> Result<ShardHandle, Error> {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(sys::eventfd()?);
    let wake2 = wake.clone();
    let incoming = Arc::new(AtomicUsize::new(0));
    let incoming2 = incoming.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("shard-{index}"))
        .spawn(move || {
            let driver = match Driver::open(kind) {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let wake = Rc::new(
                wake2
                    .try_clone()
                    .expect("dup of the shard's eventfd (out of fds at start)"),
            );
            let mut shard = Shard::new(driver, rx, wake, busy_poll);
            shard.index = index;
            shard.incoming = incoming2;
            shard.run();
        })
        .map_err(|e| Error::Io {
            context: "spawn shard thread".into(),
            source: e,
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(Error::Unavailable {
                feature: "shard",
                why: "the shard thread died at start".into(),
            });
        }
    }
    Ok(ShardHandle {
        peer: Peer { tx, wake, incoming },
        thread: Some(thread),
    })
}

// Token layout: tag in bits 0-7, index in bits 8-39, generation in bits 40-63.
const TAG_ACCEPT: u8 = 1;
const TAG_WAKE: u8 = 2;
pub(crate) const TAG_CONNECT: u8 = 10;
pub(crate) const TAG_RECV_PLAIN: u8 = 11;
pub(crate) const TAG_RECV_TLS: u8 = 12;
pub(crate) const TAG_SEND_PLAIN: u8 = 13;
pub(crate) const TAG_SEND_TLS: u8 = 14;
pub(crate) const TAG_WAIT_PLAIN: u8 = 15;
pub(crate) const TAG_WAIT_TLS: u8 = 16;
pub(crate) const TAG_HANGUP_PLAIN: u8 = 17;
pub(crate) const TAG_HANGUP_TLS: u8 = 18;
/// Splice readiness: `TAG_POLL + dir * 2 + (0 = source readable, 1 = sink writable)`.
pub(crate) const TAG_POLL: u8 = 20;

pub(crate) fn token(tag: u8, index: u32, generation: u32) -> u64 {
    (u64::from(generation & 0xff_ffff) << 40) | (u64::from(index) << 8) | u64::from(tag)
}

// Timer tokens, in the timer heap only: a connection's handshake or connect deadline (0), its
// idle deadline, a listener's accept back-off, the end of a log rate-limit window.
const TIMER_DEADLINE: u8 = 0;
const TIMER_IDLE: u8 = 3;
const TIMER_ACCEPT: u8 = 4;
const TIMER_LOG: u8 = 5;

/// The first pause of accepts when the process is out of file descriptors; it doubles while
/// that lasts, up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

fn untoken(t: u64) -> (u8, u32, u32) {
    ((t & 0xff) as u8, (t >> 8) as u32, (t >> 40) as u32)
}

struct Listener {
    fd: Fd,
    fwd: Arc<Forwarder>,
    /// No accept is in flight: out of file descriptors, waiting for a close or the timer.
    paused: bool,
    /// The next pause, should accepting fail for lack of fds again.
    backoff: Duration,
}

/// The shard's state, on its own thread.
pub(crate) struct Shard {
    pub(crate) driver: Driver,
    listeners: HashMap<u32, Listener>,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    pub(crate) timers: BinaryHeap<Reverse<(Instant, u64)>>,
    rx: mpsc::Receiver<Command>,
    wake: Fd,
    draining: bool,
    pub(crate) pipes: PipePool,
    reclaim: reclaim::Reclaim,
    completions: Vec<Completion>,
    /// How long to poll, once out of work, before sleeping.
    busy_poll: BusyPoll,
    /// Repeated warnings (refusals, accept and connection failures) of one kind.
    log_limit: RateLimiter,
    /// When a timer to write the suppressed-lines summaries is set for.
    log_flush_at: Option<Instant>,
    /// This shard's place among `peers`.
    pub(crate) index: usize,
    /// Every shard of the engine, this one included (empty until [`Command::Peers`]).
    pub(crate) peers: Vec<Peer>,
    /// Whether accepted connections stay here or go to `peers` in turn.
    balance: Balance,
    /// Round-robin: the shard the next accepted connection goes to.
    next_peer: usize,
    /// Hand-offs sent to this shard and not yet started (see [`Peer::adopt`]).
    incoming: Arc<AtomicUsize>,
    /// The tunnel's links and entities (see [`tunnel`]); out of the shard only while one of
    /// the plane's hooks runs.
    pub(crate) plane: Option<Box<tunnel::Plane>>,
}

impl Shard {
    fn new(driver: Driver, rx: mpsc::Receiver<Command>, wake: Fd, busy_poll: Duration) -> Self {
        Self {
            driver,
            listeners: HashMap::new(),
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            rx,
            wake,
            draining: false,
            pipes: PipePool::new(PIPE_SIZE),
            reclaim: reclaim::Reclaim::new(),
            completions: Vec::new(),
            busy_poll: BusyPoll::new(busy_poll),
            log_limit: RateLimiter::new(LOG_INTERVAL),
            log_flush_at: None,
            index: 0,
            peers: Vec::new(),
            balance: Balance::Kernel,
            next_peer: 0,
            incoming: Arc::default(),
            plane: Some(Box::default()),
        }
    }

    fn run(mut self) {
        self.driver.submit(
            token(TAG_WAKE, 0, 0),
            Op::Poll {
                fd: self.wake.clone(),
                write: false,
            },
        );
        // When the shard last ran out of work (None while it has work).
        let mut idle_since: Option<Instant> = None;
        // The clock, read once after each wait (and again after work): every decision below
        // uses this reading rather than its own.
        let mut now = Instant::now();
        loop {
            if self.commands() {
                break;
            }
            // A hand-off on its way here is a connection too: it was counted where it began.
            if self.draining
                && self.live_conns() == 0
                && self.incoming.load(Ordering::SeqCst) == 0
                && self.plane.as_ref().is_none_or(|p| p.is_idle())
            {
                break;
            }
            let mut done = std::mem::take(&mut self.completions);
            let window = self.busy_poll.window();
            let polling = match idle_since {
                Some(since) => now.saturating_duration_since(since) < window,
                None => !window.is_zero(),
            };
            let timeout = if polling {
                Some(Duration::ZERO)
            } else {
                let timer = self.timers.peek().map(|Reverse((t, _))| *t);
                let reclaim = self.reclaim.deadline(&self.pipes);
                timer
                    .into_iter()
                    .chain(reclaim)
                    .min()
                    .map(|t| t.saturating_duration_since(now))
            };
            let before = now;
            if !polling {
                // About to sleep: an idle period starts now, unless it started earlier.
                idle_since.get_or_insert(before);
            }
            if let Err(e) = self.driver.wait(timeout, &mut done) {
                tracing::error!(error = %e, "driver failed; shard stops");
                break;
            }
            if done.is_empty() {
                idle_since.get_or_insert(before);
                if polling {
                    // Let whatever else is runnable on this CPU go first: it is often the
                    // process this shard is waiting for, and a spinning shard must not make it
                    // wait for the end of a time slice.
                    sys::yield_now();
                }
                now = Instant::now();
                if polling {
                    self.busy_poll.looked(now.saturating_duration_since(before));
                }
            } else {
                now = Instant::now();
                if let Some(since) = idle_since.take() {
                    self.busy_poll.record(now.saturating_duration_since(since));
                }
                for c in done.drain(..) {
                    self.complete(c);
                }
                // The work took time: timers and the next wait count from its end.
                now = Instant::now();
            }
            self.completions = done;
            self.fire_timers(now);
            self.reclaim.tick(now, &mut self.pipes);
        }
        // Reset what is left (Stop after the drain time, or a driver failure): a clean FIN
        // would tell the peers that a cut stream was complete.
        for i in 0..self.conns.len() {
            if self.conns[i].is_some() {
                let why = "engine stopping: drain time is up".to_string();
                self.close_conn(i as u32, Some((crate::Side::Internal, why)));
            }
        }
    }

    fn live_conns(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    /// Applies pending commands; returns true when the shard must stop now.
    fn commands(&mut self) -> bool {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::AddListener { id, fd, fwd } => {
                    let fd = Rc::new(fd);
                    self.driver
                        .submit(token(TAG_ACCEPT, id, 0), Op::Accept { fd: fd.clone() });
                    self.listeners.insert(
                        id,
                        Listener {
                            fd,
                            fwd,
                            paused: false,
                            backoff: ACCEPT_BACKOFF,
                        },
                    );
                }
                Command::UpdateListener { id, fwd } => {
                    if let Some(l) = self.listeners.get_mut(&id) {
                        l.fwd = fwd;
                    }
                }
                Command::RemoveListener { id } => {
                    if let Some(l) = self.listeners.remove(&id) {
                        self.driver.cancel(l.fd.as_raw_fd());
                    }
                }
                Command::Peers { peers, balance } => {
                    // Start the turn at this shard's successor, so the shards do not all hand
                    // their first connections to the same one.
                    self.next_peer = (self.index + 1) % peers.len().max(1);
                    self.peers = peers;
                    self.balance = balance;
                }
                Command::Adopt { conn } => {
                    self.incoming.fetch_sub(1, Ordering::SeqCst);
                    self.start(conn);
                }
                Command::Drain => {
                    self.draining = true;
                    for (_, l) in self.listeners.drain() {
                        self.driver.cancel(l.fd.as_raw_fd());
                    }
                    tunnel::drain(self);
                }
                Command::Tunnel(cmd) => tunnel::command(self, cmd),
                Command::Sync(done) => {
                    let _ = done.send(());
                }
                Command::Stop => return true,
            }
        }
        false
    }

    fn complete(&mut self, c: Completion) {
        let (tag, index, generation) = untoken(c.token);
        match tag {
            TAG_WAKE => {
                sys::eventfd_drain(self.wake.as_fd());
                self.driver.submit(
                    token(TAG_WAKE, 0, 0),
                    Op::Poll {
                        fd: self.wake.clone(),
                        write: false,
                    },
                );
            }
            TAG_ACCEPT => self.accepted(index, c),
            t if t >= tunnel::TAG_FIRST => tunnel::complete(self, t, index, generation, c),
            _ => {
                let Some(conn) = self.conn_mut(index, generation) else {
                    return; // the connection is gone; dropping `c` frees its buffer and fd
                };
                conn.complete(tag, c);
                self.drive(index);
            }
        }
    }

    fn accepted(&mut self, id: u32, c: Completion) {
        let Some(listener) = self.listeners.get_mut(&id) else {
            return; // removed meanwhile
        };
        let fwd = listener.fwd.clone();
        let sock = match (c.result, c.accepted) {
            (Ok(_), Some(s)) => {
                listener.backoff = ACCEPT_BACKOFF;
                s
            }
            // The listener was cancelled: no new accept.
            (Err(e), _) if e.raw_os_error() == Some(libc::ECANCELED) => return,
            (Err(e), _) if out_of_fds(&e) => {
                // Retrying at once would spin: nothing frees an fd until a connection closes.
                // Pause until one of ours closes or the back-off ends.
                let pause = listener.backoff;
                listener.backoff = (pause * 2).min(ACCEPT_BACKOFF_MAX);
                listener.paused = true;
                self.timers.push(Reverse((
                    Instant::now() + pause,
                    token(TIMER_ACCEPT, id, 0),
                )));
                if self.log_allow(&fwd.name, "accept: out of file descriptors") {
                    tracing::warn!(
                        forwarder = %fwd.name,
                        error = %e,
                        pause_ms = pause.as_millis() as u64,
                        "cannot accept: out of file descriptors; accepting pauses until a \
                         connection closes (raise the fd limit or lower max_connections)"
                    );
                }
                return;
            }
            (Err(e), _) => {
                self.submit_accept(id);
                if self.log_allow(&fwd.name, "accept failed") {
                    tracing::warn!(forwarder = %fwd.name, error = %e, "accept failed");
                }
                return;
            }
            (Ok(_), None) => {
                self.submit_accept(id);
                return;
            }
        };
        self.submit_accept(id);
        let stats = &fwd.stats;
        let active = stats
            .active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if active as usize >= fwd.max_connections {
            stats
                .active
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            stats
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = sys::socket::set_linger_zero(sock.as_fd());
            if self.log_allow(&fwd.name, "refused: max_connections") {
                tracing::warn!(
                    forwarder = %fwd.name,
                    max = fwd.max_connections,
                    "connection refused: max_connections reached (further refusals are counted \
                     and summarised)"
                );
            }
            return;
        }
        stats
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = sys::socket::set_nodelay(sock.as_fd());
        if let Some(kernel) = fwd.stats.kernel.get() {
            kernel.register(sock.as_fd(), crate::accounting::Leg::Downstream, false);
        }
        let peer = sys::socket::peer_addr(sock.as_fd());
        let conn = Handoff::new(sock, peer, fwd.clone());
        match self.round_robin_target() {
            Some(target) => match self.peers[target].adopt(conn) {
                Ok(()) => {
                    fwd.stats.handed_off.fetch_add(1, Ordering::Relaxed);
                }
                // That shard has exited (the engine is stopping): serve it here.
                Err(conn) => self.start(conn),
            },
            None => self.start(conn),
        }
    }

    /// Round-robin balance: the other shard whose turn it is to take the connection just
    /// accepted (`None`: this shard's turn, or kernel balance).
    fn round_robin_target(&mut self) -> Option<usize> {
        if self.balance != Balance::RoundRobin || self.peers.len() < 2 {
            return None;
        }
        let target = self.next_peer;
        self.next_peer = (target + 1) % self.peers.len();
        (target != self.index).then_some(target)
    }

    /// Starts a connection on its first leg's socket: the one place a connection begins,
    /// whether this shard accepted it or another handed it over. Its counters already count it.
    fn start(&mut self, conn: Handoff) {
        let (sock, peer, fwd) = conn.into_parts();
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let generation = {
            let g = &mut self.generations[index as usize];
            *g = g.wrapping_add(1) & 0xff_ffff;
            *g
        };
        match Conn::new(fwd.clone(), Rc::new(sock), peer, generation) {
            Ok(conn) => {
                self.conns[index as usize] = Some(conn);
                self.drive(index);
            }
            Err(e) => {
                fwd.stats
                    .active
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                fwd.stats.record_error(crate::Side::Tls);
                if self.log_allow(&fwd.name, "cannot start TLS session") {
                    tracing::warn!(forwarder = %fwd.name, side = %"tls", error = %e, "cannot start TLS session");
                }
                self.free.push(index);
            }
        }
    }

    fn submit_accept(&mut self, id: u32) {
        if let Some(l) = self.listeners.get(&id) {
            self.driver
                .submit(token(TAG_ACCEPT, id, 0), Op::Accept { fd: l.fd.clone() });
        }
    }

    /// Accepts again on the listeners that paused for lack of file descriptors (`only`: just
    /// that one).
    fn resume_accepts(&mut self, only: Option<u32>) {
        let paused: Vec<u32> = self
            .listeners
            .iter_mut()
            .filter(|(id, l)| l.paused && only.is_none_or(|o| o == **id))
            .map(|(id, l)| {
                l.paused = false;
                *id
            })
            .collect();
        for id in paused {
            self.submit_accept(id);
        }
    }

    /// Whether a warning of `kind` for `forwarder` (or relay: its kinds start with `relay `)
    /// may be written now; when not, it is counted and a summary line follows at the end of
    /// the window.
    pub(crate) fn log_allow(&mut self, forwarder: &str, kind: &'static str) -> bool {
        if self.log_limit.allow(forwarder, kind, Instant::now()) {
            return true;
        }
        if let Some(at) = self.log_limit.next_flush()
            && self.log_flush_at.is_none_or(|armed| armed > at)
        {
            self.log_flush_at = Some(at);
            self.timers.push(Reverse((at, token(TIMER_LOG, 0, 0))));
        }
        false
    }

    fn flush_log_summaries(&mut self, now: Instant) {
        self.log_flush_at = None;
        for (name, kind, suppressed) in self.log_limit.flush(now) {
            let secs = LOG_INTERVAL.as_secs();
            // The summary names what its lines named: a relay's kinds say "relay …".
            if kind.starts_with("relay ") {
                tracing::warn!(relay = %name, kind, suppressed, secs, "similar lines suppressed");
            } else {
                tracing::warn!(forwarder = %name, kind, suppressed, secs, "similar lines suppressed");
            }
        }
        if let Some(at) = self.log_limit.next_flush() {
            self.log_flush_at = Some(at);
            self.timers.push(Reverse((at, token(TIMER_LOG, 0, 0))));
        }
    }

    fn conn_mut(&mut self, index: u32, generation: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(index as usize)?
            .as_mut()
            .filter(|c| c.generation == generation)
    }

    /// Lets the connection issue its next operations; closes it when it is done.
    fn drive(&mut self, index: u32) {
        let Some(mut conn) = self.conns[index as usize].take() else {
            return;
        };
        let outcome = conn.drive(index, self);
        if conn.deadline != conn.armed {
            conn.armed = conn.deadline;
            if let Some(d) = conn.deadline {
                // A stale entry for an older deadline is ignored when it fires.
                self.timers
                    .push(Reverse((d, token(TIMER_DEADLINE, index, conn.generation))));
            }
        }
        if let Some(d) = conn.idle_timer_to_arm() {
            self.timers
                .push(Reverse((d, token(TIMER_IDLE, index, conn.generation))));
        }
        self.conns[index as usize] = Some(conn);
        match outcome {
            conn::Outcome::Open => {}
            conn::Outcome::Closed(failure) => self.close_conn(index, failure),
        }
    }

    fn close_conn(&mut self, index: u32, failure: Option<(crate::Side, String)>) {
        let Some(mut conn) = self.conns[index as usize].take() else {
            return;
        };
        conn.close(failure, self);
        self.free.push(index);
        // A proxied connection gave back at least two fds: enough for the next one.
        if conn.dialed() {
            self.resume_accepts(None);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, tok))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let (tag, index, generation) = untoken(tok);
            match tag {
                TIMER_ACCEPT => {
                    self.resume_accepts(Some(index));
                    continue;
                }
                TIMER_LOG => {
                    if self.log_flush_at.is_some_and(|at| at <= now) {
                        self.flush_log_summaries(now);
                    }
                    continue;
                }
                t if t >= tunnel::TIMER_TUNNEL => {
                    tunnel::timer(self, t, index, generation, now);
                    continue;
                }
                _ => {}
            }
            let Some(conn) = self.conn_mut(index, generation) else {
                continue;
            };
            if tag == TIMER_IDLE {
                if conn.idle_timer_fired(now) {
                    self.drive(index);
                }
            } else if conn.deadline.is_some_and(|d| d <= now) {
                conn.deadline = None;
                conn.timeout();
                self.drive(index);
            }
        }
    }
}

/// Whether an accept failed because the process or the system ran out of file descriptors
/// (or of the memory for a socket): retrying before something closes would only spin.
fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Opens a listening socket bound to `addr` with SO_REUSEPORT, so each shard can have its own.
pub fn bind_listener(addr: SocketAddr) -> Result<OwnedFd, Error> {
    sys::socket::bind_listener(addr).map_err(|source| Error::Listen { addr, source })
}

/// Fails with `EADDRINUSE` when anyone holds `addr`: a plain bind (no SO_REUSEPORT) cannot
/// share a port with a listener. Call it before binding the first of our own SO_REUSEPORT
/// sockets for an address, which would otherwise share the port with another process.
pub fn check_port_free(addr: SocketAddr) -> Result<(), Error> {
    sys::socket::check_port_free(addr).map_err(|source| Error::Listen { addr, source })
}

/// The address a listener actually bound (resolves port 0).
pub fn local_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    sys::socket::local_addr(fd.as_fd())
}

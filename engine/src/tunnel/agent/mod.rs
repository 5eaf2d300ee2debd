//! The source and destination agents (issue 11): the I/O around the sans-IO
//! [`splice_proto::tunnel::agent`] state machines.
//!
//! - [`spec`]: the `[[source]]` / `[[destination]]` tables checked and loaded (token, client
//!   token, TLS, services).
//! - [`link`]: the tunnel connection in the client role (rustls, the upgrade, WebSocket).
//! - [`reactor`]: one agent's sockets and ops (the tunnel connection, listeners, local
//!   connections), flow control and reconnects.
//! - [`status`]: the state the CLI waits on and the counters on `/metrics`.
//!
//! Each agent runs on a thread of its own with its own driver (io_uring or epoll, as the
//! shards): its local connections and its tunnel share that thread, with no locks. The
//! reactor only needs a driver and a timer list ([`reactor::Io`]), so a shard can host it
//! once the shards have a tunnel plane.

mod link;
mod reactor;
mod spec;
mod status;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

pub use status::AgentState;
pub(crate) use status::{AgentShared, render};

use crate::config::{DestinationConfig, DriverKind, SourceConfig, TOKEN_ENV};
use crate::driver::{Driver, Op};
use crate::error::{Error, Result};
use crate::sys;
use reactor::{Io, Reactor};

/// The host loop's own wake-up op.
const TAG_WAKE: u8 = 30;

enum Command {
    Stop,
}

/// The control thread's handle on a running agent. Dropping it stops the agent.
pub(crate) struct AgentHandle {
    pub shared: Arc<AgentShared>,
    /// Source: each service's name and the address its listener bound.
    pub addrs: Vec<(String, SocketAddr)>,
    tx: mpsc::Sender<Command>,
    wake: Arc<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentHandle {
    /// Stops the agent (its tunnel connection gets a close frame, its local connections are
    /// reset) and waits for its thread.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.tx.send(Command::Stop);
            sys::eventfd_signal(self.wake.as_fd());
            let _ = t.join();
        }
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a source agent: binds its listeners (so a port 0 is known at once), then its
/// thread connects to the relay.
pub(crate) fn start_source(cfg: &SourceConfig, driver: DriverKind) -> Result<AgentHandle> {
    let spec = spec::source_spec(cfg, std::env::var(TOKEN_ENV).ok())?;
    let mut fds = Vec::new();
    let mut addrs = Vec::new();
    for s in &spec.services {
        if s.addr.port() != 0 {
            crate::shard::check_port_free(s.addr)?;
        }
        let fd = crate::shard::bind_listener(s.addr)?;
        let addr = crate::shard::local_addr(&fd).unwrap_or(s.addr);
        addrs.push((s.name.clone(), addr));
        fds.push(fd);
    }
    start(spec, driver, fds, addrs)
}

/// Starts a destination agent.
pub(crate) fn start_destination(
    cfg: &DestinationConfig,
    driver: DriverKind,
) -> Result<AgentHandle> {
    let spec = spec::destination_spec(cfg, std::env::var(TOKEN_ENV).ok())?;
    start(spec, driver, Vec::new(), Vec::new())
}

fn start(
    spec: spec::AgentSpec,
    kind: DriverKind,
    fds: Vec<OwnedFd>,
    addrs: Vec<(String, SocketAddr)>,
) -> Result<AgentHandle> {
    let spec = Arc::new(spec);
    let shared = Arc::new(AgentShared::new(
        spec.name.clone(),
        spec.mode.as_str(),
        &spec.service_names(),
    ));
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(sys::eventfd()?);
    let wake2 = wake.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (spec2, shared2) = (spec.clone(), shared.clone());
    let thread = std::thread::Builder::new()
        .name(format!("agent-{}", spec.mode.as_str()))
        .spawn(move || {
            let driver = match Driver::open(kind) {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let reactor = match Reactor::new(spec2.clone(), shared2, fds) {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::config(&spec2.name, e.to_string())));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            run(driver, reactor, rx, wake2);
        })
        .map_err(|e| Error::Io {
            context: "spawn agent thread".into(),
            source: e,
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(Error::Unavailable {
                feature: "agent",
                why: "the agent thread died at start".into(),
            });
        }
    }
    tracing::info!(agent = %spec.name, relay = %spec.relay, mode = spec.mode.as_str(), "agent started");
    Ok(AgentHandle {
        shared,
        addrs,
        tx,
        wake,
        thread: Some(thread),
    })
}

/// The agent's loop: the driver's completions and the timers into the reactor.
fn run(mut driver: Driver, mut reactor: Reactor, rx: mpsc::Receiver<Command>, wake: Arc<OwnedFd>) {
    let wake: crate::driver::Fd = Rc::new(
        wake.as_fd()
            .try_clone_to_owned()
            .expect("dup of the agent's eventfd"),
    );
    let wake_token = reactor::token(TAG_WAKE, 0, 0);
    driver.submit(
        wake_token,
        Op::Poll {
            fd: wake.clone(),
            write: false,
        },
    );
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut armed = Vec::new();
    let mut done = Vec::new();
    {
        let mut io = Io {
            driver: &mut driver,
            timers: &mut armed,
            now: Instant::now(),
        };
        reactor.start(&mut io);
    }
    loop {
        for t in armed.drain(..) {
            heap.push(Reverse(t));
        }
        let mut stop = false;
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Stop => stop = true,
            }
        }
        if stop {
            let mut io = Io {
                driver: &mut driver,
                timers: &mut armed,
                now: Instant::now(),
            };
            reactor.stop(&mut io);
            break;
        }
        let timeout = heap
            .peek()
            .map(|Reverse((t, _))| t.saturating_duration_since(Instant::now()));
        if let Err(e) = driver.wait(timeout, &mut done) {
            tracing::error!(error = %e, "agent driver failed; the agent stops");
            let mut io = Io {
                driver: &mut driver,
                timers: &mut armed,
                now: Instant::now(),
            };
            reactor.stop(&mut io);
            break;
        }
        let now = Instant::now();
        let mut io = Io {
            driver: &mut driver,
            timers: &mut armed,
            now,
        };
        for c in done.drain(..) {
            if c.token == wake_token {
                sys::eventfd_drain(wake.as_fd());
                io.driver.submit(
                    wake_token,
                    Op::Poll {
                        fd: wake.clone(),
                        write: false,
                    },
                );
                continue;
            }
            reactor.complete(&mut io, c);
        }
        while let Some(Reverse((t, tok))) = heap.peek().copied() {
            if t > now {
                break;
            }
            heap.pop();
            reactor.timer(&mut io, tok);
        }
    }
}

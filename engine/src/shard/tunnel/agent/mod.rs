//! The source and destination agents (issue 11): the I/O around the sans-IO
//! [`splice_proto::tunnel::agent`] state machines, on the shards.
//!
//! - [`spec`]: the `[[source]]` / `[[destination]]` tables checked and loaded (token, client
//!   token, TLS, services).
//! - [`link`]: the tunnel connection in the client role (rustls, the upgrade, WebSocket).
//! - [`reactor`]: one agent's sockets and ops (the tunnel connection, listeners, local
//!   connections), flow control and reconnects.
//! - [`host`]: the agent as an entity of a shard's tunnel plane.
//! - [`status`]: the state the CLI waits on and the counters on `/metrics`.
//! - [`reload`]: a reload's added, changed and removed agents.
//!
//! An agent lives on one shard: its tunnel connection, its listeners (one socket per
//! service, on that shard only) and every local connection they accept or it dials, so a
//! local connection and its tunnel never cross threads.

pub(crate) mod host;
mod link;
mod reactor;
pub(crate) mod reload;
mod spec;
pub(crate) mod standby;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;

pub use status::AgentState;
pub(crate) use status::{AgentShared, render};

use crate::config::{EngineConfig, TOKEN_ENV};
use crate::error::{Error, Result};
use crate::shard::{Command, ShardHandle};
use host::AgentStart;
use reactor::Sans;

/// The control thread's handle on a running agent.
pub(crate) struct AgentHandle {
    pub shared: Arc<AgentShared>,
    /// Source: each service's name and the address its listener bound.
    pub addrs: Vec<(String, SocketAddr)>,
}

impl AgentHandle {
    /// Marks the agent stopped (its shard closes its sockets as it stops).
    pub fn stop(&mut self) {
        self.shared.set_state(AgentState::Stopped);
    }
}

/// Checks and loads source `i` of `cfg` as a start would (token, files, addresses), without
/// starting it. Errors name the file, the line, the table and the key.
pub(crate) fn source_spec(cfg: &EngineConfig, i: usize) -> Result<spec::AgentSpec> {
    let bad = |key, message| cfg.entry_error("source", i, key, message);
    spec::source_spec(&cfg.sources[i], std::env::var(TOKEN_ENV).ok(), &bad)
}

/// [`source_spec`] for destination `i` of `cfg`.
pub(crate) fn destination_spec(cfg: &EngineConfig, i: usize) -> Result<spec::AgentSpec> {
    let bad = |key, message| cfg.entry_error("destination", i, key, message);
    spec::destination_spec(&cfg.destinations[i], std::env::var(TOKEN_ENV).ok(), &bad)
}

/// Checks every agent table of `cfg` as a start would (`splice-engine check`). Returns a
/// warning for each relay name or destination target that does not resolve now, which a
/// start does not refuse.
pub(crate) fn check_all(cfg: &EngineConfig) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let mut warn = |table, i, spec: spec::AgentSpec| {
        for u in spec.unresolved_names() {
            let message = format!(
                "`{}` {:?} does not resolve now ({}): {}",
                u.key,
                u.given,
                u.why,
                u.consequence()
            );
            warnings.push(cfg.entry_error(table, i, u.key, message).to_string());
        }
    };
    for i in 0..cfg.sources.len() {
        warn("source", i, source_spec(cfg, i)?);
    }
    for i in 0..cfg.destinations.len() {
        warn("destination", i, destination_spec(cfg, i)?);
    }
    Ok(warnings)
}

/// Starts source `i` of `cfg` on `shard`: binds its listeners here (so a port 0 is known at
/// once), then the shard connects to the relay.
pub(crate) fn start_source(
    cfg: &EngineConfig,
    i: usize,
    shard: &ShardHandle,
) -> Result<AgentHandle> {
    let spec = source_spec(cfg, i)?;
    let mut fds = Vec::new();
    let mut addrs = Vec::new();
    for s in &spec.services {
        let listen = s.listen();
        if listen.port() != 0 {
            crate::shard::check_port_free(listen)?;
        }
        let fd = crate::shard::bind_listener(listen)?;
        let addr = crate::shard::local_addr(&fd).unwrap_or(listen);
        addrs.push((s.name.clone(), addr));
        fds.push(fd);
    }
    start(spec, shard, fds, addrs)
}

/// Starts destination `i` of `cfg` on `shard`.
pub(crate) fn start_destination(
    cfg: &EngineConfig,
    i: usize,
    shard: &ShardHandle,
) -> Result<AgentHandle> {
    let spec = destination_spec(cfg, i)?;
    if let Some(thing) = &cfg.destinations[i].thing {
        return start_standby(spec, thing.clone(), shard);
    }
    start(spec, shard, Vec::new(), Vec::new())
}

/// Starts a destination agent in standby for `thing` on `shard`.
fn start_standby(spec: spec::AgentSpec, thing: String, shard: &ShardHandle) -> Result<AgentHandle> {
    Sans::new(&spec).map_err(|e| Error::config(&spec.name, e.to_string()))?;
    let shared = Arc::new(AgentShared::new(
        spec.name.clone(),
        spec.mode.as_str(),
        &spec.service_names(),
    ));
    tracing::info!(agent = %spec.name, relay = %spec.relay, thing = %thing, "standby agent started");
    warn_unresolved(&spec);
    shard.send(Command::Tunnel(crate::shard::tunnel::Cmd::StartStandby(
        Box::new(standby::StandbyStart {
            spec: Arc::new(spec),
            thing,
            shared: shared.clone(),
        }),
    )));
    Ok(AgentHandle {
        shared,
        addrs: Vec::new(),
    })
}

/// An agent starts although its relay's name or a destination's target does not resolve (a
/// device is often up before its network or DNS): it says so; its attempts fail, and are
/// retried, until the relay's name resolves, and a target's streams are reset until it does.
fn warn_unresolved(spec: &spec::AgentSpec) {
    for u in spec.unresolved_names() {
        match u.service {
            None => {
                tracing::warn!(agent = %spec.name, relay = %u.given, error = %u.why, "the relay's name does not resolve yet; {}", u.consequence())
            }
            Some(service) => {
                tracing::warn!(agent = %spec.name, service = %service, target = %u.given, error = %u.why, "the service's target does not resolve yet; {}", u.consequence())
            }
        }
    }
}

fn start(
    spec: spec::AgentSpec,
    shard: &ShardHandle,
    listeners: Vec<std::os::fd::OwnedFd>,
    addrs: Vec<(String, SocketAddr)>,
) -> Result<AgentHandle> {
    let sans = Sans::new(&spec).map_err(|e| Error::config(&spec.name, e.to_string()))?;
    let spec = Arc::new(spec);
    let shared = Arc::new(AgentShared::new(
        spec.name.clone(),
        spec.mode.as_str(),
        &spec.service_names(),
    ));
    tracing::info!(agent = %spec.name, relay = %spec.relay, mode = spec.mode.as_str(), "agent started");
    warn_unresolved(&spec);
    shard.send(Command::Tunnel(crate::shard::tunnel::Cmd::StartAgent(
        Box::new(AgentStart {
            spec,
            shared: shared.clone(),
            sans,
            listeners,
        }),
    )));
    Ok(AgentHandle { shared, addrs })
}

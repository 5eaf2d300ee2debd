//! Starting a `[[relay]]`'s data plane on the shards: its TLS config, a listener per shard,
//! the [`Relay`] the shards share, and the control side's events turned into shard commands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU32};
use std::time::{Duration, Instant};

use super::Cmd;
use super::relay_state::{Relay, RelayStats};
use crate::config::{EngineConfig, RelayConfig};
use crate::error::{Error, Result};
use crate::relay::service::RelayService;
use crate::shard::ShardHandle;
use splice_proto::tunnel::relay::Limits;

/// A relay's data plane as the engine keeps it.
pub(crate) struct RunningRelay {
    pub(crate) relay: Arc<Relay>,
    pub(crate) addr: SocketAddr,
}

/// Loads, binds and starts relay `cfg` (id `id`, control side `service`) on `shards`.
pub(crate) fn start_relay(
    cfg: &RelayConfig,
    service: &RelayService,
    id: u32,
    shards: &[ShardHandle],
    stats_list: &super::metrics::StatsList,
) -> Result<RunningRelay> {
    let name = service.name().to_string();
    // Loaded (and their errors named) as the control side started.
    let (tls, identities) = service.tls();
    let listen: SocketAddr = cfg.listen.parse().map_err(|e| Error::Address {
        addr: cfg.listen.clone(),
        why: format!("{e}"),
    })?;
    crate::shard::check_port_free(listen)?;
    let first = crate::shard::bind_listener(listen)?;
    let addr = crate::shard::local_addr(&first).unwrap_or(listen);
    let mut fds = vec![first];
    for _ in 1..shards.len() {
        fds.push(crate::shard::bind_listener(addr)?);
    }
    let relay = Arc::new(Relay {
        id,
        name: name.clone(),
        tls,
        identities,
        registry: service.registry(),
        limits: Limits {
            ping_after: cfg.ping_after,
            idle_timeout: cfg.idle_timeout,
            ..Limits::default()
        },
        handshake_timeout: cfg.handshake_timeout,
        max_peers: cfg.max_peers,
        rate_limit: cfg.rate_limit.filter(|r| *r > 0),
        cors_origins: cfg.cors_origins.clone(),
        peers: AtomicI64::new(0),
        stats: Arc::new(RelayStats {
            per_tunnel: service.counters(),
            ..RelayStats::default()
        }),
    });
    if let Ok(mut list) = stats_list.lock() {
        list.push((name.clone(), relay.stats.clone()));
    }
    for (shard, fd) in shards.iter().zip(fds) {
        shard.send(crate::shard::Command::Tunnel(Cmd::AddRelay {
            fd,
            relay: relay.clone(),
        }));
    }
    // Closes and rotations go to every shard; the one the tunnel lives on acts.
    let peers: Vec<crate::shard::Peer> = shards.iter().map(ShardHandle::peer).collect();
    service.set_events(Box::new(move |event| {
        for peer in &peers {
            let _ = peer.send_tunnel(Cmd::Event {
                relay: id,
                event: event.clone(),
            });
        }
    }));
    tracing::info!(relay = %name, addr = %addr, api = %service.api_addr(), "relay listening");
    Ok(RunningRelay { relay, addr })
}

/// The relay tables of `new` that `old` does not have as they are (added or changed).
fn fresh<'a>(old: &EngineConfig, new: &'a EngineConfig) -> Vec<&'a RelayConfig> {
    new.relays
        .iter()
        .filter(|r| !old.relays.contains(r))
        .collect()
}

/// A reload's check of its added and changed `[[relay]]` tables (certificate, key, API token
/// file), before anything changes.
pub(crate) fn check_relays(old: &EngineConfig, new: &EngineConfig) -> Result<()> {
    (0..new.relays.len())
        .filter(|&i| !old.relays.contains(&new.relays[i]))
        .try_for_each(|i| crate::relay::service::check_relay(new, i))
}

/// How long a reload retries a relay whose addresses its old self still holds.
const RESTART_WAIT: Duration = Duration::from_secs(5);

/// A reload's part for the relays, matched by name: unchanged ones keep running untouched;
/// removed and changed ones stop (listeners closed, their peers hung up without a close frame, API
/// and expiry timer stopped); changed and added ones start (a changed relay with a
/// `:memory:` registry starts empty).
pub(crate) fn reload_relays(
    old: &EngineConfig,
    new: &EngineConfig,
    services: &mut Vec<RelayService>,
    planes: &mut Vec<RunningRelay>,
    shards: &[ShardHandle],
    stats_list: &super::metrics::StatsList,
    next_id: &AtomicU32,
) -> Result<()> {
    for gone in old.relays.iter().filter(|r| !new.relays.contains(r)) {
        let name = gone.display_name();
        if let Some(i) = planes.iter().position(|p| p.relay.name == name) {
            let plane = planes.remove(i);
            for s in shards {
                s.send(crate::shard::Command::Tunnel(Cmd::RemoveRelay(
                    plane.relay.id,
                )));
            }
        }
        if let Some(i) = services.iter().position(|s| s.name() == name) {
            drop(services.remove(i));
        }
        if let Ok(mut list) = stats_list.lock() {
            list.retain(|(n, _)| *n != name);
        }
        tracing::info!(relay = %name, "relay stopped by the reload");
    }
    for r in fresh(old, new) {
        let end = Instant::now() + RESTART_WAIT;
        let i = new
            .relays
            .iter()
            .position(|x| std::ptr::eq(x, r))
            .expect("a relay of new");
        let bad = |key, message| new.entry_error("relay", i, key, message);
        loop {
            let started = RelayService::start(r, &bad).and_then(|service| {
                let id = next_id.fetch_add(1, Relaxed);
                let plane = start_relay(r, &service, id, shards, stats_list)?;
                Ok((service, plane))
            });
            match started {
                Ok((service, plane)) => {
                    services.push(service);
                    planes.push(plane);
                    break;
                }
                // Its old self's listeners close as their shards get to it.
                Err(Error::Listen { .. } | Error::Io { .. }) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

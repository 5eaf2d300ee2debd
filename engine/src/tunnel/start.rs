//! Starting a `[[relay]]`'s data plane on the shards: its TLS config, a listener per shard,
//! the [`Relay`] the shards share, and the control side's events turned into shard commands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use super::Cmd;
use super::relay::{Relay, RelayStats};
use crate::config::RelayConfig;
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
    let tls = crate::tls::material::server_config(&crate::tls::material::ServerTlsOptions {
        cert: cfg.cert.clone(),
        key: cfg.key.clone(),
        client_ca: None,
        alpn: Vec::new(),
        versions: Vec::new(),
        disable_resumption: false,
    })?
    .config;
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
        stats: Arc::new(RelayStats::default()),
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

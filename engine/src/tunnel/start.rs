//! Starting a `[[relay]]` on the shards: its TLS config, its registry and API, a listener per
//! shard, and the [`Relay`] the shards share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use super::Cmd;
use super::relay::{Relay, RelayStats};
use crate::config::RelayConfig;
use crate::error::{Error, Result};
use crate::relay::api::ApiServer;
use crate::relay::registry::{Limits as RegistryLimits, Registry};
use crate::relay::secret::Secret;
use crate::relay::store::{MemoryStore, TunnelStore};
use crate::shard::ShardHandle;
use splice_proto::tunnel::relay::Limits;

/// A relay the engine runs.
pub(crate) struct RunningRelay {
    pub(crate) relay: Arc<Relay>,
    pub(crate) addr: SocketAddr,
    pub(crate) api_addr: Option<SocketAddr>,
    /// Kept for its lifetime: the API stops when it drops.
    _api: Option<ApiServer>,
}

fn config_error(name: &str, message: String) -> Error {
    Error::Config {
        file: format!("relay {name:?}"),
        message,
    }
}

/// The name of a relay as logs and metrics give it.
pub(crate) fn relay_name(cfg: &RelayConfig) -> String {
    if cfg.name.is_empty() {
        format!("relay-{}", cfg.listen)
    } else {
        cfg.name.clone()
    }
}

/// Loads, binds and starts relay `cfg` (id `id`) on `shards`.
pub(crate) fn start_relay(
    cfg: &RelayConfig,
    id: u32,
    shards: &[ShardHandle],
) -> Result<RunningRelay> {
    let name = relay_name(cfg);
    let tls = crate::tls::material::server_config(&crate::tls::material::ServerTlsOptions {
        cert: cfg.cert.clone(),
        key: cfg.key.clone(),
        client_ca: None,
        alpn: Vec::new(),
        versions: Vec::new(),
        disable_resumption: false,
    })?
    .config;
    let store: Box<dyn TunnelStore> = match cfg.state.as_deref() {
        None | Some(":memory:") => Box::new(MemoryStore::default()),
        Some(path) => Box::new(
            crate::relay::sqlite::SqliteStore::open(std::path::Path::new(path))
                .map_err(|e| config_error(&name, format!("state {path}: {}", e.0)))?,
        ),
    };
    let registry = Arc::new(Registry::new(
        store,
        RegistryLimits {
            max_services: cfg.max_services,
            max_lifetime_minutes: (cfg.max_lifetime.as_secs() / 60) as u32,
            default_lifetime_minutes: (cfg.max_lifetime.as_secs() / 60) as u32,
        },
    ));
    let _ = registry.reset_connections(crate::relay::tunnel::Timestamp::now());
    let api_token = match &cfg.api_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
                context: format!("read the API token file {}", path.display()),
                source: e,
            })?;
            let text = text.trim();
            if text.is_empty() {
                return Err(config_error(
                    &name,
                    format!("the API token file {} is empty", path.display()),
                ));
            }
            Some(Secret::new(text))
        }
        None => None,
    };
    let api_addr: SocketAddr = cfg.api.parse().map_err(|e| Error::Address {
        addr: cfg.api.clone(),
        why: format!("{e}"),
    })?;
    let api = ApiServer::start(api_addr, registry.clone(), api_token)?;
    let api_addr = Some(api.local_addr());
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
        registry,
        limits: Limits {
            ping_after: cfg.ping_after,
            idle_timeout: cfg.idle_timeout,
            ..Limits::default()
        },
        handshake_timeout: cfg.handshake_timeout,
        max_peers: cfg.max_peers,
        peers: AtomicI64::new(0),
        stats: Arc::new(RelayStats::default()),
    });
    for (shard, fd) in shards.iter().zip(fds) {
        shard.send(crate::shard::Command::Tunnel(Cmd::AddRelay {
            fd,
            relay: relay.clone(),
        }));
    }
    tracing::info!(relay = %name, addr = %addr, api = ?api_addr, "relay listening");
    Ok(RunningRelay {
        relay,
        addr,
        api_addr,
        _api: Some(api),
    })
}

//! A relay's control side as one object: the registry (SQLite or memory), the tunnel API,
//! the expiry timer, and the hook through which the data plane learns that a tunnel was
//! closed or its tokens rotated ([`RelayEvent`]). The engine starts one per `[[relay]]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use super::api::ApiServer;
use super::counters::PerTunnel;
pub(crate) use super::events::{EventHook, Events, RelayEvent};
use super::registry::{Limits, Registry};
use super::secret::Secret;
use super::sqlite::{SqliteStore, default_state_path};
use super::store::{MemoryStore, TunnelStore};
use super::tunnel::Timestamp;
use super::writer::WriteBehind;
use crate::config::RelayConfig;
use crate::error::{Error, Result};

/// How often the expiry timer closes tunnels whose lifetime ended (and forgets those closed
/// longer than `keep_closed`).
pub(crate) const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

/// A running relay control side. Dropping it stops the API and the expiry timer.
#[derive(Debug)]
pub(crate) struct RelayService {
    name: String,
    registry: Arc<Registry>,
    events: Arc<Events>,
    api: ApiServer,
    /// Dropped to stop the expiry thread (its `recv_timeout` then returns at once).
    stop_expiry: Option<mpsc::Sender<()>>,
    expiry: Option<std::thread::JoinHandle<()>>,
}

impl RelayService {
    /// Opens the registry at `cfg.state` (the default path when unset; `:memory:`), reads the
    /// API token file, marks the peers of a previous run disconnected, closes tunnels whose
    /// lifetime ended, and starts the API on `cfg.api` and the expiry timer. `origin` (the
    /// configuration file or "command line") names where `cfg` came from in errors.
    pub(crate) fn start(cfg: &RelayConfig, origin: &str) -> Result<RelayService> {
        let name = relay_name(cfg);
        let bad = |key: &str, message: String| {
            Error::config(origin, format!("relay \"{name}\": `{key}`: {message}"))
        };
        let api_addr: SocketAddr = cfg
            .api
            .parse()
            .map_err(|e| bad("api", format!("must be IP:PORT, not \"{}\" ({e})", cfg.api)))?;
        let api_token = match &cfg.api_token_file {
            Some(path) => Some(read_token_file(path)?),
            None => None,
        };
        let store: Box<dyn TunnelStore> = match state_path(cfg, &name) {
            Some(p) if p == Path::new(":memory:") => Box::new(MemoryStore::default()),
            // The shards' calls answer from memory; the file is written behind, in order.
            Some(p) => {
                let file = SqliteStore::open(&p).map_err(|e| bad("state", e.to_string()))?;
                Box::new(WriteBehind::new(Box::new(file)).map_err(|e| bad("state", e.to_string()))?)
            }
            None => {
                return Err(bad(
                    "state",
                    "no default state directory (neither XDG_STATE_HOME nor HOME is an \
                     absolute path); give one, or \":memory:\""
                        .into(),
                ));
            }
        };
        let limits = limits(cfg).map_err(|m| bad("max_lifetime", m))?;
        let registry = Arc::new(Registry::new(store, limits));
        let now = Timestamp::now();
        let registry_err = |e: super::registry::RegistryError| bad("state", e.to_string());
        let reset = registry.reset_connections(now).map_err(registry_err)?;
        if reset > 0 {
            tracing::info!(relay = %name, peers = reset, "peers of the previous run marked disconnected");
        }
        let events = Arc::new(Events::default());
        // Tunnels whose lifetime ended while the relay was down: nobody is connected to
        // them, but say so as the timer would.
        for id in registry.expire(now).map_err(registry_err)? {
            tracing::info!(relay = %name, tunnel = %id, "tunnel expired");
        }
        forget_closed(&name, &registry, now);
        // The console's browser source is served on the agents' port (see console.rs).
        let agent_port = cfg
            .listen
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.port())
            .filter(|&p| p != 0);
        let api = ApiServer::start_with_console(
            api_addr,
            registry.clone(),
            api_token,
            events.clone(),
            agent_port,
        )?;
        let (stop_expiry, stopped) = mpsc::channel::<()>();
        let expiry = {
            let (registry, events, name) = (registry.clone(), events.clone(), name.clone());
            std::thread::Builder::new()
                .name("relay-expiry".into())
                .spawn(move || expiry_loop(&name, &registry, &events, &stopped))
                .map_err(|source| Error::Io {
                    context: "relay expiry thread".into(),
                    source,
                })?
        };
        Ok(RelayService {
            name,
            registry,
            events,
            api,
            stop_expiry: Some(stop_expiry),
            expiry: Some(expiry),
        })
    }

    /// The relay's name (for logs and metrics).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The registry, for the data plane's `admit` and `disconnected`.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Where the API listens (its port when `api` had port 0).
    pub(crate) fn api_addr(&self) -> SocketAddr {
        self.api.local_addr()
    }

    /// The per-tunnel counters the data plane fills (`/metrics`, describe).
    pub(crate) fn counters(&self) -> Arc<PerTunnel> {
        self.events.counters().clone()
    }

    /// Sets where [`RelayEvent`]s go (replacing a hook set before).
    pub(crate) fn set_events(&self, hook: EventHook) {
        self.events.set(hook);
    }
}

impl Drop for RelayService {
    fn drop(&mut self) {
        drop(self.stop_expiry.take());
        if let Some(t) = self.expiry.take() {
            let _ = t.join();
        }
    }
}

fn expiry_loop(name: &str, registry: &Registry, events: &Events, stop: &mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(EXPIRY_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        match registry.expire(Timestamp::now()) {
            Ok(ids) => {
                for tunnel_id in ids {
                    tracing::info!(relay = %name, tunnel = %tunnel_id, "tunnel expired");
                    events.emit(RelayEvent::Closed {
                        tunnel_id,
                        expired: true,
                    });
                }
            }
            Err(e) => tracing::warn!(relay = %name, error = %e, "tunnel expiry failed"),
        }
        forget_closed(name, registry, Timestamp::now());
    }
}

/// Forgets the tunnels closed longer ago than `keep_closed`, and says how many.
fn forget_closed(name: &str, registry: &Registry, now: Timestamp) {
    match registry.forget_closed(now) {
        Ok(0) => {}
        Ok(n) => tracing::info!(relay = %name, tunnels = n, "closed tunnels forgotten"),
        Err(e) => tracing::warn!(relay = %name, error = %e, "forgetting closed tunnels failed"),
    }
}

/// `name`, or `relay-<listen>` when unset.
pub(crate) fn relay_name(cfg: &RelayConfig) -> String {
    cfg.display_name()
}

/// `state`, or `relay-<name>.sqlite` in the user's state directory (`None` when there is
/// none).
pub(crate) fn state_path(cfg: &RelayConfig, name: &str) -> Option<PathBuf> {
    match &cfg.state {
        Some(s) => Some(PathBuf::from(s)),
        None => {
            let dir = default_state_path()?.parent()?.to_path_buf();
            let file: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            // `relay-edge.sqlite` for a relay named `edge`, `relay-0.0.0.0_8443.sqlite` for
            // an unnamed one (named `relay-<listen>`).
            let stem = match file.strip_prefix("relay-") {
                Some(_) => file,
                None => format!("relay-{file}"),
            };
            Some(dir.join(format!("{stem}.sqlite")))
        }
    }
}

/// The registry's limits from the configuration: a tunnel opened without a lifetime gets
/// AWS's 12 h, or `max_lifetime` when that is shorter.
fn limits(cfg: &RelayConfig) -> std::result::Result<Limits, String> {
    let max_seconds = cfg.max_lifetime.as_secs();
    if max_seconds == 0 || max_seconds > u64::from(u32::MAX) {
        return Err(format!(
            "must be at least one second, at most {} seconds, not {:?}",
            u32::MAX,
            cfg.max_lifetime
        ));
    }
    let max_lifetime_seconds = max_seconds as u32;
    Ok(Limits {
        default_lifetime_seconds: Limits::default()
            .default_lifetime_seconds
            .min(max_lifetime_seconds),
        max_lifetime_seconds,
        max_services: cfg.max_services,
        keep_closed_seconds: cfg.keep_closed.as_secs(),
    })
}

/// The token in `path` (surrounding whitespace removed); an unreadable or empty file is an
/// error that names it.
pub(crate) fn read_token_file(path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading the token file {}", path.display()),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::config(
            path.display().to_string(),
            "the token file is empty",
        ));
    }
    Ok(Secret::new(token))
}

/// `check`'s look at the files the tunnel tables name: each relay's certificate, key and API
/// token file, each agent's CA and token file (read, not kept). Errors name the file.
pub(crate) fn check_files(cfg: &crate::config::EngineConfig) -> Result<()> {
    use crate::tls::material::{ServerTlsOptions, load_roots, server_config};
    for r in &cfg.relays {
        // As a TLS server would: the chain, the key, and that they belong together.
        server_config(&ServerTlsOptions {
            cert: r.cert.clone(),
            key: r.key.clone(),
            ..ServerTlsOptions::default()
        })?;
        if let Some(f) = &r.api_token_file {
            read_token_file(f)?;
        }
        crate::relay::identity::Identities::load(
            r.client_ca.as_deref(),
            r.device_ca.as_deref(),
            &r.client_crls,
        )?;
    }
    for (cert, key) in cfg
        .sources
        .iter()
        .map(|s| (&s.identity_cert, &s.identity_key))
        .chain(
            cfg.destinations
                .iter()
                .map(|d| (&d.identity_cert, &d.identity_key)),
        )
    {
        if let (Some(cert), Some(key)) = (cert, key) {
            crate::tls::material::check_certified_key(cert, key)?;
        }
    }
    let agents = cfg
        .sources
        .iter()
        .map(|s| (&s.ca, &s.token_file))
        .chain(cfg.destinations.iter().map(|d| (&d.ca, &d.token_file)));
    for (ca, token_file) in agents {
        if let Some(ca) = ca {
            load_roots(ca)?;
        }
        if let Some(f) = token_file {
            read_token_file(f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;

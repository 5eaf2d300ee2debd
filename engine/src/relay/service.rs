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
use super::identity::Identities;
use super::registry::{Limits, Registry};
use super::secret::Secret;
use super::sqlite::{SqliteStore, default_state_path};
use super::store::{MemoryStore, TunnelStore};
use super::tunnel::Timestamp;
use super::writer::WriteBehind;
use crate::config::{RelayConfig, read_secret_file};
use crate::error::{Bad, Error, Result, placed};

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
    /// What its files hold, loaded once, for its data plane (`start_relay`).
    files: RelayFiles,
    /// Dropped to stop the expiry thread (its `recv_timeout` then returns at once).
    stop_expiry: Option<mpsc::Sender<()>>,
    expiry: Option<std::thread::JoinHandle<()>>,
}

impl RelayService {
    /// Opens the registry at `cfg.state` (the default path when unset; `:memory:`), reads the
    /// API token file, marks the peers of a previous run disconnected, closes tunnels whose
    /// lifetime ended, and starts the API on `cfg.api` and the expiry timer. `origin` (the
    /// configuration file or "command line") names where `cfg` came from in errors.
    pub(crate) fn start(cfg: &RelayConfig, bad: &Bad<'_>) -> Result<RelayService> {
        let name = relay_name(cfg);
        // Its files first: nothing starts (and nothing is logged as started) for a relay
        // whose certificate cannot be read.
        let mut files = relay_files(cfg, bad)?;
        let bad = |key: &'static str, message: String| bad(key, format!("`{key}`: {message}"));
        let api_addr: SocketAddr = cfg
            .api
            .parse()
            .map_err(|e| bad("api", format!("must be IP:PORT, not \"{}\" ({e})", cfg.api)))?;
        let store: Box<dyn TunnelStore> = match state_path(cfg, &name) {
            Some(p) if p == Path::new(":memory:") => {
                tracing::info!(relay = %name, "tunnel registry in memory: it ends with the process");
                Box::new(MemoryStore::default())
            }
            // The shards' calls answer from memory; the file is written behind, in order.
            Some(p) => {
                let file = SqliteStore::open(&p).map_err(|e| bad("state", e.to_string()))?;
                tracing::info!(relay = %name, state = %p.display(), "tunnel registry opened");
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
            files.api_token.take(),
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
            files,
            stop_expiry: Some(stop_expiry),
            expiry: Some(expiry),
        })
    }

    /// The TLS config its agents' port serves (asking for a client certificate when it has
    /// client or device CAs) and those CAs, as its start loaded them.
    pub(crate) fn tls(&self) -> (Arc<rustls::ServerConfig>, Option<Arc<Identities>>) {
        (self.files.tls.clone(), self.files.identities.clone())
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
    read_secret_file(path)
        .map(|token| Secret::new(&token))
        .map_err(|why| Error::config(path.display().to_string(), format!("the token file: {why}")))
}

/// What the files a relay names hold.
#[derive(Debug)]
struct RelayFiles {
    /// For the agents' port: the certificate chain and key, asking for an optional client
    /// certificate when there are client or device CAs.
    tls: Arc<rustls::ServerConfig>,
    /// The client and device CAs, with their revocation lists.
    identities: Option<Arc<Identities>>,
    /// The API's bearer token (taken by the API at start).
    api_token: Option<Secret>,
}

/// Reads the files relay `cfg` names: the client and device CAs and the revocation lists,
/// the certificate chain and key (and that they belong together), the API token file. `bad`
/// names the key at fault.
fn relay_files(cfg: &RelayConfig, bad: &Bad<'_>) -> Result<RelayFiles> {
    use crate::tls::material::{ServerTlsOptions, server_config_with};
    let keyed = |key: &'static str, e: Error| placed(bad, key, e);
    let identities = Identities::load(
        cfg.client_ca.as_deref(),
        cfg.device_ca.as_deref(),
        &cfg.client_crls,
    )
    .map_err(|e| match &e {
        Error::Certificate { path, .. } if Some(path) == cfg.client_ca.as_ref() => {
            keyed("client_ca", e)
        }
        Error::Certificate { path, .. } if Some(path) == cfg.device_ca.as_ref() => {
            keyed("device_ca", e)
        }
        _ => keyed("client_crls", e),
    })?
    .map(Arc::new);
    // With a client or device CA the relay asks for an optional client certificate.
    let tls = server_config_with(
        &ServerTlsOptions {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            ..ServerTlsOptions::default()
        },
        identities.as_ref().map(|i| i.verifier()),
    )
    .map_err(|e| match &e {
        Error::Certificate { path, .. } if *path == cfg.key => keyed("key", e),
        _ => keyed("cert", e),
    })?
    .config;
    let api_token = cfg
        .api_token_file
        .as_deref()
        .map(read_token_file)
        .transpose()
        .map_err(|e| keyed("api_token_file", e))?;
    Ok(RelayFiles {
        tls,
        identities,
        api_token,
    })
}

/// `check`'s look at the relay tables: each relay's files as its start reads them (nothing
/// kept). Errors name the file, the line, the relay and the key.
pub(crate) fn check_files(cfg: &crate::config::EngineConfig) -> Result<()> {
    (0..cfg.relays.len()).try_for_each(|i| check_relay(cfg, i))
}

/// Relay `i` of `cfg`'s files, read as its start reads them; an error names the file, the
/// line, the relay and the key.
pub(crate) fn check_relay(cfg: &crate::config::EngineConfig, i: usize) -> Result<()> {
    let r = &cfg.relays[i];
    let bad = |key, message| cfg.entry_error("relay", i, key, message);
    relay_files(r, &bad)?;
    if let Some(path) = state_path(r, &relay_name(r)) {
        SqliteStore::check(&path).map_err(|e| bad("state", format!("`state`: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;

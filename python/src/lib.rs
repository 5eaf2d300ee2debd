//! `splice_engine._native`: the native half of the `splice_engine` Python package.
//!
//! A thin translator over the engine's embedding API ([`splice_engine::Engine`]): it turns
//! Python values into an [`EngineConfig`] or a [`ForwarderConfig`] (through the same serde
//! structs a TOML file fills), engine errors into the package's exceptions ([`errors`]), and
//! the engine's `tracing` events into records of Python's `logging` ([`logs`]). It holds no
//! forwarding logic and no unsafe code; the pure-Python facade (`python/splice_engine/`) gives
//! the API its Python shape (context manager, `socket.socket`, asyncio).
//!
//! Every call that can block or take one of the engine's locks runs with the GIL released
//! (`Python::detach`), so other Python threads run meanwhile and an engine thread that logs
//! (which needs the GIL) never waits on a caller that waits on the engine.
#![forbid(unsafe_code)]

mod errors;
mod logs;
mod values;

use std::collections::HashMap;
use std::os::fd::IntoRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use splice_engine::{Engine, EngineConfig, ForwarderConfig, StatsSnapshot};

use crate::errors::{ConfigError, engine_error};

/// The TLS options of `Engine.connect`, which name the connector that carries them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ConnectorKey {
    connect: String,
    ca: Option<PathBuf>,
    ca_pem: Option<String>,
    sni: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    alpn: Vec<String>,
}

/// A running engine (the facade's `splice_engine.Engine` wraps it).
#[pyclass(module = "splice_engine._native", name = "Engine", frozen)]
struct PyEngine {
    /// `None` once closed. Calls take it shared; `close` takes it out.
    engine: RwLock<Option<Engine>>,
    /// The connectors `connect` added, by the options they carry.
    connectors: Mutex<HashMap<ConnectorKey, String>>,
    /// The number in the next connector's name (never reused, so a name removed by
    /// `remove_forwarder` cannot come back for other options).
    next_connector: AtomicU64,
}

impl PyEngine {
    /// Runs `f` on the engine with the GIL released; an error once the engine is closed.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Engine) -> splice_engine::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let guard = self.engine.read().expect("engine lock");
            match guard.as_ref() {
                Some(e) => f(e).map_err(engine_error),
                None => Err(errors::closed()),
            }
        })
    }
}

#[pymethods]
impl PyEngine {
    /// Starts an engine from a TOML document (`toml`), a TOML file (`file`, relative paths in
    /// it relative to the file) or a table of settings (`settings`, the file's keys).
    #[new]
    #[pyo3(signature = (toml = None, file = None, settings = None))]
    fn new(
        py: Python<'_>,
        toml: Option<&str>,
        file: Option<PathBuf>,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        logs::install(py)?;
        let cfg = config(py, toml, file, settings)?;
        let engine = py.detach(|| Engine::start(cfg)).map_err(engine_error)?;
        Ok(Self {
            engine: RwLock::new(Some(engine)),
            connectors: Mutex::new(HashMap::new()),
            next_connector: AtomicU64::new(1),
        })
    }

    /// Applies a whole new configuration (as `new` reads it): forwarders added, changed and
    /// removed, certificates re-read; on any error nothing changes. The connectors `connect`
    /// added are not in it, so they go; the next `connect` adds them again.
    #[pyo3(signature = (toml = None, file = None, settings = None))]
    fn reload(
        &self,
        py: Python<'_>,
        toml: Option<&str>,
        file: Option<PathBuf>,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let cfg = config(py, toml, file, settings)?;
        self.with(py, |e| {
            let mut connectors = self.connectors.lock().expect("connectors lock");
            e.reload(cfg)?;
            connectors.clear();
            Ok(())
        })
    }

    /// Starts one more forwarder from its settings (the keys of a `[[forwarder]]` table).
    fn add_forwarder(&self, py: Python<'_>, settings: &Bound<'_, PyDict>) -> PyResult<()> {
        let f = values::forwarder_from_settings(settings)?;
        self.with(py, |e| e.add_forwarder(f))
    }

    /// Replaces the forwarder of the same name.
    fn replace_forwarder(&self, py: Python<'_>, settings: &Bound<'_, PyDict>) -> PyResult<()> {
        let f = values::forwarder_from_settings(settings)?;
        self.with(py, |e| e.replace_forwarder(f))
    }

    /// Stops forwarder `name` accepting; its open connections carry on.
    fn remove_forwarder(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.with(py, |e| e.remove_forwarder(name))?;
        self.connectors
            .lock()
            .expect("connectors lock")
            .retain(|_, n| n != name);
        Ok(())
    }

    /// `(host, port)` forwarder `name` listens on, `None` for a connector or an unknown name.
    fn local_addr(&self, py: Python<'_>, name: &str) -> PyResult<Option<(String, u16)>> {
        let addr = self.with(py, |e| Ok(e.local_addr(name)))?;
        Ok(addr.map(|a| (a.ip().to_string(), a.port())))
    }

    /// A new connection through client-mode forwarder `name`: the plain end's file descriptor,
    /// owned by the caller.
    fn open(&self, py: Python<'_>, name: &str) -> PyResult<i32> {
        let s = self.with(py, |e| e.connect(name))?;
        Ok(s.into_raw_fd())
    }

    /// A new connection to `host:port` whose bytes leave as verified TLS: the plain end's file
    /// descriptor, owned by the caller. The first call with a set of options adds a connector
    /// (a client-mode forwarder without a listener) for them; later calls reuse it.
    #[pyo3(signature = (host, port, ca = None, sni = None, cert = None, key = None, alpn = Vec::new(), ca_pem = None))]
    #[expect(clippy::too_many_arguments, reason = "Python keyword arguments")]
    fn connect(
        &self,
        py: Python<'_>,
        host: &str,
        port: u16,
        ca: Option<PathBuf>,
        sni: Option<String>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        alpn: Vec<String>,
        ca_pem: Option<String>,
    ) -> PyResult<i32> {
        if cert.is_some() != key.is_some() {
            return Err(ConfigError::new_err(
                "connect(): `cert` and `key` go together (a client certificate and its key)",
            ));
        }
        let connect = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let k = ConnectorKey {
            connect,
            ca,
            ca_pem,
            sni,
            cert,
            key,
            alpn,
        };
        let s = self.with(py, |e| {
            let mut connectors = self.connectors.lock().expect("connectors lock");
            let name = match connectors.get(&k) {
                Some(n) => n.clone(),
                None => {
                    let n = self.next_connector.fetch_add(1, Relaxed);
                    let name = format!("connect-{n} {}", k.connect);
                    e.add_forwarder(connector(&k, &name))?;
                    connectors.insert(k.clone(), name.clone());
                    name
                }
            };
            drop(connectors);
            e.connect(&name)
        })?;
        Ok(s.into_raw_fd())
    }

    /// `(host, port)` relay `name`'s agents connect to, `None` when no such relay runs.
    fn relay_addr(&self, py: Python<'_>, name: &str) -> PyResult<Option<(String, u16)>> {
        let a = self.with(py, |e| Ok(e.relay_addr(name)))?;
        Ok(a.map(|a| (a.ip().to_string(), a.port())))
    }

    /// `(host, port)` of relay `name`'s tunnel API, `None` when no such relay runs.
    fn relay_api_addr(&self, py: Python<'_>, name: &str) -> PyResult<Option<(String, u16)>> {
        let a = self.with(py, |e| Ok(e.relay_api_addr(name)))?;
        Ok(a.map(|a| (a.ip().to_string(), a.port())))
    }

    /// `(host, port)` source agent `name` listens on for `service`, `None` if none.
    fn source_addr(
        &self,
        py: Python<'_>,
        name: &str,
        service: &str,
    ) -> PyResult<Option<(String, u16)>> {
        let a = self.with(py, |e| Ok(e.source_addr(name, service)))?;
        Ok(a.map(|a| (a.ip().to_string(), a.port())))
    }

    /// Agent `name`'s state and why it finished: `("connecting" | "reconnecting" |
    /// "connected" | "finished" | "stopped", reason)`; `None` when there is no such agent.
    fn agent_state(&self, py: Python<'_>, name: &str) -> PyResult<Option<(String, String)>> {
        let s = self.with(py, |e| Ok(e.agent_state(name)))?;
        Ok(s.map(|s| agent_state(&s)))
    }

    /// Waits up to `timeout` seconds for an agent to give up: `(name, state, reason)`, or
    /// `None` when none did.
    fn wait_agent_finished(
        &self,
        py: Python<'_>,
        timeout: f64,
    ) -> PyResult<Option<(String, String, String)>> {
        let d = Duration::try_from_secs_f64(timeout.max(0.0))
            .map_err(|e| ConfigError::new_err(format!("timeout {timeout}: {e}")))?;
        let got = self.with(py, |e| Ok(e.wait_agent_finished(d)))?;
        Ok(got.map(|(n, s)| {
            let (state, reason) = agent_state(&s);
            (n, state, reason)
        }))
    }

    /// The counters of every forwarder, one dict each.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let stats = self.with(py, |e| Ok(e.stats()))?;
        let list = PyList::empty(py);
        for s in &stats {
            list.append(stats_dict(py, s)?)?;
        }
        Ok(list)
    }

    /// The driver the shards run (`"uring"` or `"epoll"`).
    fn driver(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |e| Ok(e.driver().to_string()))
    }

    /// Whether TLS sessions are handed to the kernel.
    fn ktls_enabled(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |e| Ok(e.ktls_enabled()))
    }

    /// Whether `close` ran.
    #[getter]
    fn closed(&self) -> bool {
        self.engine.read().expect("engine lock").is_none()
    }

    /// Stops accepting, lets open connections finish for at most `drain` seconds, then closes
    /// the rest and joins the engine's threads. A second call does nothing.
    fn close(&self, py: Python<'_>, drain: f64) -> PyResult<()> {
        let drain = Duration::try_from_secs_f64(drain).map_err(|_| {
            ConfigError::new_err(format!(
                "close(): drain {drain} is not a duration in seconds"
            ))
        })?;
        py.detach(|| {
            let engine = self.engine.write().expect("engine lock").take();
            if let Some(e) = engine {
                e.shutdown(drain);
            }
        });
        Ok(())
    }
}

impl Drop for PyEngine {
    fn drop(&mut self) {
        // Stopping joins the shards, which may log (and so wait for the GIL) on the way out.
        let engine = self.engine.get_mut().expect("engine lock").take();
        if let Some(e) = engine {
            Python::attach(|py| py.detach(|| drop(e)));
        }
    }
}

/// A configuration from one of a TOML document, a file or a table of settings (none: the
/// defaults, no forwarder).
fn config(
    py: Python<'_>,
    toml: Option<&str>,
    file: Option<PathBuf>,
    settings: Option<&Bound<'_, PyDict>>,
) -> PyResult<EngineConfig> {
    match (toml, file, settings) {
        (Some(text), None, None) => values::config_from_toml(text),
        (None, Some(path), None) => py
            .detach(|| EngineConfig::from_file(&path))
            .map_err(engine_error),
        (None, None, Some(s)) => values::config_from_settings(s),
        (None, None, None) => Ok(EngineConfig::new()),
        _ => Err(ConfigError::new_err(
            "give one of a TOML string, a file or keyword settings, not several",
        )),
    }
}

/// The connector (a client-mode forwarder with no listener) for `k`.
fn connector(k: &ConnectorKey, name: &str) -> ForwarderConfig {
    let mut f = ForwarderConfig::client("", k.connect.clone()).name(name);
    f.ca = k.ca.clone();
    f.ca_pem = k.ca_pem.clone();
    f.sni = k.sni.clone();
    f.cert = k.cert.clone();
    f.key = k.key.clone();
    f.alpn = k.alpn.clone();
    f
}

/// One forwarder's counters as a dict (the keys are `StatsSnapshot`'s fields).
fn stats_dict<'py>(py: Python<'py>, s: &StatsSnapshot) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &s.name)?;
    d.set_item("mode", &s.mode)?;
    for (k, v) in [
        ("accepted", s.accepted),
        ("active", s.active),
        ("refused", s.refused),
        ("handed_off", s.handed_off),
        ("ktls", s.ktls),
        ("bytes_down_to_up", s.bytes_down_to_up),
        ("bytes_up_to_down", s.bytes_up_to_down),
        ("errors_downstream", s.errors_downstream),
        ("errors_upstream", s.errors_upstream),
        ("errors_tls", s.errors_tls),
        ("errors_internal", s.errors_internal),
        ("unclean_closes", s.unclean_closes),
    ] {
        d.set_item(k, v)?;
    }
    let h = PyDict::new(py);
    h.set_item("buckets", splice_engine::HANDSHAKE_BUCKETS.to_vec())?;
    h.set_item("cumulative", s.handshakes.cumulative.to_vec())?;
    h.set_item("count", s.handshakes.count())?;
    h.set_item("sum_seconds", s.handshakes.sum_nanos as f64 / 1e9)?;
    d.set_item("handshakes", h)?;
    d.set_item("cert_not_after", s.cert_not_after)?;
    Ok(d)
}

/// An agent's state as words, and why it finished.
fn agent_state(s: &splice_engine::AgentState) -> (String, String) {
    use splice_engine::AgentState as S;
    match s {
        S::Connecting => ("connecting".into(), String::new()),
        S::Reconnecting => ("reconnecting".into(), String::new()),
        S::Connected => ("connected".into(), String::new()),
        S::Finished(why) => ("finished".into(), why.clone()),
        _ => ("stopped".into(), String::new()),
    }
}

/// A tunnel API client for `url` with an optional bearer token.
fn tunnel_api(url: &str, token: Option<String>) -> PyResult<splice_engine::TunnelApi> {
    let api = splice_engine::TunnelApi::new(url).map_err(engine_error)?;
    Ok(match token {
        Some(t) => api.bearer_token(t),
        None => api,
    })
}

/// Runs one tunnel API call with the GIL released; the answer as JSON text.
fn api_call<T: ToString + Send>(
    py: Python<'_>,
    url: &str,
    token: Option<String>,
    f: impl FnOnce(&splice_engine::TunnelApi) -> splice_engine::Result<T> + Send,
) -> PyResult<String> {
    let api = tunnel_api(url, token)?;
    py.detach(|| f(&api))
        .map(|v| v.to_string())
        .map_err(engine_error)
}

/// `POST /tunnels`: the answer (id and both access tokens) as JSON text. The lifetime in
/// minutes or, to the second, `lifetime_seconds` (not both).
#[pyfunction]
#[pyo3(signature = (url, token, services, lifetime_minutes = None, thing = None, description = None, lifetime_seconds = None))]
#[expect(clippy::too_many_arguments, reason = "the keywords of a Python call")]
fn api_open(
    py: Python<'_>,
    url: &str,
    token: Option<String>,
    services: Vec<String>,
    lifetime_minutes: Option<u64>,
    thing: Option<String>,
    description: Option<String>,
    lifetime_seconds: Option<u64>,
) -> PyResult<String> {
    let lifetime = match (lifetime_minutes, lifetime_seconds) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new_err(
                "api_open(): give the lifetime in minutes or in seconds, not both",
            ));
        }
        (Some(m), None) => Some(Duration::from_secs(m.saturating_mul(60))),
        (None, s) => s.map(Duration::from_secs),
    };
    api_call(py, url, token, |api| {
        let names: Vec<&str> = services.iter().map(String::as_str).collect();
        api.open_json_for(&names, lifetime, thing.as_deref(), description.as_deref())
    })
}

/// `GET /tunnels`: the answer as JSON text.
#[pyfunction]
#[pyo3(signature = (url, token, thing = None))]
fn api_list(
    py: Python<'_>,
    url: &str,
    token: Option<String>,
    thing: Option<String>,
) -> PyResult<String> {
    api_call(py, url, token, |api| api.list(thing.as_deref()))
}

/// `GET /tunnels/{id}`: the answer as JSON text.
#[pyfunction]
fn api_describe(py: Python<'_>, url: &str, token: Option<String>, id: String) -> PyResult<String> {
    api_call(py, url, token, |api| api.describe(&id))
}

/// `POST /tunnels/{id}/rotate` (`side`: `source`, `destination` or `both`): the answer (the
/// new tokens) as JSON text.
#[pyfunction]
#[pyo3(signature = (url, token, id, side, client_token = None))]
fn api_rotate(
    py: Python<'_>,
    url: &str,
    token: Option<String>,
    id: String,
    side: &str,
    client_token: Option<String>,
) -> PyResult<String> {
    let side = match side {
        "source" => splice_engine::RotateSide::Source,
        "destination" => splice_engine::RotateSide::Destination,
        "both" => splice_engine::RotateSide::Both,
        s => {
            return Err(ConfigError::new_err(format!(
                "side {s:?}: expected \"source\", \"destination\" or \"both\""
            )));
        }
    };
    api_call(py, url, token, |api| {
        api.rotate_json(&id, side, client_token.as_deref())
    })
}

/// `POST /tunnels/{id}/close`: the answer as JSON text.
#[pyfunction]
#[pyo3(signature = (url, token, id, delete = false))]
fn api_close(
    py: Python<'_>,
    url: &str,
    token: Option<String>,
    id: String,
    delete: bool,
) -> PyResult<String> {
    api_call(py, url, token, |api| api.close(&id, delete))
}

/// The module: the engine class, the exceptions, the log bridge's level.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(logs::set_level, m)?)?;
    for f in [
        wrap_pyfunction!(api_open, m)?,
        wrap_pyfunction!(api_list, m)?,
        wrap_pyfunction!(api_describe, m)?,
        wrap_pyfunction!(api_rotate, m)?,
        wrap_pyfunction!(api_close, m)?,
    ] {
        m.add_function(f)?;
    }
    m.add("EXAMPLE_CONFIG", EngineConfig::EXAMPLE)?;
    Ok(())
}

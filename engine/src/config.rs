//! Configuration: one serde struct per level, read from TOML (`run --config`) or built from
//! command-line flags (`client`, `server`). Paths in a file are relative to that file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Which data-plane driver the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    /// io_uring, or fail at start.
    Uring,
    /// epoll.
    Epoll,
}

impl std::str::FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "epoll" => Ok(Self::Epoll),
            other => Err(format!(
                "unknown driver {other:?} (expected auto, uring or epoll)"
            )),
        }
    }
}

/// Whether TLS legs are handed to the kernel after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KtlsMode {
    /// Use kTLS when the kernel has it (and the negotiated cipher), else user-space TLS.
    #[default]
    Auto,
    /// Require kTLS: fail at start when the kernel lacks it.
    On,
    /// Never use kTLS.
    Off,
}

impl std::str::FromStr for KtlsMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown kTLS mode {other:?} (expected auto, on or off)"
            )),
        }
    }
}

/// What a forwarder does with the connections it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Accept plain TCP, forward over TLS.
    Client,
    /// Accept TLS, forward plain TCP.
    Server,
}

impl Mode {
    /// `"client"` or `"server"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Client => "client",
            Mode::Server => "server",
        }
    }
}

/// One listener and where its connections go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderConfig {
    /// A name for logs and metrics (default: the mode and listen address).
    #[serde(default)]
    pub name: String,
    /// Client or server.
    pub mode: Mode,
    /// Address to accept on (`IP:PORT`; port 0 picks one).
    pub listen: String,
    /// Where to forward (`HOST:PORT`).
    pub connect: String,
    /// Client mode: CA file to verify the upstream (system roots when absent).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client mode: the name to send (SNI) and verify; default the connect host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Certificate chain to present (server mode: required; client mode: the client certificate).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Private key for `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Server mode: CA file; when set, client certificates are required and verified against it.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// ALPN protocols to offer (client) or accept (server).
    #[serde(default)]
    pub alpn: Vec<String>,
    /// TLS versions allowed: `"1.2"`, `"1.3"` (default both).
    #[serde(default)]
    pub tls_versions: Vec<String>,
    /// Most connections open at once on this listener; more are refused (reset).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time allowed to connect to the upstream.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for the TLS handshake.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// TLS session resumption (tickets / session IDs); `false` makes every handshake full.
    #[serde(default = "default_true")]
    pub resumption: bool,
    /// Read a PROXY protocol header (v1 or v2) from a load balancer before anything else on
    /// each accepted connection, and take the client's address from it.
    #[serde(default)]
    pub accept_proxy: bool,
    /// Server mode: send a PROXY protocol header of this version to the backend first.
    #[serde(default)]
    pub send_proxy: Option<ProxyVersion>,
}

/// A PROXY protocol version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The text form, `PROXY TCP4 ...`.
    V1,
    /// The binary form.
    V2,
}

impl std::str::FromStr for ProxyVersion {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "v1" | "1" => Ok(Self::V1),
            "v2" | "2" => Ok(Self::V2),
            other => Err(format!(
                "unknown PROXY protocol version {other:?} (expected v1 or v2)"
            )),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_connections() -> usize {
    10_000
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ForwarderConfig {
    /// A forwarder with defaults for everything optional.
    pub fn new(mode: Mode, listen: impl Into<String>, connect: impl Into<String>) -> Self {
        Self {
            name: String::new(),
            mode,
            listen: listen.into(),
            connect: connect.into(),
            ca: None,
            sni: None,
            cert: None,
            key: None,
            client_ca: None,
            alpn: Vec::new(),
            tls_versions: Vec::new(),
            max_connections: default_max_connections(),
            connect_timeout: default_connect_timeout(),
            handshake_timeout: default_handshake_timeout(),
            resumption: true,
            accept_proxy: false,
            send_proxy: None,
        }
    }

    /// The name used in logs and metrics.
    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            format!("{}-{}", self.mode.as_str(), self.listen)
        } else {
            self.name.clone()
        }
    }

    /// Parses the listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr> {
        self.listen.parse().map_err(|e| Error::Address {
            addr: self.listen.clone(),
            why: format!("listen address must be IP:PORT ({e})"),
        })
    }

    /// Checks what can be checked without touching files; `origin` names the file or flags.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let what = format!("forwarder {:?}", self.display_name());
        self.listen_addr()?;
        split_host_port(&self.connect)?;
        match self.mode {
            Mode::Server => {
                if self.cert.is_none() || self.key.is_none() {
                    return Err(Error::config(
                        origin,
                        format!("{what}: server mode needs `cert` and `key`"),
                    ));
                }
                for (key, set) in [("ca", self.ca.is_some()), ("sni", self.sni.is_some())] {
                    if set {
                        return Err(Error::config(
                            origin,
                            format!("{what}: `{key}` applies to client mode only"),
                        ));
                    }
                }
            }
            Mode::Client => {
                if self.cert.is_some() != self.key.is_some() {
                    return Err(Error::config(
                        origin,
                        format!("{what}: `cert` and `key` must be given together"),
                    ));
                }
                if self.client_ca.is_some() {
                    return Err(Error::config(
                        origin,
                        format!("{what}: `client_ca` applies to server mode only"),
                    ));
                }
                if self.send_proxy.is_some() {
                    return Err(Error::config(
                        origin,
                        format!(
                            "{what}: `send_proxy` applies to server mode only (the upstream \
                             of client mode speaks TLS)"
                        ),
                    ));
                }
            }
        }
        for v in &self.tls_versions {
            if v != "1.2" && v != "1.3" {
                return Err(Error::config(
                    origin,
                    format!("{what}: `tls_versions` has {v:?}; expected \"1.2\" or \"1.3\""),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(Error::config(
                origin,
                format!("{what}: `max_connections` must be at least 1"),
            ));
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.ca,
            &mut self.cert,
            &mut self.key,
            &mut self.client_ca,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// Splits `HOST:PORT` (or `[V6]:PORT`) into host and port.
pub fn split_host_port(s: &str) -> Result<(String, u16)> {
    let bad = |why: &str| Error::Address {
        addr: s.to_string(),
        why: why.to_string(),
    };
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number 0-65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    Ok((host.to_string(), port))
}

/// The whole process: shards, logging and the forwarders.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Shard threads (default: the number of cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Which driver.
    #[serde(default)]
    pub driver: DriverKind,
    /// kTLS use.
    #[serde(default)]
    pub ktls: KtlsMode,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or an env-filter directive).
    #[serde(default)]
    pub log_level: Option<String>,
    /// Where to serve Prometheus metrics (`IP:PORT`), if anywhere.
    #[serde(default)]
    pub metrics: Option<String>,
    /// How long SIGTERM waits for open connections to finish.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The longest a shard that ran out of work polls for more before it sleeps (default
    /// 50 µs; zero: never). The window adapts between zero and this: it grows while work keeps
    /// arriving soon after the shard went idle and shrinks when it does not, or when the shard
    /// keeps losing the CPU while it polls (see `shard/busy.rs`). A shard still polling when
    /// the next packet arrives skips a wake-up, which is most of a hop's latency on a virtual
    /// machine; idle connections, sparse traffic and bulk transfers cost no polling. Set it to
    /// zero where every CPU cycle belongs to someone else.
    #[serde(default = "default_busy_poll", with = "humantime_serde")]
    pub busy_poll: Duration,
    /// The forwarders.
    #[serde(default, rename = "forwarder")]
    pub forwarders: Vec<ForwarderConfig>,
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Long enough to catch a backend's reply on the same machine or a LAN (it bought as much as
/// 100 µs in the bench, see docs/design.md), short enough to waste little when a poll finds
/// nothing.
fn default_busy_poll() -> Duration {
    Duration::from_micros(50)
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            threads: None,
            driver: DriverKind::Auto,
            ktls: KtlsMode::Auto,
            log_level: None,
            metrics: None,
            drain_timeout: default_drain_timeout(),
            busy_poll: default_busy_poll(),
            forwarders: Vec::new(),
        }
    }
}

impl EngineConfig {
    /// Reads and checks a TOML file. Errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(&origin, format!("cannot read: {e}")))?;
        let mut cfg: EngineConfig = toml::from_str(&text).map_err(|e| {
            // toml's message names the key and the line; keep it on one line.
            let msg = e.message().to_string();
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(l) => Error::config(&origin, format!("line {l}: {msg}")),
                None => Error::config(&origin, msg),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for f in &mut cfg.forwarders {
            f.resolve_paths(base);
        }
        cfg.validate(&origin)?;
        Ok(cfg)
    }

    /// Checks the whole configuration.
    pub fn validate(&self, origin: &str) -> Result<()> {
        if self.threads == Some(0) {
            return Err(Error::config(origin, "`threads` must be at least 1"));
        }
        if let Some(m) = &self.metrics {
            m.parse::<SocketAddr>().map_err(|e| Error::Address {
                addr: m.clone(),
                why: format!("`metrics` must be IP:PORT ({e})"),
            })?;
        }
        let mut names = std::collections::HashSet::new();
        for f in &self.forwarders {
            f.validate(origin)?;
            if !names.insert(f.display_name()) {
                return Err(Error::config(
                    origin,
                    format!("two forwarders are named {:?}", f.display_name()),
                ));
            }
        }
        Ok(())
    }

    /// The number of shards to run.
    pub fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EngineConfig> {
        let dir = std::env::temp_dir().join(format!("splice-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("c{}.toml", text.len()));
        std::fs::write(&path, text).unwrap();
        EngineConfig::from_file(&path)
    }

    #[test]
    fn proxy_protocol_keys() {
        let cfg = parse(
            r#"
[[forwarder]]
mode = "server"
listen = "127.0.0.1:3443"
connect = "127.0.0.1:8080"
cert = "c.pem"
key = "k.pem"
accept_proxy = true
send_proxy = "v2"
"#,
        )
        .unwrap();
        assert!(cfg.forwarders[0].accept_proxy);
        assert_eq!(cfg.forwarders[0].send_proxy, Some(ProxyVersion::V2));
        cfg.validate("f").unwrap();
        let bad = parse(
            r#"
[[forwarder]]
mode = "server"
listen = "127.0.0.1:3444"
connect = "127.0.0.1:8080"
cert = "c.pem"
key = "k.pem"
send_proxy = "v3"
"#,
        );
        let e = bad.unwrap_err().to_string();
        assert!(e.contains("v3") && e.contains("line"), "{e}");
        let mut client = ForwarderConfig::new(Mode::Client, "127.0.0.1:1", "h:2");
        client.send_proxy = Some(ProxyVersion::V1);
        let e = client.validate("f").unwrap_err().to_string();
        assert!(e.contains("server mode only"), "{e}");
    }

    #[test]
    fn parses_full_file_and_resolves_paths() {
        let cfg = parse(
            r#"
threads = 2
driver = "epoll"
drain_timeout = "3s"
busy_poll = "20us"
[[forwarder]]
name = "a"
mode = "client"
listen = "127.0.0.1:3000"
connect = "example.com:443"
ca = "ca.pem"
alpn = ["h2"]
connect_timeout = "250ms"
[[forwarder]]
mode = "server"
listen = "127.0.0.1:3443"
connect = "127.0.0.1:8080"
cert = "/abs/c.pem"
key = "k.pem"
"#,
        )
        .unwrap();
        assert_eq!(cfg.threads, Some(2));
        assert_eq!(cfg.driver, DriverKind::Epoll);
        assert_eq!(cfg.drain_timeout, Duration::from_secs(3));
        assert_eq!(cfg.busy_poll, Duration::from_micros(20));
        assert_eq!(cfg.forwarders.len(), 2);
        assert!(cfg.forwarders[0].ca.as_ref().unwrap().is_absolute());
        assert_eq!(
            cfg.forwarders[0].connect_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(
            cfg.forwarders[1].cert.as_deref(),
            Some(Path::new("/abs/c.pem"))
        );
    }

    #[test]
    fn busy_polling_is_on_up_to_50us_unless_set() {
        let base = "[[forwarder]]\nmode='client'\nlisten='127.0.0.1:1'\nconnect='a:1'\n";
        assert_eq!(parse(base).unwrap().busy_poll, Duration::from_micros(50));
        assert_eq!(EngineConfig::default().busy_poll, Duration::from_micros(50));
        let longer = parse(&format!("busy_poll = \"100us\"\n{base}")).unwrap();
        assert_eq!(longer.busy_poll, Duration::from_micros(100));
        let off = parse(&format!("busy_poll = \"0s\"\n{base}")).unwrap();
        assert!(off.busy_poll.is_zero());
    }

    #[test]
    fn unknown_key_is_named_with_file() {
        let err = parse(
            "[[forwarder]]\nmode='client'\nlisten='127.0.0.1:1'\nconnect='a:1'\nbogus_key=1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bogus_key"), "{err}");
        assert!(err.contains(".toml"), "{err}");
    }

    #[test]
    fn bad_addresses_are_named() {
        let err = parse("[[forwarder]]\nmode='client'\nlisten='nonsense'\nconnect='a:1'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonsense"), "{err}");
        assert!(split_host_port("host:99999").is_err());
        assert_eq!(split_host_port("[::1]:443").unwrap(), ("::1".into(), 443));
    }

    #[test]
    fn server_needs_cert() {
        let err = parse("[[forwarder]]\nmode='server'\nlisten='127.0.0.1:1'\nconnect='a:1'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cert"), "{err}");
    }
}

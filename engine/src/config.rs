//! Configuration: one serde struct per level, read from TOML (`run --config`) or built from
//! command-line flags (`client`, `server`). Paths in a file are relative to that file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
pub use crate::kinds::{
    Balance, DriverKind, EbpfMode, KtlsMode, LogFormat, Mode, ProxyVersion, UnresolvedUpstream,
};

/// A commented sample configuration file with every key (`splice-engine config example`).
pub(crate) const EXAMPLE: &str = include_str!("../splice.example.toml");

/// One listener and where its connections go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderConfig {
    /// A name for logs and metrics (default: the mode and listen address).
    #[serde(default)]
    pub name: String,
    /// Client or server.
    pub mode: Mode,
    /// Address to accept on (`IP:PORT`; port 0 picks one). Empty (or absent from the file):
    /// no listener, a *connector* whose connections come only from [`crate::Engine::connect`]
    /// (client mode only; it needs a `name`).
    #[serde(default)]
    pub listen: String,
    /// Where to forward (`HOST:PORT`).
    pub connect: String,
    /// Client mode: CA file to verify the upstream (system roots when absent).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client mode: CA certificates as PEM text, instead of a `ca` file (for programs, such as
    /// the C library's `tunnel_connect`; not a key of the file).
    #[serde(skip)]
    pub ca_pem: Option<String>,
    /// Client mode: keys to trust instead of a CA, `sha256:<base64 or hex>` of the upstream's
    /// subjectPublicKeyInfo (or of its whole certificate). Names and dates are not checked.
    #[serde(default)]
    pub pin: Vec<String>,
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
    /// An access line per connection at `info` (default: the engine's `access_log`).
    #[serde(default)]
    pub access_log: Option<bool>,
    /// Reset a connection that moved no byte in either direction for this long (off when
    /// unset).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Read a PROXY protocol header (v1 or v2) from a load balancer before anything else on
    /// each accepted connection, and take the client's address from it.
    #[serde(default)]
    pub accept_proxy: bool,
    /// Server mode: send a PROXY protocol header of this version to the backend first.
    #[serde(default)]
    pub send_proxy: Option<ProxyVersion>,
    /// When `connect`'s host name does not resolve at start or at a reload: `fail` (default)
    /// or `reset` (start, and reset connections until it resolves).
    #[serde(default)]
    pub unresolved_upstream: UnresolvedUpstream,
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
            ca_pem: None,
            pin: Vec::new(),
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
            access_log: None,
            idle_timeout: None,
            accept_proxy: false,
            send_proxy: None,
            unresolved_upstream: UnresolvedUpstream::Fail,
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

    /// Whether it has a listener (an empty `listen` makes a connector, see [`Self::listen`]).
    pub fn listens(&self) -> bool {
        !self.listen.is_empty()
    }

    /// Parses the listen address.
    pub(crate) fn listen_addr(&self) -> Result<SocketAddr> {
        self.listen.parse().map_err(|e| Error::Address {
            addr: self.listen.clone(),
            why: format!("listen address must be IP:PORT ({e})"),
        })
    }

    /// Checks what can be checked without touching files; `origin` names the file or flags.
    pub fn validate(&self, origin: &str) -> Result<()> {
        self.problem().map_or(Ok(()), |(key, why)| {
            Err(Problem::new(None, key, why).into_error(origin, None))
        })
    }

    /// The first thing wrong with this forwarder: the key at fault and what is wrong, in a
    /// sentence that names the forwarder.
    fn problem(&self) -> Option<(&'static str, String)> {
        let what = format!("forwarder \"{}\"", self.display_name());
        if !self.listens() {
            if self.mode != Mode::Client {
                return Some((
                    "listen",
                    format!(
                        "{what}: `listen` is missing; only a client-mode forwarder may go \
                         without a listener (a connector for Engine::connect)"
                    ),
                ));
            }
            if self.name.is_empty() {
                return Some((
                    "name",
                    "a forwarder without `listen` (a connector for Engine::connect) needs a \
                     `name`, which Engine::connect takes"
                        .into(),
                ));
            }
            if self.accept_proxy {
                return Some((
                    "accept_proxy",
                    format!(
                        "{what}: `accept_proxy` needs a listener (this forwarder has no \
                         `listen`)"
                    ),
                ));
            }
        } else if let Err(e) = self.listen.parse::<SocketAddr>() {
            return Some((
                "listen",
                format!(
                    "{what}: `listen` must be IP:PORT, not \"{}\" ({e})",
                    self.listen
                ),
            ));
        }
        if let Err(e) = split_host_port(&self.connect) {
            let why = match e {
                Error::Address { why, .. } => why,
                other => other.to_string(),
            };
            return Some((
                "connect",
                format!(
                    "{what}: `connect` must be HOST:PORT, not \"{}\" ({why})",
                    self.connect
                ),
            ));
        }
        match self.mode {
            Mode::Server => {
                for (key, set) in [("cert", self.cert.is_some()), ("key", self.key.is_some())] {
                    if !set {
                        return Some((
                            "mode",
                            format!(
                                "{what}: server mode needs `cert` and `key` (`{key}` is missing)"
                            ),
                        ));
                    }
                }
                for (key, set) in [
                    ("ca", self.ca.is_some()),
                    ("ca_pem", self.ca_pem.is_some()),
                    ("sni", self.sni.is_some()),
                    ("pin", !self.pin.is_empty()),
                ] {
                    if set {
                        return Some((key, format!("{what}: `{key}` applies to client mode only")));
                    }
                }
            }
            Mode::Client => {
                if self.ca.is_some() && self.ca_pem.is_some() {
                    return Some((
                        "ca",
                        format!("{what}: `ca` and `ca_pem` exclude each other"),
                    ));
                }
                if self.cert.is_some() != self.key.is_some() {
                    let key = if self.cert.is_some() { "cert" } else { "key" };
                    return Some((
                        key,
                        format!("{what}: `cert` and `key` must be given together"),
                    ));
                }
                if self.client_ca.is_some() {
                    return Some((
                        "client_ca",
                        format!("{what}: `client_ca` applies to server mode only"),
                    ));
                }
                if !self.pin.is_empty() && self.ca.is_some() {
                    return Some((
                        "pin",
                        format!(
                            "{what}: `pin` and `ca` exclude each other (a pin trusts exactly \
                             that key, without a CA)"
                        ),
                    ));
                }
                for p in &self.pin {
                    if let Err(e) = crate::tls::check::parse_pin(p) {
                        return Some(("pin", format!("{what}: `pin`: {e}")));
                    }
                }
                if self.send_proxy.is_some() {
                    return Some((
                        "send_proxy",
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
                return Some((
                    "tls_versions",
                    format!("{what}: `tls_versions` has \"{v}\"; expected \"1.2\" or \"1.3\""),
                ));
            }
        }
        if self.max_connections == 0 {
            return Some((
                "max_connections",
                format!("{what}: `max_connections` must be at least 1"),
            ));
        }
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return Some((
                "idle_timeout",
                format!("{what}: `idle_timeout` must be more than 0 (leave it out to turn it off)"),
            ));
        }
        None
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

/// Something wrong in a parsed configuration, with its place: which forwarder (an index into
/// [`EngineConfig::forwarders`]) and which key. [`EngineConfig::from_file`] turns the place into
/// a line of the file.
#[derive(Debug)]
struct Problem {
    /// The array of tables the entry is in (`forwarder`, `relay`, `source`, `destination`).
    table: &'static str,
    forwarder: Option<usize>,
    key: &'static str,
    message: String,
}

impl Problem {
    fn new(forwarder: Option<usize>, key: &'static str, message: String) -> Self {
        Self {
            table: "forwarder",
            forwarder,
            key,
            message,
        }
    }

    /// A problem of entry `i` of the array of tables `table`.
    fn in_table(table: &'static str, i: usize, key: &'static str, message: String) -> Self {
        Self {
            table,
            forwarder: Some(i),
            key,
            message,
        }
    }

    /// The error naming `origin` (a file or "command line"), and the line when it is known.
    fn into_error(self, origin: &str, line: Option<usize>) -> Error {
        match line {
            Some(l) => Error::config(origin, format!("line {l}: {}", self.message)),
            None => Error::config(origin, self.message),
        }
    }
}

/// Whether two listeners cannot both be bound (without SO_REUSEPORT sharing, which would split
/// connections between two forwarders): the same port and family, and the same IP or either
/// of them the wildcard. IPv6 listeners are IPV6_V6ONLY, so `[::]:443` and `0.0.0.0:443`
/// coexist. Port 0 picks a free port, so it never collides.
pub fn listen_addrs_collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The line of `key` in forwarder `forwarder` (or at the top) of the TOML `text`, or of the
/// forwarder when the key is not in the text; for errors found after parsing.
pub(crate) fn line_of(text: &str, forwarder: Option<usize>, key: &str) -> Option<usize> {
    Locator::new(text).line_of(forwarder, key)
}

/// Where things are in a TOML text: the line of a key, and the key at a byte offset.
struct Locator<'a> {
    text: &'a str,
    doc: Option<toml::Spanned<toml::de::DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: toml::de::DeTable::parse(text).ok(),
        }
    }

    fn line_at(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn entry(&self, table: &str, i: usize) -> Option<&toml::Spanned<toml::de::DeValue<'a>>> {
        self.doc
            .as_ref()?
            .get_ref()
            .get(table)?
            .get_ref()
            .as_array()?
            .get(i)
    }

    /// The line of `key` (in forwarder `i`, or at the top), or of the forwarder when the key
    /// is not in the file.
    fn line_of(&self, forwarder: Option<usize>, key: &str) -> Option<usize> {
        self.line_in("forwarder", forwarder, key)
    }

    /// [`Locator::line_of`] in entry `i` of the array of tables `table`.
    fn line_in(&self, table: &str, i: Option<usize>, key: &str) -> Option<usize> {
        let span = match i {
            None => self.doc.as_ref()?.get_ref().get(key)?.span(),
            Some(i) => {
                let fwd = self.entry(table, i)?;
                let found = fwd
                    .get_ref()
                    .as_table()?
                    .iter()
                    .find(|(k, _)| k.get_ref() == key);
                match found {
                    Some((k, _)) => k.span(),
                    None => fwd.span(),
                }
            }
        };
        Some(self.line_at(span.start))
    }

    /// The key whose value holds byte `offset`, for an error message: `` `threads` `` or
    /// ``forwarder "db": `listen` `` (``forwarder #2: `listen` `` when it has no name).
    fn key_at(&self, offset: usize) -> Option<String> {
        let top = self.doc.as_ref()?.get_ref();
        let within = |k: &toml::Spanned<_>, v: &toml::Spanned<_>| {
            k.span().contains(&offset) || v.span().contains(&offset)
        };
        for (k, v) in top.iter() {
            // An array of tables has no span of its own that covers its tables: look inside.
            for (i, item) in v.get_ref().as_array().into_iter().flatten().enumerate() {
                let table = item.get_ref().as_table();
                for (ik, iv) in table.into_iter().flatten() {
                    if within(ik, iv) {
                        let name = table
                            .and_then(|t| t.get("name"))
                            .and_then(|n| n.get_ref().as_str().map(|n| format!("\"{n}\"")))
                            .unwrap_or_else(|| format!("#{}", i + 1));
                        return Some(format!("{} {name}: `{}`", k.get_ref(), ik.get_ref()));
                    }
                }
            }
            if within(k, v) {
                return Some(format!("`{}`", k.get_ref()));
            }
        }
        None
    }
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
    /// Kernel byte accounting (eBPF): `auto`, `on` or `off`.
    #[serde(default)]
    pub ebpf: EbpfMode,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, `off`, or `TARGET=LEVEL`
    /// directives); an unknown level is an error.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Log format on stderr: text or JSON.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Where to serve Prometheus metrics (`IP:PORT`), if anywhere.
    #[serde(default)]
    pub metrics: Option<String>,
    /// How long SIGTERM waits for open connections to finish.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The longest a shard that ran out of work polls for more before it sleeps (zero: never;
    /// unset: [`EngineConfig::busy_poll_ceiling`] picks 50 µs, or 200 µs in a process that
    /// runs a relay or a tunnel agent). The window adapts between zero and this: it grows
    /// while work keeps arriving soon after the shard went idle and shrinks when it does not,
    /// or when the shard keeps losing the CPU while it polls (see `shard/busy.rs`). A shard
    /// still polling when the next packet arrives skips a wake-up, which is most of a hop's
    /// latency on a virtual machine; idle connections, sparse traffic and bulk transfers cost
    /// no polling. Set it to zero where every CPU cycle belongs to someone else.
    #[serde(default, with = "humantime_serde::option")]
    pub busy_poll: Option<Duration>,
    /// An access line per connection at `info`, for forwarders that do not say (default on).
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// How accepted connections are spread over the shards: `"kernel"` (default: the
    /// SO_REUSEPORT hash picks the shard) or `"round-robin"` (each shard hands what it accepts
    /// to every shard in turn).
    #[serde(default)]
    pub balance: Balance,
    /// The forwarders.
    #[serde(default, rename = "forwarder")]
    pub forwarders: Vec<ForwarderConfig>,
    /// The tunnel relays.
    #[serde(default, rename = "relay")]
    pub relays: Vec<RelayConfig>,
    /// The tunnels' source agents.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// The tunnels' destination agents.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
    /// The file this was read from ([`EngineConfig::from_file`]), so that an error found
    /// later, when a forwarder's certificates are loaded and its addresses resolved, names
    /// the file, the line and the key. Not a key of the file.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The busy-polling ceiling of a process without tunnel roles: long enough to catch a
/// backend's reply on the same machine or a LAN (it bought as much as 100 µs in the bench, see
/// docs/design.md), short enough to waste little when a poll finds nothing.
pub(crate) const BUSY_POLL_DEFAULT: Duration = Duration::from_micros(50);

/// The busy-polling ceiling of a process that runs a relay or a tunnel agent. A reply comes
/// back to them through more hops (the relay and the agent on the far side) than to a
/// forwarder, so the wait between a request and its answer is longer: at 50 µs the windows
/// never caught it and every hop slept. 200 µs is KVM's default halt-polling ceiling; in the
/// bench it took the tunnel's added p50 from 1.4x rathole's to about 1.0x (BENCHMARKING.md).
pub(crate) const BUSY_POLL_TUNNEL: Duration = Duration::from_micros(200);

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            threads: None,
            driver: DriverKind::Auto,
            ktls: KtlsMode::Auto,
            ebpf: EbpfMode::Auto,
            log_level: None,
            log_format: LogFormat::Text,
            metrics: None,
            drain_timeout: default_drain_timeout(),
            busy_poll: None,
            access_log: true,
            balance: Balance::Kernel,
            forwarders: Vec::new(),
            relays: Vec::new(),
            sources: Vec::new(),
            destinations: Vec::new(),
            source_file: None,
        }
    }
}

impl EngineConfig {
    /// A commented sample configuration file with every key, as [`EngineConfig::from_file`]
    /// reads it (`splice-engine config example` prints it).
    pub const EXAMPLE: &str = EXAMPLE;

    /// The busy-polling ceiling the shards use: `busy_poll` when set, else 200 µs when the
    /// process runs a relay or a tunnel agent (their answers come back through more hops), else
    /// 50 µs.
    pub fn busy_poll_ceiling(&self) -> Duration {
        self.busy_poll.unwrap_or(
            if self.relays.is_empty() && self.sources.is_empty() && self.destinations.is_empty() {
                BUSY_POLL_DEFAULT
            } else {
                BUSY_POLL_TUNNEL
            },
        )
    }

    /// Reads and checks a TOML file. Errors name the file, the line and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(&origin, format!("cannot read: {e}")))?;
        let mut cfg = Self::parse(
            &text,
            &origin,
            Some(path.parent().unwrap_or(Path::new("."))),
        )?;
        cfg.source_file = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Reads and checks TOML text, as [`EngineConfig::from_file`] reads a file (relative paths
    /// are relative to the working directory). Errors name `origin` (what the text is, e.g.
    /// `"<string>"`), the line and the key.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        Self::parse(text, origin, None)
    }

    /// `text`, read and checked; relative paths are made relative to `base` when given.
    fn parse(text: &str, origin: &str, base: Option<&Path>) -> Result<Self> {
        let at = Locator::new(text);
        let mut cfg: EngineConfig = toml::from_str(text).map_err(|e| {
            // One line: the line from the error's span, the key (with its forwarder) whose
            // value the span points into, then toml's message.
            let mut msg = e.message().trim().replace('\n', " ");
            let start = e.span().map(|s| s.start);
            if let Some(key) = start.and_then(|o| at.key_at(o)) {
                msg = format!("{key}: {msg}");
            }
            match start {
                Some(o) => Error::config(origin, format!("line {}: {msg}", at.line_at(o))),
                None => Error::config(origin, msg),
            }
        })?;
        if let Some(base) = base {
            for f in &mut cfg.forwarders {
                f.resolve_paths(base);
            }
            for r in &mut cfg.relays {
                r.resolve_paths(base);
            }
            for s in &mut cfg.sources {
                s.resolve_paths(base);
            }
            for d in &mut cfg.destinations {
                d.resolve_paths(base);
            }
        }
        cfg.problem().map_or(Ok(()), |p| {
            let line = at.line_in(p.table, p.forwarder, p.key);
            Err(p.into_error(origin, line))
        })?;
        Ok(cfg)
    }

    /// Checks the whole configuration; `origin` names the file or "command line".
    pub fn validate(&self, origin: &str) -> Result<()> {
        self.problem()
            .map_or(Ok(()), |p| Err(p.into_error(origin, None)))
    }

    /// Where this configuration came from, for errors: its file, or "configuration" when it
    /// was built in code or from the command line.
    pub(crate) fn origin(&self) -> String {
        self.source_file
            .as_ref()
            .map_or_else(|| "configuration".to_string(), |p| p.display().to_string())
    }

    /// An error met while loading entry `i` of the tunnel table `table` (`relay`, `source` or
    /// `destination`) after parsing: a file it names cannot be read, a name does not resolve.
    /// It names the file, the line of `key`, the entry, and then `message`, which names the
    /// key.
    pub(crate) fn entry_error(
        &self,
        table: &'static str,
        i: usize,
        key: &'static str,
        message: String,
    ) -> Error {
        let name = match table {
            "forwarder" => self.forwarders.get(i).map(|f| f.display_name()),
            "relay" => self.relays.get(i).map(|r| r.display_name()),
            "source" => self.sources.get(i).map(|s| s.display_name()),
            "destination" => self.destinations.get(i).map(|d| d.display_name()),
            _ => None,
        };
        let what = match name {
            Some(n) => format!("{table} \"{n}\""),
            None => table.to_string(),
        };
        let line = self
            .source_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| Locator::new(&text).line_in(table, Some(i), key));
        Problem::in_table(table, i, key, format!("{what}: {message}"))
            .into_error(&self.origin(), line)
    }

    fn problem(&self) -> Option<Problem> {
        let top = |key, message| Some(Problem::new(None, key, message));
        if self.threads == Some(0) {
            return top("threads", "`threads` must be at least 1".into());
        }
        if let Some(l) = &self.log_level
            && let Err(e) = crate::logging::parse_filter(l)
        {
            return top("log_level", format!("`log_level`: {e}"));
        }
        let metrics = match &self.metrics {
            Some(m) => match m.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(e) => {
                    return top(
                        "metrics",
                        format!("`metrics` must be IP:PORT, not \"{m}\" ({e})"),
                    );
                }
            },
            None => None,
        };
        let mut names = std::collections::HashSet::new();
        let mut listens: Vec<(String, SocketAddr)> = Vec::new();
        for (i, f) in self.forwarders.iter().enumerate() {
            if let Some((key, message)) = f.problem() {
                return Some(Problem::new(Some(i), key, message));
            }
            let name = f.display_name();
            if !names.insert(name.clone()) {
                return Some(Problem::new(
                    Some(i),
                    "name",
                    format!("two forwarders are named \"{name}\""),
                ));
            }
            if !f.listens() {
                continue;
            }
            let addr = f
                .listen
                .parse::<SocketAddr>()
                .expect("checked by problem()");
            if let Some((other, other_addr)) =
                listens.iter().find(|(_, a)| listen_addrs_collide(*a, addr))
            {
                let both = if *other_addr == addr {
                    format!("`listen` = {addr}")
                } else {
                    format!("`listen` = {other_addr} and {addr}, which overlap")
                };
                return Some(Problem::new(
                    Some(i),
                    "listen",
                    format!(
                        "forwarders \"{other}\" and \"{name}\" both listen on port {} \
                         ({both}): each address can belong to one forwarder only",
                        addr.port()
                    ),
                ));
            }
            if let Some(m) = metrics.filter(|m| listen_addrs_collide(*m, addr)) {
                return Some(Problem::new(
                    Some(i),
                    "listen",
                    format!(
                        "forwarder \"{name}\" listens on {addr}, where `metrics` ({m}) is served"
                    ),
                ));
            }
            listens.push((name, addr));
        }
        self.tunnel_problem(metrics, listens)
    }

    /// The `[[relay]]`, `[[source]]` and `[[destination]]` tables: each checked, names unique
    /// per table, and no address listened on twice (forwarders' in `listens`, `metrics`).
    fn tunnel_problem(
        &self,
        metrics: Option<SocketAddr>,
        forwarders: Vec<(String, SocketAddr)>,
    ) -> Option<Problem> {
        let mut listens: Vec<(String, SocketAddr)> = forwarders
            .into_iter()
            .map(|(name, addr)| (format!("forwarder \"{name}\""), addr))
            .collect();
        if let Some(m) = metrics {
            listens.push(("`metrics`".into(), m));
        }
        let names = |all: Vec<String>| -> Option<(usize, String)> {
            let mut seen = std::collections::HashSet::new();
            all.into_iter()
                .enumerate()
                .find(|(_, n)| !seen.insert(n.clone()))
        };
        let mut taken = |table: &'static str, i: usize, key: &'static str, who: String, addr| {
            if let Some((other, _)) = listens.iter().find(|(_, a)| listen_addrs_collide(*a, addr)) {
                return Some(Problem::in_table(
                    table,
                    i,
                    key,
                    format!(
                        "{who}: `{key}` = {addr} overlaps {other}: each address can be listened \
                         on once"
                    ),
                ));
            }
            listens.push((who, addr));
            None
        };
        for (table, all) in [
            (
                "relay",
                self.relays.iter().map(|r| r.display_name()).collect(),
            ),
            (
                "source",
                self.sources.iter().map(|s| s.display_name()).collect(),
            ),
            (
                "destination",
                self.destinations.iter().map(|d| d.display_name()).collect(),
            ),
        ] {
            if let Some((i, name)) = names(all) {
                return Some(Problem::in_table(
                    table,
                    i,
                    "name",
                    format!("two {table}s are named \"{name}\" (give each a `name`)"),
                ));
            }
        }
        for (i, r) in self.relays.iter().enumerate() {
            if let Some((key, message)) = r.problem() {
                return Some(Problem::in_table("relay", i, key, message));
            }
            let who = format!("relay \"{}\"", r.display_name());
            for (key, addr) in [("listen", &r.listen), ("api", &r.api)] {
                let addr = addr.parse().expect("checked by problem()");
                if let Some(p) = taken("relay", i, key, who.clone(), addr) {
                    return Some(p);
                }
            }
        }
        for (i, s) in self.sources.iter().enumerate() {
            if let Some((key, message)) = s.problem() {
                return Some(Problem::in_table("source", i, key, message));
            }
            for (service, addr) in s.listen_addrs() {
                let who = format!("source \"{}\" service \"{service}\"", s.display_name());
                let addr = addr.expect("checked by problem()");
                if let Some(p) = taken("source", i, "listen", who, addr) {
                    return Some(p);
                }
            }
        }
        for (i, d) in self.destinations.iter().enumerate() {
            if let Some((key, message)) = d.problem() {
                return Some(Problem::in_table("destination", i, key, message));
            }
        }
        None
    }

    /// The number of shards to run.
    pub(crate) fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

mod builder;
#[cfg(test)]
mod tests;
mod tunnel;

pub(crate) use tunnel::read_secret_file;
pub use tunnel::{
    DestinationConfig, RelayConfig, SecretText, SourceConfig, TOKEN_ENV, TunnelProtocol,
    split_service,
};

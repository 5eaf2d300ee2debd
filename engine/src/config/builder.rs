//! Builders for [`ForwarderConfig`] and [`EngineConfig`], for programs that embed the engine
//! instead of reading a TOML file.
//!
//! Each setter takes and returns the value, so a configuration reads as one expression; the
//! fields stay public for the TOML loader and for code that prefers to assign them. Nothing is
//! checked here: [`Engine::start`](crate::Engine::start) and
//! [`Engine::reload`](crate::Engine::reload) check the whole configuration (and
//! [`EngineConfig::validate`] does without starting anything), and the error names the key.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    Balance, DestinationConfig, DriverKind, EbpfMode, EngineConfig, ForwarderConfig, KtlsMode,
    LogFormat, Mode, ProxyVersion, RelayConfig, SourceConfig, UnresolvedUpstream,
};

impl ForwarderConfig {
    /// A client-mode forwarder: accepts plain TCP on `listen` (`IP:PORT`, port 0 picks one) and
    /// forwards each connection over TLS to `connect` (`HOST:PORT`), verified against the
    /// system's roots unless [`ca`](Self::ca) or [`pin`](Self::pin) says otherwise.
    pub fn client(listen: impl Into<String>, connect: impl Into<String>) -> Self {
        Self::new(Mode::Client, listen, connect)
    }

    /// A server-mode forwarder: terminates TLS on `listen` with the certificate chain `cert` and
    /// its private key `key` (PEM files), and forwards plain TCP to `connect`.
    pub fn server(
        listen: impl Into<String>,
        connect: impl Into<String>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        let mut f = Self::new(Mode::Server, listen, connect);
        f.cert = Some(cert.into());
        f.key = Some(key.into());
        f
    }

    /// The name in logs, metrics and [`Engine::local_addr`](crate::Engine::local_addr)
    /// (default: the mode and listen address, e.g. `client-127.0.0.1:3000`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Client mode: verify the upstream against the CA certificates in this PEM file instead of
    /// the system's roots.
    pub fn ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// Client mode: verify the upstream against the CA certificates in this PEM text (instead
    /// of a [`ca`](ForwarderConfig::ca) file or the system's roots).
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Client mode: trust an upstream whose key (or whole certificate) has this hash,
    /// `sha256:<base64 or hex>`, instead of a CA; names and dates are not checked. Each call
    /// adds one.
    pub fn pin(mut self, pin: impl Into<String>) -> Self {
        self.pin.push(pin.into());
        self
    }

    /// Client mode: the server name to send (SNI) and verify (default: the host of `connect`).
    pub fn sni(mut self, name: impl Into<String>) -> Self {
        self.sni = Some(name.into());
        self
    }

    /// Client mode: present this client certificate chain and key (PEM files). In server mode
    /// it replaces the pair given to [`server`](Self::server).
    pub fn certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// Server mode: require client certificates issued by the CAs in this PEM file.
    pub fn client_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.client_ca = Some(path.into());
        self
    }

    /// An ALPN protocol to offer (client mode) or accept (server mode); each call adds one.
    pub fn alpn(mut self, protocol: impl Into<String>) -> Self {
        self.alpn.push(protocol.into());
        self
    }

    /// Allow this TLS version, `"1.2"` or `"1.3"`; each call adds one (default: both).
    pub fn tls_version(mut self, version: impl Into<String>) -> Self {
        self.tls_versions.push(version.into());
        self
    }

    /// The most connections open at once; more are refused with a reset (default 10000).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// The time allowed to connect to the upstream (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The time allowed for the TLS handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Reset connections that move no byte in either direction for this long (default: never).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// TLS session resumption (default on); off makes every handshake a full one.
    pub fn resumption(mut self, on: bool) -> Self {
        self.resumption = on;
        self
    }

    /// An access line per connection at `info` (default: the engine's
    /// [`access_log`](EngineConfig::access_log)).
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = Some(on);
        self
    }

    /// Expect a PROXY protocol header (v1 or v2) on every accepted connection and take the
    /// client's address from it (default off).
    pub fn accept_proxy(mut self, on: bool) -> Self {
        self.accept_proxy = on;
        self
    }

    /// Server mode: send a PROXY protocol header of this version to the backend first.
    pub fn send_proxy(mut self, version: ProxyVersion) -> Self {
        self.send_proxy = Some(version);
        self
    }

    /// What to do when `connect`'s host name does not resolve at start or at a reload
    /// (default [`UnresolvedUpstream::Fail`]).
    pub fn unresolved_upstream(mut self, then: UnresolvedUpstream) -> Self {
        self.unresolved_upstream = then;
        self
    }
}

impl EngineConfig {
    /// The defaults ([`EngineConfig::default`]) and no forwarder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a forwarder.
    pub fn forwarder(mut self, forwarder: ForwarderConfig) -> Self {
        self.forwarders.push(forwarder);
        self
    }

    /// Shard threads (default: the number of cores).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// The data-plane driver (default [`DriverKind::Auto`]).
    pub fn driver(mut self, driver: DriverKind) -> Self {
        self.driver = driver;
        self
    }

    /// Kernel TLS use (default [`KtlsMode::Auto`]).
    pub fn ktls(mut self, mode: KtlsMode) -> Self {
        self.ktls = mode;
        self
    }

    /// Kernel byte accounting with eBPF (default [`EbpfMode::Auto`]).
    pub fn ebpf(mut self, mode: EbpfMode) -> Self {
        self.ebpf = mode;
        self
    }

    /// The log filter that [`logging::init`](crate::logging::init) would be given: a level
    /// (`error`, `warn`, `info`, `debug`, `trace`, `off`) or `TARGET=LEVEL` directives. The
    /// engine itself installs no logger.
    pub fn log_level(mut self, filter: impl Into<String>) -> Self {
        self.log_level = Some(filter.into());
        self
    }

    /// The log format a logger should use (default [`LogFormat::Text`]).
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// Serve Prometheus metrics at `http://ADDR/metrics` (`IP:PORT`; default: not served).
    pub fn metrics(mut self, addr: impl Into<String>) -> Self {
        self.metrics = Some(addr.into());
        self
    }

    /// How long a drain waits for open connections (default 10 s); the binary passes it to
    /// [`Engine::shutdown`](crate::Engine::shutdown) on SIGTERM.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The longest a shard that ran out of work polls before it sleeps (default 50 µs, or
    /// 200 µs with a relay or a tunnel agent: [`EngineConfig::busy_poll_ceiling`]; zero
    /// turns busy polling off).
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.busy_poll = Some(window);
        self
    }

    /// How accepted connections are spread over the shards (default: by the kernel's
    /// `SO_REUSEPORT` hash; [`Balance::RoundRobin`] hands them out in turn).
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// An access line per connection at `info`, for forwarders that do not say (default on).
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }
}

impl EngineConfig {
    /// Adds a tunnel relay.
    pub fn relay(mut self, relay: RelayConfig) -> Self {
        self.relays.push(relay);
        self
    }

    /// Adds a tunnel source agent.
    pub fn source(mut self, source: SourceConfig) -> Self {
        self.sources.push(source);
        self
    }

    /// Adds a tunnel destination agent.
    pub fn destination(mut self, destination: DestinationConfig) -> Self {
        self.destinations.push(destination);
        self
    }
}

//! The tunnel's tables: `[[relay]]`, `[[source]]` and `[[destination]]`, beside
//! `[[forwarder]]` in a `run --config` file, and what the `relay`, `source` and `destination`
//! commands build from their flags.
//!
//! A service is written `NAME=ADDR` (a named service, V2/V3) or a bare `ADDR` (the one
//! unnamed service of a V1 tunnel), in the file as in the flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The environment variable an agent reads its access token from when neither `token` nor
/// `token_file` is given (the AWS local proxy's name, so existing scripts keep working).
pub const TOKEN_ENV: &str = "AWSIOT_TUNNEL_ACCESS_TOKEN";

/// A secret written in a configuration (an access or client token). Its `Debug` prints
/// `<redacted>`, so a configuration can be logged without leaking it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The secret written in file `path` (a token), surrounding whitespace removed; else why not
/// ("cannot read it: …", "it is empty"), for the caller to say with the key or the file. One
/// reading for every token file, so they all take the same files.
pub(crate) fn read_secret_file(path: &Path) -> std::result::Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err("it is empty".into());
    }
    Ok(secret.to_string())
}

/// Which tunnel protocol version an agent speaks at most (it falls back to what the peer
/// speaks, as the AWS local proxy does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    /// `aws.iot.securetunneling-1.0`: one unnamed service, one connection at a time.
    V1,
    /// `aws.iot.securetunneling-2.0`: named services, one connection each.
    V2,
    /// `aws.iot.securetunneling-3.0`: named services, many connections each.
    #[default]
    V3,
}

impl std::str::FromStr for TunnelProtocol {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "v1" | "1" => Ok(Self::V1),
            "v2" | "2" => Ok(Self::V2),
            "v3" | "3" => Ok(Self::V3),
            other => Err(format!(
                "unknown tunnel protocol {other:?} (expected v1, v2 or v3)"
            )),
        }
    }
}

/// A relay: the TLS + WebSocket endpoint both agents of a tunnel dial out to, and the tunnel
/// API that opens tunnels and hands out their tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// A name for logs and metrics (default `relay-<listen>`).
    #[serde(default)]
    pub name: String,
    /// Where agents connect (`IP:PORT`, TLS + WebSocket).
    pub listen: String,
    /// The certificate chain the relay presents (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Where the tunnel API listens (`IP:PORT`; keep it on loopback unless it has a token).
    pub api: String,
    /// A file holding the API's bearer token; without it the API asks for none.
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// The registry's SQLite file; `":memory:"` for a throwaway relay. Default:
    /// `$XDG_STATE_HOME/splice-engine/relay-<name>.sqlite` (or `~/.local/state/...`).
    #[serde(default)]
    pub state: Option<String>,
    /// Most services per tunnel (AWS: 3).
    #[serde(default = "default_max_services")]
    pub max_services: usize,
    /// The longest lifetime a tunnel may ask for (AWS: 12 h).
    #[serde(default = "default_max_lifetime", with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// How long a closed (or expired) tunnel stays in the registry, listed and describable,
    /// before it is forgotten (AWS: "at least three hours"). Default 3 h.
    #[serde(default = "default_keep_closed", with = "humantime_serde")]
    pub keep_closed: Duration,
    /// Bytes per second per tunnel and direction the relay forwards at most (off when unset):
    /// protects destinations behind slow links.
    #[serde(default)]
    pub rate_limit: Option<u64>,
    /// Origins (`https://host:port`, exactly as a browser sends `Origin`) whose pages may
    /// `POST /cookie` with credentials and open the tunnel's WebSocket with that cookie.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Most agents connected at once (more are refused).
    #[serde(default = "default_max_peers")]
    pub max_peers: usize,
    /// Time allowed for an agent's TLS handshake and WebSocket upgrade together.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A peer silent this long is pinged.
    #[serde(default = "default_ping_after", with = "humantime_serde")]
    pub ping_after: Duration,
    /// A peer silent this long (no frame, no pong) is dropped.
    #[serde(default = "default_peer_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// CA certificates (PEM) for pairing by certificate: a source and a destination that
    /// present certificates from these CAs with the same identity, and no token, are paired
    /// into a tunnel the relay makes on first contact.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// CA certificates (PEM) for devices in standby (`destination --thing`).
    #[serde(default)]
    pub device_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) for the certificates of `client_ca` and
    /// `device_ca`.
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
}

/// What both agents' builders share.
macro_rules! agent_builders {
    () => {
        /// A name for logs and metrics.
        pub fn name(mut self, name: impl Into<String>) -> Self {
            self.name = name.into();
            self
        }

        /// The CA file to verify the relay with (default: the system's roots).
        pub fn ca(mut self, path: impl Into<PathBuf>) -> Self {
            self.ca = Some(path.into());
            self
        }

        /// The CA certificates to verify the relay with, as PEM text (instead of a file).
        pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
            self.ca_pem = Some(pem.into());
            self
        }

        /// Trust exactly this key (`sha256:<base64 or hex>` of the relay's SPKI or
        /// certificate) instead of a CA; repeatable.
        pub fn pin(mut self, pin: impl Into<String>) -> Self {
            self.pin.push(pin.into());
            self
        }

        /// The name to send (SNI) and verify (default: the relay's host).
        pub fn sni(mut self, name: impl Into<String>) -> Self {
            self.sni = Some(name.into());
            self
        }

        /// The access token itself (prefer [`Self::token_file`] or the environment).
        pub fn token(mut self, token: impl Into<String>) -> Self {
            self.token = Some(SecretText(token.into()));
            self
        }

        /// A file holding the access token.
        pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
            self.token_file = Some(path.into());
            self
        }

        /// The client token that lets the agent reconnect with the same access token.
        pub fn client_token(mut self, token: impl Into<String>) -> Self {
            self.client_token = Some(SecretText(token.into()));
            self
        }

        /// The newest protocol version to speak (default V3).
        pub fn protocol(mut self, protocol: TunnelProtocol) -> Self {
            self.protocol = protocol;
            self
        }

        /// Keep reconnecting after a close frame or a 4xx.
        pub fn keep_trying(mut self, on: bool) -> Self {
            self.keep_trying = on;
            self
        }

        /// Negotiate half-close with a splice-engine peer (default on).
        pub fn half_close(mut self, on: bool) -> Self {
            self.half_close = on;
            self
        }

        /// Simultaneous local connections per service (default 128, as the local proxy).
        pub fn connections_per_service(mut self, n: usize) -> Self {
            self.connections_per_service = n;
            self
        }

        /// A file holding the client token (instead of [`Self::client_token`]).
        pub fn client_token_file(mut self, path: impl Into<PathBuf>) -> Self {
            self.client_token_file = Some(path.into());
            self
        }

        /// The client certificate (PEM chain) and its key presented to the relay: the
        /// agent's identity, by which a relay with `client_ca` pairs it without a token.
        pub fn identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
            self.identity_cert = Some(cert.into());
            self.identity_key = Some(key.into());
            self
        }
    };
}

/// Declares an agent table: the fields both agents share (name, relay, TLS, tokens, protocol,
/// reconnects, the connection limit, keepalive) and then its own, with `new`, the shared
/// builders, `display_name`, path resolution and the shared checks' view. One
/// `deny_unknown_fields` struct each, rather than a `#[serde(flatten)]` common struct: with
/// `flatten` serde takes unknown keys without a word and loses the line of a mistyped value.
macro_rules! agent_table {
    (
        $(#[$doc:meta])*
        $ty:ident, $kind:literal {
            $( $(#[$fdoc:meta])* $field:ident: $fty:ty = $default:expr, )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $ty {
            #[doc = concat!("A name for logs and metrics (default `", $kind, "-<relay>`).")]
            #[serde(default)]
            pub name: String,
            /// The relay (`HOST:PORT`).
            pub relay: String,
            /// CA file to verify the relay (system roots when absent).
            #[serde(default)]
            pub ca: Option<PathBuf>,
            /// CA certificates to verify the relay, as PEM text (instead of `ca`).
            #[serde(default)]
            pub ca_pem: Option<String>,
            /// Trust exactly these keys instead of a CA (not with `ca` or `ca_pem`):
            /// `sha256:<base64 or hex>` of the relay's public key (SPKI) or whole certificate.
            /// Names and dates are not checked.
            #[serde(default)]
            pub pin: Vec<String>,
            /// The name to send (SNI) and verify; default the relay's host.
            #[serde(default)]
            pub sni: Option<String>,
            /// The access token, written in the file (prefer `token_file`, or the environment).
            #[serde(default)]
            pub token: Option<SecretText>,
            /// A file holding the access token.
            #[serde(default)]
            pub token_file: Option<PathBuf>,
            /// The client token (`[A-Za-z0-9-]{32,128}`) that lets this agent reconnect with
            /// the same access token.
            #[serde(default)]
            pub client_token: Option<SecretText>,
            /// A file holding the client token (instead of `client_token`).
            #[serde(default)]
            pub client_token_file: Option<PathBuf>,
            /// Simultaneous local connections per service (the AWS local proxy's 128); one
            /// more is refused (a source resets it, a destination resets its
            /// `CONNECTION_START`).
            #[serde(default = "default_connections_per_service")]
            pub connections_per_service: usize,
            /// The newest protocol version to speak.
            #[serde(default)]
            pub protocol: TunnelProtocol,
            /// Keep reconnecting after a close frame or a 4xx (the local proxy exits).
            #[serde(default)]
            pub keep_trying: bool,
            /// Negotiate half-close with a splice-engine agent at the other end (ignorable
            /// messages that localproxy drops): one direction of a connection can end while the
            /// other goes on. Off, a local EOF ends the whole connection, as localproxy does.
            #[serde(default = "default_half_close")]
            pub half_close: bool,
            /// Ping the relay after this long without a byte from it.
            #[serde(default = "default_ping_after", with = "humantime_serde")]
            pub ping_after: Duration,
            /// Drop the connection to the relay (and reconnect) after this long without a
            /// byte from it, a pong included: a relay gone without a FIN (a NAT that forgot
            /// the connection).
            #[serde(default = "default_peer_idle_timeout", with = "humantime_serde")]
            pub idle_timeout: Duration,
            /// A client certificate (PEM chain) presented to the relay: with a relay's
            /// `client_ca`, the agent is paired by it and needs no token.
            #[serde(default)]
            pub identity_cert: Option<PathBuf>,
            /// The private key of `identity_cert` (PEM).
            #[serde(default)]
            pub identity_key: Option<PathBuf>,
            $( $(#[$fdoc])* pub $field: $fty, )*
        }

        impl $ty {
            #[doc = concat!("A ", $kind, " agent of the relay at `relay` (`HOST:PORT`), with \
                no service yet (add them with `service`); the token from [`TOKEN_ENV`] unless \
                set.")]
            pub fn new(relay: impl Into<String>) -> Self {
                Self {
                    name: String::new(),
                    relay: relay.into(),
                    ca: None,
                    ca_pem: None,
                    pin: Vec::new(),
                    sni: None,
                    token: None,
                    token_file: None,
                    client_token: None,
                    client_token_file: None,
                    connections_per_service: default_connections_per_service(),
                    protocol: TunnelProtocol::default(),
                    keep_trying: false,
                    half_close: true,
                    ping_after: default_ping_after(),
                    idle_timeout: default_peer_idle_timeout(),
                    identity_cert: None,
                    identity_key: None,
                    $( $field: $default, )*
                }
            }

            #[doc = concat!("`name`, or `", $kind, "-<relay>`.")]
            pub fn display_name(&self) -> String {
                if self.name.is_empty() {
                    format!(concat!($kind, "-{}"), self.relay)
                } else {
                    self.name.clone()
                }
            }

            pub(crate) fn resolve_paths(&mut self, base: &Path) {
                resolve(&mut self.ca, base);
                resolve(&mut self.token_file, base);
                resolve(&mut self.client_token_file, base);
                resolve(&mut self.identity_cert, base);
                resolve(&mut self.identity_key, base);
            }

            /// The shared checks' view, with this agent's services under `services_key`.
            fn agent<'a>(&'a self, services_key: &'static str, services: &'a [String]) -> Agent<'a> {
                Agent {
                    what: format!(concat!($kind, " \"{}\""), self.display_name()),
                    relay: &self.relay,
                    trust: (self.ca.is_some(), self.ca_pem.as_deref(), &self.pin),
                    sni: self.sni.as_deref(),
                    token: self.token.as_ref(),
                    token_file: self.token_file.as_deref(),
                    client_token: self.client_token.as_ref(),
                    client_token_file: self.client_token_file.as_deref(),
                    identity: (self.identity_cert.as_deref(), self.identity_key.as_deref()),
                    services_key,
                    services,
                    protocol: self.protocol,
                    connections_per_service: self.connections_per_service,
                }
            }

            agent_builders!();
        }
    };
}

agent_table! {
    /// The source agent: accepts local connections on each service's address and carries them
    /// through the tunnel.
    SourceConfig, "source" {
        /// The services: `NAME=IP:PORT` each (or one bare `IP:PORT`, the V1 form).
        listen: Vec<String> = Vec::new(),
    }
}

agent_table! {
    /// The destination agent: connects each stream of the tunnel to its service's address.
    DestinationConfig, "destination" {
        /// The services: `NAME=HOST:PORT` each (or one bare `HOST:PORT`, the V1 form).
        connect: Vec<String> = Vec::new(),
        /// Time allowed to connect to a service.
        #[serde(default = "default_connect_timeout", with = "humantime_serde")]
        connect_timeout: Duration = default_connect_timeout(),
        /// Standby for this thing (AWS IoT's thing name): no token; one channel to the
        /// relay, on which it pushes each tunnel opened for the thing (docs/relay.md
        /// "Fleets"). Needs a client certificate the relay's `device_ca` verifies.
        #[serde(default)]
        thing: Option<String> = None,
    }
}

fn default_half_close() -> bool {
    true
}
fn default_max_services() -> usize {
    3
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_keep_closed() -> Duration {
    Duration::from_secs(3 * 3600)
}
fn default_max_peers() -> usize {
    100_000
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_ping_after() -> Duration {
    Duration::from_secs(30)
}
fn default_peer_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_connections_per_service() -> usize {
    128
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Splits a service written `NAME=ADDR` into its name and address; a bare `ADDR` is the
/// unnamed (V1) service, named `""`.
pub fn split_service(s: &str) -> (&str, &str) {
    match s.split_once('=') {
        Some((name, addr)) => (name, addr),
        None => ("", s),
    }
}

impl RelayConfig {
    /// A relay for agents on `listen` (TLS with `cert` and `key`) and its API on `api`; every
    /// other field at its default (the registry in the default state file).
    pub fn new(
        listen: impl Into<String>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        api: impl Into<String>,
    ) -> Self {
        Self {
            name: String::new(),
            listen: listen.into(),
            cert: cert.into(),
            key: key.into(),
            api: api.into(),
            api_token_file: None,
            state: None,
            max_services: default_max_services(),
            max_lifetime: default_max_lifetime(),
            keep_closed: default_keep_closed(),
            rate_limit: None,
            cors_origins: Vec::new(),
            max_peers: default_max_peers(),
            handshake_timeout: default_handshake_timeout(),
            ping_after: default_ping_after(),
            idle_timeout: default_peer_idle_timeout(),
            client_ca: None,
            device_ca: None,
            client_crls: Vec::new(),
        }
    }

    /// Pairs by certificate the agents whose certificates chain to the CAs in `path`.
    pub fn client_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.client_ca = Some(path.into());
        self
    }

    /// Lets devices with certificates from the CAs in `path` stand by for their thing.
    pub fn device_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.device_ca = Some(path.into());
        self
    }

    /// Refuses the client and device certificates revoked by the CRL in `path` (repeatable).
    pub fn client_crl(mut self, path: impl Into<PathBuf>) -> Self {
        self.client_crls.push(path.into());
        self
    }

    /// A name for logs and metrics (default `relay-<listen>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The API asks for `Authorization: Bearer <the token in this file>`.
    pub fn api_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.api_token_file = Some(path.into());
        self
    }

    /// The registry's SQLite file, or `":memory:"`.
    pub fn state(mut self, state: impl Into<String>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// Most services per tunnel (default 3).
    pub fn max_services(mut self, n: usize) -> Self {
        self.max_services = n;
        self
    }

    /// The longest lifetime a tunnel may ask for (default 12 h).
    pub fn max_lifetime(mut self, d: Duration) -> Self {
        self.max_lifetime = d;
        self
    }

    /// How long a closed tunnel stays listed before the registry forgets it (default 3 h).
    pub fn keep_closed(mut self, d: Duration) -> Self {
        self.keep_closed = d;
        self
    }

    /// Bytes per second per tunnel and direction (default: no limit).
    pub fn rate_limit(mut self, bytes_per_second: u64) -> Self {
        self.rate_limit = Some(bytes_per_second);
        self
    }

    /// Lets pages from `origin` use `POST /cookie` (CORS) and the cookie (repeatable).
    pub fn cors_origin(mut self, origin: impl Into<String>) -> Self {
        self.cors_origins.push(origin.into());
        self
    }

    /// Most agents connected at once (default 100,000).
    pub fn max_peers(mut self, n: usize) -> Self {
        self.max_peers = n;
        self
    }

    /// A peer silent this long is pinged (default 30 s).
    pub fn ping_after(mut self, d: Duration) -> Self {
        self.ping_after = d;
        self
    }

    /// A peer silent this long is dropped (default 90 s).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Time allowed for an agent's TLS handshake and upgrade (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }
}

impl SourceConfig {
    /// Accepts connections for service `name` on `addr` (`IP:PORT`); an empty `name` is the
    /// one service of a V1 tunnel.
    pub fn service(mut self, name: &str, addr: impl Into<String>) -> Self {
        self.listen.push(join_service(name, &addr.into()));
        self
    }
}

impl DestinationConfig {
    /// Connects the streams of service `name` to `addr` (`HOST:PORT`); an empty `name` is
    /// the one service of a V1 tunnel.
    pub fn service(mut self, name: &str, addr: impl Into<String>) -> Self {
        self.connect.push(join_service(name, &addr.into()));
        self
    }

    /// Time allowed to connect to a service (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
}

fn join_service(name: &str, addr: &str) -> String {
    if name.is_empty() {
        addr.to_string()
    } else {
        format!("{name}={addr}")
    }
}

// ---- validation ----

/// AWS's pattern for a service id: `[A-Za-z0-9:_-]{1,128}` (the protocol's own check).
fn valid_service_name(s: &str) -> bool {
    splice_proto::tunnel::check_service_id(s).is_ok()
}

/// Reference §2: a client token is `[A-Za-z0-9-]{32,128}`.
fn valid_client_token(s: &str) -> bool {
    splice_proto::ws::ClientToken::is_valid(s)
}

impl RelayConfig {
    /// `name`, or `relay-<listen>`.
    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            format!("relay-{}", self.listen)
        } else {
            self.name.clone()
        }
    }

    /// The first thing wrong, as the key at fault and a sentence naming the relay.
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        let what = format!("relay \"{}\"", self.display_name());
        for (key, value) in [("listen", &self.listen), ("api", &self.api)] {
            if let Err(e) = value.parse::<SocketAddr>() {
                return Some((
                    key,
                    format!("{what}: `{key}` must be IP:PORT, not \"{value}\" ({e})"),
                ));
            }
        }
        for (key, path) in [("cert", &self.cert), ("key", &self.key)] {
            if path.as_os_str().is_empty() {
                return Some((key, format!("{what}: `{key}` is empty")));
            }
        }
        if self.state.as_deref() == Some("") {
            return Some((
                "state",
                format!("{what}: `state` is empty (a file, or \":memory:\")"),
            ));
        }
        if self
            .api_token_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Some((
                "api_token_file",
                format!("{what}: `api_token_file` is empty"),
            ));
        }
        if self.max_services == 0 {
            return Some((
                "max_services",
                format!("{what}: `max_services` must be at least 1"),
            ));
        }
        // Seconds, not AWS's whole minutes: an operator may allow short tunnels.
        let seconds = self.max_lifetime.as_secs();
        if seconds == 0 || seconds > u64::from(u32::MAX) {
            return Some((
                "max_lifetime",
                format!(
                    "{what}: `max_lifetime` must be at least 1 second (and less than {} \
                     years)",
                    u64::from(u32::MAX) / (3600 * 24 * 365)
                ),
            ));
        }
        if self.rate_limit == Some(0) {
            return Some((
                "rate_limit",
                format!("{what}: `rate_limit` must be more than 0 (leave it out for no limit)"),
            ));
        }
        if let Some(bad) = self.cors_origins.iter().find(|o| !origin_shape(o)) {
            return Some((
                "cors_origins",
                format!(
                    "{what}: `cors_origins` entry {bad:?} is not an origin (scheme://host[:port], \
                     no path, as a browser sends it)"
                ),
            ));
        }
        for (key, path) in [
            ("client_ca", self.client_ca.as_ref()),
            ("device_ca", self.device_ca.as_ref()),
        ] {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Some((key, format!("{what}: `{key}` is empty")));
            }
        }
        if self.client_crls.iter().any(|p| p.as_os_str().is_empty()) {
            return Some((
                "client_crls",
                format!("{what}: `client_crls` has an empty path"),
            ));
        }
        if !self.client_crls.is_empty() && self.client_ca.is_none() && self.device_ca.is_none() {
            return Some((
                "client_crls",
                format!(
                    "{what}: `client_crls` is given without `client_ca` or `device_ca`: \
                     there is no client certificate to revoke"
                ),
            ));
        }
        if self.max_peers == 0 {
            return Some((
                "max_peers",
                format!("{what}: `max_peers` must be at least 1"),
            ));
        }
        for (key, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("ping_after", self.ping_after),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Some((key, format!("{what}: `{key}` must be more than 0")));
            }
        }
        if self.idle_timeout <= self.ping_after {
            return Some((
                "idle_timeout",
                format!(
                    "{what}: `idle_timeout` ({:?}) must be longer than `ping_after` ({:?}), or \
                     a quiet peer is dropped before it is pinged",
                    self.idle_timeout, self.ping_after
                ),
            ));
        }
        None
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.cert, &mut self.key]
            .into_iter()
            .chain(self.api_token_file.as_mut())
            .chain(self.client_ca.as_mut())
            .chain(self.device_ca.as_mut())
            .chain(self.client_crls.iter_mut())
        {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
        if let Some(s) = &mut self.state
            && s != ":memory:"
            && !s.is_empty()
            && Path::new(s).is_relative()
        {
            *s = base.join(&*s).display().to_string();
        }
    }
}

/// What the two agents share, for their checks.
struct Agent<'a> {
    what: String,
    relay: &'a str,
    /// Whether `ca` is set, `ca_pem` and `pin`.
    trust: (bool, Option<&'a str>, &'a [String]),
    sni: Option<&'a str>,
    token: Option<&'a SecretText>,
    token_file: Option<&'a Path>,
    client_token: Option<&'a SecretText>,
    client_token_file: Option<&'a Path>,
    /// `identity_cert` and `identity_key`.
    identity: (Option<&'a Path>, Option<&'a Path>),
    /// `listen` or `connect`.
    services_key: &'static str,
    services: &'a [String],
    protocol: TunnelProtocol,
    connections_per_service: usize,
}

impl Agent<'_> {
    fn problem(&self) -> Option<(&'static str, String)> {
        let what = &self.what;
        if self.connections_per_service == 0 {
            return Some((
                "connections_per_service",
                format!("{what}: `connections_per_service` must be at least 1"),
            ));
        }
        if let Err(e) = super::split_host_port(self.relay) {
            return Some((
                "relay",
                format!(
                    "{what}: `relay` must be HOST:PORT, not \"{}\" ({})",
                    self.relay,
                    address_why(e)
                ),
            ));
        }
        if self.sni == Some("") {
            return Some(("sni", format!("{what}: `sni` is empty")));
        }
        let (ca, ca_pem, pins) = self.trust;
        if ca && ca_pem.is_some() {
            return Some((
                "ca_pem",
                format!("{what}: `ca` and `ca_pem` exclude each other"),
            ));
        }
        if !pins.is_empty() && (ca || ca_pem.is_some()) {
            return Some((
                "pin",
                format!(
                    "{what}: `pin` and `ca` (or `ca_pem`) exclude each other: a pin trusts \
                     exactly that key, without a CA"
                ),
            ));
        }
        for p in pins {
            if let Err(e) = crate::tls::check::parse_pin(p) {
                return Some(("pin", format!("{what}: `pin`: {e}")));
            }
        }

        if self.token.is_some() && self.token_file.is_some() {
            return Some((
                "token",
                format!(
                    "{what}: `token` and `token_file` exclude each other (give one, or neither \
                     to read {TOKEN_ENV})"
                ),
            ));
        }
        match self.identity {
            (Some(_), None) => {
                return Some((
                    "identity_key",
                    format!("{what}: `identity_cert` is given without `identity_key`"),
                ));
            }
            (None, Some(_)) => {
                return Some((
                    "identity_cert",
                    format!("{what}: `identity_key` is given without `identity_cert`"),
                ));
            }
            _ => {}
        }
        if self.token.is_some_and(|t| t.0.trim().is_empty()) {
            return Some(("token", format!("{what}: `token` is empty")));
        }
        if self.token_file.is_some_and(|p| p.as_os_str().is_empty()) {
            return Some(("token_file", format!("{what}: `token_file` is empty")));
        }
        if self.client_token.is_some() && self.client_token_file.is_some() {
            return Some((
                "client_token_file",
                format!("{what}: `client_token` and `client_token_file` exclude each other"),
            ));
        }
        if self
            .client_token_file
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Some((
                "client_token_file",
                format!("{what}: `client_token_file` is empty"),
            ));
        }
        if self.client_token.is_some_and(|t| !valid_client_token(&t.0)) {
            // The value is a secret: say what is wrong, never what it is.
            return Some((
                "client_token",
                format!("{what}: `client_token` must be 32 to 128 characters of [A-Za-z0-9-]"),
            ));
        }
        let key = self.services_key;
        if self.services.is_empty() {
            return Some((
                key,
                format!("{what}: `{key}` is empty: give at least one NAME=ADDR (or one bare ADDR)"),
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        for s in self.services {
            let (name, _) = split_service(s);
            if name.is_empty() {
                if s.contains('=') {
                    return Some((
                        key,
                        format!("{what}: `{key}` has \"{s}\", with an empty service name"),
                    ));
                }
            } else if !valid_service_name(name) {
                return Some((
                    key,
                    format!(
                        "{what}: `{key}` has service \"{name}\": a service name is 1 to 128 \
                         characters of [A-Za-z0-9:_-]"
                    ),
                ));
            }
            if names.contains(&name) {
                let which = if name.is_empty() {
                    "more than one unnamed service (a bare ADDR is the one service of a V1 \
                     tunnel)"
                        .to_string()
                } else {
                    format!("service \"{name}\" twice")
                };
                return Some((key, format!("{what}: `{key}` names {which}")));
            }
            names.push(name);
        }
        if names.len() > 1 && names.contains(&"") {
            return Some((
                key,
                format!(
                    "{what}: `{key}` mixes a bare ADDR (the one unnamed service of a V1 tunnel) \
                     with named services; name every service NAME=ADDR"
                ),
            ));
        }
        if self.protocol == TunnelProtocol::V1 && names.len() > 1 {
            return Some((
                "protocol",
                format!(
                    "{what}: `protocol` = \"v1\" carries one service, and `{key}` has {}",
                    names.len()
                ),
            ));
        }
        None
    }
}

fn address_why(e: crate::error::Error) -> String {
    match e {
        crate::error::Error::Address { why, .. } => why,
        other => other.to_string(),
    }
}

fn resolve(p: &mut Option<PathBuf>, base: &Path) {
    if let Some(p) = p
        && p.is_relative()
        && !p.as_os_str().is_empty()
    {
        *p = base.join(&*p);
    }
}

impl SourceConfig {
    /// Each service's name (`""` for the unnamed one) and listening address; `listen` must
    /// have passed [`SourceConfig::problem`].
    pub(crate) fn listen_addrs(&self) -> impl Iterator<Item = (&str, Option<SocketAddr>)> {
        self.listen.iter().map(|s| {
            let (name, addr) = split_service(s);
            (name, addr.parse().ok())
        })
    }

    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        let what = format!("source \"{}\"", self.display_name());
        if let Some(p) = self.agent("listen", &self.listen).problem() {
            return Some(p);
        }
        for s in &self.listen {
            let (_, addr) = split_service(s);
            if let Err(e) = addr.parse::<SocketAddr>() {
                return Some((
                    "listen",
                    format!("{what}: `listen` has \"{s}\": the address must be IP:PORT ({e})"),
                ));
            }
        }
        None
    }
}

impl DestinationConfig {
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        let what = format!("destination \"{}\"", self.display_name());
        if let Some(p) = self.agent("connect", &self.connect).problem() {
            return Some(p);
        }
        for s in &self.connect {
            let (_, addr) = split_service(s);
            if let Err(e) = super::split_host_port(addr) {
                return Some((
                    "connect",
                    format!(
                        "{what}: `connect` has \"{s}\": the address must be HOST:PORT ({})",
                        address_why(e)
                    ),
                ));
            }
        }
        if self.connect_timeout.is_zero() {
            return Some((
                "connect_timeout",
                format!("{what}: `connect_timeout` must be more than 0"),
            ));
        }
        None
    }
}

/// Whether `o` looks like a serialized origin: `http://` or `https://`, a host, maybe a port,
/// nothing after.
fn origin_shape(o: &str) -> bool {
    let Some(rest) = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && !rest.ends_with(':')
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

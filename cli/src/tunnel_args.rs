//! The tunnel's commands that run an engine: `relay`, `source` and `destination`. Each builds
//! an [`EngineConfig`] with one table and runs it as `run` does.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueHint};
use splice_engine::{
    DestinationConfig, EngineConfig, RelayConfig, SourceConfig, TOKEN_ENV, TunnelProtocol,
};

use crate::common_args::Common;

#[derive(Args, Debug)]
pub(crate) struct RelayArgs {
    /// Where agents connect: TLS + WebSocket (IP:PORT).
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) listen: String,
    /// Certificate chain (PEM) the relay presents to agents.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) cert: PathBuf,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) key: PathBuf,
    /// Where the tunnel API (HTTP, JSON) listens; keep it on loopback unless it has
    /// --api-token-file.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8480")]
    pub(crate) api: String,
    /// A file holding the API's bearer token: every API call must then send
    /// `Authorization: Bearer <token>` [default: none, no token asked for].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) api_token_file: Option<PathBuf>,
    /// The tunnel registry's SQLite file; ":memory:" for a throwaway relay [default:
    /// $XDG_STATE_HOME/splice-engine/relay-NAME.sqlite, or ~/.local/state/..., NAME being
    /// --name, else --listen with `:` as `_`].
    #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub(crate) state: Option<String>,
    /// Name in logs and metrics [default: relay-LISTEN].
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Most services per tunnel [default: 3].
    #[arg(long, value_name = "N")]
    pub(crate) max_services: Option<usize>,
    /// The longest lifetime a tunnel may be opened with [default: 12h].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) max_lifetime: Option<Duration>,
    /// How long a closed or expired tunnel stays listed and describable before the registry
    /// forgets it [default: 3h].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) keep_closed: Option<Duration>,
    /// Bytes per second per tunnel and direction, at most [default: no limit].
    #[arg(long, value_name = "BYTES")]
    pub(crate) rate_limit: Option<u64>,
    /// An origin (scheme://host:port) whose pages may POST the token to /cookie and open the
    /// WebSocket with that cookie (repeatable) [default: none].
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub(crate) cors_origins: Vec<String>,
    /// Most agents connected at once [default: 100000].
    #[arg(long, value_name = "N")]
    pub(crate) max_peers: Option<usize>,
    /// Time allowed for an agent's TLS handshake and WebSocket upgrade [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) handshake_timeout: Option<Duration>,
    /// A peer silent this long is pinged [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) ping_after: Option<Duration>,
    /// A peer silent this long (no frame, no pong) is dropped [default: 1m 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Option<Duration>,
    /// CA certificates (PEM) for pairing by certificate: a source and a destination with
    /// certificates from these CAs and the same identity (URI SAN, else SHA-256 fingerprint)
    /// are paired without a token [default: none, tokens only].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) client_ca: Option<PathBuf>,
    /// CA certificates (PEM) of devices in standby (`destination --thing`) [default: none].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) device_ca: Option<PathBuf>,
    /// A certificate revocation list (PEM) for --client-ca and --device-ca certificates
    /// (repeatable) [default: none].
    #[arg(long = "client-crl", value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) client_crls: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// What both agents take.
#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// The relay (HOST:PORT). A name is looked up again before each reconnect; one that does
    /// not resolve yet (a device up before its DNS) is retried, not fatal.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) relay: String,
    /// CA certificates (PEM) to verify the relay with [default: the system's roots].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) ca: Option<PathBuf>,
    /// Trust exactly this key instead of a CA: sha256:<base64 or hex> of the relay's public
    /// key (SPKI) or whole certificate; repeatable. Names and dates are not checked.
    #[arg(long = "pin", value_name = "sha256:HASH", conflicts_with = "ca")]
    pub(crate) pin: Vec<String>,
    /// Server name to send (SNI) and verify [default: the host of --relay].
    #[arg(long, value_name = "NAME")]
    pub(crate) sni: Option<String>,
    /// A file holding the access token [default: --token, else the AWSIOT_TUNNEL_ACCESS_TOKEN
    /// environment variable].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) token_file: Option<PathBuf>,
    /// The access token itself [default: none]. A value given on the command line is visible
    /// to every user of the machine (ps, /proc/PID/cmdline): prefer --token-file or the
    /// AWSIOT_TUNNEL_ACCESS_TOKEN environment variable.
    #[arg(
        long,
        value_name = "TOKEN",
        conflicts_with = "token_file",
        allow_hyphen_values = true
    )]
    pub(crate) token: Option<String>,
    /// A client token (32 to 128 characters of A-Z a-z 0-9 -): the first connection binds the
    /// access token to it, and reconnects reuse both [default: none, the access token is
    /// single-use]. A value given on the command line is visible to every user of the machine
    /// (ps, /proc/PID/cmdline): prefer --token-file or the AWSIOT_TUNNEL_ACCESS_TOKEN
    /// environment variable for the access token, and --client-token-file for this one.
    #[arg(
        long,
        value_name = "TOKEN",
        allow_hyphen_values = true,
        conflicts_with = "client_token_file"
    )]
    pub(crate) client_token: Option<String>,
    /// A file holding the client token (as --client-token, which it replaces; not visible
    /// to other users) [default: none].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) client_token_file: Option<PathBuf>,
    /// The newest tunnel protocol version to speak; the agent falls back to the peer's
    /// [default: v3].
    #[arg(long, value_name = "VERSION", value_parser = ["v3", "v2", "v1"])]
    pub(crate) protocol: Option<String>,
    /// Keep reconnecting after the relay closes the tunnel or refuses the token (by default
    /// the agent exits then, as the AWS local proxy does).
    #[arg(long)]
    pub(crate) keep_trying: bool,
    /// Simultaneous local connections per service; one more is refused, with a warning in
    /// the log and a count in the metrics [default: 128, as the AWS local proxy].
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Name in logs and metrics [default: source-RELAY or destination-RELAY].
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// A client certificate (PEM chain) to present to the relay: a relay with --client-ca
    /// pairs a source and a destination with the same identity, and no token is needed
    /// [default: none].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath, requires = "identity_key")]
    pub(crate) identity_cert: Option<PathBuf>,
    /// The private key (PEM) of --identity-cert.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath, requires = "identity_cert")]
    pub(crate) identity_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct SourceArgs {
    #[command(flatten)]
    pub(crate) agent: AgentArgs,
    /// A service and where to accept its local connections: NAME=IP:PORT, repeatable; one bare
    /// IP:PORT is the single service of a V1 tunnel.
    #[arg(long, value_name = "NAME=IP:PORT", required = true)]
    pub(crate) listen: Vec<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args, Debug)]
pub(crate) struct DestinationArgs {
    #[command(flatten)]
    pub(crate) agent: AgentArgs,
    /// A service and where its streams go: NAME=HOST:PORT, repeatable; one bare HOST:PORT is
    /// the single service of a V1 tunnel. A name is looked up again after a failed connect;
    /// until one that does not resolve does, its streams are reset.
    #[arg(long, value_name = "NAME=HOST:PORT", required = true)]
    pub(crate) connect: Vec<String>,
    /// Time allowed to connect to each address of a service (a name's next address is tried
    /// after it) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) connect_timeout: Option<Duration>,
    /// Standby for this thing: no token; keep one connection to the relay (with the client
    /// certificate of --identity-cert, which the relay's --device-ca verifies) and connect
    /// each tunnel the relay opens for the thing, at once.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = ["token", "token_file", "client_token", "client_token_file"],
        requires = "identity_cert"
    )]
    pub(crate) thing: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

impl RelayArgs {
    pub(crate) fn into_config(self) -> EngineConfig {
        let mut r = RelayConfig::new(self.listen, self.cert, self.key, self.api);
        r.name = self.name.unwrap_or_default();
        r.api_token_file = self.api_token_file;
        r.state = self.state;
        if let Some(n) = self.max_services {
            r.max_services = n;
        }
        if let Some(d) = self.max_lifetime {
            r.max_lifetime = d;
        }
        if let Some(d) = self.keep_closed {
            r.keep_closed = d;
        }
        r.rate_limit = self.rate_limit;
        r.cors_origins = self.cors_origins;
        if let Some(n) = self.max_peers {
            r.max_peers = n;
        }
        if let Some(d) = self.handshake_timeout {
            r.handshake_timeout = d;
        }
        if let Some(d) = self.ping_after {
            r.ping_after = d;
        }
        if let Some(d) = self.idle_timeout {
            r.idle_timeout = d;
        }
        r.client_ca = self.client_ca;
        r.device_ca = self.device_ca;
        r.client_crls = self.client_crls;
        let mut cfg = EngineConfig::new().relay(r);
        self.common.apply(&mut cfg);
        cfg
    }
}

impl AgentArgs {
    /// The access token must come from somewhere: say where it could before anything starts.
    fn check_token(&self) -> anyhow::Result<()> {
        if self.identity_cert.is_none()
            && self.token.is_none()
            && self.token_file.is_none()
            && std::env::var_os(TOKEN_ENV).is_none_or(|v| v.is_empty())
        {
            anyhow::bail!(
                "command line: no access token: give --token-file FILE, or set {TOKEN_ENV} \
                 (or --token, which other users can see), or pair by certificate with \
                 --identity-cert FILE --identity-key FILE"
            );
        }
        Ok(())
    }

    fn protocol(&self) -> TunnelProtocol {
        self.protocol
            .as_deref()
            .map(|p| p.parse().expect("one of the possible values"))
            .unwrap_or_default()
    }
}

/// The fields both agent configurations have, set from `a`.
macro_rules! set_agent {
    ($c:expr, $a:expr) => {{
        let a = $a;
        let protocol = a.protocol();
        $c.name = a.name.unwrap_or_default();
        $c.ca = a.ca;
        $c.pin = a.pin;
        $c.sni = a.sni;
        $c.token = a.token.map(splice_engine::SecretText);
        $c.token_file = a.token_file;
        $c.client_token = a.client_token.map(splice_engine::SecretText);
        $c.client_token_file = a.client_token_file;
        $c.identity_cert = a.identity_cert;
        $c.identity_key = a.identity_key;
        $c.protocol = protocol;
        $c.keep_trying = a.keep_trying;
        if let Some(n) = a.max_connections {
            $c.connections_per_service = n;
        }
    }};
}

impl SourceArgs {
    pub(crate) fn into_config(self) -> anyhow::Result<EngineConfig> {
        self.agent.check_token()?;
        let mut s = SourceConfig::new(self.agent.relay.clone());
        s.listen = self.listen;
        set_agent!(s, self.agent);
        let mut cfg = EngineConfig::new().source(s);
        self.common.apply(&mut cfg);
        Ok(cfg)
    }
}

impl DestinationArgs {
    pub(crate) fn into_config(self) -> anyhow::Result<EngineConfig> {
        if self.thing.is_none() {
            self.agent.check_token()?;
        }
        let mut d = DestinationConfig::new(self.agent.relay.clone());
        d.connect = self.connect;
        d.thing = self.thing;
        if let Some(t) = self.connect_timeout {
            d.connect_timeout = t;
        }
        set_agent!(d, self.agent);
        let mut cfg = EngineConfig::new().destination(d);
        self.common.apply(&mut cfg);
        Ok(cfg)
    }
}

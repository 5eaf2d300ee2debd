//! An agent's configuration, checked and loaded once at start: the relay's address and TLS
//! settings, the access token (from `token`, `token_file` or [`TOKEN_ENV`]), the client token,
//! and the services with their addresses. Everything that reads a file or resolves a name
//! happens here, before a shard sees the agent.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use splice_proto::tunnel::Version;
use splice_proto::ws::{AccessToken, ClientToken, Mode};

use crate::config::{
    DestinationConfig, SecretText, SourceConfig, TOKEN_ENV, TunnelProtocol, read_secret_file,
    split_host_port, split_service,
};
use crate::error::{Bad, Error, Result, placed};
use crate::tls::material::{ClientTlsOptions, client_config};

/// One service of an agent: its name (empty for the bare V1 form) and its address (where a
/// source listens, where a destination connects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceSpec {
    pub name: String,
    /// As given: a source's `IP:PORT`, a destination's target `HOST:PORT`.
    pub given: String,
    /// A source's listening address (one); a destination target's addresses at start, none
    /// when its name did not resolve then (the agent looks it up again: `crate::resolve`).
    pub addrs: Vec<SocketAddr>,
    /// Why a destination's target did not resolve at start, when it did not.
    pub unresolved: Option<String>,
}

impl ServiceSpec {
    /// A source's listening address.
    pub(crate) fn listen(&self) -> SocketAddr {
        self.addrs[0]
    }
}

/// A source's or destination's settings, checked.
#[derive(Debug, Clone)]
pub(crate) struct AgentSpec {
    /// For logs and metrics.
    pub name: String,
    /// `source` or `destination` (the `local-proxy-mode`).
    pub mode: Mode,
    /// The relay's `HOST:PORT` as given (for logs).
    pub relay: String,
    /// The relay's port.
    pub port: u16,
    /// Every address the relay's name had at start (the agent looks it up again for each
    /// reconnect: `crate::resolve`). Empty when the name did not resolve at start: a device often
    /// starts before its network or DNS, so the agent keeps trying, as after a lost
    /// connection.
    pub relay_addrs: Vec<SocketAddr>,
    /// Why the relay's name did not resolve at start, when it did not.
    pub unresolved: Option<String>,
    /// The relay's host as given: the `Host` header.
    pub host: String,
    /// The name verified in the relay's certificate and sent as SNI.
    pub server_name: ServerName<'static>,
    /// With the client certificate of `identity_cert`, when given.
    pub tls: Arc<rustls::ClientConfig>,
    /// `None`: the agent is paired by its client certificate (`identity_cert`).
    pub token: Option<AccessToken>,
    pub client_token: Option<ClientToken>,
    pub services: Vec<ServiceSpec>,
    /// The newest format to speak; it offers the subprotocols from it down to V1.
    pub version: Version,
    pub keep_trying: bool,
    /// Negotiate half-close with a splice-engine peer.
    pub half_close: bool,
    /// Simultaneous local connections per service.
    pub connections_per_service: usize,
    /// Destination: time allowed to connect to a service.
    pub connect_timeout: Duration,
    /// Ping the relay after this long without a byte from it.
    pub ping_after: Duration,
    /// Drop the connection to the relay after this long without a byte from it.
    pub idle_timeout: Duration,
}

/// A name of an agent's settings that did not resolve at start, which the agent starts with
/// anyway (see [`AgentSpec::unresolved_names`]).
pub(crate) struct Unresolved<'a> {
    /// The key that gave it: `relay`, or `connect` for a destination's target.
    pub key: &'static str,
    /// The target's service (`None`: the relay).
    pub service: Option<&'a str>,
    /// `HOST:PORT` as given.
    pub given: &'a str,
    /// Why it did not resolve.
    pub why: &'a str,
}

impl Unresolved<'_> {
    /// What the agent does about it.
    pub(crate) fn consequence(&self) -> &'static str {
        match self.service {
            None => "the agent keeps trying",
            Some(_) => "its streams are reset until it does",
        }
    }
}

impl AgentSpec {
    /// The relay's name and the destination's targets that did not resolve at start: `check`
    /// warns of each, and a start logs each.
    pub(crate) fn unresolved_names(&self) -> Vec<Unresolved<'_>> {
        let relay = self.unresolved.as_deref().map(|why| Unresolved {
            key: "relay",
            service: None,
            given: &self.relay,
            why,
        });
        let targets = self.services.iter().filter_map(|s| {
            s.unresolved.as_deref().map(|why| Unresolved {
                key: "connect",
                service: Some(&s.name),
                given: &s.given,
                why,
            })
        });
        relay.into_iter().chain(targets).collect()
    }

    /// The service names, as the sans-IO agents take them.
    pub fn service_names(&self) -> Vec<&str> {
        self.services.iter().map(|s| s.name.as_str()).collect()
    }

    /// The services to announce in the upgrade request: the named ones. A relay refuses a
    /// name its tunnel lacks before the token is used (a typo must not cost a single-use
    /// token), and makes the tunnel of a destination paired by its certificate (no token)
    /// with them. The bare (V1) form announces nothing.
    pub fn announced(&self) -> Vec<&str> {
        let names = self.service_names();
        if names.contains(&"") {
            Vec::new()
        } else {
            names
        }
    }
}

/// The fields both agent tables share.
struct Common<'a> {
    bad: &'a Bad<'a>,
    /// `name`, or `<kind>-<relay>`.
    name: String,
    relay: &'a str,
    ca: Option<&'a Path>,
    ca_pem: Option<&'a str>,
    pin: &'a [String],
    sni: Option<&'a str>,
    token: Option<&'a SecretText>,
    token_file: Option<&'a Path>,
    client_token: Option<&'a SecretText>,
    client_token_file: Option<&'a Path>,
    identity_cert: Option<&'a Path>,
    identity_key: Option<&'a Path>,
    protocol: TunnelProtocol,
    keep_trying: bool,
    half_close: bool,
    connections_per_service: usize,
    ping_after: Duration,
    idle_timeout: Duration,
}

/// The [`Common`] view of an agent table: `SourceConfig` and `DestinationConfig` are declared
/// by one macro (config/tunnel.rs) with the same shared fields, so one expression reads both.
macro_rules! common {
    ($cfg:expr, $bad:expr) => {{
        let cfg = $cfg;
        Common {
            bad: $bad,
            name: cfg.display_name(),
            relay: &cfg.relay,
            ca: cfg.ca.as_deref(),
            ca_pem: cfg.ca_pem.as_deref(),
            pin: &cfg.pin,
            sni: cfg.sni.as_deref(),
            token: cfg.token.as_ref(),
            token_file: cfg.token_file.as_deref(),
            client_token: cfg.client_token.as_ref(),
            client_token_file: cfg.client_token_file.as_deref(),
            identity_cert: cfg.identity_cert.as_deref(),
            identity_key: cfg.identity_key.as_deref(),
            protocol: cfg.protocol,
            keep_trying: cfg.keep_trying,
            half_close: cfg.half_close,
            connections_per_service: cfg.connections_per_service,
            ping_after: cfg.ping_after,
            idle_timeout: cfg.idle_timeout,
        }
    }};
}

/// Checks and loads a `[[source]]`. `env_token` is the value of [`TOKEN_ENV`], if set; `bad`
/// makes the errors.
pub(crate) fn source_spec(
    cfg: &SourceConfig,
    env_token: Option<String>,
    bad: &Bad<'_>,
) -> Result<AgentSpec> {
    let common = common!(cfg, bad);
    let services = services(bad, "listen", &cfg.listen, |addr| {
        let a = addr.parse::<SocketAddr>().map_err(|e| e.to_string())?;
        Ok((vec![a], None))
    })?;
    build(common, Mode::Source, services, Duration::ZERO, env_token)
}

/// Checks and loads a `[[destination]]`. `env_token` is the value of [`TOKEN_ENV`], if set;
/// `bad` makes the errors.
pub(crate) fn destination_spec(
    cfg: &DestinationConfig,
    env_token: Option<String>,
    bad: &Bad<'_>,
) -> Result<AgentSpec> {
    let common = common!(cfg, bad);
    let services = services(bad, "connect", &cfg.connect, resolve)?;
    let env_token = match &cfg.thing {
        None => env_token,
        Some(thing) => standby_token(&common, thing)?,
    };
    if cfg.connect_timeout.is_zero() {
        return Err(bad(
            "connect_timeout",
            "`connect_timeout` must be more than 0".into(),
        ));
    }
    build(
        common,
        Mode::Destination,
        services,
        cfg.connect_timeout,
        env_token,
    )
}

/// A standby destination (`thing`) gets its tokens from the relay, one per tunnel: it takes
/// none (and not the environment's), and it needs its device certificate.
fn standby_token(c: &Common<'_>, thing: &str) -> Result<Option<String>> {
    splice_proto::tunnel::relay::notify::check_thing_name(thing)
        .map_err(|e| (c.bad)("thing", format!("`thing` {thing:?}: {e}")))?;
    if c.token.is_some()
        || c.token_file.is_some()
        || c.client_token.is_some()
        || c.client_token_file.is_some()
    {
        return Err((c.bad)(
            "thing",
            "`thing` gets its tokens from the relay: drop `token`, `token_file` and \
             `client_token` (or `client_token_file`)"
                .into(),
        ));
    }
    if c.identity_cert.is_none() || c.identity_key.is_none() {
        return Err((c.bad)(
            "thing",
            "`thing` needs the device's client certificate: `identity_cert` and `identity_key`"
                .into(),
        ));
    }
    Ok(None)
}

/// A destination's target: its addresses at start, and why it has none if it did not resolve
/// (no error: the target may come up later, and the agent looks the name up again).
fn resolve(addr: &str) -> std::result::Result<(Vec<SocketAddr>, Option<String>), String> {
    let (host, port) = split_host_port(addr).map_err(|e| e.to_string())?;
    Ok(crate::resolve::look_up(&host, port))
}

fn services(
    bad: &Bad<'_>,
    key: &'static str,
    list: &[String],
    parse: impl Fn(&str) -> std::result::Result<(Vec<SocketAddr>, Option<String>), String>,
) -> Result<Vec<ServiceSpec>> {
    if list.is_empty() {
        return Err(bad(
            key,
            format!("`{key}` needs at least one NAME=ADDR (or one bare ADDR)"),
        ));
    }
    let mut out: Vec<ServiceSpec> = Vec::new();
    for item in list {
        let (name, addr) = split_service(item);
        if name.is_empty() && list.len() > 1 {
            return Err(bad(
                key,
                format!(
                    "`{key}` {item:?}: a bare address is the one service of a V1 tunnel; \
                     with several services, name each (NAME=ADDR)"
                ),
            ));
        }
        if !name.is_empty() {
            splice_proto::tunnel::check_service_id(name)
                .map_err(|e| bad(key, format!("`{key}` {item:?}: bad service name: {e}")))?;
        }
        if out.iter().any(|s| s.name == name) {
            return Err(bad(key, format!("`{key}`: service {name:?} given twice")));
        }
        let (addrs, unresolved) =
            parse(addr).map_err(|why| bad(key, format!("`{key}` {item:?}: {why}")))?;
        out.push(ServiceSpec {
            name: name.to_string(),
            given: addr.to_string(),
            addrs,
            unresolved,
        });
    }
    Ok(out)
}

fn build(
    c: Common<'_>,
    mode: Mode,
    services: Vec<ServiceSpec>,
    connect_timeout: Duration,
    env_token: Option<String>,
) -> Result<AgentSpec> {
    let bad = c.bad;
    if c.ping_after.is_zero() || c.idle_timeout <= c.ping_after {
        return Err(bad(
            "idle_timeout",
            "`idle_timeout` must be longer than `ping_after`, and both more than 0".into(),
        ));
    }
    let relay_err = |e: &dyn std::fmt::Display| bad("relay", format!("`relay` {:?}: {e}", c.relay));
    let (host, port) = split_host_port(c.relay).map_err(|e| relay_err(&e))?;
    let (relay_addrs, unresolved) = crate::resolve::look_up(&host, port);
    let sni = c.sni.map_or(host.clone(), str::to_string);
    let server_name =
        ServerName::try_from(sni.clone()).map_err(|e| bad("sni", format!("`sni` {sni:?}: {e}")))?;
    let tls = tls(&c, sni)?;
    let has_identity = c.identity_cert.is_some();
    let token = match access_token(bad, c.token, c.token_file, env_token) {
        Ok(t) => Some(t),
        Err(_) if has_identity && c.token.is_none() && c.token_file.is_none() => None,
        Err(e) => return Err(e),
    };
    let client_token = client_token(&c)?;
    let version = match c.protocol {
        TunnelProtocol::V1 => Version::V1,
        TunnelProtocol::V2 => Version::V2,
        TunnelProtocol::V3 => Version::V3,
    };
    if version == Version::V1 && services.len() > 1 {
        return Err(bad(
            "protocol",
            "protocol v1 carries one service: give one, or speak v2 or v3".into(),
        ));
    }
    Ok(AgentSpec {
        name: c.name,
        mode,
        relay: c.relay.to_string(),
        port,
        relay_addrs,
        unresolved,
        host,
        server_name,
        tls,
        token,
        client_token,
        services,
        version,
        keep_trying: c.keep_trying,
        half_close: c.half_close,
        connections_per_service: c.connections_per_service,
        connect_timeout,
        ping_after: c.ping_after,
        idle_timeout: c.idle_timeout,
    })
}

/// The TLS config for the relay: verified with `ca`, `ca_pem`, `pin` or the system's roots,
/// verified for `sni`, with the identity's certificate, which the link presents when the relay
/// asks (a relay without client CAs does not ask). A failure names the key whose file or
/// value is at fault.
fn tls(c: &Common<'_>, sni: String) -> Result<Arc<rustls::ClientConfig>> {
    let bad = c.bad;
    if c.ca.is_some() && c.ca_pem.is_some() {
        return Err(bad("ca_pem", "`ca` and `ca_pem` exclude each other".into()));
    }
    let built = client_config(&ClientTlsOptions {
        ca: c.ca.map(Path::to_path_buf),
        ca_pem: c.ca_pem.map(str::to_string),
        pins: c.pin.to_vec(),
        cert: c.identity_cert.map(Path::to_path_buf),
        key: c.identity_key.map(Path::to_path_buf),
        server_name: Some(sni),
        ..ClientTlsOptions::default()
    });
    built.map(|b| b.config).map_err(|e| {
        let key = match &e {
            Error::Certificate { path, .. } if Some(path.as_path()) == c.identity_cert => {
                "identity_cert"
            }
            Error::Certificate { path, .. } if Some(path.as_path()) == c.identity_key => {
                "identity_key"
            }
            _ if !c.pin.is_empty() => "pin",
            _ if c.ca_pem.is_some() => "ca_pem",
            _ => "ca",
        };
        placed(bad, key, e)
    })
}

/// The client token: `client_token`, or the one in `client_token_file`; never logged.
fn client_token(c: &Common<'_>) -> Result<Option<ClientToken>> {
    let (key, text) = match (c.client_token, c.client_token_file) {
        (Some(_), Some(_)) => {
            return Err((c.bad)(
                "client_token_file",
                "`client_token` and `client_token_file` exclude each other".into(),
            ));
        }
        (Some(t), None) => ("client_token", t.0.clone()),
        (None, Some(path)) => {
            let text = read_secret_file(path).map_err(|why| {
                (c.bad)(
                    "client_token_file",
                    format!("`client_token_file` {}: {why}", path.display()),
                )
            })?;
            ("client_token_file", text)
        }
        (None, None) => return Ok(None),
    };
    // The value is a secret: say what is wrong, never what it is.
    ClientToken::new(text)
        .map(Some)
        .map_err(|e| (c.bad)(key, format!("`{key}`: {e}")))
}

/// The access token: `token`, else the file, else the environment; one of them, never logged.
fn access_token(
    bad: &Bad<'_>,
    token: Option<&SecretText>,
    file: Option<&Path>,
    env: Option<String>,
) -> Result<AccessToken> {
    let text = match (token, file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "token",
                "`token` and `token_file` exclude each other: give one".into(),
            ));
        }
        (Some(t), None) => t.0.trim().to_string(),
        (None, Some(path)) => read_secret_file(path).map_err(|why| {
            bad(
                "token_file",
                format!("`token_file` {}: {why}", path.display()),
            )
        })?,
        (None, None) => match env {
            Some(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                return Err(bad(
                    "token",
                    format!(
                        "no access token: set `token_file`, `token` or {TOKEN_ENV}, or pair by \
                         certificate with `identity_cert` and `identity_key`"
                    ),
                ));
            }
        },
    };
    let key = if file.is_some() {
        "token_file"
    } else {
        "token"
    };
    AccessToken::new(text).map_err(|e| bad(key, format!("access token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(_: &'static str, message: String) -> Error {
        Error::config("test", message)
    }

    fn source(listen: &[&str]) -> SourceConfig {
        SourceConfig {
            name: String::new(),
            relay: "127.0.0.1:4443".into(),
            ca: None,
            ca_pem: None,
            sni: Some("localhost".into()),
            token: Some(SecretText("tok".into())),
            token_file: None,
            client_token: None,
            client_token_file: None,
            listen: listen.iter().map(|s| s.to_string()).collect(),
            protocol: TunnelProtocol::V3,
            keep_trying: false,
            half_close: true,
            connections_per_service: 128,
            ping_after: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            identity_cert: None,
            identity_key: None,
            pin: Vec::new(),
        }
    }

    fn err(cfg: &SourceConfig, env: Option<&str>) -> String {
        source_spec(cfg, env.map(str::to_string), &bad)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn services_named_or_one_bare() {
        let spec =
            source_spec(&source(&["ssh=127.0.0.1:0", "web=127.0.0.1:0"]), None, &bad).unwrap();
        assert_eq!(spec.service_names(), ["ssh", "web"]);
        assert_eq!(spec.name, "source-127.0.0.1:4443");
        assert_eq!(spec.host, "127.0.0.1");
        let bare = source_spec(&source(&["127.0.0.1:0"]), None, &bad).unwrap();
        assert_eq!(bare.service_names(), [""]);
        assert!(err(&source(&["127.0.0.1:0", "web=127.0.0.1:0"]), None).contains("name each"));
        assert!(err(&source(&["a=127.0.0.1:0", "a=127.0.0.1:1"]), None).contains("twice"));
        assert!(err(&source(&["a b=127.0.0.1:0"]), None).contains("bad service name"));
        assert!(err(&source(&["a=nowhere"]), None).contains("\"a=nowhere\""));
        assert!(err(&source(&[]), None).contains("at least one"));
        let mut idle = source(&["127.0.0.1:0"]);
        idle.idle_timeout = idle.ping_after;
        assert!(err(&idle, None).contains("idle_timeout"));
        let mut v1 = source(&["a=127.0.0.1:0", "b=127.0.0.1:0"]);
        v1.protocol = TunnelProtocol::V1;
        assert!(err(&v1, None).contains("v1 carries one service"));
    }

    #[test]
    fn token_from_flag_file_or_env_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("splice-agent-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = source(&["127.0.0.1:0"]);
        cfg.token = None;
        assert!(err(&cfg, None).contains("AWSIOT_TUNNEL_ACCESS_TOKEN"));
        let spec = source_spec(&cfg, Some("from-env\n".into()), &bad).unwrap();
        assert_eq!(spec.token.as_ref().unwrap().secret(), "from-env");
        assert!(!format!("{spec:?}").contains("from-env"));

        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        cfg.token_file = Some(file.clone());
        let spec = source_spec(&cfg, Some("from-env".into()), &bad).unwrap();
        assert_eq!(spec.token.as_ref().unwrap().secret(), "from-file");
        std::fs::write(&file, "\n").unwrap();
        let e = err(&cfg, None);
        assert!(
            e.contains(&file.display().to_string()) && e.contains("empty"),
            "{e}"
        );
        cfg.token_file = Some(dir.join("missing"));
        assert!(err(&cfg, None).contains("missing"));
        cfg.token = Some(SecretText("x".into()));
        assert!(err(&cfg, None).contains("exclude each other"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An identity makes the token optional; the destination then announces its services,
    /// and a token given beside it is still sent (it wins at the relay).
    #[test]
    fn identity_without_a_token() {
        let pki = splice_test_pki::Pki::new();
        let mut cfg = source(&["a=127.0.0.1:0"]);
        cfg.token = None;
        cfg.identity_cert = Some(pki.client.cert.clone());
        cfg.identity_key = Some(pki.client.key.clone());
        let spec = source_spec(&cfg, None, &bad).expect("an identity needs no token");
        assert!(spec.token.is_none());
        assert_eq!(spec.announced(), ["a"], "its named services");
        let spec = source_spec(&cfg, Some("from-env".into()), &bad).unwrap();
        assert_eq!(spec.token.as_ref().unwrap().secret(), "from-env");
        cfg.identity_key = Some(pki.other_client.key.clone());
        let e = err(&cfg, None);
        assert!(e.contains("does not match"), "{e}");
        cfg.token_file = Some(pki.path().join("missing-token"));
        cfg.identity_key = Some(pki.client.key.clone());
        assert!(err(&cfg, None).contains("missing-token"));
    }

    #[test]
    fn ca_as_pem_text_or_file_not_both() {
        let mut cfg = source(&["127.0.0.1:0"]);
        let pki = splice_test_pki::Pki::new();
        cfg.ca_pem = Some(std::fs::read_to_string(&pki.ca.path).unwrap());
        source_spec(&cfg, None, &bad).expect("a CA given as PEM text loads");
        cfg.ca = Some("ca.pem".into());
        let e = err(&cfg, None);
        assert!(e.contains("`ca` and `ca_pem` exclude each other"), "{e}");
        cfg.ca = None;
        cfg.ca_pem = Some("not PEM".into());
        let e = err(&cfg, None);
        assert!(e.contains("ca_pem"), "the error names the key: {e}");
    }

    #[test]
    fn client_token_is_checked_and_redacted() {
        let mut cfg = source(&["127.0.0.1:0"]);
        cfg.client_token = Some(SecretText("short".into()));
        let e = err(&cfg, None);
        assert!(e.contains("client token") && !e.contains("short"), "{e}");
        let good = "a".repeat(32) + "-B9";
        cfg.client_token = Some(SecretText(good.clone()));
        let spec = source_spec(&cfg, None, &bad).unwrap();
        assert_eq!(spec.client_token.as_ref().unwrap().secret(), good);
        assert!(!format!("{spec:?}").contains(&good));

        // From a file (trimmed); not with `client_token`; a bad one is named, not shown.
        let dir = crate::relay::sqlite::tests::tempdir();
        let file = dir.join("client.token");
        std::fs::write(&file, format!("{good}\n")).unwrap();
        cfg.client_token_file = Some(file.clone());
        let e = err(&cfg, None);
        assert!(e.contains("exclude each other"), "{e}");
        cfg.client_token = None;
        let spec = source_spec(&cfg, None, &bad).unwrap();
        assert_eq!(spec.client_token.as_ref().unwrap().secret(), good);
        std::fs::write(&file, "not-a-client-token\n").unwrap();
        let e = err(&cfg, None);
        assert!(
            e.contains("`client_token_file`") && !e.contains("not-a-client-token"),
            "{e}"
        );
        cfg.client_token_file = Some(dir.join("missing"));
        let e = err(&cfg, None);
        assert!(
            e.contains("`client_token_file`") && e.contains("missing"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn destination_resolves_targets() {
        let cfg = DestinationConfig {
            name: "dev".into(),
            relay: "localhost:4443".into(),
            ca: None,
            ca_pem: None,
            sni: None,
            token: Some(SecretText("tok".into())),
            token_file: None,
            client_token: None,
            client_token_file: None,
            connect: vec!["ssh=localhost:22".into()],
            protocol: TunnelProtocol::V2,
            keep_trying: true,
            half_close: true,
            connections_per_service: 128,
            connect_timeout: Duration::from_secs(1),
            ping_after: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            thing: None,
            identity_cert: None,
            identity_key: None,
            pin: Vec::new(),
        };
        let spec = destination_spec(&cfg, None, &bad).unwrap();
        assert_eq!(spec.name, "dev");
        assert_eq!(spec.services[0].addrs[0].port(), 22);
        assert!(spec.services[0].addrs[0].ip().is_loopback());
        assert_eq!(spec.version, Version::V2);
        assert_eq!(spec.mode, Mode::Destination);

        // Standby: the relay gives the tokens; a token given too, or a bad thing name, is
        // refused with a reason.
        let pki = splice_test_pki::Pki::new();
        let standby = DestinationConfig {
            token: None,
            thing: Some("pump-7".into()),
            identity_cert: Some(pki.client.cert.clone()),
            identity_key: Some(pki.client.key.clone()),
            ..cfg.clone()
        };
        let spec = destination_spec(&standby, Some("from-env".into()), &bad).expect("no token");
        assert!(spec.token.is_none(), "not the environment's token either");
        let e = destination_spec(
            &DestinationConfig {
                identity_cert: None,
                ..standby.clone()
            },
            None,
            &bad,
        )
        .expect_err("a thing without a certificate")
        .to_string();
        assert!(
            e.contains("`thing` needs the device's client certificate"),
            "{e}"
        );
        let e = destination_spec(
            &DestinationConfig {
                token: Some(SecretText("t".into())),
                ..standby.clone()
            },
            None,
            &bad,
        )
        .expect_err("a token with a thing")
        .to_string();
        assert!(e.contains("`thing` gets its tokens from the relay"), "{e}");
        let e = destination_spec(
            &DestinationConfig {
                thing: Some("a b".into()),
                ..standby
            },
            None,
            &bad,
        )
        .expect_err("a bad thing name")
        .to_string();
        assert!(e.contains("`thing` \"a b\""), "{e}");
    }
}

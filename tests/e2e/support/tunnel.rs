//! A relay of ours, its API, and our agents, as the tunnel tests set them up: a
//! [`RelaySetup`] starts a relay (by `run --config` with a `[[relay]]` table, or by the
//! `relay` command) and hands back a [`Relay`] (its ports, its process, its API); an
//! [`AgentSetup`] writes one `[[source]]` or `[[destination]]` table and starts an engine
//! running it; [`ws_upgrade`] is a peer's WebSocket upgrade as the AWS local proxy sends it.

use tungstenite::client::IntoClientRequest;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::{Message, WebSocket};

use super::*;

/// A relay to start: the server certificate of a [`Pki`], a registry in memory, two shards.
pub struct RelaySetup<'a> {
    pki: &'a Pki,
    driver: String,
    port: Option<u16>,
    state: String,
    metrics: bool,
    /// More lines for the `[[relay]]` table (`run --config` only).
    lines: String,
    /// More flags (the `relay` command only).
    flags: Vec<(String, OsString)>,
}

/// A running relay; stops when dropped.
pub struct Relay {
    pub proc: Proc,
    /// Where agents connect (on 127.0.0.1).
    pub port: u16,
    pub api: SocketAddr,
    /// `/metrics`, if asked for.
    pub metrics: Option<SocketAddr>,
    /// The config file (`run --config` only).
    pub config: Option<PathBuf>,
}

impl<'a> RelaySetup<'a> {
    pub fn new(pki: &'a Pki, driver: &str) -> RelaySetup<'a> {
        RelaySetup {
            pki,
            driver: driver.to_string(),
            port: None,
            state: ":memory:".to_string(),
            metrics: false,
            lines: String::new(),
            flags: Vec::new(),
        }
    }

    /// Listens for agents on `port` (a free one otherwise).
    pub fn port(mut self, port: Option<u16>) -> Self {
        self.port = port;
        self
    }

    /// The registry at `state` (`:memory:` otherwise).
    pub fn state(mut self, state: &str) -> Self {
        self.state = state.to_string();
        self
    }

    /// Serves `/metrics` on a free port.
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// More lines for the `[[relay]]` table, each ending in a newline.
    pub fn lines(mut self, lines: &str) -> Self {
        self.lines.push_str(lines);
        self
    }

    /// One more flag of the `relay` command.
    pub fn flag(mut self, flag: &str, value: impl AsRef<OsStr>) -> Self {
        self.flags
            .push((flag.to_string(), value.as_ref().to_os_string()));
        self
    }

    /// Starts `run --config` with a `[[relay]]` table (written beside the PKI).
    pub fn run_config(self) -> Relay {
        assert!(self.flags.is_empty(), "flags are for the relay command");
        let (port, api) = (self.port.unwrap_or_else(free_port), free_port());
        let driver = &self.driver;
        let config = self.pki.dir.path().join(format!("relay-{port}-{api}.toml"));
        let toml = format!(
            "driver = \"{driver}\"\nthreads = 2\n\n[[relay]]\nname = \"r\"\n\
             listen = \"127.0.0.1:{port}\"\ncert = {:?}\nkey = {:?}\napi = \"127.0.0.1:{api}\"\n\
             state = {:?}\n{}",
            self.pki.server.cert.display().to_string(),
            self.pki.server.key.display().to_string(),
            self.state,
            self.lines,
        );
        write_file(&config, toml.as_bytes());
        let cmd = EngineCmd::new("run")
            .opt("--config", &config)
            .opt("--log-level", "info");
        let mut relay = self.start(cmd, port, api);
        relay.config = Some(config);
        relay
    }

    /// Starts the `relay` command (with [`RelaySetup::flag`]'s flags).
    pub fn command(self) -> Relay {
        assert!(self.lines.is_empty(), "lines are for a config file");
        let (port, api) = (self.port.unwrap_or_else(free_port), free_port());
        let mut cmd = EngineCmd::new("relay")
            .opt("--listen", localhost(port).to_string())
            .opt("--cert", &self.pki.server.cert)
            .opt("--key", &self.pki.server.key)
            .opt("--api", localhost(api).to_string())
            .opt("--state", &self.state);
        for (flag, value) in &self.flags {
            cmd = cmd.opt(flag, value);
        }
        let cmd = cmd.common(&self.driver);
        self.start(cmd, port, api)
    }

    fn start(&self, cmd: EngineCmd, port: u16, api: u16) -> Relay {
        let mut cmd = cmd
            .wait_port(port)
            .wait_port(api)
            .label(format!("relay ({})", self.driver));
        let metrics = self.metrics.then(free_port);
        if let Some(m) = metrics {
            cmd = cmd.metrics(m);
        }
        Relay {
            proc: cmd.start(),
            port,
            api: localhost(api),
            metrics: metrics.map(localhost),
            config: None,
        }
    }
}

impl Relay {
    /// Where agents connect.
    pub fn addr(&self) -> SocketAddr {
        localhost(self.port)
    }

    /// `/metrics` (the relay was started with [`RelaySetup::metrics`]).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.expect("a relay started with metrics")
    }

    /// One API call: status and JSON body (null when there is none).
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        api_request(self.api, method, path, body)
    }

    /// Opens a tunnel of `services`: its id and the source and destination tokens.
    pub fn open(&self, services: &[&str]) -> (String, String, String) {
        let body = serde_json::json!({ "destinationConfig": { "services": services } });
        let (status, json) = self.api("POST", "/tunnels", &body.to_string());
        assert_eq!(status, 200, "open a tunnel: {json}");
        let s = |k: &str| json[k].as_str().expect(k).to_string();
        (
            s("tunnelId"),
            s("sourceAccessToken"),
            s("destinationAccessToken"),
        )
    }

    /// Whether both peers of tunnel `id` are connected.
    pub fn both_connected(&self, id: &str) -> bool {
        let (status, json) = self.api("GET", &format!("/tunnels/{id}"), "");
        let t = &json["tunnel"];
        status == 200
            && t["sourceConnectionState"]["status"] == "CONNECTED"
            && t["destinationConnectionState"]["status"] == "CONNECTED"
    }
}

/// One HTTP/1.1 request to a relay's API at `addr`: status and JSON body (null when there is
/// none).
pub fn api_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = connect(addr);
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write an API request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the API's answer");
    let status: u16 = text[9..12].parse().expect("status");
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or_default();
    (status, json)
}

/// One agent of ours: a `[[source]]` (`listen = […]`) or `[[destination]]` (`connect = […]`)
/// table, named `src` or `dst`, with protocol v3 and no keep_trying unless told.
#[derive(Clone)]
pub struct AgentSetup {
    kind: &'static str,
    name: String,
    token: Option<String>,
    client_token: Option<String>,
    identity: Option<(PathBuf, PathBuf)>,
    services: Vec<String>,
    protocol: Option<String>,
    keep_trying: bool,
    lines: String,
    metrics: Option<u16>,
    ports: Vec<u16>,
    hosts: Option<PathBuf>,
    log_level: &'static str,
}

impl AgentSetup {
    /// A source with access token `token`.
    pub fn source(token: &str) -> AgentSetup {
        Self::new("source", "src", Some(token))
    }

    /// A destination with access token `token`.
    pub fn destination(token: &str) -> AgentSetup {
        Self::new("destination", "dst", Some(token))
    }

    /// A `kind` agent (`source` or `destination`) named `name` that pairs by its
    /// [`AgentSetup::identity`] certificate: no token, no protocol line, keeps trying.
    pub fn by_identity(kind: &'static str, name: &str, cert: &Path, key: &Path) -> AgentSetup {
        let mut a = Self::new(kind, name, None);
        a.identity = Some((cert.to_path_buf(), key.to_path_buf()));
        a.protocol = None;
        a.keep_trying = true;
        a
    }

    fn new(kind: &'static str, name: &str, token: Option<&str>) -> AgentSetup {
        AgentSetup {
            kind,
            name: name.to_string(),
            token: token.map(str::to_string),
            client_token: None,
            identity: None,
            services: Vec::new(),
            protocol: Some("v3".to_string()),
            keep_trying: false,
            lines: String::new(),
            metrics: None,
            ports: Vec::new(),
            hosts: None,
            log_level: "info",
        }
    }

    /// Named `name` (`src` or `dst` otherwise).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The services: `NAME=ADDR` (or `ADDR` alone for V1).
    pub fn services(mut self, services: Vec<String>) -> Self {
        self.services = services;
        self
    }

    /// A source listening for `service` on 127.0.0.1:`port` (waited for at start).
    pub fn listen(mut self, service: &str, port: u16) -> Self {
        self.services.push(format!("{service}=127.0.0.1:{port}"));
        self.ports.push(port);
        self
    }

    /// Waits for `ports` to listen at start.
    pub fn wait_ports(mut self, ports: &[u16]) -> Self {
        self.ports.extend_from_slice(ports);
        self
    }

    pub fn protocol(mut self, protocol: &str) -> Self {
        self.protocol = Some(protocol.to_string());
        self
    }

    pub fn client_token(mut self, token: Option<&str>) -> Self {
        self.client_token = token.map(str::to_string);
        self
    }

    pub fn keep_trying(mut self) -> Self {
        self.keep_trying = true;
        self
    }

    /// More lines for the table, each ending in a newline.
    pub fn lines(mut self, lines: &str) -> Self {
        self.lines.push_str(lines);
        self
    }

    /// Serves `/metrics` on `port`.
    pub fn metrics(mut self, port: u16) -> Self {
        self.metrics = Some(port);
        self
    }

    /// Logs at `level` (`info` otherwise).
    pub fn log_level(mut self, level: &'static str) -> Self {
        self.log_level = level;
        self
    }

    /// Runs with `hosts` as its `/etc/hosts` ([`EngineCmd::hosts`]).
    pub fn hosts(mut self, hosts: &Path) -> Self {
        self.hosts = Some(hosts.to_path_buf());
        self
    }

    /// The table, for an agent of relay `relay` that trusts `ca`.
    pub fn toml(&self, relay: SocketAddr, ca: &Path) -> String {
        let key = if self.kind == "source" {
            "listen"
        } else {
            "connect"
        };
        let line =
            |k: &str, v: Option<&String>| v.map(|v| format!("{k} = {v:?}\n")).unwrap_or_default();
        let path = |p: &Path| p.display().to_string();
        let (cert, key_file) = match &self.identity {
            Some((c, k)) => (Some(path(c)), Some(path(k))),
            None => (None, None),
        };
        let services: Vec<String> = self.services.iter().map(|s| format!("{s:?}")).collect();
        format!(
            "[[{kind}]]\nname = {name:?}\nrelay = \"{relay}\"\nca = {ca:?}\nsni = \"localhost\"\n\
             {token}{client_token}{cert}{key_file}{key} = [{services}]\n{protocol}\
             keep_trying = {keep_trying}\n{lines}",
            kind = self.kind,
            name = self.name,
            ca = path(ca),
            token = line("token", self.token.as_ref()),
            client_token = line("client_token", self.client_token.as_ref()),
            cert = line("identity_cert", cert.as_ref()),
            key_file = line("identity_key", key_file.as_ref()),
            services = services.join(", "),
            protocol = line("protocol", self.protocol.as_ref()),
            keep_trying = self.keep_trying,
            lines = self.lines,
        )
    }

    /// Starts an engine running this agent against `relay`, waiting for its ports to listen
    /// and for its log to say it started.
    pub fn start(&self, relay: SocketAddr, pki: &Pki, driver: &str) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("splice-e2e-agent-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join("agent.toml");
        fs::write(&path, self.toml(relay, &pki.ca.path)).expect("write the config");
        let mut cmd = EngineCmd::new("run")
            .opt("--config", &path)
            .common(driver)
            .set("--log-level", self.log_level)
            .label(format!("{} ({driver})", self.kind));
        for &p in &self.ports {
            cmd = cmd.wait_port(p);
        }
        if let Some(m) = self.metrics {
            cmd = cmd.metrics(m);
        }
        if let Some(h) = &self.hosts {
            cmd = cmd.hosts(h);
        }
        let proc = cmd.start();
        // The file is read at start: once the agent runs, the directory may go.
        assert!(
            proc.wait_log(SOON, |l| l.contains("agent started")),
            "the agent starts:\n{}",
            proc.log()
        );
        drop(dir);
        proc
    }
}

/// Whether an agent of ours has its tunnel connection up, by its log. A relay counts a peer
/// connected when it answers the upgrade, a moment before the agent has read the answer; a
/// source resets the connections it accepts until then.
pub fn connection_up(agent: &Proc) -> bool {
    agent.log().contains("tunnel connection up")
}

/// [`connection_up`] for agent `name` of an engine that runs several.
pub fn agent_up(engine: &Proc, name: &str) -> bool {
    let field = format!("agent={name} ");
    engine
        .log()
        .lines()
        .any(|l| l.contains("tunnel connection up") && l.contains(&field))
}

/// The upgrade of a peer (`/tunnel?local-proxy-mode=MODE`) over `tls` to the relay at `port`,
/// with `headers` (name, value) in order; the peer's reads time out after [`IO_TIMEOUT`].
pub fn ws_upgrade(
    tls: TlsStream,
    port: u16,
    mode: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocket<TlsStream>, tungstenite::Error> {
    let mut req = format!("wss://localhost:{port}/tunnel?local-proxy-mode={mode}")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).expect("header name");
        req.headers_mut()
            .append(name, HeaderValue::from_str(v).expect("header value"));
    }
    let (ws, _) = tungstenite::client(req, tls).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })?;
    ws.get_ref()
        .sock
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("timeout");
    Ok(ws)
}

/// A peer's next binary message (pings and pongs skipped); panics on anything else.
pub fn next_binary(ws: &mut WebSocket<TlsStream>) -> Vec<u8> {
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => return b.to_vec(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

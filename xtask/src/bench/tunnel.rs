//! The tunnel paths: `app -> source agent -> TLS -> relay -> TLS -> destination agent ->
//! backend`, all on loopback, with the routes `sink` and `echo` as two services of one tunnel
//! (the `echo` route stands in for `echo-resume`: there is no handshake per connection to
//! resume).
//!
//! - `tunnel`: splice-engine's `relay`, `source` and `destination` commands, the tunnel opened
//!   with `splice-engine tunnel open` (WebSocket with the AWS IoT Secure Tunneling protocol).
//! - `rathole`: rathole's server (the entry, where the services are exposed) and client (beside
//!   the backends), with its TLS transport. That is native-tls on OpenSSL, whose server side
//!   takes OpenSSL's Mozilla "intermediate v4" settings: TLS 1.2 only, the server's cipher order,
//!   ChaCha20-Poly1305 first; the library sets them after OpenSSL's configuration file is read,
//!   so unlike socat it cannot be pinned to TLS 1.3 AES-128-GCM. The start prints what it
//!   negotiates. It multiplexes nothing: each connection gets its own TLS data channel, from a
//!   pool of 8 the server keeps the client opening ahead.
//!
//! The `idle-tunnels` scenario: on `tunnel` it opens N more tunnels through the API and
//! connects both peers of each from this process (TLS, the WebSocket upgrade, then nothing),
//! and charges the relay's memory growth to the 2N peers. On `rathole` it starts a fresh server
//! and client with N services (at most [`RATHOLE_IDLE_TUNNELS_MAX`]): each is a control channel
//! plus the 8 pooled data channels rathole keeps open, and charges the server's growth to them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::Scenario;
use super::paths::{
    Ctx, Endpoints, Family, Kind, PathDef, RelayAddrs, Route, Running, free_port, output_of,
    wait_listening, word_after,
};
use super::procs::{self, Proc};

/// The scenarios a tunnel path runs: `resumed` is `handshakes` again (no handshake per
/// connection). `idle` and `idle-data` hold hundreds or thousands of connections through one
/// tunnel, and an agent takes 128 per service at once, as AWS's local proxy does
/// (`tcp.max_active_connections`): the tunnel's idle cost is `idle-tunnels`.
fn tunnel_supports(sc: Scenario) -> bool {
    matches!(
        sc,
        Scenario::Bulk | Scenario::BulkMulti | Scenario::Latency | Scenario::Handshakes
    )
}

/// The service names of the two routes.
const SERVICES: [&str; 2] = ["sink", "echo"];

/// The entry addresses, one per service, and the endpoints they make.
fn entries() -> Result<([SocketAddr; 2], Endpoints)> {
    let e = [free_port()?, free_port()?];
    Ok((
        e,
        Endpoints {
            sink: e[0],
            echo: e[1],
            echo_resume: e[1],
        },
    ))
}

/// Waits until a 32-byte echo through `echo` comes back whole: the tunnel is paired and
/// carries data (an agent may listen before its peer has connected).
fn wait_round_trip(echo: SocketAddr, ends: &mut [Proc]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let probe = *b"splice-engine bench tunnel probe";
    let mut last = String::new();
    while Instant::now() < deadline {
        for p in ends.iter_mut() {
            p.check_alive()?;
        }
        let attempt = (|| -> Result<()> {
            let mut s = TcpStream::connect_timeout(&echo, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(&probe)?;
            let mut back = [0u8; 32];
            s.read_exact(&mut back)?;
            if back != probe {
                bail!("the echo came back different");
            }
            Ok(())
        })();
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("no round trip through {echo} within 20 s (last: {last})")
}

/// The log level of our processes, as the chains' `log_level = "warn"`: no line per tunnel or
/// connection.
const LOG: [&str; 2] = ["--log-level", "warn"];
/// eBPF accounting off, as on the `splice-*` paths but `splice-ebpf`: the figures stay
/// comparable with runs before it existed.
const NO_EBPF: [&str; 2] = ["--ebpf", "off"];

/// splice-engine's relay and agents.
pub enum Tunnel {
    /// This tree's binary.
    Ours,
    /// The `--baseline` revision's binary, run exactly like [`Tunnel::Ours`] (`tunnel-base`).
    Base,
}

impl Tunnel {
    /// The binary this path runs.
    fn engine<'a>(&self, ctx: &'a Ctx) -> Option<&'a Path> {
        match self {
            Tunnel::Ours => Some(&ctx.engine),
            Tunnel::Base => ctx.base_engine.as_deref(),
        }
    }

    /// [`Self::engine`], once [`PathDef::check`] has passed.
    fn binary<'a>(&self, ctx: &'a Ctx) -> &'a Path {
        self.engine(ctx).expect("checked: a baseline was built")
    }

    /// `splice-engine SUB --help` succeeds for each of the commands the path runs.
    fn commands_exist(engine: &Path) -> Result<(), String> {
        for sub in ["relay", "tunnel", "source", "destination"] {
            let ok = Command::new(engine)
                .args([sub, "--help"])
                .output()
                .map_err(|e| format!("running {}: {e}", engine.display()))?
                .status
                .success();
            if !ok {
                return Err(format!("splice-engine has no `{sub}` command yet"));
            }
        }
        Ok(())
    }

    /// `splice-engine tunnel open` for `services`: the source's and the destination's tokens.
    fn open(engine: &Path, api: SocketAddr, services: &[&str]) -> Result<(String, String)> {
        let mut cmd = Command::new(engine);
        cmd.args([
            "tunnel",
            "open",
            "--api",
            &format!("http://{api}"),
            "--json",
        ]);
        for s in services {
            cmd.args(["--service", s]);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {}", crate::show(&cmd)))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                crate::show(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`tunnel open --json` printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        tokens(&v)
    }
}

/// `sourceAccessToken` and `destinationAccessToken` of an OpenTunnel answer.
fn tokens(v: &Value) -> Result<(String, String)> {
    let get = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .with_context(|| format!("no `{k}` in the OpenTunnel answer (fields: {})", keys(v)))
    };
    Ok((get("sourceAccessToken")?, get("destinationAccessToken")?))
}

/// The field names of a JSON object (never its values: they may be tokens).
fn keys(v: &Value) -> String {
    v.as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "not an object".into())
}

/// Writes a token readable by its owner only.
fn write_secret(ctx: &Ctx, name: &str, token: &str) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = ctx.file(name);
    let _ = std::fs::remove_file(&p);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .with_context(|| format!("creating {}", p.display()))?;
    f.write_all(token.as_bytes())?;
    Ok(p)
}

impl PathDef for Tunnel {
    fn name(&self) -> &'static str {
        match self {
            Tunnel::Ours => "tunnel",
            Tunnel::Base => "tunnel-base",
        }
    }
    fn kind(&self) -> Kind {
        Kind::Ours
    }
    fn family(&self) -> Family {
        Family::Tunnel
    }
    fn supports(&self, sc: Scenario) -> bool {
        // Bulk too: the sink's report comes back after the sender's FIN because our two
        // agents negotiate half-close (the AWS protocol has none).
        tunnel_supports(sc) || sc == Scenario::IdleTunnels
    }
    fn check(&self, ctx: &Ctx) -> Result<String, String> {
        let engine = self
            .engine(ctx)
            .ok_or("no --baseline given: nothing to compare with")?;
        Self::commands_exist(engine)?;
        let v = word_after(
            &output_of(&engine.to_string_lossy(), &["--version"])?,
            "splice-engine ",
        );
        Ok(match self {
            Tunnel::Ours => v,
            // splice-base-<commit>: the version alone would not tell the two apart.
            Tunnel::Base => format!(
                "{v} ({})",
                engine.file_name().unwrap_or_default().to_string_lossy()
            ),
        })
    }
    fn ends(&self, _: &Ctx, _: &[Route]) -> Result<[Command; 2]> {
        unreachable!("a tunnel has three processes: see start")
    }
    fn start(&self, ctx: &Ctx) -> Result<Running> {
        let relay_addrs = RelayAddrs {
            listen: free_port()?,
            api: free_port()?,
        };
        let device_ca = write_device_identity(ctx)?;
        let engine = self.binary(ctx);
        let mut relay_cmd = Command::new(engine);
        relay_cmd
            .arg("relay")
            .arg("--listen")
            .arg(relay_addrs.listen.to_string())
            .arg("--cert")
            .arg(ctx.cert())
            .arg("--key")
            .arg(ctx.key())
            .arg("--api")
            .arg(relay_addrs.api.to_string())
            .args(["--state", ":memory:"])
            .arg("--device-ca")
            .arg(device_ca)
            .args(NO_EBPF)
            .args(LOG);
        let mut relay = Proc::spawn(
            "tunnel relay",
            &mut relay_cmd,
            &ctx.file("tunnel-relay.log"),
        )?;
        wait_listening(relay_addrs.api, &mut relay)?;
        wait_listening(relay_addrs.listen, &mut relay)?;
        let (source_token, destination_token) = Self::open(engine, relay_addrs.api, &SERVICES)?;
        let relay_at = format!("localhost:{}", relay_addrs.listen.port());
        let agent = |sub: &str, token: PathBuf| {
            let mut cmd = Command::new(engine);
            cmd.arg(sub)
                .args(["--relay", &relay_at])
                .arg("--ca")
                .arg(ctx.ca())
                .arg("--token-file")
                .arg(token)
                .args(NO_EBPF)
                .args(LOG);
            cmd
        };
        let mut dest_cmd = agent(
            "destination",
            write_secret(ctx, "tunnel-destination.token", &destination_token)?,
        );
        for (service, backend) in SERVICES.iter().zip([ctx.sink, ctx.echo]) {
            dest_cmd.args(["--connect", &format!("{service}={backend}")]);
        }
        let (entry, endpoints) = entries()?;
        let mut source_cmd = agent(
            "source",
            write_secret(ctx, "tunnel-source.token", &source_token)?,
        );
        for (service, listen) in SERVICES.iter().zip(entry) {
            source_cmd.args(["--listen", &format!("{service}={listen}")]);
        }
        let destination = Proc::spawn(
            "tunnel destination",
            &mut dest_cmd,
            &ctx.file("tunnel-destination.log"),
        )?;
        let mut source = Proc::spawn(
            "tunnel source",
            &mut source_cmd,
            &ctx.file("tunnel-source.log"),
        )?;
        for e in entry {
            wait_listening(e, &mut source)?;
        }
        let mut ends = vec![source, relay, destination];
        wait_round_trip(endpoints.echo, &mut ends)?;
        Ok(Running {
            endpoints,
            ends,
            roles: vec!["source", "relay", "destination"],
            relay: Some(relay_addrs),
        })
    }
    fn idle_tunnels(
        &self,
        ctx: &Ctx,
        r: &mut Running,
        n: usize,
        figures: &mut BTreeMap<String, f64>,
    ) -> Result<()> {
        let addrs = r.relay.context("the tunnel path has no relay")?;
        let i = r
            .roles
            .iter()
            .position(|&x| x == "relay")
            .context("no relay process")?;
        idle_peers(ctx, addrs, r.ends[i].pid(), n, figures)
    }
}

/// Opens `n` tunnels on the relay at `addrs`, connects both peers of each, and puts the relay's
/// memory growth per peer into `figures`; then checks through the API that every peer was
/// still connected when it was measured (those connected before too).
fn idle_peers(
    ctx: &Ctx,
    addrs: RelayAddrs,
    relay_pid: i32,
    n: usize,
    figures: &mut BTreeMap<String, f64>,
) -> Result<()> {
    raise_nofile(3 * n as u64 + 512)?;
    // The path's own tunnel has its two agents connected.
    let already = connected_peers(addrs.api)?;
    let started = Instant::now();
    let mut peers = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let v = api_call(
            addrs.api,
            "POST",
            "/tunnels",
            r#"{"destinationConfig":{"services":["bench"]}}"#,
        )?;
        let (s, d) = tokens(&v)?;
        peers.push(("source", s));
        peers.push(("destination", d));
    }
    let open_secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let before = procs::group_memory(relay_pid);

    let tls = Arc::new(client_config(&ctx.ca())?);
    let workers = 4;
    let per = peers.len().div_ceil(workers);
    let connect_started = Instant::now();
    let held: Vec<TcpStream> = std::thread::scope(|scope| {
        let handles: Vec<_> = peers
            .chunks(per.max(1))
            .map(|chunk| {
                let tls = tls.clone();
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(mode, token)| connect_peer(addrs.listen, &tls, mode, token))
                        .collect::<Result<Vec<TcpStream>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("peer thread"))
            .collect::<Result<Vec<Vec<TcpStream>>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    let connect_secs = connect_started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2)); // let the relay settle
    let after = procs::group_memory(relay_pid);
    let connected = connected_peers(addrs.api)?;
    // Then as many devices in standby (`destination --thing`), on top of the peers.
    let device_tls = Arc::new(device_client_config(ctx)?);
    let standing: Vec<TcpStream> = (0..n)
        .map(|_| connect_standby(addrs.listen, &device_tls))
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(2));
    let with_standby = procs::group_memory(relay_pid);
    drop(standing);
    drop(held);
    let expected = 2 * n + already;
    if connected < expected {
        bail!(
            "the API shows {connected} connected peers after the measurement, not {expected}: \
             the relay dropped some of the idle peers"
        );
    }
    let count = (2 * n) as f64;
    figures.insert(
        "relay_kib_per_tunnel".into(),
        (after.pss_kib as f64 - before.pss_kib as f64) / n as f64,
    );
    figures.insert("tunnels".into(), n as f64);
    figures.insert(
        "relay_kib_per_peer".into(),
        (after.pss_kib as f64 - before.pss_kib as f64) / count,
    );
    figures.insert(
        "relay_rss_kib_per_peer".into(),
        (after.rss_kib as f64 - before.rss_kib as f64) / count,
    );
    figures.insert(
        "relay_kib_per_standby".into(),
        (with_standby.pss_kib as f64 - after.pss_kib as f64) / n as f64,
    );
    figures.insert("peers".into(), count);
    figures.insert("open_secs".into(), open_secs);
    figures.insert("connect_secs".into(), connect_secs);
    Ok(())
}

/// Raises this process's open-file limit to at least `want` (up to the hard limit).
fn raise_nofile(want: u64) -> Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    let cur = l.current.unwrap_or(u64::MAX);
    if cur >= want {
        return Ok(());
    }
    let max = l.maximum.unwrap_or(u64::MAX);
    if max < want {
        bail!("idle-tunnels needs {want} open files; the hard limit is {max}");
    }
    l.current = Some(want);
    setrlimit(Resource::Nofile, l).context("raising RLIMIT_NOFILE")?;
    Ok(())
}

/// One HTTP/1.1 request to the tunnel API; the JSON answer of a 200.
fn api_call(api: SocketAddr, method: &str, path: &str, body: &str) -> Result<Value> {
    let mut s = TcpStream::connect_timeout(&api, Duration::from_secs(5))
        .with_context(|| format!("connecting to the tunnel API at {api}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} {path}: no HTTP answer ({} bytes)", answer.len()))?;
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        bail!("{method} {path}: {status}: {}", rest.trim());
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("{method} {path}: a chunked answer (this client reads Content-Length bodies)");
    }
    serde_json::from_str(rest).with_context(|| format!("{method} {path}: not JSON"))
}

/// Peers the API's ListTunnels shows connected (sources and destinations).
fn connected_peers(api: SocketAddr) -> Result<usize> {
    let v = api_call(api, "GET", "/tunnels", "")?;
    let list = v["tunnelSummaries"]
        .as_array()
        .with_context(|| format!("no `tunnelSummaries` in ListTunnels (fields: {})", keys(&v)))?;
    if list
        .first()
        .is_some_and(|t| t.get("sourceConnectionState").is_none())
    {
        // ListTunnels' summaries may leave the states out (AWS's do): ask each tunnel.
        let mut n = 0;
        for t in list {
            let id = t["tunnelId"]
                .as_str()
                .context("a summary without tunnelId")?;
            let d = api_call(api, "GET", &format!("/tunnels/{id}"), "")?;
            n += count_connected(&d["tunnel"]);
        }
        return Ok(n);
    }
    Ok(list.iter().map(count_connected).sum())
}

fn count_connected(t: &Value) -> usize {
    ["sourceConnectionState", "destinationConnectionState"]
        .iter()
        .filter(|k| t[**k]["status"] == "CONNECTED" || t[**k] == "CONNECTED")
        .count()
}

/// A TLS client configuration that trusts the bench's CA.
fn client_config(ca: &Path) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Connects one peer: TLS, the WebSocket upgrade with its token, the 101. Returns the bare
/// socket: the peer then says nothing (what the relay may send waits in the socket's buffer).
fn connect_peer(
    relay: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    mode: &str,
    token: &str,
) -> Result<TcpStream> {
    let request = format!(
        "GET /tunnel?local-proxy-mode={mode} HTTP/1.1\r\nHost: localhost\r\n\
         Upgrade: websocket\r\nConnection: upgrade\r\n\
         Sec-WebSocket-Key: c3BsaWNlLWJlbmNoLWtleQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0\r\naccess-token: {token}\r\n\
         User-Agent: splice-engine-bench\r\n\r\n"
    );
    upgrade(relay, tls, &request, mode)
}

/// TLS to the relay, `request` (a WebSocket upgrade), and its 101 read to the end of its
/// headers; `who` names the peer in errors. Returns the bare socket.
fn upgrade(
    relay: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    request: &str,
    who: &str,
) -> Result<TcpStream> {
    let mut sock = TcpStream::connect_timeout(&relay, Duration::from_secs(10))
        .with_context(|| format!("connecting to the relay at {relay}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut conn = rustls::ClientConnection::new(tls.clone(), name)?;
    {
        let mut s = rustls::Stream::new(&mut conn, &mut sock);
        s.write_all(request.as_bytes())?;
        s.flush()?;
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 101") {
            bail!(
                "the relay answered the {who}'s upgrade with {:?}",
                status.trim()
            );
        }
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                bail!("the relay closed during the 101's headers");
            }
            if line == "\r\n" {
                break;
            }
        }
    }
    Ok(sock)
}

/// The thing the `idle-tunnels` scenario's standby devices stand by for (their certificate's
/// CN names it, as the relay's identity rule asks).
const STANDBY_THING: &str = "bench-fleet";

/// Makes a device CA and one device certificate for [`STANDBY_THING`] in the run's folder;
/// returns the CA's file (the relay's `--device-ca`).
fn write_device_identity(ctx: &Ctx) -> Result<PathBuf> {
    use splice_test_pki::{Authority, KeyType, Usage};
    let devices = Authority::new("splice-engine bench devices", KeyType::P256);
    let device = devices.issue(STANDBY_THING, &[], KeyType::P256, Usage::Client);
    ctx.write("tunnel-device.pem", &device.pem)?;
    ctx.write("tunnel-device.key", &device.key.pem())?;
    ctx.write("tunnel-devices-ca.pem", devices.cert_pem())
}

/// [`client_config`] with the device's certificate (see [`write_device_identity`]).
fn device_client_config(ctx: &Ctx) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(ctx.file("tunnel-device.pem"))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(ctx.file("tunnel-device.key"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ctx.ca())? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

/// Connects one device in standby: TLS with the device's certificate, `GET /notify` for
/// [`STANDBY_THING`], the 101. Returns the bare socket, which then says nothing.
fn connect_standby(relay: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Result<TcpStream> {
    let request = format!(
        "GET /notify?thing={STANDBY_THING} HTTP/1.1\r\nHost: localhost\r\n\
         Upgrade: websocket\r\nConnection: upgrade\r\n\
         Sec-WebSocket-Key: c3BsaWNlLWJlbmNoLWtleQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: splice.notify.v1\r\nUser-Agent: splice-engine-bench\r\n\r\n"
    );
    upgrade(relay, tls, &request, "standby device")
}

/// rathole with its TLS transport.
pub struct Rathole;

impl Rathole {
    /// `rathole` on PATH, else in cargo's bin directory (where `cargo install` puts it).
    fn bin() -> PathBuf {
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("rathole").is_file()))
            .unwrap_or(false);
        if on_path {
            return PathBuf::from("rathole");
        }
        std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .map(|d| d.join("bin/rathole"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("rathole"))
    }

    /// The server's identity as PKCS#12 (what its native-tls transport reads), made with
    /// OpenSSL from the bench's leaf, key and CA.
    fn identity(ctx: &Ctx) -> Result<PathBuf> {
        let out = ctx.file("rathole-identity.p12");
        let mut cmd = Command::new("openssl");
        cmd.args(["pkcs12", "-export", "-out"])
            .arg(&out)
            .arg("-inkey")
            .arg(ctx.key())
            .arg("-in")
            .arg(ctx.cert())
            .arg("-certfile")
            .arg(ctx.ca())
            .args(["-passout", "pass:bench"]);
        let o = cmd
            .output()
            .with_context(|| format!("running {}", crate::show(&cmd)))?;
        if !o.status.success() {
            bail!(
                "{} failed: {}",
                crate::show(&cmd),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(out)
    }
}

impl Rathole {
    /// The heads of the server's and the client's configurations (no services yet).
    fn confs(ctx: &Ctx, control: SocketAddr, identity: &Path) -> (String, String) {
        let server = format!(
            "[server]\nbind_addr = \"{control}\"\ndefault_token = \"bench\"\n\n\
             [server.transport]\ntype = \"tls\"\n[server.transport.tls]\npkcs12 = {:?}\n\
             pkcs12_password = \"bench\"\n",
            identity.display().to_string()
        );
        let client = format!(
            "[client]\nremote_addr = \"localhost:{}\"\ndefault_token = \"bench\"\n\n\
             [client.transport]\ntype = \"tls\"\n[client.transport.tls]\ntrusted_root = {:?}\n\
             hostname = \"localhost\"\n",
            control.port(),
            ctx.ca().display().to_string()
        );
        (server, client)
    }
}

impl PathDef for Rathole {
    fn name(&self) -> &'static str {
        "rathole"
    }
    fn kind(&self) -> Kind {
        Kind::Peer
    }
    fn family(&self) -> Family {
        Family::Tunnel
    }
    fn supports(&self, sc: Scenario) -> bool {
        tunnel_supports(sc) || sc == Scenario::IdleTunnels
    }
    fn check(&self, _: &Ctx) -> Result<String, String> {
        let bin = Self::bin();
        let out = Command::new(&bin).arg("--version").output().map_err(|e| {
            format!(
                "rathole is not installed ({e}); `cargo xtask bench --install-peers` installs it \
                 (cargo install rathole)"
            )
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("tls") {
            return Err("this rathole was built without its TLS transport".into());
        }
        Ok(word_after(&text, "Build Version:"))
    }
    fn ends(&self, _: &Ctx, _: &[Route]) -> Result<[Command; 2]> {
        unreachable!("see start")
    }
    fn start(&self, ctx: &Ctx) -> Result<Running> {
        let control = free_port()?;
        let (entry, endpoints) = entries()?;
        let identity = Self::identity(ctx)?;
        let (mut server, mut client) = Self::confs(ctx, control, &identity);
        for ((service, listen), backend) in SERVICES.iter().zip(entry).zip([ctx.sink, ctx.echo]) {
            server.push_str(&format!(
                "\n[server.services.{service}]\nbind_addr = \"{listen}\"\n"
            ));
            client.push_str(&format!(
                "\n[client.services.{service}]\nlocal_addr = \"{backend}\"\n"
            ));
        }
        let mut procs = Vec::new();
        for (end, text) in [("server", server), ("client", client)] {
            let conf = ctx.write(&format!("rathole-{end}.toml"), &text)?;
            let mut cmd = Command::new(Self::bin());
            cmd.arg(if end == "server" { "-s" } else { "-c" })
                .arg(conf)
                .env("RUST_LOG", "warn");
            procs.push(Proc::spawn(
                &format!("rathole {end}"),
                &mut cmd,
                &ctx.file(&format!("rathole-{end}.log")),
            )?);
        }
        wait_listening(control, &mut procs[0])?;
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("bench: rathole's TLS: {}", negotiated(control, &ctx.ca())));
        for e in entry {
            wait_listening(e, &mut procs[0])?;
        }
        wait_round_trip(endpoints.echo, &mut procs)?;
        Ok(Running {
            endpoints,
            ends: procs,
            roles: vec!["server", "client"],
            relay: None,
        })
    }
    fn idle_tunnels(
        &self,
        ctx: &Ctx,
        _r: &mut Running,
        n: usize,
        figures: &mut BTreeMap<String, f64>,
    ) -> Result<()> {
        let n = n.min(RATHOLE_IDLE_TUNNELS_MAX);
        let control = free_port()?;
        let identity = Self::identity(ctx)?;
        let (mut server, mut client) = Self::confs(ctx, control, &identity);
        for i in 0..n {
            server.push_str(&format!(
                "\n[server.services.t{i}]\nbind_addr = \"{}\"\n",
                free_port()?
            ));
            client.push_str(&format!(
                "\n[client.services.t{i}]\nlocal_addr = \"{}\"\n",
                ctx.echo
            ));
        }
        let spawn = |end: &str, text: &str| -> Result<Proc> {
            let conf = ctx.write(&format!("rathole-idle-{end}.toml"), text)?;
            let mut cmd = Command::new(Self::bin());
            cmd.arg(if end == "server" { "-s" } else { "-c" })
                .arg(conf)
                .env("RUST_LOG", "warn");
            Proc::spawn(
                &format!("rathole {end} (idle-tunnels)"),
                &mut cmd,
                &ctx.file(&format!("rathole-idle-{end}.log")),
            )
        };
        let mut server = spawn("server", &server)?;
        wait_listening(control, &mut server)?;
        std::thread::sleep(Duration::from_millis(500));
        let before = procs::group_memory(server.pid());
        let started = Instant::now();
        let mut client = spawn("client", &client)?;
        // Each service: its control channel and the pool of data channels.
        let want = n * (1 + RATHOLE_POOL);
        let deadline = started + Duration::from_secs(60 + n as u64 / 20);
        let mut have = 0;
        while have < want {
            server.check_alive()?;
            client.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "rathole has {have} of its {want} channels up after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
            have = established_to(control.port());
        }
        let connect_secs = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2)); // let the server settle
        let after = procs::group_memory(server.pid());
        let tunnels = n as f64;
        figures.insert(
            "relay_kib_per_tunnel".into(),
            (after.pss_kib as f64 - before.pss_kib as f64) / tunnels,
        );
        figures.insert(
            "relay_rss_kib_per_tunnel".into(),
            (after.rss_kib as f64 - before.rss_kib as f64) / tunnels,
        );
        figures.insert("tunnels".into(), tunnels);
        figures.insert("connections".into(), have as f64);
        figures.insert("connect_secs".into(), connect_secs);
        Ok(())
    }
}

/// Most services the `rathole` path opens in `idle-tunnels`: each costs the server 10 file
/// descriptors (a listener, its control channel and [`RATHOLE_POOL`] data channels). With 1000
/// on our 2-core VM, the server's accept queue overflowed as the client opened the 9000
/// channels at once, and rathole's client does not reopen a data channel it lost, so it never
/// came up whole.
pub const RATHOLE_IDLE_TUNNELS_MAX: usize = 200;

/// The data channels rathole's server keeps open per TCP service (`TCP_POOL_SIZE` in its
/// server.rs).
const RATHOLE_POOL: usize = 8;

/// Established TCP connections (IPv4) whose local port is `port`: the server's side of each.
fn established_to(port: u16) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "01"
        })
        .count()
}

/// The protocol and cipher a TLS server at `addr` picks for OpenSSL's client (which offers
/// what rathole's client offers), from `openssl s_client`.
fn negotiated(addr: SocketAddr, ca: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(ca)
        .stdin(std::process::Stdio::null())
        .output();
    let Ok(out) = out else {
        return "unknown (openssl s_client did not run)".into();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("New, "))
        .map(|l| l.replace(", Cipher is", ""))
        .unwrap_or_else(|| "unknown (no handshake)".into())
}

/// `cargo install rathole` unless it is there already (for `--install-peers`).
pub fn install_peers() -> Result<()> {
    if Command::new(Rathole::bin())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    crate::run_cmd(crate::cargo().args(["install", "rathole"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_aws_field_names_and_errors_never_show_them() {
        let v = serde_json::json!({
            "tunnelId": "t1", "sourceAccessToken": "S", "destinationAccessToken": "D"
        });
        assert_eq!(tokens(&v).unwrap(), ("S".into(), "D".into()));
        let v = serde_json::json!({"tunnelId": "t1", "sourceAccessToken": "SECRET"});
        let e = format!("{:#}", tokens(&v).unwrap_err());
        assert!(e.contains("destinationAccessToken"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
    }

    /// A one-connection TLS server with the bench's leaf: hands the request head it read to the
    /// test, answers `status`, then reports whether anything more arrived within 300 ms.
    fn upgrade_server(
        dir: &Path,
        status: &'static str,
    ) -> (
        SocketAddr,
        std::sync::mpsc::Receiver<String>,
        std::thread::JoinHandle<bool>,
    ) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("leaf.pem"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            let mut s = rustls::Stream::new(&mut conn, &mut sock);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            tx.send(String::from_utf8(head).unwrap()).unwrap();
            write!(
                s,
                "{status}\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
            )
            .unwrap();
            s.flush().unwrap();
            s.sock
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut more = [0u8; 1];
            matches!(s.read(&mut more), Ok(n) if n > 0)
        });
        (addr, rx, server)
    }

    #[test]
    fn an_idle_peer_is_tls_then_the_upgrade_with_its_mode_and_token_then_silence() {
        let dir = splice_test_pki::TempDir::new("xtask-tunnel-peer");
        super::super::write_certs(dir.path()).unwrap();
        let tls = Arc::new(client_config(&dir.join("ca.pem")).unwrap());

        let (addr, head, server) = upgrade_server(dir.path(), "HTTP/1.1 101 Switching Protocols");
        let sock = connect_peer(addr, &tls, "destination", "TOKEN-1").unwrap();
        let head = head.recv().unwrap();
        assert!(
            head.starts_with("GET /tunnel?local-proxy-mode=destination HTTP/1.1\r\n"),
            "{head}"
        );
        for h in [
            "access-token: TOKEN-1\r\n",
            "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0\r\n",
            "Upgrade: websocket\r\n",
            "Sec-WebSocket-Version: 13\r\n",
        ] {
            assert!(head.contains(h), "no {h:?} in {head}");
        }
        assert!(
            !server.join().unwrap(),
            "the peer sent more than the upgrade"
        );
        drop(sock);

        let (addr, _head, server) = upgrade_server(dir.path(), "HTTP/1.1 401 Unauthorized");
        let e = format!(
            "{:#}",
            connect_peer(addr, &tls, "source", "TOKEN-2").unwrap_err()
        );
        assert!(e.contains("401") && e.contains("source"), "{e}");
        assert!(!e.contains("TOKEN-2"), "{e}");
        let _ = server.join();
    }

    /// A one-request HTTP server answering `answer`; returns the request it read.
    fn http_server(answer: String) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Until the head and the body its Content-Length announces are in.
            loop {
                let n = sock.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map_or(0, |v| v.parse::<usize>().unwrap());
                    if body.len() >= len {
                        break;
                    }
                }
                assert!(n > 0, "the client closed early");
            }
            sock.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        });
        (addr, server)
    }

    #[test]
    fn the_api_client_posts_json_and_reads_the_answer_or_the_error() {
        let body = r#"{"tunnelId":"t","sourceAccessToken":"S","destinationAccessToken":"D"}"#;
        let (addr, server) = http_server(format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
        let v = api_call(addr, "POST", "/tunnels", r#"{"x":1}"#).unwrap();
        assert_eq!(tokens(&v).unwrap(), ("S".into(), "D".into()));
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /tunnels HTTP/1.1\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\n{\"x\":1}"), "{req}");

        let (addr, server) = http_server(
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 24\r\n\r\n{\"message\":\"no token\"}\n"
                .into(),
        );
        let e = format!("{:#}", api_call(addr, "GET", "/tunnels", "").unwrap_err());
        assert!(e.contains("401") && e.contains("no token"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn connection_states_are_counted_in_both_shapes() {
        let aws = serde_json::json!({
            "sourceConnectionState": {"status": "CONNECTED"},
            "destinationConnectionState": {"status": "DISCONNECTED"}
        });
        assert_eq!(count_connected(&aws), 1);
        let flat = serde_json::json!({
            "sourceConnectionState": "CONNECTED",
            "destinationConnectionState": "CONNECTED"
        });
        assert_eq!(count_connected(&flat), 2);
    }
}

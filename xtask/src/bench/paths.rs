//! The paths a bench run measures: `direct` (no proxy), splice-engine's client -> server chain
//! (per driver, and with kTLS), and the same chain through peers (nginx, HAProxy, stunnel,
//! socat).
//!
//! Every chain is `load -> client end -> TLS 1.3 AES-128-GCM (ECDSA P-256, verified) -> server
//! end -> backend`, with three routes: to the sink, to the echo backend, and to the echo backend
//! with TLS session resumption allowed (the other two forbid it, so every connection is a full
//! handshake). Adding a path means one [`PathDef`] implementation and one line in [`chains`]
//! (or in `super::all_paths`, for the paths of the other modules). The tunnel paths (relay and
//! agents, and the peers that do that job) are in `super::tunnel`, the engine inside a C or
//! Python program in `super::embed`.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Scenario;
use super::procs::Proc;

/// What kind of path it is, for ratios: `direct` is the ceiling, peers are the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No proxy.
    Direct,
    /// splice-engine.
    Ours,
    /// Another product.
    Peer,
    /// Not a TLS chain: a yardstick, left out of the best-peer comparison.
    Reference,
}

/// Which job a path does: peers are compared only with paths of the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A client end -> TLS -> server end chain.
    Chain,
    /// A tunnel: both agents dial out to a relay (or the peer's equivalent), which pairs them.
    Tunnel,
}

impl Family {
    /// Its name in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Family::Chain => "chain",
            Family::Tunnel => "tunnel",
        }
    }
}

/// Everything a path needs to start.
pub struct Ctx {
    /// Where configs and logs go.
    pub dir: PathBuf,
    /// The release `splice-engine` binary.
    pub engine: PathBuf,
    /// The backends.
    pub sink: SocketAddr,
    /// The echo backend.
    pub echo: SocketAddr,
    /// `splice-engine probe --json`.
    pub probe: serde_json::Value,
    /// The `--baseline` revision's release `splice-engine`, when one was given.
    pub base_engine: Option<PathBuf>,
}

impl Ctx {
    pub(super) fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(super) fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.file(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    /// The CA, leaf certificate and key (see [`super::certs`]).
    pub(super) fn ca(&self) -> PathBuf {
        self.file("ca.pem")
    }
    pub(super) fn cert(&self) -> PathBuf {
        self.file("leaf.pem")
    }
    pub(super) fn key(&self) -> PathBuf {
        self.file("leaf.key")
    }
}

/// Where the load generator connects on a started path.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// Leads to the sink; full handshakes.
    pub sink: SocketAddr,
    /// Leads to the echo backend; full handshakes.
    pub echo: SocketAddr,
    /// Leads to the echo backend; session resumption allowed.
    pub echo_resume: SocketAddr,
}

/// A started path: its entry points and its proxy processes.
pub struct Running {
    /// Entry points.
    pub endpoints: Endpoints,
    /// The client end then the server end (empty for `direct`); a tunnel's processes from the
    /// entry to the backend.
    pub ends: Vec<Proc>,
    /// What each of `ends` is (`client`, `server`; `source`, `relay`, `destination`), for the
    /// per-process figures.
    pub roles: Vec<&'static str>,
    /// A relay of ours: where its agents and its API listen.
    pub relay: Option<RelayAddrs>,
}

/// Where a relay listens.
#[derive(Debug, Clone, Copy)]
pub struct RelayAddrs {
    /// TLS + WebSocket, for the agents.
    pub listen: SocketAddr,
    /// The tunnel API (HTTP).
    pub api: SocketAddr,
}

/// One route through a chain: client end listens on `entry`, server end on `middle`.
pub struct Route {
    name: &'static str,
    entry: SocketAddr,
    middle: SocketAddr,
    backend: SocketAddr,
    resume: bool,
}

/// A way through from the load generator to the backends.
pub trait PathDef {
    /// Its name on the command line and in reports.
    fn name(&self) -> &'static str;
    /// Direct, ours or a peer.
    fn kind(&self) -> Kind;
    /// The job it does (a chain unless it says otherwise).
    fn family(&self) -> Family {
        Family::Chain
    }
    /// Whether scenario `sc` is measured on it.
    fn supports(&self, sc: Scenario) -> bool {
        sc != Scenario::IdleTunnels
    }
    /// The `idle-tunnels` scenario on started path `r`: `n` more tunnels with both peers
    /// connected and idle; the figures go into `figures`.
    fn idle_tunnels(
        &self,
        _ctx: &Ctx,
        _r: &mut Running,
        _n: usize,
        _figures: &mut std::collections::BTreeMap<String, f64>,
    ) -> Result<()> {
        bail!("{} does not run idle-tunnels", self.name())
    }
    /// The path whose figures this one's are divided by in the report (same repetition), as
    /// the embedding paths are by the CLI's client mode.
    fn compared_with(&self) -> Option<&'static str> {
        None
    }
    /// The program that makes this path's load, when it is not `splice-load` (a program with
    /// the engine inside it).
    fn load_gen(&self, _ctx: &Ctx) -> Option<super::LoadGen> {
        None
    }
    /// `Ok(version)` when it can run here, `Err(reason)` to skip it.
    fn check(&self, ctx: &Ctx) -> Result<String, String>;
    /// The two ends' commands for these routes (configs written under `ctx.dir`).
    fn ends(&self, ctx: &Ctx, routes: &[Route]) -> Result<[Command; 2]>;
    /// Starts it and waits until every entry and middle port accepts.
    fn start(&self, ctx: &Ctx) -> Result<Running> {
        let routes = [
            route("sink", ctx.sink, false)?,
            route("echo", ctx.echo, false)?,
            route("echo-resume", ctx.echo, true)?,
        ];
        let [mut client, mut server] = self.ends(ctx, &routes)?;
        let name = self.name();
        let mut server = Proc::spawn(
            &format!("{name} server end"),
            &mut server,
            &ctx.file(&format!("{name}-server.log")),
        )?;
        let mut client = Proc::spawn(
            &format!("{name} client end"),
            &mut client,
            &ctx.file(&format!("{name}-client.log")),
        )?;
        for r in &routes {
            wait_listening(r.middle, &mut server)?;
            wait_listening(r.entry, &mut client)?;
        }
        Ok(Running {
            endpoints: Endpoints {
                sink: routes[0].entry,
                echo: routes[1].entry,
                echo_resume: routes[2].entry,
            },
            ends: vec![client, server],
            roles: vec!["client", "server"],
            relay: None,
        })
    }
}

/// The chains of this module, in report order.
pub fn chains() -> Vec<Box<dyn PathDef>> {
    vec![
        Box::new(Direct),
        Box::new(Splice::Uring),
        Box::new(Splice::Epoll),
        Box::new(Splice::Ktls),
        Box::new(Splice::NoPoll),
        Box::new(Splice::Ebpf),
        Box::new(Splice::Base),
        Box::new(Nginx),
        Box::new(Haproxy),
        Box::new(Stunnel),
        Box::new(Socat),
        Box::new(PlainRelays),
    ]
}

fn route(name: &'static str, backend: SocketAddr, resume: bool) -> Result<Route> {
    Ok(Route {
        name,
        entry: free_port()?,
        middle: free_port()?,
        backend,
        resume,
    })
}

/// A loopback address with a port free right now, below the kernel's ephemeral range: a path
/// is restarted on the same port between scenarios, and a port from that range may meanwhile
/// be the local port of one of the load's own connections (then the listen fails with
/// `EADDRINUSE`). The e2e tests' `support::free_port` picks its ports the same way.
pub(super) fn free_port() -> Result<SocketAddr> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const LOW: usize = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > LOW + 2_000 {
        let span = ephemeral_low - LOW;
        let base = (std::process::id() as usize * 7919) % span;
        for _ in 0..span {
            let port = LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let addr = SocketAddr::from(([127, 0, 0, 1], u16::try_from(port)?));
            if TcpListener::bind(addr).is_ok() {
                return Ok(addr);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(super) fn wait_listening(addr: SocketAddr, p: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        p.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} is not listening on {addr} after 15 s", p.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pair(ends: Vec<Command>) -> Result<[Command; 2]> {
    ends.try_into()
        .map_err(|v: Vec<Command>| anyhow::anyhow!("a chain has two ends, not {}", v.len()))
}

/// What `bin ARGS` prints (stdout and stderr), or why it cannot run.
pub(super) fn output_of(bin: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin).args(args).output().map_err(|e| {
        format!("{bin} is not installed ({e}); `cargo xtask bench --install-peers` installs it")
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// The word after `prefix` on the first line of `text` that starts with it (a version number).
pub(super) fn word_after(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("unknown version")
        .to_string()
}

/// No proxy: the load generator talks to the backends.
struct Direct;

impl PathDef for Direct {
    fn name(&self) -> &'static str {
        "direct"
    }
    fn kind(&self) -> Kind {
        Kind::Direct
    }
    fn check(&self, _: &Ctx) -> Result<String, String> {
        Ok("no proxy".into())
    }
    fn ends(&self, _: &Ctx, _: &[Route]) -> Result<[Command; 2]> {
        unreachable!("direct starts nothing")
    }
    fn start(&self, ctx: &Ctx) -> Result<Running> {
        Ok(Running {
            endpoints: Endpoints {
                sink: ctx.sink,
                echo: ctx.echo,
                echo_resume: ctx.echo,
            },
            ends: Vec::new(),
            roles: Vec::new(),
            relay: None,
        })
    }
}

/// splice-engine at both ends.
enum Splice {
    Uring,
    Epoll,
    Ktls,
    /// io_uring with busy polling off (`busy_poll = "0s"`; the default polls up to 50 µs):
    /// what polling buys, and what it costs.
    NoPoll,
    /// io_uring with eBPF byte accounting on (`ebpf = "on"`; the other paths run with it
    /// off): what counting in the kernel costs (`splice-ebpf` ÷ `splice-uring` in the report).
    Ebpf,
    /// `splice-uring`, run by the `--baseline` revision's binary.
    Base,
}

impl Splice {
    /// The binary this path runs.
    fn engine<'a>(&self, ctx: &'a Ctx) -> Option<&'a Path> {
        match self {
            Splice::Base => ctx.base_engine.as_deref(),
            _ => Some(&ctx.engine),
        }
    }
}

impl PathDef for Splice {
    fn name(&self) -> &'static str {
        match self {
            Splice::Uring => "splice-uring",
            Splice::Epoll => "splice-epoll",
            Splice::Ktls => "splice-ktls",
            Splice::NoPoll => "splice-nopoll",
            Splice::Ebpf => "splice-ebpf",
            Splice::Base => "splice-base",
        }
    }
    fn kind(&self) -> Kind {
        Kind::Ours
    }
    fn check(&self, ctx: &Ctx) -> Result<String, String> {
        let p = &ctx.probe;
        let why = |k: &str| p[k].as_str().unwrap_or("unknown").to_string();
        let engine = self
            .engine(ctx)
            .ok_or("no --baseline given: nothing to compare with")?;
        match self {
            Splice::Uring | Splice::Base if p["io_uring"] != true => {
                Err(format!("no io_uring: {}", why("io_uring_reason")))
            }
            Splice::Ktls if p["ktls"] != true => Err(format!("no kTLS: {}", why("ktls_reason"))),
            Splice::Ebpf if p["ebpf"] != true => Err(format!("no eBPF: {}", why("ebpf_reason"))),
            _ => {
                let v = word_after(
                    &output_of(&engine.to_string_lossy(), &["--version"])?,
                    "splice-engine ",
                );
                Ok(match self {
                    // splice-base-<commit>: the version alone would not tell the two apart.
                    Splice::Base => format!(
                        "{v} ({})",
                        engine.file_name().unwrap_or_default().to_string_lossy()
                    ),
                    _ => v,
                })
            }
        }
    }
    fn ends(&self, ctx: &Ctx, routes: &[Route]) -> Result<[Command; 2]> {
        // Driver, kTLS, and any setting beyond the engine's defaults.
        // eBPF accounting off but on the path that measures it (the baseline's binary may
        // predate the key, and has no accounting anyway).
        let (driver, ktls, extra) = match self {
            Splice::Uring => ("uring", "off", "ebpf = \"off\"\n"),
            Splice::Base => ("uring", "off", ""),
            Splice::Epoll => ("epoll", "off", "ebpf = \"off\"\n"),
            Splice::Ktls => ("auto", "on", "ebpf = \"off\"\n"),
            Splice::NoPoll => ("uring", "off", "busy_poll = \"0s\"\nebpf = \"off\"\n"),
            Splice::Ebpf => ("uring", "off", "ebpf = \"on\"\n"),
        };
        let mut ends = Vec::new();
        for end in ["client", "server"] {
            let mut t =
                format!("driver = \"{driver}\"\nktls = \"{ktls}\"\nlog_level = \"warn\"\n{extra}");
            for r in routes {
                let (listen, connect) = if end == "client" {
                    (r.entry, format!("localhost:{}", r.middle.port()))
                } else {
                    (r.middle, r.backend.to_string())
                };
                write!(
                    t,
                    "\n[[forwarder]]\nname = \"{}\"\nmode = \"{end}\"\nlisten = \"{listen}\"\nconnect = \"{connect}\"\n\
                     max_connections = 100000\nresumption = {}\ntls_versions = [\"1.3\"]\n",
                    r.name, r.resume
                )?;
                if end == "client" {
                    writeln!(t, "ca = {:?}", ctx.ca())?;
                } else {
                    writeln!(t, "cert = {:?}\nkey = {:?}", ctx.cert(), ctx.key())?;
                }
            }
            let conf = ctx.write(&format!("{}-{end}.toml", self.name()), &t)?;
            let engine = self.engine(ctx).context("no --baseline binary")?;
            let mut cmd = Command::new(engine);
            cmd.arg("run").arg("--config").arg(conf);
            ends.push(cmd);
        }
        pair(ends)
    }
}

/// nginx's stream module: `proxy_ssl on` at the client end, `listen ... ssl` at the server end.
struct Nginx;

/// Where Debian's libnginx-mod-stream puts the module when nginx is built with it dynamic.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

impl Nginx {
    fn conf(ctx: &Ctx, end: &str, servers: &str) -> String {
        let module = Path::new(NGINX_STREAM_MODULE);
        let load = if module.exists() {
            format!("load_module {};\n", module.display())
        } else {
            String::new()
        };
        let d = ctx.dir.display();
        format!(
            "{load}daemon off;\nmaster_process on;\nworker_processes auto;\nworker_rlimit_nofile 20000;\n\
             pid {d}/nginx-{end}.pid;\nerror_log {d}/nginx-{end}.err warn;\n\
             events {{ worker_connections 20000; }}\nstream {{\n{servers}}}\n"
        )
    }
}

impl PathDef for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }
    fn kind(&self) -> Kind {
        Kind::Peer
    }
    fn check(&self, _: &Ctx) -> Result<String, String> {
        let all = output_of("nginx", &["-V"])?;
        if !all.contains("--with-stream") {
            return Err("nginx has no stream module".into());
        }
        if all.contains("--with-stream=dynamic") && !Path::new(NGINX_STREAM_MODULE).exists() {
            return Err(
                "nginx's stream module is not installed (Debian: libnginx-mod-stream)".into(),
            );
        }
        Ok(word_after(&all, "nginx version: nginx/"))
    }
    fn ends(&self, ctx: &Ctx, routes: &[Route]) -> Result<[Command; 2]> {
        let (mut c, mut s) = (String::new(), String::new());
        let tls = "TLSv1.3";
        let suite = "TLS_AES_128_GCM_SHA256";
        for r in routes {
            let reuse = if r.resume { "on" } else { "off" };
            write!(
                c,
                "  server {{ listen {}; proxy_pass {}; proxy_ssl on; proxy_ssl_protocols {tls};\n    \
                 proxy_ssl_conf_command Ciphersuites {suite}; proxy_ssl_verify on;\n    \
                 proxy_ssl_trusted_certificate {}; proxy_ssl_name localhost; proxy_ssl_server_name on;\n    \
                 proxy_ssl_session_reuse {reuse}; proxy_half_close on; }}\n",
                r.entry,
                r.middle,
                ctx.ca().display()
            )?;
            let cache = if r.resume {
                "ssl_session_cache shared:resume:10m; ssl_session_tickets on;"
            } else {
                "ssl_session_cache off; ssl_session_tickets off;"
            };
            write!(
                s,
                "  server {{ listen {} ssl; proxy_pass {}; ssl_certificate {}; ssl_certificate_key {};\n    \
                 ssl_protocols {tls}; ssl_conf_command Ciphersuites {suite}; {cache}\n    \
                 proxy_half_close on; }}\n",
                r.middle,
                r.backend,
                ctx.cert().display(),
                ctx.key().display()
            )?;
        }
        let mut ends = Vec::new();
        for (end, servers) in [("client", c), ("server", s)] {
            let conf = ctx.write(
                &format!("nginx-{end}.conf"),
                &Self::conf(ctx, end, &servers),
            )?;
            let mut cmd = Command::new("nginx");
            cmd.arg("-e")
                .arg(ctx.file(&format!("nginx-{end}.err")))
                .arg("-c")
                .arg(conf);
            ends.push(cmd);
        }
        pair(ends)
    }
}

/// HAProxy in TCP mode: `server ... ssl verify required` at the client end, `bind ... ssl crt`
/// at the server end.
struct Haproxy;

impl PathDef for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
    }
    fn kind(&self) -> Kind {
        Kind::Peer
    }
    fn check(&self, _: &Ctx) -> Result<String, String> {
        Ok(word_after(
            &output_of("haproxy", &["-v"])?,
            "HAProxy version ",
        ))
    }
    fn ends(&self, ctx: &Ctx, routes: &[Route]) -> Result<[Command; 2]> {
        // maxconn bounds the descriptors HAProxy asks for (two per connection and end).
        let head = "global\n  maxconn 8000\n  ssl-server-verify required\n\
                    defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n";
        let (mut c, mut s) = (head.to_string(), head.to_string());
        let tls = "ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256";
        for r in routes {
            let reuse = if r.resume { "" } else { " no-ssl-reuse" };
            write!(
                c,
                "listen {n}\n  bind {}\n  server s {} ssl verify required ca-file {} sni str(localhost) {tls}{reuse}\n",
                r.entry,
                r.middle,
                ctx.ca().display(),
                n = r.name
            )?;
            let tickets = if r.resume { "" } else { " no-tls-tickets" };
            write!(
                s,
                "listen {n}\n  bind {} ssl crt {} {tls}{tickets}\n  server s {}\n",
                r.middle,
                ctx.file("leaf-bundle.pem").display(),
                r.backend,
                n = r.name
            )?;
        }
        let mut ends = Vec::new();
        for (end, text) in [("client", c), ("server", s)] {
            let conf = ctx.write(&format!("haproxy-{end}.cfg"), &text)?;
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(conf);
            ends.push(cmd);
        }
        pair(ends)
    }
}

/// stunnel: `client = yes` services at the client end, plain services at the server end.
struct Stunnel;

impl Stunnel {
    fn bin() -> &'static str {
        if Path::new("/usr/bin/stunnel4").exists() {
            "stunnel4"
        } else {
            "stunnel"
        }
    }
}

impl PathDef for Stunnel {
    fn name(&self) -> &'static str {
        "stunnel"
    }
    fn kind(&self) -> Kind {
        Kind::Peer
    }
    fn check(&self, _: &Ctx) -> Result<String, String> {
        Ok(word_after(
            &output_of(Self::bin(), &["-version"])?,
            "stunnel ",
        ))
    }
    fn ends(&self, ctx: &Ctx, routes: &[Route]) -> Result<[Command; 2]> {
        let head = |end: &str| {
            format!(
                "foreground = yes\npid =\nsyslog = no\ndebug = 3\noutput = {}\n",
                ctx.file(&format!("stunnel-{end}.out")).display()
            )
        };
        let (mut c, mut s) = (head("client"), head("server"));
        let tls = "sslVersionMin = TLSv1.3\nciphersuites = TLS_AES_128_GCM_SHA256\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n";
        for r in routes {
            let resume = if r.resume { "yes" } else { "no" };
            write!(
                c,
                "[{n}]\nclient = yes\naccept = {}\nconnect = {}\nCAfile = {}\nverifyChain = yes\n\
                 checkHost = localhost\nsni = localhost\nsessionResume = {resume}\n{tls}",
                r.entry,
                r.middle,
                ctx.ca().display(),
                n = r.name
            )?;
            write!(
                s,
                "[{n}]\naccept = {}\nconnect = {}\ncert = {}\nkey = {}\n{tls}",
                r.middle,
                r.backend,
                ctx.cert().display(),
                ctx.key().display(),
                n = r.name
            )?;
        }
        let mut ends = Vec::new();
        for (end, text) in [("client", c), ("server", s)] {
            let conf = ctx.write(&format!("stunnel-{end}.conf"), &text)?;
            let mut cmd = Command::new(Self::bin());
            cmd.arg(conf);
            ends.push(cmd);
        }
        pair(ends)
    }
}

/// socat: one forked process per connection at each end. It cannot choose TLS 1.3 suites, so
/// an OpenSSL configuration file (`OPENSSL_CONF`) pins TLS 1.3 and AES-128-GCM like the others.
/// It keeps no session cache across its forked children, so `resumed` is full handshakes too.
struct Socat;

impl PathDef for Socat {
    fn name(&self) -> &'static str {
        "socat"
    }
    fn kind(&self) -> Kind {
        Kind::Peer
    }
    fn check(&self, _: &Ctx) -> Result<String, String> {
        socat_version()
    }
    fn ends(&self, ctx: &Ctx, routes: &[Route]) -> Result<[Command; 2]> {
        let conf = ctx.write(
            "socat-openssl.cnf",
            "openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = defaults\n\
             [defaults]\nMinProtocol = TLSv1.3\nCiphersuites = TLS_AES_128_GCM_SHA256\n",
        )?;
        // One socat process pair per route, all in one process group per end: a small shell
        // script starts them and waits, so stopping the group stops them all.
        let (mut c, mut s) = (String::from("set -e\n"), String::from("set -e\n"));
        for r in routes {
            writeln!(
                c,
                "socat -t 30 TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,backlog=4096,nodelay \
                 OPENSSL:localhost:{},cafile={},verify=1,nodelay &",
                r.entry.port(),
                r.middle.port(),
                ctx.ca().display()
            )?;
            writeln!(
                s,
                "socat -t 30 OPENSSL-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,backlog=4096,nodelay,cert={},key={},verify=0 \
                 TCP:{},nodelay &",
                r.middle.port(),
                ctx.cert().display(),
                ctx.key().display(),
                r.backend
            )?;
        }
        let [mut client, mut server] = script_ends(ctx, "socat", c, s)?;
        client.env("OPENSSL_CONF", &conf);
        server.env("OPENSSL_CONF", &conf);
        Ok([client, server])
    }
}

/// socat's version, or why it cannot run.
fn socat_version() -> Result<String, String> {
    Ok(word_after(&output_of("socat", &["-V"])?, "socat version "))
}

/// The two ends as `sh` running these scripts (the background processes they start, then
/// `wait`), so that stopping an end's process group stops all its processes.
fn script_ends(ctx: &Ctx, name: &str, client: String, server: String) -> Result<[Command; 2]> {
    let mut ends = Vec::new();
    for (end, mut text) in [("client", client), ("server", server)] {
        text.push_str("wait\n");
        let script = ctx.write(&format!("{name}-{end}.sh"), &text)?;
        let mut cmd = Command::new("sh");
        cmd.arg(script);
        ends.push(cmd);
    }
    pair(ends)
}

/// Two plain TCP relays (socat, no TLS) in place of the two ends: the cost of the chain's extra
/// processes and wake-ups with no work in them, the floor under any forwarder that sleeps
/// between messages on this machine.
struct PlainRelays;

impl PathDef for PlainRelays {
    fn name(&self) -> &'static str {
        "plain-relays"
    }
    fn kind(&self) -> Kind {
        Kind::Reference
    }
    fn check(&self, _: &Ctx) -> Result<String, String> {
        socat_version()
    }
    fn ends(&self, ctx: &Ctx, routes: &[Route]) -> Result<[Command; 2]> {
        let (mut c, mut s) = (String::from("set -e\n"), String::from("set -e\n"));
        for r in routes {
            for (script, listen, to) in [
                (&mut c, r.entry.port(), r.middle.to_string()),
                (&mut s, r.middle.port(), r.backend.to_string()),
            ] {
                writeln!(
                    script,
                    "socat -t 30 TCP-LISTEN:{listen},bind=127.0.0.1,reuseaddr,fork,backlog=4096,nodelay \
                     TCP:{to},nodelay &"
                )?;
            }
        }
        script_ends(ctx, "plain-relays", c, s)
    }
}

/// Installs the peers from the distribution's packages (Debian/Ubuntu: apt-get), without
/// letting the packages start their system services.
pub fn install_peers() -> Result<()> {
    let packages = [
        "nginx-light",
        "libnginx-mod-stream",
        "haproxy",
        "stunnel4",
        "socat",
    ];
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "--install-peers knows only apt-get; install {} by hand",
            packages.join(", ")
        );
    }
    let root = rustix::process::geteuid().is_root();
    // As root, a policy-rc.d that answers 101 keeps the packages' services from starting.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = root && !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").context("writing /usr/sbin/policy-rc.d")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new(if root { "apt-get" } else { "sudo" });
        if !root {
            cmd.args(["-n", "apt-get"]);
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        crate::run_cmd(&mut cmd)
    };
    let install: Vec<&str> = ["install", "-y", "-q", "--no-install-recommends"]
        .into_iter()
        .chain(packages)
        .collect();
    // The package lists may be missing or stale on a fresh machine: update once and retry.
    let result = apt(&install).or_else(|_| {
        apt(&["update", "-q"])?;
        apt(&install)
    });
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result
}

//! `splice-engine`: the command-line front end. It parses flags and files into an
//! [`EngineConfig`], starts the [`Engine`], and turns signals into reloads and drains.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use splice_engine::{DriverKind, Engine, EngineConfig, ForwarderConfig, KtlsMode, Mode};

/// Encrypted TCP forwarding on an io_uring data plane with kernel TLS offload.
///
/// client: plain TCP in, TLS out. server: TLS in, plain TCP out. run: many of both from a file.
/// demo: a self-contained tour on loopback. probe: which kernel fast paths this machine has.
#[derive(Parser, Debug)]
#[command(name = "splice-engine", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Accept plain TCP and forward each connection over TLS to an upstream.
    Client(ClientArgs),
    /// Terminate TLS (optionally requiring client certificates) and forward plain TCP.
    Server(ServerArgs),
    /// Run many forwarders from a TOML file; SIGHUP reloads it, SIGTERM drains and exits.
    Run(RunArgs),
    /// Create throwaway certificates, chain client -> server -> echo on loopback, push data
    /// through, and print what happened.
    Demo(DemoArgs),
    /// Report which kernel fast paths this machine offers (io_uring, kernel TLS and its ciphers)
    /// and what `--driver auto` / `--ktls auto` would choose.
    Probe(ProbeArgs),
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Flags every subcommand has.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Shard threads (default: the number of cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Data-plane driver: auto (io_uring when the kernel allows it, else epoll), uring, epoll.
    #[arg(long, value_name = "KIND", env = "SPLICE_DRIVER")]
    driver: Option<DriverKind>,
    /// Kernel TLS: auto (use it when the kernel has it), on (require it), off.
    #[arg(long, value_name = "MODE")]
    ktls: Option<KtlsMode>,
    /// Log level (error, warn, info, debug, trace) or a filter directive.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<String>,
    /// On SIGTERM/SIGINT, how long open connections may take to finish (e.g. 10s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,
    /// Busy polling: the longest a shard that ran out of work polls before it sleeps (default
    /// 50us; 0 turns it off). The window adapts: it grows while packets keep arriving soon
    /// after the shard went idle and shrinks to nothing for idle or sparse traffic and on a
    /// contended CPU. Lower latency for request/response traffic, for some CPU.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    busy_poll: Option<Duration>,
}

/// Flags of one forwarder (client and server subcommands).
#[derive(Args, Debug, Clone)]
struct ForwarderArgs {
    /// Address to accept connections on (IP:PORT; port 0 picks a free port).
    #[arg(long, value_name = "IP:PORT")]
    listen: String,
    /// Where to forward connections (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    connect: String,
    /// Name in logs and metrics (default: MODE-LISTEN).
    #[arg(long)]
    name: Option<String>,
    /// ALPN protocol to offer (client) or accept (server); repeatable.
    #[arg(long = "alpn", value_name = "PROTOCOL")]
    alpn: Vec<String>,
    /// Allowed TLS version, 1.2 or 1.3; repeatable (default: both).
    #[arg(long = "tls-version", value_name = "VERSION", value_parser = ["1.2", "1.3"])]
    tls_versions: Vec<String>,
    /// Most connections open at once; more are refused (reset).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Time allowed to connect to the upstream (e.g. 5s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// Time allowed for the TLS handshake (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Turn TLS session resumption off: every connection does a full handshake.
    #[arg(long)]
    no_resumption: bool,
    /// Expect a PROXY protocol header (v1 or v2) from a load balancer on every accepted
    /// connection; the client address it carries is used in logs and in --send-proxy.
    #[arg(long)]
    accept_proxy: bool,
}

#[derive(Args, Debug)]
struct ClientArgs {
    #[command(flatten)]
    fwd: ForwarderArgs,
    /// CA certificates (PEM) to verify the upstream with (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Server name to send (SNI) and verify (default: the host of --connect).
    #[arg(long, value_name = "NAME")]
    sni: Option<String>,
    /// Client certificate chain (PEM) to present; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct ServerArgs {
    #[command(flatten)]
    fwd: ForwarderArgs,
    /// Certificate chain (PEM) to present.
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of --cert.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// CA certificates (PEM): require client certificates issued by them.
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Send a PROXY protocol header (v1 or v2) to the backend, so it sees the client address.
    #[arg(long, value_name = "VERSION")]
    send_proxy: Option<splice_engine::config::ProxyVersion>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The configuration file (TOML); see the README for its keys.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Bytes to push through the chain each way (e.g. 64MiB, 1GiB, 1000000).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    bytes: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[command(flatten)]
    common: Common,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    num.trim()
        .parse::<u64>()
        .map(|n| n * mul)
        .map_err(|e| format!("{s:?} is not a size: {e}"))
}

impl ForwarderArgs {
    fn into_config(self, mode: Mode) -> ForwarderConfig {
        let mut f = ForwarderConfig::new(mode, self.listen, self.connect);
        f.name = self.name.unwrap_or_default();
        f.alpn = self.alpn;
        f.tls_versions = self.tls_versions;
        if let Some(n) = self.max_connections {
            f.max_connections = n;
        }
        if let Some(t) = self.connect_timeout {
            f.connect_timeout = t;
        }
        if let Some(t) = self.handshake_timeout {
            f.handshake_timeout = t;
        }
        f.resumption = !self.no_resumption;
        f.accept_proxy = self.accept_proxy;
        f
    }
}

impl Common {
    /// Flags override the file.
    fn apply(&self, cfg: &mut EngineConfig) {
        if self.threads.is_some() {
            cfg.threads = self.threads;
        }
        if let Some(d) = self.driver {
            cfg.driver = d;
        }
        if let Some(k) = self.ktls {
            cfg.ktls = k;
        }
        if self.log_level.is_some() {
            cfg.log_level = self.log_level.clone();
        }
        if self.metrics.is_some() {
            cfg.metrics = self.metrics.clone();
        }
        if let Some(d) = self.busy_poll {
            cfg.busy_poll = d;
        }
        if let Some(d) = self.drain_timeout {
            cfg.drain_timeout = d;
        }
    }
}

/// How to rebuild the configuration on SIGHUP.
enum Source {
    File(PathBuf, Common),
    Fixed(EngineConfig),
}

impl Source {
    fn load(&self) -> splice_engine::Result<EngineConfig> {
        match self {
            Source::File(path, common) => {
                let mut cfg = EngineConfig::from_file(path)?;
                common.apply(&mut cfg);
                cfg.validate(&path.display().to_string())?;
                Ok(cfg)
            }
            Source::Fixed(cfg) => Ok(cfg.clone()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, naming the file, key or address.
            let msg = format!("{e}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `splice-engine probe`: what the kernel offers, found the same way the engine finds it at start.
fn probe(json: bool) {
    let uring = splice_engine::driver::probe_uring();
    let ktls = splice_engine::sys::ktls::probe();
    let ciphers: Vec<&str> = [
        (ktls.aes_128_gcm, "AES-128-GCM"),
        (ktls.aes_256_gcm, "AES-256-GCM"),
        (ktls.chacha20_poly1305, "CHACHA20-POLY1305"),
    ]
    .into_iter()
    .filter_map(|(ok, name)| ok.then_some(name))
    .collect();
    if json {
        let out = serde_json::json!({
            "kernel": kernel_release(),
            "io_uring": uring.is_ok(),
            "io_uring_reason": uring.as_ref().err(),
            "ktls": ktls.available,
            "ktls_ciphers": ciphers,
            "ktls_reason": ktls.reason,
        });
        println!("{out}");
        return;
    }
    println!("kernel:   Linux {}", kernel_release());
    match &uring {
        Ok(()) => println!("io_uring: yes (--driver auto uses io_uring)"),
        Err(e) => println!("io_uring: no, {e} (--driver auto uses epoll)"),
    }
    if ktls.available {
        println!(
            "kTLS:     yes, {} (--ktls auto hands these sessions to the kernel)",
            ciphers.join(", ")
        );
    } else {
        println!("kTLS:     no (--ktls auto keeps TLS in user space)");
    }
    if let Some(r) = &ktls.reason {
        println!("          {r}");
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (source, common) = match cli.command {
        Command::Client(a) => {
            let mut f = a.fwd.into_config(Mode::Client);
            f.ca = a.ca;
            f.sni = a.sni;
            f.cert = a.cert;
            f.key = a.key;
            let mut cfg = EngineConfig::default();
            cfg.forwarders.push(f);
            a.common.apply(&mut cfg);
            cfg.validate("command line")?;
            (Source::Fixed(cfg), a.common)
        }
        Command::Server(a) => {
            let mut f = a.fwd.into_config(Mode::Server);
            f.cert = Some(a.cert);
            f.key = Some(a.key);
            f.client_ca = a.client_ca;
            f.send_proxy = a.send_proxy;
            let mut cfg = EngineConfig::default();
            cfg.forwarders.push(f);
            a.common.apply(&mut cfg);
            cfg.validate("command line")?;
            (Source::Fixed(cfg), a.common)
        }
        Command::Run(a) => (Source::File(a.config, a.common.clone()), a.common),
        Command::Probe(a) => {
            probe(a.json);
            return Ok(());
        }
        Command::Demo(a) => {
            let mut cfg = EngineConfig::default();
            a.common.apply(&mut cfg);
            splice_engine::logging::init(
                Some(cfg.log_level.as_deref().unwrap_or("warn")),
                a.common.log_format == "json",
            )?;
            let report = splice_engine::demo::run(cfg, a.bytes, a.connections)?;
            println!("{report}");
            return Ok(());
        }
    };
    let cfg = source.load()?;
    splice_engine::logging::init(cfg.log_level.as_deref(), common.log_format == "json")?;
    // Signals are registered before the engine starts so none is lost in between.
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let drain = cfg.drain_timeout;
    let engine = Engine::start(cfg)?;
    tracing::info!(driver = ?engine.driver(), ktls = engine.ktls_enabled(), "ready");
    splice_engine::systemd::ready();
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                splice_engine::systemd::reloading();
                match source.load().and_then(|cfg| engine.reload(cfg)) {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "reload failed; the previous configuration stays")
                    }
                }
                splice_engine::systemd::ready();
            }
            _ => {
                splice_engine::systemd::stopping();
                let drain = match source.load() {
                    Ok(c) => c.drain_timeout,
                    Err(_) => drain,
                };
                engine.shutdown(drain);
                return Ok(());
            }
        }
    }
    Ok(())
}

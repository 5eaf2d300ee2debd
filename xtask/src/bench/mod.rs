//! `cargo xtask bench`: splice-engine side by side with direct connections and the tools people
//! use today, measured in one run on this machine.
//!
//! It builds the engine and the load generator (`splice-load`, from `benches/`) in release mode,
//! starts the sink and echo backends, starts every path that can run here (see [`paths`]), and
//! runs each scenario on each path, repetition by repetition (rep 1 of every path, then rep 2),
//! so that a noisy machine hits every path alike. Ratios against `direct` and the best peer are
//! taken within each repetition, then summarised by their median (see [`report`]).
//!
//! The tunnel paths ([`tunnel`]: splice-engine's relay and agents, rathole) run the scenarios
//! that mean something for a tunnel, and are compared only with each other. The embedding
//! paths ([`embed`]: the engine inside a C or a Python program) make their own load, and are
//! compared with the CLI's client mode.

mod baseline;
mod embed;
mod paths;
mod procs;
mod report;
mod svg;
mod tunnel;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;
use serde_json::{Value, json};

use paths::{Endpoints, PathDef};
use procs::Proc;

/// Load tests: throughput, latency, handshakes and idle memory, per path, with ratios.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask bench")]
pub struct Args {
    /// Scenarios to run, comma-separated (default: all). One of: bulk, bulk-multi, latency,
    /// handshakes, resumed, idle, idle-data, idle-tunnels.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Paths to run, comma-separated (default: all that can run here). One of: direct,
    /// splice-uring, splice-epoll, splice-ktls, splice-nopoll, splice-ebpf, splice-base, nginx,
    /// haproxy, stunnel, socat, plain-relays, tunnel, tunnel-base, rathole, c-connect,
    /// py-connect.
    #[arg(long, value_delimiter = ',')]
    paths: Vec<String>,
    /// Also measure splice-engine as built from this git revision (a commit, tag or branch), as
    /// the path `splice-base`, run exactly like `splice-uring`, and (when `tunnel` runs) as
    /// `tunnel-base`, run exactly like `tunnel`, in the same repetitions.
    #[arg(long, value_name = "REV")]
    baseline: Option<String>,
    /// Seconds each timed measurement runs (default 5; 1 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Repetitions (default 3; 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// A short smoke run of every scenario (1 s measurements, 1 repetition, 200 idle
    /// connections, 100 idle tunnels).
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON results (default target/bench/bench.json); the chart goes beside
    /// it with the extension .svg.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Install the peers (nginx with its stream module, HAProxy, stunnel, socat) with apt-get,
    /// and rathole with `cargo install`, first.
    #[arg(long)]
    install_peers: bool,
    /// Streams in the bulk-multi scenario.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Connections held open in the idle and idle-data scenarios (default 2000; 200 with
    /// --quick).
    #[arg(long)]
    idle_conns: Option<usize>,
    /// Tunnels opened (each with its source and destination peer connected) in the
    /// idle-tunnels scenario (default 5000; 100 with --quick).
    #[arg(long)]
    idle_tunnels: Option<usize>,
    /// Parallel workers in the handshakes and resumed scenarios.
    #[arg(long, default_value_t = 4)]
    workers: usize,
}

/// The scenarios, in run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One stream to the sink.
    Bulk,
    /// N streams to the sink.
    BulkMulti,
    /// Small request/response round trips on one connection.
    Latency,
    /// New connections, each a full handshake at every TLS hop.
    Handshakes,
    /// New connections with session resumption allowed.
    Resumed,
    /// Idle proxied connections held open: memory per connection.
    Idle,
    /// Idle proxied connections that each moved [`IDLE_DATA_BYTES`] both ways first, opened in
    /// bursts of [`IDLE_DATA_BURST`] per opener: memory per connection once the load is over.
    IdleData,
    /// Idle tunnels, each with both ends connected: the relay's (rathole: the server's)
    /// memory per tunnel and per peer (tunnel paths only).
    IdleTunnels,
}

/// Bytes each connection of the `idle-data` scenario sends (and reads back) before it idles.
const IDLE_DATA_BYTES: usize = 64 * 1024;
/// Connections each of the load generator's 4 openers opens and sends on at once in
/// `idle-data`.
const IDLE_DATA_BURST: usize = 100;
/// How long `idle-data` lets the ends settle before it reads their memory: splice-engine's pools
/// give back what sat unused for one to two seconds (`shard/reclaim.rs`).
const IDLE_DATA_SETTLE: Duration = Duration::from_secs(3);

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::Bulk,
        Scenario::BulkMulti,
        Scenario::Latency,
        Scenario::Handshakes,
        Scenario::Resumed,
        Scenario::Idle,
        Scenario::IdleData,
        Scenario::IdleTunnels,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk",
            Scenario::BulkMulti => "bulk-multi",
            Scenario::Latency => "latency",
            Scenario::Handshakes => "handshakes",
            Scenario::Resumed => "resumed",
            Scenario::Idle => "idle",
            Scenario::IdleData => "idle-data",
            Scenario::IdleTunnels => "idle-tunnels",
        }
    }
}

/// One scenario on one path in one repetition.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Repetition, from 1.
    pub rep: usize,
    /// Scenario.
    pub scenario: Scenario,
    /// Path name.
    pub path: String,
    /// The figures (see [`report::figures`] for names and units).
    pub figures: BTreeMap<String, f64>,
    /// Share of CPU time the hypervisor took (steal) during the measurement, in percent.
    pub steal_pct: f64,
    /// What went wrong, when it did.
    pub error: Option<String>,
    /// The load generator's own output.
    pub raw: Value,
}

/// A path as the run saw it.
#[derive(Debug, Clone, Serialize)]
pub struct PathInfo {
    /// Name.
    pub name: String,
    /// direct, ours or peer.
    pub kind: String,
    /// Version, when it ran.
    pub version: Option<String>,
    /// Why it was skipped, when it was.
    pub skipped: Option<String>,
    /// chain or tunnel: its peers are the paths of the same family.
    pub family: String,
    /// The scenarios it runs.
    pub scenarios: Vec<String>,
    /// The path its figures are divided by in the report, if any.
    pub compared_with: Option<String>,
}

struct Settings {
    duration: f64,
    reps: usize,
    idle_conns: usize,
    idle_tunnels: usize,
    streams: usize,
    workers: usize,
}

/// `cargo xtask bench ARGS`.
pub fn main(argv: &[&str]) -> Result<()> {
    let args =
        Args::try_parse_from(std::iter::once("cargo xtask bench").chain(argv.iter().copied()))
            .unwrap_or_else(|e| e.exit());
    let scenarios = pick(
        &args.scenario,
        &Scenario::ALL.map(Scenario::name),
        "scenario",
    )?;
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| scenarios.contains(&s.name()))
        .collect();
    let all_paths = all_paths();
    let names: Vec<&str> = all_paths.iter().map(|p| p.name()).collect();
    let mut wanted = pick(&args.paths, &names, "path")?;
    if args.baseline.is_some() {
        if !wanted.contains(&"splice-base") {
            wanted.push("splice-base");
        }
        // And beside the tunnel, when it runs.
        if wanted.contains(&"tunnel") && !wanted.contains(&"tunnel-base") {
            wanted.push("tunnel-base");
        }
    }
    let s = Settings {
        duration: args.duration.unwrap_or(if args.quick { 1.0 } else { 5.0 }),
        reps: args.reps.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        idle_conns: args
            .idle_conns
            .unwrap_or(if args.quick { 200 } else { 2000 }),
        idle_tunnels: args
            .idle_tunnels
            .unwrap_or(if args.quick { 100 } else { 5000 })
            .max(1),
        streams: args.streams.max(1),
        workers: args.workers.max(1),
    };
    let root = crate::workspace_root();
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| root.join("target/bench/bench.json"));

    if args.install_peers {
        eprintln!("bench: installing peers");
        paths::install_peers()?;
        tunnel::install_peers()?;
    }
    // The baseline first: it builds into the same target/release, and ours must be left there.
    let base = args
        .baseline
        .as_deref()
        .map(|rev| baseline::build(&root, rev))
        .transpose()?;
    eprintln!("bench: building splice-engine and splice-load (release)");
    // By binary name, as the baseline is built: the package that holds `splice-engine` moved
    // (engine, then cli).
    crate::run_cmd(crate::cargo().args([
        "build",
        "--release",
        "--bin",
        "splice-engine",
        "--bin",
        "splice-load",
    ]))?;
    procs::stop_all_on_signal()?;
    let result = run(
        &root,
        &json_path,
        &scenarios,
        &wanted,
        &all_paths,
        &s,
        base.as_ref(),
    );
    procs::stop_all();
    result
}

/// Every path, in report order.
fn all_paths() -> Vec<Box<dyn PathDef>> {
    let mut all = paths::chains();
    all.extend([
        Box::new(tunnel::Tunnel::Ours) as Box<dyn PathDef>,
        Box::new(tunnel::Tunnel::Base),
        Box::new(tunnel::Rathole),
        Box::new(embed::Embed::C),
        Box::new(embed::Embed::Python),
    ]);
    all
}

/// A load generator: `splice-load`, or a path's own program that takes the same arguments
/// after `args` and prints the same JSON (see [`embed`]).
pub struct LoadGen {
    /// The program.
    pub program: PathBuf,
    /// Its arguments before `splice-load`'s.
    pub args: Vec<String>,
}

impl LoadGen {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        c
    }
}

/// Checks a comma list against the known names; empty means all.
fn pick<'a>(given: &[String], known: &[&'a str], what: &str) -> Result<Vec<&'a str>> {
    if given.is_empty() {
        return Ok(known.to_vec());
    }
    given
        .iter()
        .map(|g| {
            known
                .iter()
                .find(|k| **k == g.as_str())
                .copied()
                .with_context(|| format!("unknown {what} `{g}`; known: {}", known.join(", ")))
        })
        .collect()
}

fn run(
    root: &Path,
    json_path: &Path,
    scenarios: &[Scenario],
    wanted: &[&str],
    all_paths: &[Box<dyn PathDef>],
    s: &Settings,
    base: Option<&baseline::Baseline>,
) -> Result<()> {
    let release = root.join("target/release");
    let load_bin = release.join("splice-load");
    let dir = root.join("target/bench/run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_certs(&dir)?;
    let engine = release.join("splice-engine");
    let probe = engine_probe(&engine)?;

    // The backends, for every path.
    let est_secs = (s.reps * scenarios.len() * wanted.len()) as f64 * (s.duration + 10.0) + 600.0;
    let mut serve_cmd = Command::new(&load_bin);
    serve_cmd.args(["serve", "--max-runtime", &format!("{}", est_secs as u64)]);
    let (serve, addrs) = start_backends(&mut serve_cmd, &dir)?;
    let sink: SocketAddr = json_addr(&addrs, "sink")?;
    let echo: SocketAddr = json_addr(&addrs, "echo")?;
    let ctx = paths::Ctx {
        dir: dir.clone(),
        engine,
        sink,
        echo,
        probe: probe.clone(),
        base_engine: base.map(|b| b.engine.clone()),
    };

    let mut infos = Vec::new();
    let mut running: Vec<(&dyn PathDef, paths::Running)> = Vec::new();
    for p in all_paths.iter().filter(|p| wanted.contains(&p.name())) {
        let mut info = PathInfo {
            name: p.name().into(),
            kind: format!("{:?}", p.kind()).to_lowercase(),
            version: None,
            skipped: None,
            family: p.family().name().into(),
            scenarios: scenarios
                .iter()
                .filter(|sc| p.supports(**sc))
                .map(|sc| sc.name().to_string())
                .collect(),
            compared_with: p.compared_with().map(String::from),
        };
        match p.check(&ctx) {
            Ok(v) => {
                info.version = Some(v);
                eprintln!("bench: starting {}", p.name());
                running.push((
                    p.as_ref(),
                    p.start(&ctx)
                        .with_context(|| format!("starting {}", p.name()))?,
                ));
            }
            Err(why) => {
                eprintln!("bench: skipping {}: {why}", p.name());
                info.skipped = Some(why);
            }
        }
        infos.push(info);
    }

    let steps = scenarios
        .iter()
        .map(|sc| running.iter().filter(|(p, _)| p.supports(*sc)).count())
        .sum::<usize>();
    let progress = Progress::new(s.reps * steps);
    let mut results = Vec::new();
    for rep in 1..=s.reps {
        for &sc in scenarios {
            for (p, r) in running.iter_mut().filter(|(p, _)| p.supports(sc)) {
                progress.step(&format!(
                    "rep {rep}/{} · {} · {}",
                    s.reps,
                    sc.name(),
                    p.name()
                ));
                for end in r.ends.iter_mut() {
                    end.check_alive()?;
                }
                if matches!(
                    sc,
                    Scenario::Idle | Scenario::IdleData | Scenario::IdleTunnels
                ) && !r.ends.is_empty()
                {
                    // Fresh processes: memory an allocator kept from earlier scenarios (or from
                    // the last repetition's idle connections) would hide the growth.
                    r.ends.clear();
                    *r = p
                        .start(&ctx)
                        .with_context(|| format!("restarting {}", p.name()))?;
                }
                let m = measure(&load_bin, &ctx, sc, *p, r, rep, s);
                if let Some(e) = &m.error {
                    progress.note(&format!("{} {} rep {rep}: {e}", p.name(), sc.name()));
                }
                results.push(m);
            }
        }
    }
    progress.done();
    drop(running);
    drop(serve);

    let machine = machine(&probe);
    let settings = json!({
        "duration_s": s.duration, "reps": s.reps, "idle_conns": s.idle_conns,
        "idle_tunnels": s.idle_tunnels,
        "bulk_multi_streams": s.streams, "connect_workers": s.workers,
        "request_size": 64, "connect_echo_size": 32,
        "idle_data_bytes": IDLE_DATA_BYTES, "idle_data_burst": IDLE_DATA_BURST,
        "baseline": base.map(|b| json!({"rev": b.rev, "commit": b.commit})),
        "tls": "TLS 1.3, TLS_AES_128_GCM_SHA256, ECDSA P-256 certificate verified by the client end; \
                resumption off except in `resumed`",
    });
    let summary = report::summarise(&results, &infos);
    println!("{}", report::table(&summary, &infos, &machine, &settings));
    let doc = json!({
        "machine": machine,
        "settings": settings,
        "paths": infos,
        "measurements": results,
        "summary": summary,
    });
    if let Some(d) = json_path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(json_path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = json_path.with_extension("svg");
    std::fs::write(&svg_path, svg::chart(&summary, &infos, &machine))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    eprintln!(
        "bench: wrote {} and {}",
        json_path.display(),
        svg_path.display()
    );

    // A failed measurement of ours (or of the direct baseline) fails the run. A peer's is
    // reported, in the table and the JSON, and warned about here, but does not: the peers are
    // other people's software under load on a shared machine, and their bad moments are a
    // finding about them, not a reason to stop ours from landing.
    let gating = |path: &str| {
        infos
            .iter()
            .any(|i| i.name == path && (i.kind == "direct" || i.kind == "ours"))
    };
    let mut failed = Vec::new();
    for m in &results {
        let Some(e) = &m.error else { continue };
        let line = format!("{} {} rep {}: {e}", m.path, m.scenario.name(), m.rep);
        if gating(&m.path) {
            failed.push(line);
        } else {
            eprintln!("bench: warning: a peer's measurement failed: {line}");
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} measurement(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// Checks a results file for the CI smoke run: every scenario ran without errors on
/// splice-engine's paths and the direct baseline, and splice-engine was among them. A peer's
/// failures are warnings (see the end of `main`).
pub fn check_results(path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let ran: Vec<&str> = doc["paths"]
        .as_array()
        .context("no `paths`")?
        .iter()
        .filter(|p| p["skipped"].is_null())
        .filter_map(|p| p["name"].as_str())
        .collect();
    if !ran.iter().any(|p| p.starts_with("splice-")) {
        bail!("no splice-engine path ran: {ran:?}");
    }
    let ms = doc["measurements"]
        .as_array()
        .context("no `measurements`")?;
    let gating: Vec<&str> = doc["paths"]
        .as_array()
        .context("no `paths`")?
        .iter()
        .filter(|p| p["kind"] == "direct" || p["kind"] == "ours")
        .filter_map(|p| p["name"].as_str())
        .collect();
    // The scenarios each path runs (all of them in a file from before the tunnel paths).
    let runs = |p: &str, sc: Scenario| {
        doc["paths"]
            .as_array()
            .and_then(|ps| ps.iter().find(|i| i["name"] == p))
            .and_then(|i| i["scenarios"].as_array())
            .is_none_or(|l| l.iter().any(|x| x == sc.name()))
    };
    for sc in Scenario::ALL {
        for p in ran.iter().filter(|p| runs(p, sc)) {
            let ok = ms
                .iter()
                .any(|m| m["scenario"] == sc.name() && m["path"] == *p && m["error"].is_null());
            if ok {
                continue;
            }
            let what = format!(
                "{}: no successful `{}` measurement for {p}",
                path.display(),
                sc.name()
            );
            if gating.contains(p) {
                bail!(what);
            }
            eprintln!("bench: warning (a peer): {what}");
        }
    }
    eprintln!(
        "bench: {} checked: {} scenarios × {} paths",
        path.display(),
        Scenario::ALL.len(),
        ran.len()
    );
    Ok(())
}

fn json_addr(v: &Value, key: &str) -> Result<SocketAddr> {
    v[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no `{key}` address in {v}"))
}

/// Starts `splice-load serve` and reads the addresses it prints.
fn start_backends(cmd: &mut Command, dir: &Path) -> Result<(Proc, Value)> {
    let log = dir.join("backends.log");
    let mut p = Proc::spawn("backends (splice-load serve)", cmd, &log)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.check_alive()?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with('{')) {
            return Ok((p, serde_json::from_str(line)?));
        }
        if Instant::now() > deadline {
            bail!(
                "the backends did not start within 10 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A throwaway CA and an ECDSA P-256 leaf for `localhost` and 127.0.0.1 (the workspace's test
/// PKI), written as `ca.pem`, `leaf.pem`, `leaf.key` and `leaf-bundle.pem` (certificate + key).
fn write_certs(dir: &Path) -> Result<()> {
    use splice_test_pki::{Authority, KeyType, SERVER_SANS, Usage};
    let ca = Authority::new("splice-engine bench", KeyType::P256);
    let leaf = ca.issue("localhost", SERVER_SANS, KeyType::P256, Usage::Server);
    let key = leaf.key.pem();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    std::fs::write(dir.join("leaf.pem"), &leaf.pem)?;
    std::fs::write(dir.join("leaf.key"), &key)?;
    std::fs::write(dir.join("leaf-bundle.pem"), leaf.pem + &key)?;
    Ok(())
}

fn engine_probe(engine: &Path) -> Result<Value> {
    let out = Command::new(engine).args(["probe", "--json"]).output()?;
    if !out.status.success() {
        bail!(
            "`splice-engine probe --json` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The machine, for the JSON and the report's header.
fn machine(probe: &Value) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown");
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(crate::workspace_root())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "cpu_model": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": probe["kernel"],
        "io_uring": probe["io_uring"],
        "ktls": probe["ktls"],
        "ktls_reason": probe["ktls_reason"],
        "record_cipher": probe["record_cipher"],
        "git_commit": git(&["rev-parse", "--short", "HEAD"]),
        "git_dirty": dirty,
        "rustc": rustc,
        "unix_time": unix,
    })
}

/// Total and steal jiffies from the first line of /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (f.iter().sum(), f.get(7).copied().unwrap_or(0))
}

/// Runs one scenario on one path.
fn measure(
    load: &Path,
    ctx: &paths::Ctx,
    sc: Scenario,
    p: &dyn PathDef,
    r: &mut paths::Running,
    rep: usize,
    s: &Settings,
) -> Measurement {
    let (t0, st0) = cpu_jiffies();
    let mut m = Measurement {
        rep,
        scenario: sc,
        path: p.name().into(),
        figures: BTreeMap::new(),
        steal_pct: 0.0,
        error: None,
        raw: Value::Null,
    };
    let ep = r.endpoints;
    let load_gen = p.load_gen(ctx).unwrap_or_else(|| LoadGen {
        program: load.to_path_buf(),
        args: Vec::new(),
    });
    let res = match sc {
        Scenario::Bulk | Scenario::BulkMulti => bulk(&load_gen, sc, &ep, r, s, &mut m),
        Scenario::Latency => latency(&load_gen, &ep, r, s, &mut m),
        Scenario::Handshakes | Scenario::Resumed => connections(&load_gen, sc, &ep, s, &mut m),
        Scenario::Idle | Scenario::IdleData => idle(load, sc, &ep, r, s, &mut m),
        Scenario::IdleTunnels => p.idle_tunnels(ctx, r, s.idle_tunnels, &mut m.figures),
    };
    if let Err(e) = res {
        m.error = Some(format!("{e:#}"));
    }
    let (t1, st1) = cpu_jiffies();
    if t1 > t0 {
        m.steal_pct = (st1 - st0) as f64 * 100.0 / (t1 - t0) as f64;
    }
    m
}

/// Runs `splice-load ARGS` (or `load_gen`'s program) to completion within `limit` and parses the
/// JSON it prints.
fn load_json(load_gen: &LoadGen, args: &[&str], limit: Duration) -> Result<Value> {
    let mut cmd = load_gen.command();
    let load = &load_gen.program;
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = procs::spawn_grouped(&mut cmd)?;
    let Some(status) = procs::finish(&mut child, limit)? else {
        bail!(
            "{} {} did not finish within {limit:?}",
            load.display(),
            args.join(" ")
        );
    };
    let mut out = String::new();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().expect("piped"), &mut out)?;
    std::io::Read::read_to_string(child.stderr.as_mut().expect("piped"), &mut err)?;
    if !status.success() {
        bail!(
            "{} {} failed ({status}): {} {}",
            load.display(),
            args.join(" "),
            out.trim(),
            err.trim()
        );
    }
    let v: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("{} printed {out:?}", load.display()))?;
    Ok(v)
}

/// Fails when the load generator reported errors.
fn check_errors(v: &Value) -> Result<()> {
    let n = v["errors"]["count"].as_u64().unwrap_or(0);
    if n > 0 {
        bail!("{n} error(s), e.g. {}", v["errors"]["samples"]);
    }
    Ok(())
}

/// Runs a timed `splice-load` command for `--duration`, allowing it 90 s more to finish.
fn timed_load(load: &LoadGen, s: &Settings, args: &[&str]) -> Result<Value> {
    let duration = s.duration.to_string();
    let mut all = args.to_vec();
    all.extend(["--duration", &duration]);
    load_json(load, &all, Duration::from_secs_f64(s.duration + 90.0))
}

fn bulk(
    load: &LoadGen,
    sc: Scenario,
    ep: &Endpoints,
    r: &paths::Running,
    s: &Settings,
    m: &mut Measurement,
) -> Result<()> {
    let streams = if sc == Scenario::Bulk { 1 } else { s.streams };
    let cpu0 = ends_cpu_secs(r);
    let v = timed_load(
        load,
        s,
        &[
            "bulk",
            "--target",
            &ep.sink.to_string(),
            "--streams",
            &streams.to_string(),
        ],
    )?;
    let mut cpu: Vec<f64> = ends_cpu_secs(r)
        .iter()
        .zip(&cpu0)
        .map(|(c1, c0)| c1 - c0)
        .collect();
    m.raw = v.clone();
    check_errors(&v)?;
    let mut roles = r.roles.clone();
    // A program with the engine inside: its engine's threads are the client end.
    if let Some(c) = v["client_cpu_s"].as_f64() {
        roles.insert(0, "client");
        cpu.insert(0, c);
    }
    let bytes = v["bytes"].as_f64().unwrap_or(0.0);
    m.figures
        .insert("gbit_per_s".into(), v["gbit_per_s"].as_f64().unwrap_or(0.0));
    if !cpu.is_empty() && bytes > 0.0 {
        let gib = bytes / (1u64 << 30) as f64;
        m.figures
            .insert("cpu_s_per_gib".into(), cpu.iter().sum::<f64>() / gib);
        for (role, c) in roles.iter().zip(&cpu) {
            m.figures.insert(format!("{role}_cpu_s_per_gib"), c / gib);
        }
    }
    Ok(())
}

fn latency(
    load: &LoadGen,
    ep: &Endpoints,
    r: &paths::Running,
    s: &Settings,
    m: &mut Measurement,
) -> Result<()> {
    let cpu0: f64 = ends_cpu_secs(r).iter().sum();
    let v = timed_load(
        load,
        s,
        &["rr", "--target", &ep.echo.to_string(), "--size", "64"],
    )?;
    let cpu =
        ends_cpu_secs(r).iter().sum::<f64>() - cpu0 + v["client_cpu_s"].as_f64().unwrap_or(0.0);
    m.raw = v.clone();
    check_errors(&v)?;
    for k in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        m.figures
            .insert(k.into(), v["latency"][k].as_f64().unwrap_or(0.0));
    }
    let requests = v["requests"].as_f64().unwrap_or(0.0);
    m.figures.insert("requests".into(), requests);
    if !r.ends.is_empty() && requests > 0.0 {
        // The warm-up requests are in the CPU time too: a slight overstatement.
        m.figures
            .insert("cpu_us_per_request".into(), cpu * 1e6 / requests);
    }
    Ok(())
}

/// CPU seconds each proxy end (all its processes, threads and children) has used so far.
fn ends_cpu_secs(r: &paths::Running) -> Vec<f64> {
    r.ends
        .iter()
        .map(|p| procs::group_cpu_secs(p.pid()))
        .collect()
}

fn connections(
    load: &LoadGen,
    sc: Scenario,
    ep: &Endpoints,
    s: &Settings,
    m: &mut Measurement,
) -> Result<()> {
    let target = if sc == Scenario::Resumed {
        ep.echo_resume
    } else {
        ep.echo
    };
    let v = timed_load(
        load,
        s,
        &[
            "connect",
            "--target",
            &target.to_string(),
            "--workers",
            &s.workers.to_string(),
        ],
    )?;
    m.raw = v.clone();
    check_errors(&v)?;
    m.figures
        .insert("conn_per_s".into(), v["per_sec"].as_f64().unwrap_or(0.0));
    m.figures.insert(
        "connect_p50_us".into(),
        v["latency"]["p50_us"].as_f64().unwrap_or(0.0),
    );
    m.figures.insert(
        "connect_p99_us".into(),
        v["latency"]["p99_us"].as_f64().unwrap_or(0.0),
    );
    Ok(())
}

/// Opens `idle_conns` connections through the path, holds them, and charges each proxy end's
/// memory growth (PSS of its whole process group) to them. In `idle-data` each connection first
/// moves [`IDLE_DATA_BYTES`] each way, [`IDLE_DATA_BURST`] connections at a time per opener.
fn idle(
    load: &Path,
    sc: Scenario,
    ep: &Endpoints,
    r: &paths::Running,
    s: &Settings,
    m: &mut Measurement,
) -> Result<()> {
    std::thread::sleep(Duration::from_millis(500)); // let the previous scenario's sockets go
    let before: Vec<procs::Memory> = r
        .ends
        .iter()
        .map(|p| procs::group_memory(p.pid()))
        .collect();
    let (bytes, burst, settle) = match sc {
        Scenario::IdleData => (IDLE_DATA_BYTES, IDLE_DATA_BURST, IDLE_DATA_SETTLE),
        _ => (16, 1, Duration::from_millis(500)),
    };
    let mut cmd = Command::new(load);
    cmd.args([
        "idle",
        "--target",
        &ep.echo.to_string(),
        "--count",
        &s.idle_conns.to_string(),
        "--bytes",
        &bytes.to_string(),
        "--burst",
        &burst.to_string(),
        "--hold",
        "300",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = procs::spawn_grouped(&mut cmd)?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let limit = Duration::from_secs(60 + s.idle_conns as u64 / 50);
    let line = rx.recv_timeout(limit).unwrap_or_default();
    let result = (|| {
        let v: Value = serde_json::from_str(line.trim()).with_context(|| {
            format!("splice-load idle printed {line:?} (or nothing within {limit:?})")
        })?;
        m.raw = v.clone();
        check_errors(&v)?;
        let open = v["open"].as_f64().unwrap_or(0.0);
        if open == 0.0 {
            bail!("no connection opened");
        }
        std::thread::sleep(settle); // let every end settle
        if !r.ends.is_empty() {
            let after: Vec<procs::Memory> = r
                .ends
                .iter()
                .map(|p| procs::group_memory(p.pid()))
                .collect();
            let per = |f: fn(&procs::Memory) -> u64| -> Vec<f64> {
                after
                    .iter()
                    .zip(&before)
                    .map(|(a, b)| (f(a) as f64 - f(b) as f64) / open)
                    .collect()
            };
            let (pss, rss) = (per(|m| m.pss_kib), per(|m| m.rss_kib));
            for (i, role) in r.roles.iter().enumerate() {
                m.figures.insert(format!("{role}_kib_per_conn"), pss[i]);
                m.figures.insert(format!("{role}_rss_kib_per_conn"), rss[i]);
            }
            let worst = pss.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            m.figures.insert("kib_per_conn".into(), worst);
        }
        m.figures
            .insert("open_secs".into(), v["secs"].as_f64().unwrap_or(0.0));
        Ok(())
    })();
    // Closing stdin tells it to close the connections and exit.
    drop(child.stdin.take());
    procs::finish(&mut child, Duration::from_secs(30))?;
    result
}

/// The progress line: rewritten in place on a terminal, one line per step otherwise.
struct Progress {
    total: usize,
    done: std::cell::Cell<usize>,
    tty: bool,
    started: Instant,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0.into(),
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }

    fn step(&self, what: &str) {
        let n = self.done.get() + 1;
        self.done.set(n);
        let line = format!(
            "bench: [{n}/{}] {what} ({:.0}s)",
            self.total,
            self.started.elapsed().as_secs_f64()
        );
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }

    fn note(&self, what: &str) {
        let clear = if self.tty { "\r\x1b[K" } else { "" };
        eprintln!("{clear}bench: {what}");
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
        eprintln!(
            "bench: {} measurements in {:.0}s",
            self.done.get(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    /// A path is checked on the scenarios it runs: a tunnel path of ours that lacks its
    /// `idle-tunnels` fails the check, a tunnel peer that never runs `resumed` does not.
    #[test]
    fn check_results_asks_each_path_for_the_scenarios_it_runs() {
        let dir = splice_test_pki::TempDir::new("xtask-bench-check");
        let all: Vec<&str> = super::Scenario::ALL.iter().map(|s| s.name()).collect();
        let tunnel: Vec<&str> = all
            .iter()
            .copied()
            .filter(|s| !["resumed", "idle-data"].contains(s))
            .collect();
        let doc = |tunnel_ran: &[&str]| {
            let mut ms = Vec::new();
            for sc in &all {
                if *sc != "idle-tunnels" {
                    ms.push(
                        serde_json::json!({"scenario": sc, "path": "splice-uring", "error": null}),
                    );
                }
            }
            for sc in tunnel_ran {
                ms.push(serde_json::json!({"scenario": sc, "path": "tunnel", "error": null}));
            }
            serde_json::json!({
                "paths": [
                    {"name": "splice-uring", "kind": "ours", "skipped": null,
                     "scenarios": all.iter().filter(|s| **s != "idle-tunnels").collect::<Vec<_>>()},
                    {"name": "tunnel", "kind": "ours", "skipped": null, "scenarios": tunnel},
                ],
                "measurements": ms,
            })
        };
        let file = dir.join("bench.json");
        std::fs::write(&file, doc(&tunnel).to_string()).unwrap();
        super::check_results(&file).expect("every path ran what it runs");
        let short: Vec<&str> = tunnel
            .iter()
            .copied()
            .filter(|s| *s != "idle-tunnels")
            .collect();
        std::fs::write(&file, doc(&short).to_string()).unwrap();
        let e = format!("{:#}", super::check_results(&file).unwrap_err());
        assert!(e.contains("idle-tunnels") && e.contains("tunnel"), "{e}");
    }

    /// The bench's certificates verify with OpenSSL (an independent parser) for both names the
    /// engines are given, and the bundle holds the certificate and then its key.
    #[test]
    fn write_certs_makes_a_verifiable_leaf() {
        let dir = splice_test_pki::TempDir::new("xtask-bench");
        super::write_certs(dir.path()).expect("write certs");
        for name in [
            ["-verify_hostname", "localhost"],
            ["-verify_ip", "127.0.0.1"],
        ] {
            let out = std::process::Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(dir.join("ca.pem"))
                .args(name)
                .arg(dir.join("leaf.pem"))
                .output()
                .expect("run openssl verify");
            assert!(
                out.status.success(),
                "{name:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let bundle = std::fs::read_to_string(dir.join("leaf-bundle.pem")).expect("bundle");
        let leaf = std::fs::read_to_string(dir.join("leaf.pem")).expect("leaf");
        let key = std::fs::read_to_string(dir.join("leaf.key")).expect("key");
        assert_eq!(bundle, leaf + &key);
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    }
}

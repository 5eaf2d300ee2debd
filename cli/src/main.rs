//! `splice-engine`: the command-line front end of the splice-engine library. It parses flags
//! and files into an [`EngineConfig`], starts the [`Engine`], turns signals into reloads and
//! drains, and prints what `check`, `probe` and `demo` found.

mod args;
mod common_args;
mod demo;
mod probe;
mod stats;
mod systemd;
mod tunnel;
mod tunnel_args;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use splice_engine::{Engine, EngineConfig, LogFormat, Mode};

use crate::args::{Cli, Command, ConfigCommand};
use crate::common_args::Common;

/// How to rebuild the configuration on SIGHUP.
enum Source {
    File(PathBuf, Common),
    Fixed(EngineConfig),
}

impl Source {
    /// Where the configuration comes from, for error lines.
    fn origin(&self) -> String {
        match self {
            Source::File(path, _) => path.display().to_string(),
            Source::Fixed(_) => "command line".into(),
        }
    }

    fn load(&self) -> splice_engine::Result<EngineConfig> {
        match self {
            Source::File(path, common) => {
                // The certificates are loaded and the addresses resolved once, when the engine
                // starts or reloads; a failure there names the file, line and key too.
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
    if let Command::Tunnel(cmd) = cli.command {
        // An API client: no engine, no logging; 1 when the API refuses.
        return match tunnel::run(cmd, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", e.to_string().replace('\n', " "));
                ExitCode::FAILURE
            }
        };
    }
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

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let origin = path.display().to_string();
    let splice_engine::Checked {
        config: cfg,
        forwarders,
        warnings,
    } = Engine::check_file(path)?;
    let n = forwarders.len();
    println!(
        "{origin}: ok, {n} forwarder{}",
        if n == 1 { "" } else { "s" }
    );
    let width = forwarders.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for f in &forwarders {
        let via = match f.upstream.map(|a| a.to_string()) {
            Some(resolved) if resolved == f.connect => String::new(),
            Some(resolved) => format!(" ({resolved})"),
            None => " (does not resolve now)".to_string(),
        };
        println!(
            "  {:width$}  {}  {} -> {}{via}",
            f.name, f.mode, f.listen, f.connect
        );
    }
    for r in &cfg.relays {
        println!(
            "  {}  relay  agents on {}, API at http://{}",
            r.display_name(),
            r.listen,
            r.api
        );
    }
    for s in &cfg.sources {
        let services = s.listen.join(", ");
        println!("  {}  source  {services} -> {}", s.display_name(), s.relay);
    }
    for d in &cfg.destinations {
        let services = d.connect.join(", ");
        println!(
            "  {}  destination  {} -> {services}",
            d.display_name(),
            d.relay
        );
    }
    if let Some(m) = &cfg.metrics {
        println!("  metrics at http://{m}/metrics");
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// A configuration built from flags, checked as a file would be.
fn fixed(cfg: EngineConfig) -> anyhow::Result<Source> {
    cfg.validate("command line")?;
    Ok(Source::Fixed(cfg))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let source = match cli.command {
        Command::Client(a) => {
            let mut f = a.fwd.into_config(Mode::Client);
            f.ca = a.ca;
            f.pin = a.pin;
            f.sni = a.sni;
            f.cert = a.cert;
            f.key = a.key;
            let mut cfg = EngineConfig::default();
            cfg.forwarders.push(f);
            a.common.apply(&mut cfg);
            cfg.validate("command line")?;
            Source::Fixed(cfg)
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
            Source::Fixed(cfg)
        }
        Command::Run(a) => Source::File(a.config, a.common),
        Command::Relay(a) => fixed(a.into_config())?,
        Command::Source(a) => fixed(a.into_config()?)?,
        Command::Destination(a) => fixed(a.into_config()?)?,
        Command::Tunnel(_) => unreachable!("handled in main"),
        Command::Check(a) => return check(&a.config),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", EngineConfig::EXAMPLE);
            return Ok(());
        }
        Command::Completions(a) => {
            let mut cmd = Cli::command();
            clap_complete::generate(a.shell, &mut cmd, "splice-engine", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man(a) => {
            let cmd = Cli::command();
            match a.dir {
                Some(dir) => clap_mangen::generate_to(cmd, &dir)
                    .map_err(|e| anyhow::anyhow!("cannot write to {}: {e}", dir.display()))?,
                None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
            }
            return Ok(());
        }
        Command::Probe(a) => {
            probe::print(&splice_engine::probe(), a.json);
            return Ok(());
        }
        Command::Stats(a) => return stats::print(&a.metrics, a.json),
        Command::Demo(a) => {
            let mut cfg = EngineConfig::default();
            a.common.apply(&mut cfg);
            splice_engine::logging::init(
                Some(cfg.log_level.as_deref().unwrap_or("warn")),
                cfg.log_format == LogFormat::Json,
            )?;
            let report = match a.what {
                args::DemoKind::Forwarders => demo::run(cfg, a.bytes, a.connections)?,
                args::DemoKind::Tunnel => demo::tunnel::run(cfg, a.bytes, a.connections)?,
            };
            println!("{report}");
            return Ok(());
        }
    };
    // The agents' commands end, as the AWS local proxy does, when their agent gives up.
    let agent_command = matches!(&source, Source::Fixed(c) if c.forwarders.is_empty()
        && c.relays.is_empty()
        && c.sources.len() + c.destinations.len() == 1);
    let cfg = source.load()?;
    splice_engine::logging::init(cfg.log_level.as_deref(), cfg.log_format == LogFormat::Json)?;
    // Signals are registered before the engine starts so none is lost in between.
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let drain = cfg.drain_timeout;
    let engine = Engine::start(cfg)?;
    tracing::info!(driver = %engine.driver(), ktls = engine.ktls_enabled(), "ready");
    systemd::ready();
    loop {
        let sig = if agent_command {
            match signals.pending().next() {
                Some(sig) => sig,
                None => {
                    if let Some((name, splice_engine::AgentState::Finished(why))) =
                        engine.wait_agent_finished(std::time::Duration::from_millis(200))
                    {
                        systemd::stopping();
                        engine.shutdown(std::time::Duration::ZERO);
                        anyhow::bail!("{name}: {why}");
                    }
                    continue;
                }
            }
        } else {
            match signals.forever().next() {
                Some(sig) => sig,
                None => return Ok(()),
            }
        };
        match sig {
            SIGHUP => {
                systemd::reloading();
                if let Err(e) = engine.reload_with(|| source.load()) {
                    tracing::error!(
                        config = %source.origin(),
                        error = %e,
                        "reload failed; the previous configuration stays"
                    );
                }
                systemd::ready();
            }
            _ => {
                systemd::stopping();
                let drain = match source.load() {
                    Ok(c) => c.drain_timeout,
                    Err(_) => drain,
                };
                engine.shutdown(drain);
                return Ok(());
            }
        }
    }
}

//! The running engine: probes the kernel once, loads TLS material, binds listeners, starts the
//! shards, and applies reloads, run-time forwarder changes, [`Engine::connect`] and shutdowns
//! from the control thread (or any thread of an embedding program).

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{
    Balance, DriverKind, EngineConfig, ForwarderConfig, KtlsMode, LogFormat, Mode,
    UnresolvedUpstream, listen_addrs_collide, split_host_port,
};
use crate::error::{Error, Result};
use crate::shard::{self, Command, Forwarder, Handoff, ShardHandle};
use crate::stats::{ListenerStats, Registry, ReloadStats, StatsSnapshot};
use crate::sys::ktls::{self, KtlsSupport};
use crate::tls::validity;

struct Entry {
    cfg: ForwarderConfig,
    id: u32,
    /// Where it listens (`None`: a connector, see [`ForwarderConfig::listen`]).
    addr: Option<SocketAddr>,
    fwd: Arc<Forwarder>,
}

/// A running engine. Dropping it stops everything at once; [`Engine::shutdown`] drains first.
///
/// The [crate documentation](crate#example) starts one, adds a forwarder by reload, moves
/// bytes through it and drains it.
pub struct Engine {
    shards: Vec<ShardHandle>,
    entries: Mutex<Vec<Entry>>,
    next_id: Mutex<u32>,
    driver: DriverKind,
    ktls: Option<Arc<KtlsSupport>>,
    /// Kernel byte accounting (eBPF), when it runs; dropped last of all (see `Drop`).
    kernel_acct: Option<Arc<crate::accounting::Accounting>>,
    registry: Registry,
    /// Reload outcomes, for the metrics endpoint.
    reloads: Arc<ReloadStats>,
    /// The settings a reload cannot change, as the engine started with them.
    start_only: StartOnly,
    /// Kept for its lifetime: the metrics thread stops when the engine drops.
    _metrics: Option<crate::metrics::MetricsServer>,
    /// The relays' control sides (registry, API, expiry), one per `[[relay]]`.
    relays: Mutex<Vec<crate::relay::service::RelayService>>,
    /// Sockets passed by systemd (socket activation), each with whether a listener uses it.
    /// The engine keeps them for its lifetime (systemd holds them open too) and gives the
    /// shards duplicates, so a reload that fails or removes a forwarder loses none.
    activated: Mutex<Vec<(crate::systemd::ActivatedSocket, bool)>>,
    /// The configuration in force: what the add/remove/replace calls edit. Held for the whole
    /// of a change, so that reloads and run-time changes apply one at a time.
    config: Mutex<EngineConfig>,
    /// Set when the drain begins: [`Engine::connect`] refuses from then on.
    draining: AtomicBool,
    /// The shard the next [`Engine::connect`] goes to (taken in turn).
    next_shard: AtomicUsize,
    /// The tunnel's source and destination agents (`sources`, `destinations`).
    agents: Mutex<Vec<crate::shard::tunnel::agent::AgentHandle>>,
    /// Their state and counters, for `/metrics`.
    agent_stats: Arc<Mutex<Vec<Arc<crate::shard::tunnel::agent::AgentShared>>>>,
    /// The relays' data planes on the shards, one per `[[relay]]` (as `relays`).
    relay_planes: Mutex<Vec<crate::shard::tunnel::start::RunningRelay>>,
    /// The relays' figures for `/metrics` (a reload adds and removes entries).
    relay_stats: crate::shard::tunnel::metrics::StatsList,
    /// The id the next relay started gets (ids are never reused while the shards run).
    next_relay_id: std::sync::atomic::AtomicU32,
}

/// The engine-level settings that shape the shards and the process, which only a restart
/// applies; a reload that changes them says so in the log.
#[derive(Debug, Clone, PartialEq)]
struct StartOnly {
    threads: Option<usize>,
    driver: DriverKind,
    ktls: KtlsMode,
    ebpf: crate::kinds::EbpfMode,
    busy_poll: Duration,
    metrics: Option<String>,
    log_level: Option<String>,
    log_format: LogFormat,
    balance: Balance,
}

impl StartOnly {
    fn of(cfg: &EngineConfig) -> Self {
        Self {
            threads: cfg.threads,
            driver: cfg.driver,
            ktls: cfg.ktls,
            ebpf: cfg.ebpf,
            busy_poll: cfg.busy_poll_ceiling(),
            metrics: cfg.metrics.clone(),
            log_level: cfg.log_level.clone(),
            log_format: cfg.log_format,
            balance: cfg.balance,
        }
    }

    /// The configuration keys whose values differ in `new`.
    fn changed(&self, new: &Self) -> Vec<&'static str> {
        [
            ("threads", self.threads != new.threads),
            ("driver", self.driver != new.driver),
            ("ktls", self.ktls != new.ktls),
            ("ebpf", self.ebpf != new.ebpf),
            ("busy_poll", self.busy_poll != new.busy_poll),
            ("metrics", self.metrics != new.metrics),
            ("log_level", self.log_level != new.log_level),
            ("log_format", self.log_format != new.log_format),
            ("balance", self.balance != new.balance),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("driver", &self.driver)
            .field("shards", &self.shards.len())
            .field("ktls", &self.ktls.is_some())
            .finish()
    }
}

impl Engine {
    /// Checks the configuration, loads every certificate, binds every listener and starts the
    /// shards. Nothing is left running when it fails.
    pub fn start(cfg: EngineConfig) -> Result<Engine> {
        crate::sys::ignore_sigpipe();
        cfg.validate("configuration")?;
        // Said once, after start-up succeeded (a failed start prints only its error).
        let mut notes = Vec::new();
        let driver = match cfg.driver {
            DriverKind::Auto => match crate::driver::probe_uring() {
                Ok(()) => DriverKind::Uring,
                Err(why) => {
                    notes.push(format!(
                        "io_uring is not available ({why}); using the epoll driver"
                    ));
                    DriverKind::Epoll
                }
            },
            k => k,
        };
        let ktls = match cfg.ktls {
            KtlsMode::Off => None,
            mode => {
                let support = ktls::probe();
                if support.available {
                    let ciphers: Vec<&str> = [
                        (support.aes_128_gcm, "AES-128-GCM"),
                        (support.aes_256_gcm, "AES-256-GCM"),
                        (support.chacha20_poly1305, "ChaCha20-Poly1305"),
                    ]
                    .into_iter()
                    .filter_map(|(ok, name)| ok.then_some(name))
                    .collect();
                    notes.push(format!(
                        "kernel TLS available for {}: sessions with these ciphers are handed to \
                         the kernel after the handshake",
                        ciphers.join(", ")
                    ));
                    Some(Arc::new(support))
                } else if mode == KtlsMode::On {
                    return Err(Error::Unavailable {
                        feature: "kernel TLS",
                        why: support.reason.unwrap_or_else(|| "unknown".into()),
                    });
                } else {
                    notes.push(format!(
                        "kernel TLS is not available ({}); TLS runs in user space",
                        support.reason.as_deref().unwrap_or("unknown")
                    ));
                    None
                }
            }
        };
        let kernel_acct = match crate::accounting::start(cfg.ebpf) {
            Ok(Some(acct)) => {
                notes.push(
                    "eBPF accounting loaded: the kernel counts every socket's bytes too \
                     (splice_kernel_bytes_total)"
                        .to_string(),
                );
                Some(acct)
            }
            Ok(None) => None,
            Err(why) if cfg.ebpf == crate::kinds::EbpfMode::On => {
                return Err(Error::Unavailable {
                    feature: "eBPF accounting",
                    why,
                });
            }
            Err(why) => {
                notes.push(format!(
                    "eBPF accounting is not available ({why}); bytes are counted in user space \
                     only"
                ));
                None
            }
        };
        check_fd_limit(&cfg);
        let registry: Registry = Arc::default();
        let mut engine = Engine {
            shards: Vec::new(),
            entries: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
            driver,
            ktls,
            kernel_acct,
            registry: registry.clone(),
            reloads: Arc::new(ReloadStats::new()),
            start_only: StartOnly::of(&cfg),
            _metrics: None,
            relays: Mutex::new(Vec::new()),
            activated: Mutex::new(
                crate::systemd::listen_fds()
                    .into_iter()
                    .map(|s| (s, false))
                    .collect(),
            ),
            config: Mutex::new(cfg.clone()),
            draining: AtomicBool::new(false),
            next_shard: AtomicUsize::new(0),
            agents: Mutex::new(Vec::new()),
            agent_stats: Arc::default(),
            relay_planes: Mutex::new(Vec::new()),
            relay_stats: Default::default(),
            next_relay_id: Default::default(),
        };
        // Everything that reads files or binds ports happens before a thread starts.
        let mut built = Vec::new();
        for i in 0..cfg.forwarders.len() {
            let stats = Arc::new(ListenerStats::default());
            let fwd = engine.build_named(&cfg, i, stats)?;
            warn_unresolved(&cfg.forwarders[i], &fwd);
            built.push((cfg.forwarders[i].clone(), fwd));
        }
        let mut bound = Vec::new();
        let threads = cfg.thread_count();
        for (f, fwd) in built {
            let (addr, fds) = match f.listens() {
                true => {
                    let (addr, fds) = engine.bind_all(f.listen_addr()?, threads, true)?;
                    (Some(addr), fds)
                }
                false => (None, Vec::new()),
            };
            bound.push((f, fwd, addr, fds));
        }
        let relay_stats = engine.relay_stats.clone();
        if let Some(m) = &cfg.metrics {
            let addr: SocketAddr = m.parse().map_err(|e| Error::Address {
                addr: m.clone(),
                why: format!("{e}"),
            })?;
            let source = crate::metrics::Source {
                registry,
                reloads: engine.reloads.clone(),
                agents: engine.agent_stats.clone(),
                relays: relay_stats.clone(),
            };
            engine._metrics = Some(crate::metrics::MetricsServer::start(addr, source)?);
        }
        for (i, r) in cfg.relays.iter().enumerate() {
            let bad = |key, message| cfg.entry_error("relay", i, key, message);
            engine
                .relays
                .get_mut()
                .expect("relays lock")
                .push(crate::relay::service::RelayService::start(r, &bad)?);
        }
        for i in 0..threads {
            engine
                .shards
                .push(shard::spawn(i, driver, cfg.busy_poll_ceiling())?);
        }
        // Before any listener: a shard may hand its first accepted connection to another.
        let peers: Vec<shard::Peer> = engine.shards.iter().map(|s| s.peer()).collect();
        for s in &engine.shards {
            s.send(Command::Peers {
                peers: peers.clone(),
                balance: cfg.balance,
            });
        }
        for note in notes {
            tracing::info!("{note}");
        }
        for (f, fwd, addr, fds) in bound {
            engine.install(f, Arc::new(fwd), addr, fds);
        }
        let services = std::mem::take(engine.relays.get_mut().expect("relays lock"));
        for (i, (r, service)) in cfg.relays.iter().zip(&services).enumerate() {
            let plane = crate::shard::tunnel::start::start_relay(
                r,
                service,
                i as u32 + 1,
                &engine.shards,
                &relay_stats,
            )?;
            engine
                .relay_planes
                .get_mut()
                .expect("planes lock")
                .push(plane);
        }
        *engine.relays.get_mut().expect("relays lock") = services;
        engine.count_relays_in_kernel();
        engine
            .next_relay_id
            .store(cfg.relays.len() as u32 + 1, Relaxed);
        let activated = engine.activated.lock().expect("activated lock");
        for (s, _) in activated.iter().filter(|(_, used)| !used) {
            tracing::warn!(
                name = %s.name,
                addr = %s.addr,
                "a socket passed by systemd matches no forwarder's listen address; kept for a reload"
            );
        }
        drop(activated);
        engine.start_agents(&cfg)?;
        Ok(engine)
    }

    /// Starts the tunnel's source and destination agents of `cfg`.
    fn start_agents(&self, cfg: &EngineConfig) -> Result<()> {
        use crate::shard::tunnel::agent;
        let mut agents = self.agents.lock().expect("agents lock");
        // Spread over the shards in turn; each agent lives on one.
        let shard = |i: usize| &self.shards[i % self.shards.len()];
        for i in 0..cfg.sources.len() {
            agents.push(agent::start_source(cfg, i, shard(i))?);
        }
        for i in 0..cfg.destinations.len() {
            agents.push(agent::start_destination(
                cfg,
                i,
                shard(cfg.sources.len() + i),
            )?);
        }
        // Kernel byte accounting for the agents' local connections, per service (set as the
        // agent starts: a local connection made before this is counted in user space only).
        if let Some(acct) = &self.kernel_acct {
            for a in agents.iter() {
                for (_, stats) in &a.shared.services {
                    if let Some(slots) = acct.slots() {
                        let _ = stats.kernel.set(slots);
                    }
                }
            }
        }
        *self.agent_stats.lock().expect("agent stats lock") =
            agents.iter().map(|a| a.shared.clone()).collect();
        Ok(())
    }

    /// Where source agent `name` listens for `service` (`""` for the bare, V1 form): the
    /// address bound, with a port 0 resolved. `None` if there is no such agent or service.
    pub fn source_addr(&self, name: &str, service: &str) -> Option<SocketAddr> {
        let agents = self.agents.lock().expect("agents lock");
        agents
            .iter()
            .filter(|a| a.shared.name == name && a.shared.kind == "source")
            .flat_map(|a| a.addrs.iter())
            .find(|(s, _)| s == service)
            .map(|(_, addr)| *addr)
    }

    /// The state of agent `name` (a source or destination), `None` if there is none.
    pub fn agent_state(&self, name: &str) -> Option<crate::AgentState> {
        let agents = self.agents.lock().expect("agents lock");
        agents
            .iter()
            .find(|a| a.shared.name == name)
            .map(|a| a.shared.state())
    }

    /// Waits up to `timeout` for any agent to give up, and returns its name and state
    /// ([`crate::AgentState::Finished`] says why). The `source` and `destination` commands
    /// exit non-zero when this returns `Some`. `None`: none gave up (or there is none).
    pub fn wait_agent_finished(&self, timeout: Duration) -> Option<(String, crate::AgentState)> {
        let end = Instant::now() + timeout;
        loop {
            let shared = self.agent_stats.lock().expect("agent stats lock").clone();
            for a in &shared {
                if let s @ crate::AgentState::Finished(_) = a.state() {
                    return Some((a.name.clone(), s));
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || shared.is_empty() {
                return None;
            }
            // One agent is waited on at a time; the others are looked at every 100 ms.
            shared[0].wait_finished(left.min(Duration::from_millis(100)));
        }
    }

    fn new_id(&self) -> u32 {
        let mut n = self.next_id.lock().expect("id lock");
        *n += 1;
        *n
    }

    /// Kernel byte accounting for the relays' peer sockets (set as each relay starts: a peer
    /// admitted in that instant is counted in user space only).
    fn count_relays_in_kernel(&self) {
        if let Some(acct) = &self.kernel_acct
            && let Ok(list) = self.relay_stats.lock()
        {
            for (_, stats) in list.iter() {
                stats.kernel.start(acct);
            }
        }
    }

    fn install(
        &self,
        cfg: ForwarderConfig,
        fwd: Arc<Forwarder>,
        addr: Option<SocketAddr>,
        fds: Vec<std::os::fd::OwnedFd>,
    ) {
        let id = self.new_id();
        match addr {
            Some(addr) => {
                tracing::info!(forwarder = %fwd.name, mode = %cfg.mode, addr = %addr, connect = %cfg.connect, "listening")
            }
            None => {
                tracing::info!(forwarder = %fwd.name, mode = %cfg.mode, connect = %cfg.connect, "ready, without a listener (Engine::connect only)")
            }
        }
        fwd.stats
            .cert_not_after
            .store(fwd.cert_not_after.unwrap_or(0), Relaxed);
        for (shard, fd) in self.shards.iter().zip(fds) {
            shard.send(Command::AddListener {
                id,
                fd,
                fwd: fwd.clone(),
            });
        }
        self.registry.lock().expect("registry lock").push((
            fwd.name.clone(),
            cfg.mode,
            fwd.stats.clone(),
        ));
        self.entries
            .lock()
            .expect("entries lock")
            .push(Entry { cfg, id, addr, fwd });
    }

    /// Checks the configuration file at `path` as `run` would load it, without binding a port
    /// or starting a thread: it is parsed, every address parsed (duplicates included) and
    /// resolved, and every certificate and key loaded. Each error names the file, the line
    /// and the key. This is `splice-engine check`.
    pub fn check_file(path: &Path) -> Result<Checked> {
        let cfg = EngineConfig::from_file(path)?;
        // An engine with no shard, kTLS or metrics: only its `build` is used.
        let engine = Engine {
            shards: Vec::new(),
            entries: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
            driver: cfg.driver,
            ktls: None,
            kernel_acct: None,
            registry: Registry::default(),
            reloads: Arc::new(ReloadStats::new()),
            start_only: StartOnly::of(&cfg),
            _metrics: None,
            relays: Mutex::new(Vec::new()),
            activated: Mutex::new(Vec::new()),
            config: Mutex::new(cfg.clone()),
            draining: AtomicBool::new(false),
            next_shard: AtomicUsize::new(0),
            agents: Mutex::new(Vec::new()),
            agent_stats: Arc::default(),
            relay_planes: Mutex::new(Vec::new()),
            relay_stats: Default::default(),
            next_relay_id: Default::default(),
        };
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        for (i, f) in cfg.forwarders.iter().enumerate() {
            let fwd = engine.build_named(&cfg, i, Arc::default())?;
            if let Some(why) = fwd.unresolved() {
                let message = format!(
                    "`connect` {:?} does not resolve now ({why}): {UNRESOLVED_STARTS} \
                     (unresolved_upstream = \"reset\")",
                    f.connect
                );
                warnings.push(
                    cfg.entry_error("forwarder", i, "connect", message)
                        .to_string(),
                );
            }
            out.push(CheckedForwarder {
                name: f.display_name(),
                mode: f.mode,
                listen: match f.listens() {
                    true => Listening::At(f.listen_addr()?),
                    false => Listening::ConnectOnly,
                },
                connect: f.connect.clone(),
                upstream: fwd.resolved(),
            });
        }
        crate::relay::service::check_files(&cfg)?;
        // Each agent loaded as its start loads it (files read, names resolved).
        warnings.extend(crate::shard::tunnel::agent::check_all(&cfg)?);
        Ok(Checked {
            config: cfg,
            forwarders: out,
            warnings,
        })
    }

    /// [`Engine::build`] for `cfg`'s forwarder `i`. When `cfg` was read from a file, a failure
    /// names the file, the line and the key, as every other configuration error does.
    fn build_named(
        &self,
        cfg: &EngineConfig,
        i: usize,
        stats: Arc<ListenerStats>,
    ) -> Result<Forwarder> {
        let f = &cfg.forwarders[i];
        self.build(f, stats, cfg.access_log).map_err(|e| {
            let Some(path) = &cfg.source_file else {
                return e;
            };
            let key = key_of_failure(f, &e);
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let line = crate::config::line_of(&text, Some(i), key)
                .map(|l| format!("line {l}: "))
                .unwrap_or_default();
            let name = f.display_name();
            Error::config(
                path.display().to_string(),
                format!("{line}forwarder \"{name}\": `{key}`: {e}"),
            )
        })
    }

    /// Builds what the shards need for one forwarder: resolved upstream, rustls configs.
    /// `access_log` is the engine-wide default, which the forwarder's own key overrides.
    fn build(
        &self,
        f: &ForwarderConfig,
        stats: Arc<ListenerStats>,
        access_log: bool,
    ) -> Result<Forwarder> {
        let (host, port) = split_host_port(&f.connect)?;
        let (found, unresolved) = crate::resolve::look_up(&host, port);
        let upstream = match found.first() {
            Some(&first) => first,
            // Started anyway: the name (below) gives no address until a lookup finds one, and
            // this one is never dialled.
            None if f.unresolved_upstream == UnresolvedUpstream::Reset => {
                SocketAddr::from(([0, 0, 0, 0], port))
            }
            None => {
                return Err(Error::Address {
                    addr: f.connect.clone(),
                    why: format!(
                        "cannot resolve: {} (`unresolved_upstream = \"reset\"`, or \
                         `--unresolved-upstream reset`, starts the forwarder anyway)",
                        unresolved.unwrap_or_default()
                    ),
                });
            }
        };
        // A name (not an IP address) is looked up again when a connect to it fails.
        let upstream_name = host.parse::<std::net::IpAddr>().is_err().then(|| {
            crate::resolve::Name::new(&host, port, found)
                .called("the upstream's name")
                .spaced(Duration::from_secs(1))
                .unresolved(unresolved)
        });
        // The mode's plan (its TLS configs), and the certificate it presents (expiry metric).
        let crate::modes::Built { plan, leaf } = crate::modes::build(f, &host)?;
        let cert_not_after = leaf.as_ref().and_then(validity::not_after);
        if let Some(acct) = &self.kernel_acct
            && stats.kernel.get().is_none()
            && let Some(slots) = acct.slots()
        {
            let _ = stats.kernel.set(slots);
        }
        Ok(Forwarder {
            name: f.display_name(),
            upstream: upstream.into(),
            upstream_text: f.connect.clone(),
            upstream_name,
            plan,
            stats,
            max_connections: f.max_connections,
            connect_timeout: f.connect_timeout,
            handshake_timeout: f.handshake_timeout,
            idle_timeout: f.idle_timeout,
            ktls: self.ktls.clone(),
            cert_not_after,
            access_log: f.access_log.unwrap_or(access_log),
            accept_proxy: f.accept_proxy,
            send_proxy: f.send_proxy,
        })
    }

    /// Applies a new forwarder list and re-reads every certificate. Established connections are
    /// untouched. On any error nothing changes. The engine-level settings (`threads`, `driver`,
    /// `ktls`, `busy_poll`, `metrics`, `log_level`) need a restart: a change to one is named in
    /// a warning.
    pub fn reload(&self, cfg: EngineConfig) -> Result<()> {
        self.reload_with(|| Ok(cfg))
    }

    /// [`Engine::reload`] with the configuration `load` returns; a failure to load counts as a
    /// failed reload in the metrics, like a failure to apply.
    pub fn reload_with(&self, load: impl FnOnce() -> Result<EngineConfig>) -> Result<()> {
        let mut current = self.config.lock().expect("config lock");
        self.reloads.attempt();
        let result = load().and_then(|cfg| {
            cfg.validate("configuration")?;
            // Every check before anything changes: a bad file refuses the whole reload.
            crate::shard::tunnel::agent::reload::check(&current, &cfg)?;
            let relays_changed = cfg.relays != current.relays;
            if relays_changed {
                crate::shard::tunnel::start::check_relays(&current, &cfg)?;
            }
            self.apply(&cfg, "configuration", true)?;
            let mut agents = self.agents.lock().expect("agents lock");
            let applied = crate::shard::tunnel::agent::reload::apply(
                &current,
                &cfg,
                &mut agents,
                &self.shards,
            );
            *self.agent_stats.lock().expect("agent stats lock") =
                agents.iter().map(|a| a.shared.clone()).collect();
            drop(agents);
            applied?;
            if relays_changed {
                let mut services = self.relays.lock().expect("relays lock");
                let mut planes = self.relay_planes.lock().expect("planes lock");
                crate::shard::tunnel::start::reload_relays(
                    &current,
                    &cfg,
                    &mut services,
                    &mut planes,
                    &self.shards,
                    &self.relay_stats,
                    &self.next_relay_id,
                )?;
                self.count_relays_in_kernel();
            }
            tracing::info!(
                forwarders = cfg.forwarders.len(),
                relays = cfg.relays.len(),
                sources = cfg.sources.len(),
                destinations = cfg.destinations.len(),
                "configuration reloaded"
            );
            *current = cfg;
            Ok(())
        });
        self.reloads.outcome(result.is_ok());
        result
    }

    /// Starts one more forwarder (a listener, or a connector when `listen` is empty), as a
    /// reload that adds it would; the others are untouched. Errors: a forwarder of that name
    /// runs already ([`Error::ForwarderExists`]), its address is taken ([`Error::Listen`], or
    /// [`Error::Config`] when another forwarder has it), or its configuration or certificates
    /// are wrong.
    pub fn add_forwarder(&self, f: ForwarderConfig) -> Result<()> {
        self.change("add_forwarder", |cfg| {
            let name = f.display_name();
            if cfg.forwarders.iter().any(|g| g.display_name() == name) {
                return Err(Error::ForwarderExists { name });
            }
            cfg.forwarders.push(f);
            Ok(())
        })
    }

    /// Stops accepting for forwarder `name` (its open connections carry on to their end), as a
    /// reload without it would. Error: no forwarder has that name ([`Error::UnknownForwarder`]).
    pub fn remove_forwarder(&self, name: &str) -> Result<()> {
        self.change("remove_forwarder", |cfg| {
            let before = cfg.forwarders.len();
            cfg.forwarders.retain(|g| g.display_name() != name);
            if cfg.forwarders.len() == before {
                return Err(Error::UnknownForwarder { name: name.into() });
            }
            Ok(())
        })
    }

    /// Replaces the forwarder of `f`'s name with `f` (certificates re-read), as a reload that
    /// changes it would: new connections use `f`, open ones carry on with what they started
    /// with; a new `listen` opens the new listener before the old one closes. Errors: no
    /// forwarder has that name ([`Error::UnknownForwarder`]), or the new address or
    /// configuration is refused (nothing changes then).
    pub fn replace_forwarder(&self, f: ForwarderConfig) -> Result<()> {
        self.change("replace_forwarder", |cfg| {
            let name = f.display_name();
            let Some(slot) = cfg.forwarders.iter_mut().find(|g| g.display_name() == name) else {
                return Err(Error::UnknownForwarder { name });
            };
            *slot = f;
            Ok(())
        })
    }

    /// Applies the configuration in force as `edit` changes it; on any error nothing changes.
    /// Forwarders `edit` left as they were keep running as they are (certificates not re-read).
    fn change(&self, call: &str, edit: impl FnOnce(&mut EngineConfig) -> Result<()>) -> Result<()> {
        let mut current = self.config.lock().expect("config lock");
        let mut cfg = current.clone();
        // Errors name the call, not a file that this change is not in.
        cfg.source_file = None;
        edit(&mut cfg)?;
        self.apply(&cfg, call, false)?;
        *current = cfg;
        Ok(())
    }

    /// Makes the forwarders of `cfg` run; `origin` names it in errors. `reread`: rebuild every
    /// forwarder (a reload re-reads certificates); else only those whose configuration changed.
    fn apply(&self, cfg: &EngineConfig, origin: &str, reread: bool) -> Result<()> {
        cfg.validate(origin)?;
        for key in self.start_only.changed(&StartOnly::of(cfg)) {
            tracing::warn!(
                key = %key,
                "changed in the configuration, but only a restart applies it; this reload \
                 applies the forwarders and certificates"
            );
        }
        let mut entries = self.entries.lock().expect("entries lock");
        let threads = self.shards.len();
        // Build everything first: a bad certificate aborts the reload with nothing changed.
        enum Plan {
            Keep(usize),
            Update(usize, Arc<Forwarder>),
            Add(
                Box<ForwarderConfig>,
                Arc<Forwarder>,
                Option<SocketAddr>,
                Vec<std::os::fd::OwnedFd>,
            ),
        }
        let mut plans = Vec::new();
        for (i, f) in cfg.forwarders.iter().enumerate() {
            let name = f.display_name();
            let existing = entries.iter().position(|e| e.fwd.name == name);
            if !reread && let Some(i) = existing.filter(|&i| entries[i].cfg == *f) {
                plans.push(Plan::Keep(i));
                continue;
            }
            let same_listen = existing.is_some_and(|i| entries[i].cfg.listen == f.listen);
            let stats = match existing {
                Some(i) if same_listen => entries[i].fwd.stats.clone(),
                _ => Arc::new(ListenerStats::default()),
            };
            let fwd = Arc::new(self.build_named(cfg, i, stats)?);
            warn_unresolved(f, &fwd);
            match existing {
                Some(i) if same_listen => plans.push(Plan::Update(i, fwd)),
                _ if !f.listens() => {
                    plans.push(Plan::Add(Box::new(f.clone()), fwd, None, Vec::new()));
                }
                _ => {
                    let want = f.listen_addr()?;
                    // A port that a forwarder which stays picked (`listen` with port 0) is not
                    // in the configuration, so validation cannot see the clash: name it here.
                    let stays = |e: &Entry| {
                        cfg.forwarders
                            .iter()
                            .any(|g| g.display_name() == e.fwd.name && g.listen == e.cfg.listen)
                    };
                    if let Some(other) = entries.iter().find(|e| {
                        e.fwd.name != name
                            && stays(e)
                            && e.addr.is_some_and(|a| listen_addrs_collide(a, want))
                    }) {
                        return Err(Error::config(
                            origin,
                            format!(
                                "forwarders \"{}\" and \"{name}\" both listen on {want} (\"{}\" \
                                 is on {}): each address can belong to one forwarder only",
                                other.fwd.name,
                                other.fwd.name,
                                other.addr.expect("checked above"),
                            ),
                        ));
                    }
                    // A listener we already own on this address (renamed, or moved between
                    // forwarders) is not "in use" by someone else.
                    let ours = entries.iter().any(|e| e.cfg.listen == f.listen);
                    let (addr, fds) = self.bind_all(want, threads, !ours)?;
                    plans.push(Plan::Add(Box::new(f.clone()), fwd, Some(addr), fds));
                }
            }
        }
        let keep: Vec<String> = cfg.forwarders.iter().map(|f| f.display_name()).collect();
        let mut updated = vec![false; entries.len()];
        let mut adds = Vec::new();
        for p in plans {
            match p {
                Plan::Keep(i) => updated[i] = true,
                Plan::Update(i, fwd) => {
                    updated[i] = true;
                    for s in &self.shards {
                        s.send(Command::UpdateListener {
                            id: entries[i].id,
                            fwd: fwd.clone(),
                        });
                    }
                    fwd.stats
                        .cert_not_after
                        .store(fwd.cert_not_after.unwrap_or(0), Relaxed);
                    entries[i].fwd = fwd;
                    entries[i].cfg = cfg
                        .forwarders
                        .iter()
                        .find(|f| f.display_name() == entries[i].fwd.name)
                        .expect("planned from this list")
                        .clone();
                }
                Plan::Add(f, fwd, addr, fds) => adds.push((*f, fwd, addr, fds)),
            }
        }
        // Remove what is gone (or moved to another address).
        let mut i = 0;
        while i < entries.len() {
            if !updated[i] {
                let e = entries.remove(i);
                updated.remove(i);
                for s in &self.shards {
                    s.send(Command::RemoveListener { id: e.id });
                }
                self.registry
                    .lock()
                    .expect("registry lock")
                    .retain(|(n, _, st)| !(n == &e.fwd.name && Arc::ptr_eq(st, &e.fwd.stats)));
                if !keep.contains(&e.fwd.name) {
                    tracing::info!(forwarder = %e.fwd.name, "forwarder removed");
                }
            } else {
                i += 1;
            }
        }
        drop(entries);
        for (f, fwd, addr, fds) in adds {
            self.install(f, fwd, addr, fds);
        }
        // In force on return: a connection made after this call meets the new forwarders.
        self.sync_shards();
        // A reload says so once everything else is in place too (`reload_with`).
        if !reread {
            tracing::info!(forwarders = cfg.forwarders.len(), call = %origin, "forwarders changed");
        }
        Ok(())
    }

    /// Waits until every shard has applied the commands sent to it so far (a shard that has
    /// exited, or one that does not answer within a second, is not waited for).
    fn sync_shards(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        for s in &self.shards {
            s.send(Command::Sync(tx.clone()));
        }
        drop(tx);
        let end = Instant::now() + Duration::from_secs(1);
        for _ in &self.shards {
            let left = end.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left).is_err() {
                break;
            }
        }
    }

    /// The address a forwarder listens on (useful with port 0); `None` for a connector.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.entries
            .lock()
            .expect("entries lock")
            .iter()
            .find(|e| e.fwd.name == name)
            .and_then(|e| e.addr)
    }

    /// A new connection of client-mode forwarder `forwarder`, for a program that would
    /// otherwise `connect(2)` to its listener: the returned socket (one end of a `socketpair`,
    /// blocking) is its plain leg. What the caller writes leaves as TLS to the forwarder's
    /// upstream, verified as the forwarder verifies it; what the upstream sends arrives
    /// decrypted. Shutting down the write side, or closing the socket, ends what the caller
    /// sends (`close_notify` after its last byte); the upstream's end arrives as end of file. The connection counts against the
    /// forwarder's `max_connections` and in its statistics like an accepted one; the shards
    /// take these connections in turn.
    ///
    /// A Unix socket has no reset: when the TLS side fails, the caller sees end of file (or
    /// `ECONNRESET` if bytes it wrote were still unread); the forwarder's error counters and
    /// log say which. Errors: no such forwarder ([`Error::UnknownForwarder`]), not in client
    /// mode ([`Error::NotClientMode`]), `max_connections` open ([`Error::AtCapacity`], counted
    /// as refused), the engine drains ([`Error::Draining`]), or the `socketpair` failed.
    pub fn connect(&self, forwarder: &str) -> Result<UnixStream> {
        if self.draining.load(Relaxed) {
            return Err(Error::Draining);
        }
        let (fwd, mode) = self
            .entries
            .lock()
            .expect("entries lock")
            .iter()
            .find(|e| e.fwd.name == forwarder)
            .map(|e| (e.fwd.clone(), e.cfg.mode))
            .ok_or_else(|| Error::UnknownForwarder {
                name: forwarder.into(),
            })?;
        // The caller's socket becomes the accepted leg, which must be the plain one.
        let crate::modes::Plan::PlainTls { tls_on, .. } = &fwd.plan;
        if *tls_on != crate::modes::Role::Dialed {
            return Err(Error::NotClientMode {
                name: fwd.name.clone(),
                mode,
            });
        }
        let (ours, theirs) = crate::sys::socketpair()?;
        let stats = fwd.stats.clone();
        if stats.active.fetch_add(1, Relaxed) as usize >= fwd.max_connections {
            stats.active.fetch_sub(1, Relaxed);
            stats.refused.fetch_add(1, Relaxed);
            return Err(Error::AtCapacity {
                name: fwd.name.clone(),
                max: fwd.max_connections,
            });
        }
        let mut conn = Handoff::new(ours, None, fwd);
        let first = self.next_shard.fetch_add(1, Relaxed);
        for k in 0..self.shards.len() {
            match self.shards[(first + k) % self.shards.len()].adopt(conn) {
                Ok(()) => {
                    stats.accepted.fetch_add(1, Relaxed);
                    return Ok(UnixStream::from(theirs));
                }
                // That shard has exited; another may not have.
                Err(back) => conn = back,
            }
        }
        // Every shard has exited; dropping `conn` gives its count back.
        Err(Error::Draining)
    }

    /// The counters of every forwarder.
    pub fn stats(&self) -> Vec<StatsSnapshot> {
        self.registry
            .lock()
            .expect("registry lock")
            .iter()
            .map(|(n, m, s)| s.snapshot(n, m.as_str()))
            .collect()
    }

    /// The address relay `name` listens on for agents (port 0 resolved), if it runs.
    pub fn relay_addr(&self, name: &str) -> Option<SocketAddr> {
        self.relay_planes
            .lock()
            .expect("planes lock")
            .iter()
            .find(|r| r.relay.name == name)
            .map(|r| r.addr)
    }

    /// The address of relay `name`'s tunnel API, if it runs.
    pub fn relay_api_addr(&self, name: &str) -> Option<SocketAddr> {
        self.relays
            .lock()
            .expect("relays lock")
            .iter()
            .find(|r| r.name() == name)
            .map(|r| r.api_addr())
    }

    /// The driver the shards run (never `Auto`).
    pub fn driver(&self) -> DriverKind {
        self.driver
    }

    /// Whether TLS sessions are handed to the kernel.
    pub fn ktls_enabled(&self) -> bool {
        self.ktls.is_some()
    }

    /// Stops accepting, lets open connections finish for at most `drain`, then closes the rest.
    pub fn shutdown(mut self, drain: Duration) {
        self.begin_drain();
        let open = || {
            self.registry
                .lock()
                .map(|r| {
                    r.iter()
                        .map(|(_, _, s)| s.active.load(Relaxed))
                        .sum::<u64>()
                })
                .unwrap_or(0)
        };
        tracing::info!(
            open = open(),
            drain_ms = drain.as_millis() as u64,
            "draining"
        );
        let end = Instant::now() + drain;
        while Instant::now() < end && !self.shards.iter().all(|s| s.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = open();
        if left > 0 {
            tracing::warn!(
                open = left,
                "drain time is up; closing the remaining connections"
            );
        }
        self.stop();
        tracing::info!("stopped");
    }

    /// Stops accepting and refuses [`Engine::connect`]; open connections carry on.
    fn begin_drain(&self) {
        self.draining.store(true, Relaxed);
        for s in &self.shards {
            s.send(Command::Drain);
        }
    }

    fn stop(&mut self) {
        for a in self.agents.lock().expect("agents lock").iter_mut() {
            a.stop();
        }
        for s in &self.shards {
            s.send(Command::Stop);
        }
        for s in &mut self.shards {
            s.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What [`Engine::check_file`] found.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The configuration, as `run` would start it.
    pub config: EngineConfig,
    /// Each forwarder, in the file's order.
    pub forwarders: Vec<CheckedForwarder>,
    /// What a start does not refuse but the operator should know (a relay's name that does
    /// not resolve now), each naming the file, the line and the key.
    pub warnings: Vec<String>,
}

/// What [`Engine::check_file`] found for one forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedForwarder {
    /// The name in logs and metrics.
    pub name: String,
    /// Client or server.
    pub mode: Mode,
    /// The address it would listen on, if any.
    pub listen: Listening,
    /// Where it forwards, as configured.
    pub connect: String,
    /// `connect`, resolved (its first address); `None` when its name does not resolve now and
    /// the forwarder has `unresolved_upstream = "reset"`.
    pub upstream: Option<SocketAddr>,
}

/// What a forwarder with `unresolved_upstream = "reset"` does when its upstream's name does not
/// resolve (`check`'s warning and the start's log line).
const UNRESOLVED_STARTS: &str = "the forwarder starts, and resets connections until it does";

/// Logs a warning when forwarder `f`'s upstream name did not resolve and it starts anyway.
fn warn_unresolved(f: &ForwarderConfig, fwd: &Forwarder) {
    if let Some(why) = fwd.unresolved() {
        tracing::warn!(forwarder = %f.display_name(), upstream = %f.connect, error = %why, "the upstream's name does not resolve yet; {UNRESOLVED_STARTS}");
    }
}

/// Where a checked forwarder would accept connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listening {
    /// On this address.
    At(SocketAddr),
    /// Nowhere: a connector, whose connections come from [`Engine::connect`] only.
    ConnectOnly,
}

impl std::fmt::Display for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listening::At(addr) => addr.fmt(f),
            Listening::ConnectOnly => f.write_str("(no listener: Engine::connect only)"),
        }
    }
}

/// The key of `f` that `build` failed on.
fn key_of_failure(f: &ForwarderConfig, e: &Error) -> &'static str {
    match e {
        Error::Certificate { path, .. } => [
            ("ca", &f.ca),
            ("cert", &f.cert),
            ("key", &f.key),
            ("client_ca", &f.client_ca),
        ]
        .into_iter()
        .find(|(_, p)| p.as_deref() == Some(path.as_path()))
        .map_or("cert", |(k, _)| k),
        Error::Address { addr, .. } if f.sni.as_deref() == Some(addr.as_str()) => "sni",
        Error::Config { .. } => "tls_versions",
        _ => "connect",
    }
}

impl Engine {
    /// The listening sockets of one forwarder, one per shard: the socket systemd passed for
    /// `addr` if there is one (shared by every shard), else freshly bound ones.
    fn bind_all(
        &self,
        addr: SocketAddr,
        threads: usize,
        check_free: bool,
    ) -> Result<(SocketAddr, Vec<std::os::fd::OwnedFd>)> {
        let mut activated = self.activated.lock().expect("activated lock");
        let Some((passed, used)) = activated
            .iter_mut()
            .find(|(s, _)| addr.port() != 0 && s.addr == addr)
        else {
            return bind_all(addr, threads, check_free);
        };
        let err = |source| Error::Listen { addr, source };
        crate::sys::socket::set_nonblocking(std::os::fd::AsFd::as_fd(&passed.fd)).map_err(err)?;
        let fds = (0..threads)
            .map(|_| passed.fd.try_clone().map_err(err))
            .collect::<Result<Vec<_>>>()?;
        *used = true;
        tracing::info!(name = %passed.name, addr = %addr, "using the socket passed by systemd");
        Ok((addr, fds))
    }
}

/// Binds one SO_REUSEPORT listener per shard on `addr` (port 0: the first picks the port).
fn bind_all(
    addr: SocketAddr,
    threads: usize,
    check_free: bool,
) -> Result<(SocketAddr, Vec<std::os::fd::OwnedFd>)> {
    if check_free {
        // SO_REUSEPORT would let us share a port with another process of the same user;
        // refuse that the way a plain bind would.
        shard::check_port_free(addr)?;
    }
    let first = shard::bind_listener(addr)?;
    let actual = shard::local_addr(&first).unwrap_or(addr);
    let mut fds = vec![first];
    for _ in 1..threads {
        fds.push(shard::bind_listener(actual)?);
    }
    Ok((actual, fds))
}

/// Raises the soft fd limit to the hard one, and warns when the forwarders' `max_connections`
/// (two fds each: the accepted socket and the one we open) cannot fit under it.
fn check_fd_limit(cfg: &EngineConfig) {
    let limit = match crate::sys::raise_nofile_limit() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the file descriptor limit (RLIMIT_NOFILE)");
            return;
        }
    };
    let conns: u64 = cfg
        .forwarders
        .iter()
        .map(|f| f.max_connections as u64)
        .sum();
    let needed = conns.saturating_mul(2);
    if needed > limit {
        tracing::warn!(
            limit,
            needed,
            "the file descriptor limit (RLIMIT_NOFILE) is below what max_connections allows \
             (two per connection); at the limit new connections wait in the backlog. Raise the \
             limit (ulimit -n, LimitNOFILE=) or lower max_connections"
        );
    }
}

#[cfg(test)]
mod tests;

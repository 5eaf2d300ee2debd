//! The flags every subcommand has (threads, driver, logs, metrics, drain, ...), and how they
//! override a configuration.

use std::time::Duration;

use clap::Args;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use splice_engine::{DriverKind, EbpfMode, EngineConfig, KtlsMode, LogFormat};

/// Flags every subcommand has. In `run` they override the file's keys; the defaults shown
/// apply when neither sets them.
#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// Shard threads [default: the number of cores].
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
    /// Data-plane driver: auto (io_uring when the kernel allows it, else epoll), uring, epoll
    /// [default: auto].
    #[arg(long, value_name = "KIND", env = "SPLICE_DRIVER", value_parser = driver_parser())]
    pub(crate) driver: Option<DriverKind>,
    /// Kernel TLS: auto (use it when the kernel has it), on (require it), off [default: auto].
    #[arg(long, value_name = "MODE", value_parser = ktls_parser())]
    pub(crate) ktls: Option<KtlsMode>,
    /// Kernel byte accounting with eBPF: auto (when the process may: CAP_BPF or root, cgroup
    /// v2), on (require it), off [default: auto].
    #[arg(long, value_name = "MODE", value_parser = ebpf_parser())]
    pub(crate) ebpf: Option<EbpfMode>,
    /// Log level: error, warn (or warning), info, debug, trace, off, or TARGET=LEVEL
    /// directives such as splice_engine=debug [default: info, or RUST_LOG when set].
    #[arg(long, value_name = "LEVEL", value_parser = log_level_parser)]
    pub(crate) log_level: Option<String>,
    /// Log format on stderr [default: text].
    #[arg(long, value_name = "FORMAT", value_parser = log_format_parser())]
    pub(crate) log_format: Option<LogFormat>,
    /// Serve Prometheus metrics at http://IP:PORT/metrics [default: off].
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) metrics: Option<String>,
    /// On SIGTERM/SIGINT, how long open connections may take to finish (e.g. 10s, 500ms)
    /// [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) drain_timeout: Option<Duration>,
    /// Busy polling: the longest a shard that ran out of work polls before it sleeps (0 turns
    /// it off). The window adapts: it grows while packets keep arriving soon after the shard
    /// went idle and shrinks to nothing for idle or sparse traffic and on a contended CPU.
    /// Lower latency for request/response traffic, for some CPU [default: 50us; 200us in a
    /// relay, source or destination, whose replies come back through more hops].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) busy_poll: Option<Duration>,
    /// No access line per connection (by default each connection's end is logged at info).
    #[arg(long)]
    pub(crate) no_access_log: bool,
}

/// `--driver`: its values listed in help and completions.
fn driver_parser() -> impl TypedValueParser<Value = DriverKind> {
    PossibleValuesParser::new([
        PossibleValue::new("auto"),
        PossibleValue::new("uring").alias("io_uring"),
        PossibleValue::new("epoll"),
    ])
    .map(|s| s.parse().expect("one of the possible values"))
}

/// `--ktls`: its values listed in help and completions.
fn ktls_parser() -> impl TypedValueParser<Value = KtlsMode> {
    PossibleValuesParser::new(["auto", "on", "off"])
        .map(|s| s.parse().expect("one of the possible values"))
}

/// `--ebpf`: its values listed in help and completions.
fn ebpf_parser() -> impl TypedValueParser<Value = EbpfMode> {
    PossibleValuesParser::new(["auto", "on", "off"])
        .map(|s| s.parse().expect("one of the possible values"))
}

/// `--log-format`: its values listed in help and completions.
fn log_format_parser() -> impl TypedValueParser<Value = LogFormat> {
    PossibleValuesParser::new(["text", "json"])
        .map(|s| s.parse().expect("one of the possible values"))
}

/// `--log-level`: a known level or directive, or an error that lists the levels.
fn log_level_parser(s: &str) -> Result<String, String> {
    splice_engine::logging::parse_filter(s)
}

impl Common {
    /// Flags override the file.
    pub(crate) fn apply(&self, cfg: &mut EngineConfig) {
        if self.threads.is_some() {
            cfg.threads = self.threads;
        }
        if let Some(d) = self.driver {
            cfg.driver = d;
        }
        if let Some(k) = self.ktls {
            cfg.ktls = k;
        }
        if let Some(m) = self.ebpf {
            cfg.ebpf = m;
        }
        if self.log_level.is_some() {
            cfg.log_level = self.log_level.clone();
        }
        if let Some(f) = self.log_format {
            cfg.log_format = f;
        }
        if self.metrics.is_some() {
            cfg.metrics = self.metrics.clone();
        }
        if let Some(d) = self.busy_poll {
            cfg.busy_poll = Some(d);
        }
        if let Some(d) = self.drain_timeout {
            cfg.drain_timeout = d;
        }
        if self.no_access_log {
            cfg.access_log = false;
            for f in &mut cfg.forwarders {
                f.access_log = Some(false);
            }
        }
    }
}

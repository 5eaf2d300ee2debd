//! The command line: subcommands and flags (clap), and how flags become an
//! [`splice_engine::EngineConfig`]; the flags every subcommand has are in `common_args`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueHint};
use splice_engine::{ForwarderConfig, Mode};

use crate::common_args::Common;

/// Encrypted TCP forwarding on an io_uring data plane with kernel TLS offload.
///
/// client: plain TCP in, TLS out. server: TLS in, plain TCP out. run: many of both from a file.
/// demo: a self-contained tour on loopback. probe: which kernel fast paths this machine has.
#[derive(Parser, Debug)]
#[command(name = "splice-engine", version, propagate_version = true)]
#[command(after_help = "Examples:
  splice-engine client --listen 127.0.0.1:3000 --connect db.example.com:443 --ca ca.pem
  splice-engine server --listen 0.0.0.0:443 --connect 127.0.0.1:8080 --cert c.pem --key k.pem
  splice-engine config example > splice.toml
  splice-engine check --config splice.toml && splice-engine run --config splice.toml")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Accept plain TCP and forward each connection over TLS to an upstream.
    #[command(after_help = "Examples:
  # plain TCP on :3000 -> TLS to db.example.com:443, verified against ca.pem
  splice-engine client --listen 127.0.0.1:3000 --connect db.example.com:443 --ca ca.pem

  # a client certificate, another SNI name, ALPN and TLS 1.3 only
  splice-engine client --listen 127.0.0.1:3000 --connect 10.0.0.5:443 --sni db.internal \\
      --cert client.pem --key client-key.pem --alpn postgresql --tls-version 1.3

SIGHUP reloads the certificate files; SIGTERM or SIGINT drains (see --drain-timeout).")]
    Client(ClientArgs),
    /// Terminate TLS (optionally requiring client certificates) and forward plain TCP.
    #[command(after_help = "Examples:
  # TLS on :443 -> plain TCP to a local backend
  splice-engine server --listen 0.0.0.0:443 --connect 127.0.0.1:8080 \\
      --cert server.pem --key server-key.pem

  # mutual TLS: require client certificates issued by clients-ca.pem
  splice-engine server --listen 0.0.0.0:443 --connect 127.0.0.1:8080 \\
      --cert server.pem --key server-key.pem --client-ca clients-ca.pem

SIGHUP reloads the certificate files; SIGTERM or SIGINT drains (see --drain-timeout).")]
    Server(ServerArgs),
    /// Run many forwarders from a TOML file; SIGHUP reloads it, SIGTERM drains and exits.
    ///
    /// On SIGHUP the file is read again and every certificate reloaded: forwarders and the
    /// tunnel tables ([[relay]], [[source]], [[destination]]) are added, changed and removed,
    /// and established connections of the others are untouched. If anything in the new file
    /// is wrong, the reload is refused, the log says why (file, line and key), and the
    /// previous configuration keeps running. The engine-level keys (threads, driver, ktls,
    /// ebpf, busy_poll, metrics, log_level, log_format) take effect at the next start. SIGTERM
    /// or SIGINT stops accepting and waits up to drain_timeout for open connections.
    ///
    /// Flags override the file's engine-level keys.
    #[command(after_help = "Examples:
  splice-engine config example > splice.toml   # a commented sample to edit
  splice-engine check --config splice.toml     # what `run` would load, without starting
  splice-engine run --config splice.toml
  kill -HUP $(pidof splice-engine)             # reload")]
    Run(RunArgs),
    /// Check a configuration file as `run` would load it, without starting anything.
    ///
    /// Parses the file, loads every certificate and key, parses and resolves every address
    /// (two forwarders on one address included), and prints a summary of the forwarders and
    /// exits 0, or prints the error (file, line and key) and exits 1. Nothing is bound. A
    /// tunnel agent's name that does not resolve now is a warning: the agent keeps trying.
    #[command(after_help = "Examples:
  splice-engine check --config /etc/splice-engine/splice.toml
  splice-engine check --config splice.toml && kill -HUP $(pidof splice-engine)")]
    Check(CheckArgs),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(after_help = "Examples:
  splice-engine completions bash > /etc/bash_completion.d/splice-engine
  splice-engine completions zsh > \"${fpath[1]}/_splice-engine\"
  splice-engine completions fish > ~/.config/fish/completions/splice-engine.fish")]
    Completions(CompletionsArgs),
    /// Print the manual page (roff), or write one page per subcommand to a directory.
    #[command(after_help = "Examples:
  splice-engine man | man -l -
  splice-engine man --dir /usr/local/share/man/man1")]
    Man(ManArgs),
    /// Create throwaway certificates, chain client -> server -> echo on loopback, push data
    /// through, and print what happened; `demo tunnel` does the same through a tunnel (relay,
    /// source and destination agents).
    #[command(after_help = "Examples:
  splice-engine demo
  splice-engine demo --bytes 1GiB --connections 8 --driver epoll
  splice-engine demo tunnel --bytes 64MiB")]
    Demo(DemoArgs),
    /// Report which kernel fast paths this machine offers (io_uring, kernel TLS and its ciphers)
    /// and what `--driver auto` / `--ktls auto` would choose.
    #[command(after_help = "Examples:
  splice-engine probe
  splice-engine probe --json")]
    Probe(ProbeArgs),
    /// Print a running engine's byte counts, read from its Prometheus endpoint (`--metrics` /
    /// `metrics =`): the engine's own counters beside the kernel's (eBPF accounting) per
    /// forwarder, relay, tunnel and agent service.
    #[command(after_help = "Examples:
  splice-engine stats --metrics 127.0.0.1:9898
  splice-engine stats --metrics 127.0.0.1:9898 --json")]
    Stats(StatsArgs),
    /// Run a tunnel relay: agents dial out to it (TLS + WebSocket) and it pairs each tunnel's
    /// source and destination; its API (HTTP, JSON) opens and closes tunnels.
    ///
    /// Compatible with AWS IoT Secure Tunneling: the AWS local proxy and device SDK clients
    /// connect to it as to AWS. The registry (tunnels, hashed tokens, lifetimes) is kept in a
    /// SQLite file (--state) and survives a restart. SIGTERM or SIGINT drains and exits.
    #[command(after_help = "Examples:
  splice-engine relay --listen 0.0.0.0:8443 --cert relay.pem --key relay-key.pem \\
      --api 127.0.0.1:8480 --api-token-file api.token --state /var/lib/splice/relay.sqlite
  splice-engine tunnel open --api http://127.0.0.1:8480 --api-token-file api.token \\
      --service SSH --source-token-file source.token --destination-token-file dest.token")]
    Relay(crate::tunnel_args::RelayArgs),
    /// Open, list, describe, rotate and close tunnels through a relay's API.
    #[command(subcommand)]
    Tunnel(crate::tunnel::TunnelCommand),
    /// Run a tunnel's source agent: local connections to each service's address go through
    /// the relay to the destination.
    ///
    /// The access token comes from --token-file, --token or the AWSIOT_TUNNEL_ACCESS_TOKEN
    /// environment variable (the AWS local proxy's). SIGTERM or SIGINT drains and exits.
    #[command(after_help = "Examples:
  # ssh -p 2222 localhost reaches the device's SSH
  splice-engine source --relay relay.example.com:8443 --token-file source.token \\
      --listen SSH=127.0.0.1:2222
  AWSIOT_TUNNEL_ACCESS_TOKEN=$(cat source.token) \\
      splice-engine source --relay relay.example.com:8443 --listen 127.0.0.1:2222")]
    Source(crate::tunnel_args::SourceArgs),
    /// Run a tunnel's destination agent (on the device): each stream of the tunnel is
    /// connected to its service's address.
    ///
    /// The access token comes from --token-file, --token or the AWSIOT_TUNNEL_ACCESS_TOKEN
    /// environment variable (the AWS local proxy's). SIGTERM or SIGINT drains and exits.
    #[command(after_help = "Examples:
  splice-engine destination --relay relay.example.com:8443 --token-file dest.token \\
      --connect SSH=127.0.0.1:22 --connect HTTP=127.0.0.1:80")]
    Destination(crate::tunnel_args::DestinationArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Print a commented sample configuration file with every key.
    #[command(after_help = "Examples:
  splice-engine config example > splice.toml")]
    Example,
}

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// The configuration file (TOML) to check.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) config: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    #[arg(value_name = "SHELL")]
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub(crate) struct ManArgs {
    /// Write splice-engine.1 and a page per subcommand into this directory instead of printing
    /// the main page [default: print to stdout].
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub(crate) dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct ProbeArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `stats` flags.
#[derive(Args, Debug)]
pub(crate) struct StatsArgs {
    /// The engine's metrics address (its `--metrics` or `metrics =`).
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) metrics: String,
    /// Print JSON (one object per sample) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Flags of one forwarder (client and server subcommands).
#[derive(Args, Debug, Clone)]
pub(crate) struct ForwarderArgs {
    /// Address to accept connections on (IP:PORT; port 0 picks a free port).
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) listen: String,
    /// Where to forward connections (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) connect: String,
    /// Name in logs and metrics [default: MODE-LISTEN, e.g. client-127.0.0.1:3000].
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// ALPN protocol to offer (client) or accept (server); repeatable [default: none].
    #[arg(long = "alpn", value_name = "PROTOCOL")]
    pub(crate) alpn: Vec<String>,
    /// Allowed TLS version, 1.2 or 1.3; repeatable [default: both].
    #[arg(long = "tls-version", value_name = "VERSION", value_parser = ["1.2", "1.3"])]
    pub(crate) tls_versions: Vec<String>,
    /// Most connections open at once; more are refused (reset) [default: 10000].
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Time allowed to connect to each address of the upstream (a name's next address is tried
    /// after it) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) connect_timeout: Option<Duration>,
    /// Time allowed for the TLS handshake [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) handshake_timeout: Option<Duration>,
    /// Reset connections that move no byte in either direction for this long (default: off).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Option<Duration>,
    /// Turn TLS session resumption off: every connection does a full handshake.
    #[arg(long)]
    pub(crate) no_resumption: bool,
    /// Expect a PROXY protocol header (v1 or v2) from a load balancer on every accepted
    /// connection; the client address it carries is used in logs and in --send-proxy.
    #[arg(long)]
    pub(crate) accept_proxy: bool,
    /// When --connect's host name does not resolve at start: fail (do not start), or reset
    /// (start, and reset connections until it resolves; for a device up before its network)
    /// [default: fail].
    #[arg(long, value_name = "WHAT")]
    pub(crate) unresolved_upstream: Option<splice_engine::UnresolvedUpstream>,
}

#[derive(Args, Debug)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    pub(crate) fwd: ForwarderArgs,
    /// CA certificates (PEM) to verify the upstream with [default: the system's roots].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) ca: Option<PathBuf>,
    /// Trust exactly this key instead of a CA: sha256:<base64 or hex> of the upstream's public
    /// key (SPKI) or whole certificate; repeatable. Names and dates are not checked.
    #[arg(long = "pin", value_name = "sha256:HASH", conflicts_with = "ca")]
    pub(crate) pin: Vec<String>,
    /// Server name to send (SNI) and verify [default: the host of --connect].
    #[arg(long, value_name = "NAME")]
    pub(crate) sni: Option<String>,
    /// Client certificate chain (PEM) to present; needs --key [default: none].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Private key (PEM) of --cert [default: none].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    #[command(flatten)]
    pub(crate) fwd: ForwarderArgs,
    /// Certificate chain (PEM) to present.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of --cert.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) key: PathBuf,
    /// CA certificates (PEM): require client certificates issued by them [default: none, no
    /// client certificate is asked for].
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) client_ca: Option<PathBuf>,
    /// Send a PROXY protocol header (v1 or v2) to the backend, so it sees the client address.
    #[arg(long, value_name = "VERSION")]
    pub(crate) send_proxy: Option<splice_engine::ProxyVersion>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The configuration file (TOML); `splice-engine config example` prints one with every key.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub(crate) config: PathBuf,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// What to show: `forwarders` (client mode -> server mode -> echo) or `tunnel` (source ->
    /// relay -> destination -> echo).
    #[arg(value_enum, default_value = "forwarders")]
    pub(crate) what: DemoKind,
    /// Bytes to push through the chain each way (e.g. 64MiB, 1GiB, 1000000).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub(crate) bytes: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// What `demo` shows.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DemoKind {
    /// Client mode -> TLS -> server mode -> echo.
    Forwarders,
    /// Source -> relay -> destination -> echo, the tunnel opened through the relay's API.
    Tunnel,
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
    pub(crate) fn into_config(self, mode: Mode) -> ForwarderConfig {
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
        f.idle_timeout = self.idle_timeout;
        f.resumption = !self.no_resumption;
        f.accept_proxy = self.accept_proxy;
        if let Some(then) = self.unresolved_upstream {
            f.unresolved_upstream = then;
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use splice_engine::EngineConfig;

    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// An access token is base64url and a client token may hold `-`: one in 64 tokens starts
    /// with `-`, and clap must take it as the flag's value, not as another flag.
    #[test]
    fn tokens_may_start_with_a_hyphen() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "splice-engine",
            "source",
            "--relay",
            "127.0.0.1:1",
            "--token",
            "-UUuDs2bhEbpDs7KBDDCy1OM1AwI9eJyuuQHsC7zCK0",
            "--client-token",
            "--0123456789abcdef0123456789abcdef",
            "--listen",
            "ssh=127.0.0.1:2",
        ])
        .expect("parses");
        let Command::Source(a) = cli.command else {
            panic!("a source command")
        };
        assert_eq!(
            a.agent.token.as_deref(),
            Some("-UUuDs2bhEbpDs7KBDDCy1OM1AwI9eJyuuQHsC7zCK0")
        );
        assert_eq!(
            a.agent.client_token.as_deref(),
            Some("--0123456789abcdef0123456789abcdef")
        );
    }

    /// Every optional flag that takes a value says its default, every subcommand has examples,
    /// and the defaults the help states are the ones the engine uses.
    #[test]
    fn help_shows_every_default_and_an_example() {
        let cli = Cli::command();
        let mut commands: Vec<&clap::Command> = cli.get_subcommands().collect();
        let nested: Vec<&clap::Command> =
            commands.iter().flat_map(|c| c.get_subcommands()).collect();
        commands.extend(nested);
        for cmd in commands {
            if cmd.get_subcommands().next().is_some() {
                continue; // a group such as `config`: its subcommands are checked
            }
            let after = cmd
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                after.contains("Examples:") && after.contains("splice-engine"),
                "{} has no example",
                cmd.get_name()
            );
            for arg in cmd.get_arguments() {
                let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
                if !takes_value || arg.is_required_set() || arg.is_positional() {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    !arg.get_default_values().is_empty() || help.contains("[default: "),
                    "{} --{}: no default in its help",
                    cmd.get_name(),
                    arg.get_id()
                );
            }
        }
        let f = ForwarderConfig::new(Mode::Client, "127.0.0.1:1", "a:1");
        let e = EngineConfig::default();
        let help = |sub: &str| {
            let mut cmd = Cli::command();
            cmd.find_subcommand_mut(sub)
                .expect("subcommand")
                .render_long_help()
                .to_string()
        };
        let client = help("client");
        for default in [
            f.max_connections.to_string(),
            humantime::format_duration(f.connect_timeout).to_string(),
            humantime::format_duration(f.handshake_timeout).to_string(),
            humantime::format_duration(e.drain_timeout).to_string(),
            e.driver.to_string(),
            e.ktls.to_string(),
            e.ebpf.to_string(),
            e.log_format.to_string(),
        ] {
            assert!(
                client.contains(&format!("[default: {default}]")),
                "client --help does not show the default {default}:\n{client}"
            );
        }
        let poll = humantime::format_duration(e.busy_poll_ceiling()).to_string();
        assert!(
            client.contains(&format!("[default: {poll};")),
            "client --help does not show the busy-poll default {poll}:\n{client}"
        );
        let run = help("run");
        assert!(run.contains("SIGHUP") && run.contains("refused"), "{run}");
    }

    #[test]
    fn log_level_flag_rejects_unknown_levels() {
        let parse = |level: &str| {
            Cli::try_parse_from([
                "splice-engine",
                "run",
                "--config",
                "x",
                "--log-level",
                level,
            ])
        };
        let err = parse("verbose").unwrap_err().to_string();
        assert!(err.contains("error, warn"), "{err}");
        let Command::Run(a) = parse("warning").unwrap().command else {
            panic!("not run")
        };
        assert_eq!(a.common.log_level.as_deref(), Some("warn"));
    }
}

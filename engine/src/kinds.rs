//! The plain choices a configuration makes (mode, driver, kTLS, log format, PROXY version).
//!
//! These enums sit at the bottom of the crate, importing nothing from it, so that the
//! configuration, the errors, the TLS texts and the data plane can all name them without
//! importing each other. [`crate::config`] re-exports them.

use serde::Deserialize;

/// Which data-plane driver the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    /// io_uring, or fail at start.
    Uring,
    /// epoll.
    Epoll,
}

impl std::str::FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "epoll" => Ok(Self::Epoll),
            other => Err(format!(
                "unknown driver {other:?} (expected auto, uring or epoll)"
            )),
        }
    }
}

impl DriverKind {
    /// `"auto"`, `"uring"` or `"epoll"`, as the flag and the file spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Epoll => "epoll",
        }
    }
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `FromStr` and `Display` for a mode that is `auto`, `on` or `off`; `what` names it in the
/// error.
macro_rules! auto_on_off {
    ($ty:ty, $what:literal) => {
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    "auto" => Ok(Self::Auto),
                    "on" => Ok(Self::On),
                    "off" => Ok(Self::Off),
                    other => Err(format!(
                        concat!("unknown ", $what, " mode {:?} (expected auto, on or off)"),
                        other
                    )),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    Self::Auto => "auto",
                    Self::On => "on",
                    Self::Off => "off",
                })
            }
        }
    };
}

/// Whether TLS legs are handed to the kernel after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KtlsMode {
    /// Use kTLS when the kernel has it (and the negotiated cipher), else user-space TLS.
    #[default]
    Auto,
    /// Require kTLS: fail at start when the kernel lacks it.
    On,
    /// Never use kTLS.
    Off,
}

auto_on_off!(KtlsMode, "kTLS");

/// Whether the engine counts bytes in the kernel too (eBPF, see docs/ebpf.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EbpfMode {
    /// Load the accounting program when the process may (CAP_BPF or root, cgroup v2, a build
    /// with the `ebpf` feature); otherwise say once in the log why, and count in user space only.
    #[default]
    Auto,
    /// Require it: fail at start, with the reason, when it cannot be loaded.
    On,
    /// Never load it.
    Off,
}

auto_on_off!(EbpfMode, "eBPF");

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of `key=value` text per event.
    #[default]
    Text,
    /// One JSON object per line, with numbers and booleans as JSON numbers and booleans.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// What a forwarder does with the connections it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Accept plain TCP, forward over TLS.
    Client,
    /// Accept TLS, forward plain TCP.
    Server,
}

impl Mode {
    /// `"client"` or `"server"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Client => "client",
            Mode::Server => "server",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A PROXY protocol version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The text form, `PROXY TCP4 ...`.
    V1,
    /// The binary form.
    V2,
}

impl std::str::FromStr for ProxyVersion {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "v1" | "1" => Ok(Self::V1),
            "v2" | "2" => Ok(Self::V2),
            other => Err(format!(
                "unknown PROXY protocol version {other:?} (expected v1 or v2)"
            )),
        }
    }
}

/// What a forwarder does when its upstream's name does not resolve at start (or at a reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnresolvedUpstream {
    /// The forwarder does not start, and the error names the key (nginx's and HAProxy's
    /// default).
    #[default]
    Fail,
    /// The forwarder starts with a warning; each connection is reset, saying why, and the name
    /// is looked up again (at most once a second) until it resolves (a device that starts
    /// before its network, as HAProxy's `init-addr none`).
    Reset,
}

impl std::str::FromStr for UnresolvedUpstream {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "reset" => Ok(Self::Reset),
            other => Err(format!("{other:?} is not one of fail, reset")),
        }
    }
}

/// How a forwarder's accepted connections are spread over the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// The kernel's SO_REUSEPORT hash picks the shard that accepts, and that shard serves it.
    #[default]
    Kernel,
    /// Each shard hands the connections it accepts to every shard in turn (itself included),
    /// so that a few long-lived connections the hash put on one shard spread over the cores.
    RoundRobin,
}

impl std::str::FromStr for Balance {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "kernel" => Ok(Self::Kernel),
            "round-robin" => Ok(Self::RoundRobin),
            other => Err(format!(
                "unknown balance {other:?} (expected kernel or round-robin)"
            )),
        }
    }
}

impl Balance {
    /// `"kernel"` or `"round-robin"`, as the file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::RoundRobin => "round-robin",
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

//! The engine's one public error type, grouped by fault.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use crate::sys::SyscallError;

/// Which side of a forwarded connection a failure came from.
///
/// Accounting, logging and retry decisions use this rather than parsing strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The accepted connection (the legacy app in client mode, the TLS peer in server mode).
    Downstream,
    /// The connection we opened (the TLS upstream in client mode, the backend in server mode).
    Upstream,
    /// The TLS layer itself (handshake, verification, record protection), on whichever leg runs TLS.
    Tls,
    /// The engine itself (a driver or resource failure).
    Internal,
}

impl Side {
    /// The lower-case label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Tls => "tls",
            Side::Internal => "internal",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- configuration or API misuse ----
    /// A configuration file (or a flag) is invalid; `file` names it, `key` the offending key.
    #[error("{file}: {message}")]
    Config {
        /// The file (or `"command line"`).
        file: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A certificate, key or CA file is missing, unreadable or wrong.
    #[error("{}: {what}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// An address did not parse or did not resolve.
    #[error("invalid address {addr:?}: {why}")]
    Address {
        /// The address as given.
        addr: String,
        /// Why it is not usable.
        why: String,
    },
    /// A listener could not be opened (port in use, permission, ...).
    #[error("cannot listen on {addr}: {source}{}", listen_hint(addr, source))]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// [`crate::Engine::connect`], `remove_forwarder` or `replace_forwarder` named a forwarder
    /// the engine does not run.
    #[error("no forwarder is named {name:?}")]
    UnknownForwarder {
        /// The name given.
        name: String,
    },
    /// [`crate::Engine::add_forwarder`] was given the name of a forwarder already running.
    #[error("a forwarder named {name:?} is already running (replace_forwarder changes it)")]
    ForwarderExists {
        /// The name given.
        name: String,
    },
    /// [`crate::Engine::connect`] named a forwarder that is not in client mode.
    #[error(
        "forwarder {name:?} is in {mode} mode; Engine::connect needs a client-mode forwarder \
         (plain in, TLS out)"
    )]
    NotClientMode {
        /// The forwarder.
        name: String,
        /// Its mode.
        mode: crate::kinds::Mode,
    },
    /// [`crate::Engine::connect`] while the engine drains or stops: no new connections.
    #[error("the engine is draining: it takes no new connections")]
    Draining,
    /// A feature was required (`--driver uring`, `--ktls on`) but the kernel refuses it.
    #[error("{feature} is not available: {why}")]
    Unavailable {
        /// The feature.
        feature: &'static str,
        /// Why not.
        why: String,
    },

    // ---- kernel or syscall failures ----
    /// A system call failed.
    #[error(transparent)]
    Syscall(#[from] SyscallError),
    /// Other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// A relay's tunnel API refused a call (`status` and its message), or gave no answer
    /// (`status` is `None`; the message says why).
    #[error("{}", tunnel_api_text(method, url, status, message))]
    TunnelApi {
        /// `GET` or `POST`.
        method: String,
        /// The URL called.
        url: String,
        /// The HTTP status of a refusal.
        status: Option<u16>,
        /// The API's message, or what failed.
        message: String,
    },

    // ---- peer protocol violations ----
    /// A TLS configuration was refused by rustls (its text says why in words, not in rustls's
    /// debug forms).
    #[error("TLS: {}", crate::explain::explain(.0, crate::kinds::Mode::Client))]
    Tls(#[from] rustls::Error),
    /// The kTLS peer sent a record we cannot handle after the hand-off.
    #[error("kTLS: {0}")]
    KtlsRecord(String),

    // ---- resource exhaustion ----
    /// [`crate::Engine::connect`] found the forwarder at its `max_connections`; the connection
    /// was refused (and counted as refused).
    #[error("forwarder {name:?} has max_connections ({max}) open; the connection was refused")]
    AtCapacity {
        /// The forwarder.
        name: String,
        /// Its `max_connections`.
        max: usize,
    },
}

impl Error {
    /// A configuration error in `file`.
    pub fn config(file: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            file: file.into(),
            message: message.into(),
        }
    }

    /// A certificate-file error.
    pub fn certificate(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Certificate {
            path: path.into(),
            what: what.into(),
        }
    }
}

impl From<crate::sys::ktls::Error> for Error {
    fn from(e: crate::sys::ktls::Error) -> Self {
        match e {
            crate::sys::ktls::Error::Unavailable { feature, why } => {
                Error::Unavailable { feature, why }
            }
            crate::sys::ktls::Error::Syscall(e) => Error::Syscall(e),
        }
    }
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Makes the error for a problem at a key of a configuration table, from a sentence about
/// the key: the caller adds where the table is (the file, the line, the table and its name).
pub(crate) type Bad<'a> = dyn Fn(&'static str, String) -> Error + 'a;

/// `e`, met loading the file at `key` of a table, placed by `bad`: a certificate error keeps
/// its kind (the bindings report it as one) and its words, with where the file is set in
/// parentheses; any other error becomes `bad`'s, naming the key.
pub(crate) fn placed(bad: &Bad<'_>, key: &'static str, e: Error) -> Error {
    match e {
        Error::Certificate { path, what } => {
            let place = bad(key, format!("`{key}`"));
            Error::Certificate {
                path,
                what: format!("{what} ({place})"),
            }
        }
        other => bad(key, format!("`{key}`: {other}")),
    }
}

fn tunnel_api_text(method: &str, url: &str, status: &Option<u16>, message: &str) -> String {
    match status {
        Some(s) => format!("the tunnel API refused {method} {url} ({s}): {message}"),
        None => format!("{method} {url}: {message}"),
    }
}

/// A hint for the listen error an operator meets first: a port below 1024 as a non-root user.
fn listen_hint(addr: &SocketAddr, e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied && addr.port() < 1024 {
        " (ports below 1024 need root or CAP_NET_BIND_SERVICE: run under systemd with \
         AmbientCapabilities=CAP_NET_BIND_SERVICE, see contrib/splice-engine.service, or \
         `setcap cap_net_bind_service=+ep` on the binary)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sys` has its own kTLS error so that it imports nothing from above; callers above it
    /// must still see the engine's variants and the same words.
    #[test]
    fn ktls_errors_keep_their_variant_and_text() {
        let low = crate::sys::ktls::Error::Unavailable {
            feature: "kernel TLS",
            why: "the negotiated cipher has no kernel implementation".to_owned(),
        };
        let text = low.to_string();
        let err = Error::from(low);
        assert!(
            matches!(err, Error::Unavailable { feature: "kernel TLS", ref why } if why.contains("cipher")),
            "{err:?}"
        );
        assert_eq!(err.to_string(), text);
        assert_eq!(
            text,
            "kernel TLS is not available: the negotiated cipher has no kernel implementation"
        );

        let low = crate::sys::ktls::Error::Syscall(SyscallError::new(
            "setsockopt(SOL_TCP, TCP_ULP)",
            io::Error::from(io::ErrorKind::NotFound),
        ));
        let text = low.to_string();
        let err = Error::from(low);
        let Error::Syscall(e) = &err else {
            panic!("expected a syscall error, got {err:?}");
        };
        assert_eq!(e.call, "setsockopt(SOL_TCP, TCP_ULP)");
        assert_eq!(err.to_string(), text);
        assert!(text.starts_with("setsockopt(SOL_TCP, TCP_ULP): "), "{text}");
    }
}

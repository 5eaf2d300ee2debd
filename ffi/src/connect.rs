//! `tunnel_connect`: a connector per set of options (added on first use, kept for the
//! engine's life), and a connection through it as a plain file descriptor.

use std::ffi::{c_char, c_int};
use std::os::fd::IntoRawFd;
use std::sync::{Arc, Mutex};

use splice_engine::{Engine, EngineConfig, ForwarderConfig, Mode};

use crate::boundary::{entry, opt_str_arg, ref_arg, str_arg, write_out};
use crate::engine::{alpn_list, pin_list, tunnel_engine};
use crate::error::{Failure, tunnel_result};

/// How `tunnel_connect` verifies and authenticates to the upstream. Strings are
/// NUL-terminated UTF-8, borrowed for the call; NULL or `""` leaves one unset. A NULL
/// `tunnel_connect_opts*` means all unset. Zero the struct before setting fields (`memset`,
/// or `= {0}`), so that fields a later version adds stay unset.
#[repr(C)]
pub struct tunnel_connect_opts {
    /// CA file (PEM) to verify the upstream's certificate with (default: `ca_pem`, else the
    /// system roots).
    pub ca_file: *const c_char,
    /// CA certificates as PEM text, instead of `ca_file` (not both).
    pub ca_pem: *const c_char,
    /// The name to send (SNI) and verify (default: the host of `host:port`).
    pub sni: *const c_char,
    /// Client certificate chain file (PEM), for upstreams that ask for one.
    pub cert: *const c_char,
    /// Private key file (PEM) for `cert`.
    pub key: *const c_char,
    /// ALPN protocols to offer, comma-separated.
    pub alpn: *const c_char,
    /// Trust an upstream whose key (or whole certificate) has one of these hashes,
    /// comma-separated, each `sha256:<base64 or hex>`, instead of a CA (not with `ca_file` or
    /// `ca_pem`); names and dates are not checked. For a self-signed upstream.
    pub pin: *const c_char,
}

/// The client-mode forwarder `tunnel_connect` needs for `upstream` and `o` (its name left
/// empty: equal settings share one connector).
fn connector_config(
    upstream: &str,
    o: Option<&tunnel_connect_opts>,
) -> Result<ForwarderConfig, Failure> {
    let field = |p: Option<*const c_char>, what| -> Result<Option<String>, Failure> {
        Ok(match p {
            Some(p) => opt_str_arg(p, what)?.map(str::to_string),
            None => None,
        })
    };
    let mut f = ForwarderConfig::new(Mode::Client, "", upstream);
    f.ca = field(o.map(|o| o.ca_file), "ca_file")?.map(Into::into);
    f.ca_pem = field(o.map(|o| o.ca_pem), "ca_pem")?;
    f.sni = field(o.map(|o| o.sni), "sni")?;
    f.cert = field(o.map(|o| o.cert), "cert")?.map(Into::into);
    f.key = field(o.map(|o| o.key), "key")?.map(Into::into);
    f.alpn = alpn_list(field(o.map(|o| o.alpn), "alpn")?.as_deref());
    f.pin = pin_list(field(o.map(|o| o.pin), "pin")?.as_deref());
    Ok(f)
}

/// The connector for `f` on `h`, added on first use; its name.
fn connector(h: &tunnel_engine, f: ForwarderConfig) -> Result<String, Failure> {
    let mut known = h.connectors.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, name)) = known.iter().find(|(c, _)| *c == f) {
        return Ok(name.clone());
    }
    let name = format!("tunnel-connect-{}", known.len() + 1);
    let mut named = f.clone();
    named.name = name.clone();
    named.validate("tunnel_connect options")?;
    h.with(|e| Ok(e.add_forwarder(named)?))?;
    known.push((f, name.clone()));
    Ok(name)
}

/// The engine `tunnel_connect(NULL, ...)` uses: one shard thread, started on first use.
static DEFAULT: Mutex<Option<Arc<tunnel_engine>>> = Mutex::new(None);

fn default_engine() -> Result<Arc<tunnel_engine>, Failure> {
    let mut slot = DEFAULT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let h = Arc::new(tunnel_engine::new(Engine::start(
        EngineConfig::new().threads(1),
    )?));
    *slot = Some(h.clone());
    Ok(h)
}

/// Opens a connection to `host_port` (`HOST:PORT`) over TLS and writes its plain end to
/// `*fd`: what the program writes to `*fd` leaves as TLS, verified as `opts` says; what the
/// upstream sends arrives decrypted. `*fd` is a blocking, connected stream socket (`AF_UNIX`)
/// the program owns: it uses `read`, `write`, `poll`, `shutdown` and `close` on it as on a
/// TCP socket it connected. `shutdown(fd, SHUT_WR)` or `close` ends what the program sends
/// (the upstream gets its bytes, then `close_notify`).
///
/// The call returns before the TCP connection and TLS handshake are done; when they fail
/// (unreachable upstream, verification failure), the program's next `read` returns 0 (or
/// fails with `ECONNRESET` when bytes it wrote were not taken), and the engine's statistics
/// count the failure in `errors_upstream` or `errors_tls` of the connector
/// (`tunnel-connect-N`) and its log says why.
///
/// `engine` is the engine to run the connection on, or NULL for a process-wide engine with
/// one thread, started on the first such call (`tunnel_default_engine_shutdown` stops it). The
/// first call with a set of options adds a connector for them to the engine (which reads the
/// CA, certificate and key files then); later calls with equal options reuse it.
///
/// Thread-safe. Errors: `TUNNEL_ERR_NULL_ARGUMENT` (`host_port` or `fd`),
/// `TUNNEL_ERR_INVALID_ARGUMENT`, `TUNNEL_ERR_CONFIG` (`host_port` is not `HOST:PORT`, or both
/// `ca_file` and `ca_pem`),
/// `TUNNEL_ERR_CERTIFICATE` (the message names the CA, certificate or key file, or `ca_pem`),
/// `TUNNEL_ERR_ADDRESS`, `TUNNEL_ERR_AT_CAPACITY`, `TUNNEL_ERR_SHUT_DOWN`, `TUNNEL_ERR_IO`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_connect(
    engine: *const tunnel_engine,
    host_port: *const c_char,
    opts: *const tunnel_connect_opts,
    fd: *mut c_int,
) -> tunnel_result {
    entry("tunnel_connect", || {
        let upstream = str_arg(host_port, "host_port")?;
        if fd.is_null() {
            return write_out(fd, -1, "fd");
        }
        let opts = if opts.is_null() {
            None
        } else {
            Some(ref_arg(opts, "opts")?)
        };
        let k = connector_config(upstream, opts)?;
        let held;
        let h = if engine.is_null() {
            held = default_engine()?;
            &*held
        } else {
            ref_arg(engine, "engine")?
        };
        let name = connector(h, k)?;
        let sock = h.with(|e| Ok(e.connect(&name)?))?;
        write_out(fd, sock.into_raw_fd(), "fd")
    })
}

/// Opens a connection through client-mode forwarder `name` of `engine` (one from its
/// configuration, a connector with no `listen`, or one `tunnel_connect` added) and writes its
/// plain end to `*fd`, as `tunnel_connect` does. Thread-safe. Errors:
/// `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_UNKNOWN_FORWARDER`, `TUNNEL_ERR_NOT_CLIENT_MODE`,
/// `TUNNEL_ERR_AT_CAPACITY`, `TUNNEL_ERR_SHUT_DOWN`, `TUNNEL_ERR_IO`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_connect(
    engine: *const tunnel_engine,
    name: *const c_char,
    fd: *mut c_int,
) -> tunnel_result {
    entry("tunnel_engine_connect", || {
        let h = ref_arg(engine, "engine")?;
        let name = str_arg(name, "name")?;
        if fd.is_null() {
            return write_out(fd, -1, "fd");
        }
        let sock = h.with(|e| Ok(e.connect(name)?))?;
        write_out(fd, sock.into_raw_fd(), "fd")
    })
}

/// Stops the process-wide engine of `tunnel_connect(NULL, ...)` and frees it: it takes no new
/// connection, lets the open ones finish for at most `drain_ms` milliseconds (what the
/// program wrote before closing its socket is delivered in that time), closes the rest, and
/// returns when its thread has stopped. A later `tunnel_connect(NULL, ...)` starts a new one.
/// A no-op when none runs. Call it when no other thread is inside `tunnel_connect(NULL, ...)`.
/// Always `TUNNEL_OK`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_default_engine_shutdown(drain_ms: u32) -> tunnel_result {
    entry("tunnel_default_engine_shutdown", || {
        let h = DEFAULT.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(e) = h.and_then(|h| h.engine.write().unwrap_or_else(|p| p.into_inner()).take())
        {
            e.shutdown(std::time::Duration::from_millis(drain_ms.into()));
        }
        Ok(())
    })
}

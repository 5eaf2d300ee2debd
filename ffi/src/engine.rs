//! Configurations, engines, forwarders and statistics.

use std::ffi::{CString, c_char};
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use splice_engine::{Engine, EngineConfig, ForwarderConfig, Mode, StatsSnapshot};

use crate::boundary::{
    entry, mut_arg, opt_str_arg, put_box, ref_arg, str_arg, take_box, take_slice, take_string,
    write_out,
};
use crate::error::{Failure, tunnel_result};

/// Client mode: plain TCP in, TLS out.
pub const TUNNEL_MODE_CLIENT: u32 = 0;
/// Server mode: TLS in, plain TCP out.
pub const TUNNEL_MODE_SERVER: u32 = 1;

/// An engine configuration being built: from TOML, or empty and filled by option calls.
/// Owned by the program until `tunnel_config_free`. Not thread-safe: one thread at a time.
pub struct tunnel_config(EngineConfig);

/// A running engine (shard threads, listeners, connectors). Owned by the program until
/// `tunnel_engine_free`. Every call on it is thread-safe, except `tunnel_engine_free`, which
/// must come after every other thread's last call.
pub struct tunnel_engine {
    /// `None` once shut down.
    pub(crate) engine: RwLock<Option<Engine>>,
    /// The connectors `tunnel_connect` added (see connect.rs): each one's settings, with an
    /// empty name, and its name.
    pub(crate) connectors: Mutex<Vec<(ForwarderConfig, String)>>,
}

impl tunnel_engine {
    pub(crate) fn new(engine: Engine) -> Self {
        Self {
            engine: RwLock::new(Some(engine)),
            connectors: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let guard = self.engine.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(e) => f(e),
            None => Err(Failure::new(
                tunnel_result::TUNNEL_ERR_SHUT_DOWN,
                "the engine was shut down",
            )),
        }
    }
}

/// One forwarder's settings. Strings are NUL-terminated UTF-8, borrowed for the call only;
/// NULL or `""` leaves an optional one unset. Paths are relative to the working directory.
/// Zero the struct before setting fields (`memset`, or `= {0}`), so that fields a later
/// version adds stay unset.
#[repr(C)]
pub struct tunnel_forwarder_opts {
    /// `TUNNEL_MODE_CLIENT` or `TUNNEL_MODE_SERVER`.
    pub mode: u32,
    /// Its name, for the run-time calls, logs and statistics (required for them).
    pub name: *const c_char,
    /// `IP:PORT` to accept on (port 0 picks one: see `tunnel_engine_local_port`). NULL or `""`
    /// in client mode: a connector, which only `tunnel_connect`-style calls use.
    pub listen: *const c_char,
    /// `HOST:PORT` to forward to (required).
    pub connect: *const c_char,
    /// Client mode: CA file (PEM) to verify the upstream with (default: `ca_pem`, else the
    /// system roots).
    pub ca: *const c_char,
    /// Client mode: CA certificates as PEM text, instead of `ca` (not both).
    pub ca_pem: *const c_char,
    /// Client mode: the name to send (SNI) and verify (default: the host of `connect`).
    pub sni: *const c_char,
    /// Certificate chain file (PEM): server mode's certificate (required), or client mode's
    /// client certificate.
    pub cert: *const c_char,
    /// Private key file (PEM) for `cert`.
    pub key: *const c_char,
    /// Server mode: CA file; when set, clients must present a certificate it signed.
    pub client_ca: *const c_char,
    /// ALPN protocols, comma-separated (`"h2,http/1.1"`).
    pub alpn: *const c_char,
    /// Client mode: trust an upstream whose key (or whole certificate) has one of these
    /// hashes, comma-separated, each `sha256:<base64 or hex>`, instead of a CA (not with `ca`
    /// or `ca_pem`); names and dates are not checked. For a self-signed upstream.
    pub pin: *const c_char,
}

pub(crate) fn alpn_list(alpn: Option<&str>) -> Vec<String> {
    alpn.map(|a| a.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_default()
}

/// The pins of a comma-separated `pin` option (none for NULL or `""`).
pub(crate) fn pin_list(pin: Option<&str>) -> Vec<String> {
    pin.map(|p| {
        p.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

fn forwarder(o: &tunnel_forwarder_opts) -> Result<ForwarderConfig, Failure> {
    let mode = match o.mode {
        TUNNEL_MODE_CLIENT => Mode::Client,
        TUNNEL_MODE_SERVER => Mode::Server,
        m => {
            return Err(Failure::new(
                tunnel_result::TUNNEL_ERR_INVALID_ARGUMENT,
                format!("mode {m} is neither TUNNEL_MODE_CLIENT (0) nor TUNNEL_MODE_SERVER (1)"),
            ));
        }
    };
    let listen = opt_str_arg(o.listen, "listen")?.unwrap_or("");
    let mut f = ForwarderConfig::new(mode, listen, str_arg(o.connect, "connect")?);
    f.name = opt_str_arg(o.name, "name")?.unwrap_or("").to_string();
    f.ca = opt_str_arg(o.ca, "ca")?.map(Into::into);
    f.ca_pem = opt_str_arg(o.ca_pem, "ca_pem")?.map(Into::into);
    f.sni = opt_str_arg(o.sni, "sni")?.map(Into::into);
    f.cert = opt_str_arg(o.cert, "cert")?.map(Into::into);
    f.key = opt_str_arg(o.key, "key")?.map(Into::into);
    f.client_ca = opt_str_arg(o.client_ca, "client_ca")?.map(Into::into);
    f.alpn = alpn_list(opt_str_arg(o.alpn, "alpn")?);
    f.pin = pin_list(opt_str_arg(o.pin, "pin")?);
    f.validate("forwarder options")?;
    Ok(f)
}

/// Makes an empty configuration (defaults; no forwarder) in `*out`. Thread-safe.
/// Errors: `TUNNEL_ERR_NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_config_new(out: *mut *mut tunnel_config) -> tunnel_result {
    entry("tunnel_config_new", || {
        put_box(out, || Ok(tunnel_config(EngineConfig::default())), "out")
    })
}

/// Reads a configuration from TOML text (the format of `splice-engine run --config`) into
/// `*out`. Relative paths in it are relative to the working directory. Thread-safe.
/// Errors: `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_INVALID_ARGUMENT` (not UTF-8),
/// `TUNNEL_ERR_CONFIG` (the message names `<string>`, the line and the key).
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_config_from_toml(
    toml: *const c_char,
    out: *mut *mut tunnel_config,
) -> tunnel_result {
    entry("tunnel_config_from_toml", || {
        let text = str_arg(toml, "toml")?;
        put_box(
            out,
            || Ok(tunnel_config(EngineConfig::from_toml(text, "<string>")?)),
            "out",
        )
    })
}

/// Reads a configuration file (TOML) into `*out`; relative paths in it are relative to the
/// file. Thread-safe. Errors: `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_INVALID_ARGUMENT`,
/// `TUNNEL_ERR_CONFIG` (the message names the file, the line and the key; also when the file
/// cannot be read).
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_config_from_file(
    path: *const c_char,
    out: *mut *mut tunnel_config,
) -> tunnel_result {
    entry("tunnel_config_from_file", || {
        let path = Path::new(str_arg(path, "path")?);
        put_box(
            out,
            || Ok(tunnel_config(EngineConfig::from_file(path)?)),
            "out",
        )
    })
}

/// Sets the number of shard threads (default: one per core). Errors:
/// `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_INVALID_ARGUMENT` (zero).
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_config_set_threads(
    cfg: *mut tunnel_config,
    threads: u32,
) -> tunnel_result {
    entry("tunnel_config_set_threads", || {
        let cfg = mut_arg(cfg, "cfg")?;
        if threads == 0 {
            return Err(Failure::new(
                tunnel_result::TUNNEL_ERR_INVALID_ARGUMENT,
                "threads must be at least 1",
            ));
        }
        cfg.0.threads = Some(threads as usize);
        Ok(())
    })
}

/// Adds a forwarder to the configuration (checked now; its files are read at start).
/// Errors: `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_INVALID_ARGUMENT`, `TUNNEL_ERR_CONFIG`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_config_add_forwarder(
    cfg: *mut tunnel_config,
    opts: *const tunnel_forwarder_opts,
) -> tunnel_result {
    entry("tunnel_config_add_forwarder", || {
        let cfg = mut_arg(cfg, "cfg")?;
        let f = forwarder(ref_arg(opts, "opts")?)?;
        cfg.0.forwarders.push(f);
        Ok(())
    })
}

/// Frees a configuration and sets `*cfg` to NULL; NULL or `*cfg == NULL` is a no-op, so a
/// second free of the same variable is harmless. Always `TUNNEL_OK`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_config_free(cfg: *mut *mut tunnel_config) -> tunnel_result {
    entry("tunnel_config_free", || {
        drop(take_box(cfg));
        Ok(())
    })
}

/// Starts an engine from `cfg` (which stays the program's, unchanged) into `*out`: loads every
/// certificate, binds every listener and starts the shard threads. Nothing is left running
/// when it fails. Thread-safe. Errors: `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_CONFIG`,
/// `TUNNEL_ERR_CERTIFICATE`, `TUNNEL_ERR_ADDRESS`, `TUNNEL_ERR_LISTEN`,
/// `TUNNEL_ERR_UNAVAILABLE`, `TUNNEL_ERR_IO`, `TUNNEL_ERR_TLS`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_start(
    cfg: *const tunnel_config,
    out: *mut *mut tunnel_engine,
) -> tunnel_result {
    entry("tunnel_engine_start", || {
        let cfg = ref_arg(cfg, "cfg")?;
        put_box(
            out,
            || Ok(tunnel_engine::new(Engine::start(cfg.0.clone())?)),
            "out",
        )
    })
}

/// Starts one more forwarder; the others are untouched. Thread-safe. Errors:
/// `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_INVALID_ARGUMENT`, `TUNNEL_ERR_FORWARDER_EXISTS`,
/// `TUNNEL_ERR_LISTEN`, `TUNNEL_ERR_CONFIG`, `TUNNEL_ERR_CERTIFICATE`, `TUNNEL_ERR_ADDRESS`,
/// `TUNNEL_ERR_SHUT_DOWN`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_add_forwarder(
    engine: *const tunnel_engine,
    opts: *const tunnel_forwarder_opts,
) -> tunnel_result {
    entry("tunnel_engine_add_forwarder", || {
        let h = ref_arg(engine, "engine")?;
        let f = forwarder(ref_arg(opts, "opts")?)?;
        h.with(|e| Ok(e.add_forwarder(f)?))
    })
}

/// Replaces the forwarder named `opts->name`: new connections use the new settings, open
/// ones carry on; on error nothing changes. Thread-safe. Errors: as
/// `tunnel_engine_add_forwarder`, and `TUNNEL_ERR_UNKNOWN_FORWARDER` instead of
/// `TUNNEL_ERR_FORWARDER_EXISTS`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_replace_forwarder(
    engine: *const tunnel_engine,
    opts: *const tunnel_forwarder_opts,
) -> tunnel_result {
    entry("tunnel_engine_replace_forwarder", || {
        let h = ref_arg(engine, "engine")?;
        let f = forwarder(ref_arg(opts, "opts")?)?;
        h.with(|e| Ok(e.replace_forwarder(f)?))
    })
}

/// Stops accepting for forwarder `name`; its open connections carry on to their end.
/// Thread-safe. Errors: `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_UNKNOWN_FORWARDER`,
/// `TUNNEL_ERR_SHUT_DOWN`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_remove_forwarder(
    engine: *const tunnel_engine,
    name: *const c_char,
) -> tunnel_result {
    entry("tunnel_engine_remove_forwarder", || {
        let h = ref_arg(engine, "engine")?;
        let name = str_arg(name, "name")?;
        h.with(|e| Ok(e.remove_forwarder(name)?))
    })
}

/// Writes the port forwarder `name` listens on to `*port` (useful after listening on port 0).
/// Thread-safe. Errors: `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_UNKNOWN_FORWARDER` (also for a
/// connector, which has no port), `TUNNEL_ERR_SHUT_DOWN`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_local_port(
    engine: *const tunnel_engine,
    name: *const c_char,
    port: *mut u16,
) -> tunnel_result {
    entry("tunnel_engine_local_port", || {
        let h = ref_arg(engine, "engine")?;
        let name = str_arg(name, "name")?;
        let addr = h.with(|e| {
            e.local_addr(name).ok_or_else(|| {
                Failure::new(
                    tunnel_result::TUNNEL_ERR_UNKNOWN_FORWARDER,
                    format!("no forwarder named {name:?} listens"),
                )
            })
        })?;
        write_out(port, addr.port(), "port")
    })
}

/// One forwarder's counters (`tunnel_engine_stats`). The strings belong to the array.
#[repr(C)]
pub struct tunnel_stats {
    /// The forwarder's name.
    pub name: *const c_char,
    /// `"client"` or `"server"`.
    pub mode: *const c_char,
    /// Connections accepted and admitted.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections refused at `max_connections`.
    pub refused: u64,
    /// Connections whose TLS went to the kernel (kTLS).
    pub ktls: u64,
    /// Payload bytes from the accepting side to the connecting side.
    pub bytes_down_to_up: u64,
    /// Payload bytes the other way.
    pub bytes_up_to_down: u64,
    /// Connections that failed on the accepting side.
    pub errors_downstream: u64,
    /// Connections that failed on the connecting side (unreachable upstream, ...).
    pub errors_upstream: u64,
    /// Connections that failed in TLS (handshake, verification, bad records).
    pub errors_tls: u64,
    /// Connections that failed inside the engine.
    pub errors_internal: u64,
    /// Completed TLS handshakes.
    pub handshakes: u64,
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

fn c_stats(s: &StatsSnapshot) -> tunnel_stats {
    tunnel_stats {
        name: cstring(&s.name).into_raw().cast_const(),
        mode: cstring(&s.mode).into_raw().cast_const(),
        accepted: s.accepted,
        active: s.active,
        refused: s.refused,
        ktls: s.ktls,
        bytes_down_to_up: s.bytes_down_to_up,
        bytes_up_to_down: s.bytes_up_to_down,
        errors_downstream: s.errors_downstream,
        errors_upstream: s.errors_upstream,
        errors_tls: s.errors_tls,
        errors_internal: s.errors_internal,
        handshakes: s.handshakes.count(),
    }
}

/// Writes an array of every forwarder's counters to `*out` and its length to `*len` (`*out`
/// may be NULL when `*len` is 0). Free it with `tunnel_stats_free(*out, *len)`. Thread-safe.
/// Errors: `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_SHUT_DOWN`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_stats(
    engine: *const tunnel_engine,
    out: *mut *mut tunnel_stats,
    len: *mut usize,
) -> tunnel_result {
    entry("tunnel_engine_stats", || {
        let h = ref_arg(engine, "engine")?;
        if out.is_null() || len.is_null() {
            write_out(len, 0, "len")?;
            return write_out(out, std::ptr::null_mut(), "out");
        }
        let all: Box<[tunnel_stats]> = h.with(|e| Ok(e.stats().iter().map(c_stats).collect()))?;
        let n = all.len();
        write_out(len, n, "len")?;
        write_out(out, Box::into_raw(all).cast::<tunnel_stats>(), "out")
    })
}

/// Frees an array from `tunnel_engine_stats` (with the length it gave). NULL is a no-op.
/// Always `TUNNEL_OK`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_stats_free(stats: *mut tunnel_stats, len: usize) -> tunnel_result {
    entry("tunnel_stats_free", || {
        for s in take_slice(stats, len).into_iter().flatten() {
            drop(take_string(s.name.cast_mut()));
            drop(take_string(s.mode.cast_mut()));
        }
        Ok(())
    })
}

/// Writes every forwarder's counters as a JSON array (one object per forwarder, the
/// `tunnel_stats` fields plus `handed_off`, `unclean_closes` and `cert_not_after`) to `*json`,
/// a string to free with `tunnel_string_free`. Thread-safe. Errors:
/// `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_SHUT_DOWN`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_stats_json(
    engine: *const tunnel_engine,
    json: *mut *mut c_char,
) -> tunnel_result {
    entry("tunnel_engine_stats_json", || {
        let h = ref_arg(engine, "engine")?;
        if json.is_null() {
            return write_out(json, std::ptr::null_mut(), "json");
        }
        let all = h.with(|e| {
            Ok(e.stats()
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name, "mode": s.mode, "accepted": s.accepted,
                        "active": s.active, "refused": s.refused, "handed_off": s.handed_off,
                        "ktls": s.ktls, "bytes_down_to_up": s.bytes_down_to_up,
                        "bytes_up_to_down": s.bytes_up_to_down,
                        "errors_downstream": s.errors_downstream,
                        "errors_upstream": s.errors_upstream, "errors_tls": s.errors_tls,
                        "errors_internal": s.errors_internal,
                        "unclean_closes": s.unclean_closes,
                        "handshakes": s.handshakes.count(),
                        "cert_not_after": s.cert_not_after,
                    })
                })
                .collect::<Vec<_>>())
        })?;
        let text = serde_json::Value::Array(all).to_string();
        write_out(json, cstring(&text).into_raw(), "json")
    })
}

/// Frees a string the library returned. NULL is a no-op. Always `TUNNEL_OK`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_string_free(s: *mut c_char) -> tunnel_result {
    entry("tunnel_string_free", || {
        drop(take_string(s));
        Ok(())
    })
}

/// Stops accepting, lets open connections finish for at most `drain_ms` milliseconds, closes
/// the rest and stops every thread; it returns when all have stopped. Sockets from
/// `tunnel_connect` that are still open see end of file. Later calls on the handle fail with
/// `TUNNEL_ERR_SHUT_DOWN`; it still has to be freed. Thread-safe. Errors:
/// `TUNNEL_ERR_NULL_ARGUMENT`, `TUNNEL_ERR_SHUT_DOWN` (shut down already).
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_shutdown(
    engine: *const tunnel_engine,
    drain_ms: u32,
) -> tunnel_result {
    entry("tunnel_engine_shutdown", || {
        shutdown(ref_arg(engine, "engine")?, drain_ms)
    })
}

/// Shuts `h`'s engine down (also a tunnel agent's).
pub(crate) fn shutdown(h: &tunnel_engine, drain_ms: u32) -> Result<(), Failure> {
    let taken = h.engine.write().unwrap_or_else(|p| p.into_inner()).take();
    let e = taken.ok_or_else(|| {
        Failure::new(
            tunnel_result::TUNNEL_ERR_SHUT_DOWN,
            "the engine was shut down",
        )
    })?;
    e.shutdown(Duration::from_millis(drain_ms.into()));
    Ok(())
}

/// Frees an engine and sets `*engine` to NULL; an engine still running stops at once (no
/// drain). When it returns, every thread and file descriptor of the engine is gone. NULL or
/// `*engine == NULL` is a no-op, so a second free of the same variable is harmless. Not
/// thread-safe: call it after every other call on the engine has returned. Always
/// `TUNNEL_OK`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_engine_free(engine: *mut *mut tunnel_engine) -> tunnel_result {
    entry("tunnel_engine_free", || {
        drop(take_box(engine));
        Ok(())
    })
}

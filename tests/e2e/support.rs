//! Shared helpers for the end-to-end tests: certificates, backends, the engine process guard,
//! payload hashing, metrics scraping and socket utilities.
//!
//! Everything panics with context on failure: these are test helpers.
#![allow(
    dead_code,
    reason = "each test file uses a different subset of the helpers"
)]

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_splice-engine");
/// The independent TLS peer.
pub const OPENSSL: &str = "/usr/bin/openssl";
/// Read/write timeout on test sockets: only there to turn a hang into a failure.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an engine gets to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// A generous bound for "this should happen soon" (a close, a reload, an exit).
pub const SOON: Duration = Duration::from_secs(30);

/// The drivers the data tests run on.
pub const DRIVERS: [&str; 2] = ["uring", "epoll"];

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

// The test PKI (CAs, server and client leaves as files, in every key type) is the workspace's
// one generator, `splice-test-pki`.
pub use splice_test_pki::{Ca, KeyType, Leaf, Pki, Usage};

/// Writes `data` to `path` (replacing it atomically through a rename).
pub fn write_file(path: &Path, data: &[u8]) {
    let tmp = path.with_extension(format!(
        "tmp{}",
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&tmp, data).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

static TMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------------
// rustls peers
// ---------------------------------------------------------------------------------------------

/// A rustls client stream over TCP.
pub type TlsStream = rustls::StreamOwned<ClientConnection, TcpStream>;

/// TLS 1.3 only.
pub const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
/// TLS 1.2 only.
pub const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
/// Both.
pub const TLS_ANY: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The engine's provider (aws-lc-rs), explicitly.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config trusting only `roots`, presenting `cert` if given.
pub fn client_config(
    roots: &[&Ca],
    cert: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for ca in roots {
        store.add(ca.cert_der.clone()).expect("add a root");
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("client protocol versions")
        .with_root_certificates(store);
    let cfg = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.key_der())
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// A server config presenting `leaf`, requiring client certificates from `client_ca` if given.
pub fn server_config(
    leaf: &Leaf,
    client_ca: Option<&Ca>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("server protocol versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut store = RootCertStore::empty();
            store.add(ca.cert_der.clone()).expect("add client CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(store),
                provider(),
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der())
            .expect("server cert"),
    )
}

/// Connects and completes a TLS handshake, or says why not.
pub fn try_tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<ClientConfig>,
) -> io::Result<TlsStream> {
    try_tls_on(try_connect(addr)?, sni, cfg)
}

/// Completes a TLS handshake on an already connected socket, or says why not.
pub fn try_tls_on(sock: TcpStream, sni: &str, cfg: Arc<ClientConfig>) -> io::Result<TlsStream> {
    let name = ServerName::try_from(sni.to_string()).expect("valid server name");
    let conn = ClientConnection::new(cfg, name).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Connects and completes a TLS handshake; panics on failure.
pub fn tls_connect(addr: SocketAddr, sni: &str, cfg: Arc<ClientConfig>) -> TlsStream {
    try_tls_connect(addr, sni, cfg)
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} (SNI {sni}) failed: {e}"))
}

/// Sends close_notify and half-closes the TCP write side.
pub fn tls_close(tls: &mut TlsStream) {
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    let _ = tls.sock.shutdown(Shutdown::Write);
}

/// A rustls TLS echo server (each connection on its own thread).
pub fn tls_echo_server(cfg: Arc<ServerConfig>) -> Backend {
    Backend::spawn(move |sock| {
        let Ok(conn) = ServerConnection::new(cfg.clone()) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tls.write_all(&buf[..n]).and_then(|_| tls.flush()).is_err() {
                        return;
                    }
                }
            }
        }
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
    })
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A TCP server on 127.0.0.1 that runs a handler per connection on its own thread.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    /// Starts a backend running `handler` for every connection.
    pub fn spawn(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Backend {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
        let addr = listener.local_addr().expect("backend address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st) = (accepted.clone(), stop.clone());
        thread::Builder::new()
            .name(format!("backend-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(sock) = conn else { continue };
                    acc.fetch_add(1, Ordering::SeqCst);
                    let _ = sock.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = sock.set_write_timeout(Some(IO_TIMEOUT));
                    let h = handler.clone();
                    let _ = thread::Builder::new()
                        .name("backend-conn".into())
                        .spawn(move || h(sock));
                }
            })
            .expect("spawn backend thread");
        Backend {
            addr,
            accepted,
            stop,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Echoes every byte back; on EOF, half-closes its write side (so half-close propagates).
pub fn echo_backend() -> Backend {
    Backend::spawn(|mut sock| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => {
                    let _ = sock.shutdown(Shutdown::Write);
                    // Wait for the peer to close too, so the socket is not reset by a drop
                    // while bytes are still arriving.
                    let _ = sock.read(&mut buf);
                    return;
                }
                Ok(n) => {
                    if sock.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
}

/// What a sink saw on one connection.
#[derive(Debug, Clone)]
pub struct SinkReport {
    /// Bytes read before EOF (or before the error).
    pub bytes: u64,
    /// SHA-256 of those bytes, hex.
    pub sha256: String,
    /// The read error, if the stream did not end with a clean EOF.
    pub error: Option<String>,
}

/// Reads everything, hashes it; after EOF writes `"BYTES HEX\n"` back, half-closes, and reports
/// on the channel. While `gate` is false it does not read at all (a slow reader).
pub fn sink_backend(gate: Option<Arc<AtomicBool>>) -> (Backend, mpsc::Receiver<SinkReport>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = Backend::spawn(move |mut sock| {
        if let Some(g) = &gate {
            let start = Instant::now();
            while !g.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                thread::sleep(Duration::from_millis(10));
            }
        }
        let report = match read_hashed(&mut sock) {
            Ok((bytes, sha256)) => {
                let _ = sock.write_all(format!("{bytes} {sha256}\n").as_bytes());
                let _ = sock.shutdown(Shutdown::Write);
                SinkReport {
                    bytes,
                    sha256,
                    error: None,
                }
            }
            Err((bytes, sha256, e)) => SinkReport {
                bytes,
                sha256,
                error: Some(format!("{:?}: {e}", e.kind())),
            },
        };
        let _ = tx.lock().expect("sink channel").send(report);
    });
    (backend, rx)
}

// ---------------------------------------------------------------------------------------------
// Payloads and hashes
// ---------------------------------------------------------------------------------------------

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// `n` pseudo-random bytes from `seed`.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes `total` pseudo-random bytes (from `seed`) in 64 KiB chunks; returns their SHA-256.
/// `progress` counts the bytes written so far.
pub fn write_random(
    w: &mut impl Write,
    total: u64,
    seed: u64,
    progress: Option<&AtomicU64>,
) -> io::Result<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
        if let Some(p) = progress {
            p.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    w.flush()?;
    Ok(hex(&hasher.finalize()))
}

/// The SHA-256 `write_random` produces for (`total`, `seed`), without writing.
pub fn random_hash(total: u64, seed: u64) -> String {
    write_random(&mut io::sink(), total, seed, None).expect("hash to a sink")
}

/// Reads to EOF; returns the byte count and SHA-256, or the error with what was read before it.
pub fn read_hashed(r: &mut impl Read) -> Result<(u64, String), (u64, String, io::Error)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n_total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok((n_total, hex(&hasher.finalize()))),
            Ok(n) => {
                hasher.update(&buf[..n]);
                n_total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((n_total, hex(&hasher.finalize()), e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The engine process
// ---------------------------------------------------------------------------------------------

/// A command line for the engine, with the ports to wait for before it counts as started.
#[derive(Debug, Clone)]
pub struct EngineCmd {
    args: Vec<OsString>,
    ports: Vec<u16>,
    cwd: Option<PathBuf>,
    label: String,
}

impl EngineCmd {
    /// `splice-engine SUBCOMMAND`.
    pub fn new(subcommand: &str) -> EngineCmd {
        EngineCmd {
            args: vec![subcommand.into()],
            ports: Vec::new(),
            cwd: None,
            label: subcommand.to_string(),
        }
    }

    /// `client` mode, listening on `listen`, verifying the upstream against `ca`, common flags
    /// (2 threads, info logs) and `--driver driver`.
    pub fn client(listen: u16, connect: SocketAddr, ca: &Ca, driver: &str) -> EngineCmd {
        EngineCmd::new("client")
            .opt("--listen", localhost(listen).to_string())
            .opt("--connect", connect.to_string())
            .opt("--ca", &ca.path)
            .common(driver)
            .wait_port(listen)
    }

    /// `server` mode presenting `leaf`, listening on `listen`, forwarding to `connect`.
    pub fn server(listen: u16, connect: SocketAddr, leaf: &Leaf, driver: &str) -> EngineCmd {
        EngineCmd::new("server")
            .opt("--listen", localhost(listen).to_string())
            .opt("--connect", connect.to_string())
            .opt("--cert", &leaf.cert)
            .opt("--key", &leaf.key)
            .common(driver)
            .wait_port(listen)
    }

    /// `--threads 2 --log-level info --driver DRIVER`.
    pub fn common(self, driver: &str) -> EngineCmd {
        self.opt("--threads", "2")
            .opt("--log-level", "info")
            .opt("--driver", driver)
    }

    /// Adds `--metrics 127.0.0.1:PORT` and waits for that port too.
    pub fn metrics(self, port: u16) -> EngineCmd {
        self.opt("--metrics", localhost(port).to_string())
            .wait_port(port)
    }

    /// One argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> EngineCmd {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    /// A flag and its value.
    pub fn opt(self, flag: &str, value: impl AsRef<OsStr>) -> EngineCmd {
        self.arg(flag).arg(value)
    }

    /// A port that must be listening (owned by the process) before `start` returns.
    pub fn wait_port(mut self, port: u16) -> EngineCmd {
        if !self.ports.contains(&port) {
            self.ports.push(port);
        }
        self
    }

    /// The working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> EngineCmd {
        self.cwd = Some(dir.into());
        self
    }

    /// A name for diagnostics.
    pub fn label(mut self, label: impl Into<String>) -> EngineCmd {
        self.label = label.into();
        self
    }

    /// The arguments, for messages.
    pub fn describe(&self) -> String {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!("splice-engine {}", args.join(" "))
    }

    fn spawn(&self) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("splice-e2e-proc-")
            .tempdir()
            .expect("create the process temp dir");
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        let stderr = fs::File::create(&stderr_path).expect("create stderr.log");
        let stdout = fs::File::create(&stdout_path).expect("create stdout.log");
        let mut cmd = Command::new(BIN);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.describe()));
        Proc {
            child,
            _dir: dir,
            stderr_path,
            label: self.label.clone(),
            cmdline: self.describe(),
            status: None,
        }
    }

    /// Starts the engine and waits until every port given is listening in this process.
    pub fn start(&self) -> Proc {
        let mut p = self.spawn();
        for &port in &self.ports {
            p.wait_listening(port);
        }
        p
    }

    /// Runs the engine expecting it to exit by itself (bad input); returns its status and
    /// stderr. Panics if it is still running after `SOON`.
    pub fn run_to_exit(&self) -> (ExitStatus, String) {
        let mut p = self.spawn();
        let status = p.wait_exit(SOON).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {SOON:?}; stderr:\n{}",
                self.describe(),
                p.stderr()
            )
        });
        (status, p.stderr())
    }
}

/// A running engine; killed when dropped. On a failing test it prints its stderr.
pub struct Proc {
    child: Child,
    _dir: TempDir,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
    label: String,
    cmdline: String,
    status: Option<ExitStatus>,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Everything it wrote to stderr so far, as written.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Its stderr with terminal colour sequences removed (see `strip_ansi`).
    pub fn log(&self) -> String {
        strip_ansi(&self.stderr())
    }

    /// Whether the process is still running (reaps it if not).
    pub fn running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.status = Some(st);
                false
            }
            Ok(None) => true,
            Err(e) => panic!("try_wait on {}: {e}", self.label),
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if !self.running() {
                return self.status;
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a socket of this process listens on `port` (any address).
    pub fn is_listening(&self, port: u16) -> bool {
        let inodes = listening_inodes(port);
        if inodes.is_empty() {
            return false;
        }
        let mine = socket_inodes(self.pid());
        inodes.iter().any(|i| mine.contains(i))
    }

    /// Waits until this process listens on `port`; panics (with its stderr) if it exits or
    /// does not listen within `START_TIMEOUT`.
    pub fn wait_listening(&mut self, port: u16) {
        let start = Instant::now();
        loop {
            if !self.running() {
                panic!(
                    "{} exited ({:?}) before listening on {port}\ncommand: {}\nstderr:\n{}",
                    self.label,
                    self.status,
                    self.cmdline,
                    self.stderr()
                );
            }
            if self.is_listening(port) {
                return;
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "{} did not listen on port {port} within {START_TIMEOUT:?}\ncommand: {}\nstderr:\n{}",
                    self.label,
                    self.cmdline,
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own live child
        // (it has not been reaped, so the pid cannot have been reused).
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid()))
    }

    /// Waits up to `timeout` for the log (stderr without colour sequences) to satisfy `pred`.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        wait_until(timeout, || pred(&self.log()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let err = self.log();
            let lines: Vec<&str> = err.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "---- {} ({}) exit {:?}, last stderr lines:\n{}\n----",
                self.label,
                self.cmdline,
                self.status,
                tail.join("\n")
            );
        }
    }
}

fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((_, p)) = f[1].rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() == Some(port)
                && let Ok(inode) = f[9].parse::<u64>()
            {
                out.push(inode);
            }
        }
    }
    out
}

fn socket_inodes(pid: i32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        if let Ok(target) = fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
            {
                out.insert(n);
            }
        }
    }
    out
}

/// Removes ANSI escape sequences (`ESC [ ... letter`). The log checks look at the text; a
/// separate test checks that a log written to a file has no such sequences at all.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A TOML (basic) string literal for `s`.
pub fn q(s: impl std::fmt::Display) -> String {
    format!("{:?}", s.to_string())
}

/// The lines of a log that start with `error: `.
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}

/// Whether a log line carries `side=SIDE` (text format, quoted or not, or JSON).
pub fn line_has_side(line: &str, side: &str) -> bool {
    line.contains(&format!("side={side}"))
        || line.contains(&format!("side=\"{side}\""))
        || line.contains(&format!("\"side\":\"{side}\""))
}

/// The lines of `log` at warn level naming `side`.
pub fn warn_lines_with_side<'a>(log: &'a str, side: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| (l.contains("WARN") || l.contains("\"warn\"")) && line_has_side(l, side))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// One scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The body as served.
    pub text: String,
    samples: Vec<Sample>,
}

/// One series: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

impl Metrics {
    /// Sum over the series of `name` whose labels include `labels` (0 when none matches).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    /// Whether any series of `name` has `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a [(String, String)], f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, ls, v)| (ls.as_slice(), *v))
    }
}

/// Parses the Prometheus text format (enough of it for these tests).
pub fn parse_metrics(text: &str) -> Metrics {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("bad line {line:?}"));
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close]),
                    &line[close + 1..],
                )
            }
            None => {
                let sp = line
                    .find(char::is_whitespace)
                    .unwrap_or_else(|| panic!("bad metrics line {line:?}"));
                (&line[..sp], Vec::new(), &line[sp..])
            }
        };
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no value in metrics line {line:?}"));
        samples.push((name.trim().to_string(), labels, value));
    }
    Metrics {
        text: text.to_string(),
        samples,
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.trim().is_empty() {
            return out;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "label value must be quoted in {s:?}"
        );
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(o) => value.push(o),
                    None => break,
                },
                '"' => break,
                o => value.push(o),
            }
        }
        out.push((key.trim().to_string(), value));
    }
}

/// GET /metrics, or why not.
pub fn try_scrape(addr: SocketAddr) -> io::Result<Metrics> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no end of headers in {raw:?}")))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(io::Error::other(format!("metrics status {status:?}")));
    }
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(parse_metrics(&body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET /metrics; panics on failure.
pub fn scrape(addr: SocketAddr) -> Metrics {
    try_scrape(addr).unwrap_or_else(|e| panic!("scrape http://{addr}/metrics: {e}"))
}

/// Polls `/metrics` until the sum for `name`/`labels` satisfies `pred`; returns the last
/// scrape. Panics with the metrics text after `SOON`.
pub fn wait_metric(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    pred: impl Fn(f64) -> bool,
) -> Metrics {
    let start = Instant::now();
    loop {
        let m = scrape(addr);
        if pred(m.value(name, labels)) {
            return m;
        }
        if start.elapsed() > SOON {
            panic!(
                "metric {name}{labels:?} = {} did not reach the expected value within {SOON:?}; metrics:\n{}",
                m.value(name, labels),
                m.text
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------------

/// 127.0.0.1:port.
pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A port that was free a moment ago, for an engine to listen on.
///
/// Ports come from below the kernel's ephemeral range when there is room (so the many outgoing
/// connections of concurrent tests cannot take one between this call and the engine's bind),
/// each handed out once per test process, starting at an offset derived from the pid.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(32768);
    const LOW: usize = 10_000;
    if ephemeral_low > LOW + 2_000 {
        let span = ephemeral_low - LOW;
        let base = (std::process::id() as usize * 7919) % span;
        for _ in 0..span {
            let port = LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let port = u16::try_from(port).expect("port fits in u16");
            if TcpListener::bind(localhost(port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// Connects with the test I/O timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Connects with the test I/O timeouts set, or says why not.
pub fn try_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connects, sends `payload` (a write error is ignored: the peer may already have closed), and
/// reads until the connection ends. A reset while connecting counts as the end.
pub fn send_and_read_to_end(addr: SocketAddr, payload: &[u8]) -> (Vec<u8>, End) {
    match try_connect(addr) {
        Ok(mut s) => {
            let _ = s.write_all(payload);
            read_until_end(&mut s)
        }
        Err(e) => match classify(e) {
            End::Reset => (Vec::new(), End::Reset),
            other => panic!("connect to {addr}: {other:?}"),
        },
    }
}

/// Sets SO_LINGER {on, 0}: closing the socket then sends a RST.
pub fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).expect("socklen");
    // SAFETY: the fd is a live socket owned by `s`; the option value points to a properly
    // initialised `linger` that outlives the call, and `len` is its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            len,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        io::Error::last_os_error()
    );
}

/// How a stream ended.
#[derive(Debug)]
pub enum End {
    /// A clean EOF.
    Eof,
    /// ECONNRESET / ECONNABORTED.
    Reset,
    /// Some other error (a TLS alert, an unexpected EOF in TLS...).
    Error(io::Error),
    /// Nothing happened before the read timeout.
    TimedOut,
}

impl End {
    /// Whether the stream was closed one way or another (not a timeout).
    pub fn closed(&self) -> bool {
        !matches!(self, End::TimedOut)
    }
}

/// Classifies a read error.
pub fn classify(e: io::Error) -> End {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => End::TimedOut,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => End::Reset,
        _ => End::Error(e),
    }
}

/// Reads until the stream ends (or the socket's read timeout fires); returns the bytes read
/// and how it ended.
pub fn read_until_end(r: &mut impl Read) -> (Vec<u8>, End) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (data, End::Eof),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (data, classify(e)),
        }
    }
}

/// Writes `msg`, reads back exactly as many bytes, and checks they are the same.
pub fn echo_roundtrip(s: &mut (impl Read + Write), msg: &[u8]) {
    s.write_all(msg).expect("write the echo request");
    s.flush().expect("flush the echo request");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read the echo reply");
    assert!(back == msg, "echo reply differs from what was sent");
}

/// Like `echo_roundtrip` but reports failure instead of panicking.
pub fn try_echo_roundtrip(s: &mut (impl Read + Write), msg: &[u8]) -> io::Result<()> {
    s.write_all(msg)?;
    s.flush()?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    if back != msg {
        return Err(io::Error::other("echo reply differs from what was sent"));
    }
    Ok(())
}

/// Polls `cond` every 20 ms for up to `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The engine chain: test -> client mode -> TLS -> server mode -> backend
// ---------------------------------------------------------------------------------------------

/// Two engines in a row in front of a backend.
pub struct Chain {
    /// The server-mode engine (TLS in, plain to the backend).
    pub server: Proc,
    /// The client-mode engine (plain in, TLS to `server`).
    pub client: Proc,
    /// Where the test connects (the client-mode listener).
    pub entry: SocketAddr,
    /// The server-mode listener.
    pub server_addr: SocketAddr,
    /// Metrics of the client-mode engine.
    pub client_metrics: SocketAddr,
    /// Metrics of the server-mode engine.
    pub server_metrics: SocketAddr,
}

impl Chain {
    /// Starts server mode in front of `backend` and client mode in front of it, both on `driver`.
    pub fn start(pki: &Pki, backend: SocketAddr, driver: &str) -> Chain {
        Self::start_with(pki, backend, driver, &[])
    }

    /// [`Chain::start`] with extra `--flag value` options for both engines.
    pub fn start_with(
        pki: &Pki,
        backend: SocketAddr,
        driver: &str,
        opts: &[(&str, &str)],
    ) -> Chain {
        let (sp, smp, cp, cmp) = (free_port(), free_port(), free_port(), free_port());
        let mut server = EngineCmd::server(sp, backend, &pki.server, driver)
            .metrics(smp)
            .label(format!("server mode ({driver})"));
        let mut client = EngineCmd::client(cp, localhost(sp), &pki.ca, driver)
            .opt("--sni", "localhost")
            .metrics(cmp)
            .label(format!("client mode ({driver})"));
        for (flag, value) in opts {
            server = server.opt(flag, value);
            client = client.opt(flag, value);
        }
        let (server, client) = (server.start(), client.start());
        Chain {
            server,
            client,
            entry: localhost(cp),
            server_addr: localhost(sp),
            client_metrics: localhost(cmp),
            server_metrics: localhost(smp),
        }
    }
}

/// Runs `f` on a named thread and returns its handle.
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .expect("spawn a test thread")
}

// ---------------------------------------------------------------------------------------------
// openssl children
// ---------------------------------------------------------------------------------------------

/// An `openssl` child with its stdin piped and stdout/stderr collected; killed on drop.
pub struct OpensslChild {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    what: String,
}

impl OpensslChild {
    /// Spawns `openssl s_client` to `addr` with SNI `localhost`, trusting `ca`, quiet
    /// (`-brief`), with `extra` flags after these. It does not add `-verify_return_error`:
    /// a test that expects the server to hang up must not let a verification failure pass
    /// for it.
    pub fn s_client(addr: SocketAddr, ca: &Path, extra: &[&str]) -> OpensslChild {
        let connect = addr.to_string();
        let ca = ca.to_string_lossy();
        let mut args = vec![
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            &ca,
            "-servername",
            "localhost",
            "-brief",
        ];
        args.extend_from_slice(extra);
        OpensslChild::spawn(&args)
    }

    /// Spawns `openssl ARGS...`.
    pub fn spawn(args: &[&str]) -> OpensslChild {
        let mut child = Command::new(OPENSSL)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn openssl {args:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut out = child.stdout.take().expect("openssl stdout");
        let mut err = child.stderr.take().expect("openssl stderr");
        let (o, e) = (stdout.clone(), stderr.clone());
        spawn("openssl-stdout", move || collect(&mut out, &o));
        spawn("openssl-stderr", move || collect(&mut err, &e));
        OpensslChild {
            child,
            stdin,
            stdout,
            stderr,
            what: format!("openssl {}", args.join(" ")),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Writes to its stdin.
    pub fn send(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(data)
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("write to {} stdin: {e}\n{}", self.what, self.stderr()));
    }

    /// Closes its stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }

    /// Waits up to `SOON` for its stdout to contain `needle`.
    pub fn wait_stdout(&self, needle: &[u8]) -> bool {
        wait_until(SOON, || {
            self.stdout().windows(needle.len()).any(|w| w == needle)
        })
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until it listens on `port` (an `s_server`).
    pub fn wait_listening(&mut self, port: u16) {
        let pid = self.pid();
        let ok = wait_until(START_TIMEOUT, || {
            let inodes = listening_inodes(port);
            let mine = socket_inodes(pid);
            inodes.iter().any(|i| mine.contains(i))
        });
        assert!(
            ok,
            "{} did not listen on {port}; stderr:\n{}",
            self.what,
            self.stderr()
        );
    }

    /// What was run.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for OpensslChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- {}\nstdout: {:?}\nstderr:\n{}\n----",
                self.what,
                String::from_utf8_lossy(&self.stdout()),
                self.stderr()
            );
        }
    }
}

fn collect(r: &mut impl Read, into: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => into
                .lock()
                .expect("collect lock")
                .extend_from_slice(&buf[..n]),
        }
    }
}

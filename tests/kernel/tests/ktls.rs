//! Kernel TLS (kTLS) tests for the engine.
//!
//! These only mean something on a kernel with `tls.ko`, so they run inside the kTLS VM:
//! `cargo xtask integration-test vm` builds this file as a static binary and boots it in qemu
//! (see `../shared/ktls-vm`). Run anywhere else they fail on purpose, loudly.
//!
//! What is checked, for TLS 1.2 and 1.3 and for both drivers (io_uring and epoll):
//!
//! `test client -> client-mode engine -> TLS (kTLS both ends) -> server-mode engine -> echo`
//!
//! * `*_bulk`: 4 MiB of random bytes go up while the echo comes back concurrently; SHA-256 is
//!   compared both ways (the echo backend hashes what it received, the client compares what came
//!   back);
//! * `*_short`: 1000 bytes, 1 byte and 0 bytes, so that data, EOF, close_notify and FIN follow
//!   the handshake at once, racing the hand-off to the kernel (which must still happen);
//! * half-close, in every connection: the client shuts down its write side; only after the echo backend has seen that
//!   EOF does it send a trailer (naming the byte count and hash it saw), then closes. The client
//!   must get the whole echo, the trailer, then EOF;
//! * both forwarders' stats count every connection (bulk: every one on kTLS) and every payload
//!   byte, and no errors;
//! * `/proc/net/tls_stat` shows the kernel installed TX and RX keys for each TLS leg (the
//!   evidence that the kernel did the record crypto) and no decrypt errors.
//!
//! And with TLS 1.3 against a plain rustls server (not our engine) that sends NewSessionTicket
//! messages after the handshake (with its first data, before it, or 300 ms later when the client
//! engine is already on kTLS), followed by data: the client-mode kTLS path must skip those
//! post-handshake records without losing or corrupting a byte, and half-close with a
//! close_notify.
//!
//! And against the same rustls server pinned to each cipher suite the kernel supports (AES-128-GCM,
//! AES-256-GCM, ChaCha20-Poly1305; TLS 1.2 and 1.3), since the kTLS key material differs per
//! cipher.
//!
//! Tests are serialised by a lock: the VM is small and the kernel counters are global.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rand::RngCore;
use rustls::crypto::aws_lc_rs::cipher_suite as suites;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use splice_engine::{
    DriverKind, Engine, EngineConfig, ForwarderConfig, KtlsMode, Mode, StatsSnapshot,
};
use splice_test_pki::{Ca, KeyType, SERVER_SANS, Usage};

/// The bulk payload per test connection. qemu emulates the CPU (6-9 MiB/s of kTLS traffic),
/// so this stays small.
const BULK: usize = 4 << 20;
/// The engine-to-engine cases: one bulk connection ...
const BULK_SIZES: [usize; 1] = [BULK];
/// ... and short ones, where the client's data, its EOF and so the close_notify and FIN follow
/// the handshake at once (possibly before the server engine has handed the session to the
/// kernel); the last sends nothing at all.
const SHORT_SIZES: [usize; 3] = [1000, 1, 0];
/// What `Engine::connect`'s programs write: a megabyte, one byte, nothing, and 300 KB.
const CONNECT_SIZES: [usize; 4] = [1 << 20, 1, 0, 300_000];
/// How long any single socket read or write may block before the test gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(90);
/// Post-handshake tickets the plain rustls server sends per connection.
const TICKETS: usize = 4;
/// Data the plain rustls server sends unprompted right after its tickets.
const BANNER: usize = 256 << 10;

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn chain_tls13_uring_bulk() {
    engine_chain("1.3", DriverKind::Uring, &BULK_SIZES, Via::Listener);
}

#[test]
fn chain_tls13_uring_short() {
    engine_chain("1.3", DriverKind::Uring, &SHORT_SIZES, Via::Listener);
}

#[test]
fn chain_tls13_epoll_bulk() {
    engine_chain("1.3", DriverKind::Epoll, &BULK_SIZES, Via::Listener);
}

#[test]
fn chain_tls13_epoll_short() {
    engine_chain("1.3", DriverKind::Epoll, &SHORT_SIZES, Via::Listener);
}

#[test]
fn chain_tls12_uring_bulk() {
    engine_chain("1.2", DriverKind::Uring, &BULK_SIZES, Via::Listener);
}

#[test]
fn chain_tls12_uring_short() {
    engine_chain("1.2", DriverKind::Uring, &SHORT_SIZES, Via::Listener);
}

#[test]
fn chain_tls12_epoll_bulk() {
    engine_chain("1.2", DriverKind::Epoll, &BULK_SIZES, Via::Listener);
}

#[test]
fn chain_tls12_epoll_short() {
    engine_chain("1.2", DriverKind::Epoll, &SHORT_SIZES, Via::Listener);
}

#[test]
fn connect_tls13_uring() {
    engine_chain("1.3", DriverKind::Uring, &CONNECT_SIZES, Via::Connect);
}
#[test]
fn connect_tls13_epoll() {
    engine_chain("1.3", DriverKind::Epoll, &CONNECT_SIZES, Via::Connect);
}
#[test]
fn connect_tls12_uring() {
    engine_chain("1.2", DriverKind::Uring, &CONNECT_SIZES, Via::Connect);
}

#[test]
fn tls13_session_tickets_then_data_uring() {
    rustls_upstream(DriverKind::Uring, "1.3", None, 1 << 20);
}

#[test]
fn tls13_session_tickets_then_data_epoll() {
    rustls_upstream(DriverKind::Epoll, "1.3", None, 1 << 20);
}

// Each cipher suite the kernel supports, pinned by the rustls upstream: the kTLS key material
// layout differs per cipher (key, IV and salt sizes).

#[test]
fn cipher_tls13_aes_128_gcm() {
    let suite = suites::TLS13_AES_128_GCM_SHA256;
    rustls_upstream(DriverKind::Uring, "1.3", Some(suite), 256 << 10);
}

#[test]
fn cipher_tls13_aes_256_gcm() {
    let suite = suites::TLS13_AES_256_GCM_SHA384;
    rustls_upstream(DriverKind::Uring, "1.3", Some(suite), 256 << 10);
}

#[test]
fn cipher_tls13_chacha20_poly1305() {
    let suite = suites::TLS13_CHACHA20_POLY1305_SHA256;
    rustls_upstream(DriverKind::Uring, "1.3", Some(suite), 256 << 10);
}

#[test]
fn cipher_tls12_aes_128_gcm() {
    let suite = suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    rustls_upstream(DriverKind::Uring, "1.2", Some(suite), 256 << 10);
}

#[test]
fn cipher_tls12_aes_256_gcm() {
    let suite = suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
    rustls_upstream(DriverKind::Uring, "1.2", Some(suite), 256 << 10);
}

#[test]
fn cipher_tls12_chacha20_poly1305() {
    let suite = suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256;
    rustls_upstream(DriverKind::Uring, "1.2", Some(suite), 256 << 10);
}

/// `client -> client-mode engine -> TLS -> server-mode engine -> echo`, kTLS required on every
/// connection at both ends — also when the client's close_notify and FIN reach the server engine
/// before its hand-off (the engine attaches the `tls` ULP at accept time, while the socket is
/// still ESTABLISHED, so the kernel cannot refuse it then).
///
/// With [`Via::Connect`] the client is a program that calls `Engine::connect` on a connector
/// (a client-mode forwarder with no listener): the splice pump then moves bytes between the
/// kTLS leg and a Unix socket, the caller's end of a socketpair.
fn engine_chain(version: &str, driver: DriverKind, sizes: &[usize], via: Via) {
    let _serial = setup();
    let case = format!("chain TLS {version} {driver:?} {sizes:?} {via:?}");
    let certs = certs();
    let echo = EchoBackend::spawn();

    let (server, srv_addr) = server_engine(&case, driver, version, echo.addr, certs);

    let mut cli = client_forwarder(version, srv_addr, certs);
    if via == Via::Connect {
        cli.listen = String::new();
    }
    let client = start_engine(&case, driver, cli);
    let cli_addr = client.local_addr("cli");
    eprintln!(
        "[{case}] client engine {cli_addr:?} -> server engine {srv_addr} -> echo {}",
        echo.addr
    );
    // Read after the engines started: Engine::start probes kTLS with sockets of its own.
    let before = TlsStat::read();

    let mut up = 0;
    let mut down = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let what = format!("{case}, connection {i} ({size} bytes)");
        let payload = random_bytes(size);
        let started = Instant::now();
        let received = match cli_addr {
            Some(addr) => run_client(&what, addr, &payload),
            None => client
                .connect("cli")
                .map_err(|e| format!("{what}: Engine::connect: {e}"))
                .and_then(|sock| exchange(&what, sock, &payload)),
        }
        .unwrap_or_else(|e| panic!("{e}\n  the echo backend: {}", echo.peek()));

        let seen = echo.report(&what);
        assert_eq!(
            (seen.bytes, seen.sha256.as_str()),
            (size as u64, sha256_hex(&payload).as_str()),
            "{what}: the echo backend did not receive exactly what the client sent \
             (bytes, sha256)"
        );
        let trailer = trailer(size as u64, &seen.sha256);
        let expected = [payload.as_slice(), &trailer].concat();
        expect_same_stream(&what, &received, &expected);
        report_speed(&what, size * 2, started);
        up += size as u64;
        down += expected.len() as u64;
    }

    let conns = sizes.len() as u64;
    let stats = wait_idle(&[&client, &server], conns);
    let mut problems = Vec::new();
    let cli_ktls = check_forwarder(&stats, "cli", conns, conns, up, down, &mut problems);
    let srv_ktls = check_forwarder(&stats, "srv", conns, conns, up, down, &mut problems);
    // Each connection has two TLS legs (the client engine's upstream and the server engine's
    // downstream); each leg on kTLS has a TX and an RX key in the kernel.
    let after = TlsStat::read();
    check_tls_stat(&before, &after, cli_ktls + srv_ktls, &mut problems);
    finish(&case, problems, &stats, &before, &after);
    client.shutdown(Duration::from_secs(5));
    server.shutdown(Duration::from_secs(5));
}

/// `client -> client-mode engine -> TLS -> plain rustls server`, with the server's post-handshake
/// flight (TLS 1.3: NewSessionTicket records) and first data sent at the different
/// [`TicketTiming`]s, before it reads anything. `suite` pins the cipher suite.
fn rustls_upstream(
    driver: DriverKind,
    version: &str,
    suite: Option<rustls::SupportedCipherSuite>,
    payload_size: usize,
) {
    let _serial = setup();
    let suite_name = suite.map_or("default suites".into(), |s| format!("{:?}", s.suite()));
    let case = format!("rustls upstream TLS {version} {suite_name} {driver:?}");
    let certs = certs();
    let upstream = UpstreamServer::spawn(certs, version, suite);

    let client = start_engine(
        &case,
        driver,
        client_forwarder(version, upstream.addr, certs),
    );
    let cli_addr = client
        .local_addr("cli")
        .expect("client engine has no address for `cli`");
    eprintln!(
        "[{case}] client engine {cli_addr} -> rustls server {}",
        upstream.addr
    );
    // Read after the engines started: Engine::start probes kTLS with sockets of its own.
    let before = TlsStat::read();

    let mut up = 0;
    let mut down = 0;
    for (i, timing) in TicketTiming::ALL.into_iter().enumerate() {
        let what = format!("{case}, connection {i} ({timing:?})");
        let payload = random_bytes(payload_size);
        let started = Instant::now();
        let received = run_client(&what, cli_addr, &payload)
            .unwrap_or_else(|e| panic!("{e}\n  the rustls server: {}", upstream.peek()));

        let seen = upstream.report(&what);
        assert_eq!(
            seen.timing, timing,
            "{what}: the rustls server took connections out of order"
        );
        if let Some(suite) = suite {
            let want = format!("{:?}", suite.suite());
            assert_eq!(seen.suite, want, "{what}: negotiated another cipher suite");
        }
        assert_eq!(
            (seen.bytes, seen.sha256.as_str()),
            (payload.len() as u64, sha256_hex(&payload).as_str()),
            "{what}: the rustls server did not receive exactly what the client sent \
             (bytes, sha256)"
        );
        assert!(
            seen.close_notify,
            "{what}: the client engine half-closed its TLS leg without a close_notify alert \
             (the rustls server saw a bare TCP EOF, which TLS treats as truncation)"
        );
        if version == "1.3" {
            // The tickets of TLS 1.3 come after the hand-off: the client engine stored those of
            // the connection before through its `TicketStore`.
            assert_eq!(
                seen.resumed,
                i > 0,
                "{what}: resumed (the engine keeps the tickets that arrive over kTLS)"
            );
        }
        let trailer = trailer(seen.bytes, &seen.sha256);
        let expected = [seen.banner.as_slice(), &payload, &trailer].concat();
        expect_same_stream(&what, &received, &expected);
        report_speed(&what, expected.len() + payload.len(), started);
        up += payload.len() as u64;
        down += expected.len() as u64;
    }

    let conns = TicketTiming::ALL.len() as u64;
    let stats = wait_idle(&[&client], conns);
    let mut problems = Vec::new();
    let cli_ktls = check_forwarder(&stats, "cli", conns, conns, up, down, &mut problems);
    let after = TlsStat::read();
    check_tls_stat(&before, &after, cli_ktls, &mut problems);
    finish(&case, problems, &stats, &before, &after);
    client.shutdown(Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------------
// Environment: kTLS check, logging, certificates, serialisation
// ---------------------------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// Fails unless the kernel has kTLS; sets up logging; returns the lock that serialises tests.
fn setup() -> MutexGuard<'static, ()> {
    let guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Err(e) = std::fs::read_to_string(TLS_STAT) {
        panic!(
            "\n\nkTLS is not available here ({TLS_STAT}: {e}).\n\
             These tests need a kernel with the `tls` module; they are meant to run inside the \
             kTLS VM only:\n\n    cargo xtask integration-test vm\n\n"
        );
    }
    static LOG: Once = Once::new();
    LOG.call_once(|| {
        let level = std::env::var("SPLICE_TEST_LOG").unwrap_or_else(|_| "info".into());
        // Another test may have set a global subscriber already; that is fine.
        let _ = splice_engine::logging::init(Some(&level), false);
    });
    guard
}

/// A CA and a `localhost` certificate it signed, as PEM files (for the engine) and DER (for
/// the plain rustls server).
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    chain_der: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
}

fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        // Inside the VM the temp dir is /tmp, a tmpfs the VM's init mounts.
        let dir = std::env::temp_dir().join(format!("splice-ktls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let ca = Ca::new(&dir, "ktls", KeyType::P256);
        let leaf = ca.issue(&dir, "localhost", SERVER_SANS, KeyType::P256, Usage::Server);
        Certs {
            ca: ca.path,
            chain_der: vec![leaf.cert_der.clone()],
            key_der: leaf.key_der(),
            cert: leaf.cert,
            key: leaf.key,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The engine under test
// ---------------------------------------------------------------------------------------------

fn start_engine(case: &str, driver: DriverKind, forwarder: ForwarderConfig) -> Engine {
    let name = forwarder.name.clone();
    let cfg = EngineConfig {
        threads: Some(1),
        driver,
        // On: the engine must fail at start rather than quietly fall back to rustls.
        ktls: KtlsMode::On,
        forwarders: vec![forwarder],
        ..EngineConfig::default()
    };
    Engine::start(cfg)
        .unwrap_or_else(|e| panic!("[{case}] engine with forwarder {name:?} did not start: {e}"))
}

/// How the client reaches the client-mode engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Over TCP, to the forwarder's listener.
    Listener,
    /// Through `Engine::connect`.
    Connect,
}

/// A server-mode engine (forwarder `srv`, kTLS required) in front of `backend`, and its address.
fn server_engine(
    case: &str,
    driver: DriverKind,
    version: &str,
    backend: SocketAddr,
    certs: &Certs,
) -> (Engine, SocketAddr) {
    let mut srv = ForwarderConfig::new(Mode::Server, "127.0.0.1:0", backend.to_string());
    srv.name = "srv".into();
    srv.cert = Some(certs.cert.clone());
    srv.key = Some(certs.key.clone());
    srv.tls_versions = vec![version.into()];
    let server = start_engine(case, driver, srv);
    let addr = server
        .local_addr("srv")
        .expect("server engine has no address for `srv`");
    (server, addr)
}

/// The client-mode forwarder: plain TCP in, TLS to `upstream`, verifying `localhost` against
/// the test CA. It connects by IP: the VM has no /etc/hosts, so `localhost` does not resolve.
fn client_forwarder(version: &str, upstream: SocketAddr, certs: &Certs) -> ForwarderConfig {
    let mut cli = ForwarderConfig::new(Mode::Client, "127.0.0.1:0", upstream.to_string());
    cli.name = "cli".into();
    cli.ca = Some(certs.ca.clone());
    cli.sni = Some("localhost".into());
    cli.tls_versions = vec![version.into()];
    cli
}

/// Waits until every forwarder of `engines` has accepted `conns` connections and has none open,
/// so that the counters are final. Returns the last snapshots either way.
fn wait_idle(engines: &[&Engine], conns: u64) -> Vec<StatsSnapshot> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats: Vec<StatsSnapshot> = engines.iter().flat_map(|e| e.stats()).collect();
        let idle = stats.iter().all(|s| s.active == 0 && s.accepted >= conns);
        if idle || Instant::now() > deadline {
            return stats;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Checks one forwarder's counters after `conns` connections that carried `up` bytes towards
/// the upstream and `down` bytes back, at least `min_ktls` of them on kTLS. Returns the number
/// of connections it says went to kTLS.
fn check_forwarder(
    stats: &[StatsSnapshot],
    name: &str,
    conns: u64,
    min_ktls: u64,
    up: u64,
    down: u64,
    problems: &mut Vec<String>,
) -> u64 {
    let Some(s) = stats.iter().find(|s| s.name == name) else {
        problems.push(format!("no stats for forwarder {name:?}"));
        return min_ktls;
    };
    let mut expect = |what: &str, ok: bool, detail: String| {
        if !ok {
            problems.push(format!("forwarder {name:?}: {what}: {detail}"));
        }
    };
    expect(
        "accepted",
        s.accepted == conns,
        format!("{} != {conns}", s.accepted),
    );
    expect(
        "active after the clients finished",
        s.active == 0,
        format!("{} != 0", s.active),
    );
    expect("refused", s.refused == 0, format!("{} != 0", s.refused));
    expect(
        "ktls (connections whose TLS leg went to the kernel)",
        (min_ktls..=conns).contains(&s.ktls),
        format!("{} is not in {min_ktls}..={conns}", s.ktls),
    );
    expect(
        "bytes_down_to_up",
        s.bytes_down_to_up == up,
        format!("{} != {up}", s.bytes_down_to_up),
    );
    expect(
        "bytes_up_to_down",
        s.bytes_up_to_down == down,
        format!("{} != {down}", s.bytes_up_to_down),
    );
    let errors = [
        ("errors_downstream", s.errors_downstream),
        ("errors_upstream", s.errors_upstream),
        ("errors_tls", s.errors_tls),
        ("errors_internal", s.errors_internal),
    ];
    for (what, n) in errors {
        expect(what, n == 0, format!("{n} != 0"));
    }
    s.ktls
}

/// Panics with every problem found, the stats and the kernel counters.
fn finish(
    case: &str,
    problems: Vec<String>,
    stats: &[StatsSnapshot],
    before: &TlsStat,
    after: &TlsStat,
) {
    let deltas = after.deltas(before);
    eprintln!("[{case}] /proc/net/tls_stat deltas: {deltas}");
    if !problems.is_empty() {
        panic!(
            "[{case}] {} problem(s):\n  - {}\nstats: {stats:#?}\n/proc/net/tls_stat deltas: {deltas}",
            problems.len(),
            problems.join("\n  - ")
        );
    }
    eprintln!("[{case}] ok");
}

// ---------------------------------------------------------------------------------------------
// /proc/net/tls_stat
// ---------------------------------------------------------------------------------------------

const TLS_STAT: &str = "/proc/net/tls_stat";

/// The kernel's kTLS counters (`TlsTxSw`: sockets that got a software TX key, and so on).
struct TlsStat(BTreeMap<String, u64>);

impl TlsStat {
    fn read() -> Self {
        let text = std::fs::read_to_string(TLS_STAT)
            .unwrap_or_else(|e| panic!("read {TLS_STAT}: {e} (is the tls module loaded?)"));
        let map = text
            .lines()
            .filter_map(|line| {
                let mut it = line.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.parse().ok()?))
            })
            .collect();
        Self(map)
    }

    fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    fn delta(&self, before: &TlsStat, key: &str) -> u64 {
        self.get(key).saturating_sub(before.get(key))
    }

    fn deltas(&self, before: &TlsStat) -> String {
        let parts: Vec<String> = self
            .0
            .keys()
            .map(|k| format!("{k} +{}", self.delta(before, k)))
            .collect();
        parts.join(", ")
    }
}

/// `legs` TLS sockets (the engines' kTLS hand-offs) must each have had a TX and an RX key
/// installed in the kernel, and no record may have failed to decrypt.
fn check_tls_stat(before: &TlsStat, after: &TlsStat, legs: u64, problems: &mut Vec<String>) {
    for key in ["TlsTxSw", "TlsRxSw"] {
        let d = after.delta(before, key);
        if d < legs {
            problems.push(format!(
                "{TLS_STAT}: {key} rose by {d}, expected at least {legs} (one per TLS leg the \
                 engines handed to the kernel): the kernel did not do the record crypto"
            ));
        }
    }
    let d = after.delta(before, "TlsDecryptError");
    if d != 0 {
        problems.push(format!("{TLS_STAT}: TlsDecryptError rose by {d}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The test client
// ---------------------------------------------------------------------------------------------

/// Connects to `addr`, sends `payload` from a second thread then shuts down the write side,
/// and returns everything received until EOF.
fn run_client(what: &str, addr: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("{what}: connect {addr}: {e}"))?;
    set_timeouts(&stream);
    exchange(what, stream, payload)
}

/// A connected stream (TCP, or the Unix socket `Engine::connect` returns) on which a program
/// writes `payload` and shuts its write side, while it reads until end of stream.
trait Stream: Read + Write + Send + Sized {
    fn split(&self) -> Self;
    fn shut(&self, how: Shutdown) -> io::Result<()>;
}

impl Stream for TcpStream {
    fn split(&self) -> Self {
        self.try_clone().expect("clone the client socket")
    }
    fn shut(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn split(&self) -> Self {
        self.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        self.try_clone().expect("clone the program's socket")
    }
    fn shut(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

fn exchange<S: Stream>(what: &str, stream: S, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut writer = stream.split();
    let mut reader = stream;
    thread::scope(|scope| {
        let sender = scope.spawn(move || -> io::Result<()> {
            for chunk in payload.chunks(64 << 10) {
                writer.write_all(chunk)?;
            }
            writer.shut(Shutdown::Write)
        });
        let mut received = Vec::with_capacity(payload.len() + BANNER + 256);
        let mut buf = vec![0; 64 << 10];
        let read_result = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = read_result {
            // Unblock the sender (it may be stuck on a full window) before reporting.
            let _ = reader.shut(Shutdown::Both);
            let _ = sender.join();
            return Err(format!(
                "{what}: client read failed after {} bytes (of {} sent): {e}",
                received.len(),
                payload.len()
            ));
        }
        match sender.join().expect("sender thread panicked") {
            Ok(()) => Ok(received),
            Err(e) => Err(format!(
                "{what}: client write failed: {e} (received {} bytes before EOF)",
                received.len()
            )),
        }
    })
}

/// Asserts `got == want`, reporting the first differing offset and both hashes.
fn expect_same_stream(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let tail = |s: &[u8]| String::from_utf8_lossy(&s[s.len().saturating_sub(80)..]).into_owned();
    panic!(
        "{what}: the client received a different stream than expected:\n  \
         received {} bytes, sha256 {}\n  expected {} bytes, sha256 {}\n  \
         first difference at offset {first_diff}\n  last bytes received: {:?}\n  \
         last bytes expected: {:?}",
        got.len(),
        sha256_hex(got),
        want.len(),
        sha256_hex(want),
        tail(got),
        tail(want),
    );
}

fn report_speed(what: &str, bytes: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let mib = bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "[{what}] ok: {mib:.2} MiB through in {secs:.2}s ({:.1} MiB/s)",
        mib / secs.max(1e-9)
    );
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// What a backend saw on one connection before the client's EOF.
struct Seen {
    bytes: u64,
    sha256: String,
}

/// What a backend sends after the client's EOF: proof that the half-close got through and
/// that the reverse direction stayed open.
fn trailer(bytes: u64, sha256: &str) -> Vec<u8> {
    format!("\n-- EOF after {bytes} bytes, sha256 {sha256} --\n").into_bytes()
}

/// A plain TCP echo server: echoes everything, and on EOF sends the trailer and closes.
struct EchoBackend {
    addr: SocketAddr,
    seen: mpsc::Receiver<io::Result<Seen>>,
}

impl EchoBackend {
    fn spawn() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo backend");
        let addr = listener.local_addr().expect("echo address");
        let (tx, seen) = mpsc::channel();
        // The accept loop lives as long as the test process.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let tx = tx.clone();
                match stream {
                    Ok(stream) => {
                        thread::spawn(move || {
                            let _ = tx.send(echo_one(stream));
                        });
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }
        });
        Self { addr, seen }
    }

    fn report(&self, what: &str) -> Seen {
        match self.seen.recv_timeout(IO_TIMEOUT) {
            Ok(Ok(seen)) => seen,
            Ok(Err(e)) => panic!("{what}: echo backend failed: {e}"),
            Err(e) => panic!("{what}: the echo backend never finished a connection: {e}"),
        }
    }

    /// What the backend says about its latest connection, for a failure message.
    fn peek(&self) -> String {
        match self.seen.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(seen)) => format!("received {} bytes, sha256 {}", seen.bytes, seen.sha256),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(_) => "no connection finished within 5 s".into(),
        }
    }
}

fn echo_one(mut stream: TcpStream) -> io::Result<Seen> {
    set_timeouts(&stream);
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash.update(&buf[..n]);
        bytes += n as u64;
        stream.write_all(&buf[..n])?;
    }
    let sha256 = format!("{:x}", hash.finalize());
    stream.write_all(&trailer(bytes, &sha256))?;
    stream.shutdown(Shutdown::Write)?;
    Ok(Seen { bytes, sha256 })
}

/// When the rustls server sends what its handshake left queued (TLS 1.3: the session tickets;
/// TLS 1.2: its ChangeCipherSpec and Finished) and its first application data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TicketTiming {
    /// Tickets and the banner go out in one write, right after the handshake.
    SameFlight,
    /// Tickets go out right after the handshake, the banner 300 ms later.
    BannerLater,
    /// Nothing goes out for 300 ms after the handshake, then the tickets and the banner. With
    /// TLS 1.3 the client engine has handed the session to the kernel by then (and is already
    /// sending), so the tickets can only arrive through kTLS RX.
    TicketsLater,
}

impl TicketTiming {
    const ALL: [TicketTiming; 3] = [
        TicketTiming::SameFlight,
        TicketTiming::BannerLater,
        TicketTiming::TicketsLater,
    ];
}

/// What the rustls server saw on one connection.
struct UpstreamSeen {
    timing: TicketTiming,
    suite: String,
    banner: Vec<u8>,
    bytes: u64,
    sha256: String,
    close_notify: bool,
    /// The handshake resumed a session.
    resumed: bool,
}

/// A plain rustls server: after the handshake (TLS 1.3: and `TICKETS` NewSessionTicket
/// messages) it sends a random banner, then echoes; on the client's close it sends the trailer
/// and its own close_notify. Connection `i` uses `TicketTiming::ALL[i % 3]`.
struct UpstreamServer {
    addr: SocketAddr,
    seen: mpsc::Receiver<Result<UpstreamSeen, String>>,
}

impl UpstreamServer {
    fn spawn(certs: &Certs, version: &str, suite: Option<rustls::SupportedCipherSuite>) -> Self {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(suite) = suite {
            provider.cipher_suites = vec![suite];
        }
        let version = match version {
            "1.2" => &rustls::version::TLS12,
            _ => &rustls::version::TLS13,
        };
        let key = certs.key_der.clone_key();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .expect("the protocol version and the cipher suite go together")
            .with_no_client_auth()
            .with_single_cert(certs.chain_der.clone(), key)
            .expect("server certificate");
        config.send_tls13_tickets = TICKETS;
        let config = Arc::new(config);

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the rustls server");
        let addr = listener.local_addr().expect("rustls server address");
        let (tx, seen) = mpsc::channel();
        thread::spawn(move || {
            let timings = TicketTiming::ALL.into_iter().cycle();
            for (stream, timing) in listener.incoming().zip(timings) {
                let (tx, config) = (tx.clone(), config.clone());
                thread::spawn(move || {
                    let result = stream
                        .map_err(|e| format!("accept: {e}"))
                        .and_then(|s| serve_upstream(s, config, timing));
                    let _ = tx.send(result);
                });
            }
        });
        Self { addr, seen }
    }

    fn report(&self, what: &str) -> UpstreamSeen {
        match self.seen.recv_timeout(IO_TIMEOUT) {
            Ok(Ok(seen)) => seen,
            Ok(Err(e)) => panic!("{what}: the rustls server failed: {e}"),
            Err(e) => panic!("{what}: the rustls server never finished a connection: {e}"),
        }
    }

    /// What the server says about its latest connection, for a failure message.
    fn peek(&self) -> String {
        match self.seen.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(seen)) => format!(
                "received {} bytes, sha256 {}, close_notify {}",
                seen.bytes, seen.sha256, seen.close_notify
            ),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(_) => "no connection finished within 5 s".into(),
        }
    }
}

fn serve_upstream(
    mut sock: TcpStream,
    config: Arc<rustls::ServerConfig>,
    timing: TicketTiming,
) -> Result<UpstreamSeen, String> {
    set_timeouts(&sock);
    let mut conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
    conn.set_buffer_limit(None);
    let io = |what: &str, e: io::Error| format!("{what}: {e}");

    // The handshake by hand, so that nothing it leaves queued (the tickets) is flushed early.
    while conn.is_handshaking() {
        if conn.wants_write() {
            conn.write_tls(&mut sock)
                .map_err(|e| io("handshake write", e))?;
            continue;
        }
        if conn
            .read_tls(&mut sock)
            .map_err(|e| io("handshake read", e))?
            == 0
        {
            return Err("EOF during the handshake".into());
        }
        if let Err(e) = conn.process_new_packets() {
            let _ = conn.write_tls(&mut sock); // the alert
            return Err(format!("handshake: {e}"));
        }
    }
    // TLS 1.3: the tickets are queued now. (TLS 1.2: the server's Finished after a full
    // handshake; nothing after a resumed one, where the client speaks last.)
    let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    if tls13 && !conn.wants_write() {
        return Err("rustls queued no session tickets after the handshake".into());
    }
    let suite = conn
        .negotiated_cipher_suite()
        .map_or("none".into(), |s| format!("{:?}", s.suite()));
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let banner = random_bytes(BANNER);
    match timing {
        TicketTiming::SameFlight => {}
        TicketTiming::BannerLater => {
            flush(&mut conn, &mut sock).map_err(|e| io("send tickets", e))?;
            thread::sleep(Duration::from_millis(300));
        }
        TicketTiming::TicketsLater => thread::sleep(Duration::from_millis(300)),
    }
    conn.writer()
        .write_all(&banner)
        .map_err(|e| io("queue banner", e))?;
    flush(&mut conn, &mut sock).map_err(|e| io("send banner", e))?;

    // Echo until the client closes.
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0; 64 << 10];
    let close_notify = 'echo: loop {
        let tcp_eof = conn.read_tls(&mut sock).map_err(|e| io("read", e))? == 0;
        if let Err(e) = conn.process_new_packets() {
            let _ = flush(&mut conn, &mut sock);
            return Err(format!("bad record from the client engine: {e}"));
        }
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => break 'echo true,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    bytes += n as u64;
                    conn.writer()
                        .write_all(&buf[..n])
                        .map_err(|e| io("queue echo", e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break 'echo false,
                Err(e) => return Err(io("read plaintext", e)),
            }
        }
        flush(&mut conn, &mut sock).map_err(|e| io("send echo", e))?;
        if tcp_eof {
            break false;
        }
    };
    let sha256 = format!("{:x}", hash.finalize());
    conn.writer()
        .write_all(&trailer(bytes, &sha256))
        .map_err(|e| io("queue trailer", e))?;
    conn.send_close_notify();
    flush(&mut conn, &mut sock).map_err(|e| io("send trailer", e))?;
    sock.shutdown(Shutdown::Write)
        .map_err(|e| io("shutdown", e))?;
    Ok(UpstreamSeen {
        timing,
        suite,
        banner,
        bytes,
        sha256,
        close_notify,
        resumed,
    })
}

fn flush(conn: &mut rustls::ServerConnection, sock: &mut TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(sock)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn set_timeouts(stream: &TcpStream) {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("set write timeout");
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    rand::rng().fill_bytes(&mut v);
    v
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

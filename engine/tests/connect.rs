//! `Engine::connect` and the run-time forwarder calls, through the library as an embedding
//! program uses it: real sockets on loopback, real TLS. The upstream of the client-mode
//! forwarder is `openssl s_server` (an independent TLS peer) or the engine's own server mode in
//! front of an echo backend; payloads are checked by SHA-256, on both drivers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use splice_engine::{DriverKind, Engine, EngineConfig, Error, ForwarderConfig, KtlsMode, Mode};
use splice_test_pki::Pki;

const DRIVERS: [DriverKind; 2] = [DriverKind::Uring, DriverKind::Epoll];
/// Read/write timeout on test sockets: only there to turn a hang into a failure.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// A generous bound for "this should happen soon".
const SOON: Duration = Duration::from_secs(30);
const OPENSSL: &str = "/usr/bin/openssl";

/// Two shards of `driver`, running `forwarders`.
fn engine(driver: DriverKind, forwarders: Vec<ForwarderConfig>) -> Engine {
    Engine::start(EngineConfig {
        threads: Some(2),
        driver,
        ktls: KtlsMode::Off,
        access_log: false,
        forwarders,
        ..EngineConfig::default()
    })
    .unwrap_or_else(|e| panic!("start the engine ({driver}): {e}"))
}

/// A client-mode forwarder named `name` without a listener, to `upstream`, trusting the CA of
/// `pki` for the name `localhost`.
fn connector(name: &str, upstream: SocketAddr, pki: &Pki) -> ForwarderConfig {
    let mut f = ForwarderConfig::new(Mode::Client, "", upstream.to_string());
    f.name = name.into();
    f.ca = Some(pki.ca.path.clone());
    f.sni = Some("localhost".into());
    f
}

/// A server-mode forwarder on a free port in front of `backend`.
fn server_mode(name: &str, backend: SocketAddr, pki: &Pki) -> ForwarderConfig {
    let mut f = ForwarderConfig::new(Mode::Server, "127.0.0.1:0", backend.to_string());
    f.name = name.into();
    f.cert = Some(pki.server.cert.clone());
    f.key = Some(pki.server.key.clone());
    f
}

/// An echo server on a free port: each connection gets back what it sent, then the end.
fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the echo backend");
    let addr = l.local_addr().expect("echo backend address");
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            thread::spawn(move || {
                let mut r = s.try_clone().expect("clone");
                let mut w = s;
                let _ = io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `total` pseudo-random bytes from `seed`; returns their SHA-256.
fn write_random(w: &mut impl Write, total: usize, seed: u64) -> io::Result<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(hex(&hasher.finalize()))
}

/// Reads to the end; returns the byte count and SHA-256.
fn read_hashed(r: &mut impl Read) -> io::Result<(usize, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match r.read(&mut buf)? {
            0 => return Ok((total, hex(&hasher.finalize()))),
            n => {
                hasher.update(&buf[..n]);
                total += n;
            }
        }
    }
}

/// Connects through `forwarder`, sends `total` random bytes, half-closes, and checks that the
/// echo is the same bytes.
fn echo_through(engine: &Engine, forwarder: &str, total: usize, seed: u64) {
    let sock = engine
        .connect(forwarder)
        .unwrap_or_else(|e| panic!("connect through {forwarder:?}: {e}"));
    sock.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    sock.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut reader = sock.try_clone().expect("clone the socket");
    let read = thread::spawn(move || read_hashed(&mut reader));
    let mut writer = sock;
    let sent = write_random(&mut writer, total, seed).expect("write the payload");
    writer.shutdown(Shutdown::Write).expect("half-close");
    let (n, got) = read
        .join()
        .expect("reader thread")
        .expect("read the echo to its end");
    assert_eq!(n, total, "echoed byte count (seed {seed})");
    assert_eq!(got, sent, "SHA-256 of the echo (seed {seed})");
}

/// Polls `cond` until it holds or `SOON` passes.
fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + SOON;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn stats_of(engine: &Engine, name: &str) -> splice_engine::StatsSnapshot {
    engine
        .stats()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stats for {name:?}"))
}

/// Connections from several threads at once, through a connector added at run time, to the
/// engine's own server mode in front of an echo backend: every byte comes back, both ways
/// counted, nothing left open.
fn through_our_server_mode(driver: DriverKind) {
    const THREADS: usize = 6;
    const EACH_THREAD: usize = 3;
    const BYTES: usize = 1024 * 1024;
    let pki = Pki::new();
    let engine = engine(driver, vec![server_mode("tls-in", echo_backend(), &pki)]);
    let tls_in = engine.local_addr("tls-in").expect("tls-in listens");
    engine
        .add_forwarder(connector("out", tls_in, &pki))
        .expect("add the connector");
    assert_eq!(
        engine.local_addr("out"),
        None,
        "a connector has no listener"
    );

    thread::scope(|s| {
        for t in 0..THREADS {
            let engine = &engine;
            s.spawn(move || {
                for k in 0..EACH_THREAD {
                    echo_through(engine, "out", BYTES, (t * 100 + k) as u64);
                }
            });
        }
    });

    let n = (THREADS * EACH_THREAD) as u64;
    assert!(
        wait_until(
            || stats_of(&engine, "out").active == 0 && stats_of(&engine, "tls-in").active == 0
        ),
        "connections still open: {:?}",
        engine.stats()
    );
    for name in ["out", "tls-in"] {
        let s = stats_of(&engine, name);
        assert_eq!(s.accepted, n, "{name}: {s:?}");
        assert_eq!(s.bytes_down_to_up, n * BYTES as u64, "{name}: {s:?}");
        assert_eq!(s.bytes_up_to_down, n * BYTES as u64, "{name}: {s:?}");
        let errors = s.errors_downstream + s.errors_upstream + s.errors_tls + s.errors_internal;
        assert_eq!(errors, 0, "{name}: {s:?}");
    }
    engine.shutdown(SOON);
}

#[test]
fn through_our_server_mode_uring() {
    through_our_server_mode(DRIVERS[0]);
}

#[test]
fn through_our_server_mode_epoll() {
    through_our_server_mode(DRIVERS[1]);
}

/// A backend that reads each connection to its end and reports the byte count and SHA-256.
fn sink_backend() -> (
    SocketAddr,
    std::sync::mpsc::Receiver<io::Result<(usize, String)>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
    let addr = l.local_addr().expect("sink address");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = tx.send(read_hashed(&mut s));
            });
        }
    });
    (addr, rx)
}

/// A program that writes and closes its socket at once (no `shutdown`, no read): its bytes
/// still all arrive, as they would from a TCP client that wrote and closed. A Unix socket
/// whose peer closed polls as hung up, which on TCP would mean a reset.
fn write_then_close(driver: DriverKind) {
    const BYTES: usize = 4 * 1024 * 1024;
    let pki = Pki::new();
    let (sink, got) = sink_backend();
    let engine = engine(driver, vec![server_mode("tls-in", sink, &pki)]);
    let tls_in = engine.local_addr("tls-in").expect("tls-in listens");
    engine
        .add_forwarder(connector("out", tls_in, &pki))
        .expect("add the connector");
    for seed in 0..4 {
        let mut sock = engine.connect("out").expect("connect");
        sock.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let sent = write_random(&mut sock, BYTES, seed).expect("write");
        drop(sock);
        let (n, hash) = got
            .recv_timeout(SOON)
            .expect("the sink saw the connection end")
            .expect("the sink read to a clean end");
        assert_eq!(
            (n, hash),
            (BYTES, sent),
            "what reached the backend (seed {seed})"
        );
    }
    assert!(
        wait_until(|| stats_of(&engine, "out").active == 0),
        "{:?}",
        stats_of(&engine, "out")
    );
    let s = stats_of(&engine, "out");
    let errors = s.errors_downstream + s.errors_upstream + s.errors_tls + s.errors_internal;
    assert_eq!(errors, 0, "{s:?}");
}

#[test]
fn write_then_close_uring() {
    write_then_close(DRIVERS[0]);
}

#[test]
fn write_then_close_epoll() {
    write_then_close(DRIVERS[1]);
}

/// `openssl s_server` with its stdin and stdout piped; killed on drop.
struct SServer {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    addr: SocketAddr,
}

impl SServer {
    /// `s_server` on a free port, presenting `pki`'s server certificate, for two connections:
    /// the probe that sees it listening, then the one under test.
    fn start(pki: &Pki) -> SServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = Command::new(OPENSSL)
            .args([
                "s_server",
                "-accept",
                &addr.to_string(),
                "-quiet",
                "-naccept",
                "2",
            ])
            .arg("-cert")
            .arg(&pki.server.cert)
            .arg("-key")
            .arg(&pki.server.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_server");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let mut out = child.stdout.take().expect("stdout piped");
        let sink = stdout.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .expect("stdout lock")
                    .extend_from_slice(&buf[..n]);
            }
        });
        assert!(
            wait_until(|| TcpStream::connect(addr).is_ok()),
            "openssl s_server did not listen on {addr}"
        );
        SServer {
            child,
            stdout,
            addr,
        }
    }

    fn send(&mut self, data: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("stdin piped");
        stdin.write_all(data).expect("write to s_server's stdin");
        stdin.flush().expect("flush s_server's stdin");
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Random bytes as text lines that `s_server` passes on as they are: hex, each line opened
/// with `0` (a line opening with a letter can be an `s_server` command).
fn text_payload(lines: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut raw = [0u8; 32];
    for _ in 0..lines {
        rng.fill_bytes(&mut raw);
        out.push(b'0');
        out.extend_from_slice(hex(&raw).as_bytes());
        out.push(b'\n');
    }
    out
}

/// A connector to `openssl s_server`: what the caller writes reaches s_server decrypted (it
/// verified our TLS), what s_server sends arrives on the socket; both checked by SHA-256.
fn to_openssl(driver: DriverKind) {
    let pki = Pki::new();
    let mut srv = SServer::start(&pki);
    let engine = engine(driver, vec![connector("out", srv.addr, &pki)]);
    let mut sock: UnixStream = engine
        .connect("out")
        .expect("connect through the connector");
    sock.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");

    let up = text_payload(2000, 1);
    sock.write_all(&up).expect("write through the connector");
    assert!(
        wait_until(|| srv.stdout.lock().expect("stdout lock").len() >= up.len()),
        "s_server got {} of {} bytes",
        srv.stdout.lock().expect("stdout lock").len(),
        up.len()
    );
    let got = srv.stdout.lock().expect("stdout lock").clone();
    assert_eq!(
        hex(&Sha256::digest(&got)),
        hex(&Sha256::digest(&up)),
        "what s_server received"
    );

    let down = text_payload(2000, 2);
    srv.send(&down);
    let mut back = vec![0u8; down.len()];
    sock.read_exact(&mut back).expect("read s_server's bytes");
    assert_eq!(
        hex(&Sha256::digest(&back)),
        hex(&Sha256::digest(&down)),
        "what came back from s_server"
    );
    let s = stats_of(&engine, "out");
    assert_eq!((s.accepted, s.active), (1, 1), "{s:?}");
    drop(sock);
    assert!(
        wait_until(|| stats_of(&engine, "out").active == 0),
        "the connection did not end after the caller closed: {:?}",
        stats_of(&engine, "out")
    );
}

#[test]
fn to_openssl_uring() {
    to_openssl(DRIVERS[0]);
}

#[test]
fn to_openssl_epoll() {
    to_openssl(DRIVERS[1]);
}

/// What `Engine::connect` refuses, and how: unknown name, server mode, `max_connections`
/// reached (counted as refused, and free again once a connection ends); an upstream that the
/// connector's CA does not vouch for gets no byte.
#[test]
fn connect_errors() {
    let pki = Pki::new();
    let backend = echo_backend();
    let engine = engine(
        DriverKind::Epoll,
        vec![server_mode("tls-in", backend, &pki)],
    );
    let tls_in = engine.local_addr("tls-in").expect("tls-in listens");

    match engine.connect("nope") {
        Err(Error::UnknownForwarder { name }) => assert_eq!(name, "nope"),
        other => panic!("expected UnknownForwarder, got {other:?}"),
    }
    match engine.connect("tls-in") {
        Err(e @ Error::NotClientMode { .. }) => {
            assert!(e.to_string().contains("server mode"), "{e}")
        }
        other => panic!("expected NotClientMode, got {other:?}"),
    }

    let mut limited = connector("two", tls_in, &pki);
    limited.max_connections = 2;
    engine.add_forwarder(limited).expect("add a connector");
    let first = engine.connect("two").expect("first connection");
    let _second = engine.connect("two").expect("second connection");
    match engine.connect("two") {
        Err(e @ Error::AtCapacity { max: 2, .. }) => {
            assert!(e.to_string().contains("max_connections"), "{e}")
        }
        other => panic!("expected AtCapacity, got {other:?}"),
    }
    let s = stats_of(&engine, "two");
    assert_eq!((s.accepted, s.refused, s.active), (2, 1, 2), "{s:?}");
    drop(first);
    assert!(
        wait_until(|| stats_of(&engine, "two").active == 1),
        "closing one did not free its place: {:?}",
        stats_of(&engine, "two")
    );
    let mut again = engine.connect("two").expect("a place is free again");
    again.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    again.write_all(b"ping").expect("write");
    let mut back = [0u8; 4];
    again.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"ping");

    // A connector that trusts another CA: the handshake fails, no byte reaches the backend,
    // the caller's socket ends, and the failure is counted on the TLS side.
    let mut untrusting = connector("wrong-ca", tls_in, &pki);
    untrusting.ca = Some(pki.other_ca.path.clone());
    engine.add_forwarder(untrusting).expect("add a connector");
    let mut sock = engine.connect("wrong-ca").expect("connect");
    sock.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let _ = sock.write_all(b"secret");
    let mut buf = Vec::new();
    let got = sock.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "bytes came back through an unverified upstream: {got:?} {buf:?}"
    );
    assert!(
        wait_until(|| stats_of(&engine, "wrong-ca").errors_tls == 1),
        "the verification failure was not counted: {:?}",
        stats_of(&engine, "wrong-ca")
    );
}

/// add/remove/replace at run time, with their errors; each change leaves the others running.
#[test]
fn forwarders_at_run_time() {
    let pki = Pki::new();
    let backend = echo_backend();
    let engine = engine(
        DriverKind::Epoll,
        vec![server_mode("tls-in", backend, &pki)],
    );
    let tls_in = engine.local_addr("tls-in").expect("tls-in listens");
    engine
        .add_forwarder(connector("out", tls_in, &pki))
        .expect("add");

    match engine.add_forwarder(connector("out", tls_in, &pki)) {
        Err(Error::ForwarderExists { name }) => assert_eq!(name, "out"),
        other => panic!("expected ForwarderExists, got {other:?}"),
    }
    match engine.remove_forwarder("nope") {
        Err(Error::UnknownForwarder { name }) => assert_eq!(name, "nope"),
        other => panic!("expected UnknownForwarder, got {other:?}"),
    }
    match engine.replace_forwarder(connector("nope", tls_in, &pki)) {
        Err(Error::UnknownForwarder { name }) => assert_eq!(name, "nope"),
        other => panic!("expected UnknownForwarder, got {other:?}"),
    }
    // Server mode needs a listener.
    let mut no_listen = server_mode("bare", backend, &pki);
    no_listen.listen.clear();
    let e = engine
        .add_forwarder(no_listen)
        .expect_err("server mode without listen");
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("`listen` is missing"),
        "{e}"
    );
    // An address someone else holds.
    let taken = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let taken_addr = taken.local_addr().expect("address");
    let mut f = server_mode("busy", backend, &pki);
    f.listen = taken_addr.to_string();
    match engine.add_forwarder(f) {
        Err(Error::Listen { addr, source }) => {
            assert_eq!(addr, taken_addr);
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse, "{source}");
        }
        other => panic!("expected Listen (address in use), got {other:?}"),
    }
    // An address another forwarder has.
    let mut f = server_mode("twin", backend, &pki);
    f.listen = tls_in.to_string();
    let e = engine.add_forwarder(f).expect_err("the same address twice");
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("both listen"),
        "{e}"
    );
    // None of the refused calls changed anything.
    let names: Vec<String> = engine.stats().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["tls-in", "out"]);
    echo_through(&engine, "out", 64 * 1024, 1);

    // A connection open across a replace and a remove carries on to its end.
    let mut open = engine.connect("out").expect("connect");
    open.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut listening = connector("out", tls_in, &pki);
    listening.listen = "127.0.0.1:0".into();
    engine.replace_forwarder(listening).expect("replace");
    let out_addr = engine.local_addr("out").expect("it listens now");
    let mut tcp = TcpStream::connect(out_addr).expect("connect to the new listener");
    tcp.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    tcp.write_all(b"tcp").expect("write");
    let mut back = [0u8; 3];
    tcp.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"tcp");
    echo_through(&engine, "out", 64 * 1024, 2);

    engine.remove_forwarder("out").expect("remove");
    match engine.connect("out") {
        Err(Error::UnknownForwarder { .. }) => {}
        other => panic!("expected UnknownForwarder after remove, got {other:?}"),
    }
    assert!(
        wait_until(|| TcpStream::connect(out_addr).is_err()),
        "the removed forwarder still accepts on {out_addr}"
    );
    open.write_all(b"still here").expect("write");
    open.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).expect("read to the end");
    assert_eq!(rest, b"still here");
}

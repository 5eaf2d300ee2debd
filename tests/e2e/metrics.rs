//! The Prometheus endpoint: every documented series, its labels, exact byte counts, the default
//! forwarder name, and failures counted against the right side; an HTTP server that idle or
//! slow clients cannot block; reload, certificate expiry, handshake time and build series.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// One connection that moves exactly 1000 bytes each way through server mode named "web", and
/// one through client mode with the default name: every counter says so.
#[test]
fn series_labels_and_exact_counts() {
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, cp, mp, cmp) = (free_port(), free_port(), free_port(), free_port());
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
        .opt("--name", "web")
        .metrics(mp)
        .start();
    let _client = EngineCmd::client(cp, localhost(sp), &pki.ca, "auto")
        .opt("--sni", "localhost")
        .metrics(cmp)
        .start();

    let mut s = connect(localhost(cp));
    echo_roundtrip(&mut s, &random_bytes(1000, 130));
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let (rest, end) = read_until_end(&mut s);
    assert!(
        rest.is_empty() && matches!(end, End::Eof),
        "{rest:?} {end:?}"
    );
    drop(s);

    let web = [("forwarder", "web"), ("mode", "server")];
    let client_name = format!("client-{}", localhost(cp));
    let cli = [("forwarder", client_name.as_str()), ("mode", "client")];
    for (addr, labels) in [(localhost(mp), &web), (localhost(cmp), &cli)] {
        let m = wait_metric(addr, "splice_connections_active", labels, |v| v == 0.0);
        let what = format!("{labels:?}");
        assert_eq!(
            m.value("splice_connections_accepted_total", labels),
            1.0,
            "{what} accepted:\n{}",
            m.text
        );
        assert!(
            m.has("splice_connections_active", labels),
            "{what} active series"
        );
        assert!(
            m.has("splice_connections_refused_total", labels),
            "{what} refused series"
        );
        assert_eq!(m.value("splice_connections_refused_total", labels), 0.0);
        assert!(
            m.has("splice_connections_ktls_total", labels),
            "{what} kTLS series:\n{}",
            m.text
        );
        for dir in ["down_to_up", "up_to_down"] {
            let mut l = labels.to_vec();
            l.push(("direction", dir));
            assert_eq!(
                m.value("splice_bytes_total", &l),
                1000.0,
                "{what} payload bytes {dir}:\n{}",
                m.text
            );
        }
        assert_eq!(
            m.value("splice_connection_errors_total", labels),
            0.0,
            "{what}: errors for a clean connection:\n{}",
            m.text
        );
    }
}

/// An upstream that refuses connections: the downstream is closed, the failure is logged with
/// side=upstream and counted as an upstream error (client mode and server mode).
#[test]
fn unreachable_upstream_is_an_upstream_error() {
    let pki = Pki::new();
    // A port nobody listens on.
    let dead = localhost(free_port());
    let (sp, cp, mp) = (free_port(), free_port(), free_port());
    let server = EngineCmd::server(sp, dead, &pki.server, "auto")
        .opt("--name", "to-nowhere")
        .metrics(mp)
        .start();
    let client = EngineCmd::client(cp, dead, &pki.ca, "auto")
        .opt("--sni", "localhost")
        .start();

    // Server mode: the TLS client loses the connection (before or after its handshake).
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    let r = try_tls_connect(localhost(sp), "localhost", cfg)
        .and_then(|mut t| try_echo_roundtrip(&mut t, b"nobody home"));
    assert!(r.is_err(), "data went through to a dead backend");
    wait_metric(
        localhost(mp),
        "splice_connection_errors_total",
        &[("forwarder", "to-nowhere"), ("side", "upstream")],
        |v| v >= 1.0,
    );
    assert!(
        server.wait_log(SOON, |l| !warn_lines_with_side(l, "upstream").is_empty()),
        "server mode logged no side=upstream warning:\n{}",
        server.log()
    );

    // Client mode: the plain client is closed.
    let (data, end) = send_and_read_to_end(localhost(cp), b"nobody home");
    assert!(end.closed() && data.is_empty(), "{data:?} {end:?}");
    assert!(
        client.wait_log(SOON, |l| !warn_lines_with_side(l, "upstream").is_empty()),
        "client mode logged no side=upstream warning:\n{}",
        client.log()
    );
}

// ---------------------------------------------------------------------------------------------
// The HTTP endpoint
// ---------------------------------------------------------------------------------------------

/// One HTTP exchange on a fresh connection (TCP_NODELAY): `parts` are written with a pause of
/// `gap` between them, then the answer is read to its end (the request says `Connection:
/// close`) within `within`.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn http(addr: SocketAddr, parts: &[&[u8]], gap: Duration, within: Duration) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, within).expect("connect to /metrics");
    s.set_nodelay(true).expect("TCP_NODELAY");
    s.set_read_timeout(Some(within)).expect("read timeout");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        s.write_all(part).expect("send the request");
    }
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        panic!(
            "no complete answer from http://{addr} within {within:?} ({e}); got {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Answer {
        status,
        head,
        body: raw[end + 4..].to_vec(),
    }
}

fn request(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes()
}

/// An engine with a metrics port and nothing else of interest.
fn engine_with_metrics() -> (Proc, SocketAddr, Backend) {
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let engine = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
        .metrics(mp)
        .start();
    (engine, localhost(mp), backend)
}

/// Five clients connect to the metrics port and send nothing (one sends half a request line):
/// a scrape is still answered at once, not after their timeouts (the old endpoint served one
/// connection at a time, 5 s each). The silent ones are closed by the server in the end.
#[test]
fn idle_connections_do_not_block_a_scrape() {
    let (_engine, addr, _backend) = engine_with_metrics();
    let mut idle: Vec<TcpStream> = (0..5).map(|_| connect(addr)).collect();
    idle[4].write_all(b"GET /met").expect("half a request");
    // Let the server accept them all before the scrape.
    std::thread::sleep(Duration::from_millis(200));
    for round in 0..3 {
        let a = http(
            addr,
            &[&request("GET", "/metrics")],
            Duration::ZERO,
            Duration::from_secs(10),
        );
        assert_eq!(a.status, 200, "scrape {round}: {}", a.head);
        let m = parse_metrics(&String::from_utf8_lossy(&a.body));
        assert_eq!(m.value("splice_build_info", &[]), 1.0, "{}", m.text);
    }
    // Still open (nothing closed them yet) ...
    for s in &idle {
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 1];
        let r = (&*s).read(&mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "an idle connection was already answered or closed: {r:?}"
        );
        s.set_nonblocking(false).expect("blocking");
    }
    // ... and closed once the header read timeout passes.
    for (i, s) in idle.iter_mut().enumerate() {
        s.set_read_timeout(Some(SOON)).expect("timeout");
        let (data, end) = read_until_end(s);
        assert!(
            end.closed(),
            "idle connection {i} still open after {SOON:?}: {end:?} {data:?}"
        );
    }
}

/// A request whose line arrives in two TCP segments 100 ms apart is answered 200.
#[test]
fn request_split_across_segments() {
    let (_engine, addr, _backend) = engine_with_metrics();
    let req = request("GET", "/metrics");
    for cut in [8, 14, req.len() - 2] {
        let (a, b) = req.split_at(cut);
        let answer = http(addr, &[a, b], Duration::from_millis(100), SOON);
        assert_eq!(answer.status, 200, "cut at {cut}: {}", answer.head);
        let m = parse_metrics(&String::from_utf8_lossy(&answer.body));
        assert!(
            m.has("splice_connections_accepted_total", &[]),
            "{}",
            m.text
        );
    }
}

/// HEAD has GET's head and no body; another path is 404, another method 405 with `Allow`.
#[test]
fn head_other_paths_and_methods() {
    let (_engine, addr, _backend) = engine_with_metrics();
    let get = http(addr, &[&request("GET", "/metrics")], Duration::ZERO, SOON);
    assert_eq!(get.status, 200, "{}", get.head);
    let get_type = get.header("content-type").expect("GET content-type");
    assert!(
        get_type.starts_with("text/plain; version=0.0.4"),
        "{get_type}"
    );

    let head = http(addr, &[&request("HEAD", "/metrics")], Duration::ZERO, SOON);
    assert_eq!(head.status, 200, "{}", head.head);
    assert!(
        head.body.is_empty(),
        "HEAD answered with a body: {:?}",
        head.body
    );
    assert_eq!(head.header("content-type"), Some(get_type), "{}", head.head);
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("HEAD without content-length: {}", head.head));
    assert!(len > 0, "{}", head.head);

    for path in ["/", "/metricsx", "/other"] {
        let a = http(addr, &[&request("GET", path)], Duration::ZERO, SOON);
        assert_eq!(a.status, 404, "GET {path}: {}", a.head);
    }
    for method in ["POST", "PUT", "DELETE"] {
        let a = http(addr, &[&request(method, "/metrics")], Duration::ZERO, SOON);
        assert_eq!(a.status, 405, "{method}: {}", a.head);
        assert_eq!(a.header("allow"), Some("GET, HEAD"), "{method}: {}", a.head);
    }
    // Still serving after all that.
    scrape(addr);
}

// ---------------------------------------------------------------------------------------------
// Reloads, certificates, handshakes, build
// ---------------------------------------------------------------------------------------------

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A good SIGHUP counts a success and moves both times; a config that does not parse and a
/// certificate that is missing each count a failure and move only the attempt time.
#[test]
fn reload_counters_and_times() {
    let pki = Pki::new();
    let backend = echo_backend();
    let dir = tempfile::Builder::new()
        .prefix("splice-e2e-metrics-reload-")
        .tempdir()
        .expect("tempdir");
    let (lp, mp) = (free_port(), free_port());
    let config = dir.path().join("engine.toml");
    let good = format!(
        "threads = 1\nmetrics = {}\n\n[[forwarder]]\nname = \"web\"\nmode = \"server\"\nlisten = {}\nconnect = {}\ncert = {}\nkey = {}\n",
        q(localhost(mp)),
        q(localhost(lp)),
        q(backend.addr),
        q(pki.server.cert.display()),
        q(pki.server.key.display()),
    );
    write_file(&config, good.as_bytes());
    let t0 = unix_now();
    let engine = EngineCmd::new("run")
        .opt("--config", &config)
        .wait_port(lp)
        .wait_port(mp)
        .start();
    let m = localhost(mp);
    let attempt = "splice_reload_last_attempt_timestamp_seconds";
    let success = "splice_reload_last_success_timestamp_seconds";
    let start = scrape(m);
    assert_eq!(start.value("splice_reload_success_total", &[]), 0.0);
    assert_eq!(start.value("splice_reload_failure_total", &[]), 0.0);
    // The start counts as the first load (1 s of slack for rounding).
    assert!(start.value(success, &[]) >= t0 - 1.0, "{}", start.text);
    assert_eq!(start.value(attempt, &[]), start.value(success, &[]));

    std::thread::sleep(Duration::from_millis(20));
    let t1 = unix_now();
    engine.signal(libc::SIGHUP);
    let after_good = wait_metric(m, "splice_reload_success_total", &[], |v| v == 1.0);
    assert_eq!(after_good.value("splice_reload_failure_total", &[]), 0.0);
    let good_at = after_good.value(success, &[]);
    assert!(
        good_at >= t1 - 1.0 && good_at > start.value(success, &[]),
        "{}",
        after_good.text
    );
    assert!(
        after_good.value(attempt, &[]) <= good_at,
        "{}",
        after_good.text
    );

    std::thread::sleep(Duration::from_millis(20));
    write_file(&config, b"threads = \"not a number\n");
    engine.signal(libc::SIGHUP);
    let after_bad = wait_metric(m, "splice_reload_failure_total", &[], |v| v == 1.0);
    assert_eq!(after_bad.value("splice_reload_success_total", &[]), 1.0);
    assert_eq!(after_bad.value(success, &[]), good_at, "{}", after_bad.text);
    assert!(
        after_bad.value(attempt, &[]) > good_at,
        "{}",
        after_bad.text
    );

    // Parses, but the engine refuses it (no such certificate file).
    let missing = good.replace(&pki.server.cert.display().to_string(), "/nonexistent.crt");
    write_file(&config, missing.as_bytes());
    engine.signal(libc::SIGHUP);
    let after_missing = wait_metric(m, "splice_reload_failure_total", &[], |v| v == 2.0);
    assert_eq!(after_missing.value("splice_reload_success_total", &[]), 1.0);
    assert_eq!(after_missing.value(success, &[]), good_at);
    assert!(
        after_missing.value(attempt, &[]) >= after_bad.value(attempt, &[]),
        "{}",
        after_missing.text
    );
    // Still serving the configuration that was loaded.
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    let mut t = tls_connect(localhost(lp), "localhost", cfg);
    echo_roundtrip(&mut t, b"still here");
}

/// A self-signed certificate and key made by `openssl req`, valid for `days`, and its notAfter
/// in unix seconds as openssl and date(1) read it.
fn openssl_cert(dir: &Path, stem: &str, days: u32) -> (PathBuf, PathBuf, i64) {
    let (cert, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    let out = Command::new(OPENSSL)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            &days.to_string(),
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(OPENSSL)
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(&cert)
        .output()
        .expect("run openssl x509");
    let text = String::from_utf8_lossy(&out.stdout);
    let when = text
        .trim()
        .strip_prefix("notAfter=")
        .unwrap_or_else(|| panic!("openssl x509 -enddate said {text:?}"));
    let out = Command::new("date")
        .args(["-u", "-d", when, "+%s"])
        .output()
        .expect("run date");
    let secs = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("date -d {when:?}: {e}"));
    (cert, key, secs)
}

/// The expiry gauge is the notAfter of server mode's certificate and of client mode's client
/// certificate (no series without one), and follows a new certificate on SIGHUP.
#[test]
fn certificate_expiry_gauge() {
    let pki = Pki::new();
    let backend = echo_backend();
    let dir = pki.path();
    let (server_cert, server_key, server_until) = openssl_cert(dir, "s400", 400);
    let (client_cert, client_key, client_until) = openssl_cert(dir, "c500", 500);
    let (sp, cp, smp, cmp) = (free_port(), free_port(), free_port(), free_port());
    let server = EngineCmd::new("server")
        .opt("--listen", localhost(sp).to_string())
        .opt("--connect", backend.addr.to_string())
        .opt("--cert", &server_cert)
        .opt("--key", &server_key)
        .opt("--name", "web")
        .common("auto")
        .metrics(smp)
        .wait_port(sp)
        .start();
    let _client = EngineCmd::client(cp, localhost(sp), &pki.ca, "auto")
        .opt("--cert", &client_cert)
        .opt("--key", &client_key)
        .opt("--name", "legacy")
        .metrics(cmp)
        .start();
    let nocert_metrics = free_port();
    let _nocert = EngineCmd::client(free_port(), localhost(sp), &pki.ca, "auto")
        .opt("--name", "nocert")
        .metrics(nocert_metrics)
        .start();
    let gauge = "splice_certificate_expiry_timestamp_seconds";
    let s = scrape(localhost(smp));
    assert_eq!(
        s.value(gauge, &[("forwarder", "web"), ("mode", "server")]),
        server_until as f64,
        "{}",
        s.text
    );
    let c = scrape(localhost(cmp));
    assert_eq!(
        c.value(gauge, &[("forwarder", "legacy"), ("mode", "client")]),
        client_until as f64,
        "{}",
        c.text
    );

    let none = scrape(localhost(nocert_metrics));
    assert!(none.has(
        "splice_connections_accepted_total",
        &[("forwarder", "nocert")]
    ));
    assert!(!none.has(gauge, &[]), "{}", none.text);

    // A new certificate in the same files: SIGHUP re-reads it.
    let (new_cert, new_key, new_until) = openssl_cert(dir, "s30", 30);
    assert_ne!(new_until, server_until);
    write_file(&server_cert, &std::fs::read(&new_cert).expect("read"));
    write_file(&server_key, &std::fs::read(&new_key).expect("read"));
    server.signal(libc::SIGHUP);
    wait_metric(localhost(smp), gauge, &[("forwarder", "web")], |v| {
        v == new_until as f64
    });
}

/// `n` connections through client mode and server mode: each end's handshake histogram counts
/// exactly `n` (a failed handshake adds nothing), its buckets are cumulative and end at the
/// count, and an independent parser (python3-prometheus-client) reads the whole exposition.
fn handshake_histogram(driver: &str) {
    let pki = Pki::new();
    let backend = echo_backend();
    let chain = Chain::start(&pki, backend.addr, driver);
    let n = 5;
    for i in 0..n {
        let mut s = connect(chain.entry);
        echo_roundtrip(&mut s, format!("connection {i}").as_bytes());
    }
    // Not TLS: the server's handshake fails and is not a handshake time.
    let (_, end) = send_and_read_to_end(chain.server_addr, b"plain text, not TLS\r\n\r\n");
    assert!(end.closed(), "{end:?}");
    wait_metric(
        chain.server_metrics,
        "splice_connection_errors_total",
        &[("side", "tls")],
        |v| v >= 1.0,
    );

    let h = "splice_handshake_duration_seconds";
    for (what, addr) in [
        ("server", chain.server_metrics),
        ("client", chain.client_metrics),
    ] {
        let m = wait_metric(addr, &format!("{h}_count"), &[("mode", what)], |v| {
            v >= n as f64
        });
        let l = [("mode", what)];
        assert_eq!(
            m.value(&format!("{h}_count"), &l),
            n as f64,
            "{what} ({driver}):\n{}",
            m.text
        );
        let sum = m.value(&format!("{h}_sum"), &l);
        assert!(sum > 0.0 && sum < 60.0 * n as f64, "{what} sum {sum}");
        let bounds = [
            "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
            "5", "10", "+Inf",
        ];
        let counts: Vec<f64> = bounds
            .iter()
            .map(|le| {
                let mut bl = l.to_vec();
                bl.push(("le", le));
                assert!(
                    m.has(&format!("{h}_bucket"), &bl),
                    "{what}: no le={le}:\n{}",
                    m.text
                );
                m.value(&format!("{h}_bucket"), &bl)
            })
            .collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "{what}: not cumulative: {counts:?}"
        );
        assert_eq!(
            counts.last().copied(),
            Some(n as f64),
            "{what}: +Inf {counts:?}"
        );
        check_with_prometheus_client(&m.text);
    }
}

#[test]
fn handshake_histogram_uring() {
    handshake_histogram("uring");
}

#[test]
fn handshake_histogram_epoll() {
    handshake_histogram("epoll");
}

/// Parses `text` with python3-prometheus-client's parser (installed by .ci/run) and checks the
/// families it finds: every sample line is read, with the type we declared.
fn check_with_prometheus_client(text: &str) {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": len(f.samples)}
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (the tests need python3 and python3-prometheus-client)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition (apt-get install python3-prometheus-client \
         if it is missing): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("python3 printed JSON");
    let samples: u64 = families
        .as_object()
        .expect("an object")
        .values()
        .map(|f| f["samples"].as_u64().expect("a count"))
        .sum();
    let lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(
        samples, lines as u64,
        "samples read by prometheus_client:\n{families}\n{text}"
    );
    // prometheus_client names counter families without `_total`.
    for (family, kind) in [
        ("splice_handshake_duration_seconds", "histogram"),
        ("splice_connections_accepted", "counter"),
        ("splice_connections_active", "gauge"),
        ("splice_reload_success", "counter"),
        ("splice_reload_failure", "counter"),
        ("splice_reload_last_success_timestamp_seconds", "gauge"),
        ("splice_reload_last_attempt_timestamp_seconds", "gauge"),
        ("splice_build_info", "gauge"),
    ] {
        assert_eq!(
            families[family]["type"], kind,
            "{family} as prometheus_client read it:\n{families}"
        );
    }
}

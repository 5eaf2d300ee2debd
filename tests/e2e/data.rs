//! Bulk data through `client mode -> TLS -> server mode`, on both drivers: large payloads both
//! ways checked by SHA-256, many concurrent connections, and backpressure with a slow reader.

use std::io::Read;
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const MIB: u64 = 1024 * 1024;

/// 256 MiB up through the chain to the echo backend, echoed back and read concurrently; both
/// directions checked by SHA-256 and by the engines' byte counters.
fn large_echo(driver: &str) {
    const TOTAL: u64 = 256 * MIB;
    let pki = Pki::new();
    let backend = echo_backend();
    let chain = Chain::start(&pki, backend.addr, driver);

    let sock = connect(chain.entry);
    let mut reader = sock.try_clone().expect("clone the socket");
    let read = spawn("echo-reader", move || read_hashed(&mut reader));
    let mut writer = sock;
    let sent = write_random(&mut writer, TOTAL, 1, None).expect("write 256 MiB into the chain");
    writer
        .shutdown(Shutdown::Write)
        .expect("half-close after the payload");
    let (n, got) = read
        .join()
        .expect("reader thread")
        .unwrap_or_else(|(n, _, e)| panic!("reading the echo failed after {n} bytes: {e}"));
    assert_eq!(n, TOTAL, "echoed byte count");
    assert_eq!(got, sent, "SHA-256 of the echoed data");

    // Both engines counted the bytes in both directions.
    for (what, addr) in [
        ("client", chain.client_metrics),
        ("server", chain.server_metrics),
    ] {
        for dir in ["down_to_up", "up_to_down"] {
            // wait_metric panics with the metrics text if the counter never gets there.
            wait_metric(
                addr,
                "splice_bytes_total",
                &[("direction", dir), ("mode", what)],
                |v| v >= TOTAL as f64,
            );
        }
    }
}

#[test]
fn large_echo_uring() {
    large_echo("uring");
}

#[test]
fn large_echo_epoll() {
    large_echo("epoll");
}

/// 256 MiB one way to a sink that hashes what it got and reports it back over the same
/// connection after the half-close.
fn large_one_way(driver: &str) {
    const TOTAL: u64 = 256 * MIB;
    let pki = Pki::new();
    let (sink, reports) = sink_backend(None);
    let chain = Chain::start(&pki, sink.addr, driver);

    let mut sock = connect(chain.entry);
    let sent = write_random(&mut sock, TOTAL, 2, None).expect("write 256 MiB into the chain");
    sock.shutdown(Shutdown::Write).expect("half-close");
    let mut answer = String::new();
    sock.read_to_string(&mut answer)
        .expect("read the sink's report back through the chain");
    assert_eq!(
        answer.trim(),
        format!("{TOTAL} {sent}"),
        "the sink's byte count and SHA-256, as sent back through the chain"
    );
    let report = reports
        .recv_timeout(SOON)
        .expect("the sink reports on its channel");
    assert!(report.error.is_none(), "sink read error: {report:?}");
    assert_eq!((report.bytes, report.sha256), (TOTAL, sent));
}

#[test]
fn large_one_way_uring() {
    large_one_way("uring");
}

#[test]
fn large_one_way_epoll() {
    large_one_way("epoll");
}

/// 300 concurrent connections, each sending 256 KiB of its own data and reading the echo
/// concurrently; all verified. Bounded: a fixed count, socket timeouts, and an overall deadline.
fn many_connections(driver: &str) {
    const CONNS: usize = 300;
    const EACH: u64 = 256 * 1024;
    const WORKERS: usize = 30;
    let pki = Pki::new();
    let backend = echo_backend();
    let chain = Chain::start(&pki, backend.addr, driver);
    let entry = chain.entry;
    let deadline = Instant::now() + Duration::from_secs(150);

    // Open them all first so they really are concurrent, then drive them from a few workers.
    let socks: Vec<_> = (0..CONNS).map(|_| connect(entry)).collect();
    let mut groups: Vec<Vec<(usize, std::net::TcpStream)>> =
        (0..WORKERS).map(|_| Vec::new()).collect();
    for (i, s) in socks.into_iter().enumerate() {
        groups[i % WORKERS].push((i, s));
    }
    let failures = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let failures = failures.clone();
            spawn("conn-worker", move || {
                let mut errors = Vec::new();
                for (i, sock) in group {
                    if Instant::now() > deadline {
                        errors.push(format!("conn {i}: overall deadline passed"));
                        failures.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let mut reader = sock.try_clone().expect("clone");
                    let r = thread::spawn(move || read_hashed(&mut reader));
                    let mut w = sock;
                    let sent = write_random(&mut w, EACH, 1000 + i as u64, None);
                    let _ = w.shutdown(Shutdown::Write);
                    let got = r.join().expect("reader");
                    match (sent, got) {
                        (Ok(sent), Ok((n, got))) if n == EACH && got == sent => {}
                        (sent, got) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            errors.push(format!("conn {i}: sent {sent:?}, got {got:?}"));
                        }
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors = Vec::new();
    for h in handles {
        errors.extend(h.join().expect("worker thread"));
    }
    assert!(
        errors.is_empty(),
        "{} of {CONNS} connections failed; first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert!(
        backend.accepted() >= CONNS,
        "the backend saw {} connections, want at least {CONNS}",
        backend.accepted()
    );
    let m = wait_metric(
        chain.server_metrics,
        "splice_connections_accepted_total",
        &[("mode", "server")],
        |v| v >= CONNS as f64,
    );
    assert!(m.value("splice_connections_accepted_total", &[]) >= CONNS as f64);
    // Everything closed: nothing stays active in either engine.
    wait_metric(
        chain.client_metrics,
        "splice_connections_active",
        &[],
        |v| v == 0.0,
    );
    wait_metric(
        chain.server_metrics,
        "splice_connections_active",
        &[],
        |v| v == 0.0,
    );
}

#[test]
fn many_connections_uring() {
    many_connections("uring");
}

#[test]
fn many_connections_epoll() {
    many_connections("epoll");
}

/// Pushes 200 MiB while the backend does not read for a few seconds; the engines' RSS must stay
/// bounded (the writer must block), then everything arrives intact.
fn slow_reader(driver: &str) {
    const TOTAL: u64 = 200 * MIB;
    const BOUND_KIB: u64 = 64 * 1024;
    let pki = Pki::new();
    let gate = Arc::new(AtomicBool::new(false));
    let (sink, reports) = sink_backend(Some(gate.clone()));
    let chain = Chain::start(&pki, sink.addr, driver);

    let base_client = chain.client.rss_kib();
    let base_server = chain.server.rss_kib();

    let sock = connect(chain.entry);
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let mut w = sock.try_clone().expect("clone");
    let writer = spawn("slow-writer", move || {
        let r = write_random(&mut w, TOTAL, 3, Some(&p));
        let _ = w.shutdown(Shutdown::Write);
        r
    });

    // Sample both engines' RSS for ~4 s while nobody reads.
    let mut max_client = base_client;
    let mut max_server = base_server;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        max_client = max_client.max(chain.client.rss_kib());
        max_server = max_server.max(chain.server.rss_kib());
        thread::sleep(Duration::from_millis(50));
    }
    let written_while_stalled = progress.load(Ordering::SeqCst);
    gate.store(true, Ordering::SeqCst);

    let sent = writer
        .join()
        .expect("writer thread")
        .expect("write 200 MiB into the chain");
    let mut sock = sock;
    let mut answer = String::new();
    sock.read_to_string(&mut answer)
        .expect("read the sink's report back");
    assert_eq!(
        answer.trim(),
        format!("{TOTAL} {sent}"),
        "sink byte count and hash"
    );
    let report = reports.recv_timeout(SOON).expect("sink report");
    assert!(report.error.is_none(), "sink read error: {report:?}");

    eprintln!(
        "slow reader ({driver}): {written_while_stalled} bytes accepted while stalled; RSS KiB \
         client {base_client} -> {max_client}, server {base_server} -> {max_server}"
    );
    assert!(
        written_while_stalled < TOTAL,
        "all {TOTAL} bytes were accepted while the backend did not read: no backpressure"
    );
    assert!(
        max_client < base_client + BOUND_KIB,
        "client-mode RSS grew from {base_client} KiB to {max_client} KiB while the reader stalled \
         ({written_while_stalled} bytes written)"
    );
    assert!(
        max_server < base_server + BOUND_KIB,
        "server-mode RSS grew from {base_server} KiB to {max_server} KiB while the reader stalled \
         ({written_while_stalled} bytes written)"
    );
}

#[test]
fn slow_reader_uring() {
    slow_reader("uring");
}

#[test]
fn slow_reader_epoll() {
    slow_reader("epoll");
}

/// With busy polling off (it is on by default, so every other test polls), both ends still
/// deliver every byte, both ways, and many small round trips come back intact: every hop is a
/// sleep and a wake-up.
fn busy_poll_off(driver: &str) {
    let pki = Pki::new();
    let backend = echo_backend();
    let chain = Chain::start_with(&pki, backend.addr, driver, &[("--busy-poll", "0")]);

    let mut sock = connect(chain.entry);
    for i in 0..2000u32 {
        let msg = [i.to_le_bytes(), (!i).to_le_bytes()].concat();
        std::io::Write::write_all(&mut sock, &msg).expect("write a request");
        let mut back = [0u8; 8];
        sock.read_exact(&mut back).expect("read the echo");
        assert_eq!(back[..], msg[..], "round trip {i}");
    }
    let mut reader = sock.try_clone().expect("clone the socket");
    let read = spawn("echo-reader", move || read_hashed(&mut reader));
    let sent = write_random(&mut sock, 32 * MIB, 7, None).expect("write 32 MiB");
    sock.shutdown(Shutdown::Write).expect("half-close");
    let (n, got) = read
        .join()
        .expect("reader thread")
        .unwrap_or_else(|(n, _, e)| panic!("reading the echo failed after {n} bytes: {e}"));
    assert_eq!((n, got), (32 * MIB, sent));
}

#[test]
fn busy_poll_off_uring() {
    busy_poll_off("uring");
}

#[test]
fn busy_poll_off_epoll() {
    busy_poll_off("epoll");
}

/// Client mode's default SNI is the connect host: with `--connect 127.0.0.1:PORT` and no
/// `--sni`, the upstream certificate is verified against its IP address SAN.
#[test]
fn default_sni_is_connect_host() {
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, cp) = (free_port(), free_port());
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, "auto").start();
    let _client = EngineCmd::client(cp, localhost(sp), &pki.ca, "auto").start();
    let mut s = connect(localhost(cp));
    echo_roundtrip(&mut s, b"hello through the IP-verified chain");
}

/// IPv6 loopback: server mode listens on [::1], client mode connects to it by address.
#[test]
fn ipv6_loopback() {
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, cp) = (free_port(), free_port());
    let _server = EngineCmd::new("server")
        .opt("--listen", format!("[::1]:{sp}"))
        .opt("--connect", backend.addr.to_string())
        .opt("--cert", &pki.server.cert)
        .opt("--key", &pki.server.key)
        .common("auto")
        .wait_port(sp)
        .start();
    let _client = EngineCmd::new("client")
        .opt("--listen", localhost(cp).to_string())
        .opt("--connect", format!("[::1]:{sp}"))
        .opt("--ca", &pki.ca.path)
        .opt("--sni", "localhost")
        .common("auto")
        .wait_port(cp)
        .start();
    let mut s = connect(localhost(cp));
    echo_roundtrip(&mut s, b"over IPv6 loopback");
    echo_roundtrip(&mut s, &random_bytes(1024 * 1024, 140));
}

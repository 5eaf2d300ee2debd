//! Limits and timeouts: `--max-connections` refuses (and counts) the connection over the limit;
//! `--handshake-timeout` closes connections whose handshake does not finish.

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::*;

fn max_connections_refuses_and_counts(driver: &str) {
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, driver)
        .opt("--max-connections", "2")
        // Long, so that a connection that is not refused would hang past our read timeout.
        .opt("--handshake-timeout", "120s")
        .opt("--name", "limited")
        .metrics(mp)
        .start();
    let metrics = localhost(mp);
    let labels = [("forwarder", "limited"), ("mode", "server")];
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);

    let mut a = tls_connect(localhost(sp), "localhost", cfg.clone());
    echo_roundtrip(&mut a, b"first");
    let mut b = tls_connect(localhost(sp), "localhost", cfg.clone());
    echo_roundtrip(&mut b, b"second");
    wait_metric(metrics, "splice_connections_active", &labels, |v| v == 2.0);
    assert_eq!(
        scrape(metrics).value("splice_connections_refused_total", &labels),
        0.0,
        "nothing refused yet"
    );

    // The third is closed at once: a plain read sees EOF or a reset well before any timeout.
    // (A reset can arrive before connect() even returns: that counts as closed too.)
    let (data, end) = send_and_read_to_end(localhost(sp), b"");
    assert!(end.closed(), "the third connection was not closed: {end:?}");
    assert!(data.is_empty(), "the refused connection got data: {data:?}");
    wait_metric(metrics, "splice_connections_refused_total", &labels, |v| {
        v == 1.0
    });

    // A TLS client over the limit fails its handshake too.
    assert!(
        try_tls_connect(localhost(sp), "localhost", cfg.clone())
            .and_then(|mut t| try_echo_roundtrip(&mut t, b"over the limit"))
            .is_err(),
        "a TLS connection over the limit worked"
    );
    wait_metric(metrics, "splice_connections_refused_total", &labels, |v| {
        v == 2.0
    });

    // The two admitted connections are unaffected.
    echo_roundtrip(&mut a, b"first again");
    echo_roundtrip(&mut b, b"second again");

    // Closing one frees a slot.
    tls_close(&mut a);
    drop(a);
    wait_metric(metrics, "splice_connections_active", &labels, |v| v == 1.0);
    let mut d = tls_connect(localhost(sp), "localhost", cfg);
    echo_roundtrip(&mut d, b"a freed slot");
    let m = scrape(metrics);
    assert_eq!(m.value("splice_connections_refused_total", &labels), 2.0);
    assert!(
        m.value("splice_connections_accepted_total", &labels) >= 3.0,
        "accepted must count the three admitted connections:\n{}",
        m.text
    );
}

#[test]
fn max_connections_refuses_and_counts_uring() {
    max_connections_refuses_and_counts("uring");
}

#[test]
fn max_connections_refuses_and_counts_epoll() {
    max_connections_refuses_and_counts("epoll");
}

/// `--handshake-timeout 2s`: a client that connects and sends nothing, and one that sends
/// half a ClientHello, are both closed well before the default (10 s) would close them, while
/// a real client still gets through (2 s leaves room for a busy test machine).
fn handshake_timeout_closes_silent_clients(driver: &str) {
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, driver)
        .opt("--handshake-timeout", "2s")
        .metrics(mp)
        .start();
    // 8 s: 4 times the configured timeout, yet shorter than the 10 s default, so the test
    // fails if the flag is ignored.
    let bound = Duration::from_secs(8);

    let mut silent = connect(localhost(sp));
    silent.set_read_timeout(Some(bound)).expect("timeout");
    let (data, end) = read_until_end(&mut silent);
    assert!(
        end.closed(),
        "a silent client was not closed within {bound:?}: {end:?}"
    );
    assert!(data.len() < 64, "unexpected data to a silent client");

    let mut partial = connect(localhost(sp));
    partial.set_read_timeout(Some(bound)).expect("timeout");
    // A handshake record header announcing 512 bytes, followed by only 4.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .expect("write a partial ClientHello");
    let (_, end) = read_until_end(&mut partial);
    assert!(
        end.closed(),
        "a client with half a ClientHello was not closed within {bound:?}: {end:?}"
    );

    // A real client is still served.
    let mut tls = tls_connect(
        localhost(sp),
        "localhost",
        client_config(&[&pki.ca], None, TLS_ANY),
    );
    echo_roundtrip(&mut tls, b"a prompt client");
    wait_metric(localhost(mp), "splice_connections_active", &[], |v| {
        v == 1.0
    });
}

#[test]
fn handshake_timeout_closes_silent_clients_uring() {
    handshake_timeout_closes_silent_clients("uring");
}

#[test]
fn handshake_timeout_closes_silent_clients_epoll() {
    handshake_timeout_closes_silent_clients("epoll");
}

/// Client mode: an upstream that accepts TCP but never answers the ClientHello. With
/// `--handshake-timeout 500ms` the plain client is closed well before the default timeout.
#[test]
fn handshake_timeout_on_silent_upstream() {
    let pki = Pki::new();
    let silent = Backend::spawn(|mut s| {
        // Read whatever comes (the ClientHello) and never answer.
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let cp = free_port();
    let client = EngineCmd::client(cp, silent.addr, &pki.ca, "auto")
        .opt("--sni", "localhost")
        .opt("--handshake-timeout", "500ms")
        .start();
    let mut s = connect(localhost(cp));
    s.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let _ = s.write_all(b"waiting for a handshake that never finishes");
    let (data, end) = read_until_end(&mut s);
    assert!(end.closed(), "the client was not closed: {end:?}");
    assert!(data.is_empty(), "data without a handshake: {data:?}");
    assert!(
        client.wait_log(SOON, |l| l.contains("WARN") || l.contains("\"warn\"")),
        "no warning logged for the handshake timeout:\n{}",
        client.log()
    );
}

/// A listener whose accept queue is full: further SYNs are dropped, so connecting to it hangs.
/// Returns the listener (keep it alive) and the connection that fills the queue.
fn blackhole() -> (std::net::TcpListener, std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: listen(2) on a socket fd owned by `l`, which outlives the call.
    let rc = unsafe { libc::listen(l.as_raw_fd(), 0) };
    assert_eq!(rc, 0, "listen(fd, 0): {}", std::io::Error::last_os_error());
    let filler = connect(l.local_addr().expect("addr"));
    // Make sure the queue really is full: one more connect must not complete.
    let probe = std::net::TcpStream::connect_timeout(
        &l.local_addr().expect("addr"),
        Duration::from_millis(500),
    );
    assert!(
        probe.is_err(),
        "test setup: a listener with backlog 0 and one queued connection still completed a connect"
    );
    (l, filler)
}

/// Client mode with `--connect-timeout 300ms` towards an upstream that never completes the TCP
/// handshake: the plain client is closed well before the 5 s default would, and the failure
/// is an upstream one.
#[test]
fn connect_timeout_closes_and_counts_upstream_error() {
    let pki = Pki::new();
    let (hole, _filler) = blackhole();
    let (cp, mp) = (free_port(), free_port());
    let client = EngineCmd::client(cp, hole.local_addr().expect("addr"), &pki.ca, "auto")
        .opt("--sni", "localhost")
        .opt("--connect-timeout", "300ms")
        .opt("--name", "blackholed")
        .metrics(mp)
        .start();
    let mut s = connect(localhost(cp));
    // 4 s: more than ten times the configured timeout, less than the 5 s default.
    s.set_read_timeout(Some(Duration::from_secs(4)))
        .expect("timeout");
    let _ = s.write_all(b"anyone there?");
    let (data, end) = read_until_end(&mut s);
    assert!(
        end.closed(),
        "the client was not closed although the upstream connect timed out: {end:?}"
    );
    assert!(data.is_empty(), "{data:?}");
    wait_metric(
        localhost(mp),
        "splice_connection_errors_total",
        &[("forwarder", "blackholed"), ("side", "upstream")],
        |v| v >= 1.0,
    );
    assert!(
        client.wait_log(SOON, |l| !warn_lines_with_side(l, "upstream").is_empty()),
        "no side=upstream warning for the connect timeout:\n{}",
        client.log()
    );
}

//! Mutual TLS: server mode with `--client-ca` accepts clients with a certificate from that CA
//! (client mode with `--cert/--key`, `openssl s_client -cert/-key`, rustls) and refuses clients
//! without one or with one from another CA, counting them as TLS errors.

use std::net::SocketAddr;

use crate::support::*;

struct MtlsServer {
    pki: Pki,
    backend: Backend,
    server: Proc,
    addr: SocketAddr,
    metrics: SocketAddr,
}

fn mtls_server() -> MtlsServer {
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let server = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
        .opt("--client-ca", &pki.ca.path)
        .opt("--name", "mtls")
        .metrics(mp)
        .start();
    MtlsServer {
        pki,
        backend,
        server,
        addr: localhost(sp),
        metrics: localhost(mp),
    }
}

fn tls_errors(m: SocketAddr) -> f64 {
    scrape(m).value(
        "splice_connection_errors_total",
        &[("forwarder", "mtls"), ("side", "tls")],
    )
}

/// A rustls client that presents `cert` (or none) must be refused: either the handshake fails
/// or the first read fails; never an echo.
fn assert_refused(addr: SocketAddr, cfg: std::sync::Arc<rustls::ClientConfig>, what: &str) {
    match try_tls_connect(addr, "localhost", cfg) {
        Err(_) => {}
        Ok(mut tls) => {
            let r = try_echo_roundtrip(&mut tls, b"should not be echoed");
            assert!(r.is_err(), "{what}: the server echoed data, want a refusal");
            let e = r.expect_err("checked above");
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{what}: the connection hung instead of being closed: {e}"
            );
        }
    }
}

#[test]
fn client_mode_with_cert_is_accepted() {
    let m = mtls_server();
    let cp = free_port();
    let _client = EngineCmd::client(cp, m.addr, &m.pki.ca, "auto")
        .opt("--sni", "localhost")
        .opt("--cert", &m.pki.client.cert)
        .opt("--key", &m.pki.client.key)
        .start();
    let mut s = connect(localhost(cp));
    echo_roundtrip(&mut s, b"mutually authenticated hello");
    echo_roundtrip(&mut s, &random_bytes(512 * 1024, 60));
    assert!(m.backend.accepted() >= 1);
    assert_eq!(
        tls_errors(m.metrics),
        0.0,
        "no TLS errors for a good client"
    );
}

#[test]
fn rustls_client_with_cert_is_accepted_on_both_versions() {
    let m = mtls_server();
    for versions in [TLS12, TLS13] {
        let cfg = client_config(&[&m.pki.ca], Some(&m.pki.client), versions);
        let mut tls = tls_connect(m.addr, "localhost", cfg);
        echo_roundtrip(&mut tls, b"hello with a client certificate");
        tls_close(&mut tls);
    }
}

#[test]
fn openssl_client_with_cert_is_accepted() {
    let m = mtls_server();
    let cert = m.pki.client.cert.to_string_lossy();
    let key = m.pki.client.key.to_string_lossy();
    let mut cli = OpensslChild::s_client(
        m.addr,
        &m.pki.ca.path,
        &[
            "-verify_return_error",
            "-cert",
            &cert,
            "-key",
            &key,
            "-nocommands",
        ],
    );
    cli.send(b"0hello from s_client with a certificate\n");
    assert!(
        cli.wait_stdout(b"0hello from s_client with a certificate\n"),
        "no echo for s_client with a good client certificate; stderr:\n{}",
        cli.stderr()
    );
}

#[test]
fn client_without_cert_is_refused() {
    let m = mtls_server();
    let before = tls_errors(m.metrics);
    for versions in [TLS13, TLS12] {
        let cfg = client_config(&[&m.pki.ca], None, versions);
        assert_refused(m.addr, cfg, "rustls client without a certificate");
    }
    wait_metric(
        m.metrics,
        "splice_connection_errors_total",
        &[("forwarder", "mtls"), ("side", "tls")],
        |v| v >= before + 2.0,
    );
    assert!(
        m.server
            .wait_log(SOON, |l| !warn_lines_with_side(l, "tls").is_empty()),
        "no warn line with side=tls for the refused client:\n{}",
        m.server.log()
    );
}

#[test]
fn client_with_cert_from_other_ca_is_refused() {
    let m = mtls_server();
    let before = tls_errors(m.metrics);
    for versions in [TLS13, TLS12] {
        let cfg = client_config(&[&m.pki.ca], Some(&m.pki.other_client), versions);
        assert_refused(m.addr, cfg, "rustls client with another CA's certificate");
    }
    wait_metric(
        m.metrics,
        "splice_connection_errors_total",
        &[("forwarder", "mtls"), ("side", "tls")],
        |v| v >= before + 2.0,
    );
}

#[test]
fn openssl_client_without_cert_is_refused() {
    let m = mtls_server();
    let mut cli = OpensslChild::s_client(m.addr, &m.pki.ca.path, &["-nocommands"]);
    cli.send(b"0must not be echoed\n");
    assert!(
        cli.wait_exit(SOON).is_some(),
        "s_client without a certificate was not disconnected; stderr:\n{}",
        cli.stderr()
    );
    assert!(
        !cli.stdout()
            .windows(b"must not be echoed".len())
            .any(|w| w == b"must not be echoed"),
        "data was echoed to a client without a certificate"
    );
    wait_metric(
        m.metrics,
        "splice_connection_errors_total",
        &[("forwarder", "mtls"), ("side", "tls")],
        |v| v >= 1.0,
    );
}

/// Client mode without `--cert` in front of an mTLS server: the plain client is closed.
#[test]
fn client_mode_without_cert_is_closed() {
    let m = mtls_server();
    let cp = free_port();
    let _client = EngineCmd::client(cp, m.addr, &m.pki.ca, "auto")
        .opt("--sni", "localhost")
        .start();
    let (data, end) = send_and_read_to_end(localhost(cp), b"must not be echoed");
    assert!(end.closed(), "the plain client was not closed: {end:?}");
    assert!(
        data.is_empty(),
        "echo without a client certificate: {data:?}"
    );
    wait_metric(
        m.metrics,
        "splice_connection_errors_total",
        &[("forwarder", "mtls"), ("side", "tls")],
        |v| v >= 1.0,
    );
}

//! TLS parameters: RSA, ECDSA and Ed25519 certificates (server and client side) on TLS 1.2 and
//! 1.3; `--tls-version` restricting what is negotiated; `--alpn` on both modes.

use std::io::Read;
use std::sync::{Arc, Mutex, mpsc};

use rustls::ServerConnection;

use crate::support::*;

/// Server mode requiring client certificates, and client mode presenting one, all keys of type
/// `kt`; each TLS version in turn through the chain, plus a rustls client on each version.
fn key_type(kt: KeyType) {
    let pki = Pki::with(kt);
    let backend = echo_backend();
    let sp = free_port();
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
        .opt("--client-ca", &pki.ca.path)
        .start();
    for (version, rustls_versions, expect) in [
        ("1.2", TLS12, rustls::ProtocolVersion::TLSv1_2),
        ("1.3", TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let cp = free_port();
        let _client = EngineCmd::client(cp, localhost(sp), &pki.ca, "auto")
            .opt("--sni", "localhost")
            .opt("--cert", &pki.client.cert)
            .opt("--key", &pki.client.key)
            .opt("--tls-version", version)
            .label(format!("client mode {kt:?} TLS {version}"))
            .start();
        let mut s = connect(localhost(cp));
        echo_roundtrip(&mut s, format!("{kt:?} over TLS {version}").as_bytes());
        echo_roundtrip(&mut s, &random_bytes(300 * 1024, 120));

        let cfg = client_config(&[&pki.ca], Some(&pki.client), rustls_versions);
        let mut tls = tls_connect(localhost(sp), "localhost", cfg);
        assert_eq!(
            tls.conn.protocol_version(),
            Some(expect),
            "negotiated version with a {kt:?} certificate"
        );
        echo_roundtrip(&mut tls, b"direct rustls client");
        tls_close(&mut tls);
    }
}

#[test]
fn rsa_certificates() {
    key_type(KeyType::Rsa);
}

#[test]
fn ecdsa_certificates() {
    key_type(KeyType::P256);
}

#[test]
fn ed25519_certificates() {
    key_type(KeyType::Ed25519);
}

/// Server mode with `--tls-version 1.2` negotiates 1.2 and refuses a 1.3-only client; with
/// `--tls-version 1.3` the reverse.
#[test]
fn server_tls_version_restriction() {
    let pki = Pki::new();
    let backend = echo_backend();
    for (flag, allowed, refused, expect) in [
        ("1.2", TLS12, TLS13, rustls::ProtocolVersion::TLSv1_2),
        ("1.3", TLS13, TLS12, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let sp = free_port();
        let _server = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
            .opt("--tls-version", flag)
            .start();
        let mut tls = tls_connect(
            localhost(sp),
            "localhost",
            client_config(&[&pki.ca], None, TLS_ANY),
        );
        assert_eq!(
            tls.conn.protocol_version(),
            Some(expect),
            "--tls-version {flag}"
        );
        echo_roundtrip(&mut tls, b"allowed version");
        let ok = try_tls_connect(
            localhost(sp),
            "localhost",
            client_config(&[&pki.ca], None, allowed),
        )
        .and_then(|mut t| try_echo_roundtrip(&mut t, b"allowed"));
        assert!(
            ok.is_ok(),
            "--tls-version {flag}: allowed client failed: {ok:?}"
        );
        let bad = try_tls_connect(
            localhost(sp),
            "localhost",
            client_config(&[&pki.ca], None, refused),
        )
        .and_then(|mut t| try_echo_roundtrip(&mut t, b"refused"));
        assert!(
            bad.is_err(),
            "--tls-version {flag}: a client without that version got through"
        );
    }
}

fn with_alpn(cfg: Arc<rustls::ClientConfig>, protos: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut c = (*cfg).clone();
    c.alpn_protocols = protos.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(c)
}

/// Server mode `--alpn h2 --alpn http/1.1`: a client offering http/1.1 gets it; a client
/// offering only an unknown protocol is refused.
#[test]
fn server_mode_alpn() {
    let pki = Pki::new();
    let backend = echo_backend();
    let sp = free_port();
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
        .opt("--alpn", "h2")
        .opt("--alpn", "http/1.1")
        .start();
    let base = client_config(&[&pki.ca], None, TLS_ANY);
    let mut tls = tls_connect(
        localhost(sp),
        "localhost",
        with_alpn(base.clone(), &["http/1.1"]),
    );
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    echo_roundtrip(&mut tls, b"alpn http/1.1");
    let tls = tls_connect(
        localhost(sp),
        "localhost",
        with_alpn(base.clone(), &["h2", "http/1.1"]),
    );
    assert_eq!(
        tls.conn.alpn_protocol(),
        Some(&b"h2"[..]),
        "server preference or client order"
    );
    let bad = try_tls_connect(localhost(sp), "localhost", with_alpn(base, &["x-unknown"]))
        .and_then(|mut t| try_echo_roundtrip(&mut t, b"no common protocol"));
    assert!(
        bad.is_err(),
        "a client with no common ALPN protocol got through"
    );
}

/// Client mode `--alpn x-test`: the upstream sees that protocol offered and negotiated.
#[test]
fn client_mode_alpn() {
    let pki = Pki::new();
    let mut scfg = (*server_config(&pki.server, None, TLS_ANY)).clone();
    scfg.alpn_protocols = vec![b"x-test".to_vec()];
    let scfg = Arc::new(scfg);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let upstream = Backend::spawn(move |sock| {
        let Ok(conn) = ServerConnection::new(scfg.clone()) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut hello = [0u8; 5];
        let read = tls.read_exact(&mut hello);
        let proto = tls.conn.alpn_protocol().map(|p| p.to_vec());
        let _ = tx.lock().expect("chan").send((read.is_ok(), proto));
        if read.is_ok() {
            let _ = std::io::Write::write_all(&mut tls, &hello);
            let _ = std::io::Write::flush(&mut tls);
        }
    });
    let cp = free_port();
    let _client = EngineCmd::client(cp, upstream.addr, &pki.ca, "auto")
        .opt("--sni", "localhost")
        .opt("--alpn", "x-test")
        .start();
    let mut s = connect(localhost(cp));
    echo_roundtrip(&mut s, b"hello");
    let (ok, proto) = rx.recv_timeout(SOON).expect("upstream report");
    assert!(ok, "the upstream did not get the data");
    assert_eq!(
        proto.as_deref(),
        Some(&b"x-test"[..]),
        "ALPN negotiated with the upstream"
    );
}

/// Client mode without `--sni` sends the connect host as SNI and verifies the certificate for
/// it: `--connect localhost:PORT` against a certificate valid only for the name "localhost".
/// With `--sni`, that name is sent instead.
#[test]
fn client_mode_sni_defaults_to_connect_host() {
    let pki = Pki::new();
    let dns_only = pki.ca.issue(
        pki.path(),
        "dns-only",
        &["localhost", "alt.test"],
        KeyType::P256,
        Usage::Server,
    );
    let scfg = server_config(&dns_only, None, TLS_ANY);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let upstream = Backend::spawn(move |sock| {
        let Ok(conn) = ServerConnection::new(scfg.clone()) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut hello = [0u8; 5];
        if tls.read_exact(&mut hello).is_ok() {
            let _ = tx
                .lock()
                .expect("chan")
                .send(tls.conn.server_name().map(str::to_string));
            let _ = std::io::Write::write_all(&mut tls, &hello);
            let _ = std::io::Write::flush(&mut tls);
        }
    });
    let port = upstream.addr.port();

    let cp = free_port();
    let _client = EngineCmd::new("client")
        .opt("--listen", localhost(cp).to_string())
        .opt("--connect", format!("localhost:{port}"))
        .opt("--ca", &pki.ca.path)
        .common("auto")
        .wait_port(cp)
        .start();
    let mut s = connect(localhost(cp));
    echo_roundtrip(&mut s, b"hello");
    let sni = rx.recv_timeout(SOON).expect("upstream report");
    assert_eq!(sni.as_deref(), Some("localhost"), "SNI sent by default");

    let cp2 = free_port();
    let _client2 = EngineCmd::client(cp2, upstream.addr, &pki.ca, "auto")
        .opt("--sni", "alt.test")
        .start();
    let mut s = connect(localhost(cp2));
    echo_roundtrip(&mut s, b"hello");
    let sni = rx.recv_timeout(SOON).expect("upstream report");
    assert_eq!(sni.as_deref(), Some("alt.test"), "SNI sent with --sni");
}

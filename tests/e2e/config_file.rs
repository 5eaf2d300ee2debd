//! `run --config` with every documented key: a client-mode forwarder and a server-mode forwarder
//! chained inside one process, mutual TLS, ALPN and TLS version restrictions applied from the
//! file, relative paths resolved against the file's directory.

use std::fs;

use crate::support::*;

#[test]
fn every_key_in_one_file() {
    let pki = Pki::new();
    let backend = echo_backend();
    let dir = tempfile::Builder::new()
        .prefix("splice-e2e-config-")
        .tempdir()
        .expect("tempdir");
    // Relative names, next to the config file.
    for (from, to) in [
        (&pki.ca.path, "ca.pem"),
        (&pki.server.cert, "server.pem"),
        (&pki.server.key, "server-key.pem"),
        (&pki.client.cert, "client.pem"),
        (&pki.client.key, "client-key.pem"),
    ] {
        fs::copy(from, dir.path().join(to)).expect("copy a PEM file");
    }
    let (cp, sp, mp) = (free_port(), free_port(), free_port());
    let text = format!(
        r#"
threads = 2
driver = "epoll"
ktls = "off"
log_level = "info"
metrics = {metrics}
drain_timeout = "5s"

[[forwarder]]
name = "legacy-app"
mode = "client"
listen = {cl}
connect = {sv}
ca = "ca.pem"
sni = "localhost"
cert = "client.pem"
key = "client-key.pem"
alpn = ["x-splice"]
tls_versions = ["1.3"]
max_connections = 50
connect_timeout = "2s"
handshake_timeout = "3s"

[[forwarder]]
name = "public"
mode = "server"
listen = {sv}
connect = {backend}
cert = "server.pem"
key = "server-key.pem"
client_ca = "ca.pem"
alpn = ["x-splice"]
tls_versions = ["1.3"]
max_connections = 50
connect_timeout = "2s"
handshake_timeout = "3s"
"#,
        metrics = q(localhost(mp)),
        cl = q(localhost(cp)),
        sv = q(localhost(sp)),
        backend = q(backend.addr),
    );
    let config = dir.path().join("splice.toml");
    write_file(&config, text.as_bytes());
    let _engine = EngineCmd::new("run")
        .opt("--config", &config)
        .cwd("/")
        .wait_port(cp)
        .wait_port(sp)
        .wait_port(mp)
        .label("run (every key)")
        .start();

    let mut s = connect(localhost(cp));
    echo_roundtrip(&mut s, b"through both forwarders of one process");
    echo_roundtrip(&mut s, &random_bytes(2 * 1024 * 1024, 150));

    // The server forwarder enforces what the file says.
    let with_alpn = |versions, cert: Option<&Leaf>| {
        let mut c = (*client_config(&[&pki.ca], cert, versions)).clone();
        c.alpn_protocols = vec![b"x-splice".to_vec()];
        std::sync::Arc::new(c)
    };
    let mut ok = tls_connect(
        localhost(sp),
        "localhost",
        with_alpn(TLS13, Some(&pki.client)),
    );
    assert_eq!(ok.conn.alpn_protocol(), Some(&b"x-splice"[..]));
    echo_roundtrip(&mut ok, b"direct, with a client certificate");
    for (what, cfg) in [
        ("TLS 1.2 only", with_alpn(TLS12, Some(&pki.client))),
        ("no client certificate", with_alpn(TLS13, None)),
    ] {
        let r = try_tls_connect(localhost(sp), "localhost", cfg)
            .and_then(|mut t| try_echo_roundtrip(&mut t, b"refused"));
        assert!(r.is_err(), "{what}: accepted although the file forbids it");
    }

    let m = scrape(localhost(mp));
    for (name, mode) in [("legacy-app", "client"), ("public", "server")] {
        assert!(
            m.value(
                "splice_connections_accepted_total",
                &[("forwarder", name), ("mode", mode)]
            ) >= 1.0,
            "{name} accepted nothing:\n{}",
            m.text
        );
    }
}

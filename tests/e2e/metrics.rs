//! The Prometheus endpoint: every documented series, its labels, exact byte counts, the default
//! forwarder name, and failures counted against the right side.

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

//! Upstream verification in client mode: an upstream certificate from an unknown CA and a wrong
//! `--sni` both close the downstream connection, log side=tls, count a TLS error, and do not
//! disturb a good forwarder in the same process.

use std::net::SocketAddr;

use crate::support::*;

/// Connects through a forwarder that must refuse: the connection is closed without data.
fn assert_closed_without_data(entry: SocketAddr, what: &str) {
    let (data, end) = send_and_read_to_end(entry, b"must not reach anyone");
    assert!(
        end.closed(),
        "{what}: the downstream was not closed ({end:?})"
    );
    assert!(data.is_empty(), "{what}: got data back: {data:?}");
}

fn warn_tls_lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    warn_lines_with_side(log, "tls")
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

#[test]
fn bad_upstreams_fail_and_good_forwarder_keeps_working() {
    let pki = Pki::new();
    let untrusted = tls_echo_server(server_config(&pki.other_server, None, TLS_ANY));
    let trusted = tls_echo_server(server_config(&pki.server, None, TLS_ANY));
    let (bad_ca, wrong_sni, good, metrics) = (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        r#"
threads = 2
log_level = "info"
metrics = {metrics}

[[forwarder]]
name = "bad-ca"
mode = "client"
listen = {bad_ca}
connect = {untrusted}
ca = {ca}
sni = "localhost"

[[forwarder]]
name = "wrong-sni"
mode = "client"
listen = {wrong_sni}
connect = {trusted}
ca = {ca}
sni = "wrong.example"

[[forwarder]]
name = "good"
mode = "client"
listen = {good}
connect = {trusted}
ca = {ca}
sni = "localhost"
"#,
        metrics = q(localhost(metrics)),
        bad_ca = q(localhost(bad_ca)),
        wrong_sni = q(localhost(wrong_sni)),
        good = q(localhost(good)),
        untrusted = q(untrusted.addr),
        trusted = q(trusted.addr),
        ca = q(pki.ca.path.display()),
    );
    let path = pki.path().join("verify.toml");
    write_file(&path, config.as_bytes());
    let engine = EngineCmd::new("run")
        .opt("--config", &path)
        .wait_port(bad_ca)
        .wait_port(wrong_sni)
        .wait_port(good)
        .wait_port(metrics)
        .label("run (verify)")
        .start();

    let mut keep = connect(localhost(good));
    echo_roundtrip(&mut keep, b"good before");

    assert_closed_without_data(localhost(bad_ca), "upstream from an unknown CA");
    assert!(
        engine.wait_log(SOON, |l| !warn_tls_lines_with(l, "certificate was refused")
            .is_empty()),
        "no warn line with side=tls and \"certificate was refused\":\n{}",
        engine.log()
    );
    let n_before = warn_tls_lines_with(&engine.log(), "certificate was refused").len();
    assert_closed_without_data(localhost(wrong_sni), "wrong SNI");
    assert!(
        engine.wait_log(SOON, |l| warn_tls_lines_with(l, "certificate was refused")
            .len()
            > n_before),
        "no new warn line with side=tls and \"certificate was refused\" for the wrong SNI:\n{}",
        engine.log()
    );
    let m = wait_metric(
        localhost(metrics),
        "splice_connection_errors_total",
        &[("forwarder", "bad-ca"), ("side", "tls")],
        |v| v >= 1.0,
    );
    let _ = m;
    let m = wait_metric(
        localhost(metrics),
        "splice_connection_errors_total",
        &[("forwarder", "wrong-sni"), ("side", "tls")],
        |v| v >= 1.0,
    );
    assert_eq!(
        m.value("splice_connection_errors_total", &[("forwarder", "good")]),
        0.0,
        "the good forwarder counted errors"
    );
    assert!(
        m.has(
            "splice_connections_accepted_total",
            &[("forwarder", "good"), ("mode", "client")]
        ),
        "no accepted counter for the good forwarder:\n{}",
        m.text
    );

    // The good forwarder: the old connection and a new one both work.
    echo_roundtrip(&mut keep, b"good after");
    let mut fresh = connect(localhost(good));
    echo_roundtrip(&mut fresh, &random_bytes(256 * 1024, 70));
}

/// The same failure on the command line with JSON logs: the line is JSON with `"side":"tls"`.
#[test]
fn unknown_ca_with_json_logs() {
    let pki = Pki::new();
    let untrusted = tls_echo_server(server_config(&pki.other_server, None, TLS_ANY));
    let cp = free_port();
    let client = EngineCmd::client(cp, untrusted.addr, &pki.ca, "auto")
        .opt("--sni", "localhost")
        .opt("--log-format", "json")
        .start();
    assert_closed_without_data(localhost(cp), "upstream from an unknown CA (json logs)");
    assert!(
        client.wait_log(SOON, |l| l.lines().any(|line| line
            .trim_start()
            .starts_with('{')
            && line.contains("\"side\":\"tls\"")
            && line.contains("certificate was refused"))),
        "no JSON log line with \"side\":\"tls\" and \"certificate was refused\":\n{}",
        client.log()
    );
}

/// Without `--ca`, client mode verifies against the system roots, which do not include the
/// test CA: the connection is refused.
#[test]
fn system_roots_do_not_trust_test_ca() {
    let pki = Pki::new();
    let upstream = tls_echo_server(server_config(&pki.server, None, TLS_ANY));
    let cp = free_port();
    let client = EngineCmd::new("client")
        .opt("--listen", localhost(cp).to_string())
        .opt("--connect", upstream.addr.to_string())
        .opt("--sni", "localhost")
        .common("auto")
        .wait_port(cp)
        .start();
    assert_closed_without_data(localhost(cp), "upstream verified against system roots");
    assert!(
        client.wait_log(SOON, |l| !warn_lines_with_side(l, "tls").is_empty()),
        "no warn line with side=tls:\n{}",
        client.log()
    );
}

/// Logs written to a file (stderr is not a terminal here) are plain text: no terminal colour
/// sequences, so `side=tls` can be found with grep.
#[test]
fn log_file_is_plain_text() {
    let pki = Pki::new();
    let untrusted = tls_echo_server(server_config(&pki.other_server, None, TLS_ANY));
    let cp = free_port();
    let client = EngineCmd::client(cp, untrusted.addr, &pki.ca, "auto")
        .opt("--sni", "localhost")
        .start();
    assert_closed_without_data(localhost(cp), "upstream from an unknown CA");
    assert!(
        client.wait_log(SOON, |l| !warn_lines_with_side(l, "tls").is_empty()),
        "no warn line with side=tls:\n{}",
        client.log()
    );
    let raw = client.stderr();
    assert!(
        !raw.contains('\u{1b}'),
        "stderr is a file, yet the log has terminal escape sequences: {:?}",
        raw.lines()
            .find(|l| l.contains('\u{1b}'))
            .unwrap_or_default()
    );
    assert!(
        raw.lines().any(|l| l.contains("side=tls")),
        "no literal side=tls in the raw log:\n{raw}"
    );
}

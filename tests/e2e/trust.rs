//! How connections end and what the log says about them: unclean closes (a TLS peer that
//! closes TCP without close_notify) counted apart from errors; self-signed upstreams (`--pin`,
//! and a self-signed CA given as `--ca` refused at start); TLS failures in words with what to
//! do; expired certificates warned about at load; the access line.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::process::Command;

use crate::support::*;

const UNCLEAN: &str = "splice_connection_unclean_closes_total";
const ERRORS: &str = "splice_connection_errors_total";

fn access_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" access ") || l.contains("\"message\":\"access\""))
        .collect()
}

/// Server mode in front of an echo backend, with metrics.
fn server_with_metrics(pki: &Pki, driver: &str) -> (Backend, Proc, u16, u16) {
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let proc = EngineCmd::server(sp, backend.addr, &pki.server, driver)
        .metrics(mp)
        .label(format!("server ({driver})"))
        .start();
    (backend, proc, sp, mp)
}

#[test]
fn tcp_close_without_close_notify_is_an_unclean_close_not_an_error() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let (_backend, engine, sp, mp) = server_with_metrics(&pki, driver);
        let labels = [("side", "downstream")];
        // A rustls client that echoes, then closes TCP without close_notify (as Chromium
        // does after the WebSocket close handshake).
        let mut tls = tls_connect(
            localhost(sp),
            "localhost",
            client_config(&[&pki.ca], None, TLS_ANY),
        );
        echo_roundtrip(&mut tls, b"websocket close frame, say");
        tls.sock.shutdown(Shutdown::Write).expect("FIN");
        // The plain side is still reset, never given a clean end: the echo backend sees it
        // and the connection is gone; our side of it reads to the end.
        let mut rest = Vec::new();
        let _ = tls.sock.read_to_end(&mut rest);
        let m = wait_metric(localhost(mp), UNCLEAN, &[], |v| v == 1.0);
        assert_eq!(m.value(ERRORS, &labels), 0.0, "{driver}: {}", m.text);
        wait_metric(localhost(mp), "splice_connections_active", &[], |v| {
            v == 0.0
        });
        let log = engine.log();
        assert!(
            warn_lines_with_side(&log, "downstream").is_empty(),
            "{driver}: an unclean close logged a warning:\n{log}"
        );
        assert!(
            engine.wait_log(SOON, |l| access_lines(l)
                .iter()
                .any(|a| a.contains("end=unclean "))),
            "{driver}: no access line for the unclean close:\n{}",
            engine.log()
        );

        // Part of a record and then a FIN: a truncation, an error with a warning.
        let mut tls = tls_connect(
            localhost(sp),
            "localhost",
            client_config(&[&pki.ca], None, TLS_ANY),
        );
        echo_roundtrip(&mut tls, b"and now a cut record");
        tls.sock
            .write_all(&[0x17, 0x03, 0x03, 0x00, 0x40, 1, 2, 3])
            .expect("part of a record");
        tls.sock.shutdown(Shutdown::Write).expect("FIN");
        let _ = tls.sock.read_to_end(&mut rest);
        let m = wait_metric(localhost(mp), ERRORS, &labels, |v| v == 1.0);
        assert_eq!(m.value(UNCLEAN, &[]), 1.0, "{driver}: {}", m.text);
        assert!(
            engine.wait_log(SOON, |l| warn_lines_with_side(l, "downstream")
                .iter()
                .any(|w| w.contains("middle of a TLS record"))),
            "{driver}: no warning for the truncation:\n{}",
            engine.log()
        );
    }
}

#[test]
fn openssl_client_killed_is_an_unclean_close() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let (_backend, _engine, sp, mp) = server_with_metrics(&pki, driver);
        let mut client = OpensslChild::s_client(localhost(sp), &pki.ca.path, &[]);
        client.send(b"ping through s_client\n");
        assert!(
            client.wait_stdout(b"ping through s_client"),
            "{driver}: no echo through s_client: {}",
            client.stderr()
        );
        // SIGKILL: the kernel closes the socket with a FIN, and no close_notify.
        let _ = Command::new("kill")
            .args(["-KILL", &client.pid().to_string()])
            .status();
        client.wait_exit(SOON);
        let m = wait_metric(localhost(mp), UNCLEAN, &[], |v| v == 1.0);
        assert_eq!(
            m.value(ERRORS, &[("side", "downstream")]),
            0.0,
            "{driver}: {}",
            m.text
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Self-signed upstreams
// ---------------------------------------------------------------------------------------------

/// `openssl ARGS` in `dir`, which must succeed; its stdout.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(OPENSSL)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The certificate most people make: `openssl req -x509 -subj /CN=localhost` (CA:TRUE, no
/// subjectAltName), in `dir` as `NAME.pem` and `NAME-key.pem`.
fn self_signed(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            "30",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// The key pin of `NAME.pem` as `openssl` computes it: sha256 of the DER public key, base64.
fn openssl_spki_pin(dir: &Path, name: &str) -> String {
    let script = format!(
        "{OPENSSL} x509 -in {name}.pem -pubkey -noout | {OPENSSL} pkey -pubin -outform der | \
         {OPENSSL} dgst -sha256 -binary | {OPENSSL} base64 -A"
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(out.status.success());
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn self_signed_upstream_pinned_and_refused_as_ca() {
    let pki = Pki::new();
    let dir = pki.path();
    self_signed(dir, "upstream");
    self_signed(dir, "stranger");
    let backend = echo_backend();
    let sp = free_port();
    // The upstream presents the openssl-made certificate (through server mode).
    let _upstream = EngineCmd::new("server")
        .opt("--listen", localhost(sp).to_string())
        .opt("--connect", backend.addr.to_string())
        .opt("--cert", dir.join("upstream.pem"))
        .opt("--key", dir.join("upstream-key.pem"))
        .common("auto")
        .wait_port(sp)
        .label("upstream")
        .start();

    // Given as --ca, it is refused at start, with the pin to use instead.
    let pin = openssl_spki_pin(dir, "upstream");
    let (status, stderr) = EngineCmd::new("client")
        .opt("--listen", localhost(free_port()).to_string())
        .opt("--connect", localhost(sp).to_string())
        .opt("--sni", "localhost")
        .opt("--ca", dir.join("upstream.pem"))
        .common("auto")
        .run_to_exit();
    assert!(!status.success());
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("CA:TRUE"), "{stderr}");
    assert!(errors[0].contains(&format!("--pin {pin}")), "{stderr}");
    assert!(
        errors[0].contains("CA:FALSE and subjectAltName"),
        "{stderr}"
    );

    // Where the start-up check cannot tell (the certificate does not carry the name asked
    // for: here the IP), each refusal says the same, with the pin.
    let cp = free_port();
    let client = EngineCmd::new("client")
        .opt("--listen", localhost(cp).to_string())
        .opt("--connect", localhost(sp).to_string())
        .opt("--ca", dir.join("upstream.pem"))
        .common("auto")
        .wait_port(cp)
        .label("client with the self-signed certificate as CA")
        .start();
    let (data, end) = send_and_read_to_end(localhost(cp), b"must not arrive");
    assert!(data.is_empty() && end.closed(), "{end:?}");
    assert!(
        client.wait_log(SOON, |l| warn_lines_with_side(l, "tls")
            .iter()
            .any(|w| w.contains("CA:TRUE") && w.contains(&format!("--pin {pin}")))),
        "{}",
        client.log()
    );
    assert!(!client.log().contains("OtherError"), "{}", client.log());
    drop(client);

    // Pinned by its key (base64, as openssl computes it) or by the whole certificate's
    // fingerprint (hex with colons, as `openssl x509 -fingerprint` prints it): it works.
    let fingerprint = openssl(
        dir,
        &[
            "x509",
            "-in",
            "upstream.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    let hex = fingerprint
        .trim()
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .to_string();
    for pin in [pin.clone(), format!("sha256:{hex}")] {
        let cp = free_port();
        let _client = EngineCmd::new("client")
            .opt("--listen", localhost(cp).to_string())
            .opt("--connect", localhost(sp).to_string())
            .opt("--pin", &pin)
            .common("auto")
            .wait_port(cp)
            .label("pinned client")
            .start();
        let mut s = connect(localhost(cp));
        echo_roundtrip(&mut s, b"through a pinned upstream");
    }

    // Another key is refused, in words.
    let cp = free_port();
    let client = EngineCmd::new("client")
        .opt("--listen", localhost(cp).to_string())
        .opt("--connect", localhost(sp).to_string())
        .opt("--pin", openssl_spki_pin(dir, "stranger"))
        .common("auto")
        .wait_port(cp)
        .label("wrongly pinned client")
        .start();
    let (data, end) = send_and_read_to_end(localhost(cp), b"must not arrive");
    assert!(data.is_empty() && end.closed(), "{end:?}");
    assert!(
        client.wait_log(SOON, |l| warn_lines_with_side(l, "tls")
            .iter()
            .any(|w| w.contains(&format!("its key ({pin}) matches no `--pin`")))),
        "{}",
        client.log()
    );
    assert!(!client.log().contains("OtherError"), "{}", client.log());
}

// ---------------------------------------------------------------------------------------------
// TLS failures in words
// ---------------------------------------------------------------------------------------------

#[test]
fn common_tls_failures_say_what_to_do() {
    let pki = Pki::new();
    let trusted = tls_echo_server(server_config(&pki.server, None, TLS_ANY));
    // A plain HTTP server where a TLS one was expected.
    let plain = Backend::spawn(|mut sock| {
        let _ = sock.read(&mut [0u8; 1024]);
        let _ = sock.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
    });
    // A wrong name: suggests --sni, shows the names without Rust debug forms.
    let cp = free_port();
    let client = EngineCmd::client(cp, trusted.addr, &pki.ca, "auto")
        .opt("--sni", "wrong.example")
        .start();
    let (data, _) = send_and_read_to_end(localhost(cp), b"x");
    assert!(data.is_empty());
    assert!(
        client.wait_log(SOON, |l| warn_lines_with_side(l, "tls")
            .iter()
            .any(|w| w.contains("not valid for \\\"wrong.example\\\"")
                || w.contains("not valid for \"wrong.example\""))),
        "{}",
        client.log()
    );
    let log = client.log();
    let line = warn_lines_with_side(&log, "tls")[0];
    assert!(line.contains("--sni"), "{line}");
    assert!(!line.contains("DnsName("), "{line}");

    // A plain TCP upstream: "did not answer with TLS".
    let cp = free_port();
    let client = EngineCmd::client(cp, plain.addr, &pki.ca, "auto")
        .opt("--sni", "localhost")
        .start();
    let _ = send_and_read_to_end(localhost(cp), b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        client.wait_log(SOON, |l| l.contains("the upstream did not answer with TLS")),
        "{}",
        client.log()
    );
}

/// Writes a certificate for `localhost` valid only in 2019 to `dir/NAME.pem` and its key to
/// `dir/NAME-key.pem`.
fn write_expired(dir: &Path, name: &str) {
    let cert = splice_test_pki::Cert::self_signed_between(
        &["localhost"],
        KeyType::P256,
        (2019, 1, 1),
        (2020, 1, 1),
    );
    write_file(&dir.join(format!("{name}.pem")), cert.pem.as_bytes());
    write_file(
        &dir.join(format!("{name}-key.pem")),
        cert.key.pem().as_bytes(),
    );
}

fn warns_expired(log: &str, file: &str) -> bool {
    log.lines().any(|l| {
        l.contains("WARN") && l.contains(file) && l.contains("expired on 2020-01-01 00:00:00 UTC")
    })
}

#[test]
fn expired_certificate_is_warned_about_at_load_and_reload() {
    let pki = Pki::new();
    let dir = pki.path();
    write_expired(dir, "old");
    let backend = echo_backend();
    let sp = free_port();
    let engine = EngineCmd::new("server")
        .opt("--listen", localhost(sp).to_string())
        .opt("--connect", backend.addr.to_string())
        .opt("--cert", dir.join("old.pem"))
        .opt("--key", dir.join("old-key.pem"))
        .common("auto")
        .wait_port(sp)
        .start();
    let log = engine.log();
    assert!(warns_expired(&log, "old.pem"), "{log}");

    // Run mode: a good certificate at start, replaced by an expired one before a SIGHUP.
    let rp = free_port();
    let (cert, key) = (dir.join("live.pem"), dir.join("live-key.pem"));
    fs::copy(&pki.server.cert, &cert).expect("copy cert");
    fs::copy(&pki.server.key, &key).expect("copy key");
    let config = format!(
        "[[forwarder]]\nmode = \"server\"\nlisten = {listen}\nconnect = {backend}\n\
         cert = {cert}\nkey = {key}\n",
        listen = q(localhost(rp)),
        backend = q(backend.addr),
        cert = q(cert.display()),
        key = q(key.display()),
    );
    let path = dir.join("expiry.toml");
    write_file(&path, config.as_bytes());
    let run = EngineCmd::new("run")
        .opt("--config", &path)
        .opt("--log-level", "info")
        .wait_port(rp)
        .start();
    assert!(!warns_expired(&run.log(), "live.pem"), "{}", run.log());
    write_expired(dir, "live");
    run.signal(libc::SIGHUP);
    assert!(
        run.wait_log(SOON, |l| warns_expired(l, "live.pem")),
        "no warning at reload:\n{}",
        run.log()
    );
    // Once per load: the reload reads each certificate once.
    assert!(
        run.wait_log(SOON, |l| l.contains("configuration reloaded")),
        "{}",
        run.log()
    );
    let log = run.log();
    let warnings = log.lines().filter(|l| warns_expired(l, "live.pem")).count();
    assert_eq!(warnings, 1, "the reload warned {warnings} times:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// The access line
// ---------------------------------------------------------------------------------------------

#[test]
fn access_line_per_connection_in_text_and_json() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let backend = echo_backend();
        for json in [false, true] {
            let sp = free_port();
            let mut cmd = EngineCmd::server(sp, backend.addr, &pki.server, driver);
            if json {
                cmd = cmd.opt("--log-format", "json");
            }
            let engine = cmd.start();
            // Twice with one client config: the second connection resumes the session.
            let cfg = client_config(&[&pki.ca], None, TLS13);
            for _ in 0..2 {
                let mut tls = tls_connect(localhost(sp), "localhost", cfg.clone());
                echo_roundtrip(&mut tls, b"0123456789");
                tls_close(&mut tls);
                let mut rest = Vec::new();
                let _ = tls.read_to_end(&mut rest);
            }
            assert!(
                engine.wait_log(SOON, |l| access_lines(l).len() == 2),
                "{driver}: no access line:\n{}",
                engine.log()
            );
            let log = engine.log();
            let lines = access_lines(&log);
            let resumed = |l: &str| l.contains("resumed=true") || l.contains("\"resumed\":true");
            assert_eq!(
                lines.iter().filter(|l| resumed(l)).count(),
                1,
                "{driver}: not exactly one of the two connections resumed:\n{log}"
            );
            // The two may close in either order (each shard logs its own): the full handshake's
            // line is the one checked below.
            let line = lines
                .iter()
                .find(|l| !resumed(l))
                .expect("one line without resumption")
                .to_string();
            assert!(line.contains("INFO") || line.contains("\"INFO\""), "{line}");
            if json {
                let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
                let f = &v["fields"];
                assert_eq!(f["tls"], "1.3", "{line}");
                let suite = f["suite"].as_str().expect("suite");
                assert!(suite.starts_with("TLS13_AES_"), "{line}");
                assert_eq!(f["resumed"], false, "{line}");
                assert_eq!(f["bytes_down_up"], 10, "{line}");
                assert_eq!(f["bytes_up_down"], 10, "{line}");
                assert_eq!(f["end"], "clean", "{line}");
                assert!(f["ms"].is_u64(), "{line}");
                assert!(
                    f["peer"].as_str().expect("peer").starts_with("127.0.0.1:"),
                    "{line}"
                );
                assert_eq!(f["upstream"], backend.addr.to_string(), "{line}");
            } else {
                for want in [
                    "tls=1.3 ",
                    "suite=TLS13_AES_",
                    "resumed=false",
                    "bytes_down_up=10",
                    "bytes_up_down=10",
                    "end=clean ",
                    "peer=127.0.0.1:",
                ] {
                    assert!(line.contains(want), "{driver}: {want} missing in {line}");
                }
                assert!(!line.contains("Some("), "{line}");
            }
        }
    }
}

#[test]
fn access_log_can_be_turned_off() {
    let pki = Pki::new();
    let backend = echo_backend();
    // By flag.
    let sp = free_port();
    let engine = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
        .arg("--no-access-log")
        .start();
    let mut tls = tls_connect(
        localhost(sp),
        "localhost",
        client_config(&[&pki.ca], None, TLS13),
    );
    echo_roundtrip(&mut tls, b"quiet");
    tls_close(&mut tls);
    // By file, per forwarder: "loud" keeps the default, "quiet" turns it off.
    let (loud, quiet) = (free_port(), free_port());
    let config = format!(
        r#"
threads = 1
log_level = "info"

[[forwarder]]
name = "loud"
mode = "server"
listen = {loud}
connect = {backend}
cert = {cert}
key = {key}

[[forwarder]]
name = "quiet"
mode = "server"
listen = {quiet}
connect = {backend}
cert = {cert}
key = {key}
access_log = false
"#,
        loud = q(localhost(loud)),
        quiet = q(localhost(quiet)),
        backend = q(backend.addr),
        cert = q(pki.server.cert.display()),
        key = q(pki.server.key.display()),
    );
    let path = pki.path().join("access.toml");
    write_file(&path, config.as_bytes());
    let run = EngineCmd::new("run")
        .opt("--config", &path)
        .wait_port(loud)
        .wait_port(quiet)
        .start();
    for port in [quiet, loud] {
        let mut tls = tls_connect(
            localhost(port),
            "localhost",
            client_config(&[&pki.ca], None, TLS13),
        );
        echo_roundtrip(&mut tls, b"hello");
        tls_close(&mut tls);
        let _ = tls.read_to_end(&mut Vec::new());
    }
    assert!(
        run.wait_log(SOON, |l| !access_lines(l).is_empty()),
        "{}",
        run.log()
    );
    // The quiet connection closed first; only the loud one is logged.
    let log = run.log();
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("forwarder=loud"), "{log}");
    let _ = tls.read_to_end(&mut Vec::new());
    assert!(access_lines(&engine.log()).is_empty(), "{}", engine.log());
}

/// The README's relay for browsers: an `openssl req -x509` certificate (CA:TRUE). As `--ca` an
/// agent refuses it at start with the pin to use; with `--pin` both agents connect and carry
/// bytes; a relay that does not match the pin is refused on every attempt, saying so.
#[test]
fn a_self_signed_relay_is_pinned_by_the_agents() {
    let pki = Pki::new();
    let dir = pki.path();
    self_signed(dir, "relay");
    self_signed(dir, "stranger");
    let pin = openssl_spki_pin(dir, "relay");
    let (port, api) = (free_port(), free_port());
    let _relay = EngineCmd::new("relay")
        .opt("--listen", localhost(port).to_string())
        .opt("--cert", dir.join("relay.pem"))
        .opt("--key", dir.join("relay-key.pem"))
        .opt("--api", localhost(api).to_string())
        .opt("--state", ":memory:")
        .common("auto")
        .wait_port(port)
        .wait_port(api)
        .label("relay")
        .start();
    let body = r#"{"destinationConfig":{"services":["web"]}}"#;
    let (status, t) = api_request(localhost(api), "POST", "/tunnels", body);
    assert_eq!(status, 200, "{t}");
    let (src_token, dst_token) = (dir.join("src.token"), dir.join("dst.token"));
    write_file(
        &src_token,
        t["sourceAccessToken"].as_str().expect("token").as_bytes(),
    );
    write_file(
        &dst_token,
        t["destinationAccessToken"]
            .as_str()
            .expect("token")
            .as_bytes(),
    );
    let relay = format!("localhost:{port}");
    let agent = |kind: &str, trust: (&str, &OsStr), token: &Path, service: String| {
        EngineCmd::agent(kind, &relay, token, &service)
            .opt(trust.0, trust.1)
            .common("auto")
    };

    let ca = dir.join("relay.pem");
    let (status, stderr) = agent(
        "source",
        ("--ca", ca.as_os_str()),
        &src_token,
        format!("web=127.0.0.1:{}", free_port()),
    )
    .run_to_exit();
    assert!(!status.success());
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("CA:TRUE") && errors[0].contains(&format!("--pin {pin}")),
        "{stderr}"
    );

    // The pin of another key: refused on each attempt, with the reason (the token unused).
    let stranger = openssl_spki_pin(dir, "stranger");
    let wrong = agent(
        "source",
        ("--pin", OsStr::new(&stranger)),
        &src_token,
        format!("web=127.0.0.1:{}", free_port()),
    )
    .start();
    assert!(
        wrong.wait_log(SOON, |l| l.contains("reconnecting")
            && l.contains("certificate was refused")
            && l.contains("pin")),
        "{}",
        wrong.log()
    );
    assert!(!wrong.log().contains("OtherError"), "{}", wrong.log());
    drop(wrong);

    let backend = echo_backend();
    let _dst = agent(
        "destination",
        ("--pin", OsStr::new(&pin)),
        &dst_token,
        format!("web={}", backend.addr),
    )
    .start();
    let sp = free_port();
    let _src = agent(
        "source",
        ("--pin", OsStr::new(&pin)),
        &src_token,
        format!("web=127.0.0.1:{sp}"),
    )
    .wait_port(sp)
    .start();
    let id = t["tunnelId"].as_str().expect("tunnelId");
    assert!(
        wait_until(SOON, || {
            let (_, d) = api_request(localhost(api), "GET", &format!("/tunnels/{id}"), "");
            d["tunnel"]["sourceConnectionState"]["status"] == "CONNECTED"
                && d["tunnel"]["destinationConnectionState"]["status"] == "CONNECTED"
        }),
        "both pinned agents connect"
    );
    let mut s = connect(localhost(sp));
    echo_roundtrip(&mut s, b"through a pinned relay");
}

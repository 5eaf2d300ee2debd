//! `run --config`: SIGHUP reloads certificates and the forwarder list without dropping
//! established connections; SIGTERM/SIGINT stop accepting, drain, and exit 0.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::support::*;

fn forwarder(name: &str, listen: u16, backend: SocketAddr) -> String {
    format!(
        "\n[[forwarder]]\nname = {}\nmode = \"server\"\nlisten = {}\nconnect = {}\ncert = \"server.crt\"\nkey = \"server.key\"\n",
        q(name),
        q(localhost(listen)),
        q(backend)
    )
}

fn header(metrics: u16, drain: &str) -> String {
    format!(
        "threads = 2\nlog_level = \"info\"\nmetrics = {}\ndrain_timeout = {}\n",
        q(localhost(metrics)),
        q(drain)
    )
}

/// Copies a leaf's files to `dir/server.crt` and `dir/server.key` (the names the config uses).
fn install_cert(dir: &Path, leaf: &Leaf) {
    write_file(
        &dir.join("server.crt"),
        &std::fs::read(&leaf.cert).expect("read cert"),
    );
    write_file(
        &dir.join("server.key"),
        &std::fs::read(&leaf.key).expect("read key"),
    );
}

/// Whether a new connection to `addr` is refused: connect fails, or the handshake/echo fails.
/// A connection that works is closed cleanly again.
fn new_connection_refused(addr: SocketAddr, cfg: std::sync::Arc<rustls::ClientConfig>) -> bool {
    let Ok(sock) = try_connect(addr) else {
        return true;
    };
    // Short enough that a listener left open but no longer served does not stall the poll.
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    match try_tls_on(sock, "localhost", cfg) {
        Err(_) => true,
        Ok(mut tls) => {
            let worked = try_echo_roundtrip(&mut tls, b"still accepting?").is_ok();
            tls_close(&mut tls);
            !worked
        }
    }
}

fn sighup_reloads_certs_and_forwarders_keeping_connections(driver: &str) {
    let pki = Pki::new();
    let backend = echo_backend();
    let conf_dir = tempfile::Builder::new()
        .prefix("splice-e2e-reload-")
        .tempdir()
        .expect("tempdir");
    let dir = conf_dir.path();
    let (p1, p2, mp) = (free_port(), free_port(), free_port());
    install_cert(dir, &pki.server);
    let config = dir.join("engine.toml");
    write_file(
        &config,
        (header(mp, "60s") + &forwarder("first", p1, backend.addr)).as_bytes(),
    );
    let mut engine = EngineCmd::new("run")
        .opt("--config", &config)
        .opt("--driver", driver)
        // Relative paths must resolve against the config's directory, not the cwd.
        .cwd("/")
        .wait_port(p1)
        .wait_port(mp)
        .label("run (reload)")
        .start();

    let old_ca_only = client_config(&[&pki.ca], None, TLS_ANY);
    let new_ca_only = client_config(&[&pki.other_ca], None, TLS_ANY);
    let mut old_conn = tls_connect(localhost(p1), "localhost", old_ca_only.clone());
    echo_roundtrip(&mut old_conn, b"before the reload");
    assert!(
        try_tls_connect(localhost(p1), "localhost", new_ca_only.clone()).is_err(),
        "a client trusting only the new CA connected before the reload"
    );

    // New certificate (from the other CA) in place, and a second forwarder.
    install_cert(dir, &pki.other_server);
    write_file(
        &config,
        (header(mp, "60s")
            + &forwarder("first", p1, backend.addr)
            + &forwarder("second", p2, backend.addr))
            .as_bytes(),
    );
    let accepted_before = scrape(localhost(mp)).value(
        "splice_connections_accepted_total",
        &[("forwarder", "first")],
    );
    assert!(
        accepted_before >= 2.0,
        "accepted before the reload: {accepted_before}"
    );
    engine.signal(libc::SIGHUP);
    engine.wait_listening(p2);

    // The old connection still carries data both ways, including a large chunk.
    echo_roundtrip(&mut old_conn, b"after the reload");
    echo_roundtrip(&mut old_conn, &random_bytes(2 * 1024 * 1024, 100));

    // New handshakes on the first forwarder see the new certificate.
    let mut last_err = None;
    let switched = wait_until(SOON, || {
        match try_tls_connect(localhost(p1), "localhost", new_ca_only.clone())
            .and_then(|mut t| try_echo_roundtrip(&mut t, b"new certificate"))
        {
            Ok(()) => true,
            Err(e) => {
                last_err = Some(e);
                false
            }
        }
    });
    assert!(
        switched,
        "a client trusting only the new CA never got through the first forwarder: {last_err:?}"
    );
    assert!(
        try_tls_connect(localhost(p1), "localhost", old_ca_only.clone())
            .and_then(|mut t| try_echo_roundtrip(&mut t, b"old certificate?"))
            .is_err(),
        "a client trusting only the old CA still connects after the reload"
    );

    // The new forwarder works, with the new certificate.
    let mut second = tls_connect(localhost(p2), "localhost", new_ca_only.clone());
    echo_roundtrip(&mut second, b"the second forwarder");
    let m = scrape(localhost(mp));
    assert!(
        m.has(
            "splice_connections_accepted_total",
            &[("forwarder", "second"), ("mode", "server")]
        ),
        "no metrics for the new forwarder:\n{}",
        m.text
    );

    // Counters are kept across the reload (matched by name), not restarted.
    let accepted_after = m.value(
        "splice_connections_accepted_total",
        &[("forwarder", "first")],
    );
    assert!(
        accepted_after >= accepted_before + 1.0,
        "accepted_total of \"first\" went from {accepted_before} to {accepted_after} across the reload"
    );

    // The old connection survived everything.
    echo_roundtrip(&mut old_conn, b"still here");
    assert!(engine.running(), "the engine exited during the reload");

    // Removing the second forwarder on the next reload closes its listener; the first stays.
    write_file(
        &config,
        (header(mp, "60s") + &forwarder("first", p1, backend.addr)).as_bytes(),
    );
    engine.signal(libc::SIGHUP);
    assert!(
        wait_until(SOON, || !engine.is_listening(p2)),
        "the removed forwarder still listens on {p2}"
    );
    echo_roundtrip(&mut old_conn, b"after the second reload");
    let mut again = tls_connect(localhost(p1), "localhost", new_ca_only);
    echo_roundtrip(&mut again, b"first forwarder after the second reload");
}

#[test]
fn sighup_reloads_certs_and_forwarders_keeping_connections_uring() {
    sighup_reloads_certs_and_forwarders_keeping_connections("uring");
}

#[test]
fn sighup_reloads_certs_and_forwarders_keeping_connections_epoll() {
    sighup_reloads_certs_and_forwarders_keeping_connections("epoll");
}

/// A reload that fails (an unknown key; then a certificate that does not match its key) is
/// refused as a whole: the engine keeps running with the previous configuration and
/// certificate, says why in the log, and a later good reload applies.
#[test]
fn bad_reload_keeps_previous_configuration() {
    let pki = Pki::new();
    let backend = echo_backend();
    let conf_dir = tempfile::Builder::new()
        .prefix("splice-e2e-badreload-")
        .tempdir()
        .expect("tempdir");
    let dir = conf_dir.path();
    let (p1, p2, mp) = (free_port(), free_port(), free_port());
    install_cert(dir, &pki.server);
    let config = dir.join("engine.toml");
    let good = header(mp, "60s") + &forwarder("first", p1, backend.addr);
    write_file(&config, good.as_bytes());
    let mut engine = EngineCmd::new("run")
        .opt("--config", &config)
        .wait_port(p1)
        .wait_port(mp)
        .label("run (bad reload)")
        .start();
    let old_ca_only = client_config(&[&pki.ca], None, TLS_ANY);
    let new_ca_only = client_config(&[&pki.other_ca], None, TLS_ANY);
    let mut open = tls_connect(localhost(p1), "localhost", old_ca_only.clone());
    echo_roundtrip(&mut open, b"before");

    // 1. An unknown key, plus a new certificate on disk and a second forwarder: all refused.
    install_cert(dir, &pki.other_server);
    write_file(
        &config,
        (good.clone() + &forwarder("second", p2, backend.addr) + "surprise_key = 1\n").as_bytes(),
    );
    engine.signal(libc::SIGHUP);
    assert!(
        engine.wait_log(SOON, |l| l.contains("surprise_key")),
        "the refused reload is not explained in the log (no mention of surprise_key):\n{}",
        engine.log()
    );
    assert!(
        engine.running(),
        "the engine exited on a bad reload:\n{}",
        engine.log()
    );
    assert!(
        !engine.is_listening(p2),
        "a forwarder from the refused reload listens"
    );
    echo_roundtrip(&mut open, b"after the refused reload");
    let mut t = tls_connect(localhost(p1), "localhost", old_ca_only.clone());
    echo_roundtrip(&mut t, b"old certificate still served");
    assert!(
        try_tls_connect(localhost(p1), "localhost", new_ca_only.clone())
            .and_then(|mut t| try_echo_roundtrip(&mut t, b"new?"))
            .is_err(),
        "the certificate from a refused reload is being served"
    );

    // 2. A valid file, but the new certificate does not match its key: refused too.
    write_file(&config, good.as_bytes());
    write_file(
        &dir.join("server.key"),
        &std::fs::read(&pki.server.key).expect("read key"),
    );
    let log_len = engine.log().len();
    engine.signal(libc::SIGHUP);
    assert!(
        engine.wait_log(SOON, |l| l.len() > log_len
            && (l[log_len..].contains("server.crt")
                || l[log_len..].contains("server.key"))),
        "the refused reload (mismatched key) is not explained in the log:\n{}",
        engine.log()
    );
    assert!(
        engine.running(),
        "the engine exited on a bad reload:\n{}",
        engine.log()
    );
    let mut t = tls_connect(localhost(p1), "localhost", old_ca_only);
    echo_roundtrip(&mut t, b"old certificate still served after a key mismatch");

    // 3. A good reload applies.
    install_cert(dir, &pki.other_server);
    engine.signal(libc::SIGHUP);
    let mut last = None;
    assert!(
        wait_until(SOON, || {
            let r = try_tls_connect(localhost(p1), "localhost", new_ca_only.clone())
                .and_then(|mut t| try_echo_roundtrip(&mut t, b"new certificate"));
            let ok = r.is_ok();
            last = r.err();
            ok
        }),
        "the good reload after two refused ones did not apply: {last:?}"
    );
    echo_roundtrip(&mut open, b"the first connection is still fine");
}

/// A reload that adds a second forwarder on an address in use by the first (which
/// SO_REUSEPORT would let the kernel split connections between), a listen address that is
/// not IP:PORT, or a missing certificate, is refused: the log names the file, the line, the
/// key (and both forwarders), and every connection keeps going to the first forwarder's
/// backend.
#[test]
fn reload_refuses_duplicate_or_bad_listen_address() {
    let pki = Pki::new();
    let (first_backend, second_backend) = (echo_backend(), echo_backend());
    let dir = pki.path();
    let (p1, mp) = (free_port(), free_port());
    install_cert(dir, &pki.server);
    let config = dir.join("dup-reload.toml");
    let good = header(mp, "60s") + &forwarder("first", p1, first_backend.addr);
    write_file(&config, good.as_bytes());
    let mut engine = EngineCmd::new("run")
        .opt("--config", &config)
        .wait_port(p1)
        .label("run (duplicate listen on reload)")
        .start();
    let ca = client_config(&[&pki.ca], None, TLS_ANY);

    let dup = good.clone() + &forwarder("second", p1, second_backend.addr);
    write_file(&config, dup.as_bytes());
    let log_len = engine.log().len();
    engine.signal(libc::SIGHUP);
    let refused = |l: &str, needles: &[&str]| {
        l.len() > log_len
            && l[log_len..].lines().any(|line| {
                line.contains("reload failed") && needles.iter().all(|n| line.contains(n))
            })
    };
    assert!(
        engine.wait_log(SOON, |l| refused(
            l,
            &["\"first\"", "\"second\"", "dup-reload.toml", "line 17:"]
        )),
        "the duplicate listen address was not refused naming both forwarders, the file and the \
         line:\n{}",
        engine.log()
    );
    for i in 0..8 {
        let mut t = tls_connect(localhost(p1), "localhost", ca.clone());
        echo_roundtrip(&mut t, format!("connection {i}").as_bytes());
        tls_close(&mut t);
    }
    assert_eq!(
        second_backend.accepted(),
        0,
        "connections went to the refused forwarder's backend"
    );
    assert!(first_backend.accepted() >= 8);

    // Writes `text` as the file, sends SIGHUP and waits for the refusal naming all `names`.
    let refused_naming = |text: &str, names: [&str; 4], what: &str| {
        write_file(&config, text.as_bytes());
        let log_len = engine.log().len();
        engine.signal(libc::SIGHUP);
        let refused = |l: &str| {
            l.len() > log_len
                && l[log_len..].lines().any(|line| {
                    line.contains("reload failed") && names.iter().all(|n| line.contains(n))
                })
        };
        assert!(
            engine.wait_log(SOON, refused),
            "{what} was not refused naming the file, the line and the key:\n{}",
            engine.log()
        );
    };
    let bad = good.replace(
        &format!("listen = {}", q(localhost(p1))),
        "listen = \"nonsense\"",
    );
    refused_naming(
        &bad,
        ["dup-reload.toml", "line 9:", "`listen`", "nonsense"],
        "the bad listen address",
    );
    let missing = good.replace("cert = \"server.crt\"", "cert = \"missing.crt\"");
    refused_naming(
        &missing,
        ["dup-reload.toml", "line 11:", "`cert`", "missing.crt"],
        "the missing certificate",
    );
    assert!(engine.running(), "the engine exited:\n{}", engine.log());
    let mut t = tls_connect(localhost(p1), "localhost", ca);
    echo_roundtrip(&mut t, b"still the first configuration");
}

/// A reload that changes engine-level settings applies the forwarders and names, in a warning,
/// each setting that only a restart applies.
#[test]
fn reload_names_settings_that_need_a_restart() {
    let pki = Pki::new();
    let backend = echo_backend();
    let dir = pki.path();
    let (p1, mp) = (free_port(), free_port());
    install_cert(dir, &pki.server);
    let config = dir.join("restart.toml");
    let good = header(mp, "60s") + &forwarder("first", p1, backend.addr);
    write_file(&config, good.as_bytes());
    let mut engine = EngineCmd::new("run")
        .opt("--config", &config)
        .wait_port(p1)
        .label("run (restart-only settings)")
        .start();
    let log_len = engine.log().len();
    let changed = good.replace("threads = 2", "threads = 1\nbusy_poll = \"20us\"");
    write_file(&config, changed.as_bytes());
    engine.signal(libc::SIGHUP);
    let named = |l: &str, key: &str| {
        l.len() > log_len
            && l[log_len..]
                .lines()
                .any(|line| line.contains(key) && line.contains("only a restart applies it"))
    };
    assert!(
        engine.wait_log(SOON, |l| named(l, "threads") && named(l, "busy_poll")),
        "the reload did not name threads and busy_poll as needing a restart:\n{}",
        engine.log()
    );
    assert!(
        !named(&engine.log(), "drain_timeout") && !named(&engine.log(), "driver"),
        "unchanged settings named:\n{}",
        engine.log()
    );
    assert!(engine.running(), "the engine exited:\n{}", engine.log());
    let mut t = tls_connect(
        localhost(p1),
        "localhost",
        client_config(&[&pki.ca], None, TLS_ANY),
    );
    echo_roundtrip(&mut t, b"still forwarding after the reload");
}

/// SIGTERM with one open connection and a long drain timeout: new connections are refused, the
/// open one keeps working, and the process exits 0 once the test closes it.
fn sigterm_drains_open_connection_then_exits_zero(driver: &str) {
    let pki = Pki::new();
    let backend = echo_backend();
    let dir = pki.path();
    let (p1, mp) = (free_port(), free_port());
    install_cert(dir, &pki.server);
    let config = dir.join("drain.toml");
    write_file(
        &config,
        (header(mp, "120s") + &forwarder("drain", p1, backend.addr)).as_bytes(),
    );
    let mut engine = EngineCmd::new("run")
        .opt("--config", &config)
        .opt("--driver", driver)
        .wait_port(p1)
        .label("run (drain)")
        .start();
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    let mut open = tls_connect(localhost(p1), "localhost", cfg.clone());
    echo_roundtrip(&mut open, b"before SIGTERM");

    engine.signal(libc::SIGTERM);
    assert!(
        wait_until(SOON, || new_connection_refused(localhost(p1), cfg.clone())),
        "new connections were still accepted {SOON:?} after SIGTERM"
    );
    assert!(
        engine.running(),
        "the engine exited with a connection still open and 120 s of drain left: {:?}\n{}",
        engine.wait_exit(Duration::ZERO),
        engine.log()
    );
    echo_roundtrip(&mut open, b"during the drain");
    echo_roundtrip(&mut open, &random_bytes(1024 * 1024, 110));
    assert!(engine.running(), "the engine exited during the drain");

    tls_close(&mut open);
    let _ = read_until_end(&mut open);
    drop(open);
    let status = engine.wait_exit(SOON).unwrap_or_else(|| {
        panic!(
            "the engine did not exit after its last connection closed:\n{}",
            engine.log()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after the drain: {status:?}"
    );
}

#[test]
fn sigterm_drains_open_connection_then_exits_zero_uring() {
    sigterm_drains_open_connection_then_exits_zero("uring");
}

#[test]
fn sigterm_drains_open_connection_then_exits_zero_epoll() {
    sigterm_drains_open_connection_then_exits_zero("epoll");
}

/// SIGTERM with a connection that stays open: the process exits 0 after `--drain-timeout`, and
/// the connection is then closed.
fn sigterm_exits_after_drain_timeout(driver: &str) {
    let pki = Pki::new();
    let backend = echo_backend();
    let sp = free_port();
    let mut engine = EngineCmd::server(sp, backend.addr, &pki.server, driver)
        .opt("--drain-timeout", "1s")
        .start();
    let mut open = tls_connect(
        localhost(sp),
        "localhost",
        client_config(&[&pki.ca], None, TLS_ANY),
    );
    echo_roundtrip(&mut open, b"before SIGTERM");
    engine.signal(libc::SIGTERM);
    let status = engine.wait_exit(SOON).unwrap_or_else(|| {
        panic!(
            "the engine did not exit within {SOON:?} of SIGTERM with a 1 s drain timeout:\n{}",
            engine.log()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after the drain timeout: {status:?}"
    );
    let (_, end) = read_until_end(&mut open);
    assert!(end.closed(), "the open connection was not closed: {end:?}");
}

#[test]
fn sigterm_exits_after_drain_timeout_uring() {
    sigterm_exits_after_drain_timeout("uring");
}

#[test]
fn sigterm_exits_after_drain_timeout_epoll() {
    sigterm_exits_after_drain_timeout("epoll");
}

/// SIGINT behaves like SIGTERM: an idle engine exits 0.
#[test]
fn sigint_exits_zero() {
    let pki = Pki::new();
    let backend = echo_backend();
    let sp = free_port();
    let mut engine = EngineCmd::server(sp, backend.addr, &pki.server, "auto").start();
    engine.signal(libc::SIGINT);
    let status = engine
        .wait_exit(SOON)
        .unwrap_or_else(|| panic!("no exit after SIGINT:\n{}", engine.log()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGINT: {status:?}"
    );
}

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

#[test]
fn sighup_reloads_certs_and_forwarders_keeping_connections() {
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

/// SIGTERM with one open connection and a long drain timeout: new connections are refused, the
/// open one keeps working, and the process exits 0 once the test closes it.
#[test]
fn sigterm_drains_open_connection_then_exits_zero() {
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

/// SIGTERM with a connection that stays open: the process exits 0 after `--drain-timeout`, and
/// the connection is then closed.
#[test]
fn sigterm_exits_after_drain_timeout() {
    let pki = Pki::new();
    let backend = echo_backend();
    let sp = free_port();
    let mut engine = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
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

//! Upstreams and tunnel targets given by name, resolved through an `/etc/hosts` of the test's
//! own ([`EngineCmd::hosts`]). A name whose first address refuses (`localhost` as `::1` for an
//! IPv4-only service) costs no connection: the next address is dialled within it, as it is
//! when the first address drops SYNs and the connect times out. A name that moves (it now gives
//! a new address; the old one refuses) is found again by a fresh lookup.

use std::net::SocketAddr;
use std::path::Path;

use crate::support::*;

/// `::1` then `127.0.0.1`: nothing of a test listens on `::1`, so the first address refuses.
const DEAD_FIRST: &str = "::1 target.test\n127.0.0.1 target.test\n";
/// The name moved to 127.0.0.2.
const MOVED: &str = "127.0.0.2 target.test\n";
/// The name is not there.
const UNKNOWN: &str = "127.0.0.2 other.test\n";
/// The name, at 127.0.0.1.
const HERE: &str = "127.0.0.1 target.test\n";
/// 127.0.0.1 (a [`silent_listener`]: connects time out), then 127.0.0.2. glibc sorts
/// 127.0.0.1 first whatever the file's order (its source address matches it best).
const SILENT_FIRST: &str = "127.0.0.2 target.test\n127.0.0.1 target.test\n";
/// Where [`SILENT_FIRST`]'s second address listens.
const SECOND: [u8; 4] = [127, 0, 0, 2];
/// The connect timeout of the tests with a silent address: short, so the test is.
const CONNECT_TIMEOUT: &str = "300ms";

/// A hosts file in `dir` with `entries`.
fn hosts_file(dir: &Path, entries: &str) -> std::path::PathBuf {
    let path = dir.join("hosts");
    std::fs::write(&path, entries).expect("write the hosts file");
    path
}

/// Rewrites the hosts file in place: the engine's bind mount holds the file's inode, so a new
/// file renamed over it would not be seen.
fn rewrite(hosts: &Path, entries: &str) {
    std::fs::write(hosts, entries).expect("rewrite the hosts file");
}

/// One connection to `addr` that echoes a message, or why not.
fn echo_once(addr: SocketAddr) -> Result<(), String> {
    let mut s = try_connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    try_echo_roundtrip(&mut s, b"through a name").map_err(|e| format!("echo via {addr}: {e}"))
}

/// After the name moved: connections through `addr` get through again soon (the `engine`
/// looked the name up again after a failure), and keep doing so.
fn follows_the_name(addr: SocketAddr, engine: &Proc) {
    assert!(
        wait_until(SOON, || echo_once(addr).is_ok()),
        "it follows the name to its new address:\n{}",
        engine.log()
    );
    for _ in 0..3 {
        echo_once(addr).expect("and stays there");
    }
}

/// The debug line each engine logs when a connection goes on to the name's next address.
const NEXT_ADDRESS: &str = "trying its next";
/// Why a connect to a silent address failed, in that line.
const TIMED_OUT: &str = "no connection within 300ms";

/// Three connections through `addr` each echo; `engine`'s log shows that the first went on from
/// `tried` (a piece of its debug line), which failed with `why`, to the name's next address,
/// and that no tunnel stream was reset.
fn through_the_next_address(addr: SocketAddr, engine: &Proc, tried: &str, why: &str) {
    for _ in 0..3 {
        echo_once(addr).expect("every connection gets through");
    }
    let log = engine.log();
    assert!(
        log.lines()
            .any(|l| l.contains(NEXT_ADDRESS) && l.contains(tried) && l.contains(why))
            && !log.contains("cannot reach the service"),
        "the first connection tried {tried} first ({why}), then the next address, and none was \
         lost:\n{log}"
    );
}

/// A client on port `cp` whose upstream is `target.test:{sp}` through `hosts`, logging at
/// debug, with a short connect timeout.
fn client_cmd(pki: &Pki, hosts: &Path, sp: u16, cp: u16, driver: &str) -> EngineCmd {
    EngineCmd::new("client")
        .opt("--listen", localhost(cp).to_string())
        .opt("--connect", format!("target.test:{sp}"))
        .opt("--ca", &pki.ca.path)
        .opt("--sni", "localhost")
        .common(driver)
        .set("--log-level", "debug")
        .set("--connect-timeout", CONNECT_TIMEOUT)
        .hosts(hosts)
        .wait_port(cp)
}

/// [`client_cmd`] on a free port, started; and its port.
fn named_client(pki: &Pki, hosts: &Path, sp: u16, driver: &str) -> (Proc, u16) {
    let cp = free_port();
    (client_cmd(pki, hosts, sp, cp, driver).start(), cp)
}

/// A server on `addr` in front of `backend`.
fn server_on(addr: SocketAddr, backend: &Backend, pki: &Pki, driver: &str) -> Proc {
    EngineCmd::new("server")
        .opt("--listen", addr.to_string())
        .opt("--connect", backend.addr.to_string())
        .opt("--cert", &pki.server.cert)
        .opt("--key", &pki.server.key)
        .common(driver)
        .wait_port(addr.port())
        .start()
}

/// A tunnel of one service, `svc`, through `relay`, both agents up: the destination's target is
/// `target.test:{port}` through `hosts` (logging at debug, with a short connect timeout). The
/// destination, the source and the source's port.
fn named_destination(
    relay: &Relay,
    pki: &Pki,
    hosts: &Path,
    port: u16,
    driver: &str,
) -> (Proc, Proc, u16) {
    let (id, src_token, dst_token) = relay.open(&["svc"]);
    let dst = AgentSetup::destination(&dst_token)
        .services(vec![format!("svc=target.test:{port}")])
        .lines(&format!("connect_timeout = \"{CONNECT_TIMEOUT}\"\n"))
        .log_level("debug")
        .hosts(hosts)
        .start(relay.addr(), pki, driver);
    let sp = free_port();
    let src = AgentSetup::source(&src_token)
        .listen("svc", sp)
        .start(relay.addr(), pki, driver);
    assert!(
        wait_until(SOON, || relay.both_connected(&id) && connection_up(&src)),
        "both agents connect"
    );
    (dst, src, sp)
}

/// A client whose upstream's name gives a dead address first reaches the server on the next
/// within every connection (none is lost); when the name moves, it follows.
#[test]
fn a_client_dials_the_next_address_of_its_upstream_and_follows_it_when_it_moves() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = hosts_file(dir.path(), DEAD_FIRST);
    for driver in DRIVERS {
        rewrite(&hosts, DEAD_FIRST);
        let backend = echo_backend();
        let sp = free_port();
        let server = EngineCmd::server(sp, backend.addr, &pki.server, driver).start();
        let (client, cp) = named_client(&pki, &hosts, sp, driver);
        through_the_next_address(localhost(cp), &client, "[::1]", "refused");

        // The server moves to 127.0.0.2, same port; the name says so.
        drop(server);
        let _server = server_on(
            SocketAddr::from(([127, 0, 0, 2], sp)),
            &backend,
            &pki,
            driver,
        );
        rewrite(&hosts, MOVED);
        follows_the_name(localhost(cp), &client);
    }
}

/// A destination whose target's name gives a dead address first reaches the target on the
/// next within every stream (none is reset); when the name moves, it follows.
#[test]
fn a_destination_dials_the_next_address_of_its_target_and_follows_it_when_it_moves() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = hosts_file(dir.path(), DEAD_FIRST);
    for driver in DRIVERS {
        rewrite(&hosts, DEAD_FIRST);
        let relay = RelaySetup::new(&pki, driver).state(":memory:").run_config();
        let backend = echo_backend();
        let port = backend.addr.port();
        let (dst, _src, sp) = named_destination(&relay, &pki, &hosts, port, driver);
        through_the_next_address(localhost(sp), &dst, "[::1]", "refused");

        // The target moves to 127.0.0.2, same port; the name says so.
        drop(backend);
        let _moved = echo_backend_on(SocketAddr::from(([127, 0, 0, 2], port)));
        rewrite(&hosts, MOVED);
        follows_the_name(localhost(sp), &dst);
    }
}

/// A client whose upstream's first address drops SYNs reaches the server on the next within the
/// connection that timed out (none is lost); later connections start at the next address.
#[test]
fn a_client_whose_upstream_address_times_out_dials_the_next_within_the_connection() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = hosts_file(dir.path(), SILENT_FIRST);
    for driver in DRIVERS {
        let backend = echo_backend();
        let sp = free_port();
        let _silent = silent_listener(localhost(sp));
        let _server = server_on(SocketAddr::from((SECOND, sp)), &backend, &pki, driver);
        let (client, cp) = named_client(&pki, &hosts, sp, driver);
        through_the_next_address(localhost(cp), &client, "tried=127.0.0.1:", TIMED_OUT);
        let log = client.log();
        assert_eq!(
            log.matches(NEXT_ADDRESS).count(),
            1,
            "only the first connection met the silent address:\n{log}"
        );
    }
}

/// A destination whose target's first address drops SYNs reaches the target on the next
/// within the stream whose connect timed out (none is reset).
#[test]
fn a_destination_whose_target_address_times_out_dials_the_next_within_the_stream() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = hosts_file(dir.path(), SILENT_FIRST);
    for driver in DRIVERS {
        let relay = RelaySetup::new(&pki, driver).state(":memory:").run_config();
        let port = free_port();
        let _backend = echo_backend_on(SocketAddr::from((SECOND, port)));
        let _silent = silent_listener(localhost(port));
        let (dst, _src, sp) = named_destination(&relay, &pki, &hosts, port, driver);
        through_the_next_address(localhost(sp), &dst, "tried=127.0.0.1:", TIMED_OUT);
    }
}

/// A client whose upstream's name does not resolve at start does not start, and says how to
/// start anyway. With `--unresolved-upstream reset` it starts with a warning, resets each
/// connection saying why, and reaches the upstream once the name resolves.
#[test]
fn a_client_whose_upstream_does_not_resolve_fails_or_starts_and_resets_until_it_does() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = hosts_file(dir.path(), UNKNOWN);
    let (status, stderr) =
        client_cmd(&pki, &hosts, free_port(), free_port(), "uring").run_to_exit();
    assert!(
        !status.success()
            && stderr.contains("target.test")
            && stderr.contains("cannot resolve")
            && stderr.contains("unresolved_upstream = \"reset\""),
        "by default an upstream that does not resolve stops the start ({status}):\n{stderr}"
    );
    // `check` warns, naming the file, the line and the key.
    let config = dir.path().join("reset.toml");
    let table = format!(
        "[[forwarder]]\nmode = \"client\"\nlisten = \"127.0.0.1:{}\"\nconnect = \"target.test:{}\"\n\
         unresolved_upstream = \"reset\"\n",
        free_port(),
        free_port()
    );
    std::fs::write(&config, table).expect("write the config");
    let (status, stderr) = EngineCmd::new("check")
        .opt("--config", &config)
        .hosts(&hosts)
        .run_to_exit();
    assert!(
        status.success()
            && stderr.contains("warning: ")
            && stderr.contains("line 4:")
            && stderr.contains("`connect`")
            && stderr.contains("does not resolve now"),
        "check passes with a warning ({status}):\n{stderr}"
    );
    for driver in DRIVERS {
        rewrite(&hosts, UNKNOWN);
        let backend = echo_backend();
        let sp = free_port();
        let _server = EngineCmd::server(sp, backend.addr, &pki.server, driver).start();
        let cp = free_port();
        let client = client_cmd(&pki, &hosts, sp, cp, driver)
            .set("--unresolved-upstream", "reset")
            .start();
        assert!(
            client
                .log()
                .contains("the upstream's name does not resolve yet"),
            "it starts with a warning:\n{}",
            client.log()
        );
        assert!(
            echo_once(localhost(cp)).is_err(),
            "a connection before the name resolves is reset"
        );
        assert!(
            client.wait_log(SOON, |l| l
                .contains("the upstream's name does not resolve:")),
            "and the access line says why:\n{}",
            client.log()
        );
        rewrite(&hosts, HERE);
        follows_the_name(localhost(cp), &client);
    }
}

//! Hand-off between shards: with `balance = "round-robin"` each shard hands the connections it
//! accepts to every shard in turn, so most connections are served by a shard other than the one
//! that accepted them. Both modes (a client-mode forwarder in front of a server-mode one, in one
//! `run` process with two shards), both drivers: every byte arrives, and the counter of
//! connections handed off shows that hand-offs happened.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// A `run` process with two shards on `driver` and `balance = "round-robin"`: forwarder
/// `plain-in` (client mode) in front of `tls-in` (server mode) in front of `backend`. Returns
/// the process, the entry port and the metrics port.
fn start_chain(driver: &str, pki: &Pki, backend: SocketAddr, drain: &str) -> (Proc, u16, u16) {
    let (cp, sp, mp) = (free_port(), free_port(), free_port());
    let text = format!(
        r#"
threads = 2
driver = "{driver}"
balance = "round-robin"
log_level = "info"
metrics = {metrics}
drain_timeout = "{drain}"

[[forwarder]]
name = "plain-in"
mode = "client"
listen = {cl}
connect = {sv}
ca = {ca}
sni = "localhost"

[[forwarder]]
name = "tls-in"
mode = "server"
listen = {sv}
connect = {backend}
cert = {cert}
key = {key}
"#,
        metrics = q(localhost(mp)),
        cl = q(localhost(cp)),
        sv = q(localhost(sp)),
        ca = q(pki.ca.path.display()),
        backend = q(backend),
        cert = q(pki.server.cert.display()),
        key = q(pki.server.key.display()),
    );
    let config = pki.path().join(format!("round-robin-{cp}.toml"));
    write_file(&config, text.as_bytes());
    let engine = EngineCmd::new("run")
        .opt("--config", &config)
        .wait_port(cp)
        .wait_port(sp)
        .wait_port(mp)
        .label(format!("run, round-robin ({driver})"))
        .start();
    (engine, cp, mp)
}

fn round_robin(driver: &str) {
    const CONNS: usize = 60;
    const EACH: u64 = 256 * 1024;
    const WORKERS: usize = 10;
    let pki = Pki::new();
    let backend = echo_backend();
    let (_engine, cp, mp) = start_chain(driver, &pki, backend.addr, "10s");

    // All open at once, so that both shards hold several while bytes move.
    let deadline = Instant::now() + Duration::from_secs(150);
    let socks: Vec<TcpStream> = (0..CONNS).map(|_| connect(localhost(cp))).collect();
    let mut groups: Vec<Vec<(usize, TcpStream)>> = (0..WORKERS).map(|_| Vec::new()).collect();
    for (i, s) in socks.into_iter().enumerate() {
        groups[i % WORKERS].push((i, s));
    }
    let workers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            spawn("handoff-worker", move || {
                let mut errors = Vec::new();
                for (i, sock) in group {
                    if Instant::now() > deadline {
                        errors.push(format!("conn {i}: overall deadline passed"));
                        continue;
                    }
                    let mut reader = sock.try_clone().expect("clone");
                    let r = thread::spawn(move || read_hashed(&mut reader));
                    let mut w = sock;
                    let sent = write_random(&mut w, EACH, 7000 + i as u64, None);
                    let _ = w.shutdown(Shutdown::Write);
                    match (sent, r.join().expect("reader")) {
                        (Ok(sent), Ok((n, got))) if n == EACH && got == sent => {}
                        (sent, got) => errors.push(format!("conn {i}: sent {sent:?}, got {got:?}")),
                    }
                }
                errors
            })
        })
        .collect();
    let errors: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker thread"))
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {CONNS} connections failed; first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );

    // Each shard hands every other connection it accepts (of either forwarder: the turn is
    // the shard's) to the other shard, starting with the first: at least half of the 2 x CONNS
    // accepted connections moved, of both forwarders, and all of them ended cleanly.
    let mut handed_total = 0.0;
    for name in ["plain-in", "tls-in"] {
        let labels = [("forwarder", name)];
        let m = wait_metric(localhost(mp), "splice_connections_active", &labels, |v| {
            v == 0.0
        });
        let accepted = m.value("splice_connections_accepted_total", &labels);
        let handed = m.value("splice_connections_handed_off_total", &labels);
        assert_eq!(
            accepted, CONNS as f64,
            "{name}: accepted; metrics:\n{}",
            m.text
        );
        assert!(
            handed > 0.0 && handed <= CONNS as f64,
            "{name}: {handed} of {CONNS} connections handed off; metrics:\n{}",
            m.text
        );
        handed_total += handed;
        let errors = m.value("splice_connection_errors_total", &labels);
        assert_eq!(errors, 0.0, "{name}: errors; metrics:\n{}", m.text);
        let bytes = m.value("splice_bytes_total", &labels);
        assert_eq!(
            bytes,
            (2 * CONNS as u64 * EACH) as f64,
            "{name}: bytes both ways"
        );
    }
    assert!(
        handed_total >= CONNS as f64,
        "{handed_total} of {} accepted connections handed off",
        2 * CONNS
    );
}

#[test]
fn round_robin_uring() {
    round_robin(DRIVERS[0]);
}

#[test]
fn round_robin_epoll() {
    round_robin(DRIVERS[1]);
}

/// SIGTERM while connections handed to either shard are open: the engine keeps serving every
/// one of them (each shard waits for the connections it adopted), and exits 0 once they close.
fn round_robin_drain(driver: &str) {
    const CONNS: usize = 8;
    let pki = Pki::new();
    let backend = echo_backend();
    let (mut engine, cp, mp) = start_chain(driver, &pki, backend.addr, "120s");
    let mut open: Vec<TcpStream> = (0..CONNS).map(|_| connect(localhost(cp))).collect();
    for (i, s) in open.iter_mut().enumerate() {
        echo_roundtrip(s, format!("before SIGTERM {i}").as_bytes());
    }
    let m = scrape(localhost(mp));
    let handed = m.value("splice_connections_handed_off_total", &[]);
    assert!(
        handed > 0.0,
        "no hand-off before the drain; metrics:\n{}",
        m.text
    );

    engine.signal(libc::SIGTERM);
    assert!(
        wait_until(SOON, || try_connect(localhost(cp)).is_err()),
        "new connections were still accepted {SOON:?} after SIGTERM"
    );
    for (i, s) in open.iter_mut().enumerate() {
        echo_roundtrip(s, &random_bytes(256 * 1024, 900 + i as u64));
    }
    assert!(engine.running(), "the engine exited during the drain");
    for s in open {
        let _ = s.shutdown(Shutdown::Write);
        let mut s = s;
        let (rest, end) = read_until_end(&mut s);
        assert!(
            rest.is_empty() && matches!(end, End::Eof),
            "after the half-close: {rest:?} {end:?}"
        );
    }
    let status = engine.wait_exit(SOON).unwrap_or_else(|| {
        panic!(
            "the engine did not exit after its last connection closed:\n{}",
            engine.log()
        )
    });
    assert_eq!(status.code(), Some(0), "exit status after the drain");
}

#[test]
fn round_robin_drain_uring() {
    round_robin_drain(DRIVERS[0]);
}

#[test]
fn round_robin_drain_epoll() {
    round_robin_drain(DRIVERS[1]);
}

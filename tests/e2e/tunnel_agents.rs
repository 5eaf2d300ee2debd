//! The tunnel's source and destination agents (`[[source]]`, `[[destination]]` in `run
//! --config`), each in its own engine process, through a relay: services, many connections,
//! version fall-back, a target out of reach, reconnects, a close frame.
//!
//! They run through our relay (`[[relay]]`, tunnels opened with its API) and some also
//! through `WsRelay`, a relay written with tungstenite in the test (an independent WebSocket
//! implementation), so the agents are not only compatible with our relay.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Sends `total` random bytes through `addr` (an echo behind the tunnel) while reading them
/// back; true when every byte came back in order.
fn echo_through(addr: SocketAddr, total: u64, seed: u64) -> Result<(), String> {
    echo_within(addr, total, seed, IO_TIMEOUT)
}

/// [`echo_through`], failing when a read waits longer than `timeout`.
fn echo_within(addr: SocketAddr, total: u64, seed: u64, timeout: Duration) -> Result<(), String> {
    let sock = try_connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    sock.set_read_timeout(Some(timeout)).ok();
    let mut w = sock.try_clone().expect("clone");
    let writer = spawn("echo-writer", move || {
        write_random(&mut w, total, seed, None)
    });
    let mut r = (&sock).take(total);
    let got = read_hashed(&mut r).map_err(|(n, _, e)| format!("read after {n} bytes: {e}"))?;
    let sent = writer
        .join()
        .expect("writer thread")
        .map_err(|e| format!("write: {e}"))?;
    let _ = sock.shutdown(Shutdown::Both);
    if got.0 != total {
        return Err(format!("{} of {total} bytes came back", got.0));
    }
    if got.1 != sent {
        return Err("the bytes came back altered".into());
    }
    Ok(())
}

/// `n` echo round trips of `each` bytes at once on every address; panics on any failure.
fn echo_many(addrs: &[SocketAddr], n: usize, each: u64) {
    let mut threads = Vec::new();
    for (i, &addr) in addrs.iter().enumerate() {
        for k in 0..n {
            let seed = (i * 1000 + k) as u64;
            threads.push(spawn("echo-client", move || echo_through(addr, each, seed)));
        }
    }
    let failed: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().expect("client thread").err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// The relay a test runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Ours: `[[relay]]` in an engine process, tunnels opened with its API.
    Ours,
    /// The tungstenite relay of the test.
    Ws,
}

/// Our relay in its own engine process, its registry at `state`, agents on `port` if given.
fn our_relay(pki: &Pki, driver: &str, state: &str, port: Option<u16>) -> Relay {
    RelaySetup::new(pki, driver)
        .state(state)
        .port(port)
        .run_config()
}

enum RelayUnderTest {
    Ours(Relay, String),
    Ws(WsRelay),
}

struct Tunnel {
    relay: RelayUnderTest,
    relay_addr: SocketAddr,
    source: Proc,
    destination: Proc,
    ports: Vec<u16>,
    _backends: Vec<Backend>,
    /// The destination's table, to start it again.
    dst: AgentSetup,
    dst_token: String,
    driver: String,
}

impl Tunnel {
    /// Starts another destination agent with the same table (the first one is gone).
    fn restart_destination(&mut self, pki: &Pki) {
        self.destination = self.dst.start(self.relay_addr, pki, &self.driver);
    }
}

impl Tunnel {
    /// Waits until both agents are connected through the relay.
    fn wait_paired(&self, upgrades: usize) {
        let ok = wait_until(SOON, || match &self.relay {
            RelayUnderTest::Ours(r, id) => r.both_connected(id) && connection_up(&self.source),
            RelayUnderTest::Ws(r) => {
                r.upgrades.lock().unwrap().len() >= upgrades
                    && r.connected.load(Ordering::SeqCst) == 2
            }
        });
        assert!(
            ok,
            "both agents connect; source log:\n{}\ndestination log:\n{}",
            self.source.log(),
            self.destination.log()
        );
    }
}

/// A relay, a destination with an echo backend per service, and a source listening for each.
fn tunnel(
    via: Via,
    pki: &Pki,
    driver: &str,
    services: &[&str],
    src_protocol: &str,
    dst_protocol: &str,
    client_token: Option<&str>,
) -> Tunnel {
    let backends = services.iter().map(|_| echo_backend()).collect();
    let protocols = (src_protocol, dst_protocol);
    tunnel_with(
        via,
        pki,
        driver,
        services,
        protocols,
        client_token,
        backends,
        ("", ""),
    )
}

/// [`tunnel`] with `backends` (one per service) and `extra` lines for the source's and the
/// destination's tables.
#[allow(
    clippy::too_many_arguments,
    reason = "a test helper with its tunnel's every knob"
)]
fn tunnel_with(
    via: Via,
    pki: &Pki,
    driver: &str,
    services: &[&str],
    (src_protocol, dst_protocol): (&str, &str),
    client_token: Option<&str>,
    backends: Vec<Backend>,
    (src_extra, dst_extra): (&str, &str),
) -> Tunnel {
    let relay_services: Vec<&str> = services.iter().copied().filter(|s| !s.is_empty()).collect();
    let (relay, relay_addr, src_token, dst_token) = match via {
        Via::Ours => {
            let r = our_relay(pki, driver, ":memory:", None);
            let (id, src, dst) = r.open(&relay_services);
            let addr = r.addr();
            (RelayUnderTest::Ours(r, id), addr, src, dst)
        }
        Via::Ws => {
            let r = WsRelay::start(&pki.server, &relay_services, 3);
            let addr = r.addr;
            (RelayUnderTest::Ws(r), addr, "t".into(), "t".into())
        }
    };
    let ports: Vec<u16> = services.iter().map(|_| free_port()).collect();
    let named = |s: &str, addr: String| {
        if s.is_empty() {
            addr
        } else {
            format!("{s}={addr}")
        }
    };
    let dst = AgentSetup::destination(&dst_token)
        .services(
            services
                .iter()
                .zip(&backends)
                .map(|(s, b)| named(s, b.addr.to_string()))
                .collect(),
        )
        .protocol(dst_protocol)
        .client_token(client_token)
        .lines(dst_extra);
    let destination = dst.start(relay_addr, pki, driver);
    let source = AgentSetup::source(&src_token)
        .services(
            services
                .iter()
                .zip(&ports)
                .map(|(s, p)| named(s, localhost(*p).to_string()))
                .collect(),
        )
        .wait_ports(&ports)
        .protocol(src_protocol)
        .client_token(client_token)
        .lines(src_extra)
        .start(relay_addr, pki, driver);
    let t = Tunnel {
        relay,
        relay_addr,
        source,
        destination,
        ports,
        _backends: backends,
        dst,
        dst_token,
        driver: driver.to_string(),
    };
    t.wait_paired(2);
    t
}

fn addrs(t: &Tunnel) -> Vec<SocketAddr> {
    t.ports.iter().map(|&p| localhost(p)).collect()
}

#[test]
fn several_services_many_connections() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let t = tunnel(Via::Ours, &pki, driver, &["ssh", "web"], "v3", "v3", None);
        // 200 connections at once, 125 MiB each way, every byte checked.
        echo_many(&addrs(&t), 100, 640 * 1024);
    }
}

#[test]
fn through_an_independent_relay() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let t = tunnel(Via::Ws, &pki, driver, &["ssh", "web"], "v3", "v3", None);
        echo_many(&addrs(&t), 10, 256 * 1024);
        let RelayUnderTest::Ws(r) = &t.relay else {
            unreachable!()
        };
        let up = r.upgrades.lock().unwrap().clone();
        assert!(
            up.iter()
                .all(|u| u.protocol == "aws.iot.securetunneling-3.0"),
            "{up:?}"
        );
    }
}

#[test]
fn version_pairings() {
    let pki = Pki::new();
    for driver in DRIVERS {
        for (src, dst, services) in [
            ("v3", "v2", &["ssh", "web"][..]),
            ("v2", "v3", &["ssh"][..]),
            ("v3", "v1", &[""][..]),
            ("v1", "v3", &[""][..]),
            ("v2", "v2", &["ssh"][..]),
            ("v1", "v1", &[""][..]),
        ] {
            let t = tunnel(Via::Ours, &pki, driver, services, src, dst, None);
            // V1 and V2 carry one connection per service at a time.
            for k in 0..3 {
                for addr in addrs(&t) {
                    echo_through(addr, 300_000, k).unwrap_or_else(|e| {
                        panic!("{src} source, {dst} destination ({driver}): {e}\nsource:\n{}\ndestination:\n{}", t.source.log(), t.destination.log())
                    });
                }
            }
        }
    }
}

#[test]
fn target_down_resets_only_its_stream() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = our_relay(&pki, driver, ":memory:", None);
        let (_, src_token, dst_token) = relay.open(&["up", "down"]);
        let backend = echo_backend();
        let dead = {
            // A port nobody listens on.
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (pu, pd) = (free_port(), free_port());
        let _dst = AgentSetup::destination(&dst_token)
            .services(vec![format!("up={}", backend.addr), format!("down={dead}")])
            .start(relay.addr(), &pki, driver);
        let _src = AgentSetup::source(&src_token)
            .listen("up", pu)
            .listen("down", pd)
            .start(relay.addr(), &pki, driver);
        assert!(wait_until(SOON, || echo_within(
            localhost(pu),
            10,
            0,
            Duration::from_secs(2)
        )
        .is_ok()));
        // A long transfer on "up" runs while "down" fails.
        let long = spawn("long", move || echo_through(localhost(pu), 8 << 20, 7));
        for _ in 0..3 {
            no_byte_back(localhost(pd));
        }
        long.join()
            .unwrap()
            .expect("the other service's transfer is untouched");
        echo_through(localhost(pu), 1000, 1).expect("and it still works");
    }
}

/// A connection to a source's service whose stream the destination resets: the bytes sent get
/// nothing back (a close or a reset, which may reach the connect itself).
fn no_byte_back(addr: SocketAddr) {
    let Ok(mut s) = try_connect(addr) else {
        return;
    };
    s.set_read_timeout(Some(SOON)).unwrap();
    let _ = s.write_all(b"hello");
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{n} bytes from a service whose stream was reset"),
    }
}

/// A destination whose target's name does not resolve starts (a device's service may come up
/// after it), says so, and resets that service's streams, saying why, while the other service
/// carries bytes; `check` warns with the line and the key.
#[test]
fn a_target_that_does_not_resolve_resets_only_its_streams() {
    let pki = Pki::new();
    let relay = our_relay(&pki, "auto", ":memory:", None);
    let (_, src_token, dst_token) = relay.open(&["up", "gone"]);
    let backend = echo_backend();
    let (pu, pg) = (free_port(), free_port());
    let dst = AgentSetup::destination(&dst_token)
        .services(vec![
            format!("up={}", backend.addr),
            "gone=no-such-host.invalid:80".to_string(),
        ])
        .start(relay.addr(), &pki, "auto");
    let _src = AgentSetup::source(&src_token)
        .listen("up", pu)
        .listen("gone", pg)
        .start(relay.addr(), &pki, "auto");
    assert!(
        dst.wait_log(SOON, |l| l.contains("WARN")
            && l.contains("the service's target does not resolve yet")
            && l.contains("no-such-host.invalid:80")),
        "{}",
        dst.log()
    );
    assert!(wait_until(SOON, || echo_within(
        localhost(pu),
        10,
        0,
        Duration::from_secs(2)
    )
    .is_ok()));
    for _ in 0..2 {
        no_byte_back(localhost(pg));
    }
    assert!(
        dst.wait_log(SOON, |l| l.contains("cannot reach the service")
            && l.contains("service=gone")
            && l.contains("the service's target does not resolve: ")),
        "{}",
        dst.log()
    );
    echo_through(localhost(pu), 100_000, 3).expect("the other service carries on");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dst.toml");
    std::fs::write(
        &file,
        format!(
            "[[destination]]\nrelay = \"127.0.0.1:{}\"\ntoken = \"a-token\"\n\
             connect = [\"gone=no-such-host.invalid:80\"]\n",
            relay.port
        ),
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("line 4") && stderr.contains("`connect`"),
        "{stderr}"
    );
}

#[test]
fn reconnect_after_drop_with_client_token() {
    let pki = Pki::new();
    let token = "0123456789abcdef-0123456789ABCDEF-xyz";
    for (driver, client_token) in [("epoll", None), ("uring", Some(token))] {
        let t = tunnel(Via::Ws, &pki, driver, &["ssh"], "v3", "v3", client_token);
        let RelayUnderTest::Ws(relay) = &t.relay else {
            unreachable!()
        };
        echo_through(localhost(t.ports[0]), 100_000, 1).unwrap();
        relay.kick.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(
            wait_until(SOON, || relay.upgrades.lock().unwrap().len() >= 4
                && relay.connected.load(Ordering::SeqCst) == 2),
            "both agents reconnect; source log:\n{}",
            t.source.log()
        );
        let up = relay.upgrades.lock().unwrap().clone();
        assert!(
            up.iter().all(|u| u.client_token.as_deref() == client_token),
            "{up:?}"
        );
        // The test relay drops what comes while the other peer is away: try again until
        // both are back.
        let again = || echo_within(localhost(t.ports[0]), 100_000, 2, Duration::from_secs(2));
        assert!(wait_until(SOON, || again().is_ok()), "{:?}", again());
        assert!(
            t.source.log().contains("reconnecting"),
            "{}",
            t.source.log()
        );
        assert!(
            !t.source.log().contains("\"t\""),
            "the token never reaches a log"
        );
    }
}

#[test]
fn close_frame_makes_the_agents_give_up() {
    let pki = Pki::new();
    let t = tunnel(Via::Ws, &pki, "epoll", &["ssh"], "v3", "v3", None);
    let RelayUnderTest::Ws(relay) = &t.relay else {
        unreachable!()
    };
    echo_through(localhost(t.ports[0]), 1000, 1).unwrap();
    relay.close.store(true, std::sync::atomic::Ordering::SeqCst);
    for p in [&t.source, &t.destination] {
        assert!(
            p.wait_log(SOON, |l| l.contains("gave up")
                && l.contains("closed the tunnel")),
            "{}",
            p.log()
        );
    }
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        relay.upgrades.lock().unwrap().len(),
        2,
        "no reconnect after a close frame"
    );
}

/// An echo through the tunnel works again soon (reads wait 2 s each try).
fn echo_again(port: u16) {
    let again = || echo_within(localhost(port), 100_000, 9, Duration::from_secs(2));
    assert!(wait_until(SOON, || again().is_ok()), "{:?}", again());
}

#[test]
fn destination_killed_and_started_again() {
    let pki = Pki::new();
    let token = "fedcba9876543210-FEDCBA9876543210-abc";
    for (driver, client_token) in [("uring", Some(token)), ("epoll", None)] {
        let mut t = tunnel(Via::Ours, &pki, driver, &["ssh"], "v3", "v3", client_token);
        echo_through(localhost(t.ports[0]), 100_000, 1).unwrap();
        // A connection open through the tunnel when its destination dies is cut, not hung.
        let mut open = connect(localhost(t.ports[0]));
        open.set_read_timeout(Some(SOON)).unwrap();
        open.write_all(b"ping").unwrap();
        let mut four = [0u8; 4];
        open.read_exact(&mut four).unwrap();
        t.destination.signal(libc::SIGKILL);
        let mut rest = Vec::new();
        let _ = open.read_to_end(&mut rest);
        assert!(rest.is_empty(), "nothing after the destination died");
        t.restart_destination(&pki);
        if client_token.is_some() {
            // Its client token lets the same access token in again.
            echo_again(t.ports[0]);
        } else {
            // A single-use token: the new destination is refused and gives up.
            assert!(
                t.destination
                    .wait_log(SOON, |l| l.contains("gave up") && l.contains("answered 4")),
                "{}",
                t.destination.log()
            );
            assert!(
                !t.destination.log().contains(&t.dst_token),
                "no token in the log"
            );
        }
    }
}

/// The relay stops (killed, or SIGTERM: a relay going down for a restart or an upgrade) and
/// comes back on the same port with its registry: both agents reconnect, although they were
/// not told to keep trying, and the tunnel carries bytes again.
#[test]
fn relay_restart_with_registry_on_disk() {
    for graceful in [false, true] {
        relay_restart(graceful);
    }
}

fn relay_restart(graceful: bool) {
    let pki = Pki::new();
    let token = "0123456789abcdef-FEDCBA9876543210-abc";
    let driver = if graceful { "uring" } else { "epoll" };
    let state = pki.dir.path().join("relay.sqlite");
    let state = state.to_str().unwrap();
    let relay = our_relay(&pki, driver, state, None);
    let (id, src_token, dst_token) = relay.open(&["ssh"]);
    let backend = echo_backend();
    let port = free_port();
    let _dst = AgentSetup::destination(&dst_token)
        .services(vec![format!("ssh={}", backend.addr)])
        .client_token(Some(token))
        .start(relay.addr(), &pki, driver);
    let src = AgentSetup::source(&src_token)
        .listen("ssh", port)
        .client_token(Some(token))
        .start(relay.addr(), &pki, driver);
    assert!(wait_until(SOON, || relay.both_connected(&id) && connection_up(&src)));
    echo_through(localhost(port), 100_000, 1).unwrap();
    let relay_port = relay.port;
    if graceful {
        let mut relay = relay;
        relay.proc.signal(libc::SIGTERM);
        let status = relay.proc.wait_exit(SOON);
        assert!(
            status.is_some_and(|s| s.success()),
            "the relay drains and exits: {status:?}\n{}",
            relay.proc.log()
        );
    } else {
        drop(relay);
    }
    let relay = our_relay(&pki, driver, state, Some(relay_port));
    assert!(
        wait_until(SOON, || relay.both_connected(&id)),
        "both agents are back; source:\n{}\nrelay:\n{}",
        src.log(),
        relay.proc.log()
    );
    echo_again(port);
    assert!(relay.config.as_ref().is_some_and(|c| c.exists()));
}

#[test]
fn slow_reader_keeps_memory_bounded() {
    let pki = Pki::new();
    for driver in DRIVERS {
        // A backend that sends 256 MiB as fast as it can to a reader that waits.
        let total: u64 = 256 << 20;
        let sent = Arc::new(AtomicU64::new(0));
        let firehose = {
            let sent = sent.clone();
            Backend::spawn(move |mut sock| {
                let _ = write_random(&mut sock, total, 5, Some(&sent));
            })
        };
        let t = tunnel_with(
            Via::Ours,
            &pki,
            driver,
            &["bulk"],
            ("v3", "v3"),
            None,
            vec![firehose],
            ("", ""),
        );
        let (src, port) = (&t.source, t.ports[0]);
        let rss_before = src.rss_kib();
        let mut reader = connect(localhost(port));
        reader.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // The reader takes nothing for a while: the backend must be held back, and the
        // source must not buffer what it cannot deliver.
        // (The kernel's socket buffers on the way take what they may: here up to 32 MiB
        // each, so the test asserts that the flow stops, not where.)
        // Filling them takes about 3 s in a release build, longer in a debug build on a busy
        // machine: wait (up to SOON) for a second in which less than 1 MiB more was sent.
        let start = Instant::now();
        let mut held = sent.load(Ordering::SeqCst);
        let mut later;
        loop {
            thread::sleep(Duration::from_secs(1));
            later = sent.load(Ordering::SeqCst);
            if later - held < 1 << 20 || start.elapsed() > SOON {
                break;
            }
            held = later;
        }
        let rss = src.rss_kib();
        assert!(
            held < total && later - held < 1 << 20,
            "the backend went on sending ({held}, then {later} bytes a second later, after \
             {:?}) to a reader that reads nothing ({driver})",
            start.elapsed()
        );
        assert!(
            rss < rss_before + 32 * 1024,
            "source RSS grew from {rss_before} KiB to {rss} KiB ({driver})"
        );
        // Then it reads everything, in order.
        let (n, hash) = read_hashed(&mut (&mut reader).take(total)).expect("read it all");
        assert_eq!(n, total);
        assert_eq!(hash, random_hash(total, 5), "every byte, in order");
    }
}

#[test]
fn tunnel_closed_through_the_api_makes_the_agents_give_up() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let t = tunnel(Via::Ours, &pki, driver, &["ssh"], "v3", "v3", None);
        echo_through(localhost(t.ports[0]), 1000, 1).unwrap();
        let RelayUnderTest::Ours(relay, id) = &t.relay else {
            unreachable!()
        };
        let (status, json) = relay.api("DELETE", &format!("/tunnels/{id}"), "");
        assert_eq!(status, 200, "{json}");
        for p in [&t.source, &t.destination] {
            assert!(
                p.wait_log(SOON, |l| l.contains("gave up")
                    && l.contains("closed the tunnel")),
                "{}",
                p.log()
            );
        }
        // The source closed its listeners: what comes now is refused, nothing hangs.
        if let Ok(mut s) = try_connect(localhost(t.ports[0])) {
            s.set_read_timeout(Some(SOON)).unwrap();
            let mut buf = [0u8; 1];
            assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        }
    }
}

#[test]
fn agent_metrics() {
    let pki = Pki::new();
    let driver = "uring";
    let relay = our_relay(&pki, driver, ":memory:", None);
    let (id, src_token, dst_token) = relay.open(&["ssh"]);
    let backend = echo_backend();
    let (port, metrics) = (free_port(), free_port());
    let _dst = AgentSetup::destination(&dst_token)
        .services(vec![format!("ssh={}", backend.addr)])
        .start(relay.addr(), &pki, driver);
    let src = AgentSetup::source(&src_token)
        .listen("ssh", port)
        .metrics(metrics)
        .start(relay.addr(), &pki, driver);
    assert!(wait_until(SOON, || relay.both_connected(&id) && connection_up(&src)));
    for k in 0..3 {
        echo_through(localhost(port), 100_000, k).unwrap();
    }
    let labels = |dir: &'static str| [("agent", "src"), ("service", "ssh"), ("direction", dir)];
    let m = localhost(metrics);
    assert!(
        wait_until(SOON, || {
            let s = scrape(m);
            s.value("splice_agent_bytes_total", &labels("to_tunnel")) == 300_000.0
                && s.value("splice_agent_bytes_total", &labels("from_tunnel")) == 300_000.0
                && s.value("splice_agent_connections_total", &[("agent", "src")]) == 3.0
                && s.value("splice_agent_connections_active", &[("agent", "src")]) == 0.0
        }),
        "{:?}",
        try_scrape(m).map(|s| format!("{s:?}"))
    );
    let s = scrape(m);
    assert_eq!(s.value("splice_agent_tunnel_up", &[("agent", "src")]), 1.0);
    assert_eq!(
        s.value("splice_agent_tunnel_connects_total", &[("agent", "src")]),
        1.0
    );
}

/// eBPF accounting (docs/ebpf.md; CI runs as root, where the default `ebpf = "auto"` loads
/// it), through a tunnel on both drivers: what the kernel counted on the agents' local
/// sockets, each way, equals the bytes echoed through and the agents' own counters.
#[test]
fn agent_kernel_bytes_equal_the_payload() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = our_relay(&pki, driver, ":memory:", None);
        let (id, src_token, dst_token) = relay.open(&["ssh"]);
        let backend = echo_backend();
        let (port, src_metrics, dst_metrics) = (free_port(), free_port(), free_port());
        let _dst = AgentSetup::destination(&dst_token)
            .services(vec![format!("ssh={}", backend.addr)])
            .metrics(dst_metrics)
            .start(relay.addr(), &pki, driver);
        let src = AgentSetup::source(&src_token)
            .listen("ssh", port)
            .metrics(src_metrics)
            .start(relay.addr(), &pki, driver);
        assert!(wait_until(SOON, || relay.both_connected(&id) && connection_up(&src)));
        let mut total = 0;
        for k in 0..3 {
            echo_through(localhost(port), 100_000 + k, k).unwrap();
            total += 100_000 + k;
        }
        let total = total as f64;
        for (m, name) in [
            (localhost(src_metrics), "src"),
            (localhost(dst_metrics), "dst"),
        ] {
            let counts = |s: &Metrics| {
                [
                    ("splice_agent_kernel_bytes_total", "in"),
                    ("splice_agent_kernel_bytes_total", "out"),
                    ("splice_agent_bytes_total", "to_tunnel"),
                    ("splice_agent_bytes_total", "from_tunnel"),
                ]
                .map(|(metric, dir)| s.value(metric, &[("agent", name), ("direction", dir)]))
            };
            assert!(
                wait_until(SOON, || counts(&scrape(m)) == [total; 4]),
                "{name} ({driver}): {:?} are not all {total}:\n{}",
                counts(&scrape(m)),
                scrape(m).text
            );
        }
    }
}

/// A TCP proxy of the test between an agent and the relay, for one connection: it counts
/// the bytes it wrote to the relay and read from it (the relay's socket's TCP payload, each
/// way), and ends cleanly: it reads from the relay until the relay's end, whatever the
/// agent does.
struct CountingProxy {
    addr: SocketAddr,
    /// Written to the relay, read from the relay.
    counts: Arc<[AtomicU64; 2]>,
    done: Arc<AtomicU64>,
}

impl CountingProxy {
    fn start(relay: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let done = Arc::new(AtomicU64::new(0));
        let (c, d) = (counts.clone(), done.clone());
        spawn("counting-proxy", move || {
            let Ok((agent, _)) = listener.accept() else {
                return;
            };
            let up = connect(relay);
            for (mut from, mut to, i) in [
                (agent.try_clone().unwrap(), up.try_clone().unwrap(), 0),
                (up, agent, 1),
            ] {
                let (c, d) = (c.clone(), d.clone());
                spawn("counting-proxy-copy", move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut to_ok = true;
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        // Toward the relay (i = 0), count what was written; from it (i = 1),
                        // what was read, whether or not the agent still takes it.
                        if i == 1 {
                            c[1].fetch_add(n as u64, Ordering::SeqCst);
                        }
                        let mut off = 0;
                        while to_ok && off < n {
                            match to.write(&buf[off..n]) {
                                Ok(0) | Err(_) => to_ok = false,
                                Ok(k) => {
                                    if i == 0 {
                                        c[0].fetch_add(k as u64, Ordering::SeqCst);
                                    }
                                    off += k;
                                }
                            }
                        }
                        if i == 0 && !to_ok {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                    d.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingProxy { addr, counts, done }
    }

    /// `[written to the relay, read from it]` once both ways have ended.
    fn finished(&self) -> Option<[u64; 2]> {
        (self.done.load(Ordering::SeqCst) == 2)
            .then(|| [0, 1].map(|i| self.counts[i].load(Ordering::SeqCst)))
    }
}

/// eBPF accounting of the relay's peer sockets, on both drivers: each agent reaches the
/// relay through a counting proxy of the test; once the agents have gone, what the kernel
/// counted on the relay's socket of each side (per tunnel and over the relay) equals, exactly,
/// what that side's proxy wrote to the relay and read from it.
#[test]
fn relay_kernel_bytes_equal_the_bytes_on_the_wire() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = RelaySetup::new(&pki, driver).metrics().run_config();
        let (id, src_token, dst_token) = relay.open(&["ssh"]);
        let backend = echo_backend();
        let port = free_port();
        let proxies = [
            CountingProxy::start(relay.addr()),
            CountingProxy::start(relay.addr()),
        ];
        let dst = AgentSetup::destination(&dst_token)
            .services(vec![format!("ssh={}", backend.addr)])
            .start(proxies[1].addr, &pki, driver);
        let src =
            AgentSetup::source(&src_token)
                .listen("ssh", port)
                .start(proxies[0].addr, &pki, driver);
        assert!(wait_until(SOON, || relay.both_connected(&id) && connection_up(&src)));
        let mut total = 0;
        for k in 0..3 {
            echo_through(localhost(port), 200_000 + 7 * k, k).unwrap();
            total += 200_000 + 7 * k;
        }
        drop(src);
        drop(dst);
        assert!(
            wait_until(SOON, || proxies.iter().all(|p| p.finished().is_some())),
            "the proxies end ({driver})"
        );
        let wire = proxies.map(|p| p.finished().expect("finished"));
        // Each side carried every payload byte one way, in TLS records: more than the payload.
        assert!(
            wire.iter().all(|w| w[0] > total && w[1] > total),
            "{wire:?}"
        );
        let m = relay.metrics_addr();
        let kernel = |s: &Metrics, name: &str, extra: &[(&str, &str)]| {
            ["source", "destination"].map(|side| {
                ["in", "out"].map(|dir| {
                    let mut l = vec![("relay", "r"), ("side", side), ("direction", dir)];
                    l.extend_from_slice(extra);
                    s.value(name, &l) as u64
                })
            })
        };
        let tunnel = [("tunnel", id.as_str())];
        let ok = wait_until(SOON, || {
            let s = scrape(m);
            kernel(&s, "splice_relay_tunnel_kernel_bytes_total", &tunnel) == wire
                && kernel(&s, "splice_relay_kernel_bytes_total", &[]) == wire
        });
        let s = scrape(m);
        assert!(
            ok,
            "{driver}: the relay's kernel counts {:?} (tunnel) {:?} (relay) are not the wire's \
             {wire:?}:\n{}",
            kernel(&s, "splice_relay_tunnel_kernel_bytes_total", &tunnel),
            kernel(&s, "splice_relay_kernel_bytes_total", &[]),
            s.text
        );
        // Deleting the tunnel drops its series with its other per-tunnel ones; the relay's
        // totals stay.
        let (status, json) = relay.api("DELETE", &format!("/tunnels/{id}"), "");
        assert_eq!(status, 200, "{json}");
        let gone = |s: &Metrics| {
            !s.has("splice_relay_tunnel_bytes_total", &tunnel)
                && !s.has("splice_relay_tunnel_kernel_bytes_total", &tunnel)
        };
        assert!(wait_until(SOON, || gone(&scrape(m))), "{}", scrape(m).text);
        assert_eq!(
            kernel(&scrape(m), "splice_relay_kernel_bytes_total", &[]),
            wire
        );
    }
}

#[test]
fn keep_trying_reconnects_after_a_close_frame() {
    let pki = Pki::new();
    let driver = "epoll";
    let relay = WsRelay::start(&pki.server, &["ssh"], 3);
    let backend = echo_backend();
    let port = free_port();
    let dst = AgentSetup::destination("t")
        .name("destination")
        .services(vec![format!("ssh={}", backend.addr)])
        .keep_trying()
        .start(relay.addr, &pki, driver);
    let src = AgentSetup::source("t")
        .name("source")
        .listen("ssh", port)
        .keep_trying()
        .start(relay.addr, &pki, driver);
    assert!(wait_until(SOON, || relay.upgrades.lock().unwrap().len() >= 2));
    // The test relay drops what comes while a peer is away (ours resets it): the wait for
    // both peers below is what makes the first connection after the reconnect safe.
    relay.close.store(true, Ordering::SeqCst);
    assert!(
        wait_until(SOON, || relay.upgrades.lock().unwrap().len() >= 4
            && relay.connected.load(Ordering::SeqCst) == 2),
        "both come back; source:\n{}\ndestination:\n{}",
        src.log(),
        dst.log()
    );
    let again = || echo_within(localhost(port), 100_000, 9, Duration::from_secs(2));
    assert!(
        wait_until(SOON, || again().is_ok()),
        "{:?}\nsource:\n{}\ndestination:\n{}",
        again(),
        src.log(),
        dst.log()
    );
    assert!(!src.log().contains("gave up"), "{}", src.log());
}

#[test]
fn a_silent_relay_is_dropped_and_reconnected() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = WsRelay::start(&pki.server, &["ssh"], 3);
        let port = free_port();
        let src = AgentSetup::source("t")
            .listen("ssh", port)
            .lines("ping_after = \"300ms\"\nidle_timeout = \"1s\"\n")
            .start(relay.addr, &pki, driver);
        assert!(wait_until(SOON, || relay.connected.load(Ordering::SeqCst) == 1));
        // Answered pings keep a quiet tunnel up.
        thread::sleep(Duration::from_secs(2));
        assert_eq!(relay.upgrades.lock().unwrap().len(), 1, "{}", src.log());
        relay.mute.store(true, Ordering::SeqCst);
        assert!(
            src.wait_log(SOON, |l| l.contains("the relay was silent")),
            "{}",
            src.log()
        );
        relay.mute.store(false, Ordering::SeqCst);
        assert!(wait_until(SOON, || relay.upgrades.lock().unwrap().len() >= 2));
    }
}

#[test]
fn sigterm_lets_an_open_connection_finish_then_exits() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let mut t = tunnel(Via::Ours, &pki, driver, &["ssh"], "v3", "v3", None);
        let mut open = connect(localhost(t.ports[0]));
        open.set_read_timeout(Some(SOON)).unwrap();
        let mut round_trip = |n: u8| {
            open.write_all(&[n; 1000]).unwrap();
            let mut back = [0u8; 1000];
            open.read_exact(&mut back).unwrap();
            assert!(back.iter().all(|&b| b == n));
        };
        round_trip(1);
        t.source.signal(libc::SIGTERM);
        // Draining: no new connection, but the open one carries on.
        thread::sleep(Duration::from_millis(300));
        round_trip(2);
        assert!(t.source.running(), "it waits for the open connection");
        assert!(
            try_connect(localhost(t.ports[0])).is_err(),
            "its listener is closed"
        );
        drop(open);
        let status = t
            .source
            .wait_exit(SOON)
            .expect("exits once the connection ended");
        assert!(status.success(), "{status:?}\n{}", t.source.log());
    }
}

#[test]
fn the_source_and_destination_commands() {
    let pki = Pki::new();
    let driver = "epoll";
    let relay = our_relay(&pki, driver, ":memory:", None);
    let (id, src_token, dst_token) = relay.open(&["ssh"]);
    let backend = echo_backend();
    let port = free_port();
    let token_file = pki.dir.path().join("dst.token");
    write_file(&token_file, format!("{dst_token}\n").as_bytes());
    let dst = EngineCmd::new("destination")
        .opt("--relay", relay.addr().to_string())
        .opt("--ca", &pki.ca.path)
        .opt("--sni", "localhost")
        .opt("--token-file", &token_file)
        .opt("--connect", format!("ssh={}", backend.addr))
        .common(driver)
        .label("destination command")
        .start();
    let src = EngineCmd::new("source")
        .opt("--relay", relay.addr().to_string())
        .opt("--ca", &pki.ca.path)
        .opt("--sni", "localhost")
        .opt("--token", &src_token)
        .opt("--listen", format!("ssh=127.0.0.1:{port}"))
        .common(driver)
        .wait_port(port)
        .label("source command")
        .start();
    assert!(
        wait_until(SOON, || relay.both_connected(&id) && connection_up(&src)),
        "{}",
        src.log()
    );
    echo_through(localhost(port), 1 << 20, 3).unwrap();
    assert!(!src.log().contains(&src_token), "no token in the log");
    // Closing the tunnel makes both agents give up, and their commands exit non-zero with a
    // line saying why, as the AWS local proxy does.
    let (status, json) = relay.api("DELETE", &format!("/tunnels/{id}"), "");
    assert_eq!(status, 200, "{json}");
    for (mut p, what) in [(src, "source"), (dst, "destination")] {
        let exit = p.wait_exit(SOON);
        assert!(
            exit.is_some_and(|s| !s.success()),
            "the {what} command exits non-zero: {exit:?}\n{}",
            p.log()
        );
        assert!(p.log().contains("gave up"), "{}", p.log());
    }
}

/// A client's request of `n` bytes, its FIN, then the answer of a sink (`sink_backend`: reads
/// to EOF, answers with the count and hash of what it got, half-closes): the answer as read,
/// and how the connection ended.
fn request_fin_answer(addr: SocketAddr, n: u64, seed: u64) -> (String, String, End) {
    let mut sock = try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    sock.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let sent = write_random(&mut sock, n, seed, None).expect("write the request");
    sock.shutdown(Shutdown::Write).expect("FIN");
    let (answer, end) = read_until_end(&mut sock);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        format!("{n} {sent}\n"),
        end,
    )
}

/// An HTTP/1.0-style exchange through the tunnel: the request, its FIN, then the answer,
/// which comes back whole over the half-closed connection (before half-close, the source's
/// EOF reset the connection and the answer was lost). Every version pairing, our relay and
/// the tungstenite one (which passes the ignorable messages as it passes every frame).
#[test]
fn half_close_carries_the_answer_after_the_requests_fin() {
    let pki = Pki::new();
    for driver in DRIVERS {
        for (via, src, dst, services) in [
            (Via::Ours, "v3", "v3", &["web"][..]),
            (Via::Ours, "v3", "v2", &["web"][..]),
            (Via::Ours, "v1", "v1", &[""][..]),
            (Via::Ws, "v3", "v3", &["web"][..]),
        ] {
            let (sink, reports) = sink_backend(None);
            let t = tunnel_with(
                via,
                &pki,
                driver,
                services,
                (src, dst),
                None,
                vec![sink],
                ("", ""),
            );
            let addr = addrs(&t)[0];
            let what = format!("{via:?} relay, {src} source, {dst} destination ({driver})");
            // One after another (a new stream each in V1 and V2), then several at once (V3).
            let at_once = if src == "v3" && dst == "v3" { 8 } else { 1 };
            for round in 0..3u64 {
                let runs: Vec<_> = (0..at_once)
                    .map(|k| {
                        let seed = round * 100 + k;
                        spawn("client", move || {
                            request_fin_answer(addr, 3 * 1024 * 1024 + seed, seed)
                        })
                    })
                    .collect();
                for run in runs {
                    let (answer, expected, end) = run.join().expect("client");
                    assert!(
                        answer == expected && matches!(end, End::Eof),
                        "{what}: answer {answer:?} ({end:?}), expected {expected:?}\n\
                         source:\n{}\ndestination:\n{}",
                        t.source.log(),
                        t.destination.log()
                    );
                }
            }
            for _ in 0..3 * at_once {
                let report = reports.recv_timeout(SOON).expect("a sink report");
                assert!(report.error.is_none(), "{what}: {report:?}");
            }
        }
    }
}

/// Bulk both ways at once where one direction ends long before the other: each side writes
/// its bytes then FINs, and reads the other's to their end. Every byte arrives, hashed, and
/// both ends see a clean EOF.
#[test]
fn bulk_each_way_with_half_close() {
    const SMALL: u64 = 4 * 1024 * 1024;
    const LARGE: u64 = 48 * 1024 * 1024;
    let pki = Pki::new();
    for driver in DRIVERS {
        let (tx, rx) = std::sync::mpsc::channel::<(u64, Result<(u64, String), String>)>();
        let tx = std::sync::Mutex::new(tx);
        // The backend: its first byte says how much to send back (0: SMALL, 1: LARGE).
        let backend = Backend::spawn(move |sock| {
            let mut first = [0u8; 1];
            if (&sock).read_exact(&mut first).is_err() {
                return;
            }
            let back = if first[0] == 0 { SMALL } else { LARGE };
            let mut w = sock.try_clone().expect("clone");
            let writer = thread::spawn(move || {
                let r = write_random(&mut w, back, back, None);
                let _ = w.shutdown(Shutdown::Write);
                r
            });
            let got = read_hashed(&mut &sock).map_err(|(n, _, e)| format!("after {n}: {e}"));
            let _ = writer.join();
            let _ = tx.lock().unwrap().send((back, got));
        });
        let t = tunnel_with(
            Via::Ours,
            &pki,
            driver,
            &["bulk"],
            ("v3", "v3"),
            None,
            vec![backend],
            ("", ""),
        );
        let addr = addrs(&t)[0];
        // The client sends LARGE and gets SMALL, and the other way round, both at once.
        let runs: Vec<_> = [(LARGE, 0u8), (SMALL, 1u8)]
            .into_iter()
            .map(|(out, ask)| {
                spawn("client", move || {
                    let sock = try_connect(addr).expect("connect");
                    sock.set_read_timeout(Some(IO_TIMEOUT)).ok();
                    let mut w = sock.try_clone().expect("clone");
                    let writer = thread::spawn(move || {
                        w.write_all(&[ask])?;
                        let sent = write_random(&mut w, out, out + 1, None)?;
                        w.shutdown(Shutdown::Write)?;
                        Ok::<_, std::io::Error>(sent)
                    });
                    let got = read_hashed(&mut &sock);
                    let sent = writer.join().expect("writer");
                    (
                        out,
                        ask,
                        sent.map_err(|e| e.to_string()),
                        got.map_err(|(n, _, e)| format!("after {n}: {e}")),
                    )
                })
            })
            .collect();
        for run in runs {
            let (out, ask, sent, got) = run.join().expect("client");
            let back = if ask == 0 { SMALL } else { LARGE };
            assert!(sent.is_ok(), "{driver}: write {sent:?}");
            let got = got.unwrap_or_else(|e| {
                panic!(
                    "{driver}: read {e}\nsource:\n{}\ndestination:\n{}",
                    t.source.log(),
                    t.destination.log()
                )
            });
            assert_eq!(
                got,
                (back, random_hash(back, back)),
                "{driver}: {out} out, {back} back"
            );
        }
        for _ in 0..2 {
            let (back, got) = rx.recv_timeout(SOON).expect("the backend's report");
            let out = if back == SMALL { LARGE } else { SMALL };
            let got = got.unwrap_or_else(|e| panic!("{driver}: backend read {e}"));
            assert_eq!(
                got,
                (out, random_hash(out, out + 1)),
                "{driver}: the backend got every byte"
            );
        }
    }
}

/// Agents that do not both take half-close (here one has `half_close = false`; localproxy
/// never does) work the old way: echo through the tunnel, and a FIN ends the whole
/// connection (the request arrives whole, the answer does not come back, nothing hangs).
#[test]
fn without_the_peers_half_close_a_fin_ends_the_connection() {
    let pki = Pki::new();
    for driver in DRIVERS {
        for (src_extra, dst_extra) in [("half_close = false\n", ""), ("", "half_close = false\n")] {
            let (sink, reports) = sink_backend(None);
            let t = tunnel_with(
                Via::Ours,
                &pki,
                driver,
                &["web", "echo"],
                ("v3", "v3"),
                None,
                vec![sink, echo_backend()],
                (src_extra, dst_extra),
            );
            let what = format!("source {src_extra:?}, destination {dst_extra:?} ({driver})");
            let a = addrs(&t);
            echo_through(a[1], 4 * 1024 * 1024, 7).unwrap_or_else(|e| panic!("{what}: {e}"));
            let (answer, expected, end) = request_fin_answer(a[0], 1024 * 1024, 3);
            assert!(
                answer.is_empty() && end.closed(),
                "{what}: {answer:?} ({end:?})"
            );
            let report = reports.recv_timeout(SOON).expect("a sink report");
            assert_eq!(
                format!("{} {}\n", report.bytes, report.sha256),
                expected,
                "{what}: the request arrived whole"
            );
        }
    }
}

/// `connections_per_service`: a source at its limit refuses one more local connection, a
/// destination at its limit resets one more `CONNECTION_START`; each says so in its log and
/// counts it in `splice_agent_connections_over_limit_total`, and the connections within
/// the limit carry on.
#[test]
fn connections_per_service_limit_is_logged_and_counted() {
    let pki = Pki::new();
    for driver in DRIVERS {
        for (limited, src_limit, dst_limit) in [("source", 2, 128), ("destination", 128, 1)] {
            let relay = our_relay(&pki, driver, ":memory:", None);
            let (id, src_token, dst_token) = relay.open(&["ssh"]);
            let backend = echo_backend();
            let (port, src_metrics, dst_metrics) = (free_port(), free_port(), free_port());
            let dst = AgentSetup::destination(&dst_token)
                .services(vec![format!("ssh={}", backend.addr)])
                .lines(&format!("connections_per_service = {dst_limit}\n"))
                .metrics(dst_metrics)
                .start(relay.addr(), &pki, driver);
            let src = AgentSetup::source(&src_token)
                .listen("ssh", port)
                .lines(&format!("connections_per_service = {src_limit}\n"))
                .metrics(src_metrics)
                .start(relay.addr(), &pki, driver);
            assert!(wait_until(SOON, || relay.both_connected(&id) && connection_up(&src)));
            let round_trip = |s: &mut std::net::TcpStream, n: u8| -> std::io::Result<()> {
                s.write_all(&[n; 100])?;
                let mut back = [0u8; 100];
                s.read_exact(&mut back)?;
                assert!(back.iter().all(|&b| b == n));
                Ok(())
            };
            let within = src_limit.min(dst_limit);
            let mut open: Vec<_> = (0..within)
                .map(|i| {
                    let mut s = connect(localhost(port));
                    s.set_read_timeout(Some(SOON)).unwrap();
                    round_trip(&mut s, i as u8).expect("within the limit");
                    s
                })
                .collect();
            // One more: refused (reset or closed) without a byte back. A source over its
            // limit resets at once, which may reach the connect itself.
            let refused = match try_connect(localhost(port)) {
                Err(_) => true,
                Ok(mut extra) => {
                    extra.set_read_timeout(Some(SOON)).unwrap();
                    round_trip(&mut extra, 9).is_err()
                }
            };
            assert!(
                refused,
                "({driver}, {limited}) the connection over the limit is refused"
            );
            for (i, s) in open.iter_mut().enumerate() {
                round_trip(s, 20 + i as u8).expect("the others carry on");
            }
            let (who, metrics) = match limited {
                "source" => (&src, src_metrics),
                _ => (&dst, dst_metrics),
            };
            let agent = if limited == "source" { "src" } else { "dst" };
            let m = wait_metric(
                localhost(metrics),
                "splice_agent_connections_over_limit_total",
                &[("agent", agent), ("service", "ssh")],
                |v| v == 1.0,
            );
            let other = if limited == "source" {
                dst_metrics
            } else {
                src_metrics
            };
            assert_eq!(
                scrape(localhost(other)).value(
                    "splice_agent_connections_over_limit_total",
                    &[("service", "ssh")]
                ),
                0.0,
                "({driver}, {limited}) only the limited agent counts:\n{}",
                m.text
            );
            assert!(
                who.wait_log(SOON, |l| l.contains("WARN")
                    && l.contains("connections_per_service")
                    && l.contains(&format!("limit={}", src_limit.min(dst_limit)))),
                "({driver}, {limited}) a warning:\n{}",
                who.log()
            );
            // A connection closed makes room again.
            drop(open.pop());
            assert!(
                wait_until(SOON, || {
                    // Until the agent has seen the close, a new connection is still over the
                    // limit, and its reset may reach the connect itself.
                    let Ok(mut s) = try_connect(localhost(port)) else {
                        return false;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    round_trip(&mut s, 42).is_ok()
                }),
                "({driver}, {limited}) room again after a close"
            );
            drop((src, dst, relay));
        }
    }
}

/// SIGHUP applies the agent tables of `run --config`: an added pair starts, an unchanged
/// source keeps its open connection, a removed pair stops, a changed source moves to its new
/// address (its client token lets it reconnect with the same access token), and a bad table
/// is refused by file, line and key while the running agents carry on.
#[test]
fn sighup_applies_added_changed_and_removed_agent_tables() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = our_relay(&pki, driver, ":memory:", None);
        let (id1, s1_token, d1_token) = relay.open(&["ssh"]);
        let (id2, s2_token, d2_token) = relay.open(&["ssh"]);
        let backend = echo_backend();
        let (pa, pb, pc) = (free_port(), free_port(), free_port());
        let client = "reload-client-token-0123456789abcdef";
        let table = |agent: AgentSetup, name, service: String, client_token| {
            agent
                .name(name)
                .services(vec![service])
                .client_token(client_token)
                .toml(relay.addr(), &pki.ca.path)
        };
        let backend_svc = format!("ssh={}", backend.addr);
        let d1 = table(
            AgentSetup::destination(&d1_token),
            "d1",
            backend_svc.clone(),
            Some(client),
        );
        let s1 = |port: u16| {
            let svc = format!("ssh=127.0.0.1:{port}");
            table(AgentSetup::source(&s1_token), "s1", svc, Some(client))
        };
        let d2 = table(
            AgentSetup::destination(&d2_token),
            "d2",
            backend_svc.clone(),
            None,
        );
        let s2 = table(
            AgentSetup::source(&s2_token),
            "s2",
            format!("ssh=127.0.0.1:{pb}"),
            None,
        );
        let path = pki.dir.path().join(format!("agents-{driver}.toml"));
        write_file(&path, format!("{d1}\n{}", s1(pa)).as_bytes());
        let mut engine = EngineCmd::new("run")
            .opt("--config", &path)
            .common(driver)
            .wait_port(pa)
            .label(format!("agents ({driver})"))
            .start();
        assert!(wait_until(SOON, || relay.both_connected(&id1)
            && agent_up(&engine, "s1")));
        let mut held = connect(localhost(pa));
        held.set_read_timeout(Some(SOON)).unwrap();
        let mut round_trip = |n: u8| {
            held.write_all(&[n; 1000]).unwrap();
            let mut back = [0u8; 1000];
            held.read_exact(&mut back).unwrap();
            assert!(back.iter().all(|&b| b == n));
        };
        round_trip(1);

        // Added: the second tunnel's agents start; s1 and its connection are untouched.
        write_file(&path, format!("{d1}\n{}\n{d2}\n{s2}", s1(pa)).as_bytes());
        engine.signal(libc::SIGHUP);
        assert!(
            wait_until(SOON, || relay.both_connected(&id2)
                && agent_up(&engine, "s2")),
            "({driver}) the added agents connect:\n{}",
            engine.log()
        );
        echo_through(localhost(pb), 1 << 20, 2).unwrap();
        round_trip(2);
        assert!(
            !engine.log().contains("stopped by the reload"),
            "{}",
            engine.log()
        );

        // Removed and changed: s2 and d2 stop, s1 moves from pa to pc.
        write_file(&path, format!("{d1}\n{}", s1(pc)).as_bytes());
        engine.signal(libc::SIGHUP);
        assert!(
            wait_until(SOON, || echo_through(localhost(pc), 1 << 16, 3).is_ok()),
            "({driver}) the changed source serves its new address:\n{}",
            engine.log()
        );
        assert!(
            wait_until(SOON, || try_connect(localhost(pb)).is_err()
                && try_connect(localhost(pa)).is_err()),
            "({driver}) the removed and the old addresses are closed"
        );
        assert!(
            wait_until(SOON, || !relay.both_connected(&id2)),
            "({driver}) the removed agents left the relay"
        );
        let log = engine.log();
        for name in ["s1", "s2", "d2"] {
            assert!(
                log.lines()
                    .any(|l| l.contains("stopped by the reload") && l.contains(name)),
                "({driver}) {name} stopped:\n{log}"
            );
        }
        assert!(
            !log.lines()
                .any(|l| l.contains("stopped by the reload") && l.contains("d1")),
            "({driver}) d1 is untouched:\n{log}"
        );

        // A bad table: refused, named; the running agents carry on.
        let bad = format!(
            "{d1}\n{}\n[[source]]\nname = \"s3\"\nrelay = \"{}\"\ntoken = \"t\"\n\
             listen = [\"ssh=127.0.0.1:{pb}\"]\nconnections_per_service = 0\n",
            s1(pc),
            relay.addr()
        );
        write_file(&path, bad.as_bytes());
        engine.signal(libc::SIGHUP);
        assert!(
            engine.wait_log(SOON, |l| l.contains("reload failed")
                && l.contains("connections_per_service")
                && l.contains("line ")),
            "({driver}) the bad table is named:\n{}",
            engine.log()
        );
        echo_through(localhost(pc), 1 << 16, 4).unwrap();
        assert!(
            try_connect(localhost(pb)).is_err(),
            "({driver}) s3 did not start"
        );
        engine.signal(libc::SIGTERM);
        let _ = engine.wait_exit(SOON);
    }
}

//! The tunnel's source and destination agents (`[[source]]`, `[[destination]]` in `run
//! --config`), each in its own engine process, through a relay: services, many connections,
//! version fall-back, a target out of reach, reconnects, a close frame.
//!
//! These run against `WsRelay`, a relay written with tungstenite in the test (an independent
//! WebSocket implementation).

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::support::*;

/// One agent's table.
struct Agent<'a> {
    kind: &'a str,
    name: &'a str,
    services: Vec<String>,
    protocol: &'a str,
    client_token: Option<&'a str>,
}

impl Agent<'_> {
    fn toml(&self, relay: SocketAddr, ca: &Path) -> String {
        let key = if self.kind == "source" {
            "listen"
        } else {
            "connect"
        };
        let services: Vec<String> = self.services.iter().map(|s| format!("{s:?}")).collect();
        let client_token = self
            .client_token
            .map(|t| format!("client_token = {t:?}\n"))
            .unwrap_or_default();
        format!(
            "[[{kind}]]\nname = {name:?}\nrelay = \"{relay}\"\nca = {ca:?}\nsni = \"localhost\"\n\
             token = \"test-token\"\n{client_token}{key} = [{services}]\nprotocol = {protocol:?}\n",
            kind = self.kind,
            name = self.name,
            ca = ca.display().to_string(),
            services = services.join(", "),
            protocol = self.protocol,
        )
    }
}

/// Starts an engine running `agent` against `relay`, waiting for `ports` to listen.
fn start_agent(
    agent: &Agent<'_>,
    relay: SocketAddr,
    pki: &Pki,
    driver: &str,
    ports: &[u16],
) -> Proc {
    let dir = tempfile::Builder::new()
        .prefix("splice-e2e-agent-")
        .tempdir()
        .expect("tempdir");
    let path = dir.path().join("agent.toml");
    fs::write(&path, agent.toml(relay, &pki.ca.path)).expect("write the config");
    let mut cmd = EngineCmd::new("run")
        .opt("--config", &path)
        .common(driver)
        .label(format!("{} ({driver})", agent.kind));
    for &p in ports {
        cmd = cmd.wait_port(p);
    }
    let proc = cmd.start();
    // The file is read at start: once the agent runs, the directory may go.
    assert!(
        proc.wait_log(SOON, |l| l.contains("agent started")),
        "the agent starts:\n{}",
        proc.log()
    );
    drop(dir);
    proc
}

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

struct Tunnel {
    relay: WsRelay,
    source: Proc,
    destination: Proc,
    ports: Vec<u16>,
    _backends: Vec<Backend>,
}

/// A relay, a destination with an echo backend per service, and a source listening for each.
fn tunnel(
    pki: &Pki,
    driver: &str,
    services: &[&str],
    src_protocol: &str,
    dst_protocol: &str,
    client_token: Option<&str>,
) -> Tunnel {
    let relay_services: Vec<&str> = services.iter().copied().filter(|s| !s.is_empty()).collect();
    let relay = WsRelay::start(&pki.server, &relay_services, 3);
    let backends: Vec<Backend> = services.iter().map(|_| echo_backend()).collect();
    let ports: Vec<u16> = services.iter().map(|_| free_port()).collect();
    let named = |s: &str, addr: String| {
        if s.is_empty() {
            addr
        } else {
            format!("{s}={addr}")
        }
    };
    let destination = start_agent(
        &Agent {
            kind: "destination",
            name: "dst",
            services: services
                .iter()
                .zip(&backends)
                .map(|(s, b)| named(s, b.addr.to_string()))
                .collect(),
            protocol: dst_protocol,
            client_token,
        },
        relay.addr,
        pki,
        driver,
        &[],
    );
    let source = start_agent(
        &Agent {
            kind: "source",
            name: "src",
            services: services
                .iter()
                .zip(&ports)
                .map(|(s, p)| named(s, localhost(*p).to_string()))
                .collect(),
            protocol: src_protocol,
            client_token,
        },
        relay.addr,
        pki,
        driver,
        &ports,
    );
    assert!(
        wait_until(SOON, || relay.upgrades.lock().unwrap().len() >= 2),
        "both agents connect; source log:\n{}\ndestination log:\n{}",
        source.log(),
        destination.log()
    );
    Tunnel {
        relay,
        source,
        destination,
        ports,
        _backends: backends,
    }
}

fn addrs(t: &Tunnel) -> Vec<SocketAddr> {
    t.ports.iter().map(|&p| localhost(p)).collect()
}

#[test]
fn several_services_many_connections() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let t = tunnel(&pki, driver, &["ssh", "web"], "v3", "v3", None);
        echo_many(&addrs(&t), 20, 256 * 1024);
        let up = t.relay.upgrades.lock().unwrap().clone();
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
            ("v1", "v1", &[""][..]),
        ] {
            let t = tunnel(&pki, driver, services, src, dst, None);
            // V1 and V2 carry one connection per service at a time.
            for k in 0..3 {
                for addr in addrs(&t) {
                    echo_through(addr, 100_000, k).unwrap_or_else(|e| {
                        panic!("{src} source, {dst} destination ({driver}): {e}")
                    });
                }
            }
        }
    }
}

#[test]
fn target_down_resets_only_its_stream() {
    let pki = Pki::new();
    let driver = "epoll";
    let relay = WsRelay::start(&pki.server, &["up", "down"], 3);
    let backend = echo_backend();
    let dead = {
        // A port nobody listens on.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (pu, pd) = (free_port(), free_port());
    let _dst = start_agent(
        &Agent {
            kind: "destination",
            name: "dst",
            services: vec![format!("up={}", backend.addr), format!("down={dead}")],
            protocol: "v3",
            client_token: None,
        },
        relay.addr,
        &pki,
        driver,
        &[],
    );
    let _src = start_agent(
        &Agent {
            kind: "source",
            name: "src",
            services: vec![format!("up=127.0.0.1:{pu}"), format!("down=127.0.0.1:{pd}")],
            protocol: "v3",
            client_token: None,
        },
        relay.addr,
        &pki,
        driver,
        &[pu, pd],
    );
    // A long transfer on "up" runs while "down" fails.
    let long = spawn("long", move || echo_through(localhost(pu), 4 << 20, 7));
    for _ in 0..3 {
        let mut s = connect(localhost(pd));
        s.set_read_timeout(Some(SOON)).unwrap();
        let _ = s.write_all(b"hello");
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("{n} bytes from a service whose target is down"),
        }
    }
    long.join()
        .unwrap()
        .expect("the other service's transfer is untouched");
    echo_through(localhost(pu), 1000, 1).expect("and it still works");
}

#[test]
fn reconnect_after_drop_with_client_token() {
    let pki = Pki::new();
    let token = "0123456789abcdef-0123456789ABCDEF-xyz";
    for (driver, client_token) in [("epoll", None), ("uring", Some(token))] {
        let t = tunnel(&pki, driver, &["ssh"], "v3", "v3", client_token);
        echo_through(localhost(t.ports[0]), 100_000, 1).unwrap();
        t.relay
            .kick
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(
            wait_until(SOON, || t.relay.upgrades.lock().unwrap().len() >= 4),
            "both agents reconnect; source log:\n{}",
            t.source.log()
        );
        let up = t.relay.upgrades.lock().unwrap().clone();
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
            !t.source.log().contains("test-token"),
            "the token never reaches a log"
        );
    }
}

#[test]
fn close_frame_makes_the_agents_give_up() {
    let pki = Pki::new();
    let t = tunnel(&pki, "epoll", &["ssh"], "v3", "v3", None);
    echo_through(localhost(t.ports[0]), 1000, 1).unwrap();
    t.relay
        .close
        .store(true, std::sync::atomic::Ordering::SeqCst);
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
        t.relay.upgrades.lock().unwrap().len(),
        2,
        "no reconnect after a close frame"
    );
}

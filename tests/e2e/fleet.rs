//! Fleets (issue 12 §2): a destination agent in standby for a thing (`destination --thing`,
//! a client certificate that the relay's `--device-ca` verifies) gets each tunnel opened for
//! its thing pushed by the relay and connects it at once; a certificate from another CA or
//! for another thing gets nothing; a standby agent started again picks up the tunnels still
//! open; several tunnels of one thing at once; a closed tunnel ends its destination.

use std::io::Read;
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::*;

/// The test's PKI plus a device CA and its things' certificates.
struct Fleet {
    pki: Pki,
    device_ca: Ca,
}

impl Fleet {
    fn new() -> Fleet {
        let pki = Pki::new();
        let device_ca = Ca::new(pki.dir.path(), "device", KeyType::P256);
        Fleet { pki, device_ca }
    }

    /// A client certificate for `thing` (its subject CN) from the device CA (or, `other`,
    /// from the CA nobody trusts): the certificate and key files.
    fn thing_cert(&self, thing: &str, other: bool) -> (PathBuf, PathBuf) {
        let (ca, dir) = if other {
            (&self.pki.other_ca, self.pki.dir.path().join("other"))
        } else {
            (&self.device_ca, self.pki.dir.path().join("device"))
        };
        std::fs::create_dir_all(&dir).expect("a directory for the thing's files");
        let leaf = ca.issue(&dir, thing, &[], KeyType::P256, Usage::Client);
        (leaf.cert, leaf.key)
    }

    /// A device certificate whose CN is a serial number and whose URI SAN names `thing`
    /// (`urn:splice:thing:THING`).
    fn thing_uri_cert(&self, thing: &str) -> (PathBuf, PathBuf) {
        let dir = self.pki.dir.path().join("uri");
        std::fs::create_dir_all(&dir).expect("a directory for the thing's files");
        let uri = format!("urn:splice:thing:{thing}");
        let leaf =
            self.device_ca
                .issue_with(&dir, "serial-0001", &[uri.as_str()], None, Usage::Client);
        (leaf.cert, leaf.key)
    }

    fn relay(&self, driver: &str) -> Relay {
        self.relay_with(driver, &[])
    }

    /// [`Fleet::relay`] with more flags.
    fn relay_with(&self, driver: &str, flags: &[(&str, &str)]) -> Relay {
        let mut relay = RelaySetup::new(&self.pki, driver)
            .metrics()
            .flag("--device-ca", &self.device_ca.path);
        for (flag, value) in flags {
            relay = relay.flag(flag, value);
        }
        relay.command()
    }

    /// `destination --thing THING` with `cert` (files), serving `connect`.
    fn standby(
        &self,
        relay: &Relay,
        thing: &str,
        cert: &(PathBuf, PathBuf),
        connect: &[String],
        driver: &str,
    ) -> Proc {
        self.standby_with(relay, thing, cert, connect, driver, None)
    }

    /// [`Fleet::standby`], with `/metrics` on `metrics` if given.
    fn standby_with(
        &self,
        relay: &Relay,
        thing: &str,
        cert: &(PathBuf, PathBuf),
        connect: &[String],
        driver: &str,
        metrics: Option<u16>,
    ) -> Proc {
        let mut cmd = EngineCmd::new("destination")
            .opt("--relay", relay.addr().to_string())
            .opt("--ca", &self.pki.ca.path)
            .opt("--sni", "localhost")
            .opt("--thing", thing)
            .opt("--identity-cert", &cert.0)
            .opt("--identity-key", &cert.1);
        for c in connect {
            cmd = cmd.opt("--connect", c);
        }
        if let Some(m) = metrics {
            cmd = cmd.metrics(m);
        }
        cmd.common(driver)
            .label(format!("standby {thing} ({driver})"))
            .start()
    }

    /// A source agent for a tunnel's `token`, listening for `service` on `port`.
    fn source(&self, relay: &Relay, token: &str, service: &str, port: u16, driver: &str) -> Proc {
        EngineCmd::new("source")
            .opt("--relay", relay.addr().to_string())
            .opt("--ca", &self.pki.ca.path)
            .opt("--sni", "localhost")
            .opt("--token", token)
            .opt("--listen", format!("{service}=127.0.0.1:{port}"))
            .common(driver)
            .wait_port(port)
            .label(format!("source ({driver})"))
            .start()
    }
}

/// What these tests ask the relay's API about a thing's tunnels.
trait Things {
    fn open_for(&self, thing: &str, services: &[&str]) -> (String, String);
    fn destination_connected(&self, id: &str) -> bool;
    fn close(&self, id: &str);
    fn metric(&self, name: &str) -> f64;
}

impl Things for Relay {
    /// Opens a tunnel for `thing` with `services`: its id and source token.
    fn open_for(&self, thing: &str, services: &[&str]) -> (String, String) {
        let body = serde_json::json!({
            "destinationConfig": { "thingName": thing, "services": services },
            "timeoutConfig": { "maxLifetimeTimeoutMinutes": 10 },
        });
        let (status, json) = self.api("POST", "/tunnels", &body.to_string());
        assert_eq!(status, 200, "open a tunnel: {json}");
        let s = |k: &str| json[k].as_str().expect(k).to_string();
        (s("tunnelId"), s("sourceAccessToken"))
    }

    fn destination_connected(&self, id: &str) -> bool {
        let (status, json) = self.api("GET", &format!("/tunnels/{id}"), "");
        status == 200 && json["tunnel"]["destinationConnectionState"]["status"] == "CONNECTED"
    }

    fn close(&self, id: &str) {
        let (status, json) = self.api("DELETE", &format!("/tunnels/{id}"), "");
        assert_eq!(status, 200, "{json}");
    }

    fn metric(&self, name: &str) -> f64 {
        scrape(self.metrics_addr()).value(name, &[])
    }
}

/// Sends `total` random bytes through `addr` (an echo behind the tunnel) and reads them back:
/// the count and hash must match.
fn echo_hashed(addr: SocketAddr, total: u64, seed: u64) {
    let sock = connect(addr);
    sock.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let mut w = sock.try_clone().expect("clone");
    let writer = spawn("echo-writer", move || {
        write_random(&mut w, total, seed, None)
    });
    let mut r = (&sock).take(total);
    let got = read_hashed(&mut r).unwrap_or_else(|(n, _, e)| panic!("read after {n}: {e}"));
    let sent = writer.join().expect("writer").expect("write");
    let _ = sock.shutdown(Shutdown::Both);
    assert_eq!(got, (total, sent), "the bytes came back whole and in order");
}

/// Waits for `id`'s destination to connect, at most `SOON` (the bound is generous: this is no
/// speed test); the time it took.
fn wait_destination(relay: &Relay, id: &str, standby: &Proc) -> Duration {
    let start = Instant::now();
    assert!(
        wait_until(SOON, || relay.destination_connected(id)),
        "the thing's destination connects tunnel {id}:\n{}\nrelay:\n{}",
        standby.log(),
        relay.proc.log()
    );
    start.elapsed()
}

#[test]
fn a_thing_in_standby_gets_its_tunnels_and_they_end_when_closed() {
    for driver in DRIVERS {
        let fleet = Fleet::new();
        let relay = fleet.relay(driver);
        let (ssh, web) = (echo_backend(), echo_backend());
        let cert = fleet.thing_cert("pump-7", false);
        let connect = [format!("ssh={}", ssh.addr), format!("web={}", web.addr)];
        let device_metrics = free_port();
        let standby = fleet.standby_with(
            &relay,
            "pump-7",
            &cert,
            &connect,
            driver,
            Some(device_metrics),
        );
        assert!(
            standby.wait_log(SOON, |l| l.contains("standby: waiting for tunnels")),
            "{}\nrelay:\n{}",
            standby.log(),
            relay.proc.log()
        );
        wait_metric(
            relay.metrics_addr(),
            "splice_tunnel_standby_connected",
            &[],
            |v| v == 1.0,
        );

        // Two tunnels for the thing at once; one names a service the agent cannot serve.
        let (one, one_token) = relay.open_for("pump-7", &["ssh"]);
        let (two, two_token) = relay.open_for("pump-7", &["web", "vnc"]);
        let took = wait_destination(&relay, &one, &standby);
        eprintln!("[{driver}] tunnel {one} connected {took:?} after it opened");
        wait_destination(&relay, &two, &standby);
        assert!(
            standby.wait_log(SOON, |l| l.contains("service=vnc")
                && l.contains("no --connect")),
            "a service it cannot serve is logged:\n{}",
            standby.log()
        );
        // The API shows how the tunnel is paired, and by whom (the thing, never a token).
        let (_, described) = relay.api("GET", &format!("/tunnels/{one}"), "");
        assert_eq!(
            described["tunnel"]["pairing"],
            serde_json::json!({ "kind": "thing", "identity": "pump-7" }),
            "{described}"
        );
        let (p1, p2) = (free_port(), free_port());
        let s1 = fleet.source(&relay, &one_token, "ssh", p1, driver);
        let s2 = fleet.source(&relay, &two_token, "web", p2, driver);
        echo_hashed(localhost(p1), 1 << 20, 1);
        echo_hashed(localhost(p2), 1 << 20, 2);
        // The device's metrics show each tunnel's agent beside the standby one.
        let agent = format!("destination-{}/{one}", relay.addr());
        let labels = [("agent", agent.as_str()), ("service", "ssh")];
        wait_metric(
            localhost(device_metrics),
            "splice_agent_bytes_total",
            &labels,
            |v| v == 2.0 * f64::from(1 << 20),
        );
        assert!(relay.metric("splice_tunnel_standby_notices_total") >= 2.0);
        for token in [&one_token, &two_token] {
            assert!(!standby.log().contains(token.as_str()));
            assert!(!relay.proc.log().contains(token.as_str()));
        }

        // Closing one tunnel ends its destination, not the other's, and not the standby.
        relay.close(&one);
        assert!(
            standby.wait_log(SOON, |l| l.contains(&one) && l.contains("gave up")),
            "the closed tunnel's destination ends:\n{}",
            standby.log()
        );
        echo_hashed(localhost(p2), 1 << 16, 3);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !relay.destination_connected(&one),
            "a closed tunnel's destination is not started again"
        );
        assert_eq!(relay.metric("splice_tunnel_standby_connected"), 1.0);
        drop((s1, s2));
    }
}

#[test]
fn a_standby_agent_started_again_picks_up_the_open_tunnels() {
    for driver in DRIVERS {
        let fleet = Fleet::new();
        let relay = fleet.relay(driver);
        let ssh = echo_backend();
        // This device's certificate names its thing by a URI SAN (its CN is a serial).
        let cert = fleet.thing_uri_cert("gate-1");
        let connect = [format!("ssh={}", ssh.addr)];
        // Opened while no agent waits: pushed when one comes.
        let (id, token) = relay.open_for("gate-1", &["ssh"]);
        let mut standby = fleet.standby(&relay, "gate-1", &cert, &connect, driver);
        wait_destination(&relay, &id, &standby);
        let port = free_port();
        let src = fleet.source(&relay, &token, "ssh", port, driver);
        echo_hashed(localhost(port), 1 << 20, 4);

        // Killed: its tunnel's destination goes with it; started again, it gets the tunnel
        // (with a new token) and bytes flow again through the same source.
        standby.signal(libc::SIGKILL);
        standby.wait_exit(SOON).expect("killed");
        assert!(
            wait_until(SOON, || !relay.destination_connected(&id)),
            "{}",
            relay.proc.log()
        );
        let standby = fleet.standby(&relay, "gate-1", &cert, &connect, driver);
        wait_destination(&relay, &id, &standby);
        assert!(
            wait_until(SOON, || std::panic::catch_unwind(|| {
                echo_hashed(localhost(port), 1 << 16, 5)
            })
            .is_ok()),
            "bytes flow after the restart:\n{}\n{}",
            standby.log(),
            src.log()
        );
    }
}

#[test]
fn another_ca_or_another_thing_gets_nothing() {
    for driver in DRIVERS {
        let fleet = Fleet::new();
        let relay = fleet.relay(driver);
        let ssh = echo_backend();
        let connect = [format!("ssh={}", ssh.addr)];
        let (id, _) = relay.open_for("valve-3", &["ssh"]);

        // A certificate for valve-3 from a CA the relay does not take as a device CA.
        let other = fleet.thing_cert("valve-3", true);
        let a = fleet.standby(&relay, "valve-3", &other, &connect, driver);
        // A certificate of the device CA, for another thing.
        let wrong = fleet.thing_cert("valve-4", false);
        let mut b = fleet.standby(&relay, "valve-3", &wrong, &connect, driver);
        let exit = b.wait_exit(SOON);
        assert!(
            exit.is_some_and(|s| !s.success()),
            "the wrong thing is refused for good: {exit:?}\n{}",
            b.log()
        );
        assert!(b.log().contains("403"), "{}", b.log());
        assert!(
            a.wait_log(SOON, |l| l.contains("standby channel lost")),
            "{}",
            a.log()
        );
        std::thread::sleep(Duration::from_secs(1));
        assert!(!relay.destination_connected(&id));
        assert_eq!(relay.metric("splice_tunnel_standby_notices_total"), 0.0);
        assert_eq!(relay.metric("splice_tunnel_standby_connected"), 0.0);
        assert!(!a.log().contains("tunnel pushed"), "{}", a.log());
    }
}

/// The standby channel as an independent WebSocket client (tungstenite over rustls) sees it:
/// the 101 names `splice.notify.v1`; a tunnel opened for the thing arrives as one message with
/// AWS's notify fields; a message from the device is a rule break (close 1008); a device that
/// stops answering pings is dropped after the relay's idle timeout.
#[test]
fn the_standby_channel_to_an_independent_websocket_client() {
    use tungstenite::Message;
    use tungstenite::client::IntoClientRequest;

    for driver in DRIVERS {
        let fleet = Fleet::new();
        let relay = fleet.relay_with(driver, &[("--ping-after", "1s"), ("--idle-timeout", "3s")]);
        let dir = fleet.pki.dir.path().join("raw");
        std::fs::create_dir_all(&dir).unwrap();
        let leaf = fleet
            .device_ca
            .issue(&dir, "pump-9", &[], KeyType::P256, Usage::Client);
        let cfg = client_config(&[&fleet.pki.ca], Some(&leaf), TLS_ANY);
        let channel = || {
            let tls = tls_connect(relay.addr(), "localhost", cfg.clone());
            let mut req = format!("wss://localhost:{}/notify?thing=pump-9", relay.port)
                .into_client_request()
                .unwrap();
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "splice.notify.v1".parse().unwrap(),
            );
            let (ws, response) = tungstenite::client::client(req, tls).expect("the 101");
            assert_eq!(
                response.headers()["sec-websocket-protocol"],
                "splice.notify.v1"
            );
            ws
        };
        let mut ws = channel();
        ws.get_mut()
            .sock
            .set_read_timeout(Some(IO_TIMEOUT))
            .unwrap();
        let (id, _) = relay.open_for("pump-9", &["ssh", "web"]);
        let notice = loop {
            match ws.read().expect("a notice") {
                Message::Binary(b) => {
                    break serde_json::from_slice::<serde_json::Value>(&b).unwrap();
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(notice["tunnelId"], id.as_str(), "{notice}");
        assert_eq!(notice["clientMode"], "destination");
        assert_eq!(notice["services"], serde_json::json!(["ssh", "web"]));
        assert!(notice["region"].is_string(), "{notice}");
        let token = notice["clientAccessToken"].as_str().expect("a token");
        assert!(token.len() >= 32 && !relay.proc.log().contains(token));

        // A message from the device: closed for the rule break.
        ws.send(Message::Binary(b"hello".to_vec().into())).unwrap();
        let code = loop {
            match ws.read() {
                Ok(Message::Close(Some(f))) => break u16::from(f.code),
                Ok(_) => continue,
                Err(e) => panic!("no close frame: {e}"),
            }
        };
        assert_eq!(code, 1008);

        // A device that reads nothing (so answers no ping) is dropped after the idle timeout.
        let silent = channel();
        wait_metric(
            relay.metrics_addr(),
            "splice_tunnel_standby_connected",
            &[],
            |v| v == 1.0,
        );
        let since = Instant::now();
        wait_metric(
            relay.metrics_addr(),
            "splice_tunnel_standby_connected",
            &[],
            |v| v == 0.0,
        );
        assert!(
            since.elapsed() >= Duration::from_secs(1),
            "dropped only once silent"
        );
        drop(silent);
    }
}

/// `destination --thing` without the device's certificate, with a token, or with a name that
/// is no thing name: a usage or configuration error naming what is wrong, before anything
/// connects.
#[test]
fn standby_flags_are_checked_before_anything_starts() {
    let fleet = Fleet::new();
    let cert = fleet.thing_cert("pump-1", false);
    let cert_args = [
        "--identity-cert",
        cert.0.to_str().unwrap(),
        "--identity-key",
        cert.1.to_str().unwrap(),
    ];
    let cases: [(&[&str], &str); 3] = [
        (&[], "--identity-cert"),
        (&["--token", "abc"], "--token"),
        (&cert_args, "`thing` \"a/b\""),
    ];
    for (extra, says) in cases {
        let thing = if says.contains("a/b") {
            "a/b"
        } else {
            "pump-1"
        };
        let mut cmd = EngineCmd::new("destination")
            .opt("--relay", "127.0.0.1:9")
            .opt("--thing", thing)
            .opt("--connect", "ssh=127.0.0.1:22");
        for a in extra {
            cmd = cmd.arg(a);
        }
        let (status, stderr) = cmd.run_to_exit();
        assert!(!status.success(), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?} names {says}: {stderr}");
    }
}

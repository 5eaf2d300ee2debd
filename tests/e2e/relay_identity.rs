//! Pairing by certificate (`client_ca` on the relay, `identity_cert` on the agents): a source
//! and a destination with client certificates of the same identity are paired without a
//! token, beside token tunnels on the same relay; bad certificates cost only their peer.
//!
//! The agents are our engine (`[[source]]`, `[[destination]]` in `run --config`); the
//! token peers and the peers with bad certificates are tungstenite over rustls, shaped as the
//! AWS local proxy's requests are.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use tungstenite::Message;
use tungstenite::protocol::WebSocket;

use crate::support::*;

type Ws = WebSocket<TlsStream>;

const V3: &str = "aws.iot.securetunneling-3.0";

/// The certificates of these tests, beside `Pki`'s (the relay's server certificate and the
/// other CA).
struct Ids {
    pki: Pki,
    /// `client_ca`.
    clients: Ca,
    /// `device_ca`.
    devices: Ca,
    /// `client_crls`: revokes `revoked`.
    crl: std::path::PathBuf,
    revoked: Leaf,
    expired: Leaf,
    device: Leaf,
}

impl Ids {
    fn new() -> Ids {
        let pki = Pki::new();
        let p = pki.dir.path().to_path_buf();
        let clients = Ca::new(&p, "clients", KeyType::P256);
        let devices = Ca::new(&p, "devices", KeyType::P256);
        let revoked =
            clients.issue_with(&p, "revoked", &["spiffe://t/revoked"], None, Usage::Client);
        let expired = clients.issue_with(
            &p,
            "expired",
            &["spiffe://t/expired"],
            Some(((2001, 1, 1), (2002, 1, 1))),
            Usage::Client,
        );
        let device = devices.issue_with(&p, "device", &["spiffe://t/device"], None, Usage::Client);
        let crl = clients.write_crl(&p, "clients", &[&revoked]);
        Ids {
            pki,
            clients,
            devices,
            crl,
            revoked,
            expired,
            device,
        }
    }

    /// A new client certificate (from `client_ca`) named `stem`, with URI SANs `uris`.
    fn client(&self, stem: &str, uris: &[&str]) -> Leaf {
        self.clients
            .issue_with(self.pki.dir.path(), stem, uris, None, Usage::Client)
    }
}

/// A relay with both CAs and the CRL, metrics on.
fn start_relay(ids: &Ids, driver: &str) -> Relay {
    let lines = format!(
        "client_ca = {:?}\ndevice_ca = {:?}\nclient_crls = [{:?}]\n",
        ids.clients.path.display().to_string(),
        ids.devices.path.display().to_string(),
        ids.crl.display().to_string(),
    );
    RelaySetup::new(&ids.pki, driver)
        .metrics()
        .lines(&lines)
        .run_config()
}

/// What these tests ask the relay's API about tunnels paired by certificate.
trait Pairing {
    fn paired(&self, identity: &str) -> Vec<serde_json::Value>;
    fn describe(&self, id: &str) -> serde_json::Value;
    fn connected(&self, id: &str, side: &str) -> bool;
    fn wait_pair(&self, identity: &str, logs: &[&Proc]) -> String;
}

impl Pairing for Relay {
    /// The open tunnels paired by certificate `identity`, as the API lists them.
    fn paired(&self, identity: &str) -> Vec<serde_json::Value> {
        let (status, json) = self.api("GET", "/tunnels", "");
        assert_eq!(status, 200, "{json}");
        json["tunnelSummaries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|t| {
                t["status"] == "OPEN"
                    && t["pairing"]["kind"] == "certificate"
                    && t["pairing"]["identity"] == identity
            })
            .collect()
    }

    /// Tunnel `id` as the API describes it.
    fn describe(&self, id: &str) -> serde_json::Value {
        let (status, json) = self.api("GET", &format!("/tunnels/{id}"), "");
        assert_eq!(status, 200, "{json}");
        json["tunnel"].clone()
    }

    fn connected(&self, id: &str, side: &str) -> bool {
        self.describe(id)[format!("{side}ConnectionState")]["status"] == "CONNECTED"
    }

    /// Waits for the one open tunnel of `identity` with both peers connected; its id.
    fn wait_pair(&self, identity: &str, logs: &[&Proc]) -> String {
        let mut id = String::new();
        let ok = wait_until(SOON * 2, || {
            match &self.paired(identity)[..] {
                [t] => id = t["tunnelId"].as_str().unwrap_or_default().to_string(),
                _ => return false,
            }
            self.connected(&id, "source") && self.connected(&id, "destination")
        });
        let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
        assert!(
            ok,
            "{identity} pairs; relay log:\n{}\nagents:\n{}",
            self.proc.log(),
            logs.join("\n---\n")
        );
        id
    }
}

/// One agent table of ours with identity `leaf` and no token.
fn agent_table(
    kind: &'static str,
    name: &str,
    relay: SocketAddr,
    ids: &Ids,
    leaf: &Leaf,
    service: &str,
) -> String {
    AgentSetup::by_identity(kind, name, &leaf.cert, &leaf.key)
        .services(vec![service.to_string()])
        .toml(relay, &ids.pki.ca.path)
}

/// An engine running `tables`.
fn start_agents(dir: &Path, label: &str, driver: &str, tables: &str, ports: &[u16]) -> Proc {
    let path = dir.join(format!("{label}-{}.toml", free_port()));
    fs::write(&path, format!("driver = \"{driver}\"\n\n{tables}")).expect("write the config");
    let mut cmd = EngineCmd::new("run")
        .opt("--config", &path)
        .opt("--log-level", "info")
        .label(format!("{label} ({driver})"));
    for &p in ports {
        cmd = cmd.wait_port(p);
    }
    cmd.start()
}

/// Sends `total` random bytes through `addr` (an echo behind the tunnel) while reading them
/// back; Ok when every byte came back in order (hashes compared).
/// [`echo_through`] once the source carries connections: the relay counts a peer connected
/// when it answers the upgrade, a moment before the source has read the answer, and a source
/// refuses (resets) connections until it has.
fn echo_when_up(addr: SocketAddr, total: u64, seed: u64) -> Result<(), String> {
    let mut last = String::new();
    let up = wait_until(SOON, || match echo_through(addr, 16, seed) {
        Ok(()) => true,
        Err(e) => {
            last = e;
            false
        }
    });
    if !up {
        return Err(format!("the source never carried a connection: {last}"));
    }
    echo_through(addr, total, seed)
}

fn echo_through(addr: SocketAddr, total: u64, seed: u64) -> Result<(), String> {
    use std::io::Read;
    let sock = try_connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    sock.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let mut w = sock.try_clone().expect("clone");
    let writer = spawn("echo-writer", move || {
        write_random(&mut w, total, seed, None)
    });
    let got = read_hashed(&mut (&sock).take(total))
        .map_err(|(n, _, e)| format!("read after {n} bytes: {e}"))?;
    let sent = writer
        .join()
        .expect("writer")
        .map_err(|e| format!("write: {e}"))?;
    let _ = sock.shutdown(std::net::Shutdown::Both);
    if got.0 != total || got.1 != sent {
        return Err(format!("{} of {total} bytes came back, or altered", got.0));
    }
    Ok(())
}

/// Our source and destination, each with its own certificate of one URI SAN (as after a
/// renewal on one side), pair into a tunnel the relay makes, move hashed bytes both ways,
/// show in the API and the metrics, and pair again into a new tunnel once it is closed;
/// beside them, a pair with one certificate and no URI SAN (identity: the fingerprint), a
/// mismatched pair that stays unpaired, and a token tunnel of tungstenite peers without
/// certificates (the AWS local proxy's shape).
#[test]
fn pairing_by_certificate_beside_tokens() {
    let ids = Ids::new();
    let dir = ids.pki.dir.path().to_path_buf();
    let uri = "spiffe://t/pair/1";
    let dst_leaf = ids.client("pair1-dst", &[uri]);
    let src_leaf = ids.client("pair1-src", &[uri]);
    let shared = ids.client("pair2", &[]);
    let fingerprint = sha256_hex(shared.cert_der.as_ref());
    let lonely_dst = ids.client("lonely-dst", &["spiffe://t/lonely"]);
    let lonely_src = ids.client("lonely-src", &["spiffe://t/stranger"]);
    for driver in DRIVERS {
        let relay = start_relay(&ids, driver);
        let raddr = localhost(relay.port);
        let echo = echo_backend();
        let target = echo.addr.to_string();
        let (p1, p2, p3) = (free_port(), free_port(), free_port());
        let dst = start_agents(
            &dir,
            "destinations",
            driver,
            &[
                agent_table(
                    "destination",
                    "d1",
                    raddr,
                    &ids,
                    &dst_leaf,
                    &format!("echo={target}"),
                ),
                agent_table(
                    "destination",
                    "d2",
                    raddr,
                    &ids,
                    &shared,
                    &format!("echo={target}"),
                ),
                agent_table(
                    "destination",
                    "d3",
                    raddr,
                    &ids,
                    &lonely_dst,
                    &format!("echo={target}"),
                ),
            ]
            .concat(),
            &[],
        );
        // The destinations come first: their contact makes the tunnels.
        assert!(
            wait_until(SOON, || relay.paired(uri).len() == 1
                && relay.paired(&fingerprint).len() == 1
                && relay.paired("spiffe://t/lonely").len() == 1),
            "{driver}: the destinations make their tunnels:\n{}\n{}",
            relay.proc.log(),
            dst.log()
        );
        let src = start_agents(
            &dir,
            "sources",
            driver,
            &[
                agent_table(
                    "source",
                    "s1",
                    raddr,
                    &ids,
                    &src_leaf,
                    &format!("echo=127.0.0.1:{p1}"),
                ),
                agent_table(
                    "source",
                    "s2",
                    raddr,
                    &ids,
                    &shared,
                    &format!("echo=127.0.0.1:{p2}"),
                ),
                agent_table(
                    "source",
                    "s3",
                    raddr,
                    &ids,
                    &lonely_src,
                    &format!("echo=127.0.0.1:{p3}"),
                ),
            ]
            .concat(),
            &[p1, p2, p3],
        );
        let t1 = relay.wait_pair(uri, &[&src, &dst]);
        let t2 = relay.wait_pair(&fingerprint, &[&src, &dst]);
        for (port, seed) in [(p1, 1), (p2, 2)] {
            echo_when_up(localhost(port), 1 << 20, seed)
                .unwrap_or_else(|e| panic!("{driver}: bytes through {port}: {e}"));
        }
        let d = relay.describe(&t1);
        assert_eq!(d["pairing"]["kind"], "certificate", "{driver}: {d}");
        assert_eq!(d["destinationConfig"]["services"][0], "echo");
        assert_ne!(t1, t2);
        // The mismatched pair: its destination's tunnel has no source, and the stranger's
        // refusal is in the relay's log with its identity.
        let lonely = relay.paired("spiffe://t/lonely");
        let lonely_id = lonely[0]["tunnelId"].as_str().unwrap().to_string();
        assert!(
            relay.proc.wait_log(SOON, |l| l.contains("peer refused")
                && l.contains("spiffe://t/stranger")
                && l.contains("no destination with this certificate identity")),
            "{driver}: the stranger's refusal is logged:\n{}",
            relay.proc.log()
        );
        assert!(
            !relay.connected(&lonely_id, "source"),
            "{driver}: mismatched pair stays apart"
        );
        assert!(relay.paired("spiffe://t/stranger").is_empty());
        assert!(
            try_connect(localhost(p3)).is_ok_and(|mut s| {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .ok();
                let _ = s.write_all(b"hello");
                let mut b = [0u8; 5];
                s.read_exact(&mut b).is_err()
            }),
            "{driver}: nothing comes back through the unpaired source"
        );
        // The metrics name the pairing and its identity, never a token.
        let m = scrape(relay.metrics_addr());
        let labels = [
            ("tunnel", t1.as_str()),
            ("pairing", "certificate"),
            ("identity", uri),
        ];
        assert!(
            m.value("splice_relay_tunnel_bytes_total", &labels) >= (2 << 20) as f64,
            "{driver}: the tunnel's bytes carry its pairing:\n{}",
            m.text
        );
        // A token tunnel on the same relay, peers without certificates.
        token_tunnel_beside(&ids, &relay);
        // Closed through the API: the agents reconnect, and the next contact makes a new
        // tunnel for the identity.
        let (status, _) = relay.api("POST", &format!("/tunnels/{t1}/close"), "{}");
        assert_eq!(status, 200);
        let mut again = String::new();
        assert!(
            wait_until(SOON * 3, || {
                match &relay.paired(uri)[..] {
                    [t] if t["tunnelId"] != t1.as_str() => {
                        again = t["tunnelId"].as_str().unwrap().to_string();
                        relay.connected(&again, "source") && relay.connected(&again, "destination")
                    }
                    _ => false,
                }
            }),
            "{driver}: a new tunnel after the close:\n{}",
            relay.proc.log()
        );
        echo_when_up(localhost(p1), 64 << 10, 9)
            .unwrap_or_else(|e| panic!("{driver}: bytes through the new tunnel: {e}"));
        drop(src);
        drop(dst);
    }
}

/// A token tunnel opened through the API, with tungstenite peers that present no certificate
/// (as the AWS local proxy does): paired, SERVICE_IDS first, frames both ways.
fn token_tunnel_beside(ids: &Ids, relay: &Relay) {
    let body = serde_json::json!({ "destinationConfig": { "services": ["ssh"] } }).to_string();
    let (status, json) = relay.api("POST", "/tunnels", &body);
    assert_eq!(status, 200, "{json}");
    assert!(json.get("pairing").is_none());
    let token = |k: &str| json[k].as_str().unwrap().to_string();
    let mut src = peer(
        ids,
        relay.port,
        "source",
        None,
        &[("access-token", &token("sourceAccessToken"))],
    )
    .expect("the token source is admitted");
    assert_eq!(kind_of(&next_binary(&mut src)), SERVICE_IDS);
    let mut dst = peer(
        ids,
        relay.port,
        "destination",
        None,
        &[("access-token", &token("destinationAccessToken"))],
    )
    .expect("the token destination is admitted");
    assert_eq!(kind_of(&next_binary(&mut dst)), SERVICE_IDS);
    exchange(&mut src, &mut dst);
    let id = json["tunnelId"].as_str().unwrap();
    assert!(
        relay.describe(id).get("pairing").is_none(),
        "a token tunnel shows no pairing"
    );
}

/// A tungstenite peer of the relay at `port` in `mode`, presenting `cert` if given, with
/// `headers` (and the V3 subprotocol).
fn peer(
    ids: &Ids,
    port: u16,
    mode: &str,
    cert: Option<&Leaf>,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    let sock = try_connect(localhost(port)).map_err(tungstenite::Error::Io)?;
    let tls = try_tls_on(
        sock,
        "localhost",
        client_config(&[&ids.pki.ca], cert, TLS_ANY),
    )
    .map_err(tungstenite::Error::Io)?;
    let v3 = [("Sec-WebSocket-Protocol", V3)];
    ws_upgrade(tls, port, mode, &[&v3[..], headers].concat())
}

const DATA: u64 = 1;
const STREAM_START: u64 = 2;
const STREAM_RESET: u64 = 3;
const SERVICE_IDS: u64 = 5;

/// A whole tunnel frame: the 2-byte length, then the message (hand-coded protobuf).
fn frame(kind: u64, stream: u64, service: &str, payload: &[u8]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut m = Vec::new();
    for (field, v) in [(1u64, kind), (2, stream)] {
        varint(&mut m, field << 3);
        varint(&mut m, v);
    }
    for (field, b) in [(4u64, payload), (5, service.as_bytes())] {
        if !b.is_empty() {
            varint(&mut m, (field << 3) | 2);
            varint(&mut m, b.len() as u64);
            m.extend_from_slice(b);
        }
    }
    varint(&mut m, 7 << 3);
    varint(&mut m, 1);
    let mut f = (m.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(&m);
    f
}

fn kind_of(frame: &[u8]) -> u64 {
    assert!(frame.len() >= 4 && frame[2] == 0x08, "a frame: {frame:?}");
    u64::from(frame[3])
}

/// The source starts a stream on `ssh`; frames go both ways byte for byte.
fn exchange(src: &mut Ws, dst: &mut Ws) {
    let start = frame(STREAM_START, 1, "ssh", b"");
    src.send(Message::binary(start.clone()))
        .expect("send STREAM_START");
    assert_eq!(next_binary(dst), start);
    for (i, len) in [1usize, 4096, 60000].into_iter().enumerate() {
        let payload = random_bytes(len, 40 + i as u64);
        let f = frame(DATA, 1, "ssh", &payload);
        src.send(Message::binary(f.clone())).expect("send DATA");
        assert_eq!(next_binary(dst), f);
        let back = frame(DATA, 1, "ssh", &payload[..len / 2 + 1]);
        dst.send(Message::binary(back.clone()))
            .expect("send DATA back");
        assert_eq!(next_binary(src), back);
    }
}

/// What became of a peer that tried to upgrade.
fn outcome(r: Result<Ws, tungstenite::Error>) -> String {
    match r {
        Ok(_) => "admitted".into(),
        Err(tungstenite::Error::Http(resp)) => format!("HTTP {}", resp.status().as_u16()),
        Err(e) => format!("failed: {e}"),
    }
}

/// Each bad case costs only its peer, with a log line saying why: a certificate from another
/// CA, a revoked one, an expired one (all refused in the TLS handshake), a device
/// certificate without a token (403), no certificate and no token (401). A token beside a
/// certificate wins. A good pair of tungstenite peers by certificate works throughout.
#[test]
fn bad_certificates_cost_only_that_peer() {
    let ids = Ids::new();
    let good = ids.client("good", &["spiffe://t/good"]);
    let other_ca = ids.pki.other_ca.issue_with(
        ids.pki.dir.path(),
        "foreign",
        &["spiffe://t/good"],
        None,
        Usage::Client,
    );
    for driver in DRIVERS {
        let relay = start_relay(&ids, driver);
        let port = relay.port;
        // The good pair: the destination announces its service and makes the tunnel.
        let mut dst = peer(
            &ids,
            port,
            "destination",
            Some(&good),
            &[("splice-services", "ssh")],
        )
        .expect("the good destination is admitted");
        assert_eq!(kind_of(&next_binary(&mut dst)), SERVICE_IDS);
        let cases: [(&str, Option<&Leaf>, &str, &[&str]); 5] = [
            (
                "another CA",
                Some(&other_ca),
                "failed",
                &["handshake failed", "not issued by a CA"],
            ),
            (
                "revoked",
                Some(&ids.revoked),
                "failed",
                &["handshake failed", "revoked"],
            ),
            (
                "expired",
                Some(&ids.expired),
                "failed",
                &["handshake failed", "xpired"],
            ),
            (
                "device CA",
                Some(&ids.device),
                "HTTP 403",
                &["peer refused", "device CA"],
            ),
            (
                "no certificate",
                None,
                "HTTP 401",
                &["peer refused", "no access token"],
            ),
        ];
        for (what, cert, expected, log) in cases {
            // The relay's log lines of a kind are rate-limited: the bad peer tries again
            // (as a real one would) until its line shows.
            let logged = wait_until(SOON, || {
                let got = outcome(peer(&ids, port, "source", cert, &[]));
                assert!(got.starts_with(expected), "{driver}: {what}: {got}");
                relay.proc.wait_log(std::time::Duration::from_secs(1), |l| {
                    log.iter().all(|w| l.contains(w))
                })
            });
            assert!(
                logged,
                "{driver}: {what}: a log line with {log:?}:\n{}",
                relay.proc.log()
            );
        }
        // The good source pairs with the destination that waited through all that.
        let mut src = peer(&ids, port, "source", Some(&good), &[]).expect("the good source");
        assert_eq!(kind_of(&next_binary(&mut src)), SERVICE_IDS);
        exchange(&mut src, &mut dst);
        // A token and a certificate: the token decides (the token's tunnel, not the
        // certificate's).
        let body = serde_json::json!({ "destinationConfig": { "services": ["ssh"] } }).to_string();
        let (_, json) = relay.api("POST", "/tunnels", &body);
        let token = json["destinationAccessToken"].as_str().unwrap();
        let mut both = peer(
            &ids,
            port,
            "destination",
            Some(&good),
            &[("access-token", token)],
        )
        .unwrap_or_else(|e| panic!("{driver}: token and certificate: {e}"));
        // Kept open (a dropped peer would be disconnected again by the time it is looked at).
        assert_eq!(kind_of(&next_binary(&mut both)), SERVICE_IDS);
        let id = json["tunnelId"].as_str().unwrap();
        assert!(
            wait_until(SOON, || relay.connected(id, "destination")),
            "{driver}: the token's tunnel got the peer"
        );
        // The good pair was not disturbed.
        exchange(&mut src, &mut dst);
        // The same identity again as destination (a restarted device): it replaces the
        // first in the same tunnel, and the source's open stream is reset.
        let mut dst2 = peer(
            &ids,
            port,
            "destination",
            Some(&good),
            &[("splice-services", "ssh")],
        )
        .unwrap_or_else(|e| panic!("{driver}: the replacing destination: {e}"));
        assert_eq!(kind_of(&next_binary(&mut dst2)), SERVICE_IDS);
        assert_eq!(
            kind_of(&next_binary(&mut src)),
            STREAM_RESET,
            "{driver}: the source's stream is reset when its destination is replaced"
        );
        assert_eq!(
            relay.paired("spiffe://t/good").len(),
            1,
            "{driver}: one tunnel still"
        );
        drop(dst);
    }
}

/// Fifty pairs at once, each its own identity (half by URI SAN, half by fingerprint): fifty
/// tunnels, each moving its own bytes.
#[test]
fn fifty_pairs_at_once() {
    const N: usize = 50;
    let ids = Ids::new();
    let dir = ids.pki.dir.path().to_path_buf();
    let leaves: Vec<Leaf> = (0..N)
        .map(|i| {
            let uri = format!("spiffe://t/fleet/{i}");
            if i % 2 == 0 {
                ids.client(&format!("fleet-{i}"), &[&uri])
            } else {
                ids.client(&format!("fleet-{i}"), &[])
            }
        })
        .collect();
    for driver in DRIVERS {
        let relay = start_relay(&ids, driver);
        let raddr = localhost(relay.port);
        let echo = echo_backend();
        let ports: Vec<u16> = (0..N).map(|_| free_port()).collect();
        let dsts: String = leaves
            .iter()
            .enumerate()
            .map(|(i, l)| {
                agent_table(
                    "destination",
                    &format!("d{i}"),
                    raddr,
                    &ids,
                    l,
                    &format!("echo={}", echo.addr),
                )
            })
            .collect();
        let srcs: String = leaves
            .iter()
            .zip(&ports)
            .enumerate()
            .map(|(i, (l, p))| {
                agent_table(
                    "source",
                    &format!("s{i}"),
                    raddr,
                    &ids,
                    l,
                    &format!("echo=127.0.0.1:{p}"),
                )
            })
            .collect();
        let dst = start_agents(&dir, "fleet-destinations", driver, &dsts, &[]);
        let open = |relay: &Relay| {
            let (_, json) = relay.api("GET", "/tunnels", "");
            json["tunnelSummaries"].as_array().map_or(0, |a| {
                a.iter()
                    .filter(|t| t["pairing"]["kind"] == "certificate")
                    .count()
            })
        };
        assert!(
            wait_until(SOON, || open(&relay) == N),
            "{driver}: {N} tunnels:\n{}",
            dst.log()
        );
        let src = start_agents(&dir, "fleet-sources", driver, &srcs, &ports);
        let all_paired = |relay: &Relay| {
            let (_, json) = relay.api("GET", "/tunnels", "");
            json["tunnelSummaries"].as_array().is_some_and(|a| {
                a.iter()
                    .filter(|t| t["pairing"]["kind"] == "certificate")
                    .all(|t| relay.connected(t["tunnelId"].as_str().unwrap(), "source"))
            })
        };
        assert!(
            wait_until(SOON * 2, || all_paired(&relay)),
            "{driver}: every source pairs:\n{}",
            src.log()
        );
        assert_eq!(open(&relay), N, "{driver}: no tunnel more");
        let threads: Vec<_> = ports
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                spawn("echo", move || {
                    echo_when_up(localhost(p), 256 << 10, i as u64)
                })
            })
            .collect();
        let failed: Vec<String> = threads
            .into_iter()
            .filter_map(|t| t.join().expect("echo thread").err())
            .collect();
        assert!(failed.is_empty(), "{driver}: {failed:?}");
        drop(src);
        drop(dst);
    }
}

/// The same from the command line: `relay --client-ca --client-crl`, and `source` and
/// `destination` with `--identity-cert --identity-key` and no token; and the command line's
/// errors name the file and what is wrong with it.
#[test]
fn the_commands_pair_by_certificate_and_name_bad_files() {
    let ids = Ids::new();
    let driver = "epoll";
    let leaf = ids.client("cli-pair", &["spiffe://t/cli"]);
    let (port, api) = (free_port(), free_port());
    let relay_cmd = |extra: &[(&str, &Path)]| {
        let mut cmd = EngineCmd::new("relay")
            .opt("--listen", format!("127.0.0.1:{port}"))
            .opt("--cert", &ids.pki.server.cert)
            .opt("--key", &ids.pki.server.key)
            .opt("--api", format!("127.0.0.1:{api}"))
            .opt("--state", ":memory:")
            .common(driver);
        for (flag, path) in extra {
            cmd = cmd.opt(flag, path);
        }
        cmd
    };
    // Bad files: each error names its file and says what is wrong.
    let missing = ids.pki.dir.path().join("missing-ca.pem");
    let (status, err) = relay_cmd(&[("--client-ca", &missing)]).run_to_exit();
    assert!(!status.success() && err.contains("missing-ca.pem"), "{err}");
    let (status, err) = relay_cmd(&[
        ("--client-ca", &ids.clients.path),
        ("--client-crl", &ids.clients.path),
    ])
    .run_to_exit();
    assert!(
        !status.success() && err.contains("clients-ca.pem") && err.contains("revocation list"),
        "{err}"
    );
    let (status, err) = relay_cmd(&[("--client-crl", &ids.crl)]).run_to_exit();
    assert!(!status.success() && err.contains("client_crls"), "{err}");
    let (status, err) = EngineCmd::new("source")
        .opt("--relay", format!("127.0.0.1:{port}"))
        .opt("--identity-cert", &leaf.cert)
        .opt("--listen", "a=127.0.0.1:1")
        .run_to_exit();
    assert!(!status.success() && err.contains("--identity-key"), "{err}");
    // The pair, from the command line.
    let relay = relay_cmd(&[
        ("--client-ca", &ids.clients.path),
        ("--client-crl", &ids.crl),
    ])
    .wait_port(port)
    .wait_port(api)
    .label("relay command")
    .start();
    let echo = echo_backend();
    let local = free_port();
    let agent = |kind: &str, key: &str, value: String| {
        EngineCmd::new(kind)
            .opt("--relay", format!("127.0.0.1:{port}"))
            .opt("--ca", &ids.pki.ca.path)
            .opt("--sni", "localhost")
            .opt("--identity-cert", &leaf.cert)
            .opt("--identity-key", &leaf.key)
            .opt(key, value)
            .common(driver)
            .label(format!("{kind} command"))
    };
    let dst = agent("destination", "--connect", format!("echo={}", echo.addr)).start();
    let src = agent("source", "--listen", format!("echo=127.0.0.1:{local}"))
        .wait_port(local)
        .start();
    let r = Relay {
        proc: relay,
        port,
        api: localhost(api),
        metrics: None,
        config: None,
    };
    r.wait_pair("spiffe://t/cli", &[&src, &dst]);
    echo_when_up(localhost(local), 1 << 20, 5).unwrap();
}

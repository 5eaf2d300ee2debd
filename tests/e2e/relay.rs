//! The tunnel relay (`[[relay]]` in a `run --config` file) against independent WebSocket
//! clients: tungstenite over rustls as the source and the destination, tunnels opened through
//! the relay's HTTP API, tunnel frames written by hand (protobuf, as `Message.proto` says).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use tungstenite::Message;
use tungstenite::protocol::WebSocket;

use crate::support::*;

type Ws = WebSocket<TlsStream>;

const V3: &str = "aws.iot.securetunneling-3.0";
const V2: &str = "aws.iot.securetunneling-2.0";

/// A relay started by `run --config`, with its metrics endpoint.
struct Relay {
    proc: Proc,
    port: u16,
    api: SocketAddr,
    metrics: SocketAddr,
}

fn start_relay(pki: &Pki, driver: &str, extra: &str) -> Relay {
    start_relay_with(pki, driver, 2, ":memory:", extra)
}

/// [`start_relay`] on `threads` shards with its registry at `state`.
fn start_relay_with(pki: &Pki, driver: &str, threads: usize, state: &str, extra: &str) -> Relay {
    let (port, api, metrics) = (free_port(), free_port(), free_port());
    let path = pki.dir.path().join(format!("relay-{port}.toml"));
    let toml = format!(
        "driver = \"{driver}\"\nthreads = {threads}\nmetrics = \"127.0.0.1:{metrics}\"\n\n[[relay]]\nname = \"r\"\nlisten = \"127.0.0.1:{port}\"\n\
         cert = \"{}\"\nkey = \"{}\"\napi = \"127.0.0.1:{api}\"\nstate = {state:?}\n{extra}",
        pki.server.cert.display(),
        pki.server.key.display(),
    );
    write_file(&path, toml.as_bytes());
    let proc = EngineCmd::new("run")
        .opt("--config", &path)
        .opt("--log-level", "info")
        .wait_port(port)
        .wait_port(api)
        .wait_port(metrics)
        .label(format!("relay ({driver})"))
        .start();
    Relay {
        proc,
        port,
        api: localhost(api),
        metrics: localhost(metrics),
    }
}

/// One HTTP/1.1 request to the API; the status and the JSON body.
fn api(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    api_request(addr, method, path, body)
}

struct Tunnel {
    id: String,
    source: String,
    destination: String,
}

fn open_tunnel(relay: &Relay, services: &[&str]) -> Tunnel {
    let body = serde_json::json!({ "destinationConfig": { "services": services } }).to_string();
    let (status, json) = api(relay.api, "POST", "/tunnels", &body);
    assert_eq!(status, 200, "open: {json}");
    let s = |k: &str| json[k].as_str().expect(k).to_string();
    Tunnel {
        id: s("tunnelId"),
        source: s("sourceAccessToken"),
        destination: s("destinationAccessToken"),
    }
}

/// The upgrade as localproxy sends it, with `headers` added (name, value).
fn try_peer(
    pki: &Pki,
    port: u16,
    mode: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    let tls = tls_connect(
        localhost(port),
        "localhost",
        client_config(&[&pki.ca], None, TLS_ANY),
    );
    ws_upgrade(tls, port, mode, headers)
}

fn peer(pki: &Pki, port: u16, mode: &str, token: &str, protocol: &str) -> Ws {
    try_peer(
        pki,
        port,
        mode,
        &[
            ("access-token", token),
            ("Sec-WebSocket-Protocol", protocol),
        ],
    )
    .unwrap_or_else(|e| panic!("{mode} upgrade: {e}"))
}

/// The HTTP status a refused upgrade got.
fn refused(r: Result<Ws, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

// --- tunnel frames, hand-coded protobuf ---

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        varint(out, field << 3);
        varint(out, v);
    }
}

fn field_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    if !b.is_empty() {
        varint(out, (field << 3) | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

/// A whole frame: the 2-byte length, then the message.
fn frame(kind: u64, stream: u64, service: &str, connection: u64, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    field_varint(&mut m, 1, kind);
    field_varint(&mut m, 2, stream);
    field_bytes(&mut m, 4, payload);
    field_bytes(&mut m, 5, service.as_bytes());
    field_varint(&mut m, 7, connection);
    let mut f = (m.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(&m);
    f
}

const DATA: u64 = 1;
const STREAM_START: u64 = 2;
const STREAM_RESET: u64 = 3;
const SERVICE_IDS: u64 = 5;

/// The next binary message (pings and pongs skipped).
fn next_binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => return b.to_vec(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

/// The message's `type` (field 1, the first byte after the prefix and the tag).
fn kind_of(frame: &[u8]) -> u64 {
    assert!(
        frame.len() >= 4 && frame[2] == 0x08,
        "a frame starting with its type: {frame:?}"
    );
    u64::from(frame[3])
}

/// Reads until the peer's close frame; its code.
fn close_code(ws: &mut Ws) -> Option<u16> {
    close_frame(ws).map(|(code, _)| code)
}

/// Reads until the peer's close frame; its code and reason.
fn close_frame(ws: &mut Ws) -> Option<(u16, String)> {
    loop {
        match ws.read() {
            Ok(Message::Close(c)) => return c.map(|c| (u16::from(c.code), c.reason.to_string())),
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return None;
            }
            Err(e) => panic!("waiting for a close frame: {e}"),
        }
    }
}

/// Reads until the connection ends: true when it ended without a close frame.
fn hung_up(ws: &mut Ws) -> bool {
    use tungstenite::error::ProtocolError::ResetWithoutClosingHandshake;
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => return false,
            Ok(_) => continue,
            Err(tungstenite::Error::Protocol(ResetWithoutClosingHandshake)) => return true,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return true;
            }
            Err(e) => panic!("waiting for the connection to end: {e}"),
        }
    }
}

/// The source starts a stream on `service` and both sides exchange frames; each frame comes
/// out as one message, byte-identical.
fn exchange(src: &mut Ws, dst: &mut Ws, service: &str, stream: u64) {
    let start = frame(STREAM_START, stream, service, 1, b"");
    src.send(Message::binary(start.clone()))
        .expect("send STREAM_START");
    assert_eq!(next_binary(dst), start, "STREAM_START forwarded as is");
    for (i, len) in [1usize, 100, 4096, 64512].into_iter().enumerate() {
        let payload = random_bytes(len, 300 + i as u64);
        let f = frame(DATA, stream, service, 1, &payload);
        src.send(Message::binary(f.clone())).expect("send DATA");
        assert_eq!(
            next_binary(dst),
            f,
            "DATA of {len} bytes, source to destination"
        );
        let back = frame(DATA, stream, service, 1, &payload[..len / 2 + 1]);
        dst.send(Message::binary(back.clone()))
            .expect("send DATA back");
        assert_eq!(next_binary(src), back, "DATA, destination to source");
    }
    // Two frames in one WebSocket message come out as two messages.
    let a = frame(DATA, stream, service, 1, b"first");
    let b = frame(DATA, stream, service, 1, b"second");
    src.send(Message::binary([a.clone(), b.clone()].concat()))
        .expect("send two frames");
    assert_eq!(next_binary(dst), a, "first of two frames");
    assert_eq!(next_binary(dst), b, "second of two frames");
}

fn pair(pki: &Pki, relay: &Relay, t: &Tunnel) -> (Ws, Ws) {
    let mut src = peer(pki, relay.port, "source", &t.source, V3);
    let ids = next_binary(&mut src);
    assert_eq!(
        kind_of(&ids),
        SERVICE_IDS,
        "SERVICE_IDS first, to the source"
    );
    let mut dst = peer(pki, relay.port, "destination", &t.destination, V3);
    let ids = next_binary(&mut dst);
    assert_eq!(
        kind_of(&ids),
        SERVICE_IDS,
        "SERVICE_IDS first, to the destination"
    );
    (src, dst)
}

#[test]
fn relay_pairs_peers_and_forwards_frames_as_they_came() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, "");
        // Several tunnels: with two shards, some peers are accepted on the shard that is not
        // their tunnel's and are handed over (16 connections all landing on their tunnel's
        // shard by chance: 1 in 65536).
        for n in 0..8 {
            let t = open_tunnel(&relay, &["ssh", "web"]);
            let (mut src, mut dst) = pair(&pki, &relay, &t);
            exchange(
                &mut src,
                &mut dst,
                if n % 2 == 0 { "ssh" } else { "web" },
                1,
            );
            // A ping is answered.
            src.send(Message::Ping(b"are you there".to_vec().into()))
                .expect("ping");
            let pong = loop {
                match src.read().expect("pong") {
                    Message::Pong(p) => break p,
                    Message::Ping(_) => continue,
                    other => panic!("{driver}: expected the pong, got {other:?}"),
                }
            };
            assert_eq!(&pong[..], b"are you there", "{driver}: pong payload");
            // The source goes: the destination hears a STREAM_RESET for the open stream.
            drop(src);
            let reset = next_binary(&mut dst);
            assert_eq!(
                kind_of(&reset),
                STREAM_RESET,
                "{driver}: reset when the source goes"
            );
        }
        let log = relay.proc.log();
        assert!(
            !log.contains(" ERROR "),
            "{driver}: errors in the log:\n{log}"
        );
        let r = [("relay", "r")];
        let m = wait_metric(relay.metrics, "splice_tunnels_open", &r, |v| v == 0.0);
        assert!(
            m.value("splice_tunnel_handoffs_total", &r) > 0.0,
            "{driver}: peers handed to their tunnel's shard:\n{}",
            m.text
        );
        // Per tunnel: STREAM_START, 4 DATA and the two joined ones each way.
        let out: f64 = [1usize, 100, 4096, 64512]
            .iter()
            .map(|len| frame(DATA, 1, "ssh", 1, &vec![1; *len]).len() as f64)
            .sum::<f64>()
            + (frame(STREAM_START, 1, "ssh", 1, b"").len()
                + frame(DATA, 1, "ssh", 1, b"first").len()
                + frame(DATA, 1, "ssh", 1, b"second").len()) as f64;
        let sent = m.value(
            "splice_tunnel_bytes_total",
            &[("relay", "r"), ("direction", "source_to_destination")],
        );
        assert_eq!(sent, 8.0 * out, "{driver}: bytes source to destination");
        for side in ["source", "destination"] {
            let m = wait_metric(
                relay.metrics,
                "splice_tunnel_peers_connected",
                &[("relay", "r"), ("side", side)],
                |v| v == 0.0,
            );
            assert_eq!(m.value("splice_tunnel_streams_active", &r), 0.0);
        }
    }
}

/// `CloseTunnel` through the API sends both peers a close frame (1000, "tunnel closed");
/// a rotation of one side's token drops that side's peer and only it.
#[test]
fn relay_tunnel_close_and_rotate_reach_the_peers() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, "");
        for _ in 0..3 {
            let t = open_tunnel(&relay, &["ssh"]);
            let (mut src, mut dst) = pair(&pki, &relay, &t);
            let (status, _) = api(relay.api, "POST", &format!("/tunnels/{}/close", t.id), "{}");
            assert_eq!(status, 200);
            for (who, ws) in [("source", &mut src), ("destination", &mut dst)] {
                assert_eq!(
                    close_frame(ws),
                    Some((1000, "tunnel closed".to_string())),
                    "{driver}: the {who} hears the close"
                );
            }
        }
        let t = open_tunnel(&relay, &["ssh"]);
        let (mut src, mut dst) = pair(&pki, &relay, &t);
        let (status, json) = api(
            relay.api,
            "POST",
            &format!("/tunnels/{}/rotate", t.id),
            r#"{"clientMode":"DESTINATION"}"#,
        );
        assert_eq!(status, 200, "rotate: {json}");
        let end = loop {
            match dst.read() {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                other => break other,
            }
        };
        assert!(
            end.is_err(),
            "{driver}: the rotated destination is dropped: {end:?}"
        );
        // The registry hears of it: the destination is disconnected, the source is not.
        let state = |side: &str| {
            let (_, json) = api(relay.api, "GET", &format!("/tunnels/{}", t.id), "");
            json["tunnel"][format!("{side}ConnectionState")]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            wait_until(SOON, || state("destination") == "DISCONNECTED"),
            "{driver}: the rotated destination is recorded disconnected"
        );
        assert_eq!(state("source"), "CONNECTED", "{driver}");
        src.send(Message::Ping(b"still here".to_vec().into()))
            .expect("ping");
        loop {
            match src.read().expect("the source stays") {
                Message::Pong(p) => {
                    assert_eq!(&p[..], b"still here");
                    break;
                }
                Message::Binary(_) | Message::Ping(_) => continue,
                other => panic!("{driver}: {other:?}"),
            }
        }
    }
}

fn raw_send(ws: &mut Ws, bytes: &[u8]) {
    let tls = ws.get_mut();
    tls.write_all(bytes).expect("raw write");
    tls.flush().expect("flush");
}

/// Each bad input costs only the peer that sent it its connection, with the documented
/// status or close code; the tunnel's other peer keeps working.
#[test]
fn relay_bad_inputs_cost_only_that_peer() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, "");
        let t = open_tunnel(&relay, &["ssh"]);
        let client_token = "c".repeat(40);
        let mut src = peer(&pki, relay.port, "source", &t.source, V3);
        assert_eq!(kind_of(&next_binary(&mut src)), SERVICE_IDS);
        let dst_headers = [
            ("access-token", t.destination.as_str()),
            ("client-token", client_token.as_str()),
            ("Sec-WebSocket-Protocol", V3),
        ];
        let connect_dst = || {
            let mut d = try_peer(&pki, relay.port, "destination", &dst_headers)
                .expect("destination with its client token");
            assert_eq!(kind_of(&next_binary(&mut d)), SERVICE_IDS);
            d
        };
        let mut dst = connect_dst();

        // Garbage instead of TLS: the connection is closed, nothing else happens.
        let mut g = connect(localhost(relay.port));
        g.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = g.write_all(b"GET /tunnel HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = [0u8; 64];
        let r = g.read(&mut buf);
        assert!(
            matches!(r, Ok(n) if n < 64) || r.is_err(),
            "{driver}: garbage instead of TLS is answered by an alert or nothing, then closed"
        );
        drop(g);

        // Bad HTTP: not a GET.
        let mut tls = tls_connect(
            localhost(relay.port),
            "localhost",
            client_config(&[&pki.ca], None, TLS_ANY),
        );
        tls.write_all(b"POST /tunnel?local-proxy-mode=source HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = tls.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{driver}: bad HTTP: {answer}"
        );

        // No subprotocol offered.
        let r = try_peer(&pki, relay.port, "source", &[("access-token", &t.source)]);
        assert_eq!(refused(r), 400, "{driver}: no subprotocol");
        // Two tokens.
        let r = try_peer(
            &pki,
            relay.port,
            "source",
            &[
                ("access-token", &t.source),
                ("access-token", &t.destination),
                ("Sec-WebSocket-Protocol", V3),
            ],
        );
        assert_eq!(refused(r), 400, "{driver}: two tokens");
        // A wrong token, and the source's used one again (no client token): 403.
        let wrong = "A".repeat(t.source.len());
        let r = try_peer(
            &pki,
            relay.port,
            "source",
            &[("access-token", &wrong), ("Sec-WebSocket-Protocol", V3)],
        );
        assert_eq!(refused(r), 403, "{driver}: wrong token");
        let r = try_peer(
            &pki,
            relay.port,
            "source",
            &[("access-token", &t.source), ("Sec-WebSocket-Protocol", V2)],
        );
        assert_eq!(refused(r), 403, "{driver}: reused token");
        // A closed tunnel: 410.
        let closed = open_tunnel(&relay, &["ssh"]);
        let (status, _) = api(
            relay.api,
            "POST",
            &format!("/tunnels/{}/close", closed.id),
            "{}",
        );
        assert_eq!(status, 200, "close through the API");
        let r = try_peer(
            &pki,
            relay.port,
            "source",
            &[
                ("access-token", &closed.source),
                ("Sec-WebSocket-Protocol", V3),
            ],
        );
        assert_eq!(refused(r), 410, "{driver}: closed tunnel");

        // Frame-level rule breaks by the destination: each closes it with its code; the
        // source hears a STREAM_RESET and stays; the destination comes back with its client
        // token.
        let cases: [(&str, Vec<u8>, u16); 4] = [
            ("DATA before STREAM_START", Vec::new(), 1008),
            // A text frame (masked, "hi").
            (
                "text frame",
                vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2],
                1003,
            ),
            // An unmasked binary frame.
            ("unmasked frame", vec![0x82, 0x01, 0x00], 1002),
            // A frame longer than the limit (its header alone says so).
            (
                "oversized frame",
                {
                    let mut h = vec![0x82, 0x80 | 127];
                    h.extend_from_slice(&(200_000u64).to_be_bytes());
                    h.extend_from_slice(&[0, 0, 0, 0]);
                    h
                },
                1009,
            ),
        ];
        for (what, bytes, code) in cases {
            if bytes.is_empty() {
                // A fresh destination connection has no stream: DATA on it breaks the rule.
                let f = frame(DATA, 7, "ssh", 1, b"too early");
                dst.send(Message::binary(f)).expect("send DATA");
            } else {
                raw_send(&mut dst, &bytes);
            }
            assert_eq!(close_code(&mut dst), Some(code), "{driver}: {what}");
            if what != "DATA before STREAM_START" {
                let reset = next_binary(&mut src);
                assert_eq!(
                    kind_of(&reset),
                    STREAM_RESET,
                    "{driver}: {what}: source reset"
                );
            }
            dst = connect_dst();
            exchange(&mut src, &mut dst, "ssh", 2 + code as u64);
        }
        let log = relay.proc.log();
        assert!(
            !log.contains(&t.source) && !log.contains(&t.destination),
            "{driver}: a token in the log"
        );
        let m = scrape(relay.metrics);
        let refused = |status: &str| {
            m.value(
                "splice_tunnel_upgrades_refused_total",
                &[("relay", "r"), ("status", status)],
            )
        };
        assert_eq!(
            refused("400"),
            3.0,
            "{driver}: bad HTTP, no subprotocol, two tokens"
        );
        assert_eq!(refused("403"), 2.0, "{driver}: wrong and reused tokens");
        assert_eq!(refused("410"), 1.0, "{driver}: closed tunnel");
        assert_eq!(
            m.value("splice_tunnel_tls_failures_total", &[("relay", "r")]),
            1.0
        );
        assert_eq!(
            m.value("splice_tunnel_rule_breaks_total", &[("relay", "r")]),
            4.0
        );
        assert_eq!(
            m.value(
                "splice_tunnel_peers_connected",
                &[("relay", "r"), ("side", "destination")]
            ),
            1.0
        );
    }
}

/// A destination that stops reading: the relay stops reading its source (back-pressure)
/// instead of buffering, so its memory stays bounded while the source pushes on; once the
/// destination reads again every frame arrives, in order and intact.
#[test]
fn relay_slow_destination_holds_back_the_source_with_bounded_memory() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, "");
        let t = open_tunnel(&relay, &["ssh"]);
        let (mut src, mut dst) = pair(&pki, &relay, &t);
        let start = frame(STREAM_START, 1, "ssh", 1, b"");
        src.send(Message::binary(start.clone()))
            .expect("STREAM_START");
        assert_eq!(next_binary(&mut dst), start);
        let rss_before = relay.proc.rss_kib();
        // 96 MiB of DATA in 63 KiB frames, each frame's payload filled with its number.
        const FRAMES: u64 = 1600;
        let payload_of = |i: u64| vec![(i % 251) as u8; 64512];
        let sent = Arc::new(AtomicU64::new(0));
        let sent2 = sent.clone();
        src.get_mut()
            .sock
            .set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        let writer = spawn("slow-dst-source", move || {
            for i in 0..FRAMES {
                let f = frame(DATA, 1, "ssh", 1, &payload_of(i));
                src.send(Message::binary(f)).expect("source send");
                sent2.fetch_add(1, Ordering::SeqCst);
            }
            src
        });
        // The destination reads nothing for a while: the source gets stuck.
        std::thread::sleep(Duration::from_secs(2));
        let stuck_at = sent.load(Ordering::SeqCst);
        assert!(
            stuck_at < FRAMES / 4,
            "{driver}: the source sent {stuck_at} of {FRAMES} frames to a destination that reads nothing"
        );
        let grown = relay.proc.rss_kib().saturating_sub(rss_before);
        assert!(
            grown < 24 * 1024,
            "{driver}: the relay grew by {grown} KiB behind a destination that reads nothing"
        );
        // Now it reads: everything comes, in order.
        for i in 0..FRAMES {
            let got = next_binary(&mut dst);
            assert_eq!(
                got,
                frame(DATA, 1, "ssh", 1, &payload_of(i)),
                "{driver}: frame {i}"
            );
        }
        let _src = writer.join().expect("source thread");
        assert_eq!(sent.load(Ordering::SeqCst), FRAMES);
    }
}

/// Python's `websockets` (python3-websockets, installed by .ci/run) as the source and the
/// destination: a second WebSocket and TLS stack that is not ours, speaking V2.
const PY_PEERS: &str = r#"
import asyncio, ssl, sys
import websockets

port, ca, src_token, dst_token = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
V2 = "aws.iot.securetunneling-2.0"

def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7f) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)

def frame(kind, stream, service, payload=b""):
    m = b"\x08" + varint(kind)
    if stream:
        m += b"\x10" + varint(stream)
    if payload:
        m += b"\x22" + varint(len(payload)) + payload
    if service:
        s = service.encode()
        m += b"\x2a" + varint(len(s)) + s
    return len(m).to_bytes(2, "big") + m

async def peer(mode, token):
    ctx = ssl.create_default_context(cafile=ca)
    if mode == "destination":
        # OpenSSL on TLS 1.2 on one side, TLS 1.3 on the other: both of the relay's record
        # layers against an independent TLS stack.
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ws = await websockets.connect(
        f"wss://localhost:{port}/tunnel?local-proxy-mode={mode}",
        ssl=ctx, subprotocols=[V2], extra_headers={"access-token": token},
        max_size=None, ping_interval=None)
    assert ws.subprotocol == V2, ws.subprotocol
    version = ws.transport.get_extra_info("ssl_object").version()
    assert version == ("TLSv1.2" if mode == "destination" else "TLSv1.3"), version
    ids = await ws.recv()
    assert isinstance(ids, bytes) and ids[2:4] == b"\x08\x05", ids
    return ws

async def main():
    src = await peer("source", src_token)
    dst = await peer("destination", dst_token)
    start = frame(2, 1, "ssh")
    await src.send(start)
    assert await dst.recv() == start
    for n in (1, 1000, 64512):
        data = frame(1, 1, "ssh", bytes(range(256)) * (n // 256) + b"x" * (n % 256))
        await src.send(data)
        assert await dst.recv() == data, n
        back = frame(1, 1, "ssh", b"reply %d" % n)
        await dst.send(back)
        assert await src.recv() == back, n
    pong = await src.ping(b"py")
    await asyncio.wait_for(pong, 10)
    await src.close()
    reset = await dst.recv()
    assert reset[2:4] == b"\x08\x03", reset
    await dst.close()
    print("OK")

asyncio.run(asyncio.wait_for(main(), 30))
"#;

#[test]
fn relay_serves_python_websockets_peers() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, "");
        let t = open_tunnel(&relay, &["ssh"]);
        let out = std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(PY_PEERS)
            .arg(relay.port.to_string())
            .arg(&pki.ca.path)
            .arg(&t.source)
            .arg(&t.destination)
            .output()
            .expect("run /usr/bin/python3 (the tests need python3 and python3-websockets)");
        assert!(
            out.status.success() && out.stdout.starts_with(b"OK"),
            "{driver}: python websockets peers: {}\n{}\nrelay log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            relay.proc.log()
        );
    }
}

/// A peer that goes silent is pinged after `ping_after` and dropped after `idle_timeout`
/// (localproxy never times out a pong: half-open connections are the relay's to find); the
/// other peer, which answers, stays.
#[test]
fn relay_pings_and_drops_a_silent_peer() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, "ping_after = \"1s\"\nidle_timeout = \"3s\"\n");
        let t = open_tunnel(&relay, &["ssh"]);
        let (mut src, mut dst) = pair(&pki, &relay, &t);
        let start = frame(STREAM_START, 1, "ssh", 1, b"");
        src.send(Message::binary(start.clone()))
            .expect("STREAM_START");
        assert_eq!(next_binary(&mut dst), start);
        // The source reads (tungstenite answers pings as it reads); the destination does not.
        src.get_mut()
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let began = std::time::Instant::now();
        let mut pinged = false;
        let mut reset = false;
        while began.elapsed() < Duration::from_secs(5) {
            match src.read() {
                Ok(Message::Ping(_)) => pinged = true,
                Ok(Message::Binary(b)) => {
                    assert_eq!(kind_of(&b), STREAM_RESET, "{driver}");
                    reset = true;
                }
                Ok(other) => panic!("{driver}: {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!(
                    "{driver}: the source lost its connection: {e}\n{}",
                    relay.proc.log()
                ),
            }
            let _ = src.flush();
        }
        assert!(pinged, "{driver}: the relay pinged the source");
        assert!(
            reset,
            "{driver}: the source heard the silent destination's stream reset"
        );
        // The destination was pinged, then dropped without a close frame.
        let mut saw_ping = false;
        let end = loop {
            match dst.read() {
                Ok(Message::Ping(_)) => saw_ping = true,
                Ok(other) => panic!("{driver}: {other:?}"),
                Err(e) => break e,
            }
        };
        assert!(saw_ping, "{driver}: the destination was pinged first");
        assert!(
            !matches!(end, tungstenite::Error::ConnectionClosed),
            "{driver}: dropped without a close handshake: {end}"
        );
        assert!(
            relay.proc.log().contains("idle"),
            "{driver}: the drop is logged"
        );
    }
}

/// Idle connected peers cost the relay little memory, even after a burst: no receive buffer
/// is held while a peer sends nothing (readiness first), and no message buffer between
/// messages.
#[test]
fn relay_idle_peers_cost_little_memory() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, "");
        // Warm up (allocator arenas, first tunnels), then measure the next ones.
        let mut held = Vec::new();
        for _ in 0..20 {
            let t = open_tunnel(&relay, &["ssh"]);
            held.push(pair(&pki, &relay, &t));
        }
        let before = relay.proc.rss_kib();
        const TUNNELS: usize = 200;
        for _ in 0..TUNNELS {
            let t = open_tunnel(&relay, &["ssh"]);
            let (mut src, mut dst) = pair(&pki, &relay, &t);
            // One burst each way first, so that buffers were used, then silence.
            let start = frame(STREAM_START, 1, "ssh", 1, b"");
            src.send(Message::binary(start.clone()))
                .expect("STREAM_START");
            assert_eq!(next_binary(&mut dst), start);
            let data = frame(DATA, 1, "ssh", 1, &[7; 60_000]);
            src.send(Message::binary(data.clone())).expect("DATA");
            assert_eq!(next_binary(&mut dst), data);
            dst.send(Message::binary(data.clone())).expect("DATA back");
            assert_eq!(next_binary(&mut src), data);
            held.push((src, dst));
        }
        std::thread::sleep(Duration::from_millis(300));
        let grown = relay.proc.rss_kib().saturating_sub(before);
        let per_peer = grown as f64 / (2 * TUNNELS) as f64;
        eprintln!(
            "{driver}: {per_peer:.1} KiB per idle peer ({grown} KiB for {} peers)",
            2 * TUNNELS
        );
        assert!(
            per_peer < 64.0,
            "{driver}: {per_peer:.1} KiB per idle connected peer ({grown} KiB for {} peers)",
            2 * TUNNELS
        );
    }
}

/// A peer closed for a rule break while it still sends gets the close frame that says why,
/// not a reset that would discard it: the relay half-closes and drains what the peer sends
/// before it closes the socket.
#[test]
fn relay_close_frame_reaches_a_peer_that_keeps_sending() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, "");
        for round in 0..3 {
            let t = open_tunnel(&relay, &["ssh"]);
            let (_src, mut dst) = pair(&pki, &relay, &t);
            // A text frame, then 1 MiB more in binary frames, all in one go.
            let mut bytes = vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
            let payload = vec![0u8; 65_000];
            for _ in 0..16 {
                bytes.extend_from_slice(&[0x82, 0x80 | 126]);
                bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                bytes.extend_from_slice(&[0, 0, 0, 0]);
                bytes.extend_from_slice(&payload);
            }
            raw_send(&mut dst, &bytes);
            let end = loop {
                match dst.read() {
                    Ok(Message::Close(c)) => break Ok(c.map(|c| u16::from(c.code))),
                    Ok(_) => continue,
                    Err(e) => break Err(e),
                }
            };
            assert!(
                matches!(end, Ok(Some(1003))),
                "{driver}, round {round}: the close frame (1003) reaches the peer: {end:?}"
            );
        }
    }
}

/// `rate_limit` holds each tunnel direction to its bytes per second (after a one-second
/// burst): the relay stops reading the sender while it is over, so nothing is buffered or lost.
#[test]
fn relay_rate_limit_holds_a_tunnel_back() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, "rate_limit = 1000000\n");
        let t = open_tunnel(&relay, &["ssh"]);
        let (mut src, mut dst) = pair(&pki, &relay, &t);
        let start = frame(STREAM_START, 1, "ssh", 1, b"");
        src.send(Message::binary(start.clone()))
            .expect("STREAM_START");
        assert_eq!(next_binary(&mut dst), start);
        // About 3.1 MB: the first 1 MB goes at once, the rest at 1 MB/s, so at least 2 s.
        const FRAMES: usize = 48;
        let began = std::time::Instant::now();
        let writer = spawn("rate-limited-source", move || {
            for i in 0..FRAMES {
                let f = frame(DATA, 1, "ssh", 1, &vec![i as u8; 64512]);
                src.send(Message::binary(f)).expect("source send");
            }
            src
        });
        for i in 0..FRAMES {
            assert_eq!(
                next_binary(&mut dst),
                frame(DATA, 1, "ssh", 1, &vec![i as u8; 64512]),
                "{driver}: frame {i}"
            );
        }
        let took = began.elapsed();
        let _src = writer.join().expect("source thread");
        assert!(
            took >= Duration::from_millis(1500),
            "{driver}: 3.1 MB through a 1 MB/s tunnel took only {took:?}"
        );
    }
}

/// SIGTERM: the relay stops accepting, ends its peers' connections without a close frame (the
/// tunnels outlive the relay in its registry; a close frame would make localproxy give up, §8)
/// and exits.
#[test]
fn relay_drain_hangs_up_without_a_close_frame() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let mut relay = start_relay(&pki, driver, "");
        let t = open_tunnel(&relay, &["ssh"]);
        let (mut src, mut dst) = pair(&pki, &relay, &t);
        relay.proc.signal(libc::SIGTERM);
        for (who, ws) in [("source", &mut src), ("destination", &mut dst)] {
            assert!(
                hung_up(ws),
                "{driver}: the {who}'s connection ends with no close frame"
            );
        }
        drop((src, dst));
        let status = relay.proc.wait_exit(SOON);
        assert!(
            status.is_some_and(|s| s.success()),
            "{driver}: the relay exits cleanly after its peers: {status:?}\n{}",
            relay.proc.log()
        );
    }
}

/// The tunnel in the commands: `splice-engine relay`, `splice-engine tunnel open --json`, then
/// two peers through the relay's agent endpoint.
#[test]
fn relay_command_serves_agents() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let (port, api) = (free_port(), free_port());
        let _proc = EngineCmd::new("relay")
            .opt("--listen", localhost(port).to_string())
            .opt("--cert", &pki.server.cert)
            .opt("--key", &pki.server.key)
            .opt("--api", localhost(api).to_string())
            .opt("--state", ":memory:")
            .common(driver)
            .wait_port(port)
            .wait_port(api)
            .label(format!("relay command ({driver})"))
            .start();
        let out = std::process::Command::new(BIN)
            .args(["tunnel", "open", "--api"])
            .arg(format!("http://{}", localhost(api)))
            .args(["--service", "ssh", "--json"])
            .output()
            .expect("run splice-engine tunnel open");
        assert!(out.status.success(), "{driver}: tunnel open: {out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let token = |k: &str| json[k].as_str().expect(k).to_string();
        let mut src = peer(&pki, port, "source", &token("sourceAccessToken"), V3);
        assert_eq!(kind_of(&next_binary(&mut src)), SERVICE_IDS);
        let mut dst = peer(
            &pki,
            port,
            "destination",
            &token("destinationAccessToken"),
            V3,
        );
        assert_eq!(kind_of(&next_binary(&mut dst)), SERVICE_IDS);
        exchange(&mut src, &mut dst, "ssh", 1);
    }
}

/// Out of file descriptors, the relay's listeners pause instead of spinning on `EMFILE`, and
/// accept again once fds are free.
#[test]
fn relay_out_of_fds_does_not_spin() {
    use crate::faults::{clock_ticks_per_sec, cpu_ticks, open_fds, set_nofile};
    let pki = Pki::new();
    for driver in DRIVERS {
        // The held connections say nothing: keep them for the whole test.
        let relay = start_relay(&pki, driver, "handshake_timeout = \"120s\"\n");
        let pid = relay.proc.pid();
        let limit = open_fds(pid) + 20;
        set_nofile(pid, limit);
        let held: Vec<std::net::TcpStream> =
            (0..100).map(|_| connect(localhost(relay.port))).collect();
        assert!(
            relay
                .proc
                .wait_log(SOON, |l| l.contains("Too many open files")),
            "{driver}: the relay never ran out of fds (limit {limit})"
        );
        let before = cpu_ticks(pid);
        let window = Duration::from_secs(3);
        std::thread::sleep(window);
        let cpu = cpu_ticks(pid) - before;
        let max = clock_ticks_per_sec() * window.as_secs() / 3;
        assert!(
            cpu <= max,
            "{driver}: {cpu} ticks of CPU in {window:?} out of fds (bound {max}): the accept loop spins"
        );
        // Freed fds: the relay serves peers again.
        drop(held);
        let t = open_tunnel(&relay, &["ssh"]);
        let (mut src, mut dst) = pair(&pki, &relay, &t);
        exchange(&mut src, &mut dst, "ssh", 1);
    }
}

/// `/metrics` counts per open tunnel (bytes by direction, peers, streams), beside the
/// per-relay totals; describe shows the tunnel's bytes; a closed tunnel's series go.
#[test]
fn relay_metrics_per_tunnel_follow_open_tunnels() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, "");
        let (busy, quiet) = (open_tunnel(&relay, &["ssh"]), open_tunnel(&relay, &["ssh"]));
        let (mut src, mut dst) = pair(&pki, &relay, &busy);
        let (_qsrc, _qdst) = pair(&pki, &relay, &quiet);
        exchange(&mut src, &mut dst, "ssh", 1);
        // What `exchange` sends from the source: STREAM_START, 4 DATA and two joined ones.
        let up: usize = [1usize, 100, 4096, 64512]
            .iter()
            .map(|len| frame(DATA, 1, "ssh", 1, &vec![1; *len]).len())
            .sum::<usize>()
            + frame(STREAM_START, 1, "ssh", 1, b"").len()
            + frame(DATA, 1, "ssh", 1, b"first").len()
            + frame(DATA, 1, "ssh", 1, b"second").len();
        let down: usize = [1usize, 100, 4096, 64512]
            .iter()
            .map(|len| frame(DATA, 1, "ssh", 1, &vec![1; len / 2 + 1]).len())
            .sum();
        let series = "splice_relay_tunnel_bytes_total";
        fn bytes<'a>(id: &'a str, dir: &'a str) -> [(&'a str, &'a str); 3] {
            [("relay", "r"), ("tunnel", id), ("direction", dir)]
        }
        let (busy_id, quiet_id) = (busy.id.as_str(), quiet.id.as_str());
        let m = wait_metric(
            relay.metrics,
            series,
            &bytes(busy_id, "destination_to_source"),
            |v| v == down as f64,
        );
        assert_eq!(
            m.value(series, &bytes(busy_id, "source_to_destination")),
            up as f64,
            "{driver}: the busy tunnel's bytes up:\n{}",
            m.text
        );
        for dir in ["source_to_destination", "destination_to_source"] {
            assert_eq!(
                m.value(series, &bytes(quiet_id, dir)),
                0.0,
                "{driver}: the quiet tunnel moved nothing {dir}"
            );
        }
        for (id, streams) in [(busy_id, 1.0), (quiet_id, 0.0)] {
            for side in ["source", "destination"] {
                assert_eq!(
                    m.value(
                        "splice_relay_tunnel_peers_connected",
                        &[("relay", "r"), ("tunnel", id), ("side", side)]
                    ),
                    1.0,
                    "{driver}: {id} {side}:\n{}",
                    m.text
                );
            }
            assert_eq!(
                m.value(
                    "splice_relay_tunnel_streams_active",
                    &[("relay", "r"), ("tunnel", id)]
                ),
                streams,
                "{driver}: {id} streams"
            );
        }
        // The per-relay totals stay.
        assert_eq!(
            m.value(
                "splice_tunnel_bytes_total",
                &[("relay", "r"), ("direction", "source_to_destination")]
            ),
            up as f64,
            "{driver}: relay total"
        );
        let (status, json) = api(relay.api, "GET", &format!("/tunnels/{}", busy.id), "");
        assert_eq!(status, 200);
        assert_eq!(
            json["tunnel"]["bytes"],
            serde_json::json!({ "sourceToDestination": up, "destinationToSource": down }),
            "{driver}: describe shows the bytes: {json}"
        );
        // Closed: its series leave /metrics, the other tunnel's stay.
        let (status, _) = api(
            relay.api,
            "POST",
            &format!("/tunnels/{}/close", busy.id),
            "{}",
        );
        assert_eq!(status, 200);
        assert!(
            wait_until(SOON, || !scrape(relay.metrics).text.contains(&busy.id)),
            "{driver}: the closed tunnel's series go:\n{}",
            scrape(relay.metrics).text
        );
        let m = scrape(relay.metrics);
        assert!(
            m.text.contains(&quiet.id),
            "{driver}: the open one stays:\n{}",
            m.text
        );
        let (_, json) = api(relay.api, "GET", &format!("/tunnels/{}", busy.id), "");
        assert_eq!(json["tunnel"]["status"], "CLOSED", "{json}");
        assert!(json["tunnel"].get("bytes").is_none(), "{json}");
    }
}

/// SIGHUP applies `[[relay]]` tables by name: an added relay serves its API and agents, an
/// unchanged one keeps its peers, a removed one closes its peers (1001) and its ports, a
/// changed one starts again with its new settings, and a table whose files are wrong is
/// refused while the running relays carry on.
#[test]
fn sighup_applies_added_changed_and_removed_relay_tables() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let (p1, a1, p2, a2) = (free_port(), free_port(), free_port(), free_port());
        let table = |name: &str, port: u16, api: u16, extra: &str| {
            format!(
                "[[relay]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\n\
                 key = \"{}\"\napi = \"127.0.0.1:{api}\"\nstate = \":memory:\"\n{extra}\n",
                pki.server.cert.display(),
                pki.server.key.display(),
            )
        };
        let top = format!("driver = \"{driver}\"\nthreads = 2\n\n");
        let path = pki.dir.path().join(format!("relays-{driver}.toml"));
        write_file(
            &path,
            format!("{top}{}", table("r1", p1, a1, "")).as_bytes(),
        );
        let engine = EngineCmd::new("run")
            .opt("--config", &path)
            .opt("--log-level", "info")
            .wait_port(p1)
            .wait_port(a1)
            .label(format!("relays ({driver})"))
            .start();
        // `metrics` is not used here.
        let r1 = Relay {
            proc: engine,
            port: p1,
            api: localhost(a1),
            metrics: localhost(a1),
        };
        let t = open_tunnel(&r1, &["ssh"]);
        let (mut src, _dst) = pair(&pki, &r1, &t);

        // Added: r2 serves; r1's peers stay.
        let both = format!(
            "{top}{}{}",
            table("r1", p1, a1, ""),
            table("r2", p2, a2, "")
        );
        write_file(&path, both.as_bytes());
        r1.proc.signal(libc::SIGHUP);
        assert!(
            wait_until(SOON, || try_connect(localhost(a2)).is_ok()),
            "({driver}) the added relay's API:\n{}",
            r1.proc.log()
        );
        let (status, _) = api(localhost(a2), "POST", "/tunnels", "{}");
        assert_eq!(status, 200, "({driver}) r2 opens tunnels");
        src.send(Message::Ping(b"still".to_vec().into()))
            .expect("ping");
        assert!(
            matches!(src.read(), Ok(Message::Pong(_))),
            "({driver}) r1's peer is untouched"
        );

        // Removed r1, changed r2 (5 services allowed now).
        write_file(
            &path,
            format!("{top}{}", table("r2", p2, a2, "max_services = 5")).as_bytes(),
        );
        r1.proc.signal(libc::SIGHUP);
        assert!(
            hung_up(&mut src),
            "({driver}) r1's peer is hung up (no close frame: its agent would retry)"
        );
        assert!(
            wait_until(SOON, || try_connect(localhost(a1)).is_err()
                && try_connect(localhost(p1)).is_err()),
            "({driver}) r1's ports are closed"
        );
        let body = r#"{"destinationConfig": {"services": ["a","b","c","d"]}}"#;
        assert!(
            wait_until(SOON, || open_status(localhost(a2), body) == Some(200)),
            "({driver}) the changed r2 takes 4 services:\n{}",
            r1.proc.log()
        );

        // A table with a missing certificate: refused, named; r2 carries on.
        let bad = format!(
            "{top}{}{}",
            table("r2", p2, a2, "max_services = 5"),
            table("r3", free_port(), free_port(), "").replace(
                &pki.server.cert.display().to_string(),
                "/nonexistent/relay-cert.pem"
            )
        );
        write_file(&path, bad.as_bytes());
        r1.proc.signal(libc::SIGHUP);
        assert!(
            r1.proc.wait_log(SOON, |l| l.contains("reload failed")
                && l.contains("/nonexistent/relay-cert.pem")),
            "({driver}) the bad table is named:\n{}",
            r1.proc.log()
        );
        // Refused before anything changed: no line says it was reloaded (there were two good
        // reloads before), and the error names the key and its line.
        let log = r1.proc.log();
        assert_eq!(
            log.matches("configuration reloaded").count(),
            2,
            "({driver}) a refused reload is not reported as done:\n{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains("reload failed") && l.contains("relay \"r3\": `cert`")),
            "({driver}) {log}"
        );
        assert_eq!(api(localhost(a2), "POST", "/tunnels", body).0, 200);
        let mut proc = r1.proc;
        proc.signal(libc::SIGTERM);
        let _ = proc.wait_exit(SOON);
    }
}

/// `POST /tunnels` with `body`: the status, or `None` when the API cannot be reached (yet).
fn open_status(addr: SocketAddr, body: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    write!(
        s,
        "POST /tunnels HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.get(9..12)?.parse().ok()
}

/// The registry file held by another writer (`BEGIN IMMEDIATE`), which is a slow disk as far as
/// the relay can tell (SQLite waits for the lock). A first use of a token is answered only once
/// its use is in the file, and the shard's other peers are served meanwhile: the registry's
/// writes are not on the shard.
#[test]
fn relay_admits_while_its_registry_file_is_slow() {
    for driver in DRIVERS {
        let pki = Pki::new();
        let state = pki.dir.path().join("relay.sqlite");
        // One shard: every peer is on the shard that admits.
        let relay = start_relay_with(&pki, driver, 1, state.to_str().unwrap(), "");
        let a = open_tunnel(&relay, &["ssh"]);
        let b = open_tunnel(&relay, &["ssh"]);
        let (mut src, mut dst) = pair(&pki, &relay, &a);
        let db = rusqlite::Connection::open(&state).expect("open the registry file");
        db.execute_batch("BEGIN IMMEDIATE").expect("hold the file");
        std::thread::scope(|s| {
            let upgrading = s.spawn(|| {
                let mut ws = peer(&pki, relay.port, "source", &b.source, V3);
                assert_eq!(kind_of(&next_binary(&mut ws)), SERVICE_IDS, "{driver}");
            });
            // B's upgrade is in, waiting for the file.
            assert!(
                wait_until(SOON, || source_state(&relay, &b.id) == "CONNECTED"),
                "{driver}: B's source admitted\n{}",
                relay.proc.log()
            );
            for stream in 1..=3 {
                exchange(&mut src, &mut dst, "ssh", stream);
            }
            assert!(
                !upgrading.is_finished(),
                "{driver}: B's 101 came before its token's use was in the file"
            );
            db.execute_batch("COMMIT").expect("let go of the file");
            upgrading
                .join()
                .expect("B's source upgraded once the file moved");
        });
        let used: bool = db
            .query_row(
                "SELECT source_used FROM tunnels WHERE id = ?1",
                [&b.id],
                |r| r.get(0),
            )
            .expect("B's record");
        assert!(used, "{driver}: B's token's use is in the file");
    }
}

/// A peer admitted while the registry's file is held, whose upgrade then takes longer than
/// `handshake_timeout`: it is dropped before it reaches its tunnel, and its side goes back to
/// disconnected (it stayed connected for ever before).
#[test]
fn relay_peer_gone_before_its_tunnel_is_disconnected() {
    for driver in DRIVERS {
        let pki = Pki::new();
        let state = pki.dir.path().join("relay.sqlite");
        let relay = start_relay_with(
            &pki,
            driver,
            2,
            state.to_str().unwrap(),
            "handshake_timeout = \"1s\"\n",
        );
        let t = open_tunnel(&relay, &["ssh"]);
        let db = rusqlite::Connection::open(&state).expect("open the registry file");
        db.execute_batch("BEGIN IMMEDIATE").expect("hold the file");
        std::thread::scope(|s| {
            let upgrading = s.spawn(|| {
                try_peer(
                    &pki,
                    relay.port,
                    "source",
                    &[
                        ("access-token", t.source.as_str()),
                        ("Sec-WebSocket-Protocol", V3),
                    ],
                )
                .is_err()
            });
            assert!(
                wait_until(SOON, || source_state(&relay, &t.id) == "CONNECTED"),
                "{driver}: admitted\n{}",
                relay.proc.log()
            );
            assert!(
                wait_until(SOON, || source_state(&relay, &t.id) == "DISCONNECTED"),
                "{driver}: the dropped peer is still marked connected\n{}",
                relay.proc.log()
            );
            assert!(
                upgrading.join().unwrap(),
                "{driver}: no 101 for the dropped peer"
            );
        });
        db.execute_batch("COMMIT").expect("let go of the file");
    }
}

/// The API's `sourceConnectionState.status` of tunnel `id`.
fn source_state(relay: &Relay, id: &str) -> String {
    let (status, json) = api(relay.api, "GET", &format!("/tunnels/{id}"), "");
    assert_eq!(status, 200, "describe: {json}");
    json["tunnel"]["sourceConnectionState"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

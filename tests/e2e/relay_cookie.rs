//! The relay's `POST /cookie` (issue 12, browsers) from a plain HTTP-over-TLS client (rustls
//! in the test), and the WebSocket upgrade that carries the token in the cookie; both
//! drivers. The real-browser run of the same flow is `browser.rs`.

use std::io::{Read, Write};
use std::net::SocketAddr;

use tungstenite::Message;
use tungstenite::protocol::WebSocket;

use crate::support::*;

type Ws = WebSocket<TlsStream>;

pub(crate) const PAGE: &str = "https://console.test:8443";
const V3: &str = "aws.iot.securetunneling-3.0";

/// A relay by the `relay` command, with `--cors-origin` for each of `origins`.
pub(crate) fn start_relay(pki: &Pki, driver: &str, origins: &[&str]) -> Relay {
    let mut relay = RelaySetup::new(pki, driver);
    for o in origins {
        relay = relay.flag("--cors-origin", o);
    }
    relay.command()
}

/// One plain HTTP/1.1 request and its answer: status, head, body.
fn http(s: &mut (impl Read + Write), request: &[u8]) -> (u16, String, String) {
    s.write_all(request).expect("write request");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP answer: {text:?}"));
    let status = head[9..12].parse().expect("status");
    (status, head.to_owned(), body.to_owned())
}

/// `request` to the relay's agent port over TLS.
pub(crate) fn https(pki: &Pki, port: u16, request: &[u8]) -> (u16, String, String) {
    let mut tls = tls_connect(
        localhost(port),
        "localhost",
        client_config(&[&pki.ca], None, TLS_ANY),
    );
    http(&mut tls, request)
}

pub(crate) fn open_tunnel(api: SocketAddr, services: &[&str]) -> (String, String, String) {
    let body = serde_json::json!({ "destinationConfig": { "services": services } }).to_string();
    let mut s = connect(api);
    let req = format!(
        "POST /tunnels HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = http(&mut s, req.as_bytes());
    assert_eq!(status, 200, "open: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let s = |k: &str| json[k].as_str().expect(k).to_string();
    (
        s("tunnelId"),
        s("sourceAccessToken"),
        s("destinationAccessToken"),
    )
}

pub(crate) fn post_cookie(origin: Option<&str>, body: &str) -> Vec<u8> {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /cookie HTTP/1.1\r\nHost: localhost\r\n{origin}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

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
    let v3 = [("Sec-WebSocket-Protocol", V3)];
    ws_upgrade(tls, port, mode, &[&v3[..], headers].concat())
}

fn refused(r: Result<Ws, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

/// A STREAM_START frame (type 2, stream 1, service "echo", connection 1), hand-coded.
fn stream_start() -> Vec<u8> {
    let m = [0x08, 2, 0x10, 1, 0x2a, 4, b'e', b'c', b'h', b'o', 0x38, 1];
    let mut f = (m.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(&m);
    f
}

#[test]
fn relay_cookie_is_set_for_an_allowed_origin_and_the_upgrade_pairs_with_it() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, &[PAGE, "http://127.0.0.1:1"]);
        let (_id, src, dst) = open_tunnel(relay.api, &["echo"]);

        // The preflight.
        let pre = format!(
            "OPTIONS /cookie HTTP/1.1\r\nHost: localhost\r\nOrigin: {PAGE}\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n"
        );
        let (status, head, _) = https(&pki, relay.port, pre.as_bytes());
        assert_eq!(status, 204, "{driver}: preflight: {head}");
        assert_eq!(header(&head, "access-control-allow-origin"), Some(PAGE));
        assert_eq!(
            header(&head, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(header(&head, "access-control-allow-methods"), Some("POST"));
        assert_eq!(
            header(&head, "access-control-allow-headers"),
            Some("content-type")
        );
        assert_eq!(header(&head, "vary"), Some("Origin"));

        // The cookie, with the tunnel's remaining lifetime (12 h by default) at most.
        let body = serde_json::json!({ "token": src }).to_string();
        let (status, head, answer) = https(&pki, relay.port, &post_cookie(Some(PAGE), &body));
        assert_eq!(status, 200, "{driver}: {head}\n{answer}");
        let cookie = header(&head, "set-cookie").expect("Set-Cookie");
        let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
        assert_eq!(attrs[0], format!("awsiot-tunnel-token={src}"));
        for a in ["Path=/tunnel", "Secure", "HttpOnly", "SameSite=None"] {
            assert!(attrs.contains(&a), "{driver}: {a} in {cookie}");
        }
        let max_age: u64 = attrs
            .iter()
            .find_map(|a| a.strip_prefix("Max-Age="))
            .expect("Max-Age")
            .parse()
            .expect("a number");
        assert!(
            (12 * 3600 - 120..=12 * 3600).contains(&max_age),
            "{driver}: Max-Age {max_age}"
        );
        assert_eq!(header(&head, "access-control-allow-origin"), Some(PAGE));
        assert_eq!(header(&head, "connection"), Some("close"));
        let json: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
        assert_eq!(json["expiresIn"].as_u64(), Some(max_age));
        // Without Origin (not a browser): the cookie, no CORS. The token is still unused.
        let (status, head, _) = https(&pki, relay.port, &post_cookie(None, &body));
        assert_eq!(status, 200, "{driver}: {head}");
        assert!(!head.contains("Access-Control"), "{driver}: {head}");

        // The browser's upgrade: the token in the cookie (among others), Origin allowed.
        let cookie_header = format!("theme=dark; awsiot-tunnel-token={src}; lang=en");
        let mut s = try_peer(
            &pki,
            relay.port,
            "source",
            &[("Cookie", &cookie_header), ("Origin", PAGE)],
        )
        .unwrap_or_else(|e| panic!("{driver}: the cookie upgrade: {e}"));
        let ids = next_binary(&mut s);
        assert_eq!(ids[3], 5, "{driver}: SERVICE_IDS first");
        let mut d = try_peer(&pki, relay.port, "destination", &[("access-token", &dst)])
            .unwrap_or_else(|e| panic!("{driver}: destination: {e}"));
        next_binary(&mut d);
        s.send(Message::binary(stream_start())).expect("send");
        assert_eq!(next_binary(&mut d), stream_start(), "{driver}: forwarded");

        // The token is used now: another cookie for it is refused.
        let (status, _, answer) = https(&pki, relay.port, &post_cookie(Some(PAGE), &body));
        assert_eq!(status, 403, "{driver}: a used token: {answer}");
        assert!(answer.contains("\"error\""), "{driver}: {answer}");

        // Never a token in the log.
        let log = relay.proc.log();
        assert!(log.contains("cookie request"), "{driver}: {log}");
        assert!(
            !log.contains(&src) && !log.contains(&dst),
            "{driver}: {log}"
        );
    }
}

#[test]
fn relay_cookie_refusals() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, &[PAGE]);
        let (id, src, dst) = open_tunnel(relay.api, &["echo"]);
        let body = serde_json::json!({ "token": src }).to_string();
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            (
                "another origin",
                post_cookie(Some("https://evil.test"), &body),
                403,
            ),
            (
                "another origin's preflight",
                b"OPTIONS /cookie HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.test\r\n\r\n"
                    .to_vec(),
                403,
            ),
            ("not JSON", post_cookie(Some(PAGE), "token=abc"), 400),
            (
                "no token member",
                post_cookie(Some(PAGE), "{\"tok\": \"abc\"}"),
                400,
            ),
            (
                "a body over the limit",
                post_cookie(
                    Some(PAGE),
                    &format!("{{\"token\": \"{}\"}}", "a".repeat(9000)),
                ),
                413,
            ),
            (
                "an unknown token",
                post_cookie(Some(PAGE), "{\"token\": \"no-such-token\"}"),
                403,
            ),
            (
                "another path",
                b"POST /tunnels HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
                400,
            ),
        ];
        for (what, req, want) in cases {
            let (status, head, answer) = https(&pki, relay.port, &req);
            assert_eq!(status, want, "{driver}: {what}: {head}\n{answer}");
            assert!(!head.contains("Set-Cookie"), "{driver}: {what}");
            if what.starts_with("another origin") {
                assert!(!head.contains("Access-Control"), "{driver}: {what}: {head}");
            } else {
                let json: serde_json::Value =
                    serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{what}: {answer}"));
                assert!(json["error"].is_string(), "{driver}: {what}: {answer}");
            }
        }

        // Two tokens: header and cookie.
        let cookie = format!("awsiot-tunnel-token={src}");
        let two = try_peer(
            &pki,
            relay.port,
            "source",
            &[("access-token", &src), ("Cookie", &cookie)],
        );
        assert_eq!(refused(two), 400, "{driver}: header + cookie");
        // A cookie upgrade from a page of another origin.
        let evil = try_peer(
            &pki,
            relay.port,
            "source",
            &[("Cookie", &cookie), ("Origin", "https://evil.test")],
        );
        assert_eq!(refused(evil), 403, "{driver}: cookie from another origin");
        // Both refusals left the token unused: the cookie is still given.
        let (status, _, _) = https(&pki, relay.port, &post_cookie(Some(PAGE), &body));
        assert_eq!(status, 200, "{driver}: the token is unused");

        // A closed tunnel's token.
        let mut s = connect(relay.api);
        let (status, _, _) = http(
            &mut s,
            format!(
                "POST /tunnels/{id}/close HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            )
            .as_bytes(),
        );
        assert!((200..300).contains(&status), "{driver}: close: {status}");
        let body = serde_json::json!({ "token": dst }).to_string();
        let (status, _, answer) = https(&pki, relay.port, &post_cookie(Some(PAGE), &body));
        assert_eq!(status, 410, "{driver}: a closed tunnel: {answer}");

        let log = relay.proc.log();
        assert!(
            !log.contains(&src) && !log.contains(&dst),
            "{driver}: {log}"
        );
    }
}

/// The browser source's files on the agents' port, whole (xterm.js is about 480 KB), and the
/// relay's own https origin (a page it serves) using the cookie without `--cors-origin`.
#[test]
fn relay_serves_the_browser_source_and_its_own_origin_needs_no_cors_origin() {
    let pki = Pki::new();
    let xterm = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../engine/src/relay/console/vendor/xterm/xterm.js"
    ))
    .expect("the vendored xterm.js");
    for driver in DRIVERS {
        let relay = start_relay(&pki, driver, &[]);
        let get = |path: &str| {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
                relay.port
            );
            https(&pki, relay.port, req.as_bytes())
        };
        let (status, head, page) = get("/source");
        assert_eq!(status, 200, "{driver}: {head}");
        assert_eq!(
            header(&head, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(
            header(&head, "content-security-policy")
                .is_some_and(|p| p.contains("connect-src 'self'")),
            "{driver}: {head}"
        );
        assert!(page.contains("/source/xterm.js"), "{driver}: {page}");
        let (status, _, body) = get("/source/xterm.js");
        assert_eq!(status, 200);
        assert!(
            body == xterm,
            "{driver}: {} of {} bytes",
            body.len(),
            xterm.len()
        );
        assert_eq!(get("/source/missing").0, 404, "{driver}");

        let (_id, src, dst) = open_tunnel(relay.api, &["echo"]);
        let own = format!("https://localhost:{}", relay.port);
        let body = serde_json::json!({ "token": src }).to_string();
        let req = format!(
            "POST /cookie HTTP/1.1\r\nHost: localhost:{}\r\nOrigin: {own}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            relay.port,
            body.len()
        );
        let (status, head, answer) = https(&pki, relay.port, req.as_bytes());
        assert_eq!(status, 200, "{driver}: {head}\n{answer}");
        // The upgrade with the cookie from the relay's own origin pairs; from another, no.
        let cookie = format!("awsiot-tunnel-token={dst}");
        let other = format!("https://localhost:{}", relay.port + 1);
        let r = try_peer(
            &pki,
            relay.port,
            "destination",
            &[("Cookie", &cookie), ("Origin", &other)],
        );
        assert_eq!(refused(r), 403, "{driver}: another origin");
        let cookie = format!("awsiot-tunnel-token={src}");
        try_peer(
            &pki,
            relay.port,
            "source",
            &[("Cookie", &cookie), ("Origin", &own)],
        )
        .unwrap_or_else(|e| panic!("{driver}: the relay's own origin: {e}"));
    }
}

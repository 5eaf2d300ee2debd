//! `POST /cookie`: parsing and the decision, on bytes.

use super::*;
use crate::ws::MAX_REQUEST_LEN;

const PAGE: &str = "https://console.example:8443";
const TOKEN: &str = "AQGAAXi_source-token_0123456789";

fn allowed() -> Vec<String> {
    vec![PAGE.to_owned(), "http://127.0.0.1:9000".to_owned()]
}

fn post(origin: Option<&str>, body: &str) -> Vec<u8> {
    let mut r = format!(
        "POST /cookie HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(o) = origin {
        r.push_str(&format!("Origin: {o}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

fn parsed(bytes: &[u8]) -> HttpRequest {
    match parse_request(bytes) {
        Ok(Parsed::Complete { request, len }) => {
            assert_eq!(len, bytes.len());
            request
        }
        other => panic!("{other:?}"),
    }
}

fn text(a: &Answer) -> String {
    String::from_utf8(a.bytes.clone()).unwrap()
}

fn valid(_: &AccessToken) -> TokenCheck {
    TokenCheck::Valid { seconds_left: 3599 }
}

#[test]
fn classify_waits_for_the_method() {
    assert_eq!(classify(b""), Kind::Unknown);
    assert_eq!(classify(b"P"), Kind::Unknown);
    assert_eq!(classify(b"OPTIO"), Kind::Unknown);
    assert_eq!(classify(b"POST "), Kind::Http);
    assert_eq!(classify(b"OPTIONS /cookie"), Kind::Http);
    assert_eq!(classify(b"GET /tunnel"), Kind::Other);
    assert_eq!(classify(b"PUT /"), Kind::Other);
    assert_eq!(classify(b"\x16\x03\x01"), Kind::Other);
}

#[test]
fn post_sets_the_cookie_with_cors_for_an_allowed_origin() {
    let body = format!("{{\"token\": \"{TOKEN}\"}}");
    let req = parsed(&post(Some(PAGE), &body));
    let mut seen = None;
    let a = respond(&req, &allowed(), |t| {
        seen = Some(t.secret().to_owned());
        valid(t)
    });
    assert_eq!(seen.as_deref(), Some(TOKEN));
    assert_eq!(a.status, 200);
    let t = text(&a);
    assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
    assert!(t.contains(&format!(
        "\r\nSet-Cookie: awsiot-tunnel-token={TOKEN}; Path=/tunnel; Max-Age=3599; Secure; HttpOnly; SameSite=None\r\n"
    )));
    assert!(t.contains(&format!("\r\nAccess-Control-Allow-Origin: {PAGE}\r\n")));
    assert!(t.contains("\r\nAccess-Control-Allow-Credentials: true\r\n"));
    assert!(t.contains("\r\nVary: Origin\r\n"));
    assert!(t.contains("\r\nConnection: close\r\n"));
    assert!(t.ends_with("{\"expiresIn\":3599}\n"));
    assert!(!format!("{a:?}{req:?}").contains(TOKEN));
}

#[test]
fn post_without_origin_gets_no_cors() {
    let req = parsed(&post(None, &format!("{{\"token\":\"{TOKEN}\"}}")));
    let a = respond(&req, &allowed(), valid);
    assert_eq!(a.status, 200);
    assert!(!text(&a).contains("Access-Control"));
}

#[test]
fn another_origin_is_refused_without_cors_and_without_asking() {
    for origin in [
        "https://evil.example",
        "https://console.example:8444",
        "null",
    ] {
        let req = parsed(&post(Some(origin), &format!("{{\"token\":\"{TOKEN}\"}}")));
        let a = respond(&req, &allowed(), |_| panic!("no token check"));
        assert_eq!(a.status, 403);
        let t = text(&a);
        assert!(!t.contains("Access-Control"), "{t}");
        assert!(!t.contains("Set-Cookie"), "{t}");
        let pre = parsed(
            format!("OPTIONS /cookie HTTP/1.1\r\nHost: r\r\nOrigin: {origin}\r\n\r\n").as_bytes(),
        );
        let a = respond(&pre, &allowed(), |_| panic!("no token check"));
        assert_eq!(a.status, 403);
        assert!(!text(&a).contains("Access-Control"));
    }
}

#[test]
fn preflight_allows_post_and_content_type() {
    let req = parsed(
        format!(
            "OPTIONS /cookie HTTP/1.1\r\nHost: r\r\nOrigin: {PAGE}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(req.method, Method::Options);
    let a = respond(&req, &allowed(), |_| panic!("no token check"));
    assert_eq!(a.status, 204);
    let t = text(&a);
    for h in [
        &format!("Access-Control-Allow-Origin: {PAGE}")[..],
        "Access-Control-Allow-Credentials: true",
        "Access-Control-Allow-Methods: POST",
        "Access-Control-Allow-Headers: content-type",
        "Vary: Origin",
        "Content-Length: 0",
    ] {
        assert!(t.contains(&format!("\r\n{h}\r\n")), "{h} in {t}");
    }
}

#[test]
fn bad_bodies_are_400_with_a_json_error() {
    for body in [
        "",
        "token=abc",
        "{\"token\": 5}",
        "{\"token\": \"\"}",
        "{\"token\": \"a b\"}",
        "{\"token\": \"abc\", \"more\": 1}",
        "[\"abc\"]",
        "{\"token\": \"abc\"",
        "{\"token\": \"a;b\"}",
    ] {
        let req = parsed(&post(Some(PAGE), body));
        let a = respond(&req, &allowed(), |_| panic!("no token check for {body:?}"));
        assert_eq!(a.status, 400, "{body:?}");
        let t = text(&a);
        assert!(t.contains("\r\nContent-Type: application/json\r\n"));
        assert!(t.contains("{\"error\":\""), "{t}");
        // CORS still on, so the page can read why.
        assert!(t.contains(&format!("Access-Control-Allow-Origin: {PAGE}")));
    }
}

#[test]
fn the_registry_answer_decides() {
    let body = format!("{{\"token\":\"{TOKEN}\"}}");
    let req = parsed(&post(Some(PAGE), &body));
    for (check, status) in [
        (TokenCheck::Unknown, 403),
        (TokenCheck::Used, 403),
        (TokenCheck::Closed, 410),
        (TokenCheck::Valid { seconds_left: 0 }, 410),
        (TokenCheck::Unavailable, 503),
    ] {
        let a = respond(&req, &allowed(), |_| check);
        assert_eq!(a.status, status, "{check:?}");
        let t = text(&a);
        assert!(!t.contains(TOKEN), "{t}");
        assert!(!t.contains("Set-Cookie"));
    }
}

#[test]
fn size_and_length_limits() {
    let big = format!(
        "POST /cookie HTTP/1.1\r\nHost: r\r\nOrigin: {PAGE}\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    let req = parsed(big.as_bytes());
    assert_eq!(req.problem, Some(HeadProblem::BodyTooLarge));
    assert_eq!(respond(&req, &allowed(), valid).status, 413);
    let chunked = "POST /cookie HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        respond(&parsed(chunked.as_bytes()), &allowed(), valid).status,
        411
    );
    let none = "POST /cookie HTTP/1.1\r\nHost: r\r\n\r\n";
    assert_eq!(
        respond(&parsed(none.as_bytes()), &allowed(), valid).status,
        411
    );
    let head = format!(
        "POST /cookie HTTP/1.1\r\nX: {}\r\n",
        "a".repeat(MAX_REQUEST_LEN)
    );
    assert_eq!(parse_request(head.as_bytes()), Err(HttpError::TooLarge));
    assert_eq!(
        parse_request(b"POST /cookie HTTP/1.0\r\n\r\n").map_err(|e| e.status()),
        Err(400)
    );
}

#[test]
fn a_request_in_pieces_is_incomplete_until_its_body_is_whole() {
    let whole = post(Some(PAGE), &format!("{{\"token\":\"{TOKEN}\"}}"));
    for cut in 1..whole.len() {
        assert_eq!(
            parse_request(&whole[..cut]),
            Ok(Parsed::Incomplete),
            "{cut}"
        );
    }
    parsed(&whole);
}

#[test]
fn other_paths_are_400() {
    for req in [
        &b"POST /tunnel HTTP/1.1\r\nHost: r\r\nContent-Length: 0\r\n\r\n"[..],
        b"POST /tunnel?local-proxy-mode=source HTTP/1.1\r\nHost: x\r\n\r\n",
        b"OPTIONS /tunnel HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        assert_eq!(respond(&parsed(req), &allowed(), valid).status, 400);
    }
}

#[test]
fn get_under_source_is_http_and_other_gets_are_upgrades() {
    assert_eq!(classify(b"GET "), Kind::Unknown);
    assert_eq!(classify(b"GET /sou"), Kind::Unknown);
    assert_eq!(classify(b"GET /source"), Kind::Http);
    assert_eq!(classify(b"GET /source/xterm.js HTTP/1.1"), Kind::Http);
    assert_eq!(
        classify(b"GET /tunnel?local-proxy-mode=source"),
        Kind::Other
    );
    assert_eq!(classify(b"GET / HTTP/1.1"), Kind::Other);
    let req = parsed(b"GET /source?x=1 HTTP/1.1\r\nHost: relay.example:8443\r\n\r\n");
    assert_eq!(req.method, Method::Get);
    assert_eq!(req.path, "/source");
    assert_eq!(req.host.as_deref(), Some("relay.example:8443"));
}

#[test]
fn get_serves_the_asset_with_its_policy_or_404() {
    let req = parsed(b"GET /source HTTP/1.1\r\nHost: r\r\n\r\n");
    let page = b"<!doctype html><p>hi</p>";
    let a = respond_get(
        &req,
        Some(Asset {
            content_type: "text/html; charset=utf-8",
            body: page,
        }),
    );
    assert_eq!(a.status, 200);
    let t = text(&a);
    assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
    assert!(
        t.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"),
        "{t}"
    );
    assert!(t.contains(&format!("\r\nContent-Length: {}\r\n", page.len())));
    assert!(t.contains("\r\nContent-Security-Policy: default-src 'none'; script-src 'self';"));
    assert!(t.contains("\r\nX-Frame-Options: DENY\r\n"));
    assert!(t.ends_with("\r\n\r\n<!doctype html><p>hi</p>"), "{t}");
    let a = respond_get(&req, None);
    assert_eq!(a.status, 404);
    // respond() is for POST and OPTIONS: a GET there is not served.
    assert_eq!(
        respond(&req, &allowed(), |_| panic!("no token check")).status,
        405
    );
}

#[test]
fn the_relays_own_https_origin_may_post_without_cors_origin() {
    let body = format!("{{\"token\":\"{TOKEN}\"}}");
    let own = format!(
        "POST /cookie HTTP/1.1\r\nHost: relay.example:8443\r\nOrigin: https://relay.example:8443\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = respond(&parsed(own.as_bytes()), &[], valid);
    assert_eq!(a.status, 200, "{}", text(&a));
    for (host, origin) in [
        // http:// is another site to the browser, and not the relay's TLS port.
        ("relay.example:8443", "http://relay.example:8443"),
        ("relay.example:8443", "https://relay.example:8444"),
        ("relay.example:8443", "https://relay.example"),
        ("relay.example", "https://relay.example.evil"),
    ] {
        let req = format!(
            "POST /cookie HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let a = respond(&parsed(req.as_bytes()), &[], |_| panic!("no token check"));
        assert_eq!(a.status, 403, "{origin} on {host}");
    }
    assert!(same_origin("https://h:1", Some("h:1")));
    assert!(!same_origin("https://h:1", None));
}

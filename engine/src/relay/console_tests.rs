//! The console over real loopback HTTP (a plain `TcpStream` client): login, sessions, the
//! CSRF header, and what the page polls.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use super::*;
use crate::relay::api::ApiServer;
use crate::relay::api::tests::{Reply, raw};
use crate::relay::registry::Limits;
use crate::relay::store::MemoryStore;

const API_TOKEN: &str = "the-operators-api-token";

fn server(api_token: Option<&str>) -> ApiServer {
    let registry = Arc::new(Registry::new(
        Box::new(MemoryStore::default()),
        Limits::default(),
    ));
    ApiServer::start_with_console(
        ([127, 0, 0, 1], 0).into(),
        registry,
        api_token.map(Secret::new),
        Arc::default(),
        Some(8443),
    )
    .expect("start")
}

/// One request: `headers` are whole lines without their CRLF.
fn call(api: &ApiServer, method: &str, path: &str, headers: &[&str], body: &str) -> Reply {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(api.local_addr(), &req)
}

const HEADER: &str = "x-splice-console: 1";

/// Logs in (checking the cookie's attributes); the `Cookie:` line the browser would send
/// back.
fn session(api: &ApiServer) -> String {
    let mut s = TcpStream::connect(api.local_addr()).expect("connect");
    let body = format!("{{\"token\": \"{API_TOKEN}\"}}");
    write!(
        s,
        "POST /console/login HTTP/1.1\r\nHost: h\r\nConnection: close\r\n{HEADER}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
    let cookies: Vec<&str> = raw
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .filter_map(|l| l.split_once(':').map(|(_, v)| v.trim()))
        .collect();
    assert_eq!(cookies.len(), 1, "{raw}");
    let attrs = cookies[0].to_ascii_lowercase();
    for attr in [
        "; path=/",
        "; httponly",
        "; samesite=strict",
        "; max-age=43200",
    ] {
        assert!(attrs.contains(attr), "{attr} in {}", cookies[0]);
    }
    let pair = cookies[0].split(';').next().expect("name=value");
    let (name, value) = pair.split_once('=').expect("name=value");
    assert_eq!(name, SESSION_COOKIE);
    assert_eq!(value.len(), 43, "256 random bits in base64url: {value}");
    format!("Cookie: {pair}")
}

#[test]
fn without_a_login_the_console_redirects_and_its_data_is_401() {
    let api = server(Some(API_TOKEN));
    let r = call(&api, "GET", "/console", &[], "");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), ["/console/login"]);
    let r = call(&api, "GET", "/console/login", &[], "");
    assert_eq!(r.status, 200);
    assert!(r.text.contains("API token"), "{}", r.text);
    let r = call(&api, "GET", TUNNELS_PATH, &[HEADER], "");
    assert_eq!(r.status, 401);
    // A made-up session is no session.
    let fake = format!("Cookie: {SESSION_COOKIE}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(call(&api, "GET", "/console", &[&fake], "").status, 303);
    assert_eq!(
        call(&api, "GET", "/tunnels", &[&fake, HEADER], "").status,
        401
    );
    // The page's files carry no secrets, and are served to the login page too.
    let r = call(&api, "GET", "/console/console.css", &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), ["text/css; charset=utf-8"]);
}

#[test]
fn a_wrong_token_or_a_login_without_the_header_starts_no_session() {
    let api = server(Some(API_TOKEN));
    let r = call(
        &api,
        "POST",
        "/console/login",
        &[HEADER],
        r#"{"token": "guess"}"#,
    );
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_empty());
    let body = format!("{{\"token\": \"{API_TOKEN}\"}}");
    let r = call(&api, "POST", "/console/login", &[], &body);
    assert_eq!(r.status, 403, "a form on another site cannot log in");
    assert!(r.header("set-cookie").is_empty());
    let r = call(&api, "POST", "/console/login", &[HEADER], "token=x");
    assert_eq!(r.status, 400);
}

#[test]
fn a_session_opens_the_console_and_the_api_with_its_header_only() {
    let api = server(Some(API_TOKEN));
    let cookie = session(&api);
    let r = call(&api, "GET", "/console", &[&cookie], "");
    assert_eq!(r.status, 200);
    assert!(r.text.contains("/console/console.js"));
    assert!(
        r.header("content-security-policy")[0].contains("script-src 'self'"),
        "{}",
        r.head
    );
    // The cookie alone (what a form or link on another site would bring) is refused.
    let open = r#"{"destinationConfig": {"services": ["echo"]}}"#;
    let r = call(&api, "POST", "/tunnels", &[&cookie], open);
    assert_eq!(r.status, 401, "{}", r.text);
    let r = call(&api, "POST", "/tunnels", &[&cookie, HEADER], open);
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["tunnelId"].as_str().expect("id").to_owned();
    let r = call(&api, "GET", TUNNELS_PATH, &[&cookie, HEADER], "");
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert_eq!(j["login"], true);
    assert_eq!(j["agentPort"], 8443);
    assert_eq!(j["tunnels"][0]["tunnelId"], id.as_str());
    assert_eq!(j["tunnels"][0]["destinationConfig"]["services"][0], "echo");
    assert_eq!(j["tunnels"][0]["bytes"]["sourceToDestination"], 0);
    assert!(
        !r.text.contains("AccessToken"),
        "no token in the list: {}",
        r.text
    );
    // The bearer token keeps working, for scripts.
    let bearer = format!("Authorization: Bearer {API_TOKEN}");
    assert_eq!(call(&api, "GET", TUNNELS_PATH, &[&bearer], "").status, 200);
    assert_eq!(call(&api, "GET", "/tunnels", &[&bearer], "").status, 200);
    let r = call(
        &api,
        "POST",
        &format!("/tunnels/{id}/close"),
        &[&cookie, HEADER],
        "{}",
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // Logging out ends the session on the relay, not only in the browser.
    assert_eq!(
        call(&api, "POST", "/console/logout", &[&cookie], "").status,
        403
    );
    let r = call(&api, "POST", "/console/logout", &[&cookie, HEADER], "");
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie")[0].contains("max-age=0"));
    assert_eq!(call(&api, "GET", "/console", &[&cookie], "").status, 303);
    assert_eq!(
        call(&api, "GET", "/tunnels", &[&cookie, HEADER], "").status,
        401
    );
}

#[test]
fn without_an_api_token_the_console_is_open_and_says_so() {
    let api = server(None);
    let r = call(&api, "GET", "/console", &[], "");
    assert_eq!(r.status, 200);
    let r = call(&api, "GET", "/console/login", &[], "");
    assert_eq!(r.status, 303);
    let r = call(&api, "GET", TUNNELS_PATH, &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["login"], false);
    let js = call(&api, "GET", "/console/console.js", &[], "");
    assert!(js.text.contains("No login: this relay"), "the page says so");
}

#[test]
fn sessions_end_at_their_expiry_and_are_bounded() {
    let console = Console::new(Some(Secret::new(API_TOKEN)), None);
    let id = console.start_session().expect("a session");
    let mut headers = HeaderMap::new();
    headers.insert(
        COOKIE,
        HeaderValue::from_str(&format!("a=b; {SESSION_COOKIE}={}", id.expose())).unwrap(),
    );
    assert!(console.has_session(&headers));
    assert!(!console.session_allows(&headers), "not without the header");
    headers.insert(CSRF_HEADER, HeaderValue::from_static("1"));
    assert!(console.session_allows(&headers));
    // Its end comes: it is gone.
    for end in console.sessions.lock().unwrap().values_mut() {
        *end = Instant::now();
    }
    assert!(!console.session_allows(&headers));
    assert!(console.sessions.lock().unwrap().is_empty());
    for _ in 0..MAX_SESSIONS + 10 {
        console.start_session().expect("a session");
    }
    assert_eq!(console.sessions.lock().unwrap().len(), MAX_SESSIONS);
    // Two session cookies: neither is taken.
    let mut two = HeaderMap::new();
    two.append(COOKIE, HeaderValue::from_static("splice-console=a"));
    two.append(COOKIE, HeaderValue::from_static("splice-console=b"));
    assert_eq!(session_cookie(&two), None);
}

#[test]
fn the_browser_source_files_are_built_in() {
    let page = source_asset("/source").expect("the page");
    assert!(page.content_type.starts_with("text/html"));
    let page = std::str::from_utf8(page.body).unwrap();
    for file in ["/source/xterm.js", "/source/source.js", "/source/xterm.css"] {
        assert!(page.contains(file), "{file} in the page");
        assert!(source_asset(file).is_some(), "{file}");
    }
    let xterm = source_asset("/source/xterm.js").unwrap();
    assert!(xterm.body.len() > 100_000, "the minified xterm.js");
    assert!(source_asset("/source/../api.rs").is_none());
    assert!(source_asset("/source/LICENSE").is_none());
}

//! The tunnel API over real loopback HTTP (a plain `TcpStream` client).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::*;
use crate::relay::registry::{Limits, Refusal};
use crate::relay::store::MemoryStore;
use crate::relay::tunnel::Side;

const API_TOKEN: &str = "the-operators-api-token";

struct Api {
    server: ApiServer,
    registry: Arc<Registry>,
    /// Sent as `Authorization: Bearer` with each call.
    bearer: Option<&'static str>,
}

fn api(api_token: Option<&str>) -> Api {
    let registry = Arc::new(Registry::new(
        Box::new(MemoryStore::default()),
        Limits::default(),
    ));
    let server = ApiServer::start(
        ([127, 0, 0, 1], 0).into(),
        registry.clone(),
        api_token.map(Secret::new),
    )
    .expect("start");
    Api {
        server,
        registry,
        bearer: api_token.map(|_| API_TOKEN),
    }
}

/// An answer: status, head (lowercase), body text. The console's tests read answers too.
pub(in crate::relay) struct Reply {
    pub(in crate::relay) status: u16,
    pub(in crate::relay) head: String,
    pub(in crate::relay) text: String,
}

impl Reply {
    pub(in crate::relay) fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// The values of the header `name` (lowercase).
    pub(in crate::relay) fn header(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim())
            .collect()
    }

    fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .expect("an error message")
            .to_string()
    }
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let auth = self
            .bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        raw(
            self.server.local_addr(),
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                body.map_or(0, str::len),
                body.unwrap_or("")
            ),
        )
    }

    fn open(&self, body: &str) -> Value {
        let r = self.call("POST", "/tunnels", Some(body));
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()
    }
}

/// Sends `request` on a new connection and reads the answer to the end.
pub(in crate::relay) fn raw(addr: SocketAddr, request: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read");
    let answer = String::from_utf8(answer).expect("UTF-8");
    let (head, text) = answer.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        text: text.to_string(),
    }
}

#[test]
fn open_shows_the_tokens_once_and_never_again() {
    let api = api(None);
    let opened = api.open(
        r#"{"description": "pump 7", "destinationConfig": {"thingName": "pump-7",
            "services": ["SSH", "HTTP"]}, "timeoutConfig": {"maxLifetimeTimeoutMinutes": 30}}"#,
    );
    let id = opened["tunnelId"].as_str().expect("tunnelId");
    let source = opened["sourceAccessToken"].as_str().expect("source token");
    let destination = opened["destinationAccessToken"]
        .as_str()
        .expect("destination");
    assert_eq!(opened.as_object().expect("object").len(), 3, "{opened}");

    // The tokens are the registry's.
    let a = api
        .registry
        .admit(source, Side::Source, None, Timestamp::now())
        .expect("the source token works");
    assert_eq!(a.tunnel_id, id);

    let list = api.call("GET", "/tunnels", None);
    assert_eq!(list.status, 200);
    let described = api.call("GET", &format!("/tunnels/{id}"), None);
    assert_eq!(described.status, 200);
    for r in [&list, &described] {
        assert!(
            !r.text.contains(source) && !r.text.contains(destination),
            "{}",
            r.text
        );
        assert!(!r.text.contains("AccessToken"), "{}", r.text);
        assert!(!r.head.contains("cache-control"), "{}", r.head);
    }
    let summaries = list.json()["tunnelSummaries"].clone();
    assert_eq!(summaries.as_array().expect("array").len(), 1);
    assert_eq!(summaries[0]["tunnelId"], id);
    assert_eq!(summaries[0]["status"], "OPEN");
    assert_eq!(summaries[0]["description"], "pump 7");

    let t = described.json()["tunnel"].clone();
    assert_eq!(t["tunnelId"], id);
    assert_eq!(t["status"], "OPEN");
    assert_eq!(t["destinationConfig"]["thingName"], "pump-7");
    assert_eq!(t["destinationConfig"]["services"], json!(["SSH", "HTTP"]));
    assert_eq!(t["timeoutConfig"]["maxLifetimeTimeoutMinutes"], 30);
    assert_eq!(t["sourceConnectionState"]["status"], "CONNECTED");
    assert_eq!(t["destinationConnectionState"]["status"], "DISCONNECTED");
    let created = t["createdAt"].as_f64().expect("createdAt: epoch seconds");
    let now = Timestamp::now().epoch_seconds();
    assert!(
        created <= now && created > now - 600.0,
        "{created} vs {now}"
    );
    assert!(t["lastUpdatedAt"].as_f64().expect("lastUpdatedAt") >= created);
    assert!(t["sourceConnectionState"]["lastUpdatedAt"].is_number());

    // Filtered by thing.
    let other = api.call("GET", "/tunnels?thingName=other", None);
    assert_eq!(other.json()["tunnelSummaries"], json!([]));
    let mine = api.call("GET", "/tunnels?thingName=pump%2D7", None);
    assert_eq!(mine.json()["tunnelSummaries"][0]["tunnelId"], id);
}

#[test]
fn answers_with_tokens_are_not_cached() {
    let api = api(None);
    let r = api.call("POST", "/tunnels", Some(""));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.head.contains("cache-control: no-store"), "{}", r.head);
    assert!(
        r.head.contains("content-type: application/json"),
        "{}",
        r.head
    );
    // An empty body is an OpenTunnel with every default: no services, 12 h.
    let id = r.json()["tunnelId"].as_str().expect("id").to_string();
    let t = api.call("GET", &format!("/tunnels/{id}"), None).json();
    assert_eq!(t["tunnel"]["destinationConfig"]["services"], json!([]));
    assert_eq!(
        t["tunnel"]["timeoutConfig"]["maxLifetimeTimeoutMinutes"],
        720
    );
}

#[test]
fn rotate_replaces_the_token_and_the_old_one_stops_working() {
    let api = api(None);
    let opened = api.open(r#"{"destinationConfig": {"services": ["SSH"]}}"#);
    let id = opened["tunnelId"].as_str().expect("id");
    let old = opened["sourceAccessToken"].as_str().expect("token");
    let old_destination = opened["destinationAccessToken"].as_str().expect("token");

    let r = api.call(
        "POST",
        &format!("/tunnels/{id}/rotate"),
        Some(r#"{"clientMode": "SOURCE"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.head.contains("cache-control: no-store"), "{}", r.head);
    let body = r.json();
    let new = body["sourceAccessToken"]
        .as_str()
        .expect("new source token");
    assert!(body.get("destinationAccessToken").is_none(), "{body}");
    assert_ne!(new, old);
    let now = Timestamp::now();
    assert_eq!(
        api.registry.admit(old, Side::Source, None, now),
        Err(Refusal::UnknownToken)
    );
    api.registry
        .admit(new, Side::Source, None, now)
        .expect("the new token");

    let client = "11111111-2222-3333-4444-555555555555";
    let r = api.call(
        "POST",
        &format!("/tunnels/{id}/rotate"),
        Some(&format!(
            r#"{{"clientMode": "ALL", "clientToken": "{client}"}}"#
        )),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    let d = body["destinationAccessToken"]
        .as_str()
        .expect("destination");
    assert!(body["sourceAccessToken"].is_string(), "{body}");
    assert_eq!(
        api.registry
            .admit(old_destination, Side::Destination, None, now),
        Err(Refusal::UnknownToken)
    );
    assert_eq!(
        api.registry.admit(d, Side::Destination, None, now),
        Err(Refusal::ClientTokenMismatch)
    );
    api.registry
        .admit(d, Side::Destination, Some(client), now)
        .expect("with its client token");

    let bad = api.call(
        "POST",
        &format!("/tunnels/{id}/rotate"),
        Some(r#"{"clientMode": "BOTH"}"#),
    );
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.message().contains("clientMode") || bad.message().contains("BOTH"));
    let bad = api.call(
        "POST",
        &format!("/tunnels/{id}/rotate"),
        Some(r#"{"clientMode": "ALL", "clientToken": "short"}"#),
    );
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.message().contains("clientToken"), "{}", bad.text);
}

#[test]
fn close_and_delete() {
    let api = api(None);
    let id = api.open("{}")["tunnelId"].as_str().expect("id").to_string();
    let r = api.call("POST", &format!("/tunnels/{id}/close"), None);
    assert_eq!((r.status, r.json()), (200, json!({})));
    let t = api.call("GET", &format!("/tunnels/{id}"), None).json();
    assert_eq!(t["tunnel"]["status"], "CLOSED");
    // A closed tunnel's tokens cannot be rotated.
    let r = api.call(
        "POST",
        &format!("/tunnels/{id}/rotate"),
        Some(r#"{"clientMode": "ALL"}"#),
    );
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains("closed"), "{}", r.text);

    let r = api.call("DELETE", &format!("/tunnels/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(api.call("GET", &format!("/tunnels/{id}"), None).status, 404);

    let id = api.open("{}")["tunnelId"].as_str().expect("id").to_string();
    let r = api.call(
        "POST",
        &format!("/tunnels/{id}/close"),
        Some(r#"{"delete": true}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let list = api.call("GET", "/tunnels", None).json();
    assert_eq!(list["tunnelSummaries"], json!([]));
}

#[test]
fn bearer_auth() {
    let api = api(Some(API_TOKEN));
    assert_eq!(api.call("GET", "/tunnels", None).status, 200);
    let addr = api.server.local_addr();
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Bearer the-operators-api-tokenX\r\n",
        "Authorization: Basic the-operators-api-token\r\n",
        "Authorization: the-operators-api-token\r\n",
        "Authorization: Bearer the-operators-api-token\r\nAuthorization: Bearer x\r\n",
    ] {
        for (method, path) in [("GET", "/tunnels"), ("POST", "/tunnels"), ("GET", "/nope")] {
            let r = raw(
                addr,
                &format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
                     Content-Length: 2\r\n\r\n{{}}"
                ),
            );
            assert_eq!(r.status, 401, "{auth:?} {method} {path}: {}", r.text);
            assert!(r.head.contains("www-authenticate: bearer"), "{}", r.head);
            assert!(r.message().contains("Authorization: Bearer"), "{}", r.text);
        }
    }
    assert!(
        api.registry
            .list(None, Timestamp::now())
            .expect("list")
            .is_empty(),
        "a refused POST opened a tunnel"
    );
    // The scheme is case-insensitive, as RFC 9110 says.
    let r = raw(
        addr,
        "GET /tunnels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: bearer the-operators-api-token\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

#[test]
fn bad_json_gets_400_with_a_clear_message() {
    let api = api(None);
    for (body, says) in [
        ("{", "EOF"),
        ("not json", "expected"),
        ("{} x", "trailing"),
        (
            r#"{"destinationConfig": {"services": "SSH"}}"#,
            "at destinationConfig.services: invalid type",
        ),
        (r#"{"destinationConfig": {"thingName": "x"}}"#, "services"),
        (
            r#"{"timeoutConfig": {"maxLifetimeTimeoutMinutes": -1}}"#,
            "-1",
        ),
        (r#"{"tags": []}"#, "tags"),
        (
            r#"{"timeoutConfig": {"maxLifetimeTimeoutMinutes": 721}}"#,
            "1 second to 720 minutes",
        ),
        (
            r#"{"destinationConfig": {"services": ["a","b","c","d"]}}"#,
            "at most 3",
        ),
    ] {
        let r = api.call("POST", "/tunnels", Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.message().contains(says), "{body}: {}", r.text);
    }
    for (query, says) in [
        ("maxResults=0", "maxResults"),
        ("maxResults=101", "maxResults"),
        ("maxResults=ten", "maxResults"),
        ("nextToken=", "nextToken"),
        ("nextToken=12x_abc", "nextToken"),
        ("nextToken=12_a%2Fb", "nextToken"),
        ("limit=5", "limit"),
    ] {
        let r = api.call("GET", &format!("/tunnels?{query}"), None);
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        assert!(r.message().contains(says), "{query}: {}", r.text);
    }
    assert!(
        api.registry
            .list(None, Timestamp::now())
            .expect("list")
            .is_empty()
    );
}

#[test]
fn unknown_ids_paths_and_methods() {
    let api = api(None);
    for (method, path) in [
        ("GET", "/tunnels/no-such-id"),
        ("DELETE", "/tunnels/no-such-id"),
        ("POST", "/tunnels/no-such-id/close"),
    ] {
        let r = api.call(method, path, None);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text);
        assert!(r.message().contains("no-such-id"), "{}", r.text);
    }
    let r = api.call(
        "POST",
        "/tunnels/no-such-id/rotate",
        Some(r#"{"clientMode":"ALL"}"#),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    let r = api.call("GET", "/metrics", None);
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.message().contains("/tunnels"), "{}", r.text);
    let r = api.call("PUT", "/tunnels", Some("{}"));
    assert_eq!(r.status, 405, "{}", r.text);
    assert!(r.head.contains("allow: get, post"), "{}", r.head);
    let r = api.call("GET", "/tunnels/x/rotate", None);
    assert_eq!(r.status, 405, "{}", r.text);
}

#[test]
fn body_limit() {
    let api = api(None);
    let big = format!(r#"{{"description": "{}"}}"#, "x".repeat(MAX_BODY));
    let r = api.call("POST", "/tunnels", Some(&big));
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.message().contains("bytes"), "{}", r.text);
    assert!(
        api.registry
            .list(None, Timestamp::now())
            .expect("list")
            .is_empty()
    );
}

/// Dropping the server closes its port.
#[test]
fn drop_closes_the_port() {
    let api = api(None);
    let addr = api.server.local_addr();
    drop(api);
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}

/// Our `maxLifetimeTimeoutSeconds` opens a tunnel shorter than AWS's whole minutes; describe
/// writes AWS's field rounded up and ours exact.
#[test]
fn lifetimes_in_seconds() {
    let api = api(None);
    let opened = api.open(r#"{"timeoutConfig": {"maxLifetimeTimeoutSeconds": 90}}"#);
    let id = opened["tunnelId"].as_str().expect("tunnelId");
    let r = api.call("GET", &format!("/tunnels/{id}"), None);
    let timeout = r.json()["tunnel"]["timeoutConfig"].clone();
    assert_eq!(
        timeout,
        json!({ "maxLifetimeTimeoutMinutes": 2, "maxLifetimeTimeoutSeconds": 90 })
    );
    let r = api.call(
        "POST",
        "/tunnels",
        Some(r#"{"timeoutConfig": {"maxLifetimeTimeoutSeconds": 0}}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("is 0 seconds"), "{}", r.text);
}

/// `ListTunnels` lists newest first, as AWS, and pages with `maxResults` and `nextToken`: the
/// pages together are the whole list, each tunnel once, and the last page has no `nextToken`;
/// a page still follows when the tunnel its token names was forgotten meanwhile. Without
/// `maxResults` the list is whole.
#[test]
fn list_pages_newest_first() {
    let api = api(None);
    let base = Timestamp::now().0;
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let req = OpenRequest {
            thing_name: Some(if i % 2 == 0 { "even" } else { "odd" }.into()),
            services: vec!["ssh".into()],
            ..OpenRequest::default()
        };
        // Oldest first, a second apart.
        let at = Timestamp(base - 1000 * (10 - i));
        ids.push(api.registry.open(req, at).expect("open").tunnel_id);
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let listed = |query: &str| -> (Vec<String>, Option<String>) {
        let r = api.call("GET", &format!("/tunnels?{query}"), None);
        assert_eq!(r.status, 200, "{query}: {}", r.text);
        let v = r.json();
        let page = v["tunnelSummaries"]
            .as_array()
            .expect("tunnelSummaries")
            .iter()
            .map(|t| t["tunnelId"].as_str().expect("tunnelId").to_string())
            .collect();
        (page, v["nextToken"].as_str().map(str::to_string))
    };
    assert_eq!(listed(""), (newest_first.clone(), None));

    let (mut all, mut sizes, mut next) = (Vec::new(), Vec::new(), None::<String>);
    loop {
        let query = match &next {
            Some(t) => format!("maxResults=3&nextToken={t}"),
            None => "maxResults=3".into(),
        };
        let (page, token) = listed(&query);
        sizes.push(page.len());
        all.extend(page);
        match token {
            Some(t) => {
                assert!(
                    t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_=-".contains(&b)),
                    "{t}"
                );
                next = Some(t);
            }
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(all, newest_first);

    // By thing, and past a forgotten tunnel: the page ended at ids[4] (the second newest
    // even one), which goes; the next page still starts after it.
    let (page, token) = listed("thingName=even&maxResults=2");
    assert_eq!(page, [ids[6].clone(), ids[4].clone()]);
    let token = token.expect("more even tunnels");
    let r = api.call("DELETE", &format!("/tunnels/{}", ids[4]), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let (page, token) = listed(&format!("thingName=even&maxResults=2&nextToken={token}"));
    assert_eq!(page, [ids[2].clone(), ids[0].clone()]);
    assert_eq!(token, None);
    // A token past the end: an empty page.
    let (page, token) = listed("nextToken=0_zzz");
    assert_eq!((page.len(), token), (0, None));
}

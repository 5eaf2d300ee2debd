//! [`TunnelApi`]: a blocking client of a relay's tunnel API (HTTP/1.1, JSON with AWS IoT
//! Secure Tunneling's field names). The CLI's `tunnel` commands, libtunnel and the Python
//! package all call the API through it.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::config::{SecretText, read_secret_file};
use crate::error::{Error, Result};

/// How long a call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read (a list of many tunnels is well under this).
const MAX_ANSWER: usize = 64 << 20;

/// A client of one relay's tunnel API. Each call opens its own connection and blocks until
/// the answer (at most 30 s); it may be shared by threads.
///
/// ```no_run
/// let api = splice_engine::TunnelApi::new("http://127.0.0.1:8480")?;
/// let opened = api.open(&["SSH"], None, Some("pump-7"), None)?;
/// println!("{}", opened.id);
/// # Ok::<(), splice_engine::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TunnelApi {
    base: Base,
    token: Option<SecretText>,
}

/// A tunnel's id and its access tokens, from [`TunnelApi::open`] or [`TunnelApi::rotate`].
/// Its `Debug` shows the id only.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelTokens {
    /// The tunnel's id.
    pub id: String,
    /// The source's access token (`None` when a rotation left it unchanged).
    pub source: Option<SecretText>,
    /// The destination's access token (`None` when a rotation left it unchanged).
    pub destination: Option<SecretText>,
}

impl std::fmt::Debug for TunnelTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelTokens")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("destination", &self.destination)
            .finish()
    }
}

impl TunnelTokens {
    fn from_answer(answer: &Value) -> Self {
        let token = |k: &str| answer[k].as_str().map(|t| SecretText(t.to_string()));
        TunnelTokens {
            id: answer["tunnelId"].as_str().unwrap_or_default().to_string(),
            source: token("sourceAccessToken"),
            destination: token("destinationAccessToken"),
        }
    }
}

/// Which access tokens [`TunnelApi::rotate`] replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateSide {
    /// The source's.
    Source,
    /// The destination's.
    Destination,
    /// Both.
    Both,
}

impl TunnelApi {
    /// A client of the API at `url` (`http://HOST:PORT`, optionally with a path prefix). An
    /// `https` URL, user information or a query is an [`Error::Address`] naming the URL.
    pub fn new(url: &str) -> Result<Self> {
        Ok(TunnelApi {
            base: parse_base(url)?,
            token: None,
        })
    }

    /// Sends `token` as the bearer token (the relay's `api_token_file`).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(SecretText(token.into()));
        self
    }

    /// Reads the bearer token from `path` (surrounding whitespace removed); an unreadable or
    /// empty file is an [`Error::Config`] naming it.
    pub fn bearer_token_file(self, path: &Path) -> Result<Self> {
        let token = read_secret_file(path).map_err(|why| {
            Error::config(
                path.display().to_string(),
                format!("the API token file: {why}"),
            )
        })?;
        Ok(self.bearer_token(token))
    }

    /// The API's URL as given (without a trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}{}", self.base.authority, self.base.prefix)
    }

    /// The answer to `POST /tunnels` with `services` (none: a V1 tunnel with one unnamed
    /// service), a lifetime in whole minutes (`None`: the relay's), a thing and a
    /// description, as JSON (the access tokens included).
    pub fn open_json(
        &self,
        services: &[&str],
        lifetime_minutes: Option<u64>,
        thing: Option<&str>,
        description: Option<&str>,
    ) -> Result<Value> {
        let lifetime = lifetime_minutes.map(|m| Duration::from_secs(m.saturating_mul(60)));
        self.open_json_for(services, lifetime, thing, description)
    }

    /// [`TunnelApi::open_json`] with the lifetime as a duration: sent as AWS's whole minutes
    /// when it is some, else as our `maxLifetimeTimeoutSeconds` (a relay of ours takes
    /// lifetimes shorter than AWS's one minute, up to its `max_lifetime`; sub-second parts
    /// are dropped).
    pub fn open_json_for(
        &self,
        services: &[&str],
        lifetime: Option<Duration>,
        thing: Option<&str>,
        description: Option<&str>,
    ) -> Result<Value> {
        let mut destination = json!({ "services": services });
        if let Some(t) = thing {
            destination["thingName"] = t.into();
        }
        let mut body = json!({ "destinationConfig": destination });
        if let Some(d) = lifetime {
            let s = d.as_secs();
            body["timeoutConfig"] = if s % 60 == 0 {
                json!({ "maxLifetimeTimeoutMinutes": s / 60 })
            } else {
                json!({ "maxLifetimeTimeoutSeconds": s })
            };
        }
        if let Some(d) = description {
            body["description"] = d.into();
        }
        self.call("POST", "/tunnels", Some(body))
    }

    /// Opens a tunnel (see [`TunnelApi::open_json`]); its id and both access tokens.
    pub fn open(
        &self,
        services: &[&str],
        lifetime_minutes: Option<u64>,
        thing: Option<&str>,
        description: Option<&str>,
    ) -> Result<TunnelTokens> {
        let answer = self.open_json(services, lifetime_minutes, thing, description)?;
        Ok(TunnelTokens::from_answer(&answer))
    }

    /// [`TunnelApi::open`] with the lifetime as a duration, to the second (see
    /// [`TunnelApi::open_json_for`]): as the CLI's `--lifetime 90s`.
    pub fn open_for(
        &self,
        services: &[&str],
        lifetime: Option<Duration>,
        thing: Option<&str>,
        description: Option<&str>,
    ) -> Result<TunnelTokens> {
        let answer = self.open_json_for(services, lifetime, thing, description)?;
        Ok(TunnelTokens::from_answer(&answer))
    }

    /// `GET /tunnels` (only `thing`'s when given): `{"tunnelSummaries": [...]}`, newest first,
    /// all of them.
    pub fn list(&self, thing: Option<&str>) -> Result<Value> {
        self.list_page(thing, None, None)
    }

    /// One page of `GET /tunnels`: at most `max_results` (1 to 100) summaries, after the
    /// position `next_token` (from the previous page's answer); the answer carries a
    /// `nextToken` when more follow.
    pub fn list_page(
        &self,
        thing: Option<&str>,
        max_results: Option<u32>,
        next_token: Option<&str>,
    ) -> Result<Value> {
        let mut query = Vec::new();
        if let Some(t) = thing {
            query.push(format!("thingName={}", percent_encode(t)));
        }
        if let Some(n) = max_results {
            query.push(format!("maxResults={n}"));
        }
        if let Some(t) = next_token {
            query.push(format!("nextToken={}", percent_encode(t)));
        }
        let path = if query.is_empty() {
            "/tunnels".to_string()
        } else {
            format!("/tunnels?{}", query.join("&"))
        };
        self.call("GET", &path, None)
    }

    /// `GET /tunnels/{id}`: `{"tunnel": {...}}` with its services, lifetime, status and
    /// whether each side is connected.
    pub fn describe(&self, id: &str) -> Result<Value> {
        self.call("GET", &tunnel_path(id, ""), None)
    }

    /// The answer to `POST /tunnels/{id}/rotate`, as JSON (the new tokens included); with
    /// `client_token`, only an agent that brings it may use them.
    pub fn rotate_json(
        &self,
        id: &str,
        side: RotateSide,
        client_token: Option<&str>,
    ) -> Result<Value> {
        let mode = match side {
            RotateSide::Source => "SOURCE",
            RotateSide::Destination => "DESTINATION",
            RotateSide::Both => "ALL",
        };
        let mut body = json!({ "clientMode": mode });
        if let Some(c) = client_token {
            body["clientToken"] = c.into();
        }
        self.call("POST", &tunnel_path(id, "/rotate"), Some(body))
    }

    /// Replaces a tunnel's access tokens (see [`TunnelApi::rotate_json`]); the new ones.
    pub fn rotate(
        &self,
        id: &str,
        side: RotateSide,
        client_token: Option<&str>,
    ) -> Result<TunnelTokens> {
        let answer = self.rotate_json(id, side, client_token)?;
        Ok(TunnelTokens::from_answer(&answer))
    }

    /// `POST /tunnels/{id}/close`: both peers get a close frame, its tokens stop working;
    /// with `delete` it is forgotten too.
    pub fn close(&self, id: &str, delete: bool) -> Result<Value> {
        let body = delete.then(|| json!({ "delete": true }));
        self.call("POST", &tunnel_path(id, "/close"), body)
    }

    /// One call: `method` (`GET`, `POST`) on `path` (after the URL's prefix) with a JSON
    /// body. The answer's JSON; an error status is an [`Error::TunnelApi`] with the API's
    /// message, no answer one without a status.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.url());
        let failed = |status: Option<u16>, message: String| Error::TunnelApi {
            method: method.to_string(),
            url: url.clone(),
            status,
            message,
        };
        let m: Method = method
            .parse()
            .map_err(|_| failed(None, format!("{method:?} is not an HTTP method")))?;
        let mut req = Request::builder()
            .method(m)
            .uri(format!("{}{path}", self.base.prefix))
            .header(HOST, &self.base.authority);
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {}", t.0));
        }
        let bytes = match &body {
            Some(b) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| failed(None, format!("building the request: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| failed(None, format!("tokio runtime: {e}")))?;
        let (status, answer) = runtime
            .block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, send(&self.base, req))
                    .await
                    .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
            })
            .map_err(|e| failed(None, e))?;
        let json: Option<Value> = serde_json::from_slice(&answer).ok();
        if !(200..300).contains(&status) {
            let message = json
                .as_ref()
                .and_then(|j| j["message"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&answer).trim().to_string());
            return Err(failed(Some(status), message));
        }
        json.ok_or_else(|| {
            failed(
                Some(status),
                format!(
                    "the answer is not JSON: {:?}",
                    String::from_utf8_lossy(&answer)
                ),
            )
        })
    }
}

fn tunnel_path(id: &str, tail: &str) -> String {
    format!("/tunnels/{}{tail}", percent_encode(id))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The API's base: host, port and path prefix of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Base {
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// Without a trailing slash.
    prefix: String,
}

fn parse_base(url: &str) -> Result<Base> {
    let bad = |why: String| Error::Address {
        addr: url.to_string(),
        why,
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| bad(format!("not a URL ({e}); expected http://HOST:PORT")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported; the API is plain HTTP (keep it on \
                 loopback, or reach it through an SSH or TLS tunnel)"
                    .into(),
            ));
        }
        _ => return Err(bad("expected http://HOST:PORT".into())),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "no user information in the URL (give the bearer token instead)".into(),
        ));
    }
    if uri.query().is_some() {
        return Err(bad("no query in the URL".into()));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(Base {
        host,
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_string(),
        prefix: uri.path().trim_end_matches('/').to_string(),
    })
}

async fn send(base: &Base, req: Request<Full<Bytes>>) -> std::result::Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect((base.host.as_str(), base.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", base.authority))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let answer = sender
        .send_request(req)
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let status = answer.status().as_u16();
    let body = http_body_util::Limited::new(answer.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    drop(sender);
    let _ = driver.await;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls() {
        assert_eq!(
            parse_base("http://127.0.0.1:8480").unwrap(),
            Base {
                host: "127.0.0.1".into(),
                port: 8480,
                authority: "127.0.0.1:8480".into(),
                prefix: String::new(),
            }
        );
        let b = parse_base("http://[::1]/relay/").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 80));
        assert_eq!(b.prefix, "/relay");
        for bad in ["https://x:1", "127.0.0.1:8480", "http://u:p@x:1", "ftp://x"] {
            assert!(parse_base(bad).is_err(), "{bad}");
        }
        let e = parse_base("https://x:1").unwrap_err().to_string();
        assert!(
            e.contains("https is not supported") && e.contains("https://x:1"),
            "{e}"
        );
    }

    #[test]
    fn ids_are_percent_encoded() {
        assert_eq!(
            tunnel_path("a b/../c", "/close"),
            "/tunnels/a%20b%2F..%2Fc/close"
        );
        assert_eq!(percent_encode("pump-7_x.y~"), "pump-7_x.y~");
    }

    #[test]
    fn tokens_are_redacted() {
        let t = TunnelTokens::from_answer(&json!({
            "tunnelId": "t1",
            "sourceAccessToken": "s3cret-source",
            "destinationAccessToken": "s3cret-dest",
        }));
        let shown = format!("{t:?}");
        assert!(shown.contains("t1") && !shown.contains("s3cret"), "{shown}");
        assert_eq!(t.source.unwrap().0, "s3cret-source");
    }

    /// `open_for` keeps the seconds (`open` has whole minutes only): the relay's record has
    /// 90 s, and whole minutes still go as AWS's field.
    #[test]
    fn open_for_keeps_the_seconds() {
        use std::sync::Arc;

        use crate::relay::api::ApiServer;
        use crate::relay::registry::{Limits, Registry};
        use crate::relay::store::MemoryStore;

        let registry = Arc::new(Registry::new(
            Box::new(MemoryStore::default()),
            Limits::default(),
        ));
        let server = ApiServer::start(([127, 0, 0, 1], 0).into(), registry, None).expect("start");
        let api = TunnelApi::new(&format!("http://{}", server.local_addr())).unwrap();
        for (lifetime, seconds, minutes) in [(90, 90, 2), (120, 120, 2), (1, 1, 1)] {
            let t = api
                .open_for(&["ssh"], Some(Duration::from_secs(lifetime)), None, None)
                .expect("open");
            assert!(t.source.is_some() && t.destination.is_some());
            let shown = api.describe(&t.id).expect("describe");
            assert_eq!(
                shown["tunnel"]["timeoutConfig"],
                json!({
                    "maxLifetimeTimeoutMinutes": minutes,
                    "maxLifetimeTimeoutSeconds": seconds,
                }),
                "{lifetime} s"
            );
        }
        let e = api
            .open_for(&["ssh"], Some(Duration::from_secs(0)), None, None)
            .unwrap_err();
        assert!(e.to_string().contains("is 0 seconds"), "{e}");
    }

    /// No API listening: the error names the URL and says it could not connect.
    #[test]
    fn unreachable_api_names_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = TunnelApi::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = api.list(None).unwrap_err();
        assert!(matches!(e, Error::TunnelApi { status: None, .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains(&format!("127.0.0.1:{port}/tunnels")), "{e}");
    }
}

//! The relay's web console, under `/console` on the API listener ([`super::api`]), and the
//! browser source's files, which the agents' TLS port serves under `/source`
//! ([`source_asset`], answered by [`super::cookie::answer`]).
//!
//! The console is static HTML and JavaScript (in `console/`, built into the binary) that
//! polls [`TUNNELS_PATH`] every second and calls the tunnel API (`/tunnels`) to open, rotate
//! and close. With an API token (`--api-token-file`), `/console/login` takes the token and
//! starts a session: a random id in a cookie ([`SESSION_COOKIE`]: `HttpOnly`,
//! `SameSite=Strict`, `Path=/`) that the relay keeps (its hash) for [`SESSION_TTL`]. A call
//! with the session cookie must also carry the header [`CSRF_HEADER`], which a page only
//! sends from script of its own origin (another origin's would need a CORS preflight, which
//! the API never grants): a form or link on another site cannot act with the session. The
//! bearer token keeps working for scripts. Without an API token the console is open, as the
//! API is, and says so.
//!
//! Not here: the tunnel API's calls themselves, the cookie flow (`POST /cookie`), and
//! anything the browser source does (it is a page that speaks the tunnel protocol itself).
//! See `docs/relay.md`, "Browsers".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    CACHE_CONTROL, CONTENT_TYPE, COOKIE, HeaderMap, HeaderValue, LOCATION, SET_COOKIE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use splice_proto::tunnel::relay::cookie::Asset;

use super::events::Events;
use super::json::tunnel_json;
use super::registry::Registry;
use super::secret::{Secret, TokenHash, new_token, secret_matches};
use super::tunnel::Timestamp;
use crate::http::BODY_READ_TIMEOUT;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "splice-console";

/// The header a call with the session cookie must carry (any value): only the console's own
/// script sends it.
pub(crate) const CSRF_HEADER: &str = "x-splice-console";

/// How long a session lasts from its login.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept at once; a login past it ends the oldest.
const MAX_SESSIONS: usize = 256;

/// How long a wrong login waits before its answer (guessing costs time).
const LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// The console's tunnels, with byte counts, in one answer: what the page polls.
pub(crate) const TUNNELS_PATH: &str = "/console/api/tunnels";

/// The console: its login and its sessions.
#[derive(Debug)]
pub(crate) struct Console {
    /// Some: the console needs a login with this token.
    api_token: Option<Secret>,
    /// Session id hashes, with the instant each ends.
    sessions: Mutex<HashMap<TokenHash, Instant>>,
    /// The relay's agents' port (`--listen`), where the browser source is served.
    agent_port: Option<u16>,
}

/// Whether `path` is the console's (`/console` or under it).
pub(crate) fn is_console_path(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// A built-in file: its type and bytes.
struct File {
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The console's own files (the page itself is served by [`Console::respond`]).
fn console_file(path: &str) -> Option<File> {
    let (content_type, body): (&str, &[u8]) = match path {
        "/console/console.js" => (JS, include_bytes!("console/console.js")),
        "/console/console.css" => (CSS, include_bytes!("console/console.css")),
        "/console/login.js" => (JS, include_bytes!("console/login.js")),
        _ => return None,
    };
    Some(File { content_type, body })
}

/// The browser source's files, for a `GET` under `/source` on the agents' port.
pub(crate) fn source_asset(path: &str) -> Option<Asset<'static>> {
    let (content_type, body): (&'static str, &'static [u8]) = match path {
        "/source" | "/source/" => (HTML, include_bytes!("console/source.html")),
        "/source/source.js" => (JS, include_bytes!("console/source.js")),
        "/source/console.css" => (CSS, include_bytes!("console/console.css")),
        "/source/xterm.js" => (JS, include_bytes!("console/vendor/xterm/xterm.js")),
        "/source/xterm.css" => (CSS, include_bytes!("console/vendor/xterm/xterm.css")),
        "/source/xterm-LICENSE" => (TEXT, include_bytes!("console/vendor/xterm/LICENSE")),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// The console's pages: scripts and styles of this origin only, calls to this origin only.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

impl Console {
    pub(crate) fn new(api_token: Option<Secret>, agent_port: Option<u16>) -> Self {
        Self {
            api_token,
            sessions: Mutex::default(),
            agent_port,
        }
    }

    /// Whether a request with `headers` is a console call the API takes in place of the
    /// bearer token: a live session's cookie and [`CSRF_HEADER`].
    pub(crate) fn session_allows(&self, headers: &HeaderMap) -> bool {
        headers.contains_key(CSRF_HEADER) && self.has_session(headers)
    }

    /// Whether `headers` carry a live session's cookie (or no login is needed).
    fn has_session(&self, headers: &HeaderMap) -> bool {
        if self.api_token.is_none() {
            return true;
        }
        let Some(id) = session_cookie(headers) else {
            return false;
        };
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let key = TokenHash::of(id);
        match sessions.get(&key) {
            Some(end) if *end > now => true,
            Some(_) => {
                sessions.remove(&key);
                false
            }
            None => false,
        }
    }

    /// A new session: its id (for the cookie only).
    fn start_session(&self) -> Option<Secret> {
        let id = new_token().ok()?;
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, end| *end > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.hash(), now + SESSION_TTL);
        Some(id)
    }

    fn end_session(&self, headers: &HeaderMap) {
        if let Some(id) = session_cookie(headers) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.remove(&TokenHash::of(id));
        }
    }

    /// The answer to a request under `/console`.
    pub(crate) async fn respond(
        &self,
        req: Request<Incoming>,
        registry: &Registry,
        events: &Events,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let login = self.api_token.is_some();
        if let Some(f) = console_file(&path) {
            return match method {
                Method::GET => page(StatusCode::OK, f.content_type, f.body),
                _ => not_allowed("GET"),
            };
        }
        match path.as_str() {
            "/console" | "/console/" => match method {
                Method::GET if self.has_session(req.headers()) => {
                    page(StatusCode::OK, HTML, include_bytes!("console/console.html"))
                }
                Method::GET => redirect("/console/login"),
                _ => not_allowed("GET"),
            },
            "/console/login" => match method {
                Method::GET if !login => redirect("/console"),
                Method::GET => page(StatusCode::OK, HTML, include_bytes!("console/login.html")),
                Method::POST => self.login(req, peer).await,
                _ => not_allowed("GET, POST"),
            },
            "/console/logout" => match method {
                Method::POST if req.headers().contains_key(CSRF_HEADER) => {
                    self.end_session(req.headers());
                    let mut r = json_answer(StatusCode::OK, &json!({}));
                    set_cookie(&mut r, &format!("{SESSION_COOKIE}=; Max-Age=0"));
                    r
                }
                Method::POST => missing_header(),
                _ => not_allowed("POST"),
            },
            TUNNELS_PATH => match method {
                Method::GET if self.api_allows(req.headers()) => {
                    self.tunnels(registry, events, login)
                }
                Method::GET => json_answer(
                    StatusCode::UNAUTHORIZED,
                    &json!({ "message": "log in at /console/login (or send the API token)" }),
                ),
                _ => not_allowed("GET"),
            },
            _ => json_answer(
                StatusCode::NOT_FOUND,
                &json!({ "message": format!("no such path {path:?} in the console") }),
            ),
        }
    }

    /// Bearer token, or session with its header, or no login needed.
    fn api_allows(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.api_token else {
            return true;
        };
        self.session_allows(headers) || bearer(headers).is_some_and(|t| secret_matches(t, token))
    }

    async fn login(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let Some(expected) = &self.api_token else {
            return json_answer(
                StatusCode::OK,
                &json!({ "message": "this console needs no login" }),
            );
        };
        if !req.headers().contains_key(CSRF_HEADER) {
            return missing_header();
        }
        let body = tokio::time::timeout(
            BODY_READ_TIMEOUT,
            Limited::new(req.into_body(), 8 * 1024).collect(),
        )
        .await;
        let Ok(Ok(body)) = body else {
            return json_answer(
                StatusCode::BAD_REQUEST,
                &json!({ "message": "the body did not arrive whole (at most 8 KiB)" }),
            );
        };
        let given = serde_json::from_slice::<Value>(&body.to_bytes())
            .ok()
            .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned));
        let Some(given) = given else {
            return json_answer(
                StatusCode::BAD_REQUEST,
                &json!({ "message": "the body must be {\"token\": \"<API token>\"}" }),
            );
        };
        if !secret_matches(given.trim(), expected) {
            tracing::warn!(%peer, "console login with a wrong API token");
            tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
            return json_answer(
                StatusCode::UNAUTHORIZED,
                &json!({ "message": "that is not the API token" }),
            );
        }
        let Some(id) = self.start_session() else {
            return json_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "message": "the system random generator failed" }),
            );
        };
        tracing::info!(%peer, "console login");
        let mut r = json_answer(StatusCode::OK, &json!({}));
        set_cookie(
            &mut r,
            &format!(
                "{SESSION_COOKIE}={}; Max-Age={}",
                id.expose(),
                SESSION_TTL.as_secs()
            ),
        );
        r
    }

    /// Every tunnel as `DescribeTunnel` shows it, with its byte counts, and what the page
    /// needs to know about the console.
    fn tunnels(&self, registry: &Registry, events: &Events, login: bool) -> Response<Full<Bytes>> {
        let now = Timestamp::now();
        let listed = events
            .expire(registry, now)
            .and_then(|()| registry.list(None, now));
        let tunnels = match listed {
            Ok(t) => t,
            Err(e) => {
                return json_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "message": e.to_string() }),
                );
            }
        };
        let tunnels: Vec<Value> = tunnels
            .iter()
            .map(|t| {
                let mut v = tunnel_json(t);
                let [up, down] = events.counters().bytes(&t.id).unwrap_or([0, 0]);
                v["bytes"] = json!({ "sourceToDestination": up, "destinationToSource": down });
                v
            })
            .collect();
        json_answer(
            StatusCode::OK,
            &json!({
                "login": login,
                "agentPort": self.agent_port,
                "now": now.epoch_seconds(),
                "tunnels": tunnels,
            }),
        )
    }
}

/// The value of the session cookie, if exactly one was sent.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let mut found = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value);
    match (found.next(), found.next()) {
        (Some(v), None) if !v.is_empty() => Some(v),
        _ => None,
    }
}

/// The token of `Authorization: Bearer`, if sent once.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(hyper::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    value
        .to_str()
        .ok()?
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

fn set_cookie(r: &mut Response<Full<Bytes>>, value: &str) {
    let cookie = format!("{value}; Path=/; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(SET_COOKIE, v);
    }
}

fn page(
    status: StatusCode,
    content_type: &'static str,
    body: &'static [u8],
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(CONSOLE_CSP),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

fn json_answer(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn redirect(to: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = json_answer(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "message": format!("use {allow}") }),
    );
    r.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn missing_header() -> Response<Full<Bytes>> {
    json_answer(
        StatusCode::FORBIDDEN,
        &json!({ "message": format!("the console's calls carry the header {CSRF_HEADER}") }),
    )
}

#[cfg(test)]
#[path = "console_tests.rs"]
mod tests;

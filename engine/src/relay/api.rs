//! The tunnel API: HTTP/1.1 and JSON on the control plane's HTTP server ([`crate::http`], as
//! the metrics endpoint). Paths and field names mirror AWS IoT Secure
//! Tunneling's API, so scripts written against `aws iotsecuretunneling` port with a URL
//! change:
//!
//! | Call | AWS | Answer |
//! |---|---|---|
//! | `POST /tunnels` | OpenTunnel | `tunnelId`, `sourceAccessToken`, `destinationAccessToken` |
//! | `GET /tunnels[?thingName=T][&maxResults=N][&nextToken=P]` | ListTunnels | `tunnelSummaries`, newest first; `nextToken` when a page is not the last |
//! | `GET /tunnels/{id}` | DescribeTunnel | `tunnel` |
//! | `POST /tunnels/{id}/rotate` | RotateTunnelAccessToken | the new token(s) |
//! | `POST /tunnels/{id}/close` | CloseTunnel (`{"delete": true}` forgets it too) | `{}` |
//! | `DELETE /tunnels/{id}` | CloseTunnel with `delete` | `{}` |
//!
//! The web console ([`super::console`]) is under `/console` on the same server; its session
//! cookie (with its header) stands in for the bearer token.
//!
//! Errors are `{"message": "..."}` with 400 (bad JSON or field), 401 (API token missing or
//! wrong), 404 (unknown path or tunnel id), 405, 408 (body too slow), 409 (the tunnel is
//! closed), 413 (body over [`MAX_BODY`]) or 503 (the store failed).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::console::Console;
use super::events::{Events, RelayEvent};
use super::json::{summary_json, tunnel_json};
use super::registry::{OpenRequest, Registry, RegistryError, RotateSides};
use super::secret::{Secret, secret_matches};
use super::store::ListPosition;
use super::tunnel::Timestamp;
use crate::error::Result;
use crate::http::{BODY_READ_TIMEOUT, HttpServer};

/// The largest request body accepted (an OpenTunnel body is a few hundred bytes).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The API server; it stops (closing its port and every connection) when dropped.
#[derive(Debug)]
pub(crate) struct ApiServer(HttpServer);

/// What each request needs.
struct Shared {
    registry: Arc<Registry>,
    /// `Authorization: Bearer` must carry it, when set.
    api_token: Option<Secret>,
    /// Told of each close and rotation, so the data plane drops the peers.
    events: Arc<Events>,
    /// `/console`, and its sessions.
    console: Console,
}

impl ApiServer {
    /// Binds `addr` (an error names it) and serves the API for `registry` on a new thread;
    /// with `api_token`, every request must carry `Authorization: Bearer <api_token>`.
    #[cfg(test)]
    pub(crate) fn start(
        addr: SocketAddr,
        registry: Arc<Registry>,
        api_token: Option<Secret>,
    ) -> Result<Self> {
        Self::start_with_events(addr, registry, api_token, Arc::default())
    }

    /// [`ApiServer::start`], telling `events` of each tunnel closed (by a call, or because
    /// a call found its lifetime ended) and each rotation.
    #[cfg(test)]
    pub(crate) fn start_with_events(
        addr: SocketAddr,
        registry: Arc<Registry>,
        api_token: Option<Secret>,
        events: Arc<Events>,
    ) -> Result<Self> {
        Self::start_with_console(addr, registry, api_token, events, None)
    }

    /// [`ApiServer::start_with_events`]; the console links its browser source to the
    /// relay's agents' port `agent_port`.
    pub(crate) fn start_with_console(
        addr: SocketAddr,
        registry: Arc<Registry>,
        api_token: Option<Secret>,
        events: Arc<Events>,
        agent_port: Option<u16>,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            registry,
            console: Console::new(api_token.clone(), agent_port),
            api_token,
            events,
        });
        let server = HttpServer::start("tunnel API", "tunnel-api", addr, move |req, peer| {
            let shared = shared.clone();
            async move { respond(req, &shared, peer).await }
        })?;
        let addr = server.local_addr();
        tracing::info!(addr = %addr, "tunnel API at http://{addr}/tunnels");
        Ok(Self(server))
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }
}

/// An answer: a status and a JSON body.
struct Answer {
    status: StatusCode,
    body: Value,
    /// It shows access tokens: no cache may keep it.
    secret: bool,
    allow: Option<&'static str>,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            secret: false,
            allow: None,
        }
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "message": message.into() }),
            secret: false,
            allow: None,
        }
    }
}

impl From<RegistryError> for Answer {
    fn from(e: RegistryError) -> Self {
        let status = match e {
            RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Closed(_) => StatusCode::CONFLICT,
            RegistryError::Store(_) | RegistryError::Random(_) => {
                tracing::warn!(error = %e, "tunnel API: registry failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        Answer::error(status, e.to_string())
    }
}

async fn respond(
    req: Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if super::console::is_console_path(req.uri().path()) {
        let s = shared;
        return s.console.respond(req, &s.registry, &s.events, peer).await;
    }
    let answer = route(req, shared, peer).await;
    let mut r = Response::new(Full::new(Bytes::from(answer.body.to_string())));
    *r.status_mut() = answer.status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if answer.secret {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if answer.status == StatusCode::UNAUTHORIZED {
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(allow) = answer.allow {
        h.insert(ALLOW, HeaderValue::from_static(allow));
    }
    r
}

async fn route(req: Request<Incoming>, shared: &Shared, peer: SocketAddr) -> Answer {
    if let Some(expected) = &shared.api_token
        && !authorized(&req, expected)
        && !shared.console.session_allows(req.headers())
    {
        tracing::debug!(%peer, "tunnel API: request without the API token refused");
        return Answer::error(
            StatusCode::UNAUTHORIZED,
            "this API needs the header Authorization: Bearer <API token>",
        );
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let registry = &shared.registry;
    let events = &*shared.events;
    let now = Timestamp::now();
    if let Err(e) = events.expire(registry, now) {
        return e.into();
    }
    let not_allowed = |allow: &'static str| Answer {
        allow: Some(allow),
        ..Answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}; use {allow}"),
        )
    };
    match segments.as_slice() {
        ["tunnels"] => match method {
            Method::GET => list(registry, &query, now),
            Method::POST => match body::<OpenBody>(req).await {
                Ok(b) => open(registry, events, b, now),
                Err(a) => a,
            },
            _ => not_allowed("GET, POST"),
        },
        ["tunnels", id] => match method {
            Method::GET => match registry.describe(id, now) {
                Ok(t) => {
                    let mut tunnel = tunnel_json(&t);
                    // Not in AWS's answer: the bytes the relay forwarded while the tunnel is
                    // open (its counters go when it closes).
                    if let Some([up, down]) = events.counters().bytes(id) {
                        tunnel["bytes"] =
                            json!({ "sourceToDestination": up, "destinationToSource": down });
                    }
                    Answer::ok(json!({ "tunnel": tunnel }))
                }
                Err(e) => e.into(),
            },
            Method::DELETE => close(registry, events, id, true, now),
            _ => not_allowed("GET, DELETE"),
        },
        ["tunnels", id, "rotate"] => match method {
            Method::POST => match body::<RotateBody>(req).await {
                Ok(b) => rotate(registry, events, id, b, now),
                Err(a) => a,
            },
            _ => not_allowed("POST"),
        },
        ["tunnels", id, "close"] => match method {
            Method::POST => match body::<CloseBody>(req).await {
                Ok(b) => close(registry, events, id, b.delete.unwrap_or(false), now),
                Err(a) => a,
            },
            _ => not_allowed("POST"),
        },
        _ => Answer::error(
            StatusCode::NOT_FOUND,
            format!("no such path {path:?}; the tunnel API is under /tunnels"),
        ),
    }
}

/// Whether `Authorization: Bearer <token>` carries `expected` (compared in constant time).
fn authorized(req: &Request<Incoming>, expected: &Secret) -> bool {
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some(given) = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
    else {
        return false;
    };
    secret_matches(given, expected)
}

/// The request body as `T`; an empty body is `{}`.
async fn body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> std::result::Result<T, Answer> {
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await;
    let bytes = match collected {
        Err(_) => {
            return Err(Answer::error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
            ));
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Answer::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {MAX_BODY} bytes"),
            ));
        }
        Ok(Err(e)) => {
            return Err(Answer::error(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            ));
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    let bad = |why: String| {
        Answer::error(
            StatusCode::BAD_REQUEST,
            format!("the request body is not the JSON this call takes{why}"),
        )
    };
    let mut json = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at {path}")
        };
        bad(format!("{at}: {}", e.inner()))
    })?;
    // Nothing but whitespace may follow the value.
    json.end().map_err(|e| bad(format!(": {e}")))?;
    Ok(value)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OpenBody {
    description: Option<String>,
    destination_config: Option<DestinationConfig>,
    timeout_config: Option<TimeoutConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DestinationConfig {
    thing_name: Option<String>,
    services: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TimeoutConfig {
    max_lifetime_timeout_minutes: Option<u32>,
    /// Ours, not AWS's: a lifetime under a minute (or not in whole minutes). Takes the place
    /// of the minutes when both are given.
    max_lifetime_timeout_seconds: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RotateBody {
    client_mode: ClientMode,
    client_token: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "UPPERCASE")]
enum ClientMode {
    Source,
    Destination,
    All,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    delete: Option<bool>,
}

fn open(registry: &Registry, events: &Events, b: OpenBody, now: Timestamp) -> Answer {
    let (thing_name, services) = b
        .destination_config
        .map(|d| (d.thing_name, d.services))
        .unwrap_or_default();
    let req = OpenRequest {
        // A thing's tunnel is paired by the thing's device in standby (issue 12 §2).
        pairing: thing_name
            .clone()
            .map_or_else(Default::default, super::tunnel::Pairing::Thing),
        description: b.description,
        thing_name,
        services,
        lifetime_seconds: b.timeout_config.and_then(|t| {
            t.max_lifetime_timeout_seconds.or(t
                .max_lifetime_timeout_minutes
                // Too many minutes for seconds: still too many, as u32::MAX says.
                .map(|m| m.saturating_mul(60)))
        }),
    };
    let thing = req.thing_name.clone();
    let services = req.services.clone();
    match registry.open(req, now) {
        Ok(o) => {
            tracing::info!(tunnel = %o.tunnel_id, thing = thing.as_deref(), "tunnel opened");
            if let Some(thing) = thing {
                events.emit(super::things::opened(thing, &o, services));
            }
            Answer {
                secret: true,
                ..Answer::ok(json!({
                    "tunnelId": o.tunnel_id,
                    "sourceAccessToken": o.source_token.expose(),
                    "destinationAccessToken": o.destination_token.expose(),
                }))
            }
        }
        Err(e) => e.into(),
    }
}

/// `ListTunnels`' most results per page, as AWS.
const MAX_RESULTS: usize = 100;

fn list(registry: &Registry, query: &str, now: Timestamp) -> Answer {
    let mut thing = None;
    let mut max_results = None;
    let mut after = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("thingName", v)) => match percent_decode(v) {
                Some(v) => thing = Some(v),
                None => {
                    return Answer::error(
                        StatusCode::BAD_REQUEST,
                        "thingName is not valid percent-encoded UTF-8",
                    );
                }
            },
            Some(("maxResults", v)) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_RESULTS).contains(&n) => max_results = Some(n),
                _ => {
                    return Answer::error(
                        StatusCode::BAD_REQUEST,
                        format!("maxResults must be a whole number from 1 to {MAX_RESULTS}"),
                    );
                }
            },
            Some(("nextToken", v)) => match parse_next_token(v) {
                Some(p) => after = Some(p),
                None => {
                    return Answer::error(
                        StatusCode::BAD_REQUEST,
                        "nextToken is not one this relay gave out",
                    );
                }
            },
            _ => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown query parameter {pair:?}; GET /tunnels takes thingName, \
                         maxResults and nextToken"
                    ),
                );
            }
        }
    }
    let listed = match max_results {
        None => registry
            .newest_first(thing.as_deref(), after.as_ref(), now)
            .map(|all| (all, false)),
        // One more than the page, to know whether more follow.
        Some(n) => registry
            .page(thing.as_deref(), after.as_ref(), n + 1, now)
            .map(|mut page| {
                let more = page.len() > n;
                page.truncate(n);
                (page, more)
            }),
    };
    match listed {
        Ok((page, more)) => {
            let mut answer = json!({
                "tunnelSummaries": page.iter().map(summary_json).collect::<Vec<Value>>()
            });
            if more && let Some(last) = page.last() {
                answer["nextToken"] = next_token(&ListPosition::of(last)).into();
            }
            Answer::ok(answer)
        }
        Err(e) => e.into(),
    }
}

/// A [`ListPosition`] as `ListTunnels`' `nextToken`: `<milliseconds>_<id>`, within AWS's token
/// alphabet (`[a-zA-Z0-9_=-]`).
fn next_token(p: &ListPosition) -> String {
    format!("{}_{}", p.created_at.0, p.id)
}

/// The position a `nextToken` names; `None` if this relay could not have given it.
fn parse_next_token(token: &str) -> Option<ListPosition> {
    let (ms, id) = token.split_once('_')?;
    let ok_id = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok_id || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(ListPosition {
        created_at: Timestamp(ms.parse().ok()?),
        id: id.to_string(),
    })
}

fn rotate(registry: &Registry, events: &Events, id: &str, b: RotateBody, now: Timestamp) -> Answer {
    let sides = match b.client_mode {
        ClientMode::Source => RotateSides::Source,
        ClientMode::Destination => RotateSides::Destination,
        ClientMode::All => RotateSides::Both,
    };
    match registry.rotate(id, sides, b.client_token.as_deref(), now) {
        Ok(r) => {
            tracing::info!(tunnel = %id, ?sides, "tunnel access tokens rotated");
            events.emit(RelayEvent::Rotated {
                tunnel_id: id.to_string(),
                sides,
            });
            let mut body = Map::new();
            body.insert("tunnelId".into(), id.into());
            if let Some(t) = &r.source_token {
                body.insert("sourceAccessToken".into(), t.expose().into());
            }
            if let Some(t) = &r.destination_token {
                body.insert("destinationAccessToken".into(), t.expose().into());
            }
            Answer {
                secret: true,
                ..Answer::ok(Value::Object(body))
            }
        }
        Err(e) => e.into(),
    }
}

fn close(registry: &Registry, events: &Events, id: &str, delete: bool, now: Timestamp) -> Answer {
    match registry.close(id, delete, now) {
        Ok(()) => {
            tracing::info!(tunnel = %id, delete, "tunnel closed");
            events.emit(RelayEvent::Closed {
                tunnel_id: id.to_string(),
                expired: false,
            });
            Answer::ok(json!({}))
        }
        Err(e) => e.into(),
    }
}

/// `%XX` and `+` decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[path = "api_tests.rs"]
pub(super) mod tests;

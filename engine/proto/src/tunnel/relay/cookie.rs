//! `POST /cookie` on the relay's agent port, sans-IO: a browser's WebSocket cannot send the
//! `access-token` header, so a page posts the token here and gets it back as the
//! `awsiot-tunnel-token` cookie, which its `new WebSocket(...)` then carries to `/tunnel`.
//!
//! [`classify`] tells whether the bytes at the front of a connection are one of these requests
//! or a `GET` under [`SOURCE_PATH`] (the browser source's static page, [`respond_get`]),
//! rather than an upgrade; [`parse_request`] reads the request (head and body, at most
//! [`MAX_REQUEST_LEN`](crate::ws::MAX_REQUEST_LEN) and [`MAX_BODY`] bytes); [`respond`] decides and writes the whole
//! answer: CORS for the allowed origins, the preflight, the JSON body's check, the token's
//! check (through the caller's closure: the registry), and the `Set-Cookie`. Every answer
//! ends the connection (`Connection: close`).
//!
//! What it does not do: I/O, the clock (the token check returns the seconds left), the
//! registry, logging. No answer and no error text carries the token, except the
//! `Set-Cookie` header that is the point of it.

use crate::ws::{AccessToken, HeadError, parse_head};

/// The path.
pub const PATH: &str = "/cookie";

/// Where the browser source's static files are served (`GET`): on this port, the page is
/// the relay's own origin, so its cookie and WebSocket need no `--cors-origin`.
pub const SOURCE_PATH: &str = "/source";

/// The cookie the WebSocket upgrade reads the token from (reference §2).
pub const COOKIE: &str = "awsiot-tunnel-token";

/// The largest body taken: a 4096-byte token in JSON with room to spare.
pub const MAX_BODY: usize = 8 * 1024;

/// The most headers taken (a browser sends about 15).
const MAX_HEADERS: usize = 32;

/// How long a browser may cache a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE: u32 = 600;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Too few bytes to tell: read more.
    Unknown,
    /// A `POST`, an `OPTIONS` or a `GET /source...` request: [`parse_request`] it.
    Http,
    /// Anything else: the WebSocket upgrade's parser judges it.
    Other,
}

/// Whether `buf`, the bytes received so far, begin a `POST`, an `OPTIONS` or a
/// `GET /source...` request.
pub fn classify(buf: &[u8]) -> Kind {
    let mut unknown = false;
    for method in [&b"POST "[..], b"OPTIONS ", b"GET /source"] {
        let n = buf.len().min(method.len());
        if buf[..n] == method[..n] {
            if n == method.len() {
                return Kind::Http;
            }
            unknown = true;
        }
    }
    if unknown || buf.is_empty() {
        Kind::Unknown
    } else {
        Kind::Other
    }
}

/// The request's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `POST`: set the cookie.
    Post,
    /// `OPTIONS`: a CORS preflight.
    Options,
    /// `GET`: one of the browser source's static files ([`respond_get`]).
    Get,
}

/// A request read whole (or as far as its head, when the head already says it is refused).
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// The path (without the query).
    pub path: String,
    /// `Origin`, when sent (browsers do).
    pub origin: Option<String>,
    /// `Host`, when sent once: a page from `https://<Host>` is the relay's own origin
    /// ([`same_origin`]).
    pub host: Option<String>,
    /// The body (empty when `problem` is set).
    pub body: Vec<u8>,
    /// A refusal the head already decides (the body was not read).
    pub problem: Option<HeadProblem>,
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body holds the token.
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("origin", &self.origin)
            .field("host", &self.host)
            .field("body", &self.body.len())
            .field("problem", &self.problem)
            .finish()
    }
}

/// A refusal decided by the request's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadProblem {
    /// `Content-Length` over [`MAX_BODY`] (413).
    BodyTooLarge,
    /// No `Content-Length`, a chunked body, or a bad length (411).
    Length,
    /// A header repeated or not UTF-8 (400).
    Header(&'static str),
}

/// What [`parse_request`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Read more.
    Incomplete,
    /// The request, in the first `len` bytes.
    Complete {
        /// The request.
        request: HttpRequest,
        /// Its length (head and body).
        len: usize,
    },
}

/// A request that cannot be read: answer with [`HttpError::response`] and close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Not HTTP/1.1.
    #[error("not an HTTP/1.1 request: {0}")]
    NotHttp(&'static str),
    /// A head longer than [`MAX_REQUEST_LEN`](crate::ws::MAX_REQUEST_LEN) or with too many headers.
    #[error("the request's head is too large")]
    TooLarge,
}

impl From<HeadError> for HttpError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge => HttpError::TooLarge,
            HeadError::Syntax(_) => HttpError::NotHttp("bad syntax"),
        }
    }
}

impl HttpError {
    /// The status: 431 for size, else 400.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::TooLarge => 431,
            HttpError::NotHttp(_) => 400,
        }
    }

    /// The answer (no CORS headers: the request's origin is not known).
    pub fn response(&self) -> Vec<u8> {
        let reason = match self {
            HttpError::TooLarge => "request too large",
            HttpError::NotHttp(_) => "not an HTTP/1.1 request",
        };
        Answer::error(self.status(), reason, None).bytes
    }
}

/// Reads the `POST` or `OPTIONS` request at the front of `buf` (see [`classify`]). Call it
/// after each read until it is `Complete` or an error.
pub fn parse_request(buf: &[u8]) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Some(head) = parse_head(buf, |w| request.parse(w))? else {
        return Ok(Parsed::Incomplete);
    };
    if request.version != Some(1) {
        return Err(HttpError::NotHttp("the version must be HTTP/1.1"));
    }
    let method = match request.method {
        Some("POST") => Method::Post,
        Some("OPTIONS") => Method::Options,
        Some("GET") => Method::Get,
        _ => {
            return Err(HttpError::NotHttp(
                "the method must be POST, OPTIONS or GET",
            ));
        }
    };
    let target = request.path.unwrap_or_default();
    let path = target.split_once('?').map_or(target, |(p, _)| p).to_owned();
    let values = |name: &str| -> Vec<Result<&str, ()>> {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).map(str::trim).map_err(|_| ()))
            .collect()
    };
    let mut req = HttpRequest {
        method,
        path,
        origin: None,
        host: None,
        body: Vec::new(),
        problem: None,
    };
    if let [Ok(h)] = values("host")[..] {
        req.host = Some(h.to_owned());
    }
    match values("origin")[..] {
        [] => {}
        [Ok(o)] => req.origin = Some(o.to_owned()),
        _ => {
            req.problem = Some(HeadProblem::Header("Origin"));
            return Ok(Parsed::Complete {
                request: req,
                len: head,
            });
        }
    }
    if !values("transfer-encoding").is_empty() {
        req.problem = Some(HeadProblem::Length);
        return Ok(Parsed::Complete {
            request: req,
            len: head,
        });
    }
    let length = match values("content-length")[..] {
        [] => 0,
        [Ok(n)] if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            n.parse::<usize>().unwrap_or(usize::MAX)
        }
        _ => {
            req.problem = Some(HeadProblem::Length);
            return Ok(Parsed::Complete {
                request: req,
                len: head,
            });
        }
    };
    if length > MAX_BODY {
        req.problem = Some(HeadProblem::BodyTooLarge);
        return Ok(Parsed::Complete {
            request: req,
            len: head,
        });
    }
    if method == Method::Post && values("content-length").is_empty() {
        req.problem = Some(HeadProblem::Length);
        return Ok(Parsed::Complete {
            request: req,
            len: head,
        });
    }
    if buf.len() < head + length {
        return Ok(Parsed::Incomplete);
    }
    req.body = buf[head..head + length].to_vec();
    Ok(Parsed::Complete {
        request: req,
        len: head + length,
    })
}

/// The registry's answer about a token, for [`respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// An open tunnel's token, not used yet: the cookie may live this many seconds more.
    Valid {
        /// Seconds until the tunnel's end (0: it ends now, refused as expired).
        seconds_left: u64,
    },
    /// No tunnel has this token.
    Unknown,
    /// The token was used already (the upgrade that follows the cookie would be refused).
    Used,
    /// The tunnel is closed or its lifetime is over.
    Closed,
    /// The registry cannot answer now (503).
    Unavailable,
}

/// The whole answer to a request, and what to log about it.
#[derive(Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// A short reason, without the token: for the log and the JSON error.
    pub reason: &'static str,
    /// The response's bytes.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A 200's bytes hold the token in its Set-Cookie.
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl Answer {
    fn new(status: u16, reason: &'static str, cors: Option<&str>, extra: &str, body: &str) -> Self {
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nConnection: close\r\nCache-Control: no-store\r\nVary: Origin\r\n",
            phrase(status)
        );
        if let Some(origin) = cors {
            head.push_str(&format!(
                "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\n"
            ));
        }
        head.push_str(extra);
        if body.is_empty() {
            head.push_str("Content-Length: 0\r\n\r\n");
        } else {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        Answer {
            status,
            reason,
            bytes: head.into_bytes(),
        }
    }

    fn error(status: u16, reason: &'static str, cors: Option<&str>) -> Self {
        // `reason` is one of this module's fixed texts: no quote or backslash to escape.
        Answer::new(
            status,
            reason,
            cors,
            "",
            &format!("{{\"error\":\"{reason}\"}}\n"),
        )
    }
}

fn phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Whether `origin` is the relay's own: `https://` and the request's `Host` (the browser
/// source page that this port serves, [`SOURCE_PATH`]). Another site's page sends its own
/// origin, never the relay's, so this admits no cross-site request.
pub fn same_origin(origin: &str, host: Option<&str>) -> bool {
    host.is_some_and(|h| origin.strip_prefix("https://") == Some(h))
}

/// Whether `origin` is one of `allowed`, exactly (scheme, host and port as the browser sends
/// them; `*` is not a wildcard: credentials need an exact origin).
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| a == origin)
}

/// Whether a cookie value can carry `token` unquoted (RFC 6265 `cookie-octet`s).
fn cookie_safe(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

/// The token of a body `{"token": "..."}` (no other member).
fn body_token(body: &[u8]) -> Option<AccessToken> {
    let serde_json::Value::Object(members) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    if members.len() != 1 {
        return None;
    }
    AccessToken::new(members.get("token")?.as_str()?).ok()
}

/// The answer to `request`. `allowed` are the origins CORS admits; `check` asks the registry
/// about the token (and must not mark it used: the upgrade that follows does).
///
/// A request without `Origin` (not a browser: curl, a script) is served without CORS
/// headers; one from an origin not in `allowed` is refused with 403 and no CORS headers, so
/// no other site's page can plant a cookie.
pub fn respond(
    request: &HttpRequest,
    allowed: &[String],
    check: impl FnOnce(&AccessToken) -> TokenCheck,
) -> Answer {
    let cors = match &request.origin {
        None => None,
        Some(o) if origin_allowed(o, allowed) || same_origin(o, request.host.as_deref()) => {
            Some(o.as_str())
        }
        Some(_) => return Answer::error(403, "origin not allowed", None),
    };
    if request.method == Method::Get {
        return Answer::error(405, "GET is for the browser source's files only", cors);
    }
    if request.path != PATH {
        // As the upgrade's parser answers a method other than GET.
        return Answer::error(
            400,
            "only GET /tunnel (WebSocket) and POST /cookie here",
            cors,
        );
    }
    match request.problem {
        Some(HeadProblem::BodyTooLarge) => return Answer::error(413, "body too large", cors),
        Some(HeadProblem::Length) => return Answer::error(411, "content-length required", cors),
        Some(HeadProblem::Header(_)) => return Answer::error(400, "bad header", cors),
        None => {}
    }
    if request.method == Method::Options {
        return Answer::new(
            204,
            "preflight",
            cors,
            &format!(
                "Access-Control-Allow-Methods: POST\r\nAccess-Control-Allow-Headers: content-type\r\nAccess-Control-Max-Age: {PREFLIGHT_MAX_AGE}\r\n"
            ),
            "",
        );
    }
    let Some(token) = body_token(&request.body) else {
        return Answer::error(
            400,
            "the body must be a JSON object with one member, token",
            cors,
        );
    };
    if !cookie_safe(token.secret()) {
        return Answer::error(400, "the token cannot be carried in a cookie", cors);
    }
    let seconds = match check(&token) {
        TokenCheck::Valid { seconds_left } if seconds_left > 0 => seconds_left,
        TokenCheck::Valid { .. } | TokenCheck::Closed => {
            return Answer::error(410, "the tunnel is closed or expired", cors);
        }
        TokenCheck::Unknown => return Answer::error(403, "unknown token", cors),
        TokenCheck::Used => return Answer::error(403, "the token was used already", cors),
        TokenCheck::Unavailable => return Answer::error(503, "registry unavailable", cors),
    };
    Answer::new(
        200,
        "cookie set",
        cors,
        &format!(
            "Set-Cookie: {COOKIE}={}; Path=/tunnel; Max-Age={seconds}; Secure; HttpOnly; SameSite=None\r\n",
            token.secret()
        ),
        &format!("{{\"expiresIn\":{seconds}}}\n"),
    )
}

/// A static file for [`respond_get`].
#[derive(Debug, Clone, Copy)]
pub struct Asset<'a> {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'a [u8],
}

/// The policy of the browser source's files: scripts and styles from this origin only (the
/// terminal sets inline styles), connections to this origin only (its `/cookie` and
/// `wss://` `/tunnel`), no framing (no other page can overlay its terminal).
const SOURCE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The answer to a `GET` ([`Method::Get`]): `asset` (what the caller found at the request's
/// path) with a strict content security policy, or 404. Static files, no secrets: no
/// origin check, and the token the page uses travels in the URL's fragment, which no
/// request carries.
pub fn respond_get(request: &HttpRequest, asset: Option<Asset<'_>>) -> Answer {
    if request.problem.is_some() || !request.body.is_empty() {
        return Answer::error(400, "a GET takes no body", None);
    }
    let Some(asset) = asset else {
        return Answer::error(404, "no such file under /source", None);
    };
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nCache-Control: no-cache\r\n\
         Content-Type: {}\r\nContent-Length: {}\r\nX-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n\
         Content-Security-Policy: {SOURCE_CSP}\r\n\r\n",
        asset.content_type,
        asset.body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(asset.body);
    Answer {
        status: 200,
        reason: "browser source file",
        bytes,
    }
}

#[cfg(test)]
#[path = "cookie_tests.rs"]
mod tests;

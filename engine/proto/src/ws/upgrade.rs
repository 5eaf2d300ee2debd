//! The server side of the upgrade: reading an agent's request, writing the 101 or the error.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{Mode, Subprotocol};

/// The longest upgrade request taken (the AWS service's limit).
pub const MAX_REQUEST_LEN: usize = 4096;

/// The GUID RFC 6455 appends to the key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The cookie a browser brings the token in.
const TOKEN_COOKIE: &str = "awsiot-tunnel-token";

/// The most headers a request may have (localproxy sends 8 or 9; a browser about 15).
const MAX_HEADERS: usize = 32;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64 of the SHA-1 of the key and the GUID.
pub fn accept_key(key: &str) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key.as_bytes());
    context.update(GUID);
    BASE64.encode(context.finish().as_ref())
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// An access token empty, longer than 4096 bytes, or with a control character or a space.
    #[error("an access token must be 1 to 4096 visible characters")]
    Access,
    /// A client token not of 32 to 128 of `[A-Za-z0-9-]`.
    #[error("a client token must be 32 to 128 of A-Z, a-z, 0-9 and '-'")]
    Client,
}

/// A tunnel access token. Its `Debug` says `<redacted>`; [`secret`](AccessToken::secret) gives
/// the value to whoever checks it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// Checks and wraps a token: 1 to 4096 bytes of visible ASCII (what fits in a header and a
    /// cookie; localproxy refuses control characters).
    pub fn new(token: impl Into<String>) -> Result<AccessToken, TokenError> {
        let token = token.into();
        if token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Access);
        }
        Ok(AccessToken(token))
    }

    /// The token itself: only for comparing (in constant time) or hashing, never for a log.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// A client token (the `client-token` header) that binds reconnects to the first connection.
/// Redacted in `Debug` like the access token, since with it the access token can be reused.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientToken(String);

impl ClientToken {
    /// Checks and wraps a client token: `^[a-zA-Z0-9-]{32,128}$`.
    pub fn new(token: impl Into<String>) -> Result<ClientToken, TokenError> {
        let token = token.into();
        if !ClientToken::is_valid(&token) {
            return Err(TokenError::Client);
        }
        Ok(ClientToken(token))
    }

    /// Whether `token` is a client token by the pattern of reference §2,
    /// `^[a-zA-Z0-9-]{32,128}$` (for callers that check one without keeping it).
    pub fn is_valid(token: &str) -> bool {
        (32..=128).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }

    /// The token itself: only for comparing or hashing, never for a log.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientToken(<redacted>)")
    }
}

/// Where the access token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The `access-token` header (localproxy, the SDKs).
    Header,
    /// The `awsiot-tunnel-token` cookie (browsers).
    Cookie,
}

/// A checked upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `local-proxy-mode`.
    pub mode: Mode,
    /// The access token; `None` when the request carried none, which only a peer that
    /// presented a client certificate may do (the relay answers [`UpgradeError::NoToken`] to
    /// the others).
    pub access_token: Option<AccessToken>,
    /// Header or cookie (`Header` when there is no token).
    pub token_source: TokenSource,
    /// The services a destination announced in the [`super::SERVICES_HEADER`] header (for a
    /// tunnel paired by certificate), in order; empty when it sent none.
    pub services: Vec<String>,
    /// The client token, if one was sent.
    pub client_token: Option<ClientToken>,
    /// The highest subprotocol offered that we speak: the one the 101 names.
    pub protocol: Subprotocol,
    /// `Host` (localproxy sends the host without its port).
    pub host: String,
    /// `User-Agent`, if sent.
    pub user_agent: Option<String>,
    /// `Origin`, if sent (browsers do): for the relay to check against the origins it allows.
    pub origin: Option<String>,
    /// `Sec-WebSocket-Key`.
    key: String,
}

impl UpgradeRequest {
    /// The 101 response: the accept key, the chosen subprotocol (always: localproxy reconnects
    /// in a tight loop without one) and `channel-id`, the connection's id for logs.
    pub fn accept_response(&self, channel_id: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\
             Sec-WebSocket-Protocol: {}\r\n\
             channel-id: {}\r\n\r\n",
            accept_key(&self.key),
            self.protocol.as_str(),
            header_safe(channel_id),
        )
        .into_bytes()
    }
}

/// What [`parse_request`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedRequest {
    /// The bytes so far are the start of a request; read more (up to [`MAX_REQUEST_LEN`]).
    Incomplete,
    /// A whole request, checked: its first `len` bytes. The rest, if any, are WebSocket frames.
    Complete {
        /// The request.
        request: UpgradeRequest,
        /// Its length.
        len: usize,
    },
}

/// Why an upgrade request is refused. [`status`](UpgradeError::status) is the HTTP status to
/// answer with: all are 4xx (retrying the same request cannot help). The texts never carry a
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Not an HTTP/1.1 request: garbage, TLS where plain HTTP was expected, or bad syntax.
    #[error("not an HTTP/1.1 request: {0}")]
    NotHttp(&'static str),
    /// More than [`MAX_REQUEST_LEN`] bytes, or too many headers.
    #[error(
        "the request is longer than {MAX_REQUEST_LEN} bytes or has more than {MAX_HEADERS} headers"
    )]
    TooLarge,
    /// A method other than GET.
    #[error("only GET upgrades")]
    Method,
    /// A path other than `/tunnel`.
    #[error("the path must be /tunnel")]
    Path,
    /// The query is not exactly `local-proxy-mode=source` or `=destination`.
    #[error("the query must be local-proxy-mode=source or local-proxy-mode=destination")]
    Query,
    /// A missing or duplicated header, or one with a bad value.
    #[error("header {0}: missing, repeated or invalid")]
    Header(&'static str),
    /// Not a WebSocket upgrade (`Upgrade: websocket`, `Connection: upgrade`).
    #[error("not a WebSocket upgrade")]
    NotUpgrade,
    /// A `Sec-WebSocket-Version` other than 13.
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    /// No subprotocol we speak was offered.
    #[error("Sec-WebSocket-Protocol must offer aws.iot.securetunneling-3.0, -2.0 or -1.0")]
    Subprotocol,
    /// No access token (and no client certificate to pair by: the parser accepts a request
    /// without a token, the relay answers this).
    #[error("no access token (access-token header or awsiot-tunnel-token cookie)")]
    NoToken,
    /// More than one access token (headers and cookies together).
    #[error("more than one access token")]
    TwoTokens,
    /// An access or client token of the wrong shape.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl UpgradeError {
    /// The HTTP status to answer with: 431 for size, 426 for the version (with
    /// `Sec-WebSocket-Version: 13`), 401 when no token came, 400 for the rest.
    pub fn status(&self) -> u16 {
        match self {
            UpgradeError::TooLarge => 431,
            UpgradeError::Version => 426,
            UpgradeError::NoToken => 401,
            _ => 400,
        }
    }

    /// The error response to send before closing the connection.
    pub fn response(&self, channel_id: Option<&str>) -> Vec<u8> {
        error_response(self.status(), &self.to_string(), channel_id)
    }
}

/// An error response: `status`, a plain-text body of `reason`, `channel-id` when given, and
/// `Connection: close`. For the registry's refusals too (403 for a wrong or used token, 503 for
/// transient trouble: localproxy retries a 5xx every 2.5 s and gives up on a 4xx). `reason`
/// must not hold a token.
pub fn error_response(status: u16, reason: &str, channel_id: Option<&str>) -> Vec<u8> {
    let body = format!("{}\n", header_safe(reason));
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    if status == 426 {
        head.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    if let Some(id) = channel_id {
        head.push_str(&format!("channel-id: {}\r\n", header_safe(id)));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    head.into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ if status >= 500 => "Server Error",
        _ => "Client Error",
    }
}

/// `text` without the bytes that would end a header line or the head.
pub(super) fn header_safe(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// Reads the upgrade request at the front of `buf`, the bytes received so far. Call it after
/// each read until it is `Complete` or an error; the error's [`UpgradeError::response`] is the
/// answer. Garbage is refused at the first byte that cannot begin `GET ` (a TLS ClientHello at
/// its first byte), a request longer than [`MAX_REQUEST_LEN`] as soon as that many bytes came
/// without its end.
pub fn parse_request(buf: &[u8]) -> Result<ParsedRequest, UpgradeError> {
    const GET: &[u8] = b"GET ";
    let prefix = buf.len().min(GET.len());
    if buf[..prefix] != GET[..prefix] {
        // An uppercase token first is a method; anything else is not HTTP.
        return Err(
            if buf[0].is_ascii_uppercase() && buf[..prefix].iter().all(u8::is_ascii_alphabetic) {
                UpgradeError::Method
            } else {
                UpgradeError::NotHttp("does not begin with a method")
            },
        );
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Some(len) = parse_head(buf, |w| request.parse(w))? else {
        return Ok(ParsedRequest::Incomplete);
    };
    if request.version != Some(1) {
        return Err(UpgradeError::NotHttp("the version must be HTTP/1.1"));
    }
    let (path, query) = request
        .path
        .unwrap_or_default()
        .split_once('?')
        .unwrap_or((request.path.unwrap_or_default(), ""));
    if path != "/tunnel" {
        return Err(UpgradeError::Path);
    }
    let mode = match query {
        "local-proxy-mode=source" => Mode::Source,
        "local-proxy-mode=destination" => Mode::Destination,
        _ => return Err(UpgradeError::Query),
    };
    let headers = Headers(request.headers);
    let host = headers.one("host", "Host")?.to_owned();
    if !headers.has_token("upgrade", "websocket") || !headers.has_token("connection", "upgrade") {
        return Err(UpgradeError::NotUpgrade);
    }
    match headers.all("sec-websocket-version").collect::<Vec<_>>()[..] {
        [Ok("13")] => {}
        _ => return Err(UpgradeError::Version),
    }
    let key = headers.one("sec-websocket-key", "Sec-WebSocket-Key")?;
    if BASE64.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(UpgradeError::Header("Sec-WebSocket-Key"));
    }
    let protocol = headers
        .all("sec-websocket-protocol")
        .filter_map(Result::ok)
        .flat_map(|v| v.split(','))
        .filter_map(|p| Subprotocol::from_token(p.trim()))
        .max()
        .ok_or(UpgradeError::Subprotocol)?;
    let (access_token, token_source) = match token(&headers) {
        Ok((token, source)) => (Some(token), source),
        Err(UpgradeError::NoToken) => (None, TokenSource::Header),
        Err(e) => return Err(e),
    };
    let services = match headers.all(super::SERVICES_HEADER).collect::<Vec<_>>()[..] {
        [] => Vec::new(),
        [Ok(list)] => {
            let services: Vec<String> = list
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            if services
                .iter()
                .any(|s| crate::tunnel::check_service_id(s).is_err())
            {
                return Err(UpgradeError::Header(super::SERVICES_HEADER));
            }
            services
        }
        _ => return Err(UpgradeError::Header(super::SERVICES_HEADER)),
    };
    let client_token = match headers.all("client-token").collect::<Vec<_>>()[..] {
        [] => None,
        [Ok(value)] => Some(ClientToken::new(value)?),
        [Err(())] => return Err(TokenError::Client.into()),
        _ => return Err(UpgradeError::Header("client-token")),
    };
    let user_agent = headers
        .all("user-agent")
        .find_map(Result::ok)
        .map(str::to_owned);
    let origin = match headers.all("origin").collect::<Vec<_>>()[..] {
        [] => None,
        [Ok(origin)] => Some(origin.to_owned()),
        _ => return Err(UpgradeError::Header("Origin")),
    };
    Ok(ParsedRequest::Complete {
        request: UpgradeRequest {
            mode,
            access_token,
            token_source,
            services,
            client_token,
            protocol,
            host,
            user_agent,
            origin,
            key: key.to_owned(),
        },
        len,
    })
}

/// The one access token of a request, from the header or the cookie.
fn token(headers: &Headers<'_, '_>) -> Result<(AccessToken, TokenSource), UpgradeError> {
    let mut found = Vec::new();
    for value in headers.all("access-token") {
        found.push((value.map_err(|()| TokenError::Access)?, TokenSource::Header));
    }
    for cookies in headers.all("cookie") {
        let cookies = cookies.map_err(|()| UpgradeError::Header("Cookie"))?;
        for cookie in cookies.split(';') {
            if let Some((name, value)) = cookie.split_once('=')
                && name.trim() == TOKEN_COOKIE
            {
                // RFC 6265 allows a quoted cookie value.
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                found.push((value, TokenSource::Cookie));
            }
        }
    }
    match found[..] {
        [] => Err(UpgradeError::NoToken),
        [(value, source)] => Ok((AccessToken::new(value)?, source)),
        _ => Err(UpgradeError::TwoTokens),
    }
}

/// Why [`parse_head`] refused a head.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// No end within [`MAX_REQUEST_LEN`] bytes, or more headers than the caller has room for.
    TooLarge,
    /// Not HTTP: httparse's reason.
    Syntax(httparse::Error),
}

/// Runs `parse` (an httparse request's or response's `parse`) on at most the first
/// [`MAX_REQUEST_LEN`] bytes of `buf`: `Ok(Some(len))` for a complete head of `len` bytes,
/// `Ok(None)` while it may still end within the limit, an error once it cannot.
pub(crate) fn parse_head<'b>(
    buf: &'b [u8],
    parse: impl FnOnce(&'b [u8]) -> httparse::Result<usize>,
) -> Result<Option<usize>, HeadError> {
    let window = &buf[..buf.len().min(MAX_REQUEST_LEN)];
    match parse(window) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if window.len() < MAX_REQUEST_LEN => Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            Err(HeadError::TooLarge)
        }
        Err(e) => Err(HeadError::Syntax(e)),
    }
}

impl From<HeadError> for UpgradeError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge => UpgradeError::TooLarge,
            HeadError::Syntax(e) => UpgradeError::NotHttp(httparse_error(e)),
        }
    }
}

fn httparse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method or path",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// The headers of a request or a response, looked up by name.
pub(super) struct Headers<'h, 'b>(pub(super) &'h [httparse::Header<'b>]);

impl<'b> Headers<'_, 'b> {
    /// Every value of the header `name` (lowercase), trimmed; `Err` for one that is not UTF-8.
    pub(super) fn all<'s>(
        &'s self,
        name: &'s str,
    ) -> impl Iterator<Item = Result<&'b str, ()>> + 's {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).map(str::trim).map_err(|_| ()))
    }

    /// The one value of the header `name`; `shown` names it in the error.
    pub(super) fn one(&self, name: &str, shown: &'static str) -> Result<&'b str, UpgradeError> {
        match self.all(name).collect::<Vec<_>>()[..] {
            [Ok(value)] if !value.is_empty() => Ok(value),
            _ => Err(UpgradeError::Header(shown)),
        }
    }

    /// Whether a comma-separated header `name` lists `token` (case-insensitive).
    pub(super) fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .filter_map(Result::ok)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

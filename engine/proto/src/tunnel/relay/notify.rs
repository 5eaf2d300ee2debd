//! The standby channel (issue 12 §2, "fleets"), sans-IO: a destination agent in standby keeps
//! one WebSocket to the relay's agent port, `GET /notify?thing=NAME` with the subprotocol
//! [`SUBPROTOCOL`], over TLS with the device's client certificate, and the relay pushes a
//! [`Notice`] (one binary message of JSON, the fields of AWS's MQTT notify message plus the
//! tunnel id) for each tunnel opened for that thing. The agent sends no message; pings keep
//! the channel alive both ways.
//!
//! - Relay: [`classify`] tells a standby request from the tunnel's upgrade at the first
//!   bytes; [`parse_request`] reads and checks it; [`StandbyRequest::accept_response`] writes
//!   the 101; [`may_speak_for`] says whether the client certificate may speak for the thing.
//! - Agent: [`ClientRequest::encode`] writes the request; [`parse_response`] checks the 101;
//!   [`Notice::from_json`] reads a message.
//!
//! What it does not do: I/O, TLS, the certificate's verification (the relay's TLS config does
//! it against `--device-ca`), the registry, the clock. No error text and no `Debug` output
//! carries a token.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::ws::{HeadError, accept_key, parse_head};

/// The path of the standby upgrade.
pub const PATH: &str = "/notify";

/// The standby channel's WebSocket subprotocol: offered by the agent, echoed in the 101.
pub const SUBPROTOCOL: &str = "splice.notify.v1";

/// The URI SAN prefix by which a certificate names the thing it speaks for.
pub const THING_URI_PREFIX: &str = "urn:splice:thing:";

/// The longest thing name (AWS IoT's limit).
pub const MAX_THING_NAME: usize = 128;

/// The most headers taken.
const MAX_HEADERS: usize = 32;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Too few bytes to tell: read more.
    Unknown,
    /// A `GET /notify`: [`parse_request`] it.
    Standby,
    /// Anything else.
    Other,
}

/// Whether `buf`, the bytes received so far, begin a standby request (`GET /notify` followed
/// by `?`, a space or nothing else).
pub fn classify(buf: &[u8]) -> Kind {
    const START: &[u8] = b"GET /notify";
    let n = buf.len().min(START.len());
    if buf[..n] != START[..n] {
        return Kind::Other;
    }
    match buf.get(START.len()) {
        None => Kind::Unknown,
        Some(b'?' | b' ') => Kind::Standby,
        Some(_) => Kind::Other,
    }
}

/// Whether `name` is a thing name: 1 to [`MAX_THING_NAME`] characters of `[a-zA-Z0-9:_-]`
/// (AWS IoT's rule).
pub fn check_thing_name(name: &str) -> Result<(), StandbyError> {
    if name.is_empty()
        || name.len() > MAX_THING_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
    {
        return Err(StandbyError::ThingName);
    }
    Ok(())
}

/// Whether a client certificate with subject common name `cn` and URI SANs `uri_sans` may
/// speak for `thing`: the common name is the thing name, or a URI SAN is
/// `urn:splice:thing:<thing>`.
pub fn may_speak_for<'a>(
    thing: &str,
    cn: Option<&str>,
    uri_sans: impl IntoIterator<Item = &'a str>,
) -> bool {
    cn == Some(thing)
        || uri_sans
            .into_iter()
            .any(|u| u.strip_prefix(THING_URI_PREFIX) == Some(thing))
}

/// A checked standby request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyRequest {
    /// The thing the agent waits for.
    pub thing: String,
    /// `User-Agent`, if sent.
    pub user_agent: Option<String>,
    /// `Sec-WebSocket-Key`.
    key: String,
}

impl StandbyRequest {
    /// The 101 response: the accept key and [`SUBPROTOCOL`].
    pub fn accept_response(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\
             Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n",
            accept_key(&self.key),
        )
        .into_bytes()
    }
}

/// What [`parse_request`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Read more.
    Incomplete,
    /// The request, in the first `len` bytes.
    Complete {
        /// The request.
        request: StandbyRequest,
        /// Its length.
        len: usize,
    },
}

/// Why a standby request is refused, or why the relay's answer is not a usable 101. The
/// status ([`StandbyError::status`]) is the HTTP status the relay answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StandbyError {
    /// Not HTTP/1.1.
    #[error("not an HTTP/1.1 request: {0}")]
    NotHttp(&'static str),
    /// More than [`MAX_REQUEST_LEN`](crate::ws::MAX_REQUEST_LEN) bytes, or too many headers.
    #[error("the request is too large")]
    TooLarge,
    /// The query is not exactly `thing=NAME`.
    #[error("the query must be thing=NAME")]
    Query,
    /// The thing name breaks [`check_thing_name`].
    #[error("a thing name is 1 to 128 characters of [a-zA-Z0-9:_-]")]
    ThingName,
    /// Not a WebSocket upgrade, or a version other than 13, or a bad key.
    #[error("not a WebSocket version 13 upgrade with a Sec-WebSocket-Key")]
    NotUpgrade,
    /// [`SUBPROTOCOL`] was not offered.
    #[error("Sec-WebSocket-Protocol must offer splice.notify.v1")]
    Subprotocol,
    /// The relay's answer: a status other than 101.
    #[error("the relay answered {0}")]
    Rejected(u16),
    /// The relay's 101 does not check out (accept key, subprotocol).
    #[error("the relay's 101 does not answer the standby request")]
    BadResponse,
}

impl From<HeadError> for StandbyError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge => StandbyError::TooLarge,
            HeadError::Syntax(_) => StandbyError::NotHttp("bad syntax"),
        }
    }
}

impl StandbyError {
    /// The HTTP status to answer with: 431 for size, 426 for a non-upgrade, 400 for the rest.
    pub fn status(&self) -> u16 {
        match self {
            StandbyError::TooLarge => 431,
            StandbyError::NotUpgrade => 426,
            StandbyError::Rejected(s) => *s,
            _ => 400,
        }
    }

    /// The error response to send before closing the connection.
    pub fn response(&self) -> Vec<u8> {
        crate::ws::error_response(self.status(), &self.to_string(), None)
    }
}

/// Every value of header `name` (lowercase), trimmed; values that are not UTF-8 are left out.
fn values<'b>(headers: &[httparse::Header<'b>], name: &str) -> Vec<&'b str> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
        .collect()
}

fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    values(headers, name)
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Reads the standby request at the front of `buf` (call after each read until it is
/// `Complete` or an error).
pub fn parse_request(buf: &[u8]) -> Result<Parsed, StandbyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Some(len) = parse_head(buf, |w| request.parse(w))? else {
        return Ok(Parsed::Incomplete);
    };
    if request.version != Some(1) {
        return Err(StandbyError::NotHttp("the version must be HTTP/1.1"));
    }
    let path = request.path.unwrap_or_default();
    let thing = path
        .strip_prefix(PATH)
        .and_then(|q| q.strip_prefix("?thing="))
        .ok_or(StandbyError::Query)?;
    check_thing_name(thing)?;
    let headers = request.headers;
    let key = match values(headers, "sec-websocket-key")[..] {
        [k] if BASE64.decode(k).map(|k| k.len()) == Ok(16) => k.to_string(),
        _ => return Err(StandbyError::NotUpgrade),
    };
    if !has_token(headers, "upgrade", "websocket")
        || !has_token(headers, "connection", "upgrade")
        || values(headers, "sec-websocket-version")[..] != ["13"]
    {
        return Err(StandbyError::NotUpgrade);
    }
    if !has_token(headers, "sec-websocket-protocol", SUBPROTOCOL) {
        return Err(StandbyError::Subprotocol);
    }
    let user_agent = values(headers, "user-agent").first().map(|s| s.to_string());
    Ok(Parsed::Complete {
        request: StandbyRequest {
            thing: thing.to_string(),
            user_agent,
            key,
        },
        len,
    })
}

/// The request a standby agent sends.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    /// `Host`: the relay's host name.
    pub host: &'a str,
    /// The thing (checked with [`check_thing_name`] by the caller).
    pub thing: &'a str,
    /// 16 random bytes (`Sec-WebSocket-Key`).
    pub key: [u8; 16],
    /// `User-Agent`.
    pub user_agent: &'a str,
}

fn header_safe(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

impl ClientRequest<'_> {
    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "GET {PATH}?thing={} HTTP/1.1\r\n\
             Host: {}\r\n\
             Upgrade: websocket\r\n\
             Connection: upgrade\r\n\
             Sec-WebSocket-Key: {}\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\
             User-Agent: {}\r\n\r\n",
            header_safe(self.thing).replace([' ', '?', '#', '&'], ""),
            header_safe(self.host),
            BASE64.encode(self.key),
            header_safe(self.user_agent),
        )
        .into_bytes()
    }
}

/// Checks the relay's answer to a standby request sent with `key`: `Ok(Some(len))` for a 101
/// that checks out (its first `len` bytes; messages follow), `Ok(None)` to read more.
pub fn parse_response(buf: &[u8], key: &[u8; 16]) -> Result<Option<usize>, StandbyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let Some(len) = parse_head(buf, |w| response.parse(w))? else {
        return Ok(None);
    };
    let status = response.code.unwrap_or_default();
    if status != 101 {
        return Err(StandbyError::Rejected(status));
    }
    let headers = response.headers;
    let expected = accept_key(&BASE64.encode(key));
    if values(headers, "sec-websocket-accept")[..] != [expected.as_str()]
        || values(headers, "sec-websocket-protocol")[..] != [SUBPROTOCOL]
        || !has_token(headers, "upgrade", "websocket")
    {
        return Err(StandbyError::BadResponse);
    }
    Ok(Some(len))
}

/// One tunnel pushed to a thing's standby agents: AWS's notify message
/// (`clientAccessToken`, `clientMode`, `region`, `services`) and the tunnel's id.
#[derive(Clone, PartialEq, Eq)]
pub struct Notice {
    /// The tunnel.
    pub tunnel_id: String,
    /// The destination's access token (a secret: never logged).
    pub client_access_token: String,
    /// Always `destination`.
    pub client_mode: String,
    /// Where AWS names its region: the relay's name.
    pub region: String,
    /// The tunnel's services.
    pub services: Vec<String>,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notice")
            .field("tunnel_id", &self.tunnel_id)
            .field("client_access_token", &"<redacted>")
            .field("client_mode", &self.client_mode)
            .field("region", &self.region)
            .field("services", &self.services)
            .finish()
    }
}

/// Why a message is not a [`Notice`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a standby notice: {0}")]
pub struct NoticeError(pub &'static str);

impl Notice {
    /// The message's bytes (JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::json!({
            "tunnelId": self.tunnel_id,
            "clientAccessToken": self.client_access_token,
            "clientMode": self.client_mode,
            "region": self.region,
            "services": self.services,
        })
        .to_string()
        .into_bytes()
    }

    /// Reads a message: a JSON object with the fields of [`Notice::to_json`] (others are
    /// ignored, for later additions); `clientMode` must be `destination`.
    pub fn from_json(bytes: &[u8]) -> Result<Notice, NoticeError> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|_| NoticeError("not JSON"))?;
        let text = |k: &'static str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
                .ok_or(NoticeError(k))
        };
        let services = v
            .get("services")
            .and_then(serde_json::Value::as_array)
            .ok_or(NoticeError("services"))?
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or(NoticeError("services"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let notice = Notice {
            tunnel_id: text("tunnelId")?,
            client_access_token: text("clientAccessToken")?,
            client_mode: text("clientMode")?,
            region: text("region").unwrap_or_default(),
            services,
        };
        if notice.client_mode != "destination" {
            return Err(NoticeError("clientMode must be destination"));
        }
        Ok(notice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(thing: &str) -> Vec<u8> {
        ClientRequest {
            host: "relay",
            thing,
            key: [7; 16],
            user_agent: "t",
        }
        .encode()
    }

    #[test]
    fn classify_by_first_bytes() {
        assert_eq!(classify(b""), Kind::Unknown);
        assert_eq!(classify(b"GET /no"), Kind::Unknown);
        assert_eq!(classify(b"GET /notify"), Kind::Unknown);
        assert_eq!(classify(b"GET /notify?thing=a"), Kind::Standby);
        assert_eq!(classify(b"GET /notifyx"), Kind::Other);
        assert_eq!(classify(b"GET /tunnel?"), Kind::Other);
        assert_eq!(classify(b"POST /cookie"), Kind::Other);
    }

    #[test]
    fn request_round_trip_and_101() {
        let bytes = request("pump-7");
        for cut in 0..bytes.len() {
            assert_eq!(parse_request(&bytes[..cut]), Ok(Parsed::Incomplete));
        }
        let Ok(Parsed::Complete { request, len }) = parse_request(&bytes) else {
            panic!("a whole request")
        };
        assert_eq!((request.thing.as_str(), len), ("pump-7", bytes.len()));
        let answer = request.accept_response();
        assert_eq!(parse_response(&answer, &[7; 16]), Ok(Some(answer.len())));
        assert_eq!(
            parse_response(&answer, &[8; 16]),
            Err(StandbyError::BadResponse)
        );
        let refused = StandbyError::Query.response();
        assert_eq!(
            parse_response(&refused, &[7; 16]),
            Err(StandbyError::Rejected(400))
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let ok = String::from_utf8(request("pump")).unwrap();
        let cases = [
            (
                ok.replace("?thing=pump", "?thing="),
                StandbyError::ThingName,
            ),
            (
                ok.replace("?thing=pump", "?thing=a%20b"),
                StandbyError::ThingName,
            ),
            (ok.replace("?thing=pump", "?name=pump"), StandbyError::Query),
            (ok.replace("?thing=pump", ""), StandbyError::Query),
            (
                ok.replace("splice.notify.v1", "aws.iot.securetunneling-3.0"),
                StandbyError::Subprotocol,
            ),
            (
                ok.replace("Version: 13", "Version: 8"),
                StandbyError::NotUpgrade,
            ),
            (
                ok.replace("Upgrade: websocket\r\n", ""),
                StandbyError::NotUpgrade,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_request(text.as_bytes()), Err(want.clone()), "{text}");
            assert!((400..500).contains(&want.status()));
        }
        let long = format!("GET /notify?thing={} HTTP/1.1\r\n\r\n", "a".repeat(129));
        assert_eq!(parse_request(long.as_bytes()), Err(StandbyError::ThingName));
    }

    #[test]
    fn who_may_speak_for_a_thing() {
        assert!(may_speak_for("pump", Some("pump"), []));
        assert!(may_speak_for("pump", None, ["urn:splice:thing:pump"]));
        assert!(!may_speak_for(
            "pump",
            Some("pump-2"),
            ["urn:splice:thing:pumpx"]
        ));
        assert!(!may_speak_for("pump", None, ["spiffe://x/pump"]));
    }

    #[test]
    fn notice_round_trip_hides_the_token() {
        let n = Notice {
            tunnel_id: "t-1".into(),
            client_access_token: "secret-token".into(),
            client_mode: "destination".into(),
            region: "relay".into(),
            services: vec!["ssh".into(), "web".into()],
        };
        assert_eq!(Notice::from_json(&n.to_json()), Ok(n.clone()));
        assert!(!format!("{n:?}").contains("secret-token"));
        assert!(Notice::from_json(b"{}").is_err());
        assert!(Notice::from_json(b"not json").is_err());
        let source = String::from_utf8(n.to_json())
            .unwrap()
            .replace("destination", "source");
        assert!(Notice::from_json(source.as_bytes()).is_err());
    }
}

//! The client side of the upgrade: the request an agent sends and the check of the relay's 101.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::upgrade::{HeadError, Headers, accept_key, header_safe, parse_head};
use super::{AccessToken, ClientToken, MAX_REQUEST_LEN, Mode, Subprotocol};

/// The upgrade request an agent sends, in localproxy v3.3.1's header order.
#[derive(Debug, Clone)]
pub struct ClientRequest<'a> {
    /// `Host`: the relay's host name, without the port (as localproxy sends it).
    pub host: &'a str,
    /// `local-proxy-mode`.
    pub mode: Mode,
    /// Sent in the `access-token` header; `None` for an agent paired by its client
    /// certificate, which has no token.
    pub access_token: Option<&'a AccessToken>,
    /// Sent in the `client-token` header when given.
    pub client_token: Option<&'a ClientToken>,
    /// The subprotocols offered, in order of preference ([`Subprotocol::ALL`]: V3, V2, V1).
    pub protocols: &'a [Subprotocol],
    /// 16 random bytes, from the caller's random source (`Sec-WebSocket-Key`).
    pub key: [u8; 16],
    /// `User-Agent`.
    pub user_agent: &'a str,
    /// Sent in the [`SERVICES_HEADER`] header when not empty: the services a destination
    /// paired by certificate announces (the relay makes its tunnel with them).
    pub services: &'a [&'a str],
}

/// The header in which a destination paired by its client certificate announces its
/// services, comma-separated (not part of the AWS protocol; a relay that does not know it
/// ignores it).
pub const SERVICES_HEADER: &str = "splice-services";

impl ClientRequest<'_> {
    /// The request's bytes. Control characters in `host` and `user_agent` are left out, so
    /// neither can end a header line.
    pub fn encode(&self) -> Vec<u8> {
        let protocols: Vec<&str> = self.protocols.iter().map(|p| p.as_str()).collect();
        let mut head = format!(
            "GET /tunnel?local-proxy-mode={} HTTP/1.1\r\n\
             Host: {}\r\n\
             Upgrade: websocket\r\n\
             Connection: upgrade\r\n\
             Sec-WebSocket-Key: {}\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {}\r\n",
            self.mode.as_str(),
            header_safe(self.host),
            BASE64.encode(self.key),
            protocols.join(", "),
        );
        if let Some(token) = self.access_token {
            head.push_str(&format!("access-token: {}\r\n", token.secret()));
        }
        if !self.services.is_empty() {
            let services: Vec<String> = self.services.iter().map(|s| header_safe(s)).collect();
            head.push_str(&format!("{SERVICES_HEADER}: {}\r\n", services.join(",")));
        }
        if let Some(token) = self.client_token {
            head.push_str(&format!("client-token: {}\r\n", token.secret()));
        }
        head.push_str(&format!(
            "User-Agent: {}\r\n\r\n",
            header_safe(self.user_agent)
        ));
        head.into_bytes()
    }
}

/// What the relay's 101 agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The subprotocol the relay chose: the message format to speak.
    pub protocol: Subprotocol,
    /// The relay's `channel-id`, for logs.
    pub channel_id: Option<String>,
}

/// What [`parse_response`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedResponse {
    /// The bytes so far are the start of a response; read more.
    Incomplete,
    /// A 101 that checks out: its first `len` bytes; the rest are WebSocket frames.
    Complete {
        /// What it agreed.
        accepted: Accepted,
        /// Its length.
        len: usize,
    },
}

/// Why the relay's answer is not a usable 101.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// Not an HTTP/1.1 response.
    #[error("not an HTTP/1.1 response: {0}")]
    NotHttp(&'static str),
    /// A head longer than [`MAX_REQUEST_LEN`].
    #[error("a response head longer than {MAX_REQUEST_LEN} bytes")]
    TooLarge,
    /// The relay refused: a status other than 101.
    #[error("the relay answered {status}{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Rejected {
        /// The status.
        status: u16,
        /// Why, as the response's body says it (its first line, at most 400 characters,
        /// control characters dropped); empty when it has none.
        reason: String,
    },
    /// A 101 without `Upgrade: websocket` and `Connection: upgrade`.
    #[error("a 101 that is not a WebSocket upgrade")]
    NotUpgrade,
    /// A `Sec-WebSocket-Accept` missing or not the one our key asks for.
    #[error("Sec-WebSocket-Accept does not match the key")]
    Accept,
    /// No `Sec-WebSocket-Protocol`, several, or one we did not offer.
    #[error("the relay chose no subprotocol, several, or one not offered")]
    Subprotocol,
}

impl From<HeadError> for ResponseError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge => ResponseError::TooLarge,
            HeadError::Syntax(_) => ResponseError::NotHttp("bad syntax"),
        }
    }
}

impl ResponseError {
    /// Whether retrying later may help: a 5xx. Everything else is as final as a 4xx (the agent
    /// exits, as localproxy does, unless told to keep trying).
    pub fn is_transient(&self) -> bool {
        matches!(self, ResponseError::Rejected { status, .. } if (500..600).contains(status))
    }
}

/// The most characters of a refusal's reason that [`ResponseError::Rejected`] keeps.
const MAX_REASON: usize = 400;

/// Checks the relay's response at the front of `buf` against the request sent with `key` and
/// offering `offered`. Call it after each read until it is `Complete` or an error.
pub fn parse_response(
    buf: &[u8],
    key: &[u8; 16],
    offered: &[Subprotocol],
) -> Result<ParsedResponse, ResponseError> {
    const HTTP: &[u8] = b"HTTP/";
    let prefix = buf.len().min(HTTP.len());
    if buf[..prefix] != HTTP[..prefix] {
        return Err(ResponseError::NotHttp("does not begin with HTTP/"));
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let Some(len) = parse_head(buf, |w| response.parse(w))? else {
        return Ok(ParsedResponse::Incomplete);
    };
    if response.version != Some(1) {
        return Err(ResponseError::NotHttp("the version must be HTTP/1.1"));
    }
    let status = response.code.unwrap_or_default();
    if status != 101 {
        // Our relay says why in the body (text/plain), sent with the head: what is there.
        let reason = String::from_utf8_lossy(&buf[len..])
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON)
            .collect::<String>()
            .trim()
            .to_owned();
        return Err(ResponseError::Rejected { status, reason });
    }
    let headers = Headers(response.headers);
    if !headers.has_token("upgrade", "websocket") || !headers.has_token("connection", "upgrade") {
        return Err(ResponseError::NotUpgrade);
    }
    let expected = accept_key(&BASE64.encode(key));
    if headers.one("sec-websocket-accept", "Sec-WebSocket-Accept") != Ok(expected.as_str()) {
        return Err(ResponseError::Accept);
    }
    let protocol = headers
        .one("sec-websocket-protocol", "Sec-WebSocket-Protocol")
        .ok()
        .and_then(Subprotocol::from_token)
        .filter(|p| offered.contains(p))
        .ok_or(ResponseError::Subprotocol)?;
    let channel_id = headers
        .all("channel-id")
        .find_map(Result::ok)
        .map(str::to_owned);
    Ok(ParsedResponse::Complete {
        accepted: Accepted {
            protocol,
            channel_id,
        },
        len,
    })
}

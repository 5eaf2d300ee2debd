//! WebSocket (RFC 6455) and its HTTP/1.1 upgrade, as the AWS IoT Secure Tunneling protocol uses
//! them: the relay's side (server) and the agents' side (client).
//!
//! - [`parse_request`] reads an agent's upgrade request as its bytes arrive (at most
//!   [`MAX_REQUEST_LEN`] bytes, garbage refused at the first byte that cannot start one), checks
//!   it (`GET /tunnel?local-proxy-mode=source|destination`, exactly one access token, the
//!   optional client token, the key, the version, the subprotocols) and picks the highest
//!   subprotocol offered. [`UpgradeRequest::accept_response`] writes the 101;
//!   [`UpgradeError::response`] writes the 4xx that says why not.
//! - [`ClientRequest`] writes the request an agent sends (as the AWS local proxy does), and
//!   [`parse_response`] checks the relay's answer.
//! - [`Decoder`] reads frames from bytes as they arrive, unmasking in place: a whole unfragmented
//!   binary message is reported as a range of the caller's buffer (no copy); only fragmented
//!   messages are copied, into one buffer bounded by [`Limits::max_message`]. [`Encoder`] writes
//!   a frame header into the headroom in front of a payload and masks it in place.
//!
//! What it does not do: I/O, TLS, the clock (the caller supplies masking keys and
//! `Sec-WebSocket-Key`s from its random source), extensions (no `permessage-deflate`: the tunnel
//! negotiates none), text messages (the tunnel is binary; a text frame is an error) and the
//! tunnel frames carried inside the binary messages.
//!
//! Every error a peer can cause names the close code or HTTP status to answer it with:
//! [`ProtocolError::close_code`], [`UpgradeError::status`]. Tokens never appear in an error or in
//! a `Debug` output ([`AccessToken`], [`ClientToken`]).

mod client;
mod decoder;
mod frame;
#[cfg(test)]
mod tests;
mod upgrade;

pub use client::{
    Accepted, ClientRequest, ParsedResponse, ResponseError, SERVICES_HEADER, parse_response,
};
pub use decoder::{Close, Decoded, Decoder, Item, Limits, ProtocolError};
pub use frame::{
    EncodeError, Encoder, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode, apply_mask, close_payload,
    header_len,
};
pub use upgrade::{
    AccessToken, ClientToken, MAX_REQUEST_LEN, ParsedRequest, TokenError, TokenSource,
    UpgradeError, UpgradeRequest, accept_key, error_response, parse_request,
};
pub(crate) use upgrade::{HeadError, parse_head};

/// Which end of a WebSocket connection we are. A client masks what it sends and expects
/// unmasked frames; a server the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that sent the upgrade request (an agent).
    Client,
    /// The side that answered it (the relay).
    Server,
}

/// Close codes (RFC 6455 §7.4.1) that this module produces or names.
pub mod close_code {
    /// Normal closure: the tunnel was closed or expired.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke RFC 6455 (masking, reserved bits, opcodes, control frame rules, ...).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The peer sent a data type we do not take: a text frame, on the binary-only tunnel.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A close reason that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The peer broke the tunnel's rules (who may send what).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame or a message longer than the limits.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Our own failure.
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// The tunnel's WebSocket subprotocols, oldest first (so that `Ord` ranks them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subprotocol {
    /// `aws.iot.securetunneling-1.0`: one stream, no service ids.
    V1,
    /// `aws.iot.securetunneling-2.0`: several services, one connection each.
    V2,
    /// `aws.iot.securetunneling-3.0`: several connections per service.
    V3,
}

impl Subprotocol {
    /// Every version, in the order an agent offers them (newest first).
    pub const ALL: [Subprotocol; 3] = [Subprotocol::V3, Subprotocol::V2, Subprotocol::V1];

    /// The `Sec-WebSocket-Protocol` token.
    pub fn as_str(self) -> &'static str {
        match self {
            Subprotocol::V1 => "aws.iot.securetunneling-1.0",
            Subprotocol::V2 => "aws.iot.securetunneling-2.0",
            Subprotocol::V3 => "aws.iot.securetunneling-3.0",
        }
    }

    /// The version a `Sec-WebSocket-Protocol` token names (exact, case-sensitive as RFC 6455
    /// §4.1 makes subprotocol names), or `None` for one we do not speak.
    pub fn from_token(token: &str) -> Option<Subprotocol> {
        Subprotocol::ALL.into_iter().find(|p| p.as_str() == token)
    }
}

/// Which side of a tunnel an agent connects as (`local-proxy-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The side that listens locally and starts streams.
    Source,
    /// The side that connects to the local services.
    Destination,
}

impl Mode {
    /// The query parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Source => "source",
            Mode::Destination => "destination",
        }
    }
}

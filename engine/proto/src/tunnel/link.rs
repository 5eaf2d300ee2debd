//! One tunnel link, sans-IO: TLS (rustls, in user space) carrying an HTTP/1.1 WebSocket upgrade
//! and then WebSocket binary messages, in either role.
//!
//! - Server (the relay): [`Link::server`]; [`Link::poll`] gives [`Event::Request`] once the
//!   agent's upgrade request is whole (at most [`crate::ws::MAX_REQUEST_LEN`] bytes) or
//!   [`Event::BadRequest`]; answer with [`Link::accept`] (the 101) or [`Link::refuse`] (a 4xx
//!   or 5xx, then the link ends once it is sent).
//! - Client (the agents): [`Link::client`] queues the upgrade request at once (rustls sends it
//!   right after the handshake); [`Link::poll`] gives [`Event::Open`] for a 101 that checks out,
//!   or [`Event::Refused`].
//!
//! Then [`Event::Message`] for each binary message (borrowed from the link's buffer until the
//! next call), [`Link::send_message`] to send one, [`Link::send_ping`], [`Link::close`]; pings
//! are answered and a peer's close frame is echoed here. Any protocol error is answered with
//! the close frame its close code says, then [`Event::Failed`].
//!
//! The caller moves bytes: [`Link::receive_tls`] with what the socket gave, and
//! [`Link::take_output`] for what to write to it. It uses rustls's buffered `Connection` with
//! `read_tls`/`write_tls` on the caller's buffers (its unbuffered API, which [`crate::TlsConn`]
//! wraps for the forwarders, pays off for a kTLS hand-off; a link stays in user space), with the
//! send buffer limit off: the link's own [`Link::pending_output`] is what the caller bounds.

use std::collections::VecDeque;
use std::io::{Read, Write};

use crate::ws::{
    self, ClientRequest, Decoder, Encoder, Item, Limits, MAX_HEADER_LEN, OpCode, ParsedRequest,
    ParsedResponse, ProtocolError, ResponseError, Role, Subprotocol, UpgradeError, UpgradeRequest,
};

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Server: reading the upgrade request. Client: waiting for the 101.
    Upgrading,
    /// Server: the request is read, the caller decides.
    Deciding,
    /// WebSocket messages flow.
    Open,
    /// Done: write what is left, then close the socket.
    Done,
}

/// What [`Link::poll`] found.
#[derive(Debug)]
pub enum Event<'a> {
    /// Server: a checked upgrade request; answer with [`Link::accept`] or [`Link::refuse`].
    Request(UpgradeRequest),
    /// Server: a request refused by its own content; the 4xx is queued already (the link is
    /// ending).
    BadRequest(UpgradeError),
    /// Server: a `POST` or `OPTIONS` request instead of an upgrade (the relay's `/cookie`, see
    /// [`super::relay::cookie`]); answer with [`Link::refuse`] and the link ends.
    Http(super::relay::cookie::HttpRequest),
    /// Client: the relay's 101 checked out; messages flow.
    Open(ws::Accepted),
    /// Client: the relay refused (or did not answer with a 101). The link is ending.
    Refused(ResponseError),
    /// A whole binary message (unmasked), valid until the next call on the link.
    Message(&'a [u8]),
    /// The peer's close frame (already answered); the link is ending.
    Closed {
        /// The peer's close code, if it sent one.
        code: Option<u16>,
        /// Its reason.
        reason: String,
    },
    /// The peer broke RFC 6455 (the close frame that says so is queued) and the link is
    /// ending.
    Failed(ProtocolError),
}

/// A TLS failure: the link cannot go on (a TLS alert may be queued for the peer).
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(#[from] pub rustls::Error);

/// Most plaintext bytes held unread: one whole WebSocket frame of the tunnel's size and its
/// header, plus room for the TLS record being read when it ends.
pub const MAX_BUFFERED: usize = Limits::TUNNEL_FRAME + MAX_HEADER_LEN + 16 * 1024 + 256;

/// The client side's check of the 101.
#[derive(Debug)]
struct ClientSide {
    key: [u8; 16],
    offered: Vec<Subprotocol>,
}

/// One link: see the [module documentation](self).
pub struct Link {
    tls: rustls::Connection,
    role: Role,
    state: State,
    /// Plaintext received and not yet consumed.
    plain: Vec<u8>,
    /// Bytes at the front of `plain` that the last event used; dropped at the next call.
    consumed: usize,
    decoder: Decoder,
    encoder: Encoder,
    client: Option<ClientSide>,
    /// Masking keys for a client (xorshift64*, seeded by the caller).
    mask_state: u64,
    /// Ciphertext to write to the socket.
    out: Vec<u8>,
    /// The peer ended TLS (close_notify or EOF given to [`Link::receive_eof`]).
    eof: bool,
    /// Messages reassembled from fragments, waiting to be handed out.
    reassembled: VecDeque<Vec<u8>>,
    /// The message handed out last when it was a reassembled one.
    current: Vec<u8>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("plain", &self.plain.len())
            .field("out", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Link {
    fn new(mut tls: rustls::Connection, role: Role, client: Option<ClientSide>, seed: u64) -> Link {
        tls.set_buffer_limit(None);
        Link {
            tls,
            role,
            state: State::Upgrading,
            plain: Vec::new(),
            consumed: 0,
            decoder: Decoder::new(role, Limits::default()),
            encoder: Encoder::new(role),
            client,
            mask_state: seed | 1,
            out: Vec::new(),
            eof: false,
            reassembled: VecDeque::new(),
            current: Vec::new(),
        }
    }

    /// The relay's side of a link accepted on `tls`, a fresh server session.
    pub fn server(tls: rustls::ServerConnection) -> Link {
        Link::new(tls.into(), Role::Server, None, 1)
    }

    /// An agent's side on `tls`, a fresh client session: `request` is queued at once, to go
    /// right after the handshake. `seed` seeds the masking keys (any value; a random one keeps
    /// them unpredictable, as RFC 6455 asks).
    pub fn client(tls: rustls::ClientConnection, request: &ClientRequest<'_>, seed: u64) -> Link {
        let side = ClientSide {
            key: request.key,
            offered: request.protocols.to_vec(),
        };
        let mut link = Link::new(tls.into(), Role::Client, Some(side), seed);
        link.write_plain(&request.encode());
        link
    }

    /// Whether the link is open for messages.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the link has ended on its side: once [`Link::pending_output`] is 0, close the
    /// socket.
    pub fn is_done(&self) -> bool {
        self.state == State::Done || (self.eof && self.state != State::Open)
    }

    /// Whether the peer ended its side (TLS close_notify or end of stream).
    pub fn peer_ended(&self) -> bool {
        self.eof
    }

    /// Whether to read from the socket: the link is not ending and holds less than
    /// [`MAX_BUFFERED`] plaintext bytes. (A caller that pauses a link for flow control simply
    /// stops reading and polling it.)
    pub fn wants_read(&self) -> bool {
        !self.eof
            && !matches!(self.state, State::Done | State::Deciding)
            && self.plain.len() < MAX_BUFFERED
    }

    /// Ciphertext bytes waiting to be written to the socket: what a caller bounds.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Takes the ciphertext to write (appended to `buf`, which is cleared first).
    pub fn take_output(&mut self, buf: &mut Vec<u8>) {
        buf.clear();
        std::mem::swap(buf, &mut self.out);
    }

    /// Puts back the bytes of `buf` from `from` on that the socket did not take: they go before
    /// anything queued since.
    pub fn unsent(&mut self, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        let mut rest = Vec::with_capacity(buf.len() + self.out.len());
        rest.extend_from_slice(buf);
        rest.extend_from_slice(&self.out);
        self.out = rest;
    }

    /// The subprotocol-negotiated and TLS details, for logs.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.protocol_version()
    }

    /// Feeds ciphertext read from the socket. A TLS error ends the link (the alert rustls
    /// queued is in the output).
    pub fn receive_tls(&mut self, mut data: &[u8]) -> Result<(), TlsError> {
        while !data.is_empty() {
            match self.tls.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => break,
            }
            if let Err(e) = self.tls.process_new_packets() {
                self.flush_tls();
                self.state = State::Done;
                return Err(e.into());
            }
            self.read_plain();
        }
        self.flush_tls();
        Ok(())
    }

    /// The socket reached its end (the peer shut down or reset).
    pub fn receive_eof(&mut self) {
        self.eof = true;
    }

    fn read_plain(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.tls.reader().read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.plain.extend_from_slice(&chunk[..n]),
                Err(_) => break, // WouldBlock: nothing more now
            }
        }
    }

    fn flush_tls(&mut self) {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn write_plain(&mut self, bytes: &[u8]) {
        // The buffer limit is off, so rustls takes it all.
        let _ = self.tls.writer().write_all(bytes);
        self.flush_tls();
    }

    fn next_mask(&mut self) -> Option<[u8; 4]> {
        if self.role == Role::Server {
            return None;
        }
        let mut x = self.mask_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.mask_state = x;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Some((v >> 32).to_le_bytes()[..4].try_into().expect("4 bytes"))
    }

    /// The next thing the bytes received say, if any. Call after [`Link::receive_tls`] until it
    /// gives `None`. Pings are answered here and pongs taken silently.
    pub fn poll(&mut self) -> Option<Event<'_>> {
        if self.consumed > 0 {
            self.plain.drain(..self.consumed);
            self.consumed = 0;
            if self.plain.is_empty() && self.plain.capacity() > 16 * 1024 {
                // Between messages: an idle link keeps no big buffer.
                self.plain = Vec::new();
            }
        }
        match (self.state, self.role) {
            (State::Upgrading, Role::Server) => self.poll_request(),
            (State::Upgrading, Role::Client) => self.poll_response(),
            (State::Open, _) => self.poll_frames(),
            _ => None,
        }
    }

    fn poll_request(&mut self) -> Option<Event<'_>> {
        use super::relay::cookie;
        match cookie::classify(&self.plain) {
            cookie::Kind::Unknown => return None,
            cookie::Kind::Http => {
                return match cookie::parse_request(&self.plain) {
                    Ok(cookie::Parsed::Incomplete) => None,
                    Ok(cookie::Parsed::Complete { request, len }) => {
                        self.consumed = len;
                        self.state = State::Deciding;
                        Some(Event::Http(request))
                    }
                    Err(e) => {
                        self.refuse(&e.response());
                        Some(Event::BadRequest(UpgradeError::Method))
                    }
                };
            }
            cookie::Kind::Other => {}
        }
        match ws::parse_request(&self.plain) {
            Ok(ParsedRequest::Incomplete) => None,
            Ok(ParsedRequest::Complete { request, len }) => {
                self.consumed = len;
                self.state = State::Deciding;
                Some(Event::Request(request))
            }
            Err(e) => {
                self.refuse(&e.response(None));
                Some(Event::BadRequest(e))
            }
        }
    }

    fn poll_response(&mut self) -> Option<Event<'_>> {
        let side = self.client.as_ref().expect("a client link has its side");
        match ws::parse_response(&self.plain, &side.key, &side.offered) {
            Ok(ParsedResponse::Incomplete) => None,
            Ok(ParsedResponse::Complete { accepted, len }) => {
                self.consumed = len;
                self.state = State::Open;
                Some(Event::Open(accepted))
            }
            Err(e) => {
                self.end_tls();
                Some(Event::Refused(e))
            }
        }
    }

    fn poll_frames(&mut self) -> Option<Event<'_>> {
        self.current = Vec::new();
        if let Some(message) = self.reassembled.pop_front() {
            self.current = message;
            return Some(Event::Message(&self.current));
        }
        loop {
            let decoded = match self.decoder.handle_bytes(&mut self.plain[self.consumed..]) {
                Ok(d) => d,
                Err(e) => {
                    if self.state == State::Open {
                        let mask = self.next_mask();
                        let mut frame = Vec::new();
                        let _ = self.encoder.close_for(&e, mask, &mut frame);
                        self.write_plain(&frame);
                    }
                    self.end_tls();
                    return Some(Event::Failed(e));
                }
            };
            if decoded.consumed == 0 {
                return None;
            }
            let base = self.consumed;
            self.consumed += decoded.consumed;
            match decoded.item {
                None => continue,
                Some(Item::Binary(range)) => {
                    if self.state != State::Open {
                        continue;
                    }
                    let range = base + range.start..base + range.end;
                    return Some(Event::Message(&self.plain[range]));
                }
                Some(Item::Reassembled(message)) => {
                    if self.state != State::Open {
                        continue;
                    }
                    self.current = message;
                    return Some(Event::Message(&self.current));
                }
                Some(Item::Ping(range)) => {
                    if self.state == State::Open {
                        let payload = self.plain[base + range.start..base + range.end].to_vec();
                        let mask = self.next_mask();
                        let mut frame = Vec::new();
                        let _ = self
                            .encoder
                            .control(OpCode::Pong, &payload, mask, &mut frame);
                        self.write_plain(&frame);
                    }
                }
                Some(Item::Pong(_)) => {}
                Some(Item::Close(close)) => {
                    let reason = String::from_utf8_lossy(
                        &self.plain[base + close.reason.start..base + close.reason.end],
                    )
                    .into_owned();
                    if self.state == State::Open {
                        // Echo it (RFC 6455 §5.5.1).
                        let mask = self.next_mask();
                        let mut frame = Vec::new();
                        let code = close.code.unwrap_or(ws::close_code::NORMAL);
                        let _ = self.encoder.close(code, "", mask, &mut frame);
                        self.write_plain(&frame);
                    }
                    self.end_tls();
                    return Some(Event::Closed {
                        code: close.code,
                        reason,
                    });
                }
            }
        }
    }

    /// Ends our side: close_notify after what is queued; nothing more is read.
    fn end_tls(&mut self) {
        self.tls.send_close_notify();
        self.flush_tls();
        self.state = State::Done;
    }

    /// Server: answers the request with `response` (the 101 of
    /// [`UpgradeRequest::accept_response`]); messages flow from now on.
    pub fn accept(&mut self, response: &[u8]) {
        self.write_plain(response);
        self.state = State::Open;
    }

    /// Server: answers with `response` (an error response, see [`ws::error_response`]), then
    /// ends the link.
    pub fn refuse(&mut self, response: &[u8]) {
        self.write_plain(response);
        self.end_tls();
    }

    /// Sends `payload` as one binary message. Nothing happens unless the link is open.
    pub fn send_message(&mut self, payload: &[u8]) {
        if self.state != State::Open {
            return;
        }
        let mut frame = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
        frame.resize(MAX_HEADER_LEN, 0);
        frame.extend_from_slice(payload);
        let end = frame.len();
        let mask = self.next_mask();
        let start = self
            .encoder
            .frame_in_place(&mut frame, MAX_HEADER_LEN..end, OpCode::Binary, true, mask)
            .expect("headroom, masking and range are right");
        self.write_plain(&frame[start..]);
    }

    /// Sends a ping (its pong is taken silently: the caller counts any bytes as activity).
    pub fn send_ping(&mut self) {
        if self.state != State::Open {
            return;
        }
        let mask = self.next_mask();
        let mut frame = Vec::new();
        let _ = self.encoder.control(OpCode::Ping, b"", mask, &mut frame);
        self.write_plain(&frame);
    }

    /// Sends a close frame with `code` and `reason`; nothing more is sent or handed out, and
    /// the link ends (close it once its output is written).
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.state == State::Open {
            let mask = self.next_mask();
            let mut frame = Vec::new();
            let _ = self.encoder.close(code, reason, mask, &mut frame);
            self.write_plain(&frame);
        }
        if self.state != State::Done {
            self.end_tls();
        }
    }

    /// Plaintext bytes held (for memory accounting).
    pub fn buffered(&self) -> usize {
        self.plain.len() + self.reassembled.iter().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;

    use super::*;
    use crate::ws::{AccessToken, ClientToken, Mode, close_code};

    fn configs() -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let cert =
            splice_test_pki::Cert::self_signed(&["localhost"], splice_test_pki::KeyType::P256);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der.clone()], cert.key.der())
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(client), Arc::new(server))
    }

    /// Moves every byte each side has for the other until neither has any.
    fn shuttle(a: &mut Link, b: &mut Link) {
        let mut buf = Vec::new();
        loop {
            let mut moved = false;
            a.take_output(&mut buf);
            if !buf.is_empty() {
                moved = true;
                let _ = b.receive_tls(&buf);
            }
            b.take_output(&mut buf);
            if !buf.is_empty() {
                moved = true;
                let _ = a.receive_tls(&buf);
            }
            if !moved {
                return;
            }
        }
    }

    fn open_pair(token: &AccessToken, client_token: Option<&ClientToken>) -> (Link, Link) {
        let (cc, sc) = configs();
        let name = ServerName::try_from("localhost").unwrap();
        let request = ClientRequest {
            host: "localhost",
            mode: Mode::Source,
            access_token: token,
            client_token,
            protocols: &Subprotocol::ALL,
            key: [7; 16],
            user_agent: "test",
        };
        let client = Link::client(
            rustls::ClientConnection::new(cc, name).unwrap(),
            &request,
            42,
        );
        let server = Link::server(rustls::ServerConnection::new(sc).unwrap());
        (client, server)
    }

    #[test]
    fn upgrade_messages_ping_and_close_both_ways() {
        let token = AccessToken::new("a".repeat(40)).unwrap();
        let (mut client, mut server) = open_pair(&token, None);
        shuttle(&mut client, &mut server);
        let request = match server.poll() {
            Some(Event::Request(r)) => r,
            other => panic!("expected the request, got {other:?}"),
        };
        assert_eq!(request.mode, Mode::Source);
        assert_eq!(request.access_token.secret(), token.secret());
        assert_eq!(request.protocol, Subprotocol::V3);
        server.accept(&request.accept_response("chan"));
        shuttle(&mut client, &mut server);
        match client.poll() {
            Some(Event::Open(a)) => assert_eq!(a.protocol, Subprotocol::V3),
            other => panic!("expected open, got {other:?}"),
        }
        assert!(client.poll().is_none());
        // Messages each way, one big enough for a 64-bit length and several TLS records.
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        client.send_message(b"hello");
        client.send_message(&big);
        server.send_message(b"back");
        client.send_ping();
        shuttle(&mut client, &mut server);
        match server.poll() {
            Some(Event::Message(m)) => assert_eq!(m, b"hello"),
            other => panic!("{other:?}"),
        }
        match server.poll() {
            Some(Event::Message(m)) => assert_eq!(m, &big[..]),
            other => panic!("{other:?}"),
        }
        assert!(
            server.poll().is_none(),
            "the ping is answered, not handed out"
        );
        shuttle(&mut client, &mut server);
        match client.poll() {
            Some(Event::Message(m)) => assert_eq!(m, b"back"),
            other => panic!("{other:?}"),
        }
        assert!(client.poll().is_none(), "the pong is taken silently");
        server.close(close_code::NORMAL, "tunnel closed");
        shuttle(&mut client, &mut server);
        match client.poll() {
            Some(Event::Closed { code, reason }) => {
                assert_eq!(code, Some(1000));
                assert_eq!(reason, "tunnel closed");
            }
            other => panic!("{other:?}"),
        }
        assert!(client.is_done() && server.is_done());
    }

    #[test]
    fn bad_request_is_refused_with_its_status() {
        let token = AccessToken::new("a".repeat(40)).unwrap();
        let (cc, sc) = configs();
        let mut server = Link::server(rustls::ServerConnection::new(sc).unwrap());
        // A client that speaks TLS but sends a request offering no subprotocol.
        let request = ClientRequest {
            host: "localhost",
            mode: Mode::Destination,
            access_token: &token,
            client_token: None,
            protocols: &[],
            key: [1; 16],
            user_agent: "test",
        };
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = Link::client(
            rustls::ClientConnection::new(cc, name).unwrap(),
            &request,
            3,
        );
        shuttle(&mut client, &mut server);
        match server.poll() {
            Some(Event::BadRequest(e)) => assert_eq!(e.status(), 400),
            other => panic!("{other:?}"),
        }
        assert!(server.is_done());
        shuttle(&mut client, &mut server);
        match client.poll() {
            Some(Event::Refused(ResponseError::Rejected { status })) => assert_eq!(status, 400),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_instead_of_tls_is_a_tls_error() {
        let (_, sc) = configs();
        let mut server = Link::server(rustls::ServerConnection::new(sc).unwrap());
        assert!(server.receive_tls(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(server.is_done());
    }

    #[test]
    fn unmasked_client_frame_fails_the_link_with_1002() {
        let token = AccessToken::new("b".repeat(40)).unwrap();
        let (mut client, mut server) = open_pair(&token, None);
        shuttle(&mut client, &mut server);
        let Some(Event::Request(r)) = server.poll() else {
            panic!()
        };
        server.accept(&r.accept_response("c"));
        shuttle(&mut client, &mut server);
        assert!(matches!(client.poll(), Some(Event::Open(_))));
        // Write an unmasked binary frame through the client's TLS directly.
        client.write_plain(&[0x82, 0x01, 0x00]);
        shuttle(&mut client, &mut server);
        match server.poll() {
            Some(Event::Failed(e)) => assert_eq!(e.close_code(), 1002),
            other => panic!("{other:?}"),
        }
        shuttle(&mut client, &mut server);
        match client.poll() {
            Some(Event::Closed { code, .. }) => assert_eq!(code, Some(1002)),
            other => panic!("{other:?}"),
        }
    }
}

//! An agent's tunnel connection in the client role, without I/O: rustls (user space) under
//! the WebSocket upgrade and frames. The agent's reactor ([`super::reactor`]) moves its
//! ciphertext to and from the socket with the driver's ops.
//!
//! Bytes in: [`ClientLink::handle_ciphertext`]; then [`ClientLink::poll_event`] until `None`
//! (the 101, binary messages, the relay's close). Bytes out: [`ClientLink::send_frame`] (a
//! tunnel frame, masked and framed in place), then [`ClientLink::take_ciphertext`].
//! [`ClientLink::pause`] stops handing out messages (the head-of-line pause): the bytes stay
//! decrypted in `plain`, and the reactor stops reading the socket, so at most one read's
//! worth waits.

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::ClientConnection;
use rustls::pki_types::ServerName;
use splice_proto::tunnel::Version;
use splice_proto::ws::{
    self, AccessToken, ClientRequest, ClientToken, Decoder, Encoder, Item, Mode, OpCode,
    ParsedResponse, Role, Subprotocol,
};

/// What the link tells the reactor.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LinkEvent {
    /// The relay's 101: the tunnel connection is up, in this format.
    Upgraded(Version),
    /// A binary message (one tunnel frame, or several): at `plain[range]`; read it with
    /// [`ClientLink::message`] before the next `poll_event`.
    Message(std::ops::Range<usize>),
    /// A reassembled message (it came in fragments).
    Reassembled(Vec<u8>),
    /// The relay's close frame (the tunnel was closed or expired): give up, as localproxy.
    Closed(Option<u16>, String),
}

/// Why the link is unusable; the reactor drops the connection and asks the reconnect policy.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("upgrade refused: {0}")]
    Response(ws::ResponseError),
    #[error("WebSocket: {0}")]
    Protocol(#[from] ws::ProtocolError),
}

impl LinkError {
    /// The HTTP status the relay refused the upgrade with, if that is what happened.
    pub fn status(&self) -> Option<u16> {
        match self {
            LinkError::Response(ws::ResponseError::Rejected { status }) => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// The upgrade request is sent (queued under TLS); waiting for the 101.
    Upgrading,
    Open,
    /// The relay's close frame came, or ours went.
    Closed,
}

/// The subprotocols offered by an agent that speaks at most `max`, newest first.
pub(crate) fn offered(max: Version) -> Vec<Subprotocol> {
    Subprotocol::ALL
        .into_iter()
        .filter(|p| version_of(*p) <= max)
        .collect()
}

fn version_of(p: Subprotocol) -> Version {
    match p {
        Subprotocol::V1 => Version::V1,
        Subprotocol::V2 => Version::V2,
        Subprotocol::V3 => Version::V3,
    }
}

/// One tunnel connection of an agent.
pub(crate) struct ClientLink {
    tls: ClientConnection,
    phase: Phase,
    key: [u8; 16],
    offered: Vec<Subprotocol>,
    /// Decrypted bytes in `plain[..filled]`; those before `head` are decoded. The rest is
    /// room kept from earlier reads, so that a read does not zero it again.
    plain: Vec<u8>,
    filled: usize,
    head: usize,
    /// Bytes after `head` that the last event used: skipped at the next poll (the event's
    /// range points into them until then).
    used: usize,
    decoder: Decoder,
    encoder: Encoder,
    paused: bool,
    /// A cheap generator for the masks (they need not be secret: RFC 6455 wants them
    /// unpredictable to a page's script, and no script writes here), seeded from the system.
    mask_state: u64,
    /// Control frames (pongs, our close) to send before the next message.
    control: Vec<u8>,
}

impl std::fmt::Debug for ClientLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLink")
            .field("phase", &self.phase)
            .field("paused", &self.paused)
            .finish()
    }
}

/// Headroom for a WebSocket header in front of a tunnel frame.
pub(crate) const WS_HEADROOM: usize = ws::MAX_HEADER_LEN;

impl ClientLink {
    /// A link that sends the upgrade for `mode` with these tokens (none: paired by the
    /// client certificate in `tls`) and announced `services` as soon as TLS allows.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        host: &str,
        mode: Mode,
        token: Option<&AccessToken>,
        client_token: Option<&ClientToken>,
        services: &[&str],
        max: Version,
    ) -> Result<ClientLink, LinkError> {
        let mut tls = ClientConnection::new(tls, server_name)?;
        tls.set_buffer_limit(None);
        let mut random = [0u8; 24];
        SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        let key: [u8; 16] = random[..16].try_into().expect("16 bytes");
        let seed = u64::from_le_bytes(random[16..].try_into().expect("8 bytes")) | 1;
        let offered = offered(max);
        let request = ClientRequest {
            host,
            mode,
            access_token: token,
            services,
            client_token,
            protocols: &offered,
            key,
            user_agent: concat!("splice-engine/", env!("CARGO_PKG_VERSION")),
        }
        .encode();
        tls.writer()
            .write_all(&request)
            .expect("rustls buffers plaintext without limit");
        Ok(ClientLink {
            tls,
            phase: Phase::Upgrading,
            key,
            offered,
            plain: Vec::new(),
            filled: 0,
            head: 0,
            used: 0,
            decoder: Decoder::new(Role::Client, ws::Limits::default()),
            encoder: Encoder::new(Role::Client),
            paused: false,
            mask_state: seed,
            control: Vec::new(),
        })
    }

    fn mask(&mut self) -> [u8; 4] {
        // xorshift64
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_le_bytes()
    }

    /// Bytes read from the socket.
    pub fn handle_ciphertext(&mut self, mut data: &[u8]) -> Result<(), LinkError> {
        self.skip_used();
        if self.head > 0 {
            self.plain.copy_within(self.head..self.filled, 0);
            self.filled -= self.head;
            self.head = 0;
        }
        while !data.is_empty() {
            self.tls.read_tls(&mut data).map_err(|e| {
                LinkError::Tls(rustls::Error::General(format!("reading TLS records: {e}")))
            })?;
            let state = self.tls.process_new_packets()?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let at = self.filled;
                if self.plain.len() < at + n {
                    self.plain.resize(at + n, 0);
                }
                self.tls
                    .reader()
                    .read_exact(&mut self.plain[at..at + n])
                    .expect("rustls said these bytes are there");
                self.filled = at + n;
            }
        }
        Ok(())
    }

    /// Whether the peer's TLS close_notify or close frame came.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The next event; `None` when more bytes are needed or the link is paused.
    pub fn poll_event(&mut self) -> Result<Option<LinkEvent>, LinkError> {
        loop {
            self.skip_used();
            match self.phase {
                Phase::Closed => return Ok(None),
                Phase::Upgrading => {
                    if self.head == self.filled {
                        return Ok(None);
                    }
                    let text = &self.plain[self.head..self.filled];
                    match ws::parse_response(text, &self.key, &self.offered)
                        .map_err(LinkError::Response)?
                    {
                        ParsedResponse::Incomplete => return Ok(None),
                        ParsedResponse::Complete { accepted, len } => {
                            self.used = len;
                            self.phase = Phase::Open;
                            return Ok(Some(LinkEvent::Upgraded(version_of(accepted.protocol))));
                        }
                    }
                }
                Phase::Open => {
                    if self.paused {
                        return Ok(None);
                    }
                    let head = self.head;
                    let decoded = self
                        .decoder
                        .handle_bytes(&mut self.plain[head..self.filled])?;
                    if decoded.consumed == 0 {
                        return Ok(None);
                    }
                    self.used = decoded.consumed;
                    let shift = |r: std::ops::Range<usize>| r.start + head..r.end + head;
                    match decoded.item {
                        None => {}
                        Some(Item::Binary(range)) => {
                            return Ok(Some(LinkEvent::Message(shift(range))));
                        }
                        Some(Item::Reassembled(v)) => return Ok(Some(LinkEvent::Reassembled(v))),
                        Some(Item::Ping(range)) => {
                            let payload = self.plain[shift(range)].to_vec();
                            let mask = Some(self.mask());
                            self.encoder
                                .control(OpCode::Pong, &payload, mask, &mut self.control)
                                .expect("a ping's payload fits a pong");
                        }
                        Some(Item::Pong(_)) => {}
                        Some(Item::Close(close)) => {
                            let reason = String::from_utf8_lossy(&self.plain[shift(close.reason)])
                                .into_owned();
                            self.close(close.code.unwrap_or(ws::close_code::NORMAL));
                            return Ok(Some(LinkEvent::Closed(close.code, reason)));
                        }
                    }
                }
            }
        }
    }

    fn skip_used(&mut self) {
        self.head += std::mem::take(&mut self.used);
        if self.head == self.filled {
            self.filled = 0;
            self.head = 0;
        }
    }

    /// The bytes of a [`LinkEvent::Message`].
    pub fn message(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.plain[range]
    }

    /// Stops (or starts again) handing out messages.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Sends the tunnel frame at `buf[frame]`, which has [`WS_HEADROOM`] bytes free before it:
    /// the WebSocket header goes there and the frame is masked in place.
    pub fn send_frame(&mut self, buf: &mut [u8], frame: std::ops::Range<usize>) {
        let end = frame.end;
        let mask = Some(self.mask());
        let start = self
            .encoder
            .frame_in_place(buf, frame, OpCode::Binary, true, mask)
            .expect("headroom was left for the header");
        self.flush_control();
        self.tls
            .writer()
            .write_all(&buf[start..end])
            .expect("rustls buffers plaintext without limit");
    }

    /// Sends a frame built in a `Vec` (control frames of the tunnel: STREAM_START, resets).
    pub fn send_frame_vec(&mut self, frame: &[u8]) {
        let mut buf = vec![0u8; WS_HEADROOM + frame.len()];
        buf[WS_HEADROOM..].copy_from_slice(frame);
        let len = buf.len();
        self.send_frame(&mut buf, WS_HEADROOM..len);
    }

    /// Queues a ping (its pong counts as a sign of life, like any byte).
    pub fn send_ping(&mut self) {
        if self.phase == Phase::Open {
            let mask = Some(self.mask());
            let _ = self
                .encoder
                .control(OpCode::Ping, b"", mask, &mut self.control);
        }
    }

    /// Queues a close frame with `code` (ours, when the agent stops).
    pub fn close(&mut self, code: u16) {
        if self.phase == Phase::Open {
            let mask = Some(self.mask());
            let _ = self.encoder.close(code, "", mask, &mut self.control);
        }
        self.phase = Phase::Closed;
    }

    fn flush_control(&mut self) {
        if !self.control.is_empty() {
            let control = std::mem::take(&mut self.control);
            self.tls
                .writer()
                .write_all(&control)
                .expect("rustls buffers plaintext without limit");
        }
    }

    /// Moves every TLS record waiting into `out`; returns whether any was added.
    pub fn take_ciphertext(&mut self, out: &mut Vec<u8>) -> bool {
        self.flush_control();
        let before = out.len();
        while self.tls.wants_write() {
            if self.tls.write_tls(out).is_err() {
                break;
            }
        }
        out.len() > before
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use rustls::ServerConnection;
    use splice_proto::ws::{ParsedRequest, parse_request};
    use splice_test_pki::{Cert, KeyType};

    use super::*;

    fn configs() -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let cert = Cert::self_signed(&["relay.test"], KeyType::P256);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der.clone()], cert.key.der())
            .unwrap();
        (Arc::new(client), Arc::new(server))
    }

    /// Moves the client's records to the server and back until neither has any; returns the
    /// plaintext the server read.
    fn pump(client: &mut ClientLink, server: &mut ServerConnection) -> Vec<u8> {
        let mut plain = Vec::new();
        loop {
            let mut out = Vec::new();
            client.take_ciphertext(&mut out);
            let mut back = Vec::new();
            if !out.is_empty() {
                server.read_tls(&mut &out[..]).unwrap();
                server.process_new_packets().unwrap();
                let _ = server.reader().read_to_end(&mut plain);
            }
            while server.wants_write() {
                server.write_tls(&mut back).unwrap();
            }
            if !back.is_empty() {
                client.handle_ciphertext(&back).unwrap();
            }
            if out.is_empty() && back.is_empty() {
                return plain;
            }
        }
    }

    fn link(client: Arc<rustls::ClientConfig>, ct: Option<&ClientToken>) -> ClientLink {
        ClientLink::new(
            client,
            ServerName::try_from("relay.test").unwrap(),
            "relay.test",
            Mode::Destination,
            Some(&AccessToken::new("secret-token").unwrap()),
            ct,
            &[],
            Version::V3,
        )
        .unwrap()
    }

    #[test]
    fn upgrade_messages_ping_and_close_in_memory() {
        let (client_cfg, server_cfg) = configs();
        let ct = ClientToken::new("c".repeat(40)).unwrap();
        let mut client = link(client_cfg, Some(&ct));
        let mut server = ServerConnection::new(server_cfg).unwrap();
        let request = pump(&mut client, &mut server);
        let ParsedRequest::Complete { request, len } = parse_request(&request).unwrap() else {
            panic!("a whole request");
        };
        assert!(len > 0);
        assert_eq!(request.mode, Mode::Destination);
        assert_eq!(
            request.access_token.as_ref().unwrap().secret(),
            "secret-token"
        );
        assert_eq!(request.client_token.as_ref(), Some(&ct));
        assert_eq!(request.protocol, Subprotocol::V3);
        assert!(!format!("{client:?}").contains("secret-token"));

        // The 101, a ping, a message, a close: each comes out as it should.
        let enc = Encoder::new(Role::Server);
        let mut wire = request.accept_response("chan-1");
        enc.control(OpCode::Ping, b"hi", None, &mut wire).unwrap();
        let frame = b"\x00\x02\x08\x05".to_vec();
        let mut msg = vec![0u8; WS_HEADROOM];
        msg.extend_from_slice(&frame);
        let end = msg.len();
        let start = enc
            .frame_in_place(&mut msg, WS_HEADROOM..end, OpCode::Binary, true, None)
            .unwrap();
        wire.extend_from_slice(&msg[start..]);
        enc.close(1000, "tunnel closed", None, &mut wire).unwrap();
        server.writer().write_all(&wire).unwrap();
        pump(&mut client, &mut server);
        assert_eq!(
            client.poll_event().unwrap(),
            Some(LinkEvent::Upgraded(Version::V3))
        );
        let Some(LinkEvent::Message(range)) = client.poll_event().unwrap() else {
            panic!("a message");
        };
        assert_eq!(client.message(range), &frame[..]);
        assert_eq!(
            client.poll_event().unwrap(),
            Some(LinkEvent::Closed(Some(1000), "tunnel closed".into()))
        );
        assert!(client.is_closed());

        // The pong and our close answer went out, masked.
        let back = pump(&mut client, &mut server);
        let mut dec = splice_proto::ws::Decoder::new(Role::Server, ws::Limits::default());
        let mut buf = back.clone();
        let first = dec.handle_bytes(&mut buf).unwrap();
        let Some(Item::Pong(r)) = first.item else {
            panic!("a pong first: {first:?}");
        };
        assert_eq!(&buf[r], b"hi");
        let mut rest = buf[first.consumed..].to_vec();
        assert!(matches!(
            dec.handle_bytes(&mut rest).unwrap().item,
            Some(Item::Close(_))
        ));
    }

    #[test]
    fn frames_sent_are_masked_binary_messages() {
        let (client_cfg, server_cfg) = configs();
        let mut client = link(client_cfg, None);
        let mut server = ServerConnection::new(server_cfg).unwrap();
        let request = pump(&mut client, &mut server);
        let ParsedRequest::Complete { request, .. } = parse_request(&request).unwrap() else {
            panic!("a whole request");
        };
        assert_eq!(request.client_token, None);
        server
            .writer()
            .write_all(&request.accept_response("c"))
            .unwrap();
        pump(&mut client, &mut server);
        assert!(matches!(
            client.poll_event().unwrap(),
            Some(LinkEvent::Upgraded(_))
        ));
        let frame: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        client.send_frame_vec(&frame);
        let mut got = pump(&mut client, &mut server);
        let mut dec = splice_proto::ws::Decoder::new(Role::Server, ws::Limits::default());
        let d = dec.handle_bytes(&mut got).unwrap();
        let Some(Item::Binary(r)) = d.item else {
            panic!("a binary message: {d:?}");
        };
        assert_eq!(&got[r], &frame[..]);
    }

    #[test]
    fn a_refusal_names_its_status() {
        let (client_cfg, server_cfg) = configs();
        let mut client = link(client_cfg, None);
        let mut server = ServerConnection::new(server_cfg).unwrap();
        pump(&mut client, &mut server);
        server
            .writer()
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        pump(&mut client, &mut server);
        let e = client.poll_event().unwrap_err();
        assert_eq!(e.status(), Some(403));
    }

    #[test]
    fn offers_from_the_newest_down() {
        assert_eq!(
            offered(Version::V3),
            [Subprotocol::V3, Subprotocol::V2, Subprotocol::V1]
        );
        assert_eq!(offered(Version::V2), [Subprotocol::V2, Subprotocol::V1]);
        assert_eq!(offered(Version::V1), [Subprotocol::V1]);
    }
}

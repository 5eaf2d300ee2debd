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
    /// Decrypted bytes; those before `head` are decoded.
    plain: Vec<u8>,
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
    /// A link that sends the upgrade for `mode` with these tokens as soon as TLS allows.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        host: &str,
        mode: Mode,
        token: &AccessToken,
        client_token: Option<&ClientToken>,
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
            self.plain.drain(..self.head);
            self.head = 0;
        }
        while !data.is_empty() {
            self.tls.read_tls(&mut data).map_err(|e| {
                LinkError::Tls(rustls::Error::General(format!("reading TLS records: {e}")))
            })?;
            let state = self.tls.process_new_packets()?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let at = self.plain.len();
                self.plain.resize(at + n, 0);
                self.tls
                    .reader()
                    .read_exact(&mut self.plain[at..])
                    .expect("rustls said these bytes are there");
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
                    if self.head == self.plain.len() {
                        return Ok(None);
                    }
                    match ws::parse_response(&self.plain[self.head..], &self.key, &self.offered)
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
                    let decoded = self.decoder.handle_bytes(&mut self.plain[head..])?;
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
        if self.head == self.plain.len() {
            self.plain.clear();
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
    use super::*;

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

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
//! next call, or that buffer taken over with [`Link::take_message`]), [`Link::send_message`] to
//! send one (or [`Link::send_in_place`], framed and sealed in the caller's buffer),
//! [`Link::send_ping`], [`Link::close`]; pings
//! are answered and a peer's close frame is echoed here. Any protocol error is answered with
//! the close frame its close code says, then [`Event::Failed`].
//!
//! The caller moves bytes: [`Link::receive_tls`] with what the socket gave, and
//! [`Link::take_output`] for what to write to it; [`Link::pending_output`] is what the caller
//! bounds.
//!
//! TLS is the forwarders' (see `crate::record`): rustls runs the handshake on its unbuffered
//! API, shown one whole record at a time so that it sees nothing past the handshake's end, then
//! our record layer takes the session's secrets over and opens and seals the records itself.
//! Records are opened from the caller's buffer straight into the link's plaintext buffer and
//! messages sealed straight into its output: no copy besides the cipher's pass and the
//! WebSocket frame's assembly, and no buffer inside rustls. Every buffer goes back to the
//! thread's [`crate::pool`] once it is empty, so an idle link holds none (the relay holds
//! thousands of idle peers). The sessions must allow secret extraction
//! (`enable_secret_extraction`), as the engine's TLS configs do.

use std::collections::VecDeque;
use std::ops::Range;

use rustls::ProtocolVersion;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::CertificateDer;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError};

use crate::forward::records::{Head, head};
use crate::pool;
use crate::record::{
    APPLICATION_DATA, Control, EXPLICIT_NONCE, HEADER, MAX_PLAINTEXT, RecordError, RecordLayer, TAG,
};
use crate::tls_conn::{Records, TlsConn};
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
    /// Server: a standby agent's `GET /notify` upgrade (see [`super::relay::notify`]); answer
    /// with [`Link::accept`] or [`Link::refuse`].
    Standby(super::relay::notify::StandbyRequest),
    /// Client: the relay's 101 to a standby request ([`Link::standby_client`]) checked out.
    Standing,
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
#[error("TLS: {why}")]
pub struct TlsError {
    /// What failed.
    pub why: String,
    /// rustls's error, when it was the handshake that failed: the caller can say more about
    /// it (a certificate refused, and what to do) than its `Display` does.
    pub rustls: Option<rustls::Error>,
}

/// The TLS session, boxed (a link sits in a slab slot, which should stay small).
enum Tls {
    /// rustls runs the handshake.
    Handshake(Box<Handshake>),
    /// Our record layer, past the handshake (smaller than rustls's session).
    Records(Box<RecordLayer>),
    /// Failed: nothing more is opened or sealed.
    Gone,
}

/// A session in its handshake.
struct Handshake {
    conn: TlsConn,
    /// The bytes at the front of the link's `rx` shown to rustls.
    shown: usize,
    /// Plaintext queued before the handshake was over (a client's request), sealed after it.
    early: Vec<u8>,
}

/// What one call to rustls during the handshake leaves to do.
enum Step {
    Again,
    /// rustls wants records that have not arrived.
    Input,
    /// The handshake is over: our record layer takes over.
    Done,
    PeerClosed,
    Failed(String, Option<rustls::Error>),
}

/// Most plaintext bytes held unread: one whole WebSocket frame of the tunnel's size and its
/// header, plus room for the TLS record being read when it ends.
pub const MAX_BUFFERED: usize = Limits::TUNNEL_FRAME + MAX_HEADER_LEN + 16 * 1024 + 256;

/// Bytes [`Link::send_in_place`] needs in front of the payload: the TLS record header, TLS
/// 1.2 AES-GCM's explicit nonce and the WebSocket header.
pub const SEND_HEADROOM: usize = HEADER + EXPLICIT_NONCE + MAX_HEADER_LEN;

/// Bytes [`Link::send_in_place`] needs after the payload: TLS 1.3's inner content type and the
/// AEAD tag.
pub const SEND_TAILROOM: usize = 1 + TAG;

/// The largest payload [`Link::send_in_place`] seals where it lies: its masked frame (a
/// 4-byte header and the 4-byte key) fills one TLS record. A larger one spans records and is
/// copied.
pub const MAX_IN_PLACE: usize = MAX_PLAINTEXT - 8;

/// The size of a plaintext or ciphertext buffer taken from the pool.
const CHUNK: usize = 16 * 1024;

/// The client side's check of the 101.
#[derive(Debug)]
struct ClientSide {
    key: [u8; 16],
    /// The subprotocols offered; none for a standby request ([`super::relay::notify`]),
    /// which offers its own (a tunnel's upgrade offers at least one: the struct stays
    /// within the link's size budget without a flag).
    offered: Vec<Subprotocol>,
}

/// One link: see the [module documentation](self).
pub struct Link {
    tls: Tls,
    /// The negotiated version, once the record layer has taken over.
    version: Option<ProtocolVersion>,
    /// Ciphertext received and not yet opened: part of a record (during the handshake, the
    /// records rustls has not discarded, and those not shown to it yet).
    rx: Vec<u8>,
    /// Our close_notify is sealed.
    tx_closed: bool,
    role: Role,
    state: State,
    /// Plaintext received: `plain[consumed..]` is not yet consumed.
    plain: Vec<u8>,
    /// Bytes at the front of `plain` already handed out: dropped when more bytes arrive (all
    /// of `plain` at the next poll once nothing else is left; while the upgrade runs, at the
    /// next poll), so that the bytes after a message do not move once per message. (`plain`
    /// holds at most [`MAX_BUFFERED`] bytes plus one receive's: 32 bits keep the struct within
    /// its budget.)
    consumed: u32,
    /// Where in `plain` the message handed out last starts (it ends at `consumed`), for
    /// [`Link::take_message`]; `u32::MAX` when the last event was no message from `plain`.
    message_at: u32,
    decoder: Decoder,
    encoder: Encoder,
    /// The client's check of the 101, or the server's record of the client's certificate.
    side: LinkSide,
    /// Masking keys for a client (xorshift64*, seeded by the caller).
    mask_state: u64,
    /// Ciphertext to write to the socket: `out[out_at..]` (a buffer sealed in place by
    /// [`Link::send_in_place`] starts past its headroom).
    out: Vec<u8>,
    /// (32 bits keep the struct within its budget; a buffer's headroom is far below that.)
    out_at: u32,
    /// The peer ended TLS (close_notify or EOF given to [`Link::receive_eof`]).
    eof: bool,
    /// Messages reassembled from fragments, waiting to be handed out.
    reassembled: VecDeque<Vec<u8>>,
    /// The message handed out last when it was a reassembled one.
    current: Vec<u8>,
}

/// What only one role keeps (one field for both keeps [`Link`] small).
enum LinkSide {
    Client(ClientSide),
    /// The certificate chain the client presented (end entity first) and rustls verified,
    /// until [`Link::take_peer_certificates`] (boxed: most peers present none).
    Server(Option<Box<[CertificateDer<'static>]>>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("plain", &self.plain.len())
            .field("out", &self.pending_output())
            .finish_non_exhaustive()
    }
}

impl Link {
    fn new(tls: TlsConn, role: Role, client: Option<ClientSide>, seed: u64) -> Link {
        Link {
            tls: Tls::Handshake(Box::new(Handshake {
                conn: tls,
                shown: 0,
                early: Vec::new(),
            })),
            version: None,
            rx: Vec::new(),
            tx_closed: false,
            role,
            state: State::Upgrading,
            plain: Vec::new(),
            consumed: 0,
            message_at: u32::MAX,
            decoder: Decoder::new(role, Limits::default()),
            encoder: Encoder::new(role),
            side: match client {
                Some(c) => LinkSide::Client(c),
                None => LinkSide::Server(None),
            },
            mask_state: seed | 1,
            out: Vec::new(),
            out_at: 0,
            eof: false,
            reassembled: VecDeque::new(),
            current: Vec::new(),
        }
    }

    /// The relay's side of a link accepted on `tls`, a fresh server session.
    pub fn server(tls: UnbufferedServerConnection) -> Link {
        Link::new(tls.into(), Role::Server, None, 1)
    }

    /// An agent's side on `tls`, a fresh client session: `request` is queued at once, to go
    /// right after the handshake. `seed` seeds the masking keys (any value; a random one keeps
    /// them unpredictable, as RFC 6455 asks).
    pub fn client(tls: UnbufferedClientConnection, request: &ClientRequest<'_>, seed: u64) -> Link {
        let side = ClientSide {
            key: request.key,
            offered: request.protocols.to_vec(),
        };
        let mut link = Link::new(tls.into(), Role::Client, Some(side), seed);
        // The ClientHello goes out at once; a session that cannot even start fails then.
        let _ = link.handshake();
        link.write_plain(&request.encode());
        link
    }

    /// A standby agent's side on `tls` (see [`super::relay::notify`]): `request` is queued at
    /// once; [`Link::poll`] gives [`Event::Standing`] for the relay's 101.
    pub fn standby_client(
        tls: UnbufferedClientConnection,
        request: &super::relay::notify::ClientRequest<'_>,
        seed: u64,
    ) -> Link {
        let side = ClientSide {
            key: request.key,
            offered: Vec::new(),
        };
        let mut link = Link::new(tls.into(), Role::Client, Some(side), seed);
        let _ = link.handshake();
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
    /// [`MAX_BUFFERED`] plaintext bytes (and ciphertext bytes not yet opened). (A caller that pauses a link for flow control simply
    /// stops reading and polling it.)
    pub fn wants_read(&self) -> bool {
        !self.eof
            && !matches!(self.state, State::Done | State::Deciding)
            && self.plain.len() - (self.consumed as usize) < MAX_BUFFERED
            && self.rx.len() < MAX_BUFFERED
    }

    /// Ciphertext bytes waiting to be written to the socket: what a caller bounds.
    pub fn pending_output(&self) -> usize {
        self.out.len() - self.out_at as usize
    }

    /// Takes the ciphertext to write (`buf` is cleared and then holds exactly it). When the
    /// output is a buffer sealed in place this moves it to the front; a caller that can write
    /// from an offset takes it with [`Link::take_output_at`] instead.
    pub fn take_output(&mut self, buf: &mut Vec<u8>) {
        let at = self.take_output_at(buf);
        buf.drain(..at);
    }

    /// Takes the ciphertext to write without moving it: `buf` (cleared first) is swapped with
    /// the link's output, and the bytes to write are `buf[returned..]`.
    pub fn take_output_at(&mut self, buf: &mut Vec<u8>) -> usize {
        buf.clear();
        std::mem::swap(buf, &mut self.out);
        std::mem::take(&mut self.out_at) as usize
    }

    /// Puts back the bytes of `buf` from `from` on that the socket did not take: they go before
    /// anything queued since.
    pub fn unsent(&mut self, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        let mut rest = Vec::with_capacity(buf.len() + self.pending_output());
        rest.extend_from_slice(buf);
        rest.extend_from_slice(&self.out[self.out_at as usize..]);
        pool::give(std::mem::replace(&mut self.out, rest));
        self.out_at = 0;
    }

    /// Whether this end dialled (the TLS client), as agents do; the relay's links are servers.
    pub fn is_client(&self) -> bool {
        matches!(self.side, LinkSide::Client(_))
    }

    /// Server: the certificate chain the client presented in the handshake (end entity
    /// first), verified by the server config's client certificate verifier; `None` when it
    /// presented none, before the handshake is over, or once taken.
    pub fn take_peer_certificates(&mut self) -> Option<Vec<CertificateDer<'static>>> {
        match &mut self.side {
            LinkSide::Server(certs) => certs.take().map(<[_]>::into_vec),
            LinkSide::Client(_) => None,
        }
    }

    /// The negotiated TLS version, for logs.
    pub fn tls_version(&self) -> Option<ProtocolVersion> {
        match &self.tls {
            Tls::Handshake(h) => h.conn.common().protocol_version(),
            _ => self.version,
        }
    }

    /// Feeds ciphertext read from the socket. A TLS error ends the link (the alert for the
    /// peer, if one goes, is in the output).
    pub fn receive_tls(&mut self, data: &[u8]) -> Result<(), TlsError> {
        if matches!(self.tls, Tls::Gone) {
            return Ok(()); // failed: nothing more is read
        }
        let result = if matches!(self.tls, Tls::Records(_)) {
            self.receive_records(data)
        } else {
            self.keep(data);
            self.run()
        };
        if self.rx.is_empty() || matches!(self.tls, Tls::Gone) {
            pool::give(std::mem::take(&mut self.rx));
        }
        result
    }

    /// Once the handshake is over: the records are opened where the caller received them.
    /// Only a record's start that is not whole yet is kept, and the next receive completes
    /// that record alone before it goes on in place.
    fn receive_records(&mut self, mut data: &[u8]) -> Result<(), TlsError> {
        if !self.rx.is_empty() {
            while let Head::Partial(more) = head(&self.rx) {
                if data.is_empty() {
                    return Ok(());
                }
                let (start, rest) = data.split_at(more.min(data.len()));
                self.keep(start);
                data = rest;
            }
            self.make_room(self.rx.len() + data.len());
            // `rx` held less than a record: now exactly one, which opens (close_notify
            // included: nothing after it counts) or fails the link.
            self.run()?;
            debug_assert!(self.rx.is_empty(), "the completed record was opened");
        }
        let used = self.open_records(data)?;
        self.keep(&data[used..]);
        Ok(())
    }

    /// Appends `data` to the ciphertext kept.
    fn keep(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.rx.capacity() == 0 {
            self.rx = pool::take(CHUNK.max(data.len()));
        }
        self.rx.extend_from_slice(data);
    }

    /// The socket reached its end (the peer shut down or reset).
    pub fn receive_eof(&mut self) {
        self.eof = true;
    }

    /// Runs the handshake on what `rx` holds, then opens the records after it.
    fn run(&mut self) -> Result<(), TlsError> {
        if matches!(self.tls, Tls::Handshake(_)) {
            self.handshake()?;
        }
        if matches!(self.tls, Tls::Records(_)) {
            let rx = std::mem::take(&mut self.rx);
            let result = self.open_records(&rx);
            self.rx = rx;
            let used = result?;
            self.rx.drain(..used);
        }
        Ok(())
    }

    /// Lets rustls process the handshake records received, one at a time; once the handshake
    /// is over our record layer takes over and seals what was queued meanwhile.
    fn handshake(&mut self) -> Result<(), TlsError> {
        loop {
            let Tls::Handshake(hs) = &mut self.tls else {
                return Ok(());
            };
            let step = match &mut hs.conn {
                TlsConn::Client(c) => hs_step(c, &mut self.rx, &mut hs.shown, &mut self.out),
                TlsConn::Server(c) => hs_step(c, &mut self.rx, &mut hs.shown, &mut self.out),
            };
            match step {
                Step::Again => {}
                Step::Input => return Ok(()),
                Step::PeerClosed => {
                    self.eof = true;
                    return Ok(());
                }
                Step::Failed(why, cause) => {
                    // rustls hands out the alert it queued before looking at any input.
                    match &mut hs.conn {
                        TlsConn::Client(c) => hs_alert(c, &mut self.out),
                        TlsConn::Server(c) => hs_alert(c, &mut self.out),
                    }
                    return Err(self.fail_with(why, cause));
                }
                Step::Done => {
                    let Tls::Handshake(conn) = std::mem::replace(&mut self.tls, Tls::Gone) else {
                        unreachable!("checked above");
                    };
                    let Handshake { conn, early, .. } = *conn;
                    self.version = conn.common().protocol_version();
                    if let LinkSide::Server(certs) = &mut self.side {
                        *certs = conn
                            .common()
                            .peer_certificates()
                            .filter(|c| !c.is_empty())
                            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
                    }
                    match RecordLayer::take_over(conn) {
                        Ok(layer) => self.tls = Tls::Records(Box::new(layer)),
                        Err(why) => return Err(self.fail(why)),
                    }
                    if !early.is_empty() {
                        self.write_plain(&early);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Room in `plain` for the plaintext of `ciphertext` more bytes, made at once so that the
    /// buffer does not grow (and move) record by record. What was handed out goes first: only
    /// the bytes not yet decoded (a message's start) move.
    fn make_room(&mut self, ciphertext: usize) {
        if self.consumed > 0 {
            self.plain.drain(..self.consumed as usize);
            self.consumed = 0;
            self.message_at = u32::MAX;
        }
        if self.plain.capacity() == 0 {
            self.plain = pool::take(CHUNK.max(ciphertext));
        } else {
            self.plain.reserve(ciphertext);
        }
    }

    /// Opens the whole records at the front of `input` into `plain`; returns the bytes used.
    /// After close_notify nothing more counts (RFC 8446 6.1), so it is all used.
    fn open_records(&mut self, input: &[u8]) -> Result<usize, TlsError> {
        if !matches!(self.tls, Tls::Records(_)) {
            return Ok(0);
        }
        if !self.eof && matches!(head(input), Head::Whole(_)) {
            self.make_room(input.len());
        }
        let Tls::Records(layer) = &mut self.tls else {
            unreachable!("checked above");
        };
        let mut at = 0;
        let mut failed = None;
        while !self.eof {
            let Head::Whole(len) = head(&input[at..]) else {
                break;
            };
            let start = self.plain.len();
            match layer.open_append(&input[at..at + len], &mut self.plain) {
                Ok((APPLICATION_DATA, _)) => at += len,
                Ok((typ, _)) => {
                    at += len;
                    let content = self.plain[start..].to_vec();
                    self.plain.truncate(start);
                    match layer.control(typ, &content) {
                        Ok(Control::PeerClosed) => self.eof = true,
                        Ok(Control::Nothing) => {}
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                    // A KeyUpdate of ours (the peer asked) goes out before the next record.
                    if layer.has_outgoing() {
                        self.out.extend_from_slice(&layer.take_outgoing());
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            return Err(self.fail_records(e));
        }
        Ok(if self.eof { input.len() } else { at })
    }

    /// The record layer failed: its alert goes out, and the link ends.
    fn fail_records(&mut self, e: RecordError) -> TlsError {
        if let (Tls::Records(layer), Some(alert)) = (&mut self.tls, e.alert) {
            layer.queue_alert(true, alert);
            self.out.extend_from_slice(&layer.take_outgoing());
        }
        self.fail(e.reason)
    }

    fn fail(&mut self, why: String) -> TlsError {
        self.fail_with(why, None)
    }

    fn fail_with(&mut self, why: String, rustls: Option<rustls::Error>) -> TlsError {
        self.tls = Tls::Gone;
        self.state = State::Done;
        TlsError { why, rustls }
    }

    /// Seals `bytes` into the output (or keeps them until the handshake is over).
    fn write_plain(&mut self, bytes: &[u8]) {
        let layer = match &mut self.tls {
            Tls::Handshake(hs) => {
                hs.early.extend_from_slice(bytes);
                return;
            }
            Tls::Records(layer) if !self.tx_closed => layer,
            _ => return,
        };
        if self.out.capacity() == 0 {
            // Room for the records of a tunnel frame, from the pool rather than grown.
            self.out = pool::take(CHUNK.max(bytes.len() + bytes.len() / 256 + 64));
        }
        if let Err(e) = seal(layer, bytes, &mut self.out) {
            let _ = self.fail_records(e);
        }
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
        self.message_at = u32::MAX;
        self.current = Vec::new();
        if self.consumed as usize == self.plain.len() {
            // Between messages: an idle link keeps no buffer.
            self.consumed = 0;
            self.plain.clear();
            pool::give(std::mem::take(&mut self.plain));
        } else if self.consumed > 0 && self.state != State::Open {
            self.plain.drain(..self.consumed as usize);
            self.consumed = 0;
        }
        // (While messages flow, those handed out stay in front of `consumed`, and are dropped
        // when more bytes arrive: the rest does not move once per message.)
        match (self.state, self.role) {
            (State::Upgrading, Role::Server) => self.poll_request(),
            (State::Upgrading, Role::Client) => self.poll_response(),
            (State::Open, _) => self.poll_frames(),
            _ => None,
        }
    }

    fn poll_request(&mut self) -> Option<Event<'_>> {
        use super::relay::{cookie, notify};
        match notify::classify(&self.plain) {
            notify::Kind::Unknown => return None,
            notify::Kind::Standby => {
                return match notify::parse_request(&self.plain) {
                    Ok(notify::Parsed::Incomplete) => None,
                    Ok(notify::Parsed::Complete { request, len }) => {
                        self.consumed = len as u32;
                        self.state = State::Deciding;
                        Some(Event::Standby(request))
                    }
                    Err(e) => {
                        self.refuse(&e.response());
                        Some(Event::BadRequest(UpgradeError::NotHttp(
                            "a bad standby request",
                        )))
                    }
                };
            }
            notify::Kind::Other => {}
        }
        match cookie::classify(&self.plain) {
            cookie::Kind::Unknown => return None,
            cookie::Kind::Http => {
                return match cookie::parse_request(&self.plain) {
                    Ok(cookie::Parsed::Incomplete) => None,
                    Ok(cookie::Parsed::Complete { request, len }) => {
                        self.consumed = len as u32;
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
                self.consumed = len as u32;
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
        let LinkSide::Client(side) = &self.side else {
            unreachable!("only a client link reads a response")
        };
        if side.offered.is_empty() {
            return match super::relay::notify::parse_response(&self.plain, &side.key) {
                Ok(None) => None,
                Ok(Some(len)) => {
                    self.consumed = len as u32;
                    self.state = State::Open;
                    Some(Event::Standing)
                }
                Err(e) => {
                    self.end_tls();
                    Some(Event::Refused(match e {
                        super::relay::notify::StandbyError::Rejected(status) => {
                            ResponseError::Rejected {
                                status,
                                reason: String::new(),
                            }
                        }
                        _ => ResponseError::Subprotocol,
                    }))
                }
            };
        }
        match ws::parse_response(&self.plain, &side.key, &side.offered) {
            Ok(ParsedResponse::Incomplete) => None,
            Ok(ParsedResponse::Complete { accepted, len }) => {
                self.consumed = len as u32;
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
        if let Some(message) = self.reassembled.pop_front() {
            self.current = message;
            return Some(Event::Message(&self.current));
        }
        loop {
            let decoded = match self
                .decoder
                .handle_bytes(&mut self.plain[self.consumed as usize..])
            {
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
            let base = self.consumed as usize;
            self.consumed += decoded.consumed as u32;
            match decoded.item {
                None => continue,
                Some(Item::Binary(range)) => {
                    if self.state != State::Open {
                        continue;
                    }
                    let range = base + range.start..base + range.end;
                    debug_assert_eq!(
                        range.end,
                        base + decoded.consumed,
                        "a frame ends with its payload"
                    );
                    self.message_at = range.start as u32;
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
        if let Tls::Records(layer) = &mut self.tls
            && !self.tx_closed
        {
            let result = seal_with(layer, &mut self.out, 2, |layer, room| {
                layer.seal_close_notify(room)
            });
            if let Err(e) = result {
                let _ = self.fail_records(e);
            }
            self.tx_closed = true;
        }
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
        if self.role == Role::Server && !self.tx_closed && matches!(self.tls, Tls::Records(_)) {
            // Unmasked: the payload is sealed from where it lies, but for the bytes that share
            // the first record with the header.
            return self.send_unmasked(payload);
        }
        let mut frame = pool::take(MAX_HEADER_LEN + payload.len());
        frame.resize(MAX_HEADER_LEN, 0);
        frame.extend_from_slice(payload);
        let end = frame.len();
        let mask = self.next_mask();
        let start = self
            .encoder
            .frame_in_place(&mut frame, MAX_HEADER_LEN..end, OpCode::Binary, true, mask)
            .expect("headroom, masking and range are right");
        self.write_plain(&frame[start..]);
        pool::give(frame);
    }

    /// A server's binary message, sealed without a copy of the payload: its first record
    /// holds the header and the payload's first bytes (copied together), the rest is sealed
    /// straight from `payload`.
    fn send_unmasked(&mut self, payload: &[u8]) {
        let mut head = [0u8; MAX_HEADER_LEN];
        let hlen = unmasked_header(&mut head, payload.len());
        let split = payload.len().min(MAX_PLAINTEXT - hlen);
        let mut first = pool::take(hlen + split);
        first.extend_from_slice(&head[..hlen]);
        first.extend_from_slice(&payload[..split]);
        self.write_plain(&first);
        pool::give(first);
        if split < payload.len() {
            self.write_plain(&payload[split..]);
        }
    }

    /// Sends `buf[payload]` as one binary message, framed and sealed where it lies: the
    /// WebSocket header (and the client's mask, applied in place) and the TLS record header go
    /// into the [`SEND_HEADROOM`] bytes the caller left in front of `payload`, TLS 1.3's
    /// content type and the tag after it (`buf` grows by [`SEND_TAILROOM`] bytes, within its
    /// capacity if the caller left that room). The link owns `buf` from now on: when nothing
    /// else waits to be written it becomes the output itself (take it with
    /// [`Link::take_output_at`]), so the payload is not copied at all; else its record is
    /// appended to the output, and `buf` goes back to the pool. A payload over
    /// [`MAX_IN_PLACE`] bytes (or with less headroom, but at least [`MAX_HEADER_LEN`]) is
    /// framed and masked where it lies and sealed from there into the output, record by
    /// record; with less headroom still it is sent as [`Link::send_message`] would.
    /// Nothing is sent unless the link is open.
    ///
    /// # Panics
    /// If `payload` is not a range within `buf`.
    pub fn send_in_place(&mut self, mut buf: Vec<u8>, payload: Range<usize>) {
        assert!(
            payload.start <= payload.end && payload.end <= buf.len(),
            "send_in_place: {payload:?} is not within the buffer's {} bytes",
            buf.len()
        );
        if self.state != State::Open {
            pool::give(buf);
            return;
        }
        let fits = payload.start >= SEND_HEADROOM && payload.len() <= MAX_IN_PLACE;
        if !fits || self.tx_closed || !matches!(self.tls, Tls::Records(_)) {
            if payload.start >= MAX_HEADER_LEN && !self.tx_closed {
                // Framed (and masked) where it lies, then sealed record by record from there
                // into the output: the cipher's pass is the only one over the payload.
                let end = payload.end;
                let mask = self.next_mask();
                let start = self
                    .encoder
                    .frame_in_place(&mut buf, payload, OpCode::Binary, true, mask)
                    .expect("headroom, masking and range are right");
                self.write_plain(&buf[start..end]);
            } else {
                self.send_message(&buf[payload]);
            }
            pool::give(buf);
            return;
        }
        let mask = self.next_mask();
        let Tls::Records(layer) = &mut self.tls else {
            unreachable!("checked above");
        };
        if let Err(e) = layer.before_seal() {
            let _ = self.fail_records(e);
            pool::give(buf);
            return;
        }
        if layer.has_outgoing() {
            // A KeyUpdate goes first.
            self.out.extend_from_slice(&layer.take_outgoing());
        }
        let end = payload.end;
        let frame = self
            .encoder
            .frame_in_place(&mut buf, payload, OpCode::Binary, true, mask)
            .expect("headroom, masking and range are right");
        buf.truncate(end);
        buf.resize(end + SEND_TAILROOM, 0);
        match layer.seal_in_place(&mut buf, frame..end) {
            Ok(record) => {
                if let (0, Ok(at)) = (self.pending_output(), u32::try_from(record.start)) {
                    buf.truncate(record.end);
                    pool::give(std::mem::replace(&mut self.out, buf));
                    self.out_at = at;
                } else {
                    self.out.extend_from_slice(&buf[record]);
                    pool::give(buf);
                }
            }
            Err(e) => {
                pool::give(buf);
                let _ = self.fail_records(e);
            }
        }
    }

    /// Right after [`Link::poll`] gave [`Event::Message`]: the buffer that holds the message,
    /// and the message's range in it, for the caller to keep (and give back to the pool once
    /// done) instead of copying the message out. The link goes on with a fresh buffer from the
    /// pool holding what it received after the message, so it hands its buffer over only when
    /// that is shorter than the message; else (and at any other time) `None`: copy the message
    /// from the event. A message reassembled from fragments is always handed over.
    pub fn take_message(&mut self) -> Option<(Vec<u8>, Range<usize>)> {
        if !self.current.is_empty() {
            let message = std::mem::take(&mut self.current);
            let len = message.len();
            return Some((message, 0..len));
        }
        if self.message_at == u32::MAX {
            return None;
        }
        let consumed = self.consumed as usize;
        let range = self.message_at as usize..consumed;
        let rest = self.plain.len() - consumed;
        if range.is_empty() || rest >= range.len() {
            return None;
        }
        self.message_at = u32::MAX;
        let mut kept = Vec::new();
        if rest > 0 {
            kept = pool::take(CHUNK.max(rest));
            kept.extend_from_slice(&self.plain[consumed..]);
        }
        let mut buf = std::mem::replace(&mut self.plain, kept);
        buf.truncate(consumed);
        self.consumed = 0;
        Some((buf, range))
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

    /// Ends the link without a close frame: TLS close_notify after what is queued, then the
    /// connection ends. A peer reads a dropped connection, not a closed tunnel, and
    /// reconnects (localproxy gives up on any close frame, §8): what the relay does when it
    /// shuts down, since its tunnels outlive it in the registry.
    pub fn hang_up(&mut self) {
        if self.state != State::Done {
            self.end_tls();
        }
    }

    /// Plaintext bytes held (for memory accounting).
    pub fn buffered(&self) -> usize {
        self.plain.len() - self.consumed as usize
            + self.reassembled.iter().map(Vec::len).sum::<usize>()
    }

    /// Bytes of buffer capacity the link holds outside its TLS session: none once everything
    /// it received is handed out and everything it queued is taken (an idle link).
    pub fn buffer_capacity(&self) -> usize {
        self.plain.capacity()
            + self.rx.capacity()
            + match &self.tls {
                Tls::Handshake(hs) => hs.early.capacity(),
                _ => 0,
            }
            + self.out.capacity()
            + self.current.capacity()
            + self.reassembled.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.reassembled.iter().map(Vec::capacity).sum::<usize>()
            + self.decoder.memory()
    }
}

/// One call to rustls during the handshake, with the records shown so far (`rx[..shown]`);
/// what it queued goes into `out`. When it wants more, the next whole record received is
/// shown, one at a time, so that it sees nothing past the handshake's end.
fn hs_step<C: Records>(
    conn: &mut C,
    rx: &mut Vec<u8>,
    shown: &mut usize,
    out: &mut Vec<u8>,
) -> Step {
    let status = conn.process(&mut rx[..*shown]);
    let discard = status.discard;
    let mut wants = false;
    let step = match status.state {
        Ok(ConnectionState::EncodeTlsData(mut records)) => {
            match encode(out, |room| records.encode(room)) {
                Ok(()) => Step::Again,
                Err(e) => Step::Failed(format!("encoding a handshake record: {e}"), None),
            }
        }
        Ok(ConnectionState::TransmitTlsData(sent)) => {
            sent.done();
            Step::Again
        }
        Ok(ConnectionState::BlockedHandshake) => Step::Input,
        Ok(ConnectionState::WriteTraffic(_)) => {
            // A TLS 1.3 server may send before the client's Finished: over only when rustls
            // says so.
            wants = true;
            Step::Input
        }
        Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Step::PeerClosed,
        Ok(other) => Step::Failed(
            format!("unexpected TLS state {other:?} in the handshake"),
            None,
        ),
        Err(e) => Step::Failed(e.to_string(), Some(e)),
    };
    rx.drain(..discard);
    *shown -= discard;
    if wants && !conn.state().is_handshaking() {
        return Step::Done;
    }
    if let Step::Input = step
        && let Head::Whole(len) = head(&rx[*shown..])
    {
        *shown += len;
        return Step::Again;
    }
    step
}

/// Writes the header of an unmasked, final binary frame of `len` bytes into `out`; returns its
/// length.
fn unmasked_header(out: &mut [u8; MAX_HEADER_LEN], len: usize) -> usize {
    out[0] = 0x80 | OpCode::Binary.bits();
    match len {
        0..=125 => {
            out[1] = len as u8;
            2
        }
        126..=0xffff => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    }
}

/// Takes the alert rustls queued when the handshake failed.
fn hs_alert<C: Records>(conn: &mut C, out: &mut Vec<u8>) {
    while conn.state().wants_write() {
        let status = conn.process(&mut []);
        let Ok(ConnectionState::EncodeTlsData(mut records)) = status.state else {
            break;
        };
        if encode(out, |room| records.encode(room)).is_err() {
            break;
        }
    }
}

/// Appends what `write` encodes to `out`, with as much room as it asks for.
fn encode(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), EncodeError> {
    let at = out.len();
    let mut room = 1024;
    loop {
        out.resize(at + room, 0);
        match write(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(e) => {
                out.truncate(at);
                return Err(e);
            }
        }
    }
}

/// Seals `bytes` as application data records into `out`, behind any record the layer made on
/// its own account (a KeyUpdate).
fn seal(layer: &mut RecordLayer, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
    for chunk in bytes.chunks(MAX_PLAINTEXT) {
        layer.before_seal()?;
        if layer.has_outgoing() {
            out.extend_from_slice(&layer.take_outgoing());
        }
        layer.seal_append(chunk, out)?;
    }
    Ok(())
}

/// Runs `f` (sealing one record of `len` plaintext bytes into the room it is given) at the end
/// of `out`, after the layer's own records.
fn seal_with(
    layer: &mut RecordLayer,
    out: &mut Vec<u8>,
    len: usize,
    f: impl FnOnce(&mut RecordLayer, &mut [u8]) -> Result<usize, RecordError>,
) -> Result<(), RecordError> {
    if layer.has_outgoing() {
        out.extend_from_slice(&layer.take_outgoing());
    }
    let at = out.len();
    out.resize(at + layer.record_len(len), 0);
    match f(layer, &mut out[at..]) {
        Ok(n) => {
            out.truncate(at + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(at);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;

    use super::*;
    use crate::ws::{AccessToken, ClientToken, Mode, close_code};

    fn configs() -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        configs_for(rustls::DEFAULT_VERSIONS)
    }

    fn configs_for(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        configs_with(rustls::crypto::aws_lc_rs::default_provider(), versions)
    }

    fn configs_with(
        provider: rustls::crypto::CryptoProvider,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let cert =
            splice_test_pki::Cert::self_signed(&["localhost"], splice_test_pki::KeyType::P256);
        let provider = Arc::new(provider);
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der.clone()], cert.key.der())
            .unwrap();
        server.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.enable_secret_extraction = true;
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

    /// Like [`shuttle`], but one byte at a time: every record arrives in pieces.
    fn trickle(a: &mut Link, b: &mut Link) {
        fn one_way(from: &mut Link, to: &mut Link) -> bool {
            let mut buf = Vec::new();
            from.take_output(&mut buf);
            for byte in &buf {
                to.receive_tls(std::slice::from_ref(byte)).unwrap();
            }
            !buf.is_empty()
        }
        while one_way(a, b) | one_way(b, a) {}
    }

    fn open_pair(token: &AccessToken, client_token: Option<&ClientToken>) -> (Link, Link) {
        open_pair_with(configs(), token, client_token)
    }

    fn open_pair_with(
        (cc, sc): (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>),
        token: &AccessToken,
        client_token: Option<&ClientToken>,
    ) -> (Link, Link) {
        let name = ServerName::try_from("localhost").unwrap();
        let request = ClientRequest {
            host: "localhost",
            mode: Mode::Source,
            access_token: Some(token),
            services: &[],
            client_token,
            protocols: &Subprotocol::ALL,
            key: [7; 16],
            user_agent: "test",
        };
        let client = Link::client(
            rustls::client::UnbufferedClientConnection::new(cc, name).unwrap(),
            &request,
            42,
        );
        let server = Link::server(rustls::server::UnbufferedServerConnection::new(sc).unwrap());
        (client, server)
    }

    /// The relay reads the certificate a client presented once the handshake is over, and
    /// nothing from a client that presented none.
    #[test]
    fn the_server_keeps_the_client_certificate_until_taken() {
        use splice_test_pki::{Authority, KeyType, Usage};
        let ca = Authority::new("link", KeyType::P256);
        let server_cert = ca.issue("relay", &["localhost"], KeyType::P256, Usage::Server);
        let client_cert = ca.issue("agent", &[], KeyType::P256, Usage::Client);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let mut sc = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert.der.clone()], server_cert.key.der())
            .unwrap();
        sc.enable_secret_extraction = true;
        let sc = Arc::new(sc);
        let client = |with_cert: bool| {
            let b = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone());
            let mut cc = if with_cert {
                b.with_client_auth_cert(vec![client_cert.der.clone()], client_cert.key.der())
                    .unwrap()
            } else {
                b.with_no_client_auth()
            };
            cc.enable_secret_extraction = true;
            Arc::new(cc)
        };
        let token = AccessToken::new("a".repeat(40)).unwrap();
        let (mut c, mut s) = open_pair_with((client(true), sc.clone()), &token, None);
        assert_eq!(s.take_peer_certificates(), None, "before the handshake");
        shuttle(&mut c, &mut s);
        assert!(matches!(s.poll(), Some(Event::Request(_))));
        assert_eq!(
            s.take_peer_certificates(),
            Some(vec![client_cert.der.clone()])
        );
        assert_eq!(s.take_peer_certificates(), None, "taken");
        let (mut c, mut s) = open_pair_with((client(false), sc), &token, None);
        shuttle(&mut c, &mut s);
        assert!(matches!(s.poll(), Some(Event::Request(_))));
        assert_eq!(s.take_peer_certificates(), None);
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
        assert_eq!(
            request.access_token.as_ref().unwrap().secret(),
            token.secret()
        );
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

    /// An idle peer's link (past its handshake and upgrade, a message each way, nothing
    /// buffered) keeps no buffer of its own, and its struct, which sits in a shard's slab
    /// slot, stays small: the relay holds thousands of these (the `idle-tunnels` bench shows
    /// the cost per peer). Raise the budget only knowingly.
    #[test]
    fn an_idle_link_holds_no_buffer_and_stays_small() {
        let size = std::mem::size_of::<Link>();
        assert!(size <= 264, "Link is {size} bytes");
        // Its boxed TLS state past the handshake (aws-lc's key contexts, about 0.6 KiB, and
        // rustls's key schedule come on top).
        let size = std::mem::size_of::<RecordLayer>();
        assert!(size <= 736, "RecordLayer is {size} bytes");
        let (mut client, mut server) = opened(configs());
        client.send_message(&[9; 3000]);
        server.send_message(b"back");
        shuttle(&mut client, &mut server);
        assert!(matches!(server.poll(), Some(Event::Message(m)) if m.len() == 3000));
        assert!(matches!(client.poll(), Some(Event::Message(b"back"))));
        assert!(server.poll().is_none() && client.poll().is_none());
        // What the shard does once a send is done: its buffer goes, the link's is empty.
        server.take_output(&mut Vec::new());
        client.take_output(&mut Vec::new());
        assert_eq!(server.buffer_capacity(), 0, "the relay's side");
        assert_eq!(client.buffer_capacity(), 0, "the agent's side");
    }

    /// Records that arrive a byte at a time, in the handshake and after it, on TLS 1.3 and
    /// TLS 1.2: the link keeps the start of a record until it is whole.
    #[test]
    fn records_in_pieces_on_both_versions() {
        each_backend(records_in_pieces_on_both_versions_with);
    }

    fn records_in_pieces_on_both_versions_with() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let token = AccessToken::new("d".repeat(40)).unwrap();
            let (mut client, mut server) = open_pair_with(configs_for(&[version]), &token, None);
            trickle(&mut client, &mut server);
            let Some(Event::Request(r)) = server.poll() else {
                panic!("no request over {version:?}")
            };
            assert_eq!(server.tls_version(), Some(version.version));
            server.accept(&r.accept_response("c"));
            trickle(&mut client, &mut server);
            assert!(matches!(client.poll(), Some(Event::Open(_))));
            let big: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
            client.send_message(&big);
            server.send_message(b"back");
            trickle(&mut client, &mut server);
            match server.poll() {
                Some(Event::Message(m)) => assert_eq!(m, &big[..]),
                other => panic!("{other:?}"),
            }
            assert!(matches!(client.poll(), Some(Event::Message(b"back"))));
            client.close(close_code::NORMAL, "bye");
            trickle(&mut client, &mut server);
            assert!(matches!(
                server.poll(),
                Some(Event::Closed {
                    code: Some(1000),
                    ..
                })
            ));
            assert!(client.is_done() && server.is_done());
        }
    }

    /// Receives cut anywhere: a record's start kept from one receive is completed from the
    /// next, whose whole records after it are opened in place, in order, on both versions.
    #[test]
    fn records_cut_at_any_size_arrive_in_order() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut client, mut server) = opened(configs_for(&[version]));
            let sizes = [1, 5, 100, 16_000, 16_384, 16_385, 40_000, 70_000, 3];
            let sent: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(m, &n)| (0..n).map(|i| (i * 31 + m * 7) as u8).collect())
                .collect();
            for cut in [1, 4, 5, 6, 21, 1000, 16_405, 16_406, 40_000, 65_536] {
                let mut wire = Vec::new();
                for m in &sent {
                    client.send_message(m);
                }
                client.take_output(&mut wire);
                let mut got = Vec::new();
                for piece in wire.chunks(cut) {
                    server.receive_tls(piece).unwrap();
                    while let Some(Event::Message(m)) = server.poll() {
                        got.push(m.to_vec());
                    }
                }
                assert_eq!(got, sent, "{version:?}, cut every {cut} bytes");
            }
        }
    }

    /// A record that does not open (forged, or cut and joined wrong) after the upgrade fails
    /// the link with bad_record_mac, sealed for the peer, which hears it as a fatal alert.
    #[test]
    fn a_record_that_does_not_open_fails_the_link_with_an_alert() {
        each_backend(a_record_that_does_not_open_fails_the_link_with_an_alert_with);
    }

    fn a_record_that_does_not_open_fails_the_link_with_an_alert_with() {
        let (mut client, mut server) = opened(configs());
        let mut forged = vec![23, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x5a; 40]);
        let e = server.receive_tls(&forged).unwrap_err();
        assert!(e.to_string().contains("bad_record_mac"), "{e}");
        assert!(server.is_done());
        assert!(server.poll().is_none());
        let mut alert = Vec::new();
        server.take_output(&mut alert);
        let e = client.receive_tls(&alert).unwrap_err();
        assert!(e.to_string().contains("bad_record_mac"), "{e}");
    }

    /// Runs `f` with the record layer on each of its two cipher implementations.
    fn each_backend(f: fn()) {
        for b in [crate::aead::Backend::AwsLc, crate::aead::Backend::Ring] {
            crate::aead::with_backend(b, f);
        }
    }

    /// Opens a pair past its upgrade.
    fn opened(configs: (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>)) -> (Link, Link) {
        let token = AccessToken::new("f".repeat(40)).unwrap();
        let (mut client, mut server) = open_pair_with(configs, &token, None);
        shuttle(&mut client, &mut server);
        let Some(Event::Request(r)) = server.poll() else {
            panic!("no request")
        };
        server.accept(&r.accept_response("c"));
        shuttle(&mut client, &mut server);
        assert!(matches!(client.poll(), Some(Event::Open(_))));
        (client, server)
    }

    /// TLS 1.3, TLS 1.2 with AES-GCM (an explicit nonce per record) and TLS 1.2 with
    /// ChaCha20-Poly1305 (none): the three record layouts.
    fn all_layouts() -> Vec<(Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>)> {
        use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
        let chacha = rustls::crypto::CryptoProvider {
            cipher_suites: vec![cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256],
            ..default_provider()
        };
        vec![
            configs_for(&[&rustls::version::TLS13]),
            configs_for(&[&rustls::version::TLS12]),
            configs_with(chacha, &[&rustls::version::TLS12]),
        ]
    }

    /// A payload read into a buffer with the headroom (the agents' local reads) goes out
    /// framed, masked and sealed in that buffer: the output is that very buffer, and the
    /// relay's side reads the message. Payloads too big for one record, or with too little
    /// headroom, go the copying way, in order with the rest.
    #[test]
    fn send_in_place_seals_the_callers_buffer_on_every_record_layout() {
        each_backend(send_in_place_seals_the_callers_buffer_on_every_record_layout_with);
    }

    fn send_in_place_seals_the_callers_buffer_on_every_record_layout_with() {
        for configs in all_layouts() {
            let (mut client, mut server) = opened(configs);
            let version = client.tls_version();
            for (n, headroom) in [
                (0, SEND_HEADROOM),
                (1, SEND_HEADROOM),
                (125, SEND_HEADROOM + 3),
                (126, SEND_HEADROOM),
                (5000, 64),
                (MAX_IN_PLACE, SEND_HEADROOM),
                (MAX_IN_PLACE + 1, SEND_HEADROOM),
                (40_000, SEND_HEADROOM),
                (300, SEND_HEADROOM - 1),
            ] {
                let payload: Vec<u8> = (0..n).map(|i| (i * 31 + n) as u8).collect();
                let mut buf = Vec::with_capacity(headroom + n + SEND_TAILROOM);
                buf.resize(headroom, 0xee);
                buf.extend_from_slice(&payload);
                let ptr = buf.as_ptr();
                client.send_in_place(buf, headroom..headroom + n);
                let mut out = Vec::new();
                let at = client.take_output_at(&mut out);
                if n <= MAX_IN_PLACE && headroom >= SEND_HEADROOM {
                    assert_eq!(
                        out.as_ptr(),
                        ptr,
                        "{n} bytes over {version:?}: not in place"
                    );
                    assert!(at > 0, "the record starts past the unused headroom");
                } else {
                    assert_eq!(at, 0);
                }
                server.receive_tls(&out[at..]).unwrap();
                match server.poll() {
                    Some(Event::Message(m)) => {
                        assert!(m == &payload[..], "{n} bytes over {version:?}")
                    }
                    other => panic!("{n} bytes over {version:?}: {other:?}"),
                }
                assert!(server.poll().is_none());
            }
        }
    }

    /// The relay's messages (unmasked: their payload is sealed from where it lies, but for
    /// the part that shares the first record with the header) arrive whole on every record
    /// layout, at each size where the header or the records change.
    #[test]
    fn server_messages_of_every_size_arrive_whole() {
        each_backend(server_messages_of_every_size_arrive_whole_with);
    }

    fn server_messages_of_every_size_arrive_whole_with() {
        for configs in all_layouts() {
            let (mut client, mut server) = opened(configs);
            let version = client.tls_version();
            for n in [
                0,
                1,
                125,
                126,
                MAX_PLAINTEXT - 5,
                MAX_PLAINTEXT - 4,
                MAX_PLAINTEXT - 3,
                MAX_PLAINTEXT,
                2 * MAX_PLAINTEXT - 4,
                65_535,
                65_536,
                100_000,
            ] {
                let payload: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
                server.send_message(&payload);
                shuttle(&mut server, &mut client);
                match client.poll() {
                    Some(Event::Message(m)) => {
                        assert!(m == &payload[..], "{n} bytes over {version:?}")
                    }
                    other => panic!("{n} bytes over {version:?}: {other:?}"),
                }
                assert!(client.poll().is_none());
            }
        }
    }

    /// Moves bytes between a client link and rustls's own server (an independent record
    /// layer) until neither has any; the plaintext rustls reads is appended to `plain`.
    fn pump(client: &mut Link, server: &mut rustls::ServerConnection, plain: &mut Vec<u8>) {
        use std::io::Read;
        loop {
            let mut moved = false;
            let mut buf = Vec::new();
            let at = client.take_output_at(&mut buf);
            let mut rd = &buf[at..];
            moved |= !rd.is_empty();
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
            }
            let _ = server.reader().read_to_end(plain); // WouldBlock once all is read
            let mut out = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut out).unwrap();
            }
            if !out.is_empty() {
                moved = true;
                client.receive_tls(&out).unwrap();
            }
            if !moved {
                return;
            }
        }
    }

    /// rustls, as the relay's TLS stack, opens what the link sealed in place on each record
    /// layout, and the frames in it (unmasked here by hand) carry the payloads.
    #[test]
    fn rustls_opens_records_sealed_in_place() {
        each_backend(rustls_opens_records_sealed_in_place_with);
    }

    fn rustls_opens_records_sealed_in_place_with() {
        for (cc, sc) in all_layouts() {
            let token = AccessToken::new("h".repeat(40)).unwrap();
            let request = ClientRequest {
                host: "localhost",
                mode: Mode::Destination,
                access_token: Some(&token),
                services: &[],
                client_token: None,
                protocols: &Subprotocol::ALL,
                key: [9; 16],
                user_agent: "test",
            };
            let name = ServerName::try_from("localhost").unwrap();
            let mut client = Link::client(
                rustls::client::UnbufferedClientConnection::new(cc, name).unwrap(),
                &request,
                77,
            );
            let mut server = rustls::ServerConnection::new(sc).unwrap();
            let mut plain = Vec::new();
            pump(&mut client, &mut server, &mut plain);
            let Ok(ParsedRequest::Complete { request, len }) = ws::parse_request(&plain) else {
                panic!("no request")
            };
            assert_eq!(len, plain.len());
            plain.clear();
            std::io::Write::write_all(&mut server.writer(), &request.accept_response("c")).unwrap();
            pump(&mut client, &mut server, &mut plain);
            assert!(matches!(client.poll(), Some(Event::Open(_))));
            let version = client.tls_version();
            for n in [0, 1, 125, 126, 9000, MAX_IN_PLACE] {
                let payload: Vec<u8> = (0..n).map(|i| (i * 13 + 5) as u8).collect();
                let mut buf = vec![0; SEND_HEADROOM];
                buf.extend_from_slice(&payload);
                client.send_in_place(buf, SEND_HEADROOM..SEND_HEADROOM + n);
                plain.clear();
                pump(&mut client, &mut server, &mut plain);
                // A masked FIN binary frame: 0x82, the length (7 or 7+16 bits), the key.
                assert_eq!(plain[0], 0x82, "{n} bytes over {version:?}");
                let (len, key_at) = match plain[1] & 0x7f {
                    126 => (u16::from_be_bytes([plain[2], plain[3]]) as usize, 4),
                    short => (short as usize, 2),
                };
                assert_eq!(plain[1] & 0x80, 0x80, "masked");
                assert_eq!(len, n);
                let key: [u8; 4] = plain[key_at..key_at + 4].try_into().unwrap();
                let body: Vec<u8> = plain[key_at + 4..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[i % 4])
                    .collect();
                assert!(body == payload, "{n} bytes over {version:?}");
            }
        }
    }

    /// A message handed out whole takes the link's buffer with it (no copy) when less than it
    /// follows in the buffer; the rest stays and is read next, in order. Not twice, nor after
    /// another event; a reassembled message is handed over too.
    #[test]
    fn take_message_hands_the_buffer_over() {
        let (mut client, mut server) = opened(configs());
        let big: Vec<u8> = (0..12_000u32).map(|i| (i * 3) as u8).collect();
        server.send_message(&big);
        server.send_message(b"small");
        server.send_message(b"tiny");
        shuttle(&mut client, &mut server);
        // The big one, with less behind it: handed over.
        assert!(matches!(client.poll(), Some(Event::Message(m)) if m == &big[..]));
        let (buf, range) = client.take_message().expect("handed over");
        assert!(buf[range] == big[..]);
        assert!(client.take_message().is_none(), "not twice");
        // The small one, with more behind it: copied.
        assert!(matches!(client.poll(), Some(Event::Message(b"small"))));
        assert!(client.take_message().is_none());
        assert!(matches!(client.poll(), Some(Event::Message(b"tiny"))));
        assert!(client.poll().is_none());
        server.send_message(&big);
        shuttle(&mut client, &mut server);
        assert!(matches!(client.poll(), Some(Event::Message(m)) if m == &big[..]));
        let (buf, range) = client
            .take_message()
            .expect("the last one, nothing behind it");
        assert!(buf[range] == big[..]);
        assert!(client.poll().is_none());
        assert!(client.take_message().is_none(), "no message");
        // Fragments: the reassembled message is handed over.
        for (opcode, fin, part) in [
            (OpCode::Binary, false, &b"frag"[..]),
            (OpCode::Continuation, true, &b"ments"[..]),
        ] {
            let mut frame = vec![0; MAX_HEADER_LEN];
            frame.extend_from_slice(part);
            let end = frame.len();
            let start = server
                .encoder
                .frame_in_place(&mut frame, MAX_HEADER_LEN..end, opcode, fin, None)
                .unwrap();
            server.write_plain(&frame[start..]);
        }
        shuttle(&mut client, &mut server);
        assert!(matches!(client.poll(), Some(Event::Message(b"fragments"))));
        let (buf, range) = client.take_message().expect("reassembled");
        assert_eq!(&buf[range], b"fragments");
        assert!(client.poll().is_none());
        // The relay's side, whose frames come masked: unmasked in the buffer handed over.
        let (buf, range) = {
            let mut buf = vec![0; SEND_HEADROOM];
            buf.extend_from_slice(&big);
            client.send_in_place(buf, SEND_HEADROOM..SEND_HEADROOM + big.len());
            shuttle(&mut client, &mut server);
            assert!(matches!(server.poll(), Some(Event::Message(m)) if m == &big[..]));
            server.take_message().expect("nothing behind it")
        };
        assert!(buf[range] == big[..]);
        assert!(server.poll().is_none());
        // The link goes on: close both ways.
        client.close(close_code::NORMAL, "");
        shuttle(&mut client, &mut server);
        assert!(matches!(server.poll(), Some(Event::Closed { .. })));
    }

    /// Messages that came in one receive are handed out where they lie: the bytes behind one
    /// do not move to the buffer's front when it is handed out (they did once per message,
    /// most of a large read each time). A message's start left at the end stays, and comes
    /// out whole with the rest.
    #[test]
    fn messages_of_one_receive_are_handed_out_in_place() {
        let (mut client, mut server) = opened(configs());
        let sizes = [5000usize, 7000, 300, 20_000];
        for (i, n) in sizes.iter().enumerate() {
            server.send_message(&vec![i as u8; *n]);
        }
        let mut wire = Vec::new();
        server.take_output(&mut wire);
        // All but the end of the last message's second record: its first record opens.
        let cut = wire.len() - 200;
        client.receive_tls(&wire[..cut]).unwrap();
        let mut at = Vec::new();
        for (i, n) in sizes[..3].iter().enumerate() {
            match client.poll() {
                Some(Event::Message(m)) => {
                    assert!(
                        m.len() == *n && m.iter().all(|b| *b == i as u8),
                        "message {i}"
                    );
                    at.push(m.as_ptr() as usize);
                }
                other => panic!("message {i}: {other:?}"),
            }
        }
        assert_eq!(
            at[1] - at[0],
            sizes[0] + 4,
            "the second message did not move"
        );
        assert_eq!(at[2] - at[1], sizes[1] + 4, "nor the third");
        assert!(client.poll().is_none(), "the last one is not whole yet");
        client.receive_tls(&wire[cut..]).unwrap();
        assert!(matches!(client.poll(), Some(Event::Message(m)) if m == &[3u8; 20_000][..]));
        assert!(client.poll().is_none());
    }

    /// Sent in place behind queued output (a message, a ping), the record is appended after
    /// it; output sealed in place and taken with `take_output`, or partly written and put
    /// back, keeps its order.
    #[test]
    fn send_in_place_keeps_order_with_queued_and_unsent_output() {
        for configs in all_layouts() {
            let (mut client, mut server) = opened(configs);
            let in_place = |client: &mut Link, byte: u8, n: usize| {
                let mut buf = vec![0; SEND_HEADROOM];
                buf.resize(SEND_HEADROOM + n, byte);
                client.send_in_place(buf, SEND_HEADROOM..SEND_HEADROOM + n);
            };
            // Behind queued output.
            client.send_message(b"first");
            client.send_ping();
            in_place(&mut client, 2, 3000);
            // Alone, taken the moving way.
            let mut out = Vec::new();
            client.take_output(&mut out);
            server.receive_tls(&out).unwrap();
            in_place(&mut client, 3, 4000);
            client.take_output(&mut out);
            server.receive_tls(&out).unwrap();
            // Alone, written in two parts: the rest is put back, and more queued after it.
            in_place(&mut client, 4, 5000);
            let at = client.take_output_at(&mut out);
            server.receive_tls(&out[at..at + 100]).unwrap();
            client.unsent(&out[at + 100..]);
            client.send_message(b"last");
            shuttle(&mut client, &mut server);
            let mut got = Vec::new();
            while let Some(event) = server.poll() {
                match event {
                    Event::Message(m) => got.push(m.to_vec()),
                    other => panic!("{other:?}"),
                }
            }
            let want: Vec<Vec<u8>> = vec![
                b"first".to_vec(),
                vec![2; 3000],
                vec![3; 4000],
                vec![4; 5000],
                b"last".to_vec(),
            ];
            assert!(
                got == want,
                "{:?}",
                got.iter().map(Vec::len).collect::<Vec<_>>()
            );
        }
    }

    /// A send key at its cipher's limit changes before the record sealed in place: the
    /// KeyUpdate goes out first (else the relay's side could not open the record).
    #[test]
    fn send_in_place_sends_a_key_update_first() {
        let (mut client, mut server) = opened(configs_for(&[&rustls::version::TLS13]));
        let Tls::Records(layer) = &mut client.tls else {
            panic!("no record layer")
        };
        layer.set_tx_limit(3);
        for i in 0..10u8 {
            let mut buf = vec![0; SEND_HEADROOM];
            buf.resize(SEND_HEADROOM + 1000, i);
            client.send_in_place(buf, SEND_HEADROOM..SEND_HEADROOM + 1000);
            shuttle(&mut client, &mut server);
            match server.poll() {
                Some(Event::Message(m)) => assert!(m == &[i; 1000][..], "message {i}"),
                other => panic!("message {i}: {other:?}"),
            }
        }
        let Tls::Records(layer) = &client.tls else {
            panic!()
        };
        assert!(layer.seqs().0 < 3, "the key changed");
    }

    /// Sent before the link is open, or after it ended, nothing goes out (as with
    /// `send_message`), and the buffer goes back to the pool.
    #[test]
    fn send_in_place_sends_nothing_unless_open() {
        let token = AccessToken::new("g".repeat(40)).unwrap();
        let (mut client, mut server) = open_pair(&token, None);
        client.send_in_place(
            vec![1; SEND_HEADROOM + 10],
            SEND_HEADROOM..SEND_HEADROOM + 10,
        );
        shuttle(&mut client, &mut server);
        let Some(Event::Request(r)) = server.poll() else {
            panic!()
        };
        assert!(server.poll().is_none());
        server.accept(&r.accept_response("c"));
        shuttle(&mut client, &mut server);
        assert!(matches!(client.poll(), Some(Event::Open(_))));
        assert!(server.poll().is_none(), "nothing was sent before the 101");
        client.close(close_code::NORMAL, "bye");
        let before = client.pending_output();
        client.send_in_place(
            vec![1; SEND_HEADROOM + 10],
            SEND_HEADROOM..SEND_HEADROOM + 10,
        );
        assert_eq!(client.pending_output(), before);
    }

    #[test]
    fn bad_request_is_refused_with_its_status() {
        let token = AccessToken::new("a".repeat(40)).unwrap();
        let (cc, sc) = configs();
        let mut server = Link::server(rustls::server::UnbufferedServerConnection::new(sc).unwrap());
        // A client that speaks TLS but sends a request offering no subprotocol.
        let request = ClientRequest {
            host: "localhost",
            mode: Mode::Destination,
            access_token: Some(&token),
            services: &[],
            client_token: None,
            protocols: &[],
            key: [1; 16],
            user_agent: "test",
        };
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = Link::client(
            rustls::client::UnbufferedClientConnection::new(cc, name).unwrap(),
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
            Some(Event::Refused(ResponseError::Rejected { status, .. })) => assert_eq!(status, 400),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_instead_of_tls_is_a_tls_error() {
        let (_, sc) = configs();
        let mut server = Link::server(rustls::server::UnbufferedServerConnection::new(sc).unwrap());
        assert!(server.receive_tls(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(server.is_done());
        // Nothing more is read, nor kept.
        assert!(server.receive_tls(&[0x16; 1000]).is_ok());
        server.take_output(&mut Vec::new()); // the alert
        assert_eq!(server.buffer_capacity(), 0);
    }

    #[test]
    fn unmasked_client_frame_fails_the_link_with_1002() {
        let (mut client, mut server) = opened(configs());
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

    fn standby_pair(thing: &str) -> (Link, Link) {
        let (cc, sc) = configs();
        let name = ServerName::try_from("localhost").unwrap();
        let request = crate::tunnel::relay::notify::ClientRequest {
            host: "localhost",
            thing,
            key: [5; 16],
            user_agent: "test",
        };
        let client = Link::standby_client(
            rustls::client::UnbufferedClientConnection::new(cc, name).unwrap(),
            &request,
            9,
        );
        let server = Link::server(rustls::server::UnbufferedServerConnection::new(sc).unwrap());
        (client, server)
    }

    /// The standby channel: `GET /notify` is told from a tunnel's upgrade, its 101 checks
    /// out on the client, and the relay's messages flow; a refusal reaches the client as one.
    #[test]
    fn standby_request_accepted_or_refused() {
        let (mut client, mut server) = standby_pair("pump-1");
        shuttle(&mut client, &mut server);
        let Some(Event::Standby(r)) = server.poll() else {
            panic!("no standby request")
        };
        assert_eq!(r.thing, "pump-1");
        server.accept(&r.accept_response());
        server.send_message(b"{\"x\":1}");
        shuttle(&mut client, &mut server);
        assert!(matches!(client.poll(), Some(Event::Standing)));
        assert!(matches!(client.poll(), Some(Event::Message(b"{\"x\":1}"))));

        let (mut client, mut server) = standby_pair("pump-1");
        shuttle(&mut client, &mut server);
        assert!(matches!(server.poll(), Some(Event::Standby(_))));
        server.refuse(&ws::error_response(403, "not this thing", None));
        shuttle(&mut client, &mut server);
        assert!(matches!(
            client.poll(),
            Some(Event::Refused(ResponseError::Rejected { status: 403, .. }))
        ));

        let (mut client, mut server) = standby_pair("bad/name");
        shuttle(&mut client, &mut server);
        assert!(matches!(server.poll(), Some(Event::BadRequest(_))));
        shuttle(&mut client, &mut server);
        assert!(matches!(
            client.poll(),
            Some(Event::Refused(ResponseError::Rejected { status: 400, .. }))
        ));
    }
}

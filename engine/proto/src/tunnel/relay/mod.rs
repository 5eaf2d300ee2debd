//! What the relay does with a tunnel once both peers' WebSocket upgrades are done (the
//! protocol reference, §5, §7, §8 and the checklist of §11), sans-IO.
//!
//! A [`Session`] is one tunnel: its services, and per side (source, destination) the peer
//! connected now, its protocol version and the format it writes. It takes events (a peer
//! connected, was replaced, went away; the tunnel closed; time passed) and returns
//! [`Action`]s, and it judges each frame a peer sends ([`Session::frame_from`]) with a
//! [`Verdict`]: forward the frame's bytes unchanged to the other peer as one WebSocket message,
//! drop it, answer the sender, or close the sender's connection for a rule break.
//!
//! What it does not do: I/O, the clock (time comes in as `now`), WebSocket framing and pings
//! ([`crate::ws`]), cutting the byte stream into frames ([`super::FrameDecoder`]), tokens and
//! pairing (the registry), rate limits. It never re-encodes a forwarded frame: the frames it
//! writes itself are SERVICE_IDS and the resets it generates.
//!
//! A rule break costs only the peer that made it its connection: the verdict names that peer
//! alone, and when its connection is down ([`Session::peer_gone`]) the other peer hears a
//! STREAM_RESET for each stream that was open, as it does for any peer that goes away.

pub mod cookie;
pub mod notify;
mod streams;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use streams::{Peer, Stream};

use super::{Error, MAX_MESSAGE, Message, Sender, Type, Version};

/// One of a tunnel's two sides, by the mode its peer connected in (`local-proxy-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The peer in `source` mode: it accepts local connections and starts streams.
    Source,
    /// The peer in `destination` mode: it connects to the local services.
    Destination,
}

impl Side {
    /// The other side of the tunnel.
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Destination,
            Side::Destination => Side::Source,
        }
    }

    /// The [`Sender`] a message from this side's peer comes from.
    pub fn sender(self) -> Sender {
        match self {
            Side::Source => Sender::Source,
            Side::Destination => Sender::Destination,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Source => 0,
            Side::Destination => 1,
        }
    }

    /// `"source"` or `"destination"` (the `local-proxy-mode`), for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

/// WebSocket close codes and reasons the session sends, as [`Action::Close`] and
/// [`Verdict::ClosePeer`] carry them. Reasons are short, fixed texts (never a token).
pub mod close {
    pub use crate::ws::close_code::{INVALID_PAYLOAD, NORMAL, POLICY_VIOLATION};

    /// The reason sent to both peers when the tunnel is closed (`CloseTunnel`).
    pub const TUNNEL_CLOSED: &str = "tunnel closed";
    /// The reason sent to both peers when the tunnel's lifetime ends.
    pub const TUNNEL_EXPIRED: &str = "tunnel expired";
    /// The reason sent to a connection that a newer one of the same side replaced.
    pub const REPLACED: &str = "replaced by a newer connection";
    /// The reason sent for a frame that is not a tunnel message (it does not decode).
    pub const UNDECODABLE: &str = "not a tunnel message";
}

/// Why a tunnel closes for its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Closed by a call to the API (`CloseTunnel`).
    Closed,
    /// Its lifetime ended.
    Expired,
}

/// The session's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most connections (V3) the relay tracks in one service's stream. A CONNECTION_START
    /// beyond it is answered with a CONNECTION_RESET to the source and not forwarded, so a
    /// peer cannot make the relay hold more than this per service. localproxy itself stops at
    /// 128 (`tcp.max_active_connections`).
    pub max_connections: usize,
    /// How long a peer may send nothing (no frame, no ping, no pong) before the relay pings
    /// it. localproxy pings every 20 s; browsers and Node clients do not ping at all.
    pub ping_after: Duration,
    /// How long a peer may send nothing before the relay drops its connection (without a
    /// close frame: a peer that is alive reconnects at once). localproxy never times out a
    /// missing pong (reference §8), so half-open connections are the relay's to find.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            ping_after: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// What the session asks its caller to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `frame` (a whole tunnel frame, length prefix included) to the peer on `to`, as
    /// one binary WebSocket message.
    Send {
        /// The side whose peer gets it.
        to: Side,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Send a WebSocket ping to the peer on `to` (any payload; its pong, like anything else
    /// it sends, is activity: [`Session::peer_active`]).
    Ping {
        /// The side whose peer gets it.
        to: Side,
    },
    /// Send a close frame with `code` and `reason` to the peer on `to`, then end its
    /// connection; call [`Session::peer_gone`] once it is down.
    Close {
        /// The side whose peer gets it.
        to: Side,
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
    /// Send a close frame to the connection of `side` that was just replaced (not to the new
    /// peer), then end it. The session has already forgotten it: do not call
    /// [`Session::peer_gone`] for it.
    CloseReplaced {
        /// The side that has a new peer.
        side: Side,
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
    /// End the connection of the peer on `to` without a close frame (localproxy then
    /// reconnects at once, which is right for a connection that may be half-open); call
    /// [`Session::peer_gone`] once it is down.
    Disconnect {
        /// The side whose connection ends.
        to: Side,
        /// Why, for the log.
        reason: &'static str,
    },
}

/// What to do with one frame a peer sent ([`Session::frame_from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send the frame's bytes, unchanged, to the other peer as one binary WebSocket message.
    Forward,
    /// Nothing: the frame is stale (for a stream or connection that has ended) or has no one
    /// to go to (the other peer is not connected).
    Drop,
    /// Do not forward the frame; send these frames (each whole, as one WebSocket message) to
    /// the sender instead: the reset of a stream or connection that cannot go on.
    Reply(Vec<Vec<u8>>),
    /// The frame breaks the protocol's rules: send the sender a close frame with `code` and
    /// `reason`, end its connection and call [`Session::peer_gone`]. Frames it sent after
    /// this one are dropped. The other peer and the tunnel go on.
    ClosePeer {
        /// The WebSocket close code: [`close::POLICY_VIOLATION`] for a rule break,
        /// [`close::INVALID_PAYLOAD`] for a frame that is not a message.
        code: u16,
        /// What rule was broken.
        reason: &'static str,
    },
}

fn policy(reason: &'static str) -> Verdict {
    Verdict::ClosePeer {
        code: close::POLICY_VIOLATION,
        reason,
    }
}

/// One tunnel's session on the relay: see the [module documentation](self).
#[derive(Debug)]
pub struct Session {
    /// The tunnel's services, in the order SERVICE_IDS lists them; empty for a tunnel without
    /// named services (one unnamed service, the V1 form).
    services: Vec<String>,
    limits: Limits,
    /// The peer connected on each side now ([`Side::index`]).
    peers: [Option<Peer>; 2],
    /// The open stream of each service (index as in `services`; one slot when it is empty).
    streams: Vec<Option<Stream>>,
    closed: bool,
}

impl Session {
    /// A session for a tunnel with `services` (its `destinationConfig.services`, in order;
    /// empty for the V1 form), no peer connected yet.
    ///
    /// Each name must be a service name ([`super::check_service_id`]), and SERVICE_IDS must
    /// fit in one frame ([`Error::MessageTooLong`] otherwise: about 500 names of 128 bytes).
    pub fn new(services: Vec<String>, limits: Limits) -> Result<Session, Error> {
        for service in &services {
            super::check_service_id(service)?;
        }
        let ids = service_ids(&services);
        if ids.encoded_len() > MAX_MESSAGE {
            return Err(Error::MessageTooLong {
                len: ids.encoded_len(),
                max: MAX_MESSAGE,
            });
        }
        let slots = services.len().max(1);
        Ok(Session {
            services,
            limits,
            peers: [None, None],
            streams: vec![None; slots],
            closed: false,
        })
    }

    /// The tunnel's services.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// Whether a peer is connected on `side` (and not being closed).
    pub fn is_connected(&self, side: Side) -> bool {
        self.live(side).is_some()
    }

    /// Call when a peer's WebSocket upgrade on `side` is done, with the version its
    /// subprotocol named. It sends SERVICE_IDS with the tunnel's services to the new peer, as
    /// the service does right after the 101 (§5, §7), unless the peer speaks V1, which does
    /// not know that type. A V1 peer on a tunnel with several services is closed at once
    /// (§6: V1 carries one service). If a peer is already connected on `side`, this is
    /// [`Session::peer_replaced`].
    pub fn peer_connected(&mut self, side: Side, version: Version, now: Instant) -> Vec<Action> {
        if self.peers[side.index()].is_some() {
            return self.peer_replaced(side, version, now);
        }
        let mut actions = Vec::new();
        self.connect(side, version, now, &mut actions);
        actions
    }

    /// Call when a peer reconnects on `side` (with the same token and client token) while
    /// the session still holds the old connection. The old connection is closed
    /// ([`Action::CloseReplaced`]), the other peer gets a STREAM_RESET for each open stream
    /// (§8: otherwise it would take the new peer's "stream 1" for the old one), and the new
    /// peer is connected as by [`Session::peer_connected`].
    pub fn peer_replaced(&mut self, side: Side, version: Version, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.peers[side.index()].is_some() {
            actions.push(Action::CloseReplaced {
                side,
                code: close::NORMAL,
                reason: close::REPLACED,
            });
            self.disconnect(side, &mut actions);
        }
        self.connect(side, version, now, &mut actions);
        actions
    }

    /// Call when the connection of the peer on `side` is down (it closed, failed, or was
    /// closed by a verdict or action). The other peer gets a STREAM_RESET for each open
    /// stream: its local connections have no other end any more. Nothing if no peer was
    /// connected on `side`. Call it for the connection the session holds on `side`, never for
    /// one it has replaced ([`Action::CloseReplaced`]): that one is forgotten already.
    pub fn peer_gone(&mut self, side: Side) -> Vec<Action> {
        let mut actions = Vec::new();
        self.disconnect(side, &mut actions);
        actions
    }

    /// Call when the tunnel is closed or its lifetime ends: each connected peer gets a close
    /// frame (1000, with [`close::TUNNEL_CLOSED`] or [`close::TUNNEL_EXPIRED`]); localproxy
    /// then exits with status 0 and does not reconnect (§8). Every later frame is dropped and
    /// a peer that connects after is closed the same way.
    pub fn tunnel_closed(&mut self, why: Closing) -> Vec<Action> {
        self.closed = true;
        let reason = match why {
            Closing::Closed => close::TUNNEL_CLOSED,
            Closing::Expired => close::TUNNEL_EXPIRED,
        };
        let mut actions = Vec::new();
        for side in [Side::Source, Side::Destination] {
            if let Some(peer) = self.live_mut(side) {
                peer.closing = true;
                actions.push(Action::Close {
                    to: side,
                    code: close::NORMAL,
                    reason,
                });
            }
        }
        self.streams.iter_mut().for_each(|s| *s = None);
        actions
    }

    /// Call whenever bytes arrive from the peer on `side` (frames, pings, pongs): it resets
    /// the peer's idle timer.
    pub fn peer_active(&mut self, side: Side, now: Instant) {
        if let Some(peer) = self.peers[side.index()].as_mut() {
            peer.last_heard = now;
            peer.pinged = false;
        }
    }

    /// When [`Session::handle_timeout`] has something to do next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [Side::Source, Side::Destination]
            .into_iter()
            .filter_map(|side| self.live(side))
            .map(|peer| self.deadline(peer))
            .min()
    }

    /// Call at (or after) the time [`Session::poll_timeout`] gave. A peer silent for
    /// [`Limits::ping_after`] is pinged once; one silent for [`Limits::idle_timeout`] is
    /// disconnected ([`Action::Disconnect`]).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let limits = self.limits;
        let mut actions = Vec::new();
        for side in [Side::Source, Side::Destination] {
            let Some(peer) = self.live_mut(side) else {
                continue;
            };
            let silent = now.saturating_duration_since(peer.last_heard);
            if silent >= limits.idle_timeout {
                peer.closing = true;
                actions.push(Action::Disconnect {
                    to: side,
                    reason: "idle",
                });
            } else if silent >= limits.ping_after && !peer.pinged {
                peer.pinged = true;
                actions.push(Action::Ping { to: side });
            }
        }
        actions
    }

    /// Judges a whole frame (length prefix included, as [`super::Frame::bytes`] gives it) from
    /// the peer on `side`: decodes it and calls [`Session::frame_from`]. A frame that does not
    /// decode closes the sender with [`close::INVALID_PAYLOAD`].
    pub fn frame_bytes_from(&mut self, side: Side, frame: &[u8]) -> Verdict {
        let Some(message_bytes) = frame.get(super::LENGTH_PREFIX..) else {
            return self.undecodable(side);
        };
        match Message::decode(message_bytes) {
            Ok(message) => self.frame_from(side, &message),
            Err(_) => self.undecodable(side),
        }
    }

    /// Judges one message from the peer on `side`, decoded from a frame the caller holds;
    /// on [`Verdict::Forward`] the caller sends that frame's bytes unchanged to the other
    /// peer. The rules, and what breaking each costs, are in `docs/relay.md` ("Relay
    /// session").
    pub fn frame_from(&mut self, side: Side, message: &Message<'_>) -> Verdict {
        if self.closed || self.live(side).is_none() {
            return Verdict::Drop;
        }
        let verdict = self.judge(side, message);
        if let Verdict::ClosePeer { .. } = verdict
            && let Some(peer) = self.live_mut(side)
        {
            peer.closing = true;
        }
        verdict
    }

    /// Connections tracked in the open streams, over all services: what the session's memory
    /// grows with (at most [`Limits::max_connections`] per service).
    pub fn tracked_connections(&self) -> usize {
        self.streams.iter().flatten().map(Stream::len).sum()
    }

    /// The open stream of `service` ("" for the tunnel without named services), if any.
    pub fn open_stream(&self, service: &str) -> Option<i32> {
        let slot = if self.services.is_empty() {
            (service.is_empty()).then_some(0)?
        } else {
            self.services.iter().position(|s| s == service)?
        };
        self.streams[slot].as_ref().map(|s| s.id)
    }

    fn undecodable(&mut self, side: Side) -> Verdict {
        if self.closed || self.live(side).is_none() {
            return Verdict::Drop;
        }
        if let Some(peer) = self.live_mut(side) {
            peer.closing = true;
        }
        Verdict::ClosePeer {
            code: close::INVALID_PAYLOAD,
            reason: close::UNDECODABLE,
        }
    }

    fn live(&self, side: Side) -> Option<&Peer> {
        self.peers[side.index()].as_ref().filter(|p| !p.closing)
    }

    fn live_mut(&mut self, side: Side) -> Option<&mut Peer> {
        self.peers[side.index()].as_mut().filter(|p| !p.closing)
    }

    fn deadline(&self, peer: &Peer) -> Instant {
        peer.last_heard
            + if peer.pinged {
                self.limits.idle_timeout
            } else {
                self.limits.ping_after
            }
    }

    fn connect(&mut self, side: Side, version: Version, now: Instant, actions: &mut Vec<Action>) {
        let mut peer = Peer::new(version, self.streams.len(), now);
        if self.closed {
            peer.closing = true;
            actions.push(Action::Close {
                to: side,
                code: close::NORMAL,
                reason: close::TUNNEL_CLOSED,
            });
        } else if version == Version::V1 && self.services.len() > 1 {
            peer.closing = true;
            actions.push(Action::Close {
                to: side,
                code: close::POLICY_VIOLATION,
                reason: "a V1 peer cannot use a tunnel with several services",
            });
        } else if version >= Version::V2 {
            actions.push(Action::Send {
                to: side,
                frame: frame_of(&service_ids(&self.services)),
            });
        }
        self.peers[side.index()] = Some(peer);
    }

    /// Forgets the peer on `side` and resets every open stream towards the other peer.
    fn disconnect(&mut self, side: Side, actions: &mut Vec<Action>) {
        if self.peers[side.index()].take().is_none() {
            return;
        }
        let other = side.other();
        for slot in 0..self.streams.len() {
            let Some(stream) = self.streams[slot].take() else {
                continue;
            };
            if let Some(peer) = self.live(other) {
                let service = self.service_for(peer, slot);
                let reset = Message {
                    kind: Type::STREAM_RESET,
                    stream_id: stream.id,
                    service_id: service,
                    ..Message::default()
                };
                actions.push(Action::Send {
                    to: other,
                    frame: frame_of(&reset),
                });
            }
        }
    }

    /// The serviceId to write to `peer` for the service in `slot`: none to a peer that writes
    /// none (V1 format), the name to one that does.
    fn service_for(&self, peer: &Peer, slot: usize) -> &str {
        let writes = peer
            .with_service_id
            .unwrap_or(peer.version.writes_service_id());
        match self.services.get(slot) {
            Some(name) if writes => name,
            _ => "",
        }
    }

    /// The slot of the service a stream-scoped message names, checking that it is one of the
    /// tunnel's and that the peer keeps to one format (§4).
    fn service_slot(&mut self, side: Side, message: &Message<'_>) -> Result<usize, Verdict> {
        let named = !message.service_id.is_empty();
        let slot = if !named {
            if self.services.len() > 1 {
                return Err(policy(
                    "a message without serviceId (V1) on a tunnel with several services",
                ));
            }
            0
        } else {
            match self.services.iter().position(|s| s == message.service_id) {
                Some(slot) => slot,
                None => return Err(policy("serviceId is not one of the tunnel's services")),
            }
        };
        let peer = self.live_mut(side).expect("checked by frame_from");
        match peer.with_service_id {
            None => peer.with_service_id = Some(named),
            Some(before) if before != named => {
                return Err(policy(
                    "a peer switched between messages with and without serviceId",
                ));
            }
            Some(_) => {}
        }
        Ok(slot)
    }

    fn judge(&mut self, side: Side, message: &Message<'_>) -> Verdict {
        if message.unknown_fields {
            return policy("a message with fields outside the schema");
        }
        match message.check(side.sender(), Version::V3, MAX_MESSAGE) {
            // A type the relay does not know, marked ignorable: passed on, for the other peer
            // to drop or (another splice-engine agent) to understand.
            Ok(false) => return self.to_other(side),
            Ok(true) => {}
            Err(error) => return policy(rule_broken(&error)),
        }
        let slot = match self.service_slot(side, message) {
            Ok(slot) => slot,
            Err(verdict) => return verdict,
        };
        match message.kind {
            Type::STREAM_START => self.stream_start(slot, message),
            Type::CONNECTION_START => self.connection_start(slot, message),
            Type::DATA => self.data(side, slot, message),
            Type::STREAM_RESET => self.stream_reset(side, slot, message),
            Type::CONNECTION_RESET => self.connection_reset(side, slot, message),
            // `check` lets no other type from a peer through.
            _ => policy("a message the relay does not take from a peer"),
        }
    }

    /// Forward if the other peer is there to take it.
    fn to_other(&self, side: Side) -> Verdict {
        if self.live(side.other()).is_some() {
            Verdict::Forward
        } else {
            Verdict::Drop
        }
    }

    fn stream_start(&mut self, slot: usize, message: &Message<'_>) -> Verdict {
        let source = self.live_mut(Side::Source).expect("the sender");
        source.started[slot] = true;
        let Some(destination) = self.live_mut(Side::Destination) else {
            // No one to start it with: the source's local connection is reset rather than
            // left waiting for a destination that may never come.
            self.streams[slot] = None;
            return Verdict::Reply(vec![reset_of(Type::STREAM_RESET, message)]);
        };
        destination.started[slot] = true;
        // A new stream replaces the open one (§5); the destination closes the old one's
        // connections itself.
        self.streams[slot] = Some(Stream::new(message.stream_id, message.connection()));
        Verdict::Forward
    }

    fn connection_start(&mut self, slot: usize, message: &Message<'_>) -> Verdict {
        let started = self.live(Side::Source).expect("the sender").started[slot];
        let destination = self.live(Side::Destination).map(|peer| peer.version);
        // A destination that negotiated V1 or V2 does not know CONNECTION_START and would
        // refuse it (and reconnect, with a token that may be spent): the source's extra
        // connection is reset instead, as at the limit.
        let max = match destination {
            Some(Version::V3) => self.limits.max_connections,
            _ => 0,
        };
        let connection = message.connection();
        let stream = match self.streams[slot].as_mut() {
            Some(stream) if stream.id == message.stream_id => stream,
            _ if !started => return policy("CONNECTION_START before STREAM_START"),
            // The stream has ended (reset by either side or by the relay): so has this.
            _ => return Verdict::Reply(vec![reset_of(Type::CONNECTION_RESET, message)]),
        };
        if stream.contains(connection) && max > 0 {
            // A duplicate: the destination answers it with a CONNECTION_RESET (§5).
            return Verdict::Forward;
        }
        if stream.start(connection, max) {
            Verdict::Forward
        } else {
            Verdict::Reply(vec![reset_of(Type::CONNECTION_RESET, message)])
        }
    }

    fn data(&mut self, side: Side, slot: usize, message: &Message<'_>) -> Verdict {
        if !self.live(side).expect("the sender").started[slot] {
            return policy("DATA before STREAM_START");
        }
        if self.live(side.other()).is_none() {
            return Verdict::Drop;
        }
        match self.streams[slot].as_ref() {
            Some(stream) if stream.id == message.stream_id => {
                let connection = message.connection();
                if stream.contains(connection) {
                    Verdict::Forward
                } else if stream.was_started(connection) {
                    Verdict::Drop
                } else {
                    policy("DATA for a connection that was never started")
                }
            }
            // Stale: left over from a stream that has ended (§5: receivers drop it too).
            _ => Verdict::Drop,
        }
    }

    fn stream_reset(&mut self, side: Side, slot: usize, message: &Message<'_>) -> Verdict {
        match self.streams[slot].as_ref() {
            Some(stream) if stream.id == message.stream_id => {
                self.streams[slot] = None;
                self.to_other(side)
            }
            // Not the open stream: the receiver would ignore it (§5).
            _ => Verdict::Drop,
        }
    }

    fn connection_reset(&mut self, side: Side, slot: usize, message: &Message<'_>) -> Verdict {
        let ended = match self.streams[slot].as_mut() {
            Some(stream) if stream.id == message.stream_id => stream.end(message.connection()),
            _ => false,
        };
        if ended {
            self.to_other(side)
        } else {
            // A connection already ended (resets cross in flight, §5) or of a stream that has
            // ended: forwarding it could end a newer connection with the same id.
            Verdict::Drop
        }
    }
}

/// The close reason for a message that [`Message::check`] refuses.
fn rule_broken(error: &Error) -> &'static str {
    match error {
        Error::NoType => "a message without a type",
        Error::UnknownType(_) => "a message of an unknown type, not ignorable",
        Error::NotFromSender { .. } => "a message type this side may not send",
        Error::NoStreamId(_) => "a stream message with streamId 0",
        Error::NoConnectionId(_) => "a connection message without connectionId",
        _ => "a message that breaks the protocol's rules",
    }
}

/// The reset (STREAM_RESET or CONNECTION_RESET) of what `message` started, in the sender's
/// own format: its serviceId as it wrote it, and for CONNECTION_RESET its connectionId.
fn reset_of(kind: Type, message: &Message<'_>) -> Vec<u8> {
    let reset = Message {
        kind,
        stream_id: message.stream_id,
        service_id: message.service_id,
        connection_id: if kind == Type::CONNECTION_RESET {
            message.connection_id
        } else {
            0
        },
        ..Message::default()
    };
    frame_of(&reset)
}

/// SERVICE_IDS with the tunnel's services.
fn service_ids(services: &[String]) -> Message<'_> {
    Message {
        kind: Type::SERVICE_IDS,
        available_service_ids: services.iter().map(String::as_str).collect(),
        ..Message::default()
    }
}

fn frame_of(message: &Message<'_>) -> Vec<u8> {
    let mut frame = Vec::new();
    message
        .append_frame(&mut frame)
        .expect("the relay's own messages fit a frame (SERVICE_IDS checked by Session::new)");
    frame
}

//! What both agents keep: services, their streams and connections, the local connections'
//! pending bytes (flow control), the frames and actions to hand out.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{Action, Error, Limits, LocalId};
use crate::tunnel::{DataFraming, FrameDecoder, Message, Sender, Type, Version, check_service_id};

/// Whether the peer takes half-closes on a service's active stream (see `half_close.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerHalfClose {
    /// Its HELLO has not come yet, nor anything else about the stream.
    Unknown,
    /// It said HELLO.
    Yes,
    /// It said something else first, or the wait is over, or the feature is off.
    No,
}

/// One service of the agent.
#[derive(Debug)]
pub(super) struct Service {
    /// The name as configured; empty for the bare (V1) form.
    pub name: String,
    /// The name written as serviceId: the configured one, or the tunnel's only one adopted by
    /// the bare form (§5); empty when the tunnel has none.
    pub wire: String,
    /// The tunnel serves it (SERVICE_IDS named it, or it is the bare form).
    pub served: bool,
    /// The active stream.
    pub stream: Option<i32>,
    /// The connections of the active stream, by connectionId (1 for V1/V2).
    pub conns: BTreeMap<u32, LocalId>,
    /// Source: the last connectionId given in the active stream.
    pub last_conn: u32,
    /// Whether the peer takes half-closes on the active stream (reset with each stream).
    pub peer_half_close: PeerHalfClose,
    /// Destination: CONNECTION_STARTs reset because the service had
    /// [`Limits::connections_per_service`] open, not yet taken by the driver.
    pub over_limit: u64,
    /// Source: the peer said something about the active stream that only a peer that took its
    /// STREAM_START says (DATA, a reset of its first connection, an extension message). A
    /// relay may drop a STREAM_START (one of another make, while the destination is away):
    /// see [`super::START_WAIT`].
    pub heard: bool,
}

/// A local connection's state.
#[derive(Debug)]
pub(super) struct Local {
    pub service: usize,
    pub stream: i32,
    pub conn: u32,
    /// Bytes handed out in [`Action::Write`] not reported written, plus `held`.
    pub pending: usize,
    /// Counted in `Core::over`.
    pub over: bool,
    /// Destination: the connection is up; until then DATA is held.
    pub connected: bool,
    pub held: Vec<Vec<u8>>,
    /// Destination: the peer ended it before it connected; it is out of its stream and is
    /// finished once it connects.
    pub finishing: bool,
    /// Its local side sent its end (EOF) and the peer was told with a HALF_CLOSE, or will be
    /// once it is known whether it takes one (`eof_waiting`).
    pub local_eof: bool,
    /// The local EOF waits for the peer's HELLO (or a sign that none comes).
    pub eof_waiting: bool,
    /// The peer half-closed it: its write side is (to be) shut once the bytes before are out.
    pub peer_eof: bool,
}

#[derive(Debug)]
pub(super) struct Core {
    pub limits: Limits,
    pub max_version: Version,
    /// The format written to the peer: `max_version` until the peer shows an older one (§6).
    pub format: Version,
    pub services: Vec<Service>,
    /// SERVICE_IDS arrived on this tunnel connection.
    pub setup: bool,
    pub locals: HashMap<LocalId, Local>,
    next_local: u64,
    over: usize,
    paused: bool,
    pub actions: VecDeque<Action>,
    pub decoder: FrameDecoder,
}

impl Core {
    pub fn new(services: &[&str], max_version: Version, limits: Limits) -> Result<Self, Error> {
        let bare = services.len() == 1 && services[0].is_empty();
        if services.is_empty() {
            return Err(Error::Config("no service".into()));
        }
        if !bare {
            for (i, name) in services.iter().enumerate() {
                check_service_id(name).map_err(|e| Error::Config(e.to_string()))?;
                if services[..i].contains(name) {
                    return Err(Error::Config(format!("service {name:?} given twice")));
                }
            }
        }
        if limits.payload == 0 || limits.payload > crate::tunnel::MAX_PAYLOAD || limits.pending == 0
        {
            return Err(Error::Config("limits out of range".into()));
        }
        Ok(Core {
            limits,
            max_version,
            format: max_version,
            services: services
                .iter()
                .map(|name| Service {
                    name: name.to_string(),
                    wire: name.to_string(),
                    served: false,
                    stream: None,
                    conns: BTreeMap::new(),
                    last_conn: 0,
                    peer_half_close: PeerHalfClose::No,
                    over_limit: 0,
                    heard: false,
                })
                .collect(),
            setup: false,
            locals: HashMap::new(),
            next_local: 0,
            over: 0,
            paused: false,
            actions: VecDeque::new(),
            decoder: FrameDecoder::new(),
        })
    }

    /// The bare (one unnamed service, V1) form.
    pub fn bare(&self) -> bool {
        self.services.len() == 1 && self.services[0].name.is_empty()
    }

    /// SERVICE_IDS (§5): the first one sets the services up, later ones are ignored.
    /// Returns whether it was the first.
    pub fn service_ids(&mut self, ids: &[&str]) -> Result<bool, Error> {
        if self.setup {
            return Ok(false);
        }
        if self.bare() {
            let mut unique: Vec<&str> = ids.to_vec();
            unique.dedup();
            match unique.as_slice() {
                [] => self.services[0].wire.clear(),
                [one] => {
                    // Written in every frame: a peer's name must be one a frame has room for.
                    check_service_id(one)?;
                    self.services[0].wire = one.to_string();
                }
                more => return Err(Error::TooManyServices(more.len())),
            }
            self.services[0].served = true;
        } else {
            for service in &mut self.services {
                if !ids.contains(&service.name.as_str()) {
                    return Err(Error::ServiceNotInTunnel(service.name.clone()));
                }
                service.served = true;
            }
        }
        self.setup = true;
        Ok(true)
    }

    /// The service a peer's message names: by serviceId, or, without one (V1), the only one.
    pub fn service_of(&self, service_id: &str) -> Option<usize> {
        if service_id.is_empty() {
            (self.services.len() == 1).then_some(0)
        } else {
            self.services.iter().position(|s| s.wire == service_id)
        }
    }

    /// A new local connection of `service`'s active stream.
    pub fn add_local(&mut self, service: usize, conn: u32, connected: bool) -> LocalId {
        let id = LocalId(self.next_local);
        self.next_local += 1;
        let svc = &mut self.services[service];
        let stream = svc.stream.expect("a local joins an active stream");
        svc.conns.insert(conn, id);
        self.locals.insert(
            id,
            Local {
                service,
                stream,
                conn,
                pending: 0,
                over: false,
                connected,
                held: Vec::new(),
                finishing: false,
                local_eof: false,
                eof_waiting: false,
                peer_eof: false,
            },
        );
        id
    }

    /// Forgets a local connection (and closes it when `close`).
    pub fn remove_local(&mut self, id: LocalId, close: bool) -> Option<Local> {
        let local = self.locals.remove(&id)?;
        let svc = &mut self.services[local.service];
        if svc.stream == Some(local.stream) && svc.conns.get(&local.conn) == Some(&id) {
            svc.conns.remove(&local.conn);
        }
        if local.over {
            self.over -= 1;
        }
        if close {
            self.actions.push_back(Action::Close { local: id });
        }
        self.maybe_resume();
        Some(local)
    }

    /// Ends `service`'s active stream: closes (aborts) its local connections.
    pub fn end_stream(&mut self, service: usize) {
        self.end_stream_with(service, false);
    }

    /// Ends `service`'s active stream: its local connections are finished (`finish`: the
    /// peer closed them, what it sent is written first) or closed (aborted).
    pub fn end_stream_with(&mut self, service: usize, finish: bool) {
        let conns: Vec<LocalId> = self.services[service].conns.values().copied().collect();
        for id in conns {
            if finish {
                self.finish_local(id);
            } else {
                self.remove_local(id, true);
            }
        }
        self.services[service].stream = None;
        self.services[service].last_conn = 0;
    }

    /// The tunnel connection is gone: every local connection closes, streams and counters
    /// start again, SERVICE_IDS is awaited again (§8).
    pub fn tunnel_lost(&mut self) {
        for service in 0..self.services.len() {
            self.end_stream(service);
            self.services[service].served = false;
        }
        let ids: Vec<LocalId> = self.locals.keys().copied().collect();
        for id in ids {
            self.remove_local(id, true);
        }
        self.setup = false;
        self.format = self.max_version;
        self.decoder = FrameDecoder::new();
        if self.paused {
            self.paused = false;
            self.actions.push_back(Action::ResumeTunnelReads);
        }
    }

    /// DATA from the tunnel for a local connection: to write now, or held until it connects.
    pub fn deliver(&mut self, id: LocalId, payload: &[u8]) {
        let Some(local) = self.locals.get_mut(&id) else {
            return;
        };
        if payload.is_empty() {
            return;
        }
        local.pending += payload.len();
        if local.connected {
            self.actions.push_back(Action::Write {
                local: id,
                data: payload.to_vec(),
            });
        } else {
            local.held.push(payload.to_vec());
        }
        if !local.over && local.pending > self.limits.pending {
            local.over = true;
            self.over += 1;
            if !self.paused {
                self.paused = true;
                self.actions.push_back(Action::PauseTunnelReads);
            }
        }
    }

    /// The driver wrote `n` bytes to a local connection.
    pub fn written(&mut self, id: LocalId, n: usize) {
        let Some(local) = self.locals.get_mut(&id) else {
            return;
        };
        local.pending = local.pending.saturating_sub(n);
        if local.over && local.pending <= self.limits.pending / 2 {
            local.over = false;
            self.over -= 1;
        }
        self.maybe_resume();
    }

    /// A destination's connection is up: hand out what was held (and finish it if the peer
    /// ended it meanwhile).
    pub fn connected(&mut self, id: LocalId) {
        let Some(local) = self.locals.get_mut(&id) else {
            return;
        };
        local.connected = true;
        let (finishing, peer_eof) = (local.finishing, local.peer_eof);
        for data in std::mem::take(&mut local.held) {
            self.actions.push_back(Action::Write { local: id, data });
        }
        if finishing {
            self.finish_local(id);
        } else if peer_eof {
            self.actions.push_back(Action::ShutdownWrite { local: id });
        }
    }

    /// The peer ended the local connection `id` (its own local side closed): what it sent
    /// is written out, then the connection is closed ([`Action::Finish`]). One not connected
    /// yet leaves its stream and is finished once it connects.
    pub fn finish_local(&mut self, id: LocalId) {
        let Some(local) = self.locals.get_mut(&id) else {
            return;
        };
        if local.connected {
            self.actions.push_back(Action::Finish { local: id });
            self.remove_local(id, false);
        } else {
            local.finishing = true;
            let (service, conn) = (local.service, local.conn);
            let conns = &mut self.services[service].conns;
            if conns.get(&conn) == Some(&id) {
                conns.remove(&conn);
            }
        }
    }

    fn maybe_resume(&mut self) {
        if self.paused && self.over == 0 {
            self.paused = false;
            self.actions.push_back(Action::ResumeTunnelReads);
        }
    }

    /// Whether the agent asked for the tunnel's reads to pause.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Queues a frame of `kind` for `service`'s stream `stream`, connection `conn`, in the
    /// format written to the peer.
    pub fn send(&mut self, kind: Type, service: usize, stream: i32, conn: u32, payload: &[u8]) {
        let (service_id, connection_id) = self.format.ids(&self.services[service].wire, conn);
        let message = Message {
            kind,
            stream_id: stream,
            payload,
            service_id,
            connection_id,
            ..Message::default()
        };
        let mut frame = Vec::with_capacity(crate::tunnel::LENGTH_PREFIX + message.encoded_len());
        message
            .append_frame(&mut frame)
            .expect("an agent's frame fits: payload and serviceId are bounded");
        self.actions.push_back(Action::Send(frame));
    }

    /// The head and tail of a DATA frame of `len` bytes read from `id`, to frame them in place.
    pub fn data_framing(&self, id: LocalId, len: usize) -> Option<DataFraming> {
        let local = self.locals.get(&id)?;
        if len > self.limits.payload {
            return None;
        }
        let (service_id, connection_id) =
            (self.format).ids(&self.services[local.service].wire, local.conn);
        DataFraming::new(local.stream, service_id, connection_id, len).ok()
    }

    /// Local bytes read from a connection: DATA messages of at most `limits.payload` bytes.
    pub fn local_data(&mut self, id: LocalId, data: &[u8]) {
        let Some(local) = self.locals.get(&id) else {
            return;
        };
        let (service, stream, conn) = (local.service, local.stream, local.conn);
        for chunk in data.chunks(self.limits.payload) {
            self.send(Type::DATA, service, stream, conn, chunk);
        }
    }

    /// The local connection `id` ended on its own: tell the peer (§5: CONNECTION_RESET in V3,
    /// STREAM_RESET in V1 and V2, where a stream is one connection).
    pub fn local_closed(&mut self, id: LocalId) {
        let Some(local) = self.remove_local(id, false) else {
            return;
        };
        let service = local.service;
        if self.services[service].stream != Some(local.stream) {
            return;
        }
        if self.format.writes_connection_id() {
            self.send(
                Type::CONNECTION_RESET,
                service,
                local.stream,
                local.conn,
                &[],
            );
        } else {
            self.send(Type::STREAM_RESET, service, local.stream, local.conn, &[]);
            self.end_stream(service);
        }
    }

    /// The messages every agent takes the same way; returns the message back when it is the
    /// caller's to handle.
    pub fn common<'m>(
        &mut self,
        message: &'m Message<'m>,
    ) -> Result<Option<&'m Message<'m>>, Error> {
        match message.kind {
            Type::SERVICE_IDS => {
                self.service_ids(&message.available_service_ids)?;
                Ok(Some(message))
            }
            Type::SESSION_RESET => {
                for service in 0..self.services.len() {
                    self.end_stream(service);
                }
                Ok(None)
            }
            Type::STREAM_RESET => {
                if let Some(service) = self.service_of(message.service_id)
                    && self.services[service].stream == Some(message.stream_id)
                {
                    // In V1 and V2 it is how the peer's local connection ends (a close, not
                    // a cut); in V3 that is CONNECTION_RESET, and a STREAM_RESET is trouble
                    // (a target out of reach, a peer replaced at the relay).
                    let finish = !self.format.writes_connection_id();
                    self.end_stream_with(service, finish);
                }
                Ok(None)
            }
            Type::CONNECTION_RESET => {
                self.seen(message);
                if let Some(service) = self.service_of(message.service_id)
                    && self.services[service].stream == Some(message.stream_id)
                {
                    // A destination that never took the STREAM_START resets the stream's
                    // later connections (CONNECTION_START of a stream it does not have), but
                    // only one that took it knows the first.
                    if message.connection() == 1 {
                        self.services[service].heard = true;
                    }
                    if let Some(&id) = self.services[service].conns.get(&message.connection()) {
                        self.finish_local(id);
                    }
                    self.peer_spoke(service);
                }
                Ok(None)
            }
            Type::DATA => {
                self.seen(message);
                // Stale DATA (an older stream, a connection reset in flight) is dropped (§5).
                if let Some(service) = self.service_of(message.service_id)
                    && self.services[service].stream == Some(message.stream_id)
                {
                    self.services[service].heard = true;
                    if let Some(&id) = self.services[service].conns.get(&message.connection()) {
                        self.deliver(id, message.payload);
                    }
                    self.peer_spoke(service);
                }
                Ok(None)
            }
            _ => Ok(Some(message)),
        }
    }

    /// A peer's DATA or CONNECTION_RESET shows its format: fall back to it (§6).
    fn seen(&mut self, message: &Message<'_>) {
        let before = self.format;
        self.format = super::fall_back(self.format, message.format());
        if before.writes_connection_id() && !self.format.writes_connection_id() {
            // The peer knows one connection per stream, connection 1: the others are lost to it.
            let others: Vec<LocalId> = (self.locals.iter())
                .filter(|(_, local)| local.conn != 1)
                .map(|(&id, _)| id)
                .collect();
            for id in others {
                self.remove_local(id, true);
            }
        }
    }

    /// Decodes and checks each frame of `bytes` and hands each message to `handle`.
    pub fn frames<T>(
        this: &mut T,
        bytes: &[u8],
        core: fn(&mut T) -> &mut Core,
        sender: Sender,
        handle: fn(&mut T, &Message<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut decoder = std::mem::take(&mut core(this).decoder);
        let mut result = Ok(());
        let mut frames = decoder.handle_bytes(bytes);
        while let Some(frame) = frames.next_frame() {
            let step = frame.decode().map_err(Error::from).and_then(|message| {
                let from = if matches!(message.kind, Type::SERVICE_IDS | Type::SESSION_RESET) {
                    Sender::Relay
                } else {
                    sender
                };
                // Every type is known here whatever format is written; long payloads are
                // taken (§12.3: whatever a frame holds).
                if message.check(from, Version::V3, crate::tunnel::MAX_MESSAGE)? {
                    handle(this, &message)
                } else {
                    // An unknown type marked ignorable: splice-engine's own, or dropped.
                    core(this).extension(&message);
                    Ok(())
                }
            });
            if step.is_err() {
                result = step;
                break;
            }
        }
        core(this).decoder = decoder;
        result
    }
}

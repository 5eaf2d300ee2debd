//! The destination agent: STREAM_START and CONNECTION_START open local connections to the
//! service's target; DATA goes to them in order; their end or failure resets only their
//! connection or stream (§5).

use super::core::Core;
use super::{Action, Error, Limits, LocalId};
use crate::tunnel::{Message, Sender, Type, Version};

/// The destination agent's state machine.
///
/// Give it the services it connects to (names, or one empty name for the bare V1 form) and
/// the newest format it may write; it writes the format of the source's STREAM_START
/// (serviceId and connectionId as the source sent them), up to that one. Below V3 it refuses
/// CONNECTION_START as an older peer does (it could not answer it).
#[derive(Debug)]
pub struct Destination {
    core: Core,
}

impl Destination {
    /// A destination for `services` (names, or `[""]` for the bare V1 form), writing at most
    /// the `version` format.
    pub fn new(services: &[&str], version: Version, limits: Limits) -> Result<Self, Error> {
        Ok(Destination {
            core: Core::new(services, version, limits)?,
        })
    }

    /// How many `CONNECTION_START`s of service `service` (its index in the configured list)
    /// were reset since the last call because it had [`Limits::connections_per_service`]
    /// connections open. Call after `handle_tunnel_bytes` to count and log them.
    pub fn take_over_limit(&mut self, service: usize) -> u64 {
        self.core
            .services
            .get_mut(service)
            .map_or(0, |s| std::mem::take(&mut s.over_limit))
    }

    /// Call with the tunnel's bytes (the binary WebSocket payload), in order, whenever the
    /// tunnel reads are not paused. An error means the tunnel connection is to be dropped.
    pub fn handle_tunnel_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        Core::frames(
            self,
            bytes,
            |d| &mut d.core,
            Sender::Source,
            Destination::handle_message,
        )
    }

    fn handle_message(&mut self, message: &Message<'_>) -> Result<(), Error> {
        let Some(message) = self.core.common(message)? else {
            return Ok(());
        };
        match message.kind {
            Type::STREAM_START => self.stream_start(message),
            Type::CONNECTION_START => self.connection_start(message),
            _ => Ok(()),
        }
    }

    fn stream_start(&mut self, message: &Message<'_>) -> Result<(), Error> {
        let core = &mut self.core;
        if !core.setup {
            return Err(Error::BeforeServiceIds(message.kind));
        }
        // The source's format is what we write back (§6); a V1 STREAM_START on a one-service
        // tunnel is taken (§12.2).
        core.format = super::fall_back(core.max_version, message.format());
        let Some(index) = core.service_of(message.service_id) else {
            self.refuse_stream(message);
            return Ok(());
        };
        let core = &mut self.core;
        if core.services[index].stream.is_some() {
            // A new stream replaces the active one (§5).
            core.end_stream(index);
        }
        core.services[index].stream = Some(message.stream_id);
        core.half_close_start(index);
        let id = core.add_local(index, message.connection(), false);
        core.actions.push_back(Action::Connect {
            local: id,
            service: core.services[index].name.clone(),
        });
        Ok(())
    }

    fn connection_start(&mut self, message: &Message<'_>) -> Result<(), Error> {
        let core = &mut self.core;
        if !core.setup {
            return Err(Error::BeforeServiceIds(message.kind));
        }
        if !core.max_version.writes_connection_id() {
            // As a V1 or V2 peer: it could not answer this connection in its format.
            return Err(crate::tunnel::Error::UnknownType(message.kind).into());
        }
        let Some(index) = core.service_of(message.service_id) else {
            self.refuse_stream(message);
            return Ok(());
        };
        if core.services[index].stream == Some(message.stream_id) {
            core.peer_spoke(index);
        }
        let svc = &core.services[index];
        let conn = message.connection_id;
        if svc.stream != Some(message.stream_id) {
            // Not the active stream (one this side reset, or never had): reset the connection.
            core.send(Type::CONNECTION_RESET, index, message.stream_id, conn, &[]);
            return Ok(());
        }
        if let Some(&old) = svc.conns.get(&conn) {
            // A duplicate connectionId is an error: it gets a CONNECTION_RESET (§5).
            core.remove_local(old, true);
            core.send(Type::CONNECTION_RESET, index, message.stream_id, conn, &[]);
            return Ok(());
        }
        if svc.conns.len() >= core.limits.connections_per_service {
            core.services[index].over_limit += 1;
            core.send(Type::CONNECTION_RESET, index, message.stream_id, conn, &[]);
            return Ok(());
        }
        let id = core.add_local(index, conn, false);
        core.actions.push_back(Action::Connect {
            local: id,
            service: core.services[index].name.clone(),
        });
        Ok(())
    }

    /// A stream of a service this side does not serve: STREAM_RESET it, as written.
    fn refuse_stream(&mut self, message: &Message<'_>) {
        let message = Message {
            kind: Type::STREAM_RESET,
            stream_id: message.stream_id,
            service_id: message.service_id,
            ..Message::default()
        };
        let mut frame = Vec::new();
        message
            .append_frame(&mut frame)
            .expect("a reset of a peer's frame fits");
        self.core.actions.push_back(Action::Send(frame));
    }

    /// The connection of an [`Action::Connect`] is up: the DATA that came meanwhile is given
    /// out in [`Action::Write`]s.
    pub fn handle_connected(&mut self, local: LocalId) {
        self.core.connected(local);
    }

    /// The connection of an [`Action::Connect`] failed: only its stream is reset, or only
    /// the connection when others of its V3 stream are up.
    pub fn handle_connect_failed(&mut self, local: LocalId) {
        let core = &mut self.core;
        let Some(l) = core.locals.get(&local) else {
            return;
        };
        if l.finishing {
            // The source's side ended already: nothing to tell it.
            core.remove_local(local, false);
            return;
        }
        let (index, stream, conn) = (l.service, l.stream, l.conn);
        let alone = core.services[index].conns.len() <= 1;
        core.remove_local(local, false);
        if core.services[index].stream != Some(stream) {
            return;
        }
        if core.format.writes_connection_id() && !alone {
            core.send(Type::CONNECTION_RESET, index, stream, conn, &[]);
        } else {
            // As localproxy: STREAM_RESET without connectionId, in every version.
            core.send(Type::STREAM_RESET, index, stream, 0, &[]);
            core.end_stream(index);
        }
    }

    /// Bytes read from a local connection: they go out as DATA (cut at [`Limits::payload`]).
    pub fn handle_local_data(&mut self, local: LocalId, data: &[u8]) {
        self.core.local_data(local, data);
    }

    /// For a driver that frames DATA in place ([`crate::tunnel::DataFraming`]): the head and
    /// tail of the DATA frame for `len` bytes read from `local` (1 to [`Limits::payload`]),
    /// byte for byte what [`Destination::handle_local_data`] would send for them. Read the bytes
    /// after [`crate::tunnel::DATA_HEADROOM`] bytes of headroom, frame them with
    /// [`crate::tunnel::DataFraming::frame_in_place`] and send the frame as one WebSocket
    /// message. `None` when `local` is closed (drop the bytes) or `len` is out of range.
    pub fn data_framing(&self, local: LocalId, len: usize) -> Option<crate::tunnel::DataFraming> {
        self.core.data_framing(local, len)
    }

    /// The local connection ended (the target closed it, or an error): the peer is told
    /// (CONNECTION_RESET in V3, STREAM_RESET in V1 and V2). Not for a connection the agent
    /// closed.
    pub fn handle_local_closed(&mut self, local: LocalId) {
        self.core.local_closed(local);
    }

    /// The local connection sent its end (EOF; not for an error: that is
    /// [`Destination::handle_local_closed`]). With a peer that takes half-closes, the peer is told
    /// with a [`super::HALF_CLOSE`] and the connection stays for the other direction; else
    /// as `handle_local_closed`, and an [`Action::Finish`] for it follows. Keep reading its
    /// actions either way.
    pub fn handle_local_eof(&mut self, local: LocalId) -> super::LocalEof {
        self.core.local_eof(local)
    }

    /// [`super::EOF_WAIT`] has passed since `handle_local_eof` said
    /// [`super::LocalEof::Waiting`] for `local` (nothing if it was settled meanwhile).
    pub fn handle_eof_wait_over(&mut self, local: LocalId) {
        self.core.eof_wait_over(local);
    }

    /// The driver wrote `n` bytes of the [`Action::Write`]s to `local`.
    pub fn handle_written(&mut self, local: LocalId, n: usize) {
        self.core.written(local, n);
    }

    /// The tunnel connection is gone: every local connection closes; the next tunnel
    /// connection waits for SERVICE_IDS and STREAM_START again (§8).
    pub fn handle_tunnel_lost(&mut self) {
        self.core.tunnel_lost();
    }

    /// The next action, in order; call until `None` after each `handle_*`.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.core.actions.pop_front()
    }

    /// The format written to the source now.
    pub fn format(&self) -> Version {
        self.core.format
    }

    /// Whether tunnel reads are paused ([`Action::PauseTunnelReads`] given, not resumed).
    pub fn is_paused(&self) -> bool {
        self.core.paused()
    }

    /// Bytes waiting to be written to `local` (given in [`Action::Write`] or held until it
    /// connects, not reported written).
    pub fn pending(&self, local: LocalId) -> usize {
        self.core.locals.get(&local).map_or(0, |l| l.pending)
    }
}

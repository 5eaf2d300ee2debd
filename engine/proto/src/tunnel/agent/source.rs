//! The source agent: local connections accepted on a service's listener become streams (V1,
//! V2: one stream per connection) or connections of the service's stream (V3) (§5, §6).

use std::collections::BTreeMap;
use std::time::Duration;

use super::core::Core;
use super::{Action, Error, Limits, LocalId};
use crate::tunnel::{Message, Sender, Type, Version};

/// How long a new stream may go without a word from the destination before the source takes
/// its STREAM_START for lost ([`Source::handle_start_wait_over`]).
///
/// The destination answers a STREAM_START with nothing (§5), and a relay may drop one (AWS's
/// and localproxy's drop what comes while the other peer is away; ours answers with a reset):
/// the source would then send DATA the destination drops as stale, its client would wait for
/// ever, and in V3 every later connection of the service would be a CONNECTION_START of a
/// stream the destination does not have (reset at once) for as long as the first one lives.
/// A destination that took the STREAM_START shows it with its first DATA (or, ours, with a
/// HELLO at once); a stream without either for this long is given up: its local connections
/// are reset, a STREAM_RESET goes out for it (dropped as stale by a destination that never
/// had it), and the service's next connection starts a new stream. The tunnel lives on. The
/// price: against a destination without our HELLO, a first connection of a stream whose
/// client and server both stay silent this long (or whose server takes this long to answer
/// its first request) is reset too; a client gets a reset, never bytes cut short.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// The source agent's state machine.
///
/// Give it the services it listens for (their names, or one empty name for the bare V1 form)
/// and the newest format it may write; it writes that format until the destination shows an
/// older one (a DATA or CONNECTION_RESET without connectionId: V2; without serviceId too: V1),
/// then falls back to it for the rest of the tunnel connection, as localproxy's V3 receiver
/// does (§6).
#[derive(Debug)]
pub struct Source {
    core: Core,
    /// The last streamId given (they count from 1 and wrap at `i32::MAX`, §5).
    pub(super) last_stream: i32,
    /// Services whose listener was asked for.
    listening: Vec<bool>,
    /// STREAM_STARTs given up after [`START_WAIT`] (see [`Source::lost_starts`]).
    lost_starts: u64,
    /// STREAM_STARTs sent in this agent's life (stream ids start again with each tunnel
    /// connection; this does not), and the number of each service's active stream's.
    starts: u32,
    start_of: Vec<u32>,
}

impl Source {
    /// A source for `services` (names, or `[""]` for the bare V1 form), writing at most the
    /// `version` format. Waits for the tunnel's SERVICE_IDS before it listens.
    pub fn new(services: &[&str], version: Version, limits: Limits) -> Result<Self, Error> {
        let core = Core::new(services, version, limits)?;
        let listening = vec![false; core.services.len()];
        let start_of = vec![0; core.services.len()];
        Ok(Source {
            core,
            last_stream: 0,
            listening,
            lost_starts: 0,
            starts: 0,
            start_of,
        })
    }

    /// Call with the tunnel's bytes (the binary WebSocket payload), in order, whenever the
    /// tunnel reads are not paused. An error means the tunnel connection is to be dropped
    /// ([`Error::is_fatal`] is true for all it returns).
    pub fn handle_tunnel_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        Core::frames(
            self,
            bytes,
            |s| &mut s.core,
            Sender::Destination,
            Source::handle_message,
        )
    }

    fn handle_message(&mut self, message: &Message<'_>) -> Result<(), Error> {
        let Some(message) = self.core.common(message)? else {
            return Ok(());
        };
        if message.kind == Type::SERVICE_IDS {
            for (i, service) in self.core.services.iter().enumerate() {
                if service.served && !self.listening[i] {
                    self.listening[i] = true;
                    self.core.actions.push_back(Action::Listen {
                        service: service.name.clone(),
                    });
                }
            }
        }
        // An unknown, ignorable type was dropped by the check; what is left has no meaning
        // for a source.
        Ok(())
    }

    /// A local connection was accepted on `service`'s listener: it starts a stream (V1, V2,
    /// or V3's first) or a connection of the service's stream (V3). Returns its id, or an
    /// error if it is to be closed at once (no tunnel up, or the service is at its limit).
    pub fn handle_accept(&mut self, service: &str) -> Result<LocalId, Error> {
        let core = &mut self.core;
        let index = (core.services.iter())
            .position(|s| s.name == service && s.served)
            .ok_or_else(|| Error::NotServed(service.to_string()))?;
        let format = core.format;
        let svc = &core.services[index];
        let limit = if format.writes_connection_id() {
            core.limits.connections_per_service
        } else {
            1
        };
        // In the V1 and V2 formats (one connection per stream) a connection whose client has
        // ended its side (half-closed, waiting for the rest of its answer) gives way: the new
        // stream replaces it, as a new STREAM_START always does (§5), and it is cut. Without
        // half-close it would have been gone at its client's FIN already.
        let open = (svc.conns.values())
            .filter(|id| {
                format.writes_connection_id() || core.locals.get(id).is_none_or(|l| !l.local_eof)
            })
            .count();
        if open >= limit {
            return Err(Error::Busy(service.to_string()));
        }
        if format.writes_connection_id() && svc.stream.is_some() && svc.last_conn < u32::MAX {
            // V3: another connection of the open stream, even when all earlier ones closed.
            let (stream, conn) = (svc.stream.unwrap_or_default(), svc.last_conn + 1);
            core.services[index].last_conn = conn;
            let id = core.add_local(index, conn, true);
            core.send(Type::CONNECTION_START, index, stream, conn, &[]);
            return Ok(id);
        }
        if svc.stream.is_some() {
            core.end_stream(index);
        }
        self.last_stream = if self.last_stream == i32::MAX {
            1
        } else {
            self.last_stream + 1
        };
        let stream = self.last_stream;
        core.services[index].stream = Some(stream);
        core.services[index].heard = false;
        self.starts = self.starts.wrapping_add(1);
        self.start_of[index] = self.starts;
        core.services[index].conns = BTreeMap::new();
        core.services[index].last_conn = 1;
        let id = core.add_local(index, 1, true);
        core.send(Type::STREAM_START, index, stream, 1, &[]);
        core.half_close_start(index);
        Ok(id)
    }

    /// When `local` (just accepted) started a stream (V3: the stream's first connection; V1
    /// and V2: every connection), that start's number (its own in this agent's life, not the
    /// streamId). Arm a timer of [`START_WAIT`] for it, then call
    /// [`Source::handle_start_wait_over`] with the service and this number, whether or not
    /// `local` is still open then.
    pub fn started_stream(&self, local: LocalId) -> Option<u32> {
        let l = self.core.locals.get(&local)?;
        let active = self.core.services[l.service].stream == Some(l.stream);
        (l.conn == 1 && active).then_some(self.start_of[l.service])
    }

    /// [`START_WAIT`] has passed since `service`'s stream start number `start`
    /// ([`Source::started_stream`]): if that stream is still the service's and the
    /// destination has said nothing that shows it took the STREAM_START, the stream is given
    /// up (its connections reset, a STREAM_RESET sent; the next connection starts a new
    /// stream). Nothing otherwise.
    pub fn handle_start_wait_over(&mut self, service: &str, start: u32) {
        let core = &mut self.core;
        let Some(index) = (core.services.iter()).position(|s| s.name == service) else {
            return;
        };
        let svc = &core.services[index];
        let Some(stream) = svc.stream.filter(|_| self.start_of[index] == start) else {
            return;
        };
        if svc.heard {
            return;
        }
        self.lost_starts += 1;
        core.send(Type::STREAM_RESET, index, stream, 1, &[]);
        core.end_stream(index);
    }

    /// How many streams were given up because the destination never showed it had their
    /// STREAM_START ([`START_WAIT`]).
    pub fn lost_starts(&self) -> u64 {
        self.lost_starts
    }

    /// Bytes read from a local connection: they go out as DATA (cut at
    /// [`Limits::payload`]). Bytes of a connection already closed are dropped.
    pub fn handle_local_data(&mut self, local: LocalId, data: &[u8]) {
        self.core.local_data(local, data);
    }

    /// For a driver that frames DATA in place ([`crate::tunnel::DataFraming`]): the head and
    /// tail of the DATA frame for `len` bytes read from `local` (1 to [`Limits::payload`]),
    /// byte for byte what [`Source::handle_local_data`] would send for them. Read the bytes
    /// after [`crate::tunnel::DATA_HEADROOM`] bytes of headroom, frame them with
    /// [`crate::tunnel::DataFraming::frame_in_place`] and send the frame as one WebSocket
    /// message. `None` when `local` is closed (drop the bytes) or `len` is out of range.
    pub fn data_framing(&self, local: LocalId, len: usize) -> Option<crate::tunnel::DataFraming> {
        self.core.data_framing(local, len)
    }

    /// The local connection ended (EOF or error): the peer is told (CONNECTION_RESET in V3,
    /// STREAM_RESET in V1 and V2). Call it once, and not for a connection the agent closed.
    pub fn handle_local_closed(&mut self, local: LocalId) {
        self.core.local_closed(local);
    }

    /// The local connection sent its end (EOF; not for an error: that is
    /// [`Source::handle_local_closed`]). With a peer that takes half-closes, the peer is told
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

    /// The tunnel connection is gone (dropped, or refused by the agent): every local
    /// connection closes, stream and connection ids start again at 1 on the next tunnel
    /// connection, which waits for SERVICE_IDS before it serves (§8). Listeners stay.
    pub fn handle_tunnel_lost(&mut self) {
        self.core.tunnel_lost();
        self.last_stream = 0;
    }

    /// The next action, in order; call until `None` after each `handle_*`.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.core.actions.pop_front()
    }

    /// The format written to the destination now.
    pub fn format(&self) -> Version {
        self.core.format
    }

    /// Whether tunnel reads are paused ([`Action::PauseTunnelReads`] given, not resumed).
    pub fn is_paused(&self) -> bool {
        self.core.paused()
    }

    /// Bytes waiting to be written to `local` (given in [`Action::Write`], not reported).
    pub fn pending(&self, local: LocalId) -> usize {
        self.core.locals.get(&local).map_or(0, |l| l.pending)
    }
}

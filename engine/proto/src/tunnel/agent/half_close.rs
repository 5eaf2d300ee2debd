//! Half-close between two splice-engine agents, negotiated per stream with `ignorable`
//! messages of types outside AWS's schema. A receiver that does not know an ignorable type
//! drops it (reference §4, §5): localproxy does, and so does an agent with the feature off,
//! so to them the tunnel looks as it always did.
//!
//! - [`HELLO`]: each side sends one for a stream as it starts: the source right after its
//!   STREAM_START, the destination as it takes that STREAM_START, before anything else it says
//!   about the stream. So a peer's HELLO, when it comes, is the first thing the peer says about
//!   the stream: anything else first (DATA, a reset) means it will not come.
//! - [`HALF_CLOSE`]: a local connection's side ended (EOF) but the other direction goes on.
//!   The receiver writes out what came before it, shuts the write side of its local
//!   connection (a FIN) and goes on reading it.
//! - A connection whose two halves have ended is closed with the ordinary reset
//!   (CONNECTION_RESET, or STREAM_RESET in the V1 and V2 formats), sent by the side that sees
//!   the second half end, so that a relay in between keeps its state as for any connection.
//!
//! A local EOF before the peer's HELLO or any other word about the stream waits for one of
//! them ([`LocalEof::Waiting`]), at most [`EOF_WAIT`] (the driver's timer): a peer that never
//! says HELLO is then told with the reset, as without the feature.

use std::time::Duration;

use super::core::{Core, PeerHalfClose};
use super::{Action, LocalId};
use crate::tunnel::{Message, Type};

/// "This side takes half-closes on this stream" (streamId and serviceId as the stream's
/// messages have them), always `ignorable`.
pub const HELLO: Type = Type(1001);
/// "This connection's sender side ended" (streamId, serviceId and connectionId as the
/// connection's DATA has them), always `ignorable`.
pub const HALF_CLOSE: Type = Type(1002);

/// How long a local EOF waits for the peer's HELLO before it is told the old way. The HELLO
/// leaves the peer as it takes the STREAM_START, so this is one round trip through the relay
/// with room to spare.
pub const EOF_WAIT: Duration = Duration::from_secs(1);

/// What became of a local connection's EOF ([`super::Source::handle_local_eof`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalEof {
    /// The connection is done: the peer was told with the ordinary reset, and an
    /// [`Action::Finish`] for it follows (write out what is queued, then close).
    Closed,
    /// The peer was told with a HALF_CLOSE: keep the connection, its writes go on until the
    /// peer's side ends too.
    HalfClosed,
    /// The peer may take a HALF_CLOSE but has not said so yet: keep the connection and call
    /// `handle_eof_wait_over` after [`EOF_WAIT`]; it becomes one of the above.
    Waiting,
}

impl Core {
    /// A stream of `service` starts (the source sent STREAM_START, or the destination took
    /// one): say HELLO when the feature is on.
    pub fn half_close_start(&mut self, service: usize) {
        let svc = &mut self.services[service];
        if !self.limits.half_close {
            svc.peer_half_close = PeerHalfClose::No;
            return;
        }
        svc.peer_half_close = PeerHalfClose::Unknown;
        let stream = svc.stream.expect("a stream is starting");
        self.send_ignorable(HELLO, service, stream, 0);
    }

    /// A local connection's EOF.
    pub fn local_eof(&mut self, id: LocalId) -> LocalEof {
        let Some(local) = self.locals.get_mut(&id) else {
            return LocalEof::Closed;
        };
        if local.local_eof {
            return if local.eof_waiting {
                LocalEof::Waiting
            } else {
                LocalEof::HalfClosed
            };
        }
        local.local_eof = true;
        if local.peer_eof {
            self.close_now(id);
            return LocalEof::Closed;
        }
        let svc = &self.services[local.service];
        let peer = if svc.stream == Some(local.stream) {
            svc.peer_half_close
        } else {
            PeerHalfClose::No
        };
        match peer {
            PeerHalfClose::Yes => {
                self.send_half_close(id);
                LocalEof::HalfClosed
            }
            PeerHalfClose::No => {
                self.close_now(id);
                LocalEof::Closed
            }
            PeerHalfClose::Unknown => {
                local.eof_waiting = true;
                LocalEof::Waiting
            }
        }
    }

    /// [`EOF_WAIT`] after a [`LocalEof::Waiting`]: a peer that has said nothing about the
    /// stream yet is taken not to know half-closes.
    pub fn eof_wait_over(&mut self, id: LocalId) {
        let Some(local) = self.locals.get(&id).filter(|l| l.eof_waiting) else {
            return;
        };
        let service = local.service;
        if self.services[service].stream == Some(local.stream) {
            self.peer_spoke(service);
        }
        if let Some(local) = self.locals.get_mut(&id)
            && local.eof_waiting
        {
            local.eof_waiting = false;
            self.close_now(id);
        }
    }

    /// The peer said something about `service`'s active stream other than HELLO: without a
    /// HELLO before it, none comes.
    pub fn peer_spoke(&mut self, service: usize) {
        if self.services[service].peer_half_close == PeerHalfClose::Unknown {
            self.services[service].peer_half_close = PeerHalfClose::No;
            self.settle_waiting(service);
        }
    }

    /// An ignorable message of a type outside the schema: ours when the feature is on, else
    /// dropped.
    pub fn extension(&mut self, message: &Message<'_>) {
        let Some(service) = self.service_of(message.service_id) else {
            return;
        };
        if self.services[service].stream != Some(message.stream_id) {
            // An older stream's, or one this side never had.
            return;
        }
        // Only a peer that has the stream speaks of it so (a HELLO as it takes the start).
        self.services[service].heard = true;
        if !self.limits.half_close {
            return;
        }
        match message.kind {
            HELLO => {
                self.services[service].peer_half_close = PeerHalfClose::Yes;
                self.settle_waiting(service);
            }
            HALF_CLOSE => {
                if let Some(&id) = self.services[service].conns.get(&message.connection()) {
                    self.peer_half_closed(id);
                }
            }
            _ => {}
        }
    }

    /// The peer's side of `id` ended: shut our write side once what came before is written,
    /// or, if ours ended too, close the connection.
    fn peer_half_closed(&mut self, id: LocalId) {
        let Some(local) = self.locals.get_mut(&id) else {
            return;
        };
        if local.peer_eof {
            return;
        }
        local.peer_eof = true;
        if local.local_eof {
            local.eof_waiting = false;
            self.close_now(id);
        } else if local.connected {
            self.actions.push_back(Action::ShutdownWrite { local: id });
        }
        // Not connected yet: the shutdown follows the held bytes in `connected`.
    }

    /// Local EOFs that waited on `service`'s stream go out now that the peer's answer is known.
    fn settle_waiting(&mut self, service: usize) {
        let Some(stream) = self.services[service].stream else {
            return;
        };
        let mut waiting: Vec<LocalId> = (self.locals.iter())
            .filter(|(_, l)| l.eof_waiting && l.service == service && l.stream == stream)
            .map(|(&id, _)| id)
            .collect();
        waiting.sort();
        let yes = self.services[service].peer_half_close == PeerHalfClose::Yes;
        for id in waiting {
            if let Some(local) = self.locals.get_mut(&id) {
                local.eof_waiting = false;
            }
            if yes {
                self.send_half_close(id);
            } else {
                self.close_now(id);
            }
        }
    }

    /// Tells the peer the ordinary way (CONNECTION_RESET or STREAM_RESET) that `id` is done,
    /// and has the driver write out what is queued and close it.
    fn close_now(&mut self, id: LocalId) {
        self.local_closed(id);
        self.actions.push_back(Action::Finish { local: id });
    }

    fn send_half_close(&mut self, id: LocalId) {
        let Some(local) = self.locals.get(&id) else {
            return;
        };
        let (service, stream, conn) = (local.service, local.stream, local.conn);
        self.send_ignorable(HALF_CLOSE, service, stream, conn);
    }

    fn send_ignorable(&mut self, kind: Type, service: usize, stream: i32, conn: u32) {
        let (service_id, connection_id) = self.format.ids(&self.services[service].wire, conn);
        let message = Message {
            kind,
            stream_id: stream,
            ignorable: true,
            service_id,
            connection_id,
            ..Message::default()
        };
        let mut frame = Vec::with_capacity(crate::tunnel::LENGTH_PREFIX + message.encoded_len());
        message
            .append_frame(&mut frame)
            .expect("an agent's frame fits: serviceId is bounded");
        self.actions.push_back(Action::Send(frame));
    }
}

//! A connection's legs: each one's socket, which socket it is (accepted or dialed), what its
//! reads are waiting for, and the hang-up watch that notices a reset while the other direction
//! is stalled.

use std::os::fd::AsFd;

use splice_proto::{Fault, Leg};

use super::super::{Shard, TAG_HANGUP_PLAIN, TAG_HANGUP_TLS, token};
use super::{Conn, Pump};
use crate::driver::{Fd, Op};
use crate::modes::Role;
use crate::sys;

/// One leg of a connection.
pub(super) struct LegIo {
    /// Its socket, once there is one (the dialed leg's comes with its connect).
    pub(super) fd: Option<Fd>,
    /// The accepted socket or the dialed one.
    pub(super) role: Role,
    /// The socket is connected (the accepted one always is).
    pub(super) connected: bool,
    /// The last read did not fill its buffer, so the next one waits for readiness before
    /// taking a buffer: idle connections hold no buffer memory.
    pub(super) idle: bool,
    /// A readiness wait is in flight for a read of this many bytes.
    pub(super) waiting_len: Option<u32>,
    /// Readiness was spurious for a read of this many bytes; wait again.
    pub(super) ready_read: Option<u32>,
    /// An [`Op::Hangup`] watch is in flight, or no longer wanted (the peer's FIN came: what
    /// follows is read in order by the pump).
    pub(super) watched: bool,
    /// We shut its write side (so a hang-up there can be a clean end).
    pub(super) shut_write: bool,
}

impl LegIo {
    pub(super) fn new(role: Role) -> Self {
        Self {
            fd: None,
            role,
            connected: role == Role::Accepted,
            idle: true,
            waiting_len: None,
            ready_read: None,
            watched: false,
            shut_write: false,
        }
    }

    /// The leg has its socket.
    pub(super) fn open(&mut self, fd: Fd) {
        self.fd = Some(fd);
    }

    /// Its connect is in flight.
    pub(super) fn connecting(&self) -> bool {
        self.fd.is_some() && !self.connected
    }
}

impl Conn {
    /// A hang-up watch on `leg` completed.
    pub(super) fn hangup_seen(&mut self, leg: Leg, result: std::io::Result<usize>) {
        let bits = match result {
            Ok(bits) => bits as i16,
            // Cancelled: the connection is closing anyway.
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return,
            Err(_) => libc::POLLERR,
        };
        // Both directions shut, though we never shut ours: the connection was reset or aborted
        // (a write in flight may already have taken the error itself, leaving no POLLERR).
        let shut_by_us =
            self.leg(leg).shut_write || matches!(&self.pump, Pump::Splice(p) if p.wrote_eof(leg));
        // On a Unix socket (`Engine::connect`'s socketpair) a hang-up is the peer's close: what
        // it wrote is still to be read, as after a FIN. A reset there shows as POLLERR.
        let unix = || {
            self.leg(leg)
                .fd
                .as_ref()
                .is_some_and(|fd| sys::is_unix_socket(fd.as_fd()))
        };
        if bits & libc::POLLERR != 0 || (bits & libc::POLLHUP != 0 && !shut_by_us && !unix()) {
            // A reset (or another socket error) on a leg that may not be read or written for
            // a long time while the other direction is stalled. The socket error itself is left
            // for a read or write in flight to report; this one is closing the connection.
            let fault = match leg {
                Leg::Plain => Fault::Plain,
                Leg::Tls => Fault::TlsTransport,
            };
            let side = self.side(fault);
            let why = "the peer reset the connection (noticed while the other direction was \
                       stalled)";
            self.hangup.get_or_insert(Box::new((side, why.into())));
        }
        // Otherwise the peer's FIN (or both directions shut, ours first): the pump reads up to
        // it in order. Stay unwatched: poll would report the FIN again at once.
    }

    /// Watches each connected leg for a reset, whatever its reads and writes are doing.
    pub(super) fn watch_legs(&mut self, index: u32, shard: &mut Shard) {
        for (leg, tag) in [(Leg::Plain, TAG_HANGUP_PLAIN), (Leg::Tls, TAG_HANGUP_TLS)] {
            let io = &mut self.legs[leg as usize];
            if io.watched || !io.connected {
                continue;
            }
            let Some(fd) = io.fd.clone() else { continue };
            io.watched = true;
            shard
                .driver
                .submit(token(tag, index, self.generation), Op::Hangup { fd });
        }
    }
}

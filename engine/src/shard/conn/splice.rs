//! The splice pump: after a kTLS hand-off both legs are plain byte streams to user space, so
//! each direction moves socket -> pipe -> socket with `splice(2)` and the payload never enters
//! user space.
//!
//! Every splice is nonblocking and issued only after the driver reported readiness (a poll op),
//! so none can block a kernel worker. A kTLS socket refuses to splice a non-data record
//! (`EINVAL`): that record is read with `recvmsg` and its control message, and judged by
//! [`crate::tls::control::control_record`] (a client stores session tickets, close_notify is end
//! of stream, anything else resets the connection).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustls::ProtocolVersion;
use splice_proto::TicketStore;

use super::super::{PIPE_SIZE, Shard, TAG_POLL, token};
use crate::driver::{Fd, Op};
use crate::error::Side;
use crate::sys;
use crate::tls::control::{ControlAction, control_record};

struct Dir {
    src: Fd,
    dst: Fd,
    pipe: Option<(OwnedFd, OwnedFd)>,
    in_pipe: usize,
    eof: bool,
    shut: bool,
    /// The source is a kTLS receive socket; the sink a kTLS send socket.
    src_ktls: bool,
    dst_ktls: bool,
    close_notify_seen: bool,
    /// A readiness poll is in flight on the source / the sink.
    wait_src: bool,
    wait_dst: bool,
    moved: u64,
    src_side: Side,
    dst_side: Side,
}

/// Both directions of a kTLS connection.
pub(super) struct SplicePump {
    /// `[plain -> tls, tls -> plain]`; `None` when the pump was born failed.
    dirs: Option<[Dir; 2]>,
    version: ProtocolVersion,
    /// A TLS client's session store, for the tickets that arrive after the hand-off.
    tickets: Option<TicketStore>,
    failure: Option<(Side, String)>,
}

impl SplicePump {
    pub(crate) fn new(
        plain: Fd,
        tls: Fd,
        (plain_side, tls_side): (Side, Side),
        version: ProtocolVersion,
        tickets: Option<TicketStore>,
        shard: &mut Shard,
    ) -> Result<Self, crate::Error> {
        let p0 = shard.pipes.take()?;
        let p1 = shard.pipes.take()?;
        let dir = |src: &Fd, dst: &Fd, pipe, src_ktls, src_side, dst_side| Dir {
            src: src.clone(),
            dst: dst.clone(),
            pipe: Some(pipe),
            in_pipe: 0,
            eof: false,
            shut: false,
            src_ktls,
            dst_ktls: !src_ktls,
            close_notify_seen: false,
            wait_src: false,
            wait_dst: false,
            moved: 0,
            src_side,
            dst_side,
        };
        Ok(Self {
            dirs: Some([
                dir(&plain, &tls, p0, false, plain_side, tls_side),
                dir(&tls, &plain, p1, true, tls_side, plain_side),
            ]),
            version,
            tickets,
            failure: None,
        })
    }

    /// A pump that only reports `failure` (a hand-off that went wrong).
    pub(crate) fn failed(side: Side, reason: String) -> Self {
        Self {
            dirs: None,
            version: ProtocolVersion::TLSv1_3,
            tickets: None,
            failure: Some((side, reason)),
        }
    }

    /// Plain bytes `(received from the plain leg, sent to it)`.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        match &self.dirs {
            Some([a, b]) => (a.moved, b.moved),
            None => (0, 0),
        }
    }

    /// Whether the pump shut the write side of `leg` (end of stream passed on).
    pub(crate) fn wrote_eof(&self, leg: splice_proto::Leg) -> bool {
        // `[plain -> tls, tls -> plain]`: the first writes the TLS leg.
        let k = match leg {
            splice_proto::Leg::Tls => 0,
            splice_proto::Leg::Plain => 1,
        };
        self.dirs.as_ref().is_some_and(|d| d[k].shut)
    }

    /// A readiness poll completed.
    pub(crate) fn complete(&mut self, tag: u8, _result: io::Result<usize>) {
        let Some(dirs) = &mut self.dirs else { return };
        let k = tag.wrapping_sub(TAG_POLL) as usize;
        if let Some(d) = dirs.get_mut(k / 2) {
            if k % 2 == 0 {
                d.wait_src = false;
            } else {
                d.wait_dst = false;
            }
        }
    }

    /// Moves what can be moved now. `None`: still open; `Some(failure)`: closed.
    pub(crate) fn drive(
        &mut self,
        index: u32,
        generation: u32,
        shard: &mut Shard,
    ) -> Option<Option<(Side, String)>> {
        if let Some(f) = self.failure.take() {
            return Some(Some(f));
        }
        let dirs = self.dirs.as_mut()?;
        for (k, d) in dirs.iter_mut().enumerate() {
            let (poll_src, poll_dst) = match pump(d, self.version, &mut self.tickets) {
                Ok(p) => p,
                Err(f) => return Some(Some(f)),
            };
            let tag = TAG_POLL + (k as u8) * 2;
            if poll_src {
                d.wait_src = true;
                shard.driver.submit(
                    token(tag, index, generation),
                    Op::Poll {
                        fd: d.src.clone(),
                        write: false,
                    },
                );
            }
            if poll_dst {
                d.wait_dst = true;
                shard.driver.submit(
                    token(tag + 1, index, generation),
                    Op::Poll {
                        fd: d.dst.clone(),
                        write: true,
                    },
                );
            }
        }
        if dirs.iter().all(|d| d.shut) {
            return Some(None);
        }
        None
    }

    /// Gives the (empty) pipes back to the shard's pool.
    pub(crate) fn release(self, shard: &mut Shard) {
        if let Some(dirs) = self.dirs {
            for mut d in dirs {
                if d.in_pipe == 0
                    && let Some(p) = d.pipe.take()
                {
                    shard.pipes.give(p);
                }
            }
        }
    }
}

/// Moves bytes in one direction until something would block; returns which ends newly need
/// a readiness poll `(source readable, sink writable)`.
fn pump(
    d: &mut Dir,
    version: ProtocolVersion,
    tickets: &mut Option<TicketStore>,
) -> Result<(bool, bool), (Side, String)> {
    let mut blocked_src = d.wait_src;
    let mut blocked_dst = d.wait_dst;
    let (mut new_src, mut new_dst) = (false, false);
    let (prd, pwr) = match &d.pipe {
        Some((r, w)) => (r.as_fd(), w.as_fd()),
        None => return Ok((false, false)),
    };
    loop {
        let mut progress = false;
        if !d.eof && !blocked_src && d.in_pipe < PIPE_SIZE {
            match sys::splice(d.src.as_fd(), pwr, PIPE_SIZE - d.in_pipe) {
                Ok(0) => {
                    if d.src_ktls && !d.close_notify_seen {
                        return Err((
                            d.src_side,
                            "peer closed the connection without close_notify (stream may be truncated)"
                                .into(),
                        ));
                    }
                    d.eof = true;
                    progress = true;
                }
                Ok(n) => {
                    d.in_pipe += n;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked_src = true;
                    new_src = true;
                }
                Err(e) if d.src_ktls && e.raw_os_error() == Some(libc::EINVAL) => {
                    // A non-data record is next: read it with its record type.
                    let mut buf = vec![0u8; 16 * 1024 + 256];
                    match sys::ktls::recv_record(d.src.as_fd(), &mut buf) {
                        Ok((ty, n)) => match control_record(ty, &buf[..n], version) {
                            ControlAction::Tickets(bodies) => {
                                if let Some(store) = tickets.as_mut() {
                                    for body in bodies {
                                        store.store(&buf[body]).map_err(|e| {
                                            (Side::Tls, format!("bad NewSessionTicket: {e}"))
                                        })?;
                                    }
                                }
                                progress = true;
                            }
                            ControlAction::Eof => {
                                d.close_notify_seen = true;
                                d.eof = true;
                                progress = true;
                            }
                            ControlAction::Fail(why) => return Err((Side::Tls, why)),
                        },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            blocked_src = true;
                            new_src = true;
                        }
                        Err(e) => return Err((Side::Tls, format!("kTLS control record: {e}"))),
                    }
                }
                Err(e) if d.src_ktls && e.raw_os_error() == Some(libc::EBADMSG) => {
                    return Err((Side::Tls, "kTLS: record failed authentication".into()));
                }
                Err(e) => return Err((d.src_side, format!("splice from socket: {e}"))),
            }
        }
        if d.in_pipe > 0 && !blocked_dst {
            match sys::splice(prd, d.dst.as_fd(), d.in_pipe) {
                Ok(n) => {
                    d.in_pipe -= n;
                    d.moved += n as u64;
                    progress |= n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked_dst = true;
                    new_dst = true;
                }
                Err(e) => return Err((d.dst_side, format!("splice to socket: {e}"))),
            }
        }
        if d.eof && d.in_pipe == 0 && !d.shut {
            if d.dst_ktls
                && let Err(e) = sys::ktls::send_close_notify(d.dst.as_fd())
            {
                return Err((d.dst_side, format!("send close_notify: {e}")));
            }
            let _ = sys::socket::shutdown_write(d.dst.as_fd());
            d.shut = true;
        }
        if !progress {
            break;
        }
    }
    Ok((new_src, new_dst))
}

//! The epoll driver: the same completion interface as io_uring, from readiness.
//!
//! Each op is tried at once with a nonblocking system call; on `EAGAIN` it waits in its fd's
//! read or write slot until epoll reports an edge for that fd, then is tried again. Sockets are
//! registered edge-triggered once, on their first op that has to wait, and removed by
//! [`EpollDriver::cancel`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{Completion, Op};
use crate::sys::{self, SyscallError};

#[derive(Debug, Default)]
struct Waiting {
    read: Option<(u64, Op)>,
    write: Option<(u64, Op)>,
    /// A [`Op::Hangup`] watch, beside whatever read or write waits.
    hangup: Option<(u64, Op)>,
}

/// A driver built on epoll.
#[derive(Debug)]
pub struct EpollDriver {
    ep: OwnedFd,
    waiting: HashMap<RawFd, Waiting>,
    ready: VecDeque<Completion>,
    events: Vec<libc::epoll_event>,
    pending: usize,
    /// The last `wait` handed back finished ops without asking epoll (the next one asks, so
    /// ops that finish at once cannot starve the ones waiting for readiness).
    skipped: bool,
}

enum Attempt {
    Done(io::Result<usize>, Option<OwnedFd>),
    Wait,
}

impl EpollDriver {
    /// Creates the epoll set.
    pub fn new() -> Result<Self, SyscallError> {
        Ok(Self {
            ep: sys::epoll::create()?,
            waiting: HashMap::new(),
            ready: VecDeque::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            pending: 0,
            skipped: false,
        })
    }

    /// Starts `op`.
    pub fn submit(&mut self, token: u64, mut op: Op) {
        // A connect starts here; later attempts only collect its result.
        if let Op::Connect { fd, addr } = &op {
            let err = match sys::connect(fd.as_fd(), addr) {
                Ok(()) => {
                    self.finish(token, op, Ok(0), None);
                    return;
                }
                Err(e) => e,
            };
            if err.raw_os_error() != Some(libc::EINPROGRESS) {
                self.finish(token, op, Err(err), None);
                return;
            }
            self.park(token, op);
            return;
        }
        match attempt(&mut op) {
            Attempt::Done(res, fd) => self.finish(token, op, res, fd),
            Attempt::Wait => self.park(token, op),
        }
    }

    fn finish(&mut self, token: u64, op: Op, result: io::Result<usize>, accepted: Option<OwnedFd>) {
        self.ready.push_back(Completion {
            token,
            op,
            result,
            accepted,
        });
    }

    fn park(&mut self, token: u64, op: Op) {
        let fd = op.fd();
        let entry = match self.waiting.entry(fd) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                // `fd` is open: the op holds it.
                let events =
                    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
                if let Err(err) = sys::epoll::add(self.ep.as_fd(), fd, events, fd as u64) {
                    self.finish(token, op, Err(err), None);
                    return;
                }
                v.insert(Waiting::default())
            }
        };
        let slot = if matches!(op, Op::Hangup { .. }) {
            &mut entry.hangup
        } else if is_write(&op) {
            &mut entry.write
        } else {
            &mut entry.read
        };
        debug_assert!(slot.is_none(), "two ops of one direction on one fd");
        if let Some((t, old)) = slot.replace((token, op)) {
            // A misuse: complete the displaced op rather than leak it.
            self.pending -= 1;
            self.finish(t, old, Err(io::Error::from_raw_os_error(libc::EBUSY)), None);
        }
        self.pending += 1;
    }

    /// Cancels the ops on `fd` (they complete with `ECANCELED`) and unregisters it.
    pub fn cancel(&mut self, fd: RawFd) {
        if let Some(w) = self.waiting.remove(&fd) {
            for (token, op) in [w.read, w.write, w.hangup].into_iter().flatten() {
                self.pending -= 1;
                self.finish(
                    token,
                    op,
                    Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                    None,
                );
            }
            sys::epoll::delete(self.ep.as_fd(), fd);
        }
    }

    /// Waits for readiness, retries the ops it concerns, and hands back what completed.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), SyscallError> {
        if !self.ready.is_empty() && !self.skipped {
            // Ops finished at submission (a send that went at once): hand them back without
            // a system call.
            self.skipped = true;
            out.extend(self.ready.drain(..));
            return Ok(());
        }
        self.skipped = false;
        let ms = if !self.ready.is_empty() {
            0
        } else {
            match timeout {
                None => -1,
                Some(d) => {
                    d.as_millis().min(i32::MAX as u128) as i32
                        + i32::from(d.subsec_nanos() % 1_000_000 != 0)
                }
            }
        };
        let n = match sys::epoll::wait(self.ep.as_fd(), &mut self.events, ms) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => 0,
            Err(err) => return Err(SyscallError::new("epoll_wait", err)),
        };
        for i in 0..n {
            let ev = self.events[i];
            let fd = ev.u64 as RawFd;
            let flags = ev.events as i32;
            let err_or_hup = flags & (libc::EPOLLERR | libc::EPOLLHUP) != 0;
            if flags & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0 || err_or_hup {
                self.retry(fd, false);
            }
            if flags & libc::EPOLLOUT != 0 || err_or_hup {
                self.retry(fd, true);
            }
            if flags & libc::EPOLLRDHUP != 0 || err_or_hup {
                self.retry_hangup(fd);
            }
        }
        out.extend(self.ready.drain(..));
        Ok(())
    }

    fn retry(&mut self, fd: RawFd, write: bool) {
        let Some(w) = self.waiting.get_mut(&fd) else {
            return;
        };
        let slot = if write { &mut w.write } else { &mut w.read };
        let Some((token, mut op)) = slot.take() else {
            return;
        };
        let res = match &op {
            Op::Connect { fd, .. } => match sys::is_ready(fd.as_fd(), true) {
                Ok(false) => Attempt::Wait,
                Ok(true) => Attempt::Done(sys::take_socket_error(fd.as_fd()).map(|()| 0), None),
                Err(e) => Attempt::Done(Err(e), None),
            },
            // epoll has just reported this direction ready (or an error, which the caller's
            // read or write will meet): asking poll(2) again would only cost a system call. A
            // caller that finds it spurious waits again.
            Op::Poll { .. } => Attempt::Done(Ok(0), None),
            _ => attempt(&mut op),
        };
        match res {
            Attempt::Wait => *slot = Some((token, op)),
            Attempt::Done(r, a) => {
                self.pending -= 1;
                self.finish(token, op, r, a);
            }
        }
    }
}

impl EpollDriver {
    fn retry_hangup(&mut self, fd: RawFd) {
        let Some(w) = self.waiting.get_mut(&fd) else {
            return;
        };
        let Some((token, mut op)) = w.hangup.take() else {
            return;
        };
        match attempt(&mut op) {
            Attempt::Wait => w.hangup = Some((token, op)),
            Attempt::Done(r, a) => {
                self.pending -= 1;
                self.finish(token, op, r, a);
            }
        }
    }
}

fn is_write(op: &Op) -> bool {
    matches!(
        op,
        Op::Send { .. } | Op::Connect { .. } | Op::Poll { write: true, .. }
    )
}

fn attempt(op: &mut Op) -> Attempt {
    let res = match op {
        Op::Accept { fd } => match sys::accept(fd.as_fd()) {
            Ok(s) => return Attempt::Done(Ok(0), Some(s)),
            Err(e) => Err(e),
        },
        Op::Recv { fd, buf, len } => sys::recv_into(fd.as_fd(), buf, *len),
        Op::Send { fd, buf, len } => sys::send(fd.as_fd(), &buf[..(*len).min(buf.len())]),
        Op::Poll { fd, write } => match sys::is_ready(fd.as_fd(), *write) {
            Ok(true) => Ok(0),
            Ok(false) => return Attempt::Wait,
            Err(e) => Err(e),
        },
        // Level-checked at submission too: an edge that came before this watch was parked
        // went to the other slots and would not be seen again.
        Op::Hangup { fd } => match sys::hangup_events(fd.as_fd()) {
            Ok(0) => return Attempt::Wait,
            Ok(bits) => Ok(bits as usize),
            Err(e) => Err(e),
        },
        Op::Connect { .. } => unreachable!("connect is started in submit"),
    };
    match res {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Attempt::Wait,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Attempt::Wait,
        other => Attempt::Done(other, None),
    }
}

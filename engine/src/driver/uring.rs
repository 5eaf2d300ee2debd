// Pushing an SQE is `unsafe` because the kernel will read and write the memory it points to
// until the CQE arrives; only the driver, which keeps each op (and so that memory) in its slab
// until then, can promise that. The ring's setup and the other raw calls are in `sys`.
#![allow(
    unsafe_code,
    reason = "SQE submission: the driver's slab is what keeps the kernel's memory alive"
)]
//! The io_uring driver: each [`Op`] becomes one SQE, each CQE one [`Completion`].
//!
//! In-flight ops live in a slab indexed by the SQE's user data; the op owns its buffer and fd
//! handle, so the memory the kernel reads or writes stays valid until the CQE arrives, whatever
//! happens to the connection meanwhile. Dropping the driver cancels everything and waits for
//! the kernel to let go before the buffers are freed.

use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};

use super::{Completion, Op};
use crate::sys::{self, SyscallError};

/// User data of SQEs whose completion we ignore (cancellations).
const IGNORE: u64 = u64::MAX;

/// A driver built on io_uring.
pub struct UringDriver {
    ring: IoUring,
    slots: Vec<Option<(u64, Op)>>,
    free: Vec<usize>,
    live: usize,
}

impl std::fmt::Debug for UringDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDriver")
            .field("live", &self.live)
            .finish()
    }
}

impl UringDriver {
    /// Sets up a ring and checks that the kernel has every opcode we use.
    pub fn new() -> Result<Self, SyscallError> {
        let ring = sys::uring::setup(1024)?;
        Ok(Self {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        })
    }

    /// Starts `op`.
    pub fn submit(&mut self, token: u64, op: Op) {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[idx] = Some((token, op));
        self.live += 1;
        let Some((_, op)) = self.slots[idx].as_mut() else {
            unreachable!()
        };
        let sqe = build_sqe(op).user_data(idx as u64);
        self.push(&sqe);
    }

    fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: every pointer in the SQE points into an op held in `self.slots` (or is
            // null), which stays alive and unmoved on the heap until its CQE is reaped.
            let pushed = unsafe { self.ring.submission().push(sqe) };
            if pushed.is_ok() {
                return;
            }
            // The submission queue is full: hand it to the kernel and try again.
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!(error = %e, "io_uring_enter failed while flushing submissions");
                }
                self.reap(&mut Vec::new(), true);
            }
        }
    }

    /// Cancels every op on `fd`.
    pub fn cancel(&mut self, fd: RawFd) {
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(IGNORE);
        self.push(&sqe);
    }

    /// Submits what is queued, waits up to `timeout` for at least one completion, and hands
    /// back what completed.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), SyscallError> {
        let want = usize::from(self.ring.completion().is_empty());
        let res = match timeout {
            Some(d) if d.is_zero() => {
                // A poll: enter the kernel only when there is something to submit or task work
                // (a finished op) to run; otherwise read the completion queue as it is.
                let pending = {
                    let mut sq = self.ring.submission();
                    sq.sync();
                    !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
                };
                if pending { self.ring.submit() } else { Ok(0) }
            }
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
            None => self.ring.submit_and_wait(want),
        };
        if let Err(e) = res {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                _ => return Err(SyscallError::new("io_uring_enter", e)),
            }
        }
        self.reap(out, false);
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>, drop_them: bool) {
        // The queue's head moves on when `cq` drops, after the loop: entries are read in place.
        let cq = self.ring.completion();
        for cqe in cq {
            let ud = cqe.user_data();
            if ud == IGNORE {
                continue;
            }
            let idx = ud as usize;
            let Some((token, mut op)) = self.slots.get_mut(idx).and_then(Option::take) else {
                continue;
            };
            self.free.push(idx);
            self.live -= 1;
            let res = cqe.result();
            let mut accepted = None;
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                match &mut op {
                    Op::Recv { buf, len, .. } => {
                        let n = (res as usize).min(*len);
                        // SAFETY: the kernel wrote `n` bytes after `buf.len()` into the room
                        // reserved at submission (`n <= len <= spare capacity`).
                        unsafe { sys::assume_filled(buf, n) };
                        Ok(n)
                    }
                    Op::Accept { .. } => {
                        // SAFETY: a successful accept CQE carries a new fd nobody owns yet.
                        accepted = Some(unsafe { sys::own_fd(res) });
                        Ok(0)
                    }
                    _ => Ok(res as usize),
                }
            };
            if !drop_them {
                out.push(Completion {
                    token,
                    op,
                    result,
                    accepted,
                });
            }
        }
    }
}

fn build_sqe(op: &mut Op) -> squeue::Entry {
    match op {
        Op::Accept { fd } => opcode::Accept::new(
            types::Fd(fd.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
        .build(),
        Op::Connect { fd, addr } => {
            opcode::Connect::new(types::Fd(fd.as_raw_fd()), addr.as_ptr().cast(), addr.len())
                .build()
        }
        Op::Recv { fd, buf, len } => {
            buf.reserve(*len);
            let start = buf.len();
            let ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
            debug_assert!(buf.capacity() - start >= *len);
            opcode::Recv::new(types::Fd(fd.as_raw_fd()), ptr, *len as u32).build()
        }
        Op::Send { fd, buf, len } => {
            let len = (*len).min(buf.len());
            opcode::Send::new(types::Fd(fd.as_raw_fd()), buf.as_ptr(), len as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        }
        Op::Poll { fd, write } => {
            let mask = if *write { libc::POLLOUT } else { libc::POLLIN };
            opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask as u32).build()
        }
        // POLLERR and POLLHUP are always reported; POLLRDHUP must be asked for.
        Op::Hangup { fd } => {
            opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLRDHUP as u32).build()
        }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        if self.live == 0 {
            return;
        }
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(IGNORE);
        self.push(&sqe);
        // Wait (bounded) for the kernel to release every buffer before they are freed.
        for _ in 0..1000 {
            if self.live == 0 {
                return;
            }
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap(&mut Vec::new(), true);
        }
        // Still busy: leak the buffers rather than free memory the kernel may write.
        std::mem::forget(std::mem::take(&mut self.slots));
    }
}

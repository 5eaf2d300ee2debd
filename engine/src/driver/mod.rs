//! The data-plane drivers: a completion interface over io_uring or epoll.
//!
//! A shard submits [`Op`]s tagged with a token and later receives [`Completion`]s carrying the
//! op back (with its buffer and fd). An op owns its buffer and a counted handle on its fd until
//! it completes, so a connection that is dropped while an op is in flight never frees memory
//! the kernel is writing, nor lets its fd number be reused under the op ("ignored but kept
//! alive"). The io_uring driver maps each op to one SQE; the epoll driver tries the system call
//! at once and, on `EAGAIN`, waits for the readiness edge and tries again. Both give the same
//! results, so everything above them is shared. Under `cfg(test)` a third, [`fake`], completes
//! ops only when a unit test says so.

pub mod epoll;
#[cfg(test)]
pub(crate) mod fake;
pub mod uring;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use socket2::SockAddr;

pub use self::epoll::EpollDriver;
pub use self::uring::UringDriver;
use crate::error::Error;
use crate::kinds::DriverKind;
use crate::sys::SyscallError;

/// A shared handle on a socket or pipe; the fd closes when the last handle drops.
pub type Fd = Rc<OwnedFd>;

/// One I/O operation.
#[derive(Debug)]
pub enum Op {
    /// Accept one connection (the new socket comes back in [`Completion::accepted`]).
    Accept {
        /// The listener.
        fd: Fd,
    },
    /// Connect a nonblocking socket.
    Connect {
        /// The socket.
        fd: Fd,
        /// Where to.
        addr: Box<SockAddr>,
    },
    /// Receive at most `len` bytes, appended to `buf` (which has the room).
    Recv {
        /// The socket.
        fd: Fd,
        /// The buffer.
        buf: Vec<u8>,
        /// Most bytes.
        len: usize,
    },
    /// Send the first `len` bytes of `buf` (the result says how many went). The rest of `buf`
    /// is the owner's scratch space, kept so that it stays initialised.
    Send {
        /// The socket.
        fd: Fd,
        /// The bytes.
        buf: Vec<u8>,
        /// How many of them to send (at most `buf.len()`).
        len: usize,
    },
    /// Wait until `fd` is readable (or writable when `write`).
    Poll {
        /// The fd.
        fd: Fd,
        /// Wait for writability instead of readability.
        write: bool,
    },
    /// Wait until the socket reports an error or a hang-up (`POLLERR`, `POLLHUP`) or the peer's
    /// FIN (`POLLRDHUP`), whatever its reads and writes are doing. The result is the `poll`
    /// event bits seen. Lets a connection notice a reset on a leg it is not reading.
    Hangup {
        /// The socket.
        fd: Fd,
    },
}

impl Op {
    /// The fd the op works on.
    pub fn fd(&self) -> RawFd {
        match self {
            Op::Accept { fd }
            | Op::Connect { fd, .. }
            | Op::Recv { fd, .. }
            | Op::Send { fd, .. }
            | Op::Poll { fd, .. }
            | Op::Hangup { fd } => fd.as_raw_fd(),
        }
    }
}

/// A finished op, handed back with its result.
#[derive(Debug)]
pub struct Completion {
    /// The token given at submission.
    pub token: u64,
    /// The op, with its buffer.
    pub op: Op,
    /// Bytes moved (`Recv`, `Send`), the `poll` event bits (`Hangup`), or 0.
    pub result: io::Result<usize>,
    /// The new socket of a successful `Accept`.
    pub accepted: Option<OwnedFd>,
}

/// A shard's driver.
#[derive(Debug)]
pub enum Driver {
    /// io_uring.
    Uring(Box<UringDriver>),
    /// epoll.
    Epoll(EpollDriver),
    /// A unit test's fake (see [`fake`]).
    #[cfg(test)]
    Fake(fake::FakeDriver),
}

impl Driver {
    /// Opens a driver of the kind asked for (`Auto`: io_uring when the kernel allows it).
    pub fn open(kind: DriverKind) -> Result<Driver, Error> {
        match kind {
            DriverKind::Epoll => Ok(Driver::Epoll(EpollDriver::new()?)),
            DriverKind::Uring => UringDriver::new()
                .map(|d| Driver::Uring(Box::new(d)))
                .map_err(|e| Error::Unavailable {
                    feature: "io_uring",
                    why: e.to_string(),
                }),
            DriverKind::Auto => match UringDriver::new() {
                Ok(d) => Ok(Driver::Uring(Box::new(d))),
                Err(_) => Ok(Driver::Epoll(EpollDriver::new()?)),
            },
        }
    }

    /// Starts `op`; its completion will carry `token`.
    pub fn submit(&mut self, token: u64, op: Op) {
        match self {
            Driver::Uring(d) => d.submit(token, op),
            Driver::Epoll(d) => d.submit(token, op),
            #[cfg(test)]
            Driver::Fake(d) => d.submit(token, op),
        }
    }

    /// Cancels every op on `fd` (they complete, usually with `ECANCELED`) and forgets the fd.
    /// Call before dropping the last handle of an fd that had ops.
    pub fn cancel(&mut self, fd: RawFd) {
        match self {
            Driver::Uring(d) => d.cancel(fd),
            Driver::Epoll(d) => d.cancel(fd),
            #[cfg(test)]
            Driver::Fake(d) => d.cancel(fd),
        }
    }

    /// Waits up to `timeout` (forever when `None`) for completions and appends them to `out`.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), SyscallError> {
        match self {
            Driver::Uring(d) => d.wait(timeout, out),
            Driver::Epoll(d) => d.wait(timeout, out),
            #[cfg(test)]
            Driver::Fake(d) => d.wait(timeout, out),
        }
    }
}

/// Finds out once whether io_uring can be used here, and why not.
pub fn probe_uring() -> Result<(), String> {
    UringDriver::new().map(|_| ()).map_err(|e| e.to_string())
}

//! A replaceable fake for the system calls a shard makes itself (outside its driver), for unit
//! tests that run without a kernel: no sockets, no io_uring, no epoll.
//!
//! The idea of aya's `sys/fake.rs`: under `cfg(test)` each wrapper that a shard or a connection
//! calls first asks [`intercept`]. With no fake installed on the calling thread (every other
//! test) the answer is `None` and the real call runs. With a fake installed (see [`install`]),
//! the call is recorded and answered by the test's handler, or, when the handler passes, by a
//! harmless default ([`Reply::default_for`]); it never reaches the kernel. The fake is
//! per-thread, so tests running in parallel do not see each other's.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A call the fake can stand in for, with the fds it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `eventfd(2)` for a shard's wake-up.
    Eventfd,
    /// Adding one to an eventfd.
    EventfdSignal(RawFd),
    /// Resetting an eventfd's counter.
    EventfdDrain(RawFd),
    /// A nonblocking `recv(2)` of at most `len` bytes.
    RecvInto {
        /// The socket.
        fd: RawFd,
        /// Most bytes.
        len: usize,
    },
    /// A nonblocking `recv(2)` with `MSG_PEEK` of at most `len` bytes.
    PeekInto {
        /// The socket.
        fd: RawFd,
        /// Most bytes.
        len: usize,
    },
    /// A nonblocking `send(2)` of `len` bytes.
    Send {
        /// The socket.
        fd: RawFd,
        /// How many bytes were offered.
        len: usize,
    },
    /// A new TCP socket for an upstream connect.
    TcpStream {
        /// Of the IPv6 family.
        ipv6: bool,
    },
    /// `TCP_NODELAY` on.
    SetNodelay(RawFd),
    /// `SO_LINGER` zero (reset on close).
    SetLingerZero(RawFd),
    /// `shutdown(SHUT_WR)`.
    ShutdownWrite(RawFd),
    /// `getpeername(2)`.
    PeerAddr(RawFd),
    /// `getsockname(2)`.
    LocalAddr(RawFd),
}

/// What the fake answers a call with (on success).
#[derive(Debug)]
pub enum Reply {
    /// Done, nothing to return.
    Done,
    /// A new fd (`Eventfd`, `TcpStream`).
    Fd(OwnedFd),
    /// Bytes moved (`Send`).
    Len(usize),
    /// Bytes that arrived (`RecvInto`, `PeekInto`): appended to the caller's buffer.
    Bytes(Vec<u8>),
    /// An address (`PeerAddr`, `LocalAddr`); `None` when there is none.
    Addr(Option<SocketAddr>),
}

impl Reply {
    /// The answer when the test's handler gives none: a new fd is `/dev/null` (real, but no
    /// socket), a read finds nothing yet (`EAGAIN`), a send takes everything, an option is
    /// set, and a socket has no address.
    pub fn default_for(call: &Call) -> io::Result<Reply> {
        Ok(match call {
            Call::Eventfd | Call::TcpStream { .. } => Reply::Fd(null_fd()),
            Call::RecvInto { .. } | Call::PeekInto { .. } => {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Call::Send { len, .. } => Reply::Len(*len),
            Call::EventfdSignal(_)
            | Call::EventfdDrain(_)
            | Call::SetNodelay(_)
            | Call::SetLingerZero(_)
            | Call::ShutdownWrite(_) => Reply::Done,
            Call::PeerAddr(_) | Call::LocalAddr(_) => Reply::Addr(None),
        })
    }

    /// The fd of a `Fd` reply.
    ///
    /// # Panics
    /// On any other reply: the test answered a call with the wrong kind of value.
    pub fn into_fd(self) -> OwnedFd {
        match self {
            Reply::Fd(fd) => fd,
            other => panic!("the fake answered a call for an fd with {other:?}"),
        }
    }

    /// The byte count of a `Len` reply.
    ///
    /// # Panics
    /// On any other reply.
    pub fn into_len(self) -> usize {
        match self {
            Reply::Len(n) => n,
            other => panic!("the fake answered a call for a length with {other:?}"),
        }
    }

    /// The bytes of a `Bytes` reply.
    ///
    /// # Panics
    /// On any other reply.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Reply::Bytes(b) => b,
            other => panic!("the fake answered a read with {other:?}"),
        }
    }

    /// The address of an `Addr` reply.
    ///
    /// # Panics
    /// On any other reply.
    pub fn into_addr(self) -> Option<SocketAddr> {
        match self {
            Reply::Addr(a) => a,
            other => panic!("the fake answered a call for an address with {other:?}"),
        }
    }
}

/// A test's answers: `None` leaves the call to [`Reply::default_for`].
pub type Handler = Box<dyn FnMut(&Call) -> Option<io::Result<Reply>>>;

struct Fake {
    handler: Handler,
    calls: Vec<Call>,
}

thread_local! {
    static FAKE: RefCell<Option<Fake>> = const { RefCell::new(None) };
}

/// The fake installed on this thread until it drops.
#[must_use = "the fake is removed when this guard drops"]
pub struct Installed(());

impl Installed {
    /// Every call the fake answered so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        FAKE.with(|f| {
            f.borrow()
                .as_ref()
                .map(|f| f.calls.clone())
                .unwrap_or_default()
        })
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        FAKE.with(|f| f.borrow_mut().take());
    }
}

/// Replaces the system calls listed in [`Call`] on this thread with `handler` (and the
/// defaults), until the returned guard drops.
///
/// # Panics
/// When a fake is installed on this thread already.
pub fn install(handler: impl FnMut(&Call) -> Option<io::Result<Reply>> + 'static) -> Installed {
    FAKE.with(|f| {
        let mut f = f.borrow_mut();
        assert!(
            f.is_none(),
            "a sys fake is installed on this thread already"
        );
        *f = Some(Fake {
            handler: Box::new(handler),
            calls: Vec::new(),
        });
    });
    Installed(())
}

/// The fake's answer to `call`, or `None` to make the real call (no fake on this thread).
pub fn intercept(call: Call) -> Option<io::Result<Reply>> {
    FAKE.with(|f| {
        let mut f = f.borrow_mut();
        let fake = f.as_mut()?;
        let reply = (fake.handler)(&call).unwrap_or_else(|| Reply::default_for(&call));
        fake.calls.push(call);
        Some(reply)
    })
}

/// The number of an fd, for a [`Call`].
pub fn raw(fd: BorrowedFd<'_>) -> RawFd {
    fd.as_raw_fd()
}

/// A real fd that is no socket: `/dev/null`, opened read-write.
///
/// # Panics
/// When `/dev/null` cannot be opened (out of fds).
pub fn null_fd() -> OwnedFd {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null")
        .into()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn installed_it_answers_and_records_the_calls_and_then_steps_aside() {
        let fd = null_fd();
        {
            let fake = install(|call| match call {
                Call::RecvInto { .. } => Some(Ok(Reply::Bytes(b"hello world".to_vec()))),
                _ => None,
            });
            // A read appends what the test gave, at most the length asked for, as recv does.
            let mut buf = b">".to_vec();
            let n = super::super::recv_into(fd.as_fd(), &mut buf, 5).expect("fake read");
            assert_eq!((n, &buf[..]), (5, &b">hello"[..]));
            // A call the handler passes on gets the default: nothing to read yet.
            let err = super::super::peek_into(fd.as_fd(), &mut buf, 5).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            assert_eq!(
                fake.calls(),
                [
                    Call::RecvInto {
                        fd: fd.as_raw_fd(),
                        len: 5
                    },
                    Call::PeekInto {
                        fd: fd.as_raw_fd(),
                        len: 5
                    },
                ]
            );
        }
        // Removed: the real call runs (and `/dev/null` is no socket).
        let err = super::super::recv_into(fd.as_fd(), &mut Vec::new(), 5).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK));
    }
}

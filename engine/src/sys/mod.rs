//! System calls: splice, pipes, eventfd, poll, receiving into a vector's spare room, io_uring
//! setup, epoll, kTLS, the TCP socket calls the data plane makes (`socket`), and the BPF map
//! calls of the kernel byte accounting (`bpf`).
//!
//! The bottom layer: thin wrappers that import nothing from the rest of the crate (only std,
//! libc, io-uring, socket2 and rustls's key types), so everything above can use them. The
//! drivers built on them live in `driver/`. Under `cfg(test)`, the calls a shard makes itself
//! can be replaced by a per-thread fake (`fake`), so that shard logic is tested without a kernel.
//!
//! This is one of the few modules allowed `unsafe` (the crate root denies it): every block
//! states its invariant in a `// SAFETY:` comment.
#![allow(unsafe_code, reason = "raw system calls live here and nowhere else")]

#[cfg(feature = "ebpf")]
pub mod bpf;
pub mod epoll;
#[cfg(test)]
pub(crate) mod fake;
pub mod ktls;
pub mod socket;
pub mod uring;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use socket2::SockAddr;

/// A failed system call: which call, and what the kernel said.
#[derive(Debug, thiserror::Error)]
#[error("{call}: {source}")]
pub struct SyscallError {
    /// The name of the call (`"setsockopt(TCP_ULP)"`, `"io_uring_setup"`, ...).
    pub call: &'static str,
    /// The error the kernel returned.
    #[source]
    pub source: io::Error,
}

impl SyscallError {
    /// Wraps `source` with the name of the call that failed.
    pub fn new(call: &'static str, source: io::Error) -> Self {
        Self { call, source }
    }

    /// Captures `errno` for `call`.
    pub fn last(call: &'static str) -> Self {
        Self::new(call, io::Error::last_os_error())
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Makes writes to a closed socket return `EPIPE` instead of killing the process.
pub fn ignore_sigpipe() {
    // SAFETY: setting SIGPIPE's disposition to SIG_IGN is async-signal-safe and affects no memory.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// `recv(2)` of at most `len` bytes appended to `buf` (reserving room as needed).
pub fn recv_into(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, len: usize) -> io::Result<usize> {
    #[cfg(test)]
    if let Some(r) = fake::intercept(fake::Call::RecvInto {
        fd: fd.as_raw_fd(),
        len,
    }) {
        return r.map(|reply| fake_fill(buf, reply.into_bytes(), len));
    }
    buf.reserve(len);
    let start = buf.len();
    let spare = buf.spare_capacity_mut().as_mut_ptr();
    // SAFETY: `spare` points at `buf`'s spare capacity, at least `len` bytes (reserved above);
    // the kernel writes at most `len` bytes there.
    let ret = unsafe { libc::recv(fd.as_raw_fd(), spare.cast(), len, libc::MSG_DONTWAIT) };
    let n = cvt_size(ret)?;
    // SAFETY: the kernel initialised `n <= len` bytes after `start`, within capacity.
    unsafe { buf.set_len(start + n) };
    Ok(n)
}

/// `recv(2)` with `MSG_PEEK` of at most `len` bytes appended to `buf`: the bytes stay queued
/// on the socket.
pub fn peek_into(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, len: usize) -> io::Result<usize> {
    #[cfg(test)]
    if let Some(r) = fake::intercept(fake::Call::PeekInto {
        fd: fd.as_raw_fd(),
        len,
    }) {
        return r.map(|reply| fake_fill(buf, reply.into_bytes(), len));
    }
    buf.reserve(len);
    let start = buf.len();
    let spare = buf.spare_capacity_mut().as_mut_ptr();
    // SAFETY: `spare` points at `buf`'s spare capacity, at least `len` bytes (reserved above);
    // the kernel writes at most `len` bytes there.
    let ret = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            spare.cast(),
            len,
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    let n = cvt_size(ret)?;
    // SAFETY: the kernel initialised `n <= len` bytes after `start`, within capacity.
    unsafe { buf.set_len(start + n) };
    Ok(n)
}

/// Appends the bytes a fake read returned, at most `len` of them, as the kernel would.
#[cfg(test)]
fn fake_fill(buf: &mut Vec<u8>, bytes: Vec<u8>, len: usize) -> usize {
    let n = bytes.len().min(len);
    buf.extend_from_slice(&bytes[..n]);
    n
}

/// Marks `n` bytes after `buf.len()` as written by the kernel (an io_uring recv completion).
///
/// # Safety
/// The caller must guarantee that the kernel wrote `n` bytes starting at `buf.len()` and that
/// `buf.len() + n <= buf.capacity()`.
pub unsafe fn assume_filled(buf: &mut Vec<u8>, n: usize) {
    debug_assert!(buf.len() + n <= buf.capacity());
    // SAFETY: guaranteed by the caller.
    unsafe { buf.set_len(buf.len() + n) };
}

/// `send(2)` with `MSG_NOSIGNAL`, nonblocking.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    #[cfg(test)]
    if let Some(r) = fake::intercept(fake::Call::Send {
        fd: fd.as_raw_fd(),
        len: buf.len(),
    }) {
        return r.map(fake::Reply::into_len);
    }
    // SAFETY: `buf` is a valid readable slice for its length.
    let ret = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    cvt_size(ret)
}

/// `connect(2)` on a nonblocking socket: `Ok` when it connected at once, `EINPROGRESS` when
/// it goes on in the background.
pub fn connect(fd: BorrowedFd<'_>, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `addr` is a valid socket address of `addr.len()` bytes.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len()) }).map(drop)
}

/// Nonblocking `accept4(2)`; the new socket is nonblocking and close-on-exec.
pub fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed; the result is a new fd we take ownership of.
    let ret = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    let raw = cvt(ret)?;
    // SAFETY: accept4 returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Takes ownership of an fd number the kernel returned (an io_uring accept).
///
/// # Safety
/// `raw` must be an open fd that nothing else owns.
pub unsafe fn own_fd(raw: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// The pending error of a socket (`SO_ERROR`), as the result of a nonblocking connect.
pub fn take_socket_error(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes of the sizes given.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &mut len,
        )
    };
    cvt(ret)?;
    if err == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// Gives the CPU to another runnable thread, if there is one.
pub fn yield_now() {
    // SAFETY: no arguments, no memory.
    unsafe { libc::sched_yield() };
}

/// Asks the C allocator to return free memory to the system: glibc's `malloc_trim(0)`, which
/// releases the free pages of every arena (each shard thread allocates from its own), not just
/// the top of the main heap. glibc otherwise keeps what a burst of connections freed. A no-op
/// with other C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` takes no pointer and works on the allocator's own free lists, under
    // the allocator's locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether `fd` is readable (or writable) right now, without waiting.
pub fn is_ready(fd: BorrowedFd<'_>, write: bool) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: if write { libc::POLLOUT } else { libc::POLLIN },
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = cvt(unsafe { libc::poll(&mut pfd, 1, 0) })?;
    Ok(n > 0)
}

/// The error and hang-up events of a socket right now (`POLLERR | POLLHUP | POLLRDHUP` bits;
/// 0 when none), without waiting.
pub fn hangup_events(fd: BorrowedFd<'_>) -> io::Result<u16> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    cvt(unsafe { libc::poll(&mut pfd, 1, 0) })?;
    Ok((pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLRDHUP)) as u16)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one needs
        // no privilege and touches no memory of ours.
        if cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) }).is_ok() {
            lim = raised;
        }
    }
    Ok(lim.rlim_cur)
}

/// A nonblocking pipe `(read end, write end)` resized to `size` bytes when possible.
pub fn pipe(size: usize) -> Result<(OwnedFd, OwnedFd), SyscallError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is valid for two ints.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    cvt(ret).map_err(|e| SyscallError::new("pipe2", e))?;
    // SAFETY: pipe2 returned two fresh fds that nothing else owns.
    let rd = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above, for the write end.
    let wr = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    // A larger pipe means fewer splices per byte; failure (over pipe-max-size) is harmless.
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of ours.
    let _ = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    Ok((rd, wr))
}

/// A connected pair of Unix stream sockets, both close-on-exec: `(engine's end, caller's end)`.
/// The engine's end is nonblocking (the drivers and `splice` expect it); the caller's end is
/// left blocking, as `connect(2)` would return it.
pub fn socketpair() -> Result<(OwnedFd, OwnedFd), SyscallError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is valid for the two ints the call writes.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    cvt(ret).map_err(|e| SyscallError::new("socketpair", e))?;
    // SAFETY: socketpair returned two fresh fds that nothing else owns.
    let ours = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above, for the second one.
    let theirs = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    socket2::SockRef::from(&ours)
        .set_nonblocking(true)
        .map_err(|e| SyscallError::new("fcntl(O_NONBLOCK)", e))?;
    Ok((ours, theirs))
}

/// Whether `fd` is a Unix-domain socket (`getsockopt(SO_DOMAIN)`); false when it cannot tell.
pub fn is_unix_socket(fd: BorrowedFd<'_>) -> bool {
    socket2::SockRef::from(&fd)
        .domain()
        .is_ok_and(|d| d == socket2::Domain::UNIX)
}

/// Nonblocking `splice(2)` of up to `len` bytes from `from` to `to` (one of them a pipe).
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets are valid for pipes and sockets; no user memory is involved.
    let ret = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    cvt_size(ret)
}

/// A nonblocking eventfd, used to wake a shard.
pub fn eventfd() -> Result<OwnedFd, SyscallError> {
    #[cfg(test)]
    if let Some(r) = fake::intercept(fake::Call::Eventfd) {
        return r
            .map(fake::Reply::into_fd)
            .map_err(|e| SyscallError::new("eventfd", e));
    }
    // SAFETY: plain call; the result is a new fd we own.
    let ret = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    let raw = cvt(ret).map_err(|e| SyscallError::new("eventfd", e))?;
    // SAFETY: eventfd returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Adds one to an eventfd (wakes its reader).
pub fn eventfd_signal(fd: BorrowedFd<'_>) {
    #[cfg(test)]
    if fake::intercept(fake::Call::EventfdSignal(fd.as_raw_fd())).is_some() {
        return;
    }
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// Resets an eventfd's counter.
pub fn eventfd_drain(fd: BorrowedFd<'_>) {
    #[cfg(test)]
    if fake::intercept(fake::Call::EventfdDrain(fd.as_raw_fd())).is_some() {
        return;
    }
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
}

/// Takes ownership of a socket that systemd passed at `raw` (socket activation), after
/// checking that it is an open socket, and marks it close-on-exec.
///
/// Only [`crate::systemd::listen_fds`] calls it, once per fd, so nothing else owns it.
pub fn take_inherited_socket(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD reads the fd's flags; it touches no memory and fails on a closed fd.
    let flags = cvt(unsafe { libc::fcntl(raw, libc::F_GETFD) })?;
    // SAFETY: F_SETFD on an fd just shown to be open; no memory involved.
    cvt(unsafe { libc::fcntl(raw, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    // SAFETY: systemd passed this fd to this process for us (LISTEN_PID is ours), it is open
    // (checked above), and the one caller takes each number once, so no other owner exists.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let sock = socket2::SockRef::from(&fd);
    if sock.r#type().is_err() {
        // Not a socket: give the number back untouched rather than close what is not ours.
        let _ = std::os::fd::IntoRawFd::into_raw_fd(fd);
        return Err(io::Error::other(format!("fd {raw} is not a socket")));
    }
    Ok(fd)
}

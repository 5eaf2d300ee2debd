//! TCP socket calls: listeners, the upstream socket of a connection, and the options and
//! addresses the shard reads or sets on accepted sockets. Thin wrappers over socket2.
//!
//! The calls a shard makes per connection ([`tcp_stream`], [`set_nodelay`], [`set_linger_zero`],
//! [`shutdown_write`], [`peer_addr`], [`local_addr`]) go through the test fake under
//! `cfg(test)` (see [`super::fake`]); the listener calls, made by the control thread, do not.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

#[cfg(test)]
use super::fake::{self, Call};

/// How many connections the kernel queues on a listener before we accept them.
const BACKLOG: i32 = 1024;

/// A nonblocking, close-on-exec TCP listener bound to `addr` with `SO_REUSEADDR` and
/// `SO_REUSEPORT` (so that each shard can have its own), IPv6-only for an IPv6 address.
pub fn bind_listener(addr: SocketAddr) -> io::Result<OwnedFd> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // Best effort: a dual-stack wildcard would otherwise also take the IPv4 port.
        let _ = sock.set_only_v6(true);
    }
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

/// Fails with `EADDRINUSE` when anyone holds `addr`: a plain bind (no `SO_REUSEPORT`) cannot
/// share a port with a listener. Port 0 is always free.
pub fn check_port_free(addr: SocketAddr) -> io::Result<()> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    if addr.port() == 0 {
        return Ok(());
    }
    sock.bind(&addr.into())
}

/// A new nonblocking, close-on-exec TCP socket of `addr`'s family with `TCP_NODELAY` set,
/// ready for a nonblocking connect to `addr`.
pub fn tcp_stream(addr: &SockAddr) -> io::Result<OwnedFd> {
    #[cfg(test)]
    if let Some(r) = fake::intercept(Call::TcpStream {
        ipv6: addr.is_ipv6(),
    }) {
        return r.map(fake::Reply::into_fd);
    }
    let sock = Socket::new(
        addr.domain(),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    sock.set_tcp_nodelay(true)?;
    Ok(sock.into())
}

/// Sets `TCP_NODELAY`: small writes go out at once (the forwarder does its own batching).
pub fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[cfg(test)]
    if let Some(r) = fake::intercept(Call::SetNodelay(fake::raw(fd))) {
        return r.map(drop);
    }
    SockRef::from(&fd).set_tcp_nodelay(true)
}

/// Sets `SO_LINGER` to zero: closing the socket then resets the connection (RST) instead of
/// ending it with a FIN, so that a peer does not mistake a cut stream for a complete one.
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[cfg(test)]
    if let Some(r) = fake::intercept(Call::SetLingerZero(fake::raw(fd))) {
        return r.map(drop);
    }
    SockRef::from(&fd).set_linger(Some(Duration::ZERO))
}

/// `shutdown(SHUT_WR)`: sends a FIN; the socket can still be read.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[cfg(test)]
    if let Some(r) = fake::intercept(Call::ShutdownWrite(fake::raw(fd))) {
        return r.map(drop);
    }
    SockRef::from(&fd).shutdown(Shutdown::Write)
}

/// The address of the socket's peer (`None` when it is not a connected IP socket).
pub fn peer_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    #[cfg(test)]
    if let Some(r) = fake::intercept(Call::PeerAddr(fake::raw(fd))) {
        return r.ok().and_then(fake::Reply::into_addr);
    }
    SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

/// The socket's own address (a listener's resolves port 0; `None` when not an IP socket).
pub fn local_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    #[cfg(test)]
    if let Some(r) = fake::intercept(Call::LocalAddr(fake::raw(fd))) {
        return r.ok().and_then(fake::Reply::into_addr);
    }
    SockRef::from(&fd).local_addr().ok()?.as_socket()
}

/// Makes a socket nonblocking (a socket passed by systemd may come blocking).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    SockRef::from(&fd).set_nonblocking(true)
}

#[cfg(feature = "ebpf")]
/// The socket's cookie (`SO_COOKIE`): the kernel's 64-bit id of the socket, which the eBPF
/// accounting program keys its counts by.
pub fn cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    SockRef::from(&fd).cookie()
}

#[cfg(feature = "ebpf")]
/// The TCP state of a socket (`tcpi_state`, the first byte of `TCP_INFO`: 1 established, 7
/// closed, ...).
pub fn tcp_state(fd: BorrowedFd<'_>) -> io::Result<u8> {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes; the kernel writes at most `len` bytes.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info[0])
}

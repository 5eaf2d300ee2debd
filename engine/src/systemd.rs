//! systemd integration, without libsystemd: readiness notifications (`sd_notify`) written by
//! hand to the `NOTIFY_SOCKET` datagram socket, and socket activation (`LISTEN_FDS`).
//!
//! Both are no-ops outside systemd: without `NOTIFY_SOCKET` nothing is sent, and without
//! `LISTEN_FDS` (or with a `LISTEN_PID` that is not ours) no socket is taken.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the service manager, when there is
/// one; a failure is logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!(socket = ?path, error = %e, "cannot notify systemd");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    let sent = match bytes.first() {
        // An abstract socket name: '@' stands for the leading NUL byte.
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            sock.send_to_addr(state.as_bytes(), &addr)?
        }
        Some(b'/') => sock.send_to(state.as_bytes(), path)?,
        _ => {
            return Err(std::io::Error::other(
                "NOTIFY_SOCKET is neither a path nor an abstract name",
            ));
        }
    };
    if sent != state.len() {
        return Err(std::io::Error::other("short datagram"));
    }
    Ok(())
}

/// `READY=1`: every listener is open.
pub fn ready() {
    notify("READY=1");
}

/// `RELOADING=1` with the monotonic time, as `Type=notify-reload` wants it; follow with
/// [`ready`] when the reload is over, whether or not it succeeded.
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        crate::sys::monotonic_usec()
    ));
}

/// `STOPPING=1`: draining has begun.
pub fn stopping() {
    notify("STOPPING=1");
}

/// A listening socket systemd passed to us.
#[derive(Debug)]
pub struct ActivatedSocket {
    /// Its name from `LISTEN_FDNAMES` (systemd's `FileDescriptorName=`), or `"unknown"`.
    pub name: String,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// The socket.
    pub fd: OwnedFd,
}

/// The sockets passed by socket activation (`LISTEN_PID` = our pid, `LISTEN_FDS` = n: fds 3 to
/// 3+n-1), each with its bound address. Only the first call takes them; later calls return
/// nothing. An fd that is not a bound TCP socket is logged and left alone.
pub fn listen_fds() -> Vec<ActivatedSocket> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse::<i32>().ok())
        .unwrap_or(0);
    if !ours || count <= 0 || TAKEN.swap(true, Ordering::SeqCst) {
        return Vec::new();
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for i in 0..count.min(1024) {
        let raw = LISTEN_FDS_START + i;
        let name = names
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let fd = match crate::sys::take_inherited_socket(raw) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(fd = raw, name, error = %e, "ignoring a passed fd");
                continue;
            }
        };
        let addr = socket2::SockRef::from(&fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket());
        match addr {
            Some(addr) => out.push(ActivatedSocket { name, addr, fd }),
            None => {
                tracing::warn!(
                    fd = raw,
                    name,
                    "ignoring a passed socket that is not TCP/IP"
                );
            }
        }
    }
    out
}

//! systemd socket activation (`LISTEN_FDS`), without libsystemd: the sockets systemd passes
//! become the listeners of the forwarders whose address they are bound to. Without
//! `LISTEN_FDS` (or with a `LISTEN_PID` that is not ours) no socket is taken. (The readiness
//! notifications are the binary's.)

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

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

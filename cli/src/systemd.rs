//! systemd readiness notifications (`sd_notify`), without libsystemd: written by hand to the
//! `NOTIFY_SOCKET` datagram socket. Without `NOTIFY_SOCKET` (outside systemd) nothing is sent.
//! (Socket activation, `LISTEN_FDS`, is the engine's: it adopts the sockets as listeners.)

use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the service manager, when there is
/// one; a failure is logged, never fatal.
fn notify(state: &str) {
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
pub(crate) fn ready() {
    notify("READY=1");
}

/// `RELOADING=1` with the monotonic time, as `Type=notify-reload` wants it; follow with
/// [`ready`] when the reload is over, whether or not it succeeded.
pub(crate) fn reloading() {
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

/// `STOPPING=1`: draining has begun.
pub(crate) fn stopping() {
    notify("STOPPING=1");
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = i128::from(t.tv_sec) * 1_000_000 + i128::from(t.tv_nsec) / 1_000;
    u64::try_from(usec).unwrap_or(0)
}

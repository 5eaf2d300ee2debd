//! epoll(7): create a set, add and remove fds, wait for events. The driver that turns readiness
//! into completions is [`crate::driver`]'s.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{SyscallError, cvt};

/// `epoll_create1(EPOLL_CLOEXEC)`.
pub fn create() -> Result<OwnedFd, SyscallError> {
    // SAFETY: plain call; the result is a new fd we own.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if raw < 0 {
        return Err(SyscallError::last("epoll_create1"));
    }
    // SAFETY: epoll_create1 returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `epoll_ctl(EPOLL_CTL_ADD)`: watch `fd` for `events`, reported with `data`.
pub fn add(ep: BorrowedFd<'_>, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call; a closed `fd` is
    // refused with EBADF.
    cvt(unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
}

/// `epoll_ctl(EPOLL_CTL_DEL)`: stop watching `fd` (an fd not in the set is ignored).
pub fn delete(ep: BorrowedFd<'_>, fd: RawFd) {
    // SAFETY: removing an fd from our epoll set; a null event is allowed for DEL.
    unsafe {
        libc::epoll_ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut(),
        );
    }
}

/// `epoll_wait`: fills the front of `events` and says how many; `timeout_ms` -1 waits forever.
pub fn wait(
    ep: BorrowedFd<'_>,
    events: &mut [libc::epoll_event],
    timeout_ms: i32,
) -> io::Result<usize> {
    let len = events.len().min(i32::MAX as usize) as i32;
    // SAFETY: `events` is valid for writes of `len` entries.
    let n = cvt(unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), len, timeout_ms) })?;
    Ok(n as usize)
}

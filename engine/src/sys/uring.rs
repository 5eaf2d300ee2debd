//! io_uring setup: a ring with the flags the shards want, checked for every opcode the driver
//! uses. The driver that submits to it is [`crate::driver`]'s.

use std::io;

use io_uring::{IoUring, Probe, opcode};

use super::SyscallError;

/// Sets up a ring of `entries` submission slots and checks that the kernel has every opcode
/// the driver uses (`accept`, `connect`, `recv`, `send`, `poll_add`, `async_cancel`).
pub fn setup(entries: u32) -> Result<IoUring, SyscallError> {
    let ring = IoUring::builder()
        .setup_coop_taskrun()
        // The kernel flags pending task work in the ring, so a busy-polling shard can see
        // that a completion is on its way without a system call.
        .setup_taskrun_flag()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .or_else(|_| IoUring::new(entries))
        .map_err(|e| SyscallError::new("io_uring_setup", e))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| SyscallError::new("io_uring_register(PROBE)", e))?;
    for (code, name) in [
        (opcode::Accept::CODE, "accept"),
        (opcode::Connect::CODE, "connect"),
        (opcode::Recv::CODE, "recv"),
        (opcode::Send::CODE, "send"),
        (opcode::PollAdd::CODE, "poll_add"),
        (opcode::AsyncCancel2::CODE, "async_cancel"),
    ] {
        if !probe.is_supported(code) {
            return Err(SyscallError::new(
                "io_uring_register(PROBE)",
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the kernel's io_uring lacks {name}"),
                ),
            ));
        }
    }
    Ok(ring)
}

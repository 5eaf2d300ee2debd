//! The map key and value types that splice-engine's eBPF program (`splice-ebpf`) and its loader
//! (the engine's `ebpf` feature) share. Plain `repr(C)` data, the same layout on both sides.
//!
//! Two maps (see docs/ebpf.md):
//! - `SOCKETS`, a hash from socket cookie (`u64`, `SO_COOKIE`) to [`Socket`]: the engine inserts
//!   an entry when it accepts or connects a socket; the program keeps the entry's counts up to
//!   date and removes it when the socket reaches `TCP_CLOSE`, after adding its last counts to its
//!   slot.
//! - `TOTALS`, a per-CPU array of [`Totals`] indexed by [`Socket::slot`]: the bytes of every
//!   socket that counts toward that slot (one forwarder or tunnel, one leg), closed or open.
#![no_std]

/// Most sockets registered at once (`SOCKETS`'s size).
pub const MAX_SOCKETS: u32 = 1 << 17;
/// How many slots `TOTALS` has (forwarder or tunnel × leg pairs).
pub const MAX_SLOTS: u32 = 4096;

/// [`Socket::flags`]: the engine connected this socket (it sent the SYN, which the kernel's
/// `bytes_acked` counts as one byte once the SYN-ACK arrives).
pub const FLAG_ACTIVE: u32 = 1;
/// [`Socket::flags`], set by the program: the peer's FIN is in `bytes_received` (one byte).
pub const FLAG_FIN_IN: u32 = 2;
/// [`Socket::flags`], set by the program: our FIN is in `bytes_acked` (one byte).
pub const FLAG_FIN_ACKED: u32 = 4;
/// [`Socket::flags`], set by the program: a segment with FIN arrived in FIN_WAIT1/2 while
/// `rcv_nxt` was [`Socket::fin_rcv_nxt`].
pub const FLAG_FIN_SEEN: u32 = 8;

/// A registered socket: which slot it counts toward, and what it has counted so far.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Socket {
    /// The index in `TOTALS` this socket's bytes are added to.
    pub slot: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// TCP payload bytes received in order (SYN and FIN excluded), counted so far.
    pub rx: u64,
    /// TCP payload bytes sent and acknowledged by the peer (SYN and FIN excluded), counted so far.
    pub tx: u64,
    /// `rcv_nxt` when a FIN-carrying segment was parsed in FIN_WAIT1/2 (see [`FLAG_FIN_SEEN`]).
    pub fin_rcv_nxt: u32,
    /// Padding (keeps the layout the same on both sides).
    pub pad: u32,
}

impl Socket {
    /// A new registration: counts toward `slot`; `active` when the engine connected it.
    pub const fn new(slot: u32, active: bool) -> Self {
        Self {
            slot,
            flags: if active { FLAG_ACTIVE } else { 0 },
            rx: 0,
            tx: 0,
            fin_rcv_nxt: 0,
            pad: 0,
        }
    }
}

/// The bytes counted toward one slot, on one CPU (`TOTALS` is per-CPU: the loader sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// TCP payload bytes the slot's sockets received.
    pub rx: u64,
    /// TCP payload bytes the slot's sockets sent and had acknowledged.
    pub tx: u64,
}

#[cfg(feature = "user")]
// SAFETY: `Socket` is repr(C), Copy, made of integers only, with no padding bytes.
unsafe impl aya::Pod for Socket {}
#[cfg(feature = "user")]
// SAFETY: `Totals` is repr(C), Copy, made of two u64s, with no padding bytes.
unsafe impl aya::Pod for Totals {}

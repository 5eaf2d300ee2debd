//! splice-engine's eBPF program: exact TCP payload bytes, each way, per socket the engine
//! registered, for the spliced and kTLS bytes that user space never sees as much as for the
//! rest. See docs/ebpf.md for why `sock_ops` and what each number means.
//!
//! One `sock_ops` program, attached (multi-attach) to the engine's cgroup. It counts nothing per
//! packet: it reads the kernel's own per-socket counters, `bytes_received` (`rcv_nxt` moved:
//! in-order bytes, each once, however they arrived: GRO super-packets, retransmits, splice) and
//! `bytes_acked` (`snd_una` moved: bytes the peer has, each once, however TSO cut them), and takes
//! out the sequence numbers that are not payload: the SYN (in `bytes_acked` of the side that
//! connected) and each FIN (in `bytes_received` once the peer's FIN is in, in `bytes_acked` once
//! ours is acknowledged). It runs on state changes (the last one, to `TCP_CLOSE`, gives the final
//! counts and retires the entry) and on each RTT sample (so open connections' counts move).
#![no_std]
#![no_main]

use aya_ebpf::bindings::bpf_sock_ops;
use aya_ebpf::helpers::bpf_get_socket_cookie;
use aya_ebpf::macros::{map, sock_ops};
use aya_ebpf::maps::{HashMap, PerCpuArray};
use aya_ebpf::programs::SockOpsContext;
use splice_ebpf_common::{
    FLAG_ACTIVE, FLAG_FIN_ACKED, FLAG_FIN_IN, FLAG_FIN_SEEN, MAX_SLOTS, MAX_SOCKETS, Socket, Totals,
};

/// Socket cookie -> registration and counts so far (filled by the engine, retired here).
#[map(name = "SOCKETS")]
static SOCKETS: HashMap<u64, Socket> = HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

/// Per slot (forwarder or tunnel, leg), per CPU: the bytes counted.
#[map(name = "TOTALS")]
static TOTALS: PerCpuArray<Totals> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

// From linux/bpf.h (uapi), stable ABI.
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_PARSE_HDR_OPT_CB: u32 = 13;
const BPF_SOCK_OPS_STATE_CB_FLAG: u32 = 1 << 2;
const BPF_SOCK_OPS_RTT_CB_FLAG: u32 = 1 << 3;
const BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG: u32 = 1 << 4;
const TCPHDR_FIN: u32 = 0x01;

// From linux/tcp_states.h.
const TCP_FIN_WAIT1: u32 = 4;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_TIME_WAIT: u32 = 6;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

#[sock_ops]
pub fn splice_sockops(ctx: SockOpsContext) -> u32 {
    // SAFETY: the kernel passes a valid bpf_sock_ops for the program's run; only its fields are
    // read (each a context access the verifier checks).
    let ops = unsafe { &*ctx.ops };
    if ops.is_fullsock == 0 {
        return 1;
    }
    let op = ops.op;
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB
        || op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
    {
        // Ask for state changes and RTT samples on this socket. Every socket of the cgroup
        // gets them (a passive socket is registered only after accept); a socket the engine
        // did not register costs one failed lookup per callback.
        let want =
            ops.bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG;
        let _ = ctx.set_cb_flags(want as i32);
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(entry) = SOCKETS.get_ptr_mut(&cookie) else {
        return 1;
    };
    // SAFETY: a value pointer the map lookup returned, valid for this run; callbacks for one
    // socket run under its lock, so no other run of this program writes it meanwhile.
    let entry = unsafe { &mut *entry };
    count(&ctx, ops, entry);
    if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == TCP_CLOSE {
        // The last callback: the counts are final and already in the totals.
        let _ = SOCKETS.remove(&cookie);
    }
    1
}

fn count(ctx: &SockOpsContext, ops: &bpf_sock_ops, entry: &mut Socket) {
    let op = ops.op;
    // ops.state is the state before the change during a STATE_CB.
    let (old, new) = if op == BPF_SOCK_OPS_STATE_CB {
        (ctx.arg(0), ctx.arg(1))
    } else {
        (ops.state, ops.state)
    };
    let mut flags = entry.flags;
    // The peer's FIN has been taken in (rcv_nxt, and so bytes_received, moved over it).
    if fin_received_state(old) || fin_received_state(new) {
        flags |= FLAG_FIN_IN;
    }
    if op == BPF_SOCK_OPS_PARSE_HDR_OPT_CB && ops.skb_tcp_flags & TCPHDR_FIN != 0 {
        flags |= FLAG_FIN_SEEN;
        entry.fin_rcv_nxt = ops.rcv_nxt;
    }
    // FIN_WAIT2 -> CLOSE is the one change that may or may not follow the peer's FIN (a FIN
    // goes through tcp_time_wait; a reset, the FIN_WAIT2 timeout or close() in FIN_WAIT2 do
    // not). The FIN was taken in when a FIN-carrying segment was parsed and rcv_nxt moved.
    if old == TCP_FIN_WAIT2
        && new == TCP_CLOSE
        && flags & FLAG_FIN_SEEN != 0
        && ops.rcv_nxt != entry.fin_rcv_nxt
    {
        flags |= FLAG_FIN_IN;
    }
    // Our FIN has been acknowledged: FIN_WAIT2 and TIME_WAIT come only after that; in the other
    // states where our FIN is queued (FIN_WAIT1, CLOSING, LAST_ACK, and the close that follows
    // them), nothing is left unacknowledged. That last test also holds, wrongly, while a
    // FIN that the peer's zero window holds back is still unsent: the count is then one short
    // for a while (never one over, which could not be taken back).
    if old == TCP_FIN_WAIT2
        || new == TCP_FIN_WAIT2
        || old == TCP_TIME_WAIT
        || (fin_queued_state(old) && ops.snd_una == ops.snd_nxt)
    {
        flags |= FLAG_FIN_ACKED;
    }
    if op == BPF_SOCK_OPS_STATE_CB && (new == TCP_FIN_WAIT1 || new == TCP_FIN_WAIT2) {
        // From here on, parse each incoming header to see the peer's FIN (see above).
        let want = ops.bpf_sock_ops_cb_flags | BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG;
        let _ = ctx.set_cb_flags(want as i32);
    }
    entry.flags = flags;

    let rx = ops
        .bytes_received
        .saturating_sub((flags & FLAG_FIN_IN != 0) as u64);
    let not_payload = (flags & FLAG_ACTIVE != 0) as u64 + (flags & FLAG_FIN_ACKED != 0) as u64;
    let tx = ops.bytes_acked.saturating_sub(not_payload);
    let d_rx = rx.saturating_sub(entry.rx);
    let d_tx = tx.saturating_sub(entry.tx);
    if d_rx == 0 && d_tx == 0 {
        return;
    }
    entry.rx += d_rx;
    entry.tx += d_tx;
    if let Some(t) = TOTALS.get_ptr_mut(entry.slot) {
        // SAFETY: this CPU's value of an array slot that exists; per-CPU, so nothing else
        // writes it while this program runs (it is not preempted).
        let t = unsafe { &mut *t };
        t.rx += d_rx;
        t.tx += d_tx;
    }
}

/// States in which our FIN is queued (sent, unless a zero window holds it back).
fn fin_queued_state(s: u32) -> bool {
    s == TCP_FIN_WAIT1 || s == TCP_CLOSING || s == TCP_LAST_ACK
}

/// States that only a received FIN leads to.
fn fin_received_state(s: u32) -> bool {
    s == TCP_CLOSE_WAIT || s == TCP_LAST_ACK || s == TCP_CLOSING || s == TCP_TIME_WAIT
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

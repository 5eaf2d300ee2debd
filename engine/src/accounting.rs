//! Kernel byte accounting (docs/ebpf.md): the eBPF program of `ebpf/` counts the TCP payload
//! each of the engine's sockets received and had acknowledged, in the kernel, so that spliced
//! and kTLS bytes, which user space never touches, are counted as exactly as the rest.
//!
//! [`start`] loads the committed object (embedded at build time), attaches its
//! `sock_ops` program to the engine's cgroup (v2) with a BPF link (multi-attach), and keeps the maps:
//! each engine has its own, so two engines on one host never see each other's sockets. The
//! shards register each socket's cookie with the slot it counts toward ([`Slots::register`])
//! when they accept or connect it; the program keeps the counts and, when the socket reaches
//! `TCP_CLOSE`, adds its last bytes to the slot and removes the entry itself (a socket's last
//! bytes may be acknowledged after the engine closed it). Dropping the [`Accounting`] (the
//! engine) detaches the program and frees the maps.
//!
//! Everything that needs aya is behind the `ebpf` feature; without it, [`start`]
//! says so and the engine counts in user space only.

use std::sync::Arc;

use crate::kinds::EbpfMode;

/// Which of a connection's sockets: the one the engine accepted, or the one it dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leg {
    /// The accepted socket (the client's side).
    Downstream = 0,
    /// The socket the engine connected (the upstream's side).
    Upstream = 1,
}

/// Kernel byte counts of one forwarder (or tunnel): the TCP payload its sockets received
/// (`*_in`) and sent and had acknowledged by the peer (`*_out`), per leg. SYN and FIN are not
/// payload; a retransmitted byte counts once. On a TLS leg the payload is TLS records; on a
/// plain leg it is the bytes user space counts in `bytes_down_to_up` and `bytes_up_to_down`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelBytes {
    /// Received on the accepted (downstream) sockets.
    pub downstream_in: u64,
    /// Sent, and acknowledged, on the accepted (downstream) sockets.
    pub downstream_out: u64,
    /// Received on the dialed (upstream) sockets.
    pub upstream_in: u64,
    /// Sent, and acknowledged, on the dialed (upstream) sockets.
    pub upstream_out: u64,
}

/// The two slots (downstream, upstream) one forwarder's sockets count toward.
pub(crate) struct Slots {
    acct: Arc<Accounting>,
    first: u32,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").field("first", &self.first).finish()
    }
}

impl Slots {
    /// Registers `fd` (a TCP socket the engine just accepted or is about to connect:
    /// `active`) as `leg` of this forwarder. A failure is logged once and counted; the
    /// connection goes on, counted in user space only.
    pub(crate) fn register(&self, fd: std::os::fd::BorrowedFd<'_>, leg: Leg, active: bool) {
        self.acct.register(fd, self.first + leg as u32, active);
    }

    /// The bytes counted so far.
    pub(crate) fn bytes(&self) -> KernelBytes {
        let (downstream_in, downstream_out) = self.acct.totals(self.first);
        let (upstream_in, upstream_out) = self.acct.totals(self.first + 1);
        KernelBytes {
            downstream_in,
            downstream_out,
            upstream_in,
            upstream_out,
        }
    }
}

impl Accounting {
    /// Two fresh slots for one forwarder or tunnel (`None` when all are taken: that one is
    /// counted in user space only, said once in the log).
    pub(crate) fn slots(self: &Arc<Self>) -> Option<Slots> {
        let first = self.take_slots()?;
        Some(Slots {
            acct: self.clone(),
            first,
        })
    }
}

/// Starts the accounting as `mode` asks: `Ok(None)` when it is off, `Err(why)` when it
/// cannot be loaded (the caller fails for `on`, and logs `why` for `auto`).
pub(crate) fn start(mode: EbpfMode) -> Result<Option<Arc<Accounting>>, String> {
    match mode {
        EbpfMode::Off => Ok(None),
        EbpfMode::Auto | EbpfMode::On => Accounting::load().map(|a| Some(Arc::new(a))),
    }
}

/// Whether the accounting program can be loaded and attached here, and why not (the probe):
/// loads it, attaches it, and drops it again.
pub(crate) fn probe() -> Result<(), String> {
    Accounting::load().map(drop)
}

#[cfg(feature = "ebpf")]
pub(crate) use loaded::Accounting;

#[cfg(not(feature = "ebpf"))]
pub(crate) use absent::Accounting;

#[cfg(not(feature = "ebpf"))]
mod absent {
    /// Never built: this build has no eBPF support.
    pub(crate) struct Accounting(std::convert::Infallible);

    impl Accounting {
        pub(super) fn load() -> Result<Self, String> {
            Err("this build has no eBPF support (built without the `ebpf` feature)".into())
        }

        pub(super) fn take_slots(&self) -> Option<u32> {
            match self.0 {}
        }

        pub(super) fn register(&self, _: std::os::fd::BorrowedFd<'_>, _: u32, _: bool) {
            match self.0 {}
        }

        pub(super) fn totals(&self, _: u32) -> (u64, u64) {
            match self.0 {}
        }
    }
}

#[cfg(feature = "ebpf")]
mod loaded {
    use std::fs::File;
    use std::os::fd::{AsFd, BorrowedFd};
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

    use aya::maps::{Map, MapData, PerCpuArray};
    use aya::programs::{CgroupAttachMode, SockOps};
    use splice_ebpf_common::{MAX_SLOTS, Socket, Totals};

    use crate::sys::bpf::BpfMap;

    /// The program, built by `cargo xtask ebpf` from `ebpf/` and committed.
    static OBJECT: &[u8] = aya::include_bytes_aligned!("../../ebpf/splice-accounting.bpf.o");

    /// The loaded program, its link to the cgroup and its maps.
    pub(crate) struct Accounting {
        /// `SOCKETS`: cookie -> registration (the shards insert into it).
        sockets: BpfMap,
        /// `TOTALS`: per slot, per CPU.
        totals: Mutex<PerCpuArray<MapData, Totals>>,
        /// Holds the program and its cgroup link: dropping it detaches the program.
        _ebpf: Mutex<aya::Ebpf>,
        next_slot: AtomicU32,
        /// Registrations that failed (map full, socket gone).
        failed: AtomicU64,
        warned_full: AtomicBool,
        warned_register: AtomicBool,
    }

    impl Accounting {
        pub(super) fn load() -> Result<Self, String> {
            let cgroup = own_cgroup()?;
            let dir = File::open(&cgroup)
                .map_err(|e| format!("cannot open cgroup {}: {e}", cgroup.display()))?;
            let mut ebpf = aya::Ebpf::load(OBJECT)
                .map_err(|e| explain("loading the eBPF object (its maps)", &e))?;
            let prog: &mut SockOps = ebpf
                .program_mut("splice_sockops")
                .ok_or("the eBPF object has no program splice_sockops")?
                .try_into()
                .map_err(|e| explain("the eBPF object's splice_sockops", &e))?;
            prog.load()
                .map_err(|e| explain("loading the sock_ops program", &e))?;
            // On kernels with BPF links (5.7+, all we support) aya attaches with a link, which
            // the kernel always adds beside the cgroup's other programs (BPF_F_ALLOW_MULTI) and
            // which takes no flags: `AllowMultiple` there is refused (EINVAL). So another
            // engine's program, or anyone else's, stays attached next to ours.
            prog.attach(dir.as_fd(), CgroupAttachMode::Single)
                .map_err(|e| {
                    explain(
                        &format!("attaching the sock_ops program to {}", cgroup.display()),
                        &e,
                    )
                })?;
            let sockets = match ebpf.take_map("SOCKETS") {
                Some(Map::HashMap(data)) => data,
                _ => return Err("the eBPF object has no hash map SOCKETS".into()),
            };
            let sockets = sockets
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .and_then(BpfMap::new)
                .map_err(|e| format!("the SOCKETS map: {e}"))?;
            let totals = ebpf
                .take_map("TOTALS")
                .ok_or("the eBPF object has no map TOTALS")?;
            let totals =
                PerCpuArray::try_from(totals).map_err(|e| explain("the TOTALS map", &e))?;
            Ok(Self {
                sockets,
                totals: Mutex::new(totals),
                _ebpf: Mutex::new(ebpf),
                next_slot: AtomicU32::new(0),
                failed: AtomicU64::new(0),
                warned_full: AtomicBool::new(false),
                warned_register: AtomicBool::new(false),
            })
        }

        pub(super) fn take_slots(&self) -> Option<u32> {
            let first = self.next_slot.fetch_add(2, Relaxed);
            if first + 2 <= MAX_SLOTS {
                return Some(first);
            }
            if !self.warned_full.swap(true, Relaxed) {
                tracing::warn!(
                    slots = MAX_SLOTS,
                    "eBPF accounting: every slot is taken; forwarders added from now on are \
                     counted in user space only"
                );
            }
            None
        }

        pub(super) fn register(&self, fd: BorrowedFd<'_>, slot: u32, active: bool) {
            let result = crate::sys::socket::cookie(fd).and_then(|cookie| {
                let key = cookie.to_ne_bytes();
                self.sockets
                    .update(&key, &encode(&Socket::new(slot, active)), 0)?;
                // An accepted socket reset before it was accepted is closed already: no
                // callback will come to retire its entry, so it goes now. (A socket to be
                // connected is in TCP_CLOSE too, until its connect: that one stays.)
                if !active && crate::sys::socket::tcp_state(fd)? == TCP_CLOSE {
                    self.sockets.delete(&key)?;
                }
                Ok(())
            });
            if let Err(e) = result {
                self.failed.fetch_add(1, Relaxed);
                if !self.warned_register.swap(true, Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "eBPF accounting: cannot register a socket; its bytes are counted in \
                         user space only (said once)"
                    );
                }
            }
        }

        /// Whether `fd`'s cookie is in `SOCKETS` now (tests).
        #[cfg(test)]
        pub(super) fn is_registered(&self, fd: BorrowedFd<'_>) -> bool {
            let cookie = crate::sys::socket::cookie(fd).expect("SO_COOKIE");
            let mut value = [0u8; 32];
            self.sockets
                .lookup(&cookie.to_ne_bytes(), &mut value)
                .expect("lookup")
        }

        pub(super) fn totals(&self, slot: u32) -> (u64, u64) {
            let totals = self.totals.lock().expect("eBPF totals lock");
            match totals.get(&slot, 0) {
                Ok(per_cpu) => per_cpu
                    .iter()
                    .fold((0, 0), |(rx, tx), t| (rx + t.rx, tx + t.tx)),
                Err(_) => (0, 0),
            }
        }
    }

    /// `s` as the bytes of its `repr(C)` layout (no padding: six fields, 32 bytes).
    fn encode(s: &Socket) -> [u8; 32] {
        let mut out = [0; 32];
        out[0..4].copy_from_slice(&s.slot.to_ne_bytes());
        out[4..8].copy_from_slice(&s.flags.to_ne_bytes());
        out[8..16].copy_from_slice(&s.rx.to_ne_bytes());
        out[16..24].copy_from_slice(&s.tx.to_ne_bytes());
        out[24..28].copy_from_slice(&s.fin_rcv_nxt.to_ne_bytes());
        out[28..32].copy_from_slice(&s.pad.to_ne_bytes());
        out
    }

    const _: () = assert!(size_of::<Socket>() == 32);

    /// `TCP_CLOSE` in linux/tcp_states.h.
    const TCP_CLOSE: u8 = 7;

    /// `what` failed with `e`: its message with its causes, and what to do about a refusal.
    fn explain(what: &str, e: &dyn std::error::Error) -> String {
        let mut msg = format!("{what}: {e}");
        let mut denied = false;
        let mut cause = e.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !msg.contains(&text) {
                msg.push_str(&format!(": {text}"));
            }
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                denied |= matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES));
            }
            cause = c.source();
        }
        denied |= msg.contains("Operation not permitted") || msg.contains("Permission denied");
        if denied {
            msg.push_str(" (the process needs CAP_BPF and CAP_NET_ADMIN, or root)");
        }
        msg
    }

    /// The cgroup (v2) this process is in, as a directory: the cgroup2 mount point from
    /// /proc/self/mountinfo joined with the `0::` line of /proc/self/cgroup.
    fn own_cgroup() -> Result<PathBuf, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER"
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (head, tail) = l.split_once(" - ")?;
                (tail.split_whitespace().next()? == "cgroup2")
                    .then(|| head.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .ok_or("no cgroup v2 hierarchy is mounted (eBPF accounting attaches to one)")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("this process is in no cgroup v2 cgroup")?;
        Ok(mount.join(path.trim().trim_start_matches('/')))
    }
}

#[cfg(all(test, feature = "ebpf"))]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    /// A socket reset before the engine registered it gets no more callbacks, so registering
    /// it leaves no entry behind (the map would fill up with them); a live one stays.
    #[test]
    fn a_socket_already_reset_leaves_no_entry() {
        let acct = Arc::new(Accounting::load().unwrap_or_else(|why| {
            panic!("eBPF accounting must load for this test (run it as root): {why}")
        }));
        let slots = acct.slots().expect("two slots");
        let (client, reset) = pair();
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        drop(client);
        let end = Instant::now() + Duration::from_secs(10);
        while crate::sys::socket::tcp_state(reset.as_fd()).expect("TCP_INFO") != 7
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        slots.register(reset.as_fd(), Leg::Downstream, false);
        assert!(!acct.is_registered(reset.as_fd()));

        let (_peer, live) = pair();
        slots.register(live.as_fd(), Leg::Downstream, false);
        assert!(acct.is_registered(live.as_fd()));
    }

    /// A leg moved with splice alone (socket -> pipe -> socket, as after a kTLS hand-off):
    /// user space never reads a byte, and the kernel counts each one, exactly, on both the
    /// accepted socket (in) and the dialed one (out). Needs CAP_BPF (CI runs as root).
    #[test]
    fn spliced_bytes_are_counted_exactly() {
        let acct = Arc::new(Accounting::load().unwrap_or_else(|why| {
            panic!("eBPF accounting must load for this test (run it as root): {why}")
        }));
        let slots = acct.slots().expect("two slots");
        // `client` -> `accepted` (downstream, registered after accept, as the shards do);
        // `dialed` (upstream, registered before its connect) -> `sink`.
        let (mut client, accepted) = pair();
        slots.register(accepted.as_fd(), Leg::Downstream, false);
        let sink_l = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        let dialed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        slots.register(dialed.as_fd(), Leg::Upstream, true);
        dialed
            .connect(&sink_l.local_addr().expect("addr").into())
            .expect("connect");
        let dialed: TcpStream = dialed.into();
        let (mut sink, _) = sink_l.accept().expect("accept");

        let payload: Vec<u8> = (0..5_000_003u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let sent = payload.clone();
        let writer = std::thread::spawn(move || {
            client.write_all(&sent).expect("write");
            client.shutdown(Shutdown::Write).expect("half-close");
            client
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).expect("read");
            (sink, got)
        });
        let (pr, pw) = crate::sys::pipe(1 << 16).expect("pipe");
        loop {
            let n = crate::sys::splice(accepted.as_fd(), pw.as_fd(), 1 << 16).expect("splice in");
            if n == 0 {
                break;
            }
            let mut left = n;
            while left > 0 {
                match crate::sys::splice(pr.as_fd(), dialed.as_fd(), left) {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::yield_now()
                    }
                    Err(e) => panic!("splice out: {e}"),
                }
            }
        }
        dialed
            .shutdown(Shutdown::Write)
            .expect("half-close upstream");
        let (sink, got) = reader.join().expect("reader");
        assert!(
            got == payload,
            "the sink got {} bytes, not the payload",
            got.len()
        );
        let client = writer.join().expect("writer");
        drop((client, accepted, dialed, sink));

        let want = KernelBytes {
            downstream_in: payload.len() as u64,
            downstream_out: 0,
            upstream_in: 0,
            upstream_out: payload.len() as u64,
        };
        let end = Instant::now() + Duration::from_secs(30);
        while slots.bytes() != want && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(slots.bytes(), want);
    }
}

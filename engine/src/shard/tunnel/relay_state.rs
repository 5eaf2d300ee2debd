//! One `[[relay]]` as the shards see it ([`Relay`]: its TLS config, registry, limits), its
//! figures ([`RelayStats`], the kernel's counts in [`RelayKernel`]) and the control side's
//! events: what the relay's peers ([`super::relay`]) and its standby channels
//! ([`super::standby`]) share.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use splice_proto::tunnel::relay::{Limits, Side};

use crate::relay::counters::PerTunnel;
use crate::relay::registry::Registry;

/// A relay's figures, for `/metrics`: per relay, and per open tunnel in `per_tunnel`.
#[derive(Debug, Default)]
pub(crate) struct RelayStats {
    /// Tunnels with a session on a shard (at least one peer connected).
    pub(crate) tunnels_open: AtomicI64,
    /// Peers connected, by side (source, destination).
    pub(crate) peers: [AtomicI64; 2],
    /// Open streams over all tunnels.
    pub(crate) streams: AtomicI64,
    /// Bytes of tunnel frames forwarded, source to destination and back.
    pub(crate) bytes: [AtomicU64; 2],
    /// Upgrades refused, by status: 400, 401, 403, 409, 410, 426, 431, 503, other.
    pub(crate) refused: [AtomicU64; 9],
    /// Peers whose TLS handshake failed (garbage instead of TLS, bad certificates).
    pub(crate) tls_failures: AtomicU64,
    /// Peers closed for breaking the protocol's rules.
    pub(crate) rule_breaks: AtomicU64,
    /// Admitted peers moved to their tunnel's shard.
    pub(crate) handoffs: AtomicU64,
    /// Standby agents connected (`GET /notify`), and the notices pushed to them.
    pub(crate) standby: AtomicI64,
    pub(crate) standby_notices: AtomicU64,
    /// The same figures per open tunnel (shared with the control side, which drops a
    /// tunnel's entry when it closes).
    pub(crate) per_tunnel: Arc<PerTunnel>,
    /// The kernel's counts of the admitted peers' sockets (eBPF accounting).
    pub(crate) kernel: RelayKernel,
}

/// Where the kernel counts the relay's peer sockets (eBPF accounting, docs/ebpf.md): two
/// slots per tunnel id (source side, destination side), taken when its first peer is
/// admitted and kept while the relay runs, so a tunnel that closes and opens again counts on
/// and the relay's totals (the sum over every tunnel it admitted a peer of) never go back.
/// A socket is registered when its peer is admitted: the kernel's counters start with the
/// socket, so its TLS handshake and upgrade are counted too; a peer refused before admission
/// is counted in user space only.
#[derive(Default)]
pub(crate) struct RelayKernel {
    acct: std::sync::OnceLock<Arc<crate::accounting::Accounting>>,
    /// Tunnel id -> its slots (`None`: every slot was taken).
    tunnels: std::sync::Mutex<HashMap<String, Option<crate::accounting::Slots>>>,
}

impl std::fmt::Debug for RelayKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayKernel")
            .field("running", &self.acct.get().is_some())
            .finish()
    }
}

impl RelayKernel {
    /// Counts from now on with `acct` (set once, as the relay starts).
    pub(crate) fn start(&self, acct: &Arc<crate::accounting::Accounting>) {
        let _ = self.acct.set(acct.clone());
    }

    /// Registers `fd`, the socket of a peer admitted to `tunnel` on `side`.
    pub(super) fn register(&self, tunnel: &str, side: Side, fd: std::os::fd::BorrowedFd<'_>) {
        let Some(acct) = self.acct.get() else {
            return;
        };
        let mut tunnels = self.tunnels.lock().expect("relay kernel slots lock");
        let slots = tunnels
            .entry(tunnel.to_string())
            .or_insert_with(|| acct.slots());
        if let Some(slots) = slots {
            slots.register(fd, leg(side), false);
        }
    }

    /// Tunnel `id`'s counts as `[side][direction]` (`[source, destination]` × `[in, out]`),
    /// `None` when the kernel does not count it.
    pub(crate) fn tunnel(&self, id: &str) -> Option<[[u64; 2]; 2]> {
        let tunnels = self.tunnels.lock().expect("relay kernel slots lock");
        tunnels.get(id)?.as_ref().map(|s| by_side(s.bytes()))
    }

    /// The relay's counts over every tunnel, as [`Self::tunnel`]'s (`None` while the kernel
    /// does not count).
    pub(crate) fn total(&self) -> Option<[[u64; 2]; 2]> {
        self.acct.get()?;
        let tunnels = self.tunnels.lock().expect("relay kernel slots lock");
        let mut sum = [[0; 2]; 2];
        for slots in tunnels.values().flatten() {
            let b = by_side(slots.bytes());
            for (s, t) in sum.iter_mut().zip(b) {
                s[0] += t[0];
                s[1] += t[1];
            }
        }
        Some(sum)
    }
}

/// A tunnel's two slots are a forwarder's two legs: the source side's peers count as the
/// downstream leg, the destination side's as the upstream one.
fn leg(side: Side) -> crate::accounting::Leg {
    match side {
        Side::Source => crate::accounting::Leg::Downstream,
        Side::Destination => crate::accounting::Leg::Upstream,
    }
}

fn by_side(b: crate::accounting::KernelBytes) -> [[u64; 2]; 2] {
    [
        [b.downstream_in, b.downstream_out],
        [b.upstream_in, b.upstream_out],
    ]
}

/// The statuses counted in [`RelayStats::refused`], in order ("other" last).
pub(crate) const REFUSAL_STATUSES: [u16; 8] = [400, 401, 403, 409, 410, 426, 431, 503];

impl RelayStats {
    pub(super) fn refusal(&self, status: u16) {
        let i = REFUSAL_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(REFUSAL_STATUSES.len());
        self.refused[i].fetch_add(1, Relaxed);
    }
}

/// One `[[relay]]` as the shards see it.
pub(crate) struct Relay {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) tls: Arc<rustls::ServerConfig>,
    /// The client and device CAs (`client_ca`, `device_ca`), when either is set.
    pub(crate) identities: Option<Arc<crate::relay::identity::Identities>>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) limits: Limits,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_peers: usize,
    /// Bytes per second each tunnel forwards at most in each direction (`None`: no limit).
    pub(crate) rate_limit: Option<u64>,
    /// The origins whose pages may use `POST /cookie` and the cookie (`--cors-origin`).
    pub(crate) cors_origins: Vec<String>,
    /// Peers connected or in their upgrade, over all shards (against `max_peers`).
    pub(crate) peers: AtomicI64,
    pub(crate) stats: Arc<RelayStats>,
}

/// What the control side tells the shards.
pub(crate) use crate::relay::service::RelayEvent as Event;

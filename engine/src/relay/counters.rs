//! Per-tunnel counters: what the data plane counts for each open tunnel (bytes by direction,
//! peers, streams), read by `/metrics` and the API's describe. An entry is made when a
//! tunnel's first peer joins and removed when the tunnel closes or expires, so the number of
//! entries (and of `/metrics` series) follows the open tunnels, not every tunnel ever opened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use super::tunnel::Pairing;

/// One tunnel's counters; the data plane holds an `Arc` of it, so counting takes no lock.
#[derive(Debug, Default)]
pub(crate) struct TunnelCounters {
    /// Bytes of tunnel frames forwarded, source to destination and back.
    pub(crate) bytes: [AtomicU64; 2],
    /// Peers connected, by side (source, destination).
    pub(crate) peers: [AtomicI64; 2],
    /// Open streams.
    pub(crate) streams: AtomicI64,
    /// How the tunnel was paired (set when its first peer joins), for the metrics' labels.
    pub(crate) pairing: OnceLock<Pairing>,
}

impl TunnelCounters {
    /// The `pairing` and `identity` labels: the kind, and the certificate identity or thing
    /// name (empty for tokens, which are never shown).
    pub(crate) fn pairing_labels(&self) -> (&'static str, &str) {
        let p = self.pairing.get();
        (
            p.map_or("token", Pairing::kind),
            p.and_then(Pairing::identity).unwrap_or(""),
        )
    }
}

/// A relay's [`TunnelCounters`] by tunnel id.
#[derive(Debug, Default)]
pub(crate) struct PerTunnel(Mutex<HashMap<String, Arc<TunnelCounters>>>);

impl PerTunnel {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TunnelCounters>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tunnel `id`'s counters, made at zero if it has none yet.
    pub(crate) fn get(&self, id: &str) -> Arc<TunnelCounters> {
        self.map().entry(id.to_string()).or_default().clone()
    }

    /// Forgets tunnel `id` (closed or expired): its series leave `/metrics`.
    pub(crate) fn forget(&self, id: &str) {
        self.map().remove(id);
    }

    /// Bytes forwarded for tunnel `id` (source to destination, and back), if it has counters.
    pub(crate) fn bytes(&self, id: &str) -> Option<[u64; 2]> {
        self.map()
            .get(id)
            .map(|c| [c.bytes[0].load(Relaxed), c.bytes[1].load(Relaxed)])
    }

    /// Every tunnel's counters, by id.
    pub(crate) fn snapshot(&self) -> Vec<(String, Arc<TunnelCounters>)> {
        let mut all: Vec<_> = self
            .map()
            .iter()
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_open_tunnels() {
        let p = PerTunnel::default();
        p.get("a").bytes[0].fetch_add(5, Relaxed);
        p.get("a").bytes[1].fetch_add(7, Relaxed);
        p.get("b");
        assert_eq!(p.bytes("a"), Some([5, 7]));
        assert_eq!(p.snapshot().len(), 2);
        p.forget("a");
        assert_eq!(p.bytes("a"), None);
        assert_eq!(p.snapshot().len(), 1);
    }
}

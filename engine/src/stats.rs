//! Per-listener counters, kept in user space with relaxed atomics (always available; the eBPF
//! accounting that arrives later adds kernel-side byte counts beside them).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::Side;

/// Live counters of one forwarder. Shared by every shard that serves it.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted and admitted (refused ones are counted in `refused` only).
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Connections refused because `max_connections` was reached.
    pub refused: AtomicU64,
    /// Connections whose TLS leg was handed to the kernel (kTLS).
    pub ktls: AtomicU64,
    /// Payload bytes from downstream to upstream.
    pub bytes_down_to_up: AtomicU64,
    /// Payload bytes from upstream to downstream.
    pub bytes_up_to_down: AtomicU64,
    /// Connections that failed on the downstream side.
    pub errors_downstream: AtomicU64,
    /// Connections that failed on the upstream side.
    pub errors_upstream: AtomicU64,
    /// Connections that failed in TLS (handshake, verification, bad records).
    pub errors_tls: AtomicU64,
    /// Connections that failed inside the engine.
    pub errors_internal: AtomicU64,
}

impl ListenerStats {
    /// Counts one failed connection against `side`.
    pub fn record_error(&self, side: Side) {
        match side {
            Side::Downstream => &self.errors_downstream,
            Side::Upstream => &self.errors_upstream,
            Side::Tls => &self.errors_tls,
            Side::Internal => &self.errors_internal,
        }
        .fetch_add(1, Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self, name: &str, mode: &str) -> StatsSnapshot {
        StatsSnapshot {
            name: name.to_string(),
            mode: mode.to_string(),
            accepted: self.accepted.load(Relaxed),
            active: self.active.load(Relaxed),
            refused: self.refused.load(Relaxed),
            ktls: self.ktls.load(Relaxed),
            bytes_down_to_up: self.bytes_down_to_up.load(Relaxed),
            bytes_up_to_down: self.bytes_up_to_down.load(Relaxed),
            errors_downstream: self.errors_downstream.load(Relaxed),
            errors_upstream: self.errors_upstream.load(Relaxed),
            errors_tls: self.errors_tls.load(Relaxed),
            errors_internal: self.errors_internal.load(Relaxed),
        }
    }
}

/// A copy of one forwarder's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs, reason = "the fields mirror ListenerStats")]
pub struct StatsSnapshot {
    pub name: String,
    pub mode: String,
    pub accepted: u64,
    pub active: u64,
    pub refused: u64,
    pub ktls: u64,
    pub bytes_down_to_up: u64,
    pub bytes_up_to_down: u64,
    pub errors_downstream: u64,
    pub errors_upstream: u64,
    pub errors_tls: u64,
    pub errors_internal: u64,
}

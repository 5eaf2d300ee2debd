//! Per-listener counters, kept in user space with relaxed atomics (always available; the eBPF
//! accounting that arrives later adds kernel-side byte counts beside them).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use crate::accounting::KernelBytes;
use crate::error::Side;
use crate::kinds::Mode;

/// The counters of every forwarder (name, mode, counters), kept by the engine and read by the
/// metrics endpoint. It lives here, below both, so neither imports the other.
pub(crate) type Registry = Arc<Mutex<Vec<(String, Mode, Arc<ListenerStats>)>>>;

/// Live counters of one forwarder. Shared by every shard that serves it.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted and admitted (refused ones are counted in `refused` only).
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Connections refused because `max_connections` was reached.
    pub refused: AtomicU64,
    /// Connections the shard that accepted them handed to another shard (`balance =
    /// "round-robin"`); they are counted in `accepted` too.
    pub handed_off: AtomicU64,
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
    /// How long completed TLS handshakes took.
    pub handshakes: Histogram,
    /// The not-after time (unix seconds) of the certificate this forwarder presents (server
    /// mode's certificate, client mode's client certificate); 0 when it presents none.
    pub cert_not_after: AtomicI64,
    /// Connections whose TLS peer closed TCP without `close_notify` at a record boundary, with
    /// nothing undelivered (browsers end `wss://` this way). The plain side was reset; these
    /// are not counted as errors.
    pub unclean_closes: AtomicU64,
    /// Where its sockets' bytes are counted in the kernel, when eBPF accounting runs (set when
    /// the forwarder is first built; kept, like the rest, across reloads).
    pub(crate) kernel: std::sync::OnceLock<crate::accounting::Slots>,
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
            handed_off: self.handed_off.load(Relaxed),
            ktls: self.ktls.load(Relaxed),
            bytes_down_to_up: self.bytes_down_to_up.load(Relaxed),
            bytes_up_to_down: self.bytes_up_to_down.load(Relaxed),
            errors_downstream: self.errors_downstream.load(Relaxed),
            errors_upstream: self.errors_upstream.load(Relaxed),
            errors_tls: self.errors_tls.load(Relaxed),
            errors_internal: self.errors_internal.load(Relaxed),
            handshakes: self.handshakes.snapshot(),
            cert_not_after: Some(self.cert_not_after.load(Relaxed)).filter(|&t| t != 0),
            unclean_closes: self.unclean_closes.load(Relaxed),
            kernel: self.kernel.get().map(crate::accounting::Slots::bytes),
        }
    }
}

/// A copy of one forwarder's counters, taken by [`Engine::stats`](crate::Engine::stats). The
/// counters start at zero when the forwarder is added and survive reloads that keep it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// The forwarder's name ([`ForwarderConfig::name`](crate::ForwarderConfig::name)).
    pub name: String,
    /// Its mode: `"client"` or `"server"`.
    pub mode: String,
    /// Connections accepted and admitted (refused ones are counted in `refused` only).
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections refused because `max_connections` was reached.
    pub refused: u64,
    /// Connections this shard accepted and handed to another shard (`balance = "round-robin"`).
    pub handed_off: u64,
    /// Connections whose TLS leg was handed to the kernel (kTLS).
    pub ktls: u64,
    /// Payload bytes from downstream (the accepted connection) to upstream.
    pub bytes_down_to_up: u64,
    /// Payload bytes from upstream to downstream.
    pub bytes_up_to_down: u64,
    /// Connections that failed on the downstream side ([`Side::Downstream`]).
    pub errors_downstream: u64,
    /// Connections that failed on the upstream side ([`Side::Upstream`]).
    pub errors_upstream: u64,
    /// Connections that failed in TLS: handshake, verification, bad records ([`Side::Tls`]).
    pub errors_tls: u64,
    /// Connections that failed inside the engine ([`Side::Internal`]).
    pub errors_internal: u64,
    /// Connections whose TLS peer closed TCP without `close_notify` at a record boundary, with
    /// nothing undelivered (browsers end `wss://` this way); not counted as errors.
    pub unclean_closes: u64,
    /// How long completed TLS handshakes took.
    pub handshakes: HistogramSnapshot,
    /// The not-after time (unix seconds) of the certificate this forwarder presents (server
    /// mode's certificate, client mode's client certificate); `None` when it presents none.
    pub cert_not_after: Option<i64>,
    /// The bytes the kernel counted on its sockets (eBPF accounting, docs/ebpf.md); `None`
    /// when that does not run.
    pub kernel: Option<KernelBytes>,
}

/// Upper bounds (seconds) of the handshake duration buckets: 1 ms to 10 s.
pub const HANDSHAKE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations ([`HANDSHAKE_BUCKETS`]) with relaxed atomics: one
/// add per observation, no lock.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is above the largest bound.
    buckets: [AtomicU64; HANDSHAKE_BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = HANDSHAKE_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(HANDSHAKE_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Cumulative counts, as Prometheus reports them.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0; HANDSHAKE_BUCKETS.len() + 1];
        let mut total = 0;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            total += b.load(Relaxed);
            *c = total;
        }
        HistogramSnapshot {
            cumulative,
            sum_nanos: self.sum_nanos.load(Relaxed),
        }
    }
}

/// A fixed-bucket histogram of durations ([`HANDSHAKE_BUCKETS`]), as counted so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations at or below each bound of [`HANDSHAKE_BUCKETS`], then the total (`+Inf`).
    pub cumulative: [u64; HANDSHAKE_BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.cumulative[HANDSHAKE_BUCKETS.len()]
    }
}

/// Reload outcomes, for the whole engine.
#[derive(Debug)]
pub struct ReloadStats {
    /// Reloads applied.
    pub success: AtomicU64,
    /// Reloads refused (the previous configuration stayed).
    pub failure: AtomicU64,
    /// When the last reload was asked for (unix milliseconds; the start at first).
    pub last_attempt_ms: AtomicU64,
    /// When the configuration in force was loaded (unix milliseconds; the start at first).
    pub last_success_ms: AtomicU64,
}

impl ReloadStats {
    /// Counters at zero, both times now (the start counts as the first load).
    pub fn new() -> Self {
        let now = unix_ms();
        Self {
            success: AtomicU64::new(0),
            failure: AtomicU64::new(0),
            last_attempt_ms: AtomicU64::new(now),
            last_success_ms: AtomicU64::new(now),
        }
    }

    /// A reload begins.
    pub fn attempt(&self) {
        self.last_attempt_ms.store(unix_ms(), Relaxed);
    }

    /// The reload that began last ended with `ok`.
    pub fn outcome(&self, ok: bool) {
        if ok {
            self.last_success_ms.store(unix_ms(), Relaxed);
            self.success.fetch_add(1, Relaxed);
        } else {
            self.failure.fetch_add(1, Relaxed);
        }
    }

    /// A copy for reporting.
    pub fn snapshot(&self) -> ReloadSnapshot {
        ReloadSnapshot {
            success: self.success.load(Relaxed),
            failure: self.failure.load(Relaxed),
            last_attempt_ms: self.last_attempt_ms.load(Relaxed),
            last_success_ms: self.last_success_ms.load(Relaxed),
        }
    }
}

impl Default for ReloadStats {
    fn default() -> Self {
        Self::new()
    }
}

/// A copy of [`ReloadStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs, reason = "the fields mirror ReloadStats")]
pub struct ReloadSnapshot {
    pub success: u64,
    pub failure: u64,
    pub last_attempt_ms: u64,
    pub last_success_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

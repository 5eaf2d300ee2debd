//! Prometheus text exposition of the per-forwarder counters at `GET /metrics`, and of the
//! engine's reloads and build.
//!
//! Control plane, not data plane: the HTTP side ([`server`]) runs hyper on its own thread.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::stats::{HANDSHAKE_BUCKETS, Registry, ReloadSnapshot, ReloadStats, StatsSnapshot};

pub mod server;

pub use server::MetricsServer;

/// What the endpoint reports: every forwarder's counters and the engine's reloads.
pub(crate) struct Source {
    pub(crate) registry: Registry,
    pub(crate) reloads: Arc<ReloadStats>,
    /// The tunnel's agents.
    pub(crate) agents: Arc<std::sync::Mutex<Vec<Arc<crate::shard::tunnel::agent::AgentShared>>>>,
    /// The tunnel relays' figures.
    pub(crate) relays: crate::shard::tunnel::metrics::StatsList,
}

impl Source {
    /// The whole exposition, as served.
    pub(crate) fn render(&self) -> String {
        let snaps: Vec<StatsSnapshot> = self
            .registry
            .lock()
            .map(|r| {
                r.iter()
                    .map(|(name, mode, s)| s.snapshot(name, mode.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = render(&snaps);
        out.push_str(&render_engine(&self.reloads.snapshot()));
        if let Ok(agents) = self.agents.lock() {
            out.push_str(&crate::shard::tunnel::agent::render(&agents));
        }
        out.push_str(&crate::shard::tunnel::metrics::render(&self.relays));
        out
    }
}

/// Renders counters in the Prometheus text format.
pub fn render(snaps: &[StatsSnapshot]) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &dyn Fn(&StatsSnapshot, &mut String, &str)| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for s in snaps {
                let labels = format!("forwarder=\"{}\",mode=\"{}\"", escape(&s.name), s.mode);
                rows(s, &mut out, &labels);
            }
        };
    let simple = |f: fn(&StatsSnapshot) -> u64, name: &'static str| {
        move |s: &StatsSnapshot, out: &mut String, l: &str| {
            let _ = writeln!(out, "{name}{{{l}}} {}", f(s));
        }
    };
    family(
        "splice_connections_accepted_total",
        "counter",
        "Connections accepted and admitted (those refused at max_connections are counted in splice_connections_refused_total only).",
        &simple(|s| s.accepted, "splice_connections_accepted_total"),
    );
    family(
        "splice_connections_active",
        "gauge",
        "Connections open now.",
        &simple(|s| s.active, "splice_connections_active"),
    );
    family(
        "splice_connections_refused_total",
        "counter",
        "Connections refused at the max_connections limit.",
        &simple(|s| s.refused, "splice_connections_refused_total"),
    );
    family(
        "splice_connections_handed_off_total",
        "counter",
        "Connections the accepting shard handed to another shard (balance = \"round-robin\").",
        &simple(|s| s.handed_off, "splice_connections_handed_off_total"),
    );
    family(
        "splice_connections_ktls_total",
        "counter",
        "Connections whose TLS session was handed to the kernel.",
        &simple(|s| s.ktls, "splice_connections_ktls_total"),
    );
    family(
        "splice_bytes_total",
        "counter",
        "Payload bytes forwarded; down is the accepted side.",
        &|s, out, l| {
            let _ = writeln!(
                out,
                "splice_bytes_total{{{l},direction=\"down_to_up\"}} {}",
                s.bytes_down_to_up
            );
            let _ = writeln!(
                out,
                "splice_bytes_total{{{l},direction=\"up_to_down\"}} {}",
                s.bytes_up_to_down
            );
        },
    );
    if snaps.iter().any(|s| s.kernel.is_some()) {
        family(
            "splice_kernel_bytes_total",
            "counter",
            "TCP payload bytes the kernel counted on the forwarder's sockets (eBPF accounting): received (in) and sent and acknowledged (out), on the accepted (downstream) and dialed (upstream) sockets. On the plain leg they equal splice_bytes_total; on the TLS leg they are TLS records.",
            &|s, out, l| {
                let Some(k) = s.kernel else { return };
                for (leg, dir, v) in [
                    ("downstream", "in", k.downstream_in),
                    ("downstream", "out", k.downstream_out),
                    ("upstream", "in", k.upstream_in),
                    ("upstream", "out", k.upstream_out),
                ] {
                    let _ = writeln!(
                        out,
                        "splice_kernel_bytes_total{{{l},leg=\"{leg}\",direction=\"{dir}\"}} {v}"
                    );
                }
            },
        );
    }
    family(
        "splice_connection_unclean_closes_total",
        "counter",
        "Connections whose TLS peer closed TCP without close_notify at a record boundary, \
         nothing lost (the plain side is reset; not an error).",
        &simple(
            |s| s.unclean_closes,
            "splice_connection_unclean_closes_total",
        ),
    );
    family(
        "splice_connection_errors_total",
        "counter",
        "Connections that failed, by the side that failed.",
        &|s, out, l| {
            for (side, v) in [
                ("downstream", s.errors_downstream),
                ("upstream", s.errors_upstream),
                ("tls", s.errors_tls),
                ("internal", s.errors_internal),
            ] {
                let _ = writeln!(
                    out,
                    "splice_connection_errors_total{{{l},side=\"{side}\"}} {v}"
                );
            }
        },
    );
    family(
        "splice_handshake_duration_seconds",
        "histogram",
        "Completed TLS handshakes, from the TLS leg's TCP connection to the end of the handshake.",
        &|s, out, l| {
            let h = &s.handshakes;
            let bounds = HANDSHAKE_BUCKETS.iter().map(|le| le.to_string());
            for (le, n) in bounds.chain(["+Inf".to_string()]).zip(h.cumulative) {
                let _ = writeln!(
                    out,
                    "splice_handshake_duration_seconds_bucket{{{l},le=\"{le}\"}} {n}"
                );
            }
            let sum = h.sum_nanos as f64 / 1e9;
            let _ = writeln!(out, "splice_handshake_duration_seconds_sum{{{l}}} {sum}");
            let _ = writeln!(
                out,
                "splice_handshake_duration_seconds_count{{{l}}} {}",
                h.count()
            );
        },
    );
    family(
        "splice_certificate_expiry_timestamp_seconds",
        "gauge",
        "The notAfter time (unix seconds) of the certificate the forwarder presents: server \
         mode's certificate, client mode's client certificate.",
        &|s, out, l| {
            if let Some(t) = s.cert_not_after {
                let _ = writeln!(
                    out,
                    "splice_certificate_expiry_timestamp_seconds{{{l}}} {t}"
                );
            }
        },
    );
    out
}

/// Renders the engine-wide series: build information and reloads.
pub fn render_engine(reloads: &ReloadSnapshot) -> String {
    let mut out = String::new();
    let mut one = |name: &str, kind: &str, help: &str, sample: String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{sample}");
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    one(
        "splice_build_info",
        "gauge",
        "Always 1; the labels say which build runs.",
        format!(
            "{{version=\"{}\",arch=\"{}\",os=\"{}\",profile=\"{profile}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH,
            std::env::consts::OS,
        ),
    );
    one(
        "splice_reload_success_total",
        "counter",
        "Reloads (SIGHUP) applied.",
        format!(" {}", reloads.success),
    );
    one(
        "splice_reload_failure_total",
        "counter",
        "Reloads (SIGHUP) refused; the previous configuration stayed.",
        format!(" {}", reloads.failure),
    );
    let secs = |ms: u64| ms as f64 / 1000.0;
    one(
        "splice_reload_last_attempt_timestamp_seconds",
        "gauge",
        "When the last reload was asked for (unix seconds; the start until the first reload).",
        format!(" {}", secs(reloads.last_attempt_ms)),
    );
    one(
        "splice_reload_last_success_timestamp_seconds",
        "gauge",
        "When the configuration in force was loaded (unix seconds; the start until the first \
         successful reload).",
        format!(" {}", secs(reloads.last_success_ms)),
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use super::*;

    #[test]
    fn renders_labels_and_values() {
        let s = StatsSnapshot {
            name: "a\"b".into(),
            mode: "client".into(),
            accepted: 7,
            bytes_up_to_down: 42,
            errors_tls: 3,
            ..Default::default()
        };
        let text = render(&[s]);
        assert!(
            text.contains(
                "splice_connections_accepted_total{forwarder=\"a\\\"b\",mode=\"client\"} 7"
            ),
            "{text}"
        );
        assert!(text.contains("direction=\"up_to_down\"} 42"), "{text}");
        assert!(text.contains("side=\"tls\"} 3"), "{text}");
        assert!(!text.contains("splice_kernel_bytes_total"), "{text}");
    }

    #[test]
    fn renders_kernel_bytes_when_counted() {
        let s = StatsSnapshot {
            name: "k".into(),
            mode: "server".into(),
            kernel: Some(crate::stats::KernelBytes {
                downstream_in: 1,
                downstream_out: 2,
                upstream_in: 3,
                upstream_out: 4,
            }),
            ..Default::default()
        };
        let text = render(&[s]);
        for (leg, dir, v) in [
            ("downstream", "in", 1),
            ("downstream", "out", 2),
            ("upstream", "in", 3),
            ("upstream", "out", 4),
        ] {
            let row = format!(
                "splice_kernel_bytes_total{{forwarder=\"k\",mode=\"server\",leg=\"{leg}\",direction=\"{dir}\"}} {v}"
            );
            assert!(text.contains(&row), "{row} not in\n{text}");
        }
    }

    #[test]
    fn renders_histogram_and_certificate_expiry() {
        let stats = crate::stats::ListenerStats::default();
        stats.handshakes.observe(Duration::from_micros(500));
        stats.handshakes.observe(Duration::from_millis(30));
        stats.handshakes.observe(Duration::from_secs(11));
        stats.cert_not_after.store(1_936_742_400, Relaxed);
        let text = render(&[stats.snapshot("f", "server")]);
        let l = "forwarder=\"f\",mode=\"server\"";
        for (le, n) in [
            ("0.001", 1),
            ("0.025", 1),
            ("0.05", 2),
            ("10", 2),
            ("+Inf", 3),
        ] {
            let line = format!("splice_handshake_duration_seconds_bucket{{{l},le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(text.contains(&format!(
            "splice_handshake_duration_seconds_count{{{l}}} 3\n"
        )));
        assert!(text.contains(&format!(
            "splice_handshake_duration_seconds_sum{{{l}}} 11.0305\n"
        )));
        assert!(text.contains("# TYPE splice_handshake_duration_seconds histogram\n"));
        assert!(text.contains(&format!(
            "splice_certificate_expiry_timestamp_seconds{{{l}}} 1936742400\n"
        )));
        // No certificate, no series.
        let none = render(&[crate::stats::ListenerStats::default().snapshot("g", "client")]);
        assert!(
            !none.contains("splice_certificate_expiry_timestamp_seconds{"),
            "{none}"
        );
    }

    #[test]
    fn renders_reloads_and_build_info() {
        let r = ReloadStats::new();
        r.attempt();
        r.outcome(true);
        r.attempt();
        r.outcome(false);
        let snap = r.snapshot();
        assert!(snap.last_attempt_ms >= snap.last_success_ms);
        let text = render_engine(&snap);
        assert!(text.contains("splice_reload_success_total 1\n"), "{text}");
        assert!(text.contains("splice_reload_failure_total 1\n"), "{text}");
        assert!(
            text.contains("# TYPE splice_reload_failure_total counter\n"),
            "{text}"
        );
        let version = format!(
            "splice_build_info{{version=\"{}\",",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&version), "{text}");
    }
}

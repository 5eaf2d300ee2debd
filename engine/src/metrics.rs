//! Prometheus text exposition of the per-forwarder counters at `GET /metrics`.
//!
//! Control plane, not data plane: a plain thread with blocking sockets is enough.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::engine::Registry;
use crate::error::{Error, Result};
use crate::stats::StatsSnapshot;

/// The metrics endpoint's thread; stops when dropped.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    pub(crate) fn start(addr: SocketAddr, registry: Registry) -> Result<Self> {
        let listener = TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut req = [0u8; 2048];
                    let n = conn.read(&mut req).unwrap_or(0);
                    let head = String::from_utf8_lossy(&req[..n]);
                    let (status, body) = if head.starts_with("GET /metrics") {
                        let snaps: Vec<StatsSnapshot> = registry
                            .lock()
                            .map(|r| {
                                r.iter()
                                    .map(|(name, mode, s)| s.snapshot(name, mode.as_str()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        ("200 OK", render(&snaps))
                    } else {
                        ("404 Not Found", "try /metrics\n".to_string())
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            })
            .map_err(|e| Error::Io {
                context: "spawn metrics thread".into(),
                source: e,
            })?;
        tracing::info!(addr = %addr, "metrics at http://{addr}/metrics");
        Ok(Self {
            stop,
            addr,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
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
    }
}

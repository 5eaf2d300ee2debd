//! The relays' figures in the Prometheus text format, appended to `/metrics`.
//!
//! Per relay, not per tunnel: a label per tunnel id would grow the exposition (and the
//! scraper's series) with every tunnel ever opened.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use super::relay::{REFUSAL_STATUSES, RelayStats};

/// The relays' statistics, by name: filled as relays start, read by the metrics thread.
pub(crate) type StatsList = Arc<Mutex<Vec<(String, Arc<RelayStats>)>>>;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition of every relay in `list` (nothing when there is none).
pub(crate) fn render(list: &StatsList) -> String {
    let relays = list.lock().map(|l| l.clone()).unwrap_or_default();
    let mut out = String::new();
    if relays.is_empty() {
        return out;
    }
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &dyn Fn(&str, &RelayStats, &mut String)| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (relay, s) in &relays {
                rows(&escape(relay), s, &mut out);
            }
        };
    family(
        "splice_tunnels_open",
        "gauge",
        "Tunnels with at least one peer connected to the relay.",
        &|r, s, out| {
            let _ = writeln!(
                out,
                "splice_tunnels_open{{relay=\"{r}\"}} {}",
                s.tunnels_open.load(Relaxed)
            );
        },
    );
    family(
        "splice_tunnel_peers_connected",
        "gauge",
        "Agents connected to the relay (upgrade done), by side.",
        &|r, s, out| {
            for (i, side) in ["source", "destination"].into_iter().enumerate() {
                let _ = writeln!(
                    out,
                    "splice_tunnel_peers_connected{{relay=\"{r}\",side=\"{side}\"}} {}",
                    s.peers[i].load(Relaxed)
                );
            }
        },
    );
    family(
        "splice_tunnel_streams_active",
        "gauge",
        "Open streams over the relay's tunnels.",
        &|r, s, out| {
            let _ = writeln!(
                out,
                "splice_tunnel_streams_active{{relay=\"{r}\"}} {}",
                s.streams.load(Relaxed)
            );
        },
    );
    family(
        "splice_tunnel_bytes_total",
        "counter",
        "Bytes of tunnel frames the relay forwarded, by direction (over all its tunnels).",
        &|r, s, out| {
            for (i, dir) in ["source_to_destination", "destination_to_source"]
                .into_iter()
                .enumerate()
            {
                let _ = writeln!(
                    out,
                    "splice_tunnel_bytes_total{{relay=\"{r}\",direction=\"{dir}\"}} {}",
                    s.bytes[i].load(Relaxed)
                );
            }
        },
    );
    family(
        "splice_tunnel_upgrades_refused_total",
        "counter",
        "Agents' upgrades the relay refused, by the HTTP status answered (503 includes max_peers).",
        &|r, s, out| {
            for (i, status) in REFUSAL_STATUSES
                .iter()
                .map(|s| s.to_string())
                .chain(["other".to_string()])
                .enumerate()
            {
                let _ = writeln!(
                    out,
                    "splice_tunnel_upgrades_refused_total{{relay=\"{r}\",status=\"{status}\"}} {}",
                    s.refused[i].load(Relaxed)
                );
            }
        },
    );
    family(
        "splice_tunnel_tls_failures_total",
        "counter",
        "Agents whose TLS handshake with the relay failed (garbage instead of TLS included).",
        &|r, s, out| {
            let _ = writeln!(
                out,
                "splice_tunnel_tls_failures_total{{relay=\"{r}\"}} {}",
                s.tls_failures.load(Relaxed)
            );
        },
    );
    family(
        "splice_tunnel_rule_breaks_total",
        "counter",
        "Peers the relay closed for breaking the WebSocket or tunnel rules.",
        &|r, s, out| {
            let _ = writeln!(
                out,
                "splice_tunnel_rule_breaks_total{{relay=\"{r}\"}} {}",
                s.rule_breaks.load(Relaxed)
            );
        },
    );
    family(
        "splice_tunnel_handoffs_total",
        "counter",
        "Admitted peers moved to the shard their tunnel lives on.",
        &|r, s, out| {
            let _ = writeln!(
                out,
                "splice_tunnel_handoffs_total{{relay=\"{r}\"}} {}",
                s.handoffs.load(Relaxed)
            );
        },
    );
    out
}

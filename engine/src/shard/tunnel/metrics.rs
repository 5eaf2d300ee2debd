//! The tunnel's figures in the Prometheus text format, appended to `/metrics`: the relays'
//! (per relay, and per open tunnel: a tunnel's series go when it closes or expires, so they
//! follow the open tunnels) and, through the same helpers, the agents'.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::exposition::{header, sample};
use super::relay_state::{REFUSAL_STATUSES, RelayStats};
use crate::relay::counters::TunnelCounters;

/// The relays' statistics, by name: filled as relays start, read by the metrics thread.
pub(crate) type StatsList = Arc<Mutex<Vec<(String, Arc<RelayStats>)>>>;

/// The sides, in the order of the counters' arrays.
const SIDES: [&str; 2] = ["source", "destination"];
/// The directions, in the order of the byte counters' arrays.
const DIRECTIONS: [&str; 2] = ["source_to_destination", "destination_to_source"];
/// The directions of the kernel's counts of a socket: received, sent and acknowledged.
const KERNEL_DIRECTIONS: [&str; 2] = ["in", "out"];

/// A family of one sample per relay: its name, type, help and value.
type PerRelay = (
    &'static str,
    &'static str,
    &'static str,
    fn(&RelayStats) -> i64,
);

/// The exposition of every relay in `list` (nothing when there is none).
pub(crate) fn render(list: &StatsList) -> String {
    let relays = list.lock().map(|l| l.clone()).unwrap_or_default();
    let mut text = String::new();
    if relays.is_empty() {
        return text;
    }
    let out = &mut text;
    let single: [PerRelay; 7] = [
        (
            "splice_tunnels_open",
            "gauge",
            "Tunnels with at least one peer connected to the relay.",
            |s| s.tunnels_open.load(Relaxed),
        ),
        (
            "splice_tunnel_streams_active",
            "gauge",
            "Open streams over the relay's tunnels.",
            |s| s.streams.load(Relaxed),
        ),
        (
            "splice_tunnel_tls_failures_total",
            "counter",
            "Agents whose TLS handshake with the relay failed (garbage instead of TLS included).",
            |s| s.tls_failures.load(Relaxed) as i64,
        ),
        (
            "splice_tunnel_rule_breaks_total",
            "counter",
            "Peers the relay closed for breaking the WebSocket or tunnel rules.",
            |s| s.rule_breaks.load(Relaxed) as i64,
        ),
        (
            "splice_tunnel_handoffs_total",
            "counter",
            "Admitted peers moved to the shard their tunnel lives on.",
            |s| s.handoffs.load(Relaxed) as i64,
        ),
        (
            "splice_tunnel_standby_connected",
            "gauge",
            "Standby agents (destination --thing) connected to the relay.",
            |s| s.standby.load(Relaxed),
        ),
        (
            "splice_tunnel_standby_notices_total",
            "counter",
            "Tunnels pushed to standby agents.",
            |s| s.standby_notices.load(Relaxed) as i64,
        ),
    ];
    for (name, kind, help, get) in single {
        header(out, name, kind, help);
        for (r, s) in &relays {
            sample(out, name, &[("relay", r)], get(s));
        }
    }
    let name = "splice_tunnel_peers_connected";
    header(
        out,
        name,
        "gauge",
        "Agents connected to the relay (upgrade done), by side.",
    );
    for (r, s) in &relays {
        for (side, n) in SIDES.iter().zip(&s.peers) {
            sample(out, name, &[("relay", r), ("side", side)], n.load(Relaxed));
        }
    }
    let name = "splice_tunnel_bytes_total";
    header(
        out,
        name,
        "counter",
        "Bytes of tunnel frames the relay forwarded, by direction (over all its tunnels).",
    );
    for (r, s) in &relays {
        for (dir, n) in DIRECTIONS.iter().zip(&s.bytes) {
            let labels = [("relay", r.as_str()), ("direction", dir)];
            sample(out, name, &labels, n.load(Relaxed));
        }
    }
    let name = "splice_tunnel_upgrades_refused_total";
    header(
        out,
        name,
        "counter",
        "Agents' upgrades the relay refused, by the HTTP status answered (503 includes max_peers).",
    );
    for (r, s) in &relays {
        let statuses = REFUSAL_STATUSES.iter().map(u16::to_string);
        for (status, n) in statuses.chain(["other".into()]).zip(&s.refused) {
            let labels = [("relay", r.as_str()), ("status", &status)];
            sample(out, name, &labels, n.load(Relaxed));
        }
    }
    let totals: Vec<_> = relays
        .iter()
        .filter_map(|(r, s)| Some((r, s.kernel.total()?)))
        .collect();
    if !totals.is_empty() {
        let name = "splice_relay_kernel_bytes_total";
        header(
            out,
            name,
            "counter",
            "TCP payload bytes the kernel counted on the relay's admitted peer sockets (eBPF accounting), over all its tunnels, by side: received (in) and sent and acknowledged (out). TLS records, the bytes on the wire.",
        );
        for (r, counts) in &totals {
            kernel_samples(out, name, &[("relay", r)], counts);
        }
    }
    render_per_tunnel(out, &relays);
    text
}

/// The samples of one `[side][direction]` array of kernel counts, under `labels`.
fn kernel_samples(out: &mut String, name: &str, labels: &[(&str, &str)], counts: &[[u64; 2]; 2]) {
    for (side, by_dir) in SIDES.iter().zip(counts) {
        for (dir, n) in KERNEL_DIRECTIONS.iter().zip(by_dir) {
            let mut l = labels.to_vec();
            l.extend([("side", *side), ("direction", *dir)]);
            sample(out, name, &l, *n);
        }
    }
}

/// The per-tunnel families: a series per open tunnel that had a peer.
fn render_per_tunnel(out: &mut String, relays: &[(String, Arc<RelayStats>)]) {
    let tunnels: Vec<_> = relays
        .iter()
        .map(|(r, s)| (r, s.per_tunnel.snapshot()))
        .collect();
    tunnel_family(
        out,
        &tunnels,
        (
            "splice_relay_tunnel_bytes_total",
            "counter",
            "Bytes of tunnel frames the relay forwarded for an open tunnel, by direction.",
        ),
        |c| {
            let [up, down] = &c.bytes;
            let n = |a: &AtomicU64| a.load(Relaxed) as i64;
            vec![
                (Some(("direction", DIRECTIONS[0])), n(up)),
                (Some(("direction", DIRECTIONS[1])), n(down)),
            ]
        },
    );
    tunnel_family(
        out,
        &tunnels,
        (
            "splice_relay_tunnel_peers_connected",
            "gauge",
            "Agents of an open tunnel connected to the relay, by side.",
        ),
        |c| {
            let [source, destination] = &c.peers;
            vec![
                (Some(("side", SIDES[0])), source.load(Relaxed)),
                (Some(("side", SIDES[1])), destination.load(Relaxed)),
            ]
        },
    );
    let kernel: Vec<_> = (relays.iter().zip(&tunnels))
        .flat_map(|((r, s), (_, list))| {
            list.iter()
                .filter_map(move |(id, _)| Some((r, id, s.kernel.tunnel(id)?)))
        })
        .collect();
    if !kernel.is_empty() {
        let name = "splice_relay_tunnel_kernel_bytes_total";
        header(
            out,
            name,
            "counter",
            "TCP payload bytes the kernel counted on an open tunnel's peer sockets at the relay (eBPF accounting), by side: received (in) and sent and acknowledged (out).",
        );
        for (r, id, counts) in &kernel {
            kernel_samples(out, name, &[("relay", r), ("tunnel", id)], counts);
        }
    }
    tunnel_family(
        out,
        &tunnels,
        (
            "splice_relay_tunnel_streams_active",
            "gauge",
            "Open streams of an open tunnel.",
        ),
        |c| vec![(None, c.streams.load(Relaxed))],
    );
}

/// A relay's open tunnels with their counters (`PerTunnel::snapshot`).
type OpenTunnels = Vec<(String, Arc<TunnelCounters>)>;

/// One per-tunnel family: its header, then for each open tunnel a sample per value `values`
/// gives, labelled with the relay, the tunnel, how it was paired and the value's own label.
fn tunnel_family(
    out: &mut String,
    tunnels: &[(&String, OpenTunnels)],
    (name, kind, help): (&str, &str, &str),
    values: impl Fn(&TunnelCounters) -> Vec<(Option<(&'static str, &'static str)>, i64)>,
) {
    header(out, name, kind, help);
    for (r, list) in tunnels {
        for (id, c) in list {
            let (pairing, identity) = c.pairing_labels();
            for (label, n) in values(c) {
                let mut labels = vec![
                    ("relay", r.as_str()),
                    ("tunnel", id.as_str()),
                    ("pairing", pairing),
                    ("identity", identity),
                ];
                labels.extend(label);
                sample(out, name, &labels, n);
            }
        }
    }
}

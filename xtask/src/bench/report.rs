//! From raw measurements to the summary: medians, spreads, and ratios taken within each
//! repetition (a path against `direct`, and against the best peer of that same repetition),
//! then the terminal table. Tunnel paths are compared with tunnel peers only, in tables of
//! their own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::{Measurement, PathInfo, Scenario};

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// More is better (throughput, rates).
    Higher,
    /// Less is better (latency, CPU, memory).
    Lower,
}

/// A figure's meaning.
pub struct Figure {
    /// Key in [`Measurement::figures`].
    pub key: &'static str,
    /// Column title.
    pub label: &'static str,
    /// Unit.
    pub unit: &'static str,
    /// Which way it improves.
    pub better: Better,
}

const fn fig(key: &'static str, label: &'static str, unit: &'static str, better: Better) -> Figure {
    Figure {
        key,
        label,
        unit,
        better,
    }
}

/// How a scenario is reported: its figures (table columns, in order), and which figure the
/// `×direct` and `×best peer` columns compare.
pub struct Layout {
    /// One line on what it measures.
    pub what: &'static str,
    /// Figures shown.
    pub figures: &'static [Figure],
    /// Compared with `direct`.
    pub vs_direct: &'static str,
    /// Compared with the best peer.
    pub vs_peer: &'static str,
}

const BULK: &[Figure] = &[
    fig("gbit_per_s", "Gbit/s", "Gbit/s", Better::Higher),
    fig(
        "cpu_s_per_gib",
        "proxy CPU s/GiB",
        "CPU s/GiB",
        Better::Lower,
    ),
];
const LATENCY: &[Figure] = &[
    fig("p50_us", "p50 µs", "µs", Better::Lower),
    fig("p90_us", "p90", "µs", Better::Lower),
    fig("p99_us", "p99", "µs", Better::Lower),
    fig("p999_us", "p99.9", "µs", Better::Lower),
    fig("max_us", "max", "µs", Better::Lower),
    fig("added_p50_us", "added p50 µs", "µs", Better::Lower),
    fig(
        "cpu_us_per_request",
        "proxy CPU µs/req",
        "CPU µs/request",
        Better::Lower,
    ),
];
const CONNECT: &[Figure] = &[
    fig("conn_per_s", "conn/s", "connections/s", Better::Higher),
    fig("connect_p50_us", "p50 µs", "µs", Better::Lower),
];
const TUNNEL_BULK: &[Figure] = &[
    fig("gbit_per_s", "Gbit/s", "Gbit/s", Better::Higher),
    fig(
        "cpu_s_per_gib",
        "CPU s/GiB, all",
        "CPU s/GiB",
        Better::Lower,
    ),
    fig("source_cpu_s_per_gib", "source", "CPU s/GiB", Better::Lower),
    fig("relay_cpu_s_per_gib", "relay", "CPU s/GiB", Better::Lower),
    fig(
        "destination_cpu_s_per_gib",
        "destination",
        "CPU s/GiB",
        Better::Lower,
    ),
    fig("server_cpu_s_per_gib", "server", "CPU s/GiB", Better::Lower),
    fig("client_cpu_s_per_gib", "client", "CPU s/GiB", Better::Lower),
];
const IDLE_TUNNELS: &[Figure] = &[
    fig(
        "relay_kib_per_tunnel",
        "relay/server KiB/tunnel",
        "KiB",
        Better::Lower,
    ),
    fig("relay_kib_per_peer", "relay KiB/peer", "KiB", Better::Lower),
    fig(
        "relay_rss_kib_per_peer",
        "RSS KiB/peer",
        "KiB",
        Better::Lower,
    ),
    fig(
        "relay_kib_per_standby",
        "relay KiB/standby",
        "KiB",
        Better::Lower,
    ),
    fig("tunnels", "tunnels", "tunnels", Better::Higher),
    fig("connect_secs", "connect s", "s", Better::Lower),
];
const IDLE: &[Figure] = &[
    fig("kib_per_conn", "KiB/conn (worst end)", "KiB", Better::Lower),
    fig("client_kib_per_conn", "client end", "KiB", Better::Lower),
    fig("server_kib_per_conn", "server end", "KiB", Better::Lower),
];

/// The report layout of `sc` for the paths of `family` (`chain` or `tunnel`).
pub fn layout(sc: Scenario, family: &str) -> Layout {
    if family == "tunnel" {
        match sc {
            Scenario::Bulk | Scenario::BulkMulti => {
                return Layout {
                    what: if sc == Scenario::Bulk {
                        "one stream through the tunnel to the sink; CPU per process"
                    } else {
                        "parallel streams through one tunnel to the sink; CPU per process"
                    },
                    figures: TUNNEL_BULK,
                    vs_direct: "gbit_per_s",
                    vs_peer: "gbit_per_s",
                };
            }
            Scenario::Handshakes => {
                return Layout {
                    what: "new connections through an open tunnel (connect, 32-byte echo, close)",
                    figures: CONNECT,
                    vs_direct: "conn_per_s",
                    vs_peer: "conn_per_s",
                };
            }
            _ => {}
        }
    }
    match sc {
        Scenario::Bulk => Layout {
            what: "one stream to the sink, every byte checked",
            figures: BULK,
            vs_direct: "gbit_per_s",
            vs_peer: "gbit_per_s",
        },
        Scenario::BulkMulti => Layout {
            what: "parallel streams to the sink, every byte checked",
            figures: BULK,
            vs_direct: "gbit_per_s",
            vs_peer: "gbit_per_s",
        },
        Scenario::Latency => Layout {
            what: "64-byte request/response round trips on one connection",
            figures: LATENCY,
            vs_direct: "p50_us",
            vs_peer: "added_p50_us",
        },
        Scenario::Handshakes => Layout {
            what: "new connections (connect, 32-byte echo, close), full TLS handshakes",
            figures: CONNECT,
            vs_direct: "conn_per_s",
            vs_peer: "conn_per_s",
        },
        Scenario::Resumed => Layout {
            what: "new connections with TLS session resumption allowed",
            figures: CONNECT,
            vs_direct: "conn_per_s",
            vs_peer: "conn_per_s",
        },
        Scenario::Idle => Layout {
            what: "idle proxied connections held open: PSS growth per connection",
            figures: IDLE,
            vs_direct: "",
            vs_peer: "kib_per_conn",
        },
        Scenario::IdleData => Layout {
            what: "idle connections that moved 64 KiB each way first, opened in bursts: PSS growth \
                   per connection",
            figures: IDLE,
            vs_direct: "",
            vs_peer: "kib_per_conn",
        },
        Scenario::IdleTunnels => Layout {
            what: "idle tunnels, both ends connected: the relay's (rathole: the server's) PSS \
                   growth per tunnel, and per peer",
            figures: IDLE_TUNNELS,
            vs_direct: "",
            vs_peer: "relay_kib_per_tunnel",
        },
    }
}

/// One figure of one path in one scenario, over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario.
    pub scenario: Scenario,
    /// Path.
    pub path: String,
    /// Figure key.
    pub figure: String,
    /// Unit.
    pub unit: String,
    /// Which way it improves.
    pub better: Better,
    /// Median over the repetitions.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Repetitions with a value.
    pub n: usize,
    /// Median over repetitions of (this path / `direct`), same repetition.
    pub vs_direct: Option<f64>,
    /// Median over repetitions of (this path / best peer of that repetition).
    pub vs_best_peer: Option<f64>,
    /// The peer that was best most often.
    pub best_peer: Option<String>,
    /// For `splice-uring` in a run with `--baseline`: median over repetitions of (this path /
    /// `splice-base`), same repetition; for `splice-ebpf`, the same over `splice-uring`.
    pub vs_base: Option<f64>,
    /// For a path compared with another (an embedding path with the CLI's client mode):
    /// median over repetitions of (this path / that one), same repetition.
    pub vs_compared: Option<f64>,
    /// Highest steal seen in its measurements, percent.
    pub max_steal_pct: f64,
}

/// Medians, spreads and ratios of every figure.
pub fn summarise(ms: &[Measurement], infos: &[PathInfo]) -> Vec<Row> {
    // A path's peers: the peers of its family.
    let peers_of = |family: &str| -> Vec<&str> {
        infos
            .iter()
            .filter(|i| i.kind == "peer" && i.family == family)
            .map(|i| i.name.as_str())
            .collect()
    };
    // (scenario, rep, path) -> figures, with the derived "added over direct" figures.
    let mut by: BTreeMap<(Scenario, usize, &str), BTreeMap<String, f64>> = BTreeMap::new();
    let mut steal: BTreeMap<(Scenario, &str), f64> = BTreeMap::new();
    for m in ms {
        let s = steal.entry((m.scenario, m.path.as_str())).or_default();
        *s = s.max(m.steal_pct);
        if m.error.is_none() {
            by.insert((m.scenario, m.rep, m.path.as_str()), m.figures.clone());
        }
    }
    let keys: Vec<_> = by.keys().copied().collect();
    for (sc, rep, path) in keys {
        if sc != Scenario::Latency {
            continue;
        }
        let Some(direct) = by
            .get(&(sc, rep, "direct"))
            .and_then(|d| d.get("p50_us"))
            .copied()
        else {
            continue;
        };
        let f = by.get_mut(&(sc, rep, path)).expect("present");
        if let Some(p50) = f.get("p50_us").copied() {
            f.insert("added_p50_us".into(), p50 - direct);
        }
    }

    let mut rows = Vec::new();
    let scenarios: BTreeSet<Scenario> = ms.iter().map(|m| m.scenario).collect();
    for sc in scenarios {
        let reps: BTreeSet<usize> = ms
            .iter()
            .filter(|m| m.scenario == sc)
            .map(|m| m.rep)
            .collect();
        for info in infos.iter().filter(|i| i.skipped.is_none()) {
            let path = info.name.as_str();
            let peers = peers_of(&info.family);
            for f in layout(sc, &info.family).figures {
                let vals: Vec<(usize, f64)> = reps
                    .iter()
                    .filter_map(|&rep| {
                        by.get(&(sc, rep, path))
                            .and_then(|fs| fs.get(f.key))
                            .map(|v| (rep, *v))
                    })
                    .collect();
                if vals.is_empty() {
                    continue;
                }
                let mut vs_direct = Vec::new();
                let mut vs_base = Vec::new();
                let mut vs_peer = Vec::new();
                let mut vs_compared = Vec::new();
                let mut best_names = Vec::new();
                for &(rep, v) in &vals {
                    if let Some(c) = info.compared_with.as_deref()
                        && let Some(b) = by.get(&(sc, rep, c)).and_then(|fs| fs.get(f.key))
                        && *b != 0.0
                    {
                        vs_compared.push(v / b);
                    }
                    if let Some(d) = by.get(&(sc, rep, "direct")).and_then(|fs| fs.get(f.key))
                        && *d != 0.0
                        && path != "direct"
                    {
                        vs_direct.push(v / d);
                    }
                    if let Some(base) = base_of(path)
                        && let Some(b) = by.get(&(sc, rep, base)).and_then(|fs| fs.get(f.key))
                        && *b != 0.0
                    {
                        vs_base.push(v / b);
                    }
                    let best = peers
                        .iter()
                        .filter_map(|p| {
                            by.get(&(sc, rep, *p))
                                .and_then(|fs| fs.get(f.key))
                                .map(|x| (*p, *x))
                        })
                        .reduce(|a, b| match f.better {
                            Better::Higher if b.1 > a.1 => b,
                            Better::Lower if b.1 < a.1 => b,
                            _ => a,
                        });
                    if let Some((name, b)) = best
                        && b != 0.0
                    {
                        vs_peer.push(v / b);
                        best_names.push(name);
                    }
                }
                let nums: Vec<f64> = vals.iter().map(|v| v.1).collect();
                rows.push(Row {
                    scenario: sc,
                    path: path.to_string(),
                    figure: f.key.to_string(),
                    unit: f.unit.to_string(),
                    better: f.better,
                    median: median(&nums),
                    min: nums.iter().copied().fold(f64::INFINITY, f64::min),
                    max: nums.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    n: nums.len(),
                    vs_direct: (!vs_direct.is_empty()).then(|| median(&vs_direct)),
                    vs_best_peer: (!vs_peer.is_empty()).then(|| median(&vs_peer)),
                    best_peer: most_common(&best_names),
                    vs_base: (!vs_base.is_empty()).then(|| median(&vs_base)),
                    vs_compared: (!vs_compared.is_empty()).then(|| median(&vs_compared)),
                    max_steal_pct: steal.get(&(sc, path)).copied().unwrap_or(0.0),
                });
            }
        }
    }
    rows
}

/// The path built from `--baseline`, and the one it is compared with.
const BASE: &str = "splice-base";
const NEW: &str = "splice-uring";
/// The same for the tunnel: `tunnel` against `tunnel-base`.
const TUNNEL_BASE: &str = "tunnel-base";
const TUNNEL: &str = "tunnel";
/// `splice-uring` with eBPF accounting on (the others run with it off), compared with it.
const EBPF: &str = "splice-ebpf";

/// The path `path` is compared with, same repetition (`Row::vs_base`).
fn base_of(path: &str) -> Option<&'static str> {
    match path {
        NEW => Some(BASE),
        EBPF => Some(NEW),
        TUNNEL => Some(TUNNEL_BASE),
        _ => None,
    }
}

/// The median (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn most_common(names: &[&str]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in names {
        *counts.entry(n).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map(|(n, _)| n.to_string())
}

/// A number with a sensible number of digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Steal above this share (percent) marks a figure as suspect.
pub const STEAL_WARN_PCT: f64 = 10.0;

/// The terminal report.
pub fn table(rows: &[Row], infos: &[PathInfo], machine: &Value, settings: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsplice-engine bench — {} ({} cores), Linux {}, io_uring {}, kTLS {}, user-space \
         records by {}; commit {}{}",
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["kernel"].as_str().unwrap_or("?"),
        yes(&machine["io_uring"]),
        yes(&machine["ktls"]),
        machine["record_cipher"].as_str().unwrap_or("?"),
        machine["git_commit"].as_str().unwrap_or("?"),
        if machine["git_dirty"] == true {
            " (uncommitted changes)"
        } else {
            ""
        },
    );
    let _ = writeln!(
        out,
        "{}; {} s per measurement, {} repetition(s); figures are medians, (min–max) the spread;\n\
         ×direct and ×best peer are medians of per-repetition ratios.",
        settings["tls"].as_str().unwrap_or(""),
        settings["duration_s"],
        settings["reps"],
    );
    let versions: Vec<String> = infos
        .iter()
        .filter(|i| i.kind != "direct")
        .filter_map(|i| Some(format!("{} {}", i.name, i.version.as_ref()?)))
        .collect();
    if !versions.is_empty() {
        let _ = writeln!(out, "versions: {}", versions.join(", "));
    }
    let scenarios: BTreeSet<Scenario> = rows.iter().map(|r| r.scenario).collect();
    let families = ["chain", "tunnel"];
    for (sc, family) in scenarios
        .into_iter()
        .flat_map(|sc| families.map(|f| (sc, f)))
    {
        let in_family = |i: &&PathInfo| i.family == family;
        if !rows
            .iter()
            .any(|r| r.scenario == sc && infos.iter().filter(in_family).any(|i| i.name == r.path))
        {
            continue;
        }
        let l = layout(sc, family);
        let title = if family == "tunnel" {
            format!("{} (tunnels)", sc.name())
        } else {
            sc.name().to_string()
        };
        let _ = writeln!(out, "\n{title} — {}", l.what);
        let mut header = vec!["path".to_string()];
        header.extend(l.figures.iter().map(|f| f.label.to_string()));
        if !l.vs_direct.is_empty() {
            header.push(format!("×direct ({})", label_of(&l, l.vs_direct)));
        }
        header.push(format!("×best peer ({})", label_of(&l, l.vs_peer)));
        header.push("steal".into());
        let mut lines = vec![header];
        let mut best = Vec::new();
        for info in infos
            .iter()
            .filter(|i| i.skipped.is_none())
            .filter(in_family)
        {
            let get = |key: &str| {
                rows.iter()
                    .find(|r| r.scenario == sc && r.path == info.name && r.figure == key)
            };
            if l.figures.iter().all(|f| get(f.key).is_none()) {
                continue;
            }
            let mut line = vec![info.name.clone()];
            let mut steal = 0.0f64;
            for f in l.figures {
                line.push(match get(f.key) {
                    Some(r) => {
                        steal = steal.max(r.max_steal_pct);
                        if r.n > 1 {
                            format!("{} ({}–{})", num(r.median), num(r.min), num(r.max))
                        } else {
                            num(r.median)
                        }
                    }
                    None => "—".into(),
                });
            }
            let ratio = |v: Option<f64>| v.map_or("—".to_string(), |x| format!("{x:.2}"));
            if !l.vs_direct.is_empty() {
                line.push(ratio(get(l.vs_direct).and_then(|r| r.vs_direct)));
            }
            let peer_row = get(l.vs_peer);
            line.push(ratio(peer_row.and_then(|r| r.vs_best_peer)));
            if let Some(b) = peer_row.and_then(|r| r.best_peer.clone()) {
                best.push(b);
            }
            line.push(format!(
                "{steal:.0}%{}",
                if steal > STEAL_WARN_PCT { " !" } else { "" }
            ));
            lines.push(line);
        }
        out.push_str(&columns(&lines));
        if let Some(b) = most_common(&best.iter().map(String::as_str).collect::<Vec<_>>()) {
            let _ = writeln!(out, "  best peer: {b}");
        }
        for new in [NEW, EBPF, TUNNEL] {
            let vs_base: Vec<String> = l
                .figures
                .iter()
                .filter(|_| infos.iter().any(|i| i.name == new && i.family == family))
                .filter_map(|f| {
                    let r = rows
                        .iter()
                        .find(|r| r.scenario == sc && r.path == new && r.figure == f.key)?;
                    Some(format!("{} {:.2}", f.label, r.vs_base?))
                })
                .collect();
            if !vs_base.is_empty() {
                let _ = writeln!(
                    out,
                    "  {new} ÷ {} (median of per-repetition ratios): {}",
                    base_of(new).unwrap_or_default(),
                    vs_base.join(", ")
                );
            }
        }
        for info in infos.iter().filter(in_family) {
            let Some(other) = info.compared_with.as_deref() else {
                continue;
            };
            let ratios: Vec<String> = l
                .figures
                .iter()
                .filter_map(|f| {
                    let r = rows
                        .iter()
                        .find(|r| r.scenario == sc && r.path == info.name && r.figure == f.key)?;
                    Some(format!("{} {:.2}", f.label, r.vs_compared?))
                })
                .collect();
            if !ratios.is_empty() {
                let _ = writeln!(
                    out,
                    "  {} ÷ {other} (median of per-repetition ratios): {}",
                    info.name,
                    ratios.join(", ")
                );
            }
        }
    }
    let skipped: Vec<String> = infos
        .iter()
        .filter_map(|i| i.skipped.as_ref().map(|w| format!("{} ({w})", i.name)))
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(out, "\nskipped: {}", skipped.join("; "));
    }
    let _ = writeln!(
        out,
        "steal: the hypervisor's share of CPU time during the measurement; above {STEAL_WARN_PCT:.0}% (!) \
         the figure is suspect — run again."
    );
    out
}

fn yes(v: &Value) -> &'static str {
    if *v == true { "yes" } else { "no" }
}

fn label_of(l: &Layout, key: &str) -> String {
    l.figures
        .iter()
        .find(|f| f.key == key)
        .map_or(key.to_string(), |f| f.label.to_string())
}

/// Left-aligned first column, right-aligned others, two spaces apart.
fn columns(lines: &[Vec<String>]) -> String {
    let n = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let mut s = String::from("  ");
        for (i, c) in l.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rep: usize, sc: Scenario, path: &str, figs: &[(&str, f64)]) -> Measurement {
        Measurement {
            rep,
            scenario: sc,
            path: path.into(),
            figures: figs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            steal_pct: rep as f64,
            error: None,
            raw: Value::Null,
        }
    }

    fn info(name: &str, kind: &str) -> PathInfo {
        PathInfo {
            name: name.into(),
            kind: kind.into(),
            version: None,
            skipped: None,
            family: "chain".into(),
            scenarios: Vec::new(),
            compared_with: None,
        }
    }

    /// Bulk measurements of three repetitions, the second at half the Gbit/s: for each path,
    /// its Gbit/s and the value of the CPU figure `cpu`.
    fn three_bulk_reps(cpu: &str, paths: &[(&str, f64, f64)]) -> Vec<Measurement> {
        let mut ms = Vec::new();
        for (rep, k) in [(1, 1.0), (2, 0.5), (3, 1.0)] {
            for &(path, gbit, c) in paths {
                ms.push(m(
                    rep,
                    Scenario::Bulk,
                    path,
                    &[("gbit_per_s", gbit * k), (cpu, c)],
                ));
            }
        }
        ms
    }

    fn find<'a>(rows: &'a [Row], path: &str, figure: &str) -> &'a Row {
        rows.iter()
            .find(|r| r.path == path && r.figure == figure)
            .unwrap_or_else(|| panic!("no row {path} {figure}"))
    }

    /// The terminal report, without the machine and settings lines' values.
    fn render(rows: &[Row], infos: &[PathInfo]) -> String {
        table(rows, infos, &serde_json::json!({}), &serde_json::json!({}))
    }

    fn tunnel_info(name: &str, kind: &str) -> PathInfo {
        PathInfo {
            family: "tunnel".into(),
            ..info(name, kind)
        }
    }

    #[test]
    fn an_embedding_path_is_divided_by_the_path_it_is_compared_with() {
        let infos = [
            info("cli", "ours"),
            PathInfo {
                compared_with: Some("cli".into()),
                ..info("c", "ours")
            },
        ];
        let mut ms = Vec::new();
        for (rep, k) in [(1, 1.0), (2, 2.0), (3, 1.0)] {
            ms.push(m(rep, Scenario::Bulk, "cli", &[("gbit_per_s", 10.0 * k)]));
            ms.push(m(rep, Scenario::Bulk, "c", &[("gbit_per_s", 9.0 * k)]));
        }
        let rows = summarise(&ms, &infos);
        let c = rows.iter().find(|r| r.path == "c").unwrap();
        assert_eq!(c.vs_compared, Some(0.9));
        let cli = rows.iter().find(|r| r.path == "cli").unwrap();
        assert_eq!(cli.vs_compared, None);
        let text = table(
            &rows,
            &infos,
            &serde_json::json!({}),
            &serde_json::json!({}),
        );
        assert!(
            text.contains("c ÷ cli (median of per-repetition ratios): Gbit/s 0.90"),
            "{text}"
        );
    }

    #[test]
    fn ratios_are_taken_within_each_repetition() {
        let infos = [
            info("direct", "direct"),
            info("ours", "ours"),
            info("p1", "peer"),
            info("p2", "peer"),
        ];
        // Rep 2 is twice as fast for everyone: the ratios must not move.
        let mut ms = Vec::new();
        for (rep, k) in [(1, 1.0), (2, 2.0), (3, 1.0)] {
            ms.push(m(
                rep,
                Scenario::Bulk,
                "direct",
                &[("gbit_per_s", 20.0 * k)],
            ));
            ms.push(m(rep, Scenario::Bulk, "ours", &[("gbit_per_s", 8.0 * k)]));
            ms.push(m(rep, Scenario::Bulk, "p1", &[("gbit_per_s", 4.0 * k)]));
            ms.push(m(rep, Scenario::Bulk, "p2", &[("gbit_per_s", 2.0 * k)]));
        }
        let rows = summarise(&ms, &infos);
        let ours = rows.iter().find(|r| r.path == "ours").unwrap();
        assert_eq!(ours.median, 8.0);
        assert_eq!((ours.min, ours.max, ours.n), (8.0, 16.0, 3));
        assert_eq!(ours.vs_direct, Some(0.4));
        assert_eq!(ours.vs_best_peer, Some(2.0), "against p1, the best peer");
        assert_eq!(ours.best_peer.as_deref(), Some("p1"));
        assert_eq!(ours.max_steal_pct, 3.0);
        let direct = rows.iter().find(|r| r.path == "direct").unwrap();
        assert_eq!(direct.vs_direct, None, "direct is not compared with itself");
    }

    #[test]
    fn lower_is_better_picks_the_lowest_peer_and_added_latency_is_over_direct() {
        let infos = [
            info("direct", "direct"),
            info("ours", "ours"),
            info("p1", "peer"),
            info("p2", "peer"),
        ];
        let ms = vec![
            m(1, Scenario::Latency, "direct", &[("p50_us", 20.0)]),
            m(1, Scenario::Latency, "ours", &[("p50_us", 50.0)]),
            m(1, Scenario::Latency, "p1", &[("p50_us", 80.0)]),
            m(1, Scenario::Latency, "p2", &[("p50_us", 110.0)]),
        ];
        let rows = summarise(&ms, &infos);
        let added = rows
            .iter()
            .find(|r| r.path == "ours" && r.figure == "added_p50_us")
            .unwrap();
        assert_eq!(added.median, 30.0);
        assert_eq!(added.vs_best_peer, Some(0.5), "30 µs added against p1's 60");
        assert_eq!(added.best_peer.as_deref(), Some("p1"));
        let p50 = rows
            .iter()
            .find(|r| r.path == "ours" && r.figure == "p50_us")
            .unwrap();
        assert_eq!(p50.vs_direct, Some(2.5));
    }

    #[test]
    fn failed_measurements_and_missing_peers_leave_gaps_not_zeros() {
        let infos = [info("direct", "direct"), info("ours", "ours")];
        let mut bad = m(2, Scenario::Bulk, "ours", &[("gbit_per_s", 0.0)]);
        bad.error = Some("boom".into());
        let ms = vec![
            m(1, Scenario::Bulk, "direct", &[("gbit_per_s", 10.0)]),
            m(1, Scenario::Bulk, "ours", &[("gbit_per_s", 5.0)]),
            m(2, Scenario::Bulk, "direct", &[("gbit_per_s", 10.0)]),
            bad,
        ];
        let rows = summarise(&ms, &infos);
        let ours = rows.iter().find(|r| r.path == "ours").unwrap();
        assert_eq!((ours.n, ours.median), (1, 5.0));
        assert_eq!(ours.vs_best_peer, None, "no peer ran");
        let text = table(
            &rows,
            &infos,
            &serde_json::json!({}),
            &serde_json::json!({}),
        );
        assert!(text.contains("bulk — one stream"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("ours") && l.contains("5.000")),
            "{text}"
        );
    }

    #[test]
    fn the_new_build_is_compared_with_the_baseline_within_each_repetition() {
        let infos = [
            info("direct", "direct"),
            info("splice-uring", "ours"),
            info("splice-base", "ours"),
        ];
        // Rep 2 is slower for both: the ratio stays 1.25.
        let ms = three_bulk_reps(
            "cpu_s_per_gib",
            &[
                ("direct", 20.0, 1.0),
                ("splice-uring", 10.0, 0.9),
                ("splice-base", 8.0, 1.2),
            ],
        );
        let rows = summarise(&ms, &infos);
        let get = |path: &str, fig: &str| find(&rows, path, fig);
        assert_eq!(get("splice-uring", "gbit_per_s").vs_base, Some(1.25));
        assert_eq!(get("splice-uring", "cpu_s_per_gib").vs_base, Some(0.75));
        assert_eq!(get("splice-base", "gbit_per_s").vs_base, None);
        let text = render(&rows, &infos);
        assert!(
            text.contains("splice-uring ÷ splice-base (median of per-repetition ratios): Gbit/s 1.25, proxy CPU s/GiB 0.75"),
            "{text}"
        );
        // Without a baseline there is no such line.
        let rows = summarise(&ms[..2], &infos[..2]);
        let text = table(
            &rows,
            &infos[..2],
            &serde_json::json!({}),
            &serde_json::json!({}),
        );
        assert!(!text.contains("÷"), "{text}");
    }

    #[test]
    fn ebpf_accounting_is_compared_with_the_same_path_without_it() {
        let infos = [
            info("direct", "direct"),
            info("splice-uring", "ours"),
            info("splice-ebpf", "ours"),
        ];
        let mut ms = Vec::new();
        for (rep, k) in [(1, 1.0), (2, 0.5), (3, 1.0)] {
            let figs = |g: f64, cpu: f64| [("gbit_per_s", g * k), ("cpu_s_per_gib", cpu)];
            ms.push(m(rep, Scenario::Bulk, "direct", &figs(20.0, 1.0)));
            ms.push(m(rep, Scenario::Bulk, "splice-uring", &figs(10.0, 1.0)));
            ms.push(m(rep, Scenario::Bulk, "splice-ebpf", &figs(9.8, 1.02)));
        }
        let rows = summarise(&ms, &infos);
        let get = |path: &str, fig: &str| {
            rows.iter()
                .find(|r| r.path == path && r.figure == fig)
                .unwrap()
        };
        let r = get("splice-ebpf", "gbit_per_s").vs_base.expect("a ratio");
        assert!((r - 0.98).abs() < 1e-9, "{r}");
        assert_eq!(get("splice-uring", "gbit_per_s").vs_base, None);
        let text = table(
            &rows,
            &infos,
            &serde_json::json!({}),
            &serde_json::json!({}),
        );
        assert!(
            text.contains("splice-ebpf ÷ splice-uring (median of per-repetition ratios): Gbit/s 0.98, proxy CPU s/GiB 1.02"),
            "{text}"
        );
    }

    #[test]
    fn tunnel_paths_are_compared_with_tunnel_peers_only_in_a_table_of_their_own() {
        let infos = [
            info("direct", "direct"),
            info("ours", "ours"),
            info("fast-chain-peer", "peer"),
            tunnel_info("tunnel", "ours"),
            tunnel_info("tpeer", "peer"),
        ];
        let ms = vec![
            m(1, Scenario::Bulk, "direct", &[("gbit_per_s", 20.0)]),
            m(1, Scenario::Bulk, "ours", &[("gbit_per_s", 8.0)]),
            m(
                1,
                Scenario::Bulk,
                "fast-chain-peer",
                &[("gbit_per_s", 10.0)],
            ),
            m(
                1,
                Scenario::Bulk,
                "tunnel",
                &[("gbit_per_s", 6.0), ("relay_cpu_s_per_gib", 0.25)],
            ),
            m(1, Scenario::Bulk, "tpeer", &[("gbit_per_s", 3.0)]),
        ];
        let rows = summarise(&ms, &infos);
        let get = |path: &str, fig: &str| {
            rows.iter()
                .find(|r| r.path == path && r.figure == fig)
                .unwrap()
        };
        assert_eq!(get("tunnel", "gbit_per_s").vs_best_peer, Some(2.0));
        assert_eq!(
            get("tunnel", "gbit_per_s").best_peer.as_deref(),
            Some("tpeer")
        );
        assert_eq!(get("ours", "gbit_per_s").vs_best_peer, Some(0.8));
        assert_eq!(get("tunnel", "relay_cpu_s_per_gib").median, 0.25);
        let text = table(
            &rows,
            &infos,
            &serde_json::json!({}),
            &serde_json::json!({}),
        );
        let (chain, tunnels) = text.split_once("bulk (tunnels)").expect(&text);
        assert!(
            !chain.contains("tpeer") && !chain.contains("tunnel "),
            "{text}"
        );
        assert!(
            tunnels.contains("tpeer") && !tunnels.contains("fast-chain-peer"),
            "{text}"
        );
        assert!(tunnels.contains("relay"), "{text}");
    }

    #[test]
    fn the_tunnel_is_compared_with_its_baseline_in_the_tunnels_table_only() {
        let infos = [
            info("splice-uring", "ours"),
            tunnel_info("tunnel", "ours"),
            tunnel_info("tunnel-base", "ours"),
            tunnel_info("tpeer", "peer"),
        ];
        let ms = three_bulk_reps(
            "relay_cpu_s_per_gib",
            &[
                ("splice-uring", 9.0, 1.0),
                ("tunnel", 6.0, 1.0),
                ("tunnel-base", 4.0, 1.25),
                ("tpeer", 3.0, 2.0),
            ],
        );
        let rows = summarise(&ms, &infos);
        let get = |path: &str, fig: &str| find(&rows, path, fig);
        assert_eq!(get("tunnel", "gbit_per_s").vs_base, Some(1.5));
        assert_eq!(get("tunnel", "relay_cpu_s_per_gib").vs_base, Some(0.8));
        assert_eq!(get("tunnel-base", "gbit_per_s").vs_base, None);
        let text = render(&rows, &infos);
        let (chain, tunnels) = text.split_once("bulk (tunnels)").expect(&text);
        assert!(!chain.contains("tunnel ÷"), "{text}");
        assert!(
            tunnels.contains("tunnel ÷ tunnel-base (median of per-repetition ratios): Gbit/s 1.50")
                && tunnels.contains("relay 0.80"),
            "{text}"
        );
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}

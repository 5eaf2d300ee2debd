//! The bench chart: one panel per figure worth seeing at a glance (throughput, latency
//! percentiles, handshake rates, idle memory), horizontal bars of the median per path with the
//! min–max spread as a whisker. Plain SVG written by hand: no fonts or native libraries needed.

use std::fmt::Write as _;

use serde_json::Value;

use super::PathInfo;
use super::Scenario;
use super::report::{Row, num};

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 130.0;
const RIGHT_PAD: f64 = 90.0;
const BAR_H: f64 = 12.0;
const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

/// One bar: median with spread.
struct Bar {
    median: f64,
    min: f64,
    max: f64,
}

struct Panel {
    title: String,
    series: Vec<&'static str>,
    /// Path name, its kind, its bars (one per series).
    rows: Vec<(String, String, Vec<Option<Bar>>)>,
    log: bool,
}

/// Bar colour of a single-series panel, by path kind: the ceiling grey, ours blue, peers orange,
/// yardsticks light grey.
fn kind_color(kind: &str) -> &'static str {
    match kind {
        "direct" => "#9e9e9e",
        "ours" => "#1f77b4",
        "reference" => "#c7c7c7",
        _ => "#ff7f0e",
    }
}

fn panel(
    rows: &[Row],
    infos: &[PathInfo],
    sc: Scenario,
    title: &str,
    figs: &[(&'static str, &'static str)],
    log: bool,
) -> Option<Panel> {
    let mut out = Vec::new();
    for info in infos.iter().filter(|i| i.skipped.is_none()) {
        let bars: Vec<Option<Bar>> = figs
            .iter()
            .map(|(key, _)| {
                rows.iter()
                    .find(|r| r.scenario == sc && r.path == info.name && r.figure == *key)
                    .map(|r| Bar {
                        median: r.median,
                        min: r.min,
                        max: r.max,
                    })
            })
            .collect();
        if bars.iter().any(Option::is_some) {
            out.push((info.name.clone(), info.kind.clone(), bars));
        }
    }
    (!out.is_empty()).then(|| Panel {
        title: title.to_string(),
        series: figs.iter().map(|f| f.1).collect(),
        rows: out,
        log,
    })
}

/// The chart as an SVG document.
pub fn chart(rows: &[Row], infos: &[PathInfo], machine: &Value) -> String {
    let panels: Vec<Panel> = [
        panel(
            rows,
            infos,
            Scenario::Bulk,
            "Throughput, one stream (Gbit/s, higher is better)",
            &[("gbit_per_s", "Gbit/s")],
            false,
        ),
        panel(
            rows,
            infos,
            Scenario::BulkMulti,
            "Throughput, parallel streams (Gbit/s, higher is better)",
            &[("gbit_per_s", "Gbit/s")],
            false,
        ),
        panel(
            rows,
            infos,
            Scenario::Latency,
            "Round-trip latency, 64-byte requests (µs, log scale, lower is better)",
            &[
                ("p50_us", "p50"),
                ("p90_us", "p90"),
                ("p99_us", "p99"),
                ("p999_us", "p99.9"),
            ],
            true,
        ),
        panel(
            rows,
            infos,
            Scenario::Handshakes,
            "New connections per second: chains with full handshakes, tunnels through the open tunnel (higher is better)",
            &[("conn_per_s", "conn/s")],
            false,
        ),
        panel(
            rows,
            infos,
            Scenario::Resumed,
            "New connections per second, resumption allowed (higher is better)",
            &[("conn_per_s", "conn/s")],
            false,
        ),
        panel(
            rows,
            infos,
            Scenario::Idle,
            "Memory per idle proxied connection (KiB, lower is better)",
            &[
                ("client_kib_per_conn", "client end"),
                ("server_kib_per_conn", "server end"),
            ],
            false,
        ),
        panel(
            rows,
            infos,
            Scenario::IdleData,
            "Memory per idle connection that moved 64 KiB each way, opened in bursts (KiB, lower is better)",
            &[
                ("client_kib_per_conn", "client end"),
                ("server_kib_per_conn", "server end"),
            ],
            false,
        ),
        panel(
            rows,
            infos,
            Scenario::IdleTunnels,
            "Relay (rathole: server) memory per idle tunnel, and per peer (KiB PSS, lower is better)",
            &[
                ("relay_kib_per_tunnel", "per tunnel"),
                ("relay_kib_per_peer", "per peer"),
            ],
            false,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();

    let mut body = String::new();
    let mut y = 50.0;
    for p in &panels {
        y = draw(&mut body, p, y) + 24.0;
    }
    let header = format!(
        "splice-engine bench — {} ({} cores), Linux {}, commit {}",
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["git_commit"].as_str().unwrap_or("?")
    );
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{y}\" viewBox=\"0 0 {WIDTH} {y}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n\
         <text x=\"10\" y=\"38\" fill=\"#555\">bars: median (grey: no proxy; blue: splice-engine; orange: peers; light grey: yardsticks); whiskers: min–max over repetitions</text>\n{body}</svg>\n",
        esc(&header)
    )
}

fn draw(out: &mut String, p: &Panel, top: f64) -> f64 {
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{}</text>",
        top + 12.0,
        esc(&p.title)
    );
    let mut y = top + 22.0;
    if p.series.len() > 1 {
        let mut x = LABEL_W;
        for (i, s) in p.series.iter().enumerate() {
            let _ = writeln!(
                out,
                "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
                y,
                COLORS[i % COLORS.len()],
                x + 14.0,
                y + 9.0,
                esc(s)
            );
            x += 80.0;
        }
        y += 16.0;
    }
    let top_value = p
        .rows
        .iter()
        .flat_map(|r| r.2.iter().flatten())
        .map(|b| b.max.max(b.median))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let floor = if p.log {
        p.rows
            .iter()
            .flat_map(|r| r.2.iter().flatten())
            .map(|b| b.min.min(b.median))
            .fold(f64::INFINITY, f64::min)
            .max(1e-3)
            / 2.0
    } else {
        0.0
    };
    let span = WIDTH - LABEL_W - RIGHT_PAD;
    let scale = |v: f64| -> f64 {
        if p.log {
            ((v.max(floor) / floor).log10() / (top_value / floor).log10()) * span
        } else {
            v / top_value * span
        }
    };
    for (label, kind, bars) in &p.rows {
        let group_h = bars.len() as f64 * (BAR_H + 2.0);
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{}\">{}</text>",
            y + group_h / 2.0 + 4.0,
            esc(label)
        );
        for (i, b) in bars.iter().enumerate() {
            let by = y + i as f64 * (BAR_H + 2.0);
            let Some(b) = b else { continue };
            let w = scale(b.median).max(1.0);
            let color = if p.series.len() == 1 {
                kind_color(kind)
            } else {
                COLORS[i % COLORS.len()]
            };
            let _ = writeln!(
                out,
                "<rect x=\"{LABEL_W}\" y=\"{by}\" width=\"{w:.1}\" height=\"{BAR_H}\" fill=\"{color}\"/>"
            );
            if b.max > b.min {
                let (x0, x1) = (LABEL_W + scale(b.min), LABEL_W + scale(b.max));
                let my = by + BAR_H / 2.0;
                let _ = writeln!(
                    out,
                    "<path d=\"M{x0:.1} {my} H{x1:.1} M{x0:.1} {} V{} M{x1:.1} {} V{}\" stroke=\"#222\" fill=\"none\"/>",
                    my - 3.0,
                    my + 3.0,
                    my - 3.0,
                    my + 3.0
                );
            }
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{}\">{}</text>",
                LABEL_W + scale(b.max.max(b.median)) + 4.0,
                by + BAR_H - 2.0,
                num(b.median)
            );
        }
        y += group_h + 6.0;
    }
    y
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

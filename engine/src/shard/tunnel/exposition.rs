//! The Prometheus text format's two line shapes, shared by the relays' and the agents'
//! figures (`tunnel::metrics`, `tunnel::agent::status`). It imports nothing of the crate, so
//! both may use it without tying their modules together.

use std::fmt::{Display, Write as _};

/// Writes a family's `# HELP` and `# TYPE` lines.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample, `name{k="v",...} value`, the label values escaped.
pub(crate) fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    let _ = write!(out, "{name}{{");
    for (i, (k, v)) in labels.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}{k}=\"{}\"", escape(v));
    }
    let _ = writeln!(out, "}} {value}");
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

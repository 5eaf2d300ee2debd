//! `splice-engine stats`: a running engine's byte counts, read from its `/metrics` endpoint,
//! the user-space counters beside the kernel's (eBPF accounting, docs/ebpf.md).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One sample of a `*bytes_total` family.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// The family's name.
    pub(crate) name: String,
    /// The labels, in the order written.
    pub(crate) labels: Vec<(String, String)>,
    /// The value.
    pub(crate) value: f64,
}

impl Sample {
    /// Counted by the kernel (eBPF) rather than by the engine.
    fn kernel(&self) -> bool {
        self.name.contains("_kernel_")
    }
}

/// Fetches `http://ADDR/metrics` (the engine's `--metrics` address) and prints its byte counts.
pub(crate) fn print(addr: &str, json: bool) -> Result<()> {
    let text = fetch(addr)?;
    let samples = byte_samples(&text);
    if json {
        let rows: Vec<_> = samples
            .iter()
            .map(|s| {
                serde_json::json!({
                    "metric": s.name,
                    "counted_by": if s.kernel() { "kernel" } else { "user space" },
                    "labels": s.labels.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>(),
                    "bytes": s.value,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print!("{}", render(&samples));
    Ok(())
}

/// The text report: user-space counts, then the kernel's.
pub(crate) fn render(samples: &[Sample]) -> String {
    let mut out = String::new();
    for (title, kernel) in [
        ("counted by the engine", false),
        ("counted by the kernel (eBPF)", true),
    ] {
        let rows: Vec<_> = samples.iter().filter(|s| s.kernel() == kernel).collect();
        out.push_str(title);
        out.push_str(":\n");
        if rows.is_empty() {
            out.push_str(if kernel {
                "  nothing: eBPF accounting is not running in this engine (its log says why; \
                 see also `splice-engine probe`)\n"
            } else {
                "  nothing yet\n"
            });
            continue;
        }
        let keys: Vec<String> = rows
            .iter()
            .map(|s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "{} {}",
                    s.name.trim_start_matches("splice_"),
                    labels.join(" ")
                )
            })
            .collect();
        let width = keys.iter().map(String::len).max().unwrap_or(0);
        for (key, s) in keys.iter().zip(rows) {
            out.push_str(&format!("  {key:<width$}  {:>16}\n", s.value));
        }
    }
    out
}

/// `GET /metrics` over HTTP/1.0; the body.
fn fetch(addr: &str) -> Result<String> {
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("--metrics {addr}: not an address"))?
        .next()
        .with_context(|| format!("--metrics {addr}: no address"))?;
    let mut sock = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .with_context(|| format!("connect to the engine's metrics at {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(sock, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw)
        .with_context(|| format!("read the metrics from {addr}"))?;
    let raw = String::from_utf8(raw).context("the metrics are not UTF-8")?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} did not answer with HTTP"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{addr}/metrics answered {status:?}");
    }
    Ok(body.to_string())
}

/// The samples of every `splice_*bytes_total` family in a Prometheus text exposition.
pub(crate) fn byte_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| l.starts_with("splice_"))
        .filter_map(parse_line)
        .filter(|s| s.name.ends_with("bytes_total"))
        .collect()
}

/// `name{k="v",...} value` (label values escaped as the format says), or `name value`.
fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample {
                name: name.to_string(),
                labels: Vec::new(),
                value: value.trim().parse().ok()?,
            });
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let key = key.trim_start_matches(',').trim().to_string();
        if key.starts_with('}') {
            break;
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key, value));
        match chars.clone().next()? {
            '}' => {
                chars.next();
                break;
            }
            ',' => continue,
            _ => return None,
        }
    }
    let value = chars.as_str().trim().split(' ').next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_byte_families_with_escaped_labels_and_leaves_the_rest() {
        let text = "# HELP splice_bytes_total x\n# TYPE splice_bytes_total counter\n\
            splice_bytes_total{forwarder=\"a \\\"b\\\"\",direction=\"up_to_down\"} 42\n\
            splice_connections_total{forwarder=\"a\"} 3\n\
            splice_kernel_bytes_total{forwarder=\"a\",leg=\"upstream\",direction=\"in\"} 1e3\n\
            splice_tunnel_bytes_total 7\n";
        let s = byte_samples(text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(
            s[0].labels,
            vec![
                ("forwarder".to_string(), "a \"b\"".to_string()),
                ("direction".to_string(), "up_to_down".to_string())
            ]
        );
        assert_eq!(s[0].value, 42.0);
        assert!(s[1].kernel() && s[1].value == 1000.0);
        assert!(s[2].labels.is_empty() && s[2].value == 7.0);
        let text = render(&s);
        assert!(
            text.contains("kernel_bytes_total forwarder=a leg=upstream direction=in"),
            "{text}"
        );
        let none = render(&s[..1]);
        assert!(none.contains("eBPF accounting is not running"), "{none}");
    }
}

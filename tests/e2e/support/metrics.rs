//! Metrics: scraping `/metrics` and reading the Prometheus text.

use super::*;

/// One scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The body as served.
    pub text: String,
    samples: Vec<Sample>,
}

/// One series: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

impl Metrics {
    /// Sum over the series of `name` whose labels include `labels` (0 when none matches).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    /// Whether any series of `name` has `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a [(String, String)], f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, ls, v)| (ls.as_slice(), *v))
    }
}

/// Parses the Prometheus text format (enough of it for these tests).
pub fn parse_metrics(text: &str) -> Metrics {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("bad line {line:?}"));
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close]),
                    &line[close + 1..],
                )
            }
            None => {
                let sp = line
                    .find(char::is_whitespace)
                    .unwrap_or_else(|| panic!("bad metrics line {line:?}"));
                (&line[..sp], Vec::new(), &line[sp..])
            }
        };
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no value in metrics line {line:?}"));
        samples.push((name.trim().to_string(), labels, value));
    }
    Metrics {
        text: text.to_string(),
        samples,
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.trim().is_empty() {
            return out;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "label value must be quoted in {s:?}"
        );
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(o) => value.push(o),
                    None => break,
                },
                '"' => break,
                o => value.push(o),
            }
        }
        out.push((key.trim().to_string(), value));
    }
}

/// GET /metrics, or why not.
pub fn try_scrape(addr: SocketAddr) -> io::Result<Metrics> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no end of headers in {raw:?}")))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(io::Error::other(format!("metrics status {status:?}")));
    }
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(parse_metrics(&body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET /metrics; panics on failure.
pub fn scrape(addr: SocketAddr) -> Metrics {
    try_scrape(addr).unwrap_or_else(|e| panic!("scrape http://{addr}/metrics: {e}"))
}

/// Polls `/metrics` until the sum for `name`/`labels` satisfies `pred`; returns the last
/// scrape. Panics with the metrics text after `SOON`.
pub fn wait_metric(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    pred: impl Fn(f64) -> bool,
) -> Metrics {
    let start = Instant::now();
    loop {
        let m = scrape(addr);
        if pred(m.value(name, labels)) {
            return m;
        }
        if start.elapsed() > SOON {
            panic!(
                "metric {name}{labels:?} = {} did not reach the expected value within {SOON:?}; metrics:\n{}",
                m.value(name, labels),
                m.text
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

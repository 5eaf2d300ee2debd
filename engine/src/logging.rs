//! Structured logs to stderr (text or JSON), filtered by level or env-filter directive.
//!
//! The engine logs through [`tracing`]. A program that has no subscriber of its own (the
//! `splice-engine` binary, a C or Python host) installs this one with [`init`]; one that has
//! its own gets the engine's events there and need not call anything here.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::error::{Error, Result};

/// The levels `--log-level` and `log_level` accept, as the error lists them.
pub(crate) const LEVELS: &str = "error, warn (or warning), info, debug, trace, off";

/// Checks a log level or filter directive and returns it in the form [`EnvFilter`] reads.
///
/// A bare word must be a level (`warning` is read as `warn`): [`EnvFilter`] would take any other
/// word as a target name and silently turn every other log line off. A directive names its
/// level after `=` (`splice_engine=debug`, `info,splice_engine::shard=trace`).
pub fn parse_filter(s: &str) -> std::result::Result<String, String> {
    let bad = |why: String| format!("{why}; expected one of {LEVELS}, or TARGET=LEVEL directives");
    let level = |word: &str| -> Option<&'static str> {
        Some(match word.trim().to_ascii_lowercase().as_str() {
            "error" => "error",
            "warn" | "warning" => "warn",
            "info" => "info",
            "debug" => "debug",
            "trace" => "trace",
            "off" => "off",
            _ => return None,
        })
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(bad(format!("log level \"{s}\" has an empty part")));
        }
        match part.rsplit_once('=') {
            None => match level(part) {
                Some(l) => out.push(l.to_string()),
                None => return Err(bad(format!("unknown log level \"{part}\""))),
            },
            Some((target, lvl)) => match level(lvl) {
                Some(l) => out.push(format!("{target}={l}")),
                None => {
                    return Err(bad(format!("unknown log level \"{lvl}\" in \"{part}\"")));
                }
            },
        }
    }
    let filter = out.join(",");
    EnvFilter::try_new(&filter).map_err(|e| bad(format!("\"{s}\" is not a valid filter ({e})")))?;
    Ok(filter)
}

/// rustls logs through the `log` crate, which reaches our subscriber: at `warn` it writes its own
/// line for a peer's protocol error (in Debug form, `Received a ClientHello handshake message
/// while expecting [ServerHello, ...]`), beside ours that says the same in words and names the
/// forwarder and side. So rustls is held to `error` unless the filter names it.
fn with_defaults(filter: String) -> String {
    if filter.contains("rustls") {
        filter
    } else {
        format!("{filter},rustls=error")
    }
}

/// Installs the global subscriber. `level` is a level or directive as [`parse_filter`] accepts
/// it; `RUST_LOG` (checked the same way) is used when it is `None`, and `info` when neither is
/// set.
pub fn init(level: Option<&str>, json: bool) -> Result<()> {
    let filter = match level {
        Some(l) => parse_filter(l).map_err(|e| Error::config("log_level", e))?,
        None => match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => {
                parse_filter(&v).map_err(|e| Error::config("RUST_LOG", e))?
            }
            _ => "info".to_string(),
        },
    };
    let filter = EnvFilter::try_new(with_defaults(filter))
        .map_err(|e| Error::config("log_level", e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and pipes get plain `key=value` text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let res = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    res.map_err(|e| Error::config("logging", e.to_string()))
}

/// Rate-limits repeated log lines of one kind: the first line of a kind is written at once,
/// and the ones that follow within `interval` are only counted. [`RateLimiter::flush`] then
/// hands back the counts of the windows that ended, for one summary line each.
///
/// Each shard keeps its own (no lock on the data path); a flood therefore writes at most two
/// lines per kind, per shard and per interval, whatever its size.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    interval: std::time::Duration,
    /// `(forwarder, kind)`, when its window started, lines suppressed in it.
    windows: Vec<(String, &'static str, std::time::Instant, u64)>,
}

/// How long a kind of line stays quiet after it was written.
pub(crate) const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl RateLimiter {
    /// A limiter writing at most one line per kind and `interval` (plus a summary).
    pub(crate) fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            windows: Vec::new(),
        }
    }

    /// Whether a line of this kind may be written now. `false`: it was counted instead, and
    /// the caller must make sure [`RateLimiter::flush`] runs at [`RateLimiter::next_flush`].
    pub(crate) fn allow(
        &mut self,
        forwarder: &str,
        kind: &'static str,
        now: std::time::Instant,
    ) -> bool {
        let found = self
            .windows
            .iter_mut()
            .find(|(f, k, _, _)| *k == kind && f == forwarder);
        match found {
            Some((_, _, start, suppressed)) if now < *start + self.interval => {
                *suppressed += 1;
                false
            }
            // A window that ended with nothing suppressed (a flush removes the others).
            Some((_, _, start, _)) => {
                *start = now;
                true
            }
            None => {
                self.windows.push((forwarder.to_string(), kind, now, 0));
                true
            }
        }
    }

    /// When the earliest window with suppressed lines ends.
    pub(crate) fn next_flush(&self) -> Option<std::time::Instant> {
        self.windows
            .iter()
            .filter(|w| w.3 > 0)
            .map(|w| w.2 + self.interval)
            .min()
    }

    /// Ends the windows that are over: returns `(forwarder, kind, suppressed lines)` for each
    /// that suppressed any, and forgets them, so the next line of that kind is written at once.
    pub(crate) fn flush(&mut self, now: std::time::Instant) -> Vec<(String, &'static str, u64)> {
        let mut out = Vec::new();
        let interval = self.interval;
        self.windows.retain(|(f, k, start, suppressed)| {
            if now < *start + interval {
                return true;
            }
            if *suppressed > 0 {
                out.push((f.clone(), *k, *suppressed));
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{RateLimiter, parse_filter};

    #[test]
    fn first_line_at_once_then_counted_then_summarised() {
        let mut rl = RateLimiter::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(rl.allow("a", "refused", t0));
        assert!(
            rl.allow("b", "refused", t0),
            "another forwarder has its own window"
        );
        assert!(
            rl.allow("a", "accept", t0),
            "another kind has its own window"
        );
        for i in 1..=1000 {
            assert!(!rl.allow("a", "refused", t0 + Duration::from_millis(i)));
        }
        assert_eq!(rl.next_flush(), Some(t0 + Duration::from_secs(5)));
        assert!(rl.flush(t0 + Duration::from_secs(4)).is_empty());
        let summary = rl.flush(t0 + Duration::from_secs(5));
        assert_eq!(summary, vec![("a".to_string(), "refused", 1000)]);
        assert_eq!(rl.next_flush(), None);
        // After the summary, the next line of that kind is written at once again.
        assert!(rl.allow("a", "refused", t0 + Duration::from_secs(6)));
    }

    #[test]
    fn a_quiet_window_restarts_without_a_summary() {
        let mut rl = RateLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(rl.allow("a", "k", t0));
        assert!(rl.allow("a", "k", t0 + Duration::from_secs(2)));
        assert!(!rl.allow("a", "k", t0 + Duration::from_millis(2500)));
        assert!(rl.flush(t0 + Duration::from_secs(2)).is_empty());
    }

    #[test]
    fn rustls_is_quiet_unless_named() {
        assert_eq!(super::with_defaults("info".into()), "info,rustls=error");
        assert_eq!(
            super::with_defaults("warn,rustls=debug".into()),
            "warn,rustls=debug"
        );
    }

    #[test]
    fn levels_and_directives() {
        assert_eq!(parse_filter("warning").unwrap(), "warn");
        assert_eq!(parse_filter("WARN").unwrap(), "warn");
        assert_eq!(
            parse_filter("info, splice_engine=debug").unwrap(),
            "info,splice_engine=debug"
        );
        for bad in [
            "verbose",
            "wran",
            "",
            "splice_engine",
            "splice_engine=loud",
            "info,",
        ] {
            let err = parse_filter(bad).unwrap_err();
            assert!(err.contains("error, warn"), "{bad:?}: {err}");
        }
    }
}

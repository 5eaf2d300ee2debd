//! Structured logs to stderr (text or JSON), filtered by level or env-filter directive.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::error::{Error, Result};

/// The levels `--log-level` and `log_level` accept, as the error lists them.
pub const LEVELS: &str = "error, warn (or warning), info, debug, trace, off";

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

/// Installs the global subscriber. `level` is a level or directive as [`parse_filter`] accepts
/// it; `RUST_LOG` is used when it is `None`.
pub fn init(level: Option<&str>, json: bool) -> Result<()> {
    let filter = match level {
        Some(l) => {
            let f = parse_filter(l).map_err(|e| Error::config("log_level", e))?;
            EnvFilter::try_new(f).map_err(|e| Error::config("log_level", e.to_string()))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
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

#[cfg(test)]
mod tests {
    use super::parse_filter;

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

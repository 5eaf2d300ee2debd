//! Structured logs to stderr (text or JSON), filtered by level or env-filter directive.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::error::{Error, Result};

/// Installs the global subscriber. `level` is `error|warn|info|debug|trace` or a directive such
/// as `splice_engine=debug`; `RUST_LOG` is used when it is `None`.
pub fn init(level: Option<&str>, json: bool) -> Result<()> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l)
            .map_err(|e| Error::config("command line", format!("--log-level {l:?}: {e}")))?,
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

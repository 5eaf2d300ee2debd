//! Logs: to stderr, or to a C callback (a `tracing` layer that formats each event's message
//! and fields into one line).

use std::ffi::{CString, c_char, c_void};
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::boundary::{LogSink, entry, opt_str_arg};
use crate::error::{Failure, tunnel_result};

/// An error.
pub const TUNNEL_LOG_ERROR: u32 = 1;
/// A warning.
pub const TUNNEL_LOG_WARN: u32 = 2;
/// Information (one access line per connection, start and stop).
pub const TUNNEL_LOG_INFO: u32 = 3;
/// Debugging detail.
pub const TUNNEL_LOG_DEBUG: u32 = 4;
/// Tracing detail.
pub const TUNNEL_LOG_TRACE: u32 = 5;

/// Receives one log line: its level (`TUNNEL_LOG_*`), target (the module, e.g.
/// `splice_engine::shard`) and message (`key=value` fields after the text), and the
/// `userdata` given to `tunnel_log_set_callback`. The strings are valid only during the call.
/// It is called from the library's threads, possibly several at once; it must not call back
/// into the library.
pub type tunnel_log_callback = Option<
    unsafe extern "C" fn(
        level: u32,
        target: *const c_char,
        message: *const c_char,
        userdata: *mut c_void,
    ),
>;

fn filter(level: Option<&str>) -> Result<tracing_subscriber::EnvFilter, Failure> {
    let text = splice_engine::logging::parse_filter(level.unwrap_or("info"))
        .map_err(|e| Failure::new(tunnel_result::TUNNEL_ERR_CONFIG, format!("level: {e}")))?;
    tracing_subscriber::EnvFilter::try_new(format!("{text},rustls=error"))
        .map_err(|e| Failure::new(tunnel_result::TUNNEL_ERR_CONFIG, format!("level: {e}")))
}

fn already_set() -> Failure {
    Failure::new(
        tunnel_result::TUNNEL_ERR_LOG_ALREADY_SET,
        "a logger is already set for this process",
    )
}

/// Sends the library's logs to stderr from now on, at `level` (`"error"`, `"warn"`,
/// `"info"`, `"debug"`, `"trace"`, or `TARGET=LEVEL` directives; NULL: `RUST_LOG`, else
/// `"info"`). Without this call or `tunnel_log_set_callback` the library logs nothing. Once per
/// process. Thread-safe. Errors: `TUNNEL_ERR_CONFIG` (unknown level),
/// `TUNNEL_ERR_LOG_ALREADY_SET`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_log_to_stderr(level: *const c_char) -> tunnel_result {
    entry("tunnel_log_to_stderr", || {
        let level = opt_str_arg(level, "level")?;
        splice_engine::logging::init(level, false).map_err(|e| match e {
            splice_engine::Error::Config { ref file, .. } if file == "logging" => already_set(),
            e => e.into(),
        })
    })
}

/// Sends the library's logs at `level` (as for `tunnel_log_to_stderr`; NULL: `"info"`) to
/// `callback`, with `userdata`. Once per process. Thread-safe. Errors:
/// `TUNNEL_ERR_NULL_ARGUMENT` (`callback`), `TUNNEL_ERR_CONFIG`, `TUNNEL_ERR_LOG_ALREADY_SET`.
#[unsafe(no_mangle)]
pub extern "C" fn tunnel_log_set_callback(
    callback: tunnel_log_callback,
    userdata: *mut c_void,
    level: *const c_char,
) -> tunnel_result {
    entry("tunnel_log_set_callback", || {
        let callback = callback.ok_or_else(|| {
            Failure::new(
                tunnel_result::TUNNEL_ERR_NULL_ARGUMENT,
                "`callback` is NULL",
            )
        })?;
        let filter = filter(opt_str_arg(level, "level")?)?;
        tracing_subscriber::registry()
            .with(filter)
            .with(CallbackLayer(LogSink { callback, userdata }))
            .try_init()
            .map_err(|_| already_set())
    })
}

struct CallbackLayer(LogSink);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CallbackLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => TUNNEL_LOG_ERROR,
            tracing::Level::WARN => TUNNEL_LOG_WARN,
            tracing::Level::INFO => TUNNEL_LOG_INFO,
            tracing::Level::DEBUG => TUNNEL_LOG_DEBUG,
            tracing::Level::TRACE => TUNNEL_LOG_TRACE,
        };
        let target = CString::new(meta.target()).unwrap_or_default();
        let message = CString::new(line.message + &line.fields).unwrap_or_default();
        self.0.call(level, &target, &message);
    }
}

/// An event's message, then its other fields as ` key=value`.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

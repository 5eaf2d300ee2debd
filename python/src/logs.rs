//! The engine's `tracing` events as records of Python's `logging`, on the logger
//! `splice_engine` (one line: the message, then the event's fields as `key=value`).
//!
//! Taking the GIL for an event no one reads would slow the data path, so events are filtered
//! first against a level kept here: the logger's effective level when an engine starts, or
//! what `set_level` says (the facade calls it when `logging` is configured later).

use std::fmt::Write;
use std::sync::Once;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// The most verbose level forwarded: 0 nothing, 1 error ... 5 trace.
static MAX: AtomicU8 = AtomicU8::new(3);

fn rank(l: &Level) -> u8 {
    match *l {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Python's number for a level (`logging.ERROR` ...; trace is 5, below `DEBUG`).
fn python_level(l: &Level) -> i32 {
    match *l {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

/// Forwards events at or above Python level `level` (a `logging` level number).
#[pyfunction]
pub(crate) fn set_level(level: i32) {
    let max = match level {
        l if l > 40 => 0,
        l if l > 30 => 1,
        l if l > 20 => 2,
        l if l > 10 => 3,
        l if l > 5 => 4,
        _ => 5,
    };
    if MAX.swap(max, Relaxed) != max {
        // Call sites cache whether anyone listens; have them ask again.
        tracing::callsite::rebuild_interest_cache();
    }
}

/// Installs the bridge as the global subscriber, once (not when the program has one).
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    let level: i32 = py
        .import("logging")?
        .call_method1("getLogger", ("splice_engine",))?
        .call_method0("getEffectiveLevel")?
        .extract()?;
    set_level(level);
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter =
            tracing_subscriber::filter::filter_fn(|m| rank(m.level()) <= MAX.load(Relaxed));
        let subscriber = tracing_subscriber::registry().with(ToPython.with_filter(filter));
        // A program that set its own subscriber keeps it.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    Ok(())
}

struct ToPython;

impl<S: Subscriber> Layer<S> for ToPython {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The level can change (`set_level`): never let a call site cache a "no".
        Interest::sometimes()
    }

    fn enabled(&self, m: &Metadata<'_>, _: Context<'_, S>) -> bool {
        rank(m.level()) <= MAX.load(Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let level = python_level(event.metadata().level());
        let text = if line.fields.is_empty() {
            line.message
        } else {
            format!("{}{}", line.message, line.fields)
        };
        Python::attach(|py| {
            let logged = py
                .import("logging")
                .and_then(|l| l.call_method1("getLogger", ("splice_engine",)))
                .and_then(|l| l.call_method1("log", (level, "%s", text)));
            if let Err(e) = logged {
                // A handler that raises: Python reports it as logging does.
                e.print(py);
            }
        });
    }
}

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

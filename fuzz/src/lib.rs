//! Fuzz targets for the decoders of `splice-proto` that read what a peer sends: the tunnel
//! frame decoder and message codec, the WebSocket frame decoder (both roles), and the HTTP
//! upgrade (the relay's request parser, the agent's response parser).
//!
//! Each target is a plain `fn(&[u8])` that panics when an invariant breaks ([`TARGETS`]). Two
//! drivers run them: the stable runner of this crate ([`run`], `cargo xtask fuzz`: the corpus
//! in `fuzz/corpus/<target>/`, then random mutations of it for a bounded time), and
//! `cargo fuzz` on nightly (`fuzz/libfuzzer/`, coverage-guided). A crashing input is saved
//! into the target's corpus directory, which `cargo test` replays (`tests/corpus.rs`).

pub mod mutate;
pub mod seeds;
pub mod targets;

use std::cell::{Cell, RefCell};
use std::panic;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// A fuzz target: panics on an input that breaks one of its invariants.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("tunnel_frames", targets::tunnel_frames),
    ("tunnel_message", targets::tunnel_message),
    ("ws_server", targets::ws_server),
    ("ws_client", targets::ws_client),
    ("upgrade_request", targets::upgrade_request),
    ("upgrade_response", targets::upgrade_response),
    ("client_request", targets::client_request),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// `fuzz/corpus/`, in the source tree.
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// The files of `dir`, sorted by name, with their bytes (none if it does not exist).
pub fn read_corpus(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_file() {
            let bytes = std::fs::read(&path)?;
            files.push((path, bytes));
        }
    }
    files.sort();
    Ok(files)
}

/// A file name for `bytes`: `prefix`, a dash, and 16 hex digits of an FNV-1a hash of them.
pub fn file_name(prefix: &str, bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{prefix}-{hash:016x}")
}

/// An input that made a target panic, with the panic's message and place.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The input.
    pub input: Vec<u8>,
    /// The panic message, with its file and line.
    pub message: String,
}

thread_local! {
    /// Set while [`run_one`] runs a target on this thread: its panics are kept, not printed.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// The message of the last panic caught on this thread.
    static PANIC_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}
static HOOK: Once = Once::new();

/// Runs `target` on `input`, catching a panic. A panic hook, installed once, keeps the message
/// of a panic inside a target instead of printing it (the runner prints it with the input's
/// file); every other panic goes to the hook that was there before.
pub fn run_one(target: Target, input: &[u8]) -> Result<(), Crash> {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CATCHING.get() {
                PANIC_MESSAGE.set(Some(info.to_string()));
            } else {
                previous(info);
            }
        }));
    });
    CATCHING.set(true);
    let result = panic::catch_unwind(|| target(input));
    CATCHING.set(false);
    result.map_err(|_| Crash {
        input: input.to_vec(),
        message: PANIC_MESSAGE
            .take()
            .unwrap_or_else(|| "a panic without a message".into()),
    })
}

/// Bounds of one [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Stop mutating after this long.
    pub time: Duration,
    /// Stop after this many mutated inputs.
    pub max_runs: u64,
    /// The random generator's seed: the same seed and corpus give the same inputs.
    pub seed: u64,
    /// The longest mutated input.
    pub max_len: usize,
}

/// What a [`run`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Corpus files replayed.
    pub replayed: usize,
    /// Mutated inputs run.
    pub runs: u64,
}

/// Replays `corpus`, then runs mutations of it until the budget is spent or an input panics.
pub fn run(target: Target, corpus: &[Vec<u8>], budget: Budget) -> Result<Stats, Crash> {
    let mut stats = Stats::default();
    for input in corpus {
        run_one(target, input)?;
        stats.replayed += 1;
    }
    let mut mutator = mutate::Mutator::new(budget.seed, budget.max_len);
    let started = Instant::now();
    let empty = [Vec::new()];
    let pool = if corpus.is_empty() {
        &empty[..]
    } else {
        corpus
    };
    let mut input = Vec::new();
    while stats.runs < budget.max_runs {
        // The clock is read once every 256 runs.
        if stats.runs % 256 == 0 && started.elapsed() >= budget.time {
            break;
        }
        mutator.next_input(pool, &mut input);
        run_one(target, &input)?;
        stats.runs += 1;
    }
    Ok(stats)
}

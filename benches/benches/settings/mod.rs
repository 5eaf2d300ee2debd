//! The criterion settings every bench here shares.
//!
//! Each bench has a plain `main` rather than `criterion_group!`/`criterion_main!`, whose
//! generated `pub fn` has no doc comment for the workspace's `missing_docs` lint.

use std::time::Duration;

use criterion::Criterion;

/// Short runs by default (the whole suite takes about a minute): one second of warm-up, then
/// `measure` seconds for `samples` samples. Command-line flags (`--quick`,
/// `--measurement-time`, ...) override them.
pub fn criterion(measure: u64, samples: usize) -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(measure))
        .sample_size(samples)
        .configure_from_args()
}

//! `splice-fuzz`: the stable fuzz runner (`cargo xtask fuzz` runs it).
//!
//! * `splice-fuzz run [--time SECS] [--runs N] [--seed N] [TARGET...]` — for each target (all
//!   by default): replays `fuzz/corpus/<target>/`, then runs random mutations of it for `SECS`
//!   seconds in all (default 20) or `N` inputs each. An input that panics is saved as
//!   `fuzz/corpus/<target>/crash-<hash>` (commit it with the fix: `cargo test` replays it), and
//!   the run fails.
//! * `splice-fuzz replay TARGET FILE...` — runs the target on each file, printing any panic.
//! * `splice-fuzz seed` — writes the seed corpus (`seeds`) into `fuzz/corpus/`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use splice_fuzz::{Budget, TARGETS, corpus_root, file_name, read_corpus, run, run_one, target};

const USAGE: &str = "\
usage: splice-fuzz run [--time SECS] [--runs N] [--seed N] [TARGET...]
       splice-fuzz replay TARGET FILE...
       splice-fuzz seed";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => cmd_run(&args[1..]),
        Some("replay") => cmd_replay(&args[1..]),
        Some("seed") => cmd_seed(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("splice-fuzz: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_run(args: &[String]) -> Result<()> {
    let mut time = Duration::from_secs(20);
    let mut runs = u64::MAX;
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut names = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--time" => time = Duration::from_secs_f64(value()?.parse().context("--time")?),
            "--runs" => runs = value()?.parse().context("--runs")?,
            "--seed" => seed = value()?.parse().context("--seed")?,
            name if target(name).is_some() => names.push(name.to_owned()),
            other => bail!("unknown target or flag {other:?}\n{USAGE}"),
        }
    }
    if names.is_empty() {
        names = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    }
    let per_target = time / names.len() as u32;
    eprintln!(
        "splice-fuzz: seed {seed}, {:.1}s per target (re-run with --seed {seed} for the same inputs)",
        per_target.as_secs_f64()
    );
    for (i, name) in names.iter().enumerate() {
        let dir = corpus_root().join(name);
        let corpus: Vec<Vec<u8>> = read_corpus(&dir)?.into_iter().map(|(_, b)| b).collect();
        let budget = Budget {
            time: per_target,
            max_runs: runs,
            seed: seed.wrapping_add(i as u64),
            max_len: 8192,
        };
        let target = target(name).expect("checked above");
        match run(target, &corpus, budget) {
            Ok(stats) => eprintln!(
                "splice-fuzz: {name}: {} corpus inputs, {} mutated inputs, no failure",
                stats.replayed, stats.runs
            ),
            Err(crash) => {
                std::fs::create_dir_all(&dir)?;
                let path = dir.join(file_name("crash", &crash.input));
                std::fs::write(&path, &crash.input)?;
                bail!(
                    "{name} failed on an input saved as {}:\n{}\n\
                     Fix it and commit the file: `cargo test -p splice-fuzz` replays it.",
                    path.display(),
                    crash.message
                );
            }
        }
    }
    Ok(())
}

fn cmd_replay(args: &[String]) -> Result<()> {
    let [name, files @ ..] = args else {
        bail!("{USAGE}");
    };
    let target = target(name).with_context(|| format!("no target {name:?}"))?;
    let mut failed = 0;
    for file in files {
        let input = std::fs::read(file).with_context(|| format!("reading {file}"))?;
        match run_one(target, &input) {
            Ok(()) => eprintln!("{file}: ok"),
            Err(crash) => {
                failed += 1;
                eprintln!("{file}: {}", crash.message);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} inputs failed", files.len());
    }
    Ok(())
}

fn cmd_seed() -> Result<()> {
    let mut written = 0;
    for (name, input) in splice_fuzz::seeds::all() {
        let dir = corpus_root().join(name);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(file_name("seed", &input));
        if !path.exists() {
            std::fs::write(&path, &input)?;
            written += 1;
        }
    }
    eprintln!(
        "splice-fuzz: {written} new seed files in {}",
        corpus_root().display()
    );
    Ok(())
}

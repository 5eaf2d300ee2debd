//! `--baseline REV`: an older splice-engine measured beside this one in the same run.
//!
//! REV's tree is exported with `git archive` into `target/bench/base-<commit>/` (an export rather
//! than a `git worktree`, so the repository gains no worktree to prune), its `splice-engine`
//! is built in release mode with this workspace's target directory (the dependencies both
//! commits share are built once), and the binary is kept as `target/bench/splice-base-<commit>`.
//! A later run with the same commit reuses it. The `splice-base` path then runs it exactly like
//! `splice-uring` (see `paths.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The baseline binary and what it was built from.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The revision as given.
    pub rev: String,
    /// The full commit id it names.
    pub commit: String,
    /// The release `splice-engine` built from it.
    pub engine: PathBuf,
}

/// Builds (or reuses) REV's `splice-engine`. Call it before this tree's own build: both use the
/// workspace's `target/release/`, and the later build's binary is the one left there.
pub fn build(root: &Path, rev: &str) -> Result<Baseline> {
    let out = Command::new("git")
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{rev}^{{commit}}"))
        .current_dir(root)
        .output()
        .context("running git rev-parse")?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || commit.is_empty() {
        bail!("--baseline {rev:?}: not a commit in {}", root.display());
    }
    let short = &commit[..12.min(commit.len())];
    let bench = root.join("target/bench");
    let engine = bench.join(format!("splice-base-{short}"));
    let baseline = Baseline {
        rev: rev.to_string(),
        commit: commit.clone(),
        engine: engine.clone(),
    };
    if engine.exists() {
        eprintln!(
            "bench: baseline {rev} ({short}) already built: {}",
            engine.display()
        );
        return Ok(baseline);
    }

    let src = bench.join(format!("base-{short}"));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    eprintln!("bench: exporting {rev} ({short}) to {}", src.display());
    let mut archive = Command::new("git")
        .args(["archive", "--format=tar", &commit])
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(&src)
        .stdin(archive.stdout.take().expect("piped"))
        .status()
        .context("running tar")?;
    let archived = archive.wait()?;
    if !archived.success() || !tar.success() {
        bail!("exporting {rev} with git archive | tar failed ({archived}, {tar})");
    }

    eprintln!("bench: building splice-engine at {rev} ({short}) (release)");
    let mut cmd = crate::cargo();
    cmd.current_dir(&src)
        .env("CARGO_TARGET_DIR", root.join("target"))
        // By binary name: its package is `splice-engine` in revisions before the cli/ split
        // and `splice-engine-cli` after it.
        .args(["build", "--release", "--bin", "splice-engine"]);
    crate::run_cmd(&mut cmd)?;
    let built = root.join("target/release/splice-engine");
    std::fs::copy(&built, &engine)
        .with_context(|| format!("copying {} to {}", built.display(), engine.display()))?;
    // The export is only needed for the build.
    let _ = std::fs::remove_dir_all(&src);
    Ok(baseline)
}

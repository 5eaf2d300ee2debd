//! `cargo xtask py-test`: the Python package as a user gets it. Installs `./python` with pip
//! into a fresh virtual environment (maturin comes in through the build requirements, and
//! builds the native module into the workspace's `target/`), then, from outside the source
//! tree so that the installed package is what is imported: pytest on `python/tests`,
//! `mypy --strict` on the examples, the bench script and the package, and `mypy.stubtest` on the native
//! module's stubs.
//!
//! Needs `python3` with `venv` and `pip` (Debian: python3-venv, python3-pip, python3-dev),
//! and `openssl` for the tests; pip fetches maturin, pytest and mypy from the package index.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{run_cmd, workspace_root};

pub fn run() -> Result<()> {
    let root = workspace_root();
    let work = root.join("target/py-test");
    let venv = work.join("venv");
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    let py = venv.join("bin/python");
    let python = || {
        let mut c = Command::new(&py);
        c.current_dir(&work)
            // No bytecode or caches written into the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("PYTHONPATH");
        c
    };
    let quiet_pip = ["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    run_cmd(python().args(quiet_pip).arg(root.join("python")))?;
    run_cmd(python().args(quiet_pip).args(["pytest", "mypy"]))?;
    let tests = root.join("python/tests");
    run_cmd(
        python()
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(&tests),
    )?;
    let cache = work.join("mypy-cache");
    run_cmd(
        python()
            .args(["-m", "mypy", "--strict", "--cache-dir"])
            .arg(&cache)
            .arg(root.join("python/examples"))
            .arg(root.join("python/bench")),
    )?;
    run_cmd(
        python()
            .args(["-m", "mypy", "--strict", "--cache-dir"])
            .arg(&cache)
            .args(["-p", "splice_engine"]),
    )?;
    run_cmd(
        python()
            .args(["-m", "mypy.stubtest", "--mypy-config-file"])
            .arg(empty_config(&work)?)
            .arg("splice_engine"),
    )
}

/// stubtest reads `setup.cfg`/`mypy.ini` from the current directory; give it an empty one.
fn empty_config(work: &Path) -> Result<std::path::PathBuf> {
    let p = work.join("mypy.ini");
    std::fs::write(&p, "[mypy]\n")?;
    Ok(p)
}

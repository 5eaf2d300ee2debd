//! `cargo xtask py-test`: the Python package as a user gets it. Installs `./python` with pip
//! into a fresh virtual environment (maturin comes in through the build requirements, and
//! builds the native module into the workspace's `target/`), then, from outside the source
//! tree so that the installed package is what is imported: pytest on `python/tests`,
//! `mypy --strict` on the examples, the bench script and the package, and `mypy.stubtest` on the native
//! module's stubs. Then, when a CPython 3.9 is found (pyenv's, or `python3.9` on the path;
//! the output says when none is), the same wheel (abi3, for 3.9 and later) goes into a 3.9
//! virtual environment and pytest runs there too.
//!
//! Needs `python3` with `venv` and `pip` (Debian: python3-venv, python3-pip, python3-dev),
//! and `openssl` for the tests; pip fetches maturin, pytest and mypy from the package index.

use std::path::{Path, PathBuf};
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
    )?;

    let Some(py39) = find_python39() else {
        eprintln!(
            "xtask py-test: NOTE: no CPython 3.9 found (looked for pyenv's \
             ~/.pyenv/versions/3.9.*/bin/python3.9 and `python3.9` on the path): the suite ran \
             on {} only, not on the oldest Python the wheel supports",
            version_of(&py).unwrap_or_else(|| "the default python3".into())
        );
        return Ok(());
    };
    eprintln!("xtask py-test: the wheel on {} too", py39.display());
    // The wheel pip built above, as a file (cargo has nothing left to build).
    let wheels = work.join("wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    run_cmd(
        python()
            .args([
                "-m",
                "pip",
                "wheel",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .arg("-w")
            .arg(&wheels)
            .arg(root.join("python")),
    )?;
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip wheel made no .whl")?;
    let venv39 = work.join("venv39");
    if venv39.exists() {
        std::fs::remove_dir_all(&venv39)
            .with_context(|| format!("cannot remove {}", venv39.display()))?;
    }
    run_cmd(Command::new(&py39).args(["-m", "venv"]).arg(&venv39))?;
    let python39 = || {
        let mut c = Command::new(venv39.join("bin/python"));
        c.current_dir(&work)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("PYTHONPATH");
        c
    };
    run_cmd(python39().args(quiet_pip).arg(&wheel).arg("pytest"))?;
    run_cmd(
        python39()
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(&tests),
    )
}

/// A CPython 3.9: pyenv's newest 3.9.x, else `python3.9` on the path.
fn find_python39() -> Option<PathBuf> {
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")))
        .map(|r| r.join("versions"));
    let mut found: Vec<PathBuf> = pyenv
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("3.9."))
        .map(|e| e.path().join("bin/python3.9"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .or_else(|| Some(PathBuf::from("python3.9")).filter(|p| version_of(p).is_some()))
        .filter(|p| version_of(p).is_some_and(|v| v.starts_with("Python 3.9")))
}

/// `python --version`'s answer, if it runs.
fn version_of(python: &Path) -> Option<String> {
    let out = Command::new(python).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// stubtest reads `setup.cfg`/`mypy.ini` from the current directory; give it an empty one.
fn empty_config(work: &Path) -> Result<std::path::PathBuf> {
    let p = work.join("mypy.ini");
    std::fs::write(&p, "[mypy]\n")?;
    Ok(p)
}

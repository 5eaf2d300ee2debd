//! `cargo xtask ebpf [--check]`: rebuilds the eBPF accounting program (`ebpf/`, see
//! docs/ebpf.md) into `ebpf/splice-accounting.bpf.o`, the object the engine embeds; with
//! `--check`, builds it into a temporary directory instead and fails when it differs from the
//! committed one (what CI runs, so that the object never drifts from its source).
//!
//! The build needs the nightly that `ebpf/rust-toolchain.toml` pins (with `rust-src`) and
//! `bpf-linker` 0.10.4 (`cargo install bpf-linker --version 0.10.4`); `.ci/run`
//! installs both. It runs `cargo build --release` in `ebpf/` through `rustup run <that
//! nightly>`, with a clean environment (none of the stable cargo's variables leak in).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The committed object, relative to the workspace root.
pub const OBJECT: &str = "ebpf/splice-accounting.bpf.o";
/// The bpf-linker version the object is built with.
const BPF_LINKER: &str = "0.10.4";

/// `cargo xtask ebpf [--check]`.
pub fn main(args: &[&str]) -> Result<()> {
    let check = match args {
        [] => false,
        ["--check"] => true,
        _ => bail!("usage: cargo xtask ebpf [--check]"),
    };
    let root = super::workspace_root();
    let linker = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .context(
            "bpf-linker not found: install it with `cargo install bpf-linker --version 0.10.4`",
        )?;
    let version = String::from_utf8_lossy(&linker.stdout);
    if !version.contains(BPF_LINKER) {
        bail!(
            "bpf-linker {BPF_LINKER} is needed (found `{}`): `cargo install bpf-linker --version \
             {BPF_LINKER} --force`",
            version.trim()
        );
    }
    let toolchain = pinned_toolchain(&root.join("ebpf/rust-toolchain.toml"))?;
    let target_dir = if check {
        std::env::temp_dir().join(format!("splice-ebpf-check-{}", std::process::id()))
    } else {
        root.join("ebpf/target")
    };
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root.join("ebpf"))
        .args(["run", &toolchain, "cargo", "build", "--release", "--locked"])
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
    ] {
        cmd.env_remove(var);
    }
    super::run_cmd(&mut cmd)?;
    let built = target_dir.join("bpfel-unknown-none/release/splice-accounting");
    let bytes = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let committed_path = root.join(OBJECT);
    if check {
        let _ = std::fs::remove_dir_all(&target_dir);
        let committed = std::fs::read(&committed_path)
            .with_context(|| format!("reading {}", committed_path.display()))?;
        if committed != bytes {
            bail!(
                "{OBJECT} differs from what ebpf/ builds ({} bytes committed, {} built): run \
                 `cargo xtask ebpf` and commit the object",
                committed.len(),
                bytes.len()
            );
        }
        eprintln!(
            "xtask ebpf: {OBJECT} matches its source ({} bytes)",
            bytes.len()
        );
    } else {
        std::fs::write(&committed_path, &bytes)
            .with_context(|| format!("writing {}", committed_path.display()))?;
        eprintln!("xtask ebpf: wrote {OBJECT} ({} bytes)", bytes.len());
    }
    Ok(())
}

/// The `channel` that `rust-toolchain.toml` pins.
fn pinned_toolchain(file: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("no `channel = \"...\"` in {}", file.display()))
}

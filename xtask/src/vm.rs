//! `cargo xtask integration-test vm`: builds `tests/kernel` (the `ktls` test) as a static binary
//! and runs it in the kTLS VM, a qemu guest whose kernel has `tls.ko` (see
//! `../shared/ktls-vm/README.md`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cargo, run_cmd, show, workspace_root};

/// The VM is x86_64; naming the target also keeps `+crt-static` off build scripts and
/// proc-macros.
const TARGET: &str = "x86_64-unknown-linux-gnu";
const TEST_CRATE: &str = "splice-kernel-tests";
const TEST_NAME: &str = "ktls";

/// Builds and runs the kTLS tests in the VM; `test_args` go to the test binary.
pub fn run(test_args: &[&str]) -> Result<()> {
    let vm_dir = vm_dir()?;
    if !on_path("qemu-system-x86_64") {
        eprintln!("qemu-system-x86_64 is missing: running setup-host.sh (apt-get, needs root)");
        run_cmd(&mut Command::new(vm_dir.join("setup-host.sh")))?;
    }
    let binary = build_static_test()?;
    run_in_vm(&vm_dir, &binary, test_args)
}

/// `$SPLICE_KTLS_VM_DIR`, else `<workspace>/../shared/ktls-vm`.
fn vm_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("SPLICE_KTLS_VM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("../shared/ktls-vm"),
    };
    if !dir.join("run-in-vm.sh").is_file() {
        bail!(
            "no run-in-vm.sh in {}; set SPLICE_KTLS_VM_DIR to the ktls-vm directory",
            dir.display()
        );
    }
    Ok(dir)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Builds the test binary statically (the VM has no libc) and returns its path, read from
/// cargo's JSON messages.
fn build_static_test() -> Result<PathBuf> {
    let rustflags = format!(
        "{} -C target-feature=+crt-static",
        std::env::var("RUSTFLAGS").unwrap_or_default()
    );
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--target", TARGET, "-p", TEST_CRATE])
        .args([
            "--test",
            TEST_NAME,
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .env("RUSTFLAGS", rustflags.trim())
        .stdout(Stdio::piped());
    eprintln!("$ RUSTFLAGS='{}' {}", rustflags.trim(), show(&cmd));
    let mut child = cmd.spawn().context("cannot start cargo")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    // Diagnostics and progress go to stderr (inherited); stdout is one JSON message per line.
    let mut binary = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == TEST_NAME
            && msg["profile"]["test"] == true
        {
            binary = msg["executable"].as_str().map(PathBuf::from);
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("building the static `{TEST_NAME}` test binary failed ({status})");
    }
    binary.with_context(|| format!("cargo reported no `{TEST_NAME}` test executable"))
}

/// Runs `binary` in the VM with output streaming; maps the harness's exit codes to messages.
fn run_in_vm(vm_dir: &Path, binary: &Path, test_args: &[&str]) -> Result<()> {
    let target_dir = workspace_root().join("target");
    let mut cmd = Command::new(vm_dir.join("run-in-vm.sh"));
    // One test at a time: the guest has 2 emulated vCPUs and the kernel counters are global.
    cmd.arg(binary)
        .args(["--test-threads=1", "--nocapture"])
        .args(test_args);
    let log = match std::env::var_os("KTLSVM_LOG") {
        Some(log) => PathBuf::from(log),
        None => {
            let log = target_dir.join("ktls-vm-serial.log");
            cmd.env("KTLSVM_LOG", &log);
            log
        }
    };
    // The engine's log filter inside the guest (the test reads SPLICE_TEST_LOG; default info).
    if let Ok(filter) = std::env::var("SPLICE_TEST_LOG") {
        let env_file = target_dir.join("ktls-vm.env");
        std::fs::write(&env_file, format!("export SPLICE_TEST_LOG='{filter}'\n"))
            .with_context(|| format!("write {}", env_file.display()))?;
        cmd.env("KTLSVM_ENV", env_file);
    }
    eprintln!("$ {}", show(&cmd));
    let started = Instant::now();
    let status = cmd.status().context("cannot start run-in-vm.sh")?;
    let secs = started.elapsed().as_secs_f64();
    let log = log.display();
    match status.code() {
        Some(0) => {
            eprintln!("kTLS tests passed in the VM ({secs:.0}s including boot)");
            Ok(())
        }
        Some(124) => bail!(
            "the VM timed out after {secs:.0}s (KTLSVM_TIMEOUT, default 600 s): a test hung? \
             Serial log: {log}"
        ),
        Some(125) => bail!(
            "the VM itself failed (qemu, kernel download, initramfs or a guest crash), not a \
             test; see the `ktlsvm:` lines above. Serial log: {log}"
        ),
        Some(code) => {
            bail!("the test binary exited with {code} (failures above). Serial log: {log}")
        }
        None => bail!("run-in-vm.sh was killed ({status})"),
    }
}

//! Developer tasks for splice-engine, run as `cargo xtask <task>`:
//!
//! * `test` — the whole test suite: the host tests (doctests included), the library's rustdoc
//!   with `-D warnings`, a bounded `fuzz` run, the criterion benches once each, then the kTLS
//!   tests in the VM;
//! * `ci` — what CI runs: `cargo fmt --check`, `cargo clippy -D warnings`, `test`, then a
//!   `bench --quick` smoke run;
//! * `c-test` — libtunnel's C tests (`tests/c/`, see `ctest`), also a step of `test`;
//! * `install-c [--prefix DIR]` — installs libtunnel, `tunnel.h` and `tunnel.pc`;
//! * `py-test` — the Python package: `pip install ./python` into a fresh virtual environment,
//!   then pytest, `mypy --strict` and stubtest against what was installed (see `pytest.rs`);
//! * `fuzz [--time SECS] [ARGS...]` — the decoders' fuzz targets (`fuzz/`): the corpus, then
//!   random mutations for `SECS` seconds (default 60); `test` runs it for [`TEST_FUZZ_SECS`];
//! * `bench [FLAGS]` — load tests side by side with direct connections and peers (see `bench`);
//! * `ebpf [--check]` — rebuilds the eBPF accounting object `ebpf/splice-accounting.bpf.o` from
//!   `ebpf/` (pinned nightly + bpf-linker); `--check` fails when the committed one differs;
//! * `integration-test vm [TEST-ARGS...]` — builds `tests/kernel` as a static binary and runs it
//!   inside the kTLS VM (`../shared/ktls-vm`, or `$SPLICE_KTLS_VM_DIR`). `TEST-ARGS` go to the
//!   test binary (a test name filter, `--exact`, ...).
//!
//! Every child process inherits stdout and stderr, so its output streams as it runs.

mod bench;
mod ctest;
mod ebpf;
mod pytest;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  test                             host tests, a bounded fuzz run, then the kTLS tests in the VM
  ci                               fmt check, clippy -D warnings, `test`, `bench --quick`
  py-test                          the Python package: pip install, pytest, mypy --strict
  integration-test vm [ARGS...]    the kTLS tests in the VM (ARGS go to the test binary)
  c-test                           libtunnel's C tests (ASan, shared and static, openssl peers)
  install-c [--prefix DIR]         install libtunnel, tunnel.h and tunnel.pc (default /usr/local)
  fuzz [--time SECS] [ARGS...]     fuzz the decoders (default 60 s; ARGS go to splice-fuzz run)
  bench [--quick] [FLAGS...]       load tests against direct and peers (`bench --help`)
  ebpf [--check]                   rebuild ebpf/splice-accounting.bpf.o (--check: fail if it differs)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut steps = Steps::default();
    let result = match args.as_slice() {
        ["test"] => test(&mut steps),
        ["ci"] => ci(&mut steps),
        ["integration-test", "vm", rest @ ..] => {
            steps.run("kTLS tests in the VM", || vm::run(rest))
        }
        ["py-test"] => steps.run("python package (py-test)", pytest::run),
        ["fuzz", rest @ ..] => steps.run("fuzz", || fuzz(rest)),
        ["bench", rest @ ..] => steps.run("bench", || bench::main(rest)),
        ["c-test"] => steps.run("C tests (libtunnel)", ctest::test_main),
        ["ebpf", rest @ ..] => steps.run("eBPF object (ebpf/)", || ebpf::main(rest)),
        ["install-c", rest @ ..] => steps.run("install libtunnel", || ctest::install_main(rest)),
        ["help" | "-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    steps.summary(&args.join(" "), result)
}

/// `cargo xtask test`: everything that runs on the host (the Python package included), then
/// the kernel tests in the VM.
fn test(steps: &mut Steps) -> Result<()> {
    // tests/kernel is excluded: its tests need kTLS and fail on purpose outside the VM.
    steps.run("host tests", || {
        run_cmd(cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "splice-kernel-tests",
            "--release",
        ]))
    })?;
    // Every public item of the library (and of the sans-IO core it builds on) documented, and
    // every intra-doc link resolving.
    steps.run("rustdoc", || {
        run_cmd(cargo().env("RUSTDOCFLAGS", "-D warnings").args([
            "doc",
            "-p",
            "splice-engine",
            "-p",
            "splice-proto",
            "--no-deps",
        ]))
    })?;
    steps.run("fuzz, bounded", || {
        fuzz(&["--time", &TEST_FUZZ_SECS.to_string()])
    })?;
    // The criterion micro-benchmarks, each run once (no timing) so that they keep working.
    steps.run("criterion benches, once each", || {
        run_cmd(cargo().args(["test", "--release", "-p", "splice-bench", "--benches"]))
    })?;
    steps.run("C tests (libtunnel)", ctest::test_main)?;
    // The Python package, installed as a user installs it.
    steps.run("python package (py-test)", pytest::run)?;
    steps.run("kTLS tests in the VM", || vm::run(&[]))
}

/// How long `test` fuzzes, all targets together (the corpus replay comes first and is quick).
const TEST_FUZZ_SECS: u32 = 24;

/// `cargo xtask fuzz [--time SECS] [ARGS...]`: `splice-fuzz run`, all targets by default
/// (`fuzz/src/main.rs` has the flags). It is built in the dev profile on purpose: overflow
/// checks and debug assertions on, so an arithmetic slip in a decoder is a failure, not a
/// wrapped length.
fn fuzz(args: &[&str]) -> Result<()> {
    let mut args = args.to_vec();
    if !args.contains(&"--time") {
        args.splice(0..0, ["--time", "60"]);
    }
    run_cmd(
        cargo()
            .args(["run", "--quiet", "-p", "splice-fuzz", "--", "run"])
            .args(args),
    )
}

/// `cargo xtask ci`: formatting, lints (every crate and target, tests/kernel included), tests.
fn ci(steps: &mut Steps) -> Result<()> {
    steps.run("rustfmt", || {
        run_cmd(cargo().args(["fmt", "--all", "--check"]))
    })?;
    steps.run("clippy", || {
        run_cmd(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    test(steps)?;
    // A smoke run of every scenario on every path that can run here: it must run and write its
    // JSON; no speed is asserted.
    let json = workspace_root().join("target/bench/ci.json");
    steps.run("bench smoke (bench --quick)", || {
        let json_arg = json.to_string_lossy();
        bench::main(&["--quick", "--json", &json_arg])?;
        bench::check_results(&json)
    })
}

/// The steps run so far, with their times, for the summary line.
#[derive(Default)]
struct Steps(Vec<(&'static str, f64, bool)>);

impl Steps {
    fn run(&mut self, name: &'static str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        eprintln!("\n==> xtask: {name}");
        let started = Instant::now();
        let result = f().with_context(|| format!("{name} failed"));
        self.0
            .push((name, started.elapsed().as_secs_f64(), result.is_ok()));
        result
    }

    fn summary(&self, task: &str, result: Result<()>) -> ExitCode {
        let steps: Vec<String> = self
            .0
            .iter()
            .map(|(name, secs, ok)| {
                format!("{name} {} {secs:.0}s", if *ok { "ok" } else { "FAILED" })
            })
            .collect();
        let total: f64 = self.0.iter().map(|s| s.1).sum();
        match result {
            Ok(()) => {
                eprintln!(
                    "\nxtask {task}: PASSED in {total:.0}s ({})",
                    steps.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("\nerror: {e:#}");
                eprintln!(
                    "\nxtask {task}: FAILED after {total:.0}s ({})",
                    steps.join(", ")
                );
                ExitCode::FAILURE
            }
        }
    }
}

/// The workspace root (the parent of this crate).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_path_buf()
}

/// A `cargo` command in the workspace root, using the cargo that runs us.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd` with inherited stdio, waits for it, and fails unless it exits with 0.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    if !status.success() {
        bail!("`{}` exited with {status}", show(cmd));
    }
    Ok(())
}

/// `cmd` as a shell-like line, for logs.
fn show(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

//! The driver falls back to epoll when the kernel refuses io_uring — refused for real, by a
//! seccomp filter (as a container runtime's default profile does), not by a flag.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Runs the demo with `io_uring_setup` failing with EPERM; returns (status ok, stdout, stderr).
fn demo_without_io_uring(driver: &str) -> (bool, String, String) {
    without_io_uring(&[
        "demo",
        "--bytes",
        "4MiB",
        "--connections",
        "2",
        "--driver",
        driver,
    ])
}

/// Runs `splice-engine ARGS` with `io_uring_setup` failing with EPERM.
fn without_io_uring(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_splice-engine"));
    cmd.args(args);
    // SAFETY: the closure runs in the forked child before exec; it only calls async-signal-safe
    // prctl(2) with pointers to data that lives on its own stack for the duration of the call.
    unsafe {
        cmd.pre_exec(refuse_io_uring);
    }
    let out = cmd.output().expect("run splice-engine");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Installs a seccomp filter: `io_uring_setup` returns EPERM, everything else is allowed.
fn refuse_io_uring() -> std::io::Result<()> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        // A = seccomp_data.arch; anything but x86_64 is allowed through untouched.
        stmt(LD_W_ABS, 4),
        libc::sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 3,
            k: 0xC000_003E, // AUDIT_ARCH_X86_64
        },
        // A = seccomp_data.nr
        stmt(LD_W_ABS, 0),
        libc::sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `filter`, both alive across the call; the kernel copies them.
    if unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &raw const prog,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_refused() {
    let (ok, stdout, stderr) = demo_without_io_uring("auto");
    assert!(ok, "demo failed under seccomp:\n{stdout}\n{stderr}");
    assert!(stdout.contains("driver     : epoll"), "{stdout}");
    assert!(
        stdout.contains("verified   : 2/2"),
        "data must still arrive intact: {stdout}"
    );
}

#[test]
fn forced_uring_fails_clearly_when_io_uring_is_refused() {
    let (ok, stdout, stderr) = demo_without_io_uring("uring");
    assert!(!ok, "must not run without io_uring: {stdout}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("io_uring"), "{stderr}");
    assert!(
        errors[0].contains("Operation not permitted"),
        "the reason is the kernel's: {stderr}"
    );
}

#[test]
fn probe_reports_io_uring_refused_and_why() {
    let (ok, stdout, stderr) = without_io_uring(&["probe", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["io_uring"], false, "{v}");
    let why = v["io_uring_reason"].as_str().expect("a reason");
    assert!(why.contains("Operation not permitted"), "{why}");
    assert!(
        v["ktls"].is_boolean() && v["ktls_ciphers"].is_array(),
        "{v}"
    );
    assert!(!v["kernel"].as_str().expect("kernel").is_empty());
    let cipher = v["record_cipher"].as_str().expect("record_cipher");
    assert!(["ring", "aws-lc-rs"].contains(&cipher), "{v}");

    let (ok, stdout, _) = without_io_uring(&["probe"]);
    assert!(ok);
    assert!(
        stdout.contains("io_uring: no,") && stdout.contains("--driver auto uses epoll"),
        "{stdout}"
    );
}

//! systemd integration, the way systemd drives it: readiness notifications on a
//! `NOTIFY_SOCKET` datagram socket (a path, and an abstract `@` name) through start, SIGHUP and
//! SIGTERM; and socket activation, a listening socket passed as fd 3 with `LISTEN_FDS=1` and
//! `LISTEN_PID` set to the engine's pid.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::support::*;

/// An engine started by hand (for its environment and fds); killed on drop.
struct Spawned {
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Spawned {
    fn start(mut cmd: Command) -> Spawned {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("stderr.log");
        let err = fs::File::create(&log).expect("create the log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn the engine");
        Spawned {
            child,
            _dir: dir,
            log,
        }
    }

    fn log(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid, which we have not waited for yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- engine log\n{}\n----", self.log());
        }
    }
}

fn server_args(cmd: &mut Command, listen: u16, backend: std::net::SocketAddr, pki: &Pki) {
    cmd.arg("server")
        .arg("--listen")
        .arg(localhost(listen).to_string())
        .arg("--connect")
        .arg(backend.to_string())
        .arg("--cert")
        .arg(&pki.server.cert)
        .arg("--key")
        .arg(&pki.server.key)
        .args(["--threads", "2", "--log-level", "info"]);
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// In the child between fork and exec: makes `raw` fd 3, open across exec. Only
/// async-signal-safe calls.
fn pass_as_fd3(raw: i32) -> std::io::Result<()> {
    if raw == 3 {
        // SAFETY: fcntl on an fd number; no memory involved.
        let flags = unsafe { libc::fcntl(3, libc::F_GETFD) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    // SAFETY: dup2 on fd numbers; no memory involved.
    } else if unsafe { libc::dup2(raw, 3) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification from the engine in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// READY=1 once listening; RELOADING=1 with the current MONOTONIC_USEC on SIGHUP, then READY=1;
/// STOPPING=1 on SIGTERM; in this order, on a path socket and on an abstract one.
#[test]
fn notify_socket_sees_ready_reloading_ready_stopping() {
    let pki = Pki::new();
    let backend = echo_backend();
    let dir = tempfile::tempdir().expect("temp dir");
    let abstract_name = format!("splice-e2e-notify-{}", std::process::id());
    for abstract_socket in [false, true] {
        let (sock, env) = if abstract_socket {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name)
                .expect("abstract address");
            let sock = UnixDatagram::bind_addr(&addr).expect("bind the abstract socket");
            (sock, format!("@{abstract_name}"))
        } else {
            let path = dir.path().join("notify.sock");
            let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
            (sock, path.display().to_string())
        };
        sock.set_read_timeout(Some(SOON)).expect("timeout");
        let port = free_port();
        let mut cmd = Command::new(BIN);
        server_args(&mut cmd, port, backend.addr, &pki);
        cmd.env("NOTIFY_SOCKET", &env);
        let before = monotonic_usec();
        let mut engine = Spawned::start(cmd);

        assert_eq!(next(&sock), "READY=1", "{env}");
        // Ready means listening.
        let s = connect(localhost(port));
        let cfg = client_config(&[&pki.ca], None, TLS_ANY);
        let mut tls =
            try_tls_on(s.try_clone().expect("clone"), "localhost", cfg).expect("TLS once ready");
        echo_roundtrip(&mut tls, b"ready");

        engine.signal(libc::SIGHUP);
        let reloading = next(&sock);
        let after = monotonic_usec();
        let mut lines = reloading.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading:?}");
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
        assert!(
            (before..=after).contains(&usec),
            "MONOTONIC_USEC={usec} not between {before} and {after}"
        );
        assert_eq!(next(&sock), "READY=1", "after the reload");

        engine.signal(libc::SIGTERM);
        assert_eq!(next(&sock), "STOPPING=1");
        drop(tls);
        let _ = s.shutdown(std::net::Shutdown::Both);
        let exited = wait_until(SOON, || engine.child.try_wait().ok().flatten().is_some());
        assert!(exited, "the engine did not exit after SIGTERM");
        if !abstract_socket {
            let _ = fs::remove_file(dir.path().join("notify.sock"));
        }
    }
}

/// A listening socket passed as fd 3 (`LISTEN_FDS=1`, `LISTEN_PID` = the engine's pid) is used
/// for the forwarder with that address: the engine could not bind it itself (the test holds
/// it), and connections through it arrive intact. Both drivers: every shard accepts on the
/// one passed socket.
#[test]
fn socket_activation_uses_the_passed_listener() {
    let pki = Pki::new();
    let backend = echo_backend();
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    for driver in DRIVERS {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the passed socket");
        let port = listener.local_addr().expect("address").port();
        let raw = listener.as_raw_fd();
        // `sh` sets LISTEN_PID to its own pid, which `exec` hands to the engine.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .arg(BIN);
        server_args(&mut cmd, port, backend.addr, &pki);
        cmd.args(["--driver", driver])
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "web");
        // SAFETY: the hook only makes async-signal-safe calls (`pass_as_fd3`), on an fd that
        // stays open in the parent for the whole spawn.
        unsafe {
            cmd.pre_exec(move || pass_as_fd3(raw));
        }
        let engine = Spawned::start(cmd);
        let used = wait_until(SOON, || engine.log().contains("passed by systemd"));
        assert!(
            used,
            "{driver}: the passed socket was not used:\n{}",
            engine.log()
        );
        drop(listener);
        for round in 0..4u64 {
            let mut tls = tls_connect(localhost(port), "localhost", cfg.clone());
            let data = random_bytes(256 * 1024, round);
            let mut back = Vec::new();
            for chunk in data.chunks(32 * 1024) {
                tls.write_all(chunk).expect("write");
                let mut got = vec![0u8; chunk.len()];
                tls.read_exact(&mut got).expect("read back");
                back.extend_from_slice(&got);
            }
            assert_eq!(
                sha256_hex(&back),
                sha256_hex(&data),
                "{driver}: round {round}"
            );
            tls_close(&mut tls);
        }
        assert!(
            engine.log().contains("web"),
            "{driver}: the log does not name the passed socket:\n{}",
            engine.log()
        );
    }
}

/// In the child between fork and exec: drops root for `nobody` (65534).
fn become_nobody() -> std::io::Result<()> {
    // SAFETY: setgroups with an empty list; no memory is read.
    if unsafe { libc::setgroups(0, std::ptr::null()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: setgid/setuid take plain ids.
    if unsafe { libc::setgid(65534) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(65534) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A port below 1024 refused to a user without CAP_NET_BIND_SERVICE: the error says how to
/// allow it (the unit file's capability, or setcap).
#[test]
fn low_port_permission_denied_has_a_hint() {
    let start: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1024);
    if start <= 1 {
        eprintln!("ip_unprivileged_port_start is {start}: every port is open to every user here");
        return;
    }
    let mut cmd = Command::new(BIN);
    cmd.args([
        "client",
        "--listen",
        "127.0.0.1:1",
        "--connect",
        "127.0.0.1:9",
        "--threads",
        "1",
    ]);
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        // SAFETY: the hook only makes async-signal-safe calls (`become_nobody`).
        unsafe {
            cmd.pre_exec(become_nobody);
        }
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run the engine");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bound port 1 as nobody:\n{err}");
    assert!(
        err.contains("Permission denied")
            && err.contains("CAP_NET_BIND_SERVICE")
            && err.contains("setcap"),
        "no hint in:\n{err}"
    );
}

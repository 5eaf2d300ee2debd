//! `cargo xtask install-c [--prefix DIR]`: libtunnel (shared and static), `tunnel.h` and
//! `tunnel.pc` under a prefix; `cargo xtask c-test`: installs into `target/c-test/prefix`,
//! compiles the C tests and examples against it (the header as C99 and C++ too) and runs the
//! tests under AddressSanitizer and LeakSanitizer, linked shared (pkg-config) and static,
//! against `openssl s_server` and `openssl s_client` on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::{cargo, run_cmd, show, workspace_root};

/// The drivers every data-plane test runs on.
const DRIVERS: [&str; 2] = ["epoll", "uring"];
/// The longest any one C test program may run.
const LIMIT: Duration = Duration::from_secs(120);

/// `install-c [--prefix DIR]` (default `/usr/local`).
pub fn install_main(args: &[&str]) -> Result<()> {
    let prefix = match args {
        [] => PathBuf::from("/usr/local"),
        ["--prefix", dir] => PathBuf::from(dir),
        _ => bail!("usage: cargo xtask install-c [--prefix DIR]"),
    };
    install(&prefix)?;
    eprintln!(
        "installed libtunnel in {}; build with `cc app.c $(pkg-config --cflags --libs tunnel)` \
         (PKG_CONFIG_PATH={}/lib/pkgconfig if that is not a system prefix; run ldconfig after a \
         system install)",
        prefix.display(),
        prefix.display()
    );
    Ok(())
}

/// Builds libtunnel (release) and installs it under `prefix`.
fn install(prefix: &Path) -> Result<()> {
    run_cmd(cargo().args(["build", "--release", "-p", "splice-tunnel-ffi"]))?;
    let root = workspace_root();
    // Where cargo put it: `CARGO_TARGET_DIR` (relative to the workspace) when set.
    let built = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
        .join("release");
    let version = env!("CARGO_PKG_VERSION");
    let major = version.split('.').next().unwrap_or("0");
    let (lib, include, pc) = (
        prefix.join("lib"),
        prefix.join("include"),
        prefix.join("lib/pkgconfig"),
    );
    for d in [&lib, &include, &pc] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let copy = |from: &Path, to: &Path| -> Result<()> {
        std::fs::copy(from, to)
            .map(drop)
            .with_context(|| format!("copy {} to {}", from.display(), to.display()))
    };
    let real = format!("libtunnel.so.{version}");
    copy(&built.join("libtunnel.so"), &lib.join(&real))?;
    for (link, target) in [
        (format!("libtunnel.so.{major}"), real.clone()),
        ("libtunnel.so".to_string(), format!("libtunnel.so.{major}")),
    ] {
        let path = lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&target, &path)
            .with_context(|| format!("symlink {}", path.display()))?;
    }
    copy(&built.join("libtunnel.a"), &lib.join("libtunnel.a"))?;
    strip_debug(&lib.join("libtunnel.a"));
    copy(&root.join("c-include/tunnel.h"), &include.join("tunnel.h"))?;
    let template = std::fs::read_to_string(root.join("ffi/tunnel.pc.in"))?;
    let text = template
        .replace("@PREFIX@", &prefix.to_string_lossy())
        .replace("@VERSION@", version);
    std::fs::write(pc.join("tunnel.pc"), text)?;
    Ok(())
}

/// Drops the line tables from the installed static library: the release profile keeps them
/// (perf names functions with them) and `strip = "debuginfo"` does not reach into an archive, so
/// it would weigh about 190 MB instead of under 50. Without binutils' `strip` it stays as it is.
fn strip_debug(archive: &Path) {
    match Command::new("strip")
        .arg("--strip-debug")
        .arg(archive)
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!(
            "note: strip --strip-debug {} failed ({s}); installed as built",
            archive.display()
        ),
        Err(e) => eprintln!(
            "note: no strip ({e}); {} installed with its line tables",
            archive.display()
        ),
    }
}

/// `c-test`.
pub fn test_main() -> Result<()> {
    let root = workspace_root();
    let dir = root.join("target/c-test");
    let prefix = dir.join("prefix");
    let _ = std::fs::remove_dir_all(&prefix);
    install(&prefix)?;
    let pkg = |args: &[&str]| -> Result<Vec<String>> {
        let out = Command::new("pkg-config")
            .args(args)
            .arg("tunnel")
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
            .output()
            .context("run pkg-config (apt-get install pkg-config)")?;
        ensure!(out.status.success(), "pkg-config {args:?} tunnel failed");
        Ok(String::from_utf8(out.stdout)?
            .split_whitespace()
            .map(String::from)
            .collect())
    };
    let cflags = pkg(&["--cflags"])?;
    let shared_libs = pkg(&["--libs"])?;
    // The same flags, with the archive instead of the shared library.
    let static_libs: Vec<String> = pkg(&["--static", "--libs"])?
        .into_iter()
        .map(|f| {
            if f == "-ltunnel" {
                "-l:libtunnel.a".into()
            } else {
                f
            }
        })
        .collect();
    let warn = ["-Wall", "-Wextra", "-Werror"];

    // The header alone, as C99 and as C++.
    let probe = dir.join("header_only.c");
    std::fs::write(
        &probe,
        "#include <tunnel.h>\nint main(void) { return tunnel_version() == 0; }\n",
    )?;
    run_cmd(
        Command::new("cc")
            .args(["-std=c99", "-pedantic"])
            .args(warn)
            .args(&cflags)
            .arg("-c")
            .arg(&probe)
            .arg("-o")
            .arg(dir.join("header_c99.o")),
    )?;
    run_cmd(
        Command::new("c++")
            .args(["-x", "c++", "-std=c++11", "-pedantic"])
            .args(warn)
            .args(&cflags)
            .arg("-c")
            .arg(&probe)
            .arg("-o")
            .arg(dir.join("header_cxx.o")),
    )?;

    // The examples build, shared.
    for ex in ["legacy_client", "embedded_server", "destination_agent"] {
        run_cmd(
            Command::new("cc")
                .args(["-std=c99"])
                .args(warn)
                .args(&cflags)
                .arg(root.join(format!("ffi/examples/{ex}.c")))
                .arg("-o")
                .arg(dir.join(ex))
                .args(&shared_libs),
        )?;
    }

    // The benchmark client builds too (`cargo xtask bench` runs it as the path `c-connect`).
    run_cmd(
        Command::new("cc")
            .args(["-std=c99", "-O2"])
            .args(warn)
            .args(&cflags)
            .arg(root.join("ffi/bench/throughput.c"))
            .arg("-o")
            .arg(dir.join("throughput"))
            .args(&shared_libs),
    )?;

    // The tests, shared and static, under ASan + LSan.
    let san = ["-g", "-O1", "-fsanitize=address", "-fno-omit-frame-pointer"];
    let source = root.join("tests/c/tunnel_test.c");
    let mut bins = Vec::new();
    for (kind, libs) in [("shared", &shared_libs), ("static", &static_libs)] {
        let bin = dir.join(format!("tunnel_test_{kind}"));
        run_cmd(
            Command::new("cc")
                .args(["-std=c99"])
                .args(warn)
                .args(san)
                .args(&cflags)
                .arg(&source)
                .arg("-o")
                .arg(&bin)
                .args(libs.iter())
                .arg("-lpthread"),
        )?;
        bins.push(bin);
    }

    let pki = splice_test_pki::Pki::new();
    let ca = pki.ca.path.to_string_lossy().into_owned();
    let cert = pki.server.cert.to_string_lossy().into_owned();
    let key = pki.server.key.to_string_lossy().into_owned();
    let other_cert = pki.other_server.cert.to_string_lossy().into_owned();
    let other_key = pki.other_server.key.to_string_lossy().into_owned();
    let lib = prefix.join("lib");
    let pin = openssl_pin(&pki.server.cert)?;
    for bin in &bins {
        let run = |args: &[&str]| -> Result<()> {
            let mut cmd = test_cmd(bin, &lib);
            cmd.args(args);
            run_limited(&mut cmd)
        };
        run(&["errors", &ca, &cert, &key, &other_cert, &other_key])?;
        for driver in DRIVERS {
            run(&["threads", &ca, &cert, &key, driver])?;
            run(&["agents", &ca, &cert, &key, driver])?;
            run(&["reconnect", &ca, &cert, &key, driver])?;
            run(&["pins", &ca, &cert, &key, &pin, driver])?;
            against_s_client(bin, &lib, &pki, driver)?;
        }
        against_s_server(bin, &lib, &pki)?;
    }
    examples(&dir, &lib, &pki)
}

/// `sha256:<base64>` of `cert`'s public key (DER), computed by `openssl`, a tool we did not
/// write, for the `pins` mode.
fn openssl_pin(cert: &Path) -> Result<String> {
    let script = "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der \
                  | openssl dgst -sha256 -binary | base64";
    let out = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(cert)
        .output()?;
    let b64 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        out.status.success() && b64.len() == 44,
        "openssl could not compute the pin of {}: {}",
        cert.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(format!("sha256:{b64}"))
}

/// The two examples together: the legacy client's line goes over TLS to the embedded server,
/// and its answer comes back.
fn examples(dir: &Path, lib: &Path, pki: &splice_test_pki::Pki) -> Result<()> {
    eprintln!("--- examples: legacy_client to embedded_server");
    let port = free_port()?;
    let mut server = Command::new(dir.join("embedded_server"))
        .arg(format!("127.0.0.1:{port}"))
        .arg(&pki.server.cert)
        .arg(&pki.server.key)
        .env("LD_LIBRARY_PATH", lib)
        .spawn()
        .context("run embedded_server")?;
    let result = (|| -> Result<()> {
        let end = Instant::now() + LIMIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                Instant::now() < end,
                "embedded_server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut client = Command::new(dir.join("legacy_client"))
            .arg(format!("localhost:{port}"))
            .arg(&pki.ca.path)
            .env("LD_LIBRARY_PATH", lib)
            .stdout(Stdio::piped())
            .spawn()
            .context("run legacy_client")?;
        let got = collect(client.stdout.take().expect("piped"));
        wait_limited(&mut client, "legacy_client")?;
        let got = String::from_utf8_lossy(&got.lock().expect("lock")).into_owned();
        ensure!(got == "hello over TLS\n", "legacy_client printed {got:?}");
        eprintln!("ok: legacy_client got the embedded server's answer over TLS");
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// The test binary with the sanitizers' settings and the installed library on its path.
fn test_cmd(bin: &Path, lib: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("LD_LIBRARY_PATH", lib).env(
        "ASAN_OPTIONS",
        "detect_leaks=1:abort_on_error=0:exitcode=86:detect_stack_use_after_return=1:\
         fast_unwind_on_malloc=0:malloc_context_size=30",
    );
    cmd
}

/// Runs `cmd` (inherited stdio) and fails unless it exits with 0 within [`LIMIT`].
fn run_limited(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", show(cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", show(cmd)))?;
    wait_limited(&mut child, &show(cmd))
}

fn wait_limited(child: &mut Child, what: &str) -> Result<()> {
    let end = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(status.success(), "`{what}` exited with {status}");
            return Ok(());
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` still ran after {LIMIT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` pseudo-random bytes from `seed` (xorshift).
fn payload(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// Hex text lines, each opened with `0`, which `openssl s_server` passes on as they are (a
/// line opening with a letter can be one of its commands).
fn text_payload(lines: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in payload(lines * 32, seed).chunks(32) {
        out.push(b'0');
        for b in chunk {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        out.push(b'\n');
    }
    out
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Collects what `r` gives in a thread.
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let sink = Arc::new(Mutex::new(Vec::new()));
    let s = sink.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                return;
            }
            s.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    sink
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `tunnel_connect(NULL, ...)` to `openssl s_server`: 1 MiB from the C program reaches
/// s_server, s_server's text reaches the program; both compared by hash.
fn against_s_server(bin: &Path, lib: &Path, pki: &splice_test_pki::Pki) -> Result<()> {
    eprintln!("--- {}: tunnel_connect to openssl s_server", bin.display());
    let port = free_port()?;
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-quiet",
            "-naccept",
            "2",
        ])
        .arg("-cert")
        .arg(&pki.server.cert)
        .arg("-key")
        .arg(&pki.server.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("run openssl s_server")?;
    let got_by_server = collect(server.stdout.take().expect("piped"));
    let result = (|| -> Result<()> {
        let end = Instant::now() + LIMIT;
        // The probe connection that sees it listening is s_server's first of two.
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                Instant::now() < end,
                "openssl s_server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let up = payload(1 << 20, 7);
        let down = text_payload(1000, 11);
        let mut stdin = server.stdin.take().expect("piped");
        let down_len = down.len();
        let feeder = std::thread::spawn(move || stdin.write_all(&down).map(|()| stdin));
        let mut cmd = test_cmd(bin, lib);
        cmd.args(["connect", &format!("localhost:{port}")])
            .arg(&pki.ca.path)
            .arg(down_len.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        eprintln!("$ {}", show(&cmd));
        let mut child = cmd.spawn()?;
        let mut child_in = child.stdin.take().expect("piped");
        let up_copy = up.clone();
        std::thread::spawn(move || child_in.write_all(&up_copy));
        let got_by_client = collect(child.stdout.take().expect("piped"));
        wait_limited(&mut child, "tunnel_test connect")?;
        let _stdin = feeder.join().expect("feeder")?;
        let want_down = sha256(&text_payload(1000, 11));
        let got_down = sha256(&got_by_client.lock().expect("lock"));
        ensure!(
            got_down == want_down,
            "the program got {got_down}, s_server sent {want_down}"
        );
        // What the program sent may still be on its way to s_server's stdout.
        while got_by_server.lock().expect("lock").len() < up.len() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (want_up, got_up) = (sha256(&up), sha256(&got_by_server.lock().expect("lock")));
        ensure!(
            got_up == want_up,
            "s_server got {got_up}, the program sent {want_up}"
        );
        eprintln!("ok: 1 MiB up and {down_len} bytes down match by SHA-256");
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// An embedded server-mode forwarder, with `openssl s_client` as its client: 256 KiB echoed
/// through the program's own backend, compared by hash.
fn against_s_client(
    bin: &Path,
    lib: &Path,
    pki: &splice_test_pki::Pki,
    driver: &str,
) -> Result<()> {
    eprintln!(
        "--- {}: openssl s_client to an embedded server mode ({driver})",
        bin.display()
    );
    let data = payload(256 << 10, 3);
    let mut cmd = test_cmd(bin, lib);
    cmd.arg("server")
        .arg(&pki.ca.path)
        .arg(&pki.server.cert)
        .arg(&pki.server.key)
        .arg(data.len().to_string())
        .arg(driver)
        .stdout(Stdio::piped());
    eprintln!("$ {}", show(&cmd));
    let mut child = cmd.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let port: u16 = line
        .trim()
        .parse()
        .with_context(|| format!("port line {line:?}"))?;
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .args(["-verify_return_error", "-quiet", "-nocommands", "-CAfile"])
        .arg(&pki.ca.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("run openssl s_client")?;
    let mut stdin = client.stdin.take().expect("piped");
    let sent = data.clone();
    // s_client's stdin stays open: with -quiet it would not end the connection anyway.
    let feeder = std::thread::spawn(move || stdin.write_all(&sent).map(|()| stdin));
    let got = collect(client.stdout.take().expect("piped"));
    let result = wait_limited(&mut client, "openssl s_client")
        .and_then(|()| wait_limited(&mut child, "tunnel_test server"));
    let _ = client.kill();
    let _ = child.kill();
    let _ = child.wait();
    result?;
    drop(feeder.join());
    let (want, have) = (sha256(&data), sha256(&got.lock().expect("lock")));
    ensure!(want == have, "s_client got back {have}, sent {want}");
    eprintln!("ok: 256 KiB echoed through the embedded server match by SHA-256");
    Ok(())
}

//! The command line around the engine: `check`, `config example`, `--help`, shell completions
//! and the man page; `--log-level` and `--log-format` (flag and file) and what the engine's own
//! log lines look like; duplicate listen addresses at start.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use crate::support::*;

/// Runs `splice-engine ARGS` to its end (at most `SOON`) and returns what it printed.
fn cli<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("stdout file"))
        .stderr(fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn splice-engine");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > SOON {
            let _ = child.kill();
            panic!("splice-engine did not exit within {SOON:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: fs::read(&out).expect("read stdout"),
        stderr: fs::read(&err).expect("read stderr"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `check --config PATH`: exit status 1, exactly one `error: ` line, which it returns.
fn check_fails(path: &Path) -> String {
    let out = cli(&[
        OsStr::new("check"),
        OsStr::new("--config"),
        path.as_os_str(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "check accepted it:\n{stderr}");
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 1, "want one error line:\n{stderr}");
    lines[0].to_string()
}

fn client_fwd(name: &str, listen: &str, connect: &str) -> String {
    format!(
        "\n[[forwarder]]\nname = {}\nmode = \"client\"\nlisten = {}\nconnect = {}\n",
        q(name),
        q(listen),
        q(connect)
    )
}

/// A file with a client- and a server-mode forwarder: `check` loads it, says so, lists both,
/// and binds nothing.
#[test]
fn check_accepts_a_good_file_and_prints_a_summary() {
    let pki = Pki::new();
    let (cp, sp) = (free_port(), free_port());
    let path = pki.path().join("good.toml");
    let text_in = format!(
        "threads = 1\n{}ca = {}\n\n[[forwarder]]\nname = \"api\"\nmode = \"server\"\nlisten = {}\n\
         connect = \"127.0.0.1:8080\"\ncert = {}\nkey = {}\n",
        client_fwd("db", &localhost(cp).to_string(), "localhost:5432"),
        q(pki.ca.path.display()),
        q(localhost(sp)),
        q(pki.server.cert.display()),
        q(pki.server.key.display()),
    );
    write_file(&path, text_in.as_bytes());
    let out = cli(&[
        OsStr::new("check"),
        OsStr::new("--config"),
        path.as_os_str(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "check refused a good file:\n{stderr}");
    assert!(
        stdout.contains("good.toml: ok, 2 forwarders"),
        "no summary line:\n{stdout}"
    );
    let db = stdout.lines().find(|l| l.contains(" db ")).unwrap_or("");
    assert!(
        db.contains("client")
            && db.contains(&localhost(cp).to_string())
            && db.contains("localhost:5432")
            && db.contains(":5432)"),
        "the client forwarder's line lacks mode, listen, connect or its resolved address:\n{stdout}"
    );
    let api = stdout.lines().find(|l| l.contains(" api ")).unwrap_or("");
    assert!(
        api.contains("server"),
        "no line for the server forwarder:\n{stdout}"
    );
    let free = std::net::TcpListener::bind(localhost(cp));
    assert!(free.is_ok(), "check left {cp} bound");
}

/// Each kind of mistake is refused with the file, the line and the key in one line.
#[test]
fn check_names_file_line_and_key() {
    let pki = Pki::new();
    let dir = pki.path();
    let port = free_port();
    let l = |ip: &str| format!("{ip}:{port}");
    let ca = format!("ca = {}\n", q(pki.ca.path.display()));
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            // 0.0.0.0 takes the port on every address, 127.0.0.1 included.
            "dup.toml",
            format!(
                "threads = 1\n{}{ca}{}{ca}",
                client_fwd("one", &l("127.0.0.1"), "127.0.0.1:9"),
                client_fwd("two", &l("0.0.0.0"), "127.0.0.1:9"),
            ),
            vec![
                "\"one\"".into(),
                "\"two\"".into(),
                "line 13:".into(),
                "`listen`".into(),
            ],
        ),
        (
            "listen.toml",
            format!(
                "threads = 1\n{}{ca}",
                client_fwd("one", "nonsense", "127.0.0.1:9")
            ),
            vec![
                "nonsense".into(),
                "line 6:".into(),
                "`listen`".into(),
                "\"one\"".into(),
            ],
        ),
        (
            "connect.toml",
            format!(
                "threads = 1\n{}{ca}",
                client_fwd("one", &l("127.0.0.1"), "host-no-port")
            ),
            vec!["host-no-port".into(), "line 7:".into(), "`connect`".into()],
        ),
        (
            "missing-ca.toml",
            format!(
                "threads = 1\n{}ca = \"missing-ca.pem\"\n",
                client_fwd("one", &l("127.0.0.1"), "127.0.0.1:9")
            ),
            vec!["missing-ca.pem".into(), "line 8:".into(), "`ca`".into()],
        ),
        (
            "level.toml",
            format!(
                "log_level = \"verbose\"\n{}{ca}",
                client_fwd("one", &l("127.0.0.1"), "127.0.0.1:9")
            ),
            vec!["line 1:".into(), "`log_level`".into(), "error, warn".into()],
        ),
        (
            "type.toml",
            format!(
                "threads = 1\n{}{ca}max_connections = \"many\"\n",
                client_fwd("one", &l("127.0.0.1"), "127.0.0.1:9")
            ),
            vec![
                "line 9:".into(),
                "`max_connections`".into(),
                "\"one\"".into(),
            ],
        ),
    ];
    for (file, body, needles) in cases {
        let path = dir.join(file);
        write_file(&path, body.as_bytes());
        let line = check_fails(&path);
        for n in needles.iter().chain([&file.to_string()]) {
            assert!(
                line.contains(n.as_str()),
                "{file}: the error does not name {n}: {line}"
            );
        }
    }
}

/// `config example` prints a commented file with every key, and that file passes `check` once
/// the certificates it names exist.
#[test]
fn config_example_passes_check() {
    let pki = Pki::new();
    let out = cli(&["config", "example"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let example = text(&out.stdout);
    for key in [
        "threads",
        "driver",
        "ktls",
        "log_level",
        "log_format",
        "metrics",
        "drain_timeout",
        "busy_poll",
        "name",
        "mode",
        "listen",
        "connect",
        "ca",
        "sni",
        "cert",
        "key",
        "client_ca",
        "alpn",
        "tls_versions",
        "max_connections",
        "connect_timeout",
        "handshake_timeout",
        "resumption",
    ] {
        assert!(
            example
                .lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
            "the example lacks {key}:\n{example}"
        );
    }
    assert!(
        example.lines().filter(|l| l.contains('#')).count() > 20,
        "hardly commented"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        (&pki.ca.path, "ca.pem"),
        (&pki.client.cert, "client.pem"),
        (&pki.client.key, "client-key.pem"),
        (&pki.server.cert, "server.pem"),
        (&pki.server.key, "server-key.pem"),
        (&pki.other_ca.path, "clients-ca.pem"),
    ] {
        fs::copy(from, dir.path().join(to)).expect("copy a PEM file");
    }
    let path = dir.path().join("splice.toml");
    write_file(&path, example.as_bytes());
    let out = cli(&[
        OsStr::new("check"),
        OsStr::new("--config"),
        path.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "the example does not pass check: {}",
        text(&out.stderr)
    );
    let summary = text(&out.stdout);
    assert!(
        summary.contains("legacy-db") && summary.contains("public-api"),
        "{summary}"
    );
}

/// The help of every subcommand shows defaults and examples, and `run` explains reloads.
#[test]
fn help_shows_defaults_examples_and_reload() {
    for sub in [
        "client",
        "server",
        "run",
        "check",
        "demo",
        "probe",
        "stats",
        "completions",
        "man",
    ] {
        let out = cli(&[sub, "--help"]);
        let help = text(&out.stdout);
        assert!(out.status.success(), "{sub} --help failed");
        assert!(
            help.contains("Examples:\n  ") && help.contains(&format!("splice-engine {sub}")),
            "{sub} --help has no example:\n{help}"
        );
    }
    let client = text(&cli(&["client", "--help"]).stdout);
    for d in [
        "[default: 10000]",
        "[default: 5s]",
        "[default: 10s]",
        "[default: 50us;",
        "[default: auto]",
        "[default: text]",
    ] {
        assert!(client.contains(d), "client --help lacks {d}:\n{client}");
    }
    let run = text(&cli(&["run", "--help"]).stdout);
    assert!(
        run.contains("SIGHUP") && run.contains("previous configuration keeps running"),
        "run --help does not explain reloads:\n{run}"
    );
}

/// Completion scripts for the common shells, and a man page, generated from the flags.
#[test]
fn completions_and_man_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let out = cli(&["completions", shell]);
        let script = text(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        for word in ["listen", "log-format", "check", "splice-engine"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    // bash itself loads the script and registers the completion.
    let bash = dir.path().join("splice-engine.bash");
    write_file(&bash, &cli(&["completions", "bash"]).stdout);
    let out = Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" && complete -p splice-engine")
        .arg("bash")
        .arg(&bash)
        .output()
        .expect("run bash");
    assert!(
        out.status.success() && text(&out.stdout).contains("splice-engine"),
        "bash did not load the completions: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(!cli(&["completions", "tcsh"]).status.success());

    let man = text(&cli(&["man"]).stdout);
    assert!(
        man.contains(".TH splice-engine 1"),
        "not a man page:\n{man}"
    );
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS"] {
        assert!(man.contains(section), "the man page lacks {section}");
    }
    let pages = dir.path().join("man1");
    fs::create_dir(&pages).expect("mkdir");
    let out = cli(&[OsStr::new("man"), OsStr::new("--dir"), pages.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for page in [
        "splice-engine.1",
        "splice-engine-run.1",
        "splice-engine-check.1",
    ] {
        let p = fs::read_to_string(pages.join(page)).unwrap_or_default();
        assert!(p.contains(".TH"), "{page} missing or empty");
    }
}

/// `--log-level warning` is `warn`: warnings (a failed connection) are logged, not silenced;
/// an unknown level is refused with the list, on the command line and in the file.
fn log_level_warning_keeps_warnings(driver: &str) {
    let pki = Pki::new();
    let port = free_port();
    let dead = localhost(free_port()); // nothing listens there
    let engine = EngineCmd::new("client")
        .opt("--listen", localhost(port).to_string())
        .opt("--connect", dead.to_string())
        .opt("--ca", &pki.ca.path)
        .opt("--threads", "1")
        .opt("--driver", driver)
        .opt("--log-level", "warning")
        .wait_port(port)
        .label("client --log-level warning")
        .start();
    let (_, end) = send_and_read_to_end(localhost(port), b"hello?");
    assert!(
        end.closed(),
        "the connection to a dead upstream did not end: {end:?}"
    );
    assert!(
        engine.wait_log(SOON, |l| !warn_lines_with_side(l, "upstream").is_empty()),
        "--log-level warning logged no warning for a failed connection:\n{}",
        engine.log()
    );
    assert!(
        !engine.log().contains(" INFO "),
        "info lines at warning level"
    );
}

#[test]
fn log_level_warning_keeps_warnings_uring() {
    log_level_warning_keeps_warnings("uring");
}

#[test]
fn log_level_warning_keeps_warnings_epoll() {
    log_level_warning_keeps_warnings("epoll");
}

#[test]
fn unknown_log_level_is_refused() {
    let pki = Pki::new();
    for level in ["verbose", "wraning", "splice_engine=loud"] {
        let (status, stderr) = EngineCmd::new("client")
            .opt("--listen", localhost(free_port()).to_string())
            .opt("--connect", "127.0.0.1:9")
            .opt("--ca", &pki.ca.path)
            .opt("--log-level", level)
            .run_to_exit();
        assert!(!status.success(), "--log-level {level} accepted");
        assert!(
            stderr.contains(level)
                && stderr.contains("error, warn (or warning), info, debug, trace"),
            "--log-level {level}: the error does not list the levels:\n{stderr}"
        );
    }
    let path = pki.path().join("level.toml");
    write_file(
        &path,
        format!(
            "log_level = \"verbose\"\n{}ca = {}\n",
            client_fwd("one", &localhost(free_port()).to_string(), "127.0.0.1:9"),
            q(pki.ca.path.display())
        )
        .as_bytes(),
    );
    let (status, stderr) = EngineCmd::new("run").opt("--config", &path).run_to_exit();
    assert!(!status.success(), "log_level = \"verbose\" accepted");
    let line = error_lines(&stderr).join("\n");
    assert!(
        line.contains("level.toml: line 1:")
            && line.contains("`log_level`")
            && line.contains("error, warn"),
        "{stderr}"
    );
}

/// The engine's own lines carry values for people: `driver=uring`, `mode=client`, no
/// `Some(..)` or Debug names; in JSON (set in the file), numbers and booleans are JSON
/// numbers and booleans.
fn log_values_are_for_people(driver: &str) {
    let pki = Pki::new();
    let port = free_port();
    let text_engine = EngineCmd::new("client")
        .opt("--listen", localhost(port).to_string())
        .opt("--connect", "127.0.0.1:9")
        .opt("--ca", &pki.ca.path)
        .common(driver)
        .wait_port(port)
        .label("client (text log)")
        .start();
    assert!(
        text_engine.wait_log(SOON, |l| l.contains(" ready ")),
        "{}",
        text_engine.log()
    );
    let log = text_engine.log();
    assert!(log.contains(&format!("driver={driver} ")), "{log}");
    assert!(log.contains("mode=client "), "{log}");
    for debugish in ["Some(", "Uring", "Epoll", "mode=\"", "driver=\""] {
        assert!(!log.contains(debugish), "the log shows {debugish}:\n{log}");
    }
    drop(text_engine);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("json.toml");
    let port = free_port();
    write_file(
        &path,
        format!(
            "threads = 1\nlog_format = \"json\"\nlog_level = \"info\"\ndriver = {}\n{}ca = {}\n",
            q(driver),
            client_fwd("j", &localhost(port).to_string(), "127.0.0.1:9"),
            q(pki.ca.path.display())
        )
        .as_bytes(),
    );
    let mut engine = EngineCmd::new("run")
        .opt("--config", &path)
        .wait_port(port)
        .label("run (json log)")
        .start();
    engine.signal(libc::SIGTERM);
    assert!(engine.wait_exit(SOON).is_some(), "did not exit on SIGTERM");
    let log = engine.stderr();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let fields = |message: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["message"] == message)
            .map(|v| v["fields"].clone())
            .unwrap_or_else(|| panic!("no {message:?} line in\n{log}"))
    };
    let ready = fields("ready");
    assert_eq!(ready["driver"], driver, "{ready}");
    assert!(ready["ktls"].is_boolean(), "{ready}");
    let listening = fields("listening");
    assert_eq!(listening["mode"], "client", "{listening}");
    assert_eq!(listening["forwarder"], "j", "{listening}");
    let draining = fields("draining");
    assert!(
        draining["open"].is_u64() && draining["drain_ms"].is_u64(),
        "{draining}"
    );
}

#[test]
fn log_values_are_for_people_uring() {
    log_values_are_for_people("uring");
}

#[test]
fn log_values_are_for_people_epoll() {
    log_values_are_for_people("epoll");
}

/// Two forwarders on one address are refused at start, naming both and the file, instead of
/// a bare "Address already in use" (or, with SO_REUSEPORT, a split of connections). The same
/// port on IPv4 and IPv6 is fine (the unit tests cover `[::]` beside `0.0.0.0`, which the
/// engine's IPV6_V6ONLY listeners allow; this test stays on loopback).
#[test]
fn duplicate_listen_addresses_refused_at_start() {
    let pki = Pki::new();
    let ca = format!("ca = {}\n", q(pki.ca.path.display()));
    let port = free_port();
    for (a, b) in [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", "0.0.0.0"),
        ("0.0.0.0", "127.0.0.1"),
    ] {
        let path = pki.path().join("dup-start.toml");
        write_file(
            &path,
            format!(
                "threads = 1\n{}{ca}{}{ca}",
                client_fwd("alpha", &format!("{a}:{port}"), "127.0.0.1:9"),
                client_fwd("beta", &format!("{b}:{port}"), "127.0.0.1:9"),
            )
            .as_bytes(),
        );
        let (status, stderr) = EngineCmd::new("run").opt("--config", &path).run_to_exit();
        assert!(!status.success(), "{a} and {b} both accepted");
        let line = error_lines(&stderr).join("\n");
        for n in ["\"alpha\"", "\"beta\"", "dup-start.toml", "line 13:"] {
            assert!(
                line.contains(n),
                "{a}/{b}: the error does not name {n}:\n{stderr}"
            );
        }
    }
    let path = pki.path().join("v4-v6.toml");
    write_file(
        &path,
        format!(
            "threads = 1\n{}{ca}{}{ca}",
            client_fwd("v4", &format!("127.0.0.1:{port}"), "127.0.0.1:9"),
            client_fwd("v6", &format!("[::1]:{port}"), "127.0.0.1:9"),
        )
        .as_bytes(),
    );
    let engine = EngineCmd::new("run")
        .opt("--config", &path)
        .wait_port(port)
        .label("run (127.0.0.1 and [::1])")
        .start();
    assert!(
        engine.wait_log(SOON, |l| l.matches("listening").count() >= 2),
        "both forwarders should listen:\n{}",
        engine.log()
    );
}

/// A peer's protocol error is logged once, by us, in words: rustls's own `log` line for it
/// (`Received a ClientHello handshake message while expecting [ServerHello, ...]`, in Debug
/// form) stays out of the log. The upstream here echoes, so our ClientHello comes back.
fn rustls_own_lines_stay_out(driver: &str) {
    let pki = Pki::new();
    let echo = echo_backend();
    let port = free_port();
    let engine = EngineCmd::client(port, echo.addr, &pki.ca, driver)
        .wait_port(port)
        .label("client in front of an echo upstream")
        .start();
    let (_, end) = send_and_read_to_end(localhost(port), b"hello?");
    assert!(end.closed(), "the connection did not end: {end:?}");
    assert!(
        engine.wait_log(SOON, |l| !warn_lines_with_side(l, "tls").is_empty()),
        "no WARN line for the failed handshake:\n{}",
        engine.log()
    );
    let log = engine.log();
    assert!(
        !log.contains("while expecting") && !log.contains("HandshakeType"),
        "rustls's own line reached the log:\n{log}"
    );
}

#[test]
fn rustls_own_lines_stay_out_uring() {
    rustls_own_lines_stay_out("uring");
}

#[test]
fn rustls_own_lines_stay_out_epoll() {
    rustls_own_lines_stay_out("epoll");
}

/// `RUST_LOG` (used when no level is given) is checked like `--log-level`: a typo is refused
/// instead of silencing every line.
#[test]
fn bad_rust_log_is_refused() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let err = dir.path().join("err");
    let mut child = Command::new(BIN)
        .args(["client", "--listen"])
        .arg(localhost(free_port()).to_string())
        .args(["--connect", "127.0.0.1:9", "--ca"])
        .arg(&pki.ca.path)
        .env("RUST_LOG", "verbose")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn splice-engine");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > SOON {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let out_stderr = fs::read(&err).expect("read stderr");
    let stderr = text(&out_stderr);
    assert!(
        status.is_some_and(|s| !s.success()),
        "RUST_LOG=verbose accepted (still running or exit 0):\n{stderr}"
    );
    assert!(
        stderr.contains("RUST_LOG") && stderr.contains("verbose") && stderr.contains("error, warn"),
        "{stderr}"
    );
}

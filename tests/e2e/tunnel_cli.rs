//! The tunnel's command line without its data plane: `splice-engine relay` serving the tunnel
//! API (with its token and its state file across a restart), `splice-engine tunnel
//! open|list|describe|rotate|close` against it (AWS field names in `--json`), and the errors
//! and help of `relay`, `source` and `destination`.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const API_TOKEN: &str = "the-relay-api-token-of-this-test";

/// Runs `splice-engine ARGS` to its end (at most `SOON`), without the environment variables
/// the tunnel commands read.
fn cli<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("AWSIOT_TUNNEL_ACCESS_TOKEN")
        .env_remove("SPLICE_TUNNEL_API")
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
        std::thread::sleep(Duration::from_millis(10));
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

/// `splice-engine tunnel ARGS --api URL --api-token-file FILE [extra]`: exit 0 and its JSON.
fn tunnel_json(relay: &Relay, args: &[&str]) -> Value {
    let out = relay.tunnel(args, true);
    assert!(
        out.status.success(),
        "tunnel {args:?} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

/// A running `splice-engine relay`.
struct Relay {
    proc: Proc,
    api: SocketAddr,
    token_file: std::path::PathBuf,
}

impl Relay {
    fn start(pki: &Pki, dir: &Path, state: &str, driver: &str) -> Relay {
        Self::start_on(pki, dir, state, driver, free_port())
    }

    /// [`Relay::start`] with agents on `port`.
    fn start_on(pki: &Pki, dir: &Path, state: &str, driver: &str, port: u16) -> Relay {
        Self::start_with(pki, dir, state, driver, port, &[])
    }

    /// [`Relay::start_on`] with more arguments.
    fn start_with(
        pki: &Pki,
        dir: &Path,
        state: &str,
        driver: &str,
        port: u16,
        extra: &[&str],
    ) -> Relay {
        let token_file = dir.join("api.token");
        fs::write(&token_file, format!("{API_TOKEN}\n")).expect("write the API token");
        let api_port = free_port();
        let proc = EngineCmd::new("relay")
            .opt("--listen", localhost(port).to_string())
            .opt("--cert", &pki.server.cert)
            .opt("--key", &pki.server.key)
            .opt("--api", localhost(api_port).to_string())
            .opt("--api-token-file", &token_file)
            .opt("--state", state);
        let proc = extra
            .iter()
            .fold(proc, |cmd, a| cmd.arg(a))
            .common(driver)
            .wait_port(api_port)
            .label(format!("relay ({driver})"))
            .start();
        Relay {
            proc,
            api: localhost(api_port),
            token_file,
        }
    }

    /// `splice-engine tunnel ARGS` against this relay, with its API token, `--json` if asked.
    fn tunnel(&self, args: &[&str], json: bool) -> Output {
        let url = format!("http://{}", self.api);
        let mut all: Vec<&OsStr> = vec![OsStr::new("tunnel")];
        all.extend(args.iter().map(OsStr::new));
        all.extend([
            OsStr::new("--api"),
            OsStr::new(&url),
            OsStr::new("--api-token-file"),
            self.token_file.as_os_str(),
        ]);
        if json {
            all.push(OsStr::new("--json"));
        }
        cli(&all)
    }

    fn stop(mut self) {
        self.proc.signal(libc::SIGTERM);
        let status = self
            .proc
            .wait_exit(SOON)
            .expect("the relay exits on SIGTERM");
        assert!(status.success(), "{status}:\n{}", self.proc.stderr());
    }
}

/// A raw HTTP/1.1 request; the status.
fn raw_status(addr: SocketAddr, request: &str) -> u16 {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[test]
fn relay_serves_the_tunnel_api_to_the_tunnel_commands() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = Relay::start(&pki, dir.path(), ":memory:", driver);

        // open: the id and both tokens, AWS's names.
        let opened = tunnel_json(
            &relay,
            &[
                "open",
                "--service",
                "SSH",
                "--service",
                "HTTP",
                "--thing",
                "pump-7",
                "--lifetime",
                "30m",
                "--description",
                "pump 7",
            ],
        );
        let id = opened["tunnelId"].as_str().expect("tunnelId").to_string();
        let source = opened["sourceAccessToken"].as_str().expect("source token");
        let destination = opened["destinationAccessToken"]
            .as_str()
            .expect("destination token");
        assert_eq!(source.len(), 43, "256 bits in base64url: {source}");
        assert_ne!(source, destination);

        // list and describe: never a token.
        let list = tunnel_json(&relay, &["list"]);
        let summaries = list["tunnelSummaries"].as_array().expect("tunnelSummaries");
        assert_eq!(summaries.len(), 1, "{list}");
        assert_eq!(summaries[0]["tunnelId"], id.as_str());
        assert_eq!(summaries[0]["status"], "OPEN");
        assert!(summaries[0]["createdAt"].is_number(), "{list}");
        assert!(summaries[0]["lastUpdatedAt"].is_number(), "{list}");
        let thing = tunnel_json(&relay, &["list", "--thing", "pump-7"]);
        assert_eq!(thing["tunnelSummaries"][0]["tunnelId"], id.as_str());
        let other = tunnel_json(&relay, &["list", "--thing", "other"]);
        assert_eq!(other["tunnelSummaries"], serde_json::json!([]));

        let described = tunnel_json(&relay, &["describe", &id]);
        let t = &described["tunnel"];
        assert_eq!(t["tunnelId"], id.as_str());
        assert_eq!(t["status"], "OPEN");
        assert_eq!(t["description"], "pump 7");
        assert_eq!(t["destinationConfig"]["thingName"], "pump-7");
        assert_eq!(
            t["destinationConfig"]["services"],
            serde_json::json!(["SSH", "HTTP"])
        );
        assert_eq!(t["timeoutConfig"]["maxLifetimeTimeoutMinutes"], 30);
        for side in ["sourceConnectionState", "destinationConnectionState"] {
            assert_eq!(t[side]["status"], "DISCONNECTED", "{described}");
            assert!(t[side]["lastUpdatedAt"].is_number(), "{described}");
        }
        assert!(t["createdAt"].is_number() && t["lastUpdatedAt"].is_number());
        for shown in [list.to_string(), described.to_string()] {
            assert!(!shown.contains(source) && !shown.contains(destination));
        }
        // The text form names the same things.
        let human = relay.tunnel(&["describe", &id], false);
        let human = text(&human.stdout);
        assert!(
            human.contains(&id) && human.contains("SSH, HTTP") && human.contains("pump-7"),
            "{human}"
        );

        // rotate: a new source token only; into a private file when asked.
        let file = dir.path().join("source.token");
        let rotated = tunnel_json(
            &relay,
            &[
                "rotate",
                &id,
                "--side",
                "source",
                "--source-token-file",
                file.to_str().expect("UTF-8 path"),
            ],
        );
        assert_eq!(rotated["tunnelId"], id.as_str());
        assert!(rotated.get("sourceAccessToken").is_none(), "{rotated}");
        assert!(rotated.get("destinationAccessToken").is_none(), "{rotated}");
        let new_source = fs::read_to_string(&file).expect("the token file");
        let new_source = new_source.trim();
        assert_eq!(new_source.len(), 43);
        assert_ne!(new_source, source);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let both = tunnel_json(&relay, &["rotate", &id, "--side", "both"]);
        assert!(
            both["sourceAccessToken"].is_string() && both["destinationAccessToken"].is_string()
        );

        // close, then it shows closed; an unknown id is refused with the API's message.
        tunnel_json(&relay, &["close", &id]);
        let t = tunnel_json(&relay, &["describe", &id]);
        assert_eq!(t["tunnel"]["status"], "CLOSED");
        let out = relay.tunnel(&["describe", "no-such-tunnel"], false);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(
            err.contains("404") && err.contains("no-such-tunnel"),
            "{err}"
        );
        let out = relay.tunnel(&["rotate", &id, "--side", "both"], false);
        assert_eq!(out.status.code(), Some(1), "a closed tunnel cannot rotate");
        tunnel_json(&relay, &["close", &id, "--delete"]);
        let list = tunnel_json(&relay, &["list"]);
        assert_eq!(list["tunnelSummaries"], serde_json::json!([]));

        // Without the API token: 401, from the command and on the wire.
        let out = cli(&["tunnel", "list", "--api", &format!("http://{}", relay.api)]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
        let get = "GET /tunnels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
        assert_eq!(raw_status(relay.api, &format!("{get}\r\n")), 401);
        assert_eq!(
            raw_status(
                relay.api,
                &format!("{get}Authorization: Bearer wrong\r\n\r\n")
            ),
            401
        );
        assert_eq!(
            raw_status(
                relay.api,
                &format!("{get}Authorization: Bearer {API_TOKEN}\r\n\r\n")
            ),
            200
        );
        // The API token is never logged.
        assert!(!relay.proc.stderr().contains(API_TOKEN));
        relay.stop();
    }
}

/// `tunnel list --max-results` pages newest first; `--next-token` takes the next page, and the
/// table says how to ask for it.
#[test]
fn tunnel_list_pages() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&pki, dir.path(), ":memory:", "epoll");
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let opened = tunnel_json(&relay, &["open", "--service", "SSH"]);
            opened["tunnelId"].as_str().expect("id").to_string()
        })
        .collect();
    let ids_of = |v: &Value| -> Vec<String> {
        v["tunnelSummaries"]
            .as_array()
            .expect("tunnelSummaries")
            .iter()
            .map(|t| t["tunnelId"].as_str().expect("tunnelId").to_string())
            .collect()
    };
    let whole = tunnel_json(&relay, &["list"]);
    let mut newest_first = ids_of(&whole);
    assert!(whole.get("nextToken").is_none(), "{whole}");
    let mut sorted = newest_first.clone();
    sorted.sort();
    let mut opened = ids.clone();
    opened.sort();
    assert_eq!(sorted, opened, "{whole}");

    let first = tunnel_json(&relay, &["list", "--max-results", "2"]);
    let token = first["nextToken"].as_str().expect("nextToken").to_string();
    let second = tunnel_json(
        &relay,
        &["list", "--max-results", "2", "--next-token", &token],
    );
    assert!(second.get("nextToken").is_none(), "{second}");
    let mut paged = ids_of(&first);
    paged.extend(ids_of(&second));
    assert_eq!(paged, newest_first);

    let table = relay.tunnel(&["list", "--max-results", "1"], false);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    assert!(table.contains(&newest_first.remove(0)), "{table}");
    assert!(table.contains("more: --next-token "), "{table}");

    let refused = relay.tunnel(&["list", "--max-results", "101"], false);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("101"),
        "{}",
        text(&refused.stderr)
    );
    relay.stop();
}

#[test]
fn the_relay_state_file_survives_a_restart() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state/relay.sqlite");
    let state = state.to_str().expect("UTF-8 path");
    let relay = Relay::start(&pki, dir.path(), state, "epoll");
    let opened = tunnel_json(&relay, &["open", "--service", "SSH"]);
    let id = opened["tunnelId"].as_str().expect("id").to_string();
    let token = opened["sourceAccessToken"]
        .as_str()
        .expect("token")
        .to_string();
    relay.stop();
    let on_disk = fs::read(state).expect("the state file");
    assert!(!String::from_utf8_lossy(&on_disk).contains(&token));

    let relay = Relay::start(&pki, dir.path(), state, "uring");
    let list = tunnel_json(&relay, &["list"]);
    assert_eq!(
        list["tunnelSummaries"][0]["tunnelId"],
        id.as_str(),
        "{list}"
    );
    assert_eq!(list["tunnelSummaries"][0]["status"], "OPEN");
    let t = tunnel_json(&relay, &["describe", &id]);
    assert_eq!(
        t["tunnel"]["destinationConfig"]["services"],
        serde_json::json!(["SSH"])
    );
    relay.stop();

    // `:memory:` keeps nothing.
    let relay = Relay::start(&pki, dir.path(), ":memory:", "epoll");
    let list = tunnel_json(&relay, &["list"]);
    assert_eq!(list["tunnelSummaries"], serde_json::json!([]));
    relay.stop();
}

/// `--keep-closed`: a closed tunnel is listed and described as CLOSED, then forgotten, in
/// memory and in the state file (not back after a restart); the open one stays.
#[test]
fn closed_tunnels_are_forgotten_after_keep_closed() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("relay.sqlite");
    let state = state.to_str().expect("UTF-8 path");
    let keep = ["--keep-closed", "1s"];
    let relay = Relay::start_with(&pki, dir.path(), state, "uring", free_port(), &keep);
    let id = |v: &Value| v["tunnelId"].as_str().expect("id").to_string();
    let closed = id(&tunnel_json(&relay, &["open", "--service", "SSH"]));
    let open = id(&tunnel_json(&relay, &["open", "--service", "SSH"]));
    assert!(relay.tunnel(&["close", &closed], false).status.success());
    let t = tunnel_json(&relay, &["describe", &closed]);
    assert_eq!(t["tunnel"]["status"], "CLOSED", "{t}");
    assert!(
        wait_until(SOON, || !relay
            .tunnel(&["describe", &closed], true)
            .status
            .success()),
        "still described after {SOON:?}"
    );
    let out = relay.tunnel(&["describe", &closed], false);
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    assert!(
        relay
            .proc
            .wait_log(SOON, |l| l.contains("closed tunnels forgotten"))
    );
    let ids = |list: &Value| -> Vec<String> {
        let all = list["tunnelSummaries"].as_array().expect("summaries");
        all.iter().map(id).collect()
    };
    assert_eq!(
        ids(&tunnel_json(&relay, &["list"])),
        std::slice::from_ref(&open)
    );
    relay.stop();

    let relay = Relay::start(&pki, dir.path(), state, "epoll");
    assert_eq!(ids(&tunnel_json(&relay, &["list"])), [open]);
    relay.stop();
}

/// Exit status 1 and one `error:` line, which it returns.
fn fails<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = cli(args);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} was accepted:\n{stderr}"
    );
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 1, "want one error line:\n{stderr}");
    lines[0].to_string()
}

#[test]
fn bad_tunnel_flags_and_tables_are_named() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = pki.server.cert.to_str().expect("UTF-8");
    let key = pki.server.key.to_str().expect("UTF-8");
    let relay = |extra: &[&str]| -> Vec<String> {
        [
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert,
            "--key",
            key,
            "--state",
            ":memory:",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let e = fails(&relay(&["--api", "localhost:1"]));
    assert!(e.contains("`api`"), "{e}");
    let missing = dir.path().join("missing.token");
    let e = fails(&relay(&[
        "--api",
        "127.0.0.1:0",
        "--api-token-file",
        missing.to_str().expect("UTF-8"),
    ]));
    assert!(e.contains("missing.token"), "{e}");
    let e = fails(&relay(&["--api", "127.0.0.1:0", "--max-lifetime", "500ms"]));
    assert!(e.contains("`max_lifetime`"), "{e}");

    let secret = "a-secret-client-token";
    let e = fails(&[
        "source",
        "--relay",
        "relay.example:443",
        "--token-file",
        "/nonexistent",
        "--client-token",
        secret,
        "--listen",
        "SSH=127.0.0.1:0",
    ]);
    assert!(e.contains("`client_token`"), "{e}");
    assert!(!e.contains(secret), "the token leaked: {e}");
    let e = fails(&[
        "destination",
        "--relay",
        "relay.example:443",
        "--token-file",
        "/t",
        "--connect",
        "SSH=localhost:22",
        "--connect",
        "localhost:80",
    ]);
    assert!(e.contains("`connect`") && e.contains("mixes"), "{e}");
    let e = fails(&["source", "--relay", "r:1", "--listen", "127.0.0.1:0"]);
    assert!(e.contains("AWSIOT_TUNNEL_ACCESS_TOKEN"), "{e}");

    // Usage errors: exit 2.
    for args in [
        &[
            "source",
            "--relay",
            "r:1",
            "--token",
            "a",
            "--token-file",
            "b",
            "--listen",
            "x:1",
        ][..],
        &["tunnel", "open", "--lifetime", "1500ms"],
        &["tunnel", "open", "--lifetime", "90"],
        &["tunnel", "rotate", "some-id"],
        &["tunnel", "rotate", "some-id", "--side", "left"],
        &[
            "source",
            "--relay",
            "r:1",
            "--token-file",
            "f",
            "--listen",
            "x:1",
            "--protocol",
            "v4",
        ],
    ] {
        let out = cli(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = cli(&["tunnel", "open", "--lifetime", "90"]);
    let e = text(&out.stderr);
    assert!(e.contains("90m") && !e.contains("90ms"), "{e}");
    let e = fails(&["tunnel", "list", "--api", "https://127.0.0.1:1"]);
    assert!(e.contains("https is not supported"), "{e}");

    // A file's tunnel tables: errors name the file, the line and the key.
    let file = dir.path().join("tunnel.toml");
    fs::write(
        &file,
        "[[source]]\nrelay = \"relay.example:443\"\ntoken_file = \"t\"\n\
         listen = [\"SSH=127.0.0.1:1\", \"SSH=127.0.0.1:2\"]\n",
    )
    .expect("write");
    let e = fails(&["run", "--config", file.to_str().expect("UTF-8")]);
    assert!(
        e.contains("tunnel.toml") && e.contains("line 4") && e.contains("`listen`"),
        "{e}"
    );
}

#[test]
fn token_flags_warn_that_command_lines_are_visible() {
    for cmd in [&["source"][..], &["destination"], &["tunnel", "rotate"]] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = cli(&args);
        assert!(out.status.success());
        let help = text(&out.stdout).replace('\n', " ");
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            help.contains("visible to every user of the machine")
                && help.contains("--token-file")
                && help.contains("AWSIOT_TUNNEL_ACCESS_TOKEN"),
            "{cmd:?} --help:\n{help}"
        );
    }
}

/// `check` loads the tunnel tables as `run` does: it refuses what `run` refuses, and each
/// error names the file, the line, the table and the key.
#[test]
fn check_summarises_the_tunnel_tables_and_reads_their_files() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("source.token"), "a-token\n").expect("write");
    let file = dir.path().join("tunnel.toml");
    // Lines: the relay's `key` 5, `state` 7; the source's `relay` 9, `extra` from 10.
    let write = |relay_key: &Path, state: &str, extra: &str| {
        fs::write(
            &file,
            format!(
                "[[relay]]\nname = \"edge\"\nlisten = \"127.0.0.1:8443\"\ncert = {:?}\n\
                 key = {:?}\napi = \"127.0.0.1:8480\"\nstate = {state:?}\n\
                 [[source]]\nrelay = \"localhost:8443\"\n{extra}\
                 token_file = \"source.token\"\nlisten = [\"SSH=127.0.0.1:2222\"]\n",
                pki.server.cert, relay_key
            ),
        )
        .expect("write");
    };
    let ca = format!("ca = {:?}\n", pki.ca.path);
    let check = || {
        fails(&[
            OsStr::new("check"),
            OsStr::new("--config"),
            file.as_os_str(),
        ])
    };
    write(&pki.server.key, ":memory:", &ca);
    let out = cli(&[
        OsStr::new("check"),
        OsStr::new("--config"),
        file.as_os_str(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("edge  relay  agents on 127.0.0.1:8443, API at http://127.0.0.1:8480"),
        "{stdout}"
    );
    assert!(
        stdout.contains("SSH=127.0.0.1:2222 -> localhost:8443"),
        "{stdout}"
    );

    // The token file is relative to the configuration file; a missing key file is named,
    // with the file, the line and the key.
    let missing = dir.path().join("missing-key.pem");
    write(&missing, ":memory:", &ca);
    let e = check();
    assert!(
        e.contains("missing-key.pem") && e.contains("tunnel.toml: line 5: relay \"edge\": `key`"),
        "{e}"
    );
    fs::write(dir.path().join("source.token"), "\n").expect("write");
    write(&pki.server.key, ":memory:", &ca);
    let e = check();
    assert!(
        e.contains("source.token") && e.contains("empty") && e.contains("`token_file`"),
        "{e}"
    );
    fs::write(dir.path().join("source.token"), "a-token\n").expect("write");

    // What `run` refuses: a state file that is not a registry, a missing CA, `ca` and
    // `ca_pem` both, PEM text without a certificate.
    let not_db = dir.path().join("not-a-db.sqlite");
    fs::write(&not_db, vec![b'x'; 4096]).expect("write");
    write(&pki.server.key, not_db.to_str().expect("UTF-8"), &ca);
    let e = check();
    assert!(e.contains("line 7") && e.contains("`state`"), "{e}");
    let cases = [
        ("ca = \"no-such-ca.pem\"\n".to_string(), "line 10", "`ca`"),
        (
            format!("{ca}ca_pem = \"x\"\n"),
            "line 11",
            "`ca` and `ca_pem`",
        ),
        ("ca_pem = \"not PEM\"\n".to_string(), "line 10", "`ca_pem`"),
    ];
    for (extra, line, key) in cases {
        write(&pki.server.key, ":memory:", &extra);
        let e = check();
        assert!(
            e.contains("tunnel.toml") && e.contains(line) && e.contains(key),
            "{extra}: {e}"
        );
    }
    fs::write(
        &file,
        "[[source]]\nrelay = \"no-such-host.invalid:8443\"\ntoken_file = \"source.token\"\n\
         listen = [\"SSH=127.0.0.1:2222\"]\n",
    )
    .expect("write");
    // A relay whose name does not resolve now is no error (`run` starts the agent, which keeps
    // trying: a device is often up before its DNS), but a warning with the line and the key.
    let out = cli(&[
        OsStr::new("check"),
        OsStr::new("--config"),
        file.as_os_str(),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: ")
            && stderr.contains("tunnel.toml: line 2")
            && stderr.contains("`relay`")
            && stderr.contains("does not resolve now"),
        "{stderr}"
    );
}

#[test]
fn run_config_starts_a_relay_with_paths_relative_to_the_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conf");
    fs::create_dir_all(&conf).expect("mkdir");
    fs::write(conf.join("api.token"), format!("{API_TOKEN}\n")).expect("write");
    let api_port = free_port();
    let file = conf.join("relay.toml");
    fs::write(
        &file,
        format!(
            "[[relay]]\nname = \"edge\"\nlisten = \"127.0.0.1:{}\"\ncert = {:?}\nkey = {:?}\n\
             api = \"127.0.0.1:{api_port}\"\napi_token_file = \"api.token\"\n\
             state = \"state/relay.sqlite\"\n",
            free_port(),
            pki.server.cert,
            pki.server.key
        ),
    )
    .expect("write");
    // Started elsewhere: the relative paths are the file's, not the working directory's.
    let proc = EngineCmd::new("run")
        .opt("--config", &file)
        .common("epoll")
        .cwd(dir.path())
        .wait_port(api_port)
        .start();
    let relay = Relay {
        proc,
        api: localhost(api_port),
        token_file: conf.join("api.token"),
    };
    let opened = tunnel_json(&relay, &["open"]);
    assert!(opened["tunnelId"].is_string(), "{opened}");
    assert!(conf.join("state/relay.sqlite").is_file());
    assert!(!dir.path().join("state").exists());
    relay.stop();
}

/// `splice-engine demo tunnel`, with no setup: a relay, a tunnel opened through its API, both
/// agents, and bytes through them both ways checked by hash; the report says what ran where
/// and the commands that do it by hand (tokens in files).
#[test]
fn demo_tunnel_runs_the_tunnel_on_loopback() {
    for driver in DRIVERS {
        let out = cli(&[
            "demo",
            "tunnel",
            "--bytes",
            "6MiB",
            "--connections",
            "3",
            "--threads",
            "2",
            "--driver",
            driver,
        ]);
        let report = text(&out.stdout);
        assert!(
            out.status.success(),
            "demo tunnel ({driver}) failed:\n{report}\n{}",
            text(&out.stderr)
        );
        for want in [
            "verified    : 3/3 connections returned every byte in order",
            &format!("driver      : {driver}"),
            "moved       : 6 MiB up and 6 MiB back on 3 connections",
            "splice-engine relay --listen 127.0.0.1:",
            "splice-engine tunnel open --api http://127.0.0.1:",
            "--token-file dest.token --connect echo=127.0.0.1:",
            "--token-file source.token --listen echo=127.0.0.1:",
        ] {
            assert!(
                report.contains(want),
                "({driver}) lacks {want:?}:\n{report}"
            );
        }
        assert!(
            !text(&out.stderr).contains("gave up"),
            "({driver}) an agent gave up:\n{}",
            text(&out.stderr)
        );
    }
}

/// A lifetime shorter than AWS's minimum minute (`tunnel open --lifetime 8s`): at expiry the
/// relay sends both agents a close frame ("tunnel expired"), the `source` and `destination`
/// commands exit non-zero with their "gave up" line, and `tunnel describe` says CLOSED.
#[test]
fn a_tunnel_expires_and_both_agent_commands_give_up() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay_port = free_port();
        let relay = Relay::start_on(&pki, dir.path(), ":memory:", driver, relay_port);
        let (src_file, dst_file) = (dir.path().join("src.token"), dir.path().join("dst.token"));
        let t = tunnel_json(
            &relay,
            &[
                "open",
                "--service",
                "ssh",
                "--lifetime",
                "8s",
                "--source-token-file",
                src_file.to_str().expect("UTF-8"),
                "--destination-token-file",
                dst_file.to_str().expect("UTF-8"),
            ],
        );
        let id = t["tunnelId"].as_str().expect("tunnelId").to_string();
        let shown = tunnel_json(&relay, &["describe", &id]);
        assert_eq!(
            shown["tunnel"]["timeoutConfig"]["maxLifetimeTimeoutSeconds"], 8,
            "{shown}"
        );
        let agent = |kind: &str, service: String, file: &Path| {
            EngineCmd::agent(kind, &format!("localhost:{relay_port}"), file, &service)
                .opt("--ca", &pki.ca.path)
                .common(driver)
                .label(format!("{kind} command ({driver})"))
                .start()
        };
        let dst = agent("destination", "ssh=127.0.0.1:9".into(), &dst_file);
        let src = agent(
            "source",
            format!("ssh=127.0.0.1:{}", free_port()),
            &src_file,
        );
        let connected = |side: &str, t: &Value| {
            t["tunnel"][format!("{side}ConnectionState")]["status"] == "CONNECTED"
        };
        assert!(
            wait_until(SOON, || {
                let t = tunnel_json(&relay, &["describe", &id]);
                connected("source", &t) && connected("destination", &t)
            }),
            "({driver}) both agents connect before the tunnel expires:\n{}\n{}",
            src.log(),
            dst.log()
        );
        for (mut p, what) in [(src, "source"), (dst, "destination")] {
            let exit = p.wait_exit(SOON);
            assert!(
                exit.is_some_and(|s| !s.success()),
                "({driver}) the {what} command exits non-zero at expiry: {exit:?}\n{}",
                p.log()
            );
            let log = p.log();
            assert!(
                log.contains("gave up") && log.contains("tunnel expired"),
                "({driver}) the {what} got the close frame and gave up:\n{log}"
            );
        }
        let out = relay.tunnel(&["describe", &id], false);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("status:       CLOSED")
                && text(&out.stdout).contains("lifetime:     8 seconds"),
            "({driver}) describe after expiry:\n{}",
            text(&out.stdout)
        );
        relay.stop();
    }
}

/// An agent whose relay's name does not resolve (a device up before its DNS) starts, says so,
/// and keeps trying with its backoff, each attempt saying why; it does not exit.
#[test]
fn an_agent_whose_relay_name_does_not_resolve_keeps_trying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("src.token");
    fs::write(&token, "a-token\n").expect("write");
    let listen = format!("web=127.0.0.1:{}", free_port());
    let mut src = EngineCmd::agent("source", "no-such-host.invalid:8443", &token, &listen)
        .common("auto")
        .start();
    assert!(
        src.wait_log(SOON, |l| l.contains("WARN")
            && l.contains(
                "the relay's name does not resolve yet; the agent keeps trying"
            )),
        "{}",
        src.log()
    );
    let retries = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("reconnecting") && l.contains("the relay's name does not resolve: ")
            })
            .count()
    };
    assert!(
        wait_until(SOON, || retries(&src.log()) >= 3),
        "{}",
        src.log()
    );
    assert!(src.running(), "the agent is still up:\n{}", src.log());
    assert!(!src.log().contains("a-token"), "{}", src.log());
}

/// A source whose service name is not the tunnel's (a typo) is refused before its single-use
/// token is used, with the relay's reason in its error; the same token then works with the
/// right name. `tunnel rotate` refuses a token file for the side it does not rotate.
#[test]
fn a_service_name_the_tunnel_lacks_costs_no_token() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let relay = Relay::start_on(&pki, dir.path(), ":memory:", "auto", port);
    let src_file = dir.path().join("src.token");
    let t = tunnel_json(
        &relay,
        &[
            "open",
            "--service",
            "web",
            "--source-token-file",
            src_file.to_str().expect("UTF-8"),
        ],
    );
    let id = t["tunnelId"].as_str().expect("tunnelId").to_string();
    let source = |service: &str| {
        let listen = format!("{service}=127.0.0.1:{}", free_port());
        EngineCmd::agent("source", &format!("localhost:{port}"), &src_file, &listen)
            .opt("--ca", &pki.ca.path)
            .common("auto")
            .label(format!("source of {service}"))
    };
    let (status, stderr) = source("ssh").run_to_exit();
    assert!(!status.success(), "{stderr}");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("answered 400")
            && errors[0].contains(r#"no service ["ssh"] (its services: ["web"])"#),
        "the relay's reason: {stderr}"
    );
    assert!(!errors[0].contains("gave up: source gave up"), "{stderr}");
    let shown = tunnel_json(&relay, &["describe", &id]);
    assert_eq!(
        shown["tunnel"]["sourceConnectionState"]["status"], "DISCONNECTED",
        "{shown}"
    );

    let _src = source("web").start();
    assert!(
        wait_until(SOON, || {
            let t = tunnel_json(&relay, &["describe", &id]);
            t["tunnel"]["sourceConnectionState"]["status"] == "CONNECTED"
        }),
        "the token still works with the tunnel's service name"
    );

    let d2 = dir.path().join("d2.token");
    let out = relay.tunnel(
        &[
            "rotate",
            &id,
            "--side",
            "source",
            "--destination-token-file",
            d2.to_str().expect("UTF-8"),
        ],
        false,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let e = text(&out.stderr);
    assert!(
        e.contains("--destination-token-file") && e.contains("--side both"),
        "{e}"
    );
    assert!(!d2.exists(), "nothing written");
    relay.stop();
}

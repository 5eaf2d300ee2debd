//! The browser's cookie flow in a real browser: headless Chromium (Debian's `chromium`, driven
//! by `tests/browser/cookie.mjs` with playwright-core from npm) loads a page served on
//! loopback, which POSTs the source token to the relay's `/cookie` with credentials, opens
//! the tunnel's WebSocket (the cookie carries the token), and speaks the tunnel protocol to a
//! destination agent (ours) in front of an echo service; the test checks the bytes that come
//! back. A screenshot of the page goes to `target/browser/`. Skipped, with a line that says
//! so, when `chromium` or `node` is missing.
//!
//! The relay's console (`tests/browser/console.mjs`): Chromium logs in, opens a tunnel from
//! the console, the test starts its destination agent with the token the page shows, the
//! console's browser source (served on the relay's TLS port) sends lines and keystrokes, and
//! the test checks the bytes that come back; then rotate and close from the console, checked
//! in the API. Screenshots of the console and the browser source go to `target/browser/`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::relay_cookie::{https, open_tunnel, post_cookie, start_relay};
use crate::support::*;

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser");
    std::fs::create_dir_all(&dir).expect("target/browser");
    dir
}

/// `npm ci` in tests/browser once per run (playwright-core from the registry).
fn npm_ci() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(browser_dir())
            .output()
            .expect("run npm ci");
        assert!(out.status.success(), "npm ci in tests/browser: {out:?}");
    });
}

fn missing() -> Option<&'static str> {
    if !Path::new(CHROMIUM).exists() {
        return Some("chromium (apt-get install chromium)");
    }
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node");
    }
    None
}

/// Runs the page's flow; its JSON result.
fn run_page(
    pki: &Pki,
    relay_port: u16,
    page_port: u16,
    token: &str,
    payload: &[u8],
    shot: &Path,
) -> serde_json::Value {
    let payload_file = out_dir().join(format!("payload-{relay_port}.bin"));
    std::fs::write(&payload_file, payload).expect("write the payload");
    let result_file = out_dir().join(format!("result-{relay_port}.json"));
    let _ = std::fs::remove_file(&result_file);
    let mut child = Command::new("node")
        .arg("cookie.mjs")
        .current_dir(browser_dir())
        .env("RELAY_PORT", relay_port.to_string())
        .env("PAGE_PORT", page_port.to_string())
        .env("PAGE_CERT", &pki.server.cert)
        .env("PAGE_KEY", &pki.server.key)
        .env("SOURCE_TOKEN", token)
        .env("PAYLOAD_FILE", &payload_file)
        .env("RESULT_FILE", &result_file)
        .env("SCREENSHOT", shot)
        .env("CHROMIUM", CHROMIUM)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node cookie.mjs");
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("node's output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = std::fs::read_to_string(&result_file).unwrap_or_default();
    let _ = std::fs::remove_file(&result_file);
    let _ = std::fs::remove_file(&payload_file);
    serde_json::from_str(&result).unwrap_or_else(|_| {
        panic!(
            "cookie.mjs: {:?}, no result\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn browser_cookie_flow_moves_bytes_through_a_tunnel() {
    if let Some(what) = missing() {
        eprintln!("SKIPPED browser_cookie_flow_moves_bytes_through_a_tunnel: {what} not found");
        return;
    }
    npm_ci();
    let pki = Pki::new();
    let echo = echo_backend();
    for driver in DRIVERS {
        let page_port = free_port();
        // The page on https://127.0.0.1 (another port): the relay's own site, see
        // docs/relay.md "Browsers" for why not http://.
        let origin = format!("https://127.0.0.1:{page_port}");
        let relay = start_relay(&pki, driver, &[&origin]);
        let (_id, src, dst) = open_tunnel(relay.api, &["echo"]);
        let _dest = EngineCmd::new("destination")
            .opt("--relay", localhost(relay.port).to_string())
            .opt("--ca", &pki.ca.path)
            .opt("--sni", "localhost")
            .opt("--token", &dst)
            .opt("--connect", format!("echo={}", echo.addr))
            .common(driver)
            .label(format!("destination ({driver})"))
            .start();
        assert!(
            relay.proc.wait_log(SOON, |l| l.contains("peer admitted")),
            "{driver}: the destination agent connects:\n{}",
            relay.proc.log()
        );
        let mut payload = b"hello from the browser, through the tunnel and back: ".to_vec();
        payload.extend(random_bytes(100_000, 12));
        let shot = out_dir().join(format!("cookie-flow-{driver}.png"));
        let _ = std::fs::remove_file(&shot);
        let r = run_page(&pki, relay.port, page_port, &src, &payload, &shot);
        let log = r["log"].to_string();
        assert_eq!(r["cookieStatus"], 200, "{driver}: POST /cookie: {log}");
        let echoed = r["echoedHex"].as_str().expect("echoedHex");
        let want: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            echoed == want,
            "{driver}: {} of {} bytes came back (in order: {}): {log}\nrelay: {}",
            echoed.len() / 2,
            payload.len(),
            want.starts_with(echoed),
            relay.proc.log()
        );
        assert!(shot.exists(), "{driver}: the screenshot {}", shot.display());
        let relay_log = relay.proc.log();
        assert!(!relay_log.contains(&src), "{driver}: the token in the log");
    }
}

const API_TOKEN: &str = "browser-console-api-token";

/// A relay by the `relay` command whose API needs `API_TOKEN`.
fn start_relay_with_api_token(pki: &Pki, driver: &str, token_file: &Path) -> Relay {
    RelaySetup::new(pki, driver)
        .flag("--api-token-file", token_file)
        .command()
}

/// `GET path` on the API with the bearer token: the JSON answer.
fn api_get(api: SocketAddr, path: &str) -> serde_json::Value {
    let mut s = connect(api);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {API_TOKEN}\r\n\
         Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an answer");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {raw}");
    serde_json::from_str(body).expect("JSON")
}

/// The page's side of a step (`console.mjs`'s `step`): waits for `dir/name.json`; panics with
/// the page's log if node ends first.
fn wait_step(dir: &Path, name: &str, node: &mut Child, result: &Path) -> serde_json::Value {
    let file = dir.join(format!("{name}.json"));
    let deadline = Instant::now() + Duration::from_secs(180);
    while !file.exists() {
        if node.try_wait().expect("wait").is_some() || Instant::now() > deadline {
            let _ = node.kill();
            panic!(
                "console.mjs ended or stalled before step {name}: {}",
                std::fs::read_to_string(result).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&file).expect("the step's file");
    serde_json::from_str(&text).expect("the step's JSON")
}

fn ack(dir: &Path, name: &str) {
    std::fs::write(dir.join(format!("{name}.ok")), "").expect("ack the step");
}

#[test]
fn browser_console_opens_a_tunnel_and_its_browser_source_talks_to_it() {
    if let Some(what) = missing() {
        eprintln!(
            "SKIPPED browser_console_opens_a_tunnel_and_its_browser_source_talks_to_it: {what} not found"
        );
        return;
    }
    npm_ci();
    let pki = Pki::new();
    let echo = echo_backend();
    // A service that says bye and closes: the browser source shows the stream's reset.
    let bye = Backend::spawn(|mut sock| {
        let _ = sock.write_all(b"bye\r\n");
    });
    for driver in DRIVERS {
        let dir = out_dir().join(format!("console-steps-{driver}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the steps' directory");
        let token_file = dir.join("api-token");
        std::fs::write(&token_file, API_TOKEN).expect("the API token file");
        let relay = start_relay_with_api_token(&pki, driver, &token_file);
        let result_file = dir.join("result.json");
        let prefix = out_dir().join(driver);
        for shot in ["console-open-dialog", "browser-source", "console-list"] {
            let _ = std::fs::remove_file(format!("{}-{shot}.png", prefix.display()));
        }
        let mut node = Command::new("node")
            .arg("console.mjs")
            .current_dir(browser_dir())
            .env("API_PORT", relay.api.port().to_string())
            .env("RELAY_PORT", relay.port.to_string())
            .env("API_TOKEN", API_TOKEN)
            .env("STEP_DIR", &dir)
            .env("SHOT_PREFIX", &prefix)
            .env("RESULT_FILE", &result_file)
            .env("CHROMIUM", CHROMIUM)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run node console.mjs");

        // The destination token, as the console showed it: our agent in front of echo.
        let step = wait_step(&dir, "destination-token", &mut node, &result_file);
        let tunnel_id = step["tunnelId"].as_str().expect("tunnelId").to_owned();
        let described = api_get(relay.api, &format!("/tunnels/{tunnel_id}"));
        assert_eq!(
            described["tunnel"]["destinationConfig"]["services"],
            serde_json::json!(["echo", "bye"])
        );
        assert_eq!(
            described["tunnel"]["destinationConfig"]["thingName"],
            "pump-7"
        );
        let _dest = EngineCmd::new("destination")
            .opt("--relay", localhost(relay.port).to_string())
            .opt("--ca", &pki.ca.path)
            .opt("--sni", "localhost")
            .opt(
                "--token",
                step["destination"].as_str().expect("destination"),
            )
            .opt("--connect", format!("echo={}", echo.addr))
            .opt("--connect", format!("bye={}", bye.addr))
            .common(driver)
            .label(format!("destination ({driver})"))
            .start();
        assert!(
            relay.proc.wait_log(SOON, |l| l.contains("peer admitted")),
            "{driver}: the destination agent connects:\n{}",
            relay.proc.log()
        );
        ack(&dir, "destination-token");

        // Rotated from the console: the relay takes the new source token, and the browser
        // source that used the old one is gone.
        let step = wait_step(&dir, "rotated", &mut node, &result_file);
        let rotated = step["source"].as_str().expect("the new source token");
        let body = serde_json::json!({ "token": rotated }).to_string();
        let (status, _, answer) = https(&pki, relay.port, &post_cookie(None, &body));
        assert_eq!(status, 200, "{driver}: the rotated source token: {answer}");
        let path = format!("/tunnels/{tunnel_id}");
        assert!(
            wait_until(SOON, || {
                api_get(relay.api, &path)["tunnel"]["sourceConnectionState"]["status"]
                    == "DISCONNECTED"
            }),
            "{driver}: the source is disconnected after the rotation"
        );
        ack(&dir, "rotated");

        let _ = wait_step(&dir, "closed", &mut node, &result_file);
        assert_eq!(api_get(relay.api, &path)["tunnel"]["status"], "CLOSED");
        ack(&dir, "closed");

        let deadline = Instant::now() + Duration::from_secs(60);
        while node.try_wait().expect("wait").is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = node.kill();
        let _ = node.wait();
        let text = std::fs::read_to_string(&result_file).expect("console.mjs's result");
        let r: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let log = r["log"].to_string();
        assert!(r["error"].is_null(), "{driver}: {}\n{log}", r["error"]);
        assert_eq!(r["redirectedTo"], "/console/login", "{driver}: {log}");
        assert_eq!(r["unauthorizedStatus"], 401, "{driver}: {log}");
        assert_eq!(
            r["sourceUrl"],
            format!("https://127.0.0.1:{}/source", relay.port),
            "{driver}: the browser source is on the relay's TLS port"
        );
        assert_eq!(
            r["hashAfterLoad"], "",
            "{driver}: the token is wiped from the address bar"
        );
        // Line mode: "hello" + CRLF, "world" (a Backspace edited it) + LF; raw mode: a, b,
        // Backspace (DEL), Enter (CR) as typed.
        let want: String = b"hello\r\nworld\nab\x7f\r"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            r["received"],
            want.as_str(),
            "{driver}: the echoed bytes: {log}"
        );
        assert_eq!(
            r["receivedAfterReset"],
            format!("{want}{}", "6279650d0a"),
            "{driver}: then bye + CRLF from the second stream: {log}"
        );
        assert_eq!(
            r["stateAfterReset"], "stream 2 reset by the destination",
            "{driver}: {log}"
        );
        assert_eq!(r["rotatedDiffers"], true, "{driver}: {log}");
        assert_eq!(r["rotatedHasDestination"], false, "{driver}: source only");
        assert!(
            r["sourceAfterRotate"]
                .as_str()
                .is_some_and(|s| s.starts_with("disconnected")),
            "{driver}: {log}"
        );
        for shot in ["console-open-dialog", "browser-source", "console-list"] {
            let file = format!("{}-{shot}.png", prefix.display());
            assert!(Path::new(&file).exists(), "{driver}: the screenshot {file}");
        }
        let relay_log = relay.proc.log();
        assert!(
            !relay_log.contains(API_TOKEN),
            "{driver}: the API token in the log"
        );
        assert!(!relay_log.contains(rotated), "{driver}: a token in the log");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

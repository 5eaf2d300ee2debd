//! The browser's cookie flow in a real browser: headless Chromium (Debian's `chromium`, driven
//! by `tests/browser/cookie.mjs` with playwright-core from npm) loads a page served on
//! loopback, which POSTs the source token to the relay's `/cookie` with credentials, opens
//! the tunnel's WebSocket (the cookie carries the token), and speaks the tunnel protocol to a
//! destination agent (ours) in front of an echo service; the test checks the bytes that come
//! back. A screenshot of the page goes to `target/browser/`. Skipped, with a line that says
//! so, when `chromium` or `node` is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::relay_cookie::{open_tunnel, start_relay};
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

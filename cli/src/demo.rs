//! `splice-engine demo`: the main job on loopback with no setup, through the library's API.
//!
//! It makes a throwaway CA and server certificate, starts an echo backend, a server-mode
//! forwarder in front of it and a client-mode forwarder in front of that (verifying the server
//! against the throwaway CA), pushes random bytes through the chain on a few connections, checks
//! every byte that comes back, and reports what the engine did. `demo tunnel` does the same
//! through the tunnel (relay, source and destination agents): see [`tunnel`].

pub(crate) mod tunnel;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use splice_test_pki::{Ca, KeyType, SERVER_SANS, Usage};

use anyhow::{Context, Result, bail};
use splice_engine::{Engine, EngineConfig, ForwarderConfig};

/// Throwaway PEM files in a temporary directory, removed on drop.
struct DemoCerts {
    /// The directory.
    dir: PathBuf,
    /// CA certificate.
    ca: PathBuf,
    /// Server certificate (for `localhost` and 127.0.0.1), signed by the CA.
    cert: PathBuf,
    /// Its key.
    key: PathBuf,
}

impl DemoCerts {
    /// Writes a fresh CA and server certificate under a new temporary directory.
    fn create() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "splice-demo-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir).context("create demo directory")?;
        // The workspace's test PKI: a P-256 CA and a server leaf for localhost and 127.0.0.1.
        let ca = Ca::try_new(&dir, "demo", KeyType::P256).context("write demo certificates")?;
        let server = ca
            .try_issue(&dir, "server", SERVER_SANS, KeyType::P256, Usage::Server)
            .context("write demo certificates")?;
        Ok(Self {
            ca: ca.path,
            cert: server.cert,
            key: server.key,
            dir,
        })
    }
}

impl Drop for DemoCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An echo server on 127.0.0.1 (a thread per connection); returns its port.
fn echo_backend() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind echo backend")?;
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let Ok(mut w) = s.try_clone() else { return };
                let mut r = s;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    Ok(port)
}

/// Runs the demo and returns the report to print.
pub(crate) fn run(mut cfg: EngineConfig, bytes: u64, connections: usize) -> Result<String> {
    let certs = DemoCerts::create()?;
    let echo = echo_backend()?;
    let connections = connections.max(1);
    let server = ForwarderConfig::server(
        "127.0.0.1:0",
        format!("127.0.0.1:{echo}"),
        &certs.cert,
        &certs.key,
    )
    .name("demo-server");
    cfg.forwarders = vec![server.clone()];
    let engine = Engine::start(cfg.clone())?;
    let server_addr = engine.local_addr("demo-server").expect("just started");
    let client =
        ForwarderConfig::client("127.0.0.1:0", format!("localhost:{}", server_addr.port()))
            .name("demo-client")
            .ca(&certs.ca);
    cfg.forwarders = vec![server, client];
    engine.reload(cfg)?;
    let client_addr = engine.local_addr("demo-client").expect("just added");

    let per_conn = bytes / connections as u64;
    let pushed = push_all(client_addr, per_conn, connections, true);
    let mut out = String::new();
    let _ = writeln!(out, "splice-engine demo");
    let _ = writeln!(
        out,
        "  chain      : you -> client mode {client_addr} -> TLS -> server mode {server_addr} -> echo 127.0.0.1:{echo}"
    );
    let _ = writeln!(
        out,
        "  driver     : {}    kernel TLS: {}",
        engine.driver(),
        if engine.ktls_enabled() {
            "yes (sessions handed to the kernel)"
        } else {
            "no (user-space TLS)"
        }
    );
    pushed.report(&mut out, per_conn * connections as u64, connections, 11);
    for s in engine.stats() {
        let _ = writeln!(
            out,
            "  {:<11}: {} connections, {} B down->up, {} B up->down, kTLS {}, errors (down/up/tls) {}/{}/{}",
            s.name,
            s.accepted,
            s.bytes_down_to_up,
            s.bytes_up_to_down,
            s.ktls,
            s.errors_downstream,
            s.errors_upstream,
            s.errors_tls
        );
    }
    engine.shutdown(Duration::from_secs(2));
    if !pushed.failures.is_empty() {
        bail!(
            "demo failed: {}: data did not come back intact",
            pushed.failures.join("; ")
        );
    }
    Ok(out)
}

/// What [`push_all`] found.
struct Pushed {
    /// Connections that got every byte back.
    ok: usize,
    /// What went wrong on the others.
    failures: Vec<String>,
    /// How long it took.
    secs: f64,
}

impl Pushed {
    /// The report's "moved" and "verified" lines (`total` bytes each way), labels padded to
    /// `width`.
    fn report(&self, out: &mut String, total: u64, connections: usize, width: usize) {
        let _ = writeln!(
            out,
            "  {:<width$}: {} MiB up and {} MiB back on {connections} connections in {:.2} s ({:.0} MiB/s each way)",
            "moved",
            total >> 20,
            total >> 20,
            self.secs,
            total as f64 / (1 << 20) as f64 / self.secs.max(1e-9)
        );
        let _ = writeln!(
            out,
            "  {:<width$}: {}/{connections} connections returned every byte in order (sha256)",
            "verified", self.ok
        );
    }
}

/// Pushes `per_conn` bytes through `addr` on `connections` connections at once, each checked
/// by [`push_and_check`] (with `half_close`).
fn push_all(
    addr: std::net::SocketAddr,
    per_conn: u64,
    connections: usize,
    half_close: bool,
) -> Pushed {
    let start = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            std::thread::spawn(move || push_and_check(addr, per_conn, i as u64 + 1, half_close))
        })
        .collect();
    let mut ok = 0;
    let mut failures = Vec::new();
    for w in workers {
        match w.join() {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("worker panicked".into()),
        }
    }
    Pushed {
        ok,
        failures,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// Sends `n` pseudo-random bytes and checks that the echo matches. With `half_close` the
/// sender's FIN follows its last byte and the reply is read to the echo's FIN; without, the
/// reply is read to its `n`th byte and then the connection is closed (the tunnel protocol
/// has no half-close: a FIN crossing it ends the connection both ways).
fn push_and_check(
    addr: std::net::SocketAddr,
    n: u64,
    seed: u64,
    half_close: bool,
) -> std::result::Result<(), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || -> std::result::Result<[u8; 32], String> {
        let mut h = Sha256::new();
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = n;
        while left > 0 {
            for chunk in buf.chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                chunk.copy_from_slice(&rng.to_le_bytes()[..chunk.len()]);
            }
            let k = left.min(buf.len() as u64) as usize;
            w.write_all(&buf[..k]).map_err(|e| format!("send: {e}"))?;
            h.update(&buf[..k]);
            left -= k as u64;
        }
        if half_close {
            w.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        }
        Ok(h.finalize().into())
    });
    let mut r = s;
    let mut h = Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    while half_close || got < n {
        let k = r.read(&mut buf).map_err(|e| format!("receive: {e}"))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        got += k as u64;
    }
    let sent = writer.join().map_err(|_| "writer panicked".to_string())??;
    let back: [u8; 32] = h.finalize().into();
    if got != n || sent != back {
        return Err(format!("sent {n} bytes, got {got} back; hashes differ"));
    }
    Ok(())
}

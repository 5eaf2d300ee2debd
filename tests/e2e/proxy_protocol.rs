//! The PROXY protocol against a real HAProxy: HAProxy's `send-proxy` / `send-proxy-v2` in front
//! of our `--accept-proxy` (server and client mode), and our `--send-proxy v1|v2` into an
//! HAProxy frontend with `accept-proxy`. The addresses are checked by a backend that reads the
//! header with its own few lines of parsing (not our codec), and the bytes after the header by
//! sha256. Garbage, an over-long line and a header that never ends are reset.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::*;

const HAPROXY: &str = "/usr/sbin/haproxy";

/// An HAProxy in TCP mode: one frontend on `port` forwarding to one server; killed on drop.
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Haproxy {
    /// `bind_opts` go on the frontend's bind line (`accept-proxy`), `server_opts` on the
    /// server line (`send-proxy`, `send-proxy-v2`).
    fn start(port: u16, bind_opts: &str, server: SocketAddr, server_opts: &str) -> Haproxy {
        let dir = tempfile::tempdir().expect("haproxy temp dir");
        let cfg = dir.path().join("haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        write_file(
            &cfg,
            format!(
                "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 60s\n  timeout server 60s\nfrontend fe\n  \
                 bind 127.0.0.1:{port} {bind_opts}\n  default_backend be\nbackend be\n  \
                 server s1 {server} {server_opts}\n"
            )
            .as_bytes(),
        );
        let out = std::fs::File::create(&log).expect("haproxy log");
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {HAPROXY} (apt install haproxy): {e}"));
        let mut h = Haproxy {
            child,
            _dir: dir,
            log,
        };
        // Read from /proc: binding the port to probe it would race HAProxy's own bind.
        let pid = i32::try_from(h.child.id()).expect("pid fits in i32");
        let up = wait_until(START_TIMEOUT, || {
            pid_listens_on(pid, port) || h.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            up && h.child.try_wait().ok().flatten().is_none(),
            "haproxy did not listen on {port}:\n{}",
            h.log()
        );
        h
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- haproxy log\n{}\n----", self.log());
        }
    }
}

/// What a [`proxied_echo`] backend read in a connection's PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    version: u8,
    source: SocketAddr,
    destination: SocketAddr,
}

/// Reads a PROXY header (v1 TCP4, or v2 PROXY over IPv4) byte-exactly, by hand.
fn read_header(s: &mut TcpStream) -> Result<Seen, String> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).map_err(|e| e.to_string())?;
    if first[0] == b'P' {
        let mut line = vec![first[0]];
        while !line.ends_with(b"\r\n") {
            if line.len() > 107 {
                return Err("v1 line too long".into());
            }
            s.read_exact(&mut first).map_err(|e| e.to_string())?;
            line.push(first[0]);
        }
        let text = String::from_utf8(line).map_err(|e| e.to_string())?;
        let f: Vec<&str> = text.trim_end().split(' ').collect();
        if f.len() != 6 || f[0] != "PROXY" || f[1] != "TCP4" {
            return Err(format!("unexpected v1 line {text:?}"));
        }
        let addr = |ip: &str, port: &str| -> Result<SocketAddr, String> {
            Ok(SocketAddr::new(
                ip.parse().map_err(|_| format!("ip {ip:?}"))?,
                port.parse().map_err(|_| format!("port {port:?}"))?,
            ))
        };
        return Ok(Seen {
            version: 1,
            source: addr(f[2], f[4])?,
            destination: addr(f[3], f[5])?,
        });
    }
    let mut fixed = [0u8; 16];
    fixed[0] = first[0];
    s.read_exact(&mut fixed[1..]).map_err(|e| e.to_string())?;
    if &fixed[..12] != b"\r\n\r\n\0\r\nQUIT\n" || fixed[12] != 0x21 || fixed[13] != 0x11 {
        return Err(format!("unexpected v2 header {fixed:02x?}"));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    if len < 12 {
        return Err(format!("v2 address block of {len} bytes"));
    }
    let ip = |o: usize| Ipv4Addr::new(body[o], body[o + 1], body[o + 2], body[o + 3]);
    let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
    Ok(Seen {
        version: 2,
        source: SocketAddr::from((ip(0), port(8))),
        destination: SocketAddr::from((ip(4), port(10))),
    })
}

/// A backend that reads each connection's PROXY header, reports it, then echoes every byte.
fn proxied_echo() -> (Backend, mpsc::Receiver<Result<Seen, String>>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::spawn(move |mut sock| {
        let seen = read_header(&mut sock);
        let ok = seen.is_ok();
        let _ = tx.lock().expect("tx lock").send(seen);
        if !ok {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sock.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sock.shutdown(std::net::Shutdown::Write);
    });
    (backend, rx)
}

/// Sends 1 MiB of random bytes in 64 KiB round trips through an echo; the echoed bytes have
/// the same sha256.
fn echo_intact(s: &mut (impl Read + Write), seed: u64) {
    let data = random_bytes(1 << 20, seed);
    let mut back = Vec::with_capacity(data.len());
    for chunk in data.chunks(64 * 1024) {
        s.write_all(chunk).expect("write a chunk");
        s.flush().expect("flush");
        let mut got = vec![0u8; chunk.len()];
        s.read_exact(&mut got).expect("read the chunk back");
        back.extend_from_slice(&got);
    }
    assert_eq!(sha256_hex(&back), sha256_hex(&data), "echoed bytes differ");
}

fn seen(rx: &mpsc::Receiver<Result<Seen, String>>) -> Seen {
    rx.recv_timeout(SOON)
        .expect("the backend got no connection")
        .unwrap_or_else(|e| panic!("the backend read no good PROXY header: {e}"))
}

/// HAProxy (`send-proxy` / `send-proxy-v2`) -> server mode `--accept-proxy --send-proxy` ->
/// backend: the backend sees the address of the client that connected to HAProxy, and the
/// address it connected to; the bytes pass intact.
#[test]
fn haproxy_send_proxy_into_server_mode() {
    let pki = Pki::new();
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    for driver in DRIVERS {
        for (theirs, ours) in [("send-proxy", "v2"), ("send-proxy-v2", "v1")] {
            let (backend, rx) = proxied_echo();
            let sp = free_port();
            let _server = EngineCmd::server(sp, backend.addr, &pki.server, driver)
                .arg("--accept-proxy")
                .opt("--send-proxy", ours)
                .start();
            let hp = free_port();
            let _haproxy = Haproxy::start(hp, "", localhost(sp), theirs);
            let sock = connect(localhost(hp));
            let client = sock.local_addr().expect("client address");
            let mut tls = try_tls_on(sock, "localhost", cfg.clone())
                .unwrap_or_else(|e| panic!("{driver} {theirs}: TLS through haproxy: {e}"));
            echo_intact(&mut tls, 1);
            let got = seen(&rx);
            let want_version = if ours == "v1" { 1 } else { 2 };
            assert_eq!(
                got,
                Seen {
                    version: want_version,
                    source: client,
                    destination: localhost(hp),
                },
                "{driver}: haproxy {theirs}, ours {ours}"
            );
            tls_close(&mut tls);
        }
    }
}

/// HAProxy (`send-proxy` / `send-proxy-v2`) -> client mode `--accept-proxy` -> TLS upstream:
/// the header is taken off (the upstream sees only the stream, intact) and the log names the
/// client that connected to HAProxy.
#[test]
fn haproxy_send_proxy_into_client_mode() {
    let pki = Pki::new();
    let upstream = tls_echo_server(server_config(&pki.server, None, TLS_ANY));
    for driver in DRIVERS {
        for theirs in ["send-proxy", "send-proxy-v2"] {
            let cp = free_port();
            // Debug logs name the peer of every connection that ends.
            let client_mode = EngineCmd::new("client")
                .opt("--listen", localhost(cp).to_string())
                .opt("--connect", upstream.addr.to_string())
                .opt("--ca", &pki.ca.path)
                .opt("--sni", "localhost")
                .arg("--accept-proxy")
                .opt("--threads", "2")
                .opt("--log-level", "debug")
                .opt("--driver", driver)
                .wait_port(cp)
                .start();
            let hp = free_port();
            let _haproxy = Haproxy::start(hp, "", localhost(cp), theirs);
            let mut sock = connect(localhost(hp));
            let client = sock.local_addr().expect("client address");
            echo_intact(&mut sock, 2);
            drop(sock);
            assert!(
                client_mode.wait_log(SOON, |l| l.contains(&client.to_string())),
                "{driver} {theirs}: the log never names the client {client}:\n{}",
                client_mode.log()
            );
        }
    }
}

/// Server mode `--send-proxy v1|v2` -> HAProxy `accept-proxy` -> (HAProxy's own `send-proxy`)
/// -> backend: HAProxy understood our header, because it passes on the client address we
/// sent; the bytes pass intact.
#[test]
fn server_mode_send_proxy_into_haproxy() {
    let pki = Pki::new();
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    for driver in DRIVERS {
        for ours in ["v1", "v2"] {
            let (backend, rx) = proxied_echo();
            let hp = free_port();
            let _haproxy = Haproxy::start(hp, "accept-proxy", backend.addr, "send-proxy");
            let sp = free_port();
            let _server = EngineCmd::server(sp, localhost(hp), &pki.server, driver)
                .opt("--send-proxy", ours)
                .start();
            let sock = connect(localhost(sp));
            let client = sock.local_addr().expect("client address");
            let mut tls = try_tls_on(sock, "localhost", cfg.clone())
                .unwrap_or_else(|e| panic!("{driver} {ours}: TLS to server mode: {e}"));
            echo_intact(&mut tls, 3);
            assert_eq!(
                seen(&rx),
                Seen {
                    version: 1,
                    source: client,
                    destination: localhost(sp),
                },
                "{driver}: ours {ours} through haproxy accept-proxy"
            );
            tls_close(&mut tls);
        }
    }
}

/// `--accept-proxy` resets what is not a header, with a log line that says why: TLS straight
/// away, an over-long v1 line, and a header that stops coming (bounded by the handshake
/// timeout). A header that arrives in pieces is fine.
#[test]
fn accept_proxy_resets_bad_headers() {
    let pki = Pki::new();
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    for driver in DRIVERS {
        let backend = echo_backend();
        let sp = free_port();
        let server = EngineCmd::server(sp, backend.addr, &pki.server, driver)
            .arg("--accept-proxy")
            .opt("--handshake-timeout", "1s")
            .start();

        // TLS without a header.
        assert!(
            try_tls_connect(localhost(sp), "localhost", cfg.clone()).is_err(),
            "{driver}: a handshake without a PROXY header succeeded"
        );
        assert!(
            server.wait_log(SOON, |l| l.contains("not a PROXY protocol header")),
            "{driver}: no log line for a missing header:\n{}",
            server.log()
        );

        // 107 bytes without CRLF.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(120, b'x');
        let (_, end) = send_and_read_to_end(localhost(sp), &long);
        assert!(matches!(end, End::Reset), "{driver}: long line: {end:?}");
        assert!(
            server.wait_log(SOON, |l| l.contains("longer than 107 bytes")),
            "{driver}: no log line for a long line:\n{}",
            server.log()
        );

        // A header that stops half-way: reset once the handshake time is up.
        let mut slow = connect(localhost(sp));
        slow.write_all(b"PROXY TCP4 192.0.2.1 ")
            .expect("write half a header");
        let (_, end) = read_until_end(&mut slow);
        assert!(matches!(end, End::Reset), "{driver}: slow header: {end:?}");
        assert!(
            server.wait_log(SOON, |l| l.contains("no complete PROXY header")),
            "{driver}: no log line for a late header:\n{}",
            server.log()
        );

        // In pieces, then TLS: works, and the log names the carried address.
        let mut sock = connect(localhost(sp));
        sock.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 ")
            .expect("first piece");
        std::thread::sleep(Duration::from_millis(100));
        sock.write_all(b"40007 443\r\n").expect("second piece");
        let mut tls = try_tls_on(sock, "localhost", cfg.clone())
            .unwrap_or_else(|e| panic!("{driver}: TLS after a split header: {e}"));
        echo_intact(&mut tls, 4);
        tls_close(&mut tls);
    }
}

/// A v2 `LOCAL` header (a load balancer's own health check) and a v1 `UNKNOWN` one are
/// accepted, and the header sent on carries the real connection's addresses.
#[test]
fn local_and_unknown_headers_keep_the_real_addresses() {
    let pki = Pki::new();
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    for driver in DRIVERS {
        let (backend, rx) = proxied_echo();
        let sp = free_port();
        let _server = EngineCmd::server(sp, backend.addr, &pki.server, driver)
            .arg("--accept-proxy")
            .opt("--send-proxy", "v1")
            .start();
        for header in [&local[..], b"PROXY UNKNOWN\r\n"] {
            let mut sock = connect(localhost(sp));
            let client = sock.local_addr().expect("client address");
            sock.write_all(header).expect("write the header");
            let mut tls = try_tls_on(sock, "localhost", cfg.clone())
                .unwrap_or_else(|e| panic!("{driver}: TLS after {header:?}: {e}"));
            echo_intact(&mut tls, 5);
            assert_eq!(
                seen(&rx),
                Seen {
                    version: 1,
                    source: client,
                    destination: localhost(sp),
                },
                "{driver}: after {header:?}"
            );
            tls_close(&mut tls);
        }
    }
}

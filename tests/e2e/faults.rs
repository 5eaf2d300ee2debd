//! The fault matrix (issue 17): what the engine does when the process runs out of file
//! descriptors, when one side resets while the other is stalled, when connections go idle,
//! under a connection flood against `max_connections` and a flood of failing connections, and
//! against a slowloris handshake. Every loop is bounded in count and time.
//!
//! Concurrent hashed streams, peer resets with data in flight and garbage input are covered in
//! `data.rs`, `half_close.rs` and `garbage.rs`.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustls::ServerConnection;
use rustls::pki_types::ServerName;

use crate::support::*;

/// CPU time (user + system) the process used so far, in clock ticks.
pub(crate) fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').expect("comm in stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

pub(crate) fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

pub(crate) fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sets both fd limits of a running process (util-linux `prlimit`).
pub(crate) fn set_nofile(pid: i32, n: usize) {
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={n}:{n}")])
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "prlimit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SUMMARY: &str = "similar lines suppressed";

/// Lines containing `needle`, not counting the summaries (which name the kind they count).
fn count_lines(log: &str, needle: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(needle) && !l.contains(SUMMARY))
        .count()
}

/// Polls `/metrics` until `splice_connections_active` is 0; a scrape may fail while the
/// process is out of fds.
fn wait_no_active(metrics: SocketAddr) {
    let ok = wait_until(SOON, || {
        try_scrape(metrics).is_ok_and(|m| m.value("splice_connections_active", &[]) == 0.0)
    });
    assert!(ok, "connections stayed active at {metrics}");
}

/// The sum of `key=N` over the log lines containing `needle`.
fn sum_field(log: &str, needle: &str, key: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let at = l.find(&format!("{key}="))? + key.len() + 1;
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// 1. Out of file descriptors
// ---------------------------------------------------------------------------------------------

/// With more clients than file descriptors, the engine neither spins nor floods its log, and
/// serves new connections, every byte intact, once the clients have gone.
fn fd_exhaustion(driver: &str) {
    const CLIENTS: usize = 150;
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let server = EngineCmd::server(sp, backend.addr, &pki.server, driver)
        // The held clients say nothing: keep them open for the whole test.
        .opt("--handshake-timeout", "120s")
        // One access line per connection is by design (and switchable); what is bounded here
        // is everything else: the accept-failure lines.
        .arg("--no-access-log")
        .metrics(mp)
        .label(format!("server mode, few fds ({driver})"))
        .start();
    let pid = server.pid();
    // Room for about 20 connections beyond what the process holds now.
    let limit = open_fds(pid) + 20;
    set_nofile(pid, limit);

    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(localhost(sp))).collect();
    // The engine fills its fds, then the rest of the clients wait in the backlog.
    assert!(
        server.wait_log(SOON, |l| l.contains("Too many open files")),
        "the engine never ran out of fds (limit {limit}); log:\n{}",
        server.log()
    );
    let lines_before = server.log().lines().count();
    let cpu_before = cpu_ticks(pid);
    let window = Duration::from_secs(3);
    thread::sleep(window);
    let cpu = cpu_ticks(pid) - cpu_before;
    let log = server.log();
    let lines = log.lines().count();
    // Spinning on EMFILE used a whole core or more and wrote a line per attempt (millions).
    let max_cpu = clock_ticks_per_sec() * window.as_secs() / 3;
    assert!(
        cpu <= max_cpu,
        "{cpu} ticks of CPU in {window:?} while out of fds (bound {max_cpu}): the accept loop spins"
    );
    assert!(
        lines < 40,
        "{lines} log lines while out of fds ({} in the last {window:?}); first ones:\n{}",
        lines - lines_before,
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );

    assert!(
        log.contains("out of file descriptors"),
        "the log does not say what ran out:\n{log}"
    );

    drop(clients);
    // Every held connection ends (the backlog ones are accepted and fail their handshake).
    wait_no_active(localhost(mp));
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    let payload = random_bytes(512 * 1024, 17);
    let mut served = false;
    let start = Instant::now();
    while !served && start.elapsed() < SOON {
        if let Ok(mut tls) = try_tls_connect(localhost(sp), "localhost", cfg.clone()) {
            served = try_echo_roundtrip(&mut tls, &payload).is_ok();
        }
        if !served {
            thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        served,
        "after the clients left, a new connection was not served"
    );
    let log = server.log();
    assert!(
        log.lines().count() < 60,
        "the log grew to {} lines",
        log.lines().count()
    );
}

#[test]
fn fd_exhaustion_uring() {
    fd_exhaustion("uring");
}

#[test]
fn fd_exhaustion_epoll() {
    fd_exhaustion("epoll");
}

/// At start the engine warns when `max_connections` cannot fit under the fd limit.
#[test]
fn warns_when_max_connections_exceeds_fd_limit() {
    let pki = Pki::new();
    let backend = echo_backend();
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let err_path = dir.path().join("stderr.log");
    let mut child = Command::new("prlimit")
        .arg("--nofile=256:256")
        .arg(BIN)
        .args(["server", "--listen", &localhost(port).to_string()])
        .args(["--connect", &backend.addr.to_string()])
        .arg("--cert")
        .arg(&pki.server.cert)
        .arg("--key")
        .arg(&pki.server.key)
        .args(["--max-connections", "1000", "--threads", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("create stderr file"))
        .spawn()
        .expect("run the engine under prlimit");
    let read = || strip_ansi(&std::fs::read_to_string(&err_path).unwrap_or_default());
    let ok = wait_until(SOON, || read().contains("listening"));
    let _ = child.kill();
    let _ = child.wait();
    let log = read();
    assert!(ok, "the engine did not start:\n{log}");
    assert!(
        log.contains("file descriptor limit") && log.contains("limit=256"),
        "no warning about 1000 connections under 256 fds:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A reset on one side while the other is stalled
// ---------------------------------------------------------------------------------------------

/// Writes until the peer stops taking bytes (nothing moved for half a second); bounded.
fn write_until_blocked(mut write: impl FnMut() -> io::Result<usize>) -> u64 {
    let mut total = 0u64;
    let mut blocked_since: Option<Instant> = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) && total < 512 << 20 {
        match write() {
            Ok(n) if n > 0 => {
                total += n as u64;
                blocked_since = None;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if blocked_since.get_or_insert_with(Instant::now).elapsed()
                    > Duration::from_millis(500)
                {
                    return total;
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("writing until blocked: {e} after {total} bytes"),
        }
    }
    panic!("the engine took {total} bytes without blocking: no backpressure");
}

/// A backend that accepts and never reads (holds each socket until `done` or 60 s); counts
/// the connections on which the engine's reset arrived.
fn never_reading_backend(
    done: Arc<AtomicBool>,
    tls: Option<Arc<rustls::ServerConfig>>,
    resets: Arc<AtomicUsize>,
) -> Backend {
    Backend::spawn(move |mut sock| {
        let mut conn = None;
        if let Some(cfg) = &tls {
            let mut c = ServerConnection::new(cfg.clone()).expect("server connection");
            while c.is_handshaking() {
                if c.complete_io(&mut sock).is_err() {
                    return;
                }
            }
            while c.wants_write() {
                if c.write_tls(&mut sock).is_err() {
                    return;
                }
            }
            conn = Some(c);
        }
        let start = Instant::now();
        while !done.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(60) {
            // SO_ERROR: set by a reset, without reading a byte.
            if sock.take_error().ok().flatten().is_some() {
                resets.fetch_add(1, Ordering::SeqCst);
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        drop((conn, sock));
    })
}

/// How the far side stalls the connection.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stall {
    /// The backend never reads.
    BackendNeverReads,
    /// The backend echoes, and the client never reads: every buffer on the way fills up.
    ClientNeverReads,
}

/// The connection stalls (see [`Stall`]); the client writes until blocked, then resets. The
/// engine must drop the connection (both legs reset) without waiting for the stall to end.
fn stalled_then_reset(mode: &str, driver: &str, ktls: &str, stall: Stall) {
    let pki = Pki::new();
    let done = Arc::new(AtomicBool::new(false));
    let (lp, mp) = (free_port(), free_port());
    let tls_backend = (mode == "client").then(|| server_config(&pki.server, None, TLS_ANY));
    let resets = Arc::new(AtomicUsize::new(0));
    let backend = match (stall, tls_backend) {
        (Stall::BackendNeverReads, tls) => never_reading_backend(done.clone(), tls, resets.clone()),
        (Stall::ClientNeverReads, Some(cfg)) => tls_echo_server(cfg),
        (Stall::ClientNeverReads, None) => echo_backend(),
    };
    let engine = if mode == "server" {
        EngineCmd::server(lp, backend.addr, &pki.server, driver)
    } else {
        EngineCmd::client(lp, backend.addr, &pki.ca, driver).opt("--sni", "localhost")
    };
    let engine = engine
        .opt("--ktls", ktls)
        .metrics(mp)
        .label(format!("{mode} mode ({driver}, ktls {ktls}, {stall:?})"))
        .start();
    let metrics = localhost(mp);
    const CONNS: usize = 3;
    for i in 0..CONNS {
        let sock = connect(localhost(lp));
        let written = if mode == "server" {
            let name = ServerName::try_from("localhost").expect("name");
            let cfg = client_config(&[&pki.ca], None, TLS_ANY);
            let mut tls = rustls::ClientConnection::new(cfg, name).expect("client connection");
            let mut s = sock.try_clone().expect("clone");
            while tls.is_handshaking() {
                tls.complete_io(&mut s).expect("handshake with the engine");
            }
            s.set_nonblocking(true).expect("nonblocking");
            let chunk = vec![0x5a; 16 * 1024];
            write_until_blocked(|| {
                if !tls.wants_write() {
                    tls.writer().write_all(&chunk)?;
                }
                tls.write_tls(&mut s)
            })
        } else {
            let mut s = sock.try_clone().expect("clone");
            s.set_nonblocking(true).expect("nonblocking");
            let chunk = vec![0x5a; 64 * 1024];
            write_until_blocked(|| s.write(&chunk))
        };
        assert!(written > 0, "conn {i}: nothing written");
        set_linger_zero(&sock);
        drop(sock);
    }
    assert!(
        backend.accepted() >= CONNS,
        "the backend saw the connections"
    );
    // Without the hang-up watch these stayed open for as long as the backend did not read.
    wait_metric(metrics, "splice_connections_active", &[], |v| v == 0.0);
    if stall == Stall::BackendNeverReads {
        // Both legs were reset: the backend saw it on every connection, without reading.
        assert!(
            wait_until(SOON, || resets.load(Ordering::SeqCst) == CONNS),
            "the backend saw {} resets of {CONNS}",
            resets.load(Ordering::SeqCst)
        );
        let log = engine.log();
        assert!(
            log.contains("reset the connection"),
            "no log line says why the connections closed:\n{log}"
        );
    }
    done.store(true, Ordering::SeqCst);
}

#[test]
fn stalled_then_reset_server_uring() {
    stalled_then_reset("server", "uring", "auto", Stall::BackendNeverReads);
    stalled_then_reset("server", "uring", "off", Stall::BackendNeverReads);
    stalled_then_reset("server", "uring", "auto", Stall::ClientNeverReads);
}

#[test]
fn stalled_then_reset_server_epoll() {
    stalled_then_reset("server", "epoll", "auto", Stall::BackendNeverReads);
    stalled_then_reset("server", "epoll", "off", Stall::BackendNeverReads);
    stalled_then_reset("server", "epoll", "auto", Stall::ClientNeverReads);
}

#[test]
fn stalled_then_reset_client_uring() {
    stalled_then_reset("client", "uring", "auto", Stall::BackendNeverReads);
    stalled_then_reset("client", "uring", "off", Stall::BackendNeverReads);
    stalled_then_reset("client", "uring", "auto", Stall::ClientNeverReads);
}

#[test]
fn stalled_then_reset_client_epoll() {
    stalled_then_reset("client", "epoll", "auto", Stall::BackendNeverReads);
    stalled_then_reset("client", "epoll", "off", Stall::BackendNeverReads);
    stalled_then_reset("client", "epoll", "auto", Stall::ClientNeverReads);
}

/// `--idle-timeout`: a connection that moves bytes now and then stays; one that moves none is
/// reset once the time is up, on both engines of a chain.
fn idle_timeout(driver: &str) {
    let pki = Pki::new();
    let backend = echo_backend();
    let chain = Chain::start_with(&pki, backend.addr, driver, &[("--idle-timeout", "2s")]);
    let mut busy = connect(chain.entry);
    let mut idle = connect(chain.entry);
    echo_roundtrip(&mut idle, b"once");
    // 3 s of traffic every 300 ms: longer than the timeout in all, never idle for 2 s (room
    // for a slow round trip on a busy machine).
    for i in 0..10u8 {
        echo_roundtrip(&mut busy, &[i; 100]);
        thread::sleep(Duration::from_millis(300));
    }
    echo_roundtrip(&mut busy, b"still here");
    // The idle one was closed meanwhile, with a reset (a FIN would pass for a clean end).
    idle.set_read_timeout(Some(SOON)).expect("timeout");
    let (data, end) = read_until_end(&mut idle);
    assert!(data.is_empty(), "unexpected data on the idle connection");
    assert!(
        matches!(end, End::Reset),
        "the idle connection was not reset: {end:?}"
    );
    drop(busy);
    for m in [chain.client_metrics, chain.server_metrics] {
        wait_metric(m, "splice_connections_active", &[], |v| v == 0.0);
    }
    assert!(
        chain.client.log().contains("idle_timeout") || chain.server.log().contains("idle_timeout"),
        "no log line names the idle timeout"
    );
}

#[test]
fn idle_timeout_uring() {
    idle_timeout("uring");
}

#[test]
fn idle_timeout_epoll() {
    idle_timeout("epoll");
}

// ---------------------------------------------------------------------------------------------
// 5. What operators see under attack
// ---------------------------------------------------------------------------------------------

/// 300 connections over `max_connections`: each is refused and counted (not as accepted), and
/// the log says so in a few lines whose counts add up to all 300.
fn refusal_flood(driver: &str) {
    const FLOOD: usize = 300;
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let server = EngineCmd::server(sp, backend.addr, &pki.server, driver)
        .opt("--max-connections", "2")
        .opt("--name", "flooded")
        .metrics(mp)
        .start();
    let metrics = localhost(mp);
    let labels = [("forwarder", "flooded")];
    let cfg = client_config(&[&pki.ca], None, TLS_ANY);
    let mut a = tls_connect(localhost(sp), "localhost", cfg.clone());
    let mut b = tls_connect(localhost(sp), "localhost", cfg.clone());
    echo_roundtrip(&mut a, b"a");
    echo_roundtrip(&mut b, b"b");
    for _ in 0..FLOOD {
        let (data, end) = send_and_read_to_end(localhost(sp), b"");
        assert!(
            end.closed() && data.is_empty(),
            "a flood connection got {end:?}"
        );
    }
    wait_metric(metrics, "splice_connections_refused_total", &labels, |v| {
        v == FLOOD as f64
    });
    let m = scrape(metrics);
    assert_eq!(
        m.value("splice_connections_accepted_total", &labels),
        2.0,
        "accepted must count only the admitted connections:\n{}",
        m.text
    );
    // The admitted connections still work.
    echo_roundtrip(&mut a, b"a again");
    echo_roundtrip(&mut b, b"b again");
    // One line at once per shard, then a summary with the count of the others.
    let first = "connection refused: max_connections";
    let complete = |log: &str| {
        count_lines(log, first) as u64 + sum_field(log, SUMMARY, "suppressed") == FLOOD as u64
    };
    assert!(
        server.wait_log(SOON, complete),
        "the refusal lines do not add up to {FLOOD}:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(
        count_lines(&log, first) <= 2 && log.matches(SUMMARY).count() <= 4,
        "too many lines for one flood:\n{log}"
    );
}

#[test]
fn refusal_flood_uring() {
    refusal_flood("uring");
}

#[test]
fn refusal_flood_epoll() {
    refusal_flood("epoll");
}

/// A relay's agent port flooded with plain text: a few "TLS handshake failed" lines and
/// summaries whose counts add up, naming the relay (not as a forwarder); an agent still pairs.
#[test]
fn relay_failure_flood_is_summarised_by_relay() {
    const FLOOD: usize = 120;
    let pki = Pki::new();
    let relay = RelaySetup::new(&pki, "auto").run_config();
    for _ in 0..FLOOD {
        let (_, end) = send_and_read_to_end(localhost(relay.port), b"GET / HTTP/1.0\r\n\r\n");
        assert!(end.closed(), "plain text was not closed: {end:?}");
    }
    let failed = "peer's TLS handshake failed";
    let complete = |log: &str| {
        count_lines(log, failed) as u64 + sum_field(log, SUMMARY, "suppressed") == FLOOD as u64
    };
    assert!(
        relay.proc.wait_log(SOON, complete),
        "the failure lines do not add up to {FLOOD}:\n{}",
        relay.proc.log()
    );
    let log = relay.proc.log();
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains(SUMMARY)).collect();
    assert!(
        !summaries.is_empty() && count_lines(&log, failed) <= 4,
        "{log}"
    );
    for l in summaries {
        assert!(
            l.contains("relay=r") && !l.contains("forwarder="),
            "a relay's summary names the relay: {l}"
        );
    }
    let (id, src, dst) = relay.open(&["ssh"]);
    let backend = echo_backend();
    let port = free_port();
    let _dst = AgentSetup::destination(&dst)
        .services(vec![format!("ssh={}", backend.addr)])
        .start(relay.addr(), &pki, "auto");
    let _src = AgentSetup::source(&src)
        .listen("ssh", port)
        .start(relay.addr(), &pki, "auto");
    assert!(wait_until(SOON, || relay.both_connected(&id)));
    // The source accepts once the tunnel's services are known: retry until it does.
    assert!(
        wait_until(SOON, || {
            let Ok(mut s) = try_connect(localhost(port)) else {
                return false;
            };
            s.write_all(b"a tunnel after the flood").is_ok() && {
                let mut back = [0u8; 24];
                std::io::Read::read_exact(&mut s, &mut back).is_ok()
                    && &back == b"a tunnel after the flood"
            }
        }),
        "a tunnel after the flood"
    );
}

/// 200 connections that fail the same way (plain text to a TLS port) give a few "connection
/// failed" lines and a summary count, not 200 lines; a good client is served meanwhile.
fn failure_flood(driver: &str) {
    const FLOOD: usize = 200;
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let server = EngineCmd::server(sp, backend.addr, &pki.server, driver)
        .metrics(mp)
        .start();
    for _ in 0..FLOOD {
        let (_, end) = send_and_read_to_end(localhost(sp), b"GET / HTTP/1.0\r\n\r\n");
        assert!(
            end.closed(),
            "a plain-text connection was not closed: {end:?}"
        );
    }
    let mut tls = tls_connect(
        localhost(sp),
        "localhost",
        client_config(&[&pki.ca], None, TLS_ANY),
    );
    echo_roundtrip(&mut tls, b"a good client");
    let failed = "connection failed";
    let complete = |log: &str| {
        count_lines(log, failed) as u64 + sum_field(log, SUMMARY, "suppressed") == FLOOD as u64
    };
    assert!(
        server.wait_log(SOON, complete),
        "the failure lines do not add up to {FLOOD}:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(
        count_lines(&log, failed) <= 4,
        "{} \"connection failed\" lines for one flood",
        count_lines(&log, failed)
    );
    wait_metric(localhost(mp), "splice_connection_errors_total", &[], |v| {
        v >= FLOOD as f64
    });
}

#[test]
fn failure_flood_uring() {
    failure_flood("uring");
}

#[test]
fn failure_flood_epoll() {
    failure_flood("epoll");
}

// ---------------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------------

/// Clients that trickle a ClientHello one byte at a time are closed by the handshake timeout
/// (a deadline, not an idle timer), while a real client is served meanwhile.
#[test]
fn slowloris_handshake() {
    const SLOW: usize = 20;
    let pki = Pki::new();
    let backend = echo_backend();
    let (sp, mp) = (free_port(), free_port());
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
        .opt("--handshake-timeout", "2s")
        .metrics(mp)
        .start();
    let addr: SocketAddr = localhost(sp);
    let hello: Arc<[u8]> = Arc::from(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc][..]);
    let trickles: Vec<_> = (0..SLOW)
        .map(|i| {
            let hello = hello.clone();
            spawn("slowloris", move || {
                let mut s = connect(addr);
                let start = Instant::now();
                // One byte every 200 ms, then junk: far slower than any real handshake.
                for k in 0..60usize {
                    let b = hello.get(k).copied().unwrap_or(0x41);
                    if s.write_all(&[b]).is_err() {
                        return start.elapsed();
                    }
                    thread::sleep(Duration::from_millis(200));
                }
                panic!("slowloris {i}: still open after {:?}", start.elapsed());
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let mut tls = tls_connect(addr, "localhost", client_config(&[&pki.ca], None, TLS_ANY));
    echo_roundtrip(&mut tls, b"served among the slow ones");
    for t in trickles {
        let lasted = t.join().expect("slowloris thread");
        assert!(
            lasted < Duration::from_secs(8),
            "a trickling client lasted {lasted:?} against a 2 s handshake timeout"
        );
    }
    wait_metric(localhost(mp), "splice_connections_active", &[], |v| {
        v == 1.0
    });
    echo_roundtrip(&mut tls, b"and after them");
}

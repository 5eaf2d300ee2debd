//! eBPF accounting (docs/ebpf.md). CI runs as root, so `--ebpf on` loads the program here:
//! the kernel's counts per leg and direction equal the payload sizes exactly, and equal the
//! user-space counters on the plain legs; short-lived connections, and peers that close first,
//! are counted in full; two engines on one host (the chain's two, each with its own program on
//! the same cgroup) count only their own sockets; without the capabilities, `auto` falls back
//! and says why, and `on` refuses to start with a clear line.

use std::fs;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use crate::support::*;

/// The chain with eBPF accounting required, every forwarder named `acct`.
fn chain(pki: &Pki, backend: SocketAddr, driver: &str) -> Chain {
    Chain::start_with(
        pki,
        backend,
        driver,
        &[("--ebpf", "on"), ("--name", "acct")],
    )
}

/// Polls `/metrics` at `addr` until every `(leg, direction, bytes)` of `want` is what
/// `splice_kernel_bytes_total{forwarder="acct",mode=mode}` says (the last bytes are counted
/// when the kernel closes each socket); returns the scrape, or panics with it after `SOON`.
fn wait_kernel(addr: SocketAddr, mode: &str, want: &[(&str, &str, u64)]) -> Metrics {
    let mut last = None;
    let ok = wait_until(SOON, || {
        let m = scrape(addr);
        let all = want.iter().all(|&(leg, dir, v)| {
            kernel(&m, mode, leg, dir) == v as f64
                && m.has(
                    "splice_kernel_bytes_total",
                    &[("mode", mode), ("leg", leg), ("direction", dir)],
                )
        });
        last = Some(m);
        all
    });
    let m = last.expect("scraped once");
    assert!(
        ok,
        "{mode} mode: kernel counts are not {want:?} after {SOON:?}:\n{}",
        m.text
    );
    m
}

fn kernel(m: &Metrics, mode: &str, leg: &str, dir: &str) -> f64 {
    m.value(
        "splice_kernel_bytes_total",
        &[
            ("forwarder", "acct"),
            ("mode", mode),
            ("leg", leg),
            ("direction", dir),
        ],
    )
}

/// Waits until the user-space counter `splice_bytes_total{forwarder="acct",direction=dir}` at
/// `addr` is `want` (it is added as each send completes, which may come after the kernel saw
/// the bytes acknowledged).
fn wait_user(addr: SocketAddr, dir: &str, want: u64) {
    wait_metric(
        addr,
        "splice_bytes_total",
        &[("forwarder", "acct"), ("direction", dir)],
        |v| v == want as f64,
    );
}

/// The TLS hop between the two engines is one TCP connection: when it ended cleanly, what one
/// engine's kernel counted sent and acknowledged on it, the other's counted received, each
/// way; and it carried more than the payload (records add their overhead).
/// The TLS hop's last record (the close_notify) is counted when each end's socket closes:
/// waits (up to `SOON`) for both ends' counts of the hop to agree; the two scrapes.
fn settled_tls_hop(chain: &Chain) -> (Metrics, Metrics) {
    let hop = || {
        let (c, s) = (scrape(chain.client_metrics), scrape(chain.server_metrics));
        let agree = kernel(&c, "client", "upstream", "out")
            == kernel(&s, "server", "downstream", "in")
            && kernel(&c, "client", "upstream", "in") == kernel(&s, "server", "downstream", "out");
        (agree, c, s)
    };
    wait_until(SOON, || hop().0);
    let (_, c, s) = hop();
    (c, s)
}

fn assert_tls_hop(client: &Metrics, server: &Metrics, up: u64, down: u64) {
    let c_out = kernel(client, "client", "upstream", "out");
    let c_in = kernel(client, "client", "upstream", "in");
    let s_in = kernel(server, "server", "downstream", "in");
    let s_out = kernel(server, "server", "downstream", "out");
    assert_eq!(c_out, s_in, "client->server TLS bytes");
    assert_eq!(c_in, s_out, "server->client TLS bytes");
    assert!(c_out > up as f64 && c_in > down as f64, "{c_out} {c_in}");
}

/// A hashed transfer of known size each way through client mode and server mode, on both
/// drivers: the kernel's counts on the plain legs equal the payload sizes and the user-space
/// counters, and the TLS hop's counts agree between the two engines.
#[test]
fn kernel_counts_equal_payloads_and_user_space_counters() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let (backend, reports) = sink_backend(None);
        let chain = chain(&pki, backend.addr, driver);
        for p in [&chain.client, &chain.server] {
            assert!(
                p.wait_log(SOON, |l| l.contains("eBPF accounting loaded")),
                "{}",
                p.log()
            );
        }
        let payload = random_bytes(3 * 1024 * 1024 + 4321, 15);
        let mut s = connect(chain.entry);
        let writer = {
            let mut w = s.try_clone().expect("clone");
            let p = payload.clone();
            thread::spawn(move || {
                w.write_all(&p).expect("write the payload");
                w.shutdown(Shutdown::Write).expect("half-close");
            })
        };
        let (reply, end) = read_until_end(&mut s);
        writer.join().expect("writer");
        assert!(matches!(end, End::Eof), "{driver}: {end:?}");
        let report = reports.recv_timeout(SOON).expect("the sink's report");
        assert_eq!(report.error, None, "{driver}");
        assert_eq!(report.bytes, payload.len() as u64, "{driver}");
        assert_eq!(report.sha256, sha256_hex(&payload), "{driver}");
        assert_eq!(
            reply,
            format!("{} {}\n", payload.len(), sha256_hex(&payload)).as_bytes(),
            "{driver}"
        );
        drop(s);

        let (up, down) = (payload.len() as u64, reply.len() as u64);
        wait_kernel(
            chain.client_metrics,
            "client",
            &[("downstream", "in", up), ("downstream", "out", down)],
        );
        wait_kernel(
            chain.server_metrics,
            "server",
            &[("upstream", "out", up), ("upstream", "in", down)],
        );
        for addr in [chain.client_metrics, chain.server_metrics] {
            wait_user(addr, "down_to_up", up);
            wait_user(addr, "up_to_down", down);
        }
        let (client, server) = settled_tls_hop(&chain);
        assert_tls_hop(&client, &server, up, down);
        stats_command_shows(chain.client_metrics, up, down);
    }
}

/// `splice-engine stats --metrics ADDR` (text and `--json`) shows the client engine's kernel
/// counts on its plain leg beside the user-space counters.
fn stats_command_shows(metrics: SocketAddr, up: u64, down: u64) {
    let run = |json: bool| {
        let addr = metrics.to_string();
        let mut args = vec!["stats", "--metrics", addr.as_str()];
        if json {
            args.push("--json");
        }
        let out = Command::new(BIN).args(&args).output().expect("run stats");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let rows: serde_json::Value = serde_json::from_str(&run(true)).expect("JSON");
    let find = |metric: &str, labels: &[(&str, &str)]| {
        rows.as_array()
            .expect("an array")
            .iter()
            .find(|r| r["metric"] == metric && labels.iter().all(|(k, v)| r["labels"][*k] == *v))
            .unwrap_or_else(|| panic!("no {metric} {labels:?} in {rows:#}"))["bytes"]
            .as_f64()
            .expect("a number")
    };
    let kernel_in = find(
        "splice_kernel_bytes_total",
        &[
            ("forwarder", "acct"),
            ("leg", "downstream"),
            ("direction", "in"),
        ],
    );
    let kernel_out = find(
        "splice_kernel_bytes_total",
        &[
            ("forwarder", "acct"),
            ("leg", "downstream"),
            ("direction", "out"),
        ],
    );
    let user_up = find(
        "splice_bytes_total",
        &[("forwarder", "acct"), ("direction", "down_to_up")],
    );
    assert_eq!((kernel_in, kernel_out), (up as f64, down as f64));
    assert_eq!(user_up, up as f64);
    let text = run(false);
    assert!(
        text.contains("counted by the kernel (eBPF):")
            && text.contains("kernel_bytes_total forwarder=acct"),
        "{text}"
    );
}

/// Many short connections, each closed by the peer first: 25 clients each write a few bytes
/// and close at once (the backend reads to the end and closes), then 25 connections whose
/// backend writes a few bytes and closes first. Every byte is counted, by cookie, in full.
#[test]
fn short_connections_and_peers_that_close_first_are_counted_in_full() {
    const N: usize = 25;
    let pki = Pki::new();
    for driver in DRIVERS {
        // Clients close first; the backend only reads.
        let received = Arc::new(AtomicU64::new(0));
        let got = received.clone();
        let reader = Backend::spawn(move |mut sock| {
            if let Ok((n, _)) = read_hashed(&mut sock) {
                got.fetch_add(n, Ordering::SeqCst);
            }
        });
        let chain1 = chain(&pki, reader.addr, driver);
        let mut sent = 0u64;
        for i in 0..N {
            let payload = random_bytes(1 + i * 997, i as u64);
            let mut s = connect(chain1.entry);
            s.write_all(&payload).expect("write");
            drop(s);
            sent += payload.len() as u64;
        }
        assert!(
            wait_until(SOON, || received.load(Ordering::SeqCst) == sent),
            "{driver}: the backend read {} of {sent} bytes",
            received.load(Ordering::SeqCst)
        );
        wait_kernel(
            chain1.client_metrics,
            "client",
            &[("downstream", "in", sent), ("downstream", "out", 0)],
        );
        wait_kernel(
            chain1.server_metrics,
            "server",
            &[("upstream", "out", sent), ("upstream", "in", 0)],
        );
        wait_user(chain1.client_metrics, "down_to_up", sent);
        wait_user(chain1.server_metrics, "down_to_up", sent);

        // The backend writes and closes first; the clients only read.
        let writer = Backend::spawn(|mut sock| {
            let _ = sock.write_all(&random_bytes(4099, 3));
        });
        let chain2 = chain(&pki, writer.addr, driver);
        for _ in 0..N {
            let mut s = connect(chain2.entry);
            let (got, end) = read_until_end(&mut s);
            assert!(matches!(end, End::Eof), "{driver}: {end:?}");
            assert_eq!(got, random_bytes(4099, 3), "{driver}");
        }
        let total = (N * 4099) as u64;
        wait_kernel(
            chain2.client_metrics,
            "client",
            &[("downstream", "out", total), ("downstream", "in", 0)],
        );
        wait_kernel(
            chain2.server_metrics,
            "server",
            &[("upstream", "in", total), ("upstream", "out", 0)],
        );
        wait_user(chain2.client_metrics, "up_to_down", total);
        wait_user(chain2.server_metrics, "up_to_down", total);
        // No TLS-hop check here: these hops may end with a reset, and the bytes a reset
        // overtakes are received by one kernel but never acknowledged to the other.
    }
}

/// `splice-engine client ... --ebpf MODE` run under `setpriv` without any capability (root's
/// uid, no CAP_BPF, CAP_NET_ADMIN or CAP_SYS_ADMIN); its stderr goes to `log`.
fn without_caps(pki: &Pki, port: u16, mode: &str, log: &Path) -> std::process::Child {
    Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(BIN)
        .args(["client", "--listen"])
        .arg(localhost(port).to_string())
        .args(["--connect", "127.0.0.1:9", "--ca"])
        .arg(&pki.ca.path)
        .args(["--threads", "1", "--log-level", "info", "--ebpf", mode])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).expect("create the log"))
        .spawn()
        .expect("run setpriv (util-linux)")
}

/// Without permission to load eBPF programs, `auto` starts, counts in user space and says
/// why once; `on` refuses to start and names the reason.
#[test]
fn without_permission_auto_falls_back_and_on_fails() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");

    let log = dir.path().join("on.log");
    let mut on = without_caps(&pki, free_port(), "on", &log);
    let status = wait_until(SOON, || on.try_wait().expect("try_wait").is_some());
    if !status {
        let _ = on.kill();
    }
    let text = strip_ansi(&fs::read_to_string(&log).unwrap_or_default());
    assert!(status, "--ebpf on without CAP_BPF kept running:\n{text}");
    assert!(!on.wait().expect("status").success(), "{text}");
    assert!(
        text.contains("eBPF accounting") && text.contains("CAP_BPF"),
        "no clear reason:\n{text}"
    );

    let port = free_port();
    let log = dir.path().join("auto.log");
    let mut auto = without_caps(&pki, port, "auto", &log);
    // Listening, and past the start-up notes (logged once the shards run, after the bind).
    let read = || strip_ansi(&fs::read_to_string(&log).unwrap_or_default());
    let listening = wait_until(SOON, || {
        try_connect(localhost(port)).is_ok() && read().contains("eBPF accounting is not available")
    });
    let _ = auto.kill();
    let _ = auto.wait();
    let text = strip_ansi(&fs::read_to_string(&log).unwrap_or_default());
    assert!(
        listening,
        "--ebpf auto without CAP_BPF did not start:\n{text}"
    );
    let notes: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("eBPF accounting is not available"))
        .collect();
    assert_eq!(notes.len(), 1, "said once, with the reason:\n{text}");
    assert!(
        notes[0].contains("CAP_BPF") && notes[0].contains("user space"),
        "{}",
        notes[0]
    );
}

/// Sends `payload` through `entry` to a sink (which answers its size and hash) and returns
/// the answer, checking it.
fn transfer(entry: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = connect(entry);
    let writer = {
        let mut w = s.try_clone().expect("clone");
        let p = payload.to_vec();
        thread::spawn(move || {
            w.write_all(&p).expect("write the payload");
            w.shutdown(Shutdown::Write).expect("half-close");
        })
    };
    let (reply, end) = read_until_end(&mut s);
    writer.join().expect("writer");
    assert!(matches!(end, End::Eof), "{end:?}");
    assert_eq!(
        reply,
        format!("{} {}\n", payload.len(), sha256_hex(payload)).as_bytes()
    );
    reply
}

/// Two chains (four engines, each loading its own program on the same cgroup) at once, one
/// on each driver, moving different sizes at the same time: each engine's kernel counts are
/// exactly its own transfer's, none of the other chain's sockets.
#[test]
fn two_engines_on_one_host_each_count_only_their_own_sockets() {
    let pki = Pki::new();
    let sizes = [1_000_003usize, 2_500_019];
    let runs: Vec<_> = DRIVERS
        .iter()
        .zip(sizes)
        .map(|(driver, size)| {
            let (backend, reports) = sink_backend(None);
            let chain = chain(&pki, backend.addr, driver);
            for p in [&chain.client, &chain.server] {
                assert!(
                    p.wait_log(SOON, |l| l.contains("eBPF accounting loaded")),
                    "{}",
                    p.log()
                );
            }
            (backend, reports, chain, size)
        })
        .collect();
    let moving: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(i, (_, _, chain, size))| {
            let (entry, size) = (chain.entry, *size);
            thread::spawn(move || transfer(entry, &random_bytes(size, 40 + i as u64)))
        })
        .collect();
    let replies: Vec<Vec<u8>> = moving
        .into_iter()
        .map(|t| t.join().expect("transfer"))
        .collect();
    for ((_, reports, chain, size), reply) in runs.iter().zip(&replies) {
        let report = reports.recv_timeout(SOON).expect("the sink's report");
        assert_eq!(report.bytes, *size as u64);
        let (up, down) = (*size as u64, reply.len() as u64);
        wait_kernel(
            chain.client_metrics,
            "client",
            &[("downstream", "in", up), ("downstream", "out", down)],
        );
        wait_kernel(
            chain.server_metrics,
            "server",
            &[("upstream", "out", up), ("upstream", "in", down)],
        );
        let (client, server) = settled_tls_hop(chain);
        assert_tls_hop(&client, &server, up, down);
    }
}

/// The ids of the BPF objects (`prog_id`, `map_id`, `link_id`) process `pid` holds open, by
/// kind, read from its file descriptors' fdinfo.
fn bpf_ids(pid: i32) -> [Vec<u32>; 3] {
    let mut ids: [Vec<u32>; 3] = Default::default();
    let dir = fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo");
    for entry in dir.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        // A link's fdinfo names its program too (`prog_id`): only its own kind counts.
        let kind = ["link_id:", "map_id:", "prog_id:"].iter().find_map(|k| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| (*k, v)))
        });
        if let Some((k, v)) = kind {
            let i = ["prog_id:", "map_id:", "link_id:"]
                .iter()
                .position(|x| *x == k)
                .expect("a kind");
            ids[i].push(v.trim().parse().expect("an id"));
        }
    }
    ids
}

/// Whether BPF object `kind` (`prog`, `map`, `link`) `id` exists (bpftool, which CI installs).
fn bpf_exists(kind: &str, id: u32) -> bool {
    let out = Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bpftool (apt-get install bpftool; .ci/run does)");
    out.success()
}

/// After an engine with eBPF exits, by SIGTERM (drained) or SIGKILL, its program, link and
/// maps are gone from the kernel, while they existed as it ran.
#[test]
fn programs_links_and_maps_are_gone_after_the_engine_exits() {
    let pki = Pki::new();
    let (backend, _reports) = sink_backend(None);
    let mut chain = chain(&pki, backend.addr, "epoll");
    let mut held = Vec::new();
    for p in [&chain.client, &chain.server] {
        assert!(
            p.wait_log(SOON, |l| l.contains("eBPF accounting loaded")),
            "{}",
            p.log()
        );
        let ids = bpf_ids(p.pid());
        for (kind, list) in ["prog", "map", "link"].iter().zip(&ids) {
            assert!(!list.is_empty(), "{kind}s held: {ids:?}");
            for &id in list {
                assert!(bpf_exists(kind, id), "{kind} {id} exists while it runs");
            }
        }
        held.push(ids);
    }
    transfer(chain.entry, &random_bytes(10_000, 3));
    chain.client.signal(libc::SIGTERM);
    assert!(chain.client.wait_exit(SOON).is_some(), "the client exits");
    drop(chain); // SIGKILL for the server.
    for ids in &held {
        for (kind, list) in ["prog", "map", "link"].iter().zip(ids) {
            for &id in list {
                assert!(
                    wait_until(SOON, || !bpf_exists(kind, id)),
                    "{kind} {id} is gone after the engine exits"
                );
            }
        }
    }
}

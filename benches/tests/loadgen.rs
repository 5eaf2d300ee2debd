//! The load generator's own correctness, over real loopback sockets: every figure it reports is
//! backed by bytes that arrived intact, and damage on the way is reported, never counted.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use splice_bench::backend::{self, Backends};
use splice_bench::load::{self, BulkOpts, ConnectOpts, IdleOpts, RrOpts};

fn backends() -> (tokio::runtime::Runtime, Backends) {
    let rt = backend::runtime(2).expect("runtime");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let b = backend::start(&rt, any, any).expect("backends");
    (rt, b)
}

/// How a [`relay`] treats the client-to-server bytes.
#[derive(Clone, Copy)]
enum Damage {
    /// Pass everything.
    None,
    /// Flip one bit of the byte at this stream offset.
    Flip(u64),
    /// Drop this many bytes at this offset (the rest passes, so the stream stays "valid" TCP).
    Drop(u64, u64),
}

/// A TCP relay on loopback that forwards each connection to `to`, damaging the upstream bytes
/// as told; the way back is passed untouched.
fn relay(to: SocketAddr, damage: Damage) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut down) = c else { return };
            let mut up = TcpStream::connect(to).unwrap();
            let (mut down2, mut up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut up2, &mut down2);
                let _ = down2.shutdown(Shutdown::Write);
            });
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut pos = 0u64;
                loop {
                    let n = match down.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let chunk = &mut buf[..n];
                    let end = pos + n as u64;
                    let out: Vec<u8> = match damage {
                        Damage::None => chunk.to_vec(),
                        Damage::Flip(at) => {
                            if (pos..end).contains(&at) {
                                chunk[(at - pos) as usize] ^= 0x20;
                            }
                            chunk.to_vec()
                        }
                        Damage::Drop(at, len) => chunk
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !(at..at + len).contains(&(pos + *i as u64)))
                            .map(|(_, b)| *b)
                            .collect(),
                    };
                    pos = end;
                    if up.write_all(&out).is_err() {
                        break;
                    }
                }
                let _ = up.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn bulk_opts(target: SocketAddr, streams: usize) -> BulkOpts {
    BulkOpts {
        target,
        streams,
        duration: Duration::from_millis(300),
        chunk: 100_000,
    }
}

#[test]
fn bulk_counts_only_confirmed_bytes() {
    let (_rt, b) = backends();
    let r = load::bulk(&bulk_opts(b.sink, 3));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.per_stream.len(), 3);
    assert!(r.per_stream.iter().all(|&n| n > 0 && n % 100_000 == 0));
    assert_eq!(r.bytes, r.per_stream.iter().sum::<u64>());
    assert!(r.gbit_per_s > 0.0 && r.secs >= 0.3);

    // Through an honest relay the same holds.
    let r = load::bulk(&bulk_opts(relay(b.sink, Damage::None), 1));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.bytes > 0);
}

#[test]
fn bulk_reports_a_changed_byte_where_it_happened() {
    let (_rt, b) = backends();
    let r = load::bulk(&bulk_opts(relay(b.sink, Damage::Flip(123_457)), 1));
    assert_eq!(r.bytes, 0, "a damaged stream counts nothing");
    assert_eq!(r.errors.count, 1);
    assert!(
        r.errors.samples[0].contains("byte 123457 arrived different"),
        "{:?}",
        r.errors
    );
}

#[test]
fn bulk_reports_lost_bytes() {
    let (_rt, b) = backends();
    let r = load::bulk(&bulk_opts(relay(b.sink, Damage::Drop(50_000, 10)), 1));
    assert_eq!(r.bytes, 0);
    // The dropped bytes shift the stream: the sink sees a mismatch at the gap.
    assert!(
        r.errors.samples[0].contains("byte 50000 arrived different"),
        "{:?}",
        r.errors
    );
}

#[test]
fn bulk_reports_a_missing_sink() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let r = load::bulk(&bulk_opts(dead, 2));
    assert_eq!(r.bytes, 0);
    assert_eq!(r.errors.count, 2);
}

#[test]
fn rr_records_one_sample_per_request() {
    let (_rt, b) = backends();
    let r = load::rr(&RrOpts {
        target: b.echo,
        conns: 2,
        size: 100,
        duration: Duration::from_secs(10),
        warmup: 20,
        max_requests: 300,
    });
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        r.requests, 600,
        "max_requests bounds each connection; warm-up not recorded"
    );
    assert_eq!(r.latency.count, 600);
    let l = &r.latency;
    assert!(0.0 < l.p50_us && l.p50_us <= l.p90_us && l.p90_us <= l.p99_us);
    assert!(l.p99_us <= l.p999_us && l.p999_us <= l.max_us * 1.001);
}

#[test]
fn rr_reports_a_wrong_echo() {
    let (_rt, b) = backends();
    let r = load::rr(&RrOpts {
        target: relay(b.echo, Damage::Flip(64 * 5 + 9)),
        conns: 1,
        size: 64,
        duration: Duration::from_secs(10),
        warmup: 0,
        max_requests: 100,
    });
    assert_eq!(r.errors.count, 1);
    assert!(
        r.errors.samples[0].contains("echo of request 5 differs"),
        "{:?}",
        r.errors
    );
    assert_eq!(
        r.requests, 5,
        "requests before the damage were recorded, none after"
    );
}

#[test]
fn connect_counts_connections_that_echoed() {
    let (_rt, b) = backends();
    let r = load::connect_rate(&ConnectOpts {
        target: b.echo,
        workers: 3,
        duration: Duration::from_secs(10),
        size: 32,
        max_per_worker: 50,
    });
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.connections, 150);
    assert_eq!(r.latency.count, 150);
    assert!(r.per_sec > 0.0);

    let r = load::connect_rate(&ConnectOpts {
        target: relay(b.echo, Damage::Flip(3)),
        workers: 1,
        duration: Duration::from_secs(10),
        size: 32,
        max_per_worker: 5,
    });
    assert_eq!(r.connections, 0);
    assert_eq!(r.errors.count, 5);
}

#[test]
fn idle_opens_and_proves_each_connection() {
    let (_rt, b) = backends();
    let idle = load::idle_open(&IdleOpts {
        target: b.echo,
        count: 300,
        threads: 3,
        bytes: 16,
        burst: 1,
    });
    assert!(idle.errors.is_empty(), "{:?}", idle.errors);
    assert_eq!(idle.conns.len(), 300);
    // They stay open: each still echoes.
    for mut c in idle.conns.into_iter().step_by(50) {
        c.write_all(b"still here").unwrap();
        let mut back = [0u8; 10];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"still here");
    }
}

#[test]
fn idle_moves_data_in_bursts() {
    let (_rt, b) = backends();
    let idle = load::idle_open(&IdleOpts {
        target: b.echo,
        count: 100,
        threads: 2,
        bytes: 64 * 1024,
        burst: 25,
    });
    assert!(idle.errors.is_empty(), "{:?}", idle.errors);
    assert_eq!(idle.conns.len(), 100);
    // Each moved its 64 KiB and is still open and quiet: nothing more to read.
    for c in idle.conns.iter().step_by(20) {
        c.set_nonblocking(true).unwrap();
        let mut one = [0u8; 1];
        let r = (&*c).read(&mut one);
        assert_eq!(
            r.map_err(|e| e.kind()).unwrap_err(),
            std::io::ErrorKind::WouldBlock
        );
    }
    // A target that is not there: every connection is an error, none hangs.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let idle = load::idle_open(&IdleOpts {
        target: addr,
        count: 6,
        threads: 2,
        bytes: 64 * 1024,
        burst: 3,
    });
    assert_eq!((idle.conns.len(), idle.errors.count), (0, 6));
}

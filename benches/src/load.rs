//! The load generator: bulk streams, request/response latency, new-connection rate and idle
//! connections, each against one address and bounded in time and count.
//!
//! Plain blocking sockets on plain threads: one thread per stream or worker keeps the generator's
//! own cost low and its timing simple. Every figure is backed by a check that the bytes arrived
//! intact: bulk streams by the sink's [`SinkReport`], echoes by comparing with what was sent.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::backend::SinkReport;
use crate::pattern::{MAX_CHUNK, Pattern};

/// How long a connect, read or write may block before the run gives up on that connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors met during a run: how many, and the first few in words.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Errors {
    /// How many.
    pub count: u64,
    /// The first few, for the report.
    pub samples: Vec<String>,
}

impl Errors {
    const SAMPLES: usize = 8;

    fn add(&mut self, what: String) {
        self.count += 1;
        if self.samples.len() < Self::SAMPLES {
            self.samples.push(what);
        }
    }

    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for s in other.samples {
            if self.samples.len() < Self::SAMPLES {
                self.samples.push(s);
            }
        }
    }

    /// True when nothing went wrong.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// A histogram of nanoseconds, 1 ns to 100 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

impl Latency {
    /// The percentiles of `h` (nanoseconds).
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

fn connect(target: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Bulk-throughput settings.
#[derive(Debug, Clone)]
pub struct BulkOpts {
    /// The sink (or a proxy in front of it).
    pub target: SocketAddr,
    /// Parallel streams.
    pub streams: usize,
    /// How long each stream writes.
    pub duration: Duration,
    /// Bytes per write (at most [`MAX_CHUNK`]).
    pub chunk: usize,
}

/// What a bulk run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BulkResult {
    /// Streams that ran.
    pub streams: usize,
    /// Bytes the sinks confirmed, all streams together.
    pub bytes: u64,
    /// From the common start until the last sink report arrived.
    pub secs: f64,
    /// `bytes` over `secs`, in Gbit/s.
    pub gbit_per_s: f64,
    /// Bytes confirmed per stream.
    pub per_stream: Vec<u64>,
    /// What went wrong.
    pub errors: Errors,
}

/// Writes the pattern on `streams` connections for `duration`, half-closes, and waits for each
/// sink's report. A stream counts only the bytes its sink confirms as received intact.
pub fn bulk(o: &BulkOpts) -> BulkResult {
    let pattern = Arc::new(Pattern::new());
    let barrier = Arc::new(Barrier::new(o.streams + 1));
    let chunk = o.chunk.clamp(1, MAX_CHUNK);
    let handles: Vec<_> = (0..o.streams)
        .map(|i| {
            let (pattern, barrier, target, duration) =
                (pattern.clone(), barrier.clone(), o.target, o.duration);
            thread::spawn(move || {
                let conn = connect(target);
                barrier.wait();
                let start = Instant::now();
                let r = conn.and_then(|s| bulk_stream(s, &pattern, start + duration, chunk));
                (i, r, start.elapsed())
            })
        })
        .collect();
    barrier.wait();
    let mut res = BulkResult {
        streams: o.streams,
        bytes: 0,
        secs: 0.0,
        gbit_per_s: 0.0,
        per_stream: vec![0; o.streams],
        errors: Errors::default(),
    };
    for h in handles {
        let (i, r, took) = h.join().expect("bulk stream thread");
        res.secs = res.secs.max(took.as_secs_f64());
        match r {
            Ok(n) => {
                res.per_stream[i] = n;
                res.bytes += n;
            }
            Err(e) => res.errors.add(format!("stream {i}: {e}")),
        }
    }
    if res.secs > 0.0 {
        res.gbit_per_s = res.bytes as f64 * 8.0 / res.secs / 1e9;
    }
    res
}

fn bulk_stream(mut s: TcpStream, p: &Pattern, until: Instant, chunk: usize) -> io::Result<u64> {
    let mut sent: u64 = 0;
    while Instant::now() < until {
        s.write_all(p.chunk(sent, chunk))?;
        sent += chunk as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut wire = [0u8; SinkReport::LEN];
    s.read_exact(&mut wire).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no report from the sink after {sent} bytes: {e}"),
        )
    })?;
    let report = SinkReport::decode(&wire);
    if let Some(bad) = report.first_bad {
        return Err(io::Error::other(format!(
            "byte {bad} arrived different from what was sent"
        )));
    }
    if report.received != sent {
        return Err(io::Error::other(format!(
            "the sink received {} of {sent} bytes",
            report.received
        )));
    }
    Ok(sent)
}

/// Request/response settings.
#[derive(Debug, Clone)]
pub struct RrOpts {
    /// The echo backend (or a proxy in front of it).
    pub target: SocketAddr,
    /// Connections, each with one request in flight.
    pub conns: usize,
    /// Request (and response) size in bytes, at least 8.
    pub size: usize,
    /// How long to run after the warm-up.
    pub duration: Duration,
    /// Requests per connection not recorded, first.
    pub warmup: u64,
    /// Most requests per connection.
    pub max_requests: u64,
}

/// What a request/response run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RrResult {
    /// Requests answered and recorded.
    pub requests: u64,
    /// Round-trip times.
    pub latency: Latency,
    /// What went wrong.
    pub errors: Errors,
}

/// Sends `size`-byte requests and waits for each echo, recording every round trip.
pub fn rr(o: &RrOpts) -> RrResult {
    let pattern = Arc::new(Pattern::new());
    let handles: Vec<_> = (0..o.conns)
        .map(|i| {
            let (o, pattern) = (o.clone(), pattern.clone());
            thread::spawn(move || {
                let mut h = histogram();
                let r = connect(o.target).and_then(|s| rr_conn(s, &o, &pattern, &mut h));
                (i, r, h)
            })
        })
        .collect();
    let mut all = histogram();
    let mut errors = Errors::default();
    for h in handles {
        let (i, r, hist) = h.join().expect("rr thread");
        all.add(&hist).expect("same histogram bounds");
        if let Err(e) = r {
            errors.add(format!("connection {i}: {e}"));
        }
    }
    RrResult {
        requests: all.len(),
        latency: Latency::of(&all),
        errors,
    }
}

fn rr_conn(mut s: TcpStream, o: &RrOpts, p: &Pattern, h: &mut Histogram<u64>) -> io::Result<()> {
    let size = o.size.clamp(8, MAX_CHUNK);
    let mut req = vec![0u8; size];
    let mut resp = vec![0u8; size];
    let mut until = None;
    for seq in 0..o.warmup + o.max_requests {
        if seq == o.warmup {
            until = Some(Instant::now() + o.duration);
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        req[..8].copy_from_slice(&seq.to_le_bytes());
        req[8..].copy_from_slice(p.chunk(seq * size as u64, size - 8));
        let t0 = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut resp)?;
        let ns = t0.elapsed().as_nanos() as u64;
        if resp != req {
            return Err(io::Error::other(format!(
                "the echo of request {seq} differs"
            )));
        }
        if seq >= o.warmup {
            h.record(ns.max(1)).expect("within bounds");
        }
    }
    Ok(())
}

/// New-connection settings.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    /// The echo backend (or a proxy in front of it).
    pub target: SocketAddr,
    /// Parallel workers, each opening one connection at a time.
    pub workers: usize,
    /// How long to run.
    pub duration: Duration,
    /// Bytes echoed on each connection (proves it reached the backend), at least 1.
    pub size: usize,
    /// Most connections per worker.
    pub max_per_worker: u64,
}

/// What a new-connection run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectResult {
    /// Connections that carried their echo and closed cleanly.
    pub connections: u64,
    /// Wall time.
    pub secs: f64,
    /// `connections` over `secs`.
    pub per_sec: f64,
    /// From `connect()` to the echo's last byte.
    pub latency: Latency,
    /// What went wrong.
    pub errors: Errors,
}

/// Opens connections one after another on each worker: connect, write `size` bytes, read the
/// echo, close. Through a TLS proxy each one is a new handshake.
pub fn connect_rate(o: &ConnectOpts) -> ConnectResult {
    let pattern = Arc::new(Pattern::new());
    let start = Instant::now();
    let until = start + o.duration;
    let handles: Vec<_> = (0..o.workers)
        .map(|_| {
            let (o, pattern) = (o.clone(), pattern.clone());
            thread::spawn(move || {
                let mut h = histogram();
                let mut errors = Errors::default();
                let msg = pattern.chunk(0, o.size.clamp(1, MAX_CHUNK));
                let mut n = 0;
                while n < o.max_per_worker && Instant::now() < until {
                    let t0 = Instant::now();
                    match one_connection(o.target, msg) {
                        Ok(()) => {
                            h.record((t0.elapsed().as_nanos() as u64).max(1))
                                .expect("within bounds");
                        }
                        Err(e) => {
                            errors.add(e.to_string());
                            // A refusing target must not turn this into a busy loop.
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    n += 1;
                }
                (h, errors)
            })
        })
        .collect();
    let mut all = histogram();
    let mut errors = Errors::default();
    for h in handles {
        let (hist, e) = h.join().expect("connect worker");
        all.add(&hist).expect("same histogram bounds");
        errors.merge(e);
    }
    let secs = start.elapsed().as_secs_f64();
    ConnectResult {
        connections: all.len(),
        secs,
        per_sec: all.len() as f64 / secs,
        latency: Latency::of(&all),
        errors,
    }
}

fn one_connection(target: SocketAddr, msg: &[u8]) -> io::Result<()> {
    let mut s = connect(target)?;
    echo_once(&mut s, msg)?;
    s.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 1];
    match s.read(&mut rest)? {
        0 => Ok(()),
        _ => Err(io::Error::other("bytes after the echo")),
    }
}

fn echo_once(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    if back != msg {
        return Err(io::Error::other("the echo differs from what was sent"));
    }
    Ok(())
}

/// Idle-connection settings.
#[derive(Debug, Clone)]
pub struct IdleOpts {
    /// The echo backend (or a proxy in front of it).
    pub target: SocketAddr,
    /// Connections to open and hold.
    pub count: usize,
    /// Threads opening them.
    pub threads: usize,
    /// Bytes each connection sends and reads back before it goes idle (at most
    /// [`MAX_CHUNK`]): 16 proves the path; 64 KiB makes every proxy on the way move real data.
    pub bytes: usize,
    /// Connections each thread opens at once, writing to all of them before reading any echo
    /// back, so that a proxy holds that many busy connections at the same moment.
    pub burst: usize,
}

/// Connections opened by [`idle_open`], each proven end to end by one echo.
pub struct IdleConns {
    /// The open connections.
    pub conns: Vec<TcpStream>,
    /// What went wrong.
    pub errors: Errors,
    /// How long opening took.
    pub secs: f64,
}

/// Opens `count` connections and echoes `bytes` on each (`burst` connections at a time per
/// thread), so that every proxy on the way has finished its handshakes, moved the data, and
/// holds the connection in its idle state.
pub fn idle_open(o: &IdleOpts) -> IdleConns {
    let start = Instant::now();
    let out = Arc::new(Mutex::new((Vec::with_capacity(o.count), Errors::default())));
    let threads = o.threads.clamp(1, o.count.max(1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let out = out.clone();
            let n = o.count / threads + usize::from(t < o.count % threads);
            let (target, burst) = (o.target, o.burst.max(1));
            let msg = Pattern::new()
                .chunk(t as u64, o.bytes.clamp(1, MAX_CHUNK))
                .to_vec();
            thread::spawn(move || {
                let mut left = n;
                while left > 0 {
                    let k = left.min(burst);
                    left -= k;
                    // Connect and send on all of them, then read every echo back.
                    let sent: Vec<_> = (0..k)
                        .map(|_| connect(target).and_then(|mut s| s.write_all(&msg).map(|()| s)))
                        .collect();
                    for r in sent {
                        let r = r.and_then(|mut s| {
                            let mut back = vec![0u8; msg.len()];
                            s.read_exact(&mut back)?;
                            if back != msg {
                                return Err(io::Error::other(
                                    "the echo differs from what was sent",
                                ));
                            }
                            Ok(s)
                        });
                        let mut out = out.lock().expect("idle lock");
                        match r {
                            Ok(s) => out.0.push(s),
                            Err(e) => out.1.add(e.to_string()),
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("idle opener");
    }
    let (conns, errors) = Arc::try_unwrap(out)
        .map_err(|_| ())
        .expect("openers done")
        .into_inner()
        .expect("idle lock");
    IdleConns {
        conns,
        errors,
        secs: start.elapsed().as_secs_f64(),
    }
}

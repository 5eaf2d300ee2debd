//! `splice-load`: the load generator and backends behind `cargo xtask bench`.
//!
//! Each load subcommand runs once and prints one JSON object on stdout. `serve` prints the
//! backends' addresses as JSON once they listen, then serves until killed or `--max-runtime`.
//! `idle` prints a JSON line when its connections are open, holds them until a line (or EOF)
//! arrives on stdin or `--hold` runs out, then closes them.

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::json;
use splice_bench::{backend, load};

#[derive(Parser)]
#[command(
    name = "splice-load",
    version,
    about = "Load generator and backends for `cargo xtask bench`"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sink and echo backends.
    Serve {
        /// Sink address (port 0 = any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        sink: SocketAddr,
        /// Echo address (port 0 = any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        echo: SocketAddr,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Exit after this long, whatever happens (seconds).
        #[arg(long, default_value_t = 3600)]
        max_runtime: u64,
    },
    /// Bulk throughput: write the pattern to a sink for a while on N streams.
    Bulk {
        /// The sink, or a proxy in front of it.
        #[arg(long)]
        target: SocketAddr,
        /// Parallel streams.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Seconds of writing.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Bytes per write.
        #[arg(long, default_value_t = 256 * 1024)]
        chunk: usize,
    },
    /// Request/response latency against an echo backend.
    Rr {
        /// The echo backend, or a proxy in front of it.
        #[arg(long)]
        target: SocketAddr,
        /// Connections, one request in flight on each.
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// Request size in bytes (at least 8).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Seconds of measuring after the warm-up.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Unrecorded requests per connection first.
        #[arg(long, default_value_t = 500)]
        warmup: u64,
        /// Most recorded requests per connection.
        #[arg(long, default_value_t = 10_000_000)]
        max_requests: u64,
    },
    /// New connections per second: connect, echo, close, again.
    Connect {
        /// The echo backend, or a proxy in front of it.
        #[arg(long)]
        target: SocketAddr,
        /// Parallel workers.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Bytes echoed per connection.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Most connections per worker.
        #[arg(long, default_value_t = 1_000_000)]
        max_per_worker: u64,
    },
    /// Open connections, echo once on each (16 bytes, or `--bytes`), and hold them.
    Idle {
        /// The echo backend, or a proxy in front of it.
        #[arg(long)]
        target: SocketAddr,
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Threads opening them.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Bytes each connection sends and reads back before it goes idle (at most 256 KiB).
        #[arg(long, default_value_t = 16)]
        bytes: usize,
        /// Connections each thread opens and sends on at once before reading their echoes.
        #[arg(long, default_value_t = 1)]
        burst: usize,
        /// Most seconds to hold them.
        #[arg(long, default_value_t = 120)]
        hold: u64,
    },
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 24.0 * 3600.0))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Thousands of connections need thousands of descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let out = match cli.cmd {
        Cmd::Serve {
            sink,
            echo,
            threads,
            max_runtime,
        } => {
            let rt = backend::runtime(threads)?;
            let b = backend::start(&rt, sink, echo)?;
            println!("{}", json!({"sink": b.sink, "echo": b.echo}));
            std::thread::sleep(Duration::from_secs(max_runtime));
            return Ok(());
        }
        Cmd::Bulk {
            target,
            streams,
            duration,
            chunk,
        } => serde_json::to_value(load::bulk(&load::BulkOpts {
            target,
            streams,
            duration: secs(duration),
            chunk,
        }))?,
        Cmd::Rr {
            target,
            conns,
            size,
            duration,
            warmup,
            max_requests,
        } => serde_json::to_value(load::rr(&load::RrOpts {
            target,
            conns,
            size,
            duration: secs(duration),
            warmup,
            max_requests,
        }))?,
        Cmd::Connect {
            target,
            workers,
            duration,
            size,
            max_per_worker,
        } => serde_json::to_value(load::connect_rate(&load::ConnectOpts {
            target,
            workers,
            duration: secs(duration),
            size,
            max_per_worker,
        }))?,
        Cmd::Idle {
            target,
            count,
            threads,
            bytes,
            burst,
            hold,
        } => {
            let idle = load::idle_open(&load::IdleOpts {
                target,
                count,
                threads,
                bytes,
                burst,
            });
            println!(
                "{}",
                json!({"open": idle.conns.len(), "secs": idle.secs, "errors": idle.errors})
            );
            // Hold until told (a line or EOF on stdin) or until the hold time runs out.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = std::io::stdin().lock().read_line(&mut String::new());
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(hold));
            drop(idle.conns);
            return Ok(());
        }
    };
    println!("{out}");
    Ok(())
}

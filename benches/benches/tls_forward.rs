//! The userspace TLS record path: two `TlsForward` state machines back to back, in memory.
//!
//! Where the kernel cannot take the session (no kTLS, as on our own machines), every byte a
//! forwarder moves goes through `TlsForward`: read into a pooled buffer, sealed into records,
//! sent, received, opened. This measures that path without sockets or threads, so changes to
//! the state machine, the buffer sizes or the record layer show up without the noise of a
//! network stack: `throughput` pushes 4 MiB per iteration from a client-mode forwarder's plain
//! leg to a server-mode forwarder's plain leg (encrypt once, decrypt once, every byte checked),
//! with our record layer (`own`, the engine's) and with rustls's (`rustls`, the baseline) in the
//! same run; `handshake` makes a new pair per iteration and runs a full handshake (no
//! resumption), which bounds new connections per second per core.

mod common;
mod settings;

use std::hint::black_box;

use common::{Configs, Records, Suite};
use criterion::{BenchmarkId, Criterion, Throughput};

/// Plaintext moved per iteration: 16 plaintext reads of the engine's default 256 KiB.
const TRANSFER: usize = 4 * 1024 * 1024;

fn throughput(c: &mut Criterion) {
    let payload = common::payload(TRANSFER);
    let mut group = c.benchmark_group("tls_forward/throughput");
    group.throughput(Throughput::Bytes(TRANSFER as u64));
    for suite in Suite::ALL {
        let configs = Configs::new(suite);
        for records in Records::ALL {
            let mut pair = configs.pair_with(records);
            pair.handshake();
            group.bench_function(BenchmarkId::new(suite.name(), records.name()), |b| {
                b.iter(|| pair.transfer(black_box(&payload)));
            });
        }
    }
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("tls_forward/handshake");
    group.throughput(Throughput::Elements(1));
    for suite in Suite::ALL {
        let configs = Configs::new(suite);
        group.bench_function(BenchmarkId::from_parameter(suite.name()), |b| {
            b.iter(|| {
                let mut pair = configs.pair();
                pair.handshake();
                pair
            });
        });
    }
    group.finish();
}

fn main() {
    let mut c = settings::criterion(4, 20);
    throughput(&mut c);
    handshake(&mut c);
    c.final_summary();
}

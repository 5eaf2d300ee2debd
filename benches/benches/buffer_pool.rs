//! The per-thread buffer pool of the sans-IO core (`splice_proto::pool`) against the allocator.
//!
//! A userspace-TLS connection takes a buffer from the pool when bytes arrive and gives it back
//! once they have moved on, so a busy shard makes this pair of calls for every read and every
//! buffer of output. The pool is there to make that cycle cost next to nothing and to keep idle
//! connections free of buffer memory; this measures the `take`/`give` cycle against a fresh
//! `Vec::with_capacity` and drop at the sizes the engine really uses (`Buffers::default()`:
//! 256 KiB plaintext reads, 256 KiB + 512 record reads). A pool that costs as much as the
//! allocator is not worth keeping.

mod settings;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use splice_proto::{Buffers, pool};

fn take_give_vs_alloc(c: &mut Criterion) {
    let sizes = Buffers::default();
    let mut group = c.benchmark_group("buffer_pool");
    for (name, cap) in [("plain_256KiB", sizes.plain), ("tls_256KiB+512", sizes.tls)] {
        // Warm the pool, as a running shard's is: the first take allocates.
        pool::give(pool::take(cap));
        group.bench_with_input(BenchmarkId::new("pool_take_give", name), &cap, |b, &cap| {
            b.iter(|| pool::give(black_box(pool::take(black_box(cap)))));
        });
        group.bench_with_input(
            BenchmarkId::new("vec_with_capacity", name),
            &cap,
            |b, &cap| {
                // black_box keeps the compiler from removing the allocation altogether.
                b.iter(|| drop(black_box(Vec::<u8>::with_capacity(black_box(cap)))));
            },
        );
    }
    group.finish();
}

fn main() {
    let mut c = settings::criterion(3, 50);
    take_give_vs_alloc(&mut c);
    c.final_summary();
}

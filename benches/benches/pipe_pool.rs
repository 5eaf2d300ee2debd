//! A shard's pipe pool (`splice_engine::bench_internals::PipePool`) against making and closing pipes.
//!
//! After a kTLS hand-off each connection moves its bytes with `splice(2)` through two pipes of
//! `PIPE_SIZE` bytes. A new pipe is `pipe2` plus `F_SETPIPE_SZ` (which allocates the kernel's
//! ring of pipe buffers) and two `close`s at the end; the shard keeps up to 64 pipes of ended
//! connections for the next ones. This measures what that saves per pipe, which bounds what
//! the pool is worth in connections per second on the kTLS path.

mod settings;

use std::hint::black_box;

use criterion::Criterion;
use splice_engine::bench_internals::{PIPE_SIZE, PipePool, pipe};

fn pooled_vs_fresh(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipe_pool");
    let mut pool = PipePool::new(PIPE_SIZE);
    // Warm the pool, as a running shard's is: the first take makes a pipe.
    let first = pool.take().expect("pipe2");
    pool.give(first);
    group.bench_function("pooled_take_give", |b| {
        b.iter(|| {
            let pipe = pool.take().expect("take a pipe");
            pool.give(black_box(pipe));
        });
    });
    group.bench_function("pipe2_setpipe_sz_close", |b| {
        // Both ends close when the pair drops at the end of the iteration.
        b.iter(|| black_box(pipe(black_box(PIPE_SIZE)).expect("pipe2")));
    });
    group.finish();
}

fn main() {
    let mut c = settings::criterion(3, 50);
    pooled_vs_fresh(&mut c);
    c.final_summary();
}

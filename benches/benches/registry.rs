//! The relay's tunnel registry with many tunnels (`splice_engine::bench_internals::
//! RegistryAtScale`): a peer's admission, the expiry timer's sweep, a device's lookup of its
//! thing's tunnels (two per thing) and one part of a whole listing, at 1,000, 10,000 and
//! 100,000 tunnels (half of them closed); and the whole listing, up to 10,000.
//!
//! Each of the first four holds the registry's lock, on which every shard waits to admit a
//! peer, so none may grow with the number of tunnels. Before the memory store had indexes, at
//! 50,000 tunnels a sweep (once a second) took 164 ms and an admission 1.2 ms on the 2-core
//! bench VM; flat figures across the three sizes are what this checks. A whole listing grows
//! with the list, but holds the lock for one part at a time.

mod settings;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use splice_engine::bench_internals::{RegistryAtScale, RegistryOnDisk};

fn at_scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry");
    for n in [1_000, 10_000, 100_000] {
        let mut r = RegistryAtScale::new(n);
        group.bench_function(BenchmarkId::new("admit", n), |b| b.iter(|| r.admit_one()));
        group.bench_function(BenchmarkId::new("expiry_sweep", n), |b| {
            b.iter(|| r.sweep())
        });
        group.bench_function(BenchmarkId::new("of_thing", n), |b| {
            b.iter(|| black_box(r.of_thing()))
        });
        group.bench_function(BenchmarkId::new("list_part_256", n), |b| {
            b.iter(|| black_box(r.page(256)))
        });
        if n <= 10_000 {
            // Walks the list in parts of 256 (a lock hold each); one hold for all of it
            // took 146 ms at 100,000.
            group.bench_function(BenchmarkId::new("list_all", n), |b| {
                b.iter(|| black_box(r.list_all()))
            });
        }
    }
    group.finish();
}

/// 1,000 peers reconnecting at once to a relay whose registry is a SQLite file (in the
/// system's temporary directory: a figure of that disk): the time until the last one's
/// admission is on disk. With one commit per change this was 0.6 ms per peer on the bench
/// VM; the writer now commits whatever queued up during the previous commit together.
fn reconnect_storm(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = RegistryOnDisk::new(&dir.path().join("relay.sqlite"), 1000);
    let mut group = c.benchmark_group("registry_on_disk");
    group.sample_size(10);
    group.bench_function("reconnect_1000_until_on_disk", |b| {
        b.iter(|| r.reconnect_all())
    });
    group.finish();
}

fn main() {
    let mut c = settings::criterion(2, 30);
    at_scale(&mut c);
    reconnect_storm(&mut c);
    c.final_summary();
}

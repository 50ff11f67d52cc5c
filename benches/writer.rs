//! Writer throughput: 200 simulated cameras at 4 Mbit/s (25 fps, 2 s segments) through the
//! holdfast writer (io_uring writev, grouped fdatasync, RocksDB commit), against the same bytes
//! written with plain `std::fs::File` writes and one `sync_data` in the same run as the baseline.
//!
//! One iteration is 2 s of video of every camera (200 segments, about 200 MB), ending when all
//! of it is durable. Both sides append to one file that lives for the whole benchmark, as a bucket
//! file does (a baseline that deleted its file after each iteration would measure a page cache
//! that never fills, which no recorder has). `cargo bench --bench writer`; criterion prints the
//! throughput of both.

#[path = "../tests/support/synth.rs"]
mod synth;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use holdfast::metrics::Metrics;
use holdfast::store::segment::Segment;
use holdfast::store::writer::{Writer, WriterConfig};
use holdfast::store::Store;
use holdfast::time::{Time90k, TICKS_PER_SEC};

const CAMERAS: usize = 200;
/// 4 Mbit/s at 25 fps.
const AVG_FRAME: usize = 4_000_000 / 8 / 25;
const FRAMES_PER_SEGMENT: usize = 50;

fn make_segments(round: i64) -> Vec<Segment> {
    let mut rng = synth::rng(round as u64);
    let pool = synth::pool(&mut rng, 64 << 20);
    let start = Time90k::now().add_ticks(round * 2 * TICKS_PER_SEC);
    (0..CAMERAS)
        .map(|c| {
            synth::segment(
                &mut rng,
                &pool,
                &format!("cam-{c:03}"),
                "four-weeks",
                start,
                FRAMES_PER_SEGMENT,
                AVG_FRAME,
            )
        })
        .collect()
}

fn bench_writer(c: &mut Criterion) {
    let segments = make_segments(0);
    let bytes: u64 = segments.iter().map(|s| s.payload_len()).sum();
    let mut group = c.benchmark_group("writer_200cams_4mbit");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));

    let bench_dir = std::env::var_os("HOLDFAST_BENCH_DIR").map(std::path::PathBuf::from);
    let tmp = |name: &str| match &bench_dir {
        Some(d) => tempfile::Builder::new().prefix(name).tempdir_in(d).unwrap(),
        None => tempfile::Builder::new().prefix(name).tempdir().unwrap(),
    };

    let dir = tmp("holdfast-bench-std");
    let mut f = std::fs::File::create(dir.path().join("bucket.seg")).unwrap();
    group.bench_function("std_fs_baseline", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let mut hbuf = Vec::new();
                for s in &segments {
                    hbuf.clear();
                    s.header().unwrap().encode(&mut hbuf).unwrap();
                    f.write_all(&hbuf).unwrap();
                    for fr in &s.frames {
                        f.write_all(&fr.data).unwrap();
                    }
                }
                f.sync_data().unwrap();
                total += t0.elapsed();
            }
            total
        })
    });

    drop(f);
    drop(dir);

    let dir = tmp("holdfast-bench-writer");
    let (store, _) = Store::open(dir.path(), 3600).unwrap();
    let writer = Writer::spawn(
        Arc::new(store),
        WriterConfig {
            bucket_secs: 3600,
            sync_interval: Duration::from_secs(1),
            queue_limit_bytes: 4 << 30,
            queue_limit_segments: 100_000,
        },
        Arc::new(Metrics::new()),
        None,
    )
    .unwrap();
    let handle = writer.handle();
    let mut round = 1;
    group.bench_function("holdfast_writer", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Fresh start times each round, so every segment is a new index entry.
                let segs = make_segments(round);
                round += 1;
                let t0 = Instant::now();
                for s in segs {
                    handle.submit(s).unwrap();
                }
                assert!(handle.flush());
                total += t0.elapsed();
            }
            total
        })
    });
    group.finish();
    writer.shutdown();
}

criterion_group!(benches, bench_writer);
criterion_main!(benches);

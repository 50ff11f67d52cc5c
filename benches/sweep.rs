//! Sweep cost: expiring one 1-hour bucket out of 28 days x 24 buckets of index entries, for 50 and
//! 500 cameras (4 synthetic segments per camera-hour, small payloads), against the same work done
//! the way recorders with one file per segment do it (Moonfire NVR, Frigate): delete every
//! segment's index row and unlink every segment's file.
//!
//! `cargo bench --bench sweep`. Criterion reports time per bucket for each; the holdfast figure
//! should not grow with the number of cameras, the baseline's grows linearly.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use holdfast::config::MinFree;
use holdfast::metrics::Metrics;
use holdfast::retention::holds::Holds;
use holdfast::retention::sweeper::{Sweeper, SweeperConfig};
use holdfast::store::index::{BucketInfo, IndexBatch, SegmentEntry};
use holdfast::store::writer::{Writer, WriterConfig};
use holdfast::store::Store;
use holdfast::time::{Time90k, TICKS_PER_SEC};

const HOUR: i64 = 3600 * TICKS_PER_SEC;
const BUCKETS: i64 = 28 * 24;
const SEGS_PER_CAMERA_HOUR: i64 = 4;
const RECORD: u64 = 256;
const POLICY: &str = "four-weeks";

fn entry(bucket: Time90k, camera: usize, k: i64, offset: u64) -> SegmentEntry {
    SegmentEntry {
        policy: POLICY.into(),
        bucket,
        camera: format!("cam-{camera:03}"),
        start: bucket.add_ticks(k * HOUR / SEGS_PER_CAMERA_HOUR),
        offset,
        header_len: 64,
        payload_len: RECORD - 64,
        duration: (HOUR / SEGS_PER_CAMERA_HOUR) as u32,
        frame_count: 25,
        codec_id: 1,
        payload_crc: 0,
    }
}

/// 28 days of buckets for `cameras` cameras: index entries, bucket records and bucket files of
/// the right size (sparse: the bytes themselves do not matter to a sweep).
struct Farm {
    _dir: tempfile::TempDir,
    sweeper: Sweeper,
    _writer: Writer,
    t0: Time90k,
    next: i64,
}

fn build(cameras: usize) -> Farm {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 3600).unwrap();
    let store = Arc::new(store);
    let t0 = Time90k::now()
        .add_ticks(-(BUCKETS + 2) * HOUR)
        .floor_to(3600);
    std::fs::create_dir_all(store.policy_dir(POLICY)).unwrap();
    for b in 0..BUCKETS {
        let start = t0.add_ticks(b * HOUR);
        let mut info = BucketInfo::empty(POLICY, start, 3600);
        let mut batch = IndexBatch::default();
        let mut offset = 0;
        for c in 0..cameras {
            for k in 0..SEGS_PER_CAMERA_HOUR {
                let e = entry(start, c, k, offset);
                offset += RECORD;
                batch.put_segment(store.index(), &e);
                info.add(&e);
            }
        }
        batch.put_bucket(store.index(), &info);
        store.index().commit(batch, false).unwrap();
        let f = std::fs::File::create(store.bucket_path(POLICY, start)).unwrap();
        f.set_len(offset).unwrap();
    }
    let metrics = Arc::new(Metrics::new());
    let writer = Writer::spawn(
        store.clone(),
        WriterConfig::default(),
        metrics.clone(),
        None,
    )
    .unwrap();
    let holds = Arc::new(Holds::load(store.clone()).unwrap());
    let sweeper = Sweeper::new(
        store,
        holds,
        writer.handle(),
        SweeperConfig {
            policies: BTreeMap::from([(POLICY.to_owned(), Duration::from_secs(1))]),
            interval: Duration::from_secs(60),
            min_free: MinFree::Bytes(0),
            keytags: Default::default(),
            camera_sites: Default::default(),
            camera_policies: Default::default(),
        },
        metrics,
    );
    Farm {
        _dir: dir,
        sweeper,
        _writer: writer,
        t0,
        next: 0,
    }
}

fn bench_sweep(c: &mut Criterion) {
    let mut group = c.benchmark_group("sweep_one_bucket_of_28d");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for cameras in [50usize, 500] {
        let mut farm = build(cameras);
        group.bench_with_input(
            BenchmarkId::new("holdfast_bucket_expiry", cameras),
            &cameras,
            |b, &cameras| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        if farm.next >= BUCKETS {
                            farm = build(cameras);
                        }
                        // A sweep at the moment exactly one more bucket is due.
                        farm.next += 1;
                        let now = farm.t0.add_ticks(farm.next * HOUR);
                        let t = Instant::now();
                        let r = farm.sweeper.sweep(now).unwrap();
                        total += t.elapsed();
                        assert_eq!(r.buckets_expired, 1, "{r:?}");
                    }
                    total
                })
            },
        );

        // Baseline: one file per segment, one index row per segment.
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 3600).unwrap();
        let files = dir.path().join("segments");
        std::fs::create_dir_all(&files).unwrap();
        let start = Time90k::now().floor_to(3600);
        group.bench_with_input(
            BenchmarkId::new("file_per_segment_baseline", cameras),
            &cameras,
            |b, &cameras| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let mut batch = IndexBatch::default();
                        let mut entries = Vec::new();
                        for c in 0..cameras {
                            for k in 0..SEGS_PER_CAMERA_HOUR {
                                let e = entry(start, c, k, 0);
                                let path = files.join(format!("{}-{k}.mp4", e.camera));
                                std::fs::File::create(&path)
                                    .unwrap()
                                    .write_all(&[0u8; RECORD as usize])
                                    .unwrap();
                                batch.put_segment(store.index(), &e);
                                entries.push((e, path));
                            }
                        }
                        store.index().commit(batch, false).unwrap();
                        let t = Instant::now();
                        let mut batch = IndexBatch::default();
                        for (e, _) in &entries {
                            batch.delete_segment(store.index(), e);
                        }
                        store.index().commit(batch, true).unwrap();
                        for (_, path) in &entries {
                            std::fs::remove_file(path).unwrap();
                        }
                        holdfast::store::sync_dir(&files).unwrap();
                        total += t.elapsed();
                    }
                    total
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_sweep);
criterion_main!(benches);

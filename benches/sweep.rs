//! Sweep cost: expiring one 1-hour bucket out of 28 days x 24 buckets of index entries, for 50 and
//! 500 cameras (4 synthetic segments per camera-hour, small payloads), against the same work done
//! the way recorders with one file per segment do it (Moonfire NVR, Frigate): delete every
//! segment's index row and unlink every segment's file.
//!
//! `cargo bench --bench sweep`. Criterion reports time per bucket for each; the holdfast figure
//! should not grow with the number of cameras, the baseline's grows linearly.
//!
//! Second group (issue 9 point 6): a site-wide hold over 200 cameras x 7 days of index entries.
//! What is measured, exactly (the baseline is an emulation, not the old code run as a whole):
//!
//! - `scrape_ledger`: a `/metrics` scrape's retention part today (`retention_gauges`: bucket
//!   records, one `stat` per bucket file, pinned bytes from the ledger).
//! - `scrape_old_pinned_walk_only`: only the part of the old scrape that grew with what is held,
//!   the walk of every held segment (`pinned_bytes_full`, the old computation, kept in the tree
//!   as the reference the tests compare the ledger with). The old scrape also read the bucket
//!   records and stat'ed the files, so its real cost was this plus roughly `scrape_ledger`.
//! - `sweep_one_bucket_ledger`: today's sweep expiring one bucket.
//! - `sweep_one_bucket_plus_old_pinned_walk`: today's sweep plus that walk, emulating what the
//!   old sweep added on top (it recomputed pinned bytes by the walk at every sweep). The old
//!   sweep differed in other ways too (it did not re-check expired buckets through the ledger's
//!   ended pins, nor judge buckets of policies that left the config); those costs are O(buckets)
//!   and not emulated. So this is "today's sweep + the old per-sweep walk", not the old sweep.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use holdfast::config::MinFree;
use holdfast::metrics::Metrics;
use holdfast::retention::holds::{Holds, NewHold};
use holdfast::retention::ledger::pinned_bytes_full;
use holdfast::retention::sweeper::{retention_gauges, Sweeper, SweeperConfig};
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
    store: Arc<Store>,
    holds: Arc<Holds>,
    metrics: Arc<Metrics>,
    cfg: SweeperConfig,
}

fn build(cameras: usize) -> Farm {
    build_days(cameras, BUCKETS)
}

fn build_days(cameras: usize, buckets: i64) -> Farm {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 3600).unwrap();
    let store = Arc::new(store);
    let t0 = Time90k::now()
        .add_ticks(-(buckets + 2) * HOUR)
        .floor_to(3600);
    std::fs::create_dir_all(store.policy_dir(POLICY)).unwrap();
    for b in 0..buckets {
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
    let cfg = SweeperConfig {
        policies: BTreeMap::from([(POLICY.to_owned(), Duration::from_secs(1))]),
        interval: Duration::from_secs(60),
        min_free: MinFree::Bytes(0),
        keytags: Default::default(),
        camera_sites: Default::default(),
        camera_policies: Default::default(),
    };
    let sweeper = Sweeper::new(
        store.clone(),
        holds.clone(),
        writer.handle(),
        cfg.clone(),
        metrics.clone(),
    );
    Farm {
        _dir: dir,
        sweeper,
        _writer: writer,
        t0,
        next: 0,
        store,
        holds,
        metrics,
        cfg,
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

const HELD_CAMERAS: usize = 200;
const HELD_BUCKETS: i64 = 7 * 24;

/// A farm of 200 cameras x 7 days with one hold over every camera and all of it.
fn held_farm() -> Farm {
    let farm = build_days(HELD_CAMERAS, HELD_BUCKETS);
    farm.holds
        .place(
            NewHold {
                cameras: (0..HELD_CAMERAS).map(|c| format!("cam-{c:03}")).collect(),
                site: Some("site".into()),
                from: farm.t0,
                to: Time90k::now().add_ticks(24 * HOUR),
                reason: "site-wide incident".into(),
                reference: "BENCH-1".into(),
                requested_by: "police".into(),
                expires_at: None,
                keytags: false,
                camera_sites: Default::default(),
            },
            "bench",
            Time90k::now(),
        )
        .unwrap();
    farm
}

fn bench_site_hold(c: &mut Criterion) {
    let mut group = c.benchmark_group("site_hold_200_cameras_7d");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    let farm = held_farm();
    let now = Time90k::now();
    let index = farm.store.index();
    let snap = farm.holds.snapshot();
    let full = pinned_bytes_full(index, &snap, now).unwrap();
    let entries = HELD_CAMERAS as u64 * HELD_BUCKETS as u64 * SEGS_PER_CAMERA_HOUR as u64;
    assert_eq!(full, entries * RECORD, "the hold pins every entry");
    eprintln!(
        "site_hold_200_cameras_7d: {entries} held index entries. Baselines are emulations: \
         `scrape_old_pinned_walk_only` is only the old scrape's walk of every held segment \
         (pinned_bytes_full); `sweep_one_bucket_plus_old_pinned_walk` is today's sweep plus that \
         walk. Neither is the pre-issue-9 code run as a whole (see the bench's doc)."
    );
    group.bench_function("scrape_old_pinned_walk_only", |b| {
        b.iter(|| pinned_bytes_full(index, &snap, now).unwrap())
    });
    group.bench_function("scrape_ledger", |b| {
        b.iter(|| {
            retention_gauges(&farm.store, &farm.holds, &farm.cfg, &farm.metrics, now).unwrap();
        })
    });
    assert_eq!(
        holdfast::metrics::Metrics::encode(&farm.metrics)
            .lines()
            .find(|l| l.starts_with("holdfast_pinned_bytes "))
            .unwrap(),
        format!("holdfast_pinned_bytes {full}")
    );
    drop(farm);

    for baseline in [false, true] {
        let mut farm = held_farm();
        let name = if baseline {
            "sweep_one_bucket_plus_old_pinned_walk"
        } else {
            "sweep_one_bucket_ledger"
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if farm.next >= HELD_BUCKETS {
                        farm = held_farm();
                    }
                    farm.next += 1;
                    let now = farm.t0.add_ticks(farm.next * HOUR);
                    let t = Instant::now();
                    let r = farm.sweeper.sweep(now).unwrap();
                    if baseline {
                        let snap = farm.holds.snapshot();
                        pinned_bytes_full(farm.store.index(), &snap, now).unwrap();
                    }
                    total += t.elapsed();
                    assert_eq!(r.buckets_expired, 1, "{r:?}");
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sweep, bench_site_hold);
criterion_main!(benches);

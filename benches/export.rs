//! Export speed: time to first byte and throughput of a 15-minute export of one camera, with an
//! index of 28 days x 200 cameras of 2 s segments (about 242 million entries), old path against
//! new path in the same run.
//!
//! The index is synthetic and built fast: one RocksDB SST file per one-hour bucket (written with
//! `SstFileWriter`, ingested without a copy), cached between runs under `HOLDFAST_BENCH_DIR` (or
//! `target/holdfast-bench/`) in a directory named after the index format version, the days and
//! the cameras; the time it took is printed. The bucket files of the exported window are real:
//! records encoded by the real segment encoder at the offsets their entries name, 200 cameras
//! interleaved in time order as the writer lays them out. The exported camera records 4 Mbit/s
//! (25 fps, 50 frames per segment); the other 199 cameras' records in the window are small (about
//! 2 kB of payload) so that the window's files take about 0.7 GB instead of 90 GB; records
//! outside the window are never read and never written (the files are sparse there).
//!
//! Measured, old path (`Index::camera_segments`, an `open` and a header read per segment, then
//! every record opened and read whole again to send it) against the new one (`export::plan`:
//! one `open` per bucket file, headers read by a few threads; `send_payloads`: payloads only):
//! - `ttfb_warm/*`, `ttfb_cold/*`: the plan and the MP4 header (`ftyp`, `moov`, `mdat` header),
//!   i.e. everything before the first byte can leave (the logbook's own sync aside). Cold drops
//!   the page cache before each iteration (root only; skipped with a note otherwise).
//! - `throughput_warm/*`, `throughput_cold/*`: the whole export, payload bytes counted.
//!
//! `HOLDFAST_BENCH_EXPORT_DAYS` and `HOLDFAST_BENCH_EXPORT_CAMERAS` scale the index down (a
//! quick run); `cargo bench --bench export`, under `flock /work/bench.lock` on a shared machine.

#[path = "../tests/support/synth.rs"]
mod synth;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use holdfast::export::{self, mp4, Plan};
use holdfast::store::index::{
    segment_key, BucketInfo, IndexBatch, SegmentEntry, CF_SEGMENTS, INDEX_FORMAT,
};
use holdfast::store::Store;
use holdfast::time::{Time90k, TICKS_PER_SEC};

const POLICY: &str = "four-weeks";
const BUCKET_SECS: i64 = 3600;
const SEGMENT_SECS: i64 = 2;
const FRAMES: usize = 50;
/// 4 Mbit/s at 25 fps.
const AVG_FRAME: usize = 4_000_000 / 8 / 25;
/// Frame size of the other cameras' records in the window.
const SMALL_FRAME: usize = 40;
/// Bytes a record outside the window is said to take (never written or read).
const NOMINAL_RECORD: u64 = 1 << 20;
/// The camera exported.
const CAMERA: &str = "cam-000";
/// Start of the 28 days (a fixed time, so the cached index stays valid).
const EPOCH: &str = "2026-10-01T00:00:00Z";

struct Shape {
    days: i64,
    cameras: usize,
}

impl Shape {
    fn from_env() -> Shape {
        let n = |v: &str, d: usize| synth::env_count(v, d);
        Shape {
            days: n("HOLDFAST_BENCH_EXPORT_DAYS", 28) as i64,
            cameras: n("HOLDFAST_BENCH_EXPORT_CAMERAS", 200),
        }
    }

    fn epoch(&self) -> Time90k {
        Time90k::parse_rfc3339(EPOCH).unwrap()
    }

    /// The exported window: 15 minutes across the last hour boundary of the last day but one
    /// (two bucket files).
    fn window(&self) -> (Time90k, Time90k) {
        let from = self
            .epoch()
            .add_ticks(((self.days - 1) * 86_400 - 600) * TICKS_PER_SEC);
        (from, from.add_ticks(900 * TICKS_PER_SEC))
    }

    fn camera(c: usize) -> String {
        format!("cam-{c:03}")
    }
}

/// Where the cached store lives.
fn cache_dir(shape: &Shape) -> PathBuf {
    let base = match std::env::var_os("HOLDFAST_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            // target/release/deps/export-HASH -> target/holdfast-bench
            let exe = std::env::current_exe().unwrap();
            exe.ancestors().nth(3).unwrap().join("holdfast-bench")
        }
    };
    base.join(format!(
        "export-index-v{}-{}d-{}c",
        String::from_utf8_lossy(INDEX_FORMAT),
        shape.days,
        shape.cameras
    ))
}

/// A segment of `camera` at `start`, with real frames when in the window.
fn real_segment(
    rng: &mut synth::TestRng,
    pool: &bytes::Bytes,
    camera: &str,
    start: Time90k,
) -> holdfast::store::segment::Segment {
    let avg = if camera == CAMERA {
        AVG_FRAME
    } else {
        SMALL_FRAME
    };
    synth::segment(rng, pool, camera, POLICY, start, FRAMES, avg)
}

/// Builds the store (index and the window's bucket files) in `dir`.
fn build(shape: &Shape, dir: &Path) {
    let t0 = Instant::now();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let store = Store::open_without_recovery(dir).unwrap();
    let index = store.index();
    let codec = synth::codec(0x10);
    let mut batch = IndexBatch::default();
    batch.put_codec(index, codec.id, &codec.avcc);
    index.commit(batch, true).unwrap();

    let (wfrom, wto) = shape.window();
    // Records that may be read: every segment overlapping the window, plus one each side.
    let real_from = wfrom.add_ticks(-2 * SEGMENT_SECS * TICKS_PER_SEC);
    let real_to = wto.add_ticks(2 * SEGMENT_SECS * TICKS_PER_SEC);
    let mut rng = synth::rng(11);
    let pool = synth::pool(&mut rng, 16 << 20);
    // The header of a record outside the window: all the same length.
    let nominal_header = {
        let mut v = Vec::new();
        real_segment(&mut rng, &pool, &Shape::camera(1), shape.epoch())
            .header()
            .unwrap()
            .encode(&mut v)
            .unwrap();
        v.len() as u32
    };
    let cameras: Vec<String> = (0..shape.cameras).map(Shape::camera).collect();
    let slots = (BUCKET_SECS / SEGMENT_SECS) as usize;
    let seg_ticks = SEGMENT_SECS * TICKS_PER_SEC;
    let sst_dir = dir.join("sst");
    std::fs::create_dir_all(&sst_dir).unwrap();
    let opts = {
        let mut o = rocksdb::Options::default();
        o.set_compression_type(rocksdb::DBCompressionType::None);
        o
    };
    let mut ssts = Vec::new();
    let mut batch = IndexBatch::default();
    let mut entries = 0u64;
    for h in 0..shape.days * 24 {
        let bucket = shape.epoch().add_ticks(h * BUCKET_SECS * TICKS_PER_SEC);
        let bucket_end = bucket.add_ticks(BUCKET_SECS * TICKS_PER_SEC);
        let mut info = BucketInfo::empty(POLICY, bucket, BUCKET_SECS as u32);
        info.retention_secs = Some(28 * 86_400);
        let path = dir.join(format!("sst/{h:05}.sst"));
        let mut w = rocksdb::SstFileWriter::create(&opts);
        w.open(&path).unwrap();
        if bucket_end > real_from && bucket < real_to {
            // A bucket of the window: real records, laid out in time order, entries sorted.
            let file = {
                std::fs::create_dir_all(store.policy_dir(POLICY)).unwrap();
                std::fs::File::create(store.bucket_path(POLICY, bucket)).unwrap()
            };
            let mut kv: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(slots * cameras.len());
            let mut offset = 0u64;
            let mut buf = Vec::new();
            for s in 0..slots {
                let start = bucket.add_ticks(s as i64 * seg_ticks);
                let real = start >= real_from && start < real_to;
                buf.clear();
                let slot_offset = offset;
                for cam in &cameras {
                    let e = if real {
                        let seg = real_segment(&mut rng, &pool, cam, start);
                        let header = seg.header().unwrap();
                        let at = buf.len();
                        header.encode(&mut buf).unwrap();
                        let header_len = (buf.len() - at) as u32;
                        for f in &seg.frames {
                            buf.extend_from_slice(&f.data);
                        }
                        SegmentEntry {
                            policy: POLICY.into(),
                            bucket,
                            camera: cam.clone(),
                            start,
                            offset,
                            header_len,
                            payload_len: seg.payload_len(),
                            duration: seg.duration() as u32,
                            frame_count: FRAMES as u32,
                            codec_id: codec.id,
                            payload_crc: header.payload_crc,
                        }
                    } else {
                        nominal(cam, bucket, start, offset, nominal_header, codec.id)
                    };
                    offset = e.end_offset();
                    info.add(&e);
                    kv.push((e.key(), e.encode_value()));
                }
                if real {
                    file.write_all_at(&buf, slot_offset).unwrap();
                }
            }
            file.sync_all().unwrap();
            kv.sort_unstable();
            for (k, v) in &kv {
                w.put(k, v).unwrap();
            }
            entries += kv.len() as u64;
        } else {
            // Camera-major key order; offsets as the time-major layout would give them.
            let n = cameras.len() as u64;
            for (c, cam) in cameras.iter().enumerate() {
                for s in 0..slots {
                    let start = bucket.add_ticks(s as i64 * seg_ticks);
                    let offset = (s as u64 * n + c as u64) * NOMINAL_RECORD;
                    let e = nominal(cam, bucket, start, offset, nominal_header, codec.id);
                    info.add(&e);
                    w.put(segment_key(POLICY, bucket, cam, start), e.encode_value())
                        .unwrap();
                }
            }
            entries += n * slots as u64;
        }
        w.finish().unwrap();
        ssts.push(path);
        batch.put_bucket(index, &info);
        if h % 24 == 23 {
            eprintln!(
                "export bench: day {} of {} written ({entries} entries, {:.0} s)",
                h / 24 + 1,
                shape.days,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    index.commit(batch, true).unwrap();
    let cf = index.db().cf_handle(CF_SEGMENTS).unwrap();
    let mut io = rocksdb::IngestExternalFileOptions::default();
    io.set_move_files(true);
    index
        .db()
        .ingest_external_file_cf_opts(&cf, &io, ssts)
        .unwrap();
    index.flush().unwrap();
    drop(store);
    let _ = std::fs::remove_dir_all(&sst_dir);
    let size = dir_size(&dir.join("index"));
    let files = dir_size(&dir.join("buckets"));
    std::fs::write(dir.join("complete"), format!("{entries}\n")).unwrap();
    eprintln!(
        "export bench: built {entries} index entries ({:.1} GB of index, {:.2} GB of bucket \
         files allocated) in {:.0} s",
        size as f64 / 1e9,
        files as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
}

/// The entry of a record outside the window (never read).
fn nominal(
    cam: &str,
    bucket: Time90k,
    start: Time90k,
    offset: u64,
    header_len: u32,
    codec_id: u64,
) -> SegmentEntry {
    SegmentEntry {
        policy: POLICY.into(),
        bucket,
        camera: cam.into(),
        start,
        offset,
        header_len,
        payload_len: NOMINAL_RECORD - u64::from(header_len),
        duration: (SEGMENT_SECS * TICKS_PER_SEC) as u32,
        frame_count: FRAMES as u32,
        codec_id,
        payload_crc: 0,
    }
}

/// Allocated bytes under a directory.
fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

/// The old plan: the index lookup, then an `open` and a header read per segment.
fn old_plan(store: &Store, from: Time90k, to: Time90k) -> Plan {
    let entries = store.index().camera_segments(CAMERA, from, to).unwrap();
    export::plan_from_headers(
        CAMERA,
        from,
        to,
        entries.into_iter().map(|e| {
            let h = store.read_segment_header(&e).unwrap();
            (e, h, None)
        }),
    )
}

/// The old send: every record opened and read whole (header and payload) again.
fn old_send(store: &Store, plan: &Plan, mut send: impl FnMut(bytes::Bytes)) {
    for c in &plan.chunks {
        let (_, payload) = store.read_segment(&c.entry).unwrap();
        let payload = bytes::Bytes::from(payload);
        let start = c.payload_offset as usize;
        send(payload.slice(start..start + c.len as usize));
    }
}

fn new_plan(store: &Store, from: Time90k, to: Time90k) -> Plan {
    export::plan(store, CAMERA, from, to).unwrap()
}

/// Drops the page cache (root only). False when not permitted.
fn drop_caches() -> bool {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn bench_export(c: &mut Criterion) {
    let shape = Shape::from_env();
    let dir = cache_dir(&shape);
    if dir.join("complete").exists() {
        eprintln!("export bench: using the cached store in {}", dir.display());
    } else {
        eprintln!(
            "export bench: building a store of {} days x {} cameras in {}",
            shape.days,
            shape.cameras,
            dir.display()
        );
        build(&shape, &dir);
    }
    let t = Instant::now();
    let store = Arc::new(Store::open_without_recovery(&dir).unwrap());
    eprintln!(
        "export bench: store opened in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let (from, to) = shape.window();

    // The two paths agree on the layout, byte for byte.
    let (old, mut new) = (old_plan(&store, from, to), new_plan(&store, from, to));
    let head = mp4::header(&new).unwrap();
    assert_eq!(mp4::header(&old).unwrap(), head);
    assert_eq!(new.samples.len(), 450 * FRAMES);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    old_send(&store, &old, |x| a.extend_from_slice(&x));
    export::send_payloads(&store, &mut new, |x| {
        b.extend_from_slice(&x);
        true
    })
    .unwrap();
    assert!(a == b && a.len() as u64 == new.payload_len());
    drop((a, b));
    let bytes = head.len() as u64 + new.payload_len();
    let t = Instant::now();
    let n = store
        .index()
        .camera_segments(CAMERA, from, to)
        .unwrap()
        .len();
    eprintln!(
        "export bench: {} segments, {} samples, {:.1} MB; index lookup alone {:.2} ms (warm)",
        n,
        new.samples.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64() * 1e3
    );

    let cold = drop_caches();
    if !cold {
        eprintln!("export bench: cannot drop the page cache (not root): cold runs skipped");
    }

    type PlanFn = fn(&Store, Time90k, Time90k) -> Plan;
    let paths: [(&str, PlanFn); 2] = [("old", old_plan), ("new", new_plan)];

    let mut g = c.benchmark_group("export_ttfb_warm");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for (name, f) in paths {
        g.bench_function(name, |b| {
            b.iter(|| mp4::header(&f(&store, from, to)).unwrap())
        });
    }
    g.finish();

    if cold {
        let mut g = c.benchmark_group("export_ttfb_cold");
        g.sample_size(10);
        g.sampling_mode(SamplingMode::Flat);
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(1));
        for (name, f) in paths {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        drop_caches();
                        let t = Instant::now();
                        std::hint::black_box(mp4::header(&f(&store, from, to)).unwrap());
                        total += t.elapsed();
                    }
                    total
                })
            });
        }
        g.finish();
    }

    let whole = |old: bool| {
        let mut sent = 0u64;
        if old {
            let p = old_plan(&store, from, to);
            sent += mp4::header(&p).unwrap().len() as u64;
            old_send(&store, &p, |x| sent += x.len() as u64);
        } else {
            let mut p = new_plan(&store, from, to);
            sent += mp4::header(&p).unwrap().len() as u64;
            export::send_payloads(&store, &mut p, |x| {
                sent += x.len() as u64;
                true
            })
            .unwrap();
        }
        assert_eq!(sent, bytes);
    };
    let modes: &[(&str, bool)] = if cold {
        &[("throughput_warm", false), ("throughput_cold", true)]
    } else {
        &[("throughput_warm", false)]
    };
    for (group, is_cold) in modes {
        let mut g = c.benchmark_group(format!("export_{group}"));
        g.throughput(Throughput::Bytes(bytes));
        g.sample_size(10);
        g.sampling_mode(SamplingMode::Flat);
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(if *is_cold { 3 } else { 5 }));
        for (name, old) in [("old", true), ("new", false)] {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        if *is_cold {
                            drop_caches();
                        }
                        let t = Instant::now();
                        whole(old);
                        total += t.elapsed();
                    }
                    total
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_export);
criterion_main!(benches);

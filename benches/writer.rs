//! Writer throughput and CPU per byte: 200 and 1,000 interleaved simulated cameras at 4 Mbit/s
//! (25 fps, 2 s segments) through the holdfast writer, per write mode, against the raw disk
//! measured in the same run on the same filesystem (`dd bs=4M oflag=direct conv=fdatasync`).
//!
//! Two raw baselines, both 1 GiB of direct writes plus fdatasync on the bench's filesystem:
//! - **new file** (the "raw sequential write bandwidth ... on the same filesystem"): the
//!   best of `dd bs=4M`, `dd bs=16M`, two `dd bs=4M` in parallel and `fio` (io_uring, 16 MiB
//!   writes, 8 in flight; skipped when fio is not installed), each into a new file, so the
//!   filesystem allocates the blocks, as it must for every recording;
//! - **device**: `dd bs=16M` over a file written before (no block allocation, no
//!   unwritten-extent conversion): what the disk does when the filesystem has nothing to do.
//!
//! One `dd` keeps a single request in flight, so it alone understates a disk that gains from a
//! deeper queue.
//!
//! One round is 2 s of video of every camera (about 1 MB per camera), ending when all of it is
//! durable (synced and indexed). For each variant the bench prints MiB/s, % of the raw baseline,
//! CPU seconds per GiB (getrusage of the whole process: writer thread, io-wq workers, RocksDB)
//! and how many io_uring worker threads (`iou-wrk`) the process had (0 = no punt to io-wq).
//! Then criterion measures the 200-camera case as before.
//!
//! `cargo bench --bench writer` (under `flock /work/bench.lock`). `HOLDFAST_BENCH_DIR` chooses
//! the filesystem (default: the system temp dir); `HOLDFAST_BENCH_ROUNDS` the rounds per variant;
//! `HOLDFAST_BENCH_CAMERAS` the camera counts (`200,1000`); `HOLDFAST_BENCH_VARIANTS` a
//! comma-separated list of substrings selecting variants by name (e.g. `direct,DONTCACHE`).
//! A criterion filter that matches nothing (`cargo bench --bench writer -- none`) skips the
//! criterion part.

#[path = "../tests/support/synth.rs"]
mod synth;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use holdfast::metrics::Metrics;
use holdfast::store::segment::Segment;
use holdfast::store::writer::{DirectTuning, WriteIo, Writer, WriterConfig};
use holdfast::store::Store;
use holdfast::time::{Time90k, TICKS_PER_SEC};

/// 4 Mbit/s at 25 fps.
const AVG_FRAME: usize = 4_000_000 / 8 / 25;
const FRAMES_PER_SEGMENT: usize = 50;

fn make_segments(cameras: usize, round: i64, pool: &bytes::Bytes) -> Vec<Segment> {
    let mut rng = synth::rng(round as u64);
    let start = Time90k::now().add_ticks(round * 2 * TICKS_PER_SEC);
    (0..cameras)
        .map(|c| {
            synth::segment(
                &mut rng,
                pool,
                &format!("cam-{c:04}"),
                "four-weeks",
                start,
                FRAMES_PER_SEGMENT,
                AVG_FRAME,
            )
        })
        .collect()
}

fn tmp(name: &str) -> tempfile::TempDir {
    match std::env::var_os("HOLDFAST_BENCH_DIR") {
        Some(d) => tempfile::Builder::new().prefix(name).tempdir_in(d).unwrap(),
        None => tempfile::Builder::new().prefix(name).tempdir().unwrap(),
    }
}

/// User + system CPU seconds of this process (who = RUSAGE_SELF) or its waited-for children.
fn cpu(who: i32) -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Busy CPU seconds of the whole machine (every core; user, nice, system, irq, softirq from
/// /proc/stat): includes the kernel's writeback workers, which work for a buffered writer
/// outside its process. Meaningful on a quiet machine only.
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    stat.lines()
        .next()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .enumerate()
                // user nice system idle iowait irq softirq steal ...: skip idle and iowait.
                .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6))
                .filter_map(|(_, v)| v.parse::<f64>().ok())
                .sum::<f64>()
                / tck
        })
        .unwrap_or(0.0)
}

/// Threads of this process named `iou-wrk*` right now.
fn iou_workers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("iou-wrk"))
                })
                .count()
        })
        .unwrap_or(0)
}

struct Figures {
    mib_s: f64,
    cpu_per_gib: f64,
    /// Busy CPU of the whole machine per GiB (see [`machine_cpu`]).
    machine_cpu_per_gib: f64,
    iou_wrk: usize,
    /// Segments submitted that never became durable (a variant the kernel refuses drops all).
    lost: usize,
    /// Payload bytes that became durable.
    stored_bytes: u64,
}

/// One raw-disk baseline: `jobs` parallel `dd` processes, each writing `mib / jobs` MiB with
/// `bs_mib` MiB direct writes and one fdatasync, on the bench's filesystem; with `overwrite`
/// (one job) over a file written before.
fn raw_disk(mib: usize, bs_mib: usize, jobs: usize, overwrite: bool) -> Figures {
    let dir = tmp("holdfast-bench-raw");
    if overwrite {
        // Written once first (not timed), so the timed pass overwrites allocated, written
        // blocks: the device's speed without the filesystem's allocation or conversion work.
        let f = std::fs::File::create(dir.path().join("raw0")).unwrap();
        let chunk = vec![1u8; 16 << 20];
        for i in 0..(mib / jobs) / 16 {
            std::os::unix::fs::FileExt::write_all_at(&f, &chunk, (i * (16 << 20)) as u64).unwrap();
        }
        f.sync_all().unwrap();
    }
    timed_children(mib, || {
        let children: Vec<_> = (0..jobs)
            .map(|i| {
                let f = dir.path().join(format!("raw{i}"));
                std::process::Command::new("dd")
                    .arg("if=/dev/zero")
                    .arg(format!("of={}", f.display()))
                    .arg(format!("bs={bs_mib}M"))
                    .arg(format!("count={}", mib / jobs / bs_mib))
                    .arg("oflag=direct")
                    .arg(if overwrite {
                        "conv=fdatasync,notrunc"
                    } else {
                        "conv=fdatasync"
                    })
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("run dd")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().expect("wait for dd").success(), "dd failed");
        }
        true
    })
    .expect("dd ran")
}

/// Figures of `mib` MiB written by the child processes `run` starts and waits for: wall time,
/// the children's CPU and the machine's; `None` when `run` says they did not succeed.
fn timed_children(mib: usize, run: impl FnOnce() -> bool) -> Option<Figures> {
    let c0 = cpu(libc::RUSAGE_CHILDREN);
    let m0 = machine_cpu();
    let t0 = Instant::now();
    if !run() {
        return None;
    }
    let secs = t0.elapsed().as_secs_f64();
    Some(Figures {
        mib_s: mib as f64 / secs,
        cpu_per_gib: (cpu(libc::RUSAGE_CHILDREN) - c0) / (mib as f64 / 1024.0),
        machine_cpu_per_gib: (machine_cpu() - m0) / (mib as f64 / 1024.0),
        iou_wrk: 0,
        lost: 0,
        stored_bytes: (mib as u64) << 20,
    })
}

/// The `fio` form of the new-file baseline: one 1 GiB file written with 16 MiB O_DIRECT writes
/// through io_uring, 8 in flight, then fdatasync; timed from outside like `dd` (so the final
/// sync counts). `None` when fio is not installed.
fn raw_fio(mib: usize) -> Option<Figures> {
    let dir = tmp("holdfast-bench-raw");
    timed_children(mib, || {
        std::process::Command::new("fio")
            .args([
                "--name=raw",
                "--rw=write",
                "--bs=16M",
                "--direct=1",
                "--ioengine=io_uring",
                "--iodepth=8",
                "--end_fsync=1",
                // Like dd: the file's blocks are allocated by the writes (fio would otherwise
                // fallocate the whole file before writing).
                "--fallocate=none",
            ])
            .arg(format!("--size={mib}M"))
            .arg(format!(
                "--filename={}",
                dir.path().join("raw-fio").display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The writer's settings in both parts of the bench: 1 h buckets, 1 s syncs, queues that never
/// drop.
fn bench_config(io: WriteIo) -> WriterConfig {
    WriterConfig {
        bucket_secs: 3600,
        sync_interval: Duration::from_secs(1),
        queue_limit_bytes: 4 << 30,
        queue_limit_segments: 100_000,
        io,
    }
}

fn run_writer(
    io: WriteIo,
    tuning: DirectTuning,
    cameras: usize,
    rounds: i64,
    pool: &bytes::Bytes,
) -> Figures {
    let dir = tmp("holdfast-bench-writer");
    let (store, _) = Store::open(dir.path(), 3600).unwrap();
    let (durable_tx, durable) = crossbeam_channel::unbounded();
    let writer = Writer::spawn_tuned(
        Arc::new(store),
        bench_config(io),
        Arc::new(Metrics::new()),
        Some(durable_tx),
        tuning,
    )
    .unwrap();
    let h = writer.handle();
    let (mut bytes, mut secs, mut cpu_s, mut mcpu_s, mut wrk) = (0u64, 0.0, 0.0, 0.0, 0);
    let (mut submitted, mut stored) = (0usize, 0usize);
    for round in 0..rounds {
        let segs = make_segments(cameras, round, pool);
        submitted += segs.len();
        let c0 = cpu(libc::RUSAGE_SELF);
        let m0 = machine_cpu();
        let t0 = Instant::now();
        for s in segs {
            h.submit(s).unwrap();
        }
        assert!(h.flush());
        secs += t0.elapsed().as_secs_f64();
        cpu_s += cpu(libc::RUSAGE_SELF) - c0;
        mcpu_s += machine_cpu() - m0;
        wrk = wrk.max(iou_workers());
        // Only what became durable counts (a variant whose writes fail stores nothing).
        for e in durable.try_iter() {
            stored += 1;
            bytes += e.payload_len;
        }
    }
    writer.shutdown();
    let gib = (bytes as f64 / (1u64 << 30) as f64).max(1e-9);
    Figures {
        mib_s: gib * 1024.0 / secs,
        cpu_per_gib: cpu_s / gib,
        machine_cpu_per_gib: mcpu_s / gib,
        iou_wrk: wrk,
        lost: submitted - stored,
        stored_bytes: bytes,
    }
}

/// Whether `name` is selected by `HOLDFAST_BENCH_VARIANTS` (comma-separated substrings; all
/// when unset).
fn selected(name: &str) -> bool {
    match std::env::var("HOLDFAST_BENCH_VARIANTS") {
        Ok(v) if !v.is_empty() => v.split(',').any(|p| name.contains(p.trim())),
        _ => true,
    }
}

fn report() {
    let rounds: i64 = std::env::var("HOLDFAST_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let cameras: Vec<usize> = std::env::var("HOLDFAST_BENCH_CAMERAS")
        .ok()
        .map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![200, 1000]);
    let mut rng = synth::rng(1);
    let pool = synth::pool(&mut rng, 64 << 20);
    // The raw disk's sequential speed (see the module doc): the best new-file form is the
    // baseline; the overwrite form is the device's speed without the filesystem's block work.
    println!("| raw disk, 1 GiB, direct writes + fdatasync | MiB/s | CPU-s/GiB (dd/fio) | CPU-s/GiB (machine) |");
    println!("|---|---|---|---|");
    let mut raw_new = 0.0f64;
    let row = |name: &str, f: &Figures| {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} |",
            f.mib_s, f.cpu_per_gib, f.machine_cpu_per_gib
        );
    };
    for (name, bs, jobs) in [
        ("new file: dd bs=4M", 4, 1),
        ("new file: dd bs=16M", 16, 1),
        ("new files: 2 x dd bs=4M in parallel", 4, 2),
    ] {
        let f = raw_disk(1024, bs, jobs, false);
        raw_new = raw_new.max(f.mib_s);
        row(name, &f);
    }
    match raw_fio(1024) {
        Some(f) => {
            raw_new = raw_new.max(f.mib_s);
            row("new file: fio, io_uring, 16 MiB x 8 in flight", &f);
        }
        None => println!("| new file: fio | not installed (scripts/setup.sh installs it) | | |"),
    }
    let f = raw_disk(1024, 16, 1, true);
    let raw_dev = f.mib_s;
    row("device: dd bs=16M over written blocks (no allocation)", &f);
    println!("raw sequential bandwidth, new file (best of the new-file forms): {raw_new:.0} MiB/s");
    println!("device, overwriting written blocks: {raw_dev:.0} MiB/s");
    // A virtual disk goes on absorbing the baselines' 5 GiB after their fdatasync returned: the
    // first variant measured right after them ran a third slower than the same tuning later in
    // the same run. A pause lets it settle.
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(10));
    println!();
    println!(
        "| cameras | variant | MiB/s | % of raw (new file) | % of device | CPU-s/GiB (process) | \
         CPU-s/GiB (machine) | iou-wrk threads | segments lost |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &cameras in &cameras {
        let d = DirectTuning::default();
        let daemon = DirectTuning::for_cameras(cameras);
        let mib = 1usize << 20;
        let daemon_name = format!(
            "direct as the daemon runs it (O_DIRECT, WriteFixed, fallocate to 256 MiB steps, \
             merged writes; {} x 16 MiB rounds in flight for {cameras} cameras)",
            daemon.slots
        );
        for (name, io, tuning) in [
            (daemon_name.as_str(), WriteIo::Direct, daemon),
            (
                "direct, tuned: 4 x 16 MiB rounds (the default up to 500 cameras)",
                WriteIo::Direct,
                d,
            ),
            (
                "direct, serial (before: one 32 MiB round at a time, one write per record)",
                WriteIo::Direct,
                DirectTuning::serial(),
            ),
            (
                "direct, tuned: 4 x 8 MiB rounds",
                WriteIo::Direct,
                DirectTuning {
                    slot_len: 8 * mib,
                    ..d
                },
            ),
            (
                "direct, tuned: 8 x 16 MiB rounds",
                WriteIo::Direct,
                DirectTuning { slots: 8, ..d },
            ),
            (
                "direct, tuned: 8 x 16 MiB rounds, fallocate steps up to 1 GiB",
                WriteIo::Direct,
                DirectTuning {
                    slots: 8,
                    prealloc_max: 1 << 30,
                    ..d
                },
            ),
            (
                "direct, tuned: not merged",
                WriteIo::Direct,
                DirectTuning { merge: false, ..d },
            ),
            (
                "direct, tuned: fallocate steps up to 64 MiB",
                WriteIo::Direct,
                DirectTuning {
                    prealloc_max: 64 << 20,
                    ..d
                },
            ),
            (
                "direct, tuned: fallocate steps up to 1 GiB",
                WriteIo::Direct,
                DirectTuning {
                    prealloc_max: 1 << 30,
                    ..d
                },
            ),
            (
                "direct, tuned: no fallocate",
                WriteIo::Direct,
                DirectTuning {
                    prealloc: false,
                    ..d
                },
            ),
            ("buffered writev (before issue 11)", WriteIo::Buffered, d),
            (
                "buffered writev + RWF_DONTCACHE",
                WriteIo::BufferedDontcache,
                d,
            ),
            (
                "buffered writev + sync_file_range write-behind",
                WriteIo::BufferedWriteBehind,
                d,
            ),
        ] {
            if !selected(name) {
                continue;
            }
            let f = run_writer(
                io,
                tuning,
                cameras,
                rounds * (1000 / cameras as i64).max(1),
                &pool,
            );
            if f.stored_bytes == 0 {
                println!(
                    "| {cameras} | {name} | refused: nothing stored ({} segments lost; the \
                     writer's log names the error) | | | | | | |",
                    f.lost
                );
                continue;
            }
            println!(
                "| {cameras} | {name} | {:.0} | {:.0}% | {:.0}% | {:.2} | {:.2} | {} | {} |",
                f.mib_s,
                100.0 * f.mib_s / raw_new,
                100.0 * f.mib_s / raw_dev,
                f.cpu_per_gib,
                f.machine_cpu_per_gib,
                f.iou_wrk,
                f.lost
            );
        }
    }
}

fn bench_writer(c: &mut Criterion) {
    report();
    let mut rng = synth::rng(1);
    let pool = synth::pool(&mut rng, 64 << 20);
    let segments = make_segments(200, 0, &pool);
    let bytes: u64 = segments.iter().map(|s| s.payload_len()).sum();
    let mut group = c.benchmark_group("writer_200cams_4mbit");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (name, io) in [("direct", WriteIo::Direct), ("buffered", WriteIo::Buffered)] {
        let dir = tmp("holdfast-bench-writer");
        let (store, _) = Store::open(dir.path(), 3600).unwrap();
        let writer = Writer::spawn(
            Arc::new(store),
            bench_config(io),
            Arc::new(Metrics::new()),
            None,
        )
        .unwrap();
        let handle = writer.handle();
        let mut round = 1;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Fresh start times each round, so every segment is a new index entry.
                    let segs = make_segments(200, round, &pool);
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
        writer.shutdown();
    }
    group.finish();
}

criterion_group!(benches, bench_writer);
criterion_main!(benches);

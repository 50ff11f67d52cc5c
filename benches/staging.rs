//! Staging speed: the writer's copy of segment payloads into its direct-write buffer together
//! with their CRC32C, the way the daemon meets them at scale: 200 cameras x one 50-frame
//! segment each (15-25 kB frames, about 4 Mbit/s at 25 fps), allocated interleaved as the camera
//! threads allocate them, so that the frames and the 64 MiB destination are out of the cache.
//!
//! Measured in the same run (bytes per second of payload):
//! - `memcpy`: `copy_from_slice` alone, no checksum (the floor of a plain copy);
//! - `crc_only`: the CRC32C of the frames alone, no copy (what the checksum costs on frames
//!   that are out of the cache);
//! - `copy_then_crc`: what the writer did before session 11, the copy and then the CRC of the
//!   copy while it is in cache;
//! - `stage_frames`: `holdfast::store::staging::stage_frames`, what the writer runs: one pass
//!   that loads each 64 bytes once, stores them non-temporally and folds them into the CRC
//!   (PCLMULQDQ, on 512-bit registers where the CPU has AVX-512 VPCLMULQDQ);
//! - `stage_frames_portable`: its fallback elsewhere (and the writer's path before session 13),
//!   the CRC of the source (`crc-fast`) and then a non-temporal copy from the cache;
//! - `stage_frames_128`: the one-pass loop on 128-bit registers, where `stage_frames` runs it on
//!   512-bit ones (AVX-512 VPCLMULQDQ; session 14); elsewhere the same code as `stage_frames`.
//!
//! And one 20 kB frame that stays in the cache (`hot_frame_20k`): its CRC32C alone by `crc-fast`
//! (the portable path's checksum) and by the `crc32c` crate, with no memory to wait for, and
//! `stage_frames` and `stage_frames_128` of it (copy and CRC in one pass; their non-temporal
//! stores still go to memory).
//!
//! `cargo bench --bench staging` (under `flock /work/bench.lock` on a shared machine).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use holdfast::store::staging::{stage_frames, stage_frames_128, stage_frames_portable};

const CAMERAS: usize = 200;
const FRAMES: usize = 50;
const DEST: usize = 64 << 20;

/// Frames per camera, allocated frame by frame across the cameras.
fn frames() -> Vec<Vec<Vec<u8>>> {
    let mut cams: Vec<Vec<Vec<u8>>> = (0..CAMERAS).map(|_| Vec::new()).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..FRAMES {
        for cam in cams.iter_mut() {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let len = 15_000 + (seed >> 40) as usize % 10_000;
            cam.push(
                (0..len)
                    .map(|i| (i as u8).wrapping_mul(31) ^ seed as u8)
                    .collect(),
            );
        }
    }
    cams
}

/// Stages every camera's segment one after the other into `dest` (wrapping round), as the
/// writer fills its slots; returns the CRCs folded together so nothing is optimised away.
fn run(
    cams: &[Vec<Vec<u8>>],
    dest: &mut [u8],
    mut stage: impl FnMut(&[Vec<u8>], &mut [u8]) -> u32,
) -> u32 {
    let mut at = 0;
    let mut acc = 0u32;
    for cam in cams {
        let len: usize = cam.iter().map(Vec::len).sum();
        if at + len > dest.len() {
            at = 0;
        }
        acc = acc.rotate_left(1) ^ stage(cam, &mut dest[at..at + len]);
        at += len;
    }
    acc
}

/// One camera's segment staged into `d`: the CRC it returns, or `None` for a variant that
/// computes none.
type Variant = fn(&[Vec<u8>], &mut [u8]) -> Option<u32>;

/// The variants timed over the 200 cameras, each checked first.
const VARIANTS: [(&str, Variant); 6] = [
    ("memcpy", |cam, d| {
        let mut at = 0;
        for f in cam {
            d[at..at + f.len()].copy_from_slice(f);
            at += f.len();
        }
        None
    }),
    ("crc_only", |cam, _| {
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        for f in cam {
            crc.update(f);
        }
        Some(crc.finalize() as u32)
    }),
    ("copy_then_crc", |cam, d| {
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        let mut at = 0;
        for f in cam {
            let to = &mut d[at..at + f.len()];
            to.copy_from_slice(f);
            crc.update(to);
            at += f.len();
        }
        Some(crc.finalize() as u32)
    }),
    ("stage_frames", |cam, d| {
        Some(stage_frames(cam.iter().map(|f| &f[..]), d))
    }),
    ("stage_frames_portable", |cam, d| {
        Some(stage_frames_portable(cam.iter().map(|f| &f[..]), d))
    }),
    ("stage_frames_128", |cam, d| {
        Some(stage_frames_128(cam.iter().map(|f| &f[..]), d))
    }),
];

fn bench(c: &mut Criterion) {
    let cams = frames();
    let total: usize = cams.iter().flatten().map(Vec::len).sum();
    let mut dest = vec![0u8; DEST];
    // Every variant's answer is checked before anything is timed (the figures would be
    // meaningless otherwise): the bytes it copied (where it copies) and the CRC it computed
    // (where it computes one) against `copy_from_slice` and the `crc32c` crate.
    let mut want = vec![0u8; DEST];
    let mut want_crcs = Vec::new();
    run(&cams, &mut want, |cam, d| {
        let all = cam.concat();
        d[..all.len()].copy_from_slice(&all);
        want_crcs.push(crc32c::crc32c(&all));
        0
    });
    for (name, variant) in VARIANTS {
        dest.fill(0);
        let mut crcs = Vec::new();
        run(&cams, &mut dest, |cam, d| {
            if let Some(crc) = variant(cam, d) {
                crcs.push(crc);
            }
            0
        });
        if name != "crc_only" {
            assert!(dest == want, "{name} copied something else");
        }
        if name != "memcpy" {
            assert_eq!(crcs, want_crcs, "{name}: wrong CRC");
        }
    }
    println!(
        "stage_frames runs {} here",
        if holdfast::store::staging::wide() {
            "the one-pass loop on 512-bit registers (AVX-512 VPCLMULQDQ); stage_frames_128 its \
             128-bit loop"
        } else if holdfast::store::staging::one_pass() {
            "the one-pass loop (PCLMULQDQ): stage_frames_128 measures the same code"
        } else {
            "the portable path: stage_frames, stage_frames_portable and stage_frames_128 measure \
             the same code"
        }
    );
    let mut g = c.benchmark_group("staging_200_cameras");
    g.throughput(Throughput::Bytes(total as u64));
    for (name, variant) in VARIANTS {
        g.bench_function(name, |b| {
            b.iter(|| {
                run(&cams, &mut dest, |cam, d| {
                    variant(cam, d).unwrap_or_default()
                })
            })
        });
    }
    g.finish();
    let hot: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let want = crc32c::crc32c(&hot);
    let fast = |h: &[u8]| {
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        crc.update(h);
        crc.finalize() as u32
    };
    let mut hot_dst = vec![0u8; hot.len()];
    assert_eq!(fast(&hot), want, "crc_fast: wrong CRC");
    assert_eq!(
        stage_frames([&hot[..]], &mut hot_dst),
        want,
        "stage_frames: wrong CRC"
    );
    assert!(hot_dst == hot, "stage_frames copied something else");
    hot_dst.fill(0);
    assert_eq!(
        stage_frames_128([&hot[..]], &mut hot_dst),
        want,
        "stage_frames_128: wrong CRC"
    );
    assert!(hot_dst == hot, "stage_frames_128 copied something else");
    let mut h = c.benchmark_group("hot_frame_20k");
    h.throughput(Throughput::Bytes(hot.len() as u64));
    h.bench_function("crc_fast", |b| b.iter(|| fast(std::hint::black_box(&hot))));
    h.bench_function("crc32c_crate", |b| {
        b.iter(|| crc32c::crc32c(std::hint::black_box(&hot)))
    });
    h.bench_function("stage_frames", |b| {
        b.iter(|| stage_frames([std::hint::black_box(&hot[..])], &mut hot_dst))
    });
    h.bench_function("stage_frames_128", |b| {
        b.iter(|| stage_frames_128([std::hint::black_box(&hot[..])], &mut hot_dst))
    });
    h.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

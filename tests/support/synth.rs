//! Synthetic segments for storage tests and benchmarks: real `Segment`s whose frames slice one
//! shared random pool, so making thousands of them costs no copying.

#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use holdfast::store::segment::{CodecConfig, Frame, Segment};
use holdfast::time::Time90k;
use rand::{Rng, SeedableRng};

/// A store in `dir` with hour buckets and a writer of the default config: the setup of the
/// tests that write synthetic segments and read them back.
pub fn store_and_writer(
    dir: &std::path::Path,
) -> (Arc<holdfast::store::Store>, holdfast::store::writer::Writer) {
    let (store, _) = holdfast::store::Store::open(dir, 3600).unwrap();
    let store = Arc::new(store);
    let writer = holdfast::store::writer::Writer::spawn(
        store.clone(),
        holdfast::store::writer::WriterConfig::default(),
        Arc::new(holdfast::metrics::Metrics::new()),
        None,
    )
    .unwrap();
    (store, writer)
}

/// A small deterministic random generator.
pub type TestRng = rand::rngs::StdRng;

/// A seeded generator.
pub fn rng(seed: u64) -> TestRng {
    TestRng::seed_from_u64(seed)
}

/// A pool of random bytes that frames are sliced from.
pub fn pool(rng: &mut TestRng, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    Bytes::from(v)
}

/// A plausible avcC record (High profile, one SPS, one PPS) for a given width code.
pub fn codec(variant: u8) -> Arc<CodecConfig> {
    Arc::new(CodecConfig::new(Bytes::from(vec![
        1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 5, 0x67, 0x64, 0, 0x1f, variant, 1, 0, 2, 0x68, 0xee,
    ])))
}

/// A segment of `frames` frames at 25 fps whose sizes average `avg_frame` bytes (the keyframe
/// three times that), sliced from `pool`.
pub fn segment(
    rng: &mut TestRng,
    pool: &Bytes,
    camera: &str,
    policy: &str,
    start: Time90k,
    frames: usize,
    avg_frame: usize,
) -> Segment {
    let frames = (0..frames)
        .map(|i| {
            let size = if i == 0 {
                avg_frame * 3
            } else {
                rng.random_range(avg_frame / 2..avg_frame * 3 / 2).max(1)
            };
            let at = rng.random_range(0..pool.len() - size);
            Frame {
                data: pool.slice(at..at + size),
                duration: 3600,
                key: i == 0,
            }
        })
        .collect();
    Segment {
        camera: camera.into(),
        policy: policy.into(),
        start,
        codec: codec(0x10),
        frames,
    }
}

/// The seed of a randomised test: `HOLDFAST_TEST_SEED` when set (to replay a run), else a new one.
pub fn seed() -> u64 {
    std::env::var("HOLDFAST_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

/// A count from the environment variable `var` (a long form), else `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

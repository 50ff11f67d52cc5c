//! Retention against a real store (RocksDB in a temp dir, real bucket files, the real writer):
//! expiry with holds, released holds, erasures, interrupted deletes, disk pressure, and a
//! concurrency stress test of holds against sweeps.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use holdfast::config::MinFree;
use holdfast::metrics::Metrics;
use holdfast::retention::erasure::{erase, ErasureError};
use holdfast::retention::holds::{Holds, NewHold};
use holdfast::retention::sweeper::{Sweeper, SweeperConfig};
use holdfast::store::index::{IndexBatch, Reclaim, SegmentEntry};
use holdfast::store::writer::{Writer, WriterConfig};
use holdfast::store::Store;
use holdfast::time::{Time90k, TICKS_PER_SEC};
use rand::Rng;
use support::synth;

const BUCKET: u32 = 10;
const POLICY: &str = "short";

fn secs(s: i64) -> i64 {
    s * TICKS_PER_SEC
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    holds: Arc<Holds>,
    writer: Option<Writer>,
    metrics: Arc<Metrics>,
    t0: Time90k,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), BUCKET).unwrap();
        let store = Arc::new(store);
        let holds = Arc::new(Holds::load(store.clone()).unwrap());
        let metrics = Arc::new(Metrics::new());
        let writer = Writer::spawn(
            store.clone(),
            WriterConfig {
                bucket_secs: BUCKET,
                sync_interval: Duration::from_millis(50),
                queue_limit_bytes: 1 << 30,
                queue_limit_segments: 100_000,
            },
            metrics.clone(),
            None,
        )
        .unwrap();
        // Recorded "yesterday" so that every window is closed.
        let t0 = Time90k::now().add_ticks(-secs(86_400)).floor_to(BUCKET);
        Rig {
            _dir: dir,
            store,
            holds,
            writer: Some(writer),
            metrics,
            t0,
        }
    }

    fn t(&self, s: i64) -> Time90k {
        self.t0.add_ticks(secs(s))
    }

    /// Records `seconds` of 2-second segments for each camera from t0, and waits until durable.
    fn record(&self, cameras: &[&str], seconds: i64, frame_bytes: usize) {
        let mut rng = synth::rng(7);
        let pool = synth::pool(&mut rng, 1 << 20);
        let h = self.writer.as_ref().unwrap().handle();
        for s in (0..seconds).step_by(2) {
            for c in cameras {
                h.submit(synth::segment(
                    &mut rng,
                    &pool,
                    c,
                    POLICY,
                    self.t(s),
                    50,
                    frame_bytes,
                ))
                .unwrap();
            }
        }
        assert!(h.flush());
    }

    fn sweeper(&self, retention: i64, min_free: MinFree) -> Sweeper {
        Sweeper::new(
            self.store.clone(),
            self.holds.clone(),
            self.writer.as_ref().unwrap().handle(),
            SweeperConfig {
                policies: BTreeMap::from([(
                    POLICY.to_owned(),
                    Duration::from_secs(retention as u64),
                )]),
                interval: Duration::from_secs(1),
                min_free,
                keytags: Default::default(),
                camera_sites: Default::default(),
            },
            self.metrics.clone(),
        )
    }

    fn hold(&self, cameras: &[&str], from: i64, to: i64) -> u64 {
        self.holds
            .place(
                NewHold {
                    cameras: cameras.iter().map(|c| c.to_string()).collect(),
                    site: None,
                    from: self.t(from),
                    to: self.t(to),
                    reason: "incident".into(),
                    reference: "PL-1".into(),
                    requested_by: "police".into(),
                    expires_at: None,
                    keytags: false,
                    camera_sites: Default::default(),
                },
                "test",
                Time90k::now(),
            )
            .unwrap()
            .id
    }

    fn entries(&self, camera: &str) -> Vec<SegmentEntry> {
        self.store
            .index()
            .camera_segments(camera, Time90k(i64::MIN / 2), Time90k(i64::MAX / 2))
            .unwrap()
    }

    fn bucket_file(&self, start_s: i64) -> std::path::PathBuf {
        self.store.bucket_path(POLICY, self.t(start_s))
    }
}

fn allocated(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.blocks() * 512)
}

#[test]
fn expiry_frees_unpinned_buckets_and_keeps_held_segments_intact() {
    let rig = Rig::new();
    rig.record(&["cam-a", "cam-b"], 40, 20_000);
    // Hold cam-a 12..15 s: inside bucket [10, 20).
    rig.hold(&["cam-a"], 12, 15);
    let before_held = allocated(&rig.bucket_file(10)).unwrap();
    let sweeper = rig.sweeper(60, MinFree::Bytes(0));

    // Nothing has reached retention at t0 + 30 s.
    let r = sweeper.sweep(rig.t(30)).unwrap();
    assert_eq!(r.buckets_expired, 0);

    // At t0 + 75 s, buckets starting at 0 and 10 s are due (their oldest data is 60 s old).
    let r = sweeper.sweep(rig.t(75)).unwrap();
    assert_eq!(r.buckets_expired, 2, "{r:?}");
    assert!(
        !rig.bucket_file(0).exists(),
        "the unheld bucket file is unlinked"
    );
    let after_held = allocated(&rig.bucket_file(10)).unwrap();
    assert!(
        after_held * 4 < before_held,
        "holes punched: {before_held} -> {after_held} allocated bytes"
    );
    // cam-a keeps exactly the segments overlapping 12..15 s (starting at 12 and 14).
    let kept: Vec<_> = rig
        .entries("cam-a")
        .into_iter()
        .filter(|e| e.start < rig.t(20))
        .collect();
    assert_eq!(
        kept.iter().map(|e| e.start).collect::<Vec<_>>(),
        vec![rig.t(12), rig.t(14)]
    );
    assert!(rig.entries("cam-b").iter().all(|e| e.start >= rig.t(20)));
    let v = rig.store.verify().unwrap();
    assert!(v.bad.is_empty(), "held bytes intact: {:?}", v.bad);
    assert_eq!(
        rig.metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("holdfast_retention_overdue_bytes{"))
            .unwrap(),
        "holdfast_retention_overdue_bytes{policy=\"short\"} 0"
    );

    // A late segment for an expired bucket is refused, not appended.
    let mut rng = synth::rng(1);
    let pool = synth::pool(&mut rng, 1 << 20);
    let h = rig.writer.as_ref().unwrap().handle();
    h.submit(synth::segment(
        &mut rng,
        &pool,
        "cam-b",
        POLICY,
        rig.t(5),
        10,
        1000,
    ))
    .unwrap();
    assert!(h.flush());
    assert!(!rig.bucket_file(0).exists());

    // Released: the held segments go at the next sweep, and then the file.
    rig.holds
        .release(1, "case closed", "test", Time90k::now())
        .unwrap();
    let r = sweeper.sweep(rig.t(76)).unwrap();
    assert_eq!(r.released_entries, 2);
    assert!(!rig.bucket_file(10).exists());
    assert!(rig.entries("cam-a").iter().all(|e| e.start >= rig.t(20)));

    // Recovery after all this re-indexes nothing that was deleted.
    let dir = rig.store.root().to_owned();
    let t20 = rig.t(20);
    drop(sweeper);
    let Rig {
        writer,
        store,
        holds,
        ..
    } = rig;
    writer.unwrap().shutdown();
    drop(holds);
    drop(store);
    let (store, report) = Store::open(&dir, BUCKET).unwrap();
    assert_eq!(report.segments_reindexed, 0, "{report}");
    assert!(store
        .index()
        .all_segments()
        .unwrap()
        .iter()
        .all(|e| e.start >= t20));
}

#[test]
fn an_interrupted_delete_is_finished_by_recovery() {
    let rig = Rig::new();
    rig.record(&["cam-a"], 20, 20_000);
    let dir = rig.store.root().to_owned();
    let index = rig.store.index();
    // Do what the sweeper does, then "crash" before freeing the bytes.
    let entries: Vec<_> = rig.entries("cam-a");
    let first = &entries[0];
    let mut batch = IndexBatch::default();
    batch.delete_segment(index, first);
    batch.put_reclaim(
        index,
        &Reclaim {
            policy: POLICY.into(),
            bucket: first.bucket,
            offset: first.offset,
            len: Some(first.record_len()),
        },
    );
    index.commit(batch, true).unwrap();
    let before = allocated(&rig.bucket_file(0)).unwrap();
    let Rig {
        writer,
        store,
        holds,
        ..
    } = rig;
    writer.unwrap().shutdown();
    drop(holds);
    drop(store);

    let (store, report) = Store::open(&dir, BUCKET).unwrap();
    assert_eq!(report.reclaim.records, 1, "{report}");
    assert_eq!(
        report.segments_reindexed, 0,
        "the deleted record is not brought back"
    );
    let after = allocated(&store.bucket_path(POLICY, first.bucket)).unwrap();
    assert!(
        before - after >= first.record_len() - 8192,
        "{before} -> {after}"
    );
    assert!(store.index().reclaims().unwrap().is_empty());
    assert!(store.verify().unwrap().bad.is_empty());
}

#[test]
fn erasure_is_refused_where_held_and_frees_bytes_elsewhere() {
    let rig = Rig::new();
    rig.record(&["cam-a", "cam-b"], 20, 20_000);
    let hold = rig.hold(&["cam-a"], 4, 6);
    let now = Time90k::now();
    match erase(&rig.store, &rig.holds, "cam-a", rig.t(0), rig.t(10), now) {
        Err(ErasureError::Held(ids)) => assert_eq!(ids, vec![hold]),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.entries("cam-a").len(), 10, "nothing erased");
    let before = allocated(&rig.bucket_file(0)).unwrap();
    let e = erase(&rig.store, &rig.holds, "cam-b", rig.t(3), rig.t(7), now).unwrap();
    // Segments 2-4, 4-6, 6-8 overlap 3..7 s.
    assert_eq!(e.segments, 3);
    assert!(
        e.bytes_freed > 0 && e.bytes_freed <= e.record_bytes + 8192,
        "{e:?}"
    );
    assert_eq!(
        before - allocated(&rig.bucket_file(0)).unwrap(),
        e.bytes_freed
    );
    let left: Vec<_> = rig.entries("cam-b").iter().map(|x| x.start).collect();
    assert!(!left.contains(&rig.t(2)) && !left.contains(&rig.t(6)) && left.contains(&rig.t(8)));
    assert!(rig.store.verify().unwrap().bad.is_empty());
}

#[test]
fn disk_pressure_expires_early_never_pinned_and_pauses_until_space_returns() {
    let rig = Rig::new();
    rig.record(&["cam-a"], 40, 20_000);
    rig.hold(&["cam-a"], 30, 32);
    // A floor no disk can meet: everything closed and unpinned goes early, then writing pauses.
    let full = rig.sweeper(86_400 * 28, MinFree::Bytes(u64::MAX));
    let r = full.sweep(rig.t(41)).unwrap();
    assert_eq!(r.buckets_expired, 0);
    assert_eq!(r.buckets_expired_early, 4, "{r:?}");
    assert!(r.writes_paused);
    let kept: Vec<_> = rig.entries("cam-a").iter().map(|e| e.start).collect();
    assert_eq!(kept, vec![rig.t(30)], "only the pinned segment is left");
    let h = rig.writer.as_ref().unwrap().handle();
    assert!(h.is_paused());
    let mut rng = synth::rng(3);
    let pool = synth::pool(&mut rng, 1 << 20);
    assert!(h
        .submit(synth::segment(
            &mut rng,
            &pool,
            "cam-a",
            POLICY,
            Time90k::now(),
            5,
            100
        ))
        .is_err());
    let text = rig.metrics.encode();
    assert!(text.contains("holdfast_storage_writes_paused 1"), "{text}");
    assert!(text
        .contains("holdfast_segments_dropped_total{camera=\"cam-a\",reason=\"storage_full\"} 1"));

    // Space is back (here: a floor that is met): writing resumes by itself.
    let ok = rig.sweeper(86_400 * 28, MinFree::Bytes(0));
    let r = ok.sweep(rig.t(42)).unwrap();
    assert!(!r.writes_paused && !h.is_paused());
    assert!(rig.store.verify().unwrap().bad.is_empty());
}

/// Places, extends and releases holds at random while sweeps run with a clock that moves
/// buckets past retention. Every hold records what its range held right after it was placed;
/// while the hold is active (checked at its release and at the end), all of that must still be
/// indexed and intact. No pinned byte may ever be freed.
#[test]
fn holds_placed_and_released_during_sweeps_never_lose_a_pinned_byte() {
    const CAMERAS: usize = 8;
    const OPS: usize = 10_000;
    const SECONDS: i64 = 600;
    let rig = Arc::new(Rig::new());
    let cams: Vec<String> = (0..CAMERAS).map(|i| format!("cam-{i}")).collect();
    let cam_refs: Vec<&str> = cams.iter().map(|s| s.as_str()).collect();
    rig.record(&cam_refs, SECONDS, 200);
    let total_before = rig.store.index().all_segments().unwrap().len();

    // The sweep clock: retention 60 s, moving from t0+60 to t0+SECONDS+60 over the run.
    let clock = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sweeps = {
        let rig = rig.clone();
        let clock = clock.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let sweeper = rig.sweeper(60, MinFree::Bytes(0));
            let mut n = 0u64;
            let mut expired = 0u64;
            while !stop.load(Ordering::Acquire) {
                let now = rig.t(60 + clock.load(Ordering::Acquire) as i64);
                let r = sweeper.sweep(now).unwrap();
                expired += r.buckets_expired;
                n += 1;
            }
            (n, expired)
        })
    };

    let mut rng = synth::rng(11);
    let mut active: HashMap<u64, Vec<SegmentEntry>> = HashMap::new();
    let mut violations = Vec::new();
    let mut pinned_checked = 0usize;
    let check = |h: u64, expect: &[SegmentEntry], violations: &mut Vec<String>| {
        for e in expect {
            let still = rig
                .store
                .index()
                .bucket_camera_segments(&e.policy, e.bucket, &e.camera, e.start, e.end())
                .unwrap();
            if !still.iter().any(|x| x == e) {
                violations.push(format!(
                    "hold {h}: {} at {} was deleted while held",
                    e.camera, e.start
                ));
            } else if let Err(err) = rig.store.read_segment(e) {
                violations.push(format!("hold {h}: {} at {}: {err}", e.camera, e.start));
            }
        }
    };
    for op in 0..OPS {
        // Time runs forward with the operations.
        clock.store(
            (op as i64 * (SECONDS + 10) / OPS as i64) as u64,
            Ordering::Release,
        );
        let release = active.len() >= 30 || (!active.is_empty() && rng.random_range(0..100) < 45);
        if release {
            let id = *active
                .keys()
                .nth(rng.random_range(0..active.len()))
                .unwrap();
            let expect = active.remove(&id).unwrap();
            check(id, &expect, &mut violations);
            pinned_checked += expect.len();
            rig.holds
                .release(id, "done", "stress", Time90k::now())
                .unwrap();
        } else {
            let cam = &cams[rng.random_range(0..CAMERAS)];
            // At the expiry front (data of time `clock` is due now), where the races are.
            let front = clock.load(Ordering::Acquire) as i64;
            let from = (front + rng.random_range(-10..20)).clamp(0, SECONDS);
            let len = rng.random_range(1..20);
            let id = rig.hold(&[cam.as_str()], from, from + len);
            let held = rig
                .store
                .index()
                .camera_segments(cam, rig.t(from), rig.t(from + len))
                .unwrap();
            active.insert(id, held);
        }
    }
    stop.store(true, Ordering::Release);
    let (sweep_runs, expired) = sweeps.join().unwrap();
    for (id, expect) in &active {
        check(*id, expect, &mut violations);
        pinned_checked += expect.len();
    }
    let left = rig.store.index().all_segments().unwrap().len();
    eprintln!(
        "{OPS} hold operations, {sweep_runs} sweeps, {expired} buckets expired, \
         {pinned_checked} pinned segments checked, {left} of {total_before} segments left, \
         {} violations",
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:#?}");
    // The test did exercise deletion and pinning.
    assert!(expired >= 50, "only {expired} buckets expired");
    assert!(
        pinned_checked >= 1000,
        "only {pinned_checked} pinned segments checked"
    );
    assert!(left < total_before / 4, "{left} of {total_before} left");
    let v = rig.store.verify().unwrap();
    assert!(v.bad.is_empty(), "{:?}", v.bad);
}

/// Sets or clears the immutable attribute (`chattr +i`), which makes unlink fail with EPERM
/// even for root. `false` when chattr is missing or the file system does not support it.
fn chattr(p: &Path, flag: &str) -> bool {
    std::process::Command::new("chattr")
        .arg(flag)
        .arg(p)
        .status()
        .is_ok_and(|s| s.success())
}

fn reclaim_errors(store: &Store, op: &str) -> f64 {
    let mut m = Metrics::new();
    m.register_store(store.metrics());
    support::procs::metric_value(
        &m.encode(),
        &format!("holdfast_reclaim_errors_total{{op=\"{op}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Runs reclaim until nothing is pending or `limit` passes (the backoff of a failed record
/// starts at 1 s).
fn reclaim_until_done(store: &Store, limit: Duration) {
    let t0 = std::time::Instant::now();
    while !store.index().reclaims().unwrap().is_empty() {
        assert!(
            t0.elapsed() < limit,
            "reclaim still pending: {:?}",
            store.reclaim_status()
        );
        std::thread::sleep(Duration::from_millis(200));
        store.reclaim().unwrap();
    }
}

#[test]
fn an_immutable_bucket_file_stops_neither_the_other_buckets_nor_the_start() {
    let rig = Rig::new();
    rig.record(&["cam-a"], 60, 20_000);
    let stuck = rig.bucket_file(20);
    if !chattr(&stuck, "+i") {
        eprintln!(
            "SKIPPED: chattr +i failed on {} (not root, or no ext4-like file system): the \
             EISDIR test below covers the same without privileges",
            stuck.display()
        );
        return;
    }
    let sweeper = rig.sweeper(60, MinFree::Bytes(0));
    // Every bucket of the first 60 s is due.
    let r = sweeper.sweep(rig.t(200));
    let _ = chattr(&stuck, "-i");
    let r = r.expect("one file that cannot be unlinked does not fail the sweep");
    assert_eq!(r.buckets_expired, 6, "{r:?}");
    // Fault again for the rest of the test (the report was checked with the flag cleared, so
    // that a failing assertion never leaves an immutable file behind in /tmp).
    assert!(chattr(&stuck, "+i"));
    for s in [0, 10, 30, 40, 50] {
        assert!(!rig.bucket_file(s).exists(), "bucket {s} s was freed");
    }
    assert!(stuck.exists());
    let status = rig.store.reclaim_status();
    assert_eq!(status.pending_records, 1, "{status:?}");
    assert!(status.pending_bytes > 100_000, "{status:?}");
    let err = status.last_error.clone().unwrap();
    assert!(
        err.contains("unlink") && err.contains(&stuck.display().to_string()),
        "{err}"
    );
    assert!(reclaim_errors(&rig.store, "unlink") >= 1.0);

    // A restart while the file is still stuck: recovery counts it and starts anyway.
    let dir = rig.store.root().to_owned();
    drop(sweeper);
    let Rig {
        writer,
        store,
        holds,
        ..
    } = rig;
    writer.unwrap().shutdown();
    drop(holds);
    drop(store);
    let opened = Store::open(&dir, BUCKET);
    let _ = chattr(&stuck, "-i");
    let (store, report) = opened.expect("start-up never fails on reclaim");
    assert_eq!(report.reclaim.failed, 1, "{report:?}");
    assert_eq!(store.reclaim_status().pending_records, 1);
    // The fault cleared: the retry (after its backoff) frees the file.
    reclaim_until_done(&store, Duration::from_secs(10));
    assert!(!stuck.exists());
    assert_eq!(store.reclaim_status().pending_records, 0);
    assert!(store.index().buckets(Some(POLICY)).unwrap().is_empty());
    assert_eq!(store.metrics().reclaim_pending_bytes.get(), 0);
}

#[test]
fn a_bucket_file_that_cannot_be_unlinked_is_retried_without_privileges() {
    // Without root tricks: the bucket file replaced by a directory of the same name (unlink
    // fails with EISDIR, for root too; a read-only directory would not stop root).
    let rig = Rig::new();
    rig.record(&["cam-a"], 40, 20_000);
    let bad = rig.bucket_file(10);
    let aside = bad.with_extension("aside");
    std::fs::rename(&bad, &aside).unwrap();
    std::fs::create_dir(&bad).unwrap();
    let sweeper = rig.sweeper(60, MinFree::Bytes(0));
    let r = sweeper.sweep(rig.t(200)).unwrap();
    assert_eq!(r.buckets_expired, 4, "{r:?}");
    for s in [0, 20, 30] {
        assert!(!rig.bucket_file(s).exists(), "bucket {s} s was freed");
    }
    let status = rig.store.reclaim_status();
    assert_eq!(status.pending_records, 1, "{status:?}");
    assert!(status.last_error.unwrap().contains("unlink"));
    assert!(reclaim_errors(&rig.store, "unlink") >= 1.0);
    // A second run within the backoff does not try again.
    let again = rig.store.reclaim().unwrap();
    assert_eq!((again.deferred, again.failed), (1, 0), "{again:?}");
    // The fault clears: freed at the next try.
    std::fs::remove_dir(&bad).unwrap();
    std::fs::rename(&aside, &bad).unwrap();
    reclaim_until_done(&rig.store, Duration::from_secs(10));
    assert!(!bad.exists());
    assert_eq!(rig.store.reclaim_status().pending_records, 0);
}

#[test]
fn an_erasure_at_offset_zero_keeps_the_pending_whole_bucket_record() {
    let rig = Rig::new();
    rig.record(&["cam-a"], 20, 20_000);
    let index = rig.store.index();
    let first = rig.entries("cam-a").into_iter().next().unwrap();
    assert_eq!(first.offset, 0);
    let mut batch = IndexBatch::default();
    batch.put_reclaim(
        index,
        &Reclaim {
            policy: POLICY.into(),
            bucket: first.bucket,
            offset: 0,
            len: None,
        },
    );
    batch.put_reclaim(
        index,
        &Reclaim {
            policy: POLICY.into(),
            bucket: first.bucket,
            offset: 0,
            len: Some(first.record_len()),
        },
    );
    index.commit(batch, true).unwrap();
    let pending = index.reclaims().unwrap();
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert!(pending.iter().any(|r| r.len.is_none()));
}

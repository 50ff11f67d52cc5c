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

/// Disk-pressure tests measure free space around each deletion: they run alone (write lock),
/// the other tests of this file, which write footage, hold a read lock.
static DISK: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_disk() -> std::sync::RwLockReadGuard<'static, ()> {
    DISK.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive_disk() -> std::sync::RwLockWriteGuard<'static, ()> {
    DISK.write().unwrap_or_else(|e| e.into_inner())
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    holds: Arc<Holds>,
    writer: Option<Writer>,
    metrics: Arc<Metrics>,
    t0: Time90k,
    /// Dropped last: the file system the store lives on, when it is a test's own.
    _mount: Option<Tmpfs>,
}

/// A tmpfs of its own for a disk-pressure test: free space there changes only by what the test
/// and the store do, never by other programs, so counts can be exact. Unmounted (lazily) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None`, with the reason printed, where mounting is not allowed.
    fn new(mib: u64, test: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!(
                    "SKIPPED {test}: cannot mount a tmpfs here (needs root): {:?}",
                    other.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                );
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

impl Rig {
    fn new() -> Rig {
        Rig::new_in(tempfile::tempdir().unwrap(), None)
    }

    /// A rig whose store is alone on a tmpfs of `mib` MiB.
    fn on_tmpfs(mib: u64, test: &str) -> Option<Rig> {
        let mount = Tmpfs::new(mib, test)?;
        let dir = tempfile::tempdir_in(mount.dir.path()).unwrap();
        Some(Rig::new_in(dir, Some(mount)))
    }

    fn new_in(dir: tempfile::TempDir, mount: Option<Tmpfs>) -> Rig {
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
                io: Default::default(),
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
            _mount: mount,
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
                camera_policies: Default::default(),
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
    let _disk = shared_disk();
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
    let _disk = shared_disk();
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
    let _disk = shared_disk();
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
    let _disk = exclusive_disk();
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
    let _disk = shared_disk();
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

impl Rig {
    /// Records `seconds` of 2-second segments of one camera under `policy` from `t(from)`.
    fn record_as(&self, policy: &str, camera: &str, from: i64, seconds: i64, frame_bytes: usize) {
        let mut rng = synth::rng(11);
        let pool = synth::pool(&mut rng, 1 << 20);
        let h = self.writer.as_ref().unwrap().handle();
        for s in (from..from + seconds).step_by(2) {
            h.submit(synth::segment(
                &mut rng,
                &pool,
                camera,
                policy,
                self.t(s),
                50,
                frame_bytes,
            ))
            .unwrap();
        }
        assert!(h.flush());
    }

    fn sweeper_with(&self, cfg: SweeperConfig) -> Sweeper {
        Sweeper::new(
            self.store.clone(),
            self.holds.clone(),
            self.writer.as_ref().unwrap().handle(),
            cfg,
            self.metrics.clone(),
        )
    }

    fn config(
        policies: &[(&str, u64)],
        cameras: &[(&str, &str)],
        min_free: MinFree,
    ) -> SweeperConfig {
        SweeperConfig {
            policies: policies
                .iter()
                .map(|(p, s)| (p.to_string(), Duration::from_secs(*s)))
                .collect(),
            interval: Duration::from_secs(1),
            min_free,
            keytags: Default::default(),
            camera_sites: Default::default(),
            camera_policies: cameras
                .iter()
                .map(|(c, p)| (c.to_string(), p.to_string()))
                .collect(),
        }
    }

    fn expired(&self, policy: &str, start_s: i64) -> bool {
        self.store
            .index()
            .bucket(policy, self.t(start_s))
            .unwrap()
            .is_none_or(|b| b.expired)
    }

    fn metric(&self, series: &str) -> f64 {
        support::procs::metric_value(&self.metrics.encode(), series).unwrap_or(0.0)
    }
}

/// Issue 9 point 4: buckets remember the retention they were written under; after their policy
/// left the config they expire by it, or by their cameras' current policy when that is shorter,
/// or (unknown retention, cameras gone) by the shortest policy in the config; the gauges show
/// them under the old name.
#[test]
fn buckets_of_a_policy_that_left_the_config_still_expire() {
    let _disk = shared_disk();
    let rig = Rig::new();
    rig.writer
        .as_ref()
        .unwrap()
        .handle()
        .set_retention(HashMap::from([("short".to_owned(), 40)]));
    rig.record_as("short", "cam-a", 0, 20, 2_000);
    // A bucket of an old version (no retention recorded) of a camera no longer configured.
    rig.record_as("legacy", "cam-z", 0, 10, 2_000);
    let b = rig
        .store
        .index()
        .bucket("short", rig.t(0))
        .unwrap()
        .unwrap();
    assert_eq!(b.retention_secs, Some(40), "recorded at creation");
    assert_eq!(
        rig.store
            .index()
            .bucket("legacy", rig.t(0))
            .unwrap()
            .unwrap()
            .retention_secs,
        None
    );

    // "short" was renamed "renamed" (100 s now): the recorded 40 s is shorter and wins.
    let cfg = Rig::config(
        &[("renamed", 100)],
        &[("cam-a", "renamed")],
        MinFree::Bytes(0),
    );
    let s = rig.sweeper_with(cfg.clone());
    let r = s.sweep(rig.t(39)).unwrap();
    assert_eq!((r.buckets_expired, r.errors), (0, 0), "{r:?}");
    assert!(rig.metric("holdfast_storage_used_bytes{policy=\"short\"}") > 0.0);
    assert!(rig.metric("holdfast_storage_used_bytes{policy=\"legacy\"}") > 0.0);
    // Late by 100 s: the gauge says so under the old name.
    holdfast::retention::sweeper::retention_gauges(
        &rig.store,
        &rig.holds,
        &cfg,
        &rig.metrics,
        rig.t(140),
    )
    .unwrap();
    assert!(rig.metric("holdfast_retention_overdue_bytes{policy=\"short\"}") > 0.0);
    let r = s.sweep(rig.t(41)).unwrap();
    assert_eq!(r.buckets_expired, 1, "{r:?}");
    assert!(rig.expired("short", 0) && !rig.expired("short", 10));
    assert!(
        !rig.expired("legacy", 0),
        "unknown: shortest configured, 100 s"
    );
    assert_eq!(
        rig.metric("holdfast_retention_overdue_bytes{policy=\"short\"}"),
        0.0
    );

    // The camera's current policy is now 20 s: shorter than the recorded 40 s, so it wins.
    let s20 = rig.sweeper_with(Rig::config(
        &[("renamed", 20), ("long", 1000)],
        &[("cam-a", "renamed")],
        MinFree::Bytes(0),
    ));
    let r = s20.sweep(rig.t(31)).unwrap();
    assert_eq!(
        r.buckets_expired, 2,
        "short/10 by cam-a's 20 s, legacy/0 by the shortest: {r:?}"
    );
    assert!(rig.expired("short", 10) && rig.expired("legacy", 0));
    assert!(!rig.bucket_file(0).exists() && !rig.bucket_file(10).exists());
    assert_eq!(
        rig.metric("holdfast_storage_used_bytes{policy=\"short\"}"),
        0.0
    );
    assert_eq!(
        rig.metric("holdfast_storage_used_bytes{policy=\"legacy\"}"),
        0.0
    );
}

/// Issue 9 bug: an erasure that runs between the sweeper planning the pinned entries of a bucket
/// and taking the gate (possible once the hold lapsed, at the erasure's later `now`) must not be
/// undone: the erased entry is not put back over its punched bytes.
#[test]
fn an_erasure_between_planning_and_the_gate_is_not_undone() {
    let _disk = shared_disk();
    let rig = Rig::new();
    rig.record(&["cam-a"], 20, 5_000);
    let lapse = Time90k::now().add_ticks(secs(3600));
    rig.holds
        .place(
            NewHold {
                cameras: vec!["cam-a".into()],
                site: None,
                from: rig.t(2),
                to: rig.t(4),
                reason: "incident".into(),
                reference: "PL-2".into(),
                requested_by: "police".into(),
                expires_at: Some(lapse),
                keytags: false,
                camera_sites: Default::default(),
            },
            "test",
            Time90k::now(),
        )
        .unwrap();
    let erased = Arc::new(AtomicU64::new(u64::MAX));
    let (store, holds, out) = (rig.store.clone(), rig.holds.clone(), erased.clone());
    let (from, to) = (rig.t(2), rig.t(4));
    let sweeper = rig
        .sweeper(60, MinFree::Bytes(0))
        .with_before_gate(move || {
            if out.load(Ordering::SeqCst) == u64::MAX {
                // After the lapse the range is no longer held: the erasure is allowed.
                let r = erase(&store, &holds, "cam-a", from, to, lapse.add_ticks(1)).unwrap();
                out.store(r.segments, Ordering::SeqCst);
            }
        });
    // The sweep runs "yesterday + 100 s": the hold is active then, so its segment is planned.
    let r = sweeper.sweep(rig.t(100)).unwrap();
    assert_eq!((r.buckets_expired, r.errors), (2, 0), "{r:?}");
    assert_eq!(
        erased.load(Ordering::SeqCst),
        1,
        "the erasure ran in between"
    );
    assert!(
        rig.entries("cam-a").is_empty(),
        "the erased segment was not put back: {:?}",
        rig.entries("cam-a")
    );
    let v = rig.store.verify().unwrap();
    assert!(
        v.bad.is_empty(),
        "no entry points at punched bytes: {:?}",
        v.bad
    );
}

/// Issue 9: a bucket whose expiry fails (here a corrupt index entry under a held range) is
/// counted and retried; the other buckets expire in the same sweep; once repaired it expires.
#[test]
fn a_failed_expiry_does_not_stop_the_others() {
    let _disk = shared_disk();
    let rig = Rig::new();
    rig.record(&["cam-a"], 40, 2_000);
    rig.hold(&["cam-a"], 12, 14);
    let key = holdfast::store::index::segment_key(POLICY, rig.t(10), "cam-a", rig.t(12));
    let index = rig.store.index();
    let cf = index
        .db()
        .cf_handle(holdfast::store::index::CF_SEGMENTS)
        .unwrap();
    let good = index.db().get_cf(cf, &key).unwrap().expect("entry at 12 s");
    index.db().put_cf(cf, &key, b"garbage").unwrap();
    let sweeper = rig.sweeper(60, MinFree::Bytes(0));
    for _ in 0..2 {
        let r = sweeper.sweep(rig.t(100)).unwrap();
        assert_eq!(r.errors, 1, "{r:?}");
        assert!(!rig.expired(POLICY, 10), "the failing bucket stays");
    }
    assert!(rig.expired(POLICY, 0) && rig.expired(POLICY, 20) && rig.expired(POLICY, 30));
    assert_eq!(rig.metric("holdfast_sweeper_errors_total"), 2.0);
    index.db().put_cf(cf, &key, &good).unwrap();
    let r = sweeper.sweep(rig.t(100)).unwrap();
    assert_eq!((r.buckets_expired, r.errors), (1, 0), "{r:?}");
    let kept: Vec<_> = rig.entries("cam-a").iter().map(|e| e.start).collect();
    assert_eq!(kept, vec![rig.t(12)], "the held segment is kept");
    assert!(rig.store.verify().unwrap().bad.is_empty());
}

/// Issue 9 point 5: when expiring frees nothing (here every bucket file has a second hard link,
/// as a snapshot would keep its blocks), early expiry stops after a bounded number of buckets,
/// says so, and pauses writing instead of expiring everything.
#[test]
fn disk_pressure_stops_when_expiring_frees_nothing() {
    let _disk = exclusive_disk();
    let Some(rig) = Rig::on_tmpfs(256, "disk_pressure_stops_when_expiring_frees_nothing") else {
        return;
    };
    rig.record(&["cam-a"], 60, 8_000);
    let snap = rig._dir.path().join("snapshot");
    std::fs::create_dir(&snap).unwrap();
    for s in (0..60).step_by(10) {
        std::fs::hard_link(rig.bucket_file(s), snap.join(format!("{s}.seg"))).unwrap();
    }
    let sweeper = rig.sweeper(86_400 * 28, MinFree::Bytes(u64::MAX));
    let r = sweeper.sweep(rig.t(61)).unwrap();
    assert!(r.pressure_stalled && r.writes_paused, "{r:?}");
    assert_eq!(
        r.buckets_expired_early,
        u64::from(holdfast::retention::sweeper::MAX_NO_GAIN),
        "{r:?}"
    );
    assert_eq!(rig.metric("holdfast_sweeper_pressure_stalled"), 1.0);
    let left = (0..60)
        .step_by(10)
        .filter(|&s| !rig.expired(POLICY, s))
        .count();
    assert_eq!(left, 3, "the rest is not expired for nothing");
    // The next sweep does not go on: free space did not rise.
    let r = sweeper.sweep(rig.t(62)).unwrap();
    assert_eq!(r.buckets_expired_early, 0, "{r:?}");
    assert!(r.writes_paused);
    // Space is back: writing resumes and the stall clears.
    let ok = rig.sweeper(86_400 * 28, MinFree::Bytes(0));
    let r = ok.sweep(rig.t(63)).unwrap();
    assert!(!r.writes_paused && !r.pressure_stalled, "{r:?}");
    assert_eq!(rig.metric("holdfast_sweeper_pressure_stalled"), 0.0);
}

/// Issue 9 point 5: hysteresis. Below the floor, early expiry frees what is needed plus the
/// margin (one bucket), and stops: short of 1.5 buckets, 2 reach the floor and exactly one more
/// is the margin. On a tmpfs of its own, so that nobody else moves free space meanwhile.
#[test]
fn disk_pressure_frees_what_is_needed_plus_a_margin_and_stops() {
    let _disk = exclusive_disk();
    let Some(rig) = Rig::on_tmpfs(
        256,
        "disk_pressure_frees_what_is_needed_plus_a_margin_and_stops",
    ) else {
        return;
    };
    rig.record(&["cam-a"], 80, 8_000);
    let bucket = allocated(&rig.bucket_file(10)).unwrap();
    let free = nix_free(rig.store.root());
    let sweeper = rig.sweeper(86_400 * 28, MinFree::Bytes(free + bucket * 3 / 2));
    let r = sweeper.sweep(rig.t(81)).unwrap();
    assert_eq!(
        r.buckets_expired_early, 3,
        "2 for the floor, 1 margin: {r:?}"
    );
    assert!(!r.writes_paused && !r.pressure_stalled, "{r:?}");
    assert!((0..30).step_by(10).all(|s| rig.expired(POLICY, s)));
    assert!((30..80).step_by(10).all(|s| !rig.expired(POLICY, s)));
    // Above the floor now: the next sweep expires nothing.
    let r = sweeper.sweep(rig.t(82)).unwrap();
    assert_eq!(r.buckets_expired_early, 0, "{r:?}");
}

/// Review finding 4: buckets whose every entry is pinned free nothing when expired; they are
/// skipped, not counted as attempts that gave nothing back (which stalled early expiry and
/// paused the writer while younger unpinned buckets could have been expired).
#[test]
fn disk_pressure_skips_fully_pinned_buckets() {
    let _disk = exclusive_disk();
    let Some(rig) = Rig::on_tmpfs(256, "disk_pressure_skips_fully_pinned_buckets") else {
        return;
    };
    rig.record(&["cam-a"], 80, 8_000);
    // The three oldest buckets are held entirely.
    rig.hold(&["cam-a"], 0, 30);
    let bucket = allocated(&rig.bucket_file(30)).unwrap();
    let free = nix_free(rig.store.root());
    let sweeper = rig.sweeper(86_400 * 28, MinFree::Bytes(free + bucket * 3 / 2));
    let r = sweeper.sweep(rig.t(81)).unwrap();
    assert!(!r.pressure_stalled && !r.writes_paused, "{r:?}");
    assert_eq!(r.buckets_expired_early, 3, "{r:?}");
    assert!(
        (0..30).step_by(10).all(|s| !rig.expired(POLICY, s)),
        "held: skipped"
    );
    assert!((30..60).step_by(10).all(|s| rig.expired(POLICY, s)));
    assert_eq!(
        rig.entries("cam-a")
            .iter()
            .filter(|e| e.start < rig.t(30))
            .count(),
        15
    );
    assert!(rig.store.verify().unwrap().bad.is_empty());
}

/// Review finding 3: after early expiry stalled (every bucket file has a second hard link, as a
/// snapshot would keep its blocks), a rise of free space by a few bytes does not start it again,
/// a rise by a bucket's worth does, and the whole episode expires at most its cap (what was
/// missing plus three buckets); it ends when free space is back above the floor.
#[test]
fn disk_pressure_rearms_only_after_a_real_gain_and_is_capped_per_episode() {
    use holdfast::retention::sweeper::MAX_NO_GAIN;
    let _disk = exclusive_disk();
    let Some(rig) = Rig::on_tmpfs(
        256,
        "disk_pressure_rearms_only_after_a_real_gain_and_is_capped_per_episode",
    ) else {
        return;
    };
    rig.record(&["cam-a"], 100, 8_000);
    let root = rig._dir.path();
    let snap = root.join("snapshot");
    std::fs::create_dir(&snap).unwrap();
    for s in (0..100).step_by(10) {
        std::fs::hard_link(rig.bucket_file(s), snap.join(format!("{s}.seg"))).unwrap();
    }
    let bucket = allocated(&rig.bucket_file(10)).unwrap();
    // Another program's files: a small one and one of 1.2 buckets.
    std::fs::write(root.join("small"), vec![1u8; 64 << 10]).unwrap();
    std::fs::write(root.join("large"), vec![1u8; (bucket * 6 / 5) as usize]).unwrap();
    let free = nix_free(rig.store.root());
    let sweeper = rig.sweeper(86_400 * 28, MinFree::Bytes(free + bucket * 3 / 2));
    let expired = || {
        (0..100)
            .step_by(10)
            .filter(|&s| rig.expired(POLICY, s))
            .count()
    };

    let r = sweeper.sweep(rig.t(101)).unwrap();
    assert!(r.pressure_stalled && r.writes_paused, "{r:?}");
    assert_eq!(r.buckets_expired_early, u64::from(MAX_NO_GAIN), "{r:?}");
    // 64 KiB more free space: not a reason to expire more.
    std::fs::remove_file(root.join("small")).unwrap();
    let r = sweeper.sweep(rig.t(102)).unwrap();
    assert_eq!(
        r.buckets_expired_early, 0,
        "re-armed by a small gain: {r:?}"
    );
    assert!(r.pressure_stalled && r.writes_paused, "{r:?}");
    // 1.2 buckets more (still below the floor): tried again, until the episode's cap, which
    // is 2.5 buckets missing + 3 = 5.5 buckets: two more, not the next three.
    std::fs::remove_file(root.join("large")).unwrap();
    assert!(nix_free(rig.store.root()) < free + bucket * 3 / 2);
    let r = sweeper.sweep(rig.t(103)).unwrap();
    assert_eq!(r.buckets_expired_early, 2, "{r:?}");
    assert!(r.pressure_stalled && r.writes_paused, "{r:?}");
    assert_eq!(expired(), 5);
    assert_eq!(rig.metric("holdfast_sweeper_pressure_stalled"), 1.0);
    // Capped: even a rise by a bucket's worth does not restart it within the episode.
    std::fs::remove_file(snap.join("0.seg")).unwrap();
    let r = sweeper.sweep(rig.t(104)).unwrap();
    assert_eq!(r.buckets_expired_early, 0, "{r:?}");
    assert_eq!(expired(), 5);
    // The snapshot goes: back above the floor, the episode ends, writing resumes.
    std::fs::remove_dir_all(&snap).unwrap();
    let r = sweeper.sweep(rig.t(105)).unwrap();
    assert!(!r.writes_paused && !r.pressure_stalled, "{r:?}");
    assert_eq!(rig.metric("holdfast_sweeper_pressure_stalled"), 0.0);
    assert_eq!(expired(), 5, "the other five are kept");
    assert!(rig.store.verify().unwrap().bad.is_empty());
}

fn nix_free(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail * s.f_frsize
}

/// Issue 9 point 6: the pinned-bytes ledger equals the full recomputation after every step of
/// random sequences of writes, hold placements, releases, lapses, erasures and sweeps.
#[test]
fn pinned_bytes_ledger_equals_the_full_walk() {
    use holdfast::retention::ledger::pinned_bytes_full;
    for seed in 0..3u64 {
        let _disk = shared_disk();
        let rig = Rig::new();
        let mut rng = synth::rng(100 + seed);
        let pool = synth::pool(&mut rng, 1 << 20);
        let sweeper = rig.sweeper(60, MinFree::Bytes(0));
        let h = rig.writer.as_ref().unwrap().handle();
        let cams = ["a", "b", "c"];
        let mut now = rig.t(0);
        let mut next_start: HashMap<&str, i64> = HashMap::new();
        for step in 0..60 {
            match rng.random_range(0..10) {
                0..=3 => {
                    let c = cams[rng.random_range(0..3)];
                    let s = next_start.entry(c).or_insert(0);
                    for _ in 0..rng.random_range(1..6) {
                        h.submit(synth::segment(
                            &mut rng,
                            &pool,
                            c,
                            POLICY,
                            rig.t(*s),
                            5,
                            500,
                        ))
                        .unwrap();
                        *s += 2;
                    }
                    assert!(h.flush());
                }
                4 | 5 => {
                    let from = rng.random_range(0..120);
                    let n = rng.random_range(1..3);
                    let expires_at = rng
                        .random_bool(0.5)
                        .then(|| Time90k::now().add_ticks(secs(rng.random_range(60..600))));
                    let _ = rig.holds.place(
                        NewHold {
                            cameras: cams[..n].iter().map(|c| c.to_string()).collect(),
                            site: None,
                            from: rig.t(from),
                            to: rig.t(from + rng.random_range(1..30)),
                            reason: "r".into(),
                            reference: String::new(),
                            requested_by: String::new(),
                            expires_at,
                            keytags: false,
                            camera_sites: Default::default(),
                        },
                        "t",
                        Time90k::now(),
                    );
                }
                6 => {
                    let ids: Vec<u64> = rig.holds.snapshot().holds().map(|h| h.id).collect();
                    if !ids.is_empty() {
                        let id = ids[rng.random_range(0..ids.len())];
                        let _ = rig.holds.release(id, "done", "t", Time90k::now());
                    }
                }
                7 => {
                    let from = rng.random_range(0..120);
                    let _ = erase(
                        &rig.store,
                        &rig.holds,
                        cams[rng.random_range(0..3)],
                        rig.t(from),
                        rig.t(from + 5),
                        now,
                    );
                }
                8 => {
                    let r = sweeper.sweep(rig.t(rng.random_range(0..200))).unwrap();
                    assert_eq!(r.errors, 0);
                }
                _ => {
                    // Time passes (holds with a review date may lapse).
                    now = Time90k::now().add_ticks(secs(rng.random_range(0..700)));
                }
            }
            let index = rig.store.index();
            let snap = rig.holds.snapshot();
            let buckets = index.buckets(None).unwrap();
            let ledger = rig
                .holds
                .ledger()
                .refresh(index, &buckets, &snap, now)
                .unwrap();
            let full = pinned_bytes_full(index, &snap, now).unwrap();
            assert_eq!(ledger.pinned_bytes, full, "seed {seed} step {step}");
        }
    }
}

/// Issue 9 point 5: a RocksDB write error (here EFBIG from RLIMIT_FSIZE, which fails the WAL
/// append the way ENOSPC does) during a sweep or an erasure is an error, counted and logged: no
/// panic, no exit, reads still work. Runs in a child process, because the limit applies to the
/// whole process.
#[test]
fn rocksdb_write_errors_do_not_stop_the_sweeper() {
    let _disk = shared_disk();
    support::run_in_child(
        "rocksdb_write_errors_child",
        "HOLDFAST_TEST_FSIZE_CHILD",
        "CHILD-OK",
    );
}

#[test]
#[ignore = "run in a child process by rocksdb_write_errors_do_not_stop_the_sweeper"]
fn rocksdb_write_errors_child() {
    if std::env::var_os("HOLDFAST_TEST_FSIZE_CHILD").is_none() {
        return;
    }
    let rig = Rig::new();
    rig.record(&["cam-a"], 40, 2_000);
    rig.hold(&["cam-a"], 12, 14);
    let sweeper = rig.sweeper(60, MinFree::Bytes(0));
    // The WAL cannot grow any more: every RocksDB write from here on fails.
    let wal = std::fs::read_dir(rig._dir.path().join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max()
        .expect("a WAL file");
    // SAFETY: plain libc calls; SIGXFSZ ignored so that writes past the limit fail with EFBIG.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: wal,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let r = sweeper
        .sweep(rig.t(100))
        .expect("reads still work: the sweep reports");
    assert_eq!(r.buckets_expired, 0, "{r:?}");
    assert!(r.errors >= 4, "every bucket's failure counted: {r:?}");
    assert!(rig.metric("holdfast_sweeper_errors_total") >= 4.0);
    assert!(matches!(
        erase(
            &rig.store,
            &rig.holds,
            "cam-a",
            rig.t(30),
            rig.t(34),
            Time90k::now()
        ),
        Err(ErasureError::Store(_))
    ));
    // And again: still no panic, still counted.
    let r = sweeper
        .sweep(rig.t(101))
        .expect("a second sweep reports too");
    assert!(r.errors >= 4, "{r:?}");
    println!("CHILD-OK");
    // The writer's last commit at drop fails too: leave without running destructors that
    // would only log that.
    std::process::exit(0);
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
    let entries = rig.entries("cam-a");
    let first = entries[0].clone();
    assert_eq!(first.offset, 0);
    let in_bucket: Vec<_> = entries
        .iter()
        .filter(|e| e.bucket == first.bucket)
        .cloned()
        .collect();
    assert!(in_bucket.len() >= 3, "{in_bucket:?}");
    // The last entry of the bucket stays (as a held one would); the bucket is expired (whole
    // record) and its first record erased (range record at offset 0), as the sweeper and an
    // erasure would leave them.
    let kept = in_bucket.last().unwrap().clone();
    let mut b = index.bucket(POLICY, first.bucket).unwrap().unwrap();
    b.expired = true;
    let mut batch = IndexBatch::default();
    batch.put_bucket(index, &b);
    for e in &in_bucket[..in_bucket.len() - 1] {
        batch.delete_segment(index, e);
    }
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
    // Both records run, and the bytes of everything but the kept entry go back to the disk.
    let path = rig.store.bucket_path(POLICY, first.bucket);
    let before = allocated(&path).unwrap();
    let report = rig.store.reclaim().unwrap();
    assert_eq!((report.records, report.failed), (2, 0), "{report:?}");
    assert!(index.reclaims().unwrap().is_empty());
    let after = allocated(&path).unwrap();
    assert!(
        report.bytes_freed > 0 && after < before && after <= kept.record_len() + 8192,
        "{report:?}: {before} -> {after} bytes allocated, {} kept",
        kept.record_len()
    );
    assert_eq!(report.bytes_freed, before - after);
    rig.store.read_segment(&kept).unwrap();
}

/// Review finding 5: an expired bucket re-checked with a newer hold snapshot than the one the
/// sweep started with (a hold placed meanwhile) must not be marked as checked: when that hold
/// is released later, its entries are deleted, not kept forever.
#[test]
fn a_hold_placed_during_a_recheck_does_not_keep_its_entries_after_release() {
    let _disk = shared_disk();
    let rig = Rig::new();
    rig.record(&["cam-a"], 20, 2_000);
    let first = rig.hold(&["cam-a"], 2, 4);
    let armed = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(AtomicU64::new(0));
    let (holds, a, p, from, to) = (
        rig.holds.clone(),
        armed.clone(),
        placed.clone(),
        rig.t(2),
        rig.t(4),
    );
    let sweeper = rig
        .sweeper(60, MinFree::Bytes(0))
        .with_before_gate(move || {
            if a.swap(false, Ordering::SeqCst) {
                let h = holds
                    .place(
                        NewHold {
                            cameras: vec!["cam-a".into()],
                            site: None,
                            from,
                            to,
                            reason: "second incident".into(),
                            reference: "PL-3".into(),
                            requested_by: "police".into(),
                            expires_at: None,
                            keytags: false,
                            camera_sites: Default::default(),
                        },
                        "test",
                        Time90k::now(),
                    )
                    .unwrap();
                p.store(h.id, Ordering::SeqCst);
            }
        });
    let r = sweeper.sweep(rig.t(100)).unwrap();
    assert_eq!(r.buckets_expired, 2, "{r:?}");
    assert_eq!(rig.entries("cam-a").len(), 1, "the held segment is kept");
    // The first hold is released; while the sweep re-checks the bucket, a second hold on the
    // same range is placed (between planning and the gate).
    rig.holds
        .release(first, "case closed", "test", Time90k::now())
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    let r = sweeper.sweep(rig.t(101)).unwrap();
    assert_ne!(placed.load(Ordering::SeqCst), 0, "the hook placed a hold");
    assert_eq!(r.released_entries, 0, "the second hold pins it: {r:?}");
    assert_eq!(rig.entries("cam-a").len(), 1);
    // The second hold is released: its entry goes at the next sweep.
    rig.holds
        .release(
            placed.load(Ordering::SeqCst),
            "closed too",
            "test",
            Time90k::now(),
        )
        .unwrap();
    let r = sweeper.sweep(rig.t(102)).unwrap();
    assert_eq!(r.released_entries, 1, "{r:?}");
    assert!(rig.entries("cam-a").is_empty());
    assert!(!rig.bucket_file(0).exists(), "nothing left: unlinked");
}

/// Review finding 9: retention is a maximum, so a bucket of a policy that is still in the
/// config expires by the shorter of the policy's retention now and the one it was recorded
/// under: lengthening a policy does not lengthen footage recorded before.
#[test]
fn a_lengthened_policy_does_not_lengthen_recorded_footage() {
    let _disk = shared_disk();
    let rig = Rig::new();
    rig.writer
        .as_ref()
        .unwrap()
        .handle()
        .set_retention(HashMap::from([(POLICY.to_owned(), 40)]));
    rig.record(&["cam-a"], 20, 2_000);
    // The policy now keeps 1000 s: the recorded 40 s still applies.
    let long = rig.sweeper_with(Rig::config(
        &[(POLICY, 1000)],
        &[("cam-a", POLICY)],
        MinFree::Bytes(0),
    ));
    assert_eq!(long.sweep(rig.t(39)).unwrap().buckets_expired, 0);
    let r = long.sweep(rig.t(41)).unwrap();
    assert_eq!(r.buckets_expired, 1, "{r:?}");
    assert!(rig.expired(POLICY, 0) && !rig.expired(POLICY, 10));
    // Shortened to 20 s: that applies at once.
    let short = rig.sweeper_with(Rig::config(
        &[(POLICY, 20)],
        &[("cam-a", POLICY)],
        MinFree::Bytes(0),
    ));
    let r = short.sweep(rig.t(31)).unwrap();
    assert_eq!(r.buckets_expired, 1, "{r:?}");
    assert!(rig.expired(POLICY, 10));
}

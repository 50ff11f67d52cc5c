//! The sweeper: footage goes when its policy says so, pinned footage stays, the disk never fills.
//!
//! Every `sweeper.interval` (and on demand) one sweep runs on its own thread:
//!
//! 1. **Expiry.** For each policy, each bucket whose *oldest* segment has reached the policy's
//!    video retention is expired (retention is a maximum: the newest data of the bucket goes up
//!    to one bucket window early). Expiring a bucket:
//!    - asks the writer to retire it (pending segments made durable, file closed, no appends);
//!    - finds the pinned segments by asking, per camera with an active hold, only for the
//!      segments in the hold's range (one seek each): the cost depends on what is held, never on
//!      the number of cameras in the bucket;
//!    - takes the hold gate, re-plans if the hold snapshot changed meanwhile, and commits one
//!      batch: a range delete of the bucket's segment keys, the pinned entries put back, the
//!      bucket marked expired, a whole-bucket reclaim record;
//!    - frees the bytes (`Store::reclaim`): unlink when nothing is pinned, holes otherwise.
//! 2. **Released and lapsed holds.** Expired buckets keep only pinned entries; each sweep checks
//!    them against the current snapshot and deletes those no longer pinned the same way.
//! 3. **Disk pressure.** While free space is below `storage.min_free`, the oldest buckets whose
//!    window has closed are expired early, one at a time. When none is left (everything is
//!    pinned, or still being written), the writer is paused (new segments are dropped and
//!    counted as `storage_full`), `/healthz` fails and `holdfast_storage_writes_paused` is 1;
//!    writing resumes by itself once space is back above the floor.
//!
//! The retention gauges (`holdfast_retention_overdue_bytes` and friends) are computed from the
//! bucket list by [`retention_gauges`], at every sweep and at every scrape.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::holds::{HoldSnapshot, Holds};
use crate::config::MinFree;
use crate::metrics::{Metrics, PolicyLabel};
use crate::store::index::{BucketInfo, IndexBatch, Reclaim, SegmentEntry};
use crate::store::writer::WriterHandle;
use crate::store::{Store, StoreError};
use crate::time::{duration_to_ticks, Time90k, TICKS_PER_SEC};

/// Settings of the sweeper.
#[derive(Debug, Clone)]
pub struct SweeperConfig {
    /// Video retention per policy.
    pub policies: BTreeMap<String, Duration>,
    /// Time between sweeps.
    pub interval: Duration,
    /// Free-space floor.
    pub min_free: MinFree,
    /// Key-tag retention per site (empty: key-tag events are not swept).
    pub keytags: BTreeMap<String, Duration>,
    /// The site of each camera (a camera hold with `keytags: true` pins its site's events).
    pub camera_sites: HashMap<String, String>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Buckets expired because their data reached retention.
    pub buckets_expired: u64,
    /// Buckets expired early because the disk was below its floor.
    pub buckets_expired_early: u64,
    /// Pinned entries of expired buckets deleted after their holds ended.
    pub released_entries: u64,
    /// Bucket files unlinked.
    pub files_removed: u64,
    /// Allocated bytes given back.
    pub bytes_freed: u64,
    /// Whether writing is paused (disk full of pinned data).
    pub writes_paused: bool,
    /// Key-tag events deleted at the end of their retention.
    pub keytag_events_deleted: u64,
}

/// The sweeper's parts. [`Sweeper::sweep`] runs one sweep; [`Sweeper::spawn`] runs them forever.
pub struct Sweeper {
    store: Arc<Store>,
    holds: Arc<Holds>,
    writer: WriterHandle,
    cfg: SweeperConfig,
    metrics: Arc<Metrics>,
}

impl Sweeper {
    /// Assembles a sweeper.
    pub fn new(
        store: Arc<Store>,
        holds: Arc<Holds>,
        writer: WriterHandle,
        cfg: SweeperConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sweeper {
            store,
            holds,
            writer,
            cfg,
            metrics,
        }
    }

    /// One sweep at `now` (see the module doc).
    pub fn sweep(&self, now: Time90k) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let index = self.store.index();
        for (policy, retention) in &self.cfg.policies {
            let retention = duration_to_ticks(*retention);
            for b in index.buckets(Some(policy))? {
                if b.expired {
                    report.released_entries += self.recheck_expired(&b, now)?;
                } else if oldest(&b).add_ticks(retention) <= now {
                    self.expire(&b, now)?;
                    report.buckets_expired += 1;
                }
            }
        }
        self.account(self.store.reclaim()?, &mut report);

        // Disk pressure: oldest closed buckets first, whatever their policy.
        while let Some((free, floor)) = self.free_space() {
            if free >= floor {
                self.writer.set_paused(false);
                break;
            }
            let mut candidates: Vec<BucketInfo> = index
                .buckets(None)?
                .into_iter()
                .filter(|b| {
                    !b.expired && b.start.add_ticks(i64::from(b.window_secs) * TICKS_PER_SEC) <= now
                })
                .collect();
            candidates.sort_by_key(oldest);
            let Some(b) = candidates.first() else {
                if !self.writer.is_paused() {
                    tracing::error!(
                        free,
                        floor,
                        "storage below its floor and only pinned or current footage is left: \
                         new video is refused until space returns"
                    );
                }
                self.writer.set_paused(true);
                break;
            };
            tracing::warn!(policy = %b.policy, bucket = %b.start, free, floor,
                "storage below its floor: expiring the oldest bucket early");
            self.expire(b, now)?;
            report.buckets_expired_early += 1;
            self.account(self.store.reclaim()?, &mut report);
        }
        report.writes_paused = self.writer.is_paused();

        // Key-tag events: same rule, their own retention, pinned by holds with `keytags`.
        if !self.cfg.keytags.is_empty() {
            let retention: BTreeMap<String, i64> = self
                .cfg
                .keytags
                .iter()
                .map(|(site, d)| (site.clone(), duration_to_ticks(*d)))
                .collect();
            let _gate = self.holds.gate();
            let pins = crate::keytags::pinned(
                &self.holds.snapshot(),
                |c| self.cfg.camera_sites.get(c).cloned(),
                now,
            );
            report.keytag_events_deleted =
                crate::keytags::sweep(self.store.index(), &retention, &pins, now)?;
        }
        self.metrics
            .storage_writes_paused
            .set(i64::from(report.writes_paused));

        let m = &self.metrics;
        m.sweeper_runs.inc();
        m.sweeper_buckets_deleted
            .inc_by(report.buckets_expired + report.buckets_expired_early);
        m.sweeper_last_success
            .set(Time90k::now().0 as f64 / TICKS_PER_SEC as f64);
        retention_gauges(&self.store, &self.holds, &self.cfg, m, now)?;
        Ok(report)
    }

    fn account(&self, r: crate::store::reclaim::ReclaimReport, report: &mut SweepReport) {
        report.files_removed += r.files_removed;
        report.bytes_freed += r.bytes_freed;
        self.metrics.sweeper_bytes_freed.inc_by(r.bytes_freed);
    }

    /// (free, floor) in bytes, or `None` when the file system cannot be asked.
    fn free_space(&self) -> Option<(u64, u64)> {
        let (free, total) = statvfs(self.store.root())?;
        self.metrics.storage_free_bytes.set(free as i64);
        let floor = match self.cfg.min_free {
            MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
            MinFree::Bytes(b) => b,
        };
        Some((free, floor))
    }

    /// Expires one bucket: everything in it goes except what the holds pin.
    fn expire(&self, b: &BucketInfo, now: Time90k) -> Result<(), StoreError> {
        if !self.writer.retire(&b.policy, b.start) {
            return Err(StoreError::Io {
                op: "retire bucket (writer stopped)",
                path: self.store.bucket_path(&b.policy, b.start),
                source: std::io::Error::other("writer stopped"),
            });
        }
        // The writer committed what it had for this bucket; read the final record.
        let index = self.store.index();
        let Some(b) = index.bucket(&b.policy, b.start)? else {
            return Ok(());
        };
        let planned = self.holds.snapshot();
        let mut pinned = pinned_in_bucket(&self.store, &b, &planned, now)?;
        let _gate = self.holds.gate();
        let current = self.holds.snapshot();
        if current.version != planned.version {
            pinned = pinned_in_bucket(&self.store, &b, &current, now)?;
        }
        let mut batch = IndexBatch::default();
        batch.delete_bucket_segments(index, &b.policy, b.start);
        for e in &pinned {
            batch.put_segment(index, e);
        }
        let mut info = b.clone();
        info.expired = true;
        batch.put_bucket(index, &info);
        batch.put_reclaim(index, &whole(&b));
        index.commit(batch, true)?;
        tracing::info!(policy = %b.policy, bucket = %b.start, pinned = pinned.len(), "bucket expired");
        Ok(())
    }

    /// Deletes the entries of an expired bucket that no hold pins any more. Returns how many.
    fn recheck_expired(&self, b: &BucketInfo, now: Time90k) -> Result<u64, StoreError> {
        let index = self.store.index();
        let unpinned = |snap: &HoldSnapshot| -> Result<Vec<SegmentEntry>, StoreError> {
            Ok(index
                .bucket_segments(&b.policy, b.start)?
                .into_iter()
                .filter(|e| !snap.pins(&e.camera, now).overlaps(&time_range(e)))
                .collect())
        };
        let planned = self.holds.snapshot();
        let mut gone = unpinned(&planned)?;
        if gone.is_empty() {
            return Ok(0);
        }
        let _gate = self.holds.gate();
        let current = self.holds.snapshot();
        if current.version != planned.version {
            gone = unpinned(&current)?;
        }
        let mut batch = IndexBatch::default();
        for e in &gone {
            batch.delete_segment(index, e);
        }
        batch.put_reclaim(index, &whole(b));
        index.commit(batch, true)?;
        Ok(gone.len() as u64)
    }

    /// Runs sweeps every interval until the handle is stopped. `trigger` on the handle runs one
    /// at once (tests, and after a hold is released).
    pub fn spawn(self) -> SweeperHandle {
        self.spawn_with_now(Time90k::now)
    }

    /// [`Sweeper::spawn`] with the source of "now" of every sweep: the daemon passes its trusted
    /// clock (`crate::wallclock`), so a wall-clock jump alone expires nothing and lapses no hold.
    pub fn spawn_with_now(self, now: impl Fn() -> Time90k + Send + 'static) -> SweeperHandle {
        let (tx, rx) = crossbeam_channel::unbounded::<Cmd>();
        let thread = std::thread::Builder::new()
            .name("holdfast-sweeper".into())
            .spawn(move || self.run(rx, now))
            .expect("spawning the sweeper thread");
        SweeperHandle {
            tx,
            thread: Some(thread),
        }
    }

    fn run(self, rx: Receiver<Cmd>, now: impl Fn() -> Time90k) {
        loop {
            let mut done: Option<Sender<()>> = None;
            match rx.recv_timeout(self.cfg.interval) {
                Ok(Cmd::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Cmd::Now(tx)) => done = Some(tx),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let t0 = std::time::Instant::now();
            match self.sweep(now()) {
                Ok(r) => {
                    if r != SweepReport::default() {
                        tracing::info!(?r, took = ?t0.elapsed(), "sweep");
                    }
                }
                Err(e) => tracing::error!(error = %e, "sweep failed; retrying next interval"),
            }
            if let Some(tx) = done {
                let _ = tx.send(());
            }
        }
    }
}

enum Cmd {
    Now(Sender<()>),
    Stop,
}

/// A running sweeper thread.
pub struct SweeperHandle {
    tx: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl SweeperHandle {
    /// Runs a sweep now and waits for it.
    pub fn sweep_now(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Cmd::Now(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Stops the thread (after a running sweep finishes).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.tx.send(Cmd::Stop);
            let _ = t.join();
        }
    }
}

impl Drop for SweeperHandle {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The time of a bucket's oldest data.
fn oldest(b: &BucketInfo) -> Time90k {
    if b.segments == 0 {
        b.start
    } else {
        b.first_start
    }
}

fn whole(b: &BucketInfo) -> Reclaim {
    Reclaim {
        policy: b.policy.clone(),
        bucket: b.start,
        offset: 0,
        len: None,
    }
}

fn time_range(e: &SegmentEntry) -> super::intervals::Interval {
    super::intervals::Interval::new(e.start.0, e.end().0)
}

/// The entries of a bucket that the snapshot's holds pin at `now`: one seek per (pinned camera,
/// hold range) that meets the bucket's time span.
pub fn pinned_in_bucket(
    store: &Store,
    b: &BucketInfo,
    snap: &HoldSnapshot,
    now: Time90k,
) -> Result<Vec<SegmentEntry>, StoreError> {
    let span = super::intervals::Interval::new(oldest(b).0, b.last_end.0.max(oldest(b).0 + 1));
    let mut out: BTreeMap<Vec<u8>, SegmentEntry> = BTreeMap::new();
    for camera in snap.pinned_cameras(now) {
        for i in snap.pins(camera, now).intervals() {
            if !i.overlaps(&span) {
                continue;
            }
            for e in store.index().bucket_camera_segments(
                &b.policy,
                b.start,
                camera,
                Time90k(i.from),
                Time90k(i.to),
            )? {
                out.insert(e.key(), e);
            }
        }
    }
    Ok(out.into_values().collect())
}

/// Updates the retention gauges from the index: overdue bytes, oldest unpinned age, used bytes
/// per policy, pinned bytes, active holds, free space.
pub fn retention_gauges(
    store: &Store,
    holds: &Holds,
    cfg: &SweeperConfig,
    m: &Metrics,
    now: Time90k,
) -> Result<(), StoreError> {
    let interval = duration_to_ticks(cfg.interval);
    for (policy, retention) in &cfg.policies {
        let retention = duration_to_ticks(*retention);
        let label = PolicyLabel {
            policy: policy.clone(),
        };
        let mut overdue = 0u64;
        let mut oldest_unpinned: Option<Time90k> = None;
        let mut used = 0u64;
        for b in store.index().buckets(Some(policy))? {
            used += allocated(&store.bucket_path(&b.policy, b.start));
            if b.expired || b.segments == 0 {
                continue;
            }
            let o = oldest(&b);
            oldest_unpinned = Some(oldest_unpinned.map_or(o, |x: Time90k| x.min(o)));
            if o.add_ticks(retention + interval) < now {
                overdue += b.committed_len;
            }
        }
        m.retention_overdue_bytes
            .get_or_create(&label)
            .set(overdue as i64);
        m.oldest_unpinned_age.get_or_create(&label).set(
            oldest_unpinned.map_or(0.0, |o| (now.0 - o.0).max(0) as f64 / TICKS_PER_SEC as f64),
        );
        m.storage_used_bytes.get_or_create(&label).set(used as i64);
    }
    let snap = holds.snapshot();
    m.holds_active.set(snap.active(now).count() as i64);
    let soon = now.add_ticks(3 * 86_400 * crate::time::TICKS_PER_SEC);
    m.holds_expiring_soon.set(
        snap.active(now)
            .filter(|h| h.expires_at.is_some_and(|e| e <= soon))
            .count() as i64,
    );
    let mut pinned = 0u64;
    for camera in snap.pinned_cameras(now) {
        let mut seen = std::collections::HashSet::new();
        for i in snap.pins(camera, now).intervals() {
            for e in store
                .index()
                .camera_segments(camera, Time90k(i.from), Time90k(i.to))?
            {
                if seen.insert(e.key()) {
                    pinned += e.record_len();
                }
            }
        }
    }
    m.pinned_bytes.set(pinned as i64);
    if let Some((free, _)) = statvfs(store.root()) {
        m.storage_free_bytes.set(free as i64);
    }
    Ok(())
}

/// Allocated bytes of a file (0 when it is gone).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// (bytes available to unprivileged users, total bytes) of the file system holding `path`.
fn statvfs(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize;
    Some((s.f_bavail * frsize, s.f_blocks * frsize))
}

//! The sweeper: footage goes when its policy says so, pinned footage stays, the disk never fills.
//!
//! Every `sweeper.interval` (and on demand) one sweep runs on its own thread:
//!
//! 1. **Expiry.** Each bucket whose *oldest* segment has reached its retention is expired
//!    (retention is a maximum: the newest data of the bucket goes up to one bucket window early).
//!    A bucket's retention is [`bucket_retention`]: the shorter of its policy's (while the
//!    policy is in the config) and the retention recorded in the bucket when it was created;
//!    for a bucket of a policy that left the config (renamed, removed) the recorded retention,
//!    or the current policy of its cameras if that is shorter (see `design/retention.md` for
//!    the rule when neither is known). Expiring a bucket:
//!    - asks the writer to retire it (pending segments made durable, file closed, no appends);
//!    - finds the pinned segments by asking, per camera with an active hold, only for the
//!      segments in the hold's range (one seek each): the cost depends on what is held, never on
//!      the number of cameras in the bucket;
//!    - takes the hold gate, re-plans if the hold snapshot changed meanwhile, and otherwise
//!      re-reads the planned entries (an erasure may have deleted some after a hold lapsed), and
//!      commits one batch: a range delete of the bucket's segment keys, the pinned entries that
//!      still exist put back, the bucket marked expired, a whole-bucket reclaim record;
//!    - frees the bytes (`Store::reclaim`): unlink when nothing is pinned, holes otherwise.
//!
//!    A bucket whose expiry fails (a corrupt entry, an index write error such as ENOSPC) is
//!    logged and counted (`holdfast_sweeper_errors_total`); the sweep goes on with the next one
//!    and the failed one is tried again at the next sweep.
//! 2. **Released and lapsed holds.** Expired buckets keep only pinned entries. A sweep checks
//!    an expired bucket's entries against the current snapshot when it has not checked them yet,
//!    or when a pin that meets the bucket's time span ended since the previous sweep (released,
//!    lapsed, shortened), and deletes those no longer pinned the same way. Nothing is ever added
//!    to an expired bucket, so the others need no look: a sweep does not walk held segments.
//! 3. **Disk pressure.** When free space is below `storage.min_free`, the oldest buckets whose
//!    window has closed are expired early, one at a time, until free space is back above the
//!    floor plus a margin (hysteresis: [`pressure_margin`], one bucket's worth of recording,
//!    at most 5% of the disk), then it stops. After each early expiry the free space is measured
//!    again: when the last [`MAX_NO_GAIN`] expiries together gave back less than a quarter of
//!    what they freed (snapshots keep the blocks, another process fills the disk, unlinks fail), it
//!    stops, says so (log, `holdfast_sweeper_pressure_stalled` = 1) and does not expire early
//!    again until free space has risen by the margin. Buckets whose every entry is pinned are
//!    skipped (expiring them frees nothing; they are not attempts). One episode (below the
//!    floor until back above it) expires at most [`episode_cap`]: what was missing when it began
//!    plus three margins; then it stops until the episode ends. When nothing is left to expire,
//!    it stalled or reached the cap, the writer
//!    is paused (new segments are dropped and counted as `storage_full`), `/healthz` fails and
//!    `holdfast_storage_writes_paused` is 1; writing resumes by itself once space is back above
//!    the floor.
//!
//! The retention gauges are computed by [`retention_gauges`] at every sweep and scrape, from the
//! bucket records (one per bucket) and the pinned-bytes [`Ledger`](super::ledger::Ledger): no
//! held segment is walked unless the holds or the bucket holding it changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::holds::{HoldSnapshot, Holds};
use super::intervals::IntervalSet;
use crate::config::MinFree;
use crate::metrics::{Metrics, PolicyLabel};
use crate::store::index::{BucketInfo, IndexBatch, Reclaim, SegmentEntry, CF_SEGMENTS};
use crate::store::writer::WriterHandle;
use crate::store::{Store, StoreError};
use crate::time::{duration_to_ticks, Time90k, TICKS_PER_SEC};

/// Early expiries in a row that may give back (almost) nothing before the disk-pressure loop
/// stops and reports a stall.
pub const MAX_NO_GAIN: u32 = 3;

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
    /// The current policy of each camera (through its site): buckets of a policy that left the
    /// config expire by it when it is shorter than what they recorded.
    pub camera_policies: HashMap<String, String>,
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
    /// Steps that failed (a bucket's expiry, a reclaim run, the key-tag sweep); retried next time.
    pub errors: u64,
    /// Early expiry stopped because expiring gave back no space (see the module doc).
    pub pressure_stalled: bool,
}

/// What the previous sweep knew of expired buckets, so that their pinned remains are re-checked
/// only when a pin that meets them ended (point 6: no walk of every held segment per sweep).
#[derive(Debug, Default)]
struct Rechecked {
    /// The pins per camera at the previous sweep.
    pins: HashMap<String, IntervalSet>,
    /// Expired buckets whose entries were all checked against those pins.
    buckets: HashSet<(String, Time90k)>,
}

/// Disk-pressure state kept between sweeps.
#[derive(Debug, Default)]
struct Pressure {
    /// (free bytes when early expiry stalled, the rise needed to try again: the margin, about
    /// one bucket). A rise of a few bytes (a log rotated) is not a reason to expire more.
    stalled_at: Option<(u64, u64)>,
    /// The current episode: since free space went below the floor, until it is back above it.
    episode: Option<Episode>,
}

/// What early expiry did in one episode of disk pressure.
#[derive(Debug)]
struct Episode {
    /// Bytes (committed lengths) of the buckets expired early so far.
    expired: u64,
    /// At most this much: [`episode_cap`].
    cap: u64,
    /// The cap was reached: no more early expiry until the episode ends.
    capped: bool,
}

/// How much early expiry may take in one episode of disk pressure: what was missing when it
/// began (up to the floor plus the margin), plus [`MAX_NO_GAIN`] margins (about three buckets,
/// what the no-gain judgement may spend once). If that much did not bring free space back above
/// the floor, expiring more would not either (it goes somewhere else: snapshots, another
/// process), so the archive is not sacrificed bucket by bucket.
pub fn episode_cap(free: u64, target: u64, margin: u64) -> u64 {
    target
        .saturating_sub(free)
        .saturating_add(u64::from(MAX_NO_GAIN).saturating_mul(margin))
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// The sweeper's parts. [`Sweeper::sweep`] runs one sweep; [`Sweeper::spawn`] runs them forever.
pub struct Sweeper {
    store: Arc<Store>,
    holds: Arc<Holds>,
    writer: WriterHandle,
    cfg: SweeperConfig,
    metrics: Arc<Metrics>,
    pressure: Mutex<Pressure>,
    rechecked: Mutex<Rechecked>,
    before_gate: Option<Hook>,
    /// Beats while idle (every [`crate::service::HEARTBEAT_TICK`]) and per bucket in a sweep.
    heartbeat: crate::service::Heartbeat,
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
            pressure: Mutex::default(),
            rechecked: Mutex::default(),
            before_gate: None,
            heartbeat: crate::service::Heartbeat::new(),
        }
    }

    /// Test seam: runs `f` in [`Sweeper::sweep`] after an expiry or a re-check of an expired
    /// bucket was planned and before the hold gate is taken (where a concurrent erasure or hold
    /// change can slip in).
    #[doc(hidden)]
    pub fn with_before_gate(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.before_gate = Some(Box::new(f));
        self
    }

    /// One sweep at `now` (see the module doc). Fails only when the bucket list cannot be read;
    /// a failure of one bucket is counted in [`SweepReport::errors`] and the sweep goes on.
    pub fn sweep(&self, now: Time90k) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let index = self.store.index();
        // Where pins ended since the last sweep: only expired buckets meeting those ranges (or
        // not checked yet) can hold entries to delete now.
        let snap = self.holds.snapshot();
        let pins: HashMap<String, IntervalSet> = snap
            .pinned_cameras(now)
            .into_iter()
            .map(|c| (c.to_owned(), snap.pins(c, now)))
            .collect();
        let mut rechecked = self.rechecked.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = IntervalSet::new();
        for (cam, old) in &rechecked.pins {
            let left = match pins.get(cam) {
                Some(new) => old.difference(new),
                None => old.clone(),
            };
            ended = ended.union(&left);
        }
        let mut seen = HashSet::new();
        for b in index.buckets(None)? {
            self.heartbeat.beat();
            let done = if b.expired {
                let key = (b.policy.clone(), b.start);
                seen.insert(key.clone());
                if rechecked.buckets.contains(&key) && !ended.overlaps(&span(&b)) {
                    continue;
                }
                rechecked.buckets.remove(&key);
                self.recheck_expired(&b, now).map(|(n, version)| {
                    report.released_entries += n;
                    // Marked as checked only against the pins this sweep remembers: checked
                    // with a newer snapshot (a hold placed meanwhile), a later release of that
                    // hold would not show as an ended pin, and its entries would stay forever.
                    if version == snap.version {
                        rechecked.buckets.insert(key);
                    }
                })
            } else {
                self.expire_if_due(&b, now)
                    .map(|e| report.buckets_expired += u64::from(e))
            };
            if let Err(e) = done {
                self.failed(&mut report, &b, "expiry", &e);
            }
        }
        rechecked.buckets.retain(|k| seen.contains(k));
        rechecked.pins = pins;
        drop(rechecked);
        self.run_reclaim(&mut report);
        self.relieve_pressure(now, &mut report)?;
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
            match crate::keytags::sweep(self.store.index(), &retention, &pins, now) {
                Ok(n) => report.keytag_events_deleted = n,
                Err(e) => {
                    report.errors += 1;
                    self.metrics.sweeper_errors.inc();
                    tracing::error!(error = %e, "key-tag sweep failed; retrying next sweep");
                }
            }
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

    fn failed(&self, report: &mut SweepReport, b: &BucketInfo, what: &str, e: &StoreError) {
        report.errors += 1;
        self.metrics.sweeper_errors.inc();
        tracing::error!(policy = %b.policy, bucket = %b.start, error = %e,
            "bucket {what} failed; going on with the others, retrying next sweep");
    }

    fn run_reclaim(&self, report: &mut SweepReport) -> u64 {
        match self.store.reclaim() {
            Ok(r) => {
                report.files_removed += r.files_removed;
                report.bytes_freed += r.bytes_freed;
                self.metrics.sweeper_bytes_freed.inc_by(r.bytes_freed);
                r.bytes_freed
            }
            Err(e) => {
                report.errors += 1;
                self.metrics.sweeper_errors.inc();
                tracing::error!(error = %e, "freeing bytes failed; retrying next sweep");
                0
            }
        }
    }

    /// Expires `b` when its retention has passed. Returns whether it did.
    fn expire_if_due(&self, b: &BucketInfo, now: Time90k) -> Result<bool, StoreError> {
        let r = bucket_retention(&self.store, &self.cfg, b)?;
        if oldest(b).add_ticks(r.ticks) > now {
            return Ok(false);
        }
        if r.orphan {
            tracing::warn!(policy = %b.policy, bucket = %b.start, retention_secs = r.ticks / TICKS_PER_SEC,
                recorded = ?b.retention_secs,
                "expiring a bucket of a policy that is not in the config (renamed or removed)");
        }
        self.expire(b, now)?;
        Ok(true)
    }

    /// The disk-pressure loop (module doc, step 3).
    fn relieve_pressure(&self, now: Time90k, report: &mut SweepReport) -> Result<(), StoreError> {
        let Some((mut free, total, floor)) = self.free_space() else {
            return Ok(());
        };
        let mut pressure = self.pressure.lock().unwrap_or_else(|e| e.into_inner());
        if free >= floor {
            if self.writer.is_paused() {
                tracing::info!(
                    free,
                    floor,
                    "storage back above its floor: recording resumes"
                );
            }
            self.writer.set_paused(false);
            // The episode is over: the next one starts afresh.
            *pressure = Pressure::default();
            self.metrics.sweeper_pressure_stalled.set(0);
            return Ok(());
        }
        if pressure.episode.as_ref().is_some_and(|e| e.capped) {
            report.pressure_stalled = true;
            self.writer.set_paused(true);
            return Ok(());
        }
        if let Some((at, gain)) = pressure.stalled_at {
            if free < at.saturating_add(gain) {
                report.pressure_stalled = true;
                self.writer.set_paused(true);
                return Ok(());
            }
            tracing::info!(
                free,
                stalled_at = at,
                "free space rose by a bucket's worth: early expiry tried again"
            );
            pressure.stalled_at = None;
            self.metrics.sweeper_pressure_stalled.set(0);
        }
        let mut candidates: Vec<BucketInfo> = self
            .store
            .index()
            .buckets(None)?
            .into_iter()
            .filter(|b| {
                !b.expired && b.start.add_ticks(i64::from(b.window_secs) * TICKS_PER_SEC) <= now
            })
            .collect();
        candidates.sort_by_key(oldest);
        let margin = pressure_margin(total, &candidates);
        let target = floor.saturating_add(margin);
        let mut episode = pressure.episode.take().unwrap_or_else(|| Episode {
            expired: 0,
            cap: episode_cap(free, target, margin),
            capped: false,
        });
        let snap = self.holds.snapshot();
        // (free space before, bytes the reclaim step freed) of each early expiry of this sweep.
        let mut steps: Vec<(u64, u64)> = Vec::new();
        for b in &candidates {
            self.heartbeat.beat();
            if free >= target {
                break;
            }
            // A bucket whose every entry is pinned frees nothing when expired: it is skipped,
            // not counted as an attempt that gave nothing back.
            match pinned_in_bucket(&self.store, b, &snap, now) {
                Ok(p) if b.segments > 0 && p.len() as u64 >= b.segments => continue,
                Ok(_) => {}
                Err(e) => {
                    self.failed(report, b, "early expiry", &e);
                    continue;
                }
            }
            if episode.expired > 0 && episode.expired.saturating_add(b.committed_len) > episode.cap
            {
                tracing::error!(
                    free,
                    floor,
                    expired = episode.expired,
                    cap = episode.cap,
                    "storage below its floor: early expiry reached its cap for this episode (what \
                     was missing when it began plus three buckets); it stops until free space is \
                     back above the floor"
                );
                episode.capped = true;
                report.pressure_stalled = true;
                self.metrics.sweeper_pressure_stalled.set(1);
                break;
            }
            tracing::warn!(policy = %b.policy, bucket = %b.start, free, floor, target,
                "storage below its floor: expiring the oldest bucket early");
            if let Err(e) = self.expire(b, now) {
                self.failed(report, b, "early expiry", &e);
                continue;
            }
            episode.expired = episode.expired.saturating_add(b.committed_len);
            report.buckets_expired_early += 1;
            let freed = self.run_reclaim(report);
            let before = free;
            let Some((after, _, _)) = self.free_space() else {
                break;
            };
            free = after;
            steps.push((before, freed));
            // Judged over the last MAX_NO_GAIN expiries together, so that one reading disturbed
            // by other writers does not decide: less than a quarter of what they freed came
            // back means deleting does not help.
            if steps.len() >= MAX_NO_GAIN as usize {
                let window = &steps[steps.len() - MAX_NO_GAIN as usize..];
                let freed: u64 = window.iter().map(|w| w.1).sum();
                let gain = after.saturating_sub(window[0].0);
                if gain.saturating_mul(4) < freed || freed == 0 {
                    tracing::error!(
                        free,
                        floor,
                        expired_without_gain = MAX_NO_GAIN,
                        freed,
                        gain,
                        rearm_after = margin,
                        "storage below its floor and expiring footage gives back no space \
                         (snapshots holding the blocks, another process filling the disk, or \
                         files that cannot be removed): early expiry stops until free space \
                         rises by a bucket's worth"
                    );
                    pressure.stalled_at = Some((free, margin.max(1)));
                    report.pressure_stalled = true;
                    self.metrics.sweeper_pressure_stalled.set(1);
                    break;
                }
            }
        }
        pressure.episode = Some(episode);
        if free < floor {
            if !self.writer.is_paused() {
                tracing::error!(
                    free,
                    floor,
                    "storage below its floor and nothing more can be expired: \
                     new video is refused until space returns"
                );
            }
            self.writer.set_paused(true);
        } else {
            self.writer.set_paused(false);
        }
        Ok(())
    }

    /// (free, total, floor) in bytes, or `None` when the file system cannot be asked.
    fn free_space(&self) -> Option<(u64, u64, u64)> {
        let (free, total) = statvfs(self.store.root())?;
        self.metrics.storage_free_bytes.set(free as i64);
        let floor = floor_bytes(self.cfg.min_free, total);
        self.metrics.storage_min_free_bytes.set(floor as i64);
        Some((free, total, floor))
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
        if let Some(f) = &self.before_gate {
            f();
        }
        let _gate = self.holds.gate();
        let current = self.holds.snapshot();
        if current.version != planned.version {
            pinned = pinned_in_bucket(&self.store, &b, &current, now)?;
        } else if !pinned.is_empty() {
            // Same holds, but entries may have gone since planning (an erasure after a hold
            // lapsed, at its own later `now`): putting those back would make entries point at
            // punched bytes. Only what still exists, as it exists now, is kept.
            let mut still = Vec::with_capacity(pinned.len());
            for e in pinned {
                if index.get_raw(CF_SEGMENTS, &e.key())?.is_some() {
                    still.push(e);
                }
            }
            pinned = still;
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
        drop(_gate);
        self.holds.ledger().invalidate(&b.policy, b.start);
        tracing::info!(policy = %b.policy, bucket = %b.start, pinned = pinned.len(), "bucket expired");
        Ok(())
    }

    /// Deletes the entries of an expired bucket that no hold pins any more. Returns how many,
    /// and the version of the hold snapshot the decision was made with.
    fn recheck_expired(&self, b: &BucketInfo, now: Time90k) -> Result<(u64, u64), StoreError> {
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
            return Ok((0, planned.version));
        }
        if let Some(f) = &self.before_gate {
            f();
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
        drop(_gate);
        self.holds.ledger().invalidate(&b.policy, b.start);
        Ok((gone.len() as u64, current.version))
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
        let heartbeat = self.heartbeat.clone();
        let thread = std::thread::Builder::new()
            .name("holdfast-sweeper".into())
            .spawn(move || self.run(rx, now))
            .expect("spawning the sweeper thread");
        SweeperHandle {
            tx,
            thread: Some(thread),
            heartbeat,
        }
    }

    fn run(mut self, rx: Receiver<Cmd>, now: impl Fn() -> Time90k) {
        // The next sweep is due one interval after the last one ended (a reload does not push
        // it back, so frequent reloads cannot starve the sweeps).
        let mut last = std::time::Instant::now();
        loop {
            let mut done: Option<Sender<()>> = None;
            // Wait until one interval after the last sweep ended, or a command, waking up every
            // tick to show it is alive.
            loop {
                self.heartbeat.beat();
                let left =
                    (last + self.cfg.interval).saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left.min(crate::service::HEARTBEAT_TICK)) {
                    Ok(Cmd::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    Ok(Cmd::Now(tx)) => {
                        done = Some(tx);
                        break;
                    }
                    // A reload: the next sweep (due by the new interval) uses it.
                    Ok(Cmd::Config(cfg)) => self.cfg = *cfg,
                    Err(RecvTimeoutError::Timeout) => {}
                }
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
            last = std::time::Instant::now();
            if let Some(tx) = done {
                let _ = tx.send(());
            }
        }
    }
}

enum Cmd {
    Now(Sender<()>),
    Config(Box<SweeperConfig>),
    Stop,
}

/// A running sweeper thread.
pub struct SweeperHandle {
    tx: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    heartbeat: crate::service::Heartbeat,
}

impl SweeperHandle {
    /// Runs a sweep now and waits for it.
    pub fn sweep_now(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Cmd::Now(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// The sweeper thread's heartbeat: it beats at least every
    /// [`crate::service::HEARTBEAT_TICK`] while idle and at every bucket of a sweep.
    pub fn heartbeat(&self) -> crate::service::Heartbeat {
        self.heartbeat.clone()
    }

    /// Replaces the sweeper's settings (a config reload); a running sweep finishes with the old
    /// ones, the next one uses these.
    pub fn set_config(&self, cfg: SweeperConfig) {
        let _ = self.tx.send(Cmd::Config(Box::new(cfg)));
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

/// The time span a bucket's data covers.
fn span(b: &BucketInfo) -> super::intervals::Interval {
    let o = oldest(b);
    super::intervals::Interval::new(o.0, b.last_end.0.max(o.0 + 1))
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

/// How long a bucket's footage may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRetention {
    /// Retention in 90 kHz ticks.
    pub ticks: i64,
    /// The bucket's policy is not in the config (renamed or removed).
    pub orphan: bool,
}

/// The retention of a bucket. While its policy is in the config, the shorter of the policy's
/// and the retention recorded in the bucket when it was created (retention is a maximum: a
/// lengthened policy does not extend footage recorded before). Otherwise the shortest of: the
/// recorded retention, and the current policy of each camera with footage in it. When neither is known (a bucket recorded before
/// buckets remembered their retention, of cameras no longer configured), the shortest video
/// retention in the config: retention is a maximum, and that is the only one the operator has
/// allowed for any footage today (`design/retention.md`).
pub fn bucket_retention(
    store: &Store,
    cfg: &SweeperConfig,
    b: &BucketInfo,
) -> Result<BucketRetention, StoreError> {
    let recorded = b.retention_secs.map(|s| {
        i64::try_from(s)
            .unwrap_or(i64::MAX / TICKS_PER_SEC)
            .saturating_mul(TICKS_PER_SEC)
    });
    if let Some(d) = cfg.policies.get(&b.policy) {
        // Retention is a maximum: a policy lengthened since the bucket was written does not
        // lengthen the life its footage was recorded under; a shortened one applies at once.
        let configured = duration_to_ticks(*d);
        return Ok(BucketRetention {
            ticks: recorded.map_or(configured, |r| r.min(configured)),
            orphan: false,
        });
    }
    let mut cameras: Option<i64> = None;
    for camera in bucket_cameras(store, b)? {
        let current = cfg
            .camera_policies
            .get(&camera)
            .and_then(|p| cfg.policies.get(p));
        if let Some(d) = current {
            let t = duration_to_ticks(*d);
            cameras = Some(cameras.map_or(t, |c| c.min(t)));
        }
    }
    let ticks = match (recorded, cameras) {
        (Some(r), Some(c)) => r.min(c),
        (Some(r), None) => r,
        (None, Some(c)) => c,
        (None, None) => cfg
            .policies
            .values()
            .map(|d| duration_to_ticks(*d))
            .min()
            .unwrap_or(0),
    };
    Ok(BucketRetention {
        ticks,
        orphan: true,
    })
}

/// The cameras with entries in a bucket: one seek per camera (skipping over its entries).
fn bucket_cameras(store: &Store, b: &BucketInfo) -> Result<Vec<String>, StoreError> {
    let index = store.index();
    let db = index.db();
    let cf = db
        .cf_handle(CF_SEGMENTS)
        .expect("column family created at open");
    let prefix = crate::store::index::bucket_key(&b.policy, b.start);
    let mut it = db.raw_iterator_cf(cf);
    it.seek(&prefix);
    let mut out = Vec::new();
    while let Some(k) = it.key() {
        if !k.starts_with(&prefix) {
            break;
        }
        let rest = &k[prefix.len()..];
        let Some(z) = rest.iter().position(|&c| c == 0) else {
            break;
        };
        out.push(String::from_utf8_lossy(&rest[..z]).into_owned());
        // Past every entry of this camera: its id followed by a byte above the separator.
        let mut next = k[..prefix.len() + z].to_vec();
        next.push(1);
        it.seek(&next);
    }
    it.status()
        .map_err(|e| StoreError::from(crate::store::index::IndexError::from(e)))?;
    Ok(out)
}

/// How far above the floor early expiry goes before it stops (hysteresis): about one bucket of
/// recording (the newest closed bucket's size), so that early expiry runs once per bucket
/// window rather than at every sweep, but at most 5% of the disk, so that a huge bucket on a
/// small disk does not take far more than needed.
pub fn pressure_margin(total: u64, candidates: &[BucketInfo]) -> u64 {
    let bucket = candidates.last().map_or(0, |b| b.committed_len);
    bucket.min(total / 20)
}

/// Updates the retention gauges: overdue bytes, oldest unpinned age and used bytes per policy
/// (every policy with buckets on disk, also one that left the config, by its name), pinned bytes
/// (from the ledger), active holds, free space. Reads one record per bucket and stats one file
/// per bucket; held segments are read only where holds or buckets changed (see
/// [`super::ledger`]).
pub fn retention_gauges(
    store: &Store,
    holds: &Holds,
    cfg: &SweeperConfig,
    m: &Metrics,
    now: Time90k,
) -> Result<(), StoreError> {
    let interval = duration_to_ticks(cfg.interval);
    let buckets = store.index().buckets(None)?;
    #[derive(Default)]
    struct PerPolicy {
        overdue: u64,
        oldest_unpinned: Option<Time90k>,
        used: u64,
    }
    let mut per: BTreeMap<String, PerPolicy> = cfg
        .policies
        .keys()
        .map(|p| (p.clone(), PerPolicy::default()))
        .collect();
    for b in &buckets {
        let p = per.entry(b.policy.clone()).or_default();
        p.used += allocated(&store.bucket_path(&b.policy, b.start));
        if b.expired || b.segments == 0 {
            continue;
        }
        let o = oldest(b);
        p.oldest_unpinned = Some(p.oldest_unpinned.map_or(o, |x: Time90k| x.min(o)));
        let retention = bucket_retention(store, cfg, b)?.ticks;
        if o.add_ticks(retention.saturating_add(interval)) < now {
            p.overdue += b.committed_len;
        }
    }
    // Policies shown before whose buckets are all gone drop to 0.
    for gone in holds.ledger().note_policies(per.keys()) {
        per.entry(gone).or_default();
    }
    for (policy, p) in &per {
        let label = PolicyLabel {
            policy: policy.clone(),
        };
        m.retention_overdue_bytes
            .get_or_create(&label)
            .set(p.overdue as i64);
        m.oldest_unpinned_age.get_or_create(&label).set(
            p.oldest_unpinned
                .map_or(0.0, |o| (now.0 - o.0).max(0) as f64 / TICKS_PER_SEC as f64),
        );
        m.storage_used_bytes
            .get_or_create(&label)
            .set(p.used as i64);
    }
    let snap = holds.snapshot();
    m.holds_active.set(snap.active(now).count() as i64);
    let soon = now.add_ticks(3 * 86_400 * crate::time::TICKS_PER_SEC);
    m.holds_expiring_soon.set(
        snap.active(now)
            .filter(|h| h.expires_at.is_some_and(|e| e <= soon))
            .count() as i64,
    );
    let totals = holds
        .ledger()
        .refresh(store.index(), &buckets, &snap, now)?;
    m.pinned_bytes.set(totals.pinned_bytes as i64);
    if let Some((free, total)) = statvfs(store.root()) {
        m.storage_free_bytes.set(free as i64);
        m.storage_min_free_bytes
            .set(floor_bytes(cfg.min_free, total) as i64);
    }
    Ok(())
}

/// The free-space floor in bytes on a file system of `total` bytes.
fn floor_bytes(min_free: MinFree, total: u64) -> u64 {
    match min_free {
        MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
        MinFree::Bytes(b) => b,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_episode_cap_is_what_was_missing_plus_three_margins() {
        assert_eq!(episode_cap(100, 250, 50), 150 + 3 * 50);
        assert_eq!(
            episode_cap(300, 250, 50),
            150,
            "nothing missing: the three margins"
        );
        assert_eq!(episode_cap(0, u64::MAX, 10), u64::MAX, "saturates");
    }

    #[test]
    fn the_margin_is_the_newest_closed_bucket_at_most_5_percent() {
        let mut b = BucketInfo::empty("p", Time90k(0), 10);
        b.committed_len = 400;
        let mut newest = b.clone();
        newest.committed_len = 300;
        assert_eq!(pressure_margin(100_000, &[b.clone(), newest.clone()]), 300);
        assert_eq!(pressure_margin(1000, &[b, newest]), 50, "5% of the disk");
        assert_eq!(pressure_margin(1000, &[]), 0);
    }
}

//! The writer: one thread that owns every open bucket file and an io_uring, and turns segments
//! into durable, indexed records.
//!
//! Flow of one segment:
//! 1. A camera task calls [`WriterHandle::submit`]: a non-blocking send on a bounded channel.
//!    When the queue is over its byte budget (or the channel is full) the segment is dropped and
//!    counted (`holdfast_segments_dropped_total{reason="queue_full"}`); no camera ever waits.
//! 2. The thread takes what is queued (up to [`MAX_BATCH`] segments), encodes each header into a
//!    small buffer and submits one `writev` per record to io_uring: the header buffer followed by
//!    the frames' own `Bytes`, so payloads are never copied. Records get their offsets up front,
//!    so the writes of one batch run in parallel.
//! 3. At most `sync_interval` after the first unsynced write (or on flush/shutdown) it issues
//!    `fdatasync` for every dirty file (again on io_uring), fsyncs directories that gained files,
//!    and only then commits the index entries and bucket records in one synced RocksDB batch.
//! 4. Only after that commit is the segment durable: readers can see it, the optional
//!    `on_durable` channel hears of it, and flush waiters are answered.
//!
//! A failed write drops its segment (counted, logged) and leaves unindexed bytes that recovery
//! and the sweeper treat as garbage. A failed fdatasync drops the group's segments of that file
//! (other files' segments are committed), because after an fsync error the page cache cannot be
//! trusted to hold the data (the "fsyncgate" lesson); the bucket record is committed with
//! `committed_len` at the file's current end and no entries for the failed range, so recovery
//! never scans (and never indexes) those records, and writing goes on after them. Only if that
//! commit fails is the file cut back to its committed length, and only if that fails too is the
//! bucket closed for the rest of the run. A segment whose key (camera, start) is already taken is
//! moved by one tick rather than written over the indexed one (a restart, or a wall clock set
//! back, can repeat a start time).
//!
//! Every bucket file the writer creates is in the index (an empty bucket record, committed before
//! the first write), so a file whose every write or sync failed is still found and expired by the
//! sweeper. A bucket whose file is missing (or shorter than its committed length) while the index
//! names entries in it is written after its committed length, never over the offsets those
//! entries point at; the file is reported as missing.
//!
//! [`WriterHandle::writes_failing`] tells when nothing has been stored for a while although
//! segments keep coming (every write, sync or commit failing): `/healthz` turns 503 then.
//!
//! Faults of one bucket file stay with that file. What kills the writer is what makes every
//! write unsafe: the buckets directory gone or replaced (a disk unmounted under the daemon, the
//! data directory moved), or the io_uring failing with operations still in flight. The thread then
//! ends; [`WriterHandle::is_alive`] turns false, `/healthz` answers 503, and the daemon exits
//! with code 70 after a short grace period so that systemd restarts it.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use io_uring::{opcode, types, IoUring};

use super::index::{BucketInfo, IndexBatch, SegmentEntry};
use super::segment::Segment;
use super::{sync_dir, Store, StoreError};
use crate::metrics::Metrics;
use crate::time::Time90k;

/// Most segments written in one io_uring batch.
pub const MAX_BATCH: usize = 128;
/// Most iovecs in one writev (Linux `IOV_MAX`).
const IOV_MAX: usize = 1024;
/// Submission queue size.
const RING_ENTRIES: u32 = 256;
/// A bucket file is closed this long after its window ended and nothing was written to it.
const CLOSE_AFTER_IDLE: Duration = Duration::from_secs(30);

/// Settings of the writer.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Length of a bucket window in seconds.
    pub bucket_secs: u32,
    /// Longest time a written segment waits for its fdatasync and index commit.
    pub sync_interval: Duration,
    /// Payload bytes that may be queued or in flight before new segments are dropped.
    pub queue_limit_bytes: u64,
    /// Segments that may be queued (bounds the channel).
    pub queue_limit_segments: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            bucket_secs: 3600,
            sync_interval: Duration::from_secs(1),
            queue_limit_bytes: 256 << 20,
            queue_limit_segments: 4096,
        }
    }
}

/// Why a segment was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The writer is behind: the queue is over its budget. The segment was dropped and counted.
    #[error("writer queue full: segment dropped")]
    QueueFull,
    /// The writer thread has stopped. The segment was dropped and counted.
    #[error("writer stopped: segment dropped")]
    Stopped,
    /// Writing is paused because the disk is full of pinned data. Dropped and counted.
    #[error("storage full of pinned footage: segment dropped")]
    Paused,
}

enum Msg {
    Segment(Segment, u64),
    Flush(Sender<()>),
    /// Make a bucket's pending segments durable, close it and never write to it again.
    Retire(Arc<str>, Time90k, Sender<()>),
    Shutdown,
}

/// Shared state between the handles and the thread.
struct Shared {
    queued_bytes: AtomicU64,
    alive: AtomicBool,
    healthy: AtomicBool,
    paused: AtomicBool,
    /// Video retention (seconds) per policy, recorded in each bucket the writer creates.
    retention: std::sync::RwLock<HashMap<String, u64>>,
    /// Why the thread died, if it did.
    death: std::sync::Mutex<Option<String>>,
    /// Successes and failures of storing segments (for `/healthz`).
    health: std::sync::Mutex<WriteHealth>,
    /// Test hook: the next io_uring submission fails as if the ring broke.
    fail_ring: AtomicBool,
    /// Bumped at every turn of the thread's loop (the systemd watchdog's sign of progress).
    heartbeat: crate::service::Heartbeat,
}

/// How storing segments went lately.
#[derive(Debug, Default, Clone)]
struct WriteHealth {
    /// When segments were last made durable.
    last_success: Option<Instant>,
    /// The first failure since the last success.
    failing_since: Option<Instant>,
    /// The latest failure.
    last_failure: Option<Instant>,
    /// Segments lost since the last success.
    lost_in_a_row: u64,
    /// The latest error.
    last_error: Option<String>,
}

/// Nothing stored for at least this long while segments keep failing: `/healthz` says so.
pub const WRITES_FAILING_AFTER: Duration = Duration::from_secs(10);

/// A cloneable handle to submit segments to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    limit: u64,
    metrics: Arc<Metrics>,
}

impl WriterHandle {
    /// Queues a segment for writing, never blocking. On error the segment was dropped and counted.
    pub fn submit(&self, seg: Segment) -> Result<(), SubmitError> {
        let bytes = seg.payload_len();
        if !self.shared.alive.load(Ordering::Acquire) {
            self.metrics.segment_dropped(&seg.camera, "writer_stopped");
            return Err(SubmitError::Stopped);
        }
        if self.shared.paused.load(Ordering::Acquire) {
            self.metrics.segment_dropped(&seg.camera, "storage_full");
            return Err(SubmitError::Paused);
        }
        let before = self.shared.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before + bytes > self.limit {
            self.release(bytes);
            self.metrics.segment_dropped(&seg.camera, "queue_full");
            return Err(SubmitError::QueueFull);
        }
        self.metrics.writer_queue_bytes.set((before + bytes) as i64);
        match self.tx.try_send(Msg::Segment(seg, bytes)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.release(bytes);
                let (reason, err) = match e {
                    TrySendError::Full(_) => ("queue_full", SubmitError::QueueFull),
                    TrySendError::Disconnected(_) => ("writer_stopped", SubmitError::Stopped),
                };
                if let Msg::Segment(seg, _) = e.into_inner() {
                    self.metrics.segment_dropped(&seg.camera, reason);
                }
                Err(err)
            }
        }
    }

    fn release(&self, bytes: u64) {
        let left = self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        self.metrics.writer_queue_bytes.set(left as i64);
    }

    /// Blocks until every segment submitted before this call is durable (or was dropped).
    /// Returns false if the writer stopped first.
    pub fn flush(&self) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        // A flush is control, not data: it waits for room rather than being dropped.
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return false;
        }
        rx.recv().is_ok()
    }

    /// Makes the bucket's written segments durable, closes its file and refuses further writes
    /// to it (late segments are dropped as `expired`). Blocks until done; false if the writer
    /// stopped first. The sweeper calls this before it expires a bucket, so nothing is appended
    /// to a file it is about to unlink.
    pub fn retire(&self, policy: &str, start: Time90k) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Msg::Retire(policy.into(), start, tx)).is_err() {
            return false;
        }
        rx.recv().is_ok()
    }

    /// Sets the video retention (seconds) per policy that new buckets record (see
    /// `BucketInfo::retention_secs`). Set before segments are submitted.
    pub fn set_retention(&self, retention: HashMap<String, u64>) {
        *self
            .shared
            .retention
            .write()
            .unwrap_or_else(|e| e.into_inner()) = retention;
    }

    /// Pauses (true) or resumes (false) accepting new segments: the disk-pressure brake.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Release);
    }

    /// Whether new segments are refused because storage is full of pinned data.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::Acquire)
    }

    /// The writer thread's heartbeat: it beats at every loop turn, at least every second or
    /// `sync_interval` also when idle, and stops while a write, sync or commit hangs.
    pub fn heartbeat(&self) -> crate::service::Heartbeat {
        self.shared.heartbeat.clone()
    }

    /// Whether the writer thread is running.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// Whether the last sync and index commit succeeded.
    pub fn is_healthy(&self) -> bool {
        self.is_alive() && self.shared.healthy.load(Ordering::Acquire)
    }

    /// Why the writer thread died (`None` while it runs or after a clean shutdown).
    pub fn death(&self) -> Option<String> {
        self.shared
            .death
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Payload bytes queued or in flight.
    pub fn queued_bytes(&self) -> u64 {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// When every write, sync or index commit has failed for at least
    /// [`WRITES_FAILING_AFTER`] (and one failed within that time, so segments still come):
    /// what is wrong, for `/healthz`. `None` while segments are stored (also when only some
    /// files fail: faults of one file stay local) or none arrive.
    pub fn writes_failing(&self) -> Option<String> {
        self.writes_failing_after(WRITES_FAILING_AFTER)
    }

    /// [`WriterHandle::writes_failing`] with another threshold.
    pub fn writes_failing_after(&self, after: Duration) -> Option<String> {
        let h = self
            .shared
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let since = h.failing_since?;
        let recent = h.last_failure.is_some_and(|t| t.elapsed() < after);
        if since.elapsed() < after || !recent {
            return None;
        }
        Some(format!(
            "no segment stored for {} s: {} segments lost in a row{} (last error: {})",
            since.elapsed().as_secs(),
            h.lost_in_a_row,
            h.last_success.map_or_else(
                || ", none stored since the start".to_owned(),
                |t| format!(", last stored {} s ago", t.elapsed().as_secs())
            ),
            h.last_error.as_deref().unwrap_or("-")
        ))
    }

    /// Test hook: makes the writer's next io_uring submission fail as a broken ring would
    /// (entries queued, never completed). The writer must then stop cleanly (`death`).
    #[doc(hidden)]
    pub fn break_ring_for_tests(&self) {
        self.shared.fail_ring.store(true, Ordering::Release);
    }
}

/// The running writer: its handle and its thread.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread. Each segment that becomes durable is sent to `on_durable`, if
    /// given (an unbounded channel whose receiver must keep up or be dropped).
    pub fn spawn(
        store: Arc<Store>,
        cfg: WriterConfig,
        metrics: Arc<Metrics>,
        on_durable: Option<Sender<SegmentEntry>>,
    ) -> Result<Writer, StoreError> {
        let ring =
            IoUring::new(RING_ENTRIES).map_err(StoreError::io("set up io_uring", store.root()))?;
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue_limit_segments.max(1));
        let shared = Arc::new(Shared {
            queued_bytes: AtomicU64::new(0),
            alive: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            paused: AtomicBool::new(false),
            retention: Default::default(),
            death: std::sync::Mutex::new(None),
            health: Default::default(),
            fail_ring: AtomicBool::new(false),
            heartbeat: crate::service::Heartbeat::new(),
        });
        let buckets_dir = store.buckets_dir();
        let buckets_id =
            dir_identity(&buckets_dir).map_err(StoreError::io("stat", &buckets_dir))?;
        let handle = WriterHandle {
            tx,
            shared: shared.clone(),
            limit: cfg.queue_limit_bytes,
            metrics: metrics.clone(),
        };
        let mut state = WriterThread {
            store,
            cfg,
            metrics,
            rx,
            ring,
            shared,
            on_durable,
            open: HashMap::new(),
            retired: HashSet::new(),
            known_codecs: HashSet::new(),
            pending: Vec::new(),
            pending_keys: HashSet::new(),
            new_dirs: Vec::new(),
            first_pending_at: None,
            flush_waiters: Vec::new(),
            next_user_data: 0,
            buckets_id,
            fatal: None,
        };
        let thread = std::thread::Builder::new()
            .name("holdfast-writer".into())
            .spawn(move || {
                let _alive = AliveGuard(state.shared.clone());
                state.run();
            })
            .map_err(|e| StoreError::Io {
                op: "spawn writer thread",
                path: PathBuf::new(),
                source: e,
            })?;
        Ok(Writer {
            handle,
            thread: Some(thread),
        })
    }

    /// A handle for submitting segments.
    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Makes everything queued durable, then stops the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.handle.tx.send(Msg::Shutdown);
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Marks the writer dead when its thread ends, also by panic.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut d = self.0.death.lock().unwrap_or_else(|e| e.into_inner());
            d.get_or_insert_with(|| "the writer thread panicked".into());
        }
        self.0.alive.store(false, Ordering::Release);
    }
}

use super::dir_identity;

/// The io_uring failed with operations possibly in flight: their buffers must not be freed.
#[derive(Debug)]
struct RingBroken(std::io::Error);

struct OpenBucket {
    file: File,
    path: PathBuf,
    /// Next write offset (end of everything written, synced or not).
    len: u64,
    /// The committed view of the bucket, as in the index.
    info: BucketInfo,
    dirty: bool,
    last_write: Instant,
}

/// A record written but not yet synced and indexed.
struct Written {
    entry: SegmentEntry,
    codec_id: u64,
    avcc: bytes::Bytes,
    bytes: u64,
}

/// One segment being written in the current batch.
struct Job {
    seg: Segment,
    bytes: u64,
    header: Vec<u8>,
    key: (Arc<str>, Time90k),
    offset: u64,
    failed: Option<String>,
}

struct WriterThread {
    store: Arc<Store>,
    cfg: WriterConfig,
    metrics: Arc<Metrics>,
    rx: Receiver<Msg>,
    ring: IoUring,
    shared: Arc<Shared>,
    on_durable: Option<Sender<SegmentEntry>>,
    open: HashMap<(Arc<str>, Time90k), OpenBucket>,
    /// Buckets the sweeper expired during this run (expired ones of earlier runs carry the flag).
    retired: HashSet<(Arc<str>, Time90k)>,
    known_codecs: HashSet<u64>,
    pending: Vec<Written>,
    /// Segment keys of `pending`.
    pending_keys: HashSet<Vec<u8>>,
    new_dirs: Vec<PathBuf>,
    first_pending_at: Option<Instant>,
    flush_waiters: Vec<Sender<()>>,
    /// `user_data` of the next io_uring entry: unique for the life of the ring, so a completion
    /// can never be taken for another call's.
    next_user_data: u64,
    /// (device, inode) of the buckets directory at start.
    buckets_id: (u64, u64),
    /// Set when writing can no longer be safe: the thread stops (see the module doc).
    fatal: Option<String>,
}

impl WriterThread {
    fn run(&mut self) {
        self.run_until_fatal();
        if let Some(reason) = self.fatal.take() {
            tracing::error!(reason = %reason, "writer thread stopping: nothing can be recorded");
            *self.shared.death.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            self.shared.healthy.store(false, Ordering::Release);
            self.shared.alive.store(false, Ordering::Release);
            // Everything not durable is dropped (counted); flush waiters hear "stopped".
            for w in std::mem::take(&mut self.pending) {
                self.drop_segment(&w.entry.camera, w.bytes, "writer_stopped");
            }
            self.flush_waiters.clear();
            for m in self.rx.try_iter() {
                if let Msg::Segment(s, b) = m {
                    self.drop_segment(&s.camera, b, "writer_stopped");
                }
            }
        }
    }

    /// Checks what makes writing unsafe for every file (see the module doc).
    fn check_fatal(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        let dir = self.store.buckets_dir();
        match dir_identity(&dir) {
            Ok(id) if id == self.buckets_id => {}
            Ok(_) => {
                self.fatal = Some(format!(
                    "the buckets directory {} was replaced",
                    dir.display()
                ))
            }
            Err(e) => {
                self.fatal = Some(format!(
                    "the buckets directory {} is gone: {e}",
                    dir.display()
                ))
            }
        }
    }

    fn run_until_fatal(&mut self) {
        loop {
            self.shared.heartbeat.beat();
            self.check_fatal();
            if self.fatal.is_some() {
                return;
            }
            let timeout = match self.first_pending_at {
                Some(t) => (t + self.cfg.sync_interval).saturating_duration_since(Instant::now()),
                None => Duration::from_secs(1),
            };
            let mut batch = Vec::new();
            let mut shutdown = false;
            let first = match self.rx.recv_timeout(timeout) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    shutdown = true;
                    None
                }
            };
            let mut next = first;
            while let Some(m) = next.take() {
                match m {
                    Msg::Segment(s, b) => batch.push((s, b)),
                    Msg::Flush(tx) => self.flush_waiters.push(tx),
                    Msg::Retire(policy, start, tx) => {
                        // Write what came before, then make it durable, then close the file.
                        if !batch.is_empty() {
                            self.write_batch(std::mem::take(&mut batch));
                        }
                        self.sync_and_commit();
                        if self.fatal.is_some() {
                            // `tx` dropped: the caller hears that the writer stopped.
                            return;
                        }
                        let key = (policy, start);
                        self.open.remove(&key);
                        self.retired.insert(key);
                        let _ = tx.send(());
                    }
                    Msg::Shutdown => shutdown = true,
                }
                if batch.len() < MAX_BATCH && !shutdown {
                    next = self.rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.write_batch(batch);
            }
            if self.fatal.is_some() {
                return;
            }
            let due = self
                .first_pending_at
                .is_some_and(|t| t.elapsed() >= self.cfg.sync_interval);
            if due || shutdown || !self.flush_waiters.is_empty() {
                self.sync_and_commit();
            }
            if self.fatal.is_some() {
                return;
            }
            self.close_idle();
            if shutdown {
                // Anything still queued behind the shutdown is written too: nothing accepted is lost.
                let rest: Vec<_> = self
                    .rx
                    .try_iter()
                    .filter_map(|m| match m {
                        Msg::Segment(s, b) => Some((s, b)),
                        Msg::Flush(tx) => {
                            self.flush_waiters.push(tx);
                            None
                        }
                        Msg::Retire(_, _, tx) => {
                            let _ = tx.send(());
                            None
                        }
                        Msg::Shutdown => None,
                    })
                    .collect();
                for chunk in rest.chunks(MAX_BATCH) {
                    self.write_batch(chunk.to_vec());
                }
                self.sync_and_commit();
                return;
            }
        }
    }

    fn drop_segment(&self, camera: &str, bytes: u64, reason: &str) {
        self.metrics.segment_dropped(camera, reason);
        self.release(bytes);
    }

    /// A segment was lost to a write, sync or commit error (for `writes_failing`).
    fn note_failure(&self, lost: u64, error: &str) {
        let mut h = self.shared.health.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        h.failing_since.get_or_insert(now);
        h.last_failure = Some(now);
        h.lost_in_a_row += lost;
        h.last_error = Some(error.to_owned());
    }

    /// Segments were made durable.
    fn note_success(&self) {
        let mut h = self.shared.health.lock().unwrap_or_else(|e| e.into_inner());
        h.last_success = Some(Instant::now());
        h.failing_since = None;
        h.lost_in_a_row = 0;
    }

    fn release(&self, bytes: u64) {
        let left = self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        self.metrics.writer_queue_bytes.set(left as i64);
    }

    /// Opens (or returns) the bucket file for a policy and window; `None` when the sweeper has
    /// expired that bucket (nothing may be added to it any more).
    fn bucket(
        &mut self,
        policy: &Arc<str>,
        start: Time90k,
    ) -> Result<Option<&mut OpenBucket>, StoreError> {
        let key = (policy.clone(), start);
        if !self.open.contains_key(&key) {
            let indexed = self.store.index().bucket(policy, start)?;
            if indexed.as_ref().is_some_and(|i| i.expired) {
                self.retired.insert(key);
                return Ok(None);
            }
            let dir = self.store.policy_dir(policy);
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
                self.new_dirs.push(self.store.buckets_dir());
            }
            let path = self.store.bucket_path(policy, start);
            let existed = match std::fs::symlink_metadata(&path) {
                Ok(_) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(StoreError::io("stat", &path)(e)),
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(StoreError::io("open", &path))?;
            if !existed {
                self.new_dirs.push(dir);
            }
            let file_len = file
                .metadata()
                .map_err(StoreError::io("stat", &path))?
                .len();
            let was_indexed = indexed.is_some();
            let mut info =
                indexed.unwrap_or_else(|| BucketInfo::empty(policy, start, self.cfg.bucket_secs));
            if info.retention_secs.is_none() {
                let r = self
                    .shared
                    .retention
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                info.retention_secs = r.get(&**policy).copied();
            }
            if !was_indexed {
                // In the index before the first write: a file whose every write or sync fails
                // is still a bucket the sweeper finds and expires, never an orphan.
                let mut batch = IndexBatch::default();
                batch.put_bucket(self.store.index(), &info);
                if let Err(e) = self.store.index().commit(batch, true) {
                    drop(file);
                    if !existed {
                        let _ = std::fs::remove_file(&path);
                    }
                    return Err(e.into());
                }
            }
            if file_len < info.committed_len {
                // The file is missing (created again just now) or was cut: the entries the
                // index names point below `committed_len`; never write over those offsets.
                tracing::error!(path = %path.display(), len = file_len, committed = info.committed_len,
                    entries = info.segments,
                    "bucket file is missing or shorter than its committed length: new records go \
                     after the committed length, the indexed offsets are left alone");
                self.store.note_missing_file(&path, info.segments);
            }
            let len = file_len.max(info.committed_len);
            self.open.insert(
                key.clone(),
                OpenBucket {
                    file,
                    path,
                    len,
                    info,
                    dirty: false,
                    last_write: Instant::now(),
                },
            );
        }
        Ok(Some(self.open.get_mut(&key).expect("inserted above")))
    }

    /// Whether a segment key is taken: indexed, waiting for its sync, or earlier in this batch.
    fn key_taken(&self, key: &[u8], batch: &HashSet<Vec<u8>>) -> bool {
        batch.contains(key)
            || self.pending_keys.contains(key)
            || self.store.index().segment(key).ok().flatten().is_some()
    }

    fn write_batch(&mut self, segs: Vec<(Segment, u64)>) {
        if self.fatal.is_some() {
            for (seg, bytes) in segs {
                self.drop_segment(&seg.camera, bytes, "writer_stopped");
            }
            return;
        }
        let t0 = Instant::now();
        let mut jobs = Vec::with_capacity(segs.len());
        let mut keys = HashSet::new();
        for (mut seg, bytes) in segs {
            // A start time already used by this camera (a restart, a clock set back) moves
            // the segment by a tick instead of replacing the indexed one.
            for _ in 0..1000 {
                let key = super::index::segment_key(
                    &seg.policy,
                    seg.start.floor_to(self.cfg.bucket_secs),
                    &seg.camera,
                    seg.start,
                );
                if !self.key_taken(&key, &keys) {
                    keys.insert(key);
                    break;
                }
                seg.start = seg.start.add_ticks(1);
            }
            let header = match seg.header() {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(camera = %seg.camera, error = %e, "segment refused");
                    self.drop_segment(&seg.camera, bytes, "invalid");
                    continue;
                }
            };
            let mut hbuf = Vec::with_capacity(header.encoded_len());
            header
                .encode(&mut hbuf)
                .expect("checked by Segment::header");
            let bstart = seg.start.floor_to(self.cfg.bucket_secs);
            let policy = seg.policy.clone();
            let record_len = hbuf.len() as u64 + bytes;
            if self.retired.contains(&(policy.clone(), bstart)) {
                self.drop_segment(&seg.camera, bytes, "expired");
                continue;
            }
            match self.bucket(&policy, bstart) {
                Ok(None) => {
                    self.drop_segment(&seg.camera, bytes, "expired");
                }
                Ok(Some(b)) => {
                    let offset = b.len;
                    b.len += record_len;
                    b.dirty = true;
                    b.last_write = Instant::now();
                    jobs.push(Job {
                        seg,
                        bytes,
                        header: hbuf,
                        key: (policy, bstart),
                        offset,
                        failed: None,
                    });
                }
                Err(e) => {
                    tracing::error!(camera = %seg.camera, error = %e, "cannot open bucket file");
                    self.note_failure(1, &e.to_string());
                    self.drop_segment(&seg.camera, bytes, "write_error");
                }
            }
        }

        // One op per run of at most IOV_MAX iovecs; the iovecs point into the jobs' buffers.
        struct Op {
            job: usize,
            fd: i32,
            offset: u64,
            iov: Vec<libc::iovec>,
            len: u64,
        }
        let mut ops = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            let fd = self.open[&job.key].file.as_raw_fd();
            let mut slices: Vec<&[u8]> = Vec::with_capacity(job.seg.frames.len() + 1);
            slices.push(&job.header);
            slices.extend(job.seg.frames.iter().map(|f| &f.data[..]));
            let mut offset = job.offset;
            for chunk in slices.chunks(IOV_MAX) {
                let iov: Vec<libc::iovec> = chunk
                    .iter()
                    .map(|s| libc::iovec {
                        iov_base: s.as_ptr() as *mut libc::c_void,
                        iov_len: s.len(),
                    })
                    .collect();
                let len: u64 = chunk.iter().map(|s| s.len() as u64).sum();
                ops.push(Op {
                    job: j,
                    fd,
                    offset,
                    iov,
                    len,
                });
                offset += len;
            }
        }

        let results = match self.run_ops(ops.iter().map(|op| {
            opcode::Writev::new(types::Fd(op.fd), op.iov.as_ptr(), op.iov.len() as u32)
                .offset(op.offset)
                .build()
        })) {
            Ok(r) => r,
            Err(RingBroken(e)) => {
                // Writes may still be in flight over these buffers: they are leaked, never
                // freed, and the thread stops (the process exits soon after).
                for job in &jobs {
                    self.metrics.segment_dropped(&job.seg.camera, "write_error");
                    self.release(job.bytes);
                }
                std::mem::forget(ops);
                std::mem::forget(jobs);
                self.fatal = Some(format!("io_uring failed with writes in flight: {e}"));
                return;
            }
        };
        for (op, res) in ops.iter().zip(results) {
            let outcome = match res {
                Ok(n) if n as u64 == op.len => Ok(()),
                // A short write: finish it synchronously (rare: signals, full disk on the edge).
                Ok(n) => finish_short_write(op.fd, &op.iov, op.offset, n as u64),
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                jobs[op.job].failed.get_or_insert(e.to_string());
            }
        }

        for job in jobs {
            if let Some(err) = job.failed {
                let path = &self.open[&job.key].path;
                tracing::error!(camera = %job.seg.camera, path = %path.display(), error = %err, "segment write failed");
                self.note_failure(1, &format!("write {}: {err}", path.display()));
                self.drop_segment(&job.seg.camera, job.bytes, "write_error");
                continue;
            }
            let b = &self.open[&job.key];
            let header_len = job.header.len() as u32;
            let entry = SegmentEntry {
                policy: b.info.policy.clone(),
                bucket: b.info.start,
                camera: job.seg.camera.to_string(),
                start: job.seg.start,
                offset: job.offset,
                header_len,
                payload_len: job.bytes,
                duration: job.seg.duration() as u32,
                frame_count: job.seg.frames.len() as u32,
                codec_id: job.seg.codec.id,
                payload_crc: u32::from_le_bytes(
                    job.header[job.header.len() - 8..job.header.len() - 4]
                        .try_into()
                        .expect("4 bytes"),
                ),
            };
            self.pending_keys.insert(entry.key());
            self.pending.push(Written {
                entry,
                codec_id: job.seg.codec.id,
                avcc: job.seg.codec.avcc.clone(),
                bytes: job.bytes,
            });
            self.first_pending_at.get_or_insert_with(Instant::now);
        }
        self.metrics
            .writer_write_seconds
            .observe(t0.elapsed().as_secs_f64());
    }

    /// Submits the entries in chunks that fit the ring and returns each one's result, in order.
    /// Every submitted entry's completion is waited for before this returns, also after a
    /// transient submit error (`EINTR`, `EAGAIN`, `EBUSY`: completions are reaped and the submit
    /// retried). Any other error leaves entries in flight: the caller must then never free the
    /// buffers they point to ([`RingBroken`]).
    fn run_ops(
        &mut self,
        sqes: impl Iterator<Item = io_uring::squeue::Entry>,
    ) -> Result<Vec<std::io::Result<u32>>, RingBroken> {
        let sqes: Vec<_> = sqes.collect();
        let mut results: Vec<std::io::Result<u32>> = Vec::with_capacity(sqes.len());
        results.resize_with(sqes.len(), || Ok(0));
        for (c, chunk) in sqes.chunks(RING_ENTRIES as usize).enumerate() {
            let base = c * RING_ENTRIES as usize;
            let first_ud = self.next_user_data;
            self.next_user_data += chunk.len() as u64;
            for (i, sqe) in chunk.iter().enumerate() {
                let sqe = sqe.clone().user_data(first_ud + i as u64);
                // SAFETY: every buffer an entry points to (iovecs, headers, frame Bytes) is owned by
                // the caller's jobs and ops, which outlive this call; we wait for every
                // completion before returning, or report `RingBroken` so the caller leaks them.
                unsafe {
                    self.ring
                        .submission()
                        .push(&sqe)
                        .expect("chunk fits the submission queue");
                }
            }
            if self.shared.fail_ring.swap(false, Ordering::AcqRel) {
                // Test hook: as if io_uring_enter failed with these entries queued.
                let e = std::io::Error::other("io_uring failure injected by a test");
                tracing::error!(error = %e, in_flight = chunk.len(), "io_uring submit failed");
                return Err(RingBroken(e));
            }
            let mut done = 0;
            let mut transient = 0u32;
            while done < chunk.len() {
                match self.ring.submit_and_wait(chunk.len() - done) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY))
                            && transient < 10_000 =>
                    {
                        // The kernel wants completions reaped first (below), then a retry.
                        transient += 1;
                        if self.ring.completion().is_empty() {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, in_flight = chunk.len() - done, "io_uring submit failed");
                        return Err(RingBroken(e));
                    }
                }
                for cqe in self.ring.completion() {
                    let ud = cqe.user_data();
                    if ud < first_ud || ud >= first_ud + chunk.len() as u64 {
                        tracing::warn!(
                            user_data = ud,
                            "io_uring completion of an earlier call ignored"
                        );
                        continue;
                    }
                    let i = base + (ud - first_ud) as usize;
                    let r = cqe.result();
                    results[i] = if r < 0 {
                        Err(std::io::Error::from_raw_os_error(-r))
                    } else {
                        Ok(r as u32)
                    };
                    done += 1;
                }
            }
        }
        Ok(results)
    }

    fn sync_and_commit(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        if self.pending.is_empty() {
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(());
            }
            return;
        }
        let t0 = Instant::now();
        // Files (by bucket) whose sync failed, with the error.
        let mut failed: HashMap<(Arc<str>, Time90k), String> = HashMap::new();
        let mut error: Option<String> = None;

        let dirty: Vec<_> = self
            .open
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(k, b)| (k.clone(), b.file.as_raw_fd()))
            .collect();
        let results = match self.run_ops(dirty.iter().map(|(_, fd)| {
            opcode::Fsync::new(types::Fd(*fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
        })) {
            Ok(r) => r,
            Err(RingBroken(e)) => {
                self.fatal = Some(format!("io_uring failed with syncs in flight: {e}"));
                return;
            }
        };
        for ((key, _), r) in dirty.iter().zip(results) {
            let b = self.open.get_mut(key).expect("listed above");
            b.dirty = false;
            if let Err(e) = r {
                failed.insert(key.clone(), format!("fdatasync {}: {e}", b.path.display()));
            }
        }
        let mut dirs = std::mem::take(&mut self.new_dirs);
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            if let Err(e) = sync_dir(&d) {
                // Files created in it are not durable yet: their segments wait no longer, but
                // the directory is synced again with the next group.
                for (key, b) in &self.open {
                    if b.path.starts_with(&d) && b.info.segments == 0 {
                        failed.entry(key.clone()).or_insert_with(|| e.to_string());
                    }
                }
                self.new_dirs.push(d);
            }
        }
        // A file whose sync failed keeps its bytes, but its bucket record is committed with
        // `committed_len` at the file's current end and no entries for them: they are never
        // indexed now, and recovery never scans them later (the page cache may hold bytes the
        // disk does not). Writing goes on after them.
        let mut remembered: HashMap<(Arc<str>, Time90k), BucketInfo> = HashMap::new();
        for (key, err) in &failed {
            let Some(b) = self.open.get(key) else {
                continue;
            };
            tracing::error!(path = %b.path.display(), error = %err,
                "sync failed: this file's segments of the group are dropped, their range is never indexed");
            let mut info = b.info.clone();
            info.committed_len = info.committed_len.max(b.len);
            remembered.insert(key.clone(), info);
        }

        let all = std::mem::take(&mut self.pending);
        self.pending_keys.clear();
        self.first_pending_at = None;
        let (pending, unsynced): (Vec<_>, Vec<_>) = all.into_iter().partition(|w| {
            !failed.contains_key(&(Arc::<str>::from(w.entry.policy.as_str()), w.entry.bucket))
        });
        if let Some(err) = failed.values().next() {
            self.note_failure(unsynced.len() as u64, err);
        }
        for w in unsynced {
            self.drop_segment(&w.entry.camera, w.bytes, "sync_error");
        }
        if !pending.is_empty() || !remembered.is_empty() {
            let index = self.store.index();
            let mut batch = IndexBatch::default();
            let mut touched = remembered.clone();
            let mut new_codecs = Vec::new();
            for w in &pending {
                batch.put_segment(index, &w.entry);
                if !self.known_codecs.contains(&w.codec_id) && !new_codecs.contains(&w.codec_id) {
                    batch.put_codec(index, w.codec_id, &w.avcc);
                    new_codecs.push(w.codec_id);
                }
                let key = (Arc::<str>::from(w.entry.policy.as_str()), w.entry.bucket);
                touched
                    .entry(key.clone())
                    .or_insert_with(|| self.open[&key].info.clone())
                    .add(&w.entry);
            }
            for info in touched.values() {
                batch.put_bucket(index, info);
            }
            match index.commit(batch, true) {
                Ok(()) => {
                    self.known_codecs.extend(new_codecs);
                    for (key, info) in touched {
                        if let Some(b) = self.open.get_mut(&key) {
                            b.info = info;
                        }
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    // The failed ranges are not remembered in the index: cut them off instead.
                    for key in remembered.keys() {
                        self.cut_back(key);
                    }
                }
            }
        }

        match error {
            None => {
                self.shared
                    .healthy
                    .store(failed.is_empty(), Ordering::Release);
                if !pending.is_empty() {
                    self.note_success();
                }
                for w in pending {
                    self.release(w.bytes);
                    if let Some(tx) = &self.on_durable {
                        let _ = tx.send(w.entry);
                    }
                }
            }
            Some(e) => {
                self.shared.healthy.store(false, Ordering::Release);
                tracing::error!(error = %e, segments = pending.len(), "index commit failed: segments dropped");
                self.note_failure(pending.len() as u64, &format!("index commit: {e}"));
                for w in pending {
                    self.drop_segment(&w.entry.camera, w.bytes, "sync_error");
                }
            }
        }
        self.metrics
            .writer_sync_seconds
            .observe(t0.elapsed().as_secs_f64());
        for w in self.flush_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    /// Cuts a file whose sync failed back to its committed length, when its failed range could
    /// not be recorded in the index (recovery must never find those records). If even that
    /// fails, nothing more is written to the file in this run.
    fn cut_back(&mut self, key: &(Arc<str>, Time90k)) {
        let Some(b) = self.open.get_mut(key) else {
            return;
        };
        let cut = b
            .file
            .set_len(b.info.committed_len)
            .and_then(|()| b.file.sync_all());
        match cut {
            Ok(()) => b.len = b.info.committed_len,
            Err(e) => {
                tracing::error!(path = %b.path.display(), error = %e,
                    "cannot cut the unsynced records off: no more writes to this file in this run");
                self.open.remove(key);
                self.retired.insert(key.clone());
            }
        }
    }

    /// Closes bucket files whose window is over and that have been idle for a while.
    fn close_idle(&mut self) {
        let now = Time90k::now();
        let window = i64::from(self.cfg.bucket_secs) * crate::time::TICKS_PER_SEC;
        self.open.retain(|(_, start), b| {
            b.dirty || start.add_ticks(window) > now || b.last_write.elapsed() < CLOSE_AFTER_IDLE
        });
    }
}

/// Completes a writev that wrote only `done` of its bytes, with plain positional writes.
fn finish_short_write(
    fd: i32,
    iov: &[libc::iovec],
    offset: u64,
    mut done: u64,
) -> std::io::Result<()> {
    // SAFETY: `fd` is an open file owned by the writer for the duration of this call.
    let file =
        std::mem::ManuallyDrop::new(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    let mut pos = offset;
    for v in iov {
        let len = v.iov_len as u64;
        if done >= len {
            done -= len;
            pos += len;
            continue;
        }
        // SAFETY: the iovec points into a live buffer of `iov_len` bytes (see `write_batch`).
        let slice = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
        file.write_all_at(&slice[done as usize..], pos + done)?;
        pos += len;
        done = 0;
    }
    Ok(())
}

//! The writer: one thread that owns every open bucket file and an io_uring, and turns segments
//! into durable, indexed records.
//!
//! Flow of one segment:
//! 1. A camera task calls [`WriterHandle::submit`]: a non-blocking send on a bounded channel.
//!    When the queue is over its byte budget (or the channel is full) the segment is dropped and
//!    counted (`holdfast_segments_dropped_total{reason="queue_full"}`); no camera ever waits.
//! 2. The thread takes what is queued (up to [`MAX_BATCH`] segments) and gives each record its
//!    offset up front. Direct files (the default): each record is copied once into a slot of a
//!    registered, aligned arena and padded to 4 KiB; a file's adjacent records in a slot are one
//!    `WriteFixed`; a full slot's round is submitted without waiting, and the next slot is
//!    filled while earlier rounds are written ([`DirectTuning`]). Buffered files: one `writev`
//!    per record, the header buffer followed by the frames' own `Bytes`, waited for.
//! 3. At most `sync_interval` after the first unsynced write (or on flush/shutdown) it waits for
//!    every direct round in flight, then issues `fdatasync` for every dirty file (again on
//!    io_uring), fsyncs directories that gained files, and only then commits the index entries
//!    and bucket records in one synced RocksDB batch.
//! 4. Only after that commit is the segment durable: readers can see it, the optional
//!    `on_durable` channel hears of it, and flush waiters are answered.
//!
//! A failed write drops its segment (counted, logged) and leaves unindexed bytes that recovery
//! and the sweeper treat as garbage. A failed fdatasync drops the group's segments of that file
//! (other files' segments are committed), because after an fsync error the page cache cannot be
//! trusted to hold the data (the "fsyncgate" lesson); the bucket record is committed with
//! `committed_len` at the end of what was written and no entries for the failed range, so recovery
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use io_uring::{opcode, types, IoUring};

use super::index::{BucketInfo, IndexBatch, SegmentEntry};
use super::segment::{align_up, Segment, RECORD_ALIGN};
use super::{sync_dir, Store, StoreError};
use crate::metrics::Metrics;
use crate::time::Time90k;

/// Most segments written in one io_uring batch.
pub const MAX_BATCH: usize = 128;
/// Most iovecs in one writev (Linux `IOV_MAX`).
const IOV_MAX: usize = 1024;
/// Submission queue size.
const RING_ENTRIES: u32 = 256;
/// Completion queue size: more than can ever be outstanding (see `Writer::spawn_tuned`).
const CQ_ENTRIES: u32 = 4096;
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
    /// How bucket files are written.
    pub io: WriteIo,
}

/// How the writer writes bucket files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WriteIo {
    /// `O_DIRECT` where the filesystem allows it: records copied once into an aligned,
    /// registered buffer, padded to [`RECORD_ALIGN`], written with `WriteFixed` into space
    /// preallocated with `fallocate`. Files that refuse `O_DIRECT` are written buffered.
    #[default]
    Direct,
    /// Buffered `writev` of the frames' own buffers through the page cache (no padding).
    Buffered,
    /// [`WriteIo::Buffered`] with `RWF_DONTCACHE` (Linux 6.14+): the pages are written back
    /// and dropped from the cache soon after the write. A kernel or filesystem that refuses the
    /// flag fails the write (`EOPNOTSUPP`): a measured variant, not a default.
    BufferedDontcache,
    /// [`WriteIo::Buffered`] plus `sync_file_range(SYNC_FILE_RANGE_WRITE)` of each round's
    /// written ranges right after the round (write-behind: writeback starts at once instead of
    /// at the fdatasync). A measured variant, not a default.
    BufferedWriteBehind,
}

/// `RWF_DONTCACHE` of `<linux/fs.h>` (not yet in the libc crate).
const RWF_DONTCACHE: i32 = 0x80;

/// Size of the registered staging arena of direct writes by default (a site of up to 500
/// cameras, [`DirectTuning::for_cameras`]). It is cut into [`ARENA_SLOTS`] slots; a round of
/// writes is what one slot holds.
pub const ARENA_LEN: usize = ARENA_SLOTS * SLOT_LEN;
/// Slots of the arena by default: while one slot is being filled, the rounds of the others are
/// written.
pub const ARENA_SLOTS: usize = 4;
/// Bytes of one slot: the largest single write of merged records.
pub const SLOT_LEN: usize = 16 << 20;
/// Most slots, for the largest sites (see [`DirectTuning::for_cameras`]).
const MAX_SLOTS: usize = 8;
/// Cameras per slot beyond the default four.
const CAMERAS_PER_SLOT: usize = 125;

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            bucket_secs: 3600,
            sync_interval: Duration::from_secs(1),
            queue_limit_bytes: 256 << 20,
            queue_limit_segments: 4096,
            io: WriteIo::Direct,
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
    /// Nothing to do but a turn of the loop (to act on an ask to resize the arena).
    Wake,
    Shutdown,
}

/// Shared state between the handles and the thread.
struct Shared {
    queued_bytes: AtomicU64,
    /// The byte budget of the queue (`storage.writer_queue`; a reload may change it).
    queue_limit: AtomicU64,
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
    /// Test hook: completed direct rounds are finished only when a slot or a sync needs them,
    /// not polled after each batch (so a batch can be placed while another's round is pending).
    hold_rounds: AtomicBool,
    /// Test hook: the thread takes nothing from its queue while set (segments queue up, so
    /// the next batches are full).
    hold_queue: AtomicBool,
    /// Direct writes submitted, records they carried, most rounds in flight at once.
    direct_stats: [AtomicU64; 3],
    /// Bumped at every turn of the thread's loop (the systemd watchdog's sign of progress).
    heartbeat: crate::service::Heartbeat,
    /// Whether the direct-I/O staging arena is registered with the ring (`WriteFixed`).
    buffers_registered: AtomicBool,
    /// Slots the staging arena is cut into now (0: no arena, the writer writes buffered).
    arena_slots: AtomicUsize,
    /// Slots last asked for by [`WriterHandle::resize_arena`], and how many times it was asked
    /// (the thread acts on each ask once, between two batches).
    arena_target: AtomicUsize,
    arena_asks: AtomicU64,
    /// `io_uring_register_buffers` calls for the arena that failed (the memory lock limit).
    arena_refusals: AtomicU64,
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
        if before > 0 && before + bytes > self.shared.queue_limit.load(Ordering::Relaxed) {
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

    /// Sets the queue's byte budget (`storage.writer_queue`, applied by a reload). Segments
    /// already queued stay; a lower budget refuses new ones until the queue is below it.
    pub fn set_queue_limit(&self, bytes: u64) {
        self.shared.queue_limit.store(bytes, Ordering::Relaxed);
    }

    /// The queue's byte budget.
    pub fn queue_limit(&self) -> u64 {
        self.shared.queue_limit.load(Ordering::Relaxed)
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
        self.answer(&rx)
    }

    /// Waits for the writer's answer to a flush or retire. A request that reached the queue
    /// just as the thread stopped is never answered (nor dropped, while handles live): a
    /// stopped writer is "no" too.
    fn answer(&self, rx: &Receiver<()>) -> bool {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) if !self.is_alive() => return rx.try_recv().is_ok(),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
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
        self.answer(&rx)
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

    /// Whether direct writes go from the staging arena registered with the ring (`WriteFixed`);
    /// false for buffered writing or when the registration was refused (`RLIMIT_MEMLOCK`).
    pub fn buffers_registered(&self) -> bool {
        self.shared.buffers_registered.load(Ordering::Acquire)
    }

    /// Slots the direct-I/O staging arena is cut into now, that is, write rounds that can be in
    /// flight (0 when the writer writes buffered and has no arena).
    pub fn arena_slots(&self) -> usize {
        self.shared.arena_slots.load(Ordering::Acquire)
    }

    /// Asks the writer to cut its staging arena into `slots` slots of the same length (at
    /// most 8; the daemon asks at every reload for [`DirectTuning::for_cameras`] of the cameras
    /// it records). Never blocks: the thread is woken (unless its queue is full, when it is busy
    /// anyway) and acts on the latest ask between two batches, before it answers a
    /// [`WriterHandle::flush`] called after this; it waits for every round in flight, swaps the
    /// arena and its io_uring registration and logs the outcome ([`WriterHandle::arena_slots`],
    /// [`WriterHandle::buffers_registered`] and [`WriterHandle::arena_refusals`] tell it). When
    /// the memory lock limit refuses the new arena a registered one is kept (an unregistered
    /// one is replaced, unregistered); an arena left unregistered is registered at the next ask
    /// (a raised limit takes effect at the next reload). Nothing to do for a buffered writer.
    pub fn resize_arena(&self, slots: usize) {
        self.shared.arena_target.store(slots, Ordering::Release);
        self.shared.arena_asks.fetch_add(1, Ordering::AcqRel);
        // The ask is in `Shared`, not in the message: a full queue loses nothing.
        let _ = self.tx.try_send(Msg::Wake);
    }

    /// How many times registering a staging arena with io_uring failed since the start (at
    /// start, for a new arena, or registering the old one again): in practice, the memory lock
    /// limit.
    pub fn arena_refusals(&self) -> u64 {
        self.shared.arena_refusals.load(Ordering::Acquire)
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

    /// Test hook: with `true`, completed direct rounds are finished only when a slot or a sync
    /// needs them, so the next batch is placed while they still count as in flight.
    #[doc(hidden)]
    pub fn hold_rounds_for_tests(&self, hold: bool) {
        self.shared.hold_rounds.store(hold, Ordering::Release);
    }

    /// Test hook: with `true`, the writer takes nothing from its queue (submitted segments
    /// wait), so that after `false` it takes them in full batches.
    #[doc(hidden)]
    pub fn hold_queue_for_tests(&self, hold: bool) {
        self.shared.hold_queue.store(hold, Ordering::Release);
    }

    /// How direct writes went out since the start (for tests and benches).
    pub fn direct_stats(&self) -> DirectStats {
        let [w, r, m] = &self.shared.direct_stats;
        DirectStats {
            writes: w.load(Ordering::Acquire),
            records: r.load(Ordering::Acquire),
            most_rounds_in_flight: m.load(Ordering::Acquire),
        }
    }
}

/// Counts of the direct writes a writer submitted ([`WriterHandle::direct_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectStats {
    /// Write operations submitted (a merged write counts once).
    pub writes: u64,
    /// Records those writes carried.
    pub records: u64,
    /// Most rounds whose writes had not all completed (as far as the completion queue told)
    /// when another round was submitted, counting that one: 1 means no overlap.
    pub most_rounds_in_flight: u64,
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
        Self::spawn_tuned(store, cfg, metrics, on_durable, DirectTuning::default())
    }

    /// [`Writer::spawn`] with the given direct-write settings (the daemon sizes them by its
    /// cameras; benches compare others).
    pub fn spawn_tuned(
        store: Arc<Store>,
        cfg: WriterConfig,
        metrics: Arc<Metrics>,
        on_durable: Option<Sender<SegmentEntry>>,
        tuning: DirectTuning,
    ) -> Result<Writer, StoreError> {
        // The completion queue holds every completion that can be outstanding, so none can
        // overflow (and be dropped by a kernel without IORING_FEAT_NODROP, or one that cannot
        // allocate the overflow entry): direct writes in flight are kept to
        // CQ_ENTRIES - RING_ENTRIES (`submit_round`), plus one call's RING_ENTRIES at most.
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(RING_ENTRIES)
            .map_err(StoreError::io("set up io_uring", store.root()))?;
        let geometry = tuning.checked();
        let (arena, registered) = if cfg.io == WriteIo::Direct {
            let mut arena = AlignedBuf::new(geometry.slots * geometry.slot_len);
            // SAFETY: the arena moves into the writer thread's state, declared after the ring,
            // so it outlives the registration; it is leaked, never freed, if the ring breaks, and
            // replaced only after it was unregistered (`WriterThread::resize_arena`).
            let registered = match unsafe { register_arena(&ring, &mut arena) } {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, bytes = arena.len(),
                        "io_uring_register_buffers refused (RLIMIT_MEMLOCK too low? the unit sets \
                         LimitMEMLOCK): direct writes use the unregistered aligned buffer");
                    false
                }
            };
            (Some(arena), registered)
        } else {
            (None, false)
        };
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue_limit_segments.max(1));
        let shared = Arc::new(Shared {
            queued_bytes: AtomicU64::new(0),
            queue_limit: AtomicU64::new(cfg.queue_limit_bytes),
            alive: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            paused: AtomicBool::new(false),
            retention: Default::default(),
            death: std::sync::Mutex::new(None),
            health: Default::default(),
            fail_ring: AtomicBool::new(false),
            hold_rounds: AtomicBool::new(false),
            hold_queue: AtomicBool::new(false),
            direct_stats: Default::default(),
            heartbeat: crate::service::Heartbeat::new(),
            buffers_registered: AtomicBool::new(registered),
            arena_slots: AtomicUsize::new(if arena.is_some() { geometry.slots } else { 0 }),
            arena_target: AtomicUsize::new(geometry.slots),
            arena_asks: AtomicU64::new(0),
            arena_refusals: AtomicU64::new(u64::from(arena.is_some() && !registered)),
        });
        let buckets_dir = store.buckets_dir();
        let buckets_id =
            dir_identity(&buckets_dir).map_err(StoreError::io("stat", &buckets_dir))?;
        let handle = WriterHandle {
            tx,
            shared: shared.clone(),
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
            arena,
            registered,
            geometry,
            free_slots: (0..geometry.slots).rev().collect(),
            arena_asked: 0,
            rounds: VecDeque::new(),
            fallbacks: Vec::new(),
            call_first: 0,
            call_results: Vec::new(),
            call_left: 0,
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
    /// Opened with `O_DIRECT`: records are staged, aligned and padded.
    direct: bool,
    /// Whether `fallocate` is still tried for this file.
    prealloc: bool,
    /// End of the space allocated ahead (the file's size after the last `fallocate`).
    prealloc_end: u64,
    /// After a full disk refused even the records' own space: no `fallocate` for this file
    /// before then (each try on a full ext4 waits for a journal commit).
    prealloc_retry_at: Option<Instant>,
    /// End of the last record written in this run (without its padding).
    data_end: u64,
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
    /// Bytes written for it: the record, plus its padding in a direct file.
    len: u64,
    /// Whether its file is written with direct I/O (staged, padded record).
    direct: bool,
    failed: Option<String>,
    /// The write failed with `EINVAL`: a filesystem that took `O_DIRECT` at open but refuses
    /// direct writes (the file is then written buffered from the next round on).
    einval: bool,
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
    /// The aligned staging buffer direct records are copied into (declared after `ring`, so
    /// it is freed after the ring that may have it registered).
    arena: Option<AlignedBuf>,
    /// Whether `arena` is registered with the ring (buffer index 0: `WriteFixed`).
    registered: bool,
    /// How the arena is cut into rounds and how rounds are written.
    geometry: DirectTuning,
    /// Slots of the arena that no round holds.
    free_slots: Vec<usize>,
    /// The last ask to resize the arena acted on (`Shared::arena_asks`).
    arena_asked: u64,
    /// Rounds of direct writes submitted and not yet finished, oldest first.
    rounds: VecDeque<Round>,
    /// Files that refused a direct write (`EINVAL`): switched to buffered (`O_DIRECT` cleared on
    /// the descriptor) once no write is in flight.
    fallbacks: Vec<(Arc<str>, Time90k)>,
    /// The synchronous call in progress ([`WriterThread::run_ops`]): its first `user_data`,
    /// its entries' results as they complete, and how many are still to come.
    call_first: u64,
    call_results: Vec<Option<std::io::Result<u32>>>,
    call_left: usize,
}

/// How direct writes use the staging arena and preallocate. The daemon runs
/// [`DirectTuning::for_cameras`]; the bench compares others (`benches/writer.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectTuning {
    /// Slots the arena is cut into (rounds that can be in flight, one of them being filled).
    pub slots: usize,
    /// Bytes of one slot (a multiple of [`RECORD_ALIGN`]).
    pub slot_len: usize,
    /// Whether a file's records that are adjacent in the file and in the slot are one write.
    pub merge: bool,
    /// Whether each round is waited for right after its submission (no overlap of copy and
    /// I/O: the writer as first built in issue 11).
    pub serial: bool,
    /// Whether space is reserved ahead with `fallocate`.
    pub prealloc: bool,
    /// Largest preallocation step in bytes (the step grows with the file from 1 MiB).
    pub prealloc_max: u64,
}

impl Default for DirectTuning {
    fn default() -> Self {
        Self {
            slots: ARENA_SLOTS,
            slot_len: SLOT_LEN,
            merge: true,
            serial: false,
            prealloc: true,
            prealloc_max: PREALLOC_MAX,
        }
    }
}

impl DirectTuning {
    /// What the daemon runs for a site of `cameras` cameras: the default 4 slots of 16 MiB up
    /// to 500 cameras, one more slot per 125 cameras beyond, at most 8 (a 128 MiB pinned arena
    /// from 876 cameras on). With 1,000 streams 8 rounds in flight keep the disk busier than 4
    /// (design/performance.md: 98% of the raw new-file figure against 90% in the same run); a
    /// small site does not pin memory it cannot use.
    pub fn for_cameras(cameras: usize) -> Self {
        Self {
            slots: cameras
                .div_ceil(CAMERAS_PER_SLOT)
                .clamp(ARENA_SLOTS, MAX_SLOTS),
            ..Self::default()
        }
    }

    /// The writer as first built in issue 11: one 32 MiB round at a time, waited for, one write
    /// per record, 64 MiB preallocation steps.
    pub fn serial() -> Self {
        Self {
            slots: 1,
            slot_len: 32 << 20,
            merge: false,
            serial: true,
            prealloc: true,
            prealloc_max: 64 << 20,
        }
    }

    /// Sane values: at least one slot of at least one block, aligned.
    fn checked(mut self) -> Self {
        self.slots = self.slots.max(1);
        self.slot_len = (align_up(self.slot_len.max(1) as u64) as usize).min(1 << 30);
        self.prealloc_max = self.prealloc_max.max(PREALLOC_MIN);
        self
    }
}

/// One round of direct writes: records staged in one slot of the arena (and any record too
/// large for a slot, in a buffer of its own), submitted together, finished when every write
/// completed.
struct Round {
    /// The arena slot the round's records are staged in.
    slot: Option<usize>,
    /// Bytes of the slot used.
    used: usize,
    jobs: Vec<Job>,
    ops: Vec<Op>,
    /// Buffers of records larger than a slot.
    extra: Vec<AlignedBuf>,
    /// `user_data` of the first op (the others follow).
    first_ud: u64,
    /// Each op's result, once completed.
    results: Vec<Option<std::io::Result<u32>>>,
    /// Ops not yet completed.
    left: usize,
}

// SAFETY: a round's raw pointers point into the arena or its own buffers, which only the writer
// thread uses; the state holding rounds moves into that thread before any round exists.
unsafe impl Send for Round {}

impl WriterThread {
    fn run(&mut self) {
        self.run_until_fatal();
        if self.fatal.is_some() {
            // Writes still in flight finish before their buffers may be freed (or are leaked if
            // the ring broke); their segments are dropped with the rest below.
            self.drain_rounds();
        }
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
            // Test hook: what arrives while held waits, so the batch taken after is full (at most
            // 10 s, so a test that fails while holding still ends).
            let held = Instant::now();
            while first.is_some()
                && self.shared.hold_queue.load(Ordering::Acquire)
                && held.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
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
                        if let Some(b) = self.open.remove(&key) {
                            trim_tail(&b);
                        }
                        self.retired.insert(key);
                        let _ = tx.send(());
                    }
                    Msg::Wake => {}
                    Msg::Shutdown => shutdown = true,
                }
                if batch.len() < MAX_BATCH && !shutdown {
                    next = self.rx.try_recv().ok();
                }
            }
            // Between two batches (a ring that broke meanwhile drops the batch, counted).
            self.apply_arena_ask();
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
                        Msg::Wake | Msg::Shutdown => None,
                    })
                    .collect();
                for chunk in rest.chunks(MAX_BATCH) {
                    self.write_batch(chunk.to_vec());
                }
                self.sync_and_commit();
                if self.fatal.is_none() {
                    for (_, b) in self.open.drain() {
                        trim_tail(&b);
                    }
                }
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
            let open = |direct: bool| {
                let mut o = OpenOptions::new();
                o.read(true).write(true).create(true).truncate(false);
                if direct {
                    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_DIRECT);
                }
                o.open(&path)
            };
            let (file, direct) = match self.cfg.io {
                WriteIo::Buffered | WriteIo::BufferedDontcache | WriteIo::BufferedWriteBehind => {
                    (open(false), false)
                }
                WriteIo::Direct => match open(true) {
                    Ok(f) if is_tmpfs(&f) => {
                        // tmpfs takes O_DIRECT but its "disk" is the page cache: padding and
                        // preallocation would only cost memory.
                        tracing::info!(path = %path.display(),
                            "tmpfs: buffered writes to this file (direct I/O gains nothing there)");
                        drop(f);
                        (open(false), false)
                    }
                    Ok(f) => (Ok(f), true),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::info!(path = %path.display(), error = %e,
                            "the filesystem refuses O_DIRECT: buffered writes to this file");
                        (open(false), false)
                    }
                    Err(e) => (Err(e), false),
                },
            };
            let file = file.map_err(StoreError::io("open", &path))?;
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
                    direct,
                    prealloc: direct && self.geometry.prealloc,
                    prealloc_end: file_len,
                    prealloc_retry_at: None,
                    data_end: 0,
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
        // A file that refused a direct write goes buffered before this batch's records are
        // placed (not only at the next sync): its other rounds are drained first, so no direct
        // write to it is in flight when `O_DIRECT` is cleared.
        if !self.fallbacks.is_empty() {
            self.drain_rounds();
            for key in std::mem::take(&mut self.fallbacks) {
                self.fall_back_to_buffered(&key);
            }
            if self.fatal.is_some() {
                for (seg, bytes) in segs {
                    self.drop_segment(&seg.camera, bytes, "writer_stopped");
                }
                return;
            }
        }
        let t0 = Instant::now();
        let mut jobs = Vec::with_capacity(segs.len());
        // Keys taken: this batch's, and those of direct records still being written (rounds in
        // flight reach `pending_keys` only when they complete), so a start time used twice is
        // moved by a tick, never indexed over a record in flight.
        let mut keys: HashSet<Vec<u8>> = self
            .rounds
            .iter()
            .flat_map(|r| r.jobs.iter())
            .map(|j| {
                super::index::segment_key(
                    &j.seg.policy,
                    j.seg.start.floor_to(self.cfg.bucket_secs),
                    &j.seg.camera,
                    j.seg.start,
                )
            })
            .collect();
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
            // Checks the segment; the real payload CRC is computed where the bytes are copied
            // (direct files) or below (buffered files).
            if let Err(e) = seg.header_with_crc(0) {
                tracing::error!(camera = %seg.camera, error = %e, "segment refused");
                self.drop_segment(&seg.camera, bytes, "invalid");
                continue;
            }
            let header_len = seg.header_len() as u64;
            let bstart = seg.start.floor_to(self.cfg.bucket_secs);
            let policy = seg.policy.clone();
            let record_len = header_len + bytes;
            if self.retired.contains(&(policy.clone(), bstart)) {
                self.drop_segment(&seg.camera, bytes, "expired");
                continue;
            }
            let prealloc_max = self.geometry.prealloc_max;
            match self.bucket(&policy, bstart) {
                Ok(None) => {
                    self.drop_segment(&seg.camera, bytes, "expired");
                }
                Ok(Some(b)) => {
                    let (offset, len) = if b.direct {
                        // Block-aligned start, zero padding to the next block boundary.
                        (align_up(b.len), align_up(record_len))
                    } else {
                        (b.len, record_len)
                    };
                    b.len = offset + len;
                    b.dirty = true;
                    b.last_write = Instant::now();
                    let direct = b.direct;
                    if direct {
                        preallocate(b, offset, offset + len, prealloc_max);
                    }
                    let header = if direct {
                        Vec::new()
                    } else {
                        let mut hbuf = Vec::with_capacity(header_len as usize);
                        seg.header()
                            .and_then(|h| h.encode(&mut hbuf))
                            .expect("checked above");
                        hbuf
                    };
                    jobs.push(Job {
                        seg,
                        bytes,
                        header,
                        key: (policy, bstart),
                        offset,
                        len,
                        direct,
                        failed: None,
                        einval: false,
                    });
                }
                Err(e) => {
                    tracing::error!(camera = %seg.camera, error = %e, "cannot open bucket file");
                    self.note_failure(1, &e.to_string());
                    self.drop_segment(&seg.camera, bytes, "write_error");
                }
            }
        }

        // Direct files: records copied into the arena's slots, one round per slot, submitted
        // without waiting (the next slot is filled while earlier rounds are written). Buffered
        // files: writev of the jobs' own buffers, waited for here.
        let (direct, buffered): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.direct);
        if !direct.is_empty() {
            self.write_direct(direct);
        }
        if !buffered.is_empty() && self.fatal.is_none() {
            self.write_buffered(buffered);
        } else {
            for job in buffered {
                self.drop_segment(&job.seg.camera, job.bytes, "writer_stopped");
            }
        }
        self.metrics
            .writer_write_seconds
            .observe(t0.elapsed().as_secs_f64());
    }

    /// Buffered files: one writev per run of at most IOV_MAX iovecs pointing into the jobs' own
    /// buffers, all submitted together and waited for.
    fn write_buffered(&mut self, mut jobs: Vec<Job>) {
        let mut ops: Vec<Op> = Vec::new();
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
                    jobs: j..j + 1,
                    fd,
                    offset,
                    buf: OpBuf::Iov(iov),
                    len,
                });
                offset += len;
            }
        }
        if !self.run_round(&mut ops, &mut jobs) {
            return;
        }
        for job in jobs {
            self.job_done(job);
        }
    }

    /// Direct files: each record is copied into the current slot of the arena (a record larger
    /// than a slot gets an aligned buffer of its own); a full slot's round is submitted and the
    /// next slot filled while it is written. Records of one file that follow each other in the
    /// file and in the slot are one write. Rounds finish (their segments wait for the next sync)
    /// when their writes complete: polled here, waited for when a slot is needed and before
    /// every sync.
    fn write_direct(&mut self, mut jobs: Vec<Job>) {
        // A file's records of this batch have consecutive offsets: grouped by file they are
        // adjacent in the slot too, so they merge into few large writes.
        if self.geometry.merge {
            jobs.sort_by(|a, b| a.key.cmp(&b.key));
        }
        let slot_len = self.geometry.slot_len;
        let mut cur: Option<Round> = None;
        let mut jobs = jobs.into_iter();
        while let Some(mut job) = jobs.next() {
            let len = job.len as usize;
            let own_buffer = len > slot_len || self.arena.is_none();
            if cur
                .as_ref()
                .is_some_and(|r| !own_buffer && r.slot.is_some() && r.used + len > slot_len)
            {
                let r = cur.take().expect("checked");
                self.submit_round(r);
            }
            if cur
                .as_ref()
                .is_some_and(|r| !own_buffer && r.slot.is_none())
            {
                // A round of own buffers only: it gets a slot now.
                let slot = self.take_slot();
                if let Some(r) = cur.as_mut() {
                    r.slot = slot;
                }
            }
            if cur.is_none() && self.fatal.is_none() {
                let slot = if own_buffer { None } else { self.take_slot() };
                cur = Some(Round {
                    slot,
                    used: 0,
                    jobs: Vec::new(),
                    ops: Vec::new(),
                    extra: Vec::new(),
                    first_ud: 0,
                    results: Vec::new(),
                    left: 0,
                });
            }
            if self.fatal.is_some() {
                // The ring broke while a slot was awaited: nothing more is written.
                for j in std::iter::once(job).chain(jobs.by_ref()) {
                    self.drop_segment(&j.seg.camera, j.bytes, "writer_stopped");
                }
                if let Some(r) = cur.take() {
                    for j in r.jobs {
                        self.drop_segment(&j.seg.camera, j.bytes, "writer_stopped");
                    }
                }
                return;
            }
            let r = cur.as_mut().expect("a round is open");
            let fd = self.open[&job.key].file.as_raw_fd();
            let (buf, fixed) = match (r.slot, self.arena.as_mut()) {
                (Some(slot), Some(a)) if !own_buffer => {
                    let at = slot * slot_len + r.used;
                    r.used += len;
                    (
                        &mut a.as_mut_slice()[at..at + len],
                        self.registered.then_some(0u16),
                    )
                }
                _ => {
                    r.extra.push(AlignedBuf::new(len));
                    (r.extra.last_mut().expect("pushed").as_mut_slice(), None)
                }
            };
            job.header = stage_record(&job.seg, buf);
            let ptr = buf.as_ptr();
            let j = r.jobs.len();
            r.jobs.push(job);
            let job = &r.jobs[j];
            let merged = self.geometry.merge
                && !own_buffer
                && r.ops.last_mut().is_some_and(|last| match &mut last.buf {
                    OpBuf::Staged {
                        ptr: lp,
                        len: ll,
                        fixed: lf,
                    } if last.fd == fd
                        && *lf == fixed
                        && last.offset + last.len == job.offset
                        && lp.wrapping_add(*ll) == ptr =>
                    {
                        *ll += len;
                        last.len += len as u64;
                        last.jobs.end = j + 1;
                        true
                    }
                    _ => false,
                });
            if !merged {
                r.ops.push(Op {
                    jobs: j..j + 1,
                    fd,
                    offset: job.offset,
                    buf: OpBuf::Staged { ptr, len, fixed },
                    len: len as u64,
                });
            }
        }
        if let Some(r) = cur {
            self.submit_round(r);
        }
        // Finish what has completed meanwhile (no waiting).
        if self.shared.hold_rounds.load(Ordering::Acquire) {
            return;
        }
        if self.fatal.is_none() {
            if let Err(RingBroken(e)) = self.reap(false) {
                self.ring_broken(&e);
            }
        }
        self.finish_completed_rounds();
    }

    /// A free slot of the arena, after waiting for the oldest round when every slot is taken.
    /// `None` when the ring broke meanwhile (the thread stops).
    fn take_slot(&mut self) -> Option<usize> {
        loop {
            if let Some(s) = self.free_slots.pop() {
                return Some(s);
            }
            if self.rounds.is_empty() {
                // Every slot is held by a round not submitted: cannot happen (one round is
                // filled at a time), but never wait for nothing.
                return None;
            }
            if let Err(RingBroken(e)) = self.wait_oldest_round() {
                self.ring_broken(&e);
                return None;
            }
        }
    }

    /// Submits a round's writes without waiting for them (with `serial` tuning, waits).
    fn submit_round(&mut self, mut r: Round) {
        if r.ops.is_empty() {
            if let Some(s) = r.slot {
                self.free_slots.push(s);
            }
            return;
        }
        // Room in the completion queue for this round's completions (see `spawn_tuned`).
        let room = (CQ_ENTRIES - RING_ENTRIES) as usize;
        while !self.rounds.is_empty()
            && self.rounds.iter().map(|r| r.left).sum::<usize>() + r.ops.len() > room
        {
            if let Err(RingBroken(e)) = self.wait_oldest_round() {
                self.ring_broken(&e);
                // Never submitted: its buffers are free, its segments dropped.
                for j in r.jobs {
                    self.drop_segment(&j.seg.camera, j.bytes, "writer_stopped");
                }
                return;
            }
        }
        r.first_ud = self.next_user_data;
        self.next_user_data += r.ops.len() as u64;
        r.left = r.ops.len();
        r.results.resize_with(r.ops.len(), || None);
        let sqes: Vec<_> = r
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let OpBuf::Staged { ptr, len, fixed } = op.buf else {
                    unreachable!("a round holds staged writes only")
                };
                match fixed {
                    Some(index) => {
                        opcode::WriteFixed::new(types::Fd(op.fd), ptr, len as u32, index)
                            .offset(op.offset)
                            .build()
                    }
                    None => opcode::Write::new(types::Fd(op.fd), ptr, len as u32)
                        .offset(op.offset)
                        .build(),
                }
                .user_data(r.first_ud + i as u64)
            })
            .collect();
        // Rounds still being written (completions taken first, without waiting), with this one.
        self.reap_into();
        let in_flight = self.rounds.iter().filter(|r| r.left > 0).count() as u64 + 1;
        let shared = self.shared.clone();
        let [writes, records, most] = &shared.direct_stats;
        writes.fetch_add(r.ops.len() as u64, Ordering::AcqRel);
        records.fetch_add(r.jobs.len() as u64, Ordering::AcqRel);
        most.fetch_max(in_flight, Ordering::AcqRel);
        // In the list before the kernel sees them: should the ring break, their buffers are
        // among what is leaked.
        self.rounds.push_back(r);
        self.first_pending_at.get_or_insert_with(Instant::now);
        let mut pushed = 0;
        while pushed < sqes.len() {
            {
                let mut sq = self.ring.submission();
                while pushed < sqes.len() {
                    // SAFETY: the buffers (arena slot, own buffers) stay allocated until the
                    // round is finished, after every one of its completions, or are leaked if
                    // the ring breaks (`ring_broken`).
                    if unsafe { sq.push(&sqes[pushed]) }.is_err() {
                        break;
                    }
                    pushed += 1;
                }
            }
            if let Err(RingBroken(e)) = self.enter(0) {
                self.ring_broken(&e);
                return;
            }
        }
        if self.geometry.serial {
            while self.rounds.back().is_some_and(|r| r.left > 0) {
                if let Err(RingBroken(e)) = self.reap(true) {
                    self.ring_broken(&e);
                    return;
                }
            }
            self.finish_completed_rounds();
        }
    }

    /// Waits until the oldest round's writes have all completed and finishes it.
    fn wait_oldest_round(&mut self) -> Result<(), RingBroken> {
        while self.rounds.front().is_some_and(|r| r.left > 0) {
            self.reap(true)?;
        }
        if let Some(r) = self.rounds.pop_front() {
            self.finish_round(r);
        }
        Ok(())
    }

    /// Waits for every round in flight and finishes them (before a sync: data, then index).
    fn drain_rounds(&mut self) {
        while !self.rounds.is_empty() {
            if let Err(RingBroken(e)) = self.wait_oldest_round() {
                self.ring_broken(&e);
                return;
            }
        }
    }

    /// Acts on a new ask of [`WriterHandle::resize_arena`], once.
    fn apply_arena_ask(&mut self) {
        let asked = self.shared.arena_asks.load(Ordering::Acquire);
        if asked != self.arena_asked {
            self.arena_asked = asked;
            self.resize_arena(self.shared.arena_target.load(Ordering::Acquire));
        }
    }

    /// Cuts the staging arena into `slots` slots of the same length (at most [`MAX_SLOTS`]), or
    /// registers the arena it has again when that was refused before. Every round in flight is
    /// waited for first: their writes and slot numbers point into the old arena. The old arena
    /// is freed only once it is no longer registered with the ring; if the new one cannot be
    /// registered where the old one was (the memory lock limit), the old one is registered
    /// again and kept.
    fn resize_arena(&mut self, slots: usize) {
        let slots = slots.clamp(1, MAX_SLOTS);
        let was = self.geometry.slots;
        if self.arena.is_none() || self.geometry.serial || (slots == was && self.registered) {
            return;
        }
        self.drain_rounds();
        if self.fatal.is_some() {
            return;
        }
        let slot_mib = self.geometry.slot_len >> 20;
        let refused = |shared: &Shared| shared.arena_refusals.fetch_add(1, Ordering::AcqRel);
        if slots == was {
            // The same size, refused before: the limit may have been raised since.
            let arena = self.arena.as_mut().expect("checked");
            // SAFETY: the arena stays in `self.arena` until it is unregistered again.
            match unsafe { register_arena(&self.ring, arena) } {
                Ok(()) => {
                    self.set_registered(true);
                    tracing::info!(slots, "writer staging arena registered with io_uring");
                }
                Err(e) => {
                    refused(&self.shared);
                    tracing::warn!(error = %e, slots,
                        "io_uring_register_buffers still refused the writer's staging arena \
                         (memory lock limit too low?): direct writes use it unregistered");
                }
            }
            return;
        }
        let had = self.registered;
        if had {
            if let Err(e) = self.ring.submitter().unregister_buffers() {
                tracing::warn!(error = %e, slots = was,
                    "could not unregister the writer's staging arena from io_uring: it keeps \
                     its size");
                return;
            }
            self.set_registered(false);
        }
        let mut new = AlignedBuf::new(slots * self.geometry.slot_len);
        // SAFETY (both calls): the buffer registered is kept in `self.arena` until it is
        // unregistered again (here, or never: it is leaked if the ring breaks).
        let registered = match unsafe { register_arena(&self.ring, &mut new) } {
            Ok(()) => true,
            Err(e) => {
                refused(&self.shared);
                if had {
                    let old = self.arena.as_mut().expect("checked");
                    if unsafe { register_arena(&self.ring, old) }.is_ok() {
                        self.set_registered(true);
                        tracing::warn!(error = %e, slots = was, wanted = slots,
                            "io_uring_register_buffers refused a staging arena of {} MiB \
                             (memory lock limit too low? the unit sets LimitMEMLOCK): the \
                             writer keeps its {was} write rounds of {slot_mib} MiB",
                            slots * slot_mib);
                        return;
                    }
                    refused(&self.shared);
                }
                tracing::warn!(error = %e, slots,
                    "io_uring_register_buffers refused the resized staging arena (memory lock \
                     limit too low?): direct writes use it unregistered");
                false
            }
        };
        self.arena = Some(new);
        self.set_registered(registered);
        self.geometry.slots = slots;
        self.free_slots = (0..slots).rev().collect();
        self.shared.arena_slots.store(slots, Ordering::Release);
        tracing::info!(
            was,
            slots,
            slot_mib,
            registered,
            "writer staging arena resized: {slots} write rounds of {slot_mib} MiB can be in flight"
        );
    }

    /// Whether the arena is registered with the ring (`WriteFixed`), here and for the handles.
    fn set_registered(&mut self, registered: bool) {
        self.registered = registered;
        self.shared
            .buffers_registered
            .store(registered, Ordering::Release);
    }

    /// Finishes every round whose writes have all completed.
    fn finish_completed_rounds(&mut self) {
        while let Some(i) = self.rounds.iter().position(|r| r.left == 0) {
            let r = self.rounds.remove(i).expect("found");
            self.finish_round(r);
        }
    }

    /// A round whose writes all completed: short writes are finished, failures recorded on their
    /// segments, the slot freed, and each segment goes on to wait for the sync (or is dropped).
    fn finish_round(&mut self, mut r: Round) {
        let results = std::mem::take(&mut r.results);
        for (op, res) in r.ops.iter().zip(results) {
            let res = res.unwrap_or_else(|| Err(std::io::Error::other("write never completed")));
            if let Err(e) = self.op_outcome(op, res) {
                fail_unwritten(op, &mut r.jobs, &e);
            }
        }
        if let Some(s) = r.slot {
            // A slot of another arena, or one freed twice, would stage two rounds in one place.
            assert!(
                s < self.geometry.slots && !self.free_slots.contains(&s),
                "slot {s} freed twice or not of this arena ({} slots)",
                self.geometry.slots
            );
            self.free_slots.push(s);
        }
        drop(r.extra);
        for job in r.jobs {
            self.job_done(job);
        }
    }

    /// The outcome of one completed write: a short write is finished here. On error, how far
    /// the write certainly got (see [`OpFailure`]).
    fn op_outcome(&self, op: &Op, res: std::io::Result<u32>) -> Result<(), OpFailure> {
        // Only the direct write itself refusing (`EINVAL` from the ring) switches the file
        // to buffered, not an error while finishing a short write.
        let refused = matches!(&res, Err(e) if e.raw_os_error() == Some(libc::EINVAL));
        let outcome = match res {
            Ok(n) if n as u64 == op.len => Ok(()),
            // A short write: finish it synchronously (rare: signals, full disk on the edge).
            Ok(n) => match &op.buf {
                OpBuf::Iov(iov) => finish_short_write(op.fd, iov, op.offset, n as u64, 1),
                OpBuf::Staged { ptr, len, .. } => {
                    let iov = [libc::iovec {
                        iov_base: *ptr as *mut libc::c_void,
                        iov_len: *len,
                    }];
                    // A direct write must go on from a block boundary: the partial block is
                    // redone (the buffer, offset and length are all RECORD_ALIGN-aligned).
                    finish_short_write(op.fd, &iov, op.offset, n as u64, RECORD_ALIGN)
                }
            },
            Err(e) => Err((e, 0)),
        };
        outcome.map_err(|(error, written)| OpFailure {
            error,
            refused,
            written,
        })
    }

    /// A segment's write is over: failed (dropped, counted) or waiting for the next sync.
    fn job_done(&mut self, job: Job) {
        if let Some(err) = job.failed {
            if job.direct && job.einval && !self.fallbacks.contains(&job.key) {
                self.fallbacks.push(job.key.clone());
            }
            let path = &self.open[&job.key].path;
            tracing::error!(camera = %job.seg.camera, path = %path.display(), error = %err, "segment write failed");
            self.note_failure(1, &format!("write {}: {err}", path.display()));
            self.drop_segment(&job.seg.camera, job.bytes, "write_error");
            return;
        }
        let b = self
            .open
            .get_mut(&job.key)
            .expect("open while its jobs run");
        let header_len = job.header.len() as u32;
        b.data_end = b
            .data_end
            .max(job.offset + u64::from(header_len) + job.bytes);
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

    /// The ring failed with operations possibly in flight: every round's buffers (and the arena)
    /// are leaked, never freed while the kernel may read them, their segments dropped, and the
    /// thread stops.
    fn ring_broken(&mut self, e: &std::io::Error) {
        let rounds = std::mem::take(&mut self.rounds);
        for r in &rounds {
            for job in &r.jobs {
                self.metrics.segment_dropped(&job.seg.camera, "write_error");
                self.release(job.bytes);
            }
        }
        std::mem::forget(rounds);
        std::mem::forget(self.arena.take());
        self.free_slots.clear();
        self.shared.arena_slots.store(0, Ordering::Release);
        self.fatal
            .get_or_insert_with(|| format!("io_uring failed with writes in flight: {e}"));
    }

    /// Submits one round of buffered writes and waits for them; records each failure on its
    /// job. False when the ring broke: then the jobs' buffers are leaked (never freed while the
    /// kernel may still read them), the segments dropped, and the thread stops.
    fn run_round(&mut self, ops: &mut Vec<Op>, jobs: &mut Vec<Job>) -> bool {
        if ops.is_empty() {
            return true;
        }
        let rw_flags = match self.cfg.io {
            WriteIo::BufferedDontcache => RWF_DONTCACHE,
            _ => 0,
        };
        let results = match self.run_ops(ops.iter().map(|op| {
            let OpBuf::Iov(iov) = &op.buf else {
                unreachable!("buffered rounds hold iovecs only")
            };
            opcode::Writev::new(types::Fd(op.fd), iov.as_ptr(), iov.len() as u32)
                .offset(op.offset)
                .rw_flags(rw_flags)
                .build()
        })) {
            Ok(r) => r,
            Err(RingBroken(e)) => {
                // Writes may still be in flight over these buffers: they are leaked, never
                // freed, and the thread stops (the process exits soon after).
                for job in jobs.iter() {
                    self.metrics.segment_dropped(&job.seg.camera, "write_error");
                    self.release(job.bytes);
                }
                std::mem::forget(std::mem::take(ops));
                std::mem::forget(std::mem::take(jobs));
                self.ring_broken(&e);
                return false;
            }
        };
        for (op, res) in ops.iter().zip(results) {
            if let Err(e) = self.op_outcome(op, res) {
                fail_unwritten(op, jobs, &e);
            }
        }
        if self.cfg.io == WriteIo::BufferedWriteBehind {
            // Start writeback of what this round wrote. Only a hint: an error here changes
            // nothing (the fdatasync before the index commit is what makes records durable and
            // reports failures), and the ring is fine if it returns.
            let ranges: Vec<(i32, u64, u64)> =
                ops.iter().map(|op| (op.fd, op.offset, op.len)).collect();
            let res = self.run_ops(ranges.iter().map(|&(fd, offset, len)| {
                opcode::SyncFileRange::new(types::Fd(fd), len.min(u32::MAX as u64) as u32)
                    .offset(offset)
                    .flags(libc::SYNC_FILE_RANGE_WRITE)
                    .build()
            }));
            if let Err(RingBroken(e)) = res {
                // The writes completed (their buffers are free), but the ring is unusable: the
                // round's segments are dropped and the thread stops, as for a broken write.
                for job in jobs.iter() {
                    self.metrics.segment_dropped(&job.seg.camera, "write_error");
                    self.release(job.bytes);
                }
                jobs.clear();
                ops.clear();
                self.ring_broken(&e);
                return false;
            }
        }
        ops.clear();
        true
    }

    /// Submits what is in the submission queue (test hook: fails as a broken ring would) and,
    /// with `wait`, waits for at least `wait` completions. Transient errors (`EINTR`, `EAGAIN`,
    /// `EBUSY`) are retried after reaping completions; any other error leaves entries possibly
    /// in flight ([`RingBroken`]).
    fn enter(&mut self, wait: usize) -> Result<(), RingBroken> {
        if !self.ring.submission().is_empty() && self.shared.fail_ring.swap(false, Ordering::AcqRel)
        {
            // Test hook: as if io_uring_enter failed with these entries queued.
            let e = std::io::Error::other("io_uring failure injected by a test");
            tracing::error!(error = %e, "io_uring submit failed");
            return Err(RingBroken(e));
        }
        let mut transient = 0u32;
        let mut wait = wait;
        loop {
            match self.ring.submit_and_wait(wait) {
                Ok(_) if self.ring.submission().is_empty() => return Ok(()),
                // The kernel took only part of the queue (it then does not wait): reap, and
                // submit the rest without waiting; callers wait in loops of their own.
                Ok(_) if transient < 10_000 => {
                    transient += 1;
                    wait = 0;
                    if self.ring.completion().is_empty() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    self.reap_into();
                }
                Ok(_) => {
                    let e = std::io::Error::other("io_uring kept entries unsubmitted");
                    tracing::error!(error = %e, "io_uring submit failed");
                    return Err(RingBroken(e));
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY))
                        && transient < 10_000 =>
                {
                    // The kernel wants completions reaped first, then a retry.
                    transient += 1;
                    if self.ring.completion().is_empty() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    self.reap_into();
                }
                Err(e) => {
                    tracing::error!(error = %e, "io_uring submit failed");
                    return Err(RingBroken(e));
                }
            }
        }
    }

    /// Takes the completions available (waiting for at least one with `wait`) and records those
    /// of direct rounds on them.
    fn reap(&mut self, wait: bool) -> Result<(), RingBroken> {
        if wait && self.ring.completion().is_empty() {
            self.enter(1)?;
        }
        self.reap_into();
        Ok(())
    }

    /// Takes every completion in the queue and records it: on the synchronous call in progress
    /// ([`WriterThread::run_ops`]) or on its direct round.
    fn reap_into(&mut self) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, r) in cqes {
            let res = if r < 0 {
                Err(std::io::Error::from_raw_os_error(-r))
            } else {
                Ok(r as u32)
            };
            let first = self.call_first;
            if ud >= first && ud < first + self.call_results.len() as u64 {
                let slot = &mut self.call_results[(ud - first) as usize];
                if slot.is_none() {
                    self.call_left -= 1;
                }
                *slot = Some(res);
                continue;
            }
            match self
                .rounds
                .iter_mut()
                .find(|rd| ud >= rd.first_ud && ud < rd.first_ud + rd.ops.len() as u64)
            {
                Some(rd) => {
                    let slot = &mut rd.results[(ud - rd.first_ud) as usize];
                    if slot.is_none() {
                        rd.left -= 1;
                    }
                    *slot = Some(res);
                }
                None => {
                    tracing::warn!(
                        user_data = ud,
                        "io_uring completion of an earlier call ignored"
                    )
                }
            }
        }
    }

    /// Submits the entries in chunks that fit the ring and returns each one's result, in order.
    /// Every submitted entry's completion is waited for before this returns, also after a
    /// transient submit error (`EINTR`, `EAGAIN`, `EBUSY`: completions are reaped and the submit
    /// retried); completions of direct rounds in flight meanwhile are recorded on their rounds.
    /// Any other error leaves entries in flight: the caller must then never free the
    /// buffers they point to ([`RingBroken`]).
    fn run_ops(
        &mut self,
        sqes: impl Iterator<Item = io_uring::squeue::Entry>,
    ) -> Result<Vec<std::io::Result<u32>>, RingBroken> {
        let sqes: Vec<_> = sqes.collect();
        let mut results: Vec<std::io::Result<u32>> = Vec::with_capacity(sqes.len());
        for chunk in sqes.chunks(RING_ENTRIES as usize) {
            let first_ud = self.next_user_data;
            self.next_user_data += chunk.len() as u64;
            // The call's bookkeeping is set before any entry is pushed: a submit inside the loop
            // below may reap some of this chunk's completions already.
            self.call_first = first_ud;
            self.call_results.clear();
            self.call_results.resize_with(chunk.len(), || None);
            self.call_left = chunk.len();
            for (i, sqe) in chunk.iter().enumerate() {
                let sqe = sqe.clone().user_data(first_ud + i as u64);
                // SAFETY: every buffer an entry points to (iovecs, headers, frame Bytes) is owned by
                // the caller's jobs and ops, which outlive this call; we wait for every
                // completion before returning, or report `RingBroken` so the caller leaks them.
                while unsafe { self.ring.submission().push(&sqe) }.is_err() {
                    // Entries an earlier submit left in the queue fill it: submit them first.
                    self.enter(0)?;
                }
            }
            // What is still to come (a submit while pushing may have reaped some already).
            let mut wait = self.call_left;
            while self.call_left > 0 {
                self.enter(wait)?;
                wait = 1;
                self.reap_into();
            }
            results.extend(
                self.call_results
                    .drain(..)
                    .map(|r| r.expect("every entry completed")),
            );
        }
        Ok(results)
    }

    fn sync_and_commit(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        // Data before index: every write in flight completes before the files are synced. The
        // wait for direct writes still in flight counts as sync time (a batch's own time,
        // `holdfast_writer_write_seconds`, covers staging and submitting its writes, and waiting
        // for earlier ones when every slot is busy).
        let t0 = Instant::now();
        self.drain_rounds();
        // An ask to resize the arena made before a flush is acted on before that flush is
        // answered, on every path that answers one (nothing is in flight now).
        self.apply_arena_ask();
        if self.fatal.is_some() {
            return;
        }
        for key in std::mem::take(&mut self.fallbacks) {
            self.fall_back_to_buffered(&key);
        }
        if self.pending.is_empty() {
            // Every write of the rounds drained above failed: nothing waits for a sync.
            self.first_pending_at = None;
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(());
            }
            return;
        }
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
        // `committed_len` at the end of what was written and no entries for them: they are never
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
            // Writing goes on after what was written; space preallocated beyond it stays
            // reserved for the next records (never written, so recovery finds nothing there).
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
                            b.len = b.len.max(info.committed_len);
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
            Ok(()) => {
                b.len = b.info.committed_len;
                b.prealloc_end = b.prealloc_end.min(b.len);
                b.data_end = b.data_end.min(b.len);
            }
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
            let keep = b.dirty
                || start.add_ticks(window) > now
                || b.last_write.elapsed() < CLOSE_AFTER_IDLE;
            if !keep {
                trim_tail(b);
            }
            keep
        });
    }
}

/// Completes a write that wrote only `done` of its bytes, with plain positional writes. After
/// a short write the next one starts at a multiple of `align` (a direct file's block: the
/// partial block is written again). On error, how many bytes from `offset` are certainly
/// written (a multiple of `align`).
fn finish_short_write(
    fd: i32,
    iov: &[libc::iovec],
    offset: u64,
    done: u64,
    align: u64,
) -> Result<(), (std::io::Error, u64)> {
    // SAFETY: `fd` is an open file owned by the writer for the duration of this call.
    let file =
        std::mem::ManuallyDrop::new(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    let total: u64 = iov.iter().map(|v| v.iov_len as u64).sum();
    let mut done = done / align * align;
    let mut stalled = false;
    while done < total {
        // The iovec holding byte `done`, and where in it.
        let mut skip = done;
        let v = iov
            .iter()
            .find(|v| {
                let inside = skip < v.iov_len as u64;
                if !inside {
                    skip -= v.iov_len as u64;
                }
                inside
            })
            .expect("done < total");
        // SAFETY: the iovec points into a live buffer of `iov_len` bytes (see `write_batch`).
        let slice = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
        let want = slice.len() - skip as usize;
        match file.write_at(&slice[skip as usize..], offset + done) {
            // Whole: on to the next iovec. Short: on from the last whole block.
            Ok(n) if n == want => done += n as u64,
            Ok(n) => {
                let next = (done + n as u64) / align * align;
                if next == done {
                    // Once more: a failing disk then tells its error (ENOSPC, EIO).
                    if stalled {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            "a short write made no progress",
                        );
                        return Err((e, done));
                    }
                    stalled = true;
                    continue;
                }
                stalled = false;
                done = next;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err((e, done)),
        }
    }
    Ok(())
}

/// A write that failed: the error, whether it was a direct write refused with `EINVAL`, and
/// how many bytes from the write's offset are certainly written (by the first, short write and
/// by the attempt to finish it).
struct OpFailure {
    error: std::io::Error,
    refused: bool,
    written: u64,
}

/// Marks the jobs of a failed write whose records it did not write completely (a merged write
/// that came back short and could not be finished fails only the records past what it wrote;
/// those before are whole and go on to be synced and indexed).
fn fail_unwritten(op: &Op, jobs: &mut [Job], f: &OpFailure) {
    for job in &mut jobs[op.jobs.clone()] {
        if job.offset + job.len <= op.offset + f.written {
            continue;
        }
        job.einval |= f.refused;
        job.failed.get_or_insert(f.error.to_string());
    }
}

/// One write operation of a round.
struct Op {
    /// The jobs whose records it writes (several when adjacent records are merged).
    jobs: std::ops::Range<usize>,
    fd: i32,
    offset: u64,
    buf: OpBuf,
    len: u64,
}

/// What an [`Op`] writes from.
enum OpBuf {
    /// A buffered file's record: its header buffer and the frames' own `Bytes`.
    Iov(Vec<libc::iovec>),
    /// A direct file's record, copied into an aligned buffer; `fixed` is the registered
    /// buffer's index when the buffer is the registered arena.
    Staged {
        ptr: *const u8,
        len: usize,
        fixed: Option<u16>,
    },
}

/// Registers `arena` with the ring as its only fixed buffer (index 0, for `WriteFixed`).
///
/// # Safety
/// The kernel may read the buffer until it is unregistered: the caller must neither free nor
/// move it before `unregister_buffers` succeeded (or the ring is dropped).
unsafe fn register_arena(ring: &IoUring, arena: &mut AlignedBuf) -> std::io::Result<()> {
    let iov = [libc::iovec {
        iov_base: arena.as_mut_slice().as_mut_ptr().cast(),
        iov_len: arena.len(),
    }];
    // SAFETY: as the caller promises.
    unsafe { ring.submitter().register_buffers(&iov) }
}

/// A zeroed heap buffer aligned to [`RECORD_ALIGN`], as direct I/O needs.
pub(crate) struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain owned memory; only the writer thread uses it.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1), RECORD_ALIGN as usize)
            .expect("valid layout")
    }

    /// Allocates `len` zeroed bytes (aborts on allocation failure, as `Vec` does).
    pub(crate) fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    /// Bytes in the buffer.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The whole buffer.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `len` initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// Copies a segment's record into `buf` (exactly its padded length): the payload with its
/// CRC32C in one pass (`staging`: each 64 bytes loaded once, stored non-temporally and folded
/// into the CRC), then the header with that CRC, then zeros up to the end. Returns the encoded
/// header.
fn stage_record(seg: &Segment, buf: &mut [u8]) -> Vec<u8> {
    let hlen = seg.header_len();
    let payload = seg.frames.iter().map(|f| &f.data[..]);
    let crc = super::staging::stage_frames(payload, &mut buf[hlen..]);
    let at = hlen + seg.payload_len() as usize;
    buf[at..].fill(0);
    let mut header = Vec::with_capacity(hlen);
    seg.header_with_crc(crc)
        .and_then(|h| h.encode(&mut header))
        .expect("checked before the segment was given an offset");
    buf[..hlen].copy_from_slice(&header);
    header
}

/// Smallest and largest preallocation step of a direct file: the step grows with the file, so
/// short-lived small buckets (tests, `bucket = "10s"`) do not reserve much.
const PREALLOC_MIN: u64 = 1 << 20;
const PREALLOC_MAX: u64 = 256 << 20;
/// The free-space cap of a step never makes it smaller than this (a full disk is handled by
/// halving on `ENOSPC` and giving back what failed).
const PREALLOC_CAPPED_MIN: u64 = 16 << 20;

/// Makes sure the file's space is allocated up to `end` (with `fallocate`, in growing chunks),
/// so that direct writes land inside the file and need no block allocation or size change of
/// their own. A filesystem without `fallocate` gets plain appends (logged once for the file).
///
/// A full disk (`ENOSPC`, `EDQUOT`) is not a reason to stop preallocating: the step is halved
/// down to exactly what the records need, and if even that does not fit, preallocation stays on
/// for later batches (the sweeper may free space meanwhile) and the write itself reports the
/// full disk.
fn preallocate(b: &mut OpenBucket, unwritten: u64, end: u64, max_step: u64) {
    if !b.prealloc || end <= b.prealloc_end {
        return;
    }
    if b.prealloc_retry_at.is_some_and(|t| Instant::now() < t) {
        return;
    }
    b.prealloc_retry_at = None;
    let free = free_bytes(&b.file);
    match reserve(&b.file, b.prealloc_end, unwritten, end, max_step, free) {
        Ok(Some(to)) => b.prealloc_end = to,
        // The write itself reports (and counts) the full disk, once per segment.
        Ok(None) => {
            b.prealloc_retry_at = Some(Instant::now() + PREALLOC_RETRY);
            tracing::debug!(path = %b.path.display(),
                "no space to reserve for the next records: they are written without")
        }
        Err(e) => {
            b.prealloc = false;
            if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) {
                tracing::info!(path = %b.path.display(), error = %e,
                    "fallocate not supported: plain appends to this file");
            } else {
                tracing::warn!(path = %b.path.display(), error = %e,
                    "fallocate failed: plain appends to this file from now on");
            }
        }
    }
}

/// How long a file that found no space at all for its records waits before trying again.
const PREALLOC_RETRY: Duration = Duration::from_secs(1);

/// Allocates the file's space from `from` to at least `end`, a step beyond it that grows with
/// the file (at most `max_step`, and at most an eighth of `free`, the filesystem's free space,
/// but not under 16 MiB for that reason: each step waits for the file's direct writes in
/// flight, so tiny steps would cost more than the space they leave to other files). Nothing is
/// written at or beyond `unwritten` (the record being placed starts there; every earlier one
/// ends before it). On a full disk
/// (`ENOSPC`, `EDQUOT`) what a failed try allocated from `unwritten` on is given back (ext4 and
/// xfs keep what a failed `fallocate` got) and the step is halved, down to none. `Ok(None)`:
/// not even `from..end` fits now; otherwise the end reserved.
fn reserve(
    file: &File,
    from: u64,
    unwritten: u64,
    end: u64,
    max_step: u64,
    free: Option<u64>,
) -> std::io::Result<Option<u64>> {
    if end <= from {
        return Ok(Some(from));
    }
    let mut step = end.clamp(PREALLOC_MIN, max_step.max(PREALLOC_MIN));
    if let Some(free) = free {
        step = step.min((free / 8).max(PREALLOC_CAPPED_MIN));
    }
    let size_before = file.metadata()?.len();
    loop {
        // The last try (`step` 0) reserves exactly up to `end`.
        let to = if step == 0 {
            end
        } else {
            (end + step).div_ceil(PREALLOC_MIN) * PREALLOC_MIN
        };
        match fallocate_range(file, from, to) {
            Ok(()) => return Ok(Some(to)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
                // Only space no record uses yet is given back: the blocks, and the size a failed
                // try raised (ext4 raises it chunk by chunk), so that a restart after a crash
                // does not place the next records after a hole.
                let give_back = from.max(unwritten);
                if to > give_back {
                    punch(file, give_back, to);
                    let keep = size_before.max(give_back);
                    if file.metadata().is_ok_and(|m| m.len() > keep) {
                        let _ = file.set_len(keep);
                    }
                }
                if step == 0 {
                    return Ok(None);
                }
                step = if step > PREALLOC_MIN { step / 2 } else { 0 };
            }
            Err(e) => return Err(e),
        }
    }
}

/// Bytes an unprivileged writer may still allocate on the file's filesystem.
fn free_bytes(file: &File) -> Option<u64> {
    // SAFETY: `fstatvfs` fills plain data for an open descriptor.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Gives back the blocks of `from..to` (best effort: a failure leaves reserved space, which the
/// file's trim at close removes).
fn punch(file: &File, from: u64, to: u64) {
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            from as libc::off_t,
            (to - from) as libc::off_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(),
            "cannot give back the space of a failed reservation");
    }
}

/// `fallocate(fd, 0, from, to - from)`: allocates the range, extending the file's size.
fn fallocate_range(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            from as libc::off_t,
            (to - from) as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Cuts a direct file being closed back to the end of its last record (committed, or written
/// and synced in this run), so a closed file keeps neither its preallocated tail nor the last
/// record's padding. Called only when everything written to it is synced.
fn trim_tail(b: &OpenBucket) {
    // Buffered files have no padding or reserved space, unless they were direct first (a
    // write-time fallback) and space was reserved then.
    if !b.direct && b.prealloc_end <= b.len {
        return;
    }
    let keep = b.info.committed_len.max(b.data_end);
    let size = match b.file.metadata() {
        Ok(m) => m.len(),
        Err(e) => {
            tracing::warn!(path = %b.path.display(), error = %e, "cannot stat the bucket file to trim its tail");
            return;
        }
    };
    if size > keep {
        if let Err(e) = b.file.set_len(keep) {
            // The tail stays: recovery skips preallocated space and cuts it at the next start.
            tracing::warn!(path = %b.path.display(), error = %e, "cannot trim the preallocated tail");
        }
    }
}

impl WriterThread {
    /// A filesystem took `O_DIRECT` at open but refused a direct write (`EINVAL`): `O_DIRECT` is
    /// cleared on the open descriptor (`fcntl(F_SETFL)`; the same file, never a reopen by path
    /// that could find another) and the file is written buffered from now on (the failed
    /// round's segments are dropped and counted by the caller). Logged once per file.
    fn fall_back_to_buffered(&mut self, key: &(Arc<str>, Time90k)) {
        let Some(b) = self.open.get_mut(key) else {
            return;
        };
        if !b.direct {
            return;
        }
        // Every operation on the file has completed (the caller drained the rounds).
        match clear_direct(&b.file) {
            Ok(()) => {
                tracing::warn!(path = %b.path.display(),
                    "the filesystem refused a direct write (EINVAL): buffered writes to this file from now on");
                b.direct = false;
                b.prealloc = false;
            }
            Err(e) => {
                tracing::error!(path = %b.path.display(), error = %e,
                    "cannot switch the bucket file to buffered writes after a refused direct write");
            }
        }
    }
}

/// Clears `O_DIRECT` on an open file.
fn clear_direct(f: &File) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: plain fcntl calls on an open descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the file lives on tmpfs (or ramfs).
fn is_tmpfs(f: &File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: `statfs` is plain data, filled by the kernel.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and pointer.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segment::{CodecConfig, Frame};
    use bytes::Bytes;

    fn job(offset: u64, len: u64) -> Job {
        Job {
            seg: Segment {
                camera: "cam".into(),
                policy: "p".into(),
                start: Time90k(0),
                codec: Arc::new(CodecConfig::new(Bytes::from_static(b"avcc"))),
                frames: vec![Frame {
                    data: Bytes::from_static(b"x"),
                    duration: 3600,
                    key: true,
                }],
            },
            bytes: 1,
            header: Vec::new(),
            key: ("p".into(), Time90k(0)),
            offset,
            len,
            direct: true,
            failed: None,
            einval: false,
        }
    }

    fn merged_op(jobs: std::ops::Range<usize>, offset: u64, len: u64) -> Op {
        Op {
            jobs,
            fd: -1,
            offset,
            buf: OpBuf::Staged {
                ptr: std::ptr::null(),
                len: len as usize,
                fixed: None,
            },
            len,
        }
    }

    #[test]
    fn a_short_merged_write_fails_only_the_records_it_did_not_finish() {
        // Three 8 KiB records at 64 KiB.., merged into one write of 24 KiB that got 12 KiB
        // (one record and half of the next) before failing.
        let mut jobs: Vec<Job> = (0..3).map(|i| job(65536 + i * 8192, 8192)).collect();
        let op = merged_op(0..3, 65536, 3 * 8192);
        let f = OpFailure {
            error: std::io::Error::from_raw_os_error(libc::ENOSPC),
            refused: false,
            written: 8192 + 4096,
        };
        fail_unwritten(&op, &mut jobs, &f);
        assert!(jobs[0].failed.is_none(), "the whole first record stays");
        assert!(jobs[1].failed.is_some() && jobs[2].failed.is_some());
        assert!(jobs.iter().all(|j| !j.einval));

        // Refused outright (nothing written, EINVAL): every record fails and is marked for the
        // buffered fallback.
        let mut jobs: Vec<Job> = (0..2).map(|i| job(i * 4096, 4096)).collect();
        let op = merged_op(0..2, 0, 8192);
        let f = OpFailure {
            error: std::io::Error::from_raw_os_error(libc::EINVAL),
            refused: true,
            written: 0,
        };
        fail_unwritten(&op, &mut jobs, &f);
        assert!(jobs.iter().all(|j| j.failed.is_some() && j.einval));

        // Only the op's own jobs are touched.
        let mut jobs: Vec<Job> = (0..3).map(|i| job(i * 4096, 4096)).collect();
        let op = merged_op(1..2, 4096, 4096);
        fail_unwritten(&op, &mut jobs, &f);
        assert!(jobs[0].failed.is_none() && jobs[1].failed.is_some() && jobs[2].failed.is_none());
    }

    #[test]
    fn a_short_write_is_finished_and_a_failure_tells_how_far_it_got() {
        let dir = tempfile::tempdir().unwrap();
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("b"))
            .unwrap();
        let (a, b) = (vec![1u8; 5000], vec![2u8; 3000]);
        let iov = [
            libc::iovec {
                iov_base: a.as_ptr() as *mut libc::c_void,
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            },
        ];
        // The first 4096 bytes "went out" (written here), the rest is finished from there.
        f.write_all_at(&a[..4096], 100).unwrap();
        finish_short_write(f.as_raw_fd(), &iov, 100, 4096, 1).unwrap();
        let mut got = vec![0u8; 8000];
        f.read_exact_at(&mut got, 100).unwrap();
        assert_eq!(&got[..5000], &a[..]);
        assert_eq!(&got[5000..], &b[..]);
        // Aligned: a short write of 5000 bytes is redone from 4096.
        finish_short_write(f.as_raw_fd(), &iov, 100, 5000, 4096).unwrap();
        // Failing (a read-only descriptor): the error, and the aligned bytes known written.
        let ro = File::open(dir.path().join("b")).unwrap();
        let (e, written) = finish_short_write(ro.as_raw_fd(), &iov, 0, 6000, 4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert_eq!(written, 4096);
    }

    #[test]
    fn clear_direct_turns_o_direct_off_on_the_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = OpenOptions::new();
        o.create(true).write(true);
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_DIRECT);
        let Ok(f) = o.open(dir.path().join("b")) else {
            eprintln!("skipped: the temp dir's filesystem refuses O_DIRECT at open");
            return;
        };
        // SAFETY: plain fcntl on an open descriptor.
        let flags = || unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags() & libc::O_DIRECT, 0);
        clear_direct(&f).unwrap();
        assert_eq!(flags() & libc::O_DIRECT, 0);
        assert_ne!(flags() & libc::O_WRONLY, 0, "the other flags stay");
    }

    #[test]
    fn larger_sites_get_more_rounds_in_flight() {
        let slots = |n| DirectTuning::for_cameras(n).slots;
        assert_eq!((slots(0), slots(50), slots(500)), (4, 4, 4));
        assert_eq!(
            (slots(501), slots(875), slots(876), slots(5000)),
            (5, 7, 8, 8)
        );
        assert_eq!(DirectTuning::for_cameras(1000).slot_len, SLOT_LEN);
    }

    #[test]
    fn reserve_steps_grow_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("b")).unwrap();
        let r = |from, end, max| reserve(&f, from, from, end, max, None).unwrap();
        // 3 MiB needed: a step as large as the file, rounded to whole MiB.
        assert_eq!(r(0, 3 << 20, 256 << 20), Some(6 << 20));
        assert_eq!(f.metadata().unwrap().len(), 6 << 20);
        // The step is the file's size: 6 MiB + 10 bytes needed, 13 MiB reserved.
        assert_eq!(r(6 << 20, (6 << 20) + 10, 256 << 20), Some(13 << 20));
        // Capped at the largest step.
        assert_eq!(r(13 << 20, 14 << 20, 2 << 20), Some(16 << 20));
        // Nothing to do.
        assert_eq!(r(16 << 20, 15 << 20, 2 << 20), Some(16 << 20));
        // A small file: at least a 1 MiB step.
        let g = File::create(dir.path().join("c")).unwrap();
        assert_eq!(
            reserve(&g, 0, 0, 10, 256 << 20, None).unwrap(),
            Some(2 << 20)
        );
        // At most an eighth of the free space, but that cap not under 16 MiB.
        let h = File::create(dir.path().join("d")).unwrap();
        assert_eq!(
            reserve(&h, 0, 0, 64 << 20, 256 << 20, Some(256 << 20)).unwrap(),
            Some(96 << 20)
        );
        assert_eq!(
            reserve(&h, 96 << 20, 96 << 20, 97 << 20, 256 << 20, Some(4 << 20)).unwrap(),
            Some(113 << 20)
        );
    }

    /// On a real ext4, which keeps the blocks a failed `fallocate` got: a full disk halves the
    /// step down to exactly what is needed and gives back what failed tries took, and reports
    /// `None` (not an error that would turn preallocation off) when even that does not fit.
    #[test]
    fn reserve_on_a_full_ext4_gives_back_what_failed_tries_took() {
        if !crate::testing::is_root_or_skip("to mount an ext4 image") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (img, mnt) = (dir.path().join("img"), dir.path().join("m"));
        std::fs::create_dir(&mnt).unwrap();
        File::create(&img).unwrap().set_len(32 << 20).unwrap();
        let run = |c: &mut std::process::Command| assert!(c.status().unwrap().success(), "{c:?}");
        run(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img));
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let _u = Unmount(mnt.clone());
        // Fill the disk but for about 3 MiB.
        let fill = File::create(mnt.join("fill")).unwrap();
        let free0 = free_bytes(&fill).unwrap();
        fallocate_range(&fill, 0, free0 - (3 << 20)).unwrap();
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(mnt.join("b"))
            .unwrap();
        let free = free_bytes(&f).unwrap();
        assert!((2 << 20..4 << 20).contains(&free), "{free}");

        // A record of 4 KiB at 0, then 8 MiB more needed: not even that fits. ext4 keeps what
        // each failed try allocated; all of it is given back, and the record below stays.
        std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 4096], 0).unwrap();
        let before = free_bytes(&f).unwrap();
        assert_eq!(
            reserve(&f, 4096, 4096, 4096 + (8 << 20), 256 << 20, None).unwrap(),
            None
        );
        let after = free_bytes(&f).unwrap();
        assert!(
            after + (256 << 10) >= before,
            "the failed tries' blocks are given back: {before} before, {after} after"
        );
        assert_eq!(
            f.metadata().unwrap().len(),
            4096,
            "and the size they raised"
        );
        let mut b = [0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0).unwrap();
        assert_eq!(b, [7u8; 4096]);

        // 2 MiB needed, a 2 MiB step tried first (no free-space cap given): the 4 MiB try
        // fails, a smaller one fits.
        let to = reserve(&f, 4096, 4096, 2 << 20, 256 << 20, None)
            .unwrap()
            .expect("the records' own space fits");
        assert!((2 << 20..4 << 20).contains(&to), "{to}");

        // With the free-space cap the daemon passes (about 6 MiB free; the cap's floor is
        // 16 MiB): the 4 MiB step fails, is given back, and a halved one fits.
        drop(fill);
        std::fs::remove_file(mnt.join("fill")).unwrap();
        let g = File::create(mnt.join("c")).unwrap();
        let fill = File::create(mnt.join("fill2")).unwrap();
        fallocate_range(&fill, 0, free_bytes(&g).unwrap() - (6 << 20)).unwrap();
        let free = free_bytes(&g).unwrap();
        let got = reserve(&g, 0, 0, 4 << 20, 256 << 20, Some(free))
            .unwrap()
            .expect("4 MiB fit in 6");
        assert!((4 << 20..=6 << 20).contains(&got), "{got}");
        assert_eq!(g.metadata().unwrap().len(), got);
    }
}

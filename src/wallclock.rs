//! Time you can trust: the wall clock checked against the monotonic clock.
//!
//! Retention, hold review dates and the stamps of new footage all depend on "now". The wall clock
//! can step (a bad NTP source, an operator's typo, a machine that booted with a wrong RTC); the
//! kernel's boot-time clock (`CLOCK_BOOTTIME`: monotonic, counts suspend, not settable) cannot.
//! [`Detector`] (pure, fed wall/monotonic pairs) keeps a *trusted time*: the wall clock while it
//! moves with the monotonic clock (steps up to `clock.jump_threshold` are followed: NTP
//! corrections), and the last trusted time carried on by the monotonic clock after a larger step:
//!
//! - a step beyond the threshold is a **jump** (`holdfast_clock_jumps_total{direction}`, a log
//!   line, a logbook `clock.jump` entry); the state becomes `unconfirmed_forward` or
//!   `unconfirmed_backward` and `holdfast_clock_offset_seconds` shows wall minus trusted;
//! - the new wall time is believed once it has held (stayed within the threshold of where the
//!   jump put it) for `clock.confirm_after` of monotonic time (`clock.confirmed`), or at once when
//!   an operator accepts it (`holdfast clock accept`, `POST /api/v1/clock/accept`:
//!   `clock.accept`), or when the wall clock comes back to the trusted time (`clock.reverted`);
//! - meanwhile the sweeper, hold lapse and the retention gauges use [`TrustedClock::retention_now`]
//!   and ingest stamps new footage with [`TrustedClock::now`] (both the trusted time; see
//!   design/time.md for why), so a forward jump alone deletes nothing and lapses no hold, and a
//!   backward jump neither stops expiry nor makes new footage overlap older footage.
//!
//! The trusted time is written to the index (`meta` key `clock`, with the boot id and the
//! monotonic reading) every few seconds and at every change, and [`Detector::resume`] compares
//! the wall clock at start with it (exactly, on the same boot) or with the newest recorded
//! segment (after a reboot), so a restart during a jump does not accept it silently.
//!
//! The CLI reaches the running daemon through a request file in the data directory
//! (`clock-accept.request`, written with mode 0600 and renamed into place): only who may write
//! the data directory (the daemon's own user, or root) can ask, the daemon ignores requests from
//! another boot or older than a minute, and answers in `clock-accept.result`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use crate::config::ClockSettings;
use crate::logbook::{Logbook, NewEntry};
use crate::metrics::{DirectionLabel, Metrics};
use crate::store::index::{Index, IndexBatch, CF_META};
use crate::time::{duration_to_ticks, Time90k, TICKS_PER_SEC};

/// The `meta` key of the persisted clock state.
pub const META_KEY: &[u8] = b"clock";
/// File name (in the data directory) of an operator's accept request.
pub const REQUEST_FILE: &str = "clock-accept.request";
/// File name (in the data directory) of the daemon's answer to it.
pub const RESULT_FILE: &str = "clock-accept.result";
/// How long an accept request stays valid (monotonic time).
const REQUEST_TTL: Duration = Duration::from_secs(60);
/// How often the monitor thread looks at the clocks.
const TICK: Duration = Duration::from_secs(1);
/// How often the trusted time is persisted while nothing changes.
const PERSIST_EVERY: Duration = Duration::from_secs(10);

/// Which way the wall clock stepped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The wall clock moved ahead of the trusted time.
    Forward,
    /// The wall clock moved behind the trusted time.
    Backward,
}

impl Direction {
    fn of(step: i64) -> Self {
        if step >= 0 {
            Direction::Forward
        } else {
            Direction::Backward
        }
    }

    /// `forward` or `backward` (the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        }
    }
}

/// Whether the wall clock is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The wall clock is the trusted time.
    Synced,
    /// The wall clock jumped and the new time is not believed yet.
    Unconfirmed {
        /// Wall minus trusted time: ahead (forward) or behind (backward).
        direction: Direction,
        /// Monotonic reading when the current offset appeared.
        since: Duration,
        /// Wall minus trusted time when it appeared (ticks).
        offset: i64,
        /// New footage is stamped with the wall clock, only retention is held back: a gap found
        /// at start after a reboot, where the downtime is unknown (design/time.md).
        stamps_follow_wall: bool,
    },
}

/// Something the detector decided, to be counted, logged and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The wall clock stepped by `step` ticks (beyond the threshold); `offset` is now wall minus
    /// trusted time.
    Jump {
        /// Which way it stepped.
        direction: Direction,
        /// The step (ticks).
        step: i64,
        /// Wall minus trusted time afterwards (ticks).
        offset: i64,
    },
    /// The wall clock came back to within the threshold of the trusted time.
    Reverted {
        /// The offset that went away (ticks).
        offset: i64,
    },
    /// The new wall time held for `confirm_after` and is now trusted.
    Confirmed {
        /// The step the trusted time made (ticks).
        offset: i64,
    },
    /// An operator accepted the new wall time.
    Accepted {
        /// The step the trusted time made (ticks).
        offset: i64,
    },
}

/// One reading of the clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The wall clock.
    pub wall: Time90k,
    /// The time new footage is stamped with.
    pub stamp: Time90k,
    /// The time retention and hold review dates are judged by (the trusted time).
    pub retention: Time90k,
}

impl Reading {
    /// Wall clock minus trusted time, in ticks.
    pub fn offset(&self) -> i64 {
        self.wall.0 - self.retention.0
    }
}

/// The clock state as persisted in the index (`meta` key `clock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The trusted time at `mono_ns` (ticks).
    pub trusted: i64,
    /// The boot-time clock reading (nanoseconds) when it was saved.
    pub mono_ns: u64,
    /// `/proc/sys/kernel/random/boot_id` of that boot.
    pub boot_id: String,
    /// `synced`, `unconfirmed_forward` or `unconfirmed_backward`.
    pub state: String,
    /// For an unconfirmed state: how long it had lasted (nanoseconds of monotonic time).
    #[serde(default)]
    pub unconfirmed_for_ns: u64,
    /// For an unconfirmed forward state: whether new footage followed the wall clock.
    #[serde(default)]
    pub stamps_follow_wall: bool,
}

/// The jump detector: pure logic, fed (wall, monotonic) pairs.
#[derive(Debug, Clone)]
pub struct Detector {
    threshold: i64,
    confirm_after: Duration,
    /// The trusted time at `base_mono`.
    base: Time90k,
    base_mono: Duration,
    last_mono: Duration,
    state: State,
}

impl Detector {
    /// A detector that trusts `wall` now.
    pub fn new(settings: ClockSettings, wall: Time90k, mono: Duration) -> Self {
        Detector {
            threshold: duration_to_ticks(settings.jump_threshold),
            confirm_after: settings.confirm_after,
            base: wall,
            base_mono: mono,
            last_mono: mono,
            state: State::Synced,
        }
    }

    /// The detector at start: compares the wall clock with the persisted trusted time (exactly,
    /// when it was saved on this boot: the boot-time clock ran on meanwhile) or, after a reboot,
    /// with the newer of it and the newest recorded segment's end (`newest`):
    /// - same boot, more than the threshold apart: unconfirmed, trusted time carried over;
    /// - after a reboot, the wall clock more than the threshold behind: unconfirmed backward,
    ///   trusted time continuing from what was recorded (no overlap);
    /// - after a reboot, more than the threshold ahead: the downtime is unknown; new footage is
    ///   stamped with the wall clock, but retention is held back (unconfirmed forward) until the
    ///   new time is confirmed or accepted.
    ///
    /// Returns the jump found, if any.
    pub fn resume(
        settings: ClockSettings,
        wall: Time90k,
        mono: Duration,
        boot_id: &str,
        saved: Option<&Saved>,
        newest: Option<Time90k>,
    ) -> (Self, Option<Event>) {
        let mut d = Detector::new(settings, wall, mono);
        let same_boot =
            saved.filter(|s| s.boot_id == boot_id && s.mono_ns <= mono.as_nanos() as u64);
        let (reference, carried) = if let Some(s) = same_boot {
            let elapsed = mono.saturating_sub(Duration::from_nanos(s.mono_ns));
            let expected = Time90k(s.trusted).add_ticks(duration_to_ticks(elapsed));
            let carried = (s.state != "synced").then(|| {
                (
                    mono.saturating_sub(Duration::from_nanos(s.unconfirmed_for_ns)),
                    s.stamps_follow_wall,
                )
            });
            (expected, carried)
        } else {
            let r = [saved.map(|s| Time90k(s.trusted)), newest]
                .into_iter()
                .flatten()
                .max();
            match r {
                Some(r) => (r, None),
                None => return (d, None),
            }
        };
        let offset = wall.0 - reference.0;
        if offset.abs() <= d.threshold {
            return (d, None);
        }
        let direction = Direction::of(offset);
        let (since, follow) = match carried {
            // The same jump as before the restart: its confirmation period goes on.
            Some((since, follow)) => (since, follow && direction == Direction::Forward),
            None => (mono, same_boot.is_none() && direction == Direction::Forward),
        };
        d.base = reference;
        d.state = State::Unconfirmed {
            direction,
            since,
            offset,
            stamps_follow_wall: follow,
        };
        (
            d,
            Some(Event::Jump {
                direction,
                step: offset,
                offset,
            }),
        )
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    fn trusted_at(&self, mono: Duration) -> Time90k {
        self.base
            .add_ticks(duration_to_ticks(mono.saturating_sub(self.base_mono)))
    }

    fn anchor(&mut self, wall: Time90k, mono: Duration) {
        self.base = wall;
        self.base_mono = mono;
        self.state = State::Synced;
    }

    fn reading(&self, wall: Time90k, mono: Duration) -> Reading {
        match self.state {
            State::Synced => Reading {
                wall,
                stamp: wall,
                retention: wall,
            },
            State::Unconfirmed {
                stamps_follow_wall, ..
            } => {
                let trusted = self.trusted_at(mono);
                Reading {
                    wall,
                    stamp: if stamps_follow_wall { wall } else { trusted },
                    retention: trusted,
                }
            }
        }
    }

    /// Feeds one reading of both clocks; returns the times to use and what changed, if anything.
    /// A monotonic reading older than the last one counts as the last one.
    pub fn observe(&mut self, wall: Time90k, mono: Duration) -> (Reading, Option<Event>) {
        let mono = mono.max(self.last_mono);
        self.last_mono = mono;
        let offset = wall.0 - self.trusted_at(mono).0;
        let event = match self.state {
            State::Synced => {
                if offset.abs() <= self.threshold {
                    // Followed: NTP corrections within the threshold are believed at once.
                    self.anchor(wall, mono);
                    None
                } else {
                    let direction = Direction::of(offset);
                    self.state = State::Unconfirmed {
                        direction,
                        since: mono,
                        offset,
                        stamps_follow_wall: false,
                    };
                    Some(Event::Jump {
                        direction,
                        step: offset,
                        offset,
                    })
                }
            }
            State::Unconfirmed {
                since,
                offset: seen,
                stamps_follow_wall,
                ..
            } => {
                if offset.abs() <= self.threshold {
                    self.anchor(wall, mono);
                    Some(Event::Reverted { offset: seen })
                } else if (offset - seen).abs() > self.threshold {
                    // Another jump: its own confirmation period starts now.
                    let step = offset - seen;
                    self.state = State::Unconfirmed {
                        direction: Direction::of(offset),
                        since: mono,
                        offset,
                        stamps_follow_wall: stamps_follow_wall && step > 0 && offset > 0,
                    };
                    Some(Event::Jump {
                        direction: Direction::of(step),
                        step,
                        offset,
                    })
                } else if mono.saturating_sub(since) >= self.confirm_after {
                    self.anchor(wall, mono);
                    Some(Event::Confirmed { offset })
                } else {
                    None
                }
            }
        };
        (self.reading(wall, mono), event)
    }

    /// An operator accepts the wall clock: it becomes the trusted time now. `None` when there was
    /// nothing to accept.
    pub fn accept(&mut self, wall: Time90k, mono: Duration) -> Option<Event> {
        let (_, ev) = self.observe(wall, mono);
        match self.state {
            State::Synced => {
                ev.filter(|e| matches!(e, Event::Confirmed { .. } | Event::Reverted { .. }))
            }
            State::Unconfirmed { .. } => {
                let offset = wall.0 - self.trusted_at(self.last_mono).0;
                self.anchor(wall, self.last_mono);
                Some(Event::Accepted { offset })
            }
        }
    }

    /// What to persist.
    pub fn saved(&self, wall: Time90k, boot_id: &str) -> Saved {
        let mono = self.last_mono;
        let r = self.reading(wall, mono);
        let (state, unconfirmed_for, follow) = match self.state {
            State::Synced => ("synced", Duration::ZERO, false),
            State::Unconfirmed {
                direction,
                since,
                stamps_follow_wall,
                ..
            } => (
                match direction {
                    Direction::Forward => "unconfirmed_forward",
                    Direction::Backward => "unconfirmed_backward",
                },
                mono.saturating_sub(since),
                stamps_follow_wall,
            ),
        };
        Saved {
            trusted: r.retention.0,
            mono_ns: mono.as_nanos() as u64,
            boot_id: boot_id.to_owned(),
            state: state.to_owned(),
            unconfirmed_for_ns: unconfirmed_for.as_nanos() as u64,
            stamps_follow_wall: follow,
        }
    }

    /// The state name for `/healthz` and the API: `synced`, `unconfirmed_forward`,
    /// `unconfirmed_backward`.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Synced => "synced",
            State::Unconfirmed {
                direction: Direction::Forward,
                ..
            } => "unconfirmed_forward",
            State::Unconfirmed {
                direction: Direction::Backward,
                ..
            } => "unconfirmed_backward",
        }
    }

    /// Monotonic time left until an unconfirmed wall time is believed.
    pub fn confirm_in(&self) -> Option<Duration> {
        match self.state {
            State::Synced => None,
            State::Unconfirmed { since, .. } => Some(
                self.confirm_after
                    .saturating_sub(self.last_mono.saturating_sub(since)),
            ),
        }
    }
}

/// The kernel's boot-time clock: monotonic, counts suspend, not settable, not faked by
/// libfaketime with `FAKETIME_DONT_FAKE_MONOTONIC=1`.
pub fn boot_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; CLOCK_BOOTTIME exists on every Linux >= 2.6.39.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty when unreadable.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn secs(ticks: i64) -> f64 {
    ticks as f64 / TICKS_PER_SEC as f64
}

/// The daemon's clock: a [`Detector`] behind a mutex, fed at every call.
pub struct TrustedClock {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    boot_id: String,
}

struct Inner {
    det: Detector,
    /// Events not yet written to the logbook and the index.
    pending: Vec<(Event, String)>,
}

impl TrustedClock {
    /// Starts the clock from the persisted state in `index` and the newest recorded segment (see
    /// [`Detector::resume`]); a jump found at start is counted and logged like any other.
    pub fn open(
        index: &Index,
        settings: ClockSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, crate::store::index::IndexError> {
        let saved = index
            .get_raw(CF_META, META_KEY)?
            .and_then(|v| match serde_json::from_slice::<Saved>(&v) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "clock: the saved clock state is unreadable; ignored");
                    None
                }
            });
        let newest = index
            .buckets(None)?
            .iter()
            .filter(|b| b.segments > 0)
            .map(|b| b.last_end)
            .max();
        let boot_id = boot_id();
        let (det, ev) = Detector::resume(
            settings,
            Time90k::now(),
            boot_time(),
            &boot_id,
            saved.as_ref(),
            newest,
        );
        let clock = Arc::new(TrustedClock {
            inner: Mutex::new(Inner {
                det,
                pending: Vec::new(),
            }),
            metrics,
            boot_id,
        });
        if let Some(ev) = ev {
            let mut g = clock.inner.lock().expect("clock lock");
            clock.note(&mut g, ev, "start", Time90k::now());
        }
        clock.observe();
        Ok(clock)
    }

    fn note(&self, g: &mut Inner, ev: Event, by: &str, wall: Time90k) {
        let trusted = wall.0
            - match ev {
                Event::Jump { offset, .. } => offset,
                _ => 0,
            };
        match ev {
            Event::Jump {
                direction,
                step,
                offset,
            } => {
                self.metrics
                    .clock_jumps
                    .get_or_create(&DirectionLabel {
                        direction: direction.as_str().into(),
                    })
                    .inc();
                tracing::warn!(
                    direction = direction.as_str(),
                    step_seconds = secs(step),
                    offset_seconds = secs(offset),
                    wall = %wall,
                    trusted = %Time90k(trusted),
                    confirm_after = %humantime::format_duration(g.det.confirm_after),
                    "clock: the wall clock jumped; retention and new footage keep the trusted time \
                     until the new time holds for confirm_after or is accepted (holdfast clock accept)"
                );
            }
            Event::Reverted { offset } => tracing::warn!(
                offset_seconds = secs(offset),
                "clock: the wall clock is back at the trusted time"
            ),
            Event::Confirmed { offset } => tracing::warn!(
                offset_seconds = secs(offset),
                "clock: the new wall time held for confirm_after and is trusted now"
            ),
            Event::Accepted { offset } => tracing::warn!(
                offset_seconds = secs(offset),
                by,
                "clock: the new wall time was accepted and is trusted now"
            ),
        }
        g.pending.push((ev, by.to_owned()));
    }

    fn observe(&self) -> Reading {
        let wall = Time90k::now();
        let mono = boot_time();
        let mut g = self.inner.lock().expect("clock lock");
        let (r, ev) = g.det.observe(wall, mono);
        if let Some(ev) = ev {
            self.note(&mut g, ev, "clock", wall);
        }
        drop(g);
        self.metrics.clock_offset_seconds.set(secs(r.offset()));
        r
    }

    /// The time to stamp new footage with.
    pub fn now(&self) -> Time90k {
        self.observe().stamp
    }

    /// The trusted time: retention, hold review dates, the retention gauges.
    pub fn retention_now(&self) -> Time90k {
        self.observe().retention
    }

    /// The `/healthz` detail: state, offset (seconds, wall minus trusted), trusted time, and for
    /// an unconfirmed state the seconds until it is confirmed by itself.
    pub fn status(&self) -> serde_json::Value {
        let r = self.observe();
        let g = self.inner.lock().expect("clock lock");
        let mut v = serde_json::json!({
            "state": g.det.state_name(),
            "offset_seconds": secs(r.offset()),
            "trusted": r.retention,
            "wall": r.wall,
        });
        if let Some(left) = g.det.confirm_in() {
            v["confirms_in_seconds"] = left.as_secs().into();
        }
        v
    }

    /// An operator accepts the wall clock now. Returns the accepted offset in seconds, or `None`
    /// when the wall clock was trusted already. The caller writes the logbook entry.
    pub fn accept(&self, by: &str) -> Option<f64> {
        let wall = Time90k::now();
        let mut g = self.inner.lock().expect("clock lock");
        let ev = g.det.accept(wall, boot_time())?;
        let offset = match ev {
            Event::Accepted { offset }
            | Event::Confirmed { offset }
            | Event::Reverted { offset } => offset,
            Event::Jump { .. } => unreachable!("accept never reports a jump"),
        };
        self.note(&mut g, ev, by, wall);
        // The API or the monitor writes the accept's own logbook entry with its user.
        if matches!(ev, Event::Accepted { .. }) {
            g.pending.pop();
        }
        drop(g);
        self.metrics.clock_offset_seconds.set(0.0);
        matches!(ev, Event::Accepted { .. }).then(|| secs(offset))
    }

    fn take_pending(&self) -> Vec<(Event, String)> {
        std::mem::take(&mut self.inner.lock().expect("clock lock").pending)
    }

    /// Persists the state (synced write when `sync`).
    pub fn persist(
        &self,
        index: &Index,
        sync: bool,
    ) -> Result<(), crate::store::index::IndexError> {
        let saved = {
            let g = self.inner.lock().expect("clock lock");
            g.det.saved(Time90k::now(), &self.boot_id)
        };
        let mut batch = IndexBatch::default();
        batch.put_raw(
            index,
            CF_META,
            META_KEY,
            &serde_json::to_vec(&saved).expect("serialises"),
        );
        index.commit(batch, sync)
    }

    /// Runs the monitor thread: reads the clocks every second, writes jumps and confirmations to
    /// the logbook, persists the state, and answers accept requests from the CLI.
    pub fn spawn_monitor(
        self: &Arc<Self>,
        index: Arc<crate::store::Store>,
        logbook: Arc<Logbook>,
        data_dir: PathBuf,
    ) -> std::io::Result<MonitorHandle> {
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let clock = self.clone();
        let thread = std::thread::Builder::new()
            .name("holdfast-clock".into())
            .spawn(move || clock.monitor(&index, &logbook, &data_dir, rx))?;
        Ok(MonitorHandle {
            tx,
            thread: Some(thread),
        })
    }

    fn monitor(
        &self,
        store: &crate::store::Store,
        logbook: &Logbook,
        data_dir: &Path,
        rx: Receiver<()>,
    ) {
        let index = store.index();
        let mut last_persist: Option<std::time::Instant> = None;
        loop {
            self.observe();
            if let Some(req) = read_request(data_dir) {
                self.answer(index, logbook, data_dir, req);
            }
            let pending = self.take_pending();
            for (ev, by) in &pending {
                record_event(index, logbook, *ev, by);
            }
            if !pending.is_empty() || last_persist.is_none_or(|t| t.elapsed() >= PERSIST_EVERY) {
                match self.persist(index, !pending.is_empty()) {
                    Ok(()) => last_persist = Some(std::time::Instant::now()),
                    Err(e) => {
                        tracing::warn!(error = %e, "clock: could not persist the trusted time")
                    }
                }
            }
            match rx.recv_timeout(TICK) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => {
                    if let Err(e) = self.persist(index, true) {
                        tracing::warn!(error = %e, "clock: could not persist the trusted time");
                    }
                    return;
                }
            }
        }
    }

    fn answer(&self, index: &Index, logbook: &Logbook, data_dir: &Path, req: Request) {
        let _ = std::fs::remove_file(data_dir.join(REQUEST_FILE));
        let mono = boot_time().as_nanos() as u64;
        let result = if req.boot_id != self.boot_id
            || req.mono_ns > mono
            || mono - req.mono_ns > REQUEST_TTL.as_nanos() as u64
        {
            tracing::warn!(by = %req.by, "clock: an accept request from another boot or older than a minute was ignored");
            AcceptResult {
                nonce: req.nonce,
                accepted: false,
                offset_seconds: None,
                message: "the request was too old; ignored".into(),
            }
        } else {
            let by = format!("cli:{}", req.by);
            match self.accept(&by) {
                Some(offset) => {
                    let mut e = accept_entry(&by, "-", offset);
                    e.text = Some("accepted with holdfast clock accept".into());
                    if let Err(err) = logbook.append(index, e) {
                        tracing::error!(error = %err, "clock: could not write the clock.accept logbook entry");
                    }
                    AcceptResult {
                        nonce: req.nonce,
                        accepted: true,
                        offset_seconds: Some(offset),
                        message: format!("accepted: the trusted time stepped by {offset:.0} s"),
                    }
                }
                None => AcceptResult {
                    nonce: req.nonce,
                    accepted: false,
                    offset_seconds: None,
                    message: "the wall clock is trusted already; nothing to accept".into(),
                },
            }
        };
        let tmp = data_dir.join(format!("{RESULT_FILE}.tmp"));
        let body = serde_json::to_vec(&result).expect("serialises");
        if let Err(e) = write_private(&tmp, &body)
            .and_then(|()| std::fs::rename(&tmp, data_dir.join(RESULT_FILE)))
        {
            tracing::warn!(error = %e, "clock: could not write the accept result");
        }
    }
}

/// The logbook entry of an accept (`clock.accept`), by the API or the CLI.
pub fn accept_entry(user: &str, role: &str, offset_seconds: f64) -> NewEntry {
    NewEntry {
        user: user.to_owned(),
        role: role.to_owned(),
        action: "clock.accept".into(),
        object: serde_json::json!({ "offset_seconds": offset_seconds }),
        ..NewEntry::default()
    }
}

fn record_event(index: &Index, logbook: &Logbook, ev: Event, by: &str) {
    let (action, object) = match ev {
        Event::Jump {
            direction,
            step,
            offset,
        } => (
            "clock.jump",
            serde_json::json!({
                "direction": direction.as_str(),
                "step_seconds": secs(step),
                "offset_seconds": secs(offset),
                "found": by,
            }),
        ),
        Event::Reverted { offset } => (
            "clock.reverted",
            serde_json::json!({ "offset_seconds": secs(offset) }),
        ),
        Event::Confirmed { offset } => (
            "clock.confirmed",
            serde_json::json!({ "offset_seconds": secs(offset) }),
        ),
        Event::Accepted { offset } => (
            "clock.accept",
            serde_json::json!({ "offset_seconds": secs(offset) }),
        ),
    };
    let e = NewEntry {
        user: "-".into(),
        role: "-".into(),
        action: action.into(),
        object,
        ..NewEntry::default()
    };
    if let Err(err) = logbook.append(index, e) {
        tracing::error!(error = %err, action, "clock: could not write the logbook entry");
    }
}

/// The running monitor thread; stopping it persists the state a last time.
pub struct MonitorHandle {
    tx: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl MonitorHandle {
    /// Stops the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.tx.send(());
            let _ = t.join();
        }
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.halt();
    }
}

/// An accept request from the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Request {
    by: String,
    boot_id: String,
    mono_ns: u64,
    nonce: u64,
}

/// The daemon's answer to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AcceptResult {
    nonce: u64,
    accepted: bool,
    offset_seconds: Option<f64>,
    message: String,
}

/// Reads a pending request: a regular file (not a link), at most 4 KiB, owned by this process's
/// user or root. Anything else is removed and ignored.
fn read_request(data_dir: &Path) -> Option<Request> {
    use std::os::unix::fs::MetadataExt;
    let path = data_dir.join(REQUEST_FILE);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let ok =
        meta.file_type().is_file() && meta.len() <= 4096 && (meta.uid() == me || meta.uid() == 0);
    let req = ok
        .then(|| std::fs::read(&path).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice::<Request>(&b).ok());
    if req.is_none() {
        tracing::warn!(path = %path.display(), "clock: an invalid accept request was removed");
        let _ = std::fs::remove_file(&path);
    }
    req
}

fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(body)?;
    f.sync_all()
}

/// `holdfast clock accept`: asks the daemon running on `data_dir` to accept the wall clock and
/// waits (up to `wait`) for its answer. Returns the daemon's message; an error when the daemon
/// did not answer or refused.
pub fn request_accept(data_dir: &Path, by: &str, wait: Duration) -> anyhow::Result<String> {
    let nonce = u64::from(std::process::id()) << 32 | u64::from(boot_time().subsec_nanos());
    let req = Request {
        by: by.to_owned(),
        boot_id: boot_id(),
        mono_ns: boot_time().as_nanos() as u64,
        nonce,
    };
    let result_path = data_dir.join(RESULT_FILE);
    let _ = std::fs::remove_file(&result_path);
    let tmp = data_dir.join(format!("{REQUEST_FILE}.{}", std::process::id()));
    write_private(&tmp, &serde_json::to_vec(&req).expect("serialises"))
        .map_err(|e| anyhow::anyhow!("cannot write the request in {}: {e}", data_dir.display()))?;
    std::fs::rename(&tmp, data_dir.join(REQUEST_FILE))?;
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(b) = std::fs::read(&result_path) {
            if let Ok(r) = serde_json::from_slice::<AcceptResult>(&b) {
                if r.nonce == nonce {
                    let _ = std::fs::remove_file(&result_path);
                    return if r.accepted {
                        Ok(r.message)
                    } else {
                        Err(anyhow::anyhow!("{}", r.message))
                    };
                }
            }
        }
    }
    let _ = std::fs::remove_file(data_dir.join(REQUEST_FILE));
    Err(anyhow::anyhow!(
        "no answer from a daemon on {} within {}: is it running with this config?",
        data_dir.display(),
        humantime::format_duration(wait)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Time90k = Time90k(1_795_000_000 * TICKS_PER_SEC);
    const S: i64 = TICKS_PER_SEC;

    fn settings() -> ClockSettings {
        ClockSettings {
            jump_threshold: Duration::from_secs(600),
            confirm_after: Duration::from_secs(3600),
        }
    }

    fn m(s: u64) -> Duration {
        Duration::from_secs(1000 + s)
    }

    #[test]
    fn only_plain_small_request_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REQUEST_FILE);
        let good = serde_json::to_vec(&Request {
            by: "ops".into(),
            boot_id: "b".into(),
            mono_ns: 1,
            nonce: 7,
        })
        .unwrap();
        // A link to a file the daemon may read is refused (and removed).
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, &good).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(read_request(dir.path()).is_none());
        assert!(std::fs::symlink_metadata(&path).is_err(), "removed");
        // Too large, or not a request: refused and removed.
        std::fs::write(&path, vec![b' '; 5000]).unwrap();
        assert!(read_request(dir.path()).is_none());
        std::fs::write(&path, b"accept please").unwrap();
        assert!(read_request(dir.path()).is_none());
        assert!(!path.exists());
        // A plain request is read.
        std::fs::write(&path, &good).unwrap();
        assert_eq!(read_request(dir.path()).map(|r| r.nonce), Some(7));
        // No file, nothing to do.
        std::fs::remove_file(&path).unwrap();
        assert!(read_request(dir.path()).is_none());
    }

    #[test]
    fn small_steps_are_followed() {
        let mut d = Detector::new(settings(), T0, m(0));
        let (r, ev) = d.observe(T0.add_ticks(10 * S + 300 * S), m(10));
        assert_eq!(ev, None, "a 5-minute NTP step is within the threshold");
        assert_eq!(r.retention, T0.add_ticks(310 * S));
        assert_eq!(r.stamp, r.retention);
        assert_eq!(d.state(), State::Synced);
    }

    #[test]
    fn a_forward_jump_is_held_back_until_confirmed() {
        let mut d = Detector::new(settings(), T0, m(0));
        let day = 86_400 * S;
        let (r, ev) = d.observe(T0.add_ticks(30 * day + 10 * S), m(10));
        assert_eq!(
            ev,
            Some(Event::Jump {
                direction: Direction::Forward,
                step: 30 * day,
                offset: 30 * day
            })
        );
        assert_eq!(r.retention, T0.add_ticks(10 * S), "trusted time runs on");
        assert_eq!(r.stamp, r.retention, "new footage keeps the trusted time");
        assert_eq!(r.offset(), 30 * day);
        // 59 minutes later: still held back.
        let (r, ev) = d.observe(T0.add_ticks(30 * day + 3550 * S), m(3550));
        assert_eq!((ev, r.retention), (None, T0.add_ticks(3550 * S)));
        assert_eq!(d.confirm_in(), Some(Duration::from_secs(60)));
        // After confirm_after on the monotonic clock: believed.
        let (r, ev) = d.observe(T0.add_ticks(30 * day + 3611 * S), m(3611));
        assert_eq!(ev, Some(Event::Confirmed { offset: 30 * day }));
        assert_eq!(r.retention, r.wall);
        assert_eq!(d.state(), State::Synced);
    }

    #[test]
    fn confirmation_counts_monotonic_time_not_wall_time() {
        let mut d = Detector::new(settings(), T0, m(0));
        let day = 86_400 * S;
        d.observe(T0.add_ticks(30 * day), m(1));
        // The wall clock claims hours passed; the monotonic clock says 2 s.
        let (_, ev) = d.observe(T0.add_ticks(30 * day + 5 * 3600 * S / 10_000), m(3));
        assert_eq!(ev, None);
        assert!(matches!(d.state(), State::Unconfirmed { .. }));
    }

    #[test]
    fn a_reverted_jump_needs_no_confirmation() {
        let mut d = Detector::new(settings(), T0, m(0));
        d.observe(T0.add_ticks(86_400 * S), m(5));
        let (r, ev) = d.observe(T0.add_ticks(65 * S), m(65));
        assert_eq!(
            ev,
            Some(Event::Reverted {
                offset: 86_400 * S - 5 * S
            })
        );
        assert_eq!(r.retention, T0.add_ticks(65 * S));
        assert_eq!(d.state(), State::Synced);
    }

    #[test]
    fn a_backward_jump_keeps_trusted_time_ahead() {
        let mut d = Detector::new(settings(), T0, m(0));
        let (r, ev) = d.observe(T0.add_ticks(-3 * 3600 * S), m(100));
        assert!(matches!(
            ev,
            Some(Event::Jump {
                direction: Direction::Backward,
                ..
            })
        ));
        assert_eq!(r.retention, T0.add_ticks(100 * S), "expiry stays on time");
        assert_eq!(
            r.stamp,
            T0.add_ticks(100 * S),
            "no overlap with older footage"
        );
        assert_eq!(d.state_name(), "unconfirmed_backward");
    }

    #[test]
    fn a_second_jump_restarts_the_confirmation() {
        let mut d = Detector::new(settings(), T0, m(0));
        let day = 86_400 * S;
        d.observe(T0.add_ticks(day), m(0));
        let (_, ev) = d.observe(T0.add_ticks(3 * day + 3000 * S), m(3000));
        assert!(matches!(
            ev,
            Some(Event::Jump {
                direction: Direction::Forward,
                step,
                ..
            }) if step == 2 * day
        ));
        // 3600 s after the first jump but 600 s after the second: not yet.
        let (_, ev) = d.observe(T0.add_ticks(3 * day + 3600 * S), m(3600));
        assert_eq!(ev, None);
        let (_, ev) = d.observe(T0.add_ticks(3 * day + 6601 * S), m(6601));
        assert!(matches!(ev, Some(Event::Confirmed { .. })));
    }

    #[test]
    fn accept_takes_the_wall_clock_at_once() {
        let mut d = Detector::new(settings(), T0, m(0));
        assert_eq!(d.accept(T0.add_ticks(S), m(1)), None, "nothing to accept");
        let day = 86_400 * S;
        d.observe(T0.add_ticks(30 * day), m(2));
        let ev = d.accept(T0.add_ticks(30 * day + 8 * S), m(10));
        assert_eq!(
            ev,
            Some(Event::Accepted {
                offset: 30 * day - 2 * S
            })
        );
        let (r, ev) = d.observe(T0.add_ticks(30 * day + 9 * S), m(11));
        assert_eq!((ev, r.retention), (None, T0.add_ticks(30 * day + 9 * S)));
    }

    #[test]
    fn monotonic_readings_never_go_back() {
        let mut d = Detector::new(settings(), T0, m(100));
        let (r, _) = d.observe(T0.add_ticks(5 * 86_400 * S), m(50));
        assert_eq!(
            r.retention, T0,
            "an older monotonic reading counts as the last one"
        );
    }

    fn saved(d: &Detector, wall: Time90k) -> Saved {
        d.saved(wall, "boot-a")
    }

    #[test]
    fn a_restart_on_the_same_boot_carries_the_trusted_time() {
        let day = 86_400 * S;
        // Saved while synced; the daemon is down 100 s and the clock jumped 30 days meanwhile.
        let d = Detector::new(settings(), T0, m(0));
        let s = saved(&d, T0);
        let (mut d2, ev) = Detector::resume(
            settings(),
            T0.add_ticks(30 * day + 100 * S),
            m(100),
            "boot-a",
            Some(&s),
            Some(T0),
        );
        assert!(matches!(
            ev,
            Some(Event::Jump {
                direction: Direction::Forward,
                ..
            })
        ));
        let (r, _) = d2.observe(T0.add_ticks(30 * day + 101 * S), m(101));
        assert_eq!(r.retention, T0.add_ticks(101 * S));
        assert_eq!(r.stamp, r.retention, "same boot: the trusted time is exact");
        // A plain restart (no jump) on the same boot: synced, whatever the downtime.
        let (d3, ev) = Detector::resume(
            settings(),
            T0.add_ticks(5000 * S),
            m(5000),
            "boot-a",
            Some(&s),
            Some(T0),
        );
        assert_eq!((ev, d3.state()), (None, State::Synced));
    }

    #[test]
    fn a_restart_during_a_jump_keeps_its_confirmation_period() {
        let day = 86_400 * S;
        let mut d = Detector::new(settings(), T0, m(0));
        d.observe(T0.add_ticks(30 * day), m(0));
        d.observe(T0.add_ticks(30 * day + 3000 * S), m(3000));
        let s = saved(&d, T0.add_ticks(30 * day + 3000 * S));
        assert_eq!(s.state, "unconfirmed_forward");
        assert_eq!(s.trusted, T0.add_ticks(3000 * S).0);
        let (mut d2, _) = Detector::resume(
            settings(),
            T0.add_ticks(30 * day + 3100 * S),
            m(3100),
            "boot-a",
            Some(&s),
            None,
        );
        // The downtime does not count: 600 s of the period are left.
        assert_eq!(d2.confirm_in(), Some(Duration::from_secs(600)));
        let (_, ev) = d2.observe(T0.add_ticks(30 * day + 3650 * S), m(3650));
        assert_eq!(ev, None);
        let (_, ev) = d2.observe(T0.add_ticks(30 * day + 3701 * S), m(3701));
        assert!(matches!(ev, Some(Event::Confirmed { .. })));
    }

    #[test]
    fn after_a_reboot_the_newest_footage_is_the_reference() {
        let day = 86_400 * S;
        let newest = T0.add_ticks(50 * S);
        // No saved state, new boot, wall clock 30 days ahead of the newest footage: footage
        // follows the wall clock, retention is held back.
        let (mut d, ev) = Detector::resume(
            settings(),
            T0.add_ticks(30 * day),
            m(0),
            "boot-b",
            None,
            Some(newest),
        );
        assert!(ev.is_some());
        let (r, _) = d.observe(T0.add_ticks(30 * day + 10 * S), m(10));
        assert_eq!(r.retention, newest.add_ticks(10 * S));
        assert_eq!(r.stamp, r.wall);
        // Behind the newest footage after a reboot (a dead RTC battery): trusted time continues
        // from the footage, so new footage never overlaps it.
        let (mut d, _) = Detector::resume(
            settings(),
            T0.add_ticks(-day),
            m(0),
            "boot-b",
            None,
            Some(newest),
        );
        let (r, _) = d.observe(T0.add_ticks(-day + S), m(1));
        assert_eq!(r.stamp, newest.add_ticks(S));
        assert_eq!(r.retention, newest.add_ticks(S));
        // A short downtime: synced.
        let (d, ev) = Detector::resume(
            settings(),
            T0.add_ticks(300 * S),
            m(0),
            "boot-b",
            None,
            Some(newest),
        );
        assert_eq!((ev, d.state()), (None, State::Synced));
        // Nothing recorded, nothing saved: the wall clock is all there is.
        let (d, ev) = Detector::resume(settings(), T0, m(0), "boot-b", None, None);
        assert_eq!((ev, d.state()), (None, State::Synced));
    }
}

//! Time you can trust: the wall clock checked against the monotonic clock.
//!
//! Retention, hold review dates and the stamps of new footage all depend on "now". The wall clock
//! can step (a bad NTP source, an operator's typo, a machine that booted with a wrong RTC); the
//! kernel's boot-time clock (`CLOCK_BOOTTIME`: monotonic, counts suspend, not settable) cannot.
//! [`Detector`] (pure, fed wall/monotonic pairs) keeps one *trusted time*, used for footage
//! stamps and for retention alike ([`TrustedClock::now`] and [`TrustedClock::retention_now`] are
//! the same time: footage is judged by the clock that stamped it):
//!
//! - it never goes back: it is never below its high-water mark, the latest time given out carried
//!   on by the monotonic clock (persisted), so footage never overlaps and keeps real durations,
//!   and retention never stops;
//! - it follows the wall clock while the wall clock stays within `clock.jump_threshold` of an
//!   *anchor line* (where the wall clock was last believed, carried on by the monotonic clock):
//!   measured from the anchor, not from the previous reading, so small steps that add up are
//!   found;
//! - a larger difference is a **jump** (`holdfast_clock_jumps_total{direction}`, a log line, a
//!   logbook `clock.jump` entry); the state becomes `unconfirmed_forward` or
//!   `unconfirmed_backward` and `holdfast_clock_offset_seconds` shows wall minus trusted;
//! - a forward jump is believed once it has held (stayed within the threshold of where it put the
//!   wall clock) for `clock.jump_confirm` of monotonic time (`clock.confirmed`); a backward one
//!   never by time alone (a dead RTC battery in the year 2000 would stop expiry for decades);
//!   either is believed at once when an operator accepts it (`holdfast clock accept`,
//!   `POST /api/v1/clock/accept`: `clock.accept`), and the jump is over when the wall clock comes
//!   back to the anchor line (`clock.reverted`). An accepted backward step moves the anchor, not
//!   the trusted time (see design/time.md).
//!
//! The high-water mark and the anchor line are written to the index (`meta` key `clock`, with the
//! boot id and the monotonic reading) every few seconds and at every change, and
//! [`Detector::resume`] compares the wall clock at start with them (exactly, on the same boot) or
//! with the newest recorded segment (after a reboot), so a restart during a jump does not accept
//! it silently; [`persisted_now`] gives the same time to what runs before the clock exists.
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
    /// The wall clock is within `jump_threshold` of the anchor line and is followed.
    Synced,
    /// The wall clock jumped and the new time is not believed yet.
    Unconfirmed {
        /// Wall clock against the anchor line: ahead (forward) or behind (backward).
        direction: Direction,
        /// Monotonic reading when the current offset appeared.
        since: Duration,
        /// Wall clock minus the anchor line when it appeared (ticks).
        offset: i64,
    },
}

/// Something the detector decided, to be counted, logged and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The wall clock stepped by `step` ticks (beyond the threshold); `offset` is now the wall
    /// clock minus the anchor line.
    Jump {
        /// Which way it stepped.
        direction: Direction,
        /// The step (ticks).
        step: i64,
        /// Wall clock minus the anchor line afterwards (ticks).
        offset: i64,
    },
    /// The wall clock came back to within the threshold of the anchor line.
    Reverted {
        /// The offset that went away (ticks).
        offset: i64,
    },
    /// A forward jump held for `jump_confirm` and is now trusted (a backward one never is by
    /// time alone).
    Confirmed {
        /// The step the trusted time made (ticks).
        offset: i64,
    },
    /// An operator accepted the new wall time.
    Accepted {
        /// Wall clock minus the anchor line that was accepted (ticks): for a forward jump the
        /// step the trusted time made, for a backward one the step it did not make.
        offset: i64,
    },
}

/// One reading of the clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The wall clock.
    pub wall: Time90k,
    /// The trusted time: new footage is stamped with it, retention and hold review dates are
    /// judged by it. It never goes back and runs at the monotonic rate between steps forward.
    pub trusted: Time90k,
}

impl Reading {
    /// Wall clock minus trusted time, in ticks.
    pub fn offset(&self) -> i64 {
        self.wall.0 - self.trusted.0
    }
}

/// The clock state as persisted in the index (`meta` key `clock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The high-water mark of the trusted time at `mono_ns` (ticks): the latest time given out,
    /// carried on by the monotonic clock.
    pub trusted: i64,
    /// The anchor line at `mono_ns` (ticks): where the wall clock was expected to be. Absent in
    /// states saved before it existed (then `trusted`).
    #[serde(default)]
    pub anchor: Option<i64>,
    /// The boot-time clock reading (nanoseconds) when it was saved.
    pub mono_ns: u64,
    /// `/proc/sys/kernel/random/boot_id` of that boot.
    pub boot_id: String,
    /// `synced`, `unconfirmed_forward` or `unconfirmed_backward`.
    pub state: String,
    /// For an unconfirmed state: how long it had lasted (nanoseconds of monotonic time).
    #[serde(default)]
    pub unconfirmed_for_ns: u64,
}

/// The jump detector: pure logic, fed (wall, monotonic) pairs.
///
/// It keeps two lines that run at the monotonic rate:
/// - the **anchor line**, where the wall clock is expected to be: set when the wall clock is
///   believed (start, confirmation, acceptance), *not* at every reading, so that a wall clock
///   that creeps in steps below the threshold is found once the steps add up to it;
/// - the **high-water mark** of the trusted time given out: the trusted time is never below it,
///   so it never goes back, whatever the wall clock does, and between steps forward it runs at
///   the monotonic rate (footage stamped with it keeps real durations).
#[derive(Debug, Clone)]
pub struct Detector {
    threshold: i64,
    jump_confirm: Duration,
    /// The anchor line at `anchor_mono`.
    anchor: Time90k,
    anchor_mono: Duration,
    /// The high-water mark at `high_mono`.
    high: Time90k,
    high_mono: Duration,
    last_mono: Duration,
    state: State,
    /// The unconfirmed forward jump was found at start on a new boot (downtime or a wrong RTC,
    /// not a step seen while running): [`Detector::confirm_boot_step`] may believe it once the
    /// kernel says NTP is in sync.
    boot_jump: bool,
}

impl Detector {
    /// A detector that trusts `wall` now.
    pub fn new(settings: ClockSettings, wall: Time90k, mono: Duration) -> Self {
        Detector {
            threshold: duration_to_ticks(settings.jump_threshold),
            jump_confirm: settings.jump_confirm,
            anchor: wall,
            anchor_mono: mono,
            high: wall,
            high_mono: mono,
            last_mono: mono,
            state: State::Synced,
            boot_jump: false,
        }
    }

    /// The detector at start. The high-water mark and the anchor line come from the persisted
    /// state: exactly when it was saved on this boot (the boot-time clock ran on meanwhile);
    /// after a reboot (downtime unknown) from the newer of the saved high-water mark and the
    /// newest recorded segment's end (`newest`), the anchor that far behind it as it was when
    /// saved (an accepted backward step stays accepted). Then:
    /// - the wall clock within the threshold of the anchor line: synced;
    /// - more than the threshold ahead (a jump, or after a reboot a downtime or a wrong RTC):
    ///   unconfirmed forward, the trusted time continuing from the high-water mark until the new
    ///   time is confirmed or accepted;
    /// - more than the threshold behind (a dead RTC battery): unconfirmed backward until
    ///   accepted; footage continues after what was recorded.
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
        let (high, line, carried) = if let Some(s) = same_boot {
            let elapsed = duration_to_ticks(mono.saturating_sub(Duration::from_nanos(s.mono_ns)));
            let carried = (s.state != "synced")
                .then(|| mono.saturating_sub(Duration::from_nanos(s.unconfirmed_for_ns)));
            (
                Time90k(s.trusted).add_ticks(elapsed),
                Time90k(s.anchor.unwrap_or(s.trusted)).add_ticks(elapsed),
                carried,
            )
        } else {
            let r = [saved.map(|s| Time90k(s.trusted)), newest]
                .into_iter()
                .flatten()
                .max();
            let Some(r) = r else {
                return (d, None);
            };
            let behind = saved.map_or(0, |s| (s.trusted - s.anchor.unwrap_or(s.trusted)).max(0));
            (r, r.add_ticks(-behind), None)
        };
        d.high = high;
        d.anchor = line;
        let offset = wall.0 - line.0;
        if offset.abs() <= d.threshold {
            if same_boot.is_none() {
                // A new boot within the threshold: the wall clock is believed from here on.
                d.anchor = wall;
            }
            return (d, None);
        }
        let direction = Direction::of(offset);
        d.boot_jump = same_boot.is_none() && direction == Direction::Forward;
        d.state = State::Unconfirmed {
            direction,
            // The same jump as before the restart: its confirmation period goes on.
            since: carried.unwrap_or(mono),
            offset,
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

    fn line(&self, mono: Duration) -> Time90k {
        self.anchor
            .add_ticks(duration_to_ticks(mono.saturating_sub(self.anchor_mono)))
    }

    fn high_at(&self, mono: Duration) -> Time90k {
        self.high
            .add_ticks(duration_to_ticks(mono.saturating_sub(self.high_mono)))
    }

    fn believe(&mut self, wall: Time90k, mono: Duration) {
        self.anchor = wall;
        self.anchor_mono = mono;
        self.state = State::Synced;
        self.boot_jump = false;
    }

    /// After a reboot the daemon cannot tell downtime from a wrong clock, so a wall clock ahead
    /// of the saved trusted time is an unconfirmed forward jump, and new footage would be stamped
    /// behind real time by the downtime until it is confirmed. When the kernel reports that NTP
    /// has synchronised the clock (`ntp_synced`), that forward step is believed at once: it is
    /// what every other program on the machine believes. Only a step found at start on a new
    /// boot qualifies; a step seen while running (a bad NTP source) still waits for
    /// `clock.jump_confirm` or an accept. It does not feed a reading: the caller observes first,
    /// so that what that reading finds is reported as the clock's own, not as NTP's.
    pub fn confirm_boot_step(
        &mut self,
        wall: Time90k,
        mono: Duration,
        ntp_synced: bool,
    ) -> Option<Event> {
        if !ntp_synced || !self.boot_jump {
            return None;
        }
        match self.state {
            State::Unconfirmed {
                direction: Direction::Forward,
                offset,
                ..
            } => {
                let mono = mono.max(self.last_mono);
                self.believe(wall, mono);
                self.observe(wall, mono);
                Some(Event::Confirmed { offset })
            }
            _ => None,
        }
    }

    /// The trusted time at `mono` without moving the high-water mark.
    fn trusted(&self, wall: Time90k, mono: Duration) -> Time90k {
        let high = self.high_at(mono);
        match self.state {
            State::Synced => wall.max(high),
            State::Unconfirmed { .. } => high,
        }
    }

    /// Feeds one reading of both clocks; returns the times to use and what changed, if anything.
    /// A monotonic reading older than the last one counts as the last one.
    pub fn observe(&mut self, wall: Time90k, mono: Duration) -> (Reading, Option<Event>) {
        let mono = mono.max(self.last_mono);
        self.last_mono = mono;
        let offset = wall.0 - self.line(mono).0;
        let event = match self.state {
            State::Synced if offset.abs() <= self.threshold => None,
            State::Synced
                if self.high_at(mono).0 - self.line(mono).0 > self.threshold
                    && (wall.0 - self.high_at(mono).0).abs() <= self.threshold =>
            {
                // After an accepted backward step the trusted time runs ahead of the anchor line;
                // a wall clock that comes back to it rejoins it (the trusted time does not move).
                self.believe(wall, mono);
                None
            }
            State::Synced => {
                let direction = Direction::of(offset);
                self.boot_jump = false;
                self.state = State::Unconfirmed {
                    direction,
                    since: mono,
                    offset,
                };
                Some(Event::Jump {
                    direction,
                    step: offset,
                    offset,
                })
            }
            State::Unconfirmed {
                since,
                offset: seen,
                ..
            } => {
                if offset.abs() <= self.threshold {
                    self.state = State::Synced;
                    self.boot_jump = false;
                    Some(Event::Reverted { offset: seen })
                } else if (offset - seen).abs() > self.threshold {
                    // Another jump: its own confirmation period starts now.
                    let step = offset - seen;
                    self.boot_jump = false;
                    self.state = State::Unconfirmed {
                        direction: Direction::of(offset),
                        since: mono,
                        offset,
                    };
                    Some(Event::Jump {
                        direction: Direction::of(step),
                        step,
                        offset,
                    })
                } else if offset > 0 && mono.saturating_sub(since) >= self.jump_confirm {
                    // Only a forward jump is confirmed by time: a backward one (a dead RTC
                    // battery in the year 2000) would stop expiry for decades once believed.
                    self.believe(wall, mono);
                    Some(Event::Confirmed { offset })
                } else {
                    None
                }
            }
        };
        let trusted = self.trusted(wall, mono);
        self.high = trusted;
        self.high_mono = mono;
        (Reading { wall, trusted }, event)
    }

    /// An operator accepts the wall clock: it becomes the anchor now, and the trusted time
    /// follows it where it is ahead (it never goes back). `None` when there was nothing to
    /// accept.
    pub fn accept(&mut self, wall: Time90k, mono: Duration) -> Option<Event> {
        let (_, ev) = self.observe(wall, mono);
        match self.state {
            State::Synced => {
                ev.filter(|e| matches!(e, Event::Confirmed { .. } | Event::Reverted { .. }))
            }
            State::Unconfirmed { .. } => {
                let mono = self.last_mono;
                let offset = wall.0 - self.line(mono).0;
                self.believe(wall, mono);
                self.observe(wall, mono);
                Some(Event::Accepted { offset })
            }
        }
    }

    /// What to persist.
    pub fn saved(&self, boot_id: &str) -> Saved {
        let mono = self.last_mono;
        let (state, unconfirmed_for) = match self.state {
            State::Synced => ("synced", Duration::ZERO),
            State::Unconfirmed {
                direction, since, ..
            } => (
                match direction {
                    Direction::Forward => "unconfirmed_forward",
                    Direction::Backward => "unconfirmed_backward",
                },
                mono.saturating_sub(since),
            ),
        };
        Saved {
            trusted: self.high_at(mono).0,
            anchor: Some(self.line(mono).0),
            mono_ns: mono.as_nanos() as u64,
            boot_id: boot_id.to_owned(),
            state: state.to_owned(),
            unconfirmed_for_ns: unconfirmed_for.as_nanos() as u64,
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

    /// Monotonic time left until an unconfirmed forward jump is believed by itself; `None` when
    /// synced or for a backward jump (believed only when accepted).
    pub fn confirm_in(&self) -> Option<Duration> {
        match self.state {
            State::Unconfirmed {
                since,
                direction: Direction::Forward,
                ..
            } => Some(
                self.jump_confirm
                    .saturating_sub(self.last_mono.saturating_sub(since)),
            ),
            _ => None,
        }
    }
}

/// "Now" by the trusted time as far as the persisted clock state tells, for what runs before
/// the daemon's [`TrustedClock`] exists (start-up recovery, loading holds): the saved
/// high-water mark, carried on by the boot-time clock when it was saved on this boot, and never
/// later than the wall clock (where it serves to judge whether a hold has lapsed, earlier only
/// keeps more). The wall clock when nothing was saved or the state cannot be read.
pub fn persisted_now(index: &Index) -> Time90k {
    let wall = Time90k::now();
    let saved = match index.get_raw(CF_META, META_KEY) {
        Ok(Some(v)) => serde_json::from_slice::<Saved>(&v).ok(),
        _ => None,
    };
    let Some(s) = saved else {
        return wall;
    };
    let mono = boot_time();
    let trusted = if s.boot_id == boot_id() && s.mono_ns <= mono.as_nanos() as u64 {
        Time90k(s.trusted).add_ticks(duration_to_ticks(
            mono.saturating_sub(Duration::from_nanos(s.mono_ns)),
        ))
    } else {
        Time90k(s.trusted)
    };
    wall.min(trusted)
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

/// Whether the kernel says an NTP daemon keeps the clock synchronised (`adjtimex` without
/// `STA_UNSYNC`, what `timedatectl` shows as "System clock synchronized").
pub fn ntp_synced() -> bool {
    // SAFETY: a zeroed timex with modes 0 only reads the kernel's state into it.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::adjtimex(&mut tx) };
    rc >= 0 && rc != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`); where `/proc/sys` is hidden (the
/// systemd unit's `ProcSubset=pid`), the unit's `HOLDFAST_BOOT_ID=%b` in the same dashed form;
/// empty when neither is there.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .ok()
        .or_else(|| {
            std::env::var("HOLDFAST_BOOT_ID")
                .ok()
                .and_then(|v| dashed_boot_id(&v))
        })
        .unwrap_or_default()
}

/// systemd's `%b` (32 hex digits) in the kernel's form (`8-4-4-4-12`, lower case).
fn dashed_boot_id(v: &str) -> Option<String> {
    let v = v.trim().to_ascii_lowercase().replace('-', "");
    if v.len() != 32 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!(
        "{}-{}-{}-{}-{}",
        &v[..8],
        &v[8..12],
        &v[12..16],
        &v[16..20],
        &v[20..]
    ))
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
            let mut g = clock.inner.lock().unwrap_or_else(|p| p.into_inner());
            clock.note(&mut g, ev, "start", Time90k::now());
        }
        clock.observe();
        Ok(clock)
    }

    fn note(&self, g: &mut Inner, ev: Event, by: &str, wall: Time90k) {
        let trusted = g.det.trusted(wall, g.det.last_mono);
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
                    trusted = %trusted,
                    jump_confirm = %humantime::format_duration(g.det.jump_confirm),
                    "clock: the wall clock jumped; retention and new footage keep the trusted time \
                     until the new time is accepted (holdfast clock accept) or, for a forward \
                     jump, holds for jump_confirm"
                );
            }
            Event::Reverted { offset } => tracing::warn!(
                offset_seconds = secs(offset),
                "clock: the wall clock is back at the trusted time"
            ),
            Event::Confirmed { offset } => tracing::warn!(
                offset_seconds = secs(offset),
                "clock: the new wall time held for jump_confirm and is trusted now"
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
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (r, ev) = g.det.observe(wall, mono);
        if let Some(ev) = ev {
            self.note(&mut g, ev, "clock", wall);
        }
        drop(g);
        self.metrics.clock_offset_seconds.set(secs(r.offset()));
        r
    }

    /// The time to stamp new footage with: the trusted time (the same as
    /// [`TrustedClock::retention_now`]: footage is judged by the clock that stamped it).
    pub fn now(&self) -> Time90k {
        self.observe().trusted
    }

    /// The trusted time: retention, hold lapse and review dates, the retention gauges. Never
    /// goes back (high-water mark, persisted).
    pub fn retention_now(&self) -> Time90k {
        self.observe().trusted
    }

    /// The `/healthz` detail: state, offset (seconds, wall minus trusted), trusted time, and for
    /// an unconfirmed forward jump the seconds until it is confirmed by itself, for a backward
    /// one `needs_accept` (it is never confirmed by time alone).
    pub fn status(&self) -> serde_json::Value {
        let r = self.observe();
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = serde_json::json!({
            "state": g.det.state_name(),
            "offset_seconds": secs(r.offset()),
            "trusted": r.trusted,
            "wall": r.wall,
        });
        if let Some(left) = g.det.confirm_in() {
            v["confirms_in_seconds"] = left.as_secs().into();
        }
        if g.det.state_name() == "unconfirmed_backward" {
            // Never believed by time alone (design/time.md).
            v["needs_accept"] = true.into();
        }
        v
    }

    /// An operator accepts the wall clock now. Returns the accepted offset in seconds, or `None`
    /// when the wall clock was trusted already. The caller writes the logbook entry.
    pub fn accept(&self, by: &str) -> Option<f64> {
        let wall = Time90k::now();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
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
        // After an accepted backward step the trusted time stays ahead (it never goes back).
        let shown = wall.0 - g.det.trusted(wall, g.det.last_mono).0;
        drop(g);
        self.metrics.clock_offset_seconds.set(secs(shown));
        matches!(ev, Event::Accepted { .. }).then(|| secs(offset))
    }

    /// [`TrustedClock::observe`], and a forward step found at start on a new boot believed once
    /// the kernel says NTP is in sync ([`Detector::confirm_boot_step`]).
    fn observe_boot_step(&self) {
        self.observe();
        let wall = Time90k::now();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ev) = g.det.confirm_boot_step(wall, boot_time(), ntp_synced()) {
            tracing::warn!("clock: NTP is in sync after a reboot: the wall clock is trusted");
            self.note(&mut g, ev, "ntp", wall);
        }
    }

    fn take_pending(&self) -> Vec<(Event, String)> {
        std::mem::take(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()).pending)
    }

    /// Persists the state (synced write when `sync`).
    pub fn persist(
        &self,
        index: &Index,
        sync: bool,
    ) -> Result<(), crate::store::index::IndexError> {
        let saved = {
            let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            g.det.saved(&self.boot_id)
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
            self.observe_boot_step();
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
                    if let Err(e) = self.persist(index, true) {
                        tracing::warn!(error = %e, "clock: could not persist the accepted time");
                    }
                    let mut e = accept_entry(&by, "-", offset);
                    e.text = Some(format!(
                        "accepted with holdfast clock accept: {}",
                        accepted_text(offset)
                    ));
                    if let Err(err) = logbook.append(index, e) {
                        tracing::error!(error = %err, "clock: could not write the clock.accept logbook entry");
                    }
                    AcceptResult {
                        nonce: req.nonce,
                        accepted: true,
                        offset_seconds: Some(offset),
                        message: format!("accepted: {}", accepted_text(offset)),
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
        if let Err(e) = crate::backup::write_private(&tmp, &body)
            .and_then(|()| std::fs::rename(&tmp, data_dir.join(RESULT_FILE)))
        {
            tracing::warn!(error = %e, "clock: could not write the accept result");
        }
    }
}

/// What an accepted offset (seconds, wall clock minus the anchor line) did, in words.
pub fn accepted_text(offset: f64) -> String {
    if offset >= 0.0 {
        format!("the trusted time stepped forward by {offset:.0} s")
    } else {
        format!(
            "the wall clock's step back of {:.0} s is accepted; the trusted time never goes back, \
             so footage times and retention go on from where they were",
            -offset
        )
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

/// Reads a pending accept request (see `backup::read_request_file` for what is accepted);
/// anything else is removed and ignored.
fn read_request(data_dir: &Path) -> Option<Request> {
    let path = data_dir.join(REQUEST_FILE);
    let req = crate::backup::read_request_file::<Request>(&path)?;
    if req.is_none() {
        tracing::warn!(path = %path.display(), "clock: an invalid accept request was removed");
        let _ = std::fs::remove_file(&path);
    }
    req
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
    // Given to the data directory's owner when this is root and the daemon another user.
    crate::backup::write_request(
        data_dir,
        &tmp,
        &serde_json::to_vec(&req).expect("serialises"),
    )
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

    #[test]
    fn systemd_boot_ids_take_the_kernel_form() {
        assert_eq!(
            dashed_boot_id("0123456789ABCDEF0123456789abcdef").as_deref(),
            Some("01234567-89ab-cdef-0123-456789abcdef")
        );
        assert_eq!(dashed_boot_id("%b"), None);
        assert_eq!(dashed_boot_id("0123"), None);
    }

    fn settings() -> ClockSettings {
        ClockSettings {
            jump_threshold: Duration::from_secs(600),
            jump_confirm: Duration::from_secs(3600),
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
        assert_eq!(r.trusted, T0.add_ticks(310 * S));
        assert_eq!(d.state(), State::Synced);
    }

    #[test]
    fn steps_below_the_threshold_that_add_up_are_a_jump() {
        // Review finding: 9-minute steps, each below the 10-minute threshold, crept to +30 d.
        let mut d = Detector::new(settings(), T0, m(0));
        let (r, ev) = d.observe(T0.add_ticks(60 * S + 540 * S), m(60));
        assert_eq!(ev, None);
        assert_eq!(r.trusted, r.wall, "one 9-minute step is followed");
        let (r, ev) = d.observe(T0.add_ticks(120 * S + 1080 * S), m(120));
        assert_eq!(
            ev,
            Some(Event::Jump {
                direction: Direction::Forward,
                step: 1080 * S,
                offset: 1080 * S
            }),
            "18 minutes from the anchor is a jump"
        );
        assert_eq!(
            r.trusted,
            T0.add_ticks(120 * S + 540 * S),
            "the trusted time goes on from where it was, not back to the anchor"
        );
        // Creeping on while unconfirmed restarts the confirmation once it adds up again.
        let (_, ev) = d.observe(T0.add_ticks(180 * S + 1620 * S), m(180));
        assert_eq!(ev, None);
        let (_, ev) = d.observe(T0.add_ticks(240 * S + 2160 * S), m(240));
        assert!(matches!(ev, Some(Event::Jump { .. })), "{ev:?}");
        assert_eq!(d.confirm_in(), Some(Duration::from_secs(3600)));
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
        assert_eq!(r.trusted, T0.add_ticks(10 * S), "trusted time runs on");
        assert_eq!(r.offset(), 30 * day);
        // 59 minutes later: still held back.
        let (r, ev) = d.observe(T0.add_ticks(30 * day + 3550 * S), m(3550));
        assert_eq!((ev, r.trusted), (None, T0.add_ticks(3550 * S)));
        assert_eq!(d.confirm_in(), Some(Duration::from_secs(60)));
        // After jump_confirm on the monotonic clock: believed.
        let (r, ev) = d.observe(T0.add_ticks(30 * day + 3611 * S), m(3611));
        assert_eq!(ev, Some(Event::Confirmed { offset: 30 * day }));
        assert_eq!(r.trusted, r.wall);
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
        assert_eq!(r.trusted, T0.add_ticks(65 * S));
        assert_eq!(d.state(), State::Synced);
    }

    #[test]
    fn a_backward_jump_is_never_confirmed_by_time_and_the_trusted_time_never_goes_back() {
        let mut d = Detector::new(settings(), T0, m(0));
        let year = 365 * 86_400 * S;
        let (r, ev) = d.observe(T0.add_ticks(100 * S - year), m(100));
        assert!(matches!(
            ev,
            Some(Event::Jump {
                direction: Direction::Backward,
                ..
            })
        ));
        assert_eq!(r.trusted, T0.add_ticks(100 * S), "expiry stays on time");
        assert_eq!(d.state_name(), "unconfirmed_backward");
        assert_eq!(d.confirm_in(), None, "no confirmation by time");
        // Ten times jump_confirm later: still not believed, the trusted time still runs on.
        let later = 100 + 36_000;
        let (r, ev) = d.observe(T0.add_ticks(later * S - year), m(later as u64));
        assert_eq!(ev, None);
        assert_eq!(d.state_name(), "unconfirmed_backward");
        assert_eq!(r.trusted, T0.add_ticks(later * S));
        // Accepted: shown as synced, but the trusted time does not go back; it keeps real time.
        let ev = d.accept(T0.add_ticks((later + 1) * S - year), m(later as u64 + 1));
        assert_eq!(
            ev,
            Some(Event::Accepted { offset: -year }),
            "the step of the wall clock that is accepted"
        );
        assert_eq!(d.state(), State::Synced);
        let (r, ev) = d.observe(T0.add_ticks((later + 61) * S - year), m(later as u64 + 61));
        assert_eq!(ev, None);
        assert_eq!(r.trusted, T0.add_ticks((later + 61) * S));
        assert_eq!(r.offset(), -year);
        // A wall clock that comes back to the trusted time rejoins it without a jump.
        let (r, ev) = d.observe(T0.add_ticks((later + 62) * S), m(later as u64 + 62));
        assert_eq!((ev, r.trusted), (None, r.wall));
        let (_, ev) = d.observe(
            T0.add_ticks((later + 63) * S + 700 * S),
            m(later as u64 + 63),
        );
        assert!(
            matches!(ev, Some(Event::Jump { .. })),
            "anchored there again: {ev:?}"
        );
    }

    #[test]
    fn the_trusted_time_never_steps_back_after_a_revert() {
        // Review finding: a reboot found the wall clock ahead, then it reverted; stamps that had
        // followed the wall clock stepped back and ingest squeezed frames 1 ms apart.
        let day = 86_400 * S;
        let newest = T0.add_ticks(50 * S);
        let (mut d, ev) = Detector::resume(
            settings(),
            T0.add_ticks(day),
            m(0),
            "boot-b",
            None,
            Some(newest),
        );
        assert!(ev.is_some());
        let mut last = Time90k(i64::MIN);
        for i in 1..=20u64 {
            // The wall clock comes back (NTP) at i = 10.
            let wall = if i < 10 {
                T0.add_ticks(day + i as i64 * S)
            } else {
                newest.add_ticks(i as i64 * S)
            };
            let (r, _) = d.observe(wall, m(i));
            assert_eq!(r.trusted, newest.add_ticks(i as i64 * S), "at {i}");
            assert!(r.trusted > last);
            last = r.trusted;
        }
        assert_eq!(d.state(), State::Synced);
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
        assert_eq!((ev, r.trusted), (None, T0.add_ticks(30 * day + 9 * S)));
    }

    #[test]
    fn monotonic_readings_never_go_back() {
        let mut d = Detector::new(settings(), T0, m(100));
        let (r, _) = d.observe(T0.add_ticks(5 * 86_400 * S), m(50));
        assert_eq!(
            r.trusted, T0,
            "an older monotonic reading counts as the last one"
        );
    }

    fn saved(d: &Detector) -> Saved {
        d.saved("boot-a")
    }

    #[test]
    fn a_restart_on_the_same_boot_carries_the_trusted_time() {
        let day = 86_400 * S;
        // Saved while synced; the daemon is down 100 s and the clock jumped 30 days meanwhile.
        let d = Detector::new(settings(), T0, m(0));
        let s = saved(&d);
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
        assert_eq!(
            r.trusted,
            T0.add_ticks(101 * S),
            "same boot: the trusted time is exact"
        );
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
    fn an_accepted_backward_step_stays_accepted_and_ahead_across_restarts() {
        let year = 365 * 86_400 * S;
        let mut d = Detector::new(settings(), T0, m(0));
        d.observe(T0.add_ticks(10 * S - year), m(10));
        d.accept(T0.add_ticks(20 * S - year), m(20));
        let s = saved(&d);
        assert_eq!(s.state, "synced");
        assert_eq!(s.trusted, T0.add_ticks(20 * S).0, "the high-water mark");
        // Same boot, 100 s later.
        let (mut d2, ev) = Detector::resume(
            settings(),
            T0.add_ticks(120 * S - year),
            m(120),
            "boot-a",
            Some(&s),
            None,
        );
        assert_eq!((ev, d2.state()), (None, State::Synced));
        let (r, _) = d2.observe(T0.add_ticks(121 * S - year), m(121));
        assert_eq!(r.trusted, T0.add_ticks(121 * S));
        // After a reboot (downtime unknown): not shown as a new jump, still ahead.
        let (mut d3, ev) = Detector::resume(
            settings(),
            T0.add_ticks(200 * S - year),
            m(0),
            "boot-b",
            Some(&s),
            Some(T0.add_ticks(15 * S)),
        );
        assert_eq!((ev, d3.state()), (None, State::Synced));
        let (r, _) = d3.observe(T0.add_ticks(201 * S - year), m(1));
        assert_eq!(
            r.trusted,
            T0.add_ticks(21 * S),
            "never behind what was given out"
        );
    }

    #[test]
    fn a_restart_during_a_jump_keeps_its_confirmation_period() {
        let day = 86_400 * S;
        let mut d = Detector::new(settings(), T0, m(0));
        d.observe(T0.add_ticks(30 * day), m(0));
        d.observe(T0.add_ticks(30 * day + 3000 * S), m(3000));
        let s = saved(&d);
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
    fn a_forward_step_at_boot_is_believed_once_ntp_is_in_sync_a_running_one_is_not() {
        let newest = T0.add_ticks(50 * S);
        let down = 3 * 3600 * S;
        // A new boot after three hours of downtime: unconfirmed forward, footage held back.
        let (mut d, ev) = Detector::resume(
            settings(),
            newest.add_ticks(down),
            m(0),
            "boot-b",
            None,
            Some(newest),
        );
        assert!(matches!(
            ev,
            Some(Event::Jump {
                direction: Direction::Forward,
                ..
            })
        ));
        // NTP not in sync yet: nothing changes.
        assert_eq!(
            d.confirm_boot_step(newest.add_ticks(down + S), m(1), false),
            None
        );
        assert_eq!(d.state_name(), "unconfirmed_forward");
        // In sync: believed at once, and the trusted time is the wall clock.
        let ev = d.confirm_boot_step(newest.add_ticks(down + 2 * S), m(2), true);
        assert!(matches!(ev, Some(Event::Confirmed { .. })), "{ev:?}");
        assert_eq!(d.state_name(), "synced");
        let (r, _) = d.observe(newest.add_ticks(down + 3 * S), m(3));
        assert_eq!(r.trusted, newest.add_ticks(down + 3 * S));
        // A step while running (a bad NTP source) is not believed because NTP says it is in
        // sync: it waits for jump_confirm or an accept.
        let day = 86_400 * S;
        let (_, ev) = d.observe(newest.add_ticks(down + 30 * day), m(4));
        assert!(ev.is_some());
        assert_eq!(
            d.confirm_boot_step(newest.add_ticks(down + 30 * day + S), m(5), true),
            None
        );
        assert_eq!(d.state_name(), "unconfirmed_forward");
        // Nor is a backward step at boot (a dead RTC battery).
        let (mut d, _) = Detector::resume(
            settings(),
            newest.add_ticks(-day),
            m(0),
            "boot-b",
            None,
            Some(newest),
        );
        assert_eq!(
            d.confirm_boot_step(newest.add_ticks(-day + S), m(1), true),
            None
        );
        assert_eq!(d.state_name(), "unconfirmed_backward");
    }

    #[test]
    fn after_a_reboot_the_newest_footage_is_the_reference() {
        let day = 86_400 * S;
        let newest = T0.add_ticks(50 * S);
        // No saved state, new boot, wall clock 30 days ahead of the newest footage: held back
        // (footage and retention) until confirmed or accepted.
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
        assert_eq!(r.trusted, newest.add_ticks(10 * S));
        // Behind the newest footage after a reboot (a dead RTC battery): trusted time continues
        // from the footage, so new footage never overlaps it; only an accept ends it.
        let (mut d, _) = Detector::resume(
            settings(),
            T0.add_ticks(-day),
            m(0),
            "boot-b",
            None,
            Some(newest),
        );
        let (r, _) = d.observe(T0.add_ticks(-day + S), m(1));
        assert_eq!(r.trusted, newest.add_ticks(S));
        assert_eq!(d.state_name(), "unconfirmed_backward");
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

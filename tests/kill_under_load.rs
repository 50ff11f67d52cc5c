//! SIGKILL under load (issue 9, point 7, first item): the real daemon binary records four
//! `holdfast camsim` streams while a thread places and releases holds over the HTTP API (random
//! cameras and ranges, some site-wide), and the daemon is killed with SIGKILL at random moments:
//! while recording, while a hold request is in flight, and now and then again while it starts.
//!
//! After each kill, before the restart:
//! - `holdfast verify` passes: recovery drops no dangling entry (after a process crash the page
//!   cache keeps every written byte, so an entry without its bytes is a writer bug) and every
//!   index entry points at a record whose header and CRCs match;
//! - `holdfast logbook verify` passes: chain, head record and checkpoints intact;
//! - no two segments of a camera overlap in the index (a restart must not stamp new footage over
//!   what was recorded before the kill).
//!
//! After each restart, through the API and the files:
//! - every range the API listed as recorded before the kill (it lists only what is durable) is
//!   still listed, unless retention could have expired it since (the short policy);
//! - every hold that was acknowledged (201) is still there, with its cameras and range; released
//!   ones (200) stay released; a hold whose 201 was lost with the kill is adopted once it shows;
//! - no held range is lost: what the API listed inside an active hold's range right after its 201
//!   is still listed, also once retention has passed over it;
//! - every gap in a camera's recordings is no longer than the sync interval plus the restart time
//!   measured around it (from the SIGKILL to every camera recording again, which includes the
//!   test's own verification while the daemon is dead; kills whose gaps run into each other count
//!   as one restart, from the first kill to the last recovery) plus [`GAP_SLACK`]: one GOP of the
//!   clip (the segment being assembled when the process died) and 1.5 s for write and sync
//!   latency and polling on a loaded machine. A gap that no kill explains gets the same bound
//!   without a restart time.
//!
//! Figures at the end: kills, holds placed/released, checks done, segments verified, restart time
//! mean/max. 20 kills in the normal run (about 75 s). Long form:
//! `HOLDFAST_KILLS=200 cargo test --release --test kill_under_load -- --nocapture` (about 12
//! minutes). The seed is printed; `HOLDFAST_TEST_SEED=N` replays its kill moments and hold
//! traffic (timing still varies). On a failure the daemon log is copied next to the temp dir and
//! its path printed; `HOLDFAST_KEEP_FAILED=1` also keeps a copy of the data and config directory.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use holdfast::retention::intervals::{Interval, IntervalSet};
use holdfast::time::{Time90k, TICKS_PER_SEC};
use rand::Rng;
use support::procs::{holdfast, http_get, http_post, q, Camsim, Daemon, ADMIN_TOKEN};

/// Cameras and their sites: `site-a` keeps footage [`SHORT_RETENTION`], `site-b` [`KEEP_RETENTION`].
const CAMERAS: [(&str, &str); 4] = [
    ("cam0", "site-a"),
    ("cam1", "site-a"),
    ("cam2", "site-b"),
    ("cam3", "site-b"),
];
const SITES: [&str; 2] = ["site-a", "site-b"];
/// Retention of `site-a`: expiry runs during the test, so holds have something to protect.
const SHORT_RETENTION: i64 = 30 * TICKS_PER_SEC;
/// Retention of `site-b`: longer than the normal run, so every recorded range must stay.
const KEEP_RETENTION: i64 = 180 * TICKS_PER_SEC;
const BUCKET_SECS: u32 = 5;
const SYNC_INTERVAL_MS: i64 = 500;
/// Keyframe interval of the shipped clip (`camsim`): segments are one GOP long.
const GOP: i64 = 2 * TICKS_PER_SEC;
/// What a gap may exceed sync interval + restart time by: the segment being assembled when the
/// process died (one GOP) and 1.5 s of write/sync latency and polling.
const GAP_SLACK: i64 = GOP + 3 * TICKS_PER_SEC / 2;
/// RFC 3339 with nanoseconds is not exact in 90 kHz ticks: 1 ms at each end of a range.
const ROUNDING: i64 = 90;

fn retention(cam: &str) -> i64 {
    if site_of(cam) == "site-a" {
        SHORT_RETENTION
    } else {
        KEEP_RETENTION
    }
}

fn site_of(cam: &str) -> &'static str {
    CAMERAS.iter().find(|(c, _)| *c == cam).unwrap().1
}

/// From when on a camera's footage cannot have been expired by retention at `now`: a bucket goes
/// when its oldest segment reaches retention, so data at `t` may go once `t - bucket - segment`
/// has; one more GOP and a second of margin.
fn safe_from(cam: &str, now: Time90k) -> Time90k {
    now.add_ticks(
        -retention(cam) + i64::from(BUCKET_SECS) * TICKS_PER_SEC + 2 * GOP + TICKS_PER_SEC,
    )
}

fn secs(t: i64) -> f64 {
    t as f64 / TICKS_PER_SEC as f64
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The intervals the API lists for a camera in `[from, to)`; `None` when the daemon does not
/// answer 200.
fn listed(addr: SocketAddr, cam: &str, from: Time90k, to: Time90k) -> Option<IntervalSet> {
    let (status, body) = http_get(
        addr,
        &format!(
            "/api/v1/cameras/{cam}/recordings?from={}&to={}",
            q(&from.to_rfc3339()),
            q(&to.to_rfc3339())
        ),
        Some(ADMIN_TOKEN),
    );
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let parse = |s: &serde_json::Value| Time90k::parse_rfc3339(s.as_str()?).ok();
    Some(IntervalSet::from_intervals(
        v["intervals"]
            .as_array()?
            .iter()
            .filter_map(|i| Some(Interval::new(parse(&i["from"])?.0, parse(&i["to"])?.0))),
    ))
}

/// Each interval shrunk by [`ROUNDING`] at both ends.
fn shrunk(s: &IntervalSet) -> IntervalSet {
    IntervalSet::from_intervals(
        s.intervals()
            .iter()
            .map(|i| Interval::new(i.from + ROUNDING, i.to - ROUNDING)),
    )
}

fn show(s: &IntervalSet) -> String {
    s.intervals()
        .iter()
        .map(|i| {
            format!(
                "{} .. {} ({:.2} s)",
                Time90k(i.from).to_rfc3339(),
                Time90k(i.to).to_rfc3339(),
                secs(i.len())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// Never asked to release.
    No,
    /// Asked; the answer was lost with a kill.
    Unanswered,
    /// 200.
    Done,
}

#[derive(Debug)]
struct HoldRec {
    cameras: Vec<String>,
    from: String,
    to: String,
    site: Option<String>,
    release: Release,
    /// Per camera, what the API listed inside the range right after the 201.
    pieces: Vec<(String, IntervalSet)>,
    /// Found after a restart; its 201 was lost with a kill.
    adopted: bool,
}

#[derive(Debug, Default)]
struct HoldLog {
    holds: BTreeMap<u64, HoldRec>,
    placed: u64,
    site_wide: u64,
    released: u64,
    unanswered: u64,
    /// Answers that were neither success nor a lost connection: each one fails the test.
    refused: Vec<String>,
}

/// The hold traffic: until `stop`, every 100-500 ms place a hold (a random set of cameras or a
/// whole site, a random range of the last 45 s) or release an acknowledged one. Each request
/// runs with the log locked, so the checks after a restart see no request half-recorded.
fn hold_traffic(addr: SocketAddr, log: Arc<Mutex<HoldLog>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = support::synth::rng(seed ^ 0x401d_5eed);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(rng.random_range(100..500)));
        let mut log = lock(&log);
        let releasable: Vec<u64> = log
            .holds
            .iter()
            .filter(|(_, h)| h.release == Release::No)
            .map(|(id, _)| *id)
            .collect();
        if !releasable.is_empty() && rng.random_bool(0.3) {
            let id = releasable[rng.random_range(0..releasable.len())];
            let (status, body) = http_post(
                addr,
                &format!("/api/v1/holds/{id}/release"),
                Some(ADMIN_TOKEN),
                r#"{"reason":"kill test: released"}"#,
            );
            match status {
                200 => {
                    log.holds.get_mut(&id).unwrap().release = Release::Done;
                    log.released += 1;
                }
                0 => log.holds.get_mut(&id).unwrap().release = Release::Unanswered,
                s => log
                    .refused
                    .push(format!("release of hold {id}: {s} {body}")),
            }
            continue;
        }
        let now = Time90k::now();
        let from = now.add_ticks(-rng.random_range(TICKS_PER_SEC..45 * TICKS_PER_SEC));
        let to = from
            .add_ticks(rng.random_range(TICKS_PER_SEC / 2..10 * TICKS_PER_SEC))
            .min(now);
        // Every third 10 s slot of wall time is never held, so that the short policy always has
        // unheld footage to expire (with holds this dense everything else may well be pinned,
        // and the check that retention ran would depend on luck).
        let slot = |t: Time90k| t.0.div_euclid(10 * TICKS_PER_SEC);
        if (slot(from)..=slot(to)).any(|s| s.rem_euclid(3) == 0) {
            continue;
        }
        let target = if rng.random_bool(0.25) {
            format!(r#""site":"{}""#, SITES[rng.random_range(0..SITES.len())])
        } else {
            let mut cams: Vec<&str> = CAMERAS
                .iter()
                .filter(|_| rng.random_bool(0.4))
                .map(|c| c.0)
                .collect();
            if cams.is_empty() {
                cams.push(CAMERAS[rng.random_range(0..CAMERAS.len())].0);
            }
            format!(r#""cameras":{}"#, serde_json::to_string(&cams).unwrap())
        };
        let body = format!(
            r#"{{{target},"from":"{}","to":"{}","reason":"kill test","reference":"K-{}"}}"#,
            from.to_rfc3339(),
            to.to_rfc3339(),
            log.placed + log.unanswered
        );
        let (status, text) = http_post(addr, "/api/v1/holds", Some(ADMIN_TOKEN), &body);
        let hold: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        match (status, hold) {
            (201, Some(h)) if h["id"].is_u64() => {
                let id = h["id"].as_u64().unwrap();
                let cameras: Vec<String> = h["cameras"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_owned())
                    .collect();
                // What is recorded inside the range now is pinned from now on.
                let pieces = cameras
                    .iter()
                    .filter_map(|c| Some((c.clone(), listed(addr, c, from, to)?)))
                    .collect();
                log.placed += 1;
                if h["site"].is_string() {
                    log.site_wide += 1;
                }
                log.holds.insert(
                    id,
                    HoldRec {
                        cameras,
                        from: h["from"].as_str().unwrap().to_owned(),
                        to: h["to"].as_str().unwrap().to_owned(),
                        site: h["site"].as_str().map(str::to_owned),
                        release: Release::No,
                        pieces,
                        adopted: false,
                    },
                );
            }
            // The connection died with the daemon (maybe after the hold was stored).
            (0, _) => log.unanswered += 1,
            (201, _) if text.is_empty() => log.unanswered += 1,
            (s, _) => log.refused.push(format!("placing {body}: {s} {text}")),
        }
    }
}

/// One stretch without recording: the first SIGKILL and the moment every camera recorded again.
#[derive(Debug, Clone, Copy)]
struct Down {
    kill: Time90k,
    up: Time90k,
}

/// The most a gap `[from, to)` may last: sync interval + slack, plus the restart time of the
/// down stretches it meets (together, first kill to last recovery).
fn gap_bound(downs: &[Down], from: Time90k, to: Time90k) -> i64 {
    let base = SYNC_INTERVAL_MS * TICKS_PER_SEC / 1000 + GAP_SLACK;
    let hits: Vec<&Down> = downs
        .iter()
        .filter(|w| w.kill < to && w.up.add_ticks(base) > from)
        .collect();
    match (
        hits.iter().map(|w| w.kill).min(),
        hits.iter().map(|w| w.up).max(),
    ) {
        (Some(k), Some(u)) => base + (u.0 - k.0),
        _ => base,
    }
}

/// The message of a thread's panic.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// The test's state that outlives restarts.
struct Run {
    seed: u64,
    d: Daemon,
    /// Per camera, every range the API ever listed (before a kill, or inside a new hold).
    known: BTreeMap<String, IntervalSet>,
    /// Per camera, the start of its first recording.
    first: BTreeMap<String, Time90k>,
    downs: Vec<Down>,
    checks: u64,
    kill_no: usize,
    /// Held ranges checked after retention had passed over them (they prove the hold worked).
    held_past_retention: u64,
    largest_gap_margin: Option<(i64, String)>,
}

impl Run {
    /// Fails the test with the seed, the kill number, what went wrong and the daemon's last
    /// warnings; keeps the log (and with `HOLDFAST_KEEP_FAILED`, the whole directory).
    fn fail(&self, what: String) -> ! {
        let keep = std::env::temp_dir().join(format!("holdfast-kill-{}", self.seed));
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(&self.d.log, keep.join("holdfast.log"));
        if std::env::var_os("HOLDFAST_KEEP_FAILED").is_some() {
            let _ = Command::new("cp")
                .arg("-a")
                .arg(self.d.dir())
                .arg(keep.join("dir"))
                .status();
        }
        let log = self.d.log_text();
        let tail: Vec<_> = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .rev()
            .take(30)
            .collect();
        panic!(
            "kill {} (seed {}, HOLDFAST_TEST_SEED={} replays): {what}\nlog kept in {}\nlast \
             errors and warnings of the daemon:\n{}",
            self.kill_no,
            self.seed,
            self.seed,
            keep.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
        self.checks += 1;
    }

    /// What the API lists for every camera over the whole run.
    fn listing(&self) -> BTreeMap<String, IntervalSet> {
        let from = self.first.values().min().copied().unwrap_or(Time90k::now());
        let from = from.add_ticks(-60 * TICKS_PER_SEC);
        CAMERAS
            .iter()
            .map(|(c, _)| {
                let s = listed(
                    self.d.addr,
                    c,
                    from,
                    Time90k::now().add_ticks(60 * TICKS_PER_SEC),
                )
                .unwrap_or_else(|| self.fail(format!("GET recordings of {c} failed")));
                (c.to_string(), s)
            })
            .collect()
    }

    /// Remembers what the API lists now: it is durable and must survive.
    fn remember(&mut self) {
        for (c, s) in self.listing() {
            let k = self.known.entry(c.clone()).or_default();
            *k = k.union(&s);
            if let Some(i) = s.intervals().first() {
                self.first.entry(c).or_insert(Time90k(i.from));
            }
        }
    }

    /// Kills the daemon; the time of the kill.
    fn kill(&mut self) -> Time90k {
        let t = Time90k::now();
        self.d.kill();
        t
    }

    /// `holdfast verify` and `holdfast logbook verify` on the dead daemon's files; the number of
    /// segments verified.
    fn verify_files(&mut self) -> u64 {
        let config = self.d.config_path();
        let (ok, out) = holdfast(&["verify"], &config);
        self.check(
            ok && out.contains(" 0 dangling entries dropped") && out.contains(", 0 bad"),
            || {
                format!(
                    "after a SIGKILL every index entry must point at intact bytes; holdfast \
                     verify:\n{out}"
                )
            },
        );
        let segments = out
            .lines()
            .find_map(|l| l.strip_prefix("verify: "))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // The index itself, read-only as the crash left it (after verify's recovery): no two
        // segments of a camera overlap, across restarts too.
        let index = holdfast::store::index::Index::open_read_only(&self.d.data_dir.join("index"))
            .unwrap_or_else(|e| self.fail(format!("opening the index read-only: {e}")));
        let mut all = index
            .all_segments()
            .unwrap_or_else(|e| self.fail(format!("reading the segment entries: {e}")));
        drop(index);
        all.sort_by(|a, b| (&a.camera, a.start).cmp(&(&b.camera, b.start)));
        for w in all.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            self.check(a.camera != b.camera || b.start >= a.end(), || {
                format!(
                    "{}: segments overlap: {} .. {} ({} in {}) and {} .. {} ({} in {})",
                    a.camera,
                    a.start.to_rfc3339(),
                    a.end().to_rfc3339(),
                    a.offset,
                    holdfast::time::bucket_stem(a.bucket),
                    b.start.to_rfc3339(),
                    b.end().to_rfc3339(),
                    b.offset,
                    holdfast::time::bucket_stem(b.bucket)
                )
            });
        }
        let (ok, lb) = holdfast(&["logbook", "verify"], &config);
        self.check(ok, || {
            format!("holdfast logbook verify after a SIGKILL failed:\n{lb}")
        });
        segments
    }

    /// Starts the daemon and waits until every camera records; when that was.
    fn start_and_wait(&mut self) -> Time90k {
        self.d.spawn_again();
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.d.exited() {
                self.fail(format!(
                    "the daemon exited by itself at the restart: {status}"
                ));
            }
            let (status, body) = http_get(self.d.addr, "/api/v1/cameras", Some(ADMIN_TOKEN));
            if status == 200 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let recording = v.as_array().is_some_and(|a| {
                    a.len() == CAMERAS.len() && a.iter().all(|c| c["state"] == "recording")
                });
                if recording {
                    return Time90k::now();
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                self.fail(format!(
                    "the cameras did not all record within 60 s of the restart: {body}"
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The checks after a restart (the hold traffic waits meanwhile: `log` is locked).
    fn check_after_restart(&mut self, log: &mut HoldLog) {
        // Holds.
        let (status, body) = http_get(self.d.addr, "/api/v1/holds", Some(ADMIN_TOKEN));
        if status != 200 {
            self.fail(format!("GET /api/v1/holds: {status} {body}"));
        }
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let by_id: BTreeMap<u64, &serde_json::Value> = list
            .iter()
            .filter_map(|h| Some((h["id"].as_u64()?, h)))
            .collect();
        for (id, rec) in log.holds.iter_mut() {
            let Some(h) = by_id.get(id) else {
                self.fail(format!("hold {id} ({rec:?}) was acknowledged and is gone"));
            };
            let cams: Vec<String> = h["cameras"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let same = cams == rec.cameras
                && h["from"] == rec.from.as_str()
                && h["to"] == rec.to.as_str()
                && h["site"].as_str() == rec.site.as_deref();
            self.check(same, || {
                format!("hold {id} changed over the kill: acknowledged as {rec:?}, now {h}")
            });
            let state = h["state"].as_str().unwrap_or_default();
            match rec.release {
                Release::No => self.check(state == "active", || {
                    format!("hold {id} was acknowledged, never released, and is {state}: {h}")
                }),
                Release::Done => self.check(state == "released", || {
                    format!("hold {id} was released (200) and is {state} after the kill: {h}")
                }),
                Release::Unanswered => match state {
                    "released" => {
                        rec.release = Release::Done;
                        log.released += 1;
                    }
                    // The release never reached the index, so it was never published either:
                    // the hold pinned its range throughout, and still must.
                    "active" => rec.release = Release::No,
                    s => self.fail(format!("hold {id}: state {s} after an unanswered release")),
                },
            }
        }
        for (id, h) in &by_id {
            if log.holds.contains_key(id) {
                continue;
            }
            // Placed just before a kill that took its 201 with it.
            let release = match h["state"].as_str() {
                Some("active") => Release::No,
                Some("released") => Release::Done,
                s => self.fail(format!("unknown hold {id} in state {s:?}: {h}")),
            };
            log.holds.insert(
                *id,
                HoldRec {
                    cameras: h["cameras"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap().to_owned())
                        .collect(),
                    from: h["from"].as_str().unwrap().to_owned(),
                    to: h["to"].as_str().unwrap().to_owned(),
                    site: h["site"].as_str().map(str::to_owned),
                    release,
                    pieces: Vec::new(),
                    adopted: true,
                },
            );
        }

        // Recorded ranges.
        let now_listing = self.listing();
        let t = Time90k::now();
        for (cam, known) in self.known.clone() {
            let current = &now_listing[&cam];
            let keep = IntervalSet::from_intervals([Interval::new(safe_from(&cam, t).0, i64::MAX)]);
            let required = shrunk(&known).intersection(&keep);
            let lost = required.difference(current);
            self.check(lost.is_empty(), || {
                format!(
                    "{cam}: recorded ranges listed before the kill are gone: {}\nlisted now: {}",
                    show(&lost),
                    show(current)
                )
            });
        }
        // Held ranges.
        let mut held_past = 0;
        for (id, rec) in log.holds.iter().filter(|(_, h)| h.release == Release::No) {
            for (cam, pieces) in &rec.pieces {
                let required = shrunk(pieces);
                let lost = required.difference(&now_listing[cam]);
                self.check(lost.is_empty(), || {
                    format!(
                        "{cam}: hold {id} ({} .. {}) is active, but what was recorded in its \
                         range is gone: {}",
                        rec.from,
                        rec.to,
                        show(&lost)
                    )
                });
                if required
                    .intervals()
                    .first()
                    .is_some_and(|i| Time90k(i.from) < safe_from(cam, t))
                {
                    held_past += 1;
                }
            }
        }
        self.held_past_retention = self.held_past_retention.max(held_past);
        self.check_gaps(&now_listing, t, false);
    }

    /// Every gap between a camera's first recording (or what retention may have taken) and
    /// its last durable footage is within [`gap_bound`].
    fn check_gaps(&mut self, listing: &BTreeMap<String, IntervalSet>, t: Time90k, last: bool) {
        for (cam, s) in listing {
            let (Some(first), Some(end)) = (self.first.get(cam), s.intervals().last()) else {
                continue;
            };
            let from = first.max(&safe_from(cam, t)).0;
            if from >= end.to {
                continue;
            }
            let gaps = s.complement_within(Interval::new(from, end.to));
            for g in gaps.intervals() {
                let bound = gap_bound(&self.downs, Time90k(g.from), Time90k(g.to));
                if g.len() > bound {
                    self.fail(format!(
                        "{cam}: a gap of {:.2} s ({} .. {}) is longer than sync interval + \
                         restart time + slack ({:.2} s); down stretches: {:?}",
                        secs(g.len()),
                        Time90k(g.from).to_rfc3339(),
                        Time90k(g.to).to_rfc3339(),
                        secs(bound),
                        self.downs
                            .iter()
                            .map(|w| format!("{} .. {}", w.kill.to_rfc3339(), w.up.to_rfc3339()))
                            .collect::<Vec<_>>()
                    ));
                }
                self.checks += 1;
                let margin = bound - g.len();
                if self
                    .largest_gap_margin
                    .as_ref()
                    .is_none_or(|m| margin < m.0)
                {
                    self.largest_gap_margin = Some((
                        margin,
                        format!(
                            "{cam} gap {:.2} s, bound {:.2} s",
                            secs(g.len()),
                            secs(bound)
                        ),
                    ));
                }
            }
            if last {
                self.check(end.to > self.downs.last().map_or(0, |w| w.up.0), || {
                    format!("{cam} records after the last restart")
                });
            }
        }
    }
}

/// The HTTP helper answers status 0 when the server dies while the request is being sent (the
/// hold traffic of the test below once died of a panic on EPIPE, its requests racing the kills).
#[test]
fn a_request_to_a_server_that_dies_mid_request_is_status_0_not_a_panic() {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Close with a reset, as a killed process's socket may: the client's writes then fail.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let r = unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        drop(conn);
    });
    // More than the socket buffers hold, so the write is still going when the reset comes.
    let body = "x".repeat(32 << 20);
    let (status, text) = http_post(addr, "/api/v1/holds", Some(ADMIN_TOKEN), &body);
    server.join().unwrap();
    assert_eq!((status, text.as_str()), (0, ""));
}

#[test]
fn sigkill_under_load_loses_nothing_durable_or_held() {
    let kills = support::synth::env_count("HOLDFAST_KILLS", 20);
    let seed = support::synth::seed();
    eprintln!("kill test: {kills} kills, seed {seed} (HOLDFAST_TEST_SEED={seed} replays)");
    let mut rng = support::synth::rng(seed);
    let sim = Camsim::start(CAMERAS.len());
    let mut config = format!(
        "[sweeper]\ninterval = \"1s\"\n\n\
         [policies.short]\nvideo = \"{}s\"\nkeytags = \"{}s\"\n\n\
         [policies.keep]\nvideo = \"{}s\"\nkeytags = \"{}s\"\n\n\
         [[sites]]\nid = \"site-a\"\npolicy = \"short\"\n\n\
         [[sites]]\nid = \"site-b\"\npolicy = \"keep\"\n\n",
        SHORT_RETENTION / TICKS_PER_SEC,
        SHORT_RETENTION / TICKS_PER_SEC,
        KEEP_RETENTION / TICKS_PER_SEC,
        KEEP_RETENTION / TICKS_PER_SEC,
    );
    for (i, (cam, site)) in CAMERAS.iter().enumerate() {
        config += &format!(
            "[[cameras]]\nid = \"{cam}\"\nsite = \"{site}\"\nurl = \"{}\"\n\n",
            sim.url(i)
        );
    }
    let d = Daemon::start(
        &config,
        &format!(
            "bucket = \"{BUCKET_SECS}s\"\nsegment_target = \"1s\"\nsync_interval = \
             \"{SYNC_INTERVAL_MS}ms\"\nmin_free = \"100MiB\""
        ),
    );
    let mut run = Run {
        seed,
        d,
        known: BTreeMap::new(),
        first: BTreeMap::new(),
        downs: Vec::new(),
        checks: 0,
        kill_no: 0,
        held_past_retention: 0,
        largest_gap_margin: None,
    };
    let t0 = Instant::now();
    run.d.wait_until(Duration::from_secs(30), |d| {
        CAMERAS
            .iter()
            .all(|(c, _)| d.camera_state(c) == "recording")
    });
    // Every camera has durable footage before the first kill.
    run.d.wait_until(Duration::from_secs(30), |d| {
        CAMERAS.iter().all(|(c, _)| {
            let now = Time90k::now();
            listed(d.addr, c, now.add_ticks(-60 * TICKS_PER_SEC), now)
                .is_some_and(|s| !s.is_empty())
        })
    });
    run.remember();

    let log = Arc::new(Mutex::new(HoldLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (addr, log, stop) = (run.d.addr, log.clone(), stop.clone());
        std::thread::spawn(move || hold_traffic(addr, log, stop, seed))
    };
    /// Stops the hold traffic also when the test fails.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());

    let (mut segments_verified, mut verify_runs, mut kills_in_start) = (0u64, 0u64, 0u64);
    // Daemon start to every camera recording; SIGKILL to every camera recording (the test's
    // verification runs in between, while the daemon is dead).
    let (mut restarts, mut downs): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for k in 1..=kills {
        run.kill_no = k;
        std::thread::sleep(Duration::from_millis(rng.random_range(500..4000)));
        // What the API lists now is durable: it must survive the kill.
        run.remember();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..600)));
        let kill_at = run.kill();
        let kill_instant = Instant::now();
        segments_verified += run.verify_files();
        verify_runs += 1;
        // Now and then the daemon dies again while it starts (recovery, opening the logbook,
        // connecting the cameras).
        if rng.random_bool(0.2) {
            run.d.spawn_again();
            // Half of them within the first 150 ms: recovery, RocksDB, the logbook's checks.
            let ms = if rng.random_bool(0.5) {
                rng.random_range(0..150)
            } else {
                rng.random_range(150..1500)
            };
            std::thread::sleep(Duration::from_millis(ms));
            run.kill();
            kills_in_start += 1;
            segments_verified += run.verify_files();
            verify_runs += 1;
        }
        let spawned = Instant::now();
        let up = run.start_and_wait();
        restarts.push(spawned.elapsed());
        downs.push(kill_instant.elapsed());
        run.downs.push(Down { kill: kill_at, up });
        // The hold traffic must still run: a thread that died would leave the remaining kills
        // without holds, and the test would only notice (without saying why) at the end.
        if traffic.is_finished() {
            let why = traffic
                .join()
                .err()
                .map_or("it returned".to_owned(), |p| panic_text(&p));
            run.fail(format!("the hold traffic thread stopped: {why}"));
        }
        let mut l = lock(&log);
        run.check(l.refused.is_empty(), || {
            format!("the API refused hold requests: {:?}", l.refused)
        });
        run.check_after_restart(&mut l);
        drop(l);
        eprintln!(
            "kill {k}: down {:.2} s, of which restart {:.2} s; {} checks so far",
            downs.last().unwrap().as_secs_f64(),
            restarts.last().unwrap().as_secs_f64(),
            run.checks
        );
    }
    stop.store(true, Ordering::Relaxed);
    if let Err(p) = traffic.join() {
        run.fail(format!(
            "the hold traffic thread panicked: {}",
            panic_text(&p)
        ));
    }
    // The last gap closes: every camera records past the last restart.
    let last_up = run.downs.last().map_or(Time90k::now(), |w| w.up);
    run.d.wait_until(Duration::from_secs(20), |d| {
        CAMERAS.iter().all(|(c, _)| {
            listed(d.addr, c, last_up, Time90k::now())
                .and_then(|s| s.intervals().last().map(|i| i.to > last_up.0))
                .unwrap_or(false)
        })
    });
    let mut l = lock(&log);
    run.check_after_restart(&mut l);
    let listing = run.listing();
    run.check_gaps(&listing, Time90k::now(), true);
    run.d.stop();
    segments_verified += run.verify_files();
    verify_runs += 1;

    let mean = restarts.iter().sum::<Duration>() / restarts.len().max(1) as u32;
    let max = restarts.iter().max().copied().unwrap_or_default();
    let down_mean = downs.iter().sum::<Duration>() / downs.len().max(1) as u32;
    let down_max = downs.iter().max().copied().unwrap_or_default();
    let adopted = l.holds.values().filter(|h| h.adopted).count();
    eprintln!(
        "kill test (seed {seed}): {kills} kills (+{kills_in_start} during a start) in {:.0} s; \
         holds: {} placed ({} site-wide), {} released, {} requests unanswered (killed), {adopted} \
         found after their 201 was lost; {} checks done; {segments_verified} segments verified \
         by {verify_runs} runs of holdfast verify; restart (start to every camera recording) \
         mean {:.2} s, max {:.2} s; down (SIGKILL to every camera recording, verification \
         included) mean {:.2} s, max {:.2} s; held ranges past retention checked at the end: {}; closest \
         gap to its bound: {}",
        t0.elapsed().as_secs_f64(),
        l.placed,
        l.site_wide,
        l.released,
        l.unanswered,
        run.checks,
        mean.as_secs_f64(),
        max.as_secs_f64(),
        down_mean.as_secs_f64(),
        down_max.as_secs_f64(),
        run.held_past_retention,
        run.largest_gap_margin
            .as_ref()
            .map_or("no gaps".to_owned(), |(m, w)| format!(
                "{w} ({:.2} s to spare)",
                secs(*m)
            )),
    );
    // The test proves something only if these happened.
    assert!(l.placed > 0 && l.released > 0, "no hold placed or released");
    assert!(
        run.held_past_retention > 0 || kills < 10,
        "no held range outlived the short retention: the holds were never put to the test"
    );
    let expired: i64 = ["cam0", "cam1"]
        .iter()
        .map(|c| run.known[*c].difference(&listing[*c]).total_len())
        .sum();
    if expired == 0 && kills >= 10 {
        run.fail("retention never expired site-a's footage: the short policy did not run".into());
    }
}

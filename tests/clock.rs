//! Clock jumps against the real daemon: libfaketime (`LD_PRELOAD`, `FAKETIME_TIMESTAMP_FILE`
//! rewritten while the daemon runs, `FAKETIME_DONT_FAKE_MONOTONIC=1`) moves the daemon's wall
//! clock; a real RTSP camera (GStreamer) keeps streaming. A 40 s policy with 10 s buckets:
//!
//! - +30 days: nothing is deleted, no hold lapses, the jump shows in the metrics, `/healthz` and
//!   the logbook, a restart does not accept it; `holdfast clock accept` does, and then the sweep
//!   deletes what the new time makes old (held footage with a later review date stays);
//! - -1 year with a 5 s `jump_confirm`: never believed by time alone (shown until accepted),
//!   recording goes on without overlap or squeezed segments, stamped with the trusted time,
//!   retention still expires on time; accepting it over the API keeps the trusted time (it never
//!   goes back) and logs intent and outcome.
//!
//! Needs the Debian package `faketime` (scripts/setup.sh installs it); without it the tests say so
//! and pass without running.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use holdfast::store::Store;
use holdfast::time::{parse_bucket_stem, Time90k, TICKS_PER_SEC};
use support::procs::{http_post, Daemon, RtspServer, PRIVACY_TOKEN};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

const CONFIG: &str = "[sweeper]\ninterval = \"2s\"\n\n\
    [clock]\njump_threshold = \"10m\"\njump_confirm = \"1h\"\n\n\
    [policies.short]\nvideo = \"40s\"\nkeytags = \"40s\"\nhold_review = \"60d\"\n\n\
    [[sites]]\nid = \"test-site\"\npolicy = \"short\"\n\n\
    [[cameras]]\nid = \"cam\"\nsite = \"test-site\"\nurl = \"URL\"\n";

fn faketime_missing() -> bool {
    if Path::new(LIBFAKETIME).exists() {
        return false;
    }
    eprintln!("SKIPPED: {LIBFAKETIME} is missing (apt-get install faketime; scripts/setup.sh)");
    true
}

/// Starts camera and daemon under libfaketime with the offset in a file the test rewrites.
fn start() -> (RtspServer, Daemon, PathBuf) {
    start_with(CONFIG)
}

fn start_with(config: &str) -> (RtspServer, Daemon, PathBuf) {
    let server = RtspServer::start(&["--cameras", "1"]);
    let ts = tempfile::NamedTempFile::new()
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    std::fs::write(&ts, "+0\n").unwrap();
    let d = Daemon::start_env(
        &config.replace("URL", &server.url("/cam0")),
        "bucket = \"10s\"\nsegment_target = \"1s\"",
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", ts.to_str().unwrap()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            // Re-read the offset at most once a second (FAKETIME_NO_CACHE would read the file at
            // every clock call of every thread).
            ("FAKETIME_CACHE_DURATION", "1"),
        ],
    );
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("cam") == "recording"
    });
    (server, d, ts)
}

/// Bucket window starts on disk, oldest first.
fn bucket_files(d: &Daemon) -> Vec<Time90k> {
    let mut v: Vec<Time90k> = std::fs::read_dir(d.data_dir.join("buckets/short"))
        .map(|rd| {
            rd.filter_map(|e| {
                let p = e.ok()?.path();
                parse_bucket_stem(p.file_stem()?.to_str()?)
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn clock(d: &Daemon) -> serde_json::Value {
    let v = d.get_json("/healthz");
    v["clock"].clone()
}

fn secs(s: i64) -> i64 {
    s * TICKS_PER_SEC
}

/// The daemon's logbook actions, in order.
fn logbook_actions(d: &Daemon) -> Vec<String> {
    let v = d.get_json("/api/v1/logbook?limit=1000");
    let entries = v["entries"]
        .as_array()
        .or(v.as_array())
        .cloned()
        .unwrap_or_default();
    entries
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect()
}

fn accept_cli(d: &Daemon) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["clock", "accept", "--config"])
        .arg(d.dir().join("holdfast.toml"))
        .output()
        .unwrap()
}

fn place_hold(d: &Daemon, from: Time90k, to: Time90k, expires: Option<Time90k>) -> u64 {
    let exp = expires.map_or(String::new(), |e| {
        format!(r#","expires_at":"{}""#, e.to_rfc3339())
    });
    let (status, hold) = d.post(
        "/api/v1/holds",
        &format!(
            r#"{{"cameras":["cam"],"from":"{}","to":"{}","reason":"clock test"{exp}}}"#,
            from.to_rfc3339(),
            to.to_rfc3339()
        ),
    );
    assert_eq!(status, 201, "{hold}");
    hold["id"].as_u64().unwrap()
}

fn hold_state(d: &Daemon, id: u64) -> String {
    d.get_json(&format!("/api/v1/holds/{id}"))["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_forward_jump_deletes_nothing_until_it_is_accepted() {
    if faketime_missing() {
        return;
    }
    let (_server, mut d, ts) = start();
    let t0 = Time90k::now();
    // Two holds on the first seconds: one reviewed in 7 days (a +30 day jump would lapse it),
    // one with the policy's default review date (60 days).
    std::thread::sleep(Duration::from_secs(4));
    let day = 86_400 * TICKS_PER_SEC;
    let lapsing = place_hold(
        &d,
        t0.add_ticks(secs(-3)),
        t0.add_ticks(secs(-1)),
        Some(t0.add_ticks(7 * day)),
    );
    let kept = place_hold(&d, t0.add_ticks(secs(1)), t0.add_ticks(secs(3)), None);
    // Some closed buckets first.
    d.wait_until(Duration::from_secs(40), |d| bucket_files(d).len() >= 3);
    assert_eq!(clock(&d)["state"], "synced");
    let before = bucket_files(&d);

    std::fs::write(&ts, "+30d\n").unwrap();
    d.wait_until(Duration::from_secs(15), |d| {
        clock(d)["state"] == "unconfirmed_forward"
    });
    let c = clock(&d);
    let offset = c["offset_seconds"].as_f64().unwrap();
    assert!(
        (offset - 30.0 * 86_400.0).abs() < 60.0,
        "offset {offset} s: {c}"
    );
    assert!(c["confirms_in_seconds"].as_u64().unwrap() > 3500, "{c}");
    assert_eq!(
        d.metric("holdfast_clock_jumps_total{direction=\"forward\"}"),
        1.0
    );
    assert!((d.metric("holdfast_clock_offset_seconds") - offset).abs() < 60.0);
    assert!(d.log_text().contains("clock: the wall clock jumped"));

    // Several sweeps at the jumped wall time (interval 2 s): nothing deleted, no hold lapsed,
    // new footage stamped with the trusted time, no overdue bytes.
    std::thread::sleep(Duration::from_secs(7));
    let during = bucket_files(&d);
    for b in &before {
        assert!(
            during.contains(b),
            "bucket {b} was deleted by the jump alone"
        );
    }
    let limit = Time90k::now().add_ticks(secs(60));
    assert!(
        during.iter().all(|b| *b < limit),
        "a bucket stamped with the jumped time: {during:?}"
    );
    assert_eq!(hold_state(&d, lapsing), "active");
    assert_eq!(
        d.metric("holdfast_retention_overdue_bytes{policy=\"short\"}"),
        0.0
    );
    let c = clock(&d);
    let trusted = Time90k::parse_rfc3339(c["trusted"].as_str().unwrap()).unwrap();
    assert!(
        (trusted.0 - Time90k::now().0).abs() < secs(5),
        "trusted {trusted} follows the monotonic clock"
    );

    // A restart during the jump does not accept it (same boot: the trusted time is carried over
    // exactly from the index).
    d.restart();
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("cam") == "recording"
    });
    assert_eq!(clock(&d)["state"], "unconfirmed_forward");
    std::thread::sleep(Duration::from_secs(5));
    let after_restart = bucket_files(&d);
    for b in &before {
        assert!(
            after_restart.contains(b),
            "bucket {b} deleted after a restart"
        );
    }

    // The API refuses users who may not accept, and needs a reason.
    let (status, _) = http_post(
        d.addr,
        "/api/v1/clock/accept",
        Some(&d.token),
        r#"{"reason":"x"}"#,
    );
    assert_eq!(status, 403, "a manager has no erase permission");
    let (status, body) = http_post(d.addr, "/api/v1/clock/accept", Some(PRIVACY_TOKEN), "{}");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("reason"), "{body}");

    // The operator accepts with the CLI.
    let out = accept_cli(&d);
    assert!(
        out.status.success(),
        "clock accept: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted"));
    assert_eq!(clock(&d)["state"], "synced");
    // Nothing left to accept: the CLI fails, the API answers 409.
    assert!(!accept_cli(&d).status.success());
    let (status, _) = http_post(
        d.addr,
        "/api/v1/clock/accept",
        Some(PRIVACY_TOKEN),
        r#"{"reason":"again"}"#,
    );
    assert_eq!(status, 409);

    // Now the sweep proceeds: every old bucket goes except those the 60-day hold pins.
    let pinned =
        |b: &Time90k| b.add_ticks(secs(10)) > t0.add_ticks(secs(1)) && *b < t0.add_ticks(secs(3));
    d.wait_until(Duration::from_secs(20), |d| {
        let now = bucket_files(d);
        before.iter().all(|b| pinned(b) == now.contains(b))
    });
    assert_eq!(hold_state(&d, lapsing), "lapsed");
    assert_eq!(hold_state(&d, kept), "active");
    let v = d.get_json(&format!(
        "/api/v1/cameras/cam/recordings?from={}&to={}",
        t0.add_ticks(secs(1)).to_rfc3339(),
        t0.add_ticks(secs(3)).to_rfc3339()
    ));
    assert!(
        !v["intervals"].as_array().unwrap().is_empty(),
        "held footage must stay: {v}"
    );
    let actions = logbook_actions(&d);
    assert!(actions.iter().any(|a| a == "clock.jump"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "clock.accept"), "{actions:?}");
    let _ = std::fs::remove_file(&ts);
}

/// Review finding 1: a backward jump (a dead RTC battery: a year back) is never believed by
/// time alone, however short `jump_confirm`: retention goes on by the trusted time, footage
/// stays ordered with real durations, and the jump is shown until it is accepted; accepting it
/// does not move the trusted time back (high-water mark) and is logged as intent and outcome.
#[test]
fn a_backward_jump_is_shown_until_accepted_and_neither_overlaps_nor_stops_expiry() {
    if faketime_missing() {
        return;
    }
    let (_server, mut d, ts) =
        start_with(&CONFIG.replace("jump_confirm = \"1h\"", "jump_confirm = \"5s\""));
    d.wait_until(Duration::from_secs(30), |d| bucket_files(d).len() >= 2);
    let first = bucket_files(&d)[0];
    std::fs::write(&ts, "-365d\n").unwrap();
    d.wait_until(Duration::from_secs(15), |d| {
        clock(d)["state"] == "unconfirmed_backward"
    });
    assert_eq!(
        d.metric("holdfast_clock_jumps_total{direction=\"backward\"}"),
        1.0
    );
    assert!(d.metric("holdfast_clock_offset_seconds") < -364.0 * 86_400.0);
    let c = clock(&d);
    assert_eq!(c["needs_accept"], true, "{c}");
    assert!(c.get("confirms_in_seconds").is_none(), "{c}");
    // Retention by the trusted time: the first bucket goes about 40 s after its start plus a
    // window, although the wall clock says it is a year in the future.
    d.wait_until(Duration::from_secs(70), |d| {
        !bucket_files(d).contains(&first)
    });
    // Far more than jump_confirm (5 s) has passed: still not believed.
    assert_eq!(clock(&d)["state"], "unconfirmed_backward");
    assert_eq!(d.camera_state("cam"), "recording");
    let newest = *bucket_files(&d).last().unwrap();
    assert!(
        (newest.0 - Time90k::now().0).abs() < secs(30),
        "new footage keeps the trusted time, not the wall clock: {newest}"
    );

    // Accepted over the API: shown as synced, but the trusted time does not go back.
    let (status, body) = http_post(
        d.addr,
        "/api/v1/clock/accept",
        Some(PRIVACY_TOKEN),
        r#"{"reason":"the RTC battery is dead; NTP is unreachable"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let c = clock(&d);
    assert_eq!(c["state"], "synced", "{c}");
    let trusted = Time90k::parse_rfc3339(c["trusted"].as_str().unwrap()).unwrap();
    assert!(
        (trusted.0 - Time90k::now().0).abs() < secs(5),
        "the trusted time stays at the high-water mark: {c}"
    );
    assert!(
        c["offset_seconds"].as_f64().unwrap() < -364.0 * 86_400.0,
        "{c}"
    );
    let v = d.get_json("/api/v1/logbook?limit=1000");
    let entries = v["entries"].as_array().or(v.as_array()).cloned().unwrap();
    let outcome = entries
        .iter()
        .find(|e| e["action"] == "clock.accept.outcome")
        .unwrap_or_else(|| panic!("no outcome entry: {v}"));
    assert!(
        outcome["text"].as_str().unwrap().starts_with("accepted"),
        "{outcome}"
    );
    assert!(entries.iter().any(|e| e["action"] == "clock.accept"));
    // Expiry goes on after the accept: the oldest bucket on disk goes within a window or two.
    let oldest = bucket_files(&d)[0];
    d.wait_until(Duration::from_secs(30), |d| {
        !bucket_files(d).contains(&oldest)
    });
    let newest = *bucket_files(&d).last().unwrap();
    assert!(
        (newest.0 - Time90k::now().0).abs() < secs(30),
        "after the accept, footage still carries the trusted time: {newest}"
    );
    d.stop();
    // No overlap, times strictly increasing and no squeezed segments, across jump and accept.
    let (store, _) = Store::open(&d.data_dir, 10).unwrap();
    let mut segs = store.index().all_segments().unwrap();
    segs.sort_by_key(|s| s.start);
    assert!(segs.len() > 20, "{} segments", segs.len());
    for w in segs.windows(2) {
        assert!(
            w[1].start >= w[0].end(),
            "overlap: {} .. {} then {}",
            w[0].start,
            w[0].end(),
            w[1].start
        );
        assert!(
            w[0].end().0 - w[0].start.0 > TICKS_PER_SEC / 2,
            "a segment squeezed to {} ticks",
            w[0].end().0 - w[0].start.0
        );
    }
    let _ = std::fs::remove_file(&ts);
}

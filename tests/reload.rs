//! Graceful stop and live reload, with the real daemon binary and `holdfast camsim`.
//!
//! - SIGTERM: exit 0 within the stop budget, every camera's session torn down (camsim saw the
//!   TEARDOWN), and the next start has nothing to recover, with the footage up to the stop there.
//! - SIGHUP: three accepted reloads (a camera and a user added; a camera removed, another
//!   restarted, a user revoked; a role changed) and two refused ones (a typo, a key that needs a
//!   restart), while camera `a` records on in one session without a gap.
//! - A reload that grows the site from 1 to 501 cameras: applied, the writer queue's "auto"
//!   budget follows, and the writer's staging arena grows from 4 to 5 write rounds (and shrinks
//!   back to 4 with the site).

#![allow(dead_code)]

mod support;

use std::time::{Duration, SystemTime};

use support::procs::{camsim_events, http_get, metric_value, user, Camsim, Daemon, PRIVACY_TOKEN};

/// Seconds since the epoch of an RFC 3339 time.
fn secs(t: &str) -> f64 {
    humantime::parse_rfc3339(t)
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn rfc3339(t: f64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t))
        .to_string()
}

/// The recorded intervals of a camera since `from` (seconds), as (from, to) seconds.
fn intervals(d: &Daemon, camera: &str, from: f64) -> Vec<(f64, f64)> {
    let v = d.get_json(&format!(
        "/api/v1/cameras/{camera}/recordings?from={}&to={}",
        rfc3339(from),
        rfc3339(now_secs() + 60.0)
    ));
    v["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                secs(i["from"].as_str().unwrap()),
                secs(i["to"].as_str().unwrap()),
            )
        })
        .collect()
}

const STORAGE: &str = "segment_target = \"1s\"\nsync_interval = \"200ms\"";

#[test]
fn sigterm_tears_down_writes_everything_and_leaves_nothing_to_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let sim_log = tmp.path().join("camsim.log");
    let sim = Camsim::start_logged(2, &sim_log);
    let rest = format!(
        "[policies.standard]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n[[sites]]\nid = \"north\"\npolicy = \"standard\"\n\n\
         [[cameras]]\nid = \"a\"\nsite = \"north\"\nurl = \"{}\"\n\n\
         [[cameras]]\nid = \"b\"\nsite = \"north\"\nurl = \"{}\"\n",
        sim.url(0),
        sim.url(1)
    );
    let t_start = now_secs();
    let mut d = Daemon::start(&rest, STORAGE);
    d.wait_until(Duration::from_secs(30), |d| {
        ["a", "b"]
            .iter()
            .all(|c| intervals(d, c, t_start).iter().any(|i| i.1 - i.0 > 3.0))
    });
    let t_stop = now_secs();
    let (status, took) = d.terminate_within(Duration::from_secs(60));
    println!("SIGTERM to exit: {took:?}");
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(45), "the stop took {took:?}");
    let log = d.log_text();
    assert!(
        log.contains("stopped; everything received is durable"),
        "{log}"
    );
    // camsim saw each session end with a TEARDOWN (not only a closed connection).
    for i in 0..2 {
        assert_eq!(camsim_events(&sim_log, "camsim: playing", i), 1);
        assert_eq!(camsim_events(&sim_log, "camsim: TEARDOWN", i), 1, "cam{i}");
    }
    // No camera on the next start: whatever is recorded is from before the stop.
    drop(sim);
    let before = log.len();
    d.spawn_again();
    d.wait_until(Duration::from_secs(30), |d| {
        d.get("/healthz", None).0 == 200
    });
    let log = d.log_text();
    let line = log[before..]
        .lines()
        .find(|l| l.contains("recovery: "))
        .expect("a recovery report")
        .to_owned();
    println!("{line}");
    for field in [
        " 0 bytes scanned,",
        " 0 segments re-indexed,",
        " 0 bytes truncated,",
        " 0 bytes skipped,",
        " 0 dangling entries dropped,",
        " 0 empty files removed,",
        " 0 interrupted deletions finished",
        " 0 duplicate keys not indexed,",
        " 0 unsynced records cut off,",
        " 0 bucket files missing,",
        " 0 unreadable",
    ] {
        assert!(line.contains(field), "{field:?} not in: {line}");
    }
    // The footage up to the stop is there: one run per camera, ending within a second of it.
    for cam in ["a", "b"] {
        let iv = intervals(&d, cam, t_start);
        assert_eq!(iv.len(), 1, "{cam}: {iv:?}");
        let end = iv[0].1;
        println!(
            "{cam}: last segment ends {:.3} s after the SIGTERM",
            end - t_stop
        );
        assert!(
            end > t_stop - 1.0 && end < t_stop + 1.0,
            "{cam}: footage ends at {end}, the stop was at {t_stop}"
        );
    }
    d.stop();
}

/// The `config.reload` entries of the logbook (as the privacy officer, who may read it), oldest
/// first: (result, object).
fn reload_entries(d: &Daemon) -> Vec<serde_json::Value> {
    let (status, body) = http_get(d.addr, "/api/v1/logbook?limit=1000", Some(PRIVACY_TOKEN));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut out = Vec::new();
    find_reloads(&v, &mut out);
    out
}

fn find_reloads(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("action").and_then(|a| a.as_str()) == Some("config.reload") {
                out.push(v.clone());
                return;
            }
            for x in m.values() {
                find_reloads(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_reloads(x, out)),
        _ => {}
    }
}

fn reloads(d: &Daemon, result: &str) -> f64 {
    let (_, text) = d.get("/metrics", None);
    metric_value(
        &text,
        &format!("holdfast_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(-1.0)
}

fn frames(d: &Daemon, cam: &str) -> f64 {
    d.metric(&format!("holdfast_camera_frames_total{{camera=\"{cam}\"}}"))
}

/// Rewrites the config with `rest` in place of `old_rest`, sends SIGHUP, waits for the counter of
/// `result` to reach `n`.
fn reload(d: &Daemon, old_rest: &str, rest: &str, result: &str, n: f64) {
    let path = d.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(old_rest));
    std::fs::write(&path, text.replacen(old_rest, rest, 1)).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_until(Duration::from_secs(30), |d| reloads(d, result) >= n);
}

const ERIN: &str = "erin-token-0123456789abcdef0123456789";
const TOM: &str = "tom-token-0123456789abcdef0123456789ab";

fn config_rest(sim: &Camsim, cams: &[(&str, &str, usize)], extra: &str) -> String {
    let mut s = String::from(
        "[policies.standard]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n[policies.long]\nvideo = \"7d\"\nkeytags = \"7d\"\n\n\
         [[sites]]\nid = \"north\"\npolicy = \"standard\"\n\n\
         [[sites]]\nid = \"south\"\npolicy = \"SOUTH_POLICY\"\n\n",
    );
    for (id, site, i) in cams {
        s += &format!(
            "[[cameras]]\nid = \"{id}\"\nsite = \"{site}\"\nurl = \"{}\"\n\n",
            sim.url(*i)
        );
    }
    s + extra
}

fn wait_recording(d: &Daemon, cams: &[&str]) {
    d.wait_until(Duration::from_secs(30), |d| {
        cams.iter().all(|c| {
            frames(d, c) > 0.0
                && d.get_json("/api/v1/cameras")
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["id"] == *c && x["state"] == "recording")
        })
    });
}

fn camera_ids(d: &Daemon) -> Vec<String> {
    d.get_json("/api/v1/cameras")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Frames of `a` after a reload: the counter only moved on (the same task counted), and `a`'s
/// durable footage reaches 2 s past the reload (segments across the reload are written), so the
/// gap check at the end covers every reload.
fn a_moves_on(d: &Daemon, before: f64, t_start: f64) -> f64 {
    let t = now_secs();
    let mut now = 0.0;
    d.wait_until(Duration::from_secs(15), |d| {
        now = frames(d, "a");
        now > before
            && intervals(d, "a", t_start)
                .last()
                .is_some_and(|i| i.1 > t + 2.0)
    });
    now
}

#[test]
fn sighup_reloads_cameras_users_and_roles_while_untouched_cameras_record_on() {
    let tmp = tempfile::tempdir().unwrap();
    let sim_log = tmp.path().join("camsim.log");
    let sim = Camsim::start_logged(4, &sim_log);
    let tom = user("tom", "technician", TOM, "[\"*\"]");
    // A, C at north; B at south. Tom (technician) may not read the logbook.
    let rest0 = config_rest(
        &sim,
        &[("a", "north", 0), ("b", "south", 1), ("c", "north", 2)],
        &tom,
    )
    .replace("SOUTH_POLICY", "standard");
    let t_start = now_secs();
    let d = Daemon::start(&rest0, STORAGE);
    wait_recording(&d, &["a", "b", "c"]);
    assert_eq!(reloads(&d, "ok"), 0.0);
    assert_eq!(reloads(&d, "refused"), 0.0);
    assert_eq!(
        d.metric("holdfast_config_last_reload_success_timestamp_seconds"),
        0.0
    );
    assert_eq!(http_get(d.addr, "/api/v1/cameras", Some(ERIN)).0, 401);
    assert_eq!(http_get(d.addr, "/api/v1/logbook", Some(TOM)).0, 403);
    let mut a_frames = frames(&d, "a");
    // a's footage starts before the first reload.
    d.wait_until(Duration::from_secs(15), |d| {
        !intervals(d, "a", t_start).is_empty()
    });
    let t_first = now_secs();

    // (1) Add camera d and user erin.
    let erin = user("erin", "manager", ERIN, "[\"*\"]");
    let rest1 = config_rest(
        &sim,
        &[
            ("a", "north", 0),
            ("b", "south", 1),
            ("c", "north", 2),
            ("d", "north", 3),
        ],
        &format!("{tom}{erin}"),
    )
    .replace("SOUTH_POLICY", "standard");
    reload(&d, &rest0, &rest1, "ok", 1.0);
    assert!(d.metric("holdfast_config_last_reload_success_timestamp_seconds") > t_start);
    wait_recording(&d, &["d"]);
    assert_eq!(http_get(d.addr, "/api/v1/cameras", Some(ERIN)).0, 200);
    assert_eq!(camera_ids(&d), ["a", "b", "c", "d"]);
    a_frames = a_moves_on(&d, a_frames, t_start);

    // (2) Remove c, move south (camera b) to another policy, revoke erin.
    let rest2 = config_rest(
        &sim,
        &[("a", "north", 0), ("b", "south", 1), ("d", "north", 3)],
        &tom,
    )
    .replace("SOUTH_POLICY", "long");
    reload(&d, &rest1, &rest2, "ok", 2.0);
    assert_eq!(http_get(d.addr, "/api/v1/cameras", Some(ERIN)).0, 401);
    assert_eq!(camera_ids(&d), ["a", "b", "d"]);
    // A removed camera is not left "down" in the metrics (it would alert until the next start).
    let (_, text) = d.get("/metrics", None);
    assert!(!text.contains("holdfast_camera_up{camera=\"c\"}"), "{text}");
    assert!(
        text.contains("holdfast_camera_up{camera=\"a\"} 1"),
        "{text}"
    );
    // The removed camera's footage is kept (nothing is deleted by a reload), but the API answers
    // for configured cameras only.
    assert_eq!(
        d.get(
            &format!(
                "/api/v1/cameras/c/recordings?from={}&to={}",
                rfc3339(t_start),
                rfc3339(now_secs())
            ),
            Some(&d.token)
        )
        .0,
        404
    );
    d.wait_until(Duration::from_secs(15), |_| {
        camsim_events(&sim_log, "camsim: playing", 1) == 2
    });
    wait_recording(&d, &["b"]);
    a_frames = a_moves_on(&d, a_frames, t_start);

    // (3) The technician role may read the logbook now.
    let roles = "\n[roles.technician]\npermissions = [\"cameras_status\", \"view:technical\", \"logbook_read\"]\n";
    let rest3 = format!("{rest2}{roles}");
    reload(&d, &rest2, &rest3, "ok", 3.0);
    assert_eq!(http_get(d.addr, "/api/v1/logbook", Some(TOM)).0, 200);
    a_frames = a_moves_on(&d, a_frames, t_start);

    // (4) A typo: refused, the key named in the log, the running config kept.
    let rest4 = rest3.replacen("url = ", "urll = ", 1);
    reload(&d, &rest3, &rest4, "refused", 1.0);
    // (5) A key that needs a restart: refused, named, "needs a restart".
    let path = d.config_path();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen(&rest4, &rest3, 1);
    let listen = format!("listen = \"{}\"", d.addr);
    assert!(text.contains(&listen));
    std::fs::write(&path, text.replacen(&listen, "listen = \"127.0.0.1:1\"", 1)).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_until(Duration::from_secs(30), |d| reloads(d, "refused") >= 2.0);
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("config reload refused: cameras[0].urll")
                || l.contains("config reload refused: cameras[0]")),
        "no refusal naming the key:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("config reload refused: http.listen")
                && l.contains("needs a restart")),
        "no refusal naming http.listen:\n{log}"
    );
    assert_eq!(reloads(&d, "ok"), 3.0);
    assert_eq!(camera_ids(&d), ["a", "b", "d"]);
    assert_eq!(http_get(d.addr, "/api/v1/logbook", Some(TOM)).0, 200);
    assert_eq!(http_get(d.addr, "/api/v1/cameras", Some(ERIN)).0, 401);
    a_moves_on(&d, a_frames, t_start);

    // Camera a: one RTSP session from start to end, never torn down, never reconnected.
    assert_eq!(camsim_events(&sim_log, "camsim: playing", 0), 1);
    assert_eq!(camsim_events(&sim_log, "camsim: TEARDOWN", 0), 0);
    assert_eq!(
        d.metric("holdfast_camera_reconnects_total{camera=\"a\"}"),
        0.0
    );
    // ... and its footage is one contiguous run (segments written after the last reload too).
    let t_check = now_secs();
    d.wait_until(Duration::from_secs(15), |d| {
        intervals(d, "a", t_start)
            .last()
            .is_some_and(|i| i.1 > t_check)
    });
    let iv = intervals(&d, "a", t_start);
    assert_eq!(iv.len(), 1, "a has gaps: {iv:?}");
    assert!(
        iv[0].0 < t_first && iv[0].1 > t_check,
        "a's run {iv:?} does not span the reloads ({t_first} .. {t_check})"
    );
    // b restarted once (TEARDOWN, new session), c was torn down, d started once.
    assert_eq!(camsim_events(&sim_log, "camsim: TEARDOWN", 1), 1);
    assert_eq!(camsim_events(&sim_log, "camsim: TEARDOWN", 2), 1);
    assert_eq!(camsim_events(&sim_log, "camsim: playing", 3), 1);

    // One logbook entry per reload, with what changed by name (no token hash).
    for l in d
        .log_text()
        .lines()
        .filter(|l| l.contains("config reload") || l.contains("SIGHUP"))
    {
        println!("{l}");
    }
    println!("a: {iv:?}");
    let entries = reload_entries(&d);
    for e in &entries {
        println!("{}", e["object"]);
    }
    assert_eq!(entries.len(), 5, "{entries:#?}");
    let text = serde_json::to_string(&entries).unwrap();
    use sha2::Digest;
    assert!(!text.contains(&hex::encode(sha2::Sha256::digest(ERIN.as_bytes()))));
    let obj = |i: usize| entries[i]["object"].clone();
    assert_eq!(obj(0)["result"], "ok");
    assert_eq!(obj(0)["cameras"]["added"], serde_json::json!(["d"]));
    assert_eq!(obj(0)["users"]["added"], serde_json::json!(["erin"]));
    assert_eq!(obj(1)["cameras"]["removed"], serde_json::json!(["c"]));
    assert_eq!(obj(1)["cameras"]["changed"], serde_json::json!(["b"]));
    assert_eq!(obj(1)["users"]["removed"], serde_json::json!(["erin"]));
    assert_eq!(obj(1)["sites"]["changed"], serde_json::json!(["south"]));
    assert_eq!(obj(2)["roles"]["added"], serde_json::json!(["technician"]));
    assert_eq!(obj(2)["cameras"]["changed"], serde_json::json!([]));
    assert_eq!(obj(3)["result"], "refused");
    assert_eq!(obj(4)["result"], "refused");
    assert_eq!(obj(4)["errors"], serde_json::json!(["http.listen"]));
}

/// A reload that grows the site from 1 camera to 501 is applied: every camera is there, the
/// writer queue's "auto" budget follows the site (4 MiB a camera; before, that change of a key
/// nobody had written refused the reload as "needs a restart"), and the writer's staging arena
/// grows to the 5 write rounds a start with 501 cameras gives (before, only a restart grew it);
/// a reload back to one camera shrinks it to the 4 of a small site again.
#[test]
fn a_reload_that_grows_or_shrinks_the_site_resizes_the_staging_arena() {
    let camera = |i: usize| {
        format!(
            "\n[[cameras]]\nid = \"cam-{i}\"\nsite = \"s\"\nurl = \"rtsp://127.0.0.1:9/c{i}\"\n"
        )
    };
    let one = format!(
        "[policies.p]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n[[sites]]\nid = \"s\"\npolicy = \
         \"p\"\n{}",
        camera(0)
    );
    let mut d = Daemon::start(&one, "");
    let resized = |d: &Daemon, slots: usize| {
        support::procs::strip_ansi(&d.log_text())
            .matches(&format!(
                "writer staging arena resized: {slots} write rounds of 16 MiB can be in flight"
            ))
            .count()
    };
    let grown: String = (1..501).map(camera).collect();
    reload(&d, &camera(0), &(camera(0) + &grown), "ok", 1.0);
    assert_eq!(reloads(&d, "ok"), 1.0);
    assert_eq!(camera_ids(&d).len(), 501);
    let settings = |d: &Daemon| reload_entries(d).last().unwrap()["object"]["settings"].clone();
    assert_eq!(settings(&d), serde_json::json!(["storage.writer_queue"]));
    let log = support::procs::strip_ansi(&d.log_text());
    assert!(
        log.contains("writer queue budget (storage.writer_queue) changed")
            && log.contains(&format!("now={}", 501u64 * (4 << 20))),
        "the writer queue budget did not follow the site"
    );
    d.wait_until(Duration::from_secs(10), |d| resized(d, 5) == 1);
    let log = support::procs::strip_ansi(&d.log_text());
    assert!(log.contains("was=4 slots=5 slot_mib=16 registered="));
    // As root the memory lock limit does not bind: the arenas are registered (as another user
    // the 64 MiB one at start is over the default limit of 8 MiB).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            log.contains("was=4 slots=5 slot_mib=16 registered=true"),
            "the grown arena is not registered with io_uring"
        );
        assert!(
            !log.contains("could not unregister the writer's staging arena")
                && !log.contains("io_uring_register_buffers refused"),
            "the arena's registration failed (see the daemon's log)"
        );
    }
    // A reload that keeps the site at 5 slots leaves the arena alone.
    reload(&d, &camera(500), &(camera(500) + &camera(501)), "ok", 2.0);
    assert_eq!(camera_ids(&d).len(), 502);
    assert_eq!(settings(&d), serde_json::json!(["storage.writer_queue"]));
    // Back to one camera: the arena shrinks to the default 4 slots.
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    let back = text.replacen(&(camera(0) + &grown + &camera(501)), &camera(0), 1);
    assert_ne!(back, text);
    std::fs::write(d.config_path(), back).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_until(Duration::from_secs(30), |d| reloads(d, "ok") >= 3.0);
    assert_eq!(camera_ids(&d).len(), 1);
    d.wait_until(Duration::from_secs(10), |d| resized(d, 4) == 1);
    assert_eq!(
        resized(&d, 5),
        1,
        "the second reload resized the arena again"
    );
    // The 502 camera tasks (backing off from a closed port) stopped in time, and the last one
    // stops with the daemon.
    let (status, took) = d.terminate_within(Duration::from_secs(30));
    assert!(status.success(), "{status:?} after {took:?}");
}

//! End-to-end ingest tests against a real RTSP server (GStreamer's) and the real daemon binary:
//! RTSP in, durable segments out, checked through the API, the metrics and the store itself.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use holdfast::store::index::SegmentEntry;
use holdfast::store::Store;
use support::procs::{Daemon, RtspServer};

const POLICY: &str = "[policies.short]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n[[sites]]\nid = \"test-site\"\npolicy = \"short\"\n";

fn camera(id: &str, url: &str, extra: &str) -> String {
    format!("\n[[cameras]]\nid = \"{id}\"\nsite = \"test-site\"\nurl = \"{url}\"\n{extra}\n")
}

/// Opens the store of a stopped daemon and returns a camera's segments.
fn stored(d: &Daemon, camera: &str) -> Vec<SegmentEntry> {
    let (store, _) = Store::open(&d.data_dir, 3600).unwrap();
    assert!(store.verify().unwrap().bad.is_empty());
    store
        .index()
        .all_segments()
        .unwrap()
        .into_iter()
        .filter(|e| e.camera == camera)
        .collect()
}

/// Runs `promtool check metrics` on an exposition and fails the test on any complaint.
fn assert_promtool_accepts(exposition: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by scripts/setup.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn frames_metric(d: &Daemon, cam: &str) -> f64 {
    d.metric(&format!("holdfast_camera_frames_total{{camera=\"{cam}\"}}"))
}

#[test]
fn three_cameras_record_every_frame_sent() {
    let mut server = RtspServer::start(&["--cameras", "3"]);
    let cams: String = (0..3)
        .map(|i| camera(&format!("cam-{i}"), &server.url(&format!("/cam{i}")), ""))
        .collect();
    let mut d = Daemon::start(&format!("{POLICY}{cams}"), "segment_target = \"1s\"");
    d.wait_until(Duration::from_secs(20), |d| {
        (0..3).all(|i| d.camera_state(&format!("cam-{i}")) == "recording")
    });
    std::thread::sleep(Duration::from_secs(10));
    let (status, exposition) = d.get("/metrics", None);
    assert_eq!(status, 200);
    assert_promtool_accepts(&exposition);
    // Stop the cameras first, then let the daemon drain, so both counts are final.
    server.stop();
    std::thread::sleep(Duration::from_millis(500));
    let received: Vec<f64> = (0..3)
        .map(|i| frames_metric(&d, &format!("cam-{i}")))
        .collect();
    let dropped: Vec<f64> = (0..3)
        .map(|i| {
            d.metric(&format!(
                "holdfast_camera_frames_dropped_total{{camera=\"cam-{i}\"}}"
            ))
        })
        .collect();
    d.stop();
    for i in 0..3 {
        let sent = server.frames_sent(&format!("/cam{i}")) as f64;
        let got = received[i];
        assert!(sent >= 240.0, "cam{i}: only {sent} frames sent in 10 s");
        let diff = (sent - got).abs() / sent;
        assert!(
            diff <= 0.02,
            "cam{i}: sent {sent}, received {got} ({:.1}% apart)",
            diff * 100.0
        );
        let segs = stored(&d, &format!("cam-{i}"));
        let frames: u64 = segs.iter().map(|e| u64::from(e.frame_count)).sum();
        assert_eq!(
            frames as f64,
            got - dropped[i],
            "cam{i}: every received frame after the first keyframe is stored"
        );
        eprintln!(
            "cam{i}: sent {sent}, received {got}, stored {frames} in {} segments",
            segs.len()
        );
    }
}

#[test]
fn digest_auth_works_and_passwords_never_leak() {
    let server = RtspServer::start(&["--cameras", "2", "--digest", "viewer:s3cret-Pa55word"]);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret-Pa55word\n").unwrap();
    let cams = camera(
        "good-pw",
        &server.url("/cam0"),
        &format!(
            "username = \"viewer\"\npassword_file = {:?}",
            pw.display().to_string()
        ),
    ) + &camera(
        "bad-pw",
        &server.url("/cam1"),
        "username = \"viewer\"\npassword_env = \"HOLDFAST_TEST_BAD_PW\"",
    ) + &camera("no-pw", &server.url("/cam1"), "");
    let mut d = Daemon::start_env(
        &format!("{POLICY}{cams}"),
        "",
        &[("HOLDFAST_TEST_BAD_PW", "wr0ng-Guess-77")],
    );
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("good-pw") == "recording"
    });
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("bad-pw") == "down" && d.camera_state("no-pw") == "down"
    });
    std::thread::sleep(Duration::from_secs(3));
    let cams_json = d.get("/api/v1/cameras", Some(&d.token)).1;
    let metrics = d.get("/metrics", None).1;
    d.stop();
    let log = d.log_text();
    assert!(log.contains("bad-pw"), "the failing camera is logged by id");
    // Neither the passwords nor the camera URLs (retina's error texts name them) get out.
    let host_path = format!("127.0.0.1:{}/cam", server.port);
    for secret in ["s3cret-Pa55word", "wr0ng-Guess-77", "rtsp://", &host_path] {
        for (what, text) in [("log", &log), ("API", &cams_json), ("metrics", &metrics)] {
            assert!(
                !text.contains(secret),
                "{secret:?} reached the {what}:\n{text}"
            );
        }
    }
    assert!(
        cams_json.contains("Unauthorized") || cams_json.contains("401"),
        "last_error still says what went wrong: {cams_json}"
    );
    assert!(!stored(&d, "good-pw").is_empty());
    assert!(stored(&d, "bad-pw").is_empty());
}

#[test]
fn a_restarted_server_is_reconnected_within_two_seconds_and_the_gap_shows() {
    let mut server = RtspServer::start(&["--cameras", "1"]);
    let d = Daemon::start(
        &format!("{POLICY}{}", camera("cam", &server.url("/cam0"), "")),
        "",
    );
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("cam") == "recording"
    });
    std::thread::sleep(Duration::from_secs(4));
    server.stop();
    let down_after = d.wait_until(Duration::from_secs(10), |d| {
        d.camera_state("cam") != "recording"
    });
    eprintln!("camera seen down {down_after:?} after the server stopped");
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    let back_at = std::time::Instant::now();
    d.wait_until(Duration::from_secs(10), |d| {
        d.camera_state("cam") == "recording"
    });
    let reconnect = back_at.elapsed();
    eprintln!("recording again {reconnect:?} after the server was back");
    assert!(
        reconnect <= Duration::from_secs(2),
        "reconnected only after {reconnect:?}"
    );
    assert!(d.metric("holdfast_camera_reconnects_total{camera=\"cam\"}") >= 1.0);
    std::thread::sleep(Duration::from_secs(4));
    let from = holdfast::time::Time90k::now()
        .add_ticks(-60 * 90_000)
        .to_rfc3339();
    let to = holdfast::time::Time90k::now().to_rfc3339();
    let rec = d.get_json(&format!(
        "/api/v1/cameras/cam/recordings?from={from}&to={to}"
    ));
    let intervals = rec["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 2, "recording resumed after a gap: {rec}");
    let gap_secs: Vec<f64> = rec["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let a = holdfast::time::Time90k::parse_rfc3339(g["from"].as_str().unwrap()).unwrap();
            let b = holdfast::time::Time90k::parse_rfc3339(g["to"].as_str().unwrap()).unwrap();
            (b.0 - a.0) as f64 / 90_000.0
        })
        .collect();
    assert!(
        gap_secs.iter().any(|g| *g >= 2.0),
        "the outage is a visible gap: {rec}"
    );
}

#[test]
fn audio_offered_is_never_set_up_or_stored() {
    let server = RtspServer::start(&["--cameras", "1", "--audio"]);
    let mut d = Daemon::start(
        &format!("{POLICY}{}", camera("cam", &server.url("/cam0"), "")),
        "",
    );
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("cam") == "recording"
    });
    std::thread::sleep(Duration::from_secs(4));
    d.stop();
    let log = d.log_text();
    assert!(
        !log.contains("audio"),
        "audio must not even be considered for setup:\n{log}"
    );
    let segs = stored(&d, "cam");
    assert!(!segs.is_empty());
    let (store, _) = Store::open(&d.data_dir, 3600).unwrap();
    for e in &segs {
        let (h, payload) = store.read_segment(e).unwrap();
        // avcC version 1: the stored codec is H.264, and every sample is a run of
        // length-prefixed H.264 NAL units (PCMU audio would not parse as that).
        assert_eq!(h.codec_config[0], 1);
        let mut off = 0usize;
        for f in &h.frames {
            let sample = &payload[off..off + f.size as usize];
            let mut p = 0;
            while p < sample.len() {
                let n = u32::from_be_bytes(sample[p..p + 4].try_into().unwrap()) as usize;
                let nal_type = sample[p + 4] & 0x1f;
                assert!(
                    matches!(nal_type, 1 | 5 | 6 | 7 | 8 | 9),
                    "NAL type {nal_type}"
                );
                p += 4 + n;
            }
            assert_eq!(p, sample.len());
            off += f.size as usize;
        }
    }
    // The server saw SETUP requests for the video stream only.
    std::thread::sleep(Duration::from_millis(300));
    let setups = server.setups();
    assert!(!setups.is_empty());
    assert!(
        setups.iter().all(|u| u.ends_with("stream=0")),
        "only the video stream (stream=0) is set up, never the audio (stream=1): {setups:?}"
    );
}

#[test]
fn a_resolution_change_starts_a_segment_with_a_new_codec_config() {
    let server = RtspServer::start(&["--cameras", "1", "--resize-after", "3"]);
    let mut d = Daemon::start(
        &format!("{POLICY}{}", camera("cam", &server.url("/cam0"), "")),
        "",
    );
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("cam") == "recording"
    });
    std::thread::sleep(Duration::from_secs(8));
    d.stop();
    let mut segs = stored(&d, "cam");
    segs.sort_by_key(|e| e.start);
    let ids: Vec<u64> = segs.iter().map(|e| e.codec_id).collect();
    let distinct: BTreeSet<_> = ids.iter().collect();
    assert!(
        distinct.len() >= 2,
        "a new codec config after the change: {ids:x?}"
    );
    // The configs do not interleave: one change, at a segment boundary.
    let changes = ids.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(changes, distinct.len() - 1);
    let (store, _) = Store::open(&d.data_dir, 3600).unwrap();
    for e in &segs {
        let (h, _) = store.read_segment(e).unwrap();
        assert!(h.frames[0].key, "every segment starts at a keyframe");
    }
}

#[test]
fn a_camera_with_constant_timestamps_is_survived_and_counted() {
    let clip = support::procs::repo_path("data/clip-720p25-4mbit.h264");
    let server = RtspServer::start(&["--cameras", "0", "--broken-clip", clip.to_str().unwrap()]);
    let mut d = Daemon::start(
        &format!("{POLICY}{}", camera("broken", &server.url("/broken"), "")),
        "",
    );
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("broken") == "recording"
    });
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(6) {
        assert_eq!(d.get("/healthz", None).0, 200, "the daemon stays healthy");
        std::thread::sleep(Duration::from_millis(500));
    }
    let anomalies = d.metric("holdfast_camera_timestamp_anomalies_total{camera=\"broken\"}");
    let frames = frames_metric(&d, "broken");
    d.stop();
    assert!(frames > 50.0, "frames keep flowing: {frames}");
    assert!(
        anomalies >= frames * 0.9,
        "constant timestamps are counted: {anomalies} of {frames}"
    );
    let mut segs = stored(&d, "broken");
    segs.sort_by_key(|e| e.start);
    assert!(segs.len() >= 2);
    for w in segs.windows(2) {
        assert!(w[0].end() <= w[1].start, "segments never overlap");
    }
}

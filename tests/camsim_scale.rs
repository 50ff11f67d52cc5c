//! The short form of `benches/scale.rs`, run with the normal tests: `holdfast camsim` with 50
//! streams recorded by the real daemon for 10 s. camsim is stopped first (its `camsim-stats`
//! line is then final) and the daemon left to drain, so "sent" and "received" are counted over
//! the same frames: not one frame may be lost and not one segment dropped. No timing is asserted.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::procs::{free_port, metric_value, Daemon};

const STREAMS: usize = 50;

fn sum_series(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn fifty_camsim_streams_are_recorded_without_a_frame_lost_or_a_segment_dropped() {
    let port = free_port();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["camsim", "--streams", &STREAMS.to_string(), "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(sim.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("camsim:"), "{line}");

    let mut rest = String::from(
        "[policies.p]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n[[sites]]\nid = \"s\"\npolicy = \"p\"\n",
    );
    for i in 0..STREAMS {
        rest.push_str(&format!(
            "\n[[cameras]]\nid = \"cam-{i}\"\nsite = \"s\"\nurl = \"rtsp://127.0.0.1:{port}/cam{i}\"\n"
        ));
    }
    let mut d = Daemon::start_env(&rest, "", &[("RUST_LOG", "info")]);
    d.wait_until(Duration::from_secs(60), |d| {
        (0..STREAMS).all(|i| d.camera_state(&format!("cam-{i}")) == "recording")
    });
    std::thread::sleep(Duration::from_secs(10));

    // Stop the cameras first: their count is final when camsim prints it.
    unsafe {
        libc::kill(sim.id() as i32, libc::SIGTERM);
    }
    let mut stats = String::new();
    for l in out.lines().map_while(Result::ok) {
        if l.starts_with("camsim-stats") {
            stats = l;
        }
    }
    sim.wait().unwrap();
    let field = |k: &str| -> u64 {
        stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {stats:?}"))
    };
    let sent = field("frames_sent");
    assert!(field("sessions") >= STREAMS as u64, "every stream played");
    assert!(
        sent >= STREAMS as u64 * 10 * 25 / 2,
        "camsim sent only {sent} frames"
    );

    // Then let the daemon drain what is still in the sockets.
    let t0 = Instant::now();
    let mut received = -1.0;
    let mut text;
    loop {
        text = d.get("/metrics", None).1;
        let now = sum_series(&text, "holdfast_camera_frames_total");
        if now == received || t0.elapsed() > Duration::from_secs(30) {
            break;
        }
        received = now;
        std::thread::sleep(Duration::from_millis(1000));
    }
    let dropped = sum_series(&text, "holdfast_segments_dropped_total");
    let one = metric_value(&text, "holdfast_camera_frames_total{camera=\"cam-0\"}").unwrap();
    d.stop();
    assert!(one > 0.0);
    assert_eq!(received as u64, sent, "frames received = frames sent");
    assert_eq!(dropped, 0.0, "segments dropped");
}

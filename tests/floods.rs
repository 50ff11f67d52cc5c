//! Floods and slow clients against the real daemon recording a real camera (GStreamer's RTSP
//! server): 400 clients that send half a request head are cut off by the header timeout while an
//! authorised client is answered quickly; 2,000 requests with a bad token add only a handful of
//! (coalesced) logbook entries whose counts add up, are answered 401/429 in JSON, and recording
//! keeps every frame; idle and silent connections are closed on time; oversized bodies get 413,
//! unknown routes 404 and wrong methods 405, all in JSON.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::procs::{http_get, metric_value, Daemon, RtspServer, ADMIN_TOKEN};

const DOOR_TOKEN: &str = "tok-door-system-0123456789";

const SLOW_CLIENTS: usize = 400;
const FLOOD: usize = 2000;
const FLOOD_THREADS: usize = 8;

fn config(url: &str, http_extra: &str) -> String {
    // `Daemon::start` puts this right after `[http]`: the first lines are HTTP settings.
    format!(
        "{http_extra}\n\n[policies.short]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n\
         [[sites]]\nid = \"site-a\"\npolicy = \"short\"\n\n\
         [[cameras]]\nid = \"cam-a\"\nsite = \"site-a\"\nurl = \"{url}\"\n"
    )
}

/// Frames recorded so far (read with a token: a throttled address gets 429 without one).
fn recorded(d: &Daemon) -> f64 {
    let (s, text) = d.get("/metrics", Some(ADMIN_TOKEN));
    assert_eq!(s, 200, "{text}");
    metric_value(&text, "holdfast_camera_frames_total{camera=\"cam-a\"}").unwrap_or(0.0)
}

fn is_json_error(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .is_ok_and(|v| v["error"].is_string() && v.get("detail").is_some())
}

/// Sends `request` as is (it should say `Connection: close`): (status, head, body).
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer (413) and close before the whole body is written.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// Whether the server has closed `s` (EOF or reset) as far as a non-blocking read can tell.
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[test]
fn slow_clients_are_cut_and_a_bad_token_flood_is_coalesced_while_recording_goes_on() {
    let mut server = RtspServer::start(&["--cameras", "1"]);
    let mut d = Daemon::start(
        &config(&server.url("/cam0"), "header_timeout = \"2s\""),
        "segment_target = \"1s\"",
    );
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("cam-a") == "recording"
    });

    // 1. Slowloris: SLOW_CLIENTS connections each send half a request head and wait.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (stop, addr) = (stop.clone(), d.addr);
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let (s, body) = http_get(addr, "/api/v1/cameras", Some(ADMIN_TOKEN));
                latencies.push(t.elapsed());
                assert_eq!(s, 200, "authorised client during the slow clients: {body}");
                std::thread::sleep(Duration::from_millis(100));
            }
            latencies
        })
    };
    let mut slow = Vec::new();
    for _ in 0..SLOW_CLIENTS {
        let mut s = TcpStream::connect_timeout(&d.addr, Duration::from_secs(5)).unwrap();
        let t = Instant::now();
        s.write_all(b"GET /api/v1/cameras HTTP/1.1\r\nHost: holdfast\r\nAuthorization: Bea")
            .unwrap();
        s.set_nonblocking(true).unwrap();
        slow.push((s, t, None::<Duration>));
    }
    let t0 = Instant::now();
    while slow.iter().any(|c| c.2.is_none()) && t0.elapsed() < Duration::from_secs(15) {
        for (s, t, cut) in slow.iter_mut().filter(|c| c.2.is_none()) {
            if closed(s) {
                *cut = Some(t.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let latencies = prober.join().unwrap();
    let cut: Vec<Duration> = slow.iter().filter_map(|c| c.2).collect();
    let slowest_cut = cut.iter().max().copied().unwrap_or_default();
    let fastest_cut = cut.iter().min().copied().unwrap_or_default();
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "slow clients: {} of {SLOW_CLIENTS} cut after {:.2}-{:.2} s (header_timeout 2 s); \
         authorised client: {} requests meanwhile, slowest {} ms",
        cut.len(),
        fastest_cut.as_secs_f64(),
        slowest_cut.as_secs_f64(),
        latencies.len(),
        worst.as_millis()
    );
    assert_eq!(
        cut.len(),
        SLOW_CLIENTS,
        "every half-sent request is cut off"
    );
    assert!(
        fastest_cut >= Duration::from_millis(1900),
        "not before the header timeout"
    );
    assert!(
        slowest_cut <= Duration::from_secs(5),
        "within header_timeout + 3 s"
    );
    assert!(latencies.len() >= 5, "the authorised client was answered");
    assert!(
        worst < Duration::from_secs(1),
        "authorised client waited {worst:?}"
    );
    drop(slow);

    // 2. Flood: FLOOD requests with a bad token, from FLOOD_THREADS threads.
    // A refused request with a very long path: logged with the path cut to 256 bytes.
    let long = format!("/api/v1/holds/{}", "%C3%A9".repeat(200));
    let (s, body) = d.get(&long, Some("not-a-valid-token"));
    assert_eq!(s, 401, "{body}");
    let book = d.get_json("/api/v1/logbook");
    let e = book["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "denied" && e["object"]["route"] == "/api/v1/holds/{id}")
        .expect("the refusal is logged at once")
        .clone();
    let logged = e["object"]["path"].as_str().unwrap();
    assert!(logged.len() <= 256 && long.starts_with(logged), "{e}");
    assert_eq!(e["object"]["count"], 1);
    assert!(e.get("sites").is_none(), "no site: {e}");
    let before = d.get_json("/api/v1/logbook")["entries"]
        .as_array()
        .unwrap()
        .len();
    // Start the window right after the camera server wrote its stats, so both counts match.
    let stats_mtime = || {
        std::fs::metadata(&server.stats)
            .and_then(|m| m.modified())
            .ok()
    };
    let m0 = stats_mtime();
    while stats_mtime() == m0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent0 = server.frames_sent("/cam0") as f64;
    let rec0 = recorded(&d);
    let t_flood = Instant::now();
    let threads: Vec<_> = (0..FLOOD_THREADS)
        .map(|i| {
            let addr = d.addr;
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for j in 0..FLOOD / FLOOD_THREADS {
                    let (s, body) = http_get(
                        addr,
                        &format!("/api/v1/holds?n={i}-{j}"),
                        Some("not-a-valid-token"),
                    );
                    assert!(is_json_error(&body), "{s}: {body}");
                    statuses.push(s);
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let flood_time = t_flood.elapsed();
    let n401 = statuses.iter().filter(|&&s| s == 401).count();
    let n429 = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(n401 + n429, FLOOD, "only 401 and 429: {statuses:?}");
    // 20 failures a minute (the long path above was one), then 429.
    assert!(n401 >= 19 && n429 > 0, "401: {n401}, 429: {n429}");
    let (s, head, body) = raw(
        d.addr,
        b"GET /api/v1/holds HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(s, 429, "a throttled address without a token: {body}");
    assert!(is_json_error(&body), "{body}");
    let retry_after: u64 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("a Retry-After header");
    assert!((1..=60).contains(&retry_after), "{head}");
    // A valid token is never throttled.
    assert_eq!(d.get("/api/v1/holds", Some(ADMIN_TOKEN)).0, 200);

    // Recording: let five more seconds pass, stop the camera (it writes its final count), and
    // compare with what the daemon recorded in the same window.
    std::thread::sleep(Duration::from_secs(5));
    server.stop();
    let sent_total = server.frames_sent("/cam0") as f64;
    let sent = sent_total - sent0;
    let mut rec_total = recorded(&d);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(300));
        let now = recorded(&d);
        if now == rec_total && now >= sent_total {
            break;
        }
        rec_total = now;
    }
    let rec = rec_total - rec0;
    let dropped = {
        let (_, text) = d.get("/metrics", Some(ADMIN_TOKEN));
        metric_value(
            &text,
            "holdfast_camera_frames_dropped_total{camera=\"cam-a\"}",
        )
        .unwrap_or(0.0)
    };
    eprintln!(
        "flood: {FLOOD} bad-token requests in {:.2} s ({n401} x 401, {n429} x 429); camera: \
         {sent} frames sent, {rec} recorded in the same {:.1} s window ({sent_total} and \
         {rec_total} since the start), {dropped} dropped",
        flood_time.as_secs_f64(),
        t_flood.elapsed().as_secs_f64()
    );
    assert!(sent >= 100.0, "the camera kept sending: {sent}");
    // 1 %, plus two frames for the moment the window opened (the camera counts at its
    // payloader, every 0.2 s).
    assert!(
        (sent - rec).abs() <= sent * 0.01 + 2.0,
        "recorded {rec} of {sent} frames during the flood"
    );
    assert!(
        (sent_total - rec_total).abs() <= sent_total * 0.01,
        "recorded {rec_total} of {sent_total} frames since the start"
    );
    assert_eq!(dropped, 0.0);

    // The logbook: the refusals of a window are written when it closes or at shutdown.
    d.restart();
    let entries = d.get_json("/api/v1/logbook")["entries"]
        .as_array()
        .unwrap()
        .clone();
    let denied: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "denied" && e["object"]["route"] == "/api/v1/holds")
        .collect();
    let counted: u64 = denied
        .iter()
        .map(|e| e["object"]["count"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "logbook: {} entries before the flood, {} after; {} refusal entries standing for \
         {counted} refusals",
        before,
        entries.len(),
        denied.len()
    );
    assert!(
        denied.len() <= 5,
        "at most a handful of entries: {denied:#?}"
    );
    assert_eq!(
        counted,
        (FLOOD + 1) as u64,
        "the flood and the throttled probe"
    );
    for e in &denied {
        assert_eq!(e["object"]["route"], "/api/v1/holds");
        assert_eq!(e["object"]["source"], "127.0.0.1");
        assert!(!e.to_string().contains("not-a-valid-token"), "{e}");
    }
    assert_eq!(d.get_json("/api/v1/logbook/verify")["ok"], true);
}

#[test]
fn timeouts_limits_and_json_errors() {
    let d = Daemon::start(
        &format!(
            "header_timeout = \"1s\"\nidle_timeout = \"3s\"\nmax_connections = 4\n{}",
            support::procs::user("door", "access_system", DOOR_TOKEN, "[\"*\"]")
        ),
        "",
    );

    // A client that connects and sends nothing is cut after the header timeout.
    let mut silent = TcpStream::connect(d.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    let silent_cut = t.elapsed();
    assert_eq!(n, 0);
    assert!(
        silent_cut >= Duration::from_millis(900) && silent_cut < Duration::from_secs(3),
        "silent connection cut after {silent_cut:?}"
    );

    // A keep-alive connection is kept while idle beyond the header timeout, closed after the
    // idle timeout.
    let mut ka = TcpStream::connect(d.addr).unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nHost: holdfast\r\n\r\n")
        .unwrap();
    ka.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = ka.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    ka.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = ka.read_to_end(&mut rest);
    assert!(
        !closed(&mut ka),
        "idle connection closed before the idle timeout"
    );
    ka.set_nonblocking(false).unwrap();
    let t = Instant::now();
    loop {
        match ka.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let idle_cut = t.elapsed() + Duration::from_millis(1500);
    assert!(
        idle_cut >= Duration::from_millis(2800) && idle_cut < Duration::from_secs(6),
        "idle connection closed after {idle_cut:?}"
    );
    eprintln!(
        "silent connection cut after {:.2} s (header_timeout 1 s), idle keep-alive after {:.2} s \
         (idle_timeout 3 s)",
        silent_cut.as_secs_f64(),
        idle_cut.as_secs_f64()
    );

    // At the cap, a new connection waits in the accept queue until a served one closes (here:
    // four silent ones, cut by the header timeout).
    let silent: Vec<_> = (0..4)
        .map(|_| TcpStream::connect(d.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let (s, body) = d.get("/api/v1/cameras", Some(ADMIN_TOKEN));
    let queued = t.elapsed();
    assert_eq!(s, 200, "{body}");
    assert!(
        queued >= Duration::from_millis(600) && queued < Duration::from_secs(3),
        "answered after {queued:?} with the 4 connection slots taken"
    );
    drop(silent);
    eprintln!(
        "with max_connections = 4 taken by silent clients, a request was answered after {:.2} s",
        queued.as_secs_f64()
    );

    // At the cap, an idle keep-alive connection makes room: four clients that made one request
    // each and keep their connections open do not keep a fifth out until their idle timeout.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(d.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: holdfast\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        idle.push(c);
    }
    let t = Instant::now();
    let (s, _) = d.get("/healthz", None);
    let waited = t.elapsed();
    eprintln!("with 4 of 4 slots idle keep-alive, a new client was answered after {waited:?}");
    assert_eq!(s, 200);
    assert!(
        waited < Duration::from_millis(1500),
        "waited {waited:?} (idle timeout is 3 s)"
    );
    drop(idle);

    // 413: declared too long, and a chunked body that runs past the limit.
    let big = "x".repeat(70 * 1024);
    let req = format!(
        "POST /api/v1/holds HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    );
    let (s, _, body) = raw(d.addr, req.as_bytes());
    assert_eq!(s, 413, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["detail"]["limit_bytes"], 64 * 1024, "{v}");
    let req = format!(
        "POST /api/v1/holds HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (s, _, body) = raw(d.addr, req.as_bytes());
    assert_eq!(s, 413, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["detail"]["limit_bytes"], 64 * 1024, "{v}");
    // Key-tag batches may be larger (8 MiB); above that, 413 too.
    let req = format!(
        "POST /api/v1/keytags/events HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {DOOR_TOKEN}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    );
    let (s, _, body) = raw(d.addr, req.as_bytes());
    assert_ne!(s, 413, "70 KiB is a small key-tag batch: {body}");
    assert!(is_json_error(&body), "{s}: {body}");
    // The order is 401 -> 403 -> 413: a role that may not submit learns nothing about sizes,
    // and its body is never read.
    let huge_for = |token: &str| {
        format!(
            "POST /api/v1/keytags/events HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            9 * 1024 * 1024
        )
    };
    assert_eq!(raw(d.addr, huge_for("no-such-token").as_bytes()).0, 401);
    assert_eq!(raw(d.addr, huge_for(ADMIN_TOKEN).as_bytes()).0, 403);
    let (s, _, body) = raw(d.addr, huge_for(DOOR_TOKEN).as_bytes());
    assert_eq!(s, 413, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["detail"]["limit_bytes"], 8 * 1024 * 1024, "{v}");

    // A request head over 64 KiB is refused by hyper (bare 431) and the connection closed.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: h\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "y".repeat(70 * 1024)
    );
    let (s, head, _) = raw(d.addr, huge.as_bytes());
    assert!(s == 431 || s == 0, "{head}");

    // 404 and 405 in JSON.
    let (s, body) = d.get("/no/such/thing", None);
    assert_eq!(s, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "no such route", "{v}");
    let (s, head, body) = raw(
        d.addr,
        format!(
            "DELETE /api/v1/holds HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(s, 405, "{head}");
    assert!(is_json_error(&body), "{body}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(
        head.lines()
            .any(|l| l.starts_with("allow:") && l.contains("get") && l.contains("post")),
        "{head}"
    );
    // An extractor's plain-text rejection (a query that does not parse) comes out as JSON too.
    let (s, body) = d.get("/api/v1/logbook?limit=many", Some(ADMIN_TOKEN));
    assert_eq!(s, 400, "{body}");
    assert!(is_json_error(&body), "{body}");
}

#[test]
fn over_tls_a_silent_client_is_cut_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::procs::self_signed_cert(dir.path());
    let port = support::procs::free_port();
    let config = dir.path().join("holdfast.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = {:?}\n\n[http]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = {:?}\n\
             tls_key = {:?}\nheader_timeout = \"1s\"\n{}",
            dir.path().join("data").display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            support::procs::logbook_section(dir.path()),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let curl = |path: &str| -> String {
        let out = std::process::Command::new("curl")
            .args(["-sk", "--max-time", "3", "-w", "\n%{http_code}"])
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let t0 = Instant::now();
    while !curl("/healthz").ends_with("200") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "HTTPS never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A client that connects and never starts the TLS handshake is cut at the header timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(silent.read(&mut buf).unwrap_or(0), 0);
    let cut = t.elapsed();
    // Meanwhile and after, errors over TLS are JSON too.
    let out = curl("/no/such/route");
    assert!(
        out.ends_with("404") && out.contains("no such route"),
        "{out}"
    );
    eprintln!(
        "TLS: a silent client was cut after {:.2} s",
        cut.as_secs_f64()
    );
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(3),
        "silent TLS client cut after {cut:?}"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success(), "clean shutdown");
}

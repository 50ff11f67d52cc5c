//! Camera credentials on the wire, against GStreamer's RTSP server and the real daemon binary:
//! `rtsps://` cameras (TLS with a pinned fingerprint or a CA file, digest through the relay), a
//! wrong certificate records nothing and says why, Basic over plain RTSP is refused unless
//! allowed (and the password then never reaches the server), and no camera URL or password
//! appears in the log, the camera API or the metrics.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use holdfast::store::Store;
use support::procs::{Daemon, RtspServer};

const POLICY: &str = "[policies.short]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n[[sites]]\nid = \"test-site\"\npolicy = \"short\"\n";
const PASSWORD: &str = "Cam-s3cret-4711";

fn camera(id: &str, url: &str, extra: &str) -> String {
    format!("\n[[cameras]]\nid = \"{id}\"\nsite = \"test-site\"\nurl = \"{url}\"\n{extra}\n")
}

fn creds(pw_file: &Path) -> String {
    format!(
        "username = \"viewer\"\npassword_file = {:?}\n",
        pw_file.display().to_string()
    )
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `AB:CD:...` as `openssl x509 -fingerprint -sha256` prints it.
fn fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().rsplit('=').next().unwrap().to_owned()
}

/// A CA, a camera certificate for 127.0.0.1 signed by it, and an unrelated CA.
fn make_certificates(dir: &Path) {
    const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let run = |cmd: String| {
        let args: Vec<&str> = cmd.split(' ').collect();
        openssl(&args, dir);
    };
    for ca in ["ca", "other-ca"] {
        run(format!(
            "req -x509 {EC} -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN=holdfast-test-{ca}"
        ));
    }
    run(format!(
        "req {EC} -keyout cam.key -out cam.csr -subj /CN=camera"
    ));
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    run(
        "x509 -req -in cam.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out cam.pem \
         -extfile ext.cnf"
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    );
}

fn last_error(d: &Daemon, id: &str) -> String {
    let v = d.get_json("/api/v1/cameras");
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c["last_error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn frames_stored(d: &Daemon, camera: &str) -> u64 {
    let (store, _) = Store::open(&d.data_dir, 3600).unwrap();
    store
        .index()
        .all_segments()
        .unwrap()
        .into_iter()
        .filter(|e| e.camera == camera)
        .map(|e| u64::from(e.frame_count))
        .sum()
}

/// The Authorization headers the server received per mount (`/cam0`, `/cam0/stream=0`, ...).
fn authorization(server: &RtspServer, mount: &str) -> Vec<String> {
    let text = std::fs::read_to_string(&server.stats).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["authorization"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(path, _)| *path == mount || path.starts_with(&format!("{mount}/")))
                .flat_map(|(_, vals)| vals.as_array().cloned().unwrap_or_default())
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// No password, no camera URL (neither scheme nor the server's host:port/path) anywhere.
fn assert_nothing_leaks(server: &RtspServer, texts: &[(&str, &str)]) {
    let host_path = format!("127.0.0.1:{}/cam", server.port);
    let name_path = format!("localhost:{}/cam", server.port);
    for (what, text) in texts {
        for needle in [PASSWORD, "rtsp://", "rtsps://", &host_path, &name_path] {
            assert!(
                !text.contains(needle),
                "{needle:?} appears in the {what}:\n{text}"
            );
        }
    }
}

#[test]
fn rtsps_cameras_record_by_pin_or_ca_file_and_a_wrong_certificate_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let cert = dir.path().join("cam.pem");
    let key = dir.path().join("cam.key");
    let server = RtspServer::start(&[
        "--cameras",
        "2",
        "--digest",
        &format!("viewer:{PASSWORD}"),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let tls_url = |mount: &str| server.url(mount).replace("rtsp://", "rtsps://");
    let file = |name: &str| {
        format!(
            "tls_ca_file = {:?}\n",
            dir.path().join(name).display().to_string()
        )
    };
    let pin = |pem: &str| {
        format!(
            "tls_fingerprint = \"{}\"\n",
            fingerprint(&dir.path().join(pem))
        )
    };
    let c = creds(&pw);
    let cams = camera("pinned", &tls_url("/cam0"), &(c.clone() + &pin("cam.pem")))
        + &camera("by-ca", &tls_url("/cam1"), &(c.clone() + &file("ca.pem")))
        + &camera(
            "cert-itself",
            &tls_url("/cam0"),
            &(c.clone() + &file("cam.pem")),
        )
        + &camera(
            "wrong-pin",
            &tls_url("/cam1"),
            &(c.clone() + &pin("ca.pem")),
        )
        + &camera(
            "other-ca",
            &tls_url("/cam0"),
            &(c.clone() + &file("other-ca.pem")),
        )
        + &camera(
            "wrong-host",
            &tls_url("/cam1").replace("127.0.0.1", "localhost"),
            &(c.clone() + &file("ca.pem")),
        );
    let mut d = Daemon::start(&format!("{POLICY}{cams}"), "segment_target = \"1s\"");
    let good = ["pinned", "by-ca", "cert-itself"];
    let bad = [
        (
            "wrong-pin",
            "certificate fingerprint does not match tls_fingerprint",
        ),
        ("other-ca", "certificate is not signed by tls_ca_file"),
        ("wrong-host", "not valid for localhost"),
    ];
    d.wait_until(Duration::from_secs(30), |d| {
        good.iter().all(|c| d.camera_state(c) == "recording")
    });
    d.wait_until(Duration::from_secs(20), |d| {
        bad.iter()
            .all(|(c, why)| d.camera_state(c) == "down" && last_error(d, c).contains(why))
    });
    std::thread::sleep(Duration::from_secs(4));
    let cams_json = d.get("/api/v1/cameras", Some(&d.token)).1;
    let metrics = d.get("/metrics", None).1;
    for (c, why) in bad {
        let e = last_error(&d, c);
        eprintln!("{c}: {e}");
        assert!(e.contains(why), "{c}: {e}");
        assert_eq!(
            support::procs::metric_value(
                &metrics,
                &format!("holdfast_camera_frames_total{{camera=\"{c}\"}}")
            )
            .unwrap_or(0.0),
            0.0,
            "{c} received no frame"
        );
    }
    d.stop();
    for c in good {
        let n = frames_stored(&d, c);
        eprintln!("{c}: {n} frames stored over rtsps");
        assert!(n >= 50, "{c}: only {n} frames stored");
    }
    for (c, _) in bad {
        assert_eq!(frames_stored(&d, c), 0, "{c} recorded nothing");
    }
    // Digest went through the relay: the server saw digest answers, never Basic.
    let auth = authorization(&server, "/cam0");
    assert!(auth.iter().any(|a| a.starts_with("Digest ")), "{auth:?}");
    assert!(auth.iter().all(|a| !a.starts_with("Basic")), "{auth:?}");
    let log = d.log_text();
    assert!(
        log.contains("wrong-pin"),
        "the failing camera is logged by id"
    );
    assert_nothing_leaks(
        &server,
        &[
            ("log", &log),
            ("camera API", &cams_json),
            ("metrics", &metrics),
        ],
    );
}

#[test]
fn basic_only_over_plain_rtsp_is_refused_unless_allowed_and_the_password_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let server = RtspServer::start(&["--cameras", "2", "--basic", &format!("viewer:{PASSWORD}")]);
    let cams = camera("refused", &server.url("/cam0"), &creds(&pw))
        + &camera(
            "allowed",
            &server.url("/cam1"),
            &(creds(&pw) + "allow_basic_auth = true\n"),
        );
    let mut d = Daemon::start(&format!("{POLICY}{cams}"), "");
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("allowed") == "recording"
    });
    // Refused, and retried with backoff like any other failure.
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("refused") == "down"
            && d.metric("holdfast_camera_reconnects_total{camera=\"refused\"}") >= 1.0
    });
    let e = last_error(&d, "refused");
    eprintln!("refused: {e}");
    assert!(
        e.contains("camera offers only Basic authentication over plain RTSP")
            && e.contains("allow_basic_auth"),
        "{e}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let cams_json = d.get("/api/v1/cameras", Some(&d.token)).1;
    let metrics = d.get("/metrics", None).1;
    d.stop();
    // The server never received an Authorization header for the refused camera's mount, and
    // did receive Basic for the allowed one (so the recording works and the check can fail).
    std::thread::sleep(Duration::from_millis(300));
    let refused = authorization(&server, "/cam0");
    assert!(
        refused.is_empty(),
        "credentials reached the server: {refused:?}"
    );
    let allowed = authorization(&server, "/cam1");
    assert!(
        allowed.iter().any(|a| a.starts_with("Basic ")),
        "{allowed:?}"
    );
    assert_eq!(frames_stored(&d, "refused"), 0);
    assert!(frames_stored(&d, "allowed") > 0);
    let log = d.log_text();
    assert!(
        log.contains("refused"),
        "the refused camera is logged by id"
    );
    assert_nothing_leaks(
        &server,
        &[
            ("log", &log),
            ("camera API", &cams_json),
            ("metrics", &metrics),
        ],
    );
}

/// A broken camera on a plain TCP socket: answers every request with 200 and, for `/typed`, a body
/// of the wrong content type, for `/untyped` no content type and an SDP without streams. retina's
/// errors and warnings then name the URL.
struct BrokenCamera {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BrokenCamera {
    fn start() -> BrokenCamera {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // One request per connection is all retina gets before it gives up.
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf);
                let cseq = req
                    .lines()
                    .find_map(|l| l.strip_prefix("CSeq:"))
                    .unwrap_or(" 1")
                    .trim()
                    .to_owned();
                let resp = if req.contains("/typed") {
                    let body = "hello";
                    format!(
                        "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: text/plain\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    let body = "v=0\r\nthis is not sdp\r\n";
                    format!(
                        "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = s.write_all(resp.as_bytes());
            }
        });
        BrokenCamera {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BrokenCamera {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_broken_camera_s_errors_and_warnings_never_show_its_url() {
    let cam = BrokenCamera::start();
    let url = |path: &str| format!("rtsp://127.0.0.1:{}{path}?channel=1&profile=main", cam.port);
    let cams = camera("typed", &url("/typed"), "") + &camera("untyped", &url("/untyped"), "");
    let mut d = Daemon::start(&format!("{POLICY}{cams}"), "");
    d.wait_until(Duration::from_secs(20), |d| {
        last_error(d, "typed").contains("unexpected content type")
            && last_error(d, "untyped").contains("No parseable streams")
    });
    let typed = last_error(&d, "typed");
    let untyped = last_error(&d, "untyped");
    eprintln!("typed: {typed}\nuntyped: {untyped}");
    // The message stays useful: what happened, with the URL replaced.
    assert!(typed.contains("DESCRIBE response at <camera url> has unexpected content type"));
    let cams_json = d.get("/api/v1/cameras", Some(&d.token)).1;
    let metrics = d.get("/metrics", None).1;
    d.stop();
    let log = d.log_text();
    assert!(
        log.contains("has no content type") && log.contains("<camera url>"),
        "retina's own warning is logged, scrubbed:\n{log}"
    );
    let host_path = format!("127.0.0.1:{}/", cam.port);
    for (what, text) in [
        ("log", &log),
        ("camera API", &cams_json),
        ("metrics", &metrics),
    ] {
        for needle in ["rtsp://", host_path.as_str(), "profile=main"] {
            assert!(
                !text.contains(needle),
                "{needle:?} appears in the {what}:\n{text}"
            );
        }
    }
}

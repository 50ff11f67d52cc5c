//! The systemd side of `holdfast run` (`src/service.rs`, `systemd/holdfast.service`):
//!
//! - `unit_verifies_and_scores_at_most_2`: `systemd-analyze verify` accepts the unit (with
//!   ExecStart rewritten to the built binary in a temporary copy) and the unit with the example
//!   network drop-in; `systemd-analyze security --offline=true` scores both at most 2.0 (the
//!   score is printed).
//! - `notify_status_ready_watchdog_stopping`: the real daemon with `NOTIFY_SOCKET` pointing at a
//!   datagram socket this test binds and `WATCHDOG_USEC` set: STATUS lines during start,
//!   READY=1 only when `/healthz` answers, WATCHDOG=1 pings at about half the interval, a
//!   "recording N of M cameras" status, STOPPING=1 on SIGTERM and a clean exit.
//! - `a_stalled_fsync_stops_the_watchdog_pings`: the data directory on faultfs
//!   (`tests/support/faultfs.rs`), one camsim camera recording; then every fsync of a bucket
//!   file stalls (no answer, as on a hung disk): the writer thread hangs in its sync, the
//!   watchdog pings stop, STATUS= and the log name the writer; once the fsyncs complete, the
//!   pings come back. A real stall of the real writer, no test hook.
//! - `the_daemon_records_under_the_units_syscall_filter`: `scripts/unit-sandbox-check.py`
//!   records a camsim camera under the unit's effective SystemCallFilter= set (kill on any
//!   other call), as nobody, without capabilities, in a user namespace of its own: where
//!   systemd is not PID 1 this stands in for starting the unit.
//! - `journal_gets_structured_fields_and_no_secret`: the daemon in a mount namespace of its own
//!   (`unshare -m`) whose `/run/systemd/journal/socket` is a socket this test binds, stderr a
//!   file named by `JOURNAL_STREAM`: events arrive in the journal's native protocol with
//!   `MESSAGE`, `PRIORITY` and `F_` fields; a camera whose answer carries its password in an
//!   `rtsp://` URL leaves the password in neither the journal nor stderr.

#[path = "support/faultfs.rs"]
mod faultfs;
mod support;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::procs::{free_port, http_get, logbook_section, repo_path, strip_ansi, Camsim};

/// The watchdog interval given to the daemon (`WATCHDOG_USEC`).
const WATCHDOG: Duration = Duration::from_secs(2);

fn systemd_analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("running systemd-analyze (package systemd)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The overall exposure of `systemd-analyze security --offline=true UNIT`.
fn security_score(unit: &Path) -> f64 {
    let (_, text) = systemd_analyze(&[
        "security",
        "--offline=true",
        "--no-pager",
        unit.to_str().unwrap(),
    ]);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure line in:\n{text}"));
    let score = line
        .rsplit(':')
        .next()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot read the score of {line:?}"));
    println!("{}: {line}", unit.display());
    if score > 2.0 {
        let exposed: Vec<&str> = text.lines().filter(|l| l.starts_with('✗')).collect();
        panic!(
            "{} scores {score} (> 2.0); exposed:\n{}",
            unit.display(),
            exposed.join("\n")
        );
    }
    score
}

#[test]
fn unit_verifies_and_scores_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo_path("systemd/holdfast.service")).unwrap();
    let dropin =
        std::fs::read_to_string(repo_path("systemd/holdfast.service.d/network.conf.example"))
            .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/holdfast run"), "{unit}");
    // verify checks that the executables exist: the built binary stands in for /usr/bin's.
    let here = unit.replace("/usr/bin/holdfast", env!("CARGO_BIN_EXE_holdfast"));
    let plain = dir.path().join("holdfast.service");
    std::fs::write(&plain, &here).unwrap();
    // The drop-in's [Service] lines added to the unit (verify reads no drop-ins of a path).
    let with_dropin_dir = dir.path().join("with-dropin");
    std::fs::create_dir(&with_dropin_dir).unwrap();
    let merged = with_dropin_dir.join("holdfast.service");
    let dropin_lines = dropin.replace("[Service]\n", "");
    std::fs::write(
        &merged,
        here.replace("\n[Install]", &format!("{dropin_lines}\n[Install]")),
    )
    .unwrap();
    for u in [&plain, &merged] {
        let (ok, text) = systemd_analyze(&["verify", u.to_str().unwrap()]);
        let complaints: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("holdfast.service"))
            .collect();
        assert!(
            ok && complaints.is_empty(),
            "systemd-analyze verify {}:\n{text}",
            u.display()
        );
    }
    let score = security_score(&repo_path("systemd/holdfast.service"));
    let with_dropin = security_score(&merged);
    println!("exposure: unit {score}, with the network drop-in {with_dropin}");
    // The directives the brief asks for are really there.
    for d in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=\n",
        "PrivateUsers=yes",
        "UMask=0077",
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
        "io_uring_setup io_uring_enter io_uring_register",
    ] {
        assert!(unit.contains(d), "the unit lacks {d:?}");
    }
}

/// A datagram socket standing in for systemd's notify socket.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every message so far, with when it came.
    got: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            sock,
            path,
            got: Vec::new(),
        }
    }

    /// The next message (one datagram may hold several `KEY=VALUE` lines), within `limit`.
    fn next(&mut self, limit: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(limit.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.got.push((Instant::now(), text.clone()));
        Some(text)
    }

    /// Reads messages until one satisfies `want` (returned) or `limit` passes (panics).
    fn until(&mut self, limit: Duration, what: &str, want: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let left = limit.saturating_sub(t0.elapsed());
            if left.is_zero() {
                panic!("no {what} within {limit:?}; got: {:#?}", self.texts());
            }
            if let Some(m) = self.next(left) {
                if want(&m) {
                    return m;
                }
            }
        }
    }

    /// All messages received during `span`.
    fn during(&mut self, span: Duration) -> Vec<String> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        while let Some(left) = span.checked_sub(t0.elapsed()) {
            if let Some(m) = self.next(left) {
                out.push(m);
            }
        }
        out
    }

    fn texts(&self) -> Vec<&str> {
        self.got.iter().map(|(_, t)| t.as_str()).collect()
    }
}

/// `holdfast run` with the notify environment; SIGTERM (then SIGKILL) on drop.
struct Running {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Running {
    fn start(dir: &Path, data: &Path, rest: &str, notify: &Path) -> Running {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            "[storage]\ndata_dir = {:?}\nbucket = \"10s\"\nsegment_target = \"1s\"\n\
             sync_interval = \"500ms\"\n\n[http]\nlisten = \"{addr}\"\n\n{rest}\n{}",
            data.display().to_string(),
            logbook_section(dir)
        );
        let config_path = dir.join("holdfast.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("holdfast.log");
        let child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Running {
            child: Some(child),
            addr,
            log,
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    fn sigterm(&self) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
    }

    /// Waits for the exit after a SIGTERM: whether it exited successfully.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let mut c = self.child.take().unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.sigterm();
            self.wait_exit(Duration::from_secs(10));
        }
    }
}

/// Completes the stalled fsyncs when dropped.
struct Unstall<'a>(&'a faultfs::FaultFs);

impl Drop for Unstall<'_> {
    fn drop(&mut self) {
        self.0.unstall();
    }
}

fn is(key: &'static str) -> impl Fn(&str) -> bool {
    move |m: &str| m.lines().any(|l| l == key)
}

fn status_of(m: &str) -> Option<&str> {
    m.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// Waits for READY=1; panics with the daemon's log if it does not come.
fn wait_ready(notify: &mut NotifySocket, d: &Running) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if notify
            .next(Duration::from_millis(200))
            .is_some_and(|m| is("READY=1")(&m))
        {
            return;
        }
    }
    panic!(
        "no READY=1 within 30 s; got {:?}; log:\n{}",
        notify.texts(),
        d.log_text()
    );
}

#[test]
fn notify_status_ready_watchdog_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let mut d = Running::start(
        dir.path(),
        &dir.path().join("data"),
        "",
        &notify.path.clone(),
    );
    // READY=1 comes once /healthz answers: asked right away, it answers.
    wait_ready(&mut notify, &d);
    let (code, body) = http_get(d.addr, "/healthz", None);
    assert_eq!(code, 200, "/healthz right after READY=1: {body}");
    let before_ready: Vec<&str> = notify.texts().iter().filter_map(|m| status_of(m)).collect();
    for s in ["recovering the store", "opening the logbook"] {
        assert!(
            before_ready.contains(&s),
            "STATUS={s} before READY=1; got {before_ready:?}"
        );
    }
    // Pings at about half the interval (2 s): at least 3 in 4.5 s, and the camera count.
    let after = notify.during(Duration::from_millis(4500));
    let pings = after.iter().filter(|m| is("WATCHDOG=1")(m)).count();
    assert!(pings >= 3, "{pings} WATCHDOG=1 in 4.5 s: {after:?}");
    assert!(
        notify
            .texts()
            .iter()
            .any(|m| status_of(m) == Some("recording 0 of 0 cameras")),
        "{:?}",
        notify.texts()
    );
    // SIGHUP (`systemctl reload`): RELOADING=1 with MONOTONIC_USEC, then READY=1 again with the
    // outcome as STATUS.
    d.signal(libc::SIGHUP);
    let reloading = notify.until(Duration::from_secs(10), "RELOADING=1", is("RELOADING=1"));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let done = notify.until(
        Duration::from_secs(10),
        "READY=1 after the reload",
        is("READY=1"),
    );
    assert_eq!(status_of(&done), Some("config reload ok"), "{done:?}");
    // SIGTERM: STOPPING=1, then a clean exit.
    d.sigterm();
    notify.until(Duration::from_secs(10), "STOPPING=1", is("STOPPING=1"));
    assert!(d.wait_exit(Duration::from_secs(30)), "{}", d.log_text());
}

#[test]
fn a_stalled_fsync_stops_the_watchdog_pings() {
    let dir = tempfile::tempdir().unwrap();
    let fs = faultfs::FaultFs::mount(&dir.path().join("disk"), &dir.path().join("mnt"))
        .expect("mount faultfs (needs /dev/fuse and root or fusermount3: scripts/setup.sh)");
    let sim = Camsim::start(1);
    let mut notify = NotifySocket::bind(dir.path());
    let rest = format!(
        "[policies.keep]\nvideo = \"1h\"\nkeytags = \"1h\"\n\n[[sites]]\nid = \"site\"\npolicy = \"keep\"\n\n\
         [[cameras]]\nid = \"cam0\"\nsite = \"site\"\nurl = \"{}\"\n",
        sim.url(0)
    );
    let mut d = Running::start(
        dir.path(),
        &fs.mountpoint.join("data"),
        &rest,
        &notify.path.clone(),
    );
    wait_ready(&mut notify, &d);
    // Dropped before `d`: a failing test first completes the stalled fsyncs, so the daemon can
    // stop (a process hanging in a FUSE request cannot even be killed).
    let _unstall = Unstall(&fs);
    notify.until(Duration::from_secs(30), "the camera recording", |m| {
        status_of(m) == Some("recording 1 of 1 cameras")
    });
    // Bucket files are being synced; then every sync of one hangs.
    let t0 = Instant::now();
    while fs.stats().fsyncs == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no fsync through faultfs"
        );
        notify.next(Duration::from_millis(100));
    }
    fs.stall_fsync("buckets/");
    let t0 = Instant::now();
    while fs.stalled() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no bucket fsync came to stall"
        );
        notify.next(Duration::from_millis(100));
    }
    let stalled_at = Instant::now();
    // Past the watchdog interval the writer counts as stuck: STATUS says so...
    let stuck = notify.until(Duration::from_secs(10), "a watchdog STATUS", |m| {
        status_of(m).is_some_and(|s| s.starts_with("watchdog:"))
    });
    let detected = stalled_at.elapsed();
    assert!(
        status_of(&stuck)
            .unwrap()
            .contains("the writer has made no progress since"),
        "{stuck}"
    );
    // ...and no ping comes for longer than the interval (systemd would restart the service).
    let quiet = notify.during(WATCHDOG + Duration::from_secs(1));
    assert!(
        !quiet.iter().any(|m| is("WATCHDOG=1")(m)),
        "pings while the writer hangs: {quiet:?}"
    );
    let log = strip_ansi(&d.log_text());
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("stage=\"writer\"")
            && l.contains("no progress for longer than the watchdog interval")),
        "no warning naming the writer in the log:\n{log}"
    );
    println!("stuck writer reported {detected:?} after the first stalled fsync");
    // The fsyncs complete: progress, pings again.
    fs.unstall();
    notify.until(
        Duration::from_secs(10),
        "WATCHDOG=1 after the stall",
        is("WATCHDOG=1"),
    );
    d.sigterm();
    notify.until(Duration::from_secs(10), "STOPPING=1", is("STOPPING=1"));
    assert!(d.wait_exit(Duration::from_secs(30)), "{}", d.log_text());
    drop(sim);
}

#[test]
fn journal_gets_structured_fields_and_no_secret() {
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    const SECRET: &str = "s3cretPW-journal";
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    std::fs::create_dir(&jdir).unwrap();
    let journal = UnixDatagram::bind(jdir.join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // A "camera" that answers with an rtsp:// URL holding the password.
    let cam = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cam_port = cam.local_addr().unwrap().port();
    let pw = dir.path().join("cam.pw");
    std::fs::write(&pw, format!("{SECRET}\n")).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("holdfast.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = {:?}\nbucket = \"10s\"\n\n[http]\nlisten = \"{addr}\"\n\n\
             [policies.p]\nvideo = \"1h\"\nkeytags = \"1h\"\n\n[[sites]]\nid = \"s\"\npolicy = \"p\"\n\n\
             [[cameras]]\nid = \"door1\"\nsite = \"s\"\nurl = \"rtsp://127.0.0.1:{cam_port}/stream\"\n\
             username = \"admin\"\npassword_file = {:?}\n{}",
            dir.path().join("data").display().to_string(),
            pw.display().to_string(),
            logbook_section(dir.path())
        ),
    )
    .unwrap();
    let stderr_path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let meta = stderr.metadata().unwrap();
    // A private /run whose systemd/journal is this test's directory.
    let child = Command::new("unshare")
        .args([
            "-m",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
             mount --bind \"$1\" /run/systemd/journal && exec \"$2\" run --config \"$3\"",
            "sh",
        ])
        .arg(&jdir)
        .arg(env!("CARGO_BIN_EXE_holdfast"))
        .arg(&config)
        .env("RUST_LOG", "debug")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("unshare (util-linux)");
    let mut d = Running {
        child: Some(child),
        addr,
        log: stderr_path.clone(),
    };
    cam.set_nonblocking(true).unwrap();
    let mut entries: Vec<Vec<u8>> = Vec::new();
    let mut answered = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        if let Ok((mut c, _)) = cam.accept() {
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut req = [0u8; 4096];
            let n = c.read(&mut req).unwrap_or(0);
            let cseq = String::from_utf8_lossy(&req[..n])
                .lines()
                .find_map(|l| l.strip_prefix("CSeq: ").map(str::to_owned))
                .unwrap_or_else(|| "1".into());
            let _ = write!(
                c,
                "RTSP/1.0 404 Not Found\r\nCSeq: {cseq}\r\nContent-Base: \
                 rtsp://admin:{SECRET}@10.0.0.1/stream\r\nContent-Length: 0\r\n\r\n"
            );
            answered += 1;
        }
        let mut buf = vec![0u8; 65536];
        if let Ok(n) = journal.recv(&mut buf) {
            entries.push(buf[..n].to_vec());
        }
    }
    d.sigterm();
    assert!(d.wait_exit(Duration::from_secs(30)), "{}", d.log_text());
    let plain = std::fs::read_to_string(&stderr_path).unwrap();
    let has = |e: &[u8], what: &[u8]| e.windows(what.len()).any(|w| w == what);
    assert!(
        answered > 0,
        "the daemon never called the camera; stderr:\n{plain}"
    );
    assert!(
        entries
            .iter()
            .any(|e| has(e, b"MESSAGE\n") && has(e, b"PRIORITY\n")),
        "no journal entries; stderr:\n{plain}"
    );
    assert!(
        entries
            .iter()
            .any(|e| has(e, b"F_CAMERA\n") && has(e, b"door1")),
        "no entry with the camera as a structured field"
    );
    assert!(
        !entries.iter().any(|e| has(e, SECRET.as_bytes())),
        "the password reached the journal"
    );
    assert!(
        !plain.contains(SECRET),
        "the password reached stderr:\n{plain}"
    );
    // Ordinary events went to the journal, not to the text stream.
    assert!(
        !plain.contains("camera tasks started"),
        "structured events written as text:\n{plain}"
    );
    println!(
        "{} journal entries, {} scrubbed text lines, camera answered {answered} times",
        entries.len(),
        plain.lines().count()
    );
}

#[test]
fn the_daemon_records_under_the_units_syscall_filter() {
    let out = Command::new("/usr/bin/python3")
        .arg(repo_path("scripts/unit-sandbox-check.py"))
        .arg(env!("CARGO_BIN_EXE_holdfast"))
        .output()
        .expect("running scripts/unit-sandbox-check.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success() && text.contains("PASS"),
        "the daemon failed under the unit's sandbox (python3-seccomp: scripts/setup.sh):\n{text}"
    );
}

/// A flood that holds every connection slot with half-sent requests (each cut by the header
/// timeout, then sent again) is not a hung server: the watchdog pings go on, so systemd does not
/// restart the recorder (which would cost every camera footage). The loopback probe alone would
/// wait behind the flood for a slot and miss its deadline.
#[test]
fn a_connection_flood_does_not_stop_the_watchdog_pings() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let mut d = Running::start(
        dir.path(),
        &dir.path().join("data"),
        "header_timeout = \"1s\"\nmax_connections = 4\n",
        &notify.path.clone(),
    );
    wait_ready(&mut notify, &d);
    let addr = d.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 16 attackers for 4 slots: each opens a connection, sends half a request head and holds
    // it until the server cuts it, then comes back.
    let attackers: Vec<_> = (0..16)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut opened = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    opened += 1;
                    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
                    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                    let mut buf = [0u8; 256];
                    let _ = s.read(&mut buf); // until the server closes it
                }
                opened
            })
        })
        .collect();
    // Six watchdog intervals under the flood: pings keep coming, no stage is reported stuck.
    let during = notify.during(WATCHDOG * 6);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened: u32 = attackers.into_iter().map(|a| a.join().unwrap()).sum();
    let stuck: Vec<&String> = during
        .iter()
        .filter(|m| status_of(m).is_some_and(|s| s.starts_with("watchdog:")))
        .collect();
    assert!(
        stuck.is_empty(),
        "a stage reported stuck under the flood: {stuck:?}"
    );
    let pings = during.iter().filter(|m| is("WATCHDOG=1")(m)).count();
    assert!(
        pings >= 8,
        "{pings} WATCHDOG=1 in {:?} under the flood ({opened} connections opened)",
        WATCHDOG * 6
    );
    assert!(
        opened > 16,
        "the flood held the slots and came back ({opened} connections)"
    );
    assert!(
        !d.log_text()
            .contains("no progress for longer than the watchdog interval"),
        "{}",
        d.log_text()
    );
    d.sigterm();
    assert!(d.wait_exit(Duration::from_secs(30)), "{}", d.log_text());
}

//! `holdfast demo` as a newcomer runs it: every command it prints works against it as printed
//! (status, recordings, metrics, an export with reason and purpose, a hold and its release, a
//! key-tag submit and query, the logbook check), run with bash in one shell; the console's
//! printed address serves the page; Ctrl-C (SIGINT) stops it and removes its temporary directory.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::procs::{free_port, http_get};

#[test]
fn every_printed_command_works_and_ctrl_c_removes_the_demo() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["demo", "--cameras", "2", "--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut printed = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "demo ended early: {printed:#?}"
        );
        let line = line.trim_end().to_owned();
        let done = line.starts_with("Ctrl-C stops the demo");
        printed.push(line);
        if done {
            break;
        }
    }
    let field = |name: &str| -> String {
        printed
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} line: {printed:#?}"))
            .trim()
            .to_owned()
    };
    let token = field("admin token:");
    let data_dir = PathBuf::from(field("data dir:"));
    let demo_dir = data_dir.parent().unwrap().to_path_buf();
    assert!(demo_dir.exists());
    let start = printed
        .iter()
        .position(|l| l.starts_with("Try"))
        .expect("a Try: section");
    let commands: Vec<&str> = printed[start + 1..]
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("Ctrl-C"))
        .collect();
    for what in [
        "export.mp4?",
        "reason=",
        "purpose=",
        "/api/v1/holds",
        "/release",
        "/api/v1/keytags/events -d",
        "keytags/events?tag=",
        "logbook verify --config",
    ] {
        let found = commands.iter().any(|c| c.contains(what))
            || (what == "/api/v1/keytags/events -d"
                && commands
                    .iter()
                    .any(|c| c.contains("-d") && c.ends_with("/api/v1/keytags/events")));
        assert!(found, "no command with {what:?}: {commands:#?}");
    }

    // Footage to export: wait until both cameras have durable recordings.
    let t0 = Instant::now();
    loop {
        let now = holdfast::time::Time90k::now();
        let from = support::procs::q(&holdfast::time::Time90k(now.0 - 600 * 90_000).to_rfc3339());
        let to = support::procs::q(&now.to_rfc3339());
        let (status, body) = http_get(
            listen.parse().unwrap(),
            &format!("/api/v1/cameras/demo-cam-0/recordings?from={from}&to={to}"),
            Some(&token),
        );
        if status == 200 && body.contains("\"intervals\":[{") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{status} {body}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The console's address is printed and answers with the page.
    let console = field("console:");
    assert_eq!(
        console.split_whitespace().next(),
        Some(format!("http://{listen}/").as_str()),
        "{console}"
    );
    let (status, page) = http_get(listen.parse().unwrap(), "/", None);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("/console/app.js"), "{page}");

    // All commands in one shell (the release uses $HOLD from the hold), each checked.
    let work = tempfile::tempdir().unwrap();
    let mut script = String::from("set -o pipefail\n");
    for (i, c) in commands.iter().enumerate() {
        script.push_str(&format!(
            "echo '>>> {i}'\n{c} || {{ echo \"command {i} failed: $?\" >&2; exit 1; }}\necho\n"
        ));
    }
    let run = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    let ok = run.status.success();
    if !ok {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    assert!(ok, "{commands:#?}\n{stdout}\n{stderr}");
    // What they did: a real MP4, a hold placed and released, the tag found, the logbook intact.
    let mp4 = std::fs::read(work.path().join("demo-cam-0.mp4")).unwrap();
    assert!(mp4.len() > 10_000 && &mp4[4..8] == b"ftyp", "{}", mp4.len());
    assert!(stdout.contains("x-holdfast-logbook-seq"), "{stdout}");
    assert!(stdout.contains("hold 1 placed"), "{stdout}");
    assert!(stdout.contains("\"state\":\"released\""), "{stdout}");
    assert!(stdout.contains("\"door\":\"main-entrance\""), "{stdout}");
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
    assert!(stdout.contains("logbook intact"), "{stdout}");

    // Ctrl-C: the demo stops and removes its directory.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let t0 = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the demo did not stop within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(!demo_dir.exists(), "{} is left", demo_dir.display());
}

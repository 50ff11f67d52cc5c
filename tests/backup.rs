//! `holdfast backup DIR` against the real daemon recording camsim streams: the running daemon
//! makes the RocksDB checkpoint (a second process cannot), the CLI copies it out with the logbook
//! checkpoint file and a manifest; a config pointing at the restored copy passes `holdfast
//! logbook verify` and its recordings are there and intact (`holdfast verify`). A non-empty
//! target is refused by name; two backups at once never break each other; with the daemon
//! stopped the CLI checkpoints by itself.

mod support;

use std::path::Path;
use std::time::Duration;

use holdfast::store::index::Index;
use support::procs::{holdfast, Camsim, Daemon};

fn config(sim: &Camsim) -> String {
    format!(
        "[policies.short]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n[[sites]]\nid = \"site-a\"\npolicy = \"short\"\n\n\
         [[cameras]]\nid = \"cam-0\"\nsite = \"site-a\"\nurl = \"{}\"\n\n\
         [[cameras]]\nid = \"cam-1\"\nsite = \"site-a\"\nurl = \"{}\"\n",
        sim.url(0),
        sim.url(1)
    )
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The logbook entries of an index whose action is `action`.
fn actions(index: &Index, action: &str) -> Vec<serde_json::Value> {
    index
        .logbook_entries(1)
        .map(|kv| kv.unwrap().1)
        .filter_map(|v| serde_json::from_slice::<serde_json::Value>(&v[32..]).ok())
        .filter(|e| e["action"] == action)
        .collect()
}

#[test]
fn a_backup_taken_while_recording_restores_to_a_verified_logbook_and_its_recordings() {
    let sim = Camsim::start(2);
    let mut d = Daemon::start(&config(&sim), "segment_target = \"1s\"");
    d.wait_until(Duration::from_secs(30), |d| {
        d.metric("holdfast_camera_frames_total{camera=\"cam-0\"}") > 100.0
            && d.metric("holdfast_camera_frames_total{camera=\"cam-1\"}") > 100.0
    });
    // Logged looks, then a restart (its shutdown writes a logbook checkpoint), so the backup
    // has checkpoint lines to check against.
    let now = holdfast::time::Time90k::now();
    let from = support::procs::q(&holdfast::time::Time90k(now.0 - 3600 * 90_000).to_rfc3339());
    let to = support::procs::q(&now.to_rfc3339());
    for i in 0..3 {
        let path = format!(
            "/api/v1/keytags/events?tag=A1&purpose=tag-check&reason=case-{i}&from={from}&to={to}"
        );
        let (status, body) = d.get(&path, Some(&d.token));
        assert_eq!(status, 200, "{body}");
    }
    d.restart();
    d.wait_until(Duration::from_secs(30), |d| {
        d.metric("holdfast_camera_frames_total{camera=\"cam-1\"}") > 100.0
    });
    // Let a few segments become durable.
    std::thread::sleep(Duration::from_secs(3));
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("backup");

    // A non-empty target is refused by name, and left as it was.
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("old"), b"x").unwrap();
    let (ok, out) = holdfast(&["backup", dest.to_str().unwrap()], &d.config_path());
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{} exists and is not empty", dest.display())),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 1);
    std::fs::remove_file(dest.join("old")).unwrap();

    // While it records.
    let (ok, out) = holdfast(&["backup", dest.to_str().unwrap()], &d.config_path());
    assert!(ok, "{out}\n{}", d.log_text());
    assert!(out.contains("made by the running daemon"), "{out}");
    assert!(out.contains("not included: the footage"), "{out}");
    let frames_after = d.metric("holdfast_camera_frames_total{camera=\"cam-0\"}");
    assert_eq!(d.camera_state("cam-0"), "recording");
    // No staging copy, request or answer left in the data directory.
    let leftovers: Vec<_> = std::fs::read_dir(&d.data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(manifest["daemon_running"], true);
    let files = manifest["files"].as_array().unwrap();
    // Whole checkpoint lines only, their length recorded.
    let cp = std::fs::read(dest.join("checkpoints/logbook.checkpoints")).unwrap();
    assert_eq!(cp.last(), Some(&b'\n'));
    assert_eq!(manifest["checkpoint_file_bytes"], cp.len() as u64);
    assert!(
        files.iter().any(|f| f["path"] == "index/CURRENT"),
        "{manifest}"
    );
    assert!(
        files
            .iter()
            .any(|f| f["path"] == "checkpoints/logbook.checkpoints"),
        "{manifest}"
    );
    for f in files {
        let p = dest.join(f["path"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            f["bytes"].as_u64().unwrap(),
            "{}",
            p.display()
        );
    }
    let key = d.dir().join("logbook.key");
    assert!(
        !files
            .iter()
            .any(|f| f["path"].as_str().unwrap().contains("key")),
        "{manifest}"
    );
    assert!(
        manifest["not_included"]
            .to_string()
            .contains(&key.display().to_string()),
        "{manifest}"
    );
    let backed_up_segments = {
        let copy = Index::open_read_only(&dest.join("index")).unwrap();
        let backup = actions(&copy, "store.backup");
        assert_eq!(backup.len(), 1, "{backup:?}");
        assert_eq!(backup[0]["seq"], manifest["backup_entry"], "{backup:?}");
        assert_eq!(backup[0]["object"]["dir"], dest.display().to_string());
        assert!(backup[0]["user"].as_str().unwrap().starts_with("cli:"));
        assert_eq!(
            copy.logbook_head().unwrap().unwrap().0,
            manifest["logbook_entries"].as_u64().unwrap()
        );
        let segs = copy.all_segments().unwrap();
        for cam in ["cam-0", "cam-1"] {
            assert!(
                segs.iter().filter(|s| s.camera == cam).count() >= 2,
                "{cam}: {segs:?}"
            );
        }
        segs.len()
    };

    // Two at once: one is made, the other is refused at once by name (or waits its turn and is
    // made too); nothing is left in the data directory either way.
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let runs: Vec<_> = [&a, &b]
        .into_iter()
        .map(|p| {
            std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
                .arg("backup")
                .arg(p)
                .arg("--config")
                .arg(d.config_path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = runs
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            )
        })
        .collect();
    assert!(outs.iter().any(|(ok, _)| *ok), "{outs:?}");
    eprintln!(
        "concurrent backups: {} made, {} refused",
        outs.iter().filter(|(ok, _)| *ok).count(),
        outs.iter().filter(|(ok, _)| !*ok).count()
    );
    for ((ok, out), dir) in outs.iter().zip([&a, &b]) {
        if *ok {
            assert!(dir.join("MANIFEST.json").is_file(), "{out}");
        } else {
            assert!(out.contains("another holdfast backup"), "{out}");
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(&d.data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The daemon goes on recording afterwards.
    d.wait_until(Duration::from_secs(20), |d| {
        d.metric("holdfast_camera_frames_total{camera=\"cam-0\"}") > frames_after + 50.0
    });
    d.stop();

    // Restore: the backed-up index beside the footage (which the backup does not hold), the
    // backup's checkpoint file, the same key.
    let restored = work.path().join("restored");
    copy_tree(&dest.join("index"), &restored.join("data/index"));
    copy_tree(&d.data_dir.join("buckets"), &restored.join("data/buckets"));
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    let text = text
        .replace(
            &format!("{:?}", d.data_dir.display().to_string()),
            &format!("{:?}", restored.join("data").display().to_string()),
        )
        .replace(
            &format!("{:?}", d.dir().join("checkpoints").display().to_string()),
            &format!("{:?}", dest.join("checkpoints").display().to_string()),
        );
    let restored_config = restored.join("holdfast.toml");
    std::fs::write(&restored_config, &text).unwrap();
    assert!(text.contains(restored.to_str().unwrap()), "{text}");

    let (ok, out) = holdfast(&["logbook", "verify"], &restored_config);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "logbook intact: {} entries",
            manifest["logbook_entries"]
        )),
        "{out}"
    );
    assert!(!out.contains("checkpoints: 0 checked"), "{out}");
    let (ok, out) = holdfast(&["verify"], &restored_config);
    assert!(ok, "{out}");
    let n: usize = out
        .split("verify: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(n >= backed_up_segments, "{n} < {backed_up_segments}: {out}");
    assert!(out.contains(", 0 bad"), "{out}");

    // With the daemon stopped, the command checkpoints by itself.
    let dest2 = work.path().join("backup2");
    let (ok, out) = holdfast(&["backup", dest2.to_str().unwrap()], &d.config_path());
    assert!(ok, "{out}");
    assert!(out.contains("no daemon running"), "{out}");
    let copy = Index::open_read_only(&dest2.join("index")).unwrap();
    // The first backup, the concurrent ones that were made, this one.
    let made = outs.iter().filter(|(ok, _)| *ok).count();
    assert_eq!(actions(&copy, "store.backup").len(), 2 + made);
    let (ok, out) = holdfast(&["logbook", "verify"], &d.config_path());
    assert!(ok, "{out}");
}

/// `sudo holdfast backup` and `sudo holdfast clock accept` against a daemon that runs as another
/// user (65534 here, `holdfast` in the package) and owns the data directory: root's request file
/// is given to that user, so the daemon reads it and answers (it used to delete it as invalid and
/// the CLI waited for nothing). Needs root; a few seconds.
#[test]
fn root_cli_requests_reach_a_daemon_running_as_the_data_dirs_owner() {
    use std::os::unix::fs::{chown, PermissionsExt};
    use std::os::unix::process::CommandExt;
    if !support::is_root_or_skip("(to run the daemon as uid 65534)") {
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The test binary's directory may be closed to other users (/root): a copy it can run.
    let bin = dir.path().join("holdfast");
    std::fs::copy(env!("CARGO_BIN_EXE_holdfast"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let checkpoints = dir.path().join("checkpoints");
    for d in [&data, &checkpoints] {
        std::fs::create_dir(d).unwrap();
        chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let logbook = support::procs::logbook_section(dir.path());
    chown(dir.path().join("logbook.key"), Some(NOBODY), Some(NOBODY)).unwrap();
    let port = support::procs::free_port();
    let config = dir.path().join("holdfast.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = {:?}\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n{logbook}",
            data.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = dir.path().join("holdfast.log");
    let mut child = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let t0 = std::time::Instant::now();
    while !holdfast::backup::index_locked(&data.join("index")).unwrap_or(false) {
        if t0.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon (uid {NOBODY}) did not start:\n{}", log_text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let its backup and clock threads start.
    std::thread::sleep(Duration::from_secs(1));
    let dest = dir.path().join("backup");
    let (backup_ok, backup_out) = holdfast(&["backup", dest.to_str().unwrap()], &config);
    let (_, accept_out) = holdfast(&["clock", "accept"], &config);
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup") || n.starts_with("clock"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let daemon_log = log_text();
    assert!(backup_ok, "{backup_out}\n{daemon_log}");
    assert!(
        backup_out.contains("made by the running daemon"),
        "{backup_out}"
    );
    assert!(dest.join("MANIFEST.json").is_file());
    assert!(
        !accept_out.contains("no answer from a daemon"),
        "{accept_out}\n{daemon_log}"
    );
    assert!(!daemon_log.contains("invalid"), "{daemon_log}");
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

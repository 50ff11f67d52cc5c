//! The logbook cannot be cut or forged quietly, end to end against the real daemon binary:
//! a tail cut in RocksDB with the head record rewritten is named by `holdfast logbook verify`
//! (from the checkpoint) and the daemon refuses to start on it; a head record that disagrees
//! with the last entry refuses start; entries edited and re-linked with plain SHA-256 (by
//! someone without the key) fail verify at the edited seq; `rm -rf index` + `reindex` refuses,
//! `--force` records the loss in the chain; an unkeyed chain continues keyed across a mark;
//! `GET /api/v1/logbook/head` matches the CLI; checkpoints are written every interval and
//! logged; the key file must be private and `logbook init-key` never overwrites one.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use holdfast::store::index::{Index, CF_LOGBOOK, CF_META};
use holdfast::time::Time90k;
use sha2::{Digest, Sha256};
use support::procs::{q, strip_ansi, Daemon};

const CONFIG: &str = "[policies.short]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n\
                      [[sites]]\nid = \"site-a\"\npolicy = \"short\"\n";

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

/// `n` key-tag queries as the test admin: each one is a logbook entry.
fn looks(d: &Daemon, n: usize) {
    let now = Time90k::now();
    let from = q(&Time90k(now.0 - 3600 * 90_000).to_rfc3339());
    let to = q(&now.to_rfc3339());
    for i in 0..n {
        let path = format!(
            "/api/v1/keytags/events?tag=A1&purpose=tag-check&reason=case-{i}&from={from}&to={to}"
        );
        let (status, body) = d.get(&path, Some(&d.token));
        assert_eq!(status, 200, "{body}");
    }
}

fn config_path(d: &Daemon) -> PathBuf {
    d.dir().join("holdfast.toml")
}

/// Runs a CLI command on the daemon's config: (exit code, stdout, stderr).
fn cli(d: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config_path(d))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify(d: &Daemon) -> (Option<i32>, String) {
    let (code, out, err) = cli(d, &["logbook", "verify"]);
    (code, format!("{out}{err}"))
}

/// Starts `holdfast run` on the daemon's config and expects it to exit non-zero within 30 s;
/// returns its stderr.
fn start_refused(d: &Daemon) -> String {
    let log = d.dir().join("refused.log");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config_path(d))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon did not refuse to start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "the daemon exited 0: {err}");
    err
}

fn open_index(d: &Daemon) -> Index {
    Index::open(&d.data_dir.join("index")).unwrap()
}

fn raw(index: &Index, seq: u64) -> Vec<u8> {
    let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
    index.db().get_cf(cf, seq.to_be_bytes()).unwrap().unwrap()
}

fn last_seq(index: &Index) -> u64 {
    let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
    let (k, _) = index
        .db()
        .iterator_cf(cf, rocksdb::IteratorMode::End)
        .next()
        .unwrap()
        .unwrap();
    u64::from_be_bytes((*k).try_into().unwrap())
}

fn put_head(index: &Index, seq: u64, link: &[u8]) {
    let cf = index.db().cf_handle(CF_META).unwrap();
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(link);
    index.db().put_cf(cf, b"logbook_head", v).unwrap();
}

fn delete(index: &Index, seq: u64) {
    let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
    index.db().delete_cf(cf, seq.to_be_bytes()).unwrap();
}

/// Rewrites the config's `[logbook]` section (the last one in a test config).
fn set_logbook_section(d: &Daemon, section: &str) {
    let text = std::fs::read_to_string(config_path(d)).unwrap();
    let i = text.rfind("[logbook]").unwrap();
    std::fs::write(config_path(d), format!("{}{section}", &text[..i])).unwrap();
}

fn keyed_section(d: &Daemon, extra: &str) -> String {
    format!(
        "[logbook]\nkey_file = {:?}\ncheckpoint_dir = {:?}\n{extra}",
        d.dir().join("logbook.key").display().to_string(),
        d.dir().join("checkpoints").display().to_string()
    )
}

#[test]
fn a_cut_tail_with_a_rewritten_head_is_named_and_refuses_start() {
    let mut d = Daemon::start(CONFIG, "");
    looks(&d, 6);
    d.stop(); // writes the shutdown checkpoint at seq 6
    let cps = std::fs::read_to_string(d.dir().join("checkpoints/logbook.checkpoints")).unwrap();
    assert!(cps.lines().last().unwrap().starts_with("6 "), "{cps}");
    assert_eq!(verify(&d).0, Some(0));

    // Delete entries 4..6 and make the head record agree with entry 3: the chain itself is
    // consistent, only the checkpoint outside RocksDB knows better.
    {
        let index = open_index(&d);
        assert_eq!(last_seq(&index), 6);
        for seq in 4..=6 {
            delete(&index, seq);
        }
        put_head(&index, 3, &raw(&index, 3)[..32]);
    }
    let (code, out) = verify(&d);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("first bad seq 4"), "{out}");
    assert!(
        out.contains("entries 4..6 were cut: checkpoint at seq 6"),
        "{out}"
    );

    let err = start_refused(&d);
    assert!(err.contains("entries 4..6 were cut"), "{err}");
    assert!(err.contains("holdfast logbook verify"), "{err}");
    // Still named after the refused start (nothing was appended).
    assert_eq!(verify(&d).0, Some(1));
}

#[test]
fn a_head_record_that_disagrees_with_the_last_entry_refuses_start() {
    let mut d = Daemon::start(CONFIG, "");
    looks(&d, 4);
    d.stop();
    {
        let index = open_index(&d);
        delete(&index, 4);
    }
    let err = start_refused(&d);
    assert!(
        err.contains(
            "the head record says the last entry is seq 4, but the last entry stored is seq 3"
        ),
        "{err}"
    );
    assert!(err.contains("holdfast logbook verify"), "{err}");
    let (code, out) = verify(&d);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("first bad seq 4"), "{out}");
    assert!(out.contains("entry 4 was removed from the end"), "{out}");
}

#[test]
fn entries_relinked_without_the_key_fail_verify_at_the_edit() {
    let mut d = Daemon::start(CONFIG, "");
    looks(&d, 5);
    d.stop();
    // An attacker who can write the data directory but not read the key: changes entry 3's
    // reason and recomputes every following link with plain SHA-256, and the head record.
    {
        let index = open_index(&d);
        let mut prev: [u8; 32] = raw(&index, 2)[..32].try_into().unwrap();
        for seq in 3..=5u64 {
            let v = raw(&index, seq);
            let mut e: serde_json::Value = serde_json::from_slice(&v[32..]).unwrap();
            e["prev_hash"] = hex::encode(prev).into();
            if seq == 3 {
                assert_eq!(e["reason"], "case-2");
                e["reason"] = "routine".into();
            }
            let json = serde_json::to_vec(&e).unwrap();
            let mut h = Sha256::new();
            h.update(prev);
            h.update(&json);
            let link: [u8; 32] = h.finalize().into();
            let mut nv = link.to_vec();
            nv.extend_from_slice(&json);
            let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
            index.db().put_cf(cf, seq.to_be_bytes(), nv).unwrap();
            prev = link;
        }
        put_head(&index, 5, &prev);
    }
    let (code, out) = verify(&d);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("first bad seq 3"), "{out}");
    assert!(out.contains("without the key"), "{out}");
    let err = start_refused(&d);
    assert!(err.contains("the logbook cannot be trusted"), "{err}");
}

#[test]
fn reindex_never_yields_an_empty_logbook_unless_forced_and_then_says_so() {
    let mut d = Daemon::start(CONFIG, "");
    looks(&d, 3);
    d.stop();
    std::fs::remove_dir_all(d.data_dir.join("index")).unwrap();

    let (code, out) = verify(&d);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("entries 1..3 were cut"), "{out}");

    let (code, out, err) = cli(&d, &["reindex"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("refusing to reindex"), "{err}");
    assert!(err.contains("checkpoint at seq 3"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(
        !d.data_dir.join("index").exists(),
        "a refused reindex creates no index"
    );

    // The daemon does not start on an empty logbook either (it would create a fresh index).
    let err = start_refused(&d);
    assert!(err.contains("entries 1..3 existed"), "{err}");
    let (code, out, err) = cli(&d, &["reindex"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("the logbook is empty"), "{err}");

    let (code, out, err) = cli(&d, &["reindex", "--force"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("logbook entry 1 (logbook.lost)"), "{out}");

    let (code, out) = verify(&d);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("note: entry 1 records that the logbook was lost"),
        "{out}"
    );
    d.restart();
    let lost = d.get_json("/api/v1/logbook/1");
    assert_eq!(lost["action"], "logbook.lost", "{lost}");
    assert_eq!(lost["object"]["last_checkpoint"]["seq"], 3, "{lost}");
    looks(&d, 1);
    d.stop();
    let (code, out) = verify(&d);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("logbook intact: 2 entries"), "{out}");
}

#[test]
fn an_unkeyed_chain_continues_keyed_from_a_mark() {
    let mut d = Daemon::start(CONFIG, "");
    d.stop();
    let unkeyed = format!(
        "[logbook]\nunkeyed = true\ncheckpoint_dir = {:?}\n",
        d.dir().join("checkpoints").display().to_string()
    );
    set_logbook_section(&d, &unkeyed);
    d.restart();
    looks(&d, 3);
    let head = d.get_json("/api/v1/logbook/head");
    assert_eq!(
        (head["seq"].as_u64(), head["keyed"].as_bool()),
        (Some(3), Some(false))
    );
    d.stop();
    assert_eq!(verify(&d).0, Some(0));

    set_logbook_section(&d, &keyed_section(&d, ""));
    // The daemon never seals by itself: it refuses until an operator runs `logbook seal`.
    let err = start_refused(&d);
    assert!(err.contains("holdfast logbook seal"), "{err}");
    let (code, out, errout) = cli(&d, &["logbook", "seal"]);
    assert_eq!(code, Some(0), "{out}{errout}");
    d.restart();
    let head = d.get_json("/api/v1/logbook/head");
    assert_eq!(
        (head["seq"].as_u64(), head["keyed"].as_bool()),
        (Some(4), Some(true))
    );
    let mark = d.get_json("/api/v1/logbook/4");
    assert_eq!(mark["action"], "logbook.keyed", "{mark}");
    looks(&d, 2);
    d.stop();
    let (code, out) = verify(&d);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("logbook intact: 6 entries"), "{out}");
    assert!(
        out.contains("plain SHA-256 up to seq 3, keyed (HMAC-SHA256) from seq 4"),
        "{out}"
    );
    let checked: u64 = out
        .split("checkpoints: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(checked >= 2, "{out}");

    // Back to unkeyed is refused: new entries would not be keyed.
    set_logbook_section(&d, &unkeyed);
    let err = start_refused(&d);
    assert!(err.contains("keyed"), "{err}");
}

#[test]
fn the_head_route_matches_the_cli_and_checkpoints_are_written_every_interval() {
    let mut d = Daemon::start(CONFIG, "");
    d.stop();
    set_logbook_section(&d, &keyed_section(&d, "checkpoint_interval = \"1s\"\n"));
    d.restart();
    looks(&d, 3);
    let head = d.get_json("/api/v1/logbook/head");
    assert_eq!(head["seq"], 3, "{head}");
    assert_eq!(head["keyed"], true, "{head}");
    let mac = head["mac"].as_str().unwrap().to_owned();
    assert_eq!(mac.len(), 64);
    assert!(Time90k::parse_rfc3339(head["time"].as_str().unwrap()).is_ok());
    assert_eq!(d.get_json("/api/v1/logbook/3")["hash"], mac.as_str());

    // The checkpoint thread writes the moved head within a few intervals, and logs it.
    let file = d.dir().join("checkpoints/logbook.checkpoints");
    d.wait_until(Duration::from_secs(10), |_| {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("3 "))
    });
    let lines = std::fs::read_to_string(&file).unwrap();
    let n = lines.lines().count();
    assert!(lines.lines().last().unwrap().starts_with("3 "), "{lines}");
    let log = strip_ansi(&d.log_text());
    assert!(
        log.lines()
            .any(|l| l.contains("logbook checkpoint") && l.contains("seq=3") && l.contains("mac=")),
        "no checkpoint in the log"
    );
    // Verify works while the daemon runs, and agrees with the route.
    let (code, out) = verify(&d);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("logbook intact: 3 entries, head hash {mac}")),
        "{out}"
    );
    assert!(out.contains(&format!("checkpoints: {n} checked")), "{out}");
    assert!(out.contains("keyed (HMAC-SHA256) from seq 1"), "{out}");
    let v = d.get_json("/api/v1/logbook/verify");
    assert_eq!(
        (v["ok"].as_bool(), v["entries"].as_u64()),
        (Some(true), Some(3)),
        "{v}"
    );
    assert_eq!(v["head_hash"], mac.as_str());
    // An idle head writes no more checkpoints.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), n);
    // The route needs a token (and that refusal is itself an entry).
    assert_eq!(d.get("/api/v1/logbook/head", None).0, 401);
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&d.dir().join("checkpoints")), 0o700);
    assert_eq!(mode(&file), 0o600);
}

#[test]
fn the_key_file_must_be_private_and_init_key_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Daemon::start(CONFIG, "");
    d.stop();
    let key = d.dir().join("logbook.key");
    let secret = std::fs::read_to_string(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = start_refused(&d);
    assert!(
        err.contains("logbook.key_file") && err.contains("0644"),
        "{err}"
    );
    assert!(!err.contains(secret.trim()));

    // init-key refuses to replace it.
    let (code, out, err) = cli(&d, &["logbook", "init-key"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), secret);

    // A new key in a directory that does not exist yet: created 0700, the key 0600.
    let new_key = d.dir().join("keys/holdfast/logbook.key");
    let section = format!(
        "[logbook]\nkey_file = {:?}\ncheckpoint_dir = {:?}\n",
        new_key.display().to_string(),
        d.dir().join("checkpoints").display().to_string()
    );
    set_logbook_section(&d, &section);
    let (code, out, err) = cli(&d, &["logbook", "init-key"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&new_key.display().to_string()), "{out}");
    let written = std::fs::read_to_string(&new_key).unwrap();
    assert_eq!(written.trim().len(), 64);
    assert!(!out.contains(written.trim()), "the key is never printed");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&new_key), 0o600);
    assert_eq!(mode(new_key.parent().unwrap()), 0o700);
    // The daemon runs with it (the logbook was empty, so no other key ever linked it).
    d.restart();
    looks(&d, 1);
    d.stop();
    assert_eq!(verify(&d).0, Some(0));
}

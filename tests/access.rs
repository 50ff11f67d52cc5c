//! Users, roles and the logbook, end to end against a daemon recording a real RTSP camera:
//! every row of the role table (allowed and forbidden), site scope, 401s, that every export,
//! view and key-tag query is in the logbook with its reason, that exports decode cleanly with
//! ffmpeg, that a key-tag batch with a bad line stores nothing, and that editing the logbook in
//! RocksDB is found by `holdfast logbook verify`.

mod support;

use std::process::Command;
use std::time::Duration;

use holdfast::time::Time90k;
use support::procs::{
    ffmpeg_errors, ffprobe, http_get_bytes, http_post, q, user, Daemon, RtspServer, ADMIN_TOKEN,
    PRIVACY_TOKEN,
};

const CONSULTANT: &str = "tok-consultant-0123456789";
const CARETAKER: &str = "tok-caretaker-0123456789";
const CARETAKER_B: &str = "tok-caretaker-b-0123456789";
const TECHNICIAN: &str = "tok-technician-0123456789";
const ACCESS: &str = "tok-access-system-0123456789";
const AUDITOR: &str = "tok-auditor-0123456789";

fn config(url: &str) -> String {
    let mut c = String::from(
        "[policies.short]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n\
         [[sites]]\nid = \"site-a\"\npolicy = \"short\"\n\n\
         [[sites]]\nid = \"site-b\"\npolicy = \"short\"\n",
    );
    c.push_str(&format!(
        "\n[[cameras]]\nid = \"cam-a\"\nsite = \"site-a\"\nurl = \"{url}\"\n\n\
         [[cameras]]\nid = \"cam-b\"\nsite = \"site-b\"\nurl = \"rtsp://127.0.0.1:9/none\"\n"
    ));
    c.push_str(&user(
        "c.consultant",
        "consultant",
        CONSULTANT,
        "[\"site-a\"]",
    ));
    c.push_str(&user("k.caretaker", "caretaker", CARETAKER, "[\"site-a\"]"));
    c.push_str(&user(
        "b.caretaker",
        "caretaker",
        CARETAKER_B,
        "[\"site-b\"]",
    ));
    c.push_str(&user("t.technician", "technician", TECHNICIAN, "[\"*\"]"));
    c.push_str(&user(
        "door-system",
        "access_system",
        ACCESS,
        "[\"site-a\"]",
    ));
    c.push_str(&user("a.auditor", "auditor", AUDITOR, "[\"*\"]"));
    c
}

fn get(d: &Daemon, path: &str, token: &str) -> u16 {
    d.get(path, Some(token)).0
}

fn post(d: &Daemon, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
    let (s, b) = http_post(d.addr, path, Some(token), body);
    (
        s,
        serde_json::from_str(&b).unwrap_or(serde_json::Value::String(b)),
    )
}

fn allowed(status: u16) -> bool {
    (200..300).contains(&status)
}

#[test]
fn roles_scope_logbook_exports_and_keytags() {
    let server = RtspServer::start(&["--cameras", "1"]);
    let mut d = Daemon::start(&config(&server.url("/cam0")), "segment_target = \"1s\"");
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("cam-a") == "recording"
    });
    std::thread::sleep(Duration::from_secs(6));
    let from = Time90k::now().add_ticks(-120 * 90_000).to_rfc3339();
    let to = Time90k::now().to_rfc3339();
    let range = format!("from={}&to={}", q(&from), q(&to));

    // 401: no token, an unknown token.
    assert_eq!(d.get("/api/v1/cameras", None).0, 401);
    assert_eq!(get(&d, "/api/v1/cameras", "not-a-token"), 401);

    let roles: [(&str, &str); 7] = [
        ("manager", ADMIN_TOKEN),
        ("consultant", CONSULTANT),
        ("caretaker", CARETAKER),
        ("technician", TECHNICIAN),
        ("privacy_officer", PRIVACY_TOKEN),
        ("access_system", ACCESS),
        ("auditor", AUDITOR),
    ];
    let hold_body = format!(
        r#"{{"cameras":["cam-a"],"from":"{from}","to":"{to}","reason":"role matrix","reference":"INC-1"}}"#
    );
    let mut denials = 0;
    let mut seen = Vec::new();
    for (role, tok) in roles {
        // A hold for this role to try to release (placed by the manager).
        let (s, h) = post(&d, "/api/v1/holds", ADMIN_TOKEN, &hold_body);
        assert_eq!(s, 201, "{h}");
        let hold_id = h["id"].as_u64().unwrap();
        let export = |purpose: &str| {
            format!("/api/v1/cameras/cam-a/export.mp4?{range}&reason=role-matrix{purpose}")
        };
        let results: Vec<(&str, u16)> = vec![
            ("cameras_status", get(&d, "/api/v1/cameras", tok)),
            ("export", http_get_bytes(d.addr, &export(""), Some(tok)).0),
            (
                "export:subject-access",
                http_get_bytes(d.addr, &export("&purpose=subject-access"), Some(tok)).0,
            ),
            (
                "export:technical",
                http_get_bytes(d.addr, &export("&purpose=technical"), Some(tok)).0,
            ),
            (
                "view:technical",
                http_get_bytes(
                    d.addr,
                    &format!(
                        "/api/v1/cameras/cam-a/view.mp4?{range}&reason=role-matrix&purpose=technical"
                    ),
                    Some(tok),
                )
                .0,
            ),
            ("place_hold", post(&d, "/api/v1/holds", tok, &hold_body).0),
            (
                "release_hold",
                post(
                    &d,
                    &format!("/api/v1/holds/{hold_id}/release"),
                    tok,
                    r#"{"reason":"matrix"}"#,
                )
                .0,
            ),
            (
                "erase",
                post(
                    &d,
                    "/api/v1/erasures",
                    tok,
                    r#"{"camera":"cam-a","from":"2020-01-01T00:00:00Z","to":"2020-01-02T00:00:00Z","reason":"data subject request"}"#,
                )
                .0,
            ),
            (
                "keytags_read",
                get(
                    &d,
                    &format!("/api/v1/keytags/events?tag=A1&purpose=tag-check&reason=role-matrix&{range}"),
                    tok,
                ),
            ),
            (
                "keytags_write",
                post(
                    &d,
                    "/api/v1/keytags/events",
                    tok,
                    &format!(r#"[{{"tag":"Z9","door":"main","time":"{to}","site":"site-a"}}]"#),
                )
                .0,
            ),
            ("logbook_read", get(&d, "/api/v1/logbook", tok)),
            (
                "sign_off",
                post(&d, "/api/v1/logbook/1/signoff", tok, r#"{"note":"seen"}"#).0,
            ),
        ];
        let expect: &[&str] = match role {
            "manager" => &[
                "cameras_status",
                "export",
                "export:subject-access",
                "export:technical",
                "view:technical",
                "place_hold",
                "release_hold",
                "keytags_read",
                "logbook_read",
                "sign_off",
            ],
            "consultant" | "caretaker" => &[
                "cameras_status",
                "export",
                "export:subject-access",
                "export:technical",
                "view:technical",
                "place_hold",
            ],
            "technician" => &["cameras_status", "view:technical"],
            "privacy_officer" => &[
                "cameras_status",
                "export:subject-access",
                "place_hold",
                "release_hold",
                "erase",
                "keytags_read",
                "logbook_read",
                "sign_off",
            ],
            "access_system" => &["keytags_write"],
            "auditor" => &["cameras_status", "logbook_read"],
            _ => unreachable!(),
        };
        for (what, status) in results {
            let want = expect.contains(&what);
            assert_eq!(
                allowed(status),
                want,
                "{role} {what}: HTTP {status}, expected {}",
                if want { "allowed" } else { "403" }
            );
            if !want {
                assert_eq!(status, 403, "{role} {what}");
                denials += 1;
            }
            seen.push((role, what, status));
        }
    }
    eprintln!("role matrix: {} checks, {denials} refused", seen.len());

    // Site scope: a caretaker of site B sees neither camera A nor its footage; camera A is
    // answered like a camera that does not exist.
    let cams = d.get("/api/v1/cameras", Some(CARETAKER_B)).1;
    assert!(cams.contains("cam-b") && !cams.contains("cam-a"), "{cams}");
    let export_a = format!("/api/v1/cameras/cam-a/export.mp4?{range}&reason=curious");
    assert_eq!(http_get_bytes(d.addr, &export_a, Some(CARETAKER_B)).0, 404);
    let (s, err) = post(&d, "/api/v1/holds", CARETAKER_B, &hold_body);
    assert_eq!(s, 400, "{err}");
    assert_eq!(err["detail"]["field"], "cameras[0]", "{err}");
    // Reason is required (400 naming it), and an empty range is a 404.
    let (s, _, body) = http_get_bytes(
        d.addr,
        &format!("/api/v1/cameras/cam-a/export.mp4?{range}"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(s, 400);
    assert!(String::from_utf8_lossy(&body).contains("reason"));
    let old = format!(
        "/api/v1/cameras/cam-a/export.mp4?from={}&to={}&reason=x",
        q("2020-01-01T00:00:00Z"),
        q("2020-01-01T01:00:00Z")
    );
    assert_eq!(http_get_bytes(d.addr, &old, Some(ADMIN_TOKEN)).0, 404);

    // An export plays: ffprobe counts the frames the logbook says were exported, ffmpeg decodes
    // every one without a complaint.
    let (s, head, mp4) = http_get_bytes(
        d.addr,
        &format!("/api/v1/cameras/cam-a/export.mp4?{range}&reason=incident-42&recipient=police&reference=PL-42"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(s, 200, "{head}");
    let seq: u64 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-holdfast-logbook-seq: ")
                .map(str::to_owned)
        })
        .expect("logbook seq header")
        .trim()
        .parse()
        .unwrap();
    let clip = d.dir().join("clip.mp4");
    std::fs::write(&clip, &mp4).unwrap();
    let logged = d.get_json(&format!("/api/v1/logbook/{seq}"));
    assert_eq!(logged["action"], "export");
    assert_eq!(logged["reason"], "incident-42");
    assert_eq!(logged["recipient"], "police");
    assert_eq!(logged["reference"], "PL-42");
    let (frames, secs, codec) = ffprobe(&clip);
    assert_eq!(codec, "h264");
    assert_eq!(frames, logged["object"]["frames"].as_u64().unwrap());
    assert!(frames > 100 && secs > 4.0, "{frames} frames, {secs} s");
    let errors = ffmpeg_errors(&clip);
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");

    // Key tags: a batch with a bad line in the middle stores nothing and names line 2.
    let t = Time90k::now().to_rfc3339();
    let bad = format!(
        "{{\"tag\":\"K1\",\"door\":\"main\",\"time\":\"{t}\"}}\n{{\"tag\":\"K2\",\"door\":\"main\",\"time\":\"not a time\"}}\n{{\"tag\":\"K3\",\"door\":\"main\",\"time\":\"{t}\"}}\n"
    );
    let (s, err) = post(&d, "/api/v1/keytags/events", ACCESS, &bad);
    assert_eq!(s, 400, "{err}");
    assert_eq!(err["detail"]["line"], 2, "{err}");
    let range2 = format!(
        "from={}&to={}",
        q(&Time90k::now().add_ticks(-60 * 90_000).to_rfc3339()),
        q(&Time90k::now().add_ticks(60 * 90_000).to_rfc3339())
    );
    let k1 = format!("/api/v1/keytags/events?tag=K1&purpose=tag-check&reason=lost+tag+K1&{range2}");
    let found: serde_json::Value = serde_json::from_str(&d.get(&k1, Some(ADMIN_TOKEN)).1).unwrap();
    assert_eq!(
        found["events"].as_array().unwrap().len(),
        0,
        "nothing stored"
    );
    let good = bad.replace("not a time", &t);
    let (s, r) = post(&d, "/api/v1/keytags/events", ACCESS, &good);
    assert_eq!((s, r["stored"].as_u64()), (200, Some(3)), "{r}");
    let (s, r) = post(&d, "/api/v1/keytags/events", ACCESS, &good);
    assert_eq!(
        (s, r["duplicates"].as_u64()),
        (200, Some(3)),
        "idempotent: {r}"
    );
    let found: serde_json::Value = serde_json::from_str(&d.get(&k1, Some(ADMIN_TOKEN)).1).unwrap();
    assert_eq!(found["events"].as_array().unwrap().len(), 1);
    let witness =
        format!("/api/v1/keytags/events?door=main&{range2}&purpose=witness-search&reason=break-in");
    let found: serde_json::Value =
        serde_json::from_str(&d.get(&witness, Some(PRIVACY_TOKEN)).1).unwrap();
    assert_eq!(found["events"].as_array().unwrap().len(), 4, "{found}");
    let (s, body) = d.get(
        "/api/v1/keytags/events?door=main&purpose=tag-check&reason=x&from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z",
        Some(ADMIN_TOKEN),
    );
    assert_eq!(s, 400, "a door query is not a tag check: {body}");
    assert!(body.contains("purpose"));

    // The logbook: every export/view and key-tag query with its reason, every refusal.
    let book = d.get_json("/api/v1/logbook");
    let entries = book["entries"].as_array().unwrap();
    let mut exports = 0;
    for e in entries {
        let action = e["action"].as_str().unwrap();
        if matches!(action, "export" | "view" | "keytags.query") {
            assert!(
                e["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "logged without reason: {e}"
            );
            exports += 1;
        }
    }
    // Refusals: the handler's own entries (with what was asked, one each) and the coalesced
    // entries of the others (per source, route and status per minute; tests/floods.rs checks
    // their counts): so far, the first of each window is written.
    let refused: Vec<_> = entries
        .iter()
        .filter(|e| {
            let a = e["action"].as_str().unwrap_or("");
            (a == "denied" || a.ends_with(".refused"))
                && e["object"]["status"]
                    .as_u64()
                    .is_some_and(|s| s == 401 || s == 403)
        })
        .collect();
    let counted: u64 = refused
        .iter()
        .map(|e| e["object"]["count"].as_u64().unwrap_or(1))
        .sum();
    assert!(
        refused.iter().any(|e| e["action"] == "denied")
            && refused.iter().any(|e| e["action"] == "export.refused")
            && counted as usize <= denials + 2,
        "{} refusal entries standing for {counted}, {denials}+2 made",
        refused.len()
    );
    assert!(entries.iter().any(|e| e["action"] == "hold.release"));
    assert!(entries.iter().any(|e| e["action"] == "erasure"));
    assert!(entries
        .iter()
        .any(|e| e["action"] == "signoff" && e["refers_to"] == 1));
    assert!(exports >= 15, "{exports} looks logged");
    let v = d.get_json("/api/v1/logbook/verify");
    assert_eq!(v["ok"], true, "{v}");
    assert!(d.metric("holdfast_logbook_entries_total") >= entries.len() as f64);
    d.stop();

    // Tampering: change one stored entry, `holdfast logbook verify` exits 1 naming its seq.
    let config = d.dir().join("holdfast.toml");
    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_holdfast"))
            .args(["logbook", "verify", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    {
        let index = holdfast::store::index::Index::open(&d.data_dir.join("index")).unwrap();
        let cf = index
            .db()
            .cf_handle(holdfast::store::index::CF_LOGBOOK)
            .unwrap();
        let key = seq.to_be_bytes();
        let v = index.db().get_cf(cf, key).unwrap().unwrap();
        let forged = String::from_utf8(v[32..].to_vec())
            .unwrap()
            .replace("incident-42", "incident-43");
        let mut nv = v[..32].to_vec();
        nv.extend_from_slice(forged.as_bytes());
        index.db().put_cf(cf, key, nv).unwrap();
    }
    let bad = verify();
    let out = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("first bad seq {seq}")), "{out}");
}

#[test]
fn with_a_certificate_the_api_speaks_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::procs::self_signed_cert(dir.path());
    let port = support::procs::free_port();
    let config = dir.path().join("holdfast.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = {:?}\n\n[http]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = {:?}\ntls_key = {:?}\n{}",
            dir.path().join("data").display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            user("a.auditor", "auditor", AUDITOR, "[\"*\"]")
                + &support::procs::logbook_section(dir.path()),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let curl = |url: &str, token: Option<&str>| -> String {
        let mut c = Command::new("curl");
        c.args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
        ]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        String::from_utf8(c.arg(url).output().unwrap().stdout).unwrap()
    };
    let https = format!("https://127.0.0.1:{port}");
    let t0 = std::time::Instant::now();
    while curl(&format!("{https}/healthz"), None) != "200" {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "HTTPS never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        curl(&format!("{https}/api/v1/logbook"), Some(AUDITOR)),
        "200"
    );
    assert_eq!(curl(&format!("{https}/api/v1/logbook"), None), "401");
    // Plain HTTP on the same port gets no answer.
    assert_ne!(
        curl(&format!("http://127.0.0.1:{port}/healthz"), None),
        "200"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "clean shutdown: {status:?}");
}

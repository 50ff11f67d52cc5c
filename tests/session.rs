//! Console sessions and the console's files against the real daemon binary.
//!
//! - Sign-in: the cookie's flags (no `Secure` on plain HTTP, `Secure` with TLS), a body without
//!   the token, errors naming the field; cookie authentication on existing routes; the CSRF
//!   header and `Origin` checks on cookie requests (bearer requests untouched); sign-out; a
//!   reload that removes the user ends the session; the idle timeout (`session_idle = "2s"`)
//!   answers 401 and writes one `session.end`; `session.start` names the remote address; no
//!   token, session id or CSRF token in the daemon's log, the logbook or any file of the data
//!   directory.
//! - The console: `GET /` and `/console/app.js` with CSP, nosniff, no-referrer, no-cache and an
//!   ETag (`If-None-Match` → 304), an unknown file or a path outside `console/` → 404.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::procs::{http_raw, logbook_section, metric_value, user, Daemon, RawResponse};

const CARETAKER: &str = "caretaker-token-0123456789abcdef0123";
const SITE: &str = "[policies.standard]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n\
    [[sites]]\nid = \"maas-noord\"\npolicy = \"standard\"\n\n\
    [[cameras]]\nid = \"noord-1\"\nsite = \"maas-noord\"\nurl = \"rtsp://127.0.0.1:9/none\"\n";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn caretaker() -> String {
    user("c.aretaker", "caretaker", CARETAKER, "[\"maas-noord\"]")
}

fn sign_in(d: &Daemon, token: &str) -> RawResponse {
    http_raw(
        d.addr,
        "POST",
        "/api/v1/session",
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", "session-test/1.0"),
        ],
        Some(&format!("{{\"token\": \"{token}\"}}")),
    )
}

/// A request with the session cookie and any other headers.
fn with_cookie(
    d: &Daemon,
    method: &str,
    path: &str,
    cookie: &str,
    extra: &[(&str, &str)],
    body: Option<&str>,
) -> RawResponse {
    let c = format!("holdfast_session={cookie}");
    let mut headers = vec![("Cookie", c.as_str()), ("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    http_raw(d.addr, method, path, &headers, body)
}

/// Every logbook entry with `action` (read as the test admin).
fn entries(d: &Daemon, action: &str) -> Vec<serde_json::Value> {
    let r = http_raw(
        d.addr,
        "GET",
        "/api/v1/logbook?limit=1000",
        &[("Authorization", &format!("Bearer {}", d.token))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut out = Vec::new();
    find(&r.json(), action, &mut out);
    out
}

fn find(v: &serde_json::Value, action: &str, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("action").and_then(|a| a.as_str()) == Some(action) {
                out.push(v.clone());
                return;
            }
            m.values().for_each(|x| find(x, action, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find(x, action, out)),
        _ => {}
    }
}

/// The 16-hex tag of a session id as the logbook names it.
fn tag(cookie: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(cookie.as_bytes())[..8])
}

/// Whether any file under `dir` contains `needle`.
/// Waits (up to 10 s) for the `session.end` entry of the session of `cookie` with `why`.
fn wait_for_end(d: &Daemon, cookie: &str, why: &str) {
    d.wait_until(Duration::from_secs(10), |d| {
        entries(d, "session.end")
            .iter()
            .any(|e| e["object"]["session"] == tag(cookie).as_str() && e["object"]["why"] == why)
    });
}

fn any_file_contains(dir: &Path, needle: &[u8]) -> Option<String> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(hit) = any_file_contains(&p, needle) {
                return Some(hit);
            }
        } else if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Some(p.display().to_string());
            }
        }
    }
    None
}

#[test]
fn sign_in_cookie_csrf_origin_sign_out_and_a_reload_that_removes_the_user() {
    let rest = format!("{SITE}{}", caretaker());
    let d = Daemon::start(&rest, "");
    let origin = format!("http://{}", d.addr);

    // Malformed, oversized and wrong sign-ins name what was wrong.
    let r = http_raw(
        d.addr,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        Some("{\"tok\": 1}"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http_raw(d.addr, "POST", "/api/v1/session", &[], Some("{}"));
    assert_eq!(
        (r.status, r.json()["detail"]["field"].as_str()),
        (400, Some("token"))
    );
    let big = format!("{{\"token\": \"{}\"}}", "x".repeat(5000));
    assert_eq!(
        http_raw(d.addr, "POST", "/api/v1/session", &[], Some(&big)).status,
        413
    );
    let r = sign_in(&d, "not-a-token-of-anyone");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["detail"]["field"], "token");
    assert!(r.cookie("holdfast_session").is_none());
    // A sign-in from another site's page is refused.
    let r = http_raw(
        d.addr,
        "POST",
        "/api/v1/session",
        &[("Origin", "http://evil.example")],
        Some(&format!("{{\"token\": \"{CARETAKER}\"}}")),
    );
    assert_eq!(r.status, 403, "{}", r.body);

    // Sign-in: the cookie's flags, a body without the token.
    let r = sign_in(&d, CARETAKER);
    assert_eq!(r.status, 201, "{}", r.body);
    let set_cookie = r.header("set-cookie").unwrap().to_owned();
    let parts: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    for flag in ["Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(parts.contains(&flag), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "no TLS, no Secure: {set_cookie}"
    );
    assert!(!set_cookie.contains("Max-Age"), "{set_cookie}");
    let cookie = r.cookie("holdfast_session").unwrap();
    assert_eq!(cookie.len(), 43, "{cookie}");
    assert!(!r.body.contains(CARETAKER), "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(csrf.len(), 43);
    assert_ne!(csrf, cookie);
    assert_eq!(body["user"], "c.aretaker");
    assert_eq!(body["role"], "caretaker");
    assert_eq!(body["sites"], serde_json::json!(["maas-noord"]));
    assert_eq!(
        body["permissions"],
        serde_json::json!(["cameras_status", "place_hold"])
    );
    assert_eq!(body["footage"]["export"], "any");
    assert_eq!(body["timezone"], "Europe/Amsterdam");
    assert_eq!(body["idle_timeout_secs"], 900);

    // The cookie authenticates existing routes; GET needs no CSRF header.
    let r = with_cookie(&d, "GET", "/api/v1/session", &cookie, &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["csrf_token"], csrf.as_str());
    let r = with_cookie(&d, "GET", "/api/v1/cameras", &cookie, &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // The role still applies through the cookie.
    let r = with_cookie(&d, "GET", "/api/v1/logbook", &cookie, &[], None);
    assert_eq!(r.status, 403, "{}", r.body);

    // A state-changing request needs the CSRF header.
    let post = |extra: &[(&str, &str)]| {
        with_cookie(&d, "POST", "/api/v1/holds", &cookie, extra, Some("{}"))
    };
    let r = post(&[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "missing or wrong CSRF token");
    // The token with its last character changed (to one it does not already have).
    let last = if csrf[42..].starts_with('A') {
        'B'
    } else {
        'A'
    };
    let wrong = format!("{}{last}", &csrf[..42]);
    assert_eq!(post(&[("X-CSRF-Token", &wrong)]).status, 403);
    let r = post(&[("X-CSRF-Token", &csrf)]);
    assert_eq!(r.status, 400, "the route's own answer: {}", r.body);
    let r = post(&[("X-CSRF-Token", &csrf), ("Origin", &origin)]);
    assert_eq!(r.status, 400, "{}", r.body);
    // A foreign Origin is refused on cookie requests, GET included.
    let r = post(&[("X-CSRF-Token", &csrf), ("Origin", "http://evil.example")]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = with_cookie(
        &d,
        "GET",
        "/api/v1/cameras",
        &cookie,
        &[("Origin", "http://evil.example")],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);

    // Bearer requests need neither; a wrong bearer is 401 even with a good cookie.
    let bearer = format!("Bearer {CARETAKER}");
    let r = http_raw(
        d.addr,
        "POST",
        "/api/v1/holds",
        &[
            ("Authorization", &bearer),
            ("Origin", "http://evil.example"),
        ],
        Some("{}"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http_raw(
        d.addr,
        "GET",
        "/api/v1/session",
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["csrf_token"].is_null());
    let r = with_cookie(
        &d,
        "GET",
        "/api/v1/session",
        &cookie,
        &[("Authorization", "Bearer wrong-token")],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);

    // Sign-out: CSRF checked, 204, the cookie cleared and no longer accepted.
    let r = with_cookie(&d, "DELETE", "/api/v1/session", &cookie, &[], None);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = with_cookie(
        &d,
        "DELETE",
        "/api/v1/session",
        &cookie,
        &[("X-CSRF-Token", &csrf)],
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let cleared = r.header("set-cookie").unwrap();
    assert!(
        cleared.starts_with("holdfast_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let r = with_cookie(&d, "GET", "/api/v1/session", &cookie, &[], None);
    assert_eq!(r.status, 401, "{}", r.body);

    // The logbook: who signed in, from where; the sign-out.
    let starts = entries(&d, "session.start");
    assert_eq!(starts.len(), 1, "{starts:?}");
    let s = &starts[0];
    assert_eq!(s["user"], "c.aretaker");
    assert_eq!(s["object"]["remote"], "127.0.0.1");
    assert_eq!(s["object"]["tls"], false);
    assert_eq!(s["object"]["user_agent"], "session-test/1.0");
    assert_eq!(s["object"]["session"], tag(&cookie).as_str());
    assert_eq!(s["sites"], serde_json::json!(["maas-noord"]));
    let ends = entries(&d, "session.end");
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["object"]["why"], "signed out");
    assert_eq!(ends[0]["object"]["session"], tag(&cookie).as_str());

    // Another page of the same site (another port, a sibling host) cannot use the cookie:
    // the browser names it in Sec-Fetch-Site. The page itself and a typed address can.
    let r = sign_in(&d, CARETAKER);
    assert_eq!(r.status, 201, "{}", r.body);
    let cookie1 = r.cookie("holdfast_session").unwrap();
    let csrf1 = r.json()["csrf_token"].as_str().unwrap().to_owned();
    for (site, want) in [
        ("same-site", 403),
        ("cross-site", 403),
        ("same-origin", 200),
        ("none", 200),
    ] {
        let r = with_cookie(
            &d,
            "GET",
            "/api/v1/cameras",
            &cookie1,
            &[("Sec-Fetch-Site", site)],
            None,
        );
        assert_eq!(r.status, want, "{site}: {}", r.body);
    }
    // A GET that writes a logbook entry (footage by range, a key-tag query) needs the CSRF
    // token, so that no <video>/<img> of another page can make an entry in the user's name.
    let view = "/api/v1/cameras/noord-1/view.mp4?from=2026-01-01T00:00:00Z&to=2026-01-01T00:01:00Z&reason=x";
    let r = with_cookie(&d, "GET", view, &cookie1, &[], None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "missing or wrong CSRF token");
    let r = with_cookie(&d, "GET", view, &cookie1, &[("X-CSRF-Token", &csrf1)], None);
    // Past the CSRF check, the route's own answer: nothing is recorded in that range.
    assert_eq!(r.status, 404, "{}", r.body);
    let err = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("is recorded in that range"), "{err}");
    // Signing in again from the same browser ends the session it had.
    let r = with_cookie(
        &d,
        "POST",
        "/api/v1/session",
        &cookie1,
        &[("User-Agent", "session-test/1.0")],
        Some(&format!("{{\"token\": \"{CARETAKER}\"}}")),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let cookie2 = r.cookie("holdfast_session").unwrap();
    let csrf2 = r.json()["csrf_token"].as_str().unwrap().to_owned();
    let r = with_cookie(&d, "GET", "/api/v1/cameras", &cookie1, &[], None);
    assert_eq!(r.status, 401, "{}", r.body);
    wait_for_end(&d, &cookie1, "replaced");

    // A reload that gives the user a new token (the old one leaked) ends the sessions opened
    // with the old one.
    assert_eq!(
        with_cookie(&d, "GET", "/api/v1/cameras", &cookie2, &[], None).status,
        200
    );
    let path = d.config_path();
    let reloads = |d: &Daemon| {
        let (_, m) = d.get("/metrics", None);
        metric_value(&m, "holdfast_config_reloads_total{result=\"ok\"}").unwrap_or(0.0)
    };
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&caretaker()));
    let renewed = user(
        "c.aretaker",
        "caretaker",
        "caretaker-new-token-0123456789abcdef",
        "[\"maas-noord\"]",
    );
    std::fs::write(&path, text.replacen(&caretaker(), &renewed, 1)).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_until(Duration::from_secs(30), |d| reloads(d) >= 1.0);
    let r = with_cookie(&d, "GET", "/api/v1/cameras", &cookie2, &[], None);
    assert_eq!(r.status, 401, "{}", r.body);
    wait_for_end(&d, &cookie2, "token changed");

    // A reload that removes the user ends their session at once.
    let r = sign_in(&d, "caretaker-new-token-0123456789abcdef");
    assert_eq!(r.status, 201, "{}", r.body);
    let cookie2 = r.cookie("holdfast_session").unwrap();
    assert_eq!(
        with_cookie(&d, "GET", "/api/v1/cameras", &cookie2, &[], None).status,
        200
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&renewed));
    std::fs::write(&path, text.replacen(&renewed, "", 1)).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_until(Duration::from_secs(30), |d| reloads(d) >= 2.0);
    let r = with_cookie(&d, "GET", "/api/v1/cameras", &cookie2, &[], None);
    assert_eq!(r.status, 401, "{}", r.body);
    d.wait_until(Duration::from_secs(10), |d| {
        entries(d, "session.end")
            .iter()
            .any(|e| e["object"]["session"] == tag(&cookie2).as_str())
    });
    let ends = entries(&d, "session.end");
    let mine: Vec<_> = ends
        .iter()
        .filter(|e| e["object"]["session"] == tag(&cookie2).as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{ends:?}");
    assert_eq!(mine[0]["object"]["why"], "user removed");

    // No token, session id or CSRF token anywhere: log, logbook, data and checkpoint files.
    let log = d.log_text();
    let book = http_raw(
        d.addr,
        "GET",
        "/api/v1/logbook?limit=1000",
        &[("Authorization", &format!("Bearer {}", d.token))],
        None,
    )
    .body;
    assert!(
        log.contains("console session started"),
        "the log has the events"
    );
    for secret in [
        CARETAKER, &cookie, &csrf, &cookie1, &csrf1, &cookie2, &csrf2,
    ] {
        assert!(!log.contains(secret), "a secret in the daemon's log");
        assert!(!book.contains(secret), "a secret in the logbook");
        assert_eq!(
            any_file_contains(d.dir(), secret.as_bytes()),
            None,
            "a secret in a file"
        );
    }
}

#[test]
fn an_idle_session_is_refused_and_ended_once() {
    let rest = format!("{SITE}{}\n[console]\nsession_idle = \"2s\"\n", caretaker());
    let d = Daemon::start(&rest, "");
    let r = sign_in(&d, CARETAKER);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["idle_timeout_secs"], 2);
    let cookie = r.cookie("holdfast_session").unwrap();
    assert_eq!(
        with_cookie(&d, "GET", "/api/v1/cameras", &cookie, &[], None).status,
        200
    );
    std::thread::sleep(Duration::from_millis(2500));
    let r = with_cookie(&d, "GET", "/api/v1/cameras", &cookie, &[], None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "your session has expired; sign in again");
    // Gone: a second use is an unknown session, and nothing is logged twice.
    let r = with_cookie(&d, "GET", "/api/v1/session", &cookie, &[], None);
    assert_eq!(r.status, 401, "{}", r.body);
    d.wait_until(Duration::from_secs(10), |d| {
        !entries(d, "session.end").is_empty()
    });
    let ends = entries(&d, "session.end");
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["object"]["why"], "idle");
    assert_eq!(ends[0]["object"]["session"], tag(&cookie).as_str());
    assert_eq!(ends[0]["user"], "c.aretaker");
}

#[test]
fn the_console_files_carry_their_headers_and_etags() {
    let d = Daemon::start(SITE, "");
    let r = http_raw(d.addr, "GET", "/", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body.contains("/console/app.js"), "{}", r.body);
    let check = |r: &RawResponse| {
        assert_eq!(r.header("content-security-policy"), Some(CSP));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(r.header("cache-control"), Some("no-cache"));
    };
    check(&r);
    let etag = r.header("etag").unwrap().to_owned();
    assert_eq!(etag.len(), 18, "{etag}");
    let r = http_raw(d.addr, "GET", "/", &[("If-None-Match", &etag)], None);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    check(&r);

    let r = http_raw(d.addr, "GET", "/console/app.js", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    check(&r);
    let js_tag = r.header("etag").unwrap().to_owned();
    assert_ne!(js_tag, etag);
    let on_disk = std::fs::read_to_string(support::procs::repo_path("console/app.js")).unwrap();
    assert_eq!(r.body, on_disk);
    let r = http_raw(
        d.addr,
        "GET",
        "/console/app.js",
        &[("If-None-Match", &format!("\"nope\", {js_tag}"))],
        None,
    );
    assert_eq!(r.status, 304);
    let r = http_raw(
        d.addr,
        "GET",
        "/console/app.js",
        &[("If-None-Match", &etag)],
        None,
    );
    assert_eq!(r.status, 200);

    for missing in [
        "/console/nope.js",
        "/console/../Cargo.toml",
        "/console/%2e%2e/Cargo.toml",
        "/console/",
    ] {
        let r = http_raw(d.addr, "GET", missing, &[], None);
        assert_eq!(r.status, 404, "{missing}: {}", r.body);
    }
    // A console 404 carries the console's headers too.
    let r = http_raw(d.addr, "GET", "/console/nope.js", &[], None);
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
}

#[test]
fn with_tls_the_cookie_is_secure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::procs::self_signed_cert(dir.path());
    let port = support::procs::free_port();
    let config = dir.path().join("holdfast.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = {:?}\n\n[http]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = {:?}\ntls_key = {:?}\n\n{SITE}{}{}",
            dir.path().join("data").display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            caretaker(),
            logbook_section(dir.path()),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let https = format!("https://127.0.0.1:{port}");
    // curl -i: (status line and headers, body).
    let curl = |args: &[&str]| -> (String, String) {
        let out = Command::new("curl")
            .args(["-sk", "-i", "--max-time", "5"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_owned(), body.to_owned())
    };
    let t0 = std::time::Instant::now();
    while !curl(&[&format!("{https}/healthz")]).0.contains(" 200") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "HTTPS never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (head, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        &format!("{{\"token\": \"{CARETAKER}\"}}"),
        &format!("{https}/api/v1/session"),
    ]);
    assert!(head.contains(" 201"), "{head}\n{body}");
    let set_cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(set_cookie.trim_end().ends_with("; Secure"), "{set_cookie}");
    let cookie = set_cookie
        .split_once("holdfast_session=")
        .unwrap()
        .1
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = serde_json::from_str::<serde_json::Value>(&body).unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cookie_h = format!("Cookie: holdfast_session={cookie}");
    let (head, _) = curl(&["-H", &cookie_h, &format!("{https}/api/v1/session")]);
    assert!(head.contains(" 200"), "{head}");
    // The daemon's own origin is https:// here; the http:// one is foreign.
    let csrf_h = format!("X-CSRF-Token: {csrf}");
    let (head, _) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &cookie_h,
        "-H",
        &csrf_h,
        "-H",
        &format!("Origin: http://127.0.0.1:{port}"),
        &format!("{https}/api/v1/session"),
    ]);
    assert!(head.contains(" 403"), "{head}");
    let (head, _) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &cookie_h,
        "-H",
        &csrf_h,
        "-H",
        &format!("Origin: {https}"),
        &format!("{https}/api/v1/session"),
    ]);
    assert!(head.contains(" 204"), "{head}");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

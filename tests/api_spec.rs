//! `docs/api.yaml` against the code and against a live daemon.
//!
//! 1. The routes of `router()` in `src/api/mod.rs` and the operations of `docs/api.yaml` are the
//!    same set of (method, path). The router's routes are read from its SOURCE, not from a
//!    running daemon (axum cannot list them): every `.route("PATH", get(..).post(..))` call in
//!    the body of `fn router`, multi-line calls included, gives one (method, path) per method
//!    function (`get`, `post`, ...) at the top level of its second argument. Anything the parser
//!    does not understand there (`any(..)`, `on(..)`, `.nest(..)`, `.route_service(..)`) fails the
//!    test instead of being skipped.
//! 2. schemathesis (PyPI, installed by `scripts/setup.sh` in a venv of its own) runs every
//!    operation of the document against a real daemon recording a real camera (GStreamer RTSP
//!    server) with a bearer token of a user whose role has every permission, and checks that no
//!    answer is a 5xx and that every answer's status, content type, headers and body conform to
//!    the document. `HOLDFAST_SCHEMATHESIS_EXAMPLES` sets the number of examples per operation
//!    (default [`DEFAULT_EXAMPLES`], under a minute on two cores); `HOLDFAST_SCHEMATHESIS_SEED` a
//!    seed to replay a run.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use holdfast::time::Time90k;
use support::procs::{repo_path, user, Daemon, RtspServer};

/// Examples per operation in a normal `cargo test --release`.
const DEFAULT_EXAMPLES: u32 = 100;

/// The HTTP methods a route can have.
const METHODS: [&str; 8] = [
    "get", "post", "put", "delete", "patch", "head", "options", "trace",
];

/// The cameras of the test daemon (the first records from GStreamer, the second never answers).
const CAMERAS: [&str; 2] = ["noord-entrance", "zuid-lift"];
/// Its sites, one camera each.
const SITES: [&str; 2] = ["maas-noord", "maas-zuid"];

/// Token of the schemathesis user (role `fuzz`: every permission, every site).
const FUZZ_TOKEN: &str = "tok-schemathesis-fuzz-0123456789abcdef";

/// A piece of Rust source with comments blanked out (string literals kept), so that scanning it
/// for parentheses and identifiers is not fooled by a `(` in a comment.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            // A string literal, escapes included.
            out.push(b[i]);
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    out.push(b[i]);
                    i += 1;
                }
                out.push(b[i]);
                i += 1;
            }
            if i < b.len() {
                out.push(b[i]);
                i += 1;
            }
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i < b.len() && !b[i..].starts_with(b"*/") {
                out.push(if b[i] == b'\n' { b'\n' } else { b' ' });
                i += 1;
            }
            out.extend_from_slice(b"  ");
            i = (i + 2).min(b.len());
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("comments are blanked with ASCII")
}

/// The index just past the bracket that closes the one at `open` (strings skipped).
fn matching(s: &[u8], open: usize) -> usize {
    let (o, c) = match s[open] {
        b'(' => (b'(', b')'),
        b'{' => (b'{', b'}'),
        other => panic!("not an opening bracket: {:?}", other as char),
    };
    let mut depth = 0;
    let mut i = open;
    while i < s.len() {
        match s[i] {
            b'"' => {
                i += 1;
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            x if x == o => depth += 1,
            x if x == c => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced brackets in src/api/mod.rs");
}

/// The (METHOD, path) pairs of `router()` in this source text of src/api/mod.rs.
fn router_routes(source: &str) -> BTreeSet<(String, String)> {
    let src = strip_comments(source);
    let start = src
        .find("pub fn router(")
        .expect("src/api/mod.rs has `pub fn router(`");
    let body_open = start + src[start..].find('{').expect("router() has a body");
    let body = &src[body_open..matching(src.as_bytes(), body_open)];
    for unsupported in [".nest(", ".nest_service(", ".route_service(", ".merge("] {
        assert!(
            !body.contains(unsupported),
            "router() uses `{unsupported}`: teach tests/api_spec.rs to read it"
        );
    }
    let b = body.as_bytes();
    let mut routes = BTreeSet::new();
    let mut from = 0;
    while let Some(pos) = body[from..].find(".route(") {
        let open = from + pos + ".route".len();
        let close = matching(b, open);
        let args = &body[open + 1..close - 1];
        from = close;
        // First argument: the path literal.
        let args = args.trim_start();
        assert!(
            args.starts_with('"'),
            "a .route( whose path is not a string literal: {args}"
        );
        let end = 1 + args[1..].find('"').expect("a closed path literal");
        // axum's catch-all `{*name}` is OpenAPI's `{name}`.
        let path = args[1..end].replace("{*", "{");
        let rest = args[end + 1..].trim_start();
        let handlers = rest
            .strip_prefix(',')
            .unwrap_or_else(|| panic!("route {path}: no method router after the path"));
        // Second argument: `get(h).post(h2)`, maybe `axum::routing::get(h)`: the identifiers
        // followed by `(` at its top level are the methods.
        let hb = handlers.as_bytes();
        let mut methods = Vec::new();
        let mut i = 0;
        while i < hb.len() {
            let c = hb[i];
            if c.is_ascii_alphabetic() || c == b'_' {
                let s = i;
                while i < hb.len() && (hb[i].is_ascii_alphanumeric() || hb[i] == b'_') {
                    i += 1;
                }
                let ident = &handlers[s..i];
                let mut j = i;
                while j < hb.len() && hb[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < hb.len() && hb[j] == b'(' {
                    assert!(
                        METHODS.contains(&ident),
                        "route {path}: `{ident}(..)` is not a method function this test \
                         understands (one of {METHODS:?})"
                    );
                    methods.push(ident.to_uppercase());
                    i = matching(hb, j);
                }
            } else {
                i += 1;
            }
        }
        assert!(!methods.is_empty(), "route {path}: found no method in it");
        for m in methods {
            assert!(
                routes.insert((m.clone(), path.clone())),
                "{m} {path} is routed twice"
            );
        }
    }
    assert!(!routes.is_empty(), "found no .route( in router()");
    routes
}

/// docs/api.yaml parsed into JSON values.
fn spec() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_path("docs/api.yaml")).expect("docs/api.yaml exists");
    serde_norway::from_str(&text).expect("docs/api.yaml is valid YAML")
}

/// The (METHOD, path) pairs of the document's `paths`.
fn spec_routes(spec: &serde_json::Value) -> BTreeSet<(String, String)> {
    let paths = spec["paths"].as_object().expect("docs/api.yaml has paths");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for key in item.as_object().expect("a path item is a map").keys() {
            if METHODS.contains(&key.as_str()) {
                out.insert((key.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn route_reader_understands_multi_line_routes_and_method_chains() {
    let src = r#"
        pub fn other() { Router::new().route("/not-this", get(x)) }
        /// Builds the router.
        pub fn router(state: Arc<AppState>) -> Router {
            Router::new()
                .route("/a", get(a))
                // .route("/commented-out", get(c))
                .route(
                    "/b/{id}",
                    post(m::b).get(m::c), // a comment with a ( in it
                )
                .route("/c", axum::routing::delete(d).put(e.clone()))
                .route("/files/{*path}", get(f))
                .layer(axum::middleware::from_fn_with_state(state.clone(), count))
                .with_state(state)
        }
    "#;
    let got = router_routes(src);
    let want: BTreeSet<(String, String)> = [
        ("GET", "/a"),
        ("POST", "/b/{id}"),
        ("GET", "/b/{id}"),
        ("DELETE", "/c"),
        ("PUT", "/c"),
        ("GET", "/files/{path}"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(got, want);
    let bad = r#"pub fn router() -> Router { Router::new().route("/x", any(h)) }"#;
    assert!(std::panic::catch_unwind(|| router_routes(bad)).is_err());
}

#[test]
fn every_route_of_the_router_is_in_docs_api_yaml_and_nothing_else() {
    let source = std::fs::read_to_string(repo_path("src/api/mod.rs")).unwrap();
    let router = router_routes(&source);
    let doc = spec_routes(&spec());
    let fmt = |s: &BTreeSet<&(String, String)>| -> String {
        s.iter()
            .map(|(m, p)| format!("\n  {m} {p}"))
            .collect::<String>()
    };
    let missing: BTreeSet<_> = router.difference(&doc).collect();
    let extra: BTreeSet<_> = doc.difference(&router).collect();
    println!(
        "router: {} operations, docs/api.yaml: {} operations",
        router.len(),
        doc.len()
    );
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/api.yaml and router() differ.\nrouted but not documented:{}\ndocumented but not routed:{}",
        fmt(&missing),
        fmt(&extra)
    );
}

/// The schemathesis version `scripts/setup.sh` installs (its `SCHEMATHESIS_VERSION=` line).
fn schemathesis_version() -> String {
    let setup = std::fs::read_to_string(repo_path("scripts/setup.sh")).unwrap();
    setup
        .lines()
        .find_map(|l| l.trim().strip_prefix("SCHEMATHESIS_VERSION="))
        .expect("scripts/setup.sh sets SCHEMATHESIS_VERSION")
        .trim()
        .to_owned()
}

/// Where `scripts/setup.sh` puts schemathesis; fails (never skips) when it is not there.
fn schemathesis_bin() -> PathBuf {
    let version = schemathesis_version();
    let tools = std::env::var_os("HOLDFAST_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/holdfast-tools")
        });
    let bin = tools.join(format!("schemathesis-{version}/bin/schemathesis"));
    let out = Command::new(&bin).arg("--version").output();
    match out {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout).trim()
                == format!("schemathesis, version {version}") =>
        {
            bin
        }
        other => panic!(
            "schemathesis {version} is not installed at {}: run scripts/setup.sh (it installs it \
             from PyPI into that venv). ({other:?})",
            bin.display()
        ),
    }
}

/// The daemon's config: two sites, a live camera (GStreamer) and one that never answers, and
/// the schemathesis user whose role has every permission.
fn config(url: &str) -> String {
    let [live, dead] = CAMERAS;
    let [north, south] = SITES;
    let mut c = format!(
        "[policies.month]\nvideo = \"28d\"\nkeytags = \"28d\"\n\n\
         [[sites]]\nid = \"{north}\"\npolicy = \"month\"\n\n\
         [[sites]]\nid = \"{south}\"\npolicy = \"month\"\n\n\
         [[cameras]]\nid = \"{live}\"\nsite = \"{north}\"\nurl = \"{url}\"\n\n\
         [[cameras]]\nid = \"{dead}\"\nsite = \"{south}\"\nurl = \"rtsp://127.0.0.1:9/none\"\n\n\
         [roles.fuzz]\npermissions = [\"cameras_status\", \"view\", \"export\", \"place_hold\", \
         \"release_hold\", \"erase\", \"keytags_read\", \"keytags_write\", \"logbook_read\", \
         \"sign_off\"]\n"
    );
    c.push_str(&user("schemathesis", "fuzz", FUZZ_TOKEN, "[\"*\"]"));
    c
}

/// The document as schemathesis gets it, fitted to this daemon: camera and site ids narrowed
/// to the configured ones (so that generated bodies reach past "unknown camera" into placing,
/// releasing and erasing), the range examples moved onto what the camera has just recorded (so
/// that the examples phase exports real footage), and the NDJSON variant of the key-tag batch
/// left out (schemathesis has no serializer for `application/x-ndjson`; the JSON array variant
/// is tested).
fn live_spec(from: Time90k, to: Time90k) -> serde_json::Value {
    let mut s = spec();
    let schemas = &mut s["components"]["schemas"];
    schemas["CameraId"]["enum"] = serde_json::json!(CAMERAS);
    schemas["SiteId"]["enum"] = serde_json::json!(SITES);
    let params = &mut s["components"]["parameters"];
    params["FromRequired"]["example"] = from.to_rfc3339().into();
    params["ToRequired"]["example"] = to.to_rfc3339().into();
    let content = s["paths"]["/api/v1/keytags/events"]["post"]["requestBody"]["content"]
        .as_object_mut()
        .expect("the key-tag batch has content types");
    assert!(content.remove("application/x-ndjson").is_some());
    s
}

/// Cases generated and failures found, from the line after `Test cases:` in schemathesis'
/// summary, and that line.
fn summary_counts(stdout: &str) -> (u64, u64, String) {
    let mut lines = stdout.lines();
    let line = lines
        .by_ref()
        .find(|l| l.trim() == "Test cases:")
        .and_then(|_| lines.next())
        .unwrap_or("")
        .trim()
        .to_owned();
    // "N generated, M found M unique failures" (or "..., M passed", "M errored", ...).
    let count = |word: &str| -> u64 {
        line.split(',')
            .find_map(|p| {
                let mut w = p.split_whitespace();
                let n = w.next()?.parse().ok()?;
                (w.next()? == word).then_some(n)
            })
            .unwrap_or(0)
    };
    (count("generated"), count("found"), line)
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_schema() {
    let bin = schemathesis_bin();
    let examples: u32 = std::env::var("HOLDFAST_SCHEMATHESIS_EXAMPLES")
        .ok()
        .map(|v| {
            v.parse()
                .expect("HOLDFAST_SCHEMATHESIS_EXAMPLES is a number")
        })
        .unwrap_or(DEFAULT_EXAMPLES);

    let server = RtspServer::start(&["--cameras", "1"]);
    let d = Daemon::start(&config(&server.url("/cam0")), "segment_target = \"1s\"");
    // Something to export: a few seconds of recorded footage.
    d.wait_until(Duration::from_secs(60), |d| {
        let now = Time90k::now();
        let path = format!(
            "/api/v1/cameras/{}/recordings?from={}&to={}",
            CAMERAS[0],
            support::procs::q(&now.add_ticks(-600 * 90_000).to_rfc3339()),
            support::procs::q(&now.to_rfc3339())
        );
        let (status, body) = d.get(&path, Some(FUZZ_TOKEN));
        status == 200
            && serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["intervals"].as_array().map(|a| !a.is_empty()))
                .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(3));
    let now = Time90k::now();
    let spec = live_spec(now.add_ticks(-120 * 90_000), now);

    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("api.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let mut cmd = Command::new(&bin);
    cmd.current_dir(dir.path())
        .arg("run")
        .arg(&spec_path)
        .args(["--url", &format!("http://{}", d.addr)])
        .args(["--header", &format!("Authorization: Bearer {FUZZ_TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", &examples.to_string()])
        .args(["--workers", "2", "--request-timeout", "30"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--output-truncate", "false"])
        .env("SCHEMATHESIS_TELEMETRY", "false");
    if let Ok(seed) = std::env::var("HOLDFAST_SCHEMATHESIS_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let t0 = Instant::now();
    let out = cmd.output().expect("schemathesis runs");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (cases, failures, line) = summary_counts(&stdout);
    println!(
        "schemathesis {}: {examples} examples per operation, {cases} cases, {failures} failures \
         ({line}) in {:.0} s",
        schemathesis_version(),
        took.as_secs_f64()
    );
    // The daemon never stopped answering. Asked with the token: schemathesis' cases without
    // one (a few per operation) and its sign-ins with made-up tokens are failed
    // authentications, after which 127.0.0.1 is throttled (429) until it shows a valid token,
    // as designed (`api::limits`).
    assert_eq!(
        d.get("/healthz", Some(FUZZ_TOKEN)).0,
        200,
        "the daemon is unhealthy"
    );
    // What the daemon answered, by status (its own request counter), and proof that footage
    // really went out: the live examples exported and played real recordings.
    let (_, metrics) = d.get("/metrics", Some(FUZZ_TOKEN));
    let answered = |route: &str, status: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("holdfast_http_requests_total{"))
            .filter(|l| route.is_empty() || l.contains(&format!("route=\"{route}\"")))
            .filter(|l| l.contains(&format!("status=\"{status}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    };
    const EXPORT: &str = "/api/v1/cameras/{id}/export.mp4";
    const VIEW: &str = "/api/v1/cameras/{id}/view.mp4";
    println!(
        "daemon answers: {} 2xx, {} 4xx, {} 5xx; MP4s sent: {} exports, {} views",
        answered("", "2"),
        answered("", "4"),
        answered("", "5"),
        answered(EXPORT, "200"),
        answered(VIEW, "200")
    );
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {:?}):\n{stdout}\n{stderr}\ndaemon log tail:\n{}",
        out.status.code(),
        d.log_text()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(cases > 0, "schemathesis ran no case:\n{stdout}");
    for route in [EXPORT, VIEW] {
        assert!(
            answered(route, "200") > 0,
            "no 200 from {route}: the run never got footage out\n{stdout}"
        );
    }
}

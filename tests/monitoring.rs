//! The monitoring files shipped in `config/`: the Prometheus alert rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), the Grafana dashboard's expressions are
//! valid PromQL, and every metric either of them names is exported by the real daemon. The
//! daemon's own logbook check turns `holdfast_logbook_verify_ok` to 0 on a tampered entry.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::procs::{repo_path, strip_ansi, Daemon, RtspServer};

/// Runs promtool with `args` in `dir` and fails the test (with its output) unless it succeeds.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus) is installed by scripts/setup.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Every `holdfast_*` identifier in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("holdfast_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The `expr` of every rule in `alerts.yml`, with the alert's name.
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path("config/prometheus/alerts.yml")).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in doc["groups"].as_array().expect("alerts.yml: groups") {
        for rule in group["rules"].as_array().expect("alerts.yml: rules") {
            let name = rule["alert"]
                .as_str()
                .expect("alerts.yml: rule without alert");
            let expr = rule["expr"]
                .as_str()
                .expect("alerts.yml: rule without expr");
            out.push((name.to_owned(), expr.to_owned()));
        }
    }
    out
}

/// Every PromQL expression of the dashboard (panel targets and template variable queries), with
/// the title of the panel or the name of the variable.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path("config/grafana/holdfast.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).expect("holdfast.json is JSON");
    let mut out = Vec::new();
    for panel in doc["panels"].as_array().expect("holdfast.json: panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().expect("panel without targets") {
            let expr = target["expr"].as_str().expect("target without expr");
            out.push((title.to_owned(), expr.to_owned()));
        }
    }
    for var in doc["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push((format!("${}", var["name"].as_str().unwrap()), q.to_owned()));
        }
    }
    out
}

/// The metric families an exposition declares (`# TYPE name type`), name to type.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

/// Whether `name` is a series Prometheus stores for one of `families`: a gauge by its name, a
/// counter as `_total` (whichever way the exposition declares it), a histogram as `_bucket`/`_sum`/`_count`.
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    let is = |suffix: &str, types: &[&str]| {
        name.strip_suffix(suffix)
            .and_then(|f| families.get(f))
            .is_some_and(|t| types.contains(&t.as_str()))
    };
    is("", &["gauge", "unknown", "untyped"])
        // Text format 0.0.4 declares a counter with its `_total`, OpenMetrics without.
        || (name.ends_with("_total") && is("", &["counter"]))
        || is("_total", &["counter"])
        || is("_bucket", &["histogram"])
        || is("_sum", &["histogram", "summary"])
        || is("_count", &["histogram", "summary"])
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let dir = repo_path("config/prometheus");
    let check = promtool(&dir, &["check", "rules", "alerts.yml"]);
    let n = alert_exprs().len();
    assert!(
        check.contains(&format!("SUCCESS: {n} rules found")),
        "{check}"
    );
    let test = promtool(&dir, &["test", "rules", "alerts.test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
    // Every alert has unit tests.
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).unwrap();
    for (alert, _) in alert_exprs() {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alerts.test.yml has no case for {alert}"
        );
    }
}

#[test]
fn dashboard_expressions_are_valid_promql() {
    // promtool has no offline expression checker; recording rules made of the expressions are
    // parsed by `promtool check rules`. Grafana's variables become what they select.
    let tmp = tempfile::tempdir().unwrap();
    let exprs = dashboard_exprs();
    assert!(exprs.len() > 20, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in exprs.iter().enumerate() {
        if expr.starts_with("label_values(") {
            continue; // a Grafana function, not PromQL
        }
        let expr = expr.replace("$instance", ".*");
        rules.push_str(&format!(
            "      # {title}\n      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    std::fs::write(tmp.path().join("dashboard.yml"), rules).unwrap();
    promtool(tmp.path(), &["check", "rules", "dashboard.yml"]);
}

#[test]
fn every_metric_in_alerts_and_dashboard_is_exported() {
    // A real camera, so the per-camera series that exist only after a first frame are there.
    let mut server = RtspServer::start(&["--cameras", "1"]);
    let config = format!(
        "[policies.short]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n[[sites]]\nid = \"test-site\"\npolicy = \"short\"\n\n\
         [[cameras]]\nid = \"cam-0\"\nsite = \"test-site\"\nurl = \"{}\"\n",
        server.url("/cam0")
    );
    let mut d = Daemon::start(&config, "segment_target = \"1s\"");
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("cam-0") == "recording"
    });
    let (status, exposition) = d.get("/metrics", None);
    d.stop();
    server.stop();
    assert_eq!(status, 200, "{exposition}");
    let families = families(&exposition);
    assert!(families.len() > 20, "{exposition}");
    // The matcher itself rejects what is not there.
    assert!(!exported("holdfast_no_such_metric", &families));
    assert!(
        !exported("holdfast_camera_up_total", &families),
        "a gauge has no _total"
    );
    assert!(
        !exported("holdfast_camera_frames", &families),
        "a counter is _total"
    );
    assert!(
        !exported("holdfast_writer_sync_seconds", &families),
        "a histogram is _bucket..."
    );
    assert!(exported("holdfast_camera_frames_total", &families));
    assert!(exported("holdfast_writer_sync_seconds_bucket", &families));

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (source, list) in [
        ("alerts.yml", alert_exprs()),
        ("holdfast.json", dashboard_exprs()),
    ] {
        for (what, expr) in list {
            for name in metric_names(&expr) {
                if !exported(&name, &families) {
                    missing.push(format!("{source}: {what}: {name}"));
                }
                used.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not exported: {missing:#?}\n{exposition}"
    );
    assert!(used.len() > 20, "{used:?}");
}

/// One sample of the daemon's `/metrics` (`None` while the series is absent).
fn sample(d: &Daemon, series: &str) -> Option<f64> {
    let (_, text) = d.get("/metrics", None);
    support::procs::metric_value(&text, series)
}

#[test]
fn a_tampered_logbook_entry_turns_the_verify_metric_to_zero() {
    use holdfast::store::index::{Index, CF_LOGBOOK};
    let config = "[policies.short]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n\
                  [[sites]]\nid = \"site-a\"\npolicy = \"short\"\n";
    let mut d = Daemon::start(config, "");
    // A few logbook entries: key-tag queries are logged looks.
    let now = holdfast::time::Time90k::now();
    let from = support::procs::q(&holdfast::time::Time90k(now.0 - 3600 * 90_000).to_rfc3339());
    let to = support::procs::q(&now.to_rfc3339());
    for i in 0..4 {
        let path = format!(
            "/api/v1/keytags/events?tag=A1&purpose=tag-check&reason=case-{i}&from={from}&to={to}"
        );
        let (status, body) = d.get(&path, Some(&d.token));
        assert_eq!(status, 200, "{body}");
    }
    d.wait_until(Duration::from_secs(20), |d| {
        sample(d, "holdfast_logbook_last_verify_timestamp_seconds").unwrap_or(0.0) > 0.0
    });
    assert_eq!(sample(&d, "holdfast_logbook_verify_ok"), Some(1.0));
    d.stop();

    // Someone who can write the data directory changes entry 2 (the reason of a look). The
    // daemon still starts: it checks its head record and newest checkpoint, which are intact.
    let tampered = {
        let index = Index::open(&d.data_dir.join("index")).unwrap();
        let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
        let (seq, v) = index
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|kv| kv.unwrap())
            .find(|(_, v)| String::from_utf8_lossy(&v[32..]).contains("case-0"))
            .expect("the logged look with reason case-0");
        let json = String::from_utf8(v[32..].to_vec()).unwrap();
        let mut nv = v[..32].to_vec();
        nv.extend_from_slice(json.replace("case-0", "case-9").as_bytes());
        index.db().put_cf(cf, &seq, nv).unwrap();
        u64::from_be_bytes((*seq).try_into().unwrap())
    };
    d.restart();
    d.wait_until(Duration::from_secs(20), |d| {
        sample(d, "holdfast_logbook_verify_ok") == Some(0.0)
    });
    assert!(sample(&d, "holdfast_logbook_last_verify_timestamp_seconds").unwrap() > 0.0);
    let log = strip_ansi(&d.log_text());
    assert!(
        log.contains("logbook check FAILED")
            && log.contains(&format!("first_bad_seq=Some({tampered})")),
        "{log}"
    );
    d.stop();
}

//! Site scope, hold limits and the logging of refusals and outcomes, tried from outside against a
//! daemon with two sites (north, south), each recording a real GStreamer camera, and users scoped
//! to north beside `*` users: every route keeps to the user's sites, another site's camera is
//! indistinguishable from one that does not exist, holds cannot pin the future and always carry
//! a review date, errors come in the order 401 -> 403 -> 400, refused inspections and erasure
//! intents are logged, an export's outcome entry carries the SHA-256 of what was delivered, and
//! a sign-off takes four eyes.

mod support;

use std::time::Duration;

use holdfast::time::Time90k;
use sha2::Digest;
use support::procs::{
    http_get_bytes, http_post, q, user, Daemon, RtspServer, ADMIN_TOKEN, PRIVACY_TOKEN,
};

const M_NORTH: &str = "tok-manager-north-0123456789";
const A_NORTH: &str = "tok-auditor-north-0123456789";
const K_NORTH: &str = "tok-caretaker-north-0123456789";
const P_NORTH: &str = "tok-privacy-north-0123456789";
const T_NORTH: &str = "tok-technician-north-0123456789";
const DOOR_NORTH: &str = "tok-door-north-0123456789";
const A_ALL: &str = "tok-auditor-all-0123456789";
const DOOR_SOUTH: &str = "tok-door-south-0123456789";
const A_SOUTH: &str = "tok-auditor-south-0123456789";

fn config(server: &RtspServer) -> String {
    config_with(&server.url("/cam0"), &server.url("/cam1"))
}

fn config_with(north_url: &str, south_url: &str) -> String {
    let mut c = String::from(
        "[policies.short]\nvideo = \"1d\"\nkeytags = \"1d\"\nhold_review = \"14d\"\n\n\
         [[sites]]\nid = \"north\"\npolicy = \"short\"\n\n\
         [[sites]]\nid = \"south\"\npolicy = \"short\"\n",
    );
    c.push_str(&format!(
        "\n[[cameras]]\nid = \"north-cam\"\nsite = \"north\"\nurl = \"{}\"\n\n\
         [[cameras]]\nid = \"south-cam\"\nsite = \"south\"\nurl = \"{}\"\n",
        north_url, south_url
    ));
    c.push_str(&user("m.north", "manager", M_NORTH, "[\"north\"]"));
    c.push_str(&user("a.north", "auditor", A_NORTH, "[\"north\"]"));
    c.push_str(&user("k.north", "caretaker", K_NORTH, "[\"north\"]"));
    c.push_str(&user("p.north", "privacy_officer", P_NORTH, "[\"north\"]"));
    c.push_str(&user("t.north", "technician", T_NORTH, "[\"north\"]"));
    c.push_str(&user(
        "door-north",
        "access_system",
        DOOR_NORTH,
        "[\"north\"]",
    ));
    c.push_str(&user("a.all", "auditor", A_ALL, "[\"*\"]"));
    c.push_str(&user(
        "door-south",
        "access_system",
        DOOR_SOUTH,
        "[\"south\"]",
    ));
    c.push_str(&user("a.south", "auditor", A_SOUTH, "[\"south\"]"));
    c
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| {
        let shown: String = body.chars().take(300).collect();
        panic!("not JSON: {shown}")
    })
}

fn get(d: &Daemon, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (s, b) = d.get(path, token);
    (s, json(&b))
}

fn post(d: &Daemon, path: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let (s, b) = http_post(d.addr, path, token, body);
    (s, json(&b))
}

/// An error answer: its status, and that it has the JSON error shape.
fn err(r: (u16, serde_json::Value)) -> (u16, serde_json::Value) {
    assert!(r.1["error"].is_string(), "not the error shape: {}", r.1);
    r
}

fn entries(d: &Daemon, token: &str) -> Vec<serde_json::Value> {
    let (s, v) = get(d, "/api/v1/logbook", Some(token));
    assert_eq!(s, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

fn seq_header(head: &str) -> u64 {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-holdfast-logbook-seq: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("x-holdfast-logbook-seq")
}

#[test]
fn every_route_keeps_to_the_users_sites() {
    let server = RtspServer::start(&["--cameras", "2"]);
    let d = Daemon::start(&config(&server), "segment_target = \"1s\"");
    d.wait_until(Duration::from_secs(30), |d| {
        d.camera_state("north-cam") == "recording" && d.camera_state("south-cam") == "recording"
    });
    std::thread::sleep(Duration::from_secs(5));
    let from = Time90k::now().add_ticks(-120 * 90_000).to_rfc3339();
    let to = Time90k::now().to_rfc3339();
    let range = format!("from={}&to={}", q(&from), q(&to));

    // /healthz: without a token (or with a bad one) only ok / not ok; with a token, the
    // user's cameras.
    for tok in [None, Some("not-a-token")] {
        let (s, h) = get(&d, "/healthz", tok);
        assert_eq!(s, 200);
        assert_eq!(h, serde_json::json!({ "status": "ok" }), "{tok:?}");
    }
    let (_, h) = get(&d, "/healthz", Some(M_NORTH));
    assert_eq!(
        h["cameras"],
        serde_json::json!({ "north-cam": "recording" })
    );
    let (_, h) = get(&d, "/healthz", Some(ADMIN_TOKEN));
    assert_eq!(h["cameras"].as_object().unwrap().len(), 2);

    // Cameras and recordings: another site's camera is a camera that does not exist.
    let (_, cams) = get(&d, "/api/v1/cameras", Some(M_NORTH));
    let ids: Vec<&str> = cams
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["north-cam"]);
    for path in [
        format!("/api/v1/cameras/{{}}/recordings?{range}"),
        format!("/api/v1/cameras/{{}}/export.mp4?{range}&reason=look"),
        format!("/api/v1/cameras/{{}}/view.mp4?{range}&reason=look"),
    ] {
        let south = err(get(&d, &path.replace("{}", "south-cam"), Some(M_NORTH)));
        let none = err(get(&d, &path.replace("{}", "nope-cam"), Some(M_NORTH)));
        assert_eq!((south.0, none.0), (404, 404), "{path}");
        assert_eq!(
            south.1["error"].as_str().unwrap().replace("south-cam", "X"),
            none.1["error"].as_str().unwrap().replace("nope-cam", "X"),
            "{path}: the answers differ"
        );
        assert_eq!(
            http_get_bytes(d.addr, &path.replace("{}", "north-cam"), Some(M_NORTH)).0,
            200,
            "{path}"
        );
    }
    // View and export ids: another site's camera is answered like one that does not exist; an
    // id is its maker's only, so another site's manager cannot fetch it either.
    let look = format!(r#"{{"from":"{from}","to":"{to}","reason":"look"}}"#);
    for route in ["views", "exports"] {
        let path = format!("/api/v1/cameras/{{}}/{route}");
        let south = err(post(
            &d,
            &path.replace("{}", "south-cam"),
            Some(M_NORTH),
            &look,
        ));
        let none = err(post(
            &d,
            &path.replace("{}", "nope-cam"),
            Some(M_NORTH),
            &look,
        ));
        assert_eq!((south.0, none.0), (404, 404), "{route}");
        assert_eq!(
            south.1["error"].as_str().unwrap().replace("south-cam", "X"),
            none.1["error"].as_str().unwrap().replace("nope-cam", "X"),
            "{route}: the answers differ"
        );
        let (s, made) = post(&d, &path.replace("{}", "north-cam"), Some(M_NORTH), &look);
        assert_eq!(s, 201, "{made}");
        let url = made["url"].as_str().unwrap();
        assert!(url.starts_with("/api/v1/cameras/north-cam/"), "{url}");
        assert_eq!(http_get_bytes(d.addr, url, Some(M_NORTH)).0, 200, "{url}");
        assert_eq!(
            http_get_bytes(d.addr, url, Some(ADMIN_TOKEN)).0,
            404,
            "{url}"
        );
    }
    let hold = |cams: &str, extra: &str| {
        format!(
            r#"{{{cams},"from":"{from}","to":"{to}","reason":"scope test","reference":"REF-1"{extra}}}"#
        )
    };
    for body in [
        hold(r#""cameras":["south-cam"]"#, ""),
        hold(r#""cameras":["nope-cam"]"#, ""),
    ] {
        let (s, e) = err(post(&d, "/api/v1/holds", Some(M_NORTH), &body));
        assert_eq!(
            (s, e["detail"]["field"].as_str()),
            (400, Some("cameras[0]")),
            "{e}"
        );
        assert!(
            e["error"].as_str().unwrap().contains("unknown camera"),
            "{e}"
        );
    }
    let (s, e) = err(post(
        &d,
        "/api/v1/holds",
        Some(M_NORTH),
        &hold(r#""site":"south""#, ""),
    ));
    assert_eq!(
        (s, e["detail"]["field"].as_str()),
        (400, Some("site")),
        "{e}"
    );
    for cam in ["south-cam", "nope-cam"] {
        let body =
            format!(r#"{{"camera":"{cam}","from":"{from}","to":"{to}","reason":"data subject"}}"#);
        let (s, e) = err(post(&d, "/api/v1/erasures", Some(P_NORTH), &body));
        assert_eq!(
            (s, e["detail"]["field"].as_str()),
            (400, Some("camera")),
            "{e}"
        );
    }

    // A hold across both sites: a north manager sees only its north camera, none of the south
    // incident's reason or reference, and may neither release nor extend it.
    let (s, cross) = post(
        &d,
        "/api/v1/holds",
        Some(ADMIN_TOKEN),
        &format!(
            r#"{{"cameras":["north-cam","south-cam"],"from":"{from}","to":"{to}","reason":"south burglary","reference":"PL-SOUTH-9","requested_by":"police south"}}"#
        ),
    );
    assert_eq!(s, 201, "{cross}");
    let cross_id = cross["id"].as_u64().unwrap();
    for path in [
        "/api/v1/holds".to_owned(),
        format!("/api/v1/holds/{cross_id}"),
    ] {
        let (s, v) = get(&d, &path, Some(M_NORTH));
        assert_eq!(s, 200);
        let text = v.to_string();
        for secret in ["south-cam", "south burglary", "PL-SOUTH-9", "police south"] {
            assert!(!text.contains(secret), "{path} shows {secret}: {text}");
        }
        let h = if v.is_array() {
            v.as_array()
                .unwrap()
                .iter()
                .find(|h| h["id"] == cross_id)
                .unwrap()
                .clone()
        } else {
            v
        };
        assert_eq!(h["cameras"], serde_json::json!(["north-cam"]));
        assert_eq!(h["partial"], true);
    }
    let (_, full) = get(&d, &format!("/api/v1/holds/{cross_id}"), Some(ADMIN_TOKEN));
    assert_eq!(full["reference"], "PL-SOUTH-9");
    assert_eq!(full["partial"], false);
    let later = Time90k::now().add_ticks(20 * 86_400 * 90_000).to_rfc3339();
    let (s, _) = err(post(
        &d,
        &format!("/api/v1/holds/{cross_id}/release"),
        Some(M_NORTH),
        r#"{"reason":"done"}"#,
    ));
    assert_eq!(s, 403);
    let (s, _) = err(post(
        &d,
        &format!("/api/v1/holds/{cross_id}/extend"),
        Some(M_NORTH),
        &format!(r#"{{"expires_at":"{later}","reason":"longer"}}"#),
    ));
    assert_eq!(s, 403);

    // Holds cannot pin the future, and always carry a review date (14 days by default).
    let next_year = Time90k::now().add_ticks(365 * 86_400 * 90_000).to_rfc3339();
    let (s, e) = err(post(
        &d,
        "/api/v1/holds",
        Some(K_NORTH),
        &format!(
            r#"{{"cameras":["north-cam"],"from":"{from}","to":"{next_year}","reason":"vandalism"}}"#
        ),
    ));
    assert_eq!((s, e["detail"]["field"].as_str()), (400, Some("to")), "{e}");
    let now = Time90k::now();
    let (s, h) = post(
        &d,
        "/api/v1/holds",
        Some(K_NORTH),
        &hold(r#""cameras":["north-cam"]"#, ""),
    );
    assert_eq!(s, 201, "{h}");
    let review = Time90k::parse_rfc3339(h["expires_at"].as_str().unwrap()).unwrap();
    let fortnight = now.add_ticks(14 * 86_400 * 90_000);
    assert!(
        (review.0 - fortnight.0).abs() < 120 * 90_000,
        "review date {review} is not 14 days from now"
    );
    // A review date beyond the policy's review period, or in the past, is refused.
    for bad in [
        "9999-12-31T00:00:00Z".to_owned(),
        later.clone(),
        from.clone(),
    ] {
        let (s, e) = err(post(
            &d,
            "/api/v1/holds",
            Some(K_NORTH),
            &hold(
                r#""cameras":["north-cam"]"#,
                &format!(r#","expires_at":"{bad}""#),
            ),
        ));
        assert_eq!(
            (s, e["detail"]["field"].as_str()),
            (400, Some("expires_at")),
            "{bad}: {e}"
        );
    }
    // A hold due for review in two days: a caretaker may place it but neither extend nor
    // release it; a manager extends it, within the review period only.
    let in_two_days = Time90k::now().add_ticks(2 * 86_400 * 90_000).to_rfc3339();
    let (s, h) = post(
        &d,
        "/api/v1/holds",
        Some(K_NORTH),
        &hold(
            r#""cameras":["north-cam"]"#,
            &format!(r#","expires_at":"{in_two_days}""#),
        ),
    );
    assert_eq!(s, 201, "{h}");
    let hid = h["id"].as_u64().unwrap();
    let forever = r#"{"expires_at":"9999-12-31T00:00:00Z","reason":"keep it"}"#;
    let (s, e) = err(post(
        &d,
        &format!("/api/v1/holds/{hid}/extend"),
        Some(M_NORTH),
        forever,
    ));
    assert_eq!(
        (s, e["detail"]["field"].as_str()),
        (400, Some("expires_at")),
        "{e}"
    );
    let in_ten_days = Time90k::now().add_ticks(10 * 86_400 * 90_000).to_rfc3339();
    let extend = format!(r#"{{"expires_at":"{in_ten_days}","reason":"court case pending"}}"#);
    assert_eq!(
        err(post(
            &d,
            &format!("/api/v1/holds/{hid}/extend"),
            Some(K_NORTH),
            &extend
        ))
        .0,
        403
    );
    assert_eq!(
        post(
            &d,
            &format!("/api/v1/holds/{hid}/extend"),
            Some(M_NORTH),
            &extend
        )
        .0,
        200
    );
    assert_eq!(
        post(
            &d,
            &format!("/api/v1/holds/{hid}/release"),
            Some(M_NORTH),
            r#"{"reason":"handled"}"#
        )
        .0,
        200
    );
    // Holds due for review within three days are counted.
    let soon = Time90k::now().add_ticks(2 * 86_400 * 90_000).to_rfc3339();
    let (s, _) = post(
        &d,
        "/api/v1/holds",
        Some(ADMIN_TOKEN),
        &hold(
            r#""cameras":["north-cam"]"#,
            &format!(r#","expires_at":"{soon}""#),
        ),
    );
    assert_eq!(s, 201);
    assert_eq!(d.metric("holdfast_holds_expiring_soon"), 1.0);

    // 401 -> 403 -> 400, always in that order, always the JSON shape; a malformed path
    // parameter is judged after authentication too.
    let bad_path = format!("/api/v1/cameras/%FF%FE/export.mp4?{range}&reason=x");
    assert_eq!(err(get(&d, &bad_path, None)).0, 401);
    assert_eq!(err(get(&d, &bad_path, Some(K_NORTH))).0, 404);
    assert_eq!(err(get(&d, "/api/v1/holds/%FF", None)).0, 401);
    assert_eq!(err(get(&d, "/api/v1/holds/%FF", Some(M_NORTH))).0, 404);
    let bad_query = "/api/v1/logbook?limit=many";
    assert_eq!(err(get(&d, bad_query, None)).0, 401);
    assert_eq!(err(get(&d, bad_query, Some(K_NORTH))).0, 403);
    let (s, e) = err(get(&d, bad_query, Some(M_NORTH)));
    assert_eq!(
        (s, e["detail"]["field"].as_str()),
        (400, Some("limit")),
        "{e}"
    );
    assert_eq!(err(post(&d, "/api/v1/holds", None, "{garbage")).0, 401);
    assert_eq!(
        err(post(&d, "/api/v1/holds", Some(A_NORTH), "{garbage")).0,
        403
    );
    assert_eq!(
        err(post(&d, "/api/v1/holds", Some(K_NORTH), "{garbage")).0,
        400
    );
    let bad_export = "/api/v1/cameras/north-cam/export.mp4?from=yesterday&from=today";
    assert_eq!(err(get(&d, bad_export, None)).0, 401);
    assert_eq!(err(get(&d, bad_export, Some(A_NORTH))).0, 403);
    assert_eq!(err(get(&d, bad_export, Some(K_NORTH))).0, 400);

    // Exports: the outcome entry carries the SHA-256 of exactly what was delivered.
    let (s, head, mp4) = http_get_bytes(
        d.addr,
        &format!("/api/v1/cameras/north-cam/export.mp4?{range}&reason=bike+stolen"),
        Some(K_NORTH),
    );
    assert_eq!(s, 200, "{head}");
    let export_seq = seq_header(&head);
    let sha = hex::encode(sha2::Sha256::digest(&mp4));
    let mut linked = Vec::new();
    d.wait_until(Duration::from_secs(10), |d| {
        let (_, e) = get(d, &format!("/api/v1/logbook/{export_seq}"), Some(M_NORTH));
        linked = e["linked"].as_array().cloned().unwrap_or_default();
        !linked.is_empty()
    });
    let outcome = &linked[0];
    assert_eq!(outcome["action"], "export.outcome");
    assert_eq!(outcome["object"]["outcome"], "complete", "{outcome}");
    assert_eq!(outcome["object"]["bytes_sent"], mp4.len() as u64);
    assert_eq!(outcome["object"]["sha256"], sha.as_str());

    // Refused inspections are logged with what was asked: no reason (400), nothing left (404),
    // a police hand-over without recipient and reference (400), a technician exporting (403).
    let refusals = [
        (K_NORTH, format!("/api/v1/cameras/north-cam/export.mp4?{range}"), 400),
        (
            K_NORTH,
            "/api/v1/cameras/north-cam/export.mp4?from=2020-01-01T00:00:00Z&to=2020-01-01T01:00:00Z&reason=old+case".to_owned(),
            404,
        ),
        (
            M_NORTH,
            format!("/api/v1/cameras/north-cam/export.mp4?{range}&reason=case+7&purpose=police"),
            400,
        ),
        (
            T_NORTH,
            format!("/api/v1/cameras/north-cam/export.mp4?{range}&reason=check"),
            403,
        ),
    ];
    let two_days_ago = Time90k::now().add_ticks(-49 * 3600 * 90_000).to_rfc3339();
    for (path, field) in [
        (
            format!("/api/v1/cameras/north-cam/export.mp4?{range}&reason=x&purpose=Police"),
            "purpose",
        ),
        (
            format!("/api/v1/cameras/north-cam/export.mp4?{range}&reason=x&recipient=insurer"),
            "reference",
        ),
        (
            format!(
                "/api/v1/cameras/north-cam/export.mp4?from={}&to={}&reason=x",
                q(&two_days_ago),
                q(&to)
            ),
            "to",
        ),
    ] {
        let (s, e) = err(get(&d, &path, Some(M_NORTH)));
        assert_eq!(
            (s, e["detail"]["field"].as_str()),
            (400, Some(field)),
            "{path}: {e}"
        );
    }
    for (tok, path, want) in &refusals {
        let (s, _, body) = http_get_bytes(d.addr, path, Some(tok));
        assert_eq!(s, *want, "{path}: {}", String::from_utf8_lossy(&body));
    }
    let north = entries(&d, M_NORTH);
    let refused: Vec<_> = north
        .iter()
        .filter(|e| e["action"] == "export.refused")
        .collect();
    for (_, _, want) in &refusals {
        assert!(
            refused.iter().any(|e| e["object"]["status"] == *want),
            "no logged refusal with status {want}: {refused:?}"
        );
    }
    assert!(refused
        .iter()
        .any(|e| e["reason"] == "case 7" && e["purpose"] == "police"));

    // Key tags: a range is required and capped per purpose; police needs a reference.
    let t = Time90k::now().to_rfc3339();
    let (s, r) = post(
        &d,
        "/api/v1/keytags/events",
        Some(DOOR_NORTH),
        &format!(r#"[{{"tag":"T77","door":"north-main","time":"{t}"}}]"#),
    );
    assert_eq!(s, 200, "{r}");
    let (s, r) = post(
        &d,
        "/api/v1/keytags/events",
        Some(DOOR_SOUTH),
        &format!(r#"[{{"tag":"T77","door":"north-main","time":"{t}"}}]"#),
    );
    assert_eq!(s, 200, "a south door of the same name: {r}");
    let (s, e) = err(post(
        &d,
        "/api/v1/keytags/events",
        Some(DOOR_NORTH),
        &format!(r#"[{{"tag":"T78","door":"x","time":"{t}","site":"south"}}]"#),
    ));
    assert_eq!(s, 400, "{e}");
    let week_ago = Time90k::now().add_ticks(-8 * 86_400 * 90_000).to_rfc3339();
    let keytag_cases = [
        (
            "tag=T77&purpose=tag-check&reason=broken+tag".to_owned(),
            "from",
        ),
        (
            format!(
                "tag=T77&purpose=tag-check&reason=broken+tag&from={}&to={}",
                q(&week_ago),
                q(&t)
            ),
            "to",
        ),
        (
            format!("door=north-main&purpose=police&reason=case&{range}&recipient=police"),
            "reference",
        ),
    ];
    for (query, field) in &keytag_cases {
        let (s, e) = err(get(
            &d,
            &format!("/api/v1/keytags/events?{query}"),
            Some(M_NORTH),
        ));
        assert_eq!(
            (s, e["detail"]["field"].as_str()),
            (400, Some(*field)),
            "{query}: {e}"
        );
    }
    let soon_after = Time90k::now().add_ticks(60 * 90_000).to_rfc3339();
    let (s, found) = get(
        &d,
        &format!(
            "/api/v1/keytags/events?tag=T77&purpose=tag-check&reason=broken+tag&from={}&to={}",
            q(&from),
            q(&soon_after)
        ),
        Some(M_NORTH),
    );
    assert_eq!(s, 200, "{found}");
    let evs = found["events"].as_array().unwrap();
    assert_eq!(evs.len(), 1, "only north's event: {found}");
    assert_eq!(evs[0]["site"], "north");
    let (_, found) = get(
        &d,
        &format!(
            "/api/v1/keytags/events?door=north-main&purpose=witness-search&reason=fire&from={}&to={}",
            q(&from),
            q(&soon_after)
        ),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(
        found["events"].as_array().unwrap().len(),
        2,
        "both sites for a * user"
    );
    let north = entries(&d, M_NORTH);
    assert_eq!(
        north
            .iter()
            .filter(|e| e["action"] == "keytags.query.refused")
            .count(),
        keytag_cases.len()
    );

    // Logbook scope: what the admin did on the south camera and every refusal of unknown
    // origin is for `*` users only.
    let (s, _, _) = http_get_bytes(
        d.addr,
        &format!("/api/v1/cameras/south-cam/export.mp4?{range}&reason=south+incident"),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(s, 200);
    let all = entries(&d, A_ALL);
    let south_seq = all
        .iter()
        .rev()
        .find(|e| e["action"] == "export" && e["object"]["camera"] == "south-cam")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert!(
        all.iter().any(|e| e["sites"].as_array().is_none()),
        "entries without a site exist"
    );
    for tok in [A_NORTH, M_NORTH] {
        for e in entries(&d, tok) {
            let sites = e["sites"]
                .as_array()
                .expect("scoped users see only entries with sites");
            assert!(sites.iter().all(|s| s == "north"), "{e}");
            assert!(!e.to_string().contains("south"), "{e}");
        }
        assert_eq!(
            err(get(&d, &format!("/api/v1/logbook/{south_seq}"), Some(tok))).0,
            404
        );
    }
    assert_eq!(
        get(&d, &format!("/api/v1/logbook/{south_seq}"), Some(A_ALL)).0,
        200
    );
    // And the other way: the north manager's refused probes of the south camera (logged with
    // what was asked, for `*` users) are not the south site's to read either.
    let south = entries(&d, A_SOUTH);
    assert!(south.iter().any(|e| e["seq"] == south_seq));
    assert!(south.iter().all(|e| e["user"] != "m.north"), "{south:?}");
    assert_eq!(
        err(post(
            &d,
            &format!("/api/v1/logbook/{south_seq}/signoff"),
            Some(M_NORTH),
            r#"{"note":"seen"}"#
        ))
        .0,
        404
    );

    // Four eyes: the caretaker adds a finding to their own consultation, may not sign it; the
    // north manager signs it, bound to its hash; nobody signs their own entry.
    let (s, f) = post(
        &d,
        &format!("/api/v1/logbook/{export_seq}/finding"),
        Some(K_NORTH),
        r#"{"finding":"the thief is visible at 21:04"}"#,
    );
    assert_eq!(s, 201, "{f}");
    assert_eq!(
        err(post(
            &d,
            &format!("/api/v1/logbook/{south_seq}/finding"),
            Some(K_NORTH),
            r#"{"finding":"x"}"#
        ))
        .0,
        403
    );
    assert_eq!(
        err(post(
            &d,
            &format!("/api/v1/logbook/{export_seq}/signoff"),
            Some(K_NORTH),
            r#"{"note":"ok"}"#
        ))
        .0,
        403
    );
    let (_, exported) = get(&d, &format!("/api/v1/logbook/{export_seq}"), Some(M_NORTH));
    let (s, signed) = post(
        &d,
        &format!("/api/v1/logbook/{export_seq}/signoff"),
        Some(M_NORTH),
        r#"{"note":"reviewed, handed to police"}"#,
    );
    assert_eq!(s, 201, "{signed}");
    assert_eq!(signed["refers_hash"], exported["hash"]);
    let signoff_seq = signed["seq"].as_u64().unwrap();
    // Nor an entry about one's own: the manager's own export, a finding on it by someone else.
    let (s, head, _) = http_get_bytes(
        d.addr,
        &format!("/api/v1/cameras/north-cam/view.mp4?{range}&reason=own+look"),
        Some(M_NORTH),
    );
    assert_eq!(s, 200);
    let own = seq_header(&head);
    let (s, f) = post(
        &d,
        &format!("/api/v1/logbook/{own}/finding"),
        Some(ADMIN_TOKEN),
        r#"{"finding":"nothing to see"}"#,
    );
    assert_eq!(s, 201, "{f}");
    assert_eq!(
        err(post(
            &d,
            &format!("/api/v1/logbook/{}/signoff", f["seq"]),
            Some(M_NORTH),
            r#"{"note":"fine"}"#
        ))
        .0,
        403,
        "a finding about one's own look"
    );
    assert_eq!(
        err(post(
            &d,
            &format!("/api/v1/logbook/{signoff_seq}/signoff"),
            Some(M_NORTH),
            r#"{"note":"me again"}"#
        ))
        .0,
        403,
        "an own entry"
    );

    // An erasure: its intent is logged before the outcome, which refers to it.
    let (s, r) = post(
        &d,
        "/api/v1/erasures",
        Some(P_NORTH),
        r#"{"camera":"north-cam","from":"2020-01-01T00:00:00Z","to":"2020-01-02T00:00:00Z","reason":"data subject request","reference":"AVG-12"}"#,
    );
    assert_eq!(s, 200, "{r}");
    let intent_seq = r["logbook_seq"].as_u64().unwrap();
    let (_, intent) = get(&d, &format!("/api/v1/logbook/{intent_seq}"), Some(M_NORTH));
    assert_eq!(intent["action"], "erasure");
    assert_eq!(intent["reference"], "AVG-12");
    let outcome = &intent["linked"][0];
    assert_eq!(outcome["action"], "erasure.outcome", "{intent}");
    assert!(outcome["seq"].as_u64().unwrap() > intent_seq);
    assert!(
        outcome["text"].as_str().unwrap().starts_with("done"),
        "{outcome}"
    );

    // A valid token cannot write refusals without bound: past the per-user budget a refused
    // look is answered 429, and those are logged coalesced.
    let statuses: Vec<u16> = (0..40)
        .map(|i| {
            http_get_bytes(
                d.addr,
                &format!("/api/v1/cameras/north-cam/export.mp4?{range}&reason=try-{i}"),
                Some(T_NORTH),
            )
            .0
        })
        .collect();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(throttled >= 10, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 403 || *s == 429),
        "{statuses:?}"
    );
    let all = entries(&d, A_ALL);
    let own = all
        .iter()
        .filter(|e| e["user"] == "t.north" && e["action"] == "export.refused")
        .count();
    assert!(own <= 30, "{own} refusals of one user logged one by one");
    assert!(
        all.iter().any(|e| e["action"] == "denied"
            && e["object"]["status"] == 429
            && e["object"]["users"].to_string().contains("t.north")),
        "the 429s are logged, coalesced, naming the user"
    );

    let v = get(&d, "/api/v1/logbook/verify", Some(A_ALL)).1;
    assert_eq!(v["ok"], true, "{v}");
    let _ = PRIVACY_TOKEN;
}

#[test]
fn holds_on_cameras_no_longer_configured_stay_visible_and_releasable() {
    // No camera needs to answer for this: holds are about the index and the config.
    let dead = "rtsp://127.0.0.1:9/none";
    // (Lines before the first table land in `[http]`.)
    let mut d = Daemon::start(
        &format!("metrics_require_auth = true\n{}", config_with(dead, dead)),
        "",
    );
    // With metrics_require_auth, the exposition (which names every camera) is for `*` users.
    assert_eq!(err(get(&d, "/metrics", None)).0, 401);
    assert_eq!(err(get(&d, "/metrics", Some(M_NORTH))).0, 403);
    let (s, text) = d.get("/metrics", Some(ADMIN_TOKEN));
    assert_eq!(s, 200);
    assert!(text.contains("south-cam"));
    let from = Time90k::now().add_ticks(-3600 * 90_000).to_rfc3339();
    let to = Time90k::now().to_rfc3339();
    let (s, h) = post(
        &d,
        "/api/v1/holds",
        Some(ADMIN_TOKEN),
        &format!(
            r#"{{"cameras":["south-cam"],"from":"{from}","to":"{to}","reason":"stairwell fire","reference":"BR-4"}}"#
        ),
    );
    assert_eq!(s, 201, "{h}");
    let id = h["id"].as_u64().unwrap();

    // The south camera leaves the config.
    d.stop();
    let path = d.dir().join("holdfast.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let block = format!("[[cameras]]\nid = \"south-cam\"\nsite = \"south\"\nurl = \"{dead}\"\n");
    assert!(text.contains(&block));
    std::fs::write(&path, text.replace(&block, "")).unwrap();
    d.restart();
    let (_, cams) = get(&d, "/api/v1/cameras", Some(ADMIN_TOKEN));
    assert_eq!(cams.as_array().unwrap().len(), 1, "{cams}");

    // A `*` user still sees the hold and can release it; a scoped user sees nothing of it.
    let (s, all) = get(&d, "/api/v1/holds", Some(ADMIN_TOKEN));
    assert_eq!(s, 200);
    let held = all
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .unwrap();
    assert_eq!(held["cameras"], serde_json::json!(["south-cam"]));
    assert_eq!(held["state"], "active");
    let (_, mine) = get(&d, "/api/v1/holds", Some(M_NORTH));
    assert!(
        mine.as_array().unwrap().iter().all(|x| x["id"] != id),
        "{mine}"
    );
    assert_eq!(
        err(get(&d, &format!("/api/v1/holds/{id}"), Some(M_NORTH))).0,
        404
    );
    assert_eq!(
        err(post(
            &d,
            &format!("/api/v1/holds/{id}/release"),
            Some(M_NORTH),
            r#"{"reason":"x"}"#
        ))
        .0,
        404
    );
    let (s, r) = post(
        &d,
        &format!("/api/v1/holds/{id}/release"),
        Some(ADMIN_TOKEN),
        r#"{"reason":"camera removed, case closed"}"#,
    );
    assert_eq!((s, r["state"].as_str()), (200, Some("released")), "{r}");
}

/// A client socket with a tiny receive buffer, so that a client that stops reading stalls the
/// sender after a few kilobytes instead of after megabytes of kernel buffers.
fn small_window_connect(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect");
        std::net::TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn an_export_whose_client_stops_reading_is_dropped_and_logged_aborted() {
    use std::io::{BufRead, BufReader, Read, Write};
    // camsim's 4 Mbit/s clip: 20 s of it is far more than any socket buffer.
    let port = support::procs::free_port();
    let mut sim = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args([
            "camsim",
            "--streams",
            "1",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sim.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("camsim:"), "{line}");
    let url = format!("rtsp://127.0.0.1:{port}/cam0");
    let d = Daemon::start(&config_with(&url, "rtsp://127.0.0.1:9/none"), "");
    d.wait_until(Duration::from_secs(30), |d| {
        d.camera_state("north-cam") == "recording"
    });
    std::thread::sleep(Duration::from_secs(22));
    let from = Time90k::now().add_ticks(-60 * 90_000).to_rfc3339();
    let to = Time90k::now().to_rfc3339();

    let t0 = std::time::Instant::now();
    let mut s = small_window_connect(d.addr);
    write!(
        s,
        "GET /api/v1/cameras/north-cam/export.mp4?from={}&to={}&reason=stall+test HTTP/1.1\r\n\
         Host: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n",
        q(&from),
        q(&to)
    )
    .unwrap();
    let mut head = vec![0u8; 1024];
    let n = s.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seq = seq_header(&head);
    // Now stop reading. Within a minute and a bit the daemon gives up and logs the outcome.
    let mut outcome = serde_json::Value::Null;
    d.wait_until(Duration::from_secs(100), |d| {
        let (_, e) = get(d, &format!("/api/v1/logbook/{seq}"), Some(ADMIN_TOKEN));
        outcome = e["linked"][0].clone();
        !outcome.is_null()
    });
    let waited = t0.elapsed();
    eprintln!("stalled export dropped after {waited:?}: {outcome}");
    assert!(
        waited >= Duration::from_secs(55),
        "dropped too early: {waited:?}"
    );
    assert_eq!(outcome["object"]["outcome"], "aborted", "{outcome}");
    let sent = outcome["object"]["bytes_sent"].as_u64().unwrap();
    let planned = outcome["object"]["bytes_planned"].as_u64().unwrap();
    assert!(sent < planned, "{sent} of {planned}");
    assert!(
        planned > 4 << 20,
        "the clip is big enough to stall: {planned}"
    );
    // Recording went on meanwhile.
    assert_eq!(d.camera_state("north-cam"), "recording");
    drop(s);
    unsafe {
        libc::kill(sim.id() as i32, libc::SIGTERM);
    }
    let _ = sim.wait();
}

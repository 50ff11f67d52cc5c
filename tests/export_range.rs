//! Issue 12 (footage for the console): byte ranges of the deterministic MP4 layout, view and
//! export ids, HTTP Range on `view.mp4`/`export.mp4`, receipts and the retention edge.
//!
//! The layout test uses a real store in a temp dir; the daemon test writes the shipped H.264 clip
//! into a real data dir (as `tests/export.rs` does), starts the real daemon, and checks over HTTP
//! that every range of an id is the same slice of the full file, that a seek-like run of ranges
//! adds no logbook entry, that an export's download has the size and SHA-256 its receipt and
//! logbook entry gave and plays, and that an erasure after the POST makes the download fail.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use holdfast::export::{plan, send_payloads, Layout};
use holdfast::store::index::IndexBatch;
use holdfast::time::Time90k;
use rand::Rng;
use sha2::{Digest, Sha256};
use support::procs::{ffmpeg_errors, ffprobe, http_post, q, user, Daemon, PRIVACY_TOKEN};

/// For random ranges, `Layout::send_range` gives exactly the slice of the whole file (header and
/// payloads as `send_payloads` sends them), and only ranges that touch an erased segment fail.
#[test]
fn every_byte_range_of_a_layout_is_the_slice_of_the_whole_file() {
    let seed = support::synth::seed();
    println!("HOLDFAST_TEST_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = support::synth::store_and_writer(dir.path());
    // 60 segments of 2 s across an hour boundary (two bucket files).
    let hour = Time90k::parse_rfc3339("2026-11-20T10:00:00Z").unwrap();
    let t0 = hour.add_ticks(-60 * 90_000);
    let mut rng = support::synth::rng(seed);
    let pool = support::synth::pool(&mut rng, 1 << 20);
    for i in 0..60i64 {
        let seg = support::synth::segment(
            &mut rng,
            &pool,
            "a",
            "month",
            t0.add_ticks(i * 2 * 90_000),
            50,
            300,
        );
        writer.handle().submit(seg).unwrap();
    }
    assert!(writer.handle().flush());
    writer.shutdown();

    // From the middle of the first segment: the first chunk starts inside its payload.
    let (from, to) = (t0.add_ticks(45_000), t0.add_ticks(120 * 90_000));
    let mut p = plan(&store, "a", from, to).unwrap();
    assert_eq!(p.chunks.len(), 60);
    let layout = Layout::new(p.clone(), false).unwrap();
    // The whole file by the sequential path.
    let mut whole = holdfast::export::mp4::header(&p).unwrap().to_vec();
    send_payloads(&store, &mut p, |b| {
        whole.extend_from_slice(&b);
        true
    })
    .unwrap();
    assert_eq!(layout.len(), whole.len() as u64);
    let range = |a: u64, b: u64| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        layout
            .send_range(&store, a, b, |piece| {
                out.extend_from_slice(&piece);
                true
            })
            .map_err(|e| e.to_string())?;
        Ok(out)
    };
    assert_eq!(range(0, layout.len()).unwrap(), whole);
    let len = layout.len();
    let head = layout.head.len() as u64;
    // Edges: inside the header, across its end, the last byte, past the end (clamped).
    for (a, b) in [
        (0, 1),
        (0, head),
        (head - 1, head + 1),
        (head, head + 1),
        (len - 1, len),
        (len - 10, len + 1000),
        (5, 5),
    ] {
        assert_eq!(
            range(a, b).unwrap(),
            whole[a as usize..b.min(len) as usize],
            "{a}..{b}"
        );
    }
    for _ in 0..300 {
        let a = rng.random_range(0..len);
        let b = rng.random_range(a..=len);
        assert_eq!(
            range(a, b).unwrap(),
            whole[a as usize..b as usize],
            "{a}..{b}"
        );
    }
    // A seek-like sequence of ranges put together is the file.
    let mut cuts: Vec<u64> = (0..20).map(|_| rng.random_range(0..len)).collect();
    cuts.extend([0, len]);
    cuts.sort();
    let mut joined = Vec::new();
    for w in cuts.windows(2) {
        joined.extend(range(w[0], w[1]).unwrap());
    }
    assert_eq!(joined, whole);

    // Segment 40 erased (the index commit only; its bytes still on disk): a range that needs it
    // fails and sends nothing of it, ranges before it still work, `still_stored` sees it.
    let erased = layout.plan.chunks[40].entry.clone();
    let mut batch = IndexBatch::default();
    batch.delete_segment(store.index(), &erased);
    store.index().commit(batch, true).unwrap();
    let at = head + layout.plan.chunks[..40].iter().map(|c| c.len).sum::<u64>();
    assert!(layout.still_stored(&store, 0, at).is_ok());
    let err = layout.still_stored(&store, 0, at + 1).unwrap_err();
    assert!(err.to_string().contains("no longer in the index"), "{err}");
    assert_eq!(range(0, at).unwrap(), whole[..at as usize]);
    let mut got = Vec::new();
    let err = layout
        .send_range(&store, at - 100, at + 100, |piece| {
            got.extend_from_slice(&piece);
            true
        })
        .unwrap_err();
    assert!(err.to_string().contains("no longer in the index"), "{err}");
    assert_eq!(got, whole[(at - 100) as usize..at as usize]);
}

/// A request on a fresh connection with extra headers: (status, head, body).
fn fetch(
    addr: SocketAddr,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    support::procs::http_get_bytes_with(addr, path, Some(token), headers)
}

/// A header of a response head (case-insensitive name).
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

fn post(d: &Daemon, path: &str, token: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = http_post(d.addr, path, Some(token), &body.to_string());
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text })),
    )
}

/// The logbook as the manager sees it: seq -> entry.
fn logbook(d: &Daemon) -> BTreeMap<u64, serde_json::Value> {
    d.get_json("/api/v1/logbook")["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e.clone()))
        .collect()
}

const OTHER_TOKEN: &str = "test-other-manager-token-0123456789";

#[test]
fn view_and_export_ids_serve_exact_ranges_without_new_entries_and_receipts_match() {
    let cfg = format!(
        "[policies.month]\nvideo = \"28d\"\nkeytags = \"28d\"\n\n[[sites]]\nid = \"s\"\npolicy = \"month\"\n\n\
         [[cameras]]\nid = \"lobby\"\nsite = \"s\"\nurl = \"rtsp://127.0.0.1:9/none\"\n{}",
        user("other-manager", "manager", OTHER_TOKEN, "[\"*\"]")
    );
    let mut d = Daemon::start(&cfg, "");
    d.stop();
    // 40 s of the shipped clip (real H.264, 25 fps, a keyframe every 2 s) an hour ago.
    let t0 = Time90k::now().add_ticks(-3600 * 90_000);
    support::clip::write_clip_segments(&d.data_dir, "lobby", "month", t0, 0..20, 3600);
    d.restart();
    let (from, to) = (t0.to_rfc3339(), t0.add_ticks(40 * 90_000).to_rfc3339());
    let admin = d.token.clone();

    // The retention edge: the policy's 28 days before the trusted now.
    let rec = d.get_json(&format!(
        "/api/v1/cameras/lobby/recordings?from={}&to={}",
        q(&from),
        q(&to)
    ));
    let edge = Time90k::parse_rfc3339(rec["retention_edge"].as_str().expect("an edge")).unwrap();
    let expect = Time90k::now().add_ticks(-28 * 86_400 * 90_000);
    assert!(
        (edge.0 - expect.0).abs() < 60 * 90_000,
        "edge {rec} vs {}",
        expect.to_rfc3339()
    );

    // A view id: one `view` entry, written before the 201.
    let before = logbook(&d);
    let (status, v) = post(
        &d,
        "/api/v1/cameras/lobby/views",
        &admin,
        &serde_json::json!({ "from": from, "to": to, "purpose": "incident", "reason": "incident 12: the broken door" }),
    );
    assert_eq!(status, 201, "{v}");
    let seq = v["logbook_seq"].as_u64().unwrap();
    let book = logbook(&d);
    assert_eq!(book.len(), before.len() + 1);
    assert_eq!(book[&seq]["action"], "view");
    assert_eq!(book[&seq]["reason"], "incident 12: the broken door");
    let url = v["url"].as_str().unwrap().to_owned();
    let size = v["size"].as_u64().unwrap();
    assert!(
        url.starts_with("/api/v1/cameras/lobby/view.mp4?view="),
        "{url}"
    );
    assert!(v["view"].as_str().unwrap().len() >= 22);
    for k in ["clip_start", "clip_end", "expires_at"] {
        assert!(
            Time90k::parse_rfc3339(v[k].as_str().unwrap()).is_ok(),
            "{k}: {v}"
        );
    }

    // The whole file, then ranges of it.
    let (status, head, full) = fetch(d.addr, &url, &admin, &[]);
    assert_eq!(status, 200, "{head}");
    assert_eq!(full.len() as u64, size);
    assert_eq!(header(&head, "accept-ranges").as_deref(), Some("bytes"));
    let etag = header(&head, "etag").expect("an ETag");
    assert_eq!(etag, format!("\"{}\"", v["view"].as_str().unwrap()));
    assert!(header(&head, "content-disposition")
        .unwrap()
        .starts_with("inline"));
    let mut rng = support::synth::rng(support::synth::seed());
    let mut ranges = vec![
        "bytes=0-".to_owned(),
        "bytes=0-99".to_owned(),
        "bytes=-1000".to_owned(),
        format!("bytes={}-", size / 2),
        format!("bytes={}-{}", size - 10, size + 5000),
    ];
    // A seek-like sequence, as a <video> element asks.
    for _ in 0..8 {
        let a = rng.random_range(0..size);
        ranges.push(format!(
            "bytes={a}-{}",
            (a + rng.random_range(1..200_000)).min(size + 10)
        ));
    }
    for r in &ranges {
        let (status, head, body) = fetch(d.addr, &url, &admin, &[("Range", r)]);
        assert_eq!(status, 206, "{r}: {head}");
        let cr = header(&head, "content-range").expect("Content-Range");
        let (span, total) = cr.strip_prefix("bytes ").unwrap().split_once('/').unwrap();
        assert_eq!(total.parse::<u64>().unwrap(), size);
        let (a, b) = span.split_once('-').unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(body, full[a..=b], "{r}: {cr}");
        assert_eq!(header(&head, "accept-ranges").as_deref(), Some("bytes"));
        assert_eq!(
            header(&head, "x-holdfast-logbook-seq"),
            Some(seq.to_string())
        );
    }
    // If-Range: the view's tag applies the range; another tag or a date gets the whole file.
    let r = [("Range", "bytes=10-19"), ("If-Range", etag.as_str())];
    let (status, _, body) = fetch(d.addr, &url, &admin, &r);
    assert_eq!((status, &body[..]), (206, &full[10..20]));
    for other in ["\"another\"", "Sun, 06 Dec 2026 00:00:00 GMT"] {
        let r = [("Range", "bytes=10-19"), ("If-Range", other)];
        let (status, _, body) = fetch(d.addr, &url, &admin, &r);
        assert_eq!((status, body.len() as u64), (200, size), "{other}");
    }
    // Several ranges and invalid syntax: the whole file; past the end: 416.
    for r in ["bytes=0-9,20-29", "bytes=9-5", "pages=1-2"] {
        let (status, _, body) = fetch(d.addr, &url, &admin, &[("Range", r)]);
        assert_eq!((status, body == full), (200, true), "{r}");
    }
    let past = format!("bytes={size}-");
    let (status, head, _) = fetch(d.addr, &url, &admin, &[("Range", &past)]);
    assert_eq!(status, 416, "{head}");
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes */{size}"))
    );
    // None of this added a logbook entry.
    assert_eq!(
        logbook(&d).len(),
        book.len(),
        "ranged GETs of a view id log nothing"
    );
    // Another user's id, an unknown id, the id on another route: 404.
    let (status, _, body) = fetch(d.addr, &url, OTHER_TOKEN, &[("Range", "bytes=0-9")]);
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no such view"));
    let bad = format!("/api/v1/cameras/lobby/view.mp4?view={}", "A".repeat(24));
    assert_eq!(fetch(d.addr, &bad, &admin, &[]).0, 404);

    // An export id by the privacy officer: size and SHA-256 before the entry, in the entry.
    let (status, x) = post(
        &d,
        "/api/v1/cameras/lobby/exports",
        PRIVACY_TOKEN,
        &serde_json::json!({
            "from": from, "to": to, "purpose": "subject-access",
            "reason": "request of data subject, letter 2026-114",
            "recipient": "the data subject", "reference": "AVG-2026-114",
        }),
    );
    assert_eq!(status, 201, "{x}");
    let xseq = x["logbook_seq"].as_u64().unwrap();
    let entry = d.get_json(&format!("/api/v1/logbook/{xseq}"));
    let sha = x["sha256"].as_str().unwrap().to_owned();
    let xsize = x["size"].as_u64().unwrap();
    assert_eq!(entry["action"], "export");
    assert_eq!(entry["object"]["sha256"], sha.as_str());
    assert_eq!(entry["object"]["size"], xsize);
    assert_eq!(entry["object"]["file_name"], x["file_name"]);
    assert_eq!(entry["recipient"], "the data subject");
    for k in [
        "camera",
        "from",
        "to",
        "clip_start",
        "clip_end",
        "purpose",
        "reason",
        "recipient",
        "reference",
        "user",
        "created_at",
        "url",
        "export",
    ] {
        assert!(!x[k].is_null(), "{k} in {x}");
    }
    assert_eq!(x["user"], "test-privacy");
    // The receipt again, for its maker only.
    let id = x["export"].as_str().unwrap();
    let (status, text) = d.get(&format!("/api/v1/exports/{id}"), Some(PRIVACY_TOKEN));
    assert_eq!(status, 200, "{text}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), x);
    assert_eq!(d.get(&format!("/api/v1/exports/{id}"), Some(&admin)).0, 404);

    // The full download: that size and hash, an attachment, and it plays.
    let xurl = x["url"].as_str().unwrap().to_owned();
    let (status, head, file) = fetch(d.addr, &xurl, PRIVACY_TOKEN, &[]);
    assert_eq!(status, 200, "{head}");
    assert_eq!(file.len() as u64, xsize);
    assert_eq!(hex::encode(Sha256::digest(&file)), sha);
    assert_eq!(
        header(&head, "content-disposition"),
        Some(format!(
            "attachment; filename=\"{}\"",
            x["file_name"].as_str().unwrap()
        ))
    );
    let clip = d.dir().join("export.mp4");
    std::fs::write(&clip, &file).unwrap();
    let (frames, secs, codec) = ffprobe(&clip);
    assert_eq!((frames, codec.as_str()), (1000, "h264"));
    assert!((secs - 40.0).abs() < 0.05, "duration {secs}");
    let errors = ffmpeg_errors(&clip);
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");
    // Its outcome entry refers to the export entry (written when the body is done with).
    d.wait_until(Duration::from_secs(10), |d| {
        logbook(d)
            .values()
            .any(|e| e["action"] == "export.outcome" && e["refers_to"] == xseq)
    });
    let outcome = logbook(&d)
        .into_values()
        .find(|e| e["action"] == "export.outcome" && e["refers_to"] == xseq)
        .unwrap();
    assert_eq!(outcome["object"]["outcome"], "complete");
    assert_eq!(outcome["object"]["sha256"], sha.as_str());
    // Ranged, in pieces: the same file, and no entry per piece.
    let n = logbook(&d).len();
    let mut joined = Vec::new();
    let step = xsize / 3 + 1;
    for a in (0..xsize).step_by(step as usize) {
        let r = format!("bytes={a}-{}", a + step - 1);
        let (status, _, body) = fetch(d.addr, &xurl, PRIVACY_TOKEN, &[("Range", &r)]);
        assert_eq!(status, 206);
        joined.extend(body);
    }
    assert_eq!(joined, file);
    assert_eq!(logbook(&d).len(), n, "ranged downloads log nothing");
    // A HEAD of the export id: its size, no body, and no outcome entry (nothing was
    // downloaded). The outcome of a GET is written when its body is dropped; a GET after the
    // HEAD whose outcome is awaited shows that the HEAD's would have been written by then.
    let (status, head, body_bytes) = support::procs::http_head(d.addr, &xurl, Some(PRIVACY_TOKEN));
    assert_eq!((status, body_bytes), (200, 0), "{head}");
    assert_eq!(header(&head, "content-length"), Some(xsize.to_string()));
    let (status, _, again) = fetch(d.addr, &xurl, PRIVACY_TOKEN, &[]);
    assert_eq!((status, again == file), (200, true));
    d.wait_until(Duration::from_secs(10), |d| logbook(d).len() > n);
    let new: Vec<serde_json::Value> = logbook(&d).into_values().skip(n).collect();
    assert_eq!(new.len(), 1, "only the GET's outcome: {new:?}");
    assert_eq!(new[0]["action"], "export.outcome");
    assert_eq!(new[0]["object"]["outcome"], "complete");
    // Outcomes are written off the async threads, so their order is not the requests': after
    // a settle, still no other outcome of this export than the complete ones.
    std::thread::sleep(Duration::from_millis(500));
    let outcomes: Vec<serde_json::Value> = logbook(&d)
        .into_values()
        .filter(|e| e["action"] == "export.outcome" && e["refers_to"] == xseq)
        .collect();
    assert!(
        outcomes
            .iter()
            .all(|e| e["object"]["outcome"] == "complete"),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.len(),
        2,
        "the first download's and this GET's: {outcomes:?}"
    );

    // A plain GET with a Range still logs its own entry (and says which range).
    let plain = format!(
        "/api/v1/cameras/lobby/view.mp4?from={}&to={}&reason={}",
        q(&from),
        q(&to),
        q("a plain look")
    );
    let (status, head, body) = fetch(d.addr, &plain, &admin, &[("Range", "bytes=0-99")]);
    assert_eq!(status, 206, "{head}");
    assert_eq!(body, full[..100]);
    let plain_seq: u64 = header(&head, "x-holdfast-logbook-seq")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        logbook(&d)[&plain_seq]["object"]["range"],
        format!("bytes 0-99/{size}")
    );

    // A refused POST is logged like a refused GET (with what was asked); unknown fields are
    // named.
    let (status, r) = post(
        &d,
        "/api/v1/cameras/lobby/exports",
        PRIVACY_TOKEN,
        &serde_json::json!({ "from": from, "to": to, "purpose": "incident", "reason": "x" }),
    );
    assert_eq!(status, 403, "{r}");
    let refused = logbook(&d)
        .into_values()
        .rfind(|e| e["action"] == "export.refused")
        .expect("the refusal is logged");
    assert_eq!(refused["action"], "export.refused");
    assert_eq!(refused["purpose"], "incident");
    let (status, r) = post(
        &d,
        "/api/v1/cameras/lobby/views",
        &admin,
        &serde_json::json!({ "from": from, "to": to, "reason": "x", "colour": "red" }),
    );
    assert_eq!(status, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("colour"), "{r}");

    // An erasure after the POST: the download fails (410) rather than send other bytes, and
    // so does the view.
    let erase_to = t0.add_ticks(10 * 90_000).to_rfc3339();
    let (status, r) = post(
        &d,
        "/api/v1/erasures",
        PRIVACY_TOKEN,
        &serde_json::json!({ "camera": "lobby", "from": from, "to": erase_to, "reason": "erasure request AVG-2026-115" }),
    );
    assert_eq!(status, 200, "{r}");
    let (status, head, body) = fetch(d.addr, &xurl, PRIVACY_TOKEN, &[]);
    assert_eq!(status, 410, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("changed"));
    assert_eq!(fetch(d.addr, &url, &admin, &[("Range", "bytes=0-")]).0, 410);
    // A range of the view past the erased part is still those bytes.
    let tail = format!("bytes={}-", size - 1000);
    let (status, _, body) = fetch(d.addr, &url, &admin, &[("Range", &tail)]);
    assert_eq!((status, &body[..]), (206, &full[(size - 1000) as usize..]));
    d.stop();
}

//! MP4 export, checked with ffprobe and ffmpeg: the data-subject window (21:00 to 21:15
//! Europe/Amsterdam) is exactly that window plus the lead-in to its keyframe, and a clip across
//! a resolution change and a recording gap from a real RTSP camera decodes without an error.

mod support;

use std::sync::Arc;
use std::time::Duration;

use holdfast::store::Store;
use holdfast::time::Time90k;
use support::procs::{
    ffmpeg_errors, ffprobe, http_get_bytes, q, Daemon, RtspServer, PRIVACY_TOKEN,
};

const SITE: &str = "[policies.month]\nvideo = \"28d\"\nkeytags = \"28d\"\n\n[[sites]]\nid = \"s\"\npolicy = \"month\"\n";

#[test]
fn the_data_subject_window_is_exactly_21_00_to_21_15_amsterdam_plus_the_lead_in() {
    // Two days ago, 21:00 and 21:15 in Amsterdam.
    let day = jiff::Zoned::now()
        .in_tz("Europe/Amsterdam")
        .unwrap()
        .date()
        .checked_sub(jiff::Span::new().days(2))
        .unwrap();
    let at = |h: i8, m: i8, s: i8| {
        let z = day.at(h, m, s, 0).in_tz("Europe/Amsterdam").unwrap();
        (
            z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
            Time90k::parse_rfc3339(&z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()).unwrap(),
        )
    };
    let (from_s, from) = at(21, 0, 0);
    let (to_s, _) = at(21, 15, 0);
    // Keyframes every 50 s (the clip's 50-frame GOPs at one frame per second), one at 20:59:37.
    let (_, first_key) = at(20, 59, 37);

    let mut d = Daemon::start(
        &format!("{SITE}\n[[cameras]]\nid = \"lobby\"\nsite = \"s\"\nurl = \"rtsp://127.0.0.1:9/none\"\n"),
        "",
    );
    d.stop();
    let (samples, _) = support::clip::clip_samples();
    assert_eq!(samples.len(), 100);
    assert!(samples[0].1 && samples[50].1);
    // From 20:57:57 to 21:17:07: 23 segments of one GOP each, frames of 1 s.
    support::clip::write_clip_segments(&d.data_dir, "lobby", "month", first_key, -2..21, 90_000);
    d.restart();

    let path = format!(
        "/api/v1/cameras/lobby/export.mp4?from={}&to={}&reason={}&purpose=subject-access",
        q(&from_s),
        q(&to_s),
        q("request of data subject, letter 2026-114")
    );
    let (status, head, mp4) = http_get_bytes(d.addr, &path, Some(PRIVACY_TOKEN));
    assert_eq!(status, 200, "{head}\n{}", String::from_utf8_lossy(&mp4));
    let clip = d.dir().join("window.mp4");
    std::fs::write(&clip, &mp4).unwrap();
    // 20:59:37 up to the last frame that starts before 21:15:00 (21:14:59): 923 frames of 1 s.
    let lead_in = (from.0 - first_key.0) / 90_000;
    assert_eq!(lead_in, 23);
    let (frames, secs, codec) = ffprobe(&clip);
    assert_eq!(codec, "h264");
    assert_eq!(frames, 15 * 60 + 23);
    assert!((secs - 923.0).abs() < 0.01, "duration {secs}");
    let errors = ffmpeg_errors(&clip);
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");
    let book = d.get_json("/api/v1/logbook");
    let e = book["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == "export")
        .unwrap()
        .clone();
    assert_eq!(e["purpose"], "subject-access");
    assert_eq!(
        Time90k::parse_rfc3339(e["object"]["clip_start"].as_str().unwrap()).unwrap(),
        first_key
    );
    // The privacy officer may not export for another purpose.
    let other = path.replace("subject-access", "incident");
    assert_eq!(http_get_bytes(d.addr, &other, Some(PRIVACY_TOKEN)).0, 403);
}

#[test]
fn a_clip_across_a_resolution_change_and_a_gap_decodes_cleanly() {
    let mut server = RtspServer::start(&["--cameras", "1", "--resize-after", "3"]);
    let mut d = Daemon::start(
        &format!(
            "{SITE}\n[[cameras]]\nid = \"hall\"\nsite = \"s\"\nurl = \"{}\"\n",
            server.url("/cam0")
        ),
        "segment_target = \"1s\"",
    );
    let t0 = Time90k::now();
    d.wait_until(Duration::from_secs(20), |d| {
        d.camera_state("hall") == "recording"
    });
    std::thread::sleep(Duration::from_secs(6));
    server.stop();
    d.wait_until(Duration::from_secs(10), |d| {
        d.camera_state("hall") != "recording"
    });
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    d.wait_until(Duration::from_secs(10), |d| {
        d.camera_state("hall") == "recording"
    });
    // Wait until footage after the gap is durable.
    let recorded = |d: &Daemon| {
        let range = format!(
            "from={}&to={}",
            q(&t0.to_rfc3339()),
            q(&Time90k::now().to_rfc3339())
        );
        d.get_json(&format!("/api/v1/cameras/hall/recordings?{range}"))["intervals"]
            .as_array()
            .unwrap()
            .len()
    };
    d.wait_until(Duration::from_secs(20), |d| recorded(d) >= 2);
    std::thread::sleep(Duration::from_secs(2));
    let t1 = Time90k::now();
    let range = format!("from={}&to={}", q(&t0.to_rfc3339()), q(&t1.to_rfc3339()));
    let (status, head, mp4) = http_get_bytes(
        d.addr,
        &format!("/api/v1/cameras/hall/export.mp4?{range}&reason=incident-7"),
        Some(&d.token),
    );
    assert_eq!(status, 200, "{head}");
    let book = d.get_json("/api/v1/logbook");
    let logged = book["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == "export")
        .unwrap()["object"]
        .clone();
    d.stop();

    // The stored segments of that range: more than one codec config (the resize), and the
    // frame count the clip must have.
    let store = Store::open_without_recovery(&d.data_dir).unwrap();
    let segs = store.index().camera_segments("hall", t0, t1).unwrap();
    let codecs: std::collections::BTreeSet<u64> = segs.iter().map(|s| s.codec_id).collect();
    assert!(
        codecs.len() >= 2,
        "the resolution change gave a new codec config"
    );
    // What the export contained (segments still being built at the request came later).
    let clip_end = Time90k::parse_rfc3339(logged["clip_end"].as_str().unwrap()).unwrap();
    let plan = holdfast::export::plan(&store, "hall", t0, clip_end).unwrap();
    assert!(plan.codecs.len() >= 2);
    assert_eq!(
        plan.samples.len() as u64,
        logged["frames"].as_u64().unwrap()
    );

    let clip = d.dir().join("gap.mp4");
    std::fs::write(&clip, &mp4).unwrap();
    let (frames, secs, _) = ffprobe(&clip);
    assert_eq!(frames, plan.samples.len() as u64);
    assert!(
        (secs - plan.duration as f64 / 90_000.0).abs() < 0.05,
        "duration {secs} s vs {} recorded",
        plan.duration as f64 / 90_000.0
    );
    let errors = ffmpeg_errors(&clip);
    assert!(errors.trim().is_empty(), "ffmpeg: {errors}");
}

/// Issue 11 (export fast): a plan opens each bucket file once and reads each header once (by
/// several threads: more than 48 segments), lays out exactly what the old per-segment path
/// (`read_segment_header`, then `read_segment`) laid out, and sends only payloads whose entry
/// is still in the index: an erasure committed after planning (holes not punched yet) and a
/// punched hole both end the stream at that segment, with nothing of it sent.
#[test]
fn a_plan_opens_each_bucket_once_and_never_sends_what_an_erasure_removed() {
    use holdfast::store::index::IndexBatch;
    use std::os::unix::io::AsRawFd;

    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = support::synth::store_and_writer(dir.path());
    // 120 segments of 2 s of two interleaved cameras, across an hour boundary (two files).
    let hour = Time90k::parse_rfc3339("2026-11-20T10:00:00Z").unwrap();
    let t0 = hour.add_ticks(-120 * 90_000);
    let mut rng = support::synth::rng(7);
    let pool = support::synth::pool(&mut rng, 1 << 20);
    for i in 0..120i64 {
        for cam in ["a", "b"] {
            let seg = support::synth::segment(
                &mut rng,
                &pool,
                cam,
                "month",
                t0.add_ticks(i * 2 * 90_000),
                50,
                300,
            );
            writer.handle().submit(seg).unwrap();
        }
    }
    assert!(writer.handle().flush());
    writer.shutdown();

    let (from, to) = (t0, t0.add_ticks(240 * 90_000));
    let mut plan = holdfast::export::plan(&store, "a", from, to).unwrap();
    assert_eq!(plan.chunks.len(), 120);
    let mut files: Vec<*const holdfast::export::OpenBucket> = plan
        .chunks
        .iter()
        .map(|c| Arc::as_ptr(c.file.as_ref().expect("opened while planning")))
        .collect();
    files.dedup();
    assert_eq!(files.len(), 2, "one open per bucket file");

    // The old path's layout and bytes.
    let entries = store.index().camera_segments("a", from, to).unwrap();
    let mut old = holdfast::export::plan_from_headers(
        "a",
        from,
        to,
        entries.iter().map(|e| {
            let h = store.read_segment_header(e).unwrap();
            (e.clone(), h, None)
        }),
    );
    assert_eq!(
        holdfast::export::mp4::header(&old).unwrap(),
        holdfast::export::mp4::header(&plan).unwrap()
    );
    let old_bytes: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| store.read_segment(e).unwrap().1)
        .collect();
    // Each bucket file is closed once its last chunk is sent (an expired bucket's space is then
    // freed at once, not at the end of a long export): while the second file's chunks go out,
    // no descriptor of this process points at the first file any more.
    let first = store.bucket_path(&plan.chunks[0].entry.policy, plan.chunks[0].entry.bucket);
    let open_on = |path: &std::path::Path| {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|l| std::fs::read_link(l.path()).is_ok_and(|t| t == path))
            .count()
    };
    assert_eq!(open_on(&first), 1, "open while planned");
    let last_of_first = plan
        .chunks
        .iter()
        .rposition(|c| store.bucket_path(&c.entry.policy, c.entry.bucket) == first)
        .unwrap();
    assert!(
        last_of_first + 1 < plan.chunks.len(),
        "the window spans two files"
    );
    let mut sent = Vec::new();
    let (mut n, mut open_after_first) = (0, usize::MAX);
    holdfast::export::send_payloads(&store, &mut plan, |b| {
        sent.extend_from_slice(&b);
        if n == last_of_first + 1 {
            open_after_first = open_on(&first);
        }
        n += 1;
        true
    })
    .unwrap();
    assert_eq!(
        open_after_first, 0,
        "the first file is closed after its last chunk"
    );
    assert_eq!(sent, old_bytes.concat());
    // A plan without open files (opened while sending) sends the same.
    let mut again = Vec::new();
    holdfast::export::send_payloads(&store, &mut old, |b| {
        again.extend_from_slice(&b);
        true
    })
    .unwrap();
    assert_eq!(again, sent);

    // Segment 70 erased after planning: the index commit only, its bytes still on disk.
    let mut batch = IndexBatch::default();
    batch.delete_segment(store.index(), &plan.chunks[70].entry);
    store.index().commit(batch, true).unwrap();
    let mut sent = Vec::new();
    let err = holdfast::export::send_payloads(&store, &mut plan, |b| {
        sent.extend_from_slice(&b);
        true
    })
    .unwrap_err();
    assert!(err.to_string().contains("no longer in the index"), "{err}");
    assert_eq!(sent, old_bytes[..70].concat());

    // Segment 30's payload punched out (what the reclaim of an erasure does): its CRC fails.
    let e = &plan.chunks[30].entry;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(store.bucket_path(&e.policy, e.bucket))
        .unwrap();
    // SAFETY: fallocate on an open descriptor with plain integer arguments.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            (e.offset + u64::from(e.header_len)) as libc::off_t,
            e.payload_len as libc::off_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let mut sent = Vec::new();
    let err = holdfast::export::send_payloads(&store, &mut plan, |b| {
        sent.extend_from_slice(&b);
        true
    })
    .unwrap_err();
    assert!(err.to_string().contains("CRC"), "{err}");
    assert_eq!(sent, old_bytes[..30].concat());
}

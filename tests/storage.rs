//! Storage engine integration tests: the writer, the index and recovery on a real RocksDB and
//! real files in a temporary directory.

mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use holdfast::metrics::Metrics;
use holdfast::store::index::SegmentEntry;
use holdfast::store::recovery;
use holdfast::store::segment::Segment;
use holdfast::store::writer::{SubmitError, Writer, WriterConfig};
use holdfast::store::Store;
use holdfast::time::{Time90k, TICKS_PER_SEC};
use support::synth;

const BUCKET: u32 = 10;

fn config() -> WriterConfig {
    WriterConfig {
        bucket_secs: BUCKET,
        sync_interval: Duration::from_millis(20),
        queue_limit_bytes: 1 << 30,
        queue_limit_segments: 10_000,
        io: Default::default(),
    }
}

/// Segments of 3 cameras over two policies, spanning several 10 s buckets.
fn sample(seed: u64, per_camera: usize) -> Vec<Segment> {
    let mut rng = synth::rng(seed);
    let pool = synth::pool(&mut rng, 1 << 20);
    let t0 = Time90k::from_unix_seconds(1_795_000_000);
    let mut out = Vec::new();
    for i in 0..per_camera {
        for (c, cam) in ["noord-entrance", "noord-stairs", "west-hall"]
            .iter()
            .enumerate()
        {
            let policy = if c == 2 { "seven-days" } else { "four-weeks" };
            let start = t0.add_ticks((i as i64 * 2 + c as i64) * TICKS_PER_SEC);
            out.push(synth::segment(
                &mut rng, &pool, cam, policy, start, 50, 2_000,
            ));
        }
    }
    out
}

/// Writes segments through a real writer and waits until they are durable.
fn write_all(dir: &Path, segs: Vec<Segment>) -> Vec<SegmentEntry> {
    let (store, _) = Store::open(dir, BUCKET).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let writer = Writer::spawn(
        Arc::new(store),
        config(),
        Arc::new(Metrics::new()),
        Some(tx),
    )
    .unwrap();
    let h = writer.handle();
    let n = segs.len();
    for s in segs {
        h.submit(s).unwrap();
    }
    assert!(h.flush());
    writer.shutdown();
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(got.len(), n, "every submitted segment became durable");
    got
}

fn sorted(mut v: Vec<SegmentEntry>) -> Vec<SegmentEntry> {
    v.sort_by(|a, b| (&a.camera, a.start).cmp(&(&b.camera, b.start)));
    v
}

#[test]
fn written_segments_read_back_intact() {
    let dir = tempfile::tempdir().unwrap();
    let segs = sample(1, 12);
    let originals: Vec<_> = segs
        .iter()
        .map(|s| (s.camera.to_string(), s.start, s.clone()))
        .collect();
    let durable = write_all(dir.path(), segs);
    assert_eq!(durable.len(), 36);

    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(
        report.segments_reindexed, 0,
        "a clean shutdown leaves nothing to recover: {report}"
    );
    assert_eq!(report.bytes_truncated, 0);
    for (camera, start, seg) in &originals {
        let found = store
            .index()
            .camera_segments(camera, *start, start.add_ticks(1))
            .unwrap();
        assert_eq!(found.len(), 1, "{camera} {start}");
        let (header, payload) = store.read_segment(&found[0]).unwrap();
        assert_eq!(header.frames.len(), seg.frames.len());
        let expected: Vec<u8> = seg
            .frames
            .iter()
            .flat_map(|f| f.data.iter().copied())
            .collect();
        assert_eq!(payload, expected, "payload bytes are exactly the frames");
        assert_eq!(
            store.index().codec(header.codec_id).unwrap().unwrap(),
            seg.codec.avcc
        );
    }
    // Lookups are per camera and per range.
    let t0 = originals[0].1;
    let range = store
        .index()
        .camera_segments("noord-stairs", t0, t0.add_ticks(10 * TICKS_PER_SEC))
        .unwrap();
    assert_eq!(range.len(), 5, "{range:#?}");
    assert!(range.iter().all(|e| e.camera == "noord-stairs"));
    // Both policies got their own bucket files.
    let buckets = store.index().buckets(None).unwrap();
    assert!(buckets.iter().any(|b| b.policy == "four-weeks"));
    assert!(buckets.iter().any(|b| b.policy == "seven-days"));
    for b in &buckets {
        let len = std::fs::metadata(store.bucket_path(&b.policy, b.start))
            .unwrap()
            .len();
        assert_eq!(len, b.committed_len);
    }
    let v = store.verify().unwrap();
    assert!(v.bad.is_empty());
    assert_eq!(v.segments, 36);
}

#[test]
fn torn_tail_is_truncated_and_entries_survive() {
    let dir = tempfile::tempdir().unwrap();
    let durable = write_all(dir.path(), sample(2, 4));
    let last = durable
        .iter()
        .max_by_key(|e| (e.bucket, e.offset))
        .unwrap()
        .clone();
    let path = {
        let store = Store::open_without_recovery(dir.path()).unwrap();
        store.bucket_path(&last.policy, last.bucket)
    };
    // A torn record: the first 3/4 of a copy of the last record, appended.
    let bytes = std::fs::read(&path).unwrap();
    let rec = &bytes[last.offset as usize..last.end_offset() as usize];
    let len_before = bytes.len() as u64;
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&rec[..rec.len() * 3 / 4])
        .unwrap();

    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(
        report.bytes_truncated,
        (rec.len() * 3 / 4) as u64,
        "{report}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len_before);
    assert!(store.verify().unwrap().bad.is_empty());
    assert_eq!(
        sorted(store.index().all_segments().unwrap()),
        sorted(durable)
    );
}

#[test]
fn complete_unindexed_records_are_reindexed() {
    let dir = tempfile::tempdir().unwrap();
    let durable = write_all(dir.path(), sample(3, 3));
    let first = durable
        .iter()
        .min_by_key(|e| (e.bucket, e.offset))
        .unwrap()
        .clone();
    let store = Store::open_without_recovery(dir.path()).unwrap();
    let path = store.bucket_path(&first.policy, first.bucket);
    drop(store);

    // A complete record written after the last commit (the crash came before its index commit),
    // then zeros (a torn, extended tail).
    let mut rng = synth::rng(99);
    let pool = synth::pool(&mut rng, 1 << 20);
    let seg = synth::segment(
        &mut rng,
        &pool,
        "late-cam",
        &first.policy,
        first.bucket,
        25,
        1000,
    );
    let mut rec = Vec::new();
    seg.header().unwrap().encode(&mut rec).unwrap();
    for f in &seg.frames {
        rec.extend_from_slice(&f.data);
    }
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&rec).unwrap();
    f.write_all(&[0u8; 5000]).unwrap();
    drop(f);

    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(report.segments_reindexed, 1, "{report}");
    assert_eq!(report.bytes_truncated, 5000, "{report}");
    let found = store
        .index()
        .camera_segments("late-cam", seg.start, seg.start.add_ticks(1))
        .unwrap();
    assert_eq!(found.len(), 1);
    store.read_segment(&found[0]).unwrap();
    assert!(store.verify().unwrap().bad.is_empty());
    // Recovery is idempotent.
    drop(store);
    let (_, again) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(
        (again.segments_reindexed, again.bytes_truncated),
        (0, 0),
        "{again}"
    );
}

#[test]
fn entries_of_missing_or_shortened_files_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let durable = write_all(dir.path(), sample(4, 10));
    let store = Store::open_without_recovery(dir.path()).unwrap();
    let buckets = store.index().buckets(None).unwrap();
    assert!(buckets.len() >= 3);
    let gone = &buckets[0];
    let cut = &buckets[1];
    std::fs::remove_file(store.bucket_path(&gone.policy, gone.start)).unwrap();
    let cut_path = store.bucket_path(&cut.policy, cut.start);
    let cut_len = cut.committed_len / 2;
    OpenOptions::new()
        .write(true)
        .open(&cut_path)
        .unwrap()
        .set_len(cut_len)
        .unwrap();
    drop(store);

    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    let v = store.verify().unwrap();
    assert!(v.bad.is_empty(), "{:#?}", v.bad);
    let in_gone = durable
        .iter()
        .filter(|e| e.policy == gone.policy && e.bucket == gone.start)
        .count() as u64;
    let past_cut = durable
        .iter()
        .filter(|e| e.policy == cut.policy && e.bucket == cut.start && e.end_offset() > cut_len)
        .count() as u64;
    assert_eq!(report.entries_dropped, in_gone + past_cut, "{report}");
    assert_eq!(v.segments, durable.len() as u64 - in_gone - past_cut);
    assert!(store
        .index()
        .bucket(&gone.policy, gone.start)
        .unwrap()
        .is_none());
}

#[test]
fn reindex_rebuilds_the_index_from_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let durable = write_all(dir.path(), sample(5, 8));
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = Store::open_without_recovery(dir.path()).unwrap();
    assert!(store.index().all_segments().unwrap().is_empty());
    let report = recovery::reindex(&store, BUCKET).unwrap();
    assert_eq!(report.segments_reindexed, durable.len() as u64);
    assert_eq!(
        sorted(store.index().all_segments().unwrap()),
        sorted(durable.clone())
    );
    for e in &durable {
        assert!(store.index().codec(e.codec_id).unwrap().is_some());
    }
    // Buckets are rebuilt too, with the committed length at the file's end.
    for b in store.index().buckets(None).unwrap() {
        let len = std::fs::metadata(store.bucket_path(&b.policy, b.start))
            .unwrap()
            .len();
        assert_eq!(b.committed_len, len);
    }
}

#[test]
fn reindex_resynchronises_after_holes_and_damage() {
    let dir = tempfile::tempdir().unwrap();
    let durable = write_all(dir.path(), sample(6, 10));
    let store = Store::open_without_recovery(dir.path()).unwrap();
    let b = store.index().buckets(Some("four-weeks")).unwrap()[0].clone();
    let mut in_bucket: Vec<_> = durable
        .iter()
        .filter(|e| e.policy == b.policy && e.bucket == b.start)
        .cloned()
        .collect();
    in_bucket.sort_by_key(|e| e.offset);
    assert!(in_bucket.len() >= 4);
    let path = store.bucket_path(&b.policy, b.start);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // Punch a hole over record 1 (as the sweeper does), and damage one payload byte of record 3.
    let hole = &in_bucket[1];
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            hole.offset as i64,
            hole.record_len() as i64,
        )
    };
    assert_eq!(r, 0);
    let damaged = &in_bucket[3];
    let pos = damaged.offset + u64::from(damaged.header_len) + 10;
    use std::os::unix::fs::FileExt;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, pos).unwrap();
    file.write_all_at(&[byte[0] ^ 0xff], pos).unwrap();
    drop(file);

    let report = recovery::reindex(&store, BUCKET).unwrap();
    let got = store.index().all_segments().unwrap();
    let expected: Vec<_> = durable
        .iter()
        .filter(|e| **e != *hole && **e != *damaged)
        .cloned()
        .collect();
    assert_eq!(sorted(got), sorted(expected), "{report}");
    // Each lost record's span: the record and, in a direct file, its padding up to the next one.
    let span = |i: usize| match in_bucket.get(i + 1) {
        Some(next) => next.offset - in_bucket[i].offset,
        None => in_bucket[i].record_len(),
    };
    assert_eq!(report.bytes_skipped, span(1) + span(3));
    assert!(store.verify().unwrap().bad.is_empty());
}

/// A writer on a fresh store in a temp dir whose queue holds 1 MiB: `(dir, writer, metrics)`.
fn writer_with_1mib_queue() -> (tempfile::TempDir, Writer, Arc<Metrics>) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), BUCKET).unwrap();
    let metrics = Arc::new(Metrics::new());
    let cfg = WriterConfig {
        queue_limit_bytes: 1 << 20,
        ..config()
    };
    let writer = Writer::spawn(Arc::new(store), cfg, metrics.clone(), None).unwrap();
    (dir, writer, metrics)
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let (dir, writer, metrics) = writer_with_1mib_queue();
    let h = writer.handle();
    let mut rng = synth::rng(7);
    let pool = synth::pool(&mut rng, 4 << 20);
    let t0 = Time90k::now();
    let mut dropped = 0;
    for i in 0..400 {
        // 400 segments of ~500 KB each in a tight loop: far more than 1 MiB can be queued.
        let seg = synth::segment(
            &mut rng,
            &pool,
            "busy-cam",
            "p",
            t0.add_ticks(i * 180_000),
            50,
            10_000,
        );
        match h.submit(seg) {
            Ok(()) => {}
            Err(SubmitError::QueueFull) => dropped += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(h.flush());
    assert!(dropped > 0, "the queue never filled");
    let text = metrics.encode();
    let line = format!(
        "holdfast_segments_dropped_total{{camera=\"busy-cam\",reason=\"queue_full\"}} {dropped}"
    );
    assert!(text.contains(&line), "{text}");
    assert_eq!(h.queued_bytes(), 0);
    writer.shutdown();
    let (store, _) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(store.verify().unwrap().segments, 400 - dropped);
}

/// `storage.writer_queue` changed by a reload reaches the running writer: a raised budget takes
/// the segment the old one refused, a lowered one refuses until the queue is below it.
#[test]
fn the_queue_budget_changes_while_the_writer_runs() {
    let (dir, writer, _metrics) = writer_with_1mib_queue();
    let h = writer.handle();
    assert_eq!(h.queue_limit(), 1 << 20);
    // Nothing leaves the queue meanwhile.
    h.hold_queue_for_tests(true);
    let mut rng = synth::rng(11);
    let pool = synth::pool(&mut rng, 4 << 20);
    let t0 = Time90k::now();
    let mut i = 0;
    let mut seg = || {
        i += 1;
        // ~400 KB each.
        synth::segment(
            &mut rng,
            &pool,
            "cam",
            "p",
            t0.add_ticks(i * 180_000),
            40,
            10_000,
        )
    };
    let mut stored = 0;
    while h.submit(seg()).is_ok() {
        stored += 1;
    }
    // The first always goes in; the next ~400 kB still fits 1 MiB, the third does not.
    assert_eq!(stored, 2);
    assert!(matches!(h.submit(seg()), Err(SubmitError::QueueFull)));
    // Raised (as by a reload, through the reloader's own handle): this handle takes the same
    // kind of segment now.
    writer.handle().set_queue_limit(64 << 20);
    assert_eq!(h.queue_limit(), 64 << 20);
    h.submit(seg()).unwrap();
    stored += 1;
    // Lowered below what is queued: refused, nothing queued is lost.
    writer.handle().set_queue_limit(1 << 20);
    assert!(matches!(h.submit(seg()), Err(SubmitError::QueueFull)));
    h.hold_queue_for_tests(false);
    assert!(h.flush());
    assert_eq!(h.queued_bytes(), 0);
    writer.shutdown();
    let (store, _) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(store.verify().unwrap().segments, stored);
}

/// Appends a segment's record to its bucket file by hand (as a writer killed before its sync
/// and commit would leave it): header then payload.
fn append_raw(store: &Store, seg: &Segment) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut rec = Vec::new();
    seg.header().unwrap().encode(&mut rec).unwrap();
    for f in &seg.frames {
        rec.extend_from_slice(&f.data);
    }
    let path = store.bucket_path(&seg.policy, seg.start.floor_to(BUCKET));
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let at = file.metadata().unwrap().len();
    file.write_all_at(&rec, at).unwrap();
    at
}

#[test]
fn a_repeated_start_time_never_replaces_a_durable_segment() {
    // The cause of the flaky crash test: a restarted writer (or a clock set back) produced a
    // segment with the (camera, start) key of a durable one, and the new entry replaced the
    // old one in the index, by the writer's commit or by recovery re-indexing an unsynced tail.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = synth::rng(11);
    let pool = synth::pool(&mut rng, 1 << 20);
    let t = Time90k::from_unix_seconds(1_795_000_000);
    let first = synth::segment(&mut rng, &pool, "cam-3", "long", t, 20, 2_000);
    let first_crc = first.header().unwrap().payload_crc;
    let durable = write_all(dir.path(), vec![first]);
    assert_eq!(durable[0].start, t);

    // Through the writer: the repeat moves by one tick, both stay.
    let again = synth::segment(&mut rng, &pool, "cam-3", "long", t, 10, 2_000);
    let moved = write_all(dir.path(), vec![again]);
    assert_eq!(moved[0].start, t.add_ticks(1));
    // Through recovery: a complete record with the same key past the committed length is not
    // indexed over the durable entry.
    let store = Store::open_without_recovery(dir.path()).unwrap();
    let third = synth::segment(&mut rng, &pool, "cam-3", "long", t, 5, 2_000);
    append_raw(&store, &third);
    drop(store);
    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(report.duplicates_skipped, 1, "{report}");
    let at_t = store
        .index()
        .camera_segments("cam-3", t, t.add_ticks(2))
        .unwrap();
    assert_eq!(at_t.len(), 2, "{at_t:?}");
    assert_eq!(at_t[0].payload_crc, first_crc);
    assert_eq!(at_t[0].offset, durable[0].offset);
    assert!(store.verify().unwrap().bad.is_empty());
}

#[test]
fn a_shortened_expired_bucket_stays_expired() {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path(), sample(8, 10));
    let store = Store::open_without_recovery(dir.path()).unwrap();
    let mut b = store.index().buckets(None).unwrap()[0].clone();
    b.expired = true;
    let mut batch = holdfast::store::index::IndexBatch::default();
    batch.put_bucket(store.index(), &b);
    store.index().commit(batch, true).unwrap();
    OpenOptions::new()
        .write(true)
        .open(store.bucket_path(&b.policy, b.start))
        .unwrap()
        .set_len(b.committed_len / 2)
        .unwrap();
    drop(store);
    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    assert!(report.entries_dropped > 0, "{report}");
    let after = store.index().bucket(&b.policy, b.start).unwrap().unwrap();
    assert!(after.expired, "{after:?}");
    // The committed length is the file's length, never less (bytes between the last kept
    // entry and the end were committed and must never be scanned as new).
    assert_eq!(after.committed_len, b.committed_len / 2, "{after:?}");
    assert!(store.verify().unwrap().bad.is_empty());
}

#[test]
fn missing_bucket_files_are_reported_held_entries_kept_and_most_missing_refused() {
    use holdfast::retention::holds::{Holds, NewHold};
    use holdfast::store::recovery::RecoverOptions;
    let dir = tempfile::tempdir().unwrap();
    let durable = write_all(dir.path(), sample(9, 15));
    let store = Arc::new(Store::open_without_recovery(dir.path()).unwrap());
    let buckets = store.index().buckets(None).unwrap();
    assert!(buckets.len() >= 6, "{}", buckets.len());
    // Hold the first segment of the first bucket.
    let held = durable
        .iter()
        .filter(|e| e.policy == buckets[0].policy && e.bucket == buckets[0].start)
        .min_by_key(|e| e.start)
        .unwrap()
        .clone();
    let holds = Holds::load(store.clone()).unwrap();
    let hold = holds
        .place(
            NewHold {
                cameras: vec![held.camera.clone()],
                site: None,
                from: held.start,
                to: held.end(),
                reason: "incident".into(),
                reference: "PL-9".into(),
                requested_by: "police".into(),
                expires_at: None,
                keytags: false,
                camera_sites: Default::default(),
            },
            "test",
            Time90k::now(),
        )
        .unwrap();
    drop(holds);
    let paths: Vec<_> = buckets
        .iter()
        .map(|b| store.bucket_path(&b.policy, b.start))
        .collect();
    drop(store);
    // One file missing: reported; the held entry stays, the others of that file go.
    let aside = dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    std::fs::rename(&paths[0], aside.join("0")).unwrap();
    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(report.missing.files.len(), 1, "{report:?}");
    assert!(!report.missing.accepted);
    let f = &report.missing.files[0];
    assert_eq!(
        f.held,
        vec![(hold.id, held.camera.clone(), held.start, held.end())]
    );
    assert_eq!(report.missing.held_entries_kept, 1);
    assert_eq!(report.missing.entries_dropped, f.entries - 1);
    assert_eq!(store.metrics().index_missing_files.get(), 1);
    let kept = store
        .index()
        .bucket_segments(&buckets[0].policy, buckets[0].start)
        .unwrap();
    assert_eq!(kept, vec![held.clone()]);
    drop(store);

    // Most files missing (a disk not mounted): refused, naming the count and the flag.
    let n = paths.len();
    for (i, p) in paths.iter().enumerate().skip(1).take(n / 2 + 1) {
        std::fs::rename(p, aside.join(i.to_string())).unwrap();
    }
    let err = Store::open(dir.path(), BUCKET).err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("of {n} bucket files missing under"))
            && msg.contains("--accept-missing-files"),
        "{msg}"
    );
    // The index is untouched by the refusal: the files come back and everything is there.
    for (i, p) in paths.iter().enumerate().skip(1).take(n / 2 + 1) {
        std::fs::rename(aside.join(i.to_string()), p).unwrap();
    }
    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(
        report.missing.files.len(),
        1,
        "only the first file is still missing"
    );
    let v = store.verify().unwrap();
    assert_eq!(
        v.bad.len(),
        1,
        "the held entry of the missing file: {:?}",
        v.bad
    );
    drop(store);

    // Accepted: everything of the missing files is forgotten.
    for (i, p) in paths.iter().enumerate().skip(1).take(n / 2 + 1) {
        std::fs::rename(p, aside.join(i.to_string())).unwrap();
    }
    let (store, report) = Store::open_with(
        dir.path(),
        BUCKET,
        RecoverOptions {
            accept_missing_files: true,
        },
    )
    .unwrap();
    assert!(report.missing.accepted);
    assert_eq!(report.missing.files.len(), n / 2 + 2);
    assert!(store.verify().unwrap().bad.is_empty());
}

#[test]
fn the_daemon_exits_70_when_its_buckets_directory_is_replaced() {
    use support::procs::Daemon;
    let rest = "[policies.month]\nvideo = \"28d\"\nkeytags = \"28d\"\n\n\
                [[sites]]\nid = \"north\"\npolicy = \"month\"\n\n\
                [[cameras]]\nid = \"dead\"\nsite = \"north\"\nurl = \"rtsp://127.0.0.1:9/none\"\n";
    let mut d = Daemon::start(rest, "");
    assert_eq!(d.get("/healthz", None).0, 200);
    // The store's details and metrics are there (nothing pending, nothing missing).
    let h = d.get_json("/healthz");
    assert_eq!(h["reclaim"]["pending_records"], 0, "{h}");
    assert_eq!(h["reclaim"]["last_error"], serde_json::Value::Null, "{h}");
    assert_eq!(h["missing_files"]["files"], 0, "{h}");
    let (_, metrics) = d.get("/metrics", None);
    assert!(
        metrics.contains("holdfast_reclaim_pending_bytes 0")
            && metrics.contains("holdfast_index_missing_files 0")
            && metrics.contains("holdfast_reclaim_errors_total{op=\"unlink\"} 0"),
        "{metrics}"
    );
    // The data directory's buckets replaced (as by a disk unmounted under the daemon).
    let buckets = d.data_dir.join("buckets");
    std::fs::rename(&buckets, d.data_dir.join("buckets.old")).unwrap();
    std::fs::create_dir(&buckets).unwrap();
    let mut saw_503 = false;
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = d.try_exit_status() {
            break s;
        }
        let (code, body) = d.get("/healthz", Some(support::procs::ADMIN_TOKEN));
        if code == 503 {
            assert!(body.contains("\"writer\":\"failing\""), "{body}");
            saw_503 = true;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "still running");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(saw_503, "/healthz turned 503 before the exit");
    assert_eq!(status.code(), Some(70), "{status:?}");
    let log = d.log_text();
    assert!(log.contains("was replaced"), "{log}");
}

/// Polls `cond` every 20 ms for up to `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

#[test]
fn the_writer_stops_cleanly_when_its_io_uring_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), BUCKET).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = crossbeam_channel::unbounded();
    let writer = Writer::spawn(Arc::new(store), config(), metrics.clone(), Some(tx)).unwrap();
    let h = writer.handle();
    let mut segs = sample(31, 4).into_iter();
    h.submit(segs.next().unwrap()).unwrap();
    assert!(h.flush());
    assert_eq!(rx.try_iter().count(), 1);
    // The next submission to the ring fails with entries queued: the writer must stop (no
    // panic, nothing more written), not go on with a ring in an unknown state.
    h.break_ring_for_tests();
    let lost = segs.next().unwrap();
    let lost_camera = lost.camera.to_string();
    h.submit(lost).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !h.is_alive()),
        "writer still alive"
    );
    let death = h.death().expect("a reason");
    assert!(
        death.contains("io_uring failed") && !death.contains("panicked"),
        "{death}"
    );
    assert!(!h.is_healthy());
    assert_eq!(h.submit(segs.next().unwrap()), Err(SubmitError::Stopped));
    assert!(!h.flush());
    writer.shutdown();
    assert_eq!(
        rx.try_iter().count(),
        0,
        "nothing durable after the ring broke"
    );
    let text = metrics.encode();
    assert!(
        text.contains(&format!(
            "holdfast_segments_dropped_total{{camera=\"{lost_camera}\",reason=\"write_error\"}} 1"
        )),
        "{text}"
    );
    // What was durable stays intact.
    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(report.segments_reindexed, 0, "{report}");
    let v = store.verify().unwrap();
    assert!(v.bad.is_empty() && v.segments == 1, "{v:?}");
}

#[test]
fn a_missing_file_of_an_indexed_bucket_is_never_written_over_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path(), sample(41, 6));
    let store = Store::open_without_recovery(dir.path()).unwrap();
    let b = store.index().buckets(None).unwrap()[0].clone();
    let path = store.bucket_path(&b.policy, b.start);
    std::fs::remove_file(&path).unwrap();
    // The writer gets a segment for that bucket while its file is gone.
    let mut rng = synth::rng(42);
    let pool = synth::pool(&mut rng, 1 << 20);
    let late = synth::segment(
        &mut rng,
        &pool,
        "late-cam",
        &b.policy,
        b.start.add_ticks(TICKS_PER_SEC),
        10,
        2_000,
    );
    let store = Arc::new(store);
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = crossbeam_channel::unbounded();
    let writer = Writer::spawn(store.clone(), config(), metrics, Some(tx)).unwrap();
    writer.handle().submit(late).unwrap();
    assert!(writer.handle().flush());
    writer.shutdown();
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].offset >= b.committed_len,
        "written at {} over the indexed range below {}",
        got[0].offset,
        b.committed_len
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), got[0].end_offset());
    store.read_segment(&got[0]).unwrap();
    let missing = store.missing_files();
    assert!(missing.files.iter().any(|f| f.path == path), "{missing:?}");
    assert_eq!(store.metrics().index_missing_files.get(), 1);
}

/// Expires the store's first bucket as the sweeper does (its entries gone, the bucket marked
/// expired, a whole-bucket reclaim record), with `extra` added to the same batch; returns the
/// bucket file's path.
fn expire_first_bucket_by_hand(
    store: &Store,
    extra: impl FnOnce(&holdfast::store::index::Index, &mut holdfast::store::index::IndexBatch),
) -> std::path::PathBuf {
    use holdfast::store::index::{IndexBatch, Reclaim};
    let index = store.index();
    let mut b0 = index.buckets(None).unwrap()[0].clone();
    let path0 = store.bucket_path(&b0.policy, b0.start);
    b0.expired = true;
    let mut batch = IndexBatch::default();
    batch.put_bucket(index, &b0);
    batch.delete_bucket_segments(index, &b0.policy, b0.start);
    batch.put_reclaim(
        index,
        &Reclaim {
            policy: b0.policy.clone(),
            bucket: b0.start,
            offset: 0,
            len: None,
        },
    );
    extra(index, &mut batch);
    index.commit(batch, true).unwrap();
    path0
}

#[test]
fn reclaim_waits_for_an_unmounted_disk_and_one_bad_record_stops_nothing() {
    use holdfast::store::index::{IndexBatch, CF_RECLAIM};
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path(), sample(51, 15));
    let store = Store::open_without_recovery(dir.path()).unwrap();
    // Expired as the sweeper does it; and one record that cannot be decoded.
    let path0 = expire_first_bucket_by_hand(&store, |index, batch| {
        batch.put_raw(index, CF_RECLAIM, b"not a reclaim key", b"?")
    });
    drop(store);

    // The buckets disk is not mounted: its mount point is an empty directory.
    let buckets = dir.path().join("buckets");
    let off = dir.path().join("buckets.off");
    std::fs::rename(&buckets, &off).unwrap();
    std::fs::create_dir(&buckets).unwrap();
    let err = Store::open(dir.path(), BUCKET).err().expect("refused");
    assert!(err.to_string().contains("--accept-missing-files"), "{err}");
    // The refusal changed nothing: the pending deletion is still there.
    let store = Store::open_without_recovery(dir.path()).unwrap();
    let list = store.index().reclaim_records().unwrap();
    assert_eq!((list.records.len(), list.undecodable.len()), (1, 1));
    // Run by hand while unmounted: "not found" is not taken for "already freed".
    let r = store.reclaim().unwrap();
    assert_eq!((r.records, r.failed), (0, 2), "{r:?}");
    assert_eq!(store.index().reclaims().unwrap().len(), 1);
    let status = store.reclaim_status();
    assert_eq!(status.pending_records, 2, "{status:?}");
    assert!(status.last_error.is_some());
    let errors = |op: &str| {
        store
            .metrics()
            .reclaim_errors
            .get_or_create(&holdfast::metrics::ReclaimOpLabel { op: op.into() })
            .get()
    };
    assert_eq!((errors("unlink"), errors("index")), (1, 1));
    drop(store);

    // Mounted again: the record runs (the file goes), the bad one is counted and kept.
    std::fs::remove_dir(&buckets).unwrap();
    std::fs::rename(&off, &buckets).unwrap();
    assert!(path0.exists());
    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(
        (report.reclaim.records, report.reclaim.failed),
        (1, 1),
        "{report}"
    );
    assert!(!path0.exists());
    let status = store.reclaim_status();
    assert_eq!(status.pending_records, 1, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("decode"),
        "{status:?}"
    );
    // Once nothing is pending, the last error is no longer shown.
    let mut batch = IndexBatch::default();
    batch.delete_raw(store.index(), CF_RECLAIM, b"not a reclaim key");
    store.index().commit(batch, true).unwrap();
    store.reclaim().unwrap();
    assert_eq!(store.reclaim_status(), Default::default());
    assert!(store.verify().unwrap().bad.is_empty());
}

#[test]
fn a_removed_policy_directory_does_not_keep_its_reclaim_records_forever() {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path(), sample(52, 15));
    let store = Store::open_without_recovery(dir.path()).unwrap();
    let path0 = expire_first_bucket_by_hand(&store, |_, _| ());
    drop(store);
    // The operator removed the renamed policy's directory, files and all; the buckets directory
    // is the one the store opens and holds another policy's directory.
    let policy_dir = path0.parent().unwrap().to_owned();
    std::fs::remove_dir_all(&policy_dir).unwrap();
    std::fs::create_dir(policy_dir.parent().unwrap().join("another-policy")).unwrap();
    let store = Store::open_without_recovery(dir.path()).unwrap();
    let r = store.reclaim().unwrap();
    assert_eq!((r.records, r.failed), (1, 0), "{r:?}");
    assert_eq!(store.reclaim_status(), Default::default());
    assert!(store.index().reclaims().unwrap().is_empty());
}

#[test]
fn run_with_accept_missing_files_logs_the_loss_with_its_held_entries() {
    use holdfast::retention::holds::{Holds, NewHold};
    use support::procs::Daemon;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let durable = write_all(&data, sample(61, 15));
    let store = Arc::new(Store::open_without_recovery(&data).unwrap());
    let buckets = store.index().buckets(None).unwrap();
    let n = buckets.len();
    assert!(n >= 6, "{n}");
    // Two entries of the first bucket are held.
    let mut in_first: Vec<_> = durable
        .iter()
        .filter(|e| e.policy == buckets[0].policy && e.bucket == buckets[0].start)
        .cloned()
        .collect();
    in_first.sort_by_key(|e| e.start);
    let holds = Holds::load(store.clone()).unwrap();
    holds
        .place(
            NewHold {
                cameras: in_first.iter().take(2).map(|e| e.camera.clone()).collect(),
                site: None,
                from: in_first[0].start,
                to: in_first[1].end(),
                reason: "incident".into(),
                reference: "PL-10".into(),
                requested_by: "police".into(),
                expires_at: None,
                keytags: false,
                camera_sites: Default::default(),
            },
            "test",
            Time90k::now(),
        )
        .unwrap();
    let held = in_first
        .iter()
        .filter(|e| e.start < in_first[1].end() && in_first[0].start < e.end())
        .count();
    drop(holds);
    let paths: Vec<_> = buckets
        .iter()
        .map(|b| store.bucket_path(&b.policy, b.start))
        .collect();
    drop(store);

    let rest = "[policies.four-weeks]\nvideo = \"3650d\"\nkeytags = \"28d\"\n\n\
                [policies.seven-days]\nvideo = \"3650d\"\nkeytags = \"28d\"\n\n\
                [[sites]]\nid = \"north\"\npolicy = \"four-weeks\"\n\n\
                [[cameras]]\nid = \"dead\"\nsite = \"north\"\nurl = \"rtsp://127.0.0.1:9/none\"\n";
    let mut d = Daemon::start_in(rest, "", &[], Some(&data));
    d.stop();
    // Most files lost for good.
    let gone: Vec<_> = paths.iter().take(n / 2 + 1).collect();
    let entries_gone: usize = buckets
        .iter()
        .take(n / 2 + 1)
        .map(|b| {
            durable
                .iter()
                .filter(|e| e.policy == b.policy && e.bucket == b.start)
                .count()
        })
        .sum();
    for p in &gone {
        std::fs::remove_file(p).unwrap();
    }
    // Without the flag the start is refused.
    d.spawn_again();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = d.try_exit_status() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "still running");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    assert!(d.log_text().contains("--accept-missing-files"));
    // With it: started, and the loss is in the logbook with the held entries counted.
    d.spawn_again_with(&["--accept-missing-files"]);
    d.wait_until(Duration::from_secs(30), |d| {
        d.get("/healthz", None).0 == 200
    });
    d.restart(); // a second start does not log the loss again
    d.stop();
    let index = holdfast::store::index::Index::open_read_only(&data.join("index")).unwrap();
    let lost: Vec<serde_json::Value> = index
        .logbook_entries(0)
        .map(|r| r.unwrap().1)
        .map(|v| serde_json::from_slice::<serde_json::Value>(&v[32..]).unwrap())
        .filter(|e| e["action"] == "store.files_lost")
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    let o = &lost[0]["object"];
    assert_eq!(o["files"], gone.len(), "{o}");
    assert_eq!(o["of_buckets"], n, "{o}");
    assert_eq!(o["held_entries"], held, "{o}");
    assert_eq!(o["entries_dropped"], entries_gone, "{o}");
    assert!(index
        .get_raw(
            holdfast::store::index::CF_META,
            holdfast::store::recovery::FILES_LOST_MARKER
        )
        .unwrap()
        .is_none());
}

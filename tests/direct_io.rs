//! The direct-I/O write path (issue 11) on a real ext4 (or xfs/btrfs) directory:
//! - `bucket_files_are_written_with_o_direct_and_trimmed_at_close`: the writer's open bucket file
//!   carries `O_DIRECT` (its `/proc/self/fdinfo` flags), records start on 4 KiB boundaries, read
//!   back intact, and the closed file keeps neither padding nor preallocated tail.
//! - `recovery_of_a_padded_file_with_a_torn_record_and_a_preallocated_tail`: records appended
//!   after the last commit (padded, as the writer leaves them), a torn record, then preallocated
//!   space: recovery indexes exactly the whole records and cuts the rest.
//!
//! The directory is under `CARGO_TARGET_TMPDIR` (the target dir, a real disk filesystem): tmpfs
//! would test the page cache, not direct I/O.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use holdfast::metrics::Metrics;
use holdfast::store::index::SegmentEntry;
use holdfast::store::segment::{align_up, Segment, RECORD_ALIGN};
use holdfast::store::writer::{Writer, WriterConfig};
use holdfast::store::Store;
use holdfast::time::{Time90k, TICKS_PER_SEC};
use support::synth;

const BUCKET: u32 = 60;

fn config() -> WriterConfig {
    WriterConfig {
        bucket_secs: BUCKET,
        sync_interval: Duration::from_millis(20),
        queue_limit_bytes: 1 << 30,
        queue_limit_segments: 10_000,
        io: Default::default(),
    }
}

/// A temp dir on the target dir's filesystem, which must take direct I/O.
fn disk_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    assert!(
        [EXT4, XFS, BTRFS].contains(&(st.f_type as i64)),
        "CARGO_TARGET_TMPDIR must be on ext4, xfs or btrfs for this test (f_type {:#x})",
        st.f_type
    );
    dir
}

fn segments(seed: u64, n: usize, camera: &str, t0: Time90k) -> Vec<Segment> {
    let mut rng = synth::rng(seed);
    let pool = synth::pool(&mut rng, 1 << 20);
    (0..n)
        .map(|i| {
            synth::segment(
                &mut rng,
                &pool,
                camera,
                "four-weeks",
                t0.add_ticks(i as i64 * 2 * TICKS_PER_SEC),
                50,
                2_000 + i * 37,
            )
        })
        .collect()
}

/// The `flags:` of the first descriptor of this process open on `path` (octal in fdinfo).
fn open_flags(path: &Path) -> Option<u32> {
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(fd.path()).ok().as_deref() == Some(path) {
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.file_name().to_str()?))
                    .ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
            return u32::from_str_radix(flags.trim(), 8).ok();
        }
    }
    None
}

#[test]
fn bucket_files_are_written_with_o_direct_and_trimmed_at_close() {
    let dir = disk_tempdir();
    let (store, _) = Store::open(dir.path(), BUCKET).unwrap();
    let store = Arc::new(store);
    let (tx, rx) = crossbeam_channel::unbounded();
    let writer =
        Writer::spawn(store.clone(), config(), Arc::new(Metrics::new()), Some(tx)).unwrap();
    let t0 = Time90k::from_unix_seconds(1_795_000_020);
    let segs = segments(1, 6, "noord-entrance", t0);
    for s in segs.clone() {
        writer.handle().submit(s).unwrap();
    }
    assert!(writer.handle().flush());
    let got: Vec<SegmentEntry> = rx.try_iter().collect();
    assert_eq!(got.len(), 6);
    let path = store.bucket_path("four-weeks", t0.floor_to(BUCKET));
    // As root (the tests), RLIMIT_MEMLOCK does not bind: the arena must be registered, so the
    // writes below went out as WriteFixed.
    assert!(
        writer.handle().buffers_registered(),
        "the staging arena was not registered with io_uring"
    );
    let flags = open_flags(&path).expect("the writer holds the bucket file open");
    assert_ne!(
        flags & libc::O_DIRECT as u32,
        0,
        "bucket file opened without O_DIRECT: flags {flags:o}"
    );
    for e in &got {
        assert_eq!(
            e.offset % RECORD_ALIGN,
            0,
            "record at {} not aligned",
            e.offset
        );
        store.read_segment(e).unwrap();
    }
    // Space ahead is preallocated while the file is open (the file is longer than its records).
    let last = got.iter().max_by_key(|e| e.offset).unwrap().clone();
    assert!(std::fs::metadata(&path).unwrap().len() > align_up(last.end_offset()));
    writer.shutdown();
    // Closed: cut back to the end of the last record.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), last.end_offset());
    assert!(store.verify().unwrap().bad.is_empty());
}

#[test]
fn recovery_of_a_padded_file_with_a_torn_record_and_a_preallocated_tail() {
    let dir = disk_tempdir();
    let t0 = Time90k::from_unix_seconds(1_795_000_080);
    let durable = {
        let (store, _) = Store::open(dir.path(), BUCKET).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = Writer::spawn(
            Arc::new(store),
            config(),
            Arc::new(Metrics::new()),
            Some(tx),
        )
        .unwrap();
        for s in segments(2, 3, "noord-entrance", t0) {
            writer.handle().submit(s).unwrap();
        }
        assert!(writer.handle().flush());
        writer.shutdown();
        rx.try_iter().collect::<Vec<_>>()
    };
    assert_eq!(durable.len(), 3);
    let store = Store::open_without_recovery(dir.path()).unwrap();
    let path = store.bucket_path("four-weeks", t0.floor_to(BUCKET));
    drop(store);

    // As a writer killed before its index commit leaves a file: two whole records, each at an
    // aligned offset and padded with zeros, a torn third one, then preallocated space.
    let late = segments(3, 3, "west-hall", t0.add_ticks(TICKS_PER_SEC));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut at = align_up(file.metadata().unwrap().len());
    let mut whole_end = 0;
    for (i, seg) in late.iter().enumerate() {
        let mut rec = Vec::new();
        seg.header().unwrap().encode(&mut rec).unwrap();
        for f in &seg.frames {
            rec.extend_from_slice(&f.data);
        }
        if i == 2 {
            rec.truncate(rec.len() * 2 / 3);
            file.write_all_at(&rec, at).unwrap();
            at += rec.len() as u64;
        } else {
            whole_end = at + rec.len() as u64;
            rec.resize(align_up(rec.len() as u64) as usize, 0);
            file.write_all_at(&rec, at).unwrap();
            at += rec.len() as u64;
        }
    }
    let tail = 8 << 20;
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, align_up(at) as i64, tail) };
    assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
    let file_len = file.metadata().unwrap().len();
    assert_eq!(file_len, align_up(at) + tail as u64);
    drop(file);

    let (store, report) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(report.segments_reindexed, 2, "{report}");
    assert_eq!(report.bytes_truncated, file_len - whole_end, "{report}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole_end);
    let all = store.index().all_segments().unwrap();
    assert_eq!(all.len(), 5);
    for e in &durable {
        assert!(all.contains(e), "durable entry lost: {e:?}");
    }
    let found = store
        .index()
        .camera_segments("west-hall", t0, t0.add_ticks(3600 * TICKS_PER_SEC))
        .unwrap();
    assert_eq!(found.len(), 2);
    for (e, seg) in found.iter().zip(&late) {
        assert_eq!(e.start, seg.start);
        store.read_segment(e).unwrap();
    }
    assert!(store.verify().unwrap().bad.is_empty());
    drop(store);
    // Idempotent: nothing more to do the second time.
    let (_, again) = Store::open(dir.path(), BUCKET).unwrap();
    assert_eq!(
        (again.segments_reindexed, again.bytes_truncated),
        (0, 0),
        "{again}"
    );
}

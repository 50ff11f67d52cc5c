//! The fault suite (issue 9 point 7): the real daemon on a disk that loses power, fails, fills.
//!
//! - `faultfs_*`: the FUSE layer itself (`tests/support/faultfs.rs`): it drops exactly the
//!   unsynced writes on a power cut, catches a program that claims durability before fsync,
//!   injects EIO/ENOSPC where told, and io_uring `writev`/`fdatasync` work through it.
//! - `power_cuts_lose_nothing_committed`: the daemon records two GStreamer cameras through
//!   faultfs; at random moments it is SIGKILLed and the power cut (unsynced writes dropped),
//!   half the time after a plain crash and the recovery that follows it, sometimes again while it
//!   starts; then `holdfast verify` (no dangling entry dropped, no damage) and `holdfast logbook
//!   verify` must pass, every range the API showed as recorded before the cut must still be
//!   recorded, every hold still there. 5 cuts in the normal run; `HOLDFAST_POWER_CUTS=50` for the
//!   long form.
//! - `faulty_disk_stays_local_and_frees_later`: EIO on writes of one policy's buckets, ENOSPC on
//!   fdatasync of another's, ENOSPC on RocksDB's own writes and syncs, EIO on unlink and on hole
//!   punching during expiry: the other camera keeps recording and loses nothing, errors are
//!   counted (`holdfast_reclaim_errors_total{op}`, `holdfast_reclaim_pending_bytes`, /healthz),
//!   and what could not be freed is freed once the fault clears. /healthz stays 200 while one
//!   policy's writes fail and turns 503 (`writes` detail) when every write fails for 10 s.
//! - `full_disk_expires_unpinned_only_and_resumes`: the data dir on a 256 MiB loop-mounted ext4
//!   image filled by another file: early expiry of unpinned data only, the held range intact,
//!   ingest resumes by itself once space returns, `holdfast verify` clean. Skipped, with a printed
//!   message, where mounting a loop device is not allowed.
//!
//! - `recovery_never_destroys_or_indexes_what_it_could_not_sync` and
//!   `the_writer_never_indexes_a_range_whose_sync_failed`: the store library on faultfs with
//!   fdatasync failing: recovered records (a crash tail, a file the index does not know) are left
//!   in their files and never indexed, also after the fault clears; `reindex` stops with an
//!   error; one unreadable file does not stop the start; the writer's failed ranges are never
//!   indexed, writing goes on after them, and `writes_failing` tells when nothing is stored.
//! - `a_file_refusing_direct_writes_goes_buffered`: faultfs takes `O_DIRECT` at open, then
//!   refuses writes with `EINVAL`: the segment is dropped and counted, `O_DIRECT` is cleared on
//!   the same descriptor, and the file is written buffered from then on.
//! - `an_abandoned_export_stops_hashing_and_logs_no_export`: bucket reads made slow, a client
//!   POSTs an export and goes away while its SHA-256 is being computed: the hash stops reading
//!   within about a segment (the measured part), its streaming slot is given back (with the
//!   user's other slots held by clients that read nothing, a view gets a slot: 404, not the 503
//!   of all slots taken), no `export` entry is written, and the same user's next export works.
//!
//! Every mount is undone and every process stopped by Drop guards, also when a test fails.
//! `HOLDFAST_TEST_SEED` repeats the random kill moments.

#[path = "support/faultfs.rs"]
mod faultfs;
mod support;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use faultfs::{FaultFs, Op};
use holdfast::time::{Time90k, TICKS_PER_SEC};
use rand::Rng;
use support::procs::{holdfast, Camsim, Daemon, RtspServer};
use support::synth;

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

/// A mount of faultfs in a fresh temp dir: `(tempdir, fs)`; the fs drops (unmounts) first.
fn mounted() -> (FaultFs, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::mount(&dir.path().join("disk"), &dir.path().join("mnt"))
        .expect("mount faultfs (needs /dev/fuse and root or fusermount3: scripts/setup.sh)");
    (fs, dir)
}

/// A "program" that appends records and keeps a commit file claiming them durable. With
/// `sync_first` it fsyncs the data before the claim, as it must; without, it is the bug the
/// layer must catch.
fn write_and_claim(root: &Path, name: &str, records: usize, sync_first: bool) {
    let path = root.join(name);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    for i in 0..records {
        f.write_all(&[i as u8; 4096]).unwrap();
    }
    if sync_first {
        f.sync_data().unwrap();
        sync_dir(root);
    }
    let claim = root.join(format!("{name}.claim"));
    std::fs::write(&claim, format!("{}", records * 4096)).unwrap();
    File::open(&claim).unwrap().sync_all().unwrap();
    sync_dir(root);
}

/// Whether every claim under `root` holds: the file has at least the claimed bytes, each 4 KiB
/// block filled with its own index.
fn claims_hold(root: &Path, name: &str) -> Result<(), String> {
    let claimed: usize = std::fs::read_to_string(root.join(format!("{name}.claim")))
        .map_err(|e| format!("claim: {e}"))?
        .parse()
        .unwrap();
    let data = std::fs::read(root.join(name)).map_err(|e| format!("{name}: {e}"))?;
    if data.len() < claimed {
        return Err(format!("{name}: {} bytes, {claimed} claimed", data.len()));
    }
    for (i, block) in data[..claimed].chunks(4096).enumerate() {
        if block.iter().any(|b| *b != i as u8) {
            return Err(format!("{name}: block {i} damaged"));
        }
    }
    Ok(())
}

#[test]
fn faultfs_power_cut_drops_exactly_the_unsynced_and_catches_a_commit_before_sync() {
    let (mut fs, _dir) = mounted();
    let root = fs.mountpoint.clone();

    // A correct program and a buggy one (claims before syncing).
    write_and_claim(&root, "good", 20, true);
    write_and_claim(&root, "bad", 20, false);
    // Unsynced changes to synced files: an append, an overwrite, a truncate.
    let mut g = OpenOptions::new()
        .append(true)
        .open(root.join("good"))
        .unwrap();
    g.write_all(&[0xee; 10_000]).unwrap();
    drop(g);
    let g = OpenOptions::new()
        .write(true)
        .open(root.join("good"))
        .unwrap();
    g.write_all_at(&[0xee; 100], 8192).unwrap();
    drop(g);
    // A file synced but its directory not: its name is not durable (strict POSIX).
    std::fs::create_dir(root.join("sub")).unwrap();
    let mut lost = File::create(root.join("sub/lost")).unwrap();
    lost.write_all(b"x").unwrap();
    lost.sync_all().unwrap();
    drop(lost);
    assert!(claims_hold(&root, "good").is_err(), "overwritten above");
    let (pending, files) = fs.unsynced();
    assert!(
        pending >= 3 && files >= 2,
        "{pending} changes in {files} files"
    );

    let cut = fs.power_cut();
    eprintln!("power cut: {cut:?}");
    assert_eq!(claims_hold(&root, "good"), Ok(()));
    let caught = claims_hold(&root, "bad");
    assert!(
        caught.is_err(),
        "a program that claims durability before fsync must be caught"
    );
    eprintln!("buggy program caught: {}", caught.unwrap_err());
    assert_eq!(
        std::fs::metadata(root.join("good")).unwrap().len(),
        20 * 4096,
        "the unsynced append is gone"
    );
    assert!(
        !root.join("sub").exists(),
        "a directory never fsynced in its parent"
    );
    assert!(
        cut.writes_dropped >= 20 + 2 && cut.entries_removed >= 1,
        "{cut:?}"
    );
    assert_eq!(fs.unsynced(), (0, 0));
    // Nothing synced is lost by a second cut.
    let cut2 = fs.power_cut();
    assert_eq!(cut2.writes_dropped, 0);
    assert_eq!(claims_hold(&root, "good"), Ok(()));
}

#[test]
fn faultfs_injects_errors_where_told_and_only_there() {
    let (fs, _dir) = mounted();
    let root = fs.mountpoint.clone();
    std::fs::create_dir(root.join("a")).unwrap();
    std::fs::create_dir(root.join("b")).unwrap();
    for d in ["a", "b"] {
        let mut f = File::create(root.join(d).join("f")).unwrap();
        f.write_all(&[1; 65536]).unwrap();
        f.sync_all().unwrap();
    }
    fs.fail(Op::Write, "a/", libc::EIO);
    fs.fail(Op::Fsync, "a/", libc::ENOSPC);
    fs.fail(Op::Punch, "a/", libc::EIO);
    fs.fail(Op::Unlink, "a/", libc::EIO);
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.join("a/f"))
        .unwrap();
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.join("b/f"))
        .unwrap();
    assert_eq!(errno(&a.write_at(b"x", 0).unwrap_err()), libc::EIO);
    assert_eq!(errno(&a.sync_data().unwrap_err()), libc::ENOSPC);
    let punch = |f: &File| unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(f),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            65536,
        )
    };
    assert_eq!(punch(&a), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EIO)
    );
    assert_eq!(
        errno(&std::fs::remove_file(root.join("a/f")).unwrap_err()),
        libc::EIO
    );
    // Another directory is untouched by the faults.
    b.write_at(b"y", 0).unwrap();
    b.sync_data().unwrap();
    assert_eq!(punch(&b), 0);
    fs.fail(Op::Open, "a/", libc::EIO);
    assert_eq!(errno(&File::open(root.join("a/f")).unwrap_err()), libc::EIO);
    File::open(root.join("b/f")).unwrap();
    assert_eq!(fs.injected(), 5);
    fs.clear();
    a.write_at(b"x", 0).unwrap();
    a.sync_data().unwrap();
    assert_eq!(punch(&a), 0);
    drop(a);
    std::fs::remove_file(root.join("a/f")).unwrap();
    let allocated = std::fs::metadata(fs.backing.join("b/f")).unwrap().blocks();
    assert!(
        allocated < 64,
        "punched through to the backing file: {allocated} blocks"
    );
}

#[test]
fn faultfs_serves_io_uring_writev_and_fdatasync() {
    let (mut fs, _dir) = mounted();
    let path = fs.mountpoint.join("ring");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    sync_dir(&fs.mountpoint);
    let mut ring = io_uring::IoUring::new(8).unwrap();
    let a = vec![7u8; 10_000];
    let b = vec![9u8; 5_000];
    let iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut _,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        },
    ];
    let fd = io_uring::types::Fd(std::os::fd::AsRawFd::as_raw_fd(&f));
    let w = io_uring::opcode::Writev::new(fd, iov.as_ptr(), 2)
        .offset(0)
        .build()
        .user_data(1);
    unsafe { ring.submission().push(&w).unwrap() };
    ring.submit_and_wait(1).unwrap();
    let res = ring.completion().next().unwrap().result();
    assert_eq!(res, 15_000, "io_uring writev on a FUSE file");
    assert_eq!(fs.unsynced().0, 1, "the writev reached faultfs as a write");
    let s = io_uring::opcode::Fsync::new(fd)
        .flags(io_uring::types::FsyncFlags::DATASYNC)
        .build()
        .user_data(2);
    unsafe { ring.submission().push(&s).unwrap() };
    ring.submit_and_wait(1).unwrap();
    assert_eq!(ring.completion().next().unwrap().result(), 0);
    assert_eq!(fs.unsynced().0, 0, "io_uring fdatasync reached faultfs");
    drop(f);
    fs.power_cut();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 15_000);
}

// ---------------------------------------------------------------------------------------------
// The daemon on faultfs.

/// Recorded intervals of a camera over the last hour, as (from, to).
fn intervals(d: &Daemon, cam: &str) -> Vec<(Time90k, Time90k)> {
    let now = Time90k::now();
    let v = d.get_json(&format!(
        "/api/v1/cameras/{cam}/recordings?from={}&to={}",
        support::procs::q(&now.add_ticks(-3600 * TICKS_PER_SEC).to_rfc3339()),
        support::procs::q(&now.add_ticks(60 * TICKS_PER_SEC).to_rfc3339())
    ));
    v["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                Time90k::parse_rfc3339(i["from"].as_str().unwrap()).unwrap(),
                Time90k::parse_rfc3339(i["to"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// Gaps the API reports in `[from, to)` of a camera.
fn gaps(d: &Daemon, cam: &str, from: Time90k, to: Time90k) -> Vec<serde_json::Value> {
    let v = d.get_json(&format!(
        "/api/v1/cameras/{cam}/recordings?from={}&to={}",
        support::procs::q(&from.to_rfc3339()),
        support::procs::q(&to.to_rfc3339())
    ));
    v["gaps"].as_array().unwrap().clone()
}

/// End of the last recorded interval of a camera.
fn recorded_until(d: &Daemon, cam: &str) -> Option<Time90k> {
    intervals(d, cam).last().map(|i| i.1)
}

fn place_hold(d: &Daemon, cam: &str, from: Time90k, to: Time90k) -> u64 {
    let (status, hold) = d.post(
        "/api/v1/holds",
        &format!(
            r#"{{"cameras":["{cam}"],"from":"{}","to":"{}","reason":"fault test"}}"#,
            from.to_rfc3339(),
            to.to_rfc3339()
        ),
    );
    assert_eq!(status, 201, "{hold}");
    hold["id"].as_u64().unwrap()
}

fn hold_ids(d: &Daemon) -> Vec<u64> {
    let v = d.get_json("/api/v1/holds");
    v.as_array()
        .unwrap()
        .iter()
        .filter(|h| h["state"] == "active")
        .filter_map(|h| h["id"].as_u64())
        .collect()
}

fn secs(s: f64) -> i64 {
    (s * TICKS_PER_SEC as f64) as i64
}

fn two_cameras(server: &RtspServer, policies: [&str; 2], retention: &str) -> String {
    let mut c = "[sweeper]\ninterval = \"2s\"\n\n".to_owned();
    for p in policies.iter().collect::<std::collections::BTreeSet<_>>() {
        c += &format!("[policies.{p}]\nvideo = \"{retention}\"\nkeytags = \"{retention}\"\n\n");
    }
    for (i, p) in policies.iter().enumerate() {
        c += &format!(
            "[[sites]]\nid = \"site{i}\"\npolicy = \"{p}\"\n\n[[cameras]]\nid = \"cam{i}\"\nsite = \"site{i}\"\nurl = \"{}\"\n\n",
            server.url(&format!("/cam{i}"))
        );
    }
    c
}

#[test]
fn power_cuts_lose_nothing_committed() {
    let cuts = support::synth::env_count("HOLDFAST_POWER_CUTS", 5);
    let seed = support::synth::seed();
    eprintln!("power-cut test: {cuts} cuts, seed {seed} (HOLDFAST_TEST_SEED repeats it)");
    let mut rng = support::synth::rng(seed);
    let server = RtspServer::start(&["--cameras", "2"]);
    let (mut fs, _dir) = mounted();
    let mut d = Daemon::start_in(
        &two_cameras(&server, ["keep", "keep"], "1h"),
        "bucket = \"10s\"\nsegment_target = \"1s\"\nsync_interval = \"1s\"",
        &[],
        Some(&fs.mountpoint),
    );
    let config = d.config_path();
    let recording =
        |d: &Daemon| d.camera_state("cam0") == "recording" && d.camera_state("cam1") == "recording";
    d.wait_until(Duration::from_secs(30), recording);
    let mut holds: Vec<u64> = Vec::new();
    let (mut dropped, mut bytes, mut entries, mut cuts_in_start, mut crashes) = (0, 0, 0, 0, 0);
    for cut in 0..cuts {
        std::thread::sleep(Duration::from_millis(rng.random_range(1500..6000)));
        // A hold over something recorded, now and then.
        if cut % 2 == 0 {
            if let Some((f, t)) = intervals(&d, "cam0").last().copied() {
                let from = f.max(t.add_ticks(-secs(4.0)));
                holds.push(place_hold(&d, "cam0", from, t));
            }
        }
        // What the API shows now was committed: it must survive.
        let snapshot = |d: &Daemon| -> Vec<(String, Vec<(Time90k, Time90k)>)> {
            ["cam0", "cam1"]
                .iter()
                .map(|c| (c.to_string(), intervals(d, c)))
                .collect()
        };
        let mut before = snapshot(&d);
        let holds_before = hold_ids(&d);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
        // Every other cut, first a plain crash: the page cache (here: faultfs's unsynced
        // writes) survives it, recovery at the restart finds records past `committed_len`, and
        // only then does the power go. Whatever that recovery indexed must survive the cut.
        if rng.random_bool(0.5) {
            let pending = fs.unsynced();
            d.kill();
            crashes += 1;
            d.restart();
            before = snapshot(&d);
            eprintln!(
                "cut {cut}: crash first with {pending:?} unsynced (changes, files); restarted"
            );
            std::thread::sleep(Duration::from_millis(rng.random_range(0..1000)));
        }
        let pending = fs.unsynced();
        d.kill();
        let report = fs.power_cut();
        dropped += report.writes_dropped;
        bytes += report.bytes_dropped;
        entries += report.entries_removed;
        eprintln!("cut {cut}: {pending:?} unsynced (changes, files) at the kill; {report:?}");

        let (ok, out) = holdfast(&["verify"], &config);
        assert!(
            ok && out.contains(" 0 dangling entries dropped"),
            "cut {cut} (seed {seed}): after a power cut no committed entry may point past the \
             synced bytes; holdfast verify:\n{out}"
        );
        let (ok, out) = holdfast(&["logbook", "verify"], &config);
        assert!(
            ok,
            "cut {cut} (seed {seed}): holdfast logbook verify failed:\n{out}"
        );
        // Sometimes the power goes again while the daemon starts (in recovery or just after).
        if rng.random_bool(0.4) {
            d.spawn_again();
            std::thread::sleep(Duration::from_millis(rng.random_range(50..1500)));
            d.kill();
            let report = fs.power_cut();
            dropped += report.writes_dropped;
            bytes += report.bytes_dropped;
            entries += report.entries_removed;
            cuts_in_start += 1;
            eprintln!("cut {cut}b, during the start: {report:?}");
            let (ok, out) = holdfast(&["verify"], &config);
            assert!(
                ok,
                "cut {cut}b (seed {seed}): holdfast verify failed:\n{out}"
            );
        }
        d.restart();
        let after = hold_ids(&d);
        for h in &holds_before {
            assert!(after.contains(h), "cut {cut}: hold {h} lost: {after:?}");
        }
        for (cam, ivs) in &before {
            for (f, t) in ivs {
                // RFC 3339 with nanoseconds is not exact in 90 kHz ticks: 1 ms of slack.
                let (f, t) = (f.add_ticks(90), t.add_ticks(-90));
                if f >= t {
                    continue;
                }
                let g = gaps(&d, cam, f, t);
                assert!(
                    g.is_empty(),
                    "cut {cut} (seed {seed}): {cam} showed {} .. {} recorded before the cut; now gaps {g:?}",
                    f.to_rfc3339(),
                    t.to_rfc3339()
                );
            }
        }
        d.wait_until(Duration::from_secs(30), recording);
    }
    // Recording goes on after the last cut.
    let t = Time90k::now();
    d.wait_until(Duration::from_secs(20), |d| {
        recorded_until(d, "cam1").is_some_and(|u| u > t)
    });
    eprintln!(
        "{cuts} power cuts (+{cuts_in_start} during a start, {crashes} after a crash and recovery): {dropped} unsynced writes ({bytes} bytes) dropped, {entries} unsynced \
         directory entries removed, {} fsyncs seen; all committed ranges and {} holds intact",
        fs.stats().fsyncs,
        holds.len()
    );
    assert!(
        dropped > 0,
        "no cut dropped anything: the test proved nothing"
    );
}

/// Assertions collected instead of stopping at the first, so that one run shows every defect.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        eprintln!("{} {what}", if ok { "ok:  " } else { "FAIL:" });
        if !ok {
            self.0.push(what);
        }
    }
    fn assert_none(&self, log: &str) {
        if !self.0.is_empty() {
            // The last errors and warnings of the daemon, not its debug chatter.
            let tail: Vec<_> = log
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                .rev()
                .take(30)
                .collect();
            panic!(
                "{} failed:\n- {}\nlast errors and warnings of the daemon:\n{}",
                self.0.len(),
                self.0.join("\n- "),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Polls `cond` every 250 ms for up to `limit`; whether it came true.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether a camera's recording reaches past `t` within `limit`.
fn records_past(d: &Daemon, cam: &str, t: Time90k, limit: Duration) -> bool {
    eventually(limit, || recorded_until(d, cam).is_some_and(|u| u > t))
}

/// Bytes allocated to a file.
fn allocated(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.blocks() * 512)
}

/// Bucket files of `policy` (on the backing disk) whose 10 s window started in `[from, to)`.
fn bucket_files(
    backing: &Path,
    policy: &str,
    from: Time90k,
    to: Time90k,
) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut t = from.floor_to(10);
    while t < to {
        let p = backing
            .join("buckets")
            .join(policy)
            .join(format!("{}.seg", holdfast::time::bucket_stem(t)));
        if p.exists() {
            out.push(p);
        }
        t = t.add_ticks(10 * TICKS_PER_SEC);
    }
    out
}

#[test]
fn faulty_disk_stays_local_and_frees_later() {
    let server = RtspServer::start(&["--cameras", "2"]);
    let (fs, _dir) = mounted();
    let mut d = Daemon::start_in(
        &two_cameras(&server, ["p0", "p1"], "40s"),
        "bucket = \"10s\"\nsegment_target = \"1s\"\nsync_interval = \"500ms\"",
        &[],
        Some(&fs.mountpoint),
    );
    let mut f = Findings::default();
    // Expiry of p0 cannot unlink, expiry of p1 cannot punch holes, until cleared below.
    fs.fail(Op::Unlink, "buckets/p0/", libc::EIO);
    fs.fail(Op::Punch, "buckets/p1/", libc::EIO);
    d.wait_until(Duration::from_secs(30), |d| {
        d.camera_state("cam0") == "recording" && d.camera_state("cam1") == "recording"
    });
    let start = Time90k::now();
    std::thread::sleep(Duration::from_secs(3));
    // One second of cam1's first whole bucket is held (a hold may reach into the near future):
    // that bucket is later punched around it, not unlinked. (A segment that starts in the
    // bucket before and reaches into the held second pins that bucket too: see `pinned` below.)
    let first1 = intervals(&d, "cam1")[0].0;
    let held_bucket = first1.floor_to(10).add_ticks(secs(10.0));
    let held = (
        held_bucket.add_ticks(secs(1.0)),
        held_bucket.add_ticks(secs(2.0)),
    );
    place_hold(&d, "cam1", held.0, held.1);

    // 1. EIO on every write to p0's buckets: cam0 loses segments, cam1 goes on.
    let t1 = Time90k::now();
    fs.fail(Op::Write, "buckets/p0/", libc::EIO);
    f.check(
        records_past(&d, "cam1", t1.add_ticks(secs(4.0)), Duration::from_secs(15)),
        "cam1 records on while writes to p0 fail with EIO",
    );
    let write_errors =
        d.metric(r#"holdfast_segments_dropped_total{camera="cam0",reason="write_error"}"#);
    f.check(
        write_errors > 0.0,
        format!("cam0's failed writes counted ({write_errors} segments)"),
    );
    fs.unfail(Op::Write, "buckets/p0/");
    let t2 = Time90k::now();
    f.check(
        records_past(&d, "cam0", t2.add_ticks(secs(2.0)), Duration::from_secs(20)),
        "cam0 records again once writes succeed",
    );
    f.check(
        d.get("/healthz", None).0 == 200,
        "/healthz stays 200 while only one policy's writes fail",
    );

    // 2. ENOSPC on fdatasync of p1's buckets: cam1 loses segments, cam0 goes on.
    let t3 = Time90k::now();
    fs.fail(Op::Fsync, "buckets/p1/", libc::ENOSPC);
    f.check(
        records_past(&d, "cam0", t3.add_ticks(secs(4.0)), Duration::from_secs(15)),
        "cam0 records on while fdatasync of p1 fails with ENOSPC",
    );
    let sync_errors =
        d.metric(r#"holdfast_segments_dropped_total{camera="cam1",reason="sync_error"}"#);
    f.check(
        sync_errors > 0.0,
        format!("cam1's failed syncs counted ({sync_errors} segments)"),
    );
    fs.unfail(Op::Fsync, "buckets/p1/");
    let cam0_sync =
        d.metric(r#"holdfast_segments_dropped_total{camera="cam0",reason="sync_error"}"#);
    f.check(
        cam0_sync == 0.0,
        format!("cam0 (p0) loses no segment to p1's failed fdatasync: {cam0_sync} dropped as sync_error"),
    );
    let t4 = Time90k::now();
    f.check(
        records_past(&d, "cam1", t4.add_ticks(secs(2.0)), Duration::from_secs(20)),
        "cam1 records again once fdatasync succeeds",
    );

    // 2b. RocksDB's own writes and syncs fail with ENOSPC for 3 s: once they work again, the
    // index takes commits again (a hold can be placed) and both cameras record on.
    fs.fail(Op::Write, "index/", libc::ENOSPC);
    fs.fail(Op::Fsync, "index/", libc::ENOSPC);
    std::thread::sleep(Duration::from_secs(3));
    let index_errors = fs.stats().injected.values().sum::<u64>();
    fs.unfail(Op::Write, "index/");
    fs.unfail(Op::Fsync, "index/");
    let t5 = Time90k::now();
    let hold_ok = eventually(Duration::from_secs(20), || {
        let (status, _) = d.post(
            "/api/v1/holds",
            &format!(
                r#"{{"cameras":["cam0"],"from":"{}","to":"{}","reason":"after ENOSPC"}}"#,
                t5.add_ticks(-secs(30.0)).to_rfc3339(),
                t5.add_ticks(-secs(29.0)).to_rfc3339()
            ),
        );
        status == 201
    });
    f.check(
        hold_ok,
        "the index takes commits again after RocksDB's ENOSPC (a hold placed)",
    );
    f.check(
        records_past(&d, "cam0", t5.add_ticks(secs(2.0)), Duration::from_secs(20))
            && records_past(&d, "cam1", t5.add_ticks(secs(2.0)), Duration::from_secs(5)),
        format!("both cameras record again after RocksDB's ENOSPC ({index_errors} errors injected so far)"),
    );

    // 2c. Every bucket write fails (after the held range was recorded): after 10 s of storing
    // nothing /healthz says so (503, the `writes` detail), and turns 200 again once writes
    // succeed.
    fs.fail(Op::Write, "buckets/", libc::EIO);
    let failing = eventually(Duration::from_secs(25), || {
        let (code, body) = d.get("/healthz", Some(&d.token));
        code == 503 && body.contains("segments lost in a row")
    });
    let (_, body) = d.get("/healthz", Some(&d.token));
    f.check(
        failing,
        format!("/healthz turns 503 when every write fails: {body}"),
    );
    fs.unfail(Op::Write, "buckets/");
    f.check(
        eventually(Duration::from_secs(20), || d.get("/healthz", None).0 == 200),
        "/healthz is 200 again once writes succeed",
    );

    // 3. Expiry (40 s retention, 10 s buckets) while unlink (p0) and punch (p1) fail.
    // Windows starting before start + 20 s hold data older than start + 30 s: due by start + 70 s.
    let due = start.add_ticks(secs(72.0));
    while Time90k::now() < due {
        std::thread::sleep(Duration::from_millis(500));
    }
    let overdue_before = start.add_ticks(secs(20.0));
    let p0_stuck = bucket_files(
        &fs.backing,
        "p0",
        start.add_ticks(-secs(20.0)),
        overdue_before,
    );
    // The buckets the hold pins: those of cam1's segments that overlap the held second (the
    // held bucket, and the one before when a segment starting there reaches into it), read from
    // the index on the backing disk.
    let pinned: Vec<String> =
        holdfast::store::index::Index::open_read_only(&fs.backing.join("index"))
            .unwrap()
            .camera_segments("cam1", held.0, held.1)
            .unwrap()
            .iter()
            .map(|e| format!("{}.seg", holdfast::time::bucket_stem(e.bucket)))
            .collect();
    f.check(
        pinned.contains(&format!("{}.seg", holdfast::time::bucket_stem(held_bucket))),
        format!("the hold pins its bucket: {pinned:?}"),
    );
    let is_pinned = |p: &std::path::Path| pinned.iter().any(|b| p.ends_with(b));
    // p1's buckets but the held ones.
    let p1_gone: Vec<_> = bucket_files(&fs.backing, "p1", first1, overdue_before)
        .into_iter()
        .filter(|p| !is_pinned(p))
        .collect();
    f.check(
        !p0_stuck.is_empty(),
        format!("p0's expired buckets are still on disk while unlink fails: {p0_stuck:?}"),
    );
    f.check(
        p1_gone.is_empty(),
        format!("p1's unpinned expired buckets are freed although p0's unlinks fail: {p1_gone:?}"),
    );
    let unlink_errors = d.metric(r#"holdfast_reclaim_errors_total{op="unlink"}"#);
    let punch_errors = d.metric(r#"holdfast_reclaim_errors_total{op="punch"}"#);
    let pending = d.metric("holdfast_reclaim_pending_bytes");
    f.check(
        unlink_errors > 0.0,
        format!("unlink errors counted: {unlink_errors}"),
    );
    f.check(
        punch_errors > 0.0,
        format!("punch errors counted: {punch_errors}"),
    );
    f.check(
        pending > 0.0,
        format!("holdfast_reclaim_pending_bytes shows the stuck bytes: {pending}"),
    );
    let (_, health) = d.get("/healthz", Some(&d.token));
    f.check(
        health.contains("\"reclaim\""),
        format!("/healthz details name reclaim: {health}"),
    );
    let now = Time90k::now();
    f.check(
        records_past(&d, "cam0", now, Duration::from_secs(10))
            && records_past(&d, "cam1", now, Duration::from_secs(10)),
        "both cameras record on while reclaim fails",
    );
    let injected = fs.stats().injected;
    eprintln!("errors injected so far: {injected:?}");

    // 4. The faults clear: what could not be freed is freed.
    let held_file = bucket_files(&fs.backing, "p1", held_bucket, held_bucket.add_ticks(1));
    let allocated_before: Vec<u64> = held_file.iter().filter_map(|p| allocated(p)).collect();
    fs.clear();
    f.check(
        eventually(Duration::from_secs(30), || {
            p0_stuck.iter().all(|p| !p.exists())
        }),
        format!(
            "p0's buckets whose unlink failed are unlinked once unlink works again: {p0_stuck:?}"
        ),
    );
    // Nothing past its retention is left on disk, indexed or not (a bucket whose every commit
    // failed is not in the index, so no sweep ever sees it).
    let left: Vec<(String, u64)> = ["p0", "p1"]
        .iter()
        .flat_map(|p| bucket_files(&fs.backing, p, start.add_ticks(-secs(20.0)), overdue_before))
        .filter(|p| !(p.starts_with(fs.backing.join("buckets/p1")) && is_pinned(p)))
        .map(|p| {
            let name = p.strip_prefix(&fs.backing).unwrap().display().to_string();
            (name, std::fs::metadata(&p).map_or(0, |m| m.len()))
        })
        .collect();
    f.check(
        left.is_empty(),
        format!("no bucket file past its retention is left on disk: {left:?}"),
    );
    f.check(
        eventually(Duration::from_secs(10), || {
            held_file
                .iter()
                .zip(&allocated_before)
                .all(|(p, before)| allocated(p).is_some_and(|a| a < *before))
        }),
        format!(
            "p1's held bucket {held_file:?} ({allocated_before:?} bytes allocated) is punched \
             once punching works again"
        ),
    );
    f.check(
        eventually(Duration::from_secs(10), || {
            d.metric("holdfast_reclaim_pending_bytes") == 0.0
        }),
        "no reclaim pending at the end",
    );
    f.check(
        gaps(&d, "cam1", held.0.add_ticks(90), held.1.add_ticks(-90)).is_empty(),
        "the held range of cam1 is intact",
    );
    d.stop();
    let (ok, out) = holdfast(&["verify"], &d.config_path());
    f.check(ok, format!("holdfast verify after the faults: {out}"));
    eprintln!(
        "faulty disk: {} errors injected ({:?}); cam0 {write_errors} segments lost to EIO, cam1 \
         {sync_errors} to ENOSPC on fdatasync; reclaim errors unlink {unlink_errors}, punch {punch_errors}",
        injected.values().sum::<u64>(),
        injected
    );
    f.assert_none(&d.log_text());
}

/// A small ext4 image mounted with `-o loop`; unmounted (lazily, so a failed test cannot leave
/// it busy) on drop, the image removed with its temp dir.
struct LoopMount {
    mnt: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopMount {
    /// `None` (with the reason) where loop mounts are not allowed.
    fn new(mib: u64) -> Result<LoopMount, String> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        File::create(&img).unwrap().set_len(mib << 20).unwrap();
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        // No blocks reserved for root: the daemon (root here) sees what a user would.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt))?;
        Ok(LoopMount { mnt, _dir: dir })
    }

    /// Free bytes for an unprivileged writer.
    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.mnt.as_os_str().as_encoded_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_frsize
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// Allocates `len` more bytes to `path` (another program filling the disk); the bytes it got.
fn fill(path: &Path, len: u64) -> u64 {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let start = f.metadata().unwrap().len();
    let mut got = 0;
    // In 1 MiB steps, so that a nearly full disk is filled as far as it goes.
    while got < len {
        let step = (len - got).min(1 << 20);
        let r = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                (start + got) as libc::off_t,
                step as libc::off_t,
            )
        };
        if r != 0 {
            break;
        }
        got += step;
    }
    f.sync_all().unwrap();
    got
}

#[test]
fn full_disk_expires_unpinned_only_and_resumes() {
    let disk = match LoopMount::new(256) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "SKIPPED full_disk_expires_unpinned_only_and_resumes: cannot make and mount a \
                 loop-mounted ext4 image here ({e}); it needs root, /dev/loop*, mkfs.ext4"
            );
            return;
        }
    };
    let sim = Camsim::start(2);
    let data = disk.mnt.join("data");
    let floor: u64 = 20 << 20;
    let mut config =
        "[sweeper]\ninterval = \"1s\"\n\n[policies.keep]\nvideo = \"1h\"\nkeytags = \"1h\"\n\n\
        [[sites]]\nid = \"site\"\npolicy = \"keep\"\n\n"
            .to_owned();
    for i in 0..2 {
        config += &format!(
            "[[cameras]]\nid = \"cam{i}\"\nsite = \"site\"\nurl = \"{}\"\n\n",
            sim.url(i)
        );
    }
    let mut d = Daemon::start_in(
        &config,
        "bucket = \"10s\"\nsegment_target = \"1s\"\nsync_interval = \"500ms\"\nmin_free = \"20MiB\"",
        &[],
        Some(&data),
    );
    let mut f = Findings::default();
    d.wait_until(Duration::from_secs(30), |d| {
        d.camera_state("cam0") == "recording" && d.camera_state("cam1") == "recording"
    });
    // At least one whole closed bucket (10 s windows), then hold cam0's first 3 s.
    std::thread::sleep(Duration::from_secs(14));
    d.wait_until(Duration::from_secs(10), |d| {
        !intervals(d, "cam0").is_empty() && !intervals(d, "cam1").is_empty()
    });
    let first0 = intervals(&d, "cam0")[0].0;
    let first1 = intervals(&d, "cam1")[0].0;
    let held = (first0, first0.add_ticks(secs(3.0)));
    place_hold(&d, "cam0", held.0, held.1);
    let held_intact =
        |d: &Daemon| gaps(d, "cam0", held.0.add_ticks(90), held.1.add_ticks(-90)).is_empty();
    f.check(held_intact(&d), "the held range is recorded");

    // A: another program leaves 6 MiB above the floor; cameras (about 1 MB/s) cross it.
    let filler = disk.mnt.join("filler");
    let want = disk.free().saturating_sub(floor + (6 << 20));
    let got = fill(&filler, want);
    eprintln!(
        "filler: {got} bytes; free now {} (floor {floor})",
        disk.free()
    );
    let early = || d.log_text().contains("expiring the oldest bucket early");
    f.check(
        eventually(Duration::from_secs(30), early),
        "early expiry under disk pressure",
    );
    f.check(
        eventually(Duration::from_secs(10), || {
            intervals(&d, "cam1")
                .first()
                .is_none_or(|i| i.0 > first1.add_ticks(secs(5.0)))
        }),
        "cam1's oldest (unpinned) footage expired early",
    );
    f.check(held_intact(&d), "the held range survives early expiry");
    let t = Time90k::now();
    f.check(
        records_past(&d, "cam0", t, Duration::from_secs(15))
            && records_past(&d, "cam1", t, Duration::from_secs(15)),
        "both cameras record on under disk pressure",
    );
    f.check(
        eventually(Duration::from_secs(10), || disk.free() >= floor),
        format!("free space back above the floor ({} free)", disk.free()),
    );

    // B: the disk fills up completely: the daemon pauses (or fails writes), then resumes by
    // itself once the other program's file goes.
    // The other program takes every byte that is freed, as it is freed.
    let mut got = 0;
    f.check(
        eventually(Duration::from_secs(30), || {
            got += fill(&filler, disk.free());
            d.metric("holdfast_storage_writes_paused") == 1.0
        }),
        "writes paused on a disk full of pinned, current and foreign data",
    );
    eprintln!("filler grown by {got} bytes; free now {}", disk.free());
    std::fs::remove_file(&filler).unwrap();
    let t = Time90k::now();
    eprintln!("filler removed; free now {}", disk.free());
    f.check(
        records_past(&d, "cam0", t.add_ticks(secs(2.0)), Duration::from_secs(30))
            && records_past(&d, "cam1", t.add_ticks(secs(2.0)), Duration::from_secs(30)),
        "ingest resumes by itself once space returns",
    );
    f.check(
        d.metric("holdfast_storage_writes_paused") == 0.0,
        "writes no longer paused",
    );
    f.check(d.get("/healthz", None).0 == 200, "/healthz ok again");
    f.check(held_intact(&d), "the held range survives the full disk");
    let config_path = d.config_path();
    let (early_count, full, write_errors) = (
        d.log_text()
            .matches("expiring the oldest bucket early")
            .count(),
        d.metric(r#"holdfast_segments_dropped_total{camera="cam0",reason="storage_full"}"#),
        d.metric(r#"holdfast_segments_dropped_total{camera="cam0",reason="write_error"}"#),
    );
    d.stop();
    let (ok, out) = holdfast(&["verify"], &config_path);
    f.check(ok, format!("holdfast verify after the full disk: {out}"));
    let (ok, out) = holdfast(&["logbook", "verify"], &config_path);
    f.check(
        ok,
        format!("holdfast logbook verify after the full disk: {out}"),
    );
    eprintln!(
        "full disk: {early_count} early expiries logged; cam0 segments dropped: storage_full \
         {full}, write_error {write_errors}"
    );
    f.assert_none(&d.log_text());
}

/// Appends a segment's record at the end of a file (as a crash before the commit leaves it).
fn append_record(path: &Path, seg: &holdfast::store::segment::Segment) -> u64 {
    let mut rec = Vec::new();
    seg.header().unwrap().encode(&mut rec).unwrap();
    for f in &seg.frames {
        rec.extend_from_slice(&f.data);
    }
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap();
    let at = file.metadata().unwrap().len();
    file.write_all_at(&rec, at).unwrap();
    at + rec.len() as u64
}

fn writer_config() -> holdfast::store::writer::WriterConfig {
    holdfast::store::writer::WriterConfig {
        bucket_secs: 10,
        sync_interval: Duration::from_millis(20),
        queue_limit_bytes: 1 << 30,
        queue_limit_segments: 10_000,
        io: Default::default(),
    }
}

#[test]
fn recovery_never_destroys_or_indexes_what_it_could_not_sync() {
    use holdfast::store::{recovery, Store};
    use std::sync::Arc;
    let (fs, _dir) = mounted();
    let data = fs.mountpoint.join("data");
    let mut rng = synth::rng(71);
    let pool = synth::pool(&mut rng, 1 << 20);
    let t0 = Time90k::from_unix_seconds(1_795_000_000);
    let mut seg = |cam: &str, s: i64| {
        synth::segment(
            &mut rng,
            &pool,
            cam,
            "p",
            t0.add_ticks(s * TICKS_PER_SEC),
            20,
            2_000,
        )
    };
    // Two durable segments in bucket A through the writer.
    {
        let (store, _) = Store::open(&data, 10).unwrap();
        let w = holdfast::store::writer::Writer::spawn(
            Arc::new(store),
            writer_config(),
            Arc::new(holdfast::metrics::Metrics::new()),
            None,
        )
        .unwrap();
        w.handle().submit(seg("cam-a", 0)).unwrap();
        w.handle().submit(seg("cam-a", 2)).unwrap();
        assert!(w.handle().flush());
        w.shutdown();
    }
    // A crash left two complete records past A's committed length; a file restored from a
    // backup (unknown to the index) holds two more, in bucket B.
    let store = Store::open_without_recovery(&data).unwrap();
    let a = store.index().buckets(None).unwrap()[0].clone();
    let path_a = store.bucket_path("p", a.start);
    let b_start = t0.add_ticks(20 * TICKS_PER_SEC);
    let path_b = store.bucket_path("p", b_start);
    drop(store);
    append_record(&path_a, &seg("cam-a", 4));
    let len_a = append_record(&path_a, &seg("cam-a", 6));
    append_record(&path_b, &seg("cam-b", 20));
    let len_b = append_record(&path_b, &seg("cam-b", 22));
    sync_dir(path_b.parent().unwrap());

    // fdatasync fails during recovery: nothing is cut off, nothing indexed, both ranges
    // remembered.
    fs.fail(Op::Fsync, "buckets/", libc::EIO);
    let (store, report) = Store::open(&data, 10).unwrap();
    assert_eq!(report.unsynced_dropped, 4, "{report}");
    assert_eq!(report.segments_reindexed, 0, "{report}");
    assert_eq!(report.bytes_truncated, 0, "{report}");
    assert_eq!(std::fs::metadata(&path_a).unwrap().len(), len_a);
    assert_eq!(std::fs::metadata(&path_b).unwrap().len(), len_b);
    let ba = store.index().bucket("p", a.start).unwrap().unwrap();
    assert_eq!((ba.committed_len, ba.segments), (len_a, 2), "{ba:?}");
    let bb = store
        .index()
        .bucket("p", b_start)
        .unwrap()
        .expect("B recorded");
    assert_eq!((bb.committed_len, bb.segments), (len_b, 0), "{bb:?}");
    drop(store);

    // The fault clears: those ranges are never scanned or indexed again.
    fs.unfail(Op::Fsync, "buckets/");
    let (store, report) = Store::open(&data, 10).unwrap();
    assert_eq!(
        (
            report.segments_reindexed,
            report.bytes_scanned,
            report.unsynced_dropped
        ),
        (0, 0, 0),
        "{report}"
    );
    let v = store.verify().unwrap();
    assert!(v.bad.is_empty() && v.segments == 2, "{v:?}");
    drop(store);

    // One file whose reads fail (EIO) does not stop the start; its entries stay.
    append_record(&path_a, &seg("cam-a", 8));
    let rel_a = path_a
        .strip_prefix(&fs.mountpoint)
        .unwrap()
        .display()
        .to_string();
    fs.fail(Op::Read, &rel_a, libc::EIO);
    let (store, report) = Store::open(&data, 10).unwrap();
    assert_eq!(report.files_unreadable, 1, "{report}");
    assert_eq!(
        store.index().bucket_segments("p", a.start).unwrap().len(),
        2
    );
    drop(store);
    fs.unfail(Op::Read, &rel_a);

    // `reindex` cannot leave records out quietly: it stops, naming the file.
    fs.fail(Op::Fsync, "buckets/", libc::EIO);
    let store = Store::open_without_recovery(&data).unwrap();
    let err = recovery::reindex(&store, 10).expect_err("reindex refused");
    let msg = err.to_string();
    assert!(msg.contains("fdatasync") && msg.contains(".seg"), "{msg}");
    drop(store);
    fs.clear();
}

/// Segments of [`writer_on`] start this many seconds after this time.
const WRITER_T0: Time90k = Time90k(1_795_000_000 * TICKS_PER_SEC);

/// The store library in `data` (10 s buckets) with a writer over it, its metrics and durable
/// channel, and a maker of 20-frame segments of camera `cam-a`, policy `p`, `s` seconds after
/// [`WRITER_T0`].
#[allow(clippy::type_complexity)]
fn writer_on(
    data: &Path,
    seed: u64,
) -> (
    std::sync::Arc<holdfast::store::Store>,
    std::sync::Arc<holdfast::metrics::Metrics>,
    holdfast::store::writer::Writer,
    crossbeam_channel::Receiver<holdfast::store::index::SegmentEntry>,
    impl FnMut(i64) -> holdfast::store::segment::Segment,
) {
    use std::sync::Arc;
    let mut rng = synth::rng(seed);
    let pool = synth::pool(&mut rng, 1 << 20);
    let seg = move |s: i64| {
        synth::segment(
            &mut rng,
            &pool,
            "cam-a",
            "p",
            WRITER_T0.add_ticks(s * TICKS_PER_SEC),
            20,
            2_000,
        )
    };
    let (store, _) = holdfast::store::Store::open(data, 10).unwrap();
    let store = Arc::new(store);
    let metrics = Arc::new(holdfast::metrics::Metrics::new());
    let (tx, rx) = crossbeam_channel::unbounded();
    let w = holdfast::store::writer::Writer::spawn(
        store.clone(),
        writer_config(),
        metrics.clone(),
        Some(tx),
    )
    .unwrap();
    (store, metrics, w, rx, seg)
}

#[test]
fn the_writer_never_indexes_a_range_whose_sync_failed() {
    use holdfast::store::Store;
    let (fs, _dir) = mounted();
    let data = fs.mountpoint.join("data");
    let (store, metrics, w, rx, mut seg) = writer_on(&data, 81);
    let h = w.handle();
    h.submit(seg(0)).unwrap();
    h.submit(seg(2)).unwrap();
    assert!(h.flush());
    assert_eq!(rx.try_iter().count(), 2);

    let committed_a_before = store.index().buckets(None).unwrap()[0].committed_len;
    // Every fdatasync fails: bucket A's new records and the first ones of bucket B (a file
    // created during the fault) are dropped; for a while nothing is stored at all.
    fs.fail(Op::Fsync, "buckets/", libc::EIO);
    h.submit(seg(4)).unwrap();
    h.submit(seg(12)).unwrap();
    assert!(h.flush());
    let t_fail = std::time::Instant::now();
    let mut lost = 2;
    while t_fail.elapsed() < Duration::from_millis(400) {
        std::thread::sleep(Duration::from_millis(50));
        h.submit(seg(13 + lost)).unwrap();
        assert!(h.flush());
        lost += 1;
    }
    assert_eq!(rx.try_iter().count(), 0);
    let dropped = |reason: &str| {
        support::procs::metric_value(
            &metrics.encode(),
            &format!(r#"holdfast_segments_dropped_total{{camera="cam-a",reason="{reason}"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(dropped("sync_error"), lost as f64);
    let failing = h.writes_failing_after(Duration::from_millis(250));
    assert!(
        failing
            .as_deref()
            .is_some_and(|f| f.contains("segments lost in a row")),
        "{failing:?}"
    );
    let a = store.index().buckets(None).unwrap()[0].clone();
    let b = store.index().buckets(None).unwrap()[1].clone();
    let len_a = std::fs::metadata(store.bucket_path("p", a.start))
        .unwrap()
        .len();
    // The failed range is remembered: A's committed length covers everything written (a
    // direct file's space reserved beyond it stays for the next records).
    assert!(
        a.committed_len > committed_a_before && a.committed_len <= len_a,
        "A's failed range is remembered: {a:?}, file {len_a} bytes"
    );
    assert_eq!(
        b.segments, 0,
        "B is in the index although nothing in it was stored: {b:?}"
    );
    assert!(b.committed_len > 0, "{b:?}");

    // The fault clears: writing goes on after the failed ranges.
    fs.unfail(Op::Fsync, "buckets/");
    h.submit(seg(6)).unwrap();
    h.submit(seg(18)).unwrap();
    assert!(h.flush());
    let after: Vec<_> = rx.try_iter().collect();
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].offset, a.committed_len);
    assert!(after[1].offset >= b.committed_len);
    assert_eq!(h.writes_failing_after(Duration::from_millis(250)), None);
    w.shutdown();
    drop(store);

    // After a restart the failed ranges are not indexed (nothing is even scanned).
    let (store, report) = Store::open(&data, 10).unwrap();
    assert_eq!(
        (report.segments_reindexed, report.bytes_scanned),
        (0, 0),
        "{report}"
    );
    let v = store.verify().unwrap();
    assert!(v.bad.is_empty() && v.segments == 4, "{v:?}");
    fs.clear();
}

/// A filesystem that takes `O_DIRECT` at open but refuses a direct write with `EINVAL` (some
/// FUSE and network filesystems): the refused segment is dropped and counted, `O_DIRECT` is
/// cleared on the same descriptor before the next batch, and the file is written buffered from
/// then on, with what was stored before and after read back intact.
#[test]
fn a_file_refusing_direct_writes_goes_buffered() {
    let (fs, _dir) = mounted();
    let data = fs.mountpoint.join("data");
    let (store, metrics, w, rx, mut seg) = writer_on(&data, 83);
    let h = w.handle();
    h.submit(seg(0)).unwrap();
    assert!(h.flush());
    assert_eq!(rx.try_iter().count(), 1);
    let path = store.bucket_path("p", WRITER_T0.floor_to(10));
    let flags = support::procs::open_flags(&path).expect("the writer holds the bucket file open");
    assert_ne!(
        flags & libc::O_DIRECT as u32,
        0,
        "faultfs took O_DIRECT at open: {flags:o}"
    );

    // Every write (and allocation) of the bucket files is refused with EINVAL.
    fs.fail(Op::Write, "buckets/", libc::EINVAL);
    h.submit(seg(2)).unwrap();
    assert!(h.flush());
    assert_eq!(
        rx.try_iter().count(),
        0,
        "the refused segment is not durable"
    );
    let dropped = support::procs::metric_value(
        &metrics.encode(),
        r#"holdfast_segments_dropped_total{camera="cam-a",reason="write_error"}"#,
    );
    assert_eq!(dropped, Some(1.0));
    fs.clear();

    h.submit(seg(4)).unwrap();
    assert!(h.flush());
    let after: Vec<_> = rx.try_iter().collect();
    assert_eq!(after.len(), 1, "written buffered after the refusal");
    let flags = support::procs::open_flags(&path).expect("the same file is still open");
    assert_eq!(
        flags & libc::O_DIRECT as u32,
        0,
        "O_DIRECT cleared on the descriptor: {flags:o}"
    );
    store.read_segment(&after[0]).unwrap();
    w.shutdown();
    let v = store.verify().unwrap();
    assert!(v.bad.is_empty() && v.segments == 2, "{v:?}");
}

/// The logbook's actions in order, as the manager sees them.
fn actions(d: &Daemon) -> Vec<String> {
    d.get_json("/api/v1/logbook")["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_abandoned_export_stops_hashing_and_logs_no_export() {
    use std::io::Write as _;
    let (fs, _dir) = mounted();
    let cfg = "[policies.month]\nvideo = \"28d\"\nkeytags = \"28d\"\n\n[[sites]]\nid = \"s\"\n\
               policy = \"month\"\n\n[[cameras]]\nid = \"lobby\"\nsite = \"s\"\n\
               url = \"rtsp://127.0.0.1:9/none\"\n";
    let mut d = Daemon::start_in(cfg, "", &[], Some(&fs.mountpoint));
    d.stop();
    // 40 s of the shipped clip (about 20 MB) an hour ago.
    let t0 = Time90k::now().add_ticks(-3600 * TICKS_PER_SEC);
    support::clip::write_clip_segments(&d.data_dir, "lobby", "month", t0, 0..20, 3600);
    d.restart();
    let body = serde_json::json!({
        "from": t0.to_rfc3339(), "to": t0.add_ticks(40 * TICKS_PER_SEC).to_rfc3339(),
        "purpose": "subject-access", "reason": "request of data subject",
        "recipient": "the data subject", "reference": "AVG-1",
    })
    .to_string();
    let post = format!(
        "POST /api/v1/cameras/lobby/exports HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        d.addr,
        support::procs::PRIVACY_TOKEN,
        body.len()
    );
    // The user's other streaming slots are taken: the export fetched by clients that read
    // nothing (each GET holds a slot until its client goes). With one more held, the user is
    // refused (503) a view of a range with nothing in it, which otherwise gets its slot and then
    // the 404; that is how the test sees whether the abandoned export gave its slot back.
    let export_now = || {
        let (status, text) = support::procs::http_post(
            d.addr,
            "/api/v1/cameras/lobby/exports",
            Some(support::procs::PRIVACY_TOKEN),
            &body,
        );
        assert_eq!(status, 201, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let url = export_now()["url"].as_str().unwrap().to_owned();
    let hold = || {
        let mut c = std::net::TcpStream::connect(d.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            c,
            "GET {url} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            d.addr,
            support::procs::PRIVACY_TOKEN
        )
        .unwrap();
        // Its answer's head has come, so it holds its slot (taken before the answer).
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(std::io::Read::read(&mut c, &mut b).unwrap(), 1, "{head:?}");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        c
    };
    let empty_view = serde_json::json!({
        "from": t0.add_ticks(-600 * TICKS_PER_SEC).to_rfc3339(),
        "to": t0.add_ticks(-540 * TICKS_PER_SEC).to_rfc3339(),
        "purpose": "subject-access", "reason": "request of data subject",
    })
    .to_string();
    let view_status = || {
        support::procs::http_post(
            d.addr,
            "/api/v1/cameras/lobby/views",
            Some(support::procs::PRIVACY_TOKEN),
            &empty_view,
        )
    };
    let mut holders: Vec<_> = (1..holdfast::api::export::MAX_PER_USER)
        .map(|_| hold())
        .collect();
    // The holders keep their slots until the daemon drops them as stalled; the check below
    // means something only before then.
    let holding_since = std::time::Instant::now();
    // The check itself: a fourth holder makes the view 503, its going makes it 404 again.
    let fourth = hold();
    let (status, text) = view_status();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("exports and views running"), "{text}");
    drop(fourth);
    assert!(
        eventually(Duration::from_secs(20), || view_status().0 == 404),
        "the view got no slot after a holder left: {:?}",
        view_status()
    );
    let logged_before = actions(&d).len();
    // The bucket files' cached pages dropped (theirs only), so that every read of them comes to
    // faultfs, and 40 ms late: the export's hash of the 20 MB takes seconds.
    let segs: Vec<std::path::PathBuf> = std::fs::read_dir(d.data_dir.join("buckets/month"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    assert!(
        !segs.is_empty(),
        "no bucket file under {}",
        d.data_dir.display()
    );
    let mut total = 0;
    for p in &segs {
        let f = File::open(p).unwrap();
        total += f.metadata().unwrap().len();
        // SAFETY: a plain advice call on an open descriptor.
        let rc = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0, "posix_fadvise {}", p.display());
    }
    fs.slow_reads(Some((".seg", Duration::from_millis(40))));
    let b0 = fs.stats().slowed_bytes;
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.write_all(post.as_bytes()).unwrap();
    // The plan reads the 20 headers (a few kB each); once 40% of the files' bytes were asked
    // for, the hash is reading the payloads.
    assert!(
        eventually(Duration::from_secs(60), || fs.stats().slowed_bytes - b0
            >= total * 2 / 5),
        "the export read {} of {total} bytes",
        fs.stats().slowed_bytes - b0
    );
    // The client goes away mid-hash.
    drop(s);
    let at_close = fs.stats().slowed_bytes;
    std::thread::sleep(Duration::from_secs(3));
    let more = fs.stats().slowed_bytes - at_close;
    // The abandoned export's streaming slot was given back when its hash stopped: with the
    // other slots still held and the bucket reads still slow, the user's view gets a slot (404:
    // nothing in that range) instead of the 503 of all slots taken.
    let after_abandon = view_status();
    let checked_at = std::time::Instant::now();
    fs.slow_reads(None);
    // The hash checks for the client once per segment (~1 MB) and the kernel reads ahead: a
    // few MB more at most. Going on would have read the rest, about 12 MB (at 40 ms per read of
    // 128 kB, ~9 MB in the 3 s; with larger FUSE reads, all of it).
    assert!(
        more < total / 5,
        "the hash went on after the client left: {more} more bytes of {total}"
    );
    // Nothing was logged for it: no export (no SHA-256 of a file nobody received; the
    // handler's future was dropped with the connection).
    let acts = actions(&d).split_off(logged_before);
    assert!(!acts.iter().any(|a| a == "export"), "{acts:?}");
    assert_eq!(after_abandon.0, 404, "{}", after_abandon.1);
    assert!(
        checked_at.duration_since(holding_since)
            < holdfast::api::export::STALL_TIMEOUT - Duration::from_secs(10),
        "the holders may have been dropped as stalled before the check"
    );
    holders.clear();
    // The same user exports the same range at once afterwards (the holders' slots, too, are
    // given back when their clients go).
    assert!(
        eventually(Duration::from_secs(20), || view_status().0 == 404),
        "{:?}",
        view_status()
    );
    assert_eq!(export_now()["sha256"].as_str().unwrap().len(), 64);
    d.stop();
}

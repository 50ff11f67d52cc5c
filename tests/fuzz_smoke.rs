//! The cargo-fuzz targets of `fuzz/` in the normal test run.
//!
//! - `seeds_and_regressions_pass_the_checks` (stable, well under a second): every checked-in seed
//!   (`fuzz/corpus/<target>/`) and every crash turned regression (`fuzz/regressions/<target>/`)
//!   goes through the same property checks the fuzz targets run (`holdfast::fuzz_checks`).
//! - `fuzz_targets_run_clean`: builds the targets with nightly and cargo-fuzz (in
//!   `$CARGO_TARGET_DIR/fuzz`, linking the release build's RocksDB instead of compiling it again)
//!   and runs each for `HOLDFAST_FUZZ_SECONDS` (30) seconds from its seed corpus,
//!   `HOLDFAST_FUZZ_JOBS` (2) targets at once (`HOLDFAST_FUZZ_TARGETS`: a comma-separated subset).
//!   Any crash, timeout, leak or out-of-memory fails it, with the input's path and bytes printed.
//!   Without nightly or cargo-fuzz it skips with a message, or fails when
//!   `HOLDFAST_REQUIRE_FUZZ=1` (as `.ci/run` sets).
//! - `write_seed_corpus` (ignored): regenerates the seed corpus:
//!   `cargo test --release --test fuzz_smoke -- --ignored write_seed_corpus`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast::camsim::clip::split_annex_b;
use holdfast::fuzz_checks;
use holdfast::store::segment::{CodecConfig, Frame, Segment, SegmentHeader};
use holdfast::time::Time90k;

const TARGETS: [&str; 4] = [
    "segment_decode",
    "recovery_scan",
    "keytag_batch",
    "config_load",
];

fn check_of(target: &str) -> fn(&[u8]) {
    match target {
        "segment_decode" => fuzz_checks::segment_decode,
        "recovery_scan" => fuzz_checks::recovery_scan,
        "keytag_batch" => fuzz_checks::keytag_batch,
        "config_load" => fuzz_checks::config_load,
        other => panic!("unknown fuzz target {other:?}"),
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn hex_head(bytes: &[u8], max: usize) -> String {
    let mut s: String = bytes.iter().take(max).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > max {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

#[test]
fn seeds_and_regressions_pass_the_checks() {
    let mut failed = Vec::new();
    for target in TARGETS {
        let check = check_of(target);
        let seeds = files_in(&repo().join("fuzz/corpus").join(target));
        assert!(
            !seeds.is_empty(),
            "no seed corpus in fuzz/corpus/{target}: run write_seed_corpus (see the module doc)"
        );
        let regressions = files_in(&repo().join("fuzz/regressions").join(target));
        for path in seeds.iter().chain(&regressions) {
            let bytes = std::fs::read(path).unwrap();
            if std::panic::catch_unwind(|| check(&bytes)).is_err() {
                failed.push(format!("{}: {}", path.display(), hex_head(&bytes, 256)));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that fail their fuzz checks:\n{}",
        failed.join("\n")
    );
}

/// Skips (returns) with a message, or fails when the fuzz run is required.
fn unavailable(why: &str) {
    let required = std::env::var("HOLDFAST_REQUIRE_FUZZ").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "HOLDFAST_REQUIRE_FUZZ=1 but {why}: run scripts/setup.sh (installs the nightly toolchain \
         and cargo-fuzz)"
    );
    eprintln!("SKIPPED fuzz smoke run: {why} (scripts/setup.sh installs it; HOLDFAST_REQUIRE_FUZZ=1 makes this a failure)");
}

/// Nightly `cargo` (through `rustup run`, so that the cargo cargo-fuzz starts is nightly too),
/// without the environment of this test run (cargo's, rustup's, compiler flags).
fn nightly_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"]);
    for var in [
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTDOC",
    ] {
        c.env_remove(var);
    }
    c
}

fn succeeds(c: &mut Command) -> bool {
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The target directory this test binary was built in (`<dir>/release/deps/fuzz_smoke-*`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).expect("target dir").to_owned()
}

/// The directory of the release build's `librocksdb.a` (the newest, if there are several).
fn rocksdb_lib_dir(target: &Path) -> Option<PathBuf> {
    let build = target.join("release/build");
    std::fs::read_dir(&build)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("librocksdb-sys-")
        })
        .map(|e| e.path().join("out"))
        .filter_map(|out| {
            let m = std::fs::metadata(out.join("librocksdb.a")).ok()?;
            Some((m.modified().ok()?, out))
        })
        .max()
        .map(|(_, out)| out)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

struct Run {
    target: String,
    child: Child,
    log: PathBuf,
    artifacts: PathBuf,
    _corpus: tempfile::TempDir,
}

#[test]
fn fuzz_targets_run_clean() {
    if !succeeds(nightly_cargo().arg("--version")) {
        return unavailable("no nightly toolchain");
    }
    if !succeeds(nightly_cargo().args(["fuzz", "--version"])) {
        return unavailable("cargo-fuzz is not installed");
    }
    let target = target_dir();
    let Some(rocksdb) = rocksdb_lib_dir(&target) else {
        panic!(
            "no librocksdb.a under {}/release/build/librocksdb-sys-*/out: the fuzz build links \
             the release build's RocksDB instead of compiling it again; build the release first",
            target.display()
        );
    };
    let seconds: u64 = env_or("HOLDFAST_FUZZ_SECONDS", 30);
    let jobs: usize = env_or("HOLDFAST_FUZZ_JOBS", 2usize).max(1);
    let targets: Vec<String> = match std::env::var("HOLDFAST_FUZZ_TARGETS") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_owned()).collect(),
        _ => TARGETS.iter().map(|s| s.to_string()).collect(),
    };
    for t in &targets {
        assert!(TARGETS.contains(&t.as_str()), "unknown fuzz target {t:?}");
    }

    // All targets (cargo fuzz builds one or all). The smoke build: optimised, with debug
    // assertions, no sanitizer (README, "Fuzzing", has the build times; the long runs use
    // AddressSanitizer).
    let fuzz_target = target.join("fuzz");
    let started = Instant::now();
    let out = nightly_cargo()
        .current_dir(repo())
        .args([
            "fuzz",
            "build",
            "-O",
            "--debug-assertions",
            "--sanitizer",
            "none",
        ])
        .arg("--target-dir")
        .arg(&fuzz_target)
        .env("ROCKSDB_LIB_DIR", &rocksdb)
        .env("ROCKSDB_STATIC", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo fuzz build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let bin_dir = fuzz_target.join("x86_64-unknown-linux-gnu/release");

    let mut pending: Vec<String> = targets.clone();
    pending.reverse();
    let mut running: Vec<Run> = Vec::new();
    let mut failures = Vec::new();
    while !pending.is_empty() || !running.is_empty() {
        while running.len() < jobs {
            let Some(t) = pending.pop() else { break };
            running.push(start_run(&bin_dir, &fuzz_target, &t, seconds));
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut still = Vec::new();
        for mut r in running.drain(..) {
            match r.child.try_wait().unwrap() {
                None => still.push(r),
                Some(status) => {
                    if let Some(f) = finish_run(&r, status) {
                        failures.push(f);
                    }
                }
            }
        }
        running = still;
    }
    assert!(
        failures.is_empty(),
        "fuzz targets failed:\n{}",
        failures.join("\n\n")
    );
}

fn start_run(bin_dir: &Path, fuzz_target: &Path, target: &str, seconds: u64) -> Run {
    let bin = bin_dir.join(target);
    assert!(bin.is_file(), "{} was not built", bin.display());
    // New inputs go to a temporary corpus; the checked-in seeds are only read.
    let corpus = tempfile::tempdir().unwrap();
    let artifacts = fuzz_target.join("smoke-artifacts").join(target);
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let log = fuzz_target.join(format!("smoke-{target}.log"));
    let child = Command::new(&bin)
        .arg(corpus.path())
        .arg(repo().join("fuzz/corpus").join(target))
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Run {
        target: target.to_owned(),
        child,
        log,
        artifacts,
        _corpus: corpus,
    }
}

/// Reports a finished run; returns its failure, if any.
fn finish_run(r: &Run, status: std::process::ExitStatus) -> Option<String> {
    let log = std::fs::read_to_string(&r.log).unwrap_or_default();
    let execs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "?".into());
    eprintln!("fuzz {}: {execs} executions, {status}", r.target);
    let found = files_in(&r.artifacts);
    if status.success() && found.is_empty() {
        return None;
    }
    let mut msg = format!(
        "{}: {status}; log {} (last lines below)",
        r.target,
        r.log.display()
    );
    for f in &found {
        let bytes = std::fs::read(f).unwrap_or_default();
        msg.push_str(&format!(
            "\n  input {} = {}\n  replay: {} {}",
            f.display(),
            hex_head(&bytes, 512),
            r.log
                .parent()
                .unwrap()
                .join("x86_64-unknown-linux-gnu/release")
                .join(&r.target)
                .display(),
            f.display()
        ));
    }
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    for l in tail.into_iter().rev() {
        msg.push_str("\n  | ");
        msg.push_str(l);
    }
    msg.push_str(&format!(
        "\n  to keep it as a regression: copy the input to fuzz/regressions/{}/",
        r.target
    ));
    Some(msg)
}

// ---------------------------------------------------------------------------------------------
// The seed corpus

/// A real avcC record and short sample prefixes from the shipped clip.
fn clip_parts() -> (Bytes, Vec<(Vec<u8>, bool)>) {
    let data = std::fs::read(repo().join("data/clip-720p25-4mbit.h264")).unwrap();
    let nals = split_annex_b(&data);
    let sps = nals.iter().find(|n| n[0] & 0x1f == 7).unwrap();
    let pps = nals.iter().find(|n| n[0] & 0x1f == 8).unwrap();
    let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
    avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(sps);
    avcc.push(1);
    avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(pps);
    let samples = nals
        .iter()
        .filter(|n| matches!(n[0] & 0x1f, 1 | 5))
        .take(6)
        .map(|n| {
            // The first bytes of each slice, as an AVC length-prefixed sample.
            let cut = &n[..n.len().min(40)];
            let mut s = (cut.len() as u32).to_be_bytes().to_vec();
            s.extend_from_slice(cut);
            (s, n[0] & 0x1f == 5)
        })
        .collect();
    (Bytes::from(avcc), samples)
}

/// A record (header and payload) as the writer puts it in a bucket file.
fn record(camera: &str, start: i64, frames: usize) -> Vec<u8> {
    let (avcc, samples) = clip_parts();
    let seg = Segment {
        camera: camera.into(),
        policy: "four-weeks".into(),
        start: Time90k(start),
        codec: CodecConfig::new(avcc).into(),
        frames: samples
            .iter()
            .cycle()
            .take(frames)
            .enumerate()
            .map(|(i, (s, key))| Frame {
                data: Bytes::copy_from_slice(s),
                duration: 3600,
                key: i == 0 || *key,
            })
            .collect(),
    };
    let mut out = Vec::new();
    seg.header().unwrap().encode(&mut out).unwrap();
    for f in &seg.frames {
        out.extend_from_slice(&f.data);
    }
    assert!(SegmentHeader::decode(&out).is_ok());
    out
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let t0 = 1_764_579_600 * 90_000i64; // 2025-12-01T09:00:00Z
    let r1 = record("noord-entrance", t0, 3);
    let r2 = record("noord-entrance", t0 + 3 * 3600, 2);
    let r3 = record("west-stairwell", t0 + 1800, 4);
    let with = |mode: &[u8], body: &[u8]| [mode, body].concat();
    // segment_decode: mode 0 raw, 1 CRC-fixed, 2 built header.
    let mut out = vec![
        ("segment_decode", "record-real".into(), with(&[0], &r1)),
        ("segment_decode", "record-real-2".into(), with(&[0], &r3)),
        (
            "segment_decode",
            "record-torn".into(),
            with(&[0], &r1[..r1.len() - 30]),
        ),
        ("segment_decode", "record-fixup".into(), with(&[1], &r2)),
        (
            "segment_decode",
            "built-small".into(),
            with(&[2, 1, 4, b'c', b'a', b'm', b'1'], &[7u8; 48]),
        ),
        (
            "segment_decode",
            "built-large".into(),
            with(&[2, 0, 3, b'c', b'a', b'm'], &[0x41u8; 64]),
        ),
    ];

    // recovery_scan: mode, where the scan starts, then the file (or the build steps).
    let file = [r1.clone(), b"torn-bytes".to_vec(), r2.clone(), r3.clone()].concat();
    out.push(("recovery_scan", "bucket-file".into(), with(&[0, 0], &file)));
    let torn = [r1.clone(), r2[..r2.len() / 2].to_vec()].concat();
    out.push((
        "recovery_scan",
        "bucket-torn-tail".into(),
        with(&[0, 0], &torn),
    ));
    let committed = [r1.clone(), r2.clone()].concat();
    out.push((
        "recovery_scan",
        "bucket-committed-half".into(),
        with(&[0, 190], &committed),
    ));
    out.push(("recovery_scan", "bucket-fixup".into(), with(&[1, 0], &file)));
    out.push((
        "recovery_scan",
        "built-records-holes".into(),
        with(
            &[2, 0],
            &[
                0, 0, 3, b'c', b'a', b'm', 1, 2, 3, 4, 5, 6, 7, 8, 2, 0, 1, 2, 3, 0, 4, 1, 4, 2, 0,
                0, 0, 2, 3, b'a', b'b', b'c', 3, 20, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                14, 15, 16, 17, 18, 19, 1, 1, 3, b'x', b'y', b'z',
            ],
        ),
    ));

    // keytag_batch: request bodies.
    let kt = [
        ("ndjson", "{\"tag\":\"A1\",\"door\":\"main\",\"time\":\"2026-11-22T21:00:00+01:00\"}\n{\"tag\":\"B2\",\"door\":\"bike-shed\",\"time\":\"2026-11-22T20:05:03.25Z\",\"site\":\"heuvel-west\"}\n"),
        ("array", "[{\"tag\":\"04:A2:19:7F\",\"door\":\"main\",\"time\":\"2026-11-22T21:00:00.123456789+01:00\",\"site\":\"maas-noord\"}]"),
        ("bad-line", "{\"tag\":\"A1\",\"door\":\"main\",\"time\":\"2026-11-22T21:00:00Z\"}\n\n{\"tag\":\"\",\"door\":\"x\",\"time\":\"yesterday\"}"),
        ("other-site", "{\"tag\":\"A1\",\"door\":\"main\",\"time\":\"2026-11-22T21:00:00Z\",\"site\":\"elsewhere\"}"),
        ("old", "{\"tag\":\"A\",\"door\":\"d\",\"time\":\"1969-12-31T23:59:59.999999Z\"}"),
    ];
    for (name, body) in kt {
        out.push(("keytag_batch", name.into(), body.as_bytes().to_vec()));
    }

    // config_load: the shipped example, a minimal config, and refused ones.
    let example = std::fs::read(repo().join("config/holdfast.example.toml")).unwrap();
    out.push(("config_load", "example".into(), example));
    let minimal = "[storage]\ndata_dir = \"/var/lib/holdfast\"\nbucket = \"10s\"\n\n[policies.short]\nvideo = \"40s\"\nkeytags = \"1d\"\n\n[[sites]]\nid = \"s\"\npolicy = \"short\"\n\n[[cameras]]\nid = \"cam-1\"\nsite = \"s\"\nurl = \"rtsp://127.0.0.1:8554/cam\"\n\n[logbook]\nunkeyed = true\ncheckpoint_dir = \"/var/lib/holdfast-checkpoints\"\n";
    out.push(("config_load", "minimal".into(), minimal.as_bytes().to_vec()));
    let bad = minimal
        .replace("\"10s\"", "\"7s\"")
        .replace("rtsp://127.0.0.1", "rtsp://viewer:hunter22@127.0.0.1")
        .replace("policy = \"short\"", "policy = \"gone\"");
    out.push(("config_load", "refused".into(), bad.into_bytes()));
    out.push((
        "config_load",
        "syntax-error".into(),
        b"[storage\ndata_dir = 1\n".to_vec(),
    ));
    out
}

#[test]
#[ignore = "writes fuzz/corpus: run by hand to regenerate the seeds"]
fn write_seed_corpus() {
    for (target, name, bytes) in seeds() {
        let dir = repo().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&name), &bytes).unwrap();
        eprintln!("fuzz/corpus/{target}/{name}: {} bytes", bytes.len());
    }
}

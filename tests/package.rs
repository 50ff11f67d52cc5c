//! The Debian package, built and installed into a throwaway root.
//!
//! `debian_package_builds_installs_and_never_overwrites_the_config` builds the .deb with
//! `cargo deb --no-build` from the release binary this test run already has
//! (`CARGO_BIN_EXE_holdfast`; no nested cargo build) into a temporary directory, then checks:
//! - `dpkg-deb -c`: the file list, every mode and owner, nothing under /etc (dpkg owns no config);
//! - the control files: Depends (libc6, adduser), no conffiles, the maintainer scripts;
//! - the extracted binary's `check-config` on the extracted starting config, as it is (its paths
//!   are /var/lib/holdfast etc.; check-config does not need them to exist);
//! - a real `dpkg --root=ROOT --force-script-chrootless` install (maintainer scripts run with
//!   DPKG_ROOT=ROOT, the user goes into ROOT/etc/passwd): user and group, directories, config and
//!   logbook key with their owners and modes; `holdfast user add` on the installed config; a
//!   reinstall (upgrade path) that leaves the edited config and the key byte for byte; a config
//!   removed by the admin comes back, the key is kept; `dpkg --remove` keeps config, data and
//!   logs; `dpkg --purge` deletes the config and camera secrets but keeps the evidence
//!   (footage, index, logbook checkpoints, logbook key).
//!
//! As root it runs dpkg directly; otherwise under `fakeroot` (ownership is then what fakeroot
//! records). Without cargo-deb it fails, saying to run scripts/setup.sh. About 20 s (most of it
//! compressing the 30 MB binary).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a shell script as root: directly when we are, else under fakeroot with a state file
/// kept across calls (so ownership set by one call is seen by the next).
struct Root {
    state: PathBuf,
}

impl Root {
    fn sh(&self, script: &str) -> Output {
        if is_root() {
            run(Command::new("sh").arg("-euc").arg(script))
        } else {
            let mut cmd = Command::new("fakeroot");
            if self.state.exists() {
                cmd.arg("-i").arg(&self.state);
            }
            cmd.arg("-s").arg(&self.state);
            run(cmd.arg("--").arg("sh").arg("-euc").arg(script))
        }
    }

    /// `mode uid gid` of each path (octal mode, numeric ids).
    fn stat(&self, paths: &[&Path]) -> Vec<String> {
        let args: Vec<String> = paths.iter().map(|p| format!("'{}'", p.display())).collect();
        let out = self.sh(&format!("stat -c '%a %u %g' {}", args.join(" ")));
        stdout(&out).lines().map(str::to_owned).collect()
    }
}

fn build_deb(out_dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let version = Command::new(&cargo).args(["deb", "--version"]).output();
    match version {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "cargo-deb is missing (`cargo deb --version` failed): run scripts/setup.sh, which \
             installs the pinned version"
        ),
    }
    // The binary cargo test built for this run: cargo-deb takes target/release/holdfast from
    // the target dir it is in, without building (the run holds the target dir's lock).
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_holdfast"));
    let target_dir = bin.parent().unwrap().parent().unwrap().to_owned();
    assert_eq!(
        bin.parent().unwrap().file_name().unwrap(),
        "release",
        "run this test with --release"
    );
    run(Command::new(&cargo)
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["deb", "--no-build", "--no-strip", "--fast", "--output"])
        .arg(out_dir));
    let debs: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one .deb in {}: {debs:?}", out_dir.display());
    let name = debs[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with("holdfast_") && name.ends_with(".deb"),
        "{name}"
    );
    debs[0].clone()
}

/// The expected files of the package: path, mode.
const FILES: &[(&str, &str)] = &[
    ("./usr/bin/holdfast", "-rwxr-xr-x"),
    ("./lib/systemd/system/holdfast.service", "-rw-r--r--"),
    ("./usr/share/holdfast/holdfast.toml.example", "-rw-r--r--"),
    ("./usr/share/doc/holdfast/README.md", "-rw-r--r--"),
    ("./usr/share/doc/holdfast/copyright", "-rw-r--r--"),
    ("./usr/share/doc/holdfast/api.yaml", "-rw-r--r--"),
    (
        "./usr/share/doc/holdfast/examples/holdfast.example.toml",
        "-rw-r--r--",
    ),
    (
        "./usr/share/doc/holdfast/examples/prometheus/alerts.yml",
        "-rw-r--r--",
    ),
    (
        "./usr/share/doc/holdfast/examples/grafana/holdfast.json",
        "-rw-r--r--",
    ),
];

fn check_contents(deb: &Path) {
    let list = stdout(&run(Command::new("dpkg-deb").arg("-c").arg(deb)));
    let mut files = Vec::new();
    for line in list.lines() {
        // drwxr-xr-x 0/0  0 2026-12-05 00:00 ./usr/
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 6, "odd dpkg-deb -c line {line:?}");
        let (mode, owner, path) = (f[0], f[1], f[5]);
        assert_eq!(owner, "0/0", "{path}: owned by root");
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "{path}");
            continue;
        }
        assert!(
            !path.starts_with("./etc/"),
            "{path}: dpkg must own nothing in /etc"
        );
        files.push((path.to_owned(), mode.to_owned()));
    }
    files.sort();
    let mut want: Vec<(String, String)> = FILES
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    want.sort();
    assert_eq!(files, want, "the package's files and modes");

    let info = stdout(&run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg("Package")));
    assert_eq!(info.trim(), "holdfast");
    let depends = stdout(&run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg("Depends")));
    for d in ["libc6", "adduser", "passwd"] {
        assert!(
            depends.split(',').any(|p| p.trim().starts_with(d)),
            "Depends names {d}: {depends}"
        );
    }
}

fn check_control(deb: &Path, control: &Path) {
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(control));
    assert!(
        !control.join("conffiles").exists()
            || std::fs::read_to_string(control.join("conffiles"))
                .unwrap()
                .trim()
                .is_empty(),
        "no conffiles: /etc/holdfast/holdfast.toml belongs to the admin, not to dpkg"
    );
    for s in ["postinst", "prerm", "postrm"] {
        let p = control.join(s);
        let mode = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{s} mode");
        let want = std::fs::read(repo().join("pkg/debian").join(s)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want, "{s} is pkg/debian/{s}");
    }
}

fn check_config(bin: &Path, config: &Path) -> String {
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "check-config {} failed:\n{text}{}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn field(line: &str, n: usize) -> &str {
    line.split(':').nth(n).unwrap_or("")
}

#[test]
fn debian_package_builds_installs_and_never_overwrites_the_config() {
    let started = std::time::Instant::now();
    if !is_root() && Command::new("fakeroot").arg("true").output().is_err() {
        panic!("not root and no fakeroot: run as root, or install fakeroot (scripts/setup.sh)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let deb = build_deb(&out_dir);
    let built = started.elapsed();
    check_contents(&deb);
    check_control(&deb, &tmp.path().join("control"));

    // dpkg -x: the extracted binary checks the extracted starting config as it is.
    let x = tmp.path().join("x");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&x));
    let xbin = x.join("usr/bin/holdfast");
    let example = x.join("usr/share/holdfast/holdfast.toml.example");
    let ok = check_config(&xbin, &example);
    assert!(
        ok.contains("ok (1 policies, 1 sites, 0 cameras, 0 users)"),
        "{ok}"
    );
    let unit = std::fs::read_to_string(x.join("lib/systemd/system/holdfast.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/holdfast run --config /etc/holdfast/holdfast.toml"),
        "the unit starts the packaged binary"
    );
    assert!(!unit.contains("/usr/local/bin"));

    // A real dpkg install into a throwaway root; the maintainer scripts run chrootless with
    // DPKG_ROOT. Dependencies are not in ROOT's (empty) dpkg database: --force-depends.
    let root = tmp.path().join("root");
    for d in ["etc", "var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(root.join(f), "").unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let r = Root {
        state: tmp.path().join("fakeroot.state"),
    };
    let dpkg = |args: &str| {
        r.sh(&format!(
            "dpkg --root='{}' --force-script-chrootless --force-depends --force-not-root {args}",
            root.display()
        ))
    };
    let install = format!("-i '{}'", deb.display());
    let out = dpkg(&install);
    assert!(
        stdout(&out).contains("installed /etc/holdfast/holdfast.toml"),
        "{}",
        stdout(&out)
    );

    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .filter(|l| l.starts_with("holdfast:"))
        .collect();
    assert_eq!(user.len(), 1, "{passwd}");
    let (uid, gid) = (field(user[0], 2).to_owned(), field(user[0], 3).to_owned());
    assert!(
        uid.parse::<u32>().unwrap() < 1000,
        "a system uid: {}",
        user[0]
    );
    assert_eq!(field(user[0], 5), "/var/lib/holdfast");
    assert_eq!(field(user[0], 6), "/usr/sbin/nologin");
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with(&format!("holdfast:x:{gid}:"))),
        "{group}"
    );

    let p = |s: &str| root.join(s);
    let (data, logs, etc, secrets, conf, key) = (
        p("var/lib/holdfast"),
        p("var/log/holdfast"),
        p("etc/holdfast"),
        p("etc/holdfast/secrets"),
        p("etc/holdfast/holdfast.toml"),
        p("etc/holdfast/secrets/logbook.key"),
    );
    assert_eq!(
        r.stat(&[&data, &logs, &etc, &secrets, &conf, &key]),
        [
            format!("700 {uid} {gid}"),
            format!("700 {uid} {gid}"),
            format!("750 0 {gid}"),
            format!("700 {uid} {gid}"),
            format!("640 0 {gid}"),
            format!("600 {uid} {gid}"),
        ],
        "modes and owners of data, logs, /etc/holdfast, secrets, config, logbook key"
    );
    assert_eq!(
        std::fs::read(&conf).unwrap(),
        std::fs::read(repo().join("pkg/holdfast.toml")).unwrap()
    );
    let key_text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(key_text.len(), 65, "64 hex digits and a newline");
    assert!(key_text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    // The installed config, as installed, checks clean with the installed binary.
    check_config(&root.join("usr/bin/holdfast"), &conf);

    // The admin edits the config and adds a user with the installed binary.
    let mut edited = std::fs::read_to_string(&conf).unwrap();
    edited.push_str("# edited by the admin\n");
    std::fs::write(&conf, &edited).unwrap();
    let added = r.sh(&format!(
        "'{}' user add j.devries --role manager --sites site-1 --config '{}'",
        root.join("usr/bin/holdfast").display(),
        conf.display()
    ));
    assert!(stdout(&added).contains("systemctl reload holdfast"));
    let edited = std::fs::read(&conf).unwrap();
    assert!(String::from_utf8_lossy(&edited).contains("# edited by the admin\n\n[[users]]"));
    assert_eq!(
        r.stat(&[&conf]),
        [format!("640 0 {gid}")],
        "user add keeps mode and owner"
    );

    // Reinstall (the upgrade path: postinst configure OLD-VERSION): nothing of the admin's
    // changes; no second user.
    dpkg(&install);
    assert_eq!(
        std::fs::read(&conf).unwrap(),
        edited,
        "the config is never overwritten"
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_text);
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert_eq!(
        passwd
            .lines()
            .filter(|l| l.starts_with("holdfast:"))
            .count(),
        1
    );

    // A config the admin deleted comes back from the example; the existing key is kept.
    std::fs::remove_file(&conf).unwrap();
    dpkg(&install);
    assert_eq!(
        std::fs::read(&conf).unwrap(),
        std::fs::read(repo().join("pkg/holdfast.toml")).unwrap()
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_text);

    // remove: the binary goes, config, secrets, data and logs stay.
    std::fs::write(data.join("footage"), "x").unwrap();
    dpkg("--remove holdfast");
    assert!(!root.join("usr/bin/holdfast").exists());
    for kept in [&conf, &key, &data.join("footage"), &logs] {
        assert!(kept.exists(), "{} kept by remove", kept.display());
    }
    // purge: the config goes, the evidence (footage, index, logbook checkpoints, logbook key)
    // stays (README says so); the user stays.
    dpkg("--purge holdfast");
    assert!(!conf.exists(), "{} removed by purge", conf.display());
    for kept in [&key, &data.join("footage"), &logs] {
        assert!(kept.exists(), "{} kept by purge (evidence)", kept.display());
    }
    assert!(std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .contains("holdfast:"));
    println!(
        "package: built in {:.1}s, whole test {:.1}s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

//! `holdfast user add` and `holdfast user list` through the real binary, on a copy of the
//! package's starting config (pkg/holdfast.toml): the token printed once and only its SHA-256
//! stored, the file's text kept, mode kept, every refusal naming its field and writing nothing,
//! `user list` never showing hashes. Well under a second.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn holdfast(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn user_add_prints_the_token_once_stores_its_hash_and_refuses_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("holdfast.toml");
    let original =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pkg/holdfast.toml"))
            .unwrap();
    std::fs::write(&conf, &original).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).unwrap();

    let out = holdfast(
        &[
            "user",
            "add",
            "j.devries",
            "--role",
            "manager",
            "--sites",
            "site-1",
        ],
        &conf,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let tokens: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("token: "))
        .collect();
    assert_eq!(tokens.len(), 1, "the token is printed once: {stdout}");
    let token = tokens[0];
    assert_eq!(token.len(), 64);
    assert_eq!(stdout.matches(token).count(), 1);
    assert!(stdout.contains("not stored") && stdout.contains("systemctl reload holdfast"));
    let after = std::fs::read_to_string(&conf).unwrap();
    assert!(
        after.starts_with(&original),
        "the old text is kept as it was"
    );
    assert!(!after.contains(token), "the token itself is never written");
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    assert!(after.contains(&format!("token_sha256 = \"{hash}\"")));
    let c = holdfast::config::Config::load(&conf).unwrap();
    assert_eq!(c.users.len(), 1);
    assert_eq!(c.users[0].name, "j.devries");
    assert_eq!(
        std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777,
        0o640
    );

    // Refusals: exit 1, the field named on stderr, the file unchanged, no temp file left.
    for (args, want) in [
        (
            vec![
                "user",
                "add",
                "J.DeVries",
                "--role",
                "auditor",
                "--sites",
                "*",
            ],
            "NAME: a user \"j.devries\" exists already",
        ),
        (
            vec!["user", "add", "p", "--role", "boss", "--sites", "site-1"],
            "--role: unknown role \"boss\"",
        ),
        (
            vec![
                "user",
                "add",
                "p",
                "--role",
                "auditor",
                "--sites",
                "site-1,zuid",
            ],
            "--sites: unknown site \"zuid\"; the config has site-1",
        ),
        (
            vec![
                "user", "add", "holdfast", "--role", "auditor", "--sites", "*",
            ],
            "users[1].name: \"holdfast\" is reserved",
        ),
    ] {
        let out = holdfast(&args, &conf);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!text(&out.stdout).contains("token"), "{args:?}");
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), after, "{args:?}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let out = holdfast(&["user", "list"], &conf);
    let list = text(&out.stdout);
    assert!(out.status.success());
    assert!(list.contains("j.devries") && list.contains("manager") && list.contains("site-1"));
    assert!(!list.contains(&hash[..16]), "never a hash: {list}");
}

#[test]
fn concurrent_user_adds_all_land_and_every_printed_token_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("holdfast.toml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pkg/holdfast.toml"),
        &conf,
    )
    .unwrap();
    const N: usize = 8;
    let children: Vec<_> = (0..N)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_holdfast"))
                .args(["user", "add", &format!("user-{i}"), "--role", "manager"])
                .args(["--sites", "site-1", "--config"])
                .arg(&conf)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut tokens = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        let t = stdout
            .lines()
            .find_map(|l| l.strip_prefix("token: "))
            .unwrap_or_else(|| panic!("no token: {stdout}"));
        tokens.push(t.to_owned());
    }
    let after = std::fs::read_to_string(&conf).unwrap();
    for i in 0..N {
        assert!(
            after.contains(&format!("name = \"user-{i}\"")),
            "user-{i}:\n{after}"
        );
    }
    for t in &tokens {
        let h = hex::encode(Sha256::digest(t.as_bytes()));
        assert!(
            after.contains(&h),
            "a printed token's hash is missing:\n{after}"
        );
    }
    // Nothing but the config is left (no lock or temporary file).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

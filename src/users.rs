//! `holdfast user add` and `holdfast user list`: API users in the config file.
//!
//! `add` makes a new bearer token (32 bytes from the OS RNG, hex), appends a `[[users]]` entry
//! with only the token's SHA-256 to the end of the config text (the rest of the file, comments
//! and formatting included, stays byte for byte), checks the new text with the config parser,
//! and replaces the file safely ([`replace_file`]: a temporary file in the same directory with
//! the original's mode and owner, fsync, rename, fsync of the directory). Anything wrong (the
//! name exists, an unknown role or site, a config that would not validate) is refused naming
//! the field, and nothing is written. The token is returned to be printed once; it is stored
//! nowhere. The whole read-modify-replace runs under an exclusive `flock` on the config file itself
//! (re-taken on the new file when a concurrent run replaced it while this one waited), so
//! concurrent runs never drop each other's user.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError, ConfigErrors};

/// The user to add, as given on the command line.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The user's name (what the logbook shows).
    pub name: String,
    /// The role.
    pub role: String,
    /// Site ids, or `["*"]` for all sites.
    pub sites: Vec<String>,
}

/// A bearer token, made from the OS RNG. Its `Debug` never shows it.
pub struct Token(String);

impl Token {
    /// 32 bytes from the operating system's RNG, as 64 hex digits.
    pub fn generate() -> std::io::Result<Self> {
        use rand::TryRngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| std::io::Error::other(format!("the OS random number generator: {e}")))?;
        Ok(Self(hex::encode(bytes)))
    }

    /// The token itself (to print once).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 of the token, hex: what the config stores.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

fn err(key: &str, message: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: key.into(),
        message: message.into(),
    }])
}

/// Parses a `--sites` value: `S`, `S1,S2` or `*`.
pub fn parse_sites(s: &str) -> Result<Vec<String>, ConfigErrors> {
    let sites: Vec<String> = s.split(',').map(|p| p.trim().to_owned()).collect();
    if sites.iter().any(String::is_empty) {
        return Err(err("--sites", format!("{s:?}: an empty site id")));
    }
    if sites.len() > 1 && sites.iter().any(|s| s == "*") {
        return Err(err("--sites", "\"*\" (all sites) stands alone"));
    }
    Ok(sites)
}

/// The config text with `user` appended as a `[[users]]` entry with `token_sha256`, or why not.
/// `text` must already be a valid config; the result is checked with [`Config::parse`].
pub fn add_user_text(
    text: &str,
    user: &NewUser,
    token_sha256: &str,
) -> Result<String, ConfigErrors> {
    let config = Config::parse(text).map_err(|e| {
        let mut all = vec![ConfigError {
            key: String::new(),
            message: "the config has errors already (fix them first, nothing was written)".into(),
        }];
        all.extend(e.0);
        ConfigErrors(all)
    })?;
    if let Some(i) = config
        .users
        .iter()
        .position(|u| u.name.eq_ignore_ascii_case(&user.name))
    {
        return Err(err(
            "NAME",
            format!(
                "a user {:?} exists already (users[{i}]); names are compared ignoring case",
                config.users[i].name
            ),
        ));
    }
    let roles = crate::roles::RoleTable::new(&config.roles);
    if !roles.contains(&user.role) {
        let known: Vec<&str> = roles.names().collect();
        return Err(err(
            "--role",
            format!("unknown role {:?}; one of {}", user.role, known.join(", ")),
        ));
    }
    if user.sites.is_empty() {
        return Err(err(
            "--sites",
            "give at least one site id, or \"*\" for all",
        ));
    }
    for s in &user.sites {
        if s != "*" && !config.sites.iter().any(|site| &site.id == s) {
            let known: Vec<&str> = config.sites.iter().map(|s| s.id.as_str()).collect();
            return Err(err(
                "--sites",
                format!(
                    "unknown site {s:?}; the config has {}",
                    if known.is_empty() {
                        "no sites".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let sites: Vec<String> = user.sites.iter().map(|s| quote(s)).collect();
    let mut new = text.to_owned();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!(
        "\n[[users]]\nname = {}\nrole = {}\ntoken_sha256 = \"{token_sha256}\"\nsites = [{}]\n",
        quote(&user.name),
        quote(&user.role),
        sites.join(", ")
    ));
    let checked = Config::parse(&new).map_err(|e| {
        let mut all = vec![ConfigError {
            key: String::new(),
            message: "the config with the new user would not be valid (nothing was written)".into(),
        }];
        all.extend(e.0);
        ConfigErrors(all)
    })?;
    // The entry must have landed as a user of its own (not inside some other table).
    match checked.users.last() {
        Some(u)
            if u.name == user.name
                && checked.users.len() == config.users.len() + 1
                && hex::encode(u.token_sha256) == token_sha256 => {}
        _ => {
            return Err(err(
                "",
                "the appended [[users]] entry was not read back as the new user (nothing was \
                 written); add it by hand",
            ))
        }
    }
    Ok(new)
}

/// Replaces `path` by `text` safely: a temporary file in the same directory with the original's
/// mode and owner, written and fsynced, renamed over the original, then the directory fsynced.
/// Refuses (changing nothing) when the file changed since `original` was read from it. A symlink
/// is followed: its target is replaced.
pub fn replace_file(path: &Path, original: &str, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let real = std::fs::canonicalize(path)?;
    let dir = real
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{}: no parent directory", real.display())))?;
    let meta = std::fs::metadata(&real)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".holdfast-user-add.")
        .tempfile_in(dir)?;
    let f = tmp.as_file();
    std::os::unix::fs::fchown(f, Some(meta.uid()), Some(meta.gid()))?;
    f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    if std::fs::read_to_string(&real)? != original {
        return Err(std::io::Error::other(format!(
            "{} changed while the user was being added; nothing was written, try again",
            real.display()
        )));
    }
    tmp.persist(&real).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Takes an exclusive `flock` on the config file itself (its real path), waiting for another
/// `user add` to finish; released on drop. The file a waiter locked may have been replaced
/// meanwhile (a new inode renamed over it): then it locks the new one, so every run reads the
/// text the previous one wrote. No lock file is left behind.
fn lock_config(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    loop {
        let real = std::fs::canonicalize(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let f = std::fs::File::open(&real)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", real.display()))?;
        // SAFETY: fd is open for the duration of the call.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            anyhow::bail!("cannot lock {}: {e}", real.display());
        }
        let locked = f.metadata()?;
        match std::fs::metadata(&real) {
            Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => return Ok(f),
            // Replaced while this run waited: lock the new file.
            _ => continue,
        }
    }
}

/// `holdfast user add`: the new token (to print once), after the config file was replaced.
pub fn add_user(path: &Path, user: &NewUser) -> anyhow::Result<Token> {
    // Held for the whole read-modify-replace: concurrent runs add one after the other.
    let _lock = lock_config(path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let token = Token::generate()?;
    let new = add_user_text(&text, user, &token.sha256_hex())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    replace_file(path, &text, &new)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(token)
}

/// `holdfast user list`: one line per user (name, role, sites); never the hashes.
pub fn list_lines(config: &Config) -> Vec<String> {
    let w = config
        .users
        .iter()
        .map(|u| u.name.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    let rw = config
        .users
        .iter()
        .map(|u| u.role.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    let mut out = vec![format!("{:w$}  {:rw$}  sites", "name", "role")];
    for u in &config.users {
        let sites = match &u.sites {
            None => "*".to_owned(),
            Some(s) => s.join(","),
        };
        out.push(format!("{:w$}  {:rw$}  {sites}", u.name, u.role));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "# a comment that must stay\n[storage]\ndata_dir = \"/var/lib/holdfast\"   # trailing comment\n\n[policies.p]\nvideo = \"7d\"\nkeytags = \"7d\"\n\n[[sites]]\nid = \"a\"\npolicy = \"p\"\n\n[[sites]]\nid = \"b\"\npolicy = \"p\"\n\n[[users]]\nname = \"Old\"\nrole = \"auditor\"\ntoken_sha256 = \"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b\"\nsites = [\"*\"]\n\n[logbook]\nunkeyed = true\ncheckpoint_dir = \"/var/log/holdfast\"";

    fn user(name: &str, role: &str, sites: &[&str]) -> NewUser {
        NewUser {
            name: name.into(),
            role: role.into(),
            sites: sites.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn first_err(r: Result<String, ConfigErrors>) -> String {
        r.unwrap_err().0[0].to_string()
    }

    #[test]
    fn appends_after_the_last_table_and_keeps_the_rest() {
        let t = Token::generate().unwrap();
        let new = add_user_text(
            BASE,
            &user("j.devries", "manager", &["a", "b"]),
            &t.sha256_hex(),
        )
        .unwrap();
        assert!(new.starts_with(BASE), "the old text is kept byte for byte");
        let c = Config::parse(&new).unwrap();
        let u = c.users.last().unwrap();
        assert_eq!((u.name.as_str(), u.role.as_str()), ("j.devries", "manager"));
        assert_eq!(
            u.sites.as_deref(),
            Some(&["a".to_owned(), "b".to_owned()][..])
        );
        assert_eq!(hex::encode(u.token_sha256), t.sha256_hex());
        // [logbook] (the last table before) still has its keys: the entry did not land in it.
        assert!(c.logbook.key_file.is_none());
        assert!(
            !new.contains(t.expose()),
            "the token itself is never written"
        );
        let star = add_user_text(&new, &user("x", "auditor", &["*"]), &t.sha256_hex()).unwrap();
        assert!(Config::parse(&star).unwrap().users[2].sites.is_none());
    }

    #[test]
    fn names_are_quoted_as_toml_strings() {
        let new = add_user_text(
            BASE,
            &user("o'brien\"x", "auditor", &["a"]),
            &"0".repeat(64),
        )
        .unwrap();
        assert_eq!(Config::parse(&new).unwrap().users[1].name, "o'brien\"x");
    }

    #[test]
    fn refusals_name_the_field() {
        let h = "0".repeat(64);
        let e = first_err(add_user_text(BASE, &user("old", "auditor", &["a"]), &h));
        assert!(
            e.starts_with("NAME: a user \"Old\" exists already (users[0])"),
            "{e}"
        );
        let e = first_err(add_user_text(BASE, &user("n", "boss", &["a"]), &h));
        assert!(
            e.starts_with("--role: unknown role \"boss\"; one of "),
            "{e}"
        );
        let e = first_err(add_user_text(
            BASE,
            &user("n", "auditor", &["a", "zuid"]),
            &h,
        ));
        assert_eq!(e, "--sites: unknown site \"zuid\"; the config has a, b");
        // What only the full validation finds: a reserved or malformed name.
        let r = add_user_text(BASE, &user("holdfast", "auditor", &["a"]), &h).unwrap_err();
        assert!(r.0[0].message.contains("would not be valid"));
        assert!(r.0[1]
            .to_string()
            .starts_with("users[1].name: \"holdfast\" is reserved"));
        let r = add_user_text(BASE, &user("two words", "auditor", &["a"]), &h).unwrap_err();
        assert!(r.0[1].to_string().starts_with("users[1].name:"), "{r}");
        // A config that is broken already is not touched.
        let broken = BASE.replace(
            "policy = \"p\"\n\n[[sites]]\nid = \"b\"",
            "policy = \"q\"\n\n[[sites]]\nid = \"b\"",
        );
        let r = add_user_text(&broken, &user("n", "auditor", &["a"]), &h).unwrap_err();
        assert!(r.0[0].message.contains("has errors already"));
        assert!(r.0[1].to_string().starts_with("sites[0].policy"), "{r}");
        // Users as an inline array cannot take a [[users]] table after them.
        let inline = "users = []\n[storage]\ndata_dir = \"/d\"\n[logbook]\nunkeyed = true\n";
        Config::parse(inline).unwrap();
        assert!(add_user_text(inline, &user("n", "auditor", &["*"]), &h).is_err());
    }

    #[test]
    fn sites_argument() {
        assert_eq!(parse_sites("a,b").unwrap(), ["a", "b"]);
        assert_eq!(parse_sites("*").unwrap(), ["*"]);
        assert!(parse_sites("a,*").is_err());
        assert!(parse_sites("a,,b").unwrap_err().0[0].key == "--sites");
    }

    #[test]
    fn tokens_are_32_random_bytes_and_never_debug_printed() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose(), b.expose());
        assert!(!format!("{a:?}").contains(a.expose()));
        assert_eq!(
            a.sha256_hex(),
            hex::encode(Sha256::digest(a.expose().as_bytes()))
        );
    }

    #[test]
    fn replace_file_keeps_mode_and_refuses_a_changed_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("holdfast.toml");
        std::fs::write(&p, "old\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        replace_file(&p, "old\n", "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        let e = replace_file(&p, "old\n", "newer\n").unwrap_err();
        assert!(e.to_string().contains("changed while"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        // No temporary file is left behind, whatever happened.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn list_never_shows_hashes() {
        let c = Config::parse(BASE).unwrap();
        let lines = list_lines(&c);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("Old "));
        assert!(lines[1].ends_with("  *"));
        assert!(!lines.concat().contains("6b86b273"));
    }
}

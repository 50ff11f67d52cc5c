//! The logbook: an append-only, keyed hash chain of every look at footage or key-tag data and of
//! every hold, erasure and refused request (R5: "logboek"), anchored outside RocksDB by
//! checkpoints. design/logbook.md explains the format and what each mechanism does and does not
//! detect.
//!
//! Entries live in the RocksDB column family `logbook`, keyed by their sequence number (8 bytes,
//! big-endian, from 1). The value is the entry's link (32 bytes) followed by the entry as JSON.
//! The link covers the previous entry's link and these JSON bytes exactly as stored:
//!
//! ```text
//! keyed:    link(n) = HMAC-SHA256(key, link(n-1) || json(n))     link(0) = 32 zero bytes
//! unkeyed:  link(n) = SHA-256(link(n-1) || json(n))
//! ```
//!
//! The key lives outside the data directory (`logbook.key_file`), so whoever can write the data
//! directory but cannot read the key cannot recompute links after changing an entry. A chain
//! written before a key was configured continues keyed from a `logbook.keyed` entry (the first
//! MAC link); [`Logbook::verify`] accepts plain SHA-256 links only before that entry.
//!
//! The head (last seq and link) is kept in `meta` in the same batch as each append, and
//! [`Logbook::open`] refuses to start when the head record and the last entry disagree. Every
//! `checkpoint_interval` and at shutdown, when the head moved, a [`Checkpointer`] appends a line
//! `seq mac time` to `<logbook.checkpoint_dir>/logbook.checkpoints` and to the log, where `mac`
//! binds the seq, that entry's link and the time under the key. A logbook shorter than, or
//! different at, its newest checkpoint refuses to open; `holdfast logbook verify` checks every
//! checkpoint and names a cut tail.
//!
//! Findings and sign-offs never change an entry: they are new entries whose `refers_to` is the
//! original's seq. An append is synced (RocksDB WAL fsync) before it returns, and the callers
//! append before any data leaves the daemon.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::LogbookSettings;
use crate::store::index::{Index, IndexBatch, IndexError};
use crate::time::Time90k;

/// Action of the entry from which a previously unkeyed chain is keyed (its first MAC link).
pub const ACTION_KEYED: &str = "logbook.keyed";
/// Action of the entry `holdfast reindex --force` appends when the logbook was lost or cut.
pub const ACTION_LOST: &str = "logbook.lost";
/// Name of the checkpoint file inside `logbook.checkpoint_dir`.
pub const CHECKPOINT_FILE: &str = "logbook.checkpoints";

/// What the entry records.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NewEntry {
    /// User name (`-` when the request had no valid token).
    pub user: String,
    /// The user's role (`-` when unauthenticated).
    pub role: String,
    /// What was done: `export`, `view`, `keytags.query`, `keytags.submit`, `hold.place`,
    /// `hold.release`, `hold.extend`, `erasure`, `denied`, `finding`, `signoff`,
    /// `logbook.keyed`, `logbook.lost`, `config.reload` (a SIGHUP reload, applied or refused).
    pub action: String,
    /// What it was done to: cameras and range, tag or door query, hold id, request path.
    pub object: serde_json::Value,
    /// Why (required for exports and queries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Purpose (`technical`, `subject-access`, `tag-check`, `witness-search`, `police`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Who receives an export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The entry a finding or sign-off is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refers_to: Option<u64>,
    /// Free text: the finding, the sign-off note, the outcome of a refused request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The sites of the object (cameras' sites, a key-tag query's sites, a hold's sites). A user
    /// scoped to some sites sees an entry only when it has a site and all of them are theirs;
    /// entries without a site (refused requests, reloads) are for `*` users only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    /// Incident or police case reference (required for police requests and hand-overs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// For a sign-off or a linked entry: the hash of the entry `refers_to` names, so the
    /// signature is bound to exactly that content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refers_hash: Option<String>,
}

/// A stored entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When it was appended.
    pub time: Time90k,
    /// The previous entry's link (hex).
    pub prev_hash: String,
    /// What it records.
    #[serde(flatten)]
    pub body: NewEntry,
}

/// An entry with its link, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HashedEntry {
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// Its link (hex): the HMAC (keyed chain) or SHA-256 (before the key) of the previous link
    /// and the entry's JSON.
    pub hash: String,
}

/// The outcome of [`Logbook::verify`] (the JSON of `GET /api/v1/logbook/verify`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Verification {
    /// Whether the whole chain is intact and agrees with every checkpoint.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// The first entry where the chain breaks (for a cut tail: the first missing seq).
    pub first_bad_seq: Option<u64>,
    /// What is wrong there.
    pub problem: Option<String>,
    /// The head link (hex) when intact: write it down to detect a rewrite of the whole chain.
    pub head_hash: Option<String>,
    /// The seq of the first MAC link (`None`: the chain is plain SHA-256 throughout).
    #[serde(skip)]
    pub keyed_from: Option<u64>,
    /// Checkpoints compared with the chain.
    #[serde(skip)]
    pub checkpoints_checked: usize,
    /// Things an auditor should know that do not make the chain bad (recorded breaks,
    /// checkpoints from before a recorded break, a torn last checkpoint line).
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// The head of the chain, as `GET /api/v1/logbook/head` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HeadInfo {
    /// The last seq (0 for an empty logbook).
    pub seq: u64,
    /// The last entry's link (hex; 64 zeros for an empty logbook).
    pub mac: String,
    /// When the last entry was appended (`null` for an empty logbook).
    pub time: Option<Time90k>,
    /// Whether new entries are linked with the key (HMAC-SHA256) rather than plain SHA-256.
    pub keyed: bool,
}

/// An error of the logbook.
#[derive(Debug, thiserror::Error)]
pub enum LogbookError {
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// An entry referred to does not exist.
    #[error("no logbook entry {0}")]
    NoSuchEntry(u64),
    /// The key file is missing, unreadable, too open or malformed.
    #[error("logbook.key_file {path}: {problem}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the key).
        problem: String,
    },
    /// The checkpoint directory or file cannot be used.
    #[error("logbook.checkpoint_dir {path}: {problem}")]
    Checkpoints {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The logbook does not agree with itself or with its checkpoints: the daemon must not
    /// append to it.
    #[error(
        "the logbook cannot be trusted: {0}. Run `holdfast logbook verify --config FILE` to see \
         what is wrong; restore the index from a backup, or if the entries are gone for good, \
         `holdfast reindex --force --config FILE` records the loss in the logbook"
    )]
    Untrusted(String),
}

/// The MAC key of the chain (32 bytes). Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct LogbookKey([u8; 32]);

impl std::fmt::Debug for LogbookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogbookKey(..)")
    }
}

impl LogbookKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Loads the key file: 64 hex characters (32 bytes) and an optional trailing newline, not
    /// readable or writable by group or others.
    pub fn load(path: &Path) -> Result<Self, LogbookError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |problem: String| LogbookError::Key {
            path: path.to_owned(),
            problem,
        };
        let mut f = std::fs::File::open(path).map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist: create it with `holdfast logbook init-key --config FILE`".into()
            } else {
                format!("cannot open: {e}")
            })
        })?;
        let meta = f.metadata().map_err(|e| err(format!("cannot stat: {e}")))?;
        if !meta.is_file() {
            return Err(err("is not a regular file".into()));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "is accessible by group or others (mode {mode:04o}); `chmod 600` it, and \
                 consider the key disclosed if others could read it"
            )));
        }
        let mut text = Vec::new();
        Read::by_ref(&mut f)
            .take(130)
            .read_to_end(&mut text)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        let body = text
            .strip_suffix(b"\n")
            .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
            .unwrap_or(&text);
        if body.len() != 64 {
            return Err(err(format!(
                "must hold 64 hex characters (32 bytes) and an optional newline, found {} bytes",
                text.len().min(129)
            )));
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(body, &mut key)
            .map_err(|_| err("must hold 64 hex characters (0-9, a-f)".into()))?;
        Ok(Self(key))
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }
}

/// Writes a new random logbook key (32 bytes, hex, mode 0600) to `path`; refuses to overwrite.
pub fn write_new_key(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{}", hex::encode(rand::random::<[u8; 32]>()))?;
    f.sync_all()?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn eq32(a: &[u8], b: &[u8; 32]) -> bool {
    a.len() == 32 && bool::from(a.ct_eq(b))
}

/// How one entry is linked to the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    /// HMAC-SHA256 with the key.
    Mac,
    /// Plain SHA-256 (before the key, or an unkeyed logbook).
    Sha,
}

/// Which kind of link `stored` is for `prev || json`, if any.
fn link_kind(
    key: Option<&LogbookKey>,
    prev: &[u8; 32],
    json: &[u8],
    stored: &[u8],
) -> Option<LinkKind> {
    if let Some(k) = key {
        if eq32(stored, &k.mac(&[prev, json])) {
            return Some(LinkKind::Mac);
        }
    }
    eq32(stored, &sha(&[prev, json])).then_some(LinkKind::Sha)
}

const CHECKPOINT_DOMAIN: &[u8] = b"holdfast logbook checkpoint v1\0";

/// "entry 5 was" or "entries 5..7 were".
fn entries(from: u64, to: u64) -> String {
    if from == to {
        format!("entry {from} was")
    } else {
        format!("entries {from}..{to} were")
    }
}

/// The MAC of a checkpoint line: binds the seq, that entry's link and the time written.
fn checkpoint_mac(key: Option<&LogbookKey>, seq: u64, link: &[u8; 32], time: &str) -> [u8; 32] {
    let seq = seq.to_be_bytes();
    let parts: [&[u8]; 4] = [CHECKPOINT_DOMAIN, &seq, link, time.as_bytes()];
    match key {
        Some(k) => k.mac(&parts),
        None => sha(&parts),
    }
}

/// One line of the checkpoint file: `seq mac time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The head seq at the time.
    pub seq: u64,
    /// HMAC (or SHA-256 for an unkeyed chain) of seq, the link of entry `seq` and `time`.
    pub mac: [u8; 32],
    /// When it was written (RFC 3339).
    pub time: String,
    /// Line number in the file (from 1).
    pub line: usize,
}

impl Checkpoint {
    /// Parses one line (without its newline).
    pub fn parse(line: &str, number: usize) -> Result<Self, String> {
        let mut parts = line.split(' ');
        let (Some(seq), Some(mac), Some(time), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("line {number}: not `seq mac time`"));
        };
        let seq: u64 = seq
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| format!("line {number}: seq {seq:?} is not a positive number"))?;
        let mut m = [0u8; 32];
        hex::decode_to_slice(mac, &mut m)
            .map_err(|_| format!("line {number}: mac is not 64 hex characters"))?;
        Time90k::parse_rfc3339(time).map_err(|e| format!("line {number}: time: {e}"))?;
        Ok(Self {
            seq,
            mac: m,
            time: time.to_owned(),
            line: number,
        })
    }

    /// The line as written to the file (with its newline).
    pub fn to_line(&self) -> String {
        format!("{} {} {}\n", self.seq, hex::encode(self.mac), self.time)
    }

    /// Whether this checkpoint was written for entry `seq` with `link`.
    fn matches(&self, key: Option<&LogbookKey>, link: &[u8; 32], kind: LinkKind) -> bool {
        if let Some(k) = key {
            if eq32(
                &self.mac,
                &checkpoint_mac(Some(k), self.seq, link, &self.time),
            ) {
                return true;
            }
        }
        // Plain SHA-256 checkpoints only for entries linked by plain SHA-256 (written before
        // the key, or by an unkeyed daemon): with the key, nobody may forge one.
        (key.is_none() || kind == LinkKind::Sha)
            && eq32(&self.mac, &checkpoint_mac(None, self.seq, link, &self.time))
    }

    fn describe(&self, file: &Path) -> String {
        format!(
            "checkpoint at seq {} (written {}, {} line {})",
            self.seq,
            self.time,
            file.display(),
            self.line
        )
    }
}

/// The checkpoint file of a checkpoint directory, read.
#[derive(Debug, Clone, Default)]
pub struct Checkpoints {
    /// The file (`<checkpoint_dir>/logbook.checkpoints`).
    pub path: PathBuf,
    /// Its lines, oldest first.
    pub lines: Vec<Checkpoint>,
    /// Lines that do not parse (the message names the line).
    pub bad_lines: Vec<String>,
    /// Whether the last line had no newline (a write cut by a crash, or being written; ignored).
    pub torn_tail: bool,
    /// Lines marked ` torn` at open: the rest of a write cut by a crash (ignored).
    pub torn_lines: usize,
}

impl Checkpoints {
    /// Reads `<dir>/logbook.checkpoints` (empty when the directory or file does not exist).
    pub fn read(dir: &Path) -> Result<Self, LogbookError> {
        let path = dir.join(CHECKPOINT_FILE);
        let mut out = Checkpoints {
            path: path.clone(),
            ..Default::default()
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(LogbookError::Checkpoints {
                    path,
                    problem: format!("cannot read: {e}"),
                })
            }
        };
        let text = String::from_utf8_lossy(&text);
        let mut rest: &str = &text;
        let mut number = 0;
        while !rest.is_empty() {
            number += 1;
            let Some((line, tail)) = rest.split_once('\n') else {
                out.torn_tail = true;
                break;
            };
            rest = tail;
            if line == "torn" || line.ends_with(" torn") {
                out.torn_lines += 1;
                continue;
            }
            match Checkpoint::parse(line, number) {
                Ok(c) => out.lines.push(c),
                Err(e) => out.bad_lines.push(e),
            }
        }
        Ok(out)
    }

    /// The newest checkpoint.
    pub fn newest(&self) -> Option<&Checkpoint> {
        self.lines.last()
    }
}

/// Appends one line to the checkpoint file (O_APPEND, one write) and syncs it.
fn append_checkpoint(dir: &Path, line: &str) -> Result<(), LogbookError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(CHECKPOINT_FILE);
    let err = |problem: String| LogbookError::Checkpoints {
        path: path.clone(),
        problem,
    };
    let existed = path.exists();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| err(format!("cannot open for appending: {e}")))?;
    f.write_all(line.as_bytes())
        .map_err(|e| err(format!("cannot append: {e}")))?;
    f.sync_data()
        .map_err(|e| err(format!("cannot sync: {e}")))?;
    if !existed {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(format!("cannot sync the directory: {e}")))?;
    }
    Ok(())
}

/// Creates the checkpoint directory (mode 0700) if missing and checks the file can be appended.
fn prepare_checkpoint_dir(dir: &Path) -> Result<(), LogbookError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |problem: String| LogbookError::Checkpoints {
        path: dir.to_owned(),
        problem,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(format!("cannot create: {e}")))?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(dir.join(CHECKPOINT_FILE))
        .map_err(|e| err(format!("cannot open {CHECKPOINT_FILE} for appending: {e}")))?;
    // A line cut by a crash is closed and marked, so the next line is not glued to it.
    let path = dir.join(CHECKPOINT_FILE);
    let mut f = std::fs::File::open(&path).map_err(|e| err(format!("cannot read: {e}")))?;
    let len = f
        .metadata()
        .map_err(|e| err(format!("cannot stat: {e}")))?
        .len();
    if len > 0 {
        use std::io::Seek;
        let mut last = [0u8; 1];
        f.seek(std::io::SeekFrom::Start(len - 1))
            .and_then(|_| f.read_exact(&mut last))
            .map_err(|e| err(format!("cannot read: {e}")))?;
        if last[0] != b'\n' {
            tracing::warn!(file = %path.display(), "the last checkpoint line is incomplete; marking it torn");
            append_checkpoint(dir, " torn\n")?;
        }
    }
    Ok(())
}

struct Head {
    seq: u64,
    link: [u8; 32],
    time: Option<Time90k>,
}

/// The logbook of one data directory.
pub struct Logbook {
    head: Mutex<Head>,
    key: Option<LogbookKey>,
    checkpoint_dir: Option<PathBuf>,
    /// The seq of the newest checkpoint written or found at open.
    checkpointed: Mutex<u64>,
}

/// Splits a stored value into its link and JSON.
fn split(v: &[u8]) -> Option<([u8; 32], &[u8])> {
    (v.len() >= 32).then(|| (v[..32].try_into().expect("32 bytes"), &v[32..]))
}

/// The link of entry `seq` (32 zero bytes for seq 0).
fn stored_link(index: &Index, seq: u64) -> Result<Option<[u8; 32]>, LogbookError> {
    if seq == 0 {
        return Ok(Some([0; 32]));
    }
    Ok(index
        .logbook_get(seq)?
        .and_then(|v| split(&v).map(|(l, _)| l)))
}

/// An entry with its stored link and the kind of that link.
type Linked = ([u8; 32], LinkKind, Entry);

/// The link kind of entry `seq` as stored, or why it has none.
fn entry_kind(
    index: &Index,
    key: Option<&LogbookKey>,
    seq: u64,
) -> Result<Result<Linked, String>, LogbookError> {
    let Some(v) = index.logbook_get(seq)? else {
        return Ok(Err(format!("entry {seq} is missing")));
    };
    let Some((link, json)) = split(&v) else {
        return Ok(Err(format!("entry {seq} is too short")));
    };
    let Some(prev) = stored_link(index, seq - 1)? else {
        return Ok(Err(format!("entry {} (before {seq}) is missing", seq - 1)));
    };
    let entry: Entry = match serde_json::from_slice(json) {
        Ok(e) => e,
        Err(e) => return Ok(Err(format!("entry {seq} is unreadable: {e}"))),
    };
    match link_kind(key, &prev, json, &link) {
        Some(kind) => Ok(Ok((link, kind, entry))),
        None if key.is_some() => Ok(Err(format!(
            "entry {seq} matches neither its MAC nor a plain SHA-256 link: it was changed, or \
             logbook.key_file is not the key this logbook was written with"
        ))),
        None => Ok(Err(format!(
            "entry {seq} is not linked by plain SHA-256: the logbook is keyed (configure \
             logbook.key_file) or the entry was changed"
        ))),
    }
}

/// The checkpoint a `logbook.lost` entry names (`(seq, mac hex, time)`), if any.
fn lost_checkpoint(e: &Entry) -> Option<(u64, String, String)> {
    if e.body.action != ACTION_LOST {
        return None;
    }
    let c = &e.body.object["last_checkpoint"];
    Some((
        c["seq"].as_u64()?,
        c["mac"].as_str()?.to_owned(),
        c["time"].as_str()?.to_owned(),
    ))
}

/// The checkpoints that `logbook.lost` entries name: lines up to the last of these in the file
/// belong to a logbook that was lost, and the chain says so.
fn lost_checkpoints(index: &Index) -> Result<Vec<(u64, String, String)>, LogbookError> {
    let mut out = Vec::new();
    for item in index.logbook_entries(1) {
        let (_, v) = item?;
        let Some((_, json)) = split(&v) else { continue };
        if let Some(c) = serde_json::from_slice::<Entry>(json)
            .ok()
            .as_ref()
            .and_then(lost_checkpoint)
        {
            out.push(c);
        }
    }
    Ok(out)
}

/// How many leading lines of `cps` a recorded loss supersedes.
fn superseded(cps: &Checkpoints, lost: &[(u64, String, String)]) -> usize {
    cps.lines
        .iter()
        .rposition(|c| {
            lost.iter()
                .any(|(s, m, t)| *s == c.seq && *m == hex::encode(c.mac) && *t == c.time)
        })
        .map_or(0, |i| i + 1)
}

/// What [`check_open`] found.
struct OpenCheck {
    head: Head,
    /// The last entry's link kind (`None`: empty).
    last_kind: Option<LinkKind>,
}

/// The checks before the daemon appends: head record against the last entry, the last entry's
/// link, and the chain against the newest checkpoint.
fn check_open(
    index: &Index,
    key: Option<&LogbookKey>,
    cps: &Checkpoints,
) -> Result<OpenCheck, LogbookError> {
    let untrusted = LogbookError::Untrusted;
    let head_rec = index.logbook_head()?;
    let last = index.logbook_last()?;
    let (head, last_kind) = match (head_rec, last) {
        (None, None) => (
            Head {
                seq: 0,
                link: [0; 32],
                time: None,
            },
            None,
        ),
        (Some((hs, hl)), Some((ls, v))) if hs == ls && split(&v).is_some_and(|(l, _)| l == hl) => {
            let (link, kind, entry) = entry_kind(index, key, ls)?.map_err(untrusted)?;
            (
                Head {
                    seq: ls,
                    link,
                    time: Some(entry.time),
                },
                Some(kind),
            )
        }
        (Some((hs, _)), Some((ls, _))) if hs == ls => {
            return Err(untrusted(format!(
                "the head record (seq {hs}) has another link than the last entry {ls}"
            )))
        }
        (Some((hs, _)), Some((ls, _))) => {
            return Err(untrusted(format!(
                "the head record says the last entry is seq {hs}, but the last entry stored is \
                 seq {ls}"
            )))
        }
        (Some((hs, _)), None) => {
            return Err(untrusted(format!(
                "the head record says the last entry is seq {hs}, but no entries are stored"
            )))
        }
        (None, Some((ls, _))) => {
            return Err(untrusted(format!(
                "entries up to seq {ls} are stored but the head record is missing"
            )))
        }
    };

    if let Some(bad) = cps.bad_lines.last() {
        return Err(untrusted(format!(
            "the checkpoint file {} is damaged ({bad})",
            cps.path.display()
        )));
    }
    if let Some(c) = cps.newest() {
        let problem = if c.seq > head.seq {
            Some(if head.seq == 0 {
                format!(
                    "the logbook is empty, but the {} shows entries 1..{} existed",
                    c.describe(&cps.path),
                    c.seq
                )
            } else {
                format!(
                    "the logbook ends at seq {}, but the {} shows {} cut",
                    head.seq,
                    c.describe(&cps.path),
                    entries(head.seq + 1, c.seq)
                )
            })
        } else {
            match entry_kind(index, key, c.seq)? {
                Ok((link, kind, _)) if c.matches(key, &link, kind) => None,
                Ok(_) => Some(format!(
                    "entry {} differs from the {}: the chain was rewritten from there or before",
                    c.seq,
                    c.describe(&cps.path)
                )),
                Err(e) => Some(format!("at the {}: {e}", c.describe(&cps.path))),
            }
        };
        if let Some(p) = problem {
            // A loss recorded by `reindex --force` names the checkpoint it knew last.
            let lost = lost_checkpoints(index)?;
            if superseded(cps, &lost) < cps.lines.len() {
                return Err(untrusted(p));
            }
        }
    }
    Ok(OpenCheck { head, last_kind })
}

impl Logbook {
    /// Opens the logbook as configured: loads the key, checks the head record against the last
    /// entry and the chain against the newest checkpoint. An unkeyed chain is never continued
    /// keyed silently at start (someone who can rewrite the data directory could otherwise have
    /// a forged unkeyed chain sealed under the key): that takes `holdfast logbook seal`, once,
    /// by an operator ([`Logbook::seal`]).
    pub fn open(index: &Index, settings: &LogbookSettings) -> Result<Self, LogbookError> {
        let key = settings
            .key_file
            .as_deref()
            .map(LogbookKey::load)
            .transpose()?;
        Self::open_inner(index, key, Some(&settings.checkpoint_dir), false)
    }

    /// `holdfast logbook seal`: checks an unkeyed chain whole and continues it keyed from a
    /// `logbook.keyed` entry (the daemon stopped). A chain that is keyed already is left as it is.
    pub fn seal(index: &Index, settings: &LogbookSettings) -> Result<Self, LogbookError> {
        let key = settings
            .key_file
            .as_deref()
            .map(LogbookKey::load)
            .transpose()?;
        if key.is_none() {
            return Err(LogbookError::Untrusted(
                "logbook.key_file is not set: there is no key to seal the chain with".into(),
            ));
        }
        Self::open_inner(index, key, Some(&settings.checkpoint_dir), true)
    }

    /// Like [`Logbook::open`] with the key and checkpoint directory given (`None`: unkeyed, no
    /// checkpoints).
    pub fn open_with(
        index: &Index,
        key: Option<LogbookKey>,
        checkpoint_dir: Option<&Path>,
    ) -> Result<Self, LogbookError> {
        Self::open_inner(index, key, checkpoint_dir, true)
    }

    fn open_inner(
        index: &Index,
        key: Option<LogbookKey>,
        checkpoint_dir: Option<&Path>,
        seal: bool,
    ) -> Result<Self, LogbookError> {
        let cps = match checkpoint_dir {
            Some(dir) => {
                prepare_checkpoint_dir(dir)?;
                Checkpoints::read(dir)?
            }
            None => Checkpoints::default(),
        };
        let check = check_open(index, key.as_ref(), &cps)?;
        let upgrade = key.is_some() && check.last_kind == Some(LinkKind::Sha);
        if upgrade && !seal {
            return Err(LogbookError::Untrusted(format!(
                "the logbook's {} entries are not keyed yet, and logbook.key_file is set: check \
                 them with `holdfast logbook verify`, then continue the chain keyed once with \
                 `holdfast logbook seal --config FILE` (the daemon never does this by itself)",
                check.head.seq
            )));
        }
        if upgrade {
            // Continuing keyed is a one-time event: the whole unkeyed chain must be intact
            // first, or a forged tail would be sealed under the key.
            let v = verify_chain(index, key.as_ref())?;
            if !v.ok {
                return Err(LogbookError::Untrusted(format!(
                    "cannot continue the logbook keyed: entry {}: {}",
                    v.first_bad_seq.unwrap_or(0),
                    v.problem.unwrap_or_default()
                )));
            }
        }
        if checkpoint_dir.is_some() && cps.lines.is_empty() && check.head.seq > 0 {
            tracing::warn!(
                entries = check.head.seq,
                file = %cps.path.display(),
                "the logbook has entries but no checkpoints: if checkpoints were written \
                 before, the file was removed or emptied"
            );
        }
        let checkpointed = cps
            .newest()
            .filter(|c| c.seq == check.head.seq)
            .map_or(0, |c| c.seq);
        let lb = Self {
            head: Mutex::new(check.head),
            key,
            checkpoint_dir: checkpoint_dir.map(Path::to_owned),
            checkpointed: Mutex::new(checkpointed),
        };
        if upgrade {
            let (seq, link) = {
                let h = lb.lock_head();
                (h.seq, hex::encode(h.link))
            };
            let e = lb.append(
                index,
                NewEntry {
                    user: "holdfast".into(),
                    role: "system".into(),
                    action: ACTION_KEYED.into(),
                    object: serde_json::json!({ "unkeyed_entries": seq, "unkeyed_head": link }),
                    text: Some(
                        "from this entry on, every entry is linked by HMAC-SHA256 with the \
                         logbook key"
                            .into(),
                    ),
                    ..Default::default()
                },
            )?;
            tracing::warn!(
                seq = e.entry.seq,
                "logbook: the unkeyed chain of {seq} entries continues keyed from here"
            );
        }
        Ok(lb)
    }

    fn lock_head(&self) -> std::sync::MutexGuard<'_, Head> {
        self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an entry and syncs it; returns it with its link. Appends are serialized.
    pub fn append(&self, index: &Index, e: NewEntry) -> Result<HashedEntry, LogbookError> {
        self.append_with(index, e, IndexBatch::default())
    }

    /// [`Logbook::append`], committing `with` in the same batch: the entry and the change it
    /// records become durable together or not at all.
    pub fn append_with(
        &self,
        index: &Index,
        e: NewEntry,
        with: IndexBatch,
    ) -> Result<HashedEntry, LogbookError> {
        let mut head = self.lock_head();
        let entry = Entry {
            seq: head.seq + 1,
            time: Time90k::now(),
            prev_hash: hex::encode(head.link),
            body: e,
        };
        let json = serde_json::to_vec(&entry).expect("entries serialize");
        let link = match &self.key {
            Some(k) => k.mac(&[&head.link, &json]),
            None => sha(&[&head.link, &json]),
        };
        let mut value = Vec::with_capacity(32 + json.len());
        value.extend_from_slice(&link);
        value.extend_from_slice(&json);
        let mut batch = with;
        batch.put_logbook(index, entry.seq, &value, &link);
        index.commit(batch, true)?;
        head.seq = entry.seq;
        head.link = link;
        head.time = Some(entry.time);
        Ok(HashedEntry {
            entry,
            hash: hex::encode(link),
        })
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.lock_head().seq
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The head: last seq, its link, its time, and whether the chain is keyed.
    pub fn head(&self) -> HeadInfo {
        let h = self.lock_head();
        HeadInfo {
            seq: h.seq,
            mac: hex::encode(h.link),
            time: h.time,
            keyed: self.key.is_some(),
        }
    }

    /// Writes a checkpoint of the head if it moved since the last one (and a checkpoint
    /// directory is configured): appends `seq mac time` to the checkpoint file, syncs it, and
    /// logs it. Returns what it wrote.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, LogbookError> {
        let Some(dir) = &self.checkpoint_dir else {
            return Ok(None);
        };
        let mut done = self.checkpointed.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, link) = {
            let h = self.lock_head();
            (h.seq, h.link)
        };
        if seq == 0 || *done == seq {
            return Ok(None);
        }
        let time = Time90k::now().to_rfc3339();
        let c = Checkpoint {
            seq,
            mac: checkpoint_mac(self.key.as_ref(), seq, &link, &time),
            time,
            line: 0,
        };
        append_checkpoint(dir, &c.to_line())?;
        *done = seq;
        tracing::info!(
            seq,
            mac = %hex::encode(c.mac),
            time = %c.time,
            file = %dir.join(CHECKPOINT_FILE).display(),
            "logbook checkpoint"
        );
        Ok(Some(c))
    }

    /// One entry.
    pub fn get(index: &Index, seq: u64) -> Result<HashedEntry, LogbookError> {
        let v = index
            .logbook_get(seq)?
            .ok_or(LogbookError::NoSuchEntry(seq))?;
        decode(seq, &v).map_err(|_| LogbookError::NoSuchEntry(seq))
    }

    /// Entries appended in `[from, to)`, in order (at most `limit`).
    pub fn list(
        index: &Index,
        from: Time90k,
        to: Time90k,
        limit: usize,
    ) -> Result<Vec<HashedEntry>, LogbookError> {
        let mut out = Vec::new();
        for item in index.logbook_entries(1) {
            let (seq, v) = item?;
            let Ok(e) = decode(seq, &v) else { continue };
            if e.entry.time >= to {
                break;
            }
            if e.entry.time >= from {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Entries from `seq` on, in order (unreadable ones skipped; `verify` reports those).
    pub fn iter_from(
        index: &Index,
        seq: u64,
    ) -> impl Iterator<Item = Result<HashedEntry, LogbookError>> + '_ {
        index.logbook_entries(seq).filter_map(|item| match item {
            Err(e) => Some(Err(e.into())),
            Ok((seq, v)) => decode(seq, &v).ok().map(Ok),
        })
    }

    /// Checks the whole chain with this logbook's key, the head record, and every checkpoint.
    pub fn verify(&self, index: &Index) -> Result<Verification, LogbookError> {
        // Checkpoints first: every line read refers to entries synced before it was written.
        let cps = match &self.checkpoint_dir {
            Some(dir) => Some(Checkpoints::read(dir)?),
            None => None,
        };
        verify(index, self.key.as_ref(), cps.as_ref())
    }
}

/// Checks the chain (links, seqs, `prev_hash`, where it became keyed), the head record, and,
/// when given, every checkpoint: a checkpoint past the end names a cut tail. Read `checkpoints`
/// before opening `index` when the daemon may be appending.
pub fn verify(
    index: &Index,
    key: Option<&LogbookKey>,
    checkpoints: Option<&Checkpoints>,
) -> Result<Verification, LogbookError> {
    let wanted: std::collections::BTreeSet<u64> = checkpoints
        .map(|c| c.lines.iter().map(|l| l.seq).collect())
        .unwrap_or_default();
    let mut links = std::collections::HashMap::new();
    let mut lost = Vec::new();
    let mut v = walk(index, key, |seq, link, kind, e| {
        if wanted.contains(&seq) {
            links.insert(seq, (*link, kind));
        }
        lost.extend(lost_checkpoint(e));
    })?;
    let Some(cps) = checkpoints else {
        return Ok(v);
    };
    if !v.ok {
        return Ok(v);
    }
    if cps.torn_lines > 0 {
        v.notes.push(format!(
            "{} lines of {} were cut by a crash while being written (marked torn); ignored",
            cps.torn_lines,
            cps.path.display()
        ));
    }
    if cps.torn_tail {
        v.notes.push(format!(
            "the last line of {} is incomplete (a write cut by a crash); ignored",
            cps.path.display()
        ));
    }
    if let Some(bad) = cps.bad_lines.first() {
        return Ok(fail(v, None, format!("{}: {bad}", cps.path.display())));
    }
    if cps.lines.is_empty() && v.entries > 0 {
        v.notes.push(format!(
            "no checkpoints in {}: a cut tail cannot be seen (if checkpoints were written \
             before, the file was removed or emptied)",
            cps.path.display()
        ));
    }
    let skip = superseded(cps, &lost);
    if skip > 0 {
        v.notes.push(format!(
            "{skip} checkpoints in {} belong to a logbook that was lost before a recorded \
             `{ACTION_LOST}` entry; not compared",
            cps.path.display()
        ));
    }
    let n = v.entries;
    let lines = &cps.lines[skip..];
    for c in lines.iter().filter(|c| c.seq <= n) {
        let (link, kind) = links[&c.seq];
        if !c.matches(key, &link, kind) {
            let problem = format!(
                "entry {} differs from the {} (or the line was forged)",
                c.seq,
                c.describe(&cps.path)
            );
            return Ok(fail(v, Some(c.seq), problem));
        }
        v.checkpoints_checked += 1;
    }
    if let Some(c) = lines.iter().filter(|c| c.seq > n).max_by_key(|c| c.seq) {
        let problem = format!("{} cut: {}", entries(n + 1, c.seq), c.describe(&cps.path));
        return Ok(fail(v, Some(n + 1), problem));
    }
    Ok(v)
}

/// Where a periodic check ([`Logbook::verify_incremental`]) left off: the entries checked, the
/// link of the last, where the chain became keyed and the checkpoints `logbook.lost` entries
/// name (lines up to these belong to a lost logbook).
#[derive(Debug, Clone, Default)]
pub struct VerifiedUpTo {
    /// Entries checked (the last checked seq).
    pub entries: u64,
    link: [u8; 32],
    keyed_from: Option<u64>,
    lost: Vec<(u64, String, String)>,
}

impl Logbook {
    /// The daemon's periodic check. With `from` `None`: the whole chain, the head record and
    /// every checkpoint ([`Logbook::verify`]). With `from`: only the entries appended since,
    /// linked from the last checked entry's link (which must still be stored unchanged), the
    /// head record, and every checkpoint line against the entry it names (two reads per line).
    /// Returns the outcome and, when intact, where the next check starts.
    pub fn verify_incremental(
        &self,
        index: &Index,
        from: Option<&VerifiedUpTo>,
    ) -> Result<(Verification, Option<VerifiedUpTo>), LogbookError> {
        let key = self.key.as_ref();
        let cps = match &self.checkpoint_dir {
            Some(dir) => Some(Checkpoints::read(dir)?),
            None => None,
        };
        let Some(from) = from else {
            let mut lost = Vec::new();
            let mut last = (0u64, [0u8; 32]);
            let v = walk(index, key, |seq, link, _, e| {
                lost.extend(lost_checkpoint(e));
                last = (seq, *link);
            })?;
            if !v.ok {
                return Ok((v, None));
            }
            let v = verify(index, key, cps.as_ref())?;
            // `verify` walked again: its count may include entries appended meanwhile; start
            // the next check after what the first walk saw (links of both agree up to there).
            let next = v.ok.then(|| VerifiedUpTo {
                entries: last.0,
                link: last.1,
                keyed_from: v.keyed_from.filter(|k| *k <= last.0),
                lost,
            });
            return Ok((v, next));
        };
        if stored_link(index, from.entries)? != Some(from.link) {
            let v = Verification {
                entries: from.entries,
                ..Default::default()
            };
            let problem = format!(
                "entry {} was changed or removed after it had been checked",
                from.entries
            );
            return Ok((fail(v, Some(from.entries.max(1)), problem), None));
        }
        let mut next = from.clone();
        let mut v = walk_from(
            index,
            key,
            (from.entries, from.link, from.keyed_from),
            |seq, link, _, e| {
                next.lost.extend(lost_checkpoint(e));
                next.entries = seq;
                next.link = *link;
            },
        )?;
        if !v.ok {
            return Ok((v, None));
        }
        next.keyed_from = v.keyed_from;
        let Some(cps) = cps else {
            return Ok((v, Some(next)));
        };
        if let Some(bad) = cps.bad_lines.first() {
            return Ok((
                fail(v, None, format!("{}: {bad}", cps.path.display())),
                None,
            ));
        }
        let skip = superseded(&cps, &next.lost);
        for c in &cps.lines[skip..] {
            let problem = if c.seq > next.entries {
                Some((
                    next.entries + 1,
                    format!(
                        "{} cut: {}",
                        entries(next.entries + 1, c.seq),
                        c.describe(&cps.path)
                    ),
                ))
            } else {
                match entry_kind(index, key, c.seq)? {
                    Ok((link, kind, _)) if c.matches(key, &link, kind) => None,
                    Ok(_) => Some((
                        c.seq,
                        format!(
                            "entry {} differs from the {} (or the line was forged)",
                            c.seq,
                            c.describe(&cps.path)
                        ),
                    )),
                    Err(e) => Some((c.seq, format!("at the {}: {e}", c.describe(&cps.path)))),
                }
            };
            if let Some((seq, problem)) = problem {
                return Ok((fail(v, Some(seq), problem), None));
            }
            v.checkpoints_checked += 1;
        }
        Ok((v, Some(next)))
    }
}

/// Checks the logbook on a thread of its own: the whole chain at start and once a day, only
/// what was appended since (plus every checkpoint) every `interval` between; `report` gets each
/// outcome (the daemon sets `holdfast_logbook_verify_ok` and the time of the last check).
pub struct Verifier {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often [`Verifier`] checks the whole chain again rather than only the new entries.
pub const FULL_VERIFY_EVERY: Duration = Duration::from_secs(86_400);

impl Verifier {
    /// Starts the thread; the first (full) check runs at once.
    pub fn spawn(
        logbook: Arc<Logbook>,
        store: Arc<crate::store::Store>,
        interval: Duration,
        report: impl Fn(Result<&Verification, &LogbookError>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("logbook-verify".into())
            .spawn(move || {
                let mut state: Option<VerifiedUpTo> = None;
                let mut last_full = std::time::Instant::now();
                loop {
                    if last_full.elapsed() >= FULL_VERIFY_EVERY {
                        state = None;
                    }
                    if state.is_none() {
                        last_full = std::time::Instant::now();
                    }
                    match logbook.verify_incremental(store.index(), state.as_ref()) {
                        Ok((v, next)) => {
                            if !v.ok {
                                tracing::error!(
                                    first_bad_seq = ?v.first_bad_seq,
                                    problem = v.problem.as_deref().unwrap_or_default(),
                                    "logbook check FAILED: the logbook was tampered with"
                                );
                            }
                            report(Ok(&v));
                            state = next;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "logbook check could not run");
                            report(Err(&e));
                            state = None;
                        }
                    }
                    if !matches!(
                        rx.recv_timeout(interval),
                        Err(crossbeam_channel::RecvTimeoutError::Timeout)
                    ) {
                        return;
                    }
                }
            })?;
        Ok(Self {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the thread (waits for a check that is running).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Checks the chain and head record only.
fn verify_chain(index: &Index, key: Option<&LogbookKey>) -> Result<Verification, LogbookError> {
    walk(index, key, |_, _, _, _| {})
}

fn fail(mut v: Verification, seq: Option<u64>, problem: String) -> Verification {
    v.ok = false;
    v.first_bad_seq = seq;
    v.problem = Some(problem);
    v.head_hash = None;
    v
}

fn walk(
    index: &Index,
    key: Option<&LogbookKey>,
    each: impl FnMut(u64, &[u8; 32], LinkKind, &Entry),
) -> Result<Verification, LogbookError> {
    walk_from(index, key, (0, [0; 32], None), each)
}

/// [`walk`] from the entry after `from` (`(seq, its link, keyed_from)` of an entry already
/// checked; `(0, zeros, None)` for the whole chain).
fn walk_from(
    index: &Index,
    key: Option<&LogbookKey>,
    from: (u64, [u8; 32], Option<u64>),
    mut each: impl FnMut(u64, &[u8; 32], LinkKind, &Entry),
) -> Result<Verification, LogbookError> {
    let mut prev = from.1;
    let mut expect = from.0 + 1;
    let mut keyed_from = from.2;
    let mut notes = Vec::new();
    // The head record as it was before the walk: the entries the walk sees (a snapshot taken
    // after this read) reach at least that far. Entries appended while the walk runs are not
    // a cut; the head record read after the walk may then be ahead of what the walk saw.
    let head_before = index.logbook_head()?;
    let mut link_at_head_before = None;
    let bad = |seq: u64, problem: String, keyed_from: Option<u64>| Verification {
        ok: false,
        entries: seq - 1,
        first_bad_seq: Some(seq),
        problem: Some(problem),
        keyed_from,
        ..Default::default()
    };
    for item in index.logbook_entries(expect) {
        let (seq, v) = item?;
        if seq != expect {
            return Ok(bad(
                expect,
                format!("entry {expect} is missing (next stored is {seq})"),
                keyed_from,
            ));
        }
        let Some((stored, json)) = split(&v) else {
            return Ok(bad(seq, "entry too short".into(), keyed_from));
        };
        let e = match serde_json::from_slice::<Entry>(json) {
            Ok(e) if e.seq == seq && e.prev_hash == hex::encode(prev) => e,
            Ok(_) => {
                return Ok(bad(
                    seq,
                    "seq or prev_hash inside the entry is wrong".into(),
                    keyed_from,
                ))
            }
            Err(e) => return Ok(bad(seq, format!("entry unreadable: {e}"), keyed_from)),
        };
        match (link_kind(key, &prev, json, &stored), keyed_from) {
            (Some(LinkKind::Mac), None) => {
                if seq != 1 && e.body.action != ACTION_KEYED && e.body.action != ACTION_LOST {
                    return Ok(bad(
                        seq,
                        format!(
                            "the first MAC link is not a `{ACTION_KEYED}` (or `{ACTION_LOST}`) \
                             entry"
                        ),
                        keyed_from,
                    ));
                }
                keyed_from = Some(seq);
            }
            (Some(LinkKind::Mac), Some(_)) => {}
            (Some(LinkKind::Sha), None) => {}
            (Some(LinkKind::Sha), Some(k)) => {
                return Ok(bad(
                    seq,
                    format!(
                        "plain SHA-256 link in a chain keyed from seq {k}: the entry was \
                         changed by someone without the key"
                    ),
                    keyed_from,
                ))
            }
            (None, _)
                if key.is_none()
                    && (seq == 1
                        || e.body.action == ACTION_KEYED
                        || e.body.action == ACTION_LOST) =>
            {
                return Ok(bad(
                    seq,
                    "not a plain SHA-256 link: the chain is keyed from here (configure \
                     logbook.key_file to check it) or the entry was changed"
                        .into(),
                    keyed_from,
                ))
            }
            (None, _) => {
                return Ok(bad(
                    seq,
                    "hash does not match the entry (changed or chain broken)".into(),
                    keyed_from,
                ))
            }
        }
        if e.body.action == ACTION_LOST {
            notes.push(format!(
                "entry {seq} records that the logbook was lost or cut before it: {}",
                e.body.text.as_deref().unwrap_or("")
            ));
        }
        each(
            seq,
            &stored,
            if keyed_from.is_some() {
                LinkKind::Mac
            } else {
                LinkKind::Sha
            },
            &e,
        );
        if head_before.is_some_and(|(hs, _)| hs == seq) {
            link_at_head_before = Some(stored);
        }
        prev = stored;
        expect += 1;
    }
    let n = expect - 1;
    let head_after = index.logbook_head()?;
    let appended_meanwhile = matches!(
        (head_before, head_after, link_at_head_before),
        (Some((b, bh)), Some((a, _)), Some(l)) if b <= n && a > n && l == bh
    ) || (head_before.is_none() && n == 0)
        // An incremental walk that saw no new entry: entries appended after the head was read.
        || matches!((head_before, head_after), (Some((b, bh)), Some((a, _)))
            if b == n && a > n && bh == prev);
    let head_problem = match head_after {
        Some((seq, hash)) if seq == n && hash == prev => None,
        Some(_) if appended_meanwhile => None,
        None if n == 0 => None,
        Some((seq, _)) if seq > n => Some((
            n + 1,
            format!(
                "{} removed from the end (the head record says seq {seq})",
                entries(n + 1, seq)
            ),
        )),
        Some((seq, _)) if seq == n => Some((
            n.max(1),
            format!("the head record has another link than the last entry {n}"),
        )),
        Some((seq, _)) => Some((
            seq + 1,
            format!(
                "the head record says the last entry is seq {seq}, but entries up to {n} are \
                 stored"
            ),
        )),
        None => Some((
            n,
            format!("entries up to {n} are stored but the head record is missing"),
        )),
    };
    if let Some((seq, problem)) = head_problem {
        let mut v = bad(seq.max(1), problem, keyed_from);
        v.entries = n;
        return Ok(v);
    }
    Ok(Verification {
        ok: true,
        entries: n,
        head_hash: Some(hex::encode(prev)),
        keyed_from,
        notes,
        ..Default::default()
    })
}

fn decode(seq: u64, v: &[u8]) -> Result<HashedEntry, serde_json::Error> {
    let (hash, json) = v.split_at(32.min(v.len()));
    let entry: Entry = serde_json::from_slice(json)?;
    debug_assert_eq!(entry.seq, seq);
    Ok(HashedEntry {
        entry,
        hash: hex::encode(hash),
    })
}

/// What `holdfast reindex` must know about the logbook before it touches the index: `Ok` when
/// the logbook agrees with its head record and newest checkpoint, otherwise why not.
pub fn check_before_reindex(
    index: &Index,
    key: Option<&LogbookKey>,
    checkpoints: &Checkpoints,
) -> Result<Result<(), String>, LogbookError> {
    match check_open(index, key, checkpoints) {
        Ok(_) => Ok(Ok(())),
        Err(LogbookError::Untrusted(p)) => Ok(Err(p)),
        Err(e) => Err(e),
    }
}

/// Records in the chain that the logbook was lost or cut (`holdfast reindex --force`): appends a
/// `logbook.lost` entry after the last stored entry, naming `cause` and the newest checkpoint,
/// writes its head record, and a checkpoint of it. Returns the entry.
pub fn record_loss(
    index: &Index,
    key: Option<LogbookKey>,
    checkpoint_dir: Option<&Path>,
    checkpoints: &Checkpoints,
    cause: &str,
) -> Result<HashedEntry, LogbookError> {
    let head = match index.logbook_last()? {
        Some((seq, v)) => {
            let (link, json) = split(&v).ok_or(LogbookError::NoSuchEntry(seq))?;
            Head {
                seq,
                link,
                time: serde_json::from_slice::<Entry>(json).ok().map(|e| e.time),
            }
        }
        None => Head {
            seq: 0,
            link: [0; 32],
            time: None,
        },
    };
    let last = checkpoints
        .newest()
        .map(|c| serde_json::json!({ "seq": c.seq, "mac": hex::encode(c.mac), "time": c.time }));
    let lb = Logbook {
        head: Mutex::new(head),
        key,
        checkpoint_dir: checkpoint_dir.map(Path::to_owned),
        checkpointed: Mutex::new(0),
    };
    let stored = lb.len();
    let e = lb.append(
        index,
        NewEntry {
            user: "holdfast".into(),
            role: "system".into(),
            action: ACTION_LOST.into(),
            object: serde_json::json!({
                "cause": cause,
                "entries_found": stored,
                "last_checkpoint": last,
                "checkpoint_file": checkpoints.path.display().to_string(),
            }),
            text: Some(format!(
                "`holdfast reindex --force` continued the logbook after a loss: {cause}"
            )),
            ..Default::default()
        },
    )?;
    if let Some(dir) = checkpoint_dir {
        prepare_checkpoint_dir(dir)?;
        lb.checkpoint()?;
    }
    Ok(e)
}

/// Writes a checkpoint every interval on a thread of its own, and a last one when dropped
/// (at shutdown, after the HTTP server stopped appending).
pub struct Checkpointer {
    logbook: Arc<Logbook>,
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the checkpoint thread.
    pub fn spawn(logbook: Arc<Logbook>, interval: Duration) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let lb = logbook.clone();
        let thread = std::thread::Builder::new()
            .name("logbook-checkpoint".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(interval)
                {
                    if let Err(e) = lb.checkpoint() {
                        tracing::error!(error = %e, "logbook checkpoint failed");
                    }
                }
            })?;
        Ok(Self {
            logbook,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the thread and writes the last checkpoint.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            if let Err(e) = self.logbook.checkpoint() {
                tracing::error!(error = %e, "logbook checkpoint at shutdown failed");
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::{CF_LOGBOOK, CF_META};

    fn entry(action: &str) -> NewEntry {
        NewEntry {
            user: "j.devries".into(),
            role: "manager".into(),
            action: action.into(),
            object: serde_json::json!({ "camera": "noord-entrance" }),
            reason: Some("incident 2026-114".into()),
            ..Default::default()
        }
    }

    fn key() -> LogbookKey {
        LogbookKey::from_bytes([7; 32])
    }

    fn setup(n: u64, key: Option<LogbookKey>) -> (tempfile::TempDir, Index, Logbook) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index")).unwrap();
        let lb = Logbook::open_with(&index, key, Some(&dir.path().join("cp"))).unwrap();
        for i in 0..n {
            lb.append(&index, entry(&format!("export-{i}"))).unwrap();
        }
        (dir, index, lb)
    }

    fn raw(index: &Index, seq: u64) -> Vec<u8> {
        let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
        index.db().get_cf(cf, seq.to_be_bytes()).unwrap().unwrap()
    }

    fn put(index: &Index, seq: u64, v: &[u8]) {
        let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
        index.db().put_cf(cf, seq.to_be_bytes(), v).unwrap();
    }

    fn put_head(index: &Index, seq: u64, link: &[u8]) {
        let cf = index.db().cf_handle(CF_META).unwrap();
        let mut v = seq.to_be_bytes().to_vec();
        v.extend_from_slice(link);
        index.db().put_cf(cf, b"logbook_head", v).unwrap();
    }

    fn untrusted(r: Result<Logbook, LogbookError>) -> String {
        match r {
            Err(LogbookError::Untrusted(p)) => p,
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn an_intact_keyed_chain_verifies_and_survives_reopening() {
        let (dir, index, lb) = setup(5, Some(key()));
        assert_eq!(lb.len(), 5);
        let v = lb.verify(&index).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.entries, v.keyed_from), (5, Some(1)));
        assert!(v.notes[0].starts_with("no checkpoints"), "{v:?}");
        // The link is the HMAC of the previous link and the JSON, not plain SHA-256.
        let (l1, j2) = (raw(&index, 1)[..32].to_vec(), raw(&index, 2));
        assert_eq!(j2[..32], key().mac(&[&l1, &j2[32..]]));
        assert_ne!(j2[..32], sha(&[&l1, &j2[32..]]));
        let head = lb.head();
        assert_eq!((head.seq, head.keyed), (5, true));
        assert_eq!(head.mac, v.head_hash.clone().unwrap());
        drop(lb);
        let lb = Logbook::open_with(&index, Some(key()), Some(&dir.path().join("cp"))).unwrap();
        let e = lb.append(&index, entry("finding")).unwrap();
        assert_eq!(e.entry.seq, 6);
        assert!(lb.verify(&index).unwrap().ok);
        assert_eq!(
            Logbook::get(&index, 3).unwrap().entry.body.action,
            "export-2"
        );
        // Another key does not open it, nor does no key.
        let other = LogbookKey::from_bytes([8; 32]);
        assert!(untrusted(Logbook::open_with(&index, Some(other), None)).contains("key"));
        assert!(untrusted(Logbook::open_with(&index, None, None)).contains("keyed"));
    }

    #[test]
    fn an_incremental_check_covers_new_entries_the_boundary_and_the_checkpoints() {
        let (_dir, index, lb) = setup(5, Some(key()));
        lb.checkpoint().unwrap();
        let (v, state) = lb.verify_incremental(&index, None).unwrap();
        assert!(v.ok, "{v:?}");
        let state = state.unwrap();
        assert_eq!((state.entries, v.checkpoints_checked), (5, 1));
        // Nothing new: still intact, same place.
        let (v, same) = lb.verify_incremental(&index, Some(&state)).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(same.unwrap().entries, 5);
        for _ in 0..3 {
            lb.append(&index, entry("view")).unwrap();
        }
        lb.checkpoint().unwrap();
        let (v, next) = lb.verify_incremental(&index, Some(&state)).unwrap();
        assert!(v.ok, "{v:?}");
        let next = next.unwrap();
        assert_eq!((next.entries, v.checkpoints_checked), (8, 2));

        // A new entry changed after the last check is found at its seq.
        lb.append(&index, entry("view")).unwrap();
        let v9 = raw(&index, 9);
        let mut forged = v9.clone();
        let at = forged.len() - 3;
        forged[at] ^= 1;
        put(&index, 9, &forged);
        let (v, none) = lb.verify_incremental(&index, Some(&next)).unwrap();
        assert!(!v.ok && none.is_none(), "{v:?}");
        assert_eq!(v.first_bad_seq, Some(9), "{v:?}");
        put(&index, 9, &v9);
        assert!(lb.verify_incremental(&index, Some(&next)).unwrap().0.ok);

        // The last checked entry itself changed: found although nothing after it is new.
        let v8 = raw(&index, 8);
        let mut forged = v8.clone();
        forged[0] ^= 1;
        put(&index, 8, &forged);
        let (v, _) = lb.verify_incremental(&index, Some(&next)).unwrap();
        assert_eq!(v.first_bad_seq, Some(8), "{v:?}");
        put(&index, 8, &v8);

        // An older entry named by a checkpoint: the checkpoint line no longer matches.
        let v5 = raw(&index, 5);
        let forged = String::from_utf8(v5[32..].to_vec())
            .unwrap()
            .replace("incident 2026-114", "incident 2026-115");
        let mut nv = v5[..32].to_vec();
        nv.extend_from_slice(forged.as_bytes());
        put(&index, 5, &nv);
        let (v, _) = lb.verify_incremental(&index, Some(&next)).unwrap();
        assert!(!v.ok, "{v:?}");
        assert_eq!(v.first_bad_seq, Some(5), "{v:?}");
        // And the full check (at start, once a day) finds any changed entry.
        put(&index, 5, &v5);
        let v3 = raw(&index, 3);
        let forged = String::from_utf8(v3[32..].to_vec())
            .unwrap()
            .replace("incident 2026-114", "incident 2026-115");
        let mut nv = v3[..32].to_vec();
        nv.extend_from_slice(forged.as_bytes());
        put(&index, 3, &nv);
        let (v, _) = lb.verify_incremental(&index, None).unwrap();
        assert_eq!(v.first_bad_seq, Some(3), "{v:?}");
    }

    #[test]
    fn a_changed_value_is_found_at_its_seq() {
        let (_dir, index, lb) = setup(5, Some(key()));
        let v = raw(&index, 3);
        let forged = String::from_utf8(v[32..].to_vec())
            .unwrap()
            .replace("incident 2026-114", "incident 2026-115");
        let mut nv = v[..32].to_vec();
        nv.extend_from_slice(forged.as_bytes());
        put(&index, 3, &nv);
        let r = lb.verify(&index).unwrap();
        assert!(!r.ok);
        assert_eq!(r.first_bad_seq, Some(3));
    }

    #[test]
    fn links_recomputed_without_the_key_are_found_where_the_forgery_starts() {
        let (_dir, index, lb) = setup(5, Some(key()));
        // Change entry 2 and recompute every following link and the head, as someone who can
        // write the data directory but not read the key would.
        let mut prev: [u8; 32] = raw(&index, 1)[..32].try_into().unwrap();
        for seq in 2..=5 {
            let v = raw(&index, seq);
            let mut e: Entry = serde_json::from_slice(&v[32..]).unwrap();
            e.prev_hash = hex::encode(prev);
            if seq == 2 {
                e.body.user = "someone".into();
            }
            let json = serde_json::to_vec(&e).unwrap();
            let link = sha(&[&prev, &json]);
            let mut nv = link.to_vec();
            nv.extend_from_slice(&json);
            put(&index, seq, &nv);
            prev = link;
        }
        put_head(&index, 5, &prev);
        let r = lb.verify(&index).unwrap();
        assert_eq!(r.first_bad_seq, Some(2), "{r:?}");
        assert!(r.problem.unwrap().contains("without the key"));
        // The daemon does not append to it either.
        drop(lb);
        assert!(Logbook::open_with(&index, Some(key()), None).is_err());
    }

    #[test]
    fn removed_entries_and_a_disagreeing_head_are_found() {
        let (_dir, index, lb) = setup(5, Some(key()));
        let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
        index.db().delete_cf(cf, 2u64.to_be_bytes()).unwrap();
        assert_eq!(lb.verify(&index).unwrap().first_bad_seq, Some(2));

        // The last two entries deleted, the head record left alone.
        let (dir, index, lb) = setup(5, Some(key()));
        let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
        index.db().delete_cf(cf, 5u64.to_be_bytes()).unwrap();
        index.db().delete_cf(cf, 4u64.to_be_bytes()).unwrap();
        let r = lb.verify(&index).unwrap();
        assert_eq!(r.first_bad_seq, Some(4), "{r:?}");
        assert!(r.problem.unwrap().contains("entries 4..5"));
        drop(lb);
        let p = untrusted(Logbook::open_with(
            &index,
            Some(key()),
            Some(&dir.path().join("cp")),
        ));
        assert!(p.contains("seq 5") && p.contains("seq 3"), "{p}");
    }

    #[test]
    fn a_cut_tail_with_a_rewritten_head_is_found_by_the_checkpoint() {
        let (dir, index, lb) = setup(5, Some(key()));
        let cp = lb.checkpoint().unwrap().unwrap();
        assert_eq!(cp.seq, 5);
        assert!(lb.checkpoint().unwrap().is_none(), "the head did not move");
        lb.append(&index, entry("view")).unwrap();
        assert_eq!(lb.checkpoint().unwrap().unwrap().seq, 6);
        let cps = Checkpoints::read(&dir.path().join("cp")).unwrap();
        assert_eq!(cps.lines.iter().map(|c| c.seq).collect::<Vec<_>>(), [5, 6]);
        assert!(lb.verify(&index).unwrap().ok);
        drop(lb);

        let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
        for seq in 5..=6u64 {
            index.db().delete_cf(cf, seq.to_be_bytes()).unwrap();
        }
        put_head(&index, 4, &raw(&index, 4)[..32]);
        let v = verify(&index, Some(&key()), Some(&cps)).unwrap();
        assert_eq!(v.first_bad_seq, Some(5), "{v:?}");
        assert!(
            v.problem
                .as_deref()
                .unwrap()
                .contains("entries 5..6 were cut"),
            "{v:?}"
        );
        let p = untrusted(Logbook::open_with(
            &index,
            Some(key()),
            Some(&dir.path().join("cp")),
        ));
        assert!(p.contains("entries 5..6 were cut"), "{p}");
        // Without checkpoints the cut cannot be seen: that is what they are for.
        assert!(verify(&index, Some(&key()), None).unwrap().ok);
    }

    #[test]
    fn an_unkeyed_chain_continues_keyed_from_a_mark() {
        let (dir, index, lb) = setup(3, None);
        assert!(!lb.head().keyed);
        lb.checkpoint().unwrap().unwrap();
        drop(lb);
        let cp = dir.path().join("cp");
        let lb = Logbook::open_with(&index, Some(key()), Some(&cp)).unwrap();
        assert_eq!(lb.len(), 4);
        let mark = Logbook::get(&index, 4).unwrap();
        assert_eq!(mark.entry.body.action, ACTION_KEYED);
        lb.append(&index, entry("view")).unwrap();
        lb.checkpoint().unwrap().unwrap();
        let v = lb.verify(&index).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.keyed_from, v.checkpoints_checked), (Some(4), 2));
        // Without the key, verify stops at the mark and says why.
        let v = verify(&index, None, None).unwrap();
        assert_eq!(v.first_bad_seq, Some(4));
        assert!(v.problem.unwrap().contains("keyed"));
        // Going back to unkeyed is refused.
        drop(lb);
        assert!(untrusted(Logbook::open_with(&index, None, Some(&cp))).contains("keyed"));
        // A keyed entry that is not a mark cannot start the keyed part.
        let (_d2, index2, lb2) = setup(2, None);
        let forged = Logbook {
            head: Mutex::new(Head {
                seq: 2,
                link: raw(&index2, 2)[..32].try_into().unwrap(),
                time: None,
            }),
            key: Some(key()),
            checkpoint_dir: None,
            checkpointed: Mutex::new(0),
        };
        forged.append(&index2, entry("export")).unwrap();
        assert_eq!(lb2.verify(&index2).unwrap().first_bad_seq, Some(3));
        let v = verify(&index2, Some(&key()), None).unwrap();
        assert_eq!(v.first_bad_seq, Some(3), "{v:?}");
        assert!(v.problem.unwrap().contains(ACTION_KEYED));
    }

    #[test]
    fn a_lost_logbook_is_refused_until_the_loss_is_recorded() {
        let (dir, index, lb) = setup(4, Some(key()));
        lb.checkpoint().unwrap().unwrap();
        drop((lb, index));
        std::fs::remove_dir_all(dir.path().join("index")).unwrap();
        let index = Index::open(&dir.path().join("index")).unwrap();
        let cp = dir.path().join("cp");
        let cps = Checkpoints::read(&cp).unwrap();
        let p = check_before_reindex(&index, Some(&key()), &cps)
            .unwrap()
            .unwrap_err();
        assert!(p.contains("empty") && p.contains("1..4"), "{p}");
        let e = record_loss(&index, Some(key()), Some(&cp), &cps, &p).unwrap();
        assert_eq!(
            (e.entry.seq, e.entry.body.action.as_str()),
            (1, ACTION_LOST)
        );
        assert_eq!(e.entry.body.object["last_checkpoint"]["seq"], 4);
        let lb = Logbook::open_with(&index, Some(key()), Some(&cp)).unwrap();
        let v = lb.verify(&index).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.checkpoints_checked, 1);
        assert!(v.notes.iter().any(|n| n.contains("lost")), "{v:?}");
    }

    #[test]
    fn checkpoint_lines_parse_and_bind_seq_link_and_time() {
        let line = format!("42 {} 2026-11-23T16:00:00Z", "ab".repeat(32));
        let c = Checkpoint::parse(&line, 1).unwrap();
        assert_eq!(
            (c.seq, c.mac, c.time.as_str()),
            (42, [0xab; 32], "2026-11-23T16:00:00Z")
        );
        assert_eq!(c.to_line(), format!("{line}\n"));
        for bad in [
            "",
            "42",
            &format!("0 {} 2026-11-23T16:00:00Z", "ab".repeat(32)),
            &format!("x {} 2026-11-23T16:00:00Z", "ab".repeat(32)),
            &format!("42 {} 2026-11-23T16:00:00Z", "ab".repeat(31)),
            &format!("42 {} yesterday", "ab".repeat(32)),
            &format!("42 {} 2026-11-23T16:00:00Z extra", "ab".repeat(32)),
        ] {
            assert!(
                Checkpoint::parse(bad, 3).unwrap_err().starts_with("line 3"),
                "{bad}"
            );
        }
        let link = [1u8; 32];
        let t = "2026-11-23T16:00:00Z";
        let mac = checkpoint_mac(Some(&key()), 42, &link, t);
        let c = Checkpoint {
            seq: 42,
            mac,
            time: t.into(),
            line: 1,
        };
        assert!(c.matches(Some(&key()), &link, LinkKind::Mac));
        assert!(!c.matches(Some(&key()), &[2; 32], LinkKind::Mac));
        assert!(!Checkpoint {
            seq: 43,
            ..c.clone()
        }
        .matches(Some(&key()), &link, LinkKind::Mac));
        let later = Checkpoint {
            time: "2026-11-23T16:00:01Z".into(),
            ..c.clone()
        };
        assert!(!later.matches(Some(&key()), &link, LinkKind::Mac));
        // A plain SHA-256 checkpoint is not accepted for a MAC-linked entry.
        let forged = Checkpoint {
            mac: checkpoint_mac(None, 42, &link, t),
            ..c
        };
        assert!(!forged.matches(Some(&key()), &link, LinkKind::Mac));
        assert!(forged.matches(Some(&key()), &link, LinkKind::Sha));
    }

    #[test]
    fn a_torn_checkpoint_line_is_closed_and_ignored() {
        let (dir, index, lb) = setup(2, Some(key()));
        lb.checkpoint().unwrap().unwrap();
        drop(lb);
        let cp = dir.path().join("cp");
        let file = cp.join(CHECKPOINT_FILE);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(b"3 abcdef").unwrap();
        let cps = Checkpoints::read(&cp).unwrap();
        assert!(cps.torn_tail && cps.bad_lines.is_empty());
        let lb = Logbook::open_with(&index, Some(key()), Some(&cp)).unwrap();
        lb.append(&index, entry("view")).unwrap();
        lb.checkpoint().unwrap().unwrap();
        let cps = Checkpoints::read(&cp).unwrap();
        assert_eq!(
            (cps.lines.len(), cps.torn_lines, cps.bad_lines.len()),
            (2, 1, 0)
        );
        assert!(lb.verify(&index).unwrap().ok);
        // A damaged line is not ignored.
        f.write_all(b"\n7 zz 2026\n").unwrap();
        let v = lb.verify(&index).unwrap();
        assert!(!v.ok && v.problem.unwrap().contains("line 4"));
    }

    #[test]
    fn key_files_must_be_private_and_well_formed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logbook.key");
        write_new_key(&path).unwrap();
        assert!(write_new_key(&path).is_err(), "never overwrites");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        LogbookKey::load(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.trim_end()).unwrap();
        LogbookKey::load(&path).unwrap();

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = LogbookKey::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with("logbook.key_file") && e.contains("0640"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        for (bad, want) in [("abcd\n", "64 hex"), (&*"zz".repeat(32), "hex characters")] {
            std::fs::write(&path, bad).unwrap();
            let e = LogbookKey::load(&path).unwrap_err().to_string();
            assert!(e.starts_with("logbook.key_file") && e.contains(want), "{e}");
            assert!(!e.contains(bad.trim()), "the content is not echoed: {e}");
        }
        let e = LogbookKey::load(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("init-key"), "{e}");
        assert_eq!(format!("{:?}", key()), "LogbookKey(..)");
    }

    #[test]
    fn verify_while_entries_are_appended_reports_no_cut() {
        let (_dir, index, lb) = setup(5, Some(key()));
        std::thread::scope(|t| {
            let writer = t.spawn(|| {
                for i in 0..300 {
                    lb.append(&index, entry(&format!("during-{i}"))).unwrap();
                }
            });
            let mut checks = 0;
            while !writer.is_finished() {
                let v = lb.verify(&index).unwrap();
                assert!(v.ok, "a verify beside appends: {v:?}");
                checks += 1;
            }
            assert!(checks > 0);
        });
        assert!(lb.verify(&index).unwrap().ok);
    }
}

//! The logbook: an append-only, hash-chained record of every look at footage or key-tag data and
//! of every hold, erasure and refused request (R5: "logboek").
//!
//! Entries live in the RocksDB column family `logbook`, keyed by their sequence number (8 bytes,
//! big-endian, from 1). The value is the entry's SHA-256 (32 bytes) followed by the entry as JSON.
//! The hash covers the previous entry's hash and these JSON bytes exactly as stored:
//!
//! ```text
//! hash(n) = SHA-256( hash(n-1) || json(n) )      hash(0) = 32 zero bytes
//! ```
//!
//! and the JSON itself repeats `seq` and `prev_hash`, so an entry cannot be moved, changed,
//! removed or inserted without [`Logbook::verify`] finding the first entry where the chain breaks.
//! The head (last seq and hash) is kept in `meta` in the same batch as each append, so cutting
//! entries off the end is found too. Someone with write access to the database can of course
//! rewrite the whole chain; the head hash is printed by `holdfast logbook verify` and exposed on
//! `GET /api/v1/logbook/verify` so it can be written down (or signed off) outside the machine.
//!
//! Findings and sign-offs never change an entry: they are new entries whose `refers_to` is the
//! original's seq. An append is synced (RocksDB WAL fsync) before it returns, and the callers
//! append before any data leaves the daemon.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::index::{Index, IndexBatch, IndexError};
use crate::time::Time90k;

/// What the entry records.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NewEntry {
    /// User name (`-` when the request had no valid token).
    pub user: String,
    /// The user's role (`-` when unauthenticated).
    pub role: String,
    /// What was done: `export`, `view`, `keytags.query`, `keytags.submit`, `hold.place`,
    /// `hold.release`, `hold.extend`, `erasure`, `denied`, `finding`, `signoff`.
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
    /// The previous entry's hash (hex).
    pub prev_hash: String,
    /// What it records.
    #[serde(flatten)]
    pub body: NewEntry,
}

/// An entry with its hash, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HashedEntry {
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// Its hash (hex).
    pub hash: String,
}

/// The outcome of [`Logbook::verify`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verification {
    /// Whether the whole chain is intact.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// The first entry where the chain breaks.
    pub first_bad_seq: Option<u64>,
    /// What is wrong there.
    pub problem: Option<String>,
    /// The head hash (hex) when intact: write it down to detect a rewrite of the whole chain.
    pub head_hash: Option<String>,
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
}

/// Writes a new random logbook key (32 bytes, hex, mode 0600) to `path`; refuses to overwrite.
pub fn write_new_key(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{}", hex::encode(rand::random::<[u8; 32]>()))?;
    f.sync_all()
}

struct Head {
    seq: u64,
    hash: [u8; 32],
}

/// The logbook of one data directory.
pub struct Logbook {
    head: Mutex<Head>,
}

fn hash_of(prev: &[u8; 32], json: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(json);
    h.finalize().into()
}

impl Logbook {
    /// Opens the logbook, reading its head.
    pub fn open(index: &Index) -> Result<Self, LogbookError> {
        let head = match index.logbook_last()? {
            Some((seq, value)) if value.len() >= 32 => Head {
                seq,
                hash: value[..32].try_into().expect("32 bytes"),
            },
            _ => Head {
                seq: 0,
                hash: [0; 32],
            },
        };
        Ok(Self {
            head: Mutex::new(head),
        })
    }

    /// Appends an entry and syncs it; returns it with its hash. Appends are serialized.
    pub fn append(&self, index: &Index, e: NewEntry) -> Result<HashedEntry, LogbookError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Entry {
            seq: head.seq + 1,
            time: Time90k::now(),
            prev_hash: hex::encode(head.hash),
            body: e,
        };
        let json = serde_json::to_vec(&entry).expect("entries serialize");
        let hash = hash_of(&head.hash, &json);
        let mut value = Vec::with_capacity(32 + json.len());
        value.extend_from_slice(&hash);
        value.extend_from_slice(&json);
        let mut batch = IndexBatch::default();
        batch.put_logbook(index, entry.seq, &value, &hash);
        index.commit(batch, true)?;
        head.seq = entry.seq;
        head.hash = hash;
        Ok(HashedEntry {
            entry,
            hash: hex::encode(hash),
        })
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).seq
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        index
            .logbook_entries(seq)
            .filter_map(|item| match item {
                Err(e) => Some(Err(e.into())),
                Ok((seq, v)) => decode(seq, &v).ok().map(Ok),
            })
    }

    /// Checks the whole chain from the first entry and the head record.
    pub fn verify(index: &Index) -> Result<Verification, LogbookError> {
        let mut prev = [0u8; 32];
        let mut expect = 1u64;
        let bad = |seq: u64, n: u64, problem: String| Verification {
            ok: false,
            entries: n,
            first_bad_seq: Some(seq),
            problem: Some(problem),
            head_hash: None,
        };
        for item in index.logbook_entries(1) {
            let (seq, v) = item?;
            if seq != expect {
                return Ok(bad(
                    expect,
                    expect - 1,
                    format!("entry {expect} is missing (next stored is {seq})"),
                ));
            }
            if v.len() < 32 {
                return Ok(bad(seq, seq - 1, "entry too short".into()));
            }
            let (stored, json) = v.split_at(32);
            if hash_of(&prev, json) != stored {
                return Ok(bad(
                    seq,
                    seq - 1,
                    "hash does not match the entry (changed or chain broken)".into(),
                ));
            }
            match serde_json::from_slice::<Entry>(json) {
                Ok(e) if e.seq == seq && e.prev_hash == hex::encode(prev) => {}
                Ok(_) => {
                    return Ok(bad(
                        seq,
                        seq - 1,
                        "seq or prev_hash inside the entry is wrong".into(),
                    ))
                }
                Err(e) => return Ok(bad(seq, seq - 1, format!("entry unreadable: {e}"))),
            }
            prev = stored.try_into().expect("32 bytes");
            expect += 1;
        }
        let n = expect - 1;
        match index.logbook_head()? {
            Some((seq, hash)) if seq == n && hash == prev => {}
            None if n == 0 => {}
            Some((seq, _)) if seq > n => {
                return Ok(bad(
                    n + 1,
                    n,
                    format!("entries {} to {seq} were removed from the end", n + 1),
                ))
            }
            _ => {
                return Ok(bad(
                    n.max(1),
                    n,
                    "the head record does not match the last entry".into(),
                ))
            }
        }
        Ok(Verification {
            ok: true,
            entries: n,
            first_bad_seq: None,
            problem: None,
            head_hash: Some(hex::encode(prev)),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::CF_LOGBOOK;

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

    fn setup(n: u64) -> (tempfile::TempDir, Index, Logbook) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let lb = Logbook::open(&index).unwrap();
        for i in 0..n {
            lb.append(&index, entry(&format!("export-{i}"))).unwrap();
        }
        (dir, index, lb)
    }

    #[test]
    fn an_intact_chain_verifies_and_survives_reopening() {
        let (dir, index, lb) = setup(5);
        assert_eq!(lb.len(), 5);
        let v = Logbook::verify(&index).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.entries, 5);
        drop(index);
        let index = Index::open(dir.path()).unwrap();
        let lb = Logbook::open(&index).unwrap();
        let e = lb.append(&index, entry("finding")).unwrap();
        assert_eq!(e.entry.seq, 6);
        assert!(Logbook::verify(&index).unwrap().ok);
        assert_eq!(
            Logbook::get(&index, 3).unwrap().entry.body.action,
            "export-2"
        );
    }

    #[test]
    fn a_changed_value_is_found_at_its_seq() {
        let (_dir, index, _lb) = setup(5);
        let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
        let key = 3u64.to_be_bytes();
        let mut v = index.db().get_cf(cf, key).unwrap().unwrap();
        let text = String::from_utf8(v[32..].to_vec()).unwrap();
        let forged = text.replace("incident 2026-114", "incident 2026-115");
        v.truncate(32);
        v.extend_from_slice(forged.as_bytes());
        index.db().put_cf(cf, key, &v).unwrap();
        let r = Logbook::verify(&index).unwrap();
        assert!(!r.ok);
        assert_eq!(r.first_bad_seq, Some(3));
    }

    #[test]
    fn a_recomputed_hash_still_breaks_the_next_link() {
        let (_dir, index, _lb) = setup(5);
        let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
        let v = index.db().get_cf(cf, 2u64.to_be_bytes()).unwrap().unwrap();
        let prev: [u8; 32] = index.db().get_cf(cf, 1u64.to_be_bytes()).unwrap().unwrap()[..32]
            .try_into()
            .unwrap();
        let forged = String::from_utf8(v[32..].to_vec())
            .unwrap()
            .replace("j.devries", "someone");
        let mut nv = hash_of(&prev, forged.as_bytes()).to_vec();
        nv.extend_from_slice(forged.as_bytes());
        index.db().put_cf(cf, 2u64.to_be_bytes(), &nv).unwrap();
        let r = Logbook::verify(&index).unwrap();
        assert_eq!(r.first_bad_seq, Some(3), "{r:?}");
    }

    #[test]
    fn removed_entries_are_found() {
        let (_dir, index, _lb) = setup(5);
        let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
        index.db().delete_cf(cf, 2u64.to_be_bytes()).unwrap();
        assert_eq!(Logbook::verify(&index).unwrap().first_bad_seq, Some(2));

        let (_dir, index, _lb) = setup(5);
        let cf = index.db().cf_handle(CF_LOGBOOK).unwrap();
        index.db().delete_cf(cf, 5u64.to_be_bytes()).unwrap();
        let r = Logbook::verify(&index).unwrap();
        assert_eq!(r.first_bad_seq, Some(5), "{r:?}");
    }
}

//! "Free what is unreferenced": the one step that gives bytes back to the file system.
//!
//! Deleting footage is two steps with a crash-safe hand-over between them. First the sweeper (or
//! an erasure) removes index entries and, in the same RocksDB batch, writes
//! [`Reclaim`] records
//! naming the bytes that became unreferenced. Then this module frees those bytes and deletes the
//! records:
//!
//! - a range record (an erasure) punches `fallocate(PUNCH_HOLE | KEEP_SIZE)` over exactly that
//!   range;
//! - a whole-bucket record (an expired bucket) lists the entries still in the bucket (only pinned
//!   ones are left); with none, the file is unlinked, the directory synced and the bucket record
//!   dropped; otherwise holes are punched over every byte below the committed length that no
//!   entry covers.
//!
//! Every step is idempotent (punching a hole twice, unlinking a file that is gone), so recovery
//! just runs whatever records a crash left. A file that is not found counts as gone only when its
//! policy directory is there and the buckets directory is the one the store opened: a disk that
//! is not mounted (or was replaced) keeps its records until the files are really reachable.
//! Every record has a key of its own, so a record written while another of the same bucket is
//! being run is never deleted with it. Freed bytes are measured as the drop in the file's
//! allocated blocks, not computed, so the figure is what the disk really got back.
//!
//! Faults stay local: each record succeeds or fails on its own. A record that fails (a file
//! that cannot be unlinked because it is immutable, EIO from a failing disk, a failed index
//! commit) is counted in `holdfast_reclaim_errors_total{op}`, kept, and retried with a backoff of
//! its own (1 s doubling to 10 min, in memory: a restart retries everything at once); the other
//! records go on. What the failed records would free is `holdfast_reclaim_pending_bytes`, and the
//! `reclaim` detail of `/healthz` names the last error (cleared once nothing is pending). A record
//! that cannot even be decoded is counted (`op="index"`), logged with its key, kept and retried
//! like a failed one; it never stops the others.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use super::index::{IndexBatch, Reclaim};
use super::{dir_identity, sync_dir, Store, StoreError};
use crate::retention::intervals::{Interval, IntervalSet};

/// First retry delay of a failed record.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest retry delay of a failed record.
pub const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// What one run of [`Store::reclaim`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Reclaim records finished.
    pub records: u64,
    /// Bucket files unlinked.
    pub files_removed: u64,
    /// Allocated bytes given back to the file system.
    pub bytes_freed: u64,
    /// Records that failed in this run (kept, retried later).
    pub failed: u64,
    /// Records not tried in this run because their retry delay has not passed.
    pub deferred: u64,
}

/// The state of reclaim work, for `/healthz`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReclaimStatus {
    /// Records that failed and wait for a retry.
    pub pending_records: u64,
    /// Bytes those records would free (allocated bytes of the file for a whole bucket, the
    /// range length for a range).
    pub pending_bytes: u64,
    /// The last error, naming the operation and the file.
    pub last_error: Option<String>,
}

/// The retry delay after `failures` failures in a row: 1 s, 2 s, 4 s, .. at most 10 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    BACKOFF_FIRST.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

struct Retry {
    failures: u32,
    next: Instant,
    bytes: u64,
}

/// In-memory retry state of failed reclaim records, keyed by record key.
#[derive(Default)]
pub(super) struct ReclaimState {
    retry: HashMap<Vec<u8>, Retry>,
    last_error: Option<String>,
}

/// Why one record failed: the operation (the `op` label) and the error.
struct Failure {
    op: &'static str,
    error: StoreError,
    /// What the record would free, as far as known.
    bytes: u64,
}

impl Store {
    /// Runs every pending reclaim record that is due (see the module doc). Safe to call at any
    /// time and from several threads (they take turns). Errors of single records are counted
    /// and retried later, never returned; only a failure to list the records is an error.
    pub fn reclaim(&self) -> Result<ReclaimReport, StoreError> {
        let _turn = self.reclaim_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = ReclaimReport::default();
        let list = match self.index().reclaim_records() {
            Ok(r) => r,
            Err(e) => {
                let err = StoreError::from(e);
                self.reclaim_failed("index", &err);
                return Err(err);
            }
        };
        let keys: HashSet<&[u8]> = list
            .records
            .iter()
            .map(|(k, _)| &k[..])
            .chain(list.undecodable.iter().map(|(k, _)| &k[..]))
            .collect();
        self.reclaim_state(|s| s.retry.retain(|k, _| keys.contains(&k[..])));
        for (key, why) in &list.undecodable {
            let now = Instant::now();
            if self.reclaim_state(|s| s.retry.get(key).is_some_and(|t| t.next > now)) {
                report.deferred += 1;
                continue;
            }
            // Nothing can be done with it but say so: it stays, is counted and shown.
            report.failed += 1;
            let error = StoreError::Io {
                op: "decode reclaim record",
                path: self.buckets_dir(),
                source: std::io::Error::other(format!("key {}: {why}", hex::encode(key))),
            };
            self.reclaim_failed("index", &error);
            let failures = self.note_retry(key.clone(), 0);
            tracing::error!(key = %hex::encode(key), error = %why, failures,
                "reclaim record cannot be decoded: skipped, other records go on");
        }
        for (key, r) in &list.records {
            let now = Instant::now();
            if self.reclaim_state(|s| s.retry.get(key).is_some_and(|t| t.next > now)) {
                report.deferred += 1;
                continue;
            }
            match self.reclaim_one(key, r, &mut report) {
                Ok(()) => {
                    report.records += 1;
                    self.reclaim_state(|s| s.retry.remove(key));
                }
                Err(f) => {
                    report.failed += 1;
                    self.reclaim_failed(f.op, &f.error);
                    let failures = self.note_retry(key.clone(), f.bytes);
                    tracing::warn!(policy = %r.policy, bucket = %r.bucket, op = f.op,
                        error = %f.error, failures, retry_in = ?backoff(failures),
                        "reclaim failed: kept and retried later; other records go on");
                }
            }
        }
        // The last error is shown until nothing is pending any more.
        self.reclaim_state(|s| {
            if s.retry.is_empty() {
                s.last_error = None;
            }
        });
        self.update_reclaim_gauge();
        Ok(report)
    }

    /// Counts one more failure of a record and sets its next retry; returns the failures.
    fn note_retry(&self, key: Vec<u8>, bytes: u64) -> u32 {
        self.reclaim_state(|s| {
            let t = s.retry.entry(key).or_insert(Retry {
                failures: 0,
                next: Instant::now(),
                bytes: 0,
            });
            t.failures += 1;
            t.next = Instant::now() + backoff(t.failures);
            t.bytes = bytes;
            t.failures
        })
    }

    /// Pending records, pending bytes and the last error of reclaim work.
    pub fn reclaim_status(&self) -> ReclaimStatus {
        self.reclaim_state(|s| ReclaimStatus {
            pending_records: s.retry.len() as u64,
            pending_bytes: s.retry.values().map(|t| t.bytes).sum(),
            last_error: s.last_error.clone(),
        })
    }

    fn reclaim_state<T>(&self, f: impl FnOnce(&mut ReclaimState) -> T) -> T {
        f(&mut self.reclaim_state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn reclaim_failed(&self, op: &'static str, err: &StoreError) {
        self.metrics.reclaim_error(op);
        self.reclaim_state(|s| s.last_error = Some(err.to_string()));
    }

    fn update_reclaim_gauge(&self) {
        let bytes = self.reclaim_status().pending_bytes;
        self.metrics
            .reclaim_pending_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Whether a bucket file that was not found is really gone: the buckets directory is the one
    /// the store opened (not a directory put in its place), and either the file's policy
    /// directory exists, or it does not but the buckets directory holds another policy's
    /// directory (an operator removed the empty directory of a renamed policy; an empty mount
    /// point holds none, or only lost+found). Otherwise the error to keep the record with.
    fn really_gone(&self, path: &std::path::Path) -> Result<(), std::io::Error> {
        let buckets = self.buckets_dir();
        let same = match (self.buckets_id, dir_identity(&buckets)) {
            (Some(at_open), Ok(now)) => at_open == now,
            _ => false,
        };
        let policy_dir = path.parent().is_some_and(|d| d.is_dir());
        // Another policy's directory (not a file, not a fresh filesystem's lost+found).
        let others = || {
            std::fs::read_dir(&buckets).is_ok_and(|d| {
                d.flatten().any(|e| {
                    e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != "lost+found"
                })
            })
        };
        if same && (policy_dir || others()) {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{} not found, and {} is not the directory the store opened or is empty: kept \
                 until the file can be reached (a disk not mounted?)",
                path.display(),
                buckets.display(),
            )))
        }
    }

    /// Frees one record's bytes and deletes the record (and, for a removed file, the bucket).
    fn reclaim_one(
        &self,
        key: &[u8],
        r: &Reclaim,
        report: &mut ReclaimReport,
    ) -> Result<(), Failure> {
        let index = self.index();
        let path = self.bucket_path(&r.policy, r.bucket);
        let fail =
            |op: &'static str, bytes: u64| move |error: StoreError| Failure { op, error, bytes };
        let io = |op: &'static str, what: &'static str, bytes: u64| {
            let path = path.clone();
            move |e: std::io::Error| Failure {
                op,
                error: StoreError::io(what, &path)(e),
                bytes,
            }
        };
        // What the record would free if it failed before we know better.
        let estimate = match r.len {
            Some(len) => len,
            None => std::fs::metadata(&path).map_or(0, |m| m.blocks() * 512),
        };
        // A whole bucket with nothing pinned left goes by unlink, which needs no write access
        // to the file itself.
        let kept = match r.len {
            Some(_) => None,
            None => Some(
                index
                    .bucket_segments(&r.policy, r.bucket)
                    .map_err(|e| fail("index", estimate)(e.into()))?,
            ),
        };
        if kept.as_ref().is_some_and(|k| k.is_empty()) {
            let mut batch = IndexBatch::default();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    if let Some(dir) = path.parent() {
                        // The unlink happened: the bytes are free. A failed directory sync is
                        // counted; the record stays, and the retry finds the file gone.
                        sync_dir(dir).map_err(fail("sync_dir", 0))?;
                    }
                    report.files_removed += 1;
                    report.bytes_freed += estimate;
                }
                // Unlinked before a crash; only the bucket record was left.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.really_gone(&path)
                        .map_err(io("unlink", "unlink", estimate))?;
                }
                Err(e) => return Err(io("unlink", "unlink", estimate)(e)),
            }
            batch.delete_bucket(index, &r.policy, r.bucket);
            batch.delete_reclaim_key(index, key);
            return index
                .commit(batch, true)
                .map_err(|e| fail("index", 0)(e.into()));
        }
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.really_gone(&path)
                    .map_err(io("open", "open", estimate))?;
                None
            }
            Err(e) => return Err(io("open", "open", estimate)(e)),
        };
        let mut batch = IndexBatch::default();
        if let Some(file) = file {
            let meta = file.metadata().map_err(io("stat", "stat", estimate))?;
            let before = meta.blocks() * 512;
            let file_len = meta.len();
            let to_free = match &kept {
                None => IntervalSet::from_intervals([byte_range(
                    r.offset,
                    r.offset + r.len.unwrap_or(0),
                )]),
                Some(kept) => IntervalSet::from_intervals(
                    kept.iter().map(|e| byte_range(e.offset, e.end_offset())),
                )
                .complement_within(byte_range(0, file_len)),
            };
            for i in to_free.intervals() {
                punch_hole(&file, i).map_err(io("punch", "punch hole in", estimate))?;
            }
            file.sync_data().map_err(io("punch", "sync", estimate))?;
            let after = file.metadata().map_err(io("stat", "stat", 0))?.blocks() * 512;
            report.bytes_freed += before.saturating_sub(after);
        }
        // A missing file with pinned entries left keeps them (recovery reports them); a missing
        // file of a range record has nothing left to free.
        batch.delete_reclaim_key(index, key);
        index
            .commit(batch, true)
            .map_err(|e| fail("index", 0)(e.into()))
    }
}

fn byte_range(from: u64, to: u64) -> Interval {
    Interval::new(from as i64, to as i64)
}

/// Deallocates `[from, to)` of the file, keeping its size. Partial blocks at the edges are
/// zeroed by the kernel; whole blocks go back to the file system.
fn punch_hole(file: &std::fs::File, i: &Interval) -> std::io::Result<()> {
    if i.is_empty() {
        return Ok(());
    }
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            i.from,
            i.len(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_ten_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(10), Duration::from_secs(512));
        assert_eq!(backoff(11), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}

//! Crash recovery and full reindex: making the index and the bucket files agree again.
//!
//! What a crash can leave behind, and what recovery does about it:
//! - Bytes past a bucket's `committed_len` (written, maybe torn, never indexed): scanned record by
//!   record; every complete record whose CRCs match is indexed, and the file is truncated after
//!   the last one.
//! - A bucket file with no index entry at all (created, crash before the first commit): scanned
//!   from byte 0 the same way; removed when nothing valid is in it.
//! - Index entries whose file is shorter than the entries say: dropped (the bucket keeps its
//!   `expired` flag, and its committed length becomes the file's length, never less).
//! - Bucket files the index names that are missing (deleted by hand, or a disk not mounted):
//!   when most of them are missing (more than half of the non-expired buckets, and at least 2)
//!   recovery refuses ([`StoreError::MissingFiles`]) before anything is changed (also before
//!   reclaim runs) unless started with `accept_missing_files`, which drops their entries and, in
//!   the same index batch, leaves a marker ([`FILES_LOST_MARKER`]) that the daemon turns into a
//!   `store.files_lost` logbook entry (with the held entries counted) atomically with deleting
//!   it. Otherwise entries that an active hold pins are kept and reported (log line naming the
//!   holds and ranges, `holdfast_index_missing_files`, `/healthz`); the others are dropped with a
//!   log line. Buckets that never held a segment do not count towards "most"; neither do the
//!   buckets of a policy directory that cannot be listed (they are not taken for missing).
//! - Deletions cut short (reclaim records left in the index): finished after the missing-files
//!   check and before the scan, see `reclaim`. A reclaim record that fails is counted and
//!   retried later; it never stops recovery.
//!
//! Recovered records are made durable before they are indexed: the file is fdatasynced (and its
//! directory fsynced when the index did not know the file) before the batch that indexes them
//! commits. When that sync fails, nothing is destroyed and nothing of the range is indexed: the
//! file is left as it is and its bucket is recorded with `committed_len` at the end of the scanned
//! range and no entries for it, so that range is never scanned again (a page cache that the
//! failed sync left dirty cannot be trusted) and still expires with its bucket. `reindex` stops
//! with an error naming the file instead.
//!
//! One bad file never stops the start: a file that cannot be stat'ed, opened, read, truncated or
//! removed, or a policy directory that cannot be listed, is counted (`files_unreadable`), logged
//! with its name and left alone (its indexed entries kept, nothing new indexed from it). Only
//! the buckets directory itself and the index failing stop recovery.
//! A recovered record whose key (camera, start) is already indexed at another offset is never
//! indexed over it: the entry that is there stays.
//! - Buckets the sweeper expired are never scanned: their unreferenced bytes were deleted on
//!   purpose.
//!
//! Scanning resynchronises after damage: when the bytes at a position are not a valid record, it
//! looks for the next magic (skipping file holes with `SEEK_DATA`), so one torn record, a punched
//! hole or a stretch of zeros never hides the valid records after it. `reindex` runs the same scan
//! over every file from byte 0, after clearing the index: the files alone are the truth.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index::{BucketInfo, IndexBatch, SegmentEntry};
use super::segment::{align_up, FormatError, SegmentHeader, MAGIC, PREFIX_LEN, RECORD_ALIGN};
use super::{sync_dir, Store, StoreError, BUCKET_EXT};
use crate::time::{parse_bucket_stem, Time90k};

/// What recovery or reindex found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bucket files looked at.
    pub files: u64,
    /// Bytes scanned past the committed length.
    pub bytes_scanned: u64,
    /// Complete records that were not in the index and now are.
    pub segments_reindexed: u64,
    /// Bytes cut off the ends of files (torn or invalid tails).
    pub bytes_truncated: u64,
    /// Bytes between valid records that are not a valid record (left for hole punching).
    pub bytes_skipped: u64,
    /// Index entries dropped because their bytes are gone.
    pub entries_dropped: u64,
    /// Empty bucket files removed.
    pub files_removed: u64,
    /// Files in the buckets directory that are not bucket files (left alone).
    pub foreign_files: Vec<PathBuf>,
    /// Interrupted deletions finished first.
    pub reclaim: super::reclaim::ReclaimReport,
    /// Recovered records not indexed because an entry with the same key exists.
    pub duplicates_skipped: u64,
    /// Recovered records not indexed because their fdatasync failed (left in the file, their
    /// range covered by `committed_len` so it is never scanned again).
    pub unsynced_dropped: u64,
    /// Bucket files the index names that are missing.
    pub missing: MissingFiles,
    /// Bucket files (or policy directories) that could not be listed, stat'ed, opened, read,
    /// truncated or removed (left alone, logged).
    pub files_unreadable: u64,
}

/// What recovery may do when bucket files are missing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoverOptions {
    /// Forget the entries of missing files even when most files are missing.
    pub accept_missing_files: bool,
}

/// Bucket files the index named that were missing at start-up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MissingFiles {
    /// The missing files.
    pub files: Vec<MissingFile>,
    /// Non-expired buckets the index named.
    pub buckets_indexed: u64,
    /// Started with `accept_missing_files` while most files were missing: everything of them
    /// was forgotten.
    pub accepted: bool,
    /// Entries dropped from the index.
    pub entries_dropped: u64,
    /// Entries kept because an active hold pins them (their bytes are gone).
    pub held_entries_kept: u64,
    /// Entries an active hold pinned that were dropped all the same (`accepted`).
    pub held_entries_dropped: u64,
}

/// `meta` key of the record of an accepted loss of bucket files, written in the same batch that
/// drops their entries; the daemon appends the `store.files_lost` logbook entry and deletes the
/// marker in one batch (see [`files_lost_marker`]).
pub const FILES_LOST_MARKER: &[u8] = b"store_files_lost";

/// The pending record of an accepted loss of bucket files (the `store.files_lost` logbook
/// entry's object), if recovery left one.
pub fn files_lost_marker(
    index: &super::index::Index,
) -> Result<Option<serde_json::Value>, StoreError> {
    let Some(v) = index.get_raw(super::index::CF_META, FILES_LOST_MARKER)? else {
        return Ok(None);
    };
    Ok(Some(serde_json::from_slice(&v).unwrap_or_else(
        |e| serde_json::json!({ "unreadable_marker": e.to_string() }),
    )))
}

/// One missing bucket file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingFile {
    /// The file.
    pub path: PathBuf,
    /// Index entries that pointed into it.
    pub entries: u64,
    /// Held entries: (hold id, camera, segment start, segment end).
    pub held: Vec<(u64, String, Time90k, Time90k)>,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bucket files, {} bytes scanned, {} segments re-indexed, {} bytes truncated, \
             {} bytes skipped, {} dangling entries dropped, {} empty files removed, \
             {} interrupted deletions finished ({} bytes freed, {} failed and retried later), \
             {} duplicate keys not indexed, {} unsynced records cut off, {} bucket files missing, \
             {} unreadable",
            self.files,
            self.bytes_scanned,
            self.segments_reindexed,
            self.bytes_truncated,
            self.bytes_skipped,
            self.entries_dropped,
            self.files_removed,
            self.reclaim.records,
            self.reclaim.bytes_freed,
            self.reclaim.failed,
            self.duplicates_skipped,
            self.unsynced_dropped,
            self.missing.files.len(),
            self.files_unreadable
        )
    }
}

/// Runs crash recovery (see the module doc). Idempotent.
pub fn recover(
    store: &Store,
    bucket_secs: u32,
    opts: RecoverOptions,
) -> Result<RecoveryReport, StoreError> {
    run(store, bucket_secs, opts)
}

/// Rebuilds the whole index from the bucket files. The daemon must not be running (the RocksDB
/// lock enforces that).
pub fn reindex(store: &Store, bucket_secs: u32) -> Result<RecoveryReport, StoreError> {
    // Free what deletions left unreferenced first, or the rebuild would bring it back.
    let reclaim = store.reclaim()?;
    if reclaim.failed + reclaim.deferred > 0 {
        let s = store.reclaim_status();
        return Err(StoreError::Io {
            op: "reclaim before reindex",
            path: store.buckets_dir(),
            source: std::io::Error::other(format!(
                "{} deletions could not be finished (last: {}): a rebuild now would bring deleted \
                 footage back",
                s.pending_records,
                s.last_error.unwrap_or_default()
            )),
        });
    }
    store.index().clear_storage_entries()?;
    let mut report = scan(store, bucket_secs, true, RecoverOptions::default())?;
    report.reclaim = reclaim;
    Ok(report)
}

fn run(
    store: &Store,
    bucket_secs: u32,
    opts: RecoverOptions,
) -> Result<RecoveryReport, StoreError> {
    // Missing files first: with a disk not mounted the start is refused before anything (also
    // reclaim) changes.
    let mut pre = RecoveryReport::default();
    let listing = list_bucket_files(store, &mut pre)?;
    count_missing(store, &listing, opts)?;
    // An interrupted delete is finished next: it may unlink files the scan would visit. A
    // failure is counted and retried by the sweeper; it never stops the start.
    let reclaim = store.reclaim().unwrap_or_else(|e| {
        tracing::error!(error = %e, "reclaim records cannot be read; retried by the sweeper");
        Default::default()
    });
    let mut report = scan(store, bucket_secs, false, opts)?;
    report.reclaim = reclaim;
    Ok(report)
}

/// Active holds as (id, cameras, range), read straight from the index. Whether a hold has
/// lapsed is judged by the trusted time the persisted clock state gives, never later than the
/// wall clock (`wallclock::persisted_now`): a wall clock that jumped ahead does not lapse a hold
/// here either.
fn active_holds(store: &Store) -> Vec<(u64, Vec<String>, Time90k, Time90k)> {
    let now = crate::wallclock::persisted_now(store.index());
    let holds = match store.index().holds() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "holds cannot be read: every entry of a missing file is kept");
            return vec![(0, Vec::new(), Time90k(i64::MIN), Time90k(i64::MAX))];
        }
    };
    holds
        .into_iter()
        .filter_map(|(id, json)| {
            match serde_json::from_slice::<crate::retention::holds::Hold>(&json) {
                Ok(h) if h.state(now) == crate::retention::holds::HoldState::Active => {
                    Some((id, h.cameras, h.from, h.to))
                }
                Ok(_) => None,
                // An unreadable hold pins everything: never drop on a guess.
                Err(_) => Some((id, Vec::new(), Time90k(i64::MIN), Time90k(i64::MAX))),
            }
        })
        .collect()
}

/// The index buckets whose file is missing, the non-expired buckets that ever held a segment,
/// and how many of those are missing; refuses when most are missing (see the module doc).
fn count_missing(
    store: &Store,
    listing: &Listing,
    opts: RecoverOptions,
) -> Result<(Vec<BucketInfo>, u64, bool), StoreError> {
    let buckets = store.index().buckets(None)?;
    // A bucket that never held a segment loses nothing when its file is gone.
    let counts = |b: &BucketInfo| !b.expired && b.segments > 0;
    let live = buckets.iter().filter(|b| counts(b)).count() as u64;
    let missing: Vec<BucketInfo> = buckets
        .into_iter()
        .filter(|b| {
            !listing.files.contains_key(&(b.policy.clone(), b.start))
                && !listing.unlisted.contains(&b.policy)
        })
        .collect();
    let live_missing = missing.iter().filter(|b| counts(b)).count() as u64;
    let most = live_missing >= 2 && live_missing * 2 > live;
    if most && !opts.accept_missing_files {
        return Err(StoreError::MissingFiles {
            missing: live_missing,
            total: live,
            dir: store.buckets_dir(),
        });
    }
    Ok((missing, live, most))
}

/// Handles index buckets whose file is missing (see the module doc).
fn missing_files(
    store: &Store,
    listing: &Listing,
    opts: RecoverOptions,
    batch: &mut IndexBatch,
    report: &mut RecoveryReport,
) -> Result<(), StoreError> {
    let index = store.index();
    let (missing, live, most) = count_missing(store, listing, opts)?;
    report.missing.buckets_indexed = live;
    report.missing.accepted = most;
    // Also when the loss is accepted: the logbook entry says how many held entries went.
    let holds = if missing.is_empty() {
        Vec::new()
    } else {
        active_holds(store)
    };
    for b in &missing {
        let entries = index.bucket_segments(&b.policy, b.start)?;
        let path = store.bucket_path(&b.policy, b.start);
        if entries.is_empty() && b.segments == 0 {
            // Created by the writer, nothing ever committed to it (a power cut can take such a
            // new file): nothing is lost.
            tracing::debug!(path = %path.display(), "empty bucket without its file: forgotten");
            batch.delete_bucket(index, &b.policy, b.start);
            continue;
        }
        let mut held = Vec::new();
        let mut unpinned = 0;
        for e in &entries {
            let pins: Vec<u64> = holds
                .iter()
                .filter(|(_, cams, from, to)| {
                    (cams.is_empty() || cams.contains(&e.camera))
                        && *from < e.end()
                        && e.start < *to
                })
                .map(|(id, ..)| *id)
                .collect();
            if pins.is_empty() {
                unpinned += 1;
            } else {
                for id in pins {
                    held.push((id, e.camera.clone(), e.start, e.end()));
                }
            }
        }
        let held_entries = entries.len() as u64 - unpinned;
        if held.is_empty() || most {
            if !entries.is_empty() || !b.expired {
                tracing::warn!(path = %path.display(), entries = entries.len(), held_entries,
                    "bucket file is missing: dropping its index entries");
            }
            batch.delete_bucket(index, &b.policy, b.start);
            report.missing.entries_dropped += entries.len() as u64;
            report.entries_dropped += entries.len() as u64;
            report.missing.held_entries_dropped += held_entries;
        } else {
            let holds: std::collections::BTreeSet<u64> = held.iter().map(|h| h.0).collect();
            let ranges: Vec<String> = held
                .iter()
                .map(|(id, cam, from, to)| format!("hold {id}: {cam} {from}..{to}"))
                .collect();
            tracing::error!(path = %path.display(), holds = ?holds, held_entries = held.len(),
                ranges = %ranges.join(", "),
                "bucket file is missing: HELD footage is gone from disk; its entries stay in the \
                 index (verify reports them) until the file is restored");
            for e in &entries {
                if !held.iter().any(|h| h.1 == e.camera && h.2 == e.start) {
                    batch.delete_segment(index, e);
                }
            }
            report.missing.held_entries_kept += held_entries;
            report.missing.entries_dropped += unpinned;
            report.entries_dropped += unpinned;
        }
        report.missing.files.push(MissingFile {
            path,
            entries: entries.len() as u64,
            held,
        });
    }
    if most && !report.missing.files.is_empty() {
        let m = &report.missing;
        tracing::error!(files = m.files.len(), entries = m.entries_dropped,
            held_entries = m.held_entries_dropped,
            "started with --accept-missing-files: the entries of the missing bucket files are forgotten");
        // The record of the loss commits with the loss itself (the daemon logs it).
        let object = serde_json::json!({
            "files": m.files.len(),
            "of_buckets": m.buckets_indexed,
            "entries_dropped": m.entries_dropped,
            "held_entries": m.held_entries_dropped,
            "paths": m.files.iter().take(100).map(|f| f.path.display().to_string()).collect::<Vec<_>>(),
        });
        batch.put_raw(
            index,
            super::index::CF_META,
            FILES_LOST_MARKER,
            &serde_json::to_vec(&object).expect("JSON serializes"),
        );
    }
    store
        .metrics()
        .index_missing_files
        .set(report.missing.files.len() as i64);
    *store.missing.lock().unwrap_or_else(|e| e.into_inner()) = report.missing.clone();
    Ok(())
}

fn scan(
    store: &Store,
    bucket_secs: u32,
    from_scratch: bool,
    opts: RecoverOptions,
) -> Result<RecoveryReport, StoreError> {
    let mut report = RecoveryReport::default();
    let listing = list_bucket_files(store, &mut report)?;
    let index = store.index();

    if !from_scratch {
        let mut batch = IndexBatch::default();
        missing_files(store, &listing, opts, &mut batch, &mut report)?;
        if !batch.is_empty() {
            index.commit(batch, true)?;
        }
    } else if let Some(p) = listing.unlisted.iter().next() {
        return Err(StoreError::Io {
            op: "list for reindex (the rebuilt index would miss its files)",
            path: store.policy_dir(p),
            source: std::io::Error::other("the directory cannot be listed"),
        });
    }
    let mut ctx = ScanCtx {
        store,
        bucket_secs,
        from_scratch,
        new_keys: HashSet::new(),
        synced_dirs: HashMap::new(),
    };
    for ((policy, start), path) in &listing.files {
        report.files += 1;
        match ctx.recover_file(policy, *start, path, &mut report) {
            Ok(()) => {}
            Err(e @ StoreError::Index(_)) => return Err(e),
            // `reindex` rebuilds from the files alone: a file it cannot take is an error.
            Err(e) if from_scratch => {
                return Err(StoreError::Io {
                    op: "reindex (stopped; fix the file and run reindex again)",
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e,
                    "bucket file cannot be recovered: left alone (its indexed entries stay, \
                     nothing new is indexed from it)");
                report.files_unreadable += 1;
            }
        }
    }
    Ok(report)
}

/// State of one recovery scan across files.
struct ScanCtx<'a> {
    store: &'a Store,
    bucket_secs: u32,
    from_scratch: bool,
    /// Keys indexed by this scan (a scan may find two records with the same key).
    new_keys: HashSet<Vec<u8>>,
    /// Directories synced in this scan, with the outcome.
    synced_dirs: HashMap<PathBuf, bool>,
}

impl ScanCtx<'_> {
    /// Syncs a directory once per scan (and the buckets directory after a new policy
    /// directory); whether it worked.
    fn sync_dir_once(&mut self, dir: &Path) -> bool {
        if let Some(ok) = self.synced_dirs.get(dir) {
            return *ok;
        }
        let buckets = self.store.buckets_dir();
        let ok = match sync_dir(dir).and_then(|()| sync_dir(&buckets)) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "directory sync failed: new files in it are not indexed");
                false
            }
        };
        self.synced_dirs.insert(dir.to_owned(), ok);
        ok
    }

    /// Recovers one bucket file and commits what it found. An error is this file's only.
    fn recover_file(
        &mut self,
        policy: &str,
        start: Time90k,
        path: &Path,
        report: &mut RecoveryReport,
    ) -> Result<(), StoreError> {
        let store = self.store;
        let index = store.index();
        let mut batch = IndexBatch::default();
        let file_len = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            // Gone since it was listed (reclaim unlinked it): nothing to recover.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("stat", path)(e)),
        };
        let indexed = if self.from_scratch {
            None
        } else {
            index.bucket(policy, start)?
        };
        let mut changed = indexed.is_none();
        let was_indexed = indexed.is_some();
        let mut info =
            indexed.unwrap_or_else(|| BucketInfo::empty(policy, start, self.bucket_secs));
        if info.committed_len > file_len {
            // Durable bytes are missing (the file was cut by something other than holdfast).
            tracing::error!(path = %path.display(), committed = info.committed_len, len = file_len,
                "bucket file is shorter than its committed length: dropping entries past its end");
            let mut kept = BucketInfo::empty(policy, start, info.window_secs);
            kept.retention_secs = info.retention_secs;
            kept.expired = info.expired;
            for e in index.bucket_segments(policy, start)? {
                if e.end_offset() > file_len {
                    batch.delete_segment(index, &e);
                    report.entries_dropped += 1;
                } else {
                    kept.add(&e);
                }
            }
            // Everything up to the file's end was committed (or remembered as never to be
            // scanned): never less than that.
            kept.committed_len = kept.committed_len.max(info.committed_len.min(file_len));
            info = kept;
            changed = true;
        }

        if info.expired || (was_indexed && file_len == info.committed_len) {
            // Expired: what is left is pinned and indexed; everything else was deleted on
            // purpose and must never come back. Or nothing past the committed length: nothing
            // to scan (the file is not even opened).
            if changed {
                batch.put_bucket(index, &info);
                index.commit(batch, true)?;
            }
            return Ok(());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(StoreError::io("open", path))?;
        let mut scan = scan_file(&file, path, info.committed_len, file_len)?;
        report.bytes_scanned += file_len - info.committed_len;
        report.bytes_skipped += scan.skipped;
        if file_len > scan.valid_end {
            tracing::warn!(path = %path.display(), from = scan.valid_end, bytes = file_len - scan.valid_end,
                "truncating torn tail");
            match file.set_len(scan.valid_end) {
                Ok(()) => report.bytes_truncated += file_len - scan.valid_end,
                // The tail stays; it is scanned (and found invalid) again next time.
                Err(e) => tracing::error!(path = %path.display(), error = %e,
                    "cannot truncate the torn tail: left in the file"),
            }
        }
        if !scan.records.is_empty() || file_len > scan.valid_end {
            // Only synced bytes are indexed: after a process crash the recovered records may
            // still be only in the page cache.
            let mut synced = file.sync_all().map_err(|e| e.to_string());
            if synced.is_ok()
                && (!was_indexed || info.committed_len == 0)
                && !scan.records.is_empty()
            {
                // The file itself must survive a power cut before entries name it. The writer
                // names a new bucket in the index when it creates the file (committed_len 0),
                // before the directory entry is synced: such a bucket is as new as an unknown one.
                if let Some(dir) = path.parent() {
                    if !self.sync_dir_once(dir) {
                        synced = Err(format!("sync directory {}", dir.display()));
                    }
                }
            }
            if let Err(e) = synced {
                if self.from_scratch {
                    return Err(StoreError::Io {
                        op: "fdatasync recovered records of",
                        path: path.to_owned(),
                        source: std::io::Error::other(e),
                    });
                }
                tracing::error!(path = %path.display(), error = %e, records = scan.records.len(),
                    from = info.committed_len, to = scan.valid_end,
                    "fdatasync of recovered records failed: the file is left as it is, its range \
                     is never indexed");
                report.unsynced_dropped += scan.records.len() as u64;
                scan.records.clear();
                // The range is remembered as committed-without-entries: never scanned again.
                info.committed_len = info.committed_len.max(scan.valid_end);
                changed = true;
            }
        }
        let mut reindexed = 0;
        for (offset, header) in &scan.records {
            let e = entry_for(policy, start, *offset, header);
            let existing = if self.from_scratch {
                None
            } else {
                index.segment(&e.key())?
            };
            if existing.is_some_and(|x| x.offset != e.offset) || !self.new_keys.insert(e.key()) {
                // Never index over an entry that is there: that one was durable.
                tracing::warn!(path = %path.display(), camera = %e.camera, start = %e.start, offset,
                    "recovered record has the key of an indexed one: not indexed");
                report.duplicates_skipped += 1;
                continue;
            }
            batch.put_segment(index, &e);
            batch.put_codec(index, header.codec_id, &header.codec_config);
            info.add(&e);
            report.segments_reindexed += 1;
            reindexed += 1;
            changed = true;
        }
        if reindexed > 0 {
            tracing::info!(path = %path.display(), segments = reindexed, "re-indexed complete segments");
        }
        if info.segments == 0 && info.committed_len == 0 && scan.valid_end == 0 {
            drop(file);
            match std::fs::remove_file(path) {
                Ok(()) => {
                    if let Some(dir) = path.parent() {
                        sync_dir(dir)?;
                    }
                    batch.delete_bucket(index, policy, start);
                    report.files_removed += 1;
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e,
                        "cannot remove an empty bucket file: left alone");
                    report.files_unreadable += 1;
                    if changed {
                        batch.put_bucket(index, &info);
                    }
                }
            }
        } else if changed {
            batch.put_bucket(index, &info);
        }
        if !batch.is_empty() {
            index.commit(batch, true)?;
        }
        Ok(())
    }
}

/// The index entry of a record found at `offset` of a bucket file.
pub fn entry_for(policy: &str, bucket: Time90k, offset: u64, h: &SegmentHeader) -> SegmentEntry {
    SegmentEntry {
        policy: policy.to_owned(),
        bucket,
        camera: h.camera.clone(),
        start: h.start,
        offset,
        header_len: h.encoded_len() as u32,
        payload_len: h.payload_len(),
        duration: h.duration() as u32,
        frame_count: h.frames.len() as u32,
        codec_id: h.codec_id,
        payload_crc: h.payload_crc,
    }
}

/// What is in the buckets directory.
struct Listing {
    /// Every `buckets/<policy>/<stem>.seg`, by (policy, window start).
    files: BTreeMap<(String, Time90k), PathBuf>,
    /// Policy directories that could not be listed: their buckets are not taken for missing.
    unlisted: HashSet<String>,
}

/// Lists the bucket files. Only the buckets directory itself failing is an error; a policy
/// directory or an entry that cannot be read is counted in `files_unreadable` and logged.
fn list_bucket_files(store: &Store, report: &mut RecoveryReport) -> Result<Listing, StoreError> {
    let mut out = Listing {
        files: BTreeMap::new(),
        unlisted: HashSet::new(),
    };
    let dir = store.buckets_dir();
    let policies = std::fs::read_dir(&dir).map_err(StoreError::io("list", &dir))?;
    for p in policies {
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read a directory entry: skipped");
                report.files_unreadable += 1;
                continue;
            }
        };
        let ppath = p.path();
        let policy = p.file_name().to_string_lossy().into_owned();
        match p.file_type() {
            Ok(t) if t.is_dir() => {}
            Ok(_) => {
                report.foreign_files.push(ppath);
                continue;
            }
            Err(e) => {
                tracing::error!(path = %ppath.display(), error = %e, "cannot stat: skipped");
                report.files_unreadable += 1;
                out.unlisted.insert(policy);
                continue;
            }
        }
        let entries = match std::fs::read_dir(&ppath) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(path = %ppath.display(), error = %e,
                    "cannot list a policy directory: its files are left alone, not taken for missing");
                report.files_unreadable += 1;
                out.unlisted.insert(policy);
                continue;
            }
        };
        for f in entries {
            let f = match f {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(path = %ppath.display(), error = %e,
                        "cannot read a directory entry: its buckets are not taken for missing");
                    report.files_unreadable += 1;
                    out.unlisted.insert(policy.clone());
                    continue;
                }
            };
            let fpath = f.path();
            let start = fpath
                .extension()
                .filter(|e| *e == BUCKET_EXT)
                .and_then(|_| fpath.file_stem())
                .and_then(|s| s.to_str())
                .and_then(parse_bucket_stem);
            // The directory entry's type, not a stat: a file whose stat fails (EIO) is still
            // there, not missing (the scan counts it as unreadable).
            let is_file = match f.file_type() {
                Ok(t) => t.is_file(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => true,
            };
            match start {
                Some(start) if is_file => {
                    out.files.insert((policy.clone(), start), fpath);
                }
                _ => {
                    tracing::warn!(path = %fpath.display(), "not a bucket file; left alone");
                    report.foreign_files.push(fpath);
                }
            }
        }
    }
    Ok(out)
}

/// What a scan of a file range found.
pub struct ScanOutcome {
    /// Valid records, by offset.
    pub records: Vec<(u64, SegmentHeader)>,
    /// End of the last valid record (or the scan start when there is none).
    pub valid_end: u64,
    /// Bytes between valid records that did not form one.
    pub skipped: u64,
}

/// Scans `[from, len)` of a bucket file for valid records, resynchronising on the magic after
/// damage. Zero padding up to the next [`RECORD_ALIGN`] boundary (direct writes) is stepped
/// over with one small read; holes and preallocated (unwritten) space are skipped by `SEEK_DATA`.
pub fn scan_file(file: &File, path: &Path, from: u64, len: u64) -> Result<ScanOutcome, StoreError> {
    let mut out = ScanOutcome {
        records: Vec::new(),
        valid_end: from,
        skipped: 0,
    };
    let mut pos = from;
    let mut payload = Vec::new();
    // Zero padding right after the last valid record (see `segment::RECORD_ALIGN`).
    let mut padding = 0;
    while pos + PREFIX_LEN as u64 <= len {
        match try_record(file, path, pos, len, &mut payload)? {
            Some(h) => {
                let end = pos + h.encoded_len() as u64 + h.payload_len();
                // Padding after the previous record is not damage.
                out.skipped += pos - out.valid_end - padding;
                padding = 0;
                out.records.push((pos, h));
                out.valid_end = end;
                pos = end;
            }
            None => {
                // A direct writer's padding: zeros up to the next aligned offset, where its
                // next record starts. Checked first, so a padded file costs one small read per
                // record instead of a search.
                let next = align_up(pos + 1);
                if !pos.is_multiple_of(RECORD_ALIGN)
                    && next + PREFIX_LEN as u64 <= len
                    && zeros_between(file, path, pos, next)?
                {
                    if out.valid_end == pos {
                        padding = next - pos;
                    }
                    pos = next;
                    continue;
                }
                match find_magic(file, path, pos + 1, len)? {
                    Some(next) => pos = next,
                    None => break,
                }
            }
        }
    }
    Ok(out)
}

/// Whether `[from, to)` of the file (at most one block) reads as zeros.
fn zeros_between(file: &File, path: &Path, from: u64, to: u64) -> Result<bool, StoreError> {
    let mut buf = [0u8; RECORD_ALIGN as usize];
    let buf = &mut buf[..(to - from) as usize];
    file.read_exact_at(buf, from)
        .map_err(StoreError::io("read", path))?;
    Ok(buf.iter().all(|&b| b == 0))
}

/// The record at `pos`, if a complete and valid one starts there.
fn try_record(
    file: &File,
    path: &Path,
    pos: u64,
    len: u64,
    payload: &mut Vec<u8>,
) -> Result<Option<SegmentHeader>, StoreError> {
    let read = |buf: &mut [u8], at: u64| {
        file.read_exact_at(buf, at)
            .map_err(StoreError::io("read", path))
    };
    let mut prefix = [0u8; PREFIX_LEN];
    read(&mut prefix, pos)?;
    let hlen = match SegmentHeader::peek_len(&prefix) {
        Ok(n) => n,
        Err(_) => return Ok(None),
    };
    if pos + hlen as u64 > len {
        return Ok(None);
    }
    let mut hbuf = vec![0u8; hlen];
    read(&mut hbuf, pos)?;
    let h = match SegmentHeader::decode(&hbuf) {
        Ok(h) => h,
        Err(_) => return Ok(None),
    };
    let plen = h.payload_len();
    if pos + hlen as u64 + plen > len {
        return Ok(None);
    }
    payload.resize(plen as usize, 0);
    read(payload, pos + hlen as u64)?;
    match h.verify_payload(payload) {
        Ok(()) => Ok(Some(h)),
        Err(FormatError::PayloadCrc) | Err(FormatError::Truncated { .. }) => Ok(None),
        Err(_) => Ok(None),
    }
}

/// The next offset in `[pos, len)` where the magic starts, skipping holes.
fn find_magic(file: &File, path: &Path, mut pos: u64, len: u64) -> Result<Option<u64>, StoreError> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    while pos < len {
        // Skip holes: punched ranges read as zeros and cannot hold a record.
        let data = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(StoreError::io("seek", path)(err));
        }
        pos = data as u64;
        if pos >= len {
            return Ok(None);
        }
        let n = CHUNK.min((len - pos) as usize);
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(StoreError::io("read", path))?;
        if let Some(i) = memchr::memmem::find(&buf[..n], &MAGIC) {
            return Ok(Some(pos + i as u64));
        }
        if n < MAGIC.len() {
            return Ok(None);
        }
        pos += (n - (MAGIC.len() - 1)) as u64;
        if pos + (MAGIC.len() as u64) > len {
            return Ok(None);
        }
    }
    Ok(None)
}

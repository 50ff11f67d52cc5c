//! "Free what is unreferenced": the one step that gives bytes back to the file system.
//!
//! Deleting footage is two steps with a crash-safe hand-over between them. First the sweeper (or
//! an erasure) removes index entries and, in the same RocksDB batch, writes
//! [`Reclaim`](super::index::Reclaim) records
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
//! just runs whatever records a crash left. Freed bytes are measured as the drop in the file's
//! allocated blocks, not computed, so the figure is what the disk really got back.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use super::index::IndexBatch;
use super::{sync_dir, Store, StoreError};
use crate::retention::intervals::{Interval, IntervalSet};

/// What one run of [`Store::reclaim`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Reclaim records finished.
    pub records: u64,
    /// Bucket files unlinked.
    pub files_removed: u64,
    /// Allocated bytes given back to the file system.
    pub bytes_freed: u64,
}

impl Store {
    /// Runs every pending reclaim record (see the module doc). Safe to call at any time and from
    /// several threads (they take turns).
    pub fn reclaim(&self) -> Result<ReclaimReport, StoreError> {
        let _turn = self.reclaim_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = ReclaimReport::default();
        let index = self.index();
        for r in index.reclaims()? {
            let path = self.bucket_path(&r.policy, r.bucket);
            let file = match OpenOptions::new().write(true).open(&path) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(StoreError::io("open", &path)(e)),
            };
            let mut batch = IndexBatch::default();
            if let Some(file) = file {
                let meta = file.metadata().map_err(StoreError::io("stat", &path))?;
                let before = meta.blocks() * 512;
                let file_len = meta.len();
                let to_free = match r.len {
                    Some(len) => {
                        IntervalSet::from_intervals([byte_range(r.offset, r.offset + len)])
                    }
                    None => {
                        let kept = index.bucket_segments(&r.policy, r.bucket)?;
                        if kept.is_empty() {
                            drop(file);
                            std::fs::remove_file(&path).map_err(StoreError::io("unlink", &path))?;
                            if let Some(dir) = path.parent() {
                                sync_dir(dir)?;
                            }
                            report.files_removed += 1;
                            report.bytes_freed += before;
                            batch.delete_bucket(index, &r.policy, r.bucket);
                            batch.delete_reclaim(index, &r);
                            index.commit(batch, true)?;
                            report.records += 1;
                            continue;
                        }
                        IntervalSet::from_intervals(
                            kept.iter().map(|e| byte_range(e.offset, e.end_offset())),
                        )
                        .complement_within(byte_range(0, file_len))
                    }
                };
                for i in to_free.intervals() {
                    punch_hole(&file, i).map_err(StoreError::io("punch hole in", &path))?;
                }
                file.sync_data().map_err(StoreError::io("sync", &path))?;
                let after = file
                    .metadata()
                    .map_err(StoreError::io("stat", &path))?
                    .blocks()
                    * 512;
                report.bytes_freed += before.saturating_sub(after);
            } else if r.len.is_none() {
                // Unlinked before a crash; only the bucket record was left.
                batch.delete_bucket(index, &r.policy, r.bucket);
            }
            batch.delete_reclaim(index, &r);
            index.commit(batch, true)?;
            report.records += 1;
        }
        Ok(report)
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

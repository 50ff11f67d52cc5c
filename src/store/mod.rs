//! The storage engine: bucket files of segment records, the RocksDB index that points into them,
//! the writer that appends to them, and the recovery that makes the two agree after a crash.
//!
//! ```text
//! <data_dir>/
//!   index/                                   RocksDB (see `index`)
//!   buckets/<policy>/<20261122T1300Z>.seg    segment records (see `segment`)
//! ```
//!
//! Invariants kept here (ARCHITECTURE.md lists where each is enforced):
//! - An index entry is committed only after its bytes were fdatasynced (`writer`).
//! - Every index entry points at a complete record whose CRCs match (`writer`, `recovery`;
//!   checked by [`Store::verify`]).
//! - Bytes past a bucket's `committed_len` are never trusted without a CRC check (`recovery`).

pub mod index;
pub mod reclaim;
pub mod recovery;
pub mod segment;
pub mod staging;
pub mod writer;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use self::index::{Index, IndexError, SegmentEntry};
use self::segment::{FormatError, SegmentHeader};
use crate::metrics::StoreMetrics;
use crate::time::{bucket_stem, Time90k};

/// File extension of bucket files.
pub const BUCKET_EXT: &str = "seg";

/// An error of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A record on disk is not what the index says.
    #[error("segment of {camera} at {start} in {path} (offset {offset}): {source}")]
    Record {
        /// Camera id.
        camera: String,
        /// Segment start.
        start: Time90k,
        /// Bucket file.
        path: PathBuf,
        /// Offset in the file.
        offset: u64,
        /// What is wrong.
        source: FormatError,
    },
    /// Most bucket files the index names are missing: likely a disk that is not mounted.
    #[error(
        "{missing} of {total} bucket files missing under {}: is the disk mounted? start with \
         --accept-missing-files to forget them",
        dir.display()
    )]
    MissingFiles {
        /// Missing files (of non-expired buckets).
        missing: u64,
        /// Non-expired buckets the index names.
        total: u64,
        /// The buckets directory.
        dir: PathBuf,
    },
}

impl StoreError {
    /// Wraps an I/O error with the operation and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}

/// The opened storage: data directory and index.
pub struct Store {
    root: PathBuf,
    index: Index,
    /// Serialises [`Store::reclaim`] runs (the sweeper, erasures, recovery).
    reclaim_lock: std::sync::Mutex<()>,
    /// Retry state of failed reclaim records.
    reclaim_state: std::sync::Mutex<reclaim::ReclaimState>,
    /// The store's own metrics (registered by the daemon).
    metrics: StoreMetrics,
    /// Bucket files the index names that recovery found missing.
    missing: std::sync::Mutex<recovery::MissingFiles>,
    /// (device, inode) of the buckets directory when the store was opened.
    buckets_id: Option<(u64, u64)>,
}

impl Store {
    /// Opens the store in `data_dir` (creating its directories) and runs crash recovery.
    /// `bucket_secs` is the configured bucket window, recorded for buckets recovery recreates.
    pub fn open(
        data_dir: &Path,
        bucket_secs: u32,
    ) -> Result<(Store, recovery::RecoveryReport), StoreError> {
        Self::open_with(data_dir, bucket_secs, recovery::RecoverOptions::default())
    }

    /// [`Store::open`] with recovery options (`holdfast run --accept-missing-files`).
    pub fn open_with(
        data_dir: &Path,
        bucket_secs: u32,
        opts: recovery::RecoverOptions,
    ) -> Result<(Store, recovery::RecoveryReport), StoreError> {
        let store = Self::open_without_recovery(data_dir)?;
        let report = recovery::recover(&store, bucket_secs, opts)?;
        Ok((store, report))
    }

    /// Opens the store without recovery (for `reindex`, which rebuilds instead).
    pub fn open_without_recovery(data_dir: &Path) -> Result<Store, StoreError> {
        let buckets = data_dir.join("buckets");
        for dir in [data_dir, buckets.as_path()] {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
                if let Some(parent) = dir.parent() {
                    sync_dir(parent)?;
                }
            }
        }
        let index = Index::open(&data_dir.join("index"))?;
        // RocksDB creates `index/` but never fsyncs the data directory: without this, a power
        // cut soon after the first start loses the whole index (tests/faults.rs power cuts).
        sync_dir(data_dir)?;
        let buckets_id = dir_identity(&buckets).ok();
        Ok(Store {
            root: data_dir.to_owned(),
            index,
            reclaim_lock: std::sync::Mutex::new(()),
            reclaim_state: Default::default(),
            metrics: StoreMetrics::default(),
            missing: Default::default(),
            buckets_id,
        })
    }

    /// The store's own metrics, for [`crate::metrics::Metrics::register_store`].
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Bucket files the index names that were missing at start-up (and what they held).
    pub fn missing_files(&self) -> recovery::MissingFiles {
        self.missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reports a bucket file the index names (with `entries` segments ever committed to it)
    /// that the writer found missing or cut while running (`/healthz`,
    /// `holdfast_index_missing_files`).
    pub(crate) fn note_missing_file(&self, path: &Path, entries: u64) {
        let mut m = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        if !m.files.iter().any(|f| f.path == path) {
            m.files.push(recovery::MissingFile {
                path: path.to_owned(),
                entries,
                held: Vec::new(),
            });
        }
        self.metrics.index_missing_files.set(m.files.len() as i64);
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// `<data_dir>/buckets`.
    pub fn buckets_dir(&self) -> PathBuf {
        self.root.join("buckets")
    }

    /// The directory of one policy's bucket files.
    pub fn policy_dir(&self, policy: &str) -> PathBuf {
        self.buckets_dir().join(policy)
    }

    /// The bucket file of a policy and window start.
    pub fn bucket_path(&self, policy: &str, start: Time90k) -> PathBuf {
        self.policy_dir(policy)
            .join(format!("{}.{BUCKET_EXT}", bucket_stem(start)))
    }

    /// Reads a segment record, checking that its header matches the entry and its payload CRC.
    /// Returns the header and the payload bytes.
    pub fn read_segment(&self, e: &SegmentEntry) -> Result<(SegmentHeader, Vec<u8>), StoreError> {
        let path = self.bucket_path(&e.policy, e.bucket);
        let file = File::open(&path).map_err(StoreError::io("open", &path))?;
        read_segment_from(&file, &path, e)
    }

    /// Reads only a segment's header (its frame table), checking it against the entry.
    pub fn read_segment_header(&self, e: &SegmentEntry) -> Result<SegmentHeader, StoreError> {
        let path = self.bucket_path(&e.policy, e.bucket);
        let file = File::open(&path).map_err(StoreError::io("open", &path))?;
        let record_err = |source| StoreError::Record {
            camera: e.camera.clone(),
            start: e.start,
            path: path.clone(),
            offset: e.offset,
            source,
        };
        let mut buf = vec![0u8; e.header_len as usize];
        file.read_exact_at(&mut buf, e.offset)
            .map_err(StoreError::io("read", &path))?;
        let header = SegmentHeader::decode(&buf).map_err(&record_err)?;
        if header.camera != e.camera
            || header.start != e.start
            || header.payload_crc != e.payload_crc
            || header.payload_len() != e.payload_len
        {
            return Err(record_err(FormatError::Invalid(
                "record does not match its index entry",
            )));
        }
        Ok(header)
    }

    /// Checks every index entry against the bytes on disk (header fields and payload CRC).
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut current: Option<(String, Time90k, File, PathBuf)> = None;
        for e in self.index.all_segments()? {
            let same = matches!(&current, Some((p, b, _, _)) if *p == e.policy && *b == e.bucket);
            if !same {
                let path = self.bucket_path(&e.policy, e.bucket);
                match File::open(&path) {
                    Ok(f) => current = Some((e.policy.clone(), e.bucket, f, path)),
                    Err(err) => {
                        report.bad.push(format!(
                            "{} at {}: {}: {err}",
                            e.camera,
                            e.start,
                            path.display()
                        ));
                        current = None;
                        continue;
                    }
                }
            }
            let (_, _, file, path) = current.as_ref().expect("set above");
            match read_segment_from(file, path, &e) {
                Ok(_) => {
                    report.segments += 1;
                    report.bytes += e.record_len();
                }
                Err(err) => report.bad.push(err.to_string()),
            }
        }
        Ok(report)
    }
}

/// The outcome of [`Store::verify`].
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Entries whose bytes are intact.
    pub segments: u64,
    /// Bytes of those records.
    pub bytes: u64,
    /// One line per entry whose bytes are missing or damaged.
    pub bad: Vec<String>,
}

/// The error of a record (the entry `e` in the file `path`) that is damaged in `source`'s way.
pub fn record_error(path: &Path, e: &SegmentEntry) -> impl Fn(FormatError) -> StoreError {
    let (camera, start, path, offset) = (e.camera.clone(), e.start, path.to_owned(), e.offset);
    move |source| StoreError::Record {
        camera: camera.clone(),
        start,
        path: path.clone(),
        offset,
        source,
    }
}

/// Reads `len` bytes of the record of entry `e` at `offset` of `file`: a file that ends first
/// is the record truncated (`need` bytes were expected), other errors are read errors.
pub fn read_record_bytes(
    file: &File,
    path: &Path,
    e: &SegmentEntry,
    offset: u64,
    len: usize,
    need: usize,
) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0u8; len];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(buf),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
            Err(record_error(path, e)(FormatError::Truncated {
                need,
                have: 0,
            }))
        }
        Err(err) => Err(StoreError::io("read", path)(err)),
    }
}

fn read_segment_from(
    file: &File,
    path: &Path,
    e: &SegmentEntry,
) -> Result<(SegmentHeader, Vec<u8>), StoreError> {
    let record_err = record_error(path, e);
    let len = e.record_len() as usize;
    let mut buf = read_record_bytes(file, path, e, e.offset, len, len)?;
    let header = SegmentHeader::decode(&buf).map_err(&record_err)?;
    check_header_matches(&header, e).map_err(&record_err)?;
    let payload = buf.split_off(e.header_len as usize);
    header.verify_payload(&payload).map_err(&record_err)?;
    Ok((header, payload))
}

/// Whether a decoded record header is the one its index entry names (length, camera, start,
/// payload length and CRC): a record read at an entry's offset that is another one (the file was
/// replaced or rewritten) is refused.
pub fn check_header_matches(header: &SegmentHeader, e: &SegmentEntry) -> Result<(), FormatError> {
    if header.encoded_len() != e.header_len as usize
        || header.camera != e.camera
        || header.start != e.start
        || header.payload_crc != e.payload_crc
        || header.payload_len() != e.payload_len
    {
        return Err(FormatError::Invalid(
            "record does not match its index entry",
        ));
    }
    Ok(())
}

/// (device, inode) of a directory: tells a replaced directory (or a mount point whose disk is
/// not mounted) from the one opened before.
pub(crate) fn dir_identity(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir)?;
    Ok((m.dev(), m.ino()))
}

/// fsyncs a directory, so that entries created or removed in it survive power loss.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync directory", dir))
}

//! The index: RocksDB column families that say which segment lives where.
//!
//! Column families and their keys (all integers big-endian; times are `i64` 90 kHz ticks with the
//! sign bit flipped so that byte order is time order):
//!
//! | family          | key                                               | value                  |
//! |-----------------|---------------------------------------------------|------------------------|
//! | `segments`      | policy `\0` bucket-start(8) camera `\0` start(8)  | [`SegmentEntry`] fields |
//! | `buckets`       | policy `\0` bucket-start(8)                       | [`BucketInfo`]          |
//! | `codec_configs` | codec id(8)                                       | the avcC record         |
//! | `reclaim`       | policy `\0` bucket-start(8) kind(1) offset(8) length(8) seq(8) | length(8), or all |
//! | `holds`         | hold id(8)                                        | the hold as JSON        |
//! | `meta`          | name                                              | value                   |
//!
//! Segments are keyed by bucket first: everything a bucket holds is one contiguous key range, so
//! expiring a bucket is a single range delete whatever the number of cameras. A camera's segments
//! in a time range are found by one seek per bucket that overlaps the range (the bucket list is
//! small: hours times policies), never by scanning other cameras. See `design/index.md`.

use std::path::Path;

use bytes::Bytes;
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use crate::time::Time90k;

/// Column family of segment entries.
pub const CF_SEGMENTS: &str = "segments";
/// Column family of bucket files.
pub const CF_BUCKETS: &str = "buckets";
/// Column family of codec configurations.
pub const CF_CODECS: &str = "codec_configs";
/// Column family of byte ranges to free ("reclaim" records, see [`Reclaim`]).
pub const CF_RECLAIM: &str = "reclaim";
/// Column family of incident holds.
pub const CF_HOLDS: &str = "holds";
/// Column family of small settings (format version, logbook head).
pub const CF_META: &str = "meta";
/// Column family of logbook entries, by seq (see `logbook`).
pub const CF_LOGBOOK: &str = "logbook";
/// Column family of key-tag events by site and time (see `keytags`).
pub const CF_KEYTAGS: &str = "keytags";
/// Column family of key-tag events by tag and time (see `keytags`).
pub const CF_KEYTAGS_BY_TAG: &str = "keytags_by_tag";

const ALL_CFS: [&str; 9] = [
    CF_SEGMENTS,
    CF_BUCKETS,
    CF_CODECS,
    CF_RECLAIM,
    CF_HOLDS,
    CF_META,
    CF_LOGBOOK,
    CF_KEYTAGS,
    CF_KEYTAGS_BY_TAG,
];
const LOGBOOK_HEAD: &[u8] = b"logbook_head";

/// A raw (key, value) of a column family.
pub type RawEntry = (Box<[u8]>, Box<[u8]>);
const SEGMENT_VALUE_VERSION: u8 = 1;
/// Version 1 (38 bytes) had no retention; version 2 appends it (46 bytes).
const BUCKET_VALUE_VERSION: u8 = 2;
const BUCKET_VALUE_V1_LEN: usize = 38;
const BUCKET_VALUE_LEN: usize = 46;
/// Stored retention meaning "not recorded" (a bucket written before buckets recorded it).
const RETENTION_UNKNOWN: u64 = u64::MAX;
/// `reclaim` value meaning "everything in the bucket no entry references".
const RECLAIM_ALL: u64 = u64::MAX;
/// Kind byte of a whole-bucket reclaim key.
const RECLAIM_KIND_ALL: u8 = 1;
/// Kind byte of a range reclaim key.
const RECLAIM_KIND_RANGE: u8 = 2;
/// The index format version stored under `meta/format` (benches key cached indexes by it).
pub const INDEX_FORMAT: &[u8] = b"1";

/// An error of the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// RocksDB failed.
    #[error("index (RocksDB): {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored key or value could not be decoded.
    #[error("index entry corrupt: {0}")]
    Corrupt(String),
}

/// Where a segment record lives and what it holds, as stored in the `segments` family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentEntry {
    /// Retention policy (the bucket directory).
    pub policy: String,
    /// Start of the bucket window (the bucket file).
    pub bucket: Time90k,
    /// Camera id.
    pub camera: String,
    /// Wall-clock time of the first frame.
    pub start: Time90k,
    /// Byte offset of the record in the bucket file.
    pub offset: u64,
    /// Header bytes of the record.
    pub header_len: u32,
    /// Payload bytes after the header.
    pub payload_len: u64,
    /// Duration in ticks.
    pub duration: u32,
    /// Number of frames.
    pub frame_count: u32,
    /// Codec-config id.
    pub codec_id: u64,
    /// CRC32C of the payload (copied from the header, for verification without parsing it).
    pub payload_crc: u32,
}

impl SegmentEntry {
    /// End time of the segment.
    pub fn end(&self) -> Time90k {
        self.start.add_ticks(i64::from(self.duration))
    }

    /// Bytes the whole record takes in the file.
    pub fn record_len(&self) -> u64 {
        u64::from(self.header_len) + self.payload_len
    }

    /// End offset of the record in the file.
    pub fn end_offset(&self) -> u64 {
        self.offset + self.record_len()
    }

    /// The key of this entry in the `segments` family.
    pub fn key(&self) -> Vec<u8> {
        segment_key(&self.policy, self.bucket, &self.camera, self.start)
    }

    /// The value of this entry in the `segments` family (for bulk loads such as the export
    /// bench's SST files).
    pub fn encode_value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(41);
        v.push(SEGMENT_VALUE_VERSION);
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.header_len.to_be_bytes());
        v.extend_from_slice(&self.payload_len.to_be_bytes());
        v.extend_from_slice(&self.duration.to_be_bytes());
        v.extend_from_slice(&self.frame_count.to_be_bytes());
        v.extend_from_slice(&self.codec_id.to_be_bytes());
        v.extend_from_slice(&self.payload_crc.to_be_bytes());
        v
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<Self, IndexError> {
        let (policy, bucket, camera, start) = parse_segment_key(key)
            .ok_or_else(|| IndexError::Corrupt(format!("segment key {}", hex::encode(key))))?;
        if value.len() != 41 || value[0] != SEGMENT_VALUE_VERSION {
            return Err(IndexError::Corrupt(format!(
                "segment value of {camera} at {start}"
            )));
        }
        let r = Reader(&value[1..]);
        Ok(SegmentEntry {
            policy,
            bucket,
            camera,
            start,
            offset: r.u64(0),
            header_len: r.u32(8),
            payload_len: r.u64(12),
            duration: r.u32(20),
            frame_count: r.u32(24),
            codec_id: r.u64(28),
            payload_crc: r.u32(36),
        })
    }
}

/// What the index knows of one bucket file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketInfo {
    /// Retention policy.
    pub policy: String,
    /// Start of the window.
    pub start: Time90k,
    /// Length of the window in seconds (as configured when the bucket was written).
    pub window_secs: u32,
    /// End offset of the last committed record: bytes before it were synced before indexing.
    pub committed_len: u64,
    /// Earliest segment start ever committed to it.
    pub first_start: Time90k,
    /// Latest segment end ever committed to it.
    pub last_end: Time90k,
    /// Segments ever committed to it.
    pub segments: u64,
    /// The sweeper expired it: what is left in it is pinned by holds, nothing is added any more,
    /// and recovery never re-indexes records in it.
    pub expired: bool,
    /// Video retention (seconds) of the policy when the writer created the bucket; `None` for a
    /// bucket recorded before buckets remembered it ("unknown"). Lets the sweeper expire buckets
    /// of a policy that has since left the config (see `design/retention.md`).
    pub retention_secs: Option<u64>,
}

impl BucketInfo {
    /// A bucket with nothing committed yet.
    pub fn empty(policy: &str, start: Time90k, window_secs: u32) -> Self {
        Self {
            policy: policy.to_owned(),
            start,
            window_secs,
            committed_len: 0,
            first_start: Time90k(i64::MAX),
            last_end: Time90k(i64::MIN),
            segments: 0,
            expired: false,
            retention_secs: None,
        }
    }

    /// Widens the bucket's statistics by a committed segment.
    pub fn add(&mut self, e: &SegmentEntry) {
        self.committed_len = self.committed_len.max(e.end_offset());
        self.first_start = self.first_start.min(e.start);
        self.last_end = self.last_end.max(e.end());
        self.segments += 1;
    }

    /// The key of this bucket in the `buckets` family.
    pub fn key(&self) -> Vec<u8> {
        bucket_key(&self.policy, self.start)
    }

    fn encode_value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(BUCKET_VALUE_LEN);
        v.push(BUCKET_VALUE_VERSION);
        v.extend_from_slice(&self.window_secs.to_be_bytes());
        v.extend_from_slice(&self.committed_len.to_be_bytes());
        v.extend_from_slice(&self.first_start.0.to_be_bytes());
        v.extend_from_slice(&self.last_end.0.to_be_bytes());
        v.extend_from_slice(&self.segments.to_be_bytes());
        v.push(u8::from(self.expired));
        v.extend_from_slice(
            &self
                .retention_secs
                .unwrap_or(RETENTION_UNKNOWN)
                .to_be_bytes(),
        );
        v
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<Self, IndexError> {
        let (policy, start) = parse_bucket_key(key)
            .ok_or_else(|| IndexError::Corrupt(format!("bucket key {}", hex::encode(key))))?;
        let retention_secs = match (value.first(), value.len()) {
            (Some(1), BUCKET_VALUE_V1_LEN) => None,
            (Some(&BUCKET_VALUE_VERSION), BUCKET_VALUE_LEN) => {
                let r = u64::from_be_bytes(value[38..46].try_into().expect("8 bytes"));
                (r != RETENTION_UNKNOWN).then_some(r)
            }
            _ => {
                return Err(IndexError::Corrupt(format!(
                    "bucket value of {policy} {start}"
                )))
            }
        };
        let r = Reader(&value[1..]);
        Ok(BucketInfo {
            policy,
            start,
            window_secs: r.u32(0),
            committed_len: r.u64(4),
            first_start: Time90k(r.u64(12) as i64),
            last_end: Time90k(r.u64(20) as i64),
            segments: r.u64(28),
            expired: value[37] != 0,
            retention_secs,
        })
    }
}

/// Bytes of a bucket file that no index entry references any more and that are still to be
/// freed (punched out, or the whole file unlinked). Written in the same batch that removes the
/// entries, deleted once the bytes are gone: freeing is idempotent, so recovery simply runs every
/// record that is left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaim {
    /// Policy of the bucket.
    pub policy: String,
    /// Start of the bucket window.
    pub bucket: Time90k,
    /// First byte of the range (0 for a whole-bucket reclaim).
    pub offset: u64,
    /// Length of the range; `None`: everything in the bucket that no entry references (an
    /// expired bucket; the file goes when nothing is left).
    pub len: Option<u64>,
}

impl Reclaim {
    /// The work the record names: `bucket kind(1) offset(8) length(8)`. The kind byte keeps a
    /// range at offset 0 apart from the whole-bucket record. The stored key adds a sequence
    /// number (`seq(8)`, see [`IndexBatch::put_reclaim`]): the same work recorded twice (an
    /// expired bucket re-checked after a hold was released while reclaim was running it) is two
    /// records, so finishing the first never deletes the second.
    pub fn key(&self) -> Vec<u8> {
        let mut k = bucket_key(&self.policy, self.bucket);
        match self.len {
            None => {
                k.push(RECLAIM_KIND_ALL);
                k.extend_from_slice(&0u64.to_be_bytes());
                k.extend_from_slice(&RECLAIM_ALL.to_be_bytes());
            }
            Some(len) => {
                k.push(RECLAIM_KIND_RANGE);
                k.extend_from_slice(&self.offset.to_be_bytes());
                k.extend_from_slice(&len.to_be_bytes());
            }
        }
        k
    }

    /// Decodes a record; also the old formats (`bucket offset(8)`, before issue 9, whose keys
    /// could collide; `bucket kind offset length` without a sequence). Returns whether the key is
    /// of the oldest format.
    fn decode_any(key: &[u8], value: &[u8]) -> Result<(Self, bool), IndexError> {
        Self::decode_seq(key, value).map(|(r, old, _)| (r, old))
    }

    /// [`Reclaim::decode_any`] and the key's sequence number (0 when it has none).
    fn decode_seq(key: &[u8], value: &[u8]) -> Result<(Self, bool, u64), IndexError> {
        let bad = || IndexError::Corrupt(format!("reclaim key {}", hex::encode(key)));
        let z = key.iter().position(|&b| b == 0).ok_or_else(bad)?;
        let (policy, bucket) =
            parse_bucket_key(key.get(..z + 9).ok_or_else(bad)?).ok_or_else(bad)?;
        if value.len() != 8 {
            return Err(bad());
        }
        let len = u64::from_be_bytes(value.try_into().expect("8 bytes"));
        let len = (len != RECLAIM_ALL).then_some(len);
        let rest = &key[z + 9..];
        let r = Reader(rest);
        let (offset, old, seq) = match rest.len() {
            8 => (r.u64(0), true, 0),
            17 | 25 => {
                let ok = match rest[0] {
                    RECLAIM_KIND_ALL => len.is_none(),
                    RECLAIM_KIND_RANGE => len == Some(Reader(&rest[1..]).u64(8)),
                    _ => false,
                };
                if !ok {
                    return Err(bad());
                }
                let seq = if rest.len() == 25 { r.u64(17) } else { 0 };
                (Reader(&rest[1..]).u64(0), false, seq)
            }
            _ => return Err(bad()),
        };
        let offset = if len.is_none() { 0 } else { offset };
        Ok((
            Reclaim {
                policy,
                bucket,
                offset,
                len,
            },
            old,
            seq,
        ))
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&self, o: usize) -> u32 {
        u32::from_be_bytes(self.0[o..o + 4].try_into().expect("4 bytes"))
    }
    fn u64(&self, o: usize) -> u64 {
        u64::from_be_bytes(self.0[o..o + 8].try_into().expect("8 bytes"))
    }
}

/// Encodes a time so that byte order is time order.
fn enc_time(t: Time90k) -> [u8; 8] {
    ((t.0 as u64) ^ (1 << 63)).to_be_bytes()
}

fn dec_time(b: &[u8]) -> Time90k {
    Time90k((u64::from_be_bytes(b.try_into().expect("8 bytes")) ^ (1 << 63)) as i64)
}

/// Key of a bucket: `policy \0 start`.
pub fn bucket_key(policy: &str, start: Time90k) -> Vec<u8> {
    let mut k = Vec::with_capacity(policy.len() + 9);
    k.extend_from_slice(policy.as_bytes());
    k.push(0);
    k.extend_from_slice(&enc_time(start));
    k
}

fn parse_bucket_key(k: &[u8]) -> Option<(String, Time90k)> {
    let z = k.iter().position(|&b| b == 0)?;
    if k.len() != z + 9 {
        return None;
    }
    Some((
        String::from_utf8(k[..z].to_vec()).ok()?,
        dec_time(&k[z + 1..]),
    ))
}

/// Key of a segment: `policy \0 bucket camera \0 start`.
pub fn segment_key(policy: &str, bucket: Time90k, camera: &str, start: Time90k) -> Vec<u8> {
    let mut k = bucket_key(policy, bucket);
    k.extend_from_slice(camera.as_bytes());
    k.push(0);
    k.extend_from_slice(&enc_time(start));
    k
}

fn parse_segment_key(k: &[u8]) -> Option<(String, Time90k, String, Time90k)> {
    let z = k.iter().position(|&b| b == 0)?;
    let (policy, bucket) = parse_bucket_key(k.get(..z + 9)?)?;
    let rest = &k[z + 9..];
    let z2 = rest.iter().position(|&b| b == 0)?;
    if rest.len() != z2 + 9 {
        return None;
    }
    let camera = String::from_utf8(rest[..z2].to_vec()).ok()?;
    Some((policy, bucket, camera, dec_time(&rest[z2 + 1..])))
}

/// The index database.
pub struct Index {
    db: DB,
    /// Sequence number of the next reclaim record (above every stored one).
    reclaim_seq: std::sync::atomic::AtomicU64,
}

/// Pending reclaim records as stored, and the keys of records that cannot be decoded.
#[derive(Debug, Default)]
pub struct ReclaimList {
    /// (stored key, record), in key order.
    pub records: Vec<(Vec<u8>, Reclaim)>,
    /// Keys of records that cannot be decoded (with why), skipped.
    pub undecodable: Vec<(Vec<u8>, String)>,
}

/// Index changes that become visible together, atomically.
#[derive(Default)]
pub struct IndexBatch {
    batch: WriteBatch,
}

impl IndexBatch {
    /// Adds (or replaces) a segment entry.
    pub fn put_segment(&mut self, index: &Index, e: &SegmentEntry) {
        self.batch
            .put_cf(index.cf(CF_SEGMENTS), e.key(), e.encode_value());
    }

    /// Removes a segment entry.
    pub fn delete_segment(&mut self, index: &Index, e: &SegmentEntry) {
        self.batch.delete_cf(index.cf(CF_SEGMENTS), e.key());
    }

    /// Adds (or replaces) a bucket.
    pub fn put_bucket(&mut self, index: &Index, b: &BucketInfo) {
        self.batch
            .put_cf(index.cf(CF_BUCKETS), b.key(), b.encode_value());
    }

    /// Removes a bucket and, with one range delete, every segment entry in it.
    pub fn delete_bucket(&mut self, index: &Index, policy: &str, start: Time90k) {
        let from = bucket_key(policy, start);
        let to = bucket_key(policy, start.add_ticks(1));
        self.batch
            .delete_range_cf(index.cf(CF_SEGMENTS), &from, &to);
        self.batch.delete_cf(index.cf(CF_BUCKETS), from);
    }

    /// Removes every segment entry of a bucket with one range delete (the bucket record stays).
    pub fn delete_bucket_segments(&mut self, index: &Index, policy: &str, start: Time90k) {
        let from = bucket_key(policy, start);
        let to = bucket_key(policy, start.add_ticks(1));
        self.batch
            .delete_range_cf(index.cf(CF_SEGMENTS), &from, &to);
    }

    /// Records bytes to free: once this batch commits, [`Reclaim`] work survives a crash and
    /// is finished by recovery. Every record gets a key of its own (a sequence number after
    /// [`Reclaim::key`]), so a record is never overwritten by a later one.
    pub fn put_reclaim(&mut self, index: &Index, r: &Reclaim) {
        let len = r.len.unwrap_or(RECLAIM_ALL);
        self.batch.put_cf(
            index.cf(CF_RECLAIM),
            index.new_reclaim_key(r),
            len.to_be_bytes(),
        );
    }

    /// Marks one stored reclaim record done (its key from [`Index::reclaim_records`]).
    pub fn delete_reclaim_key(&mut self, index: &Index, key: &[u8]) {
        self.batch.delete_cf(index.cf(CF_RECLAIM), key);
    }

    /// Marks every stored record of this work done.
    pub fn delete_reclaim(&mut self, index: &Index, r: &Reclaim) {
        let from = r.key();
        let mut to = from.clone();
        to.extend_from_slice(&[0xff; 9]);
        self.batch.delete_range_cf(index.cf(CF_RECLAIM), &from, &to);
    }

    /// Stores a hold record.
    pub fn put_hold(&mut self, index: &Index, id: u64, json: &[u8]) {
        self.batch
            .put_cf(index.cf(CF_HOLDS), id.to_be_bytes(), json);
    }

    /// Stores a codec configuration (idempotent: the key is the content hash).
    pub fn put_codec(&mut self, index: &Index, id: u64, avcc: &[u8]) {
        self.batch
            .put_cf(index.cf(CF_CODECS), id.to_be_bytes(), avcc);
    }

    /// Appends a logbook entry (`value` = hash + JSON) and moves the head to it.
    pub fn put_logbook(&mut self, index: &Index, seq: u64, value: &[u8], hash: &[u8; 32]) {
        self.batch
            .put_cf(index.cf(CF_LOGBOOK), seq.to_be_bytes(), value);
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(hash);
        self.batch.put_cf(index.cf(CF_META), LOGBOOK_HEAD, head);
    }

    /// Puts a raw key/value into a column family (key-tag events).
    pub fn put_raw(&mut self, index: &Index, cf: &str, key: &[u8], value: &[u8]) {
        self.batch.put_cf(index.cf(cf), key, value);
    }

    /// Deletes a raw key from a column family (key-tag events).
    pub fn delete_raw(&mut self, index: &Index, cf: &str, key: &[u8]) {
        self.batch.delete_cf(index.cf(cf), key);
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

impl Index {
    /// Opens (creating if needed) the index at `path`.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        let cfs = cf_descriptors();
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let index = Index {
            db,
            reclaim_seq: Default::default(),
        };
        index.seed_reclaim_seq()?;
        index.upgrade_reclaim_keys()?;
        match index.db.get_cf(index.cf(CF_META), b"format")? {
            None => index
                .db
                .put_cf(index.cf(CF_META), b"format", INDEX_FORMAT)?,
            Some(v) if v == INDEX_FORMAT => {}
            Some(v) => {
                return Err(IndexError::Corrupt(format!(
                    "index format {:?} is not the supported {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(INDEX_FORMAT)
                )))
            }
        }
        Ok(index)
    }

    /// Opens an existing index read-only (works while a daemon has it open), for checks.
    pub fn open_read_only(path: &Path) -> Result<Self, IndexError> {
        let mut opts = Options::default();
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        let cfs = cf_descriptors();
        let db = DB::open_cf_descriptors_read_only(&opts, path, cfs, false)?;
        Ok(Index {
            db,
            reclaim_seq: Default::default(),
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Commits a batch atomically. With `sync`, the RocksDB WAL is synced before returning.
    pub fn commit(&self, batch: IndexBatch, sync: bool) -> Result<(), IndexError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch.batch, &wo)?;
        Ok(())
    }

    /// Writes every column family's memtable to SST files and syncs the write-ahead log (the
    /// daemon's stop): the next open replays no log.
    pub fn flush(&self) -> Result<(), IndexError> {
        let cfs: Vec<_> = ALL_CFS
            .into_iter()
            .filter_map(|name| self.db.cf_handle(name))
            .collect();
        self.db.flush_wal(true)?;
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    /// The segment entry with this key, if any.
    pub fn segment(&self, key: &[u8]) -> Result<Option<SegmentEntry>, IndexError> {
        match self.db.get_pinned_cf(self.cf(CF_SEGMENTS), key)? {
            Some(v) => Ok(Some(SegmentEntry::decode(key, &v)?)),
            None => Ok(None),
        }
    }

    /// A bucket's record, if indexed.
    pub fn bucket(&self, policy: &str, start: Time90k) -> Result<Option<BucketInfo>, IndexError> {
        let key = bucket_key(policy, start);
        match self.db.get_pinned_cf(self.cf(CF_BUCKETS), &key)? {
            Some(v) => Ok(Some(BucketInfo::decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// All buckets, of one policy or of all, in (policy, start) order.
    pub fn buckets(&self, policy: Option<&str>) -> Result<Vec<BucketInfo>, IndexError> {
        let prefix = policy.map(|p| {
            let mut k = p.as_bytes().to_vec();
            k.push(0);
            k
        });
        let mode = match &prefix {
            Some(p) => IteratorMode::From(p, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_BUCKETS), mode) {
            let (k, v) = item?;
            if let Some(p) = &prefix {
                if !k.starts_with(p) {
                    break;
                }
            }
            out.push(BucketInfo::decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Every segment entry of one bucket, in (camera, start) order.
    pub fn bucket_segments(
        &self,
        policy: &str,
        start: Time90k,
    ) -> Result<Vec<SegmentEntry>, IndexError> {
        let prefix = bucket_key(policy, start);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_SEGMENTS),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(SegmentEntry::decode(&k, &v)?);
        }
        Ok(out)
    }

    /// The segments of `camera` that overlap `[from, to)`, in time order.
    ///
    /// One seek per bucket whose data may overlap the range; other cameras' entries are never read.
    pub fn camera_segments(
        &self,
        camera: &str,
        from: Time90k,
        to: Time90k,
    ) -> Result<Vec<SegmentEntry>, IndexError> {
        let mut out = Vec::new();
        for b in self.buckets(None)? {
            if b.segments == 0 || b.first_start >= to || b.last_end <= from {
                continue;
            }
            out.extend(self.bucket_camera_segments(&b.policy, b.start, camera, from, to)?);
        }
        out.sort_by_key(|e| e.start);
        Ok(out)
    }

    /// Every segment entry, in key order (for verification and tests).
    pub fn all_segments(&self) -> Result<Vec<SegmentEntry>, IndexError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_SEGMENTS), IteratorMode::Start)
        {
            let (k, v) = item?;
            out.push(SegmentEntry::decode(&k, &v)?);
        }
        Ok(out)
    }

    /// The last logbook entry (seq, value), if any.
    pub fn logbook_last(&self) -> Result<Option<(u64, Vec<u8>)>, IndexError> {
        match self
            .db
            .iterator_cf(self.cf(CF_LOGBOOK), IteratorMode::End)
            .next()
        {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((decode_seq(&k)?, v.to_vec())))
            }
        }
    }

    /// The logbook head record (seq, hash) written with every append.
    pub fn logbook_head(&self) -> Result<Option<(u64, [u8; 32])>, IndexError> {
        match self.db.get_cf(self.cf(CF_META), LOGBOOK_HEAD)? {
            None => Ok(None),
            Some(v) if v.len() == 40 => Ok(Some((
                u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
                v[8..].try_into().expect("32 bytes"),
            ))),
            Some(_) => Err(IndexError::Corrupt("logbook head".into())),
        }
    }

    /// One logbook entry's value.
    pub fn logbook_get(&self, seq: u64) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(self.db.get_cf(self.cf(CF_LOGBOOK), seq.to_be_bytes())?)
    }

    /// Logbook entries from `seq` on, in order.
    pub fn logbook_entries(
        &self,
        seq: u64,
    ) -> impl Iterator<Item = Result<(u64, Box<[u8]>), IndexError>> + '_ {
        let start = seq.to_be_bytes();
        self.db
            .iterator_cf(
                self.cf(CF_LOGBOOK),
                IteratorMode::From(&start, Direction::Forward),
            )
            .map(|item| {
                let (k, v) = item?;
                Ok((decode_seq(&k)?, v))
            })
    }

    /// Raw entries of a column family with keys in `[from, to)`, in key order.
    pub fn range_raw<'a>(
        &'a self,
        cf: &str,
        from: &[u8],
        to: &'a [u8],
    ) -> impl Iterator<Item = Result<RawEntry, IndexError>> + 'a {
        self.db
            .iterator_cf(self.cf(cf), IteratorMode::From(from, Direction::Forward))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| &**k < to))
            .map(|item| item.map_err(IndexError::from))
    }

    /// A raw value of a column family.
    pub fn get_raw(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// A codec configuration by id.
    pub fn codec(&self, id: u64) -> Result<Option<Bytes>, IndexError> {
        Ok(self
            .db
            .get_cf(self.cf(CF_CODECS), id.to_be_bytes())?
            .map(Bytes::from))
    }

    /// Removes every segment, bucket and codec entry (before a full reindex; pending reclaims
    /// must have been run first, holds are kept).
    pub fn clear_storage_entries(&self) -> Result<(), IndexError> {
        let mut batch = WriteBatch::default();
        for name in [CF_SEGMENTS, CF_BUCKETS, CF_CODECS] {
            let cf = self.cf(name);
            let first = self
                .db
                .iterator_cf(cf, IteratorMode::Start)
                .next()
                .transpose()?;
            let last = self
                .db
                .iterator_cf(cf, IteratorMode::End)
                .next()
                .transpose()?;
            if let (Some((first, _)), Some((last, _))) = (first, last) {
                let mut end = last.to_vec();
                end.push(0);
                batch.delete_range_cf(cf, &first[..], &end[..]);
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// The segments of one camera in one bucket that overlap `[from, to)`, in time order.
    pub fn bucket_camera_segments(
        &self,
        policy: &str,
        bucket: Time90k,
        camera: &str,
        from: Time90k,
        to: Time90k,
    ) -> Result<Vec<SegmentEntry>, IndexError> {
        let mut prefix = bucket_key(policy, bucket);
        prefix.extend_from_slice(camera.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_SEGMENTS));
        // The segment that starts at or before `from` may reach into the range.
        let mut probe = prefix.clone();
        probe.extend_from_slice(&enc_time(from));
        it.seek_for_prev(&probe);
        if !it.valid() || !it.key().is_some_and(|k| k.starts_with(&prefix)) {
            it.seek(&prefix);
        }
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(&prefix) {
                break;
            }
            let e = SegmentEntry::decode(k, v)?;
            if e.start >= to {
                break;
            }
            if e.end() > from {
                out.push(e);
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Every pending reclaim record (records that cannot be decoded are skipped: see
    /// [`Index::reclaim_records`]).
    pub fn reclaims(&self) -> Result<Vec<Reclaim>, IndexError> {
        Ok(self
            .reclaim_records()?
            .records
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Every pending reclaim record with its stored key. One record that cannot be decoded
    /// never hides the others: its key is listed in `undecodable`.
    pub fn reclaim_records(&self) -> Result<ReclaimList, IndexError> {
        let mut out = ReclaimList::default();
        for item in self
            .db
            .iterator_cf(self.cf(CF_RECLAIM), IteratorMode::Start)
        {
            let (k, v) = item?;
            match Reclaim::decode_any(&k, &v) {
                Ok((r, _)) => out.records.push((k.to_vec(), r)),
                Err(e) => out.undecodable.push((k.to_vec(), e.to_string())),
            }
        }
        Ok(out)
    }

    /// A stored key for a new reclaim record: [`Reclaim::key`] and a sequence number above
    /// every record stored when the index was opened and every key given out since.
    fn new_reclaim_key(&self, r: &Reclaim) -> Vec<u8> {
        let seq = self
            .reclaim_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut k = r.key();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// Starts reclaim sequence numbers above the highest stored one.
    fn seed_reclaim_seq(&self) -> Result<(), IndexError> {
        let mut max = 0;
        for item in self
            .db
            .iterator_cf(self.cf(CF_RECLAIM), IteratorMode::Start)
        {
            let (k, v) = item?;
            if let Ok((_, _, seq)) = Reclaim::decode_seq(&k, &v) {
                max = max.max(seq);
            }
        }
        self.reclaim_seq
            .store(max + 1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Rewrites reclaim records of the old key format (before issue 9: `bucket offset`) into
    /// the new one. Under the old format an erasure's range at offset 0 could overwrite an
    /// expired bucket's whole-bucket record; so every expired bucket that had an old record
    /// also gets its whole-bucket record back (freeing what no entry references in an expired
    /// bucket is always right).
    fn upgrade_reclaim_keys(&self) -> Result<(), IndexError> {
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(CF_RECLAIM), IteratorMode::Start)
        {
            let (k, v) = item?;
            let (r, old) = match Reclaim::decode_any(&k, &v) {
                Ok(x) => x,
                // Left for reclaim, which counts and reports it; it never stops the open.
                Err(e) => {
                    tracing::error!(key = %hex::encode(&k), error = %e,
                        "reclaim record cannot be decoded: skipped");
                    continue;
                }
            };
            if !old {
                continue;
            }
            batch.delete_cf(self.cf(CF_RECLAIM), &k);
            batch.put_cf(
                self.cf(CF_RECLAIM),
                self.new_reclaim_key(&r),
                r.len.unwrap_or(RECLAIM_ALL).to_be_bytes(),
            );
            if r.len.is_some() && self.bucket(&r.policy, r.bucket)?.is_some_and(|b| b.expired) {
                let all = Reclaim {
                    len: None,
                    offset: 0,
                    ..r.clone()
                };
                batch.put_cf(
                    self.cf(CF_RECLAIM),
                    self.new_reclaim_key(&all),
                    RECLAIM_ALL.to_be_bytes(),
                );
            }
            n += 1;
        }
        if n > 0 {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.db.write_opt(batch, &wo)?;
            tracing::info!(
                records = n,
                "reclaim records rewritten in the new key format"
            );
        }
        Ok(())
    }

    /// Every stored hold record (JSON), by id.
    pub fn holds(&self) -> Result<Vec<(u64, Vec<u8>)>, IndexError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_HOLDS), IteratorMode::Start) {
            let (k, v) = item?;
            let id = u64::from_be_bytes(
                k[..]
                    .try_into()
                    .map_err(|_| IndexError::Corrupt(format!("hold key {}", hex::encode(&k))))?,
            );
            out.push((id, v.to_vec()));
        }
        Ok(out)
    }

    /// The underlying database, for stages that keep their own column families.
    pub fn db(&self) -> &DB {
        &self.db
    }
}

fn decode_seq(k: &[u8]) -> Result<u64, IndexError> {
    k.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| IndexError::Corrupt("logbook key".into()))
}

/// Every column family, uncompressed (nothing stored compresses well enough to pay).
fn cf_descriptors() -> impl Iterator<Item = ColumnFamilyDescriptor> {
    ALL_CFS.iter().map(|name| {
        let mut o = Options::default();
        o.set_compression_type(rocksdb::DBCompressionType::None);
        ColumnFamilyDescriptor::new(*name, o)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(policy: &str, bucket: i64, camera: &str, start: i64, offset: u64) -> SegmentEntry {
        SegmentEntry {
            policy: policy.into(),
            bucket: Time90k(bucket),
            camera: camera.into(),
            start: Time90k(start),
            offset,
            header_len: 100,
            payload_len: 1000,
            duration: 180_000,
            frame_count: 50,
            codec_id: 7,
            payload_crc: 0xdead_beef,
        }
    }

    #[test]
    fn keys_round_trip_and_sort_by_time() {
        let k1 = segment_key("p", Time90k(-5), "cam-1", Time90k(-1));
        let k2 = segment_key("p", Time90k(-5), "cam-1", Time90k(1));
        assert!(k1 < k2, "negative times sort first");
        assert_eq!(
            parse_segment_key(&k1),
            Some(("p".into(), Time90k(-5), "cam-1".into(), Time90k(-1)))
        );
        // A camera whose id is a prefix of another never mixes with it.
        let a = segment_key("p", Time90k(0), "cam", Time90k(i64::MAX));
        let b = segment_key("p", Time90k(0), "cam-2", Time90k(i64::MIN));
        assert!(a < b);
        assert!(parse_segment_key(b"garbage").is_none());
    }

    #[test]
    fn values_round_trip() {
        let e = entry("four-weeks", 3600, "noord", 3700, 12345);
        let got = SegmentEntry::decode(&e.key(), &e.encode_value()).unwrap();
        assert_eq!(got, e);
        let mut b = BucketInfo::empty("four-weeks", Time90k(3600), 3600);
        b.add(&e);
        assert_eq!(BucketInfo::decode(&b.key(), &b.encode_value()).unwrap(), b);
        assert_eq!(b.committed_len, 12345 + 1100);
        b.retention_secs = Some(40);
        assert_eq!(BucketInfo::decode(&b.key(), &b.encode_value()).unwrap(), b);
        // A record of the first format (no retention) reads as "unknown".
        let v1 = {
            let mut v = b.encode_value();
            v.truncate(BUCKET_VALUE_V1_LEN);
            v[0] = 1;
            v
        };
        let old = BucketInfo::decode(&b.key(), &v1).unwrap();
        assert_eq!(old.retention_secs, None);
        assert_eq!(old.committed_len, b.committed_len);
        assert!(BucketInfo::decode(&b.key(), &v1[..37]).is_err());
    }

    #[test]
    fn reclaim_keys_of_different_work_never_collide_and_old_keys_are_upgraded() {
        let all = Reclaim {
            policy: "p".into(),
            bucket: Time90k(3600),
            offset: 0,
            len: None,
        };
        let range0 = Reclaim {
            len: Some(1100),
            ..all.clone()
        };
        let range0b = Reclaim {
            len: Some(2200),
            ..all.clone()
        };
        assert_ne!(all.key(), range0.key());
        assert_ne!(range0.key(), range0b.key());
        for r in [&all, &range0, &range0b] {
            let v = r.len.unwrap_or(RECLAIM_ALL).to_be_bytes();
            assert_eq!(
                Reclaim::decode_any(&r.key(), &v).unwrap(),
                (r.clone(), false)
            );
        }
        // A key whose kind byte disagrees with its value is corrupt, not guessed.
        assert!(Reclaim::decode_any(&all.key(), &1100u64.to_be_bytes()).is_err());

        // Old format (`bucket offset`): a range at offset 0 that overwrote an expired bucket's
        // whole-bucket record. Opening the index rewrites it and brings the whole record back.
        let dir = tempfile::tempdir().unwrap();
        {
            let index = Index::open(dir.path()).unwrap();
            let mut b = BucketInfo::empty("p", Time90k(3600), 3600);
            b.expired = true;
            let mut batch = IndexBatch::default();
            batch.put_bucket(&index, &b);
            let mut old = bucket_key("p", Time90k(3600));
            old.extend_from_slice(&0u64.to_be_bytes());
            batch.put_raw(&index, CF_RECLAIM, &old, &1100u64.to_be_bytes());
            index.commit(batch, true).unwrap();
            let got = index.reclaims().unwrap();
            assert_eq!(got, vec![range0.clone()], "old keys are read");
        }
        let index = Index::open(dir.path()).unwrap();
        let mut got = index.reclaims().unwrap();
        got.sort_by_key(|r| r.len);
        assert_eq!(got, vec![all.clone(), range0.clone()]);
        let raw: Vec<_> = index
            .db
            .iterator_cf(index.cf(CF_RECLAIM), IteratorMode::Start)
            .map(|i| i.unwrap().0)
            .collect();
        assert!(raw.iter().all(|k| k.len() == "p".len() + 9 + 25), "{raw:?}");
    }

    #[test]
    fn the_same_work_recorded_twice_is_two_records_and_a_bad_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let all = Reclaim {
            policy: "p".into(),
            bucket: Time90k(3600),
            offset: 0,
            len: None,
        };
        {
            let index = Index::open(dir.path()).unwrap();
            let mut batch = IndexBatch::default();
            batch.put_reclaim(&index, &all);
            index.commit(batch, true).unwrap();
            // Reclaim reads the record; meanwhile the sweeper records the same work again.
            let first = index.reclaim_records().unwrap().records;
            assert_eq!(first.len(), 1);
            let mut batch = IndexBatch::default();
            batch.put_reclaim(&index, &all);
            index.commit(batch, true).unwrap();
            // Reclaim finishes the record it read: the later one stays.
            let mut batch = IndexBatch::default();
            batch.delete_reclaim_key(&index, &first[0].0);
            index.commit(batch, true).unwrap();
            let left = index.reclaim_records().unwrap().records;
            assert_eq!(left.len(), 1);
            assert_ne!(left[0].0, first[0].0);
            assert_eq!(left[0].1, all);
            // A record that cannot be decoded is listed apart; the others are still read.
            let mut batch = IndexBatch::default();
            batch.put_raw(&index, CF_RECLAIM, b"p\0garbage", b"x");
            index.commit(batch, true).unwrap();
            let list = index.reclaim_records().unwrap();
            assert_eq!(list.records.len(), 1);
            assert_eq!(list.undecodable.len(), 1);
            assert_eq!(index.reclaims().unwrap(), vec![all.clone()]);
        }
        // Opening never fails on the bad record, and new keys stay above the stored ones.
        let index = Index::open(dir.path()).unwrap();
        let before = index.reclaim_records().unwrap().records;
        let mut batch = IndexBatch::default();
        batch.put_reclaim(&index, &all);
        index.commit(batch, true).unwrap();
        let after = index.reclaim_records().unwrap().records;
        assert_eq!(after.len(), 2);
        assert!(after.iter().all(|(k, _)| k >= &before[0].0));
        // `delete_reclaim` finishes every record of the work.
        let mut batch = IndexBatch::default();
        batch.delete_reclaim(&index, &all);
        index.commit(batch, true).unwrap();
        assert!(index.reclaim_records().unwrap().records.is_empty());
    }

    #[test]
    fn camera_lookup_finds_overlaps_without_other_cameras() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let mut batch = IndexBatch::default();
        let seg = 180_000; // 2 s
        for bucket in 0..3i64 {
            let bstart = bucket * 3600 * 90_000;
            let mut info = BucketInfo::empty("p", Time90k(bstart), 3600);
            for cam in ["a", "a-b", "b"] {
                for i in 0..1800i64 {
                    let e = entry("p", bstart, cam, bstart + i * seg, i as u64 * 1100);
                    batch.put_segment(&index, &e);
                    info.add(&e);
                }
            }
            batch.put_bucket(&index, &info);
        }
        index.commit(batch, false).unwrap();
        // A range starting mid-segment picks up the segment that reaches into it.
        let got = index
            .camera_segments("a", Time90k(seg + 1), Time90k(3 * seg))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| e.start.0).collect::<Vec<_>>(),
            vec![seg, 2 * seg]
        );
        assert!(got.iter().all(|e| e.camera == "a"));
        // Across a bucket boundary.
        let edge = 3600 * 90_000;
        let got = index
            .camera_segments("a-b", Time90k(edge - seg), Time90k(edge + seg))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| e.start.0).collect::<Vec<_>>(),
            vec![edge - seg, edge]
        );
        assert!(index
            .camera_segments("c", Time90k(0), Time90k(i64::MAX))
            .unwrap()
            .is_empty());
        assert_eq!(
            index
                .camera_segments("b", Time90k(0), Time90k(i64::MAX))
                .unwrap()
                .len(),
            5400
        );

        // Deleting a bucket removes its segments with one range delete, and nothing else.
        let mut batch = IndexBatch::default();
        batch.delete_bucket(&index, "p", Time90k(edge));
        index.commit(batch, false).unwrap();
        assert_eq!(index.buckets(Some("p")).unwrap().len(), 2);
        assert_eq!(
            index
                .camera_segments("b", Time90k(0), Time90k(i64::MAX))
                .unwrap()
                .len(),
            3600
        );
        assert!(index
            .bucket_segments("p", Time90k(edge))
            .unwrap()
            .is_empty());
        assert_eq!(index.bucket_segments("p", Time90k(0)).unwrap().len(), 5400);
    }
}

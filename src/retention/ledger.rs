//! The pinned-bytes ledger: `holdfast_pinned_bytes` kept per bucket, so that a sweep or a
//! `/metrics` scrape does not walk every held segment.
//!
//! The figure is the sum, over index entries, of the record length of each entry that an active
//! hold pins (its time range overlaps a pin of its camera). It is cached per bucket together with
//! what it was computed from: the bucket record's `segments`, `committed_len` and `expired`
//! fields, and the pins per camera. [`Ledger::refresh`] reads the bucket list (one record per
//! bucket, never the segments) and recounts only
//!
//! - buckets it has not seen yet;
//! - buckets whose record changed: the writer appended to them (in practice only the bucket being
//!   written), or the sweeper expired them;
//! - buckets that meet a time range where some camera's pins changed (a hold placed, released,
//!   extended, or lapsed by itself), and only for as long as it takes to recount those;
//! - buckets marked by [`Ledger::invalidate`] after entries were deleted (erasures, released
//!   pinned entries of expired buckets).
//!
//! Recounting a bucket costs one seek per (pinned camera, pin range) that meets the bucket, plus
//! the pinned entries found. So a scrape or a sweep costs O(buckets + pinned entries of the
//! buckets that changed), independent of how much older footage a hold keeps; the full walk
//! ([`pinned_bytes_full`], the computation used before) stays callable as the reference the
//! tests and `benches/sweep.rs` compare against.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use super::holds::HoldSnapshot;
use super::intervals::{Interval, IntervalSet};
use crate::store::index::{BucketInfo, Index, IndexError};
use crate::time::Time90k;

/// What a bucket's cached figure was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Basis {
    segments: u64,
    committed_len: u64,
    expired: bool,
}

impl Basis {
    fn of(b: &BucketInfo) -> Self {
        Basis {
            segments: b.segments,
            committed_len: b.committed_len,
            expired: b.expired,
        }
    }
}

#[derive(Debug)]
struct Cached {
    basis: Basis,
    pinned: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// The pins per camera the cached figures were computed against.
    pins: HashMap<String, IntervalSet>,
    buckets: HashMap<(String, Time90k), Cached>,
    /// Buckets to recount at the next refresh.
    invalid: HashSet<(String, Time90k)>,
    /// Policies the gauges have shown (so that one whose buckets are all gone drops to 0).
    shown: BTreeSet<String>,
}

/// Pinned bytes, kept per bucket (see the module doc).
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

/// What one refresh found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    /// Bytes of index entries pinned by active holds.
    pub pinned_bytes: u64,
    /// Buckets recounted by this refresh (the rest came from the cache).
    pub buckets_recounted: u64,
}

impl Ledger {
    /// An empty ledger: the first refresh counts every bucket that meets a pin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks a bucket to be recounted at the next refresh (after entries of it were deleted).
    pub fn invalidate(&self, policy: &str, start: Time90k) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.invalid.insert((policy.to_owned(), start));
    }

    /// Remembers the policies the gauges show now; returns those shown before and not now.
    pub fn note_policies<'a>(&self, now: impl Iterator<Item = &'a String>) -> Vec<String> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now: BTreeSet<String> = now.cloned().collect();
        let gone = g.shown.difference(&now).cloned().collect();
        g.shown.extend(now);
        gone
    }

    /// Brings the figures up to date with `buckets` (the index's bucket list), the index and the
    /// pins of `snap` at `now`.
    pub fn refresh(
        &self,
        index: &Index,
        buckets: &[BucketInfo],
        snap: &HoldSnapshot,
        now: Time90k,
    ) -> Result<LedgerTotals, IndexError> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let pins: HashMap<String, IntervalSet> = snap
            .pinned_cameras(now)
            .into_iter()
            .map(|c| (c.to_owned(), snap.pins(c, now)))
            .collect();
        // Where pins changed, of any camera: the buckets meeting these ranges are recounted.
        let mut changed = IntervalSet::new();
        let empty = IntervalSet::new();
        for cam in pins.keys().chain(g.pins.keys()) {
            let new = pins.get(cam).unwrap_or(&empty);
            let old = g.pins.get(cam).unwrap_or(&empty);
            if new != old {
                changed = changed.union(&new.difference(old).union(&old.difference(new)));
            }
        }
        let mut totals = LedgerTotals::default();
        let mut seen = HashSet::with_capacity(buckets.len());
        let invalid = std::mem::take(&mut g.invalid);
        for b in buckets {
            let key = (b.policy.clone(), b.start);
            let basis = Basis::of(b);
            let span = span(b);
            let fresh = g.buckets.get(&key).is_some_and(|c| c.basis == basis)
                && !invalid.contains(&key)
                && !changed.overlaps(&span);
            let pinned = if fresh {
                g.buckets[&key].pinned
            } else {
                totals.buckets_recounted += 1;
                match count_bucket(index, b, &pins) {
                    Ok(pinned) => {
                        g.buckets.insert(key.clone(), Cached { basis, pinned });
                        pinned
                    }
                    Err(e) => {
                        // One unreadable bucket does not take every gauge down: it counts as
                        // 0 now and is recounted at the next refresh.
                        tracing::warn!(policy = %b.policy, bucket = %b.start, error = %e,
                            "pinned bytes of a bucket could not be counted");
                        g.buckets.remove(&key);
                        g.invalid.insert(key.clone());
                        0
                    }
                }
            };
            totals.pinned_bytes += pinned;
            seen.insert(key);
        }
        g.buckets.retain(|k, _| seen.contains(k));
        g.pins = pins;
        Ok(totals)
    }
}

/// The time span a bucket's data covers.
fn span(b: &BucketInfo) -> Interval {
    let oldest = if b.segments == 0 {
        b.start
    } else {
        b.first_start
    };
    Interval::new(oldest.0, b.last_end.0.max(oldest.0 + 1))
}

/// Pinned bytes of one bucket: one seek per (pinned camera, pin range) meeting its span.
fn count_bucket(
    index: &Index,
    b: &BucketInfo,
    pins: &HashMap<String, IntervalSet>,
) -> Result<u64, IndexError> {
    if b.segments == 0 {
        return Ok(0);
    }
    let span = span(b);
    let mut total = 0;
    for (camera, set) in pins {
        let mut seen = HashSet::new();
        for i in set.intervals().iter().filter(|i| i.overlaps(&span)) {
            for e in index.bucket_camera_segments(
                &b.policy,
                b.start,
                camera,
                Time90k(i.from),
                Time90k(i.to),
            )? {
                if seen.insert(e.start) {
                    total += e.record_len();
                }
            }
        }
    }
    Ok(total)
}

/// Pinned bytes computed the way every sweep and scrape did before the ledger: every segment
/// of every pinned camera in every pinned range, read from the index. O(held segments). Kept as
/// the reference for tests and the baseline of `benches/sweep.rs`.
#[doc(hidden)]
pub fn pinned_bytes_full(
    index: &Index,
    snap: &HoldSnapshot,
    now: Time90k,
) -> Result<u64, IndexError> {
    let mut pinned = 0u64;
    for camera in snap.pinned_cameras(now) {
        let mut seen = BTreeMap::new();
        for i in snap.pins(camera, now).intervals() {
            for e in index.camera_segments(camera, Time90k(i.from), Time90k(i.to))? {
                if seen.insert(e.key(), ()).is_none() {
                    pinned += e.record_len();
                }
            }
        }
    }
    Ok(pinned)
}

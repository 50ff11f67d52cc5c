//! Erasure requests: a camera's range deleted before its retention ends (a data subject's right
//! to erasure, a recording made by mistake).
//!
//! The whole segments that overlap the range go (a segment is the smallest unit stored; at most
//! one segment at each edge reaches outside the range). Refused, with the ids of the holds, when
//! an active hold pins any part of the range. The check and the index commit happen under the
//! hold gate, so a hold placed concurrently either is seen (409) or comes after the deletion.
//! Bytes are freed by hole punching through the same reclaim records the sweeper uses.

use super::holds::Holds;
use super::intervals::Interval;
use crate::store::index::{IndexBatch, Reclaim};
use crate::store::{Store, StoreError};
use crate::time::Time90k;

/// What an erasure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Erased {
    /// Segments deleted.
    pub segments: u64,
    /// Bytes of those records.
    pub record_bytes: u64,
    /// Allocated bytes given back to the file system.
    pub bytes_freed: u64,
}

/// Why an erasure was refused.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// Active holds cover part of the range.
    #[error("the range is held by hold(s) {0:?}")]
    Held(Vec<u64>),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Deletes the segments of `camera` that overlap `[from, to)`, unless a hold covers any of it.
pub fn erase(
    store: &Store,
    holds: &Holds,
    camera: &str,
    from: Time90k,
    to: Time90k,
    now: Time90k,
) -> Result<Erased, ErasureError> {
    let range = Interval::new(from.0, to.0);
    let index = store.index();
    let _gate = holds.gate();
    let held = holds.snapshot().holds_covering(camera, range, now);
    if !held.is_empty() {
        return Err(ErasureError::Held(held));
    }
    let entries = index
        .camera_segments(camera, from, to)
        .map_err(StoreError::from)?;
    let mut out = Erased::default();
    if entries.is_empty() {
        return Ok(out);
    }
    // A segment reaching outside the range may overlap a hold there: keep the rule simple and
    // strict, a held byte is never erased.
    for e in &entries {
        let held =
            holds
                .snapshot()
                .holds_covering(camera, Interval::new(e.start.0, e.end().0), now);
        if !held.is_empty() {
            return Err(ErasureError::Held(held));
        }
    }
    let mut batch = IndexBatch::default();
    for e in &entries {
        batch.delete_segment(index, e);
        batch.put_reclaim(
            index,
            &Reclaim {
                policy: e.policy.clone(),
                bucket: e.bucket,
                offset: e.offset,
                len: Some(e.record_len()),
            },
        );
        out.segments += 1;
        out.record_bytes += e.record_len();
    }
    index.commit(batch, true).map_err(StoreError::from)?;
    drop(_gate);
    for e in &entries {
        holds.ledger().invalidate(&e.policy, e.bucket);
    }
    out.bytes_freed = store.reclaim()?.bytes_freed;
    tracing::info!(camera, %from, %to, segments = out.segments, "erased");
    Ok(out)
}

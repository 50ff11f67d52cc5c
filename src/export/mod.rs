//! Export: a camera's range as one standard MP4, streamed straight from the segment records.
//!
//! [`plan`] reads the index and the segment headers (frame tables) only: which frames go in,
//! from the last keyframe at or before `from` up to the last frame that starts before `to`. A
//! gap in the recording is skipped (the clip's timeline is recorded time; the JSON of
//! `recordings` tells where the gaps are), and a codec change switches the sample entry (see
//! [`mp4`]). [`stream`] then sends the MP4 header and, per segment, reads the record, checks its
//! payload CRC and sends the selected bytes: memory stays at one segment, whatever the clip's
//! length. A record that fails its check ends the stream early (the client sees a short body),
//! so corrupt footage is never passed off as whole.

pub mod mp4;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::store::index::SegmentEntry;
use crate::store::{Store, StoreError};
use crate::time::Time90k;

/// One sample of the clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Bytes.
    pub size: u32,
    /// Duration in 90 kHz ticks.
    pub duration: u32,
    /// Keyframe.
    pub key: bool,
}

/// One chunk: the selected frames of one stored segment, contiguous in its record.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The segment.
    pub entry: SegmentEntry,
    /// Offset of the first selected byte within the segment's payload.
    pub payload_offset: u64,
    /// Selected bytes.
    pub len: u64,
    /// Number of samples.
    pub samples: u32,
    /// Index into [`Plan::codecs`].
    pub codec_index: u32,
}

/// What an export will contain.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Camera.
    pub camera: String,
    /// Wall time of the first frame (the keyframe at or before the requested start).
    pub start: Time90k,
    /// Wall time where the last frame ends.
    pub end: Time90k,
    /// Total duration of the samples, in ticks.
    pub duration: u64,
    /// The samples, in order.
    pub samples: Vec<Sample>,
    /// The chunks, in order.
    pub chunks: Vec<Chunk>,
    /// Codec configs in order of first use: (id, avcC bytes).
    pub codecs: Vec<(u64, Bytes)>,
}

impl Plan {
    /// Payload bytes (the `mdat` body).
    pub fn payload_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len).sum()
    }

    /// Whether the plan has nothing in it.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Works out what an export of `[from, to)` contains. Empty when nothing is recorded there.
pub fn plan(store: &Store, camera: &str, from: Time90k, to: Time90k) -> Result<Plan, StoreError> {
    let entries = store.index().camera_segments(camera, from, to)?;
    let mut plan = Plan {
        camera: camera.to_owned(),
        ..Default::default()
    };
    let mut codec_index: BTreeMap<u64, u32> = BTreeMap::new();
    for e in entries {
        let header = store.read_segment_header(&e)?;
        // Frame start times.
        let mut t = header.start;
        let mut times = Vec::with_capacity(header.frames.len());
        for f in &header.frames {
            times.push(t);
            t = t.add_ticks(i64::from(f.duration));
        }
        // First frame: in the first segment, the last keyframe at or before `from`.
        let first = if plan.samples.is_empty() {
            let at_or_before = header
                .frames
                .iter()
                .zip(&times)
                .enumerate()
                .filter(|(_, (f, t))| f.key && **t <= from)
                .map(|(i, _)| i)
                .next_back();
            match at_or_before {
                Some(i) => i,
                // The range starts before this segment: it begins at its first keyframe.
                None => match header.frames.iter().position(|f| f.key) {
                    Some(i) => i,
                    None => continue,
                },
            }
        } else {
            0
        };
        let last = times.iter().rposition(|t| *t < to);
        let Some(last) = last.filter(|l| *l >= first) else {
            continue;
        };
        let frames = &header.frames[first..=last];
        let payload_offset: u64 = header.frames[..first]
            .iter()
            .map(|f| u64::from(f.size))
            .sum();
        let len: u64 = frames.iter().map(|f| u64::from(f.size)).sum();
        let next = codec_index.len() as u32;
        let ci = *codec_index.entry(header.codec_id).or_insert_with(|| {
            plan.codecs
                .push((header.codec_id, header.codec_config.clone()));
            next
        });
        if plan.samples.is_empty() {
            plan.start = times[first];
        }
        plan.end = times[last].add_ticks(i64::from(frames.last().expect("non-empty").duration));
        plan.samples.extend(frames.iter().map(|f| Sample {
            size: f.size,
            duration: f.duration,
            key: f.key,
        }));
        plan.duration += frames.iter().map(|f| u64::from(f.duration)).sum::<u64>();
        plan.chunks.push(Chunk {
            entry: e,
            payload_offset,
            len,
            samples: frames.len() as u32,
            codec_index: ci,
        });
    }
    Ok(plan)
}

/// Sends the payload of every chunk of `plan`, in order, to `send`, one verified segment at a
/// time. Stops at the first error (including `send` reporting that the client went away).
pub fn send_payloads(
    store: &Arc<Store>,
    plan: &Plan,
    mut send: impl FnMut(Bytes) -> bool,
) -> Result<(), StoreError> {
    for c in &plan.chunks {
        let (_, payload) = store.read_segment(&c.entry)?;
        let payload = Bytes::from(payload);
        let start = c.payload_offset as usize;
        if !send(payload.slice(start..start + c.len as usize)) {
            return Ok(());
        }
    }
    Ok(())
}

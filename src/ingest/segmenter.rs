//! The segmenter: cuts one camera's frames into segments for the writer.
//!
//! Rules (issue 3, design.md):
//! - A segment starts at a keyframe and ends at the first keyframe at least `segment_target`
//!   after its start; that keyframe starts the next segment. Frames before the first keyframe of
//!   a session are dropped (they cannot be decoded).
//! - A change of SPS/PPS (a new codec config) ends the segment; the next one starts at the next
//!   keyframe with the new config.
//! - A segment never grows past [`MAX_SEGMENT`] (a camera that stops sending keyframes): it is
//!   closed and frames are dropped until the next keyframe.
//! - A frame's duration is the wall-time distance to the next frame, so a frame is held back
//!   until its successor arrives; at the end of a stream the last frame gets the duration of the
//!   one before it. Segments of one camera never overlap, and a gap (reconnect, dropped frames)
//!   is simply the space between one segment's end and the next one's start.
//!
//! Wall times come from [`Clock`]; this module only groups frames.

use std::sync::Arc;

use bytes::Bytes;

use super::clock::{Clock, Timing};
use crate::store::segment::{CodecConfig, Frame, Segment};
use crate::time::{Time90k, TICKS_PER_SEC};

/// Longest segment; past it the segment is closed even without a keyframe.
pub const MAX_SEGMENT: i64 = 60 * TICKS_PER_SEC;
/// Most payload bytes in one segment.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// Duration given to a frame with no successor when nothing better is known (25 fps).
const DEFAULT_FRAME_DURATION: u32 = 3600;

/// One frame as it comes from the RTSP session.
#[derive(Debug, Clone)]
pub struct FrameIn {
    /// RTP timestamp, extended to 64 bits (90 kHz).
    pub rtp: i64,
    /// Wall-clock time it arrived.
    pub arrival: Time90k,
    /// Keyframe (IDR).
    pub key: bool,
    /// AVC length-prefixed sample.
    pub data: Bytes,
}

/// Counts of what the segmenter did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SegmenterStats {
    /// Frames accepted into segments.
    pub frames: u64,
    /// Payload bytes accepted.
    pub bytes: u64,
    /// Frames dropped while waiting for a keyframe.
    pub frames_dropped_no_keyframe: u64,
    /// Frames whose RTP timestamp was constant, went backwards or jumped.
    pub timestamp_anomalies: u64,
    /// Times the clock re-anchored to arrival time after a large error.
    pub clock_resyncs: u64,
    /// Segments produced.
    pub segments: u64,
}

struct Pending {
    wall: Time90k,
    key: bool,
    data: Bytes,
}

struct Building {
    start: Time90k,
    codec: Arc<CodecConfig>,
    frames: Vec<Frame>,
    bytes: u64,
}

/// The segmenter of one camera; lives across reconnects.
pub struct Segmenter {
    camera: Arc<str>,
    policy: Arc<str>,
    target: i64,
    codec: Option<Arc<CodecConfig>>,
    clock: Option<Clock>,
    building: Option<Building>,
    pending: Option<Pending>,
    last_duration: u32,
    last_end: Option<Time90k>,
    /// Frames in the last segment: the next segment's frame list is allocated at this size once
    /// rather than grown by doubling.
    last_frames: usize,
    stats: SegmenterStats,
}

impl Segmenter {
    /// A segmenter for `camera`, writing to `policy`'s buckets, cutting at `target` ticks.
    pub fn new(camera: Arc<str>, policy: Arc<str>, target_ticks: i64) -> Self {
        Self {
            camera,
            policy,
            target: target_ticks.max(1),
            codec: None,
            clock: None,
            building: None,
            pending: None,
            last_duration: DEFAULT_FRAME_DURATION,
            last_end: None,
            last_frames: 0,
            stats: SegmenterStats::default(),
        }
    }

    /// Never stamps a frame before `t` (the end of what was recorded before a restart), so a
    /// wall clock stepped back cannot make new footage overlap older footage.
    pub fn not_before(mut self, t: Option<Time90k>) -> Self {
        self.last_end = t;
        self
    }

    /// What it has done so far.
    pub fn stats(&self) -> SegmenterStats {
        self.stats
    }

    /// End of the last segment produced.
    pub fn last_end(&self) -> Option<Time90k> {
        self.last_end
    }

    /// Sets the codec config for the frames that follow (at session start and when SPS/PPS
    /// change). A different config ends the current segment at the next frame.
    pub fn set_codec(&mut self, codec: Arc<CodecConfig>) {
        self.codec = Some(codec);
    }

    /// Takes one frame; returns a segment when this frame completed one.
    pub fn push(&mut self, f: FrameIn) -> Option<Segment> {
        let wall = match &mut self.clock {
            None => {
                let (clock, wall) = Clock::start(f.rtp, f.arrival, self.last_end);
                self.clock = Some(clock);
                wall
            }
            Some(clock) => {
                let (wall, timing) = clock.frame(f.rtp, f.arrival);
                match timing {
                    Timing::Normal => {}
                    Timing::Resync => self.stats.clock_resyncs += 1,
                    _ => self.stats.timestamp_anomalies += 1,
                }
                wall
            }
        };

        // The held-back frame's duration is now known: it belongs to the current segment.
        if let Some(p) = self.pending.take() {
            let d = (wall.0 - p.wall.0).clamp(1, i64::from(u32::MAX / 2)) as u32;
            self.last_duration = d;
            self.append(p, d);
        }

        let mut out = None;
        let codec_changed = match (&self.building, &self.codec) {
            (Some(b), Some(c)) => b.codec.id != c.id,
            _ => false,
        };
        if let Some(b) = &self.building {
            let len = wall.0 - b.start.0;
            let too_long = len >= MAX_SEGMENT || b.bytes + f.data.len() as u64 > MAX_SEGMENT_BYTES;
            if (f.key && len >= self.target) || codec_changed || too_long {
                out = self.close();
            }
        }
        if self.building.is_none() {
            match (&self.codec, f.key) {
                (Some(codec), true) => {
                    self.building = Some(Building {
                        start: wall,
                        codec: codec.clone(),
                        // One frame more than the last segment: a segment of the same length
                        // never reallocates.
                        frames: Vec::with_capacity(self.last_frames + 1),
                        bytes: 0,
                    });
                }
                _ => {
                    self.stats.frames_dropped_no_keyframe += 1;
                    return out;
                }
            }
        }
        self.pending = Some(Pending {
            wall,
            key: f.key,
            data: f.data,
        });
        out
    }

    fn append(&mut self, p: Pending, duration: u32) {
        if let Some(b) = &mut self.building {
            self.stats.frames += 1;
            self.stats.bytes += p.data.len() as u64;
            b.bytes += p.data.len() as u64;
            b.frames.push(Frame {
                data: p.data,
                duration,
                key: p.key,
            });
        }
    }

    fn close(&mut self) -> Option<Segment> {
        let b = self.building.take()?;
        if b.frames.is_empty() {
            return None;
        }
        let seg = Segment {
            camera: self.camera.clone(),
            policy: self.policy.clone(),
            start: b.start,
            codec: b.codec,
            frames: b.frames,
        };
        self.last_end = Some(seg.start.add_ticks(seg.duration() as i64));
        self.last_frames = seg.frames.len();
        self.stats.segments += 1;
        Some(seg)
    }

    /// The stream ended (disconnect, timeout): emits what is buffered and forgets the clock, so
    /// the next session anchors anew. The held-back last frame gets the previous frame's duration.
    pub fn end_of_stream(&mut self) -> Option<Segment> {
        if let Some(p) = self.pending.take() {
            let d = self.last_duration;
            self.append(p, d);
        }
        self.clock = None;
        self.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Time90k = Time90k(1_795_000_000 * TICKS_PER_SEC);

    fn codec(v: u8) -> Arc<CodecConfig> {
        Arc::new(CodecConfig::new(Bytes::from(vec![1, 0x64, 0, 0x1f, v])))
    }

    fn frame(i: i64, key: bool) -> FrameIn {
        FrameIn {
            rtp: 10_000 + i * 3600,
            arrival: T0.add_ticks(i * 3600),
            key,
            data: Bytes::from(vec![i as u8; 10]),
        }
    }

    /// Feeds `n` frames at 25 fps with a keyframe every `gop` frames.
    fn feed(s: &mut Segmenter, range: std::ops::Range<i64>, gop: i64) -> Vec<Segment> {
        range
            .filter_map(|i| s.push(frame(i, i % gop == 0)))
            .collect()
    }

    #[test]
    fn cuts_at_the_first_keyframe_after_the_target() {
        let mut s = Segmenter::new("cam".into(), "p".into(), 2 * TICKS_PER_SEC);
        s.set_codec(codec(1));
        // Keyframe every 30 frames (1.2 s): segments are 2 GOPs = 2.4 s.
        let segs = feed(&mut s, 0..301, 30);
        assert_eq!(segs.len(), 5);
        for (n, seg) in segs.iter().enumerate() {
            assert_eq!(seg.frames.len(), 60);
            assert!(seg.frames[0].key);
            assert_eq!(seg.duration(), 60 * 3600);
            assert_eq!(seg.start, T0.add_ticks(n as i64 * 60 * 3600));
        }
        // Contiguous: each segment ends where the next begins.
        for w in segs.windows(2) {
            assert_eq!(w[0].start.add_ticks(w[0].duration() as i64), w[1].start);
        }
        assert_eq!(s.stats().segments, 5);
    }

    #[test]
    fn frames_before_the_first_keyframe_are_dropped() {
        let mut s = Segmenter::new("cam".into(), "p".into(), 2 * TICKS_PER_SEC);
        s.set_codec(codec(1));
        let segs = feed(&mut s, 5..200, 50);
        assert_eq!(s.stats().frames_dropped_no_keyframe, 45);
        assert_eq!(segs[0].start, T0.add_ticks(50 * 3600));
        assert!(segs.iter().all(|g| g.frames[0].key));
    }

    #[test]
    fn no_codec_means_no_segment() {
        let mut s = Segmenter::new("cam".into(), "p".into(), 2 * TICKS_PER_SEC);
        assert!(feed(&mut s, 0..100, 25).is_empty());
        assert_eq!(s.stats().frames_dropped_no_keyframe, 100);
    }

    #[test]
    fn a_codec_change_starts_a_new_segment_at_the_next_keyframe() {
        let mut s = Segmenter::new("cam".into(), "p".into(), 2 * TICKS_PER_SEC);
        s.set_codec(codec(1));
        let mut segs = feed(&mut s, 0..70, 25);
        s.set_codec(codec(2));
        segs.extend(feed(&mut s, 70..200, 25));
        segs.extend(s.end_of_stream());
        let first_new = segs.iter().position(|g| g.codec.id == codec(2).id).unwrap();
        // The old segment ends at frame 70; frames 70..75 (no keyframe yet) are dropped.
        assert_eq!(
            segs[first_new - 1]
                .start
                .add_ticks(segs[first_new - 1].duration() as i64),
            T0.add_ticks(70 * 3600)
        );
        assert_eq!(segs[first_new].start, T0.add_ticks(75 * 3600));
        assert_eq!(s.stats().frames_dropped_no_keyframe, 5);
        assert!(segs[..first_new].iter().all(|g| g.codec.id == codec(1).id));
    }

    #[test]
    fn end_of_stream_flushes_and_the_next_session_leaves_a_gap() {
        let mut s = Segmenter::new("cam".into(), "p".into(), 2 * TICKS_PER_SEC);
        s.set_codec(codec(1));
        let mut segs = feed(&mut s, 0..60, 25);
        let tail = s.end_of_stream().unwrap();
        assert_eq!(tail.frames.len(), 10);
        assert_eq!(
            tail.duration(),
            10 * 3600,
            "the last frame gets the previous duration"
        );
        segs.push(tail);
        // Reconnect 10 s later with a new RTP base.
        let resumed: Vec<_> = (0..80)
            .filter_map(|i| {
                s.push(FrameIn {
                    rtp: 7_000_000 + i * 3600,
                    arrival: T0.add_ticks((60 + 250 + i) * 3600),
                    key: i % 25 == 0,
                    data: Bytes::from_static(b"x"),
                })
            })
            .collect();
        let end_before = segs
            .last()
            .unwrap()
            .start
            .add_ticks(segs.last().unwrap().duration() as i64);
        assert_eq!(end_before, T0.add_ticks(60 * 3600));
        assert_eq!(resumed[0].start, T0.add_ticks(310 * 3600));
    }

    #[test]
    fn constant_timestamps_still_give_increasing_segments() {
        let mut s = Segmenter::new("cam".into(), "p".into(), 2 * TICKS_PER_SEC);
        s.set_codec(codec(1));
        let segs: Vec<_> = (0..300)
            .filter_map(|i| {
                s.push(FrameIn {
                    rtp: 42,
                    arrival: T0.add_ticks(i * 3600),
                    key: i % 50 == 0,
                    data: Bytes::from_static(b"y"),
                })
            })
            .collect();
        assert_eq!(segs.len(), 5);
        assert!(s.stats().timestamp_anomalies >= 299);
        for w in segs.windows(2) {
            assert!(w[1].start > w[0].start);
            assert_eq!(w[0].start.add_ticks(w[0].duration() as i64), w[1].start);
        }
        assert!(segs
            .iter()
            .all(|g| g.frames.iter().all(|f| f.duration == 3600)));
    }

    #[test]
    fn a_camera_without_keyframes_cannot_grow_a_segment_forever() {
        let mut s = Segmenter::new("cam".into(), "p".into(), 2 * TICKS_PER_SEC);
        s.set_codec(codec(1));
        let segs: Vec<_> = (0..(MAX_SEGMENT / 3600) * 3)
            .filter_map(|i| s.push(frame(i, i == 0)))
            .collect();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].duration() as i64, MAX_SEGMENT);
        assert!(s.stats().frames_dropped_no_keyframe > 0);
    }
}

//! The clip a simulated camera loops: an H.264 Annex B file, split into access units and
//! packetized into RTP payloads once (RFC 6184: single NAL unit packets, FU-A for large NALs).
//!
//! Packetizing once and sharing the result between every stream is what makes camsim cheap: a
//! stream only writes a 12-byte RTP header (and the 4-byte interleave prefix) before each
//! pre-built payload.

use bytes::Bytes;

/// Largest RTP payload built (keeps packets under a 1500-byte MTU).
const MAX_PAYLOAD: usize = 1400;

/// One access unit (frame), as RTP payloads.
#[derive(Debug, Clone)]
pub struct ClipFrame {
    /// RTP payloads; the last one carries the marker bit.
    pub payloads: Vec<Bytes>,
    /// Whether the frame holds an IDR slice.
    pub key: bool,
    /// Bytes of NAL data in the frame (without start codes).
    pub bytes: usize,
}

/// A clip ready to stream.
#[derive(Debug, Clone)]
pub struct Clip {
    /// Frames in decode order (the clip must have no B-frames: decode order is display order).
    pub frames: Vec<ClipFrame>,
    /// The first SPS.
    pub sps: Bytes,
    /// The first PPS.
    pub pps: Bytes,
}

/// Why a file is not a usable clip.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// No SPS or PPS.
    #[error("the clip has no SPS/PPS")]
    NoParameterSets,
    /// Does not start with a keyframe.
    #[error("the clip does not start with an IDR frame")]
    NoKeyframe,
}

/// Splits Annex B data into NAL units (without start codes).
pub fn split_annex_b(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (n, &s) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(data.len(), |&next| next - 3);
        // A four-byte start code leaves a zero at the end of the previous NAL.
        while end > s && data[end - 1] == 0 && n + 1 < starts.len() {
            end -= 1;
        }
        if end > s {
            out.push(&data[s..end]);
        }
    }
    out
}

impl Clip {
    /// Parses an Annex B H.264 stream with one slice per frame.
    pub fn from_annex_b(data: &[u8]) -> Result<Clip, ClipError> {
        let mut sps = None;
        let mut pps = None;
        let mut frames = Vec::new();
        let mut nals: Vec<&[u8]> = Vec::new();
        for nal in split_annex_b(data) {
            let t = nal[0] & 0x1f;
            match t {
                7 if sps.is_none() => sps = Some(Bytes::copy_from_slice(nal)),
                8 if pps.is_none() => pps = Some(Bytes::copy_from_slice(nal)),
                9 => continue, // access unit delimiters are not needed over RTP
                _ => {}
            }
            nals.push(nal);
            if t == 1 || t == 5 {
                frames.push(packetize(&nals, t == 5));
                nals.clear();
            }
        }
        let (Some(sps), Some(pps)) = (sps, pps) else {
            return Err(ClipError::NoParameterSets);
        };
        if !frames.first().is_some_and(|f| f.key) {
            return Err(ClipError::NoKeyframe);
        }
        Ok(Clip { frames, sps, pps })
    }

    /// `profile-level-id` for the SDP (hex of the SPS's profile, constraints and level bytes).
    pub fn profile_level_id(&self) -> String {
        hex::encode(&self.sps[1..4.min(self.sps.len())])
    }
}

fn packetize(nals: &[&[u8]], key: bool) -> ClipFrame {
    let mut payloads = Vec::new();
    let mut bytes = 0;
    for nal in nals {
        bytes += nal.len();
        if nal.len() <= MAX_PAYLOAD {
            payloads.push(Bytes::copy_from_slice(nal));
            continue;
        }
        // FU-A: indicator (F|NRI|28), header (S|E|R|type), then the NAL body in pieces.
        let indicator = (nal[0] & 0xe0) | 28;
        let typ = nal[0] & 0x1f;
        let body = &nal[1..];
        let chunks: Vec<&[u8]> = body.chunks(MAX_PAYLOAD - 2).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut p = Vec::with_capacity(chunk.len() + 2);
            let mut header = typ;
            if i == 0 {
                header |= 0x80;
            }
            if i + 1 == chunks.len() {
                header |= 0x40;
            }
            p.push(indicator);
            p.push(header);
            p.extend_from_slice(chunk);
            payloads.push(Bytes::from(p));
        }
    }
    ClipFrame {
        payloads,
        key,
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5,
        ];
        let nals = split_annex_b(&data);
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]
        );
    }

    #[test]
    fn shipped_clip_packetizes() {
        let clip = Clip::from_annex_b(include_bytes!("../../data/clip-720p25-4mbit.h264")).unwrap();
        assert_eq!(clip.frames.len(), 100);
        assert_eq!(clip.frames.iter().filter(|f| f.key).count(), 2);
        assert_eq!(clip.sps[0] & 0x1f, 7);
        assert_eq!(clip.profile_level_id().len(), 6);
        for f in &clip.frames {
            assert!(f.payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        }
    }

    #[test]
    fn fu_a_fragments_reassemble() {
        let mut nal = vec![0x65];
        nal.extend((0..5000u32).map(|i| (i % 251) as u8));
        let f = packetize(&[&nal], true);
        assert!(f.payloads.len() > 3);
        let mut re = vec![(f.payloads[0][0] & 0xe0) | (f.payloads[0][1] & 0x1f)];
        for (i, p) in f.payloads.iter().enumerate() {
            assert_eq!(p[0] & 0x1f, 28);
            assert_eq!(p[1] & 0x80 != 0, i == 0);
            assert_eq!(p[1] & 0x40 != 0, i + 1 == f.payloads.len());
            re.extend_from_slice(&p[2..]);
        }
        assert_eq!(re, nal);
    }
}

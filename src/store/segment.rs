//! The segment record: the unit of video on disk, and its in-memory form on the way there.
//!
//! A segment is a run of frames of one camera that starts at a keyframe (a GOP or a few). On disk
//! it is one self-describing record inside a bucket file: a header followed by the frame payloads,
//! which are AVC length-prefixed samples exactly as MP4 wants them. Everything needed to index,
//! verify and export the record is in the header, so the index can be rebuilt from bucket files
//! alone (see `design/segment-format.md`).
//!
//! ```text
//! off  size  field
//!   0     4  magic "HFSG"
//!   4     2  format version (1)
//!   6     4  header_len: bytes of this header, both CRCs included
//!  10     8  payload_len: bytes of frame payloads that follow the header
//!  18     8  start: i64, 90 kHz ticks since the Unix epoch (UTC)
//!  26     4  duration: u32 ticks, the sum of the frame durations
//!  30     4  frame_count
//!  34     8  codec_id: first 8 bytes of SHA-256 of the codec config
//!  42     2  codec_config_len
//!  44     1  camera_len
//!  45     .  camera id (ASCII, [a-z0-9-])
//!   .     .  codec config (the avcC record, AVCDecoderConfigurationRecord)
//!   .   9*n  frame table: size u32, duration u32 (ticks), flags u8 (bit 0: keyframe)
//!   .     4  payload CRC32C (over all frame payloads, in order)
//!   .     4  header CRC32C (over every header byte before it)
//! ```
//! All integers are little-endian.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::time::Time90k;

/// The four bytes every segment record starts with.
pub const MAGIC: [u8; 4] = *b"HFSG";
/// The record format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Bytes before the variable part of the header.
pub const FIXED_LEN: usize = 45;
/// Bytes per frame-table entry.
const FRAME_ENTRY_LEN: usize = 9;
/// Bytes of the two CRCs that end the header.
pub const CRC_LEN: usize = 8;
/// Bytes a reader needs to learn `header_len` (magic, version, header_len).
pub const PREFIX_LEN: usize = 10;
/// The largest header this code accepts (guards against absurd lengths in corrupt data).
pub const MAX_HEADER_LEN: usize = 1 << 20;
/// The largest payload this code accepts in one record.
pub const MAX_PAYLOAD_LEN: u64 = 1 << 30;
/// The longest camera id.
pub const MAX_CAMERA_ID_LEN: usize = 64;

/// Records written with direct I/O start at a multiple of this (bytes), and the bytes from a
/// record's end to the next multiple are zeros (padding): every direct write starts and ends on
/// a block boundary. Readers need not know it: the scanner skips zeros (`design/segment-format.md`).
pub const RECORD_ALIGN: u64 = 4096;

/// `n` rounded up to the next multiple of [`RECORD_ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Flag bit in the frame table: the frame is a keyframe (IDR, random access point).
const FLAG_KEY: u8 = 1;

/// An H.264 decoder configuration (the avcC record), shared by all segments that use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecConfig {
    /// Content hash of `avcc`: equal configs have equal ids, across cameras and restarts.
    pub id: u64,
    /// The AVCDecoderConfigurationRecord bytes (SPS/PPS inside).
    pub avcc: Bytes,
}

impl CodecConfig {
    /// Wraps an avcC record, computing its id.
    pub fn new(avcc: Bytes) -> Self {
        Self {
            id: codec_id(&avcc),
            avcc,
        }
    }
}

/// The codec-config id of an avcC record: the first 8 bytes of its SHA-256, big-endian.
pub fn codec_id(avcc: &[u8]) -> u64 {
    let digest = Sha256::digest(avcc);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// One frame on its way to disk: an AVC length-prefixed sample and its timing.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The sample bytes, as received (never copied on the way to disk).
    pub data: Bytes,
    /// Duration in 90 kHz ticks (time until the next frame).
    pub duration: u32,
    /// Whether this is a keyframe.
    pub key: bool,
}

/// A segment in memory, as the segmenter hands it to the writer.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Camera id.
    pub camera: Arc<str>,
    /// Name of the retention policy whose bucket files it goes into.
    pub policy: Arc<str>,
    /// Wall-clock time of the first frame.
    pub start: Time90k,
    /// Decoder configuration of every frame in the segment.
    pub codec: Arc<CodecConfig>,
    /// The frames, the first one a keyframe.
    pub frames: Vec<Frame>,
}

impl Segment {
    /// Sum of frame durations, in ticks.
    pub fn duration(&self) -> u64 {
        self.frames.iter().map(|f| u64::from(f.duration)).sum()
    }

    /// Sum of payload sizes, in bytes.
    pub fn payload_len(&self) -> u64 {
        self.frames.iter().map(|f| f.data.len() as u64).sum()
    }

    /// Builds the on-disk header of this segment (computes the payload CRC).
    pub fn header(&self) -> Result<SegmentHeader, FormatError> {
        let crc = self
            .frames
            .iter()
            .fold(0u32, |crc, f| crc32c::crc32c_append(crc, &f.data));
        self.header_with_crc(crc)
    }

    /// Bytes of this segment's encoded header (what [`Segment::header`] would encode to).
    pub fn header_len(&self) -> usize {
        FIXED_LEN
            + self.camera.len()
            + self.codec.avcc.len()
            + FRAME_ENTRY_LEN * self.frames.len()
            + CRC_LEN
    }

    /// Builds the on-disk header with a payload CRC the caller computed (the writer computes it
    /// as it stages the frames, `staging::stage_frames`: one pass that copies each frame and
    /// folds it into the CRC).
    pub fn header_with_crc(&self, crc: u32) -> Result<SegmentHeader, FormatError> {
        let mut frames = Vec::with_capacity(self.frames.len());
        for f in &self.frames {
            let size = u32::try_from(f.data.len())
                .map_err(|_| FormatError::Invalid("frame larger than 4 GiB"))?;
            frames.push(FrameInfo {
                size,
                duration: f.duration,
                key: f.key,
            });
        }
        let h = SegmentHeader {
            camera: self.camera.to_string(),
            start: self.start,
            codec_id: self.codec.id,
            codec_config: self.codec.avcc.clone(),
            frames,
            payload_crc: crc,
        };
        h.check()?;
        Ok(h)
    }
}

/// One entry of the frame table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Sample size in bytes.
    pub size: u32,
    /// Duration in 90 kHz ticks.
    pub duration: u32,
    /// Keyframe flag.
    pub key: bool,
}

/// A decoded (or to-be-encoded) segment header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Camera id.
    pub camera: String,
    /// Wall-clock time of the first frame.
    pub start: Time90k,
    /// Codec-config id (content hash of `codec_config`).
    pub codec_id: u64,
    /// The avcC record.
    pub codec_config: Bytes,
    /// The frame table.
    pub frames: Vec<FrameInfo>,
    /// CRC32C over all payload bytes.
    pub payload_crc: u32,
}

/// Why bytes are not a valid segment record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// More bytes are needed: the record continues past the end of the buffer.
    #[error("record truncated: {need} bytes needed, {have} present")]
    Truncated {
        /// Bytes needed from the record start.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The record does not start with the magic.
    #[error("no segment magic")]
    BadMagic,
    /// A format version this code does not read.
    #[error("unsupported segment format version {0}")]
    UnsupportedVersion(u16),
    /// The header CRC does not match.
    #[error("header CRC mismatch")]
    HeaderCrc,
    /// The payload CRC does not match.
    #[error("payload CRC mismatch")]
    PayloadCrc,
    /// A field is out of range or inconsistent.
    #[error("invalid segment: {0}")]
    Invalid(&'static str),
}

/// CRC32C (Castagnoli) of a payload, by `crc-fast` (carry-less multiplication folding, about
/// twice the speed of the SSE4.2 `crc32` instruction loop of the `crc32c` crate on this
/// machine's CPU); the same value as `crc32c::crc32c` (unit-tested).
pub fn payload_crc(payload: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, payload) as u32
}

/// Whether `s` is a valid camera id: 1 to 64 characters of `[a-z0-9-]`.
pub fn is_valid_camera_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CAMERA_ID_LEN
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

impl SegmentHeader {
    /// Sum of frame durations, in ticks.
    pub fn duration(&self) -> u64 {
        self.frames.iter().map(|f| u64::from(f.duration)).sum()
    }

    /// Sum of frame sizes: the payload bytes that follow the header.
    pub fn payload_len(&self) -> u64 {
        self.frames.iter().map(|f| u64::from(f.size)).sum()
    }

    /// Bytes of the encoded header.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN
            + self.camera.len()
            + self.codec_config.len()
            + FRAME_ENTRY_LEN * self.frames.len()
            + CRC_LEN
    }

    /// End time: start plus duration.
    pub fn end(&self) -> Time90k {
        self.start.add_ticks(self.duration() as i64)
    }

    fn check(&self) -> Result<(), FormatError> {
        if !is_valid_camera_id(&self.camera) {
            return Err(FormatError::Invalid("camera id"));
        }
        if self.frames.is_empty() {
            return Err(FormatError::Invalid("no frames"));
        }
        if u32::try_from(self.frames.len()).is_err() {
            return Err(FormatError::Invalid("too many frames"));
        }
        if self.duration() > u64::from(u32::MAX) {
            return Err(FormatError::Invalid("duration exceeds 13 hours"));
        }
        if self.codec_config.len() > usize::from(u16::MAX) {
            return Err(FormatError::Invalid("codec config too long"));
        }
        if self.encoded_len() > MAX_HEADER_LEN {
            return Err(FormatError::Invalid("header too long"));
        }
        if self.payload_len() > MAX_PAYLOAD_LEN {
            return Err(FormatError::Invalid("payload too long"));
        }
        Ok(())
    }

    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        self.check()?;
        let start_at = out.len();
        out.reserve(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.encoded_len() as u32).to_le_bytes());
        out.extend_from_slice(&self.payload_len().to_le_bytes());
        out.extend_from_slice(&self.start.0.to_le_bytes());
        out.extend_from_slice(&(self.duration() as u32).to_le_bytes());
        out.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.codec_id.to_le_bytes());
        out.extend_from_slice(&(self.codec_config.len() as u16).to_le_bytes());
        out.push(self.camera.len() as u8);
        out.extend_from_slice(self.camera.as_bytes());
        out.extend_from_slice(&self.codec_config);
        for f in &self.frames {
            out.extend_from_slice(&f.size.to_le_bytes());
            out.extend_from_slice(&f.duration.to_le_bytes());
            out.push(if f.key { FLAG_KEY } else { 0 });
        }
        out.extend_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[start_at..]);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len() - start_at, self.encoded_len());
        Ok(())
    }

    /// Reads `header_len` from the first [`PREFIX_LEN`] bytes of a record, checking magic and
    /// version. Lets a reader fetch exactly the header before decoding it.
    pub fn peek_len(buf: &[u8]) -> Result<usize, FormatError> {
        if buf.len() < PREFIX_LEN {
            return Err(FormatError::Truncated {
                need: PREFIX_LEN,
                have: buf.len(),
            });
        }
        if buf[..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16::from_le_bytes([buf[4], buf[5]]);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let len = u32::from_le_bytes(buf[6..10].try_into().expect("4 bytes")) as usize;
        if !(FIXED_LEN + 1 + CRC_LEN..=MAX_HEADER_LEN).contains(&len) {
            return Err(FormatError::Invalid("header length"));
        }
        Ok(len)
    }

    /// Decodes a header from the start of `buf` (which may hold more than the header).
    pub fn decode(buf: &[u8]) -> Result<Self, FormatError> {
        let len = Self::peek_len(buf)?;
        if buf.len() < len {
            return Err(FormatError::Truncated {
                need: len,
                have: buf.len(),
            });
        }
        let h = &buf[..len];
        let stored_crc = u32::from_le_bytes(h[len - 4..].try_into().expect("4 bytes"));
        if crc32c::crc32c(&h[..len - 4]) != stored_crc {
            return Err(FormatError::HeaderCrc);
        }
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        let payload_len = u64_at(10);
        let start = Time90k(u64_at(18) as i64);
        let duration = u32_at(26);
        let frame_count = u32_at(30) as usize;
        let codec_id = u64_at(34);
        let codec_len = usize::from(u16::from_le_bytes([h[42], h[43]]));
        let camera_len = usize::from(h[44]);
        let expected = FIXED_LEN
            + camera_len
            + codec_len
            + frame_count.saturating_mul(FRAME_ENTRY_LEN)
            + CRC_LEN;
        if expected != len {
            return Err(FormatError::Invalid(
                "header length disagrees with its fields",
            ));
        }
        let mut o = FIXED_LEN;
        let camera = std::str::from_utf8(&h[o..o + camera_len])
            .map_err(|_| FormatError::Invalid("camera id"))?
            .to_owned();
        o += camera_len;
        let codec_config = Bytes::copy_from_slice(&h[o..o + codec_len]);
        o += codec_len;
        let mut frames = Vec::with_capacity(frame_count);
        for _ in 0..frame_count {
            let flags = h[o + 8];
            if flags & !FLAG_KEY != 0 {
                return Err(FormatError::Invalid("unknown frame flags"));
            }
            frames.push(FrameInfo {
                size: u32_at(o),
                duration: u32_at(o + 4),
                key: flags & FLAG_KEY != 0,
            });
            o += FRAME_ENTRY_LEN;
        }
        let payload_crc = u32_at(o);
        let header = SegmentHeader {
            camera,
            start,
            codec_id,
            codec_config,
            frames,
            payload_crc,
        };
        header.check()?;
        if header.payload_len() != payload_len {
            return Err(FormatError::Invalid(
                "payload length disagrees with frame table",
            ));
        }
        if header.duration() != u64::from(duration) {
            return Err(FormatError::Invalid("duration disagrees with frame table"));
        }
        if codec_id != self::codec_id(&header.codec_config) {
            return Err(FormatError::Invalid("codec id disagrees with codec config"));
        }
        Ok(header)
    }

    /// Checks `payload` (exactly the record's payload bytes) against the payload CRC.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), FormatError> {
        if payload.len() as u64 != self.payload_len() {
            return Err(FormatError::Truncated {
                need: self.payload_len() as usize,
                have: payload.len(),
            });
        }
        if payload_crc(payload) != self.payload_crc {
            return Err(FormatError::PayloadCrc);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn payload_crc_is_crc32c() {
        // Lengths around the folding implementation's block sizes, and the check value.
        assert_eq!(super::payload_crc(b"123456789"), 0xE306_9283);
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 15, 16, 63, 64, 255, 256, 4095, 4096, 65_537, 70_000] {
            assert_eq!(
                super::payload_crc(&data[..len]),
                crc32c::crc32c(&data[..len]),
                "length {len}"
            );
        }
    }

    use super::*;

    fn sample_segment(frames: usize) -> Segment {
        let codec = Arc::new(CodecConfig::new(Bytes::from_static(&[
            1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 2, 0x68, 0xee,
        ])));
        Segment {
            camera: "noord-entrance".into(),
            policy: "four-weeks".into(),
            start: Time90k(1_000_000_000),
            codec,
            frames: (0..frames)
                .map(|i| Frame {
                    data: Bytes::from(vec![i as u8; 100 + i * 7]),
                    duration: 3600,
                    key: i == 0,
                })
                .collect(),
        }
    }

    fn encode_record(seg: &Segment) -> Vec<u8> {
        let mut buf = Vec::new();
        seg.header().unwrap().encode(&mut buf).unwrap();
        for f in &seg.frames {
            buf.extend_from_slice(&f.data);
        }
        buf
    }

    #[test]
    fn round_trip() {
        let seg = sample_segment(50);
        let rec = encode_record(&seg);
        let h = SegmentHeader::decode(&rec).unwrap();
        assert_eq!(h, seg.header().unwrap());
        assert_eq!(SegmentHeader::peek_len(&rec).unwrap(), h.encoded_len());
        assert_eq!(h.camera, "noord-entrance");
        assert_eq!(h.frames.len(), 50);
        assert!(h.frames[0].key && !h.frames[1].key);
        assert_eq!(h.duration(), 50 * 3600);
        assert_eq!(h.end(), Time90k(1_000_000_000 + 50 * 3600));
        assert_eq!(rec.len() as u64, h.encoded_len() as u64 + h.payload_len());
        h.verify_payload(&rec[h.encoded_len()..]).unwrap();
    }

    #[test]
    fn every_truncation_is_reported_as_truncated() {
        let rec = encode_record(&sample_segment(3));
        let hlen = SegmentHeader::peek_len(&rec).unwrap();
        for cut in 0..hlen {
            match SegmentHeader::decode(&rec[..cut]) {
                Err(FormatError::Truncated { need, have }) => {
                    assert_eq!(have, cut);
                    assert!(need > cut);
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let h = SegmentHeader::decode(&rec).unwrap();
        let payload = &rec[hlen..];
        assert!(matches!(
            h.verify_payload(&payload[..payload.len() - 1]),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn every_flipped_header_bit_is_detected() {
        let rec = encode_record(&sample_segment(4));
        let hlen = SegmentHeader::peek_len(&rec).unwrap();
        for byte in 0..hlen {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    SegmentHeader::decode(&bad).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn corrupted_payload_is_detected() {
        let rec = encode_record(&sample_segment(4));
        let h = SegmentHeader::decode(&rec).unwrap();
        let hlen = h.encoded_len();
        for pos in [hlen, hlen + 150, rec.len() - 1] {
            let mut bad = rec.clone();
            bad[pos] ^= 0x40;
            assert_eq!(h.verify_payload(&bad[hlen..]), Err(FormatError::PayloadCrc));
        }
    }

    #[test]
    fn garbage_and_zeros_are_rejected() {
        assert_eq!(
            SegmentHeader::decode(&[0u8; 4096]),
            Err(FormatError::BadMagic)
        );
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&7u16.to_le_bytes());
        v.extend_from_slice(&[0; 100]);
        assert_eq!(
            SegmentHeader::decode(&v),
            Err(FormatError::UnsupportedVersion(7))
        );
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&v),
            Err(FormatError::Invalid("header length"))
        );
    }

    #[test]
    fn invalid_segments_are_refused_at_encode() {
        let mut seg = sample_segment(2);
        seg.camera = "Noord".into();
        assert_eq!(seg.header().unwrap_err(), FormatError::Invalid("camera id"));
        let mut seg = sample_segment(2);
        seg.frames.clear();
        assert_eq!(seg.header().unwrap_err(), FormatError::Invalid("no frames"));
    }

    #[test]
    fn header_len_and_crc_match_the_encoded_header() {
        let seg = sample_segment(7);
        let h = seg.header().unwrap();
        assert_eq!(seg.header_len(), h.encoded_len());
        let crc = seg
            .frames
            .iter()
            .fold(0, |c, f| crc32c::crc32c_append(c, &f.data));
        assert_eq!(seg.header_with_crc(crc).unwrap(), h);
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), RECORD_ALIGN);
        assert_eq!(align_up(RECORD_ALIGN), RECORD_ALIGN);
        assert_eq!(align_up(RECORD_ALIGN + 1), 2 * RECORD_ALIGN);
    }

    #[test]
    fn codec_ids_are_content_hashes() {
        let a = CodecConfig::new(Bytes::from_static(b"abc"));
        let b = CodecConfig::new(Bytes::from_static(b"abc"));
        let c = CodecConfig::new(Bytes::from_static(b"abd"));
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn camera_ids() {
        assert!(is_valid_camera_id("noord-entrance-2"));
        for bad in ["", "Noord", "a_b", "a b", "é", &"a".repeat(65)] {
            assert!(!is_valid_camera_id(bad), "{bad}");
        }
    }
}

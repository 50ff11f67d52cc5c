//! The MP4 header of an export: `ftyp`, `moov` and the `mdat` box header, built with the
//! `mp4-atom` crate from a [`Plan`]'s sample table.
//!
//! One video track, timescale 90 kHz (the stored time base, so durations are exact). Samples are
//! the stored AVC length-prefixed frames unchanged. Each stored segment's selected frames are one
//! chunk; every distinct codec config is one `avc1` sample entry, and `stsc` switches entries at
//! the chunk where the camera's SPS/PPS changed, so a clip across a resolution change plays. The
//! `moov` comes first (the whole sample table is known before a byte is sent): players can start
//! while the download runs. Chunk offsets are `co64`, so their size does not depend on their
//! values and the header is encoded once to learn its length, then again with the offsets.

use bytes::{BufMut, Bytes};
use mp4_atom::{
    Atom, Avc1, Avcc, Co64, Codec, Dinf, Dref, Encode, Ftyp, Hdlr, Mdhd, Mdia, Minf, Moov, Mvhd,
    Stbl, Stsc, StscEntry, Stsd, Stss, Stsz, StszSamples, Stts, SttsEntry, Tkhd, Trak, Url, Visual,
    Vmhd,
};

use super::Plan;
use crate::time::TICKS_PER_SEC;

/// Why the header could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Mp4Error {
    /// A stored codec config is not a valid avcC record.
    #[error("stored codec config {id:016x} is not a valid avcC record: {source}")]
    BadAvcc {
        /// Codec-config id.
        id: u64,
        /// The decoder's complaint.
        source: mp4_atom::Error,
    },
    /// Encoding failed.
    #[error("encoding the MP4 header: {0}")]
    Encode(#[from] mp4_atom::Error),
}

/// Width and height from the first SPS of an avcC record (0x0 when it cannot be parsed: players
/// take the size from the bitstream anyway).
fn dimensions(avcc: &Avcc) -> (u16, u16) {
    let Some(sps) = avcc.sequence_parameter_sets.first() else {
        return (0, 0);
    };
    let Ok(rbsp) = h264_reader::rbsp::decode_nal(sps) else {
        return (0, 0);
    };
    let Ok(sps) = h264_reader::nal::sps::SeqParameterSet::from_bits(
        h264_reader::rbsp::BitReader::new(&*rbsp),
    ) else {
        return (0, 0);
    };
    match sps.pixel_dimensions() {
        Ok((w, h)) => (
            u16::try_from(w).unwrap_or(u16::MAX),
            u16::try_from(h).unwrap_or(u16::MAX),
        ),
        Err(_) => (0, 0),
    }
}

fn moov(plan: &Plan, chunk_offsets: Vec<u64>) -> Result<Moov, Mp4Error> {
    let mut entries = Vec::new();
    let mut size = (0u16, 0u16);
    for (i, (id, raw)) in plan.codecs.iter().enumerate() {
        let avcc = Avcc::decode_body(&mut &raw[..])
            .map_err(|source| Mp4Error::BadAvcc { id: *id, source })?;
        let (w, h) = dimensions(&avcc);
        if i == 0 {
            size = (w, h);
        }
        entries.push(Codec::Avc1(Avc1 {
            visual: Visual {
                data_reference_index: 1,
                width: w,
                height: h,
                compressor: "holdfast".into(),
                ..Default::default()
            },
            avcc,
            btrt: None,
            colr: None,
            pasp: None,
            taic: None,
            fiel: None,
        }));
    }

    let mut stts: Vec<SttsEntry> = Vec::new();
    for s in &plan.samples {
        match stts.last_mut() {
            Some(e) if e.sample_delta == s.duration => e.sample_count += 1,
            _ => stts.push(SttsEntry {
                sample_count: 1,
                sample_delta: s.duration,
            }),
        }
    }
    let stss: Vec<u32> = plan
        .samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.key)
        .map(|(i, _)| i as u32 + 1)
        .collect();
    let mut stsc: Vec<StscEntry> = Vec::new();
    for (i, c) in plan.chunks.iter().enumerate() {
        let same = stsc.last().is_some_and(|e| {
            e.samples_per_chunk == c.samples && e.sample_description_index == c.codec_index + 1
        });
        if !same {
            stsc.push(StscEntry {
                first_chunk: i as u32 + 1,
                samples_per_chunk: c.samples,
                sample_description_index: c.codec_index + 1,
            });
        }
    }
    let duration = plan.duration;
    Ok(Moov {
        mvhd: Mvhd {
            timescale: TICKS_PER_SEC as u32,
            duration,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: 2,
            ..Default::default()
        },
        trak: vec![Trak {
            tkhd: Tkhd {
                track_id: 1,
                duration,
                enabled: true,
                in_movie: true,
                width: size.0.into(),
                height: size.1.into(),
                ..Default::default()
            },
            edts: None,
            meta: None,
            mdia: Mdia {
                mdhd: Mdhd {
                    timescale: TICKS_PER_SEC as u32,
                    duration,
                    language: "und".into(),
                    ..Default::default()
                },
                hdlr: Hdlr {
                    handler: b"vide".into(),
                    name: "holdfast video".into(),
                },
                minf: Minf {
                    vmhd: Some(Vmhd::default()),
                    dinf: Dinf {
                        dref: Dref {
                            urls: vec![Url::default()],
                        },
                    },
                    stbl: Stbl {
                        stsd: Stsd { codecs: entries },
                        stts: Stts { entries: stts },
                        stss: Some(Stss { entries: stss }),
                        stsc: Stsc { entries: stsc },
                        stsz: Stsz {
                            samples: StszSamples::Different {
                                sizes: plan.samples.iter().map(|s| s.size).collect(),
                            },
                        },
                        co64: Some(Co64 {
                            entries: chunk_offsets,
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
            senc: None,
            tref: None,
            udta: None,
        }],
        ..Default::default()
    })
}

/// Length of the `mdat` header: always the 64-bit form.
const MDAT_HEADER: usize = 16;

/// Encodes `ftyp`, `moov` and the `mdat` header for a plan. The payload bytes of the chunks
/// follow in plan order.
pub fn header(plan: &Plan) -> Result<Bytes, Mp4Error> {
    let ftyp = Ftyp {
        major_brand: b"isom".into(),
        minor_version: 512,
        compatible_brands: vec![
            b"isom".into(),
            b"iso2".into(),
            b"avc1".into(),
            b"mp41".into(),
        ],
    };
    let mut buf: Vec<u8> = Vec::new();
    ftyp.encode(&mut buf)?;
    let mut probe: Vec<u8> = Vec::new();
    moov(plan, vec![0; plan.chunks.len()])?.encode(&mut probe)?;
    let data_start = (buf.len() + probe.len() + MDAT_HEADER) as u64;
    let mut offsets = Vec::with_capacity(plan.chunks.len());
    let mut at = data_start;
    for c in &plan.chunks {
        offsets.push(at);
        at += c.len;
    }
    moov(plan, offsets)?.encode(&mut buf)?;
    debug_assert_eq!(buf.len() + MDAT_HEADER, data_start as usize);
    buf.put_u32(1);
    buf.put_slice(b"mdat");
    buf.put_u64(MDAT_HEADER as u64 + plan.payload_len());
    Ok(Bytes::from(buf))
}

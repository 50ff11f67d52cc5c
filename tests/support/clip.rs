//! The shipped clip (`data/clip-720p25-4mbit.h264`) as AVC samples, for tests that write real
//! H.264 footage straight into a store.

use std::sync::Arc;

use bytes::Bytes;
use holdfast::store::segment::CodecConfig;

use super::procs::repo_path;

/// The shipped clip as AVC samples (length-prefixed, parameter sets in the avcC) and its avcC.
pub fn clip_samples() -> (Vec<(Bytes, bool)>, Arc<CodecConfig>) {
    let data = std::fs::read(repo_path("data/clip-720p25-4mbit.h264")).unwrap();
    let (mut sps, mut pps) = (None, None);
    let mut samples = Vec::new();
    let mut au: Vec<u8> = Vec::new();
    for nal in holdfast::camsim::clip::split_annex_b(&data) {
        let t = nal[0] & 0x1f;
        match t {
            7 => {
                sps.get_or_insert_with(|| nal.to_vec());
                continue;
            }
            8 => {
                pps.get_or_insert_with(|| nal.to_vec());
                continue;
            }
            9 => continue,
            _ => {}
        }
        au.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        au.extend_from_slice(nal);
        if t == 1 || t == 5 {
            samples.push((Bytes::from(std::mem::take(&mut au)), t == 5));
        }
    }
    let (sps, pps) = (sps.unwrap(), pps.unwrap());
    let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
    avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(&sps);
    avcc.push(1);
    avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(&pps);
    (samples, Arc::new(CodecConfig::new(Bytes::from(avcc))))
}

/// Writes segments of one GOP each (50 frames of the clip, its two GOPs in turn) of `camera`
/// under `policy` into the store in `data_dir` (the daemon stopped meanwhile): for each `k` in
/// `ks`, one starting at `start + k * 50 * frame_ticks`, every frame `frame_ticks` long.
pub fn write_clip_segments(
    data_dir: &std::path::Path,
    camera: &str,
    policy: &str,
    start: holdfast::time::Time90k,
    ks: std::ops::Range<i64>,
    frame_ticks: i64,
) {
    use holdfast::store::segment::{Frame, Segment};
    let (samples, codec) = clip_samples();
    let (store, _) = holdfast::store::Store::open(data_dir, 3600).unwrap();
    let writer = holdfast::store::writer::Writer::spawn(
        Arc::new(store),
        holdfast::store::writer::WriterConfig::default(),
        Arc::new(holdfast::metrics::Metrics::new()),
        None,
    )
    .unwrap();
    for k in ks {
        let gop = (k.rem_euclid(2) * 50) as usize;
        writer
            .handle()
            .submit(Segment {
                camera: camera.into(),
                policy: policy.into(),
                start: start.add_ticks(k * 50 * frame_ticks),
                codec: codec.clone(),
                frames: samples[gop..gop + 50]
                    .iter()
                    .map(|(data, key)| Frame {
                        data: data.clone(),
                        duration: frame_ticks as u32,
                        key: *key,
                    })
                    .collect(),
            })
            .unwrap();
    }
    writer.shutdown();
}

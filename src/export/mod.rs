//! Export: a camera's range as one standard MP4, streamed straight from the segment records.
//!
//! [`plan`] reads the index and the segment headers (frame tables) only: which frames go in,
//! from the last keyframe at or before `from` up to the last frame that starts before `to`. A
//! gap in the recording is skipped (the clip's timeline is recorded time; the JSON of
//! `recordings` tells where the gaps are), and a codec change switches the sample entry (see
//! [`mp4`]). [`send_payloads`] then sends, per segment, its payload checked against its CRC:
//! memory stays at one segment, whatever the clip's length. A record that fails its check ends
//! the stream early (the client sees a short body), so corrupt footage is never passed off as
//! whole.
//!
//! Speed (issue 11): the index is read with one range read per bucket that overlaps the window
//! ([`Index::camera_segments`](crate::store::index::Index::camera_segments)); every bucket file
//! of the window is opened once per export and the open file travels with the plan
//! ([`OpenBucket`]); the headers of a window are read by a few threads at once (a cold page
//! cache, which O_DIRECT writes make the rule for recent footage, costs one round trip per
//! thread rather than one per segment); and each record is read once: its header while
//! planning, its payload (never the header again) while sending. The `moov` is computed from the
//! index entries and the frame tables alone.
//!
//! What a sent byte may be: the payload of a segment the plan's index read found, whose CRC
//! matches the index entry, and whose entry was still in the index after the bytes were read. An
//! erasure committed before that check (its holes may not be punched yet) ends the stream early,
//! as a punched hole (zeros, failing the CRC) always did; an expired bucket's unlinked file,
//! still readable through the plan's open descriptor, likewise stops the stream once its entries
//! are gone from the index.

pub mod mp4;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::store::index::SegmentEntry;
use crate::store::segment::{FormatError, SegmentHeader};
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

/// A bucket file opened once for one export (read-only).
#[derive(Debug)]
pub struct OpenBucket {
    /// Its path (for errors).
    pub path: PathBuf,
    /// The open file.
    pub file: File,
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
    /// The bucket file, opened while planning (`None`: opened when sent).
    pub file: Option<Arc<OpenBucket>>,
}

/// What an export will contain. The MP4 layout ([`mp4::header`] and the payload order) is a
/// pure function of it; the open files it carries only say where the bytes are read from.
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

/// Headers read by one thread before another one is started: below this a window is read by
/// the calling thread alone (a warm page cache answers faster than a thread starts).
const HEADERS_PER_THREAD: usize = 48;
/// The most threads that read one window's headers at once.
const MAX_HEADER_THREADS: usize = 8;

/// Works out what an export of `[from, to)` contains. Empty when nothing is recorded there.
///
/// One index range read per overlapping bucket, one `open` per bucket file, one read per
/// segment header (by up to `MAX_HEADER_THREADS` threads), nothing else.
pub fn plan(store: &Store, camera: &str, from: Time90k, to: Time90k) -> Result<Plan, StoreError> {
    let entries = store.index().camera_segments(camera, from, to)?;
    // One open per bucket file of the window.
    let mut files: Vec<Arc<OpenBucket>> = Vec::new();
    let mut file_of = Vec::with_capacity(entries.len());
    let mut opened: BTreeMap<(&str, Time90k), usize> = BTreeMap::new();
    for e in &entries {
        let i = match opened.get(&(e.policy.as_str(), e.bucket)) {
            Some(i) => *i,
            None => {
                let path = store.bucket_path(&e.policy, e.bucket);
                let file = File::open(&path).map_err(StoreError::io("open", &path))?;
                files.push(Arc::new(OpenBucket { path, file }));
                opened.insert((e.policy.as_str(), e.bucket), files.len() - 1);
                files.len() - 1
            }
        };
        file_of.push(i);
    }
    let headers = read_headers(&entries, &file_of, &files)?;
    Ok(plan_from_headers(
        camera,
        from,
        to,
        entries
            .into_iter()
            .zip(headers)
            .zip(file_of)
            .map(|((e, h), f)| (e, h, Some(files[f].clone()))),
    ))
}

/// Reads the header of every entry (entry `i` from `files[file_of[i]]`), in parallel when there
/// are many; the first error (in entry order) wins.
fn read_headers(
    entries: &[SegmentEntry],
    file_of: &[usize],
    files: &[Arc<OpenBucket>],
) -> Result<Vec<SegmentHeader>, StoreError> {
    let read = |i: usize| {
        let f = &files[file_of[i]];
        read_header_at(&f.file, &f.path, &entries[i])
    };
    let threads = entries
        .len()
        .div_ceil(HEADERS_PER_THREAD)
        .min(MAX_HEADER_THREADS);
    if threads <= 1 {
        return (0..entries.len()).map(read).collect();
    }
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<SegmentHeader, StoreError>>> =
        (0..entries.len()).map(|_| None).collect();
    let work = || {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= entries.len() {
                break out;
            }
            out.push((i, read(i)));
        }
    };
    let done: Vec<Vec<(usize, Result<SegmentHeader, StoreError>)>> = std::thread::scope(|s| {
        // Workers take entries from a shared counter, so any number of them reads them all:
        // a thread that cannot be started (a process at its thread limit) only means fewer
        // helpers, and this thread reads along with them.
        let workers: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("export-headers".into())
                    .spawn_scoped(s, work)
                    .ok()
            })
            .collect();
        let mut done = vec![work()];
        done.extend(
            workers
                .into_iter()
                .map(|w| w.join().expect("header reader panicked")),
        );
        done
    });
    for (i, r) in done.into_iter().flatten() {
        slots[i] = Some(r);
    }
    slots
        .into_iter()
        .map(|r| r.expect("every entry was read"))
        .collect()
}

/// Reads and checks one segment's header from an open bucket file.
pub fn read_header_at(
    file: &File,
    path: &std::path::Path,
    e: &SegmentEntry,
) -> Result<SegmentHeader, StoreError> {
    let record_err = crate::store::record_error(path, e);
    let len = e.header_len as usize;
    let buf = crate::store::read_record_bytes(file, path, e, e.offset, len, len)?;
    let header = SegmentHeader::decode(&buf).map_err(&record_err)?;
    crate::store::check_header_matches(&header, e).map_err(&record_err)?;
    Ok(header)
}

/// The plan of `[from, to)` from its segments (index entry, header, open file), in time order:
/// a pure function (no I/O), shared by [`plan`] and anything that reads headers its own way.
pub fn plan_from_headers(
    camera: &str,
    from: Time90k,
    to: Time90k,
    segments: impl IntoIterator<Item = (SegmentEntry, SegmentHeader, Option<Arc<OpenBucket>>)>,
) -> Plan {
    let mut plan = Plan {
        camera: camera.to_owned(),
        ..Default::default()
    };
    let mut codec_index: BTreeMap<u64, u32> = BTreeMap::new();
    let mut times = Vec::new();
    for (e, header, file) in segments {
        // Frame start times.
        let mut t = header.start;
        times.clear();
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
            file,
        });
    }
    plan
}

/// Payload bytes announced to the kernel ahead of the one being sent (a cold page cache: the
/// disk works on several segments while one is checked and sent).
const PREFETCH_BYTES: u64 = 8 << 20;

/// Asks the kernel to start reading a chunk's payload (a cold page cache: segments ahead are
/// read while one is checked and sent). Advice only: errors are ignored.
fn prefetch(file: &File, e: &SegmentEntry) {
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            (e.offset + u64::from(e.header_len)) as libc::off_t,
            e.payload_len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
}

/// Sends the payload of every chunk of `plan`, in order, to `send`, one verified segment at a
/// time: each payload is read once (through the plan's open bucket file), checked against the
/// CRC of its index entry, and sent only if the entry is still in the index after the read (see
/// the module doc). Stops at the first error (including `send` reporting that the client went
/// away).
pub fn send_payloads(
    store: &Arc<Store>,
    plan: &mut Plan,
    mut send: impl FnMut(Bytes) -> bool,
) -> Result<(), StoreError> {
    // The open files move out of the plan, one handle per chunk; a chunk's handle is dropped
    // once it is sent, so a bucket file is closed after its last chunk and an expired (unlinked)
    // bucket's space is freed then, not at the end of a long export. Files of chunks planned
    // without one are opened once each.
    let mut own: BTreeMap<(String, Time90k), Arc<OpenBucket>> = BTreeMap::new();
    let mut files: Vec<Option<Arc<OpenBucket>>> = Vec::with_capacity(plan.chunks.len());
    for c in plan.chunks.iter_mut() {
        let f = match c.file.take() {
            Some(f) => f,
            None => match own.get(&(c.entry.policy.clone(), c.entry.bucket)) {
                Some(f) => f.clone(),
                None => {
                    let path = store.bucket_path(&c.entry.policy, c.entry.bucket);
                    let file = File::open(&path).map_err(StoreError::io("open", &path))?;
                    let f = Arc::new(OpenBucket { path, file });
                    own.insert((c.entry.policy.clone(), c.entry.bucket), f.clone());
                    f
                }
            },
        };
        files.push(Some(f));
    }
    drop(own);
    // Chunks before `ahead` have been announced to the kernel; `ahead_bytes` of them are not
    // sent yet.
    let (mut ahead, mut ahead_bytes) = (0usize, 0u64);
    for (i, c) in plan.chunks.iter().enumerate() {
        if ahead == i {
            ahead_bytes = 0;
            ahead = i + 1;
        } else {
            ahead_bytes -= c.entry.payload_len;
        }
        while ahead < plan.chunks.len() && ahead_bytes < PREFETCH_BYTES {
            if let Some(f) = &files[ahead] {
                prefetch(&f.file, &plan.chunks[ahead].entry);
            }
            ahead_bytes += plan.chunks[ahead].entry.payload_len;
            ahead += 1;
        }
        let f = files[i].take().expect("each chunk's file is taken once");
        let payload = read_payload(store, &f, &c.entry)?;
        drop(f);
        let start = c.payload_offset as usize;
        if !send(payload.slice(start..start + c.len as usize)) {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads a segment's payload (not its header) from an open bucket file, checks it against the
/// entry's CRC, and checks that the entry is still in the index.
pub fn read_payload(store: &Store, f: &OpenBucket, e: &SegmentEntry) -> Result<Bytes, StoreError> {
    let record_err = crate::store::record_error(&f.path, e);
    let buf = crate::store::read_record_bytes(
        &f.file,
        &f.path,
        e,
        e.offset + u64::from(e.header_len),
        e.payload_len as usize,
        e.record_len() as usize,
    )?;
    if crate::store::segment::payload_crc(&buf) != e.payload_crc {
        return Err(record_err(FormatError::PayloadCrc));
    }
    // Read, then checked: bytes an erasure committed before this point are never sent.
    match store.index().segment(&e.key())? {
        Some(now) if now == *e => Ok(Bytes::from(buf)),
        _ => Err(record_err(FormatError::Invalid(
            "no longer in the index (erased or expired since the export was planned)",
        ))),
    }
}

/// The bytes of one export's MP4, fixed once: its plan (without the sample table, which only
/// the header needed) and its header. Every byte range of the file is a pure function of it, so
/// the requests of one viewing (or the downloads of one export) all see the same file; the
/// payloads are read from the store on each request and checked as [`send_payloads`] checks
/// them, so footage that changed underneath fails the request instead of sending other bytes.
#[derive(Debug)]
pub struct Layout {
    /// The plan (its `samples` emptied once the header is built; see [`Layout::frames`]).
    pub plan: Plan,
    /// `ftyp`, `moov` and the `mdat` box header.
    pub head: Bytes,
    /// Frames in the clip.
    pub frames: usize,
}

impl Layout {
    /// Builds the header of `plan` and keeps what byte ranges need. With `keep_files` false the
    /// plan's open bucket files are closed (a layout kept for a while must not keep an expired
    /// bucket's unlinked file alive; each range opens what it reads).
    pub fn new(mut plan: Plan, keep_files: bool) -> Result<Layout, mp4::Mp4Error> {
        let head = mp4::header(&plan)?;
        let frames = plan.samples.len();
        plan.samples = Vec::new();
        if !keep_files {
            for c in &mut plan.chunks {
                c.file = None;
            }
        }
        Ok(Layout { plan, head, frames })
    }

    /// Length of the whole file.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.plan.payload_len()
    }

    /// Whether the file is empty (never: a layout has a header).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the layout holds (for the caps on kept layouts).
    pub fn mem_size(&self) -> usize {
        self.head.len()
            + self.plan.chunks.len()
                * (std::mem::size_of::<Chunk>()
                    + self.plan.camera.len()
                    + self.plan.chunks.first().map_or(0, |c| c.entry.policy.len()))
            + self
                .plan
                .codecs
                .iter()
                .map(|c| c.1.len() + 8)
                .sum::<usize>()
    }

    /// The chunks that hold bytes of `[start, end)` of the file, each with its file offset.
    fn chunks_in(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, &Chunk)> {
        let mut at = self.head.len() as u64;
        self.plan
            .chunks
            .iter()
            .map(move |c| {
                let o = at;
                at += c.len;
                (o, c)
            })
            .skip_while(move |(o, c)| o + c.len <= start)
            .take_while(move |(o, _)| *o < end)
    }

    /// Checks that every segment that holds bytes of `[start, end)` is still in the index as it
    /// was planned (not erased or expired since). A cheap check before a response starts, so
    /// that changed footage is refused with a status rather than a cut stream; the payload reads
    /// check again.
    pub fn still_stored(&self, store: &Store, start: u64, end: u64) -> Result<(), StoreError> {
        for (_, c) in self.chunks_in(start, end) {
            match store.index().segment(&c.entry.key())? {
                Some(now) if now == c.entry => {}
                _ => {
                    return Err(crate::store::record_error(
                        &store.bucket_path(&c.entry.policy, c.entry.bucket),
                        &c.entry,
                    )(FormatError::Invalid(
                        "no longer in the index (erased or expired since the export was planned)",
                    )))
                }
            }
        }
        Ok(())
    }

    /// Sends exactly the bytes `[start, end)` of the file to `send`, in order: the part of the
    /// header in the range, then the payload pieces that cover the rest, each segment's payload
    /// read whole, checked as [`read_payload`] checks it, and sliced to the range. Stops at the
    /// first error or when `send` returns false. `end` is clamped to [`Layout::len`].
    pub fn send_range(
        &self,
        store: &Store,
        start: u64,
        end: u64,
        mut send: impl FnMut(Bytes) -> bool,
    ) -> Result<(), StoreError> {
        let end = end.min(self.len());
        if start >= end {
            return Ok(());
        }
        let hl = self.head.len() as u64;
        if start < hl && !send(self.head.slice(start as usize..end.min(hl) as usize)) {
            return Ok(());
        }
        // One open file at a time: chunks are in time order, so a bucket's chunks follow each
        // other and its file is closed when the next bucket begins.
        let mut open: Option<Arc<OpenBucket>> = None;
        for (o, c) in self.chunks_in(start, end) {
            let f = match (&c.file, &open) {
                (Some(f), _) => f.clone(),
                (None, Some(f)) if f.path == store.bucket_path(&c.entry.policy, c.entry.bucket) => {
                    f.clone()
                }
                (None, _) => {
                    let path = store.bucket_path(&c.entry.policy, c.entry.bucket);
                    let file = File::open(&path).map_err(StoreError::io("open", &path))?;
                    let f = Arc::new(OpenBucket { path, file });
                    open = Some(f.clone());
                    f
                }
            };
            let payload = read_payload(store, &f, &c.entry)?;
            // This chunk's bytes are [o, o + len) of the file; the wanted part of them:
            let from = start.max(o) - o;
            let to = end.min(o + c.len) - o;
            let at = c.payload_offset;
            if !send(payload.slice((at + from) as usize..(at + to) as usize)) {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segment::FrameInfo;

    /// A segment of `frames` one-second frames (keyframes where `key(i)`), 100 bytes each.
    fn seg(
        start_s: i64,
        frames: usize,
        key: impl Fn(usize) -> bool,
        codec: u64,
    ) -> (SegmentEntry, SegmentHeader, Option<Arc<OpenBucket>>) {
        let start = Time90k(start_s * 90_000);
        let frames: Vec<FrameInfo> = (0..frames)
            .map(|i| FrameInfo {
                size: 100 + i as u32,
                duration: 90_000,
                key: key(i),
            })
            .collect();
        let e = SegmentEntry {
            policy: "p".into(),
            bucket: Time90k(0),
            camera: "c".into(),
            start,
            offset: 0,
            header_len: 0,
            payload_len: frames.iter().map(|f| u64::from(f.size)).sum(),
            duration: 90_000 * frames.len() as u32,
            frame_count: frames.len() as u32,
            codec_id: codec,
            payload_crc: 0,
        };
        let h = SegmentHeader {
            camera: "c".into(),
            start,
            codec_id: codec,
            codec_config: Bytes::from(codec.to_be_bytes().to_vec()),
            frames,
            payload_crc: 0,
        };
        (e, h, None)
    }

    #[test]
    fn plan_starts_at_the_keyframe_before_from_skips_gaps_and_switches_codecs() {
        let t = |s: i64| Time90k(s * 90_000);
        // Keyframes at 0 and 5 s of the first segment; a gap from 10 to 20 s; a codec change.
        let segs = vec![
            seg(0, 10, |i| i % 5 == 0, 1),
            seg(20, 10, |i| i == 0, 2),
            seg(30, 10, |i| i == 0, 1),
        ];
        let p = plan_from_headers("c", t(7), t(33), segs);
        assert_eq!(p.start, t(5));
        assert_eq!(p.end, t(33));
        // 5 s of the first, all 10 of the second, 3 of the third (the last starts at 32 s).
        assert_eq!(p.samples.len(), 5 + 10 + 3);
        assert_eq!(p.duration, 18 * 90_000);
        assert_eq!(p.chunks.len(), 3);
        assert_eq!(p.chunks[0].payload_offset, (100..105).sum::<u64>());
        assert_eq!(p.chunks[0].len, (105..110).sum::<u64>());
        assert_eq!(p.chunks[2].len, (100..103).sum::<u64>());
        assert_eq!(
            p.chunks.iter().map(|c| c.codec_index).collect::<Vec<_>>(),
            [0, 1, 0]
        );
        assert_eq!(p.codecs.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            p.payload_len(),
            p.samples.iter().map(|s| u64::from(s.size)).sum::<u64>()
        );
        // A range that starts before any keyframe begins at the first one; a range that ends
        // before the first frame is empty.
        let p = plan_from_headers("c", t(-5), t(3), vec![seg(0, 10, |i| i == 2, 1)]);
        assert_eq!(p.start, t(2));
        assert_eq!(p.samples.len(), 1);
        assert!(plan_from_headers("c", t(-20), t(-1), vec![seg(0, 10, |_| true, 1)]).is_empty());
    }
}

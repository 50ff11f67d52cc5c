//! Property checks on untrusted input, shared by the cargo-fuzz targets (`fuzz/`) and the
//! regression tests (`tests/fuzz_smoke.rs` replays `fuzz/regressions/` and the seed corpus
//! through them on stable Rust).
//!
//! Each function takes the raw bytes libFuzzer hands a target and panics when a property fails;
//! returning normally means the input was handled correctly, accepted or refused. The first
//! byte of an input picks a mode, so that one corpus holds raw inputs and inputs that the check
//! turns into well-formed ones (CRCs fixed up, records built), which gets the fuzzer past the
//! checksums into the field validation behind them.
//!
//! - [`segment_decode`]: the segment record decoder. Accepted headers re-encode to exactly the
//!   bytes they came from; `Truncated` says how many bytes are present; built headers round-trip.
//! - [`recovery_scan`]: the recovery scanner on arbitrary file bytes (written to a temporary
//!   file, with holes in the built mode). Records are inside the file, ordered, do not overlap,
//!   re-verify from the bytes, and no valid record in the bytes the scan skipped is missed.
//! - [`keytag_batch`]: the key-tag batch parser. Every accepted event is valid and the batch,
//!   written back as the API shows it, parses to the same events; a refusal names a line.
//! - [`config_load`]: the TOML config loader and its validation. Every error names its key (or
//!   the line of a TOML syntax error); an accepted config's cross references hold.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use crate::config::Config;
use crate::keytags::{self, Event};
use crate::store::recovery::scan_file;
use crate::store::segment::{
    codec_id, is_valid_camera_id, FormatError, FrameInfo, SegmentHeader, CRC_LEN, FIXED_LEN, MAGIC,
    MAX_HEADER_LEN, MAX_PAYLOAD_LEN, VERSION,
};
use crate::time::Time90k;

/// Smallest valid header: fixed part, a one-character camera id, the two CRCs.
const MIN_HEADER: usize = FIXED_LEN + 1 + CRC_LEN;

/// Reads numbers from the front of a fuzzer input; yields zeros when it runs out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

// ---------------------------------------------------------------------------------------------
// Segment records

/// Fuzz entry of the segment record decoder (see the module doc). Mode byte: 0 raw bytes,
/// 1 bytes with magic, length, codec id and both CRCs fixed up, 2 a header built from the bytes.
pub fn segment_decode(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check_decode(rest),
        1 => check_decode(&fix_record(rest)),
        _ => check_built_header(rest),
    }
}

/// Decodes `buf` and checks what the decoder says about it.
fn check_decode(buf: &[u8]) {
    let peek = SegmentHeader::peek_len(buf);
    let decoded = SegmentHeader::decode(buf);
    match &decoded {
        Ok(h) => {
            let len = *peek
                .as_ref()
                .expect("decode accepted what peek_len refused");
            assert_eq!(h.encoded_len(), len, "decoded header's length");
            let mut again = Vec::new();
            h.encode(&mut again)
                .expect("a header the decoder accepted is refused by the encoder");
            assert!(again == buf[..len], "encode(decode(x)) differs from x");
            check_payload(h, &buf[len..]);
        }
        Err(FormatError::Truncated { need, have }) => {
            assert_eq!(*have, buf.len(), "Truncated.have is not the buffer length");
            assert!(need > have, "Truncated with need {need} <= have {have}");
        }
        Err(_) => {}
    }
    // The prefix check is the same in both: a reader that fetches `peek_len` bytes and decodes
    // them sees what a reader of the whole buffer sees.
    match &peek {
        Err(e) => assert_eq!(
            decoded.as_ref().err(),
            Some(e),
            "peek_len and decode disagree"
        ),
        Ok(len) if buf.len() >= *len => {
            assert_eq!(
                SegmentHeader::decode(&buf[..*len]),
                decoded,
                "decoding exactly the header differs from decoding the buffer"
            );
        }
        Ok(_) => {}
    }
}

/// Checks payload verification against the bytes after an accepted header.
fn check_payload(h: &SegmentHeader, after: &[u8]) {
    let plen = h.payload_len();
    if (after.len() as u64) < plen {
        assert!(
            matches!(h.verify_payload(after), Err(FormatError::Truncated { .. })),
            "a short payload is not reported as truncated"
        );
        return;
    }
    let payload = &after[..plen as usize];
    let crc_ok = crc32c::crc32c(payload) == h.payload_crc;
    assert_eq!(h.verify_payload(payload).is_ok(), crc_ok, "payload check");
    if crc_ok && !payload.is_empty() {
        let mut bad = payload.to_vec();
        let i = h.payload_crc as usize % bad.len();
        bad[i] ^= 0x01;
        assert_eq!(
            h.verify_payload(&bad),
            Err(FormatError::PayloadCrc),
            "a flipped payload bit went unnoticed"
        );
    }
}

/// Turns arbitrary bytes into something with a valid magic, version, a header length that fits,
/// the codec id of its codec config (when the fields place one inside the header) and both CRCs,
/// so that the decoder's field checks are reached.
fn fix_record(rest: &[u8]) -> Vec<u8> {
    let mut b = rest.to_vec();
    if b.len() < MIN_HEADER {
        b.resize(MIN_HEADER, 0);
    }
    b[..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&VERSION.to_le_bytes());
    let declared = u32::from_le_bytes(b[6..10].try_into().expect("4 bytes")) as usize;
    let hlen = if (MIN_HEADER..=b.len().min(MAX_HEADER_LEN)).contains(&declared) {
        declared
    } else {
        b.len().min(MAX_HEADER_LEN)
    };
    b[6..10].copy_from_slice(&(hlen as u32).to_le_bytes());
    fix_crcs(&mut b[..], 0, hlen);
    b
}

/// Fixes the codec id and both CRCs of the record whose header is `b[at..at + hlen]`.
fn fix_crcs(b: &mut [u8], at: usize, hlen: usize) {
    let h = at..at + hlen;
    let codec_len = usize::from(u16::from_le_bytes([b[at + 42], b[at + 43]]));
    let camera_len = usize::from(b[at + 44]);
    let codec_at = at + FIXED_LEN + camera_len;
    if codec_at + codec_len <= h.end - CRC_LEN {
        let id = codec_id(&b[codec_at..codec_at + codec_len]);
        b[at + 34..at + 42].copy_from_slice(&id.to_le_bytes());
    }
    let plen = u64_at(b, at + 10);
    if (h.end as u64).saturating_add(plen) <= b.len() as u64 {
        let crc = crc32c::crc32c(&b[h.end..h.end + plen as usize]);
        b[h.end - 8..h.end - 4].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b[at..h.end - 4]);
    b[h.end - 4..h.end].copy_from_slice(&crc.to_le_bytes());
}

/// The camera-id alphabet plus one character outside it.
const CAMERA_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";

/// A header described by the input; `small` keeps frame sizes small enough to build payloads.
fn build_header(r: &mut Reader<'_>, small: bool) -> SegmentHeader {
    let camera_len = usize::from(r.u8() % 67);
    let camera: String = (0..camera_len)
        .map(|_| {
            let c = r.u8();
            // Mostly valid characters, sometimes one that is not.
            let i = if c >= 250 { 37 } else { usize::from(c) % 37 };
            char::from(CAMERA_CHARS[i])
        })
        .collect();
    let start = Time90k(r.u64() as i64);
    let codec_len = usize::from(r.u16() % 600);
    let codec_config = Bytes::copy_from_slice(r.bytes(codec_len));
    let frame_count = usize::from(r.u16() % if small { 64 } else { 2048 });
    let frames = (0..frame_count)
        .map(|_| FrameInfo {
            size: if small {
                u32::from(r.u16() % 512)
            } else {
                r.u32()
            },
            duration: r.u32() >> (r.u8() % 32),
            key: r.u8() & 1 == 1,
        })
        .collect();
    SegmentHeader {
        camera,
        start,
        codec_id: codec_id(&codec_config),
        codec_config,
        frames,
        payload_crc: r.u32(),
    }
}

/// Whether the encoder must accept `h` (the format's limits, restated independently).
fn header_is_valid(h: &SegmentHeader) -> bool {
    is_valid_camera_id(&h.camera)
        && !h.frames.is_empty()
        && h.duration() <= u64::from(u32::MAX)
        && h.codec_config.len() <= usize::from(u16::MAX)
        && h.encoded_len() <= MAX_HEADER_LEN
        && h.payload_len() <= MAX_PAYLOAD_LEN
}

/// Builds a header from the input: decode(encode(h)) == h, and the encoder refuses exactly the
/// headers outside the format's limits.
fn check_built_header(rest: &[u8]) {
    let mut r = Reader(rest);
    let small = r.u8() & 1 == 1;
    let mut h = build_header(&mut r, small);
    let payload: Vec<u8> = if small {
        (0..h.payload_len()).map(|i| (i as u8) ^ 0x5a).collect()
    } else {
        Vec::new()
    };
    if small {
        h.payload_crc = crc32c::crc32c(&payload);
    }
    let mut rec = Vec::new();
    let encoded = h.encode(&mut rec);
    assert_eq!(
        encoded.is_ok(),
        header_is_valid(&h),
        "encoder verdict on {h:?}: {encoded:?}"
    );
    if encoded.is_err() {
        assert!(rec.is_empty(), "a refused header left bytes behind");
        return;
    }
    assert_eq!(rec.len(), h.encoded_len());
    assert_eq!(SegmentHeader::peek_len(&rec), Ok(rec.len()));
    assert_eq!(
        SegmentHeader::decode(&rec).as_ref(),
        Ok(&h),
        "decode(encode(h)) != h"
    );
    if small {
        rec.extend_from_slice(&payload);
        let d = SegmentHeader::decode(&rec).expect("record with payload decodes");
        d.verify_payload(&rec[d.encoded_len()..])
            .expect("payload of a built record verifies");
        check_decode(&rec);
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery scanner

thread_local! {
    /// One unlinked temporary file per thread, reused for every input (tmpfs when there is one).
    static SCAN_FILE: RefCell<Option<File>> = const { RefCell::new(None) };
}

fn with_scan_file<R>(f: impl FnOnce(&File) -> R) -> R {
    SCAN_FILE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let file = cell.get_or_insert_with(|| {
            let shm = Path::new("/dev/shm");
            let made = if shm.is_dir() {
                tempfile::tempfile_in(shm)
            } else {
                tempfile::tempfile()
            };
            made.or_else(|_| tempfile::tempfile())
                .expect("temporary file for the scanner")
        });
        f(file)
    })
}

/// Lays `pieces` (offset, bytes) into the scan file of length `len`; what no piece covers is a
/// hole.
fn write_scan_file(file: &File, pieces: &[(u64, &[u8])], len: u64) {
    file.set_len(0).expect("truncate scan file");
    for (at, bytes) in pieces {
        file.write_all_at(bytes, *at).expect("write scan file");
    }
    file.set_len(len).expect("size scan file");
}

/// Fuzz entry of the recovery scanner (see the module doc). Mode byte: 0 raw file bytes, 1 file
/// bytes whose every magic-led header gets its codec id and CRCs fixed up, 2 a file built from
/// records, damaged records, garbage and holes. The next byte chooses where the scan starts
/// (the bucket's committed length).
pub fn recovery_scan(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((&from_sel, rest)) = rest.split_first() else {
        return;
    };
    match mode % 3 {
        0 => scan_and_check(&[(0, rest)], rest.len() as u64, from_sel, &[]),
        1 => {
            let fixed = fix_all_records(rest);
            scan_and_check(&[(0, &fixed)], fixed.len() as u64, from_sel, &[]);
        }
        _ => scan_built(rest, from_sel),
    }
}

/// Fixes codec ids and CRCs at every magic whose declared header fits in the bytes.
fn fix_all_records(rest: &[u8]) -> Vec<u8> {
    let mut b = rest.to_vec();
    let starts: Vec<usize> = memchr::memmem::find_iter(&b, &MAGIC).collect();
    // Back to front, so a record's payload CRC covers the fixed records inside it.
    for &at in starts.iter().rev() {
        if at + MIN_HEADER > b.len() {
            continue;
        }
        b[at + 4..at + 6].copy_from_slice(&VERSION.to_le_bytes());
        let hlen = u32::from_le_bytes(b[at + 6..at + 10].try_into().expect("4 bytes")) as usize;
        if (MIN_HEADER..=MAX_HEADER_LEN).contains(&hlen) && at + hlen <= b.len() {
            fix_crcs(&mut b, at, hlen);
        }
    }
    b
}

/// Builds a file from the input: records (valid, cut short, or with a flipped byte), garbage and
/// holes; then scans it. Every intact record placed must be found unless a record found earlier
/// overlaps it.
fn scan_built(rest: &[u8], from_sel: u8) {
    let mut r = Reader(rest);
    let mut pieces: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut intact: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    let mut steps = 0;
    while !r.is_empty() && steps < 64 && pos < (4 << 20) {
        steps += 1;
        match r.u8() % 5 {
            0..=2 => {
                let kind = r.u8();
                let mut h = build_header(&mut r, true);
                if h.frames.is_empty() {
                    h.frames.push(FrameInfo {
                        size: 7,
                        duration: 3000,
                        key: true,
                    });
                }
                if !is_valid_camera_id(&h.camera) {
                    h.camera = "cam".into();
                }
                let payload: Vec<u8> = (0..h.payload_len()).map(|i| (i * 7) as u8).collect();
                h.payload_crc = crc32c::crc32c(&payload);
                let mut rec = Vec::new();
                if h.encode(&mut rec).is_err() {
                    continue;
                }
                rec.extend_from_slice(&payload);
                match kind % 4 {
                    // Cut short (a torn write).
                    1 => {
                        let keep = usize::from(r.u16()) % rec.len();
                        rec.truncate(keep);
                    }
                    // One flipped byte (bit rot).
                    2 => {
                        let i = usize::from(r.u16()) % rec.len();
                        rec[i] ^= 1 << (r.u8() % 8);
                    }
                    _ => intact.push((pos, rec.len() as u64)),
                }
                let n = rec.len() as u64;
                pieces.push((pos, rec));
                pos += n;
            }
            3 => {
                let n = usize::from(r.u16() % 512);
                let g = r.bytes(n).to_vec();
                let n = g.len() as u64;
                pieces.push((pos, g));
                pos += n;
            }
            _ => {
                // A hole: a whole number of pages (punched), or a few zeros.
                let n = if r.u8() & 1 == 1 {
                    4096 * u64::from(r.u8() % 4 + 1)
                } else {
                    u64::from(r.u8())
                };
                pos += n;
            }
        }
    }
    let refs: Vec<(u64, &[u8])> = pieces.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    scan_and_check(&refs, pos, from_sel, &intact);
}

/// Writes the file, scans it from the offset `from_sel` picks, and checks the outcome. `intact`
/// lists records placed whole (offset, length) that the scan must find.
/// The zero padding a direct writer leaves after a record ending at `g0` (the next record, if
/// any, at `g1`): zeros up to the next aligned offset, which the scanner does not count as skipped.
fn zero_padding(image: &[u8], g0: u64, g1: u64, len: u64) -> u64 {
    use crate::store::segment::{align_up, PREFIX_LEN, RECORD_ALIGN};
    let next = align_up(g0 + 1);
    if g1 == g0
        || g0.is_multiple_of(RECORD_ALIGN)
        || next + PREFIX_LEN as u64 > len
        || next > g1
        || image[g0 as usize..next as usize].iter().any(|&b| b != 0)
    {
        return 0;
    }
    next - g0
}

fn scan_and_check(pieces: &[(u64, &[u8])], len: u64, from_sel: u8, intact: &[(u64, u64)]) {
    let mut image = vec![0u8; len as usize];
    for (at, b) in pieces {
        image[*at as usize..*at as usize + b.len()].copy_from_slice(b);
    }
    // Mostly from 0 (a file the index never knew), else some committed length inside the file.
    let from = if from_sel < 128 {
        0
    } else {
        u64::from(from_sel - 128) * len / 127
    };
    let path = Path::new("fuzz-scan.seg");
    let out = with_scan_file(|file| {
        write_scan_file(file, pieces, len);
        scan_file(file, path, from, len).expect("scan of a readable file fails")
    });

    // Records lie in [from, len), in order, without overlap, and re-verify from the bytes.
    let mut end = from;
    let mut covered = 0u64;
    let mut padding = 0u64;
    let mut gaps = Vec::new();
    for (off, h) in &out.records {
        assert!(
            *off >= end,
            "record at {off} overlaps the one before (ends {end})"
        );
        let rlen = h.encoded_len() as u64 + h.payload_len();
        let rec_end = off + rlen;
        assert!(
            rec_end <= len,
            "record at {off} of {rlen} bytes ends past the file end {len}"
        );
        let bytes = &image[*off as usize..rec_end as usize];
        let d = SegmentHeader::decode(bytes).expect("a reported record decodes");
        assert_eq!(&d, h, "reported header differs from the bytes at {off}");
        d.verify_payload(&bytes[d.encoded_len()..])
            .expect("a reported record's payload verifies");
        gaps.push((end, *off));
        padding += zero_padding(&image, end, *off, len);
        covered += rlen;
        end = rec_end;
    }
    assert_eq!(
        out.valid_end, end,
        "valid_end is not the end of the last record"
    );
    assert_eq!(
        out.skipped,
        end - from - covered - padding,
        "skipped bytes between records (zero padding to the next aligned offset excluded)"
    );
    gaps.push((end, len));

    // No valid record starts in a stretch the scan passed over: at its start, or at a magic.
    for (g0, g1) in gaps {
        let candidates = std::iter::once(g0).chain(
            memchr::memmem::find_iter(&image[g0 as usize..g1 as usize], &MAGIC)
                .map(|i| g0 + i as u64),
        );
        for p in candidates.filter(|p| *p < g1) {
            if let Some(rlen) = valid_record_at(&image, p as usize) {
                panic!("valid record at {p} ({rlen} bytes) in skipped range {g0}..{g1} missed");
            }
        }
    }
    for (off, rlen) in intact {
        if *off < from {
            continue;
        }
        let found = out.records.iter().any(|(o, _)| o == off);
        let shadowed = out.records.iter().any(|(o, h)| {
            let e = o + h.encoded_len() as u64 + h.payload_len();
            *o < off + rlen && *off < e && o != off
        });
        assert!(
            found || shadowed,
            "intact record at {off} ({rlen} bytes) not found"
        );
    }
}

/// Length of the valid, complete record starting at `p` of `image`, if one does.
fn valid_record_at(image: &[u8], p: usize) -> Option<u64> {
    let h = SegmentHeader::decode(&image[p..]).ok()?;
    let hl = h.encoded_len();
    let pl = h.payload_len();
    if (image.len() - p - hl) as u64 >= pl {
        h.verify_payload(&image[p + hl..p + hl + pl as usize])
            .ok()?;
        Some(hl as u64 + pl)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Key-tag batches

/// The sites a fuzzed submitter may name; no `site` field means the first.
const KEYTAG_SITES: [&str; 2] = ["maas-noord", "heuvel-west"];

fn keytag_site(s: Option<&str>) -> Result<String, String> {
    match s {
        None => Ok(KEYTAG_SITES[0].to_owned()),
        Some(s) if KEYTAG_SITES.contains(&s) => Ok(s.to_owned()),
        Some(s) => Err(format!("{s:?} is not your site")),
    }
}

/// Fuzz entry of the key-tag batch parser (the body of `POST /api/v1/keytags`): no panic,
/// every accepted event is valid and the batch written back (NDJSON and JSON array, times as
/// the API shows them) parses to the same events; a refusal names a line of the body.
pub fn keytag_batch(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    match keytags::parse_batch(body, keytag_site) {
        Ok(events) => {
            assert!(!events.is_empty(), "an empty batch was accepted");
            for e in &events {
                for (what, v) in [("tag", &e.tag), ("door", &e.door)] {
                    assert!(
                        !v.is_empty()
                            && v.len() <= keytags::MAX_ID_LEN
                            && !v.chars().any(char::is_control),
                        "accepted {what} {v:?}"
                    );
                }
                assert!(KEYTAG_SITES.contains(&e.site.as_str()), "site {:?}", e.site);
            }
            let lines: Vec<String> = events.iter().map(event_json).collect();
            let again = keytags::parse_batch(&lines.join("\n"), keytag_site)
                .expect("accepted events written back as NDJSON are refused");
            assert_eq!(again, events, "events change when written back as NDJSON");
            let again = keytags::parse_batch(&format!("[{}]", lines.join(",")), keytag_site)
                .expect("accepted events written back as a JSON array are refused");
            assert_eq!(again, events, "events change when written back as an array");
        }
        Err(e) => {
            let lines = body.lines().count().max(1);
            assert!(
                e.line >= 1 && e.line <= lines.max(body.len()),
                "error names line {} of a body of {lines} lines: {e}",
                e.line
            );
            assert!(!e.message.is_empty(), "error without a message");
        }
    }
}

/// An event as the API shows it (and as an access system would send it back).
fn event_json(e: &Event) -> String {
    serde_json::json!({"tag": e.tag, "door": e.door, "time": e.time, "site": e.site}).to_string()
}

// ---------------------------------------------------------------------------------------------
// Config

/// Fuzz entry of the config loader (`Config::parse`, what `Config::load` and `check-config` run):
/// no panic; every error names its key, or is a TOML syntax error naming a line, or a top-level
/// serde error naming the missing or unknown key; an accepted config's references hold.
pub fn config_load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(cfg) => {
            let bucket = cfg.storage.bucket_secs();
            assert!(
                bucket >= 1 && 86_400 % bucket == 0,
                "accepted bucket {bucket}s"
            );
            for c in &cfg.cameras {
                assert!(is_valid_camera_id(&c.id), "accepted camera id {:?}", c.id);
                let policy = cfg.camera_policy(c);
                assert!(
                    cfg.policies.contains_key(policy),
                    "camera {} has policy {policy:?} that is not configured",
                    c.id
                );
                assert!(
                    c.url.password().is_none(),
                    "camera {} accepted with a password in its URL",
                    c.id
                );
            }
            for s in &cfg.sites {
                assert!(
                    cfg.policies.contains_key(&s.policy),
                    "site {} has policy {:?} that is not configured",
                    s.id,
                    s.policy
                );
            }
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "an error list without errors");
            if let Some((secrets, replaced)) = url_passwords(text) {
                let shown = |errs: &[crate::config::ConfigError], s: &str| {
                    errs.iter().any(|e| e.to_string().contains(s))
                };
                let without = Config::parse(&replaced)
                    .err()
                    .map(|e| e.0)
                    .unwrap_or_default();
                for s in secrets {
                    assert!(
                        !shown(&errs.0, &s) || shown(&without, &s),
                        "a config error shows the password of a camera URL: {errs}"
                    );
                }
            }
            for e in &errs.0 {
                let names_something = !e.key.is_empty()
                    || (e.message.starts_with("not valid TOML") && e.message.contains("line"))
                    || e.message.contains('`');
                assert!(names_something, "config error names no key: {e:?}");
                assert!(
                    !e.message.is_empty(),
                    "config error without a message: {e:?}"
                );
            }
        }
    }
}

/// For a TOML `text` whose `[[cameras]]` have URLs with passwords: each password (as written
/// and percent-decoded, when at least 4 characters) and the config text with every such
/// password replaced by a stand-in, so a message that shows a password can be told from one
/// that merely contains the same characters.
fn url_passwords(text: &str) -> Option<(Vec<String>, String)> {
    let mut doc = text.parse::<toml::Table>().ok()?;
    let cams = doc.get_mut("cameras")?.as_array_mut()?;
    let mut secrets = Vec::new();
    for c in cams.iter_mut() {
        let Some(t) = c.as_table_mut() else {
            continue;
        };
        let Some(mut u) = t
            .get("url")
            .and_then(|u| u.as_str())
            .and_then(|u| url::Url::parse(u).ok())
        else {
            continue;
        };
        let Some(p) = u.password().map(str::to_owned) else {
            continue;
        };
        let decoded = percent_encoding::percent_decode_str(&p)
            .decode_utf8_lossy()
            .into_owned();
        secrets.extend([p, decoded].into_iter().filter(|p| p.len() >= 4));
        if u.set_password(Some("stand-in-pw")).is_ok() {
            t.insert("url".into(), toml::Value::String(u.to_string()));
        }
    }
    if secrets.is_empty() {
        return None;
    }
    Some((secrets, toml::to_string(&doc).ok()?))
}

//! Staging a segment's payload into the writer's direct-write buffer: one pass that checksums
//! the frames and copies them, built for the case the writer is in.
//!
//! The frames were received seconds ago (a segment is buffered whole per camera), so at 200
//! cameras they are far out of every cache, and so is the staging slot (16 MiB slots, reused
//! only after their write completed). A plain `copy_from_slice` then reads each destination line
//! before writing it (read-for-ownership) and leaves the copy in the cache, where nothing reads
//! it again: the disk's DMA reads memory. So [`stage_frames`] does it the other way round:
//! - the CRC32C of each frame is computed on the *source* first (PCLMULQDQ folding in
//!   `crc-fast`, compute-bound, so the hardware prefetcher has time to bring the frame in);
//! - the frame, now in cache, is copied with non-temporal stores (`movntdq`), which write whole
//!   lines to memory without reading them first and without evicting anything;
//! - one `sfence` at the end makes the stores visible before the buffer is handed to the kernel.
//!
//! Measured on the development VM (benches/staging.rs, 200 cameras x 50 frames of 15-25 kB, a
//! 64 MiB destination): see design/performance.md, "Staging with non-temporal stores".
//! Elsewhere than x86_64 it is a plain copy after the checksum.

/// Copies `frames` one after the other into the start of `dst` and returns the CRC32C
/// (Castagnoli, as in the segment format) of their concatenation. `dst` must hold at least
/// their total length; bytes after it are left alone.
///
/// # Panics
/// If `dst` is shorter than the frames together.
pub fn stage_frames<'a>(frames: impl IntoIterator<Item = &'a [u8]>, dst: &mut [u8]) -> u32 {
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    let mut at = 0;
    for f in frames {
        let to = &mut dst[at..at + f.len()];
        crc.update(f);
        copy_streaming(to, f);
        at += f.len();
    }
    store_fence();
    crc.finalize() as u32
}

/// Copies `src` into `dst` (equal lengths) with non-temporal stores for every whole 64-byte
/// aligned line of `dst`, plain stores for the unaligned head and the tail. The stores are
/// not ordered with later ones until [`store_fence`].
fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_streaming: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        const BLOCK: usize = 64;
        let n = dst.len();
        // Bytes up to the first cache-line (64-byte) boundary of the destination, so that the
        // streaming stores fill whole lines (a line partly written by plain stores would be
        // read in first, and flushed twice).
        let head = (dst.as_ptr() as usize).wrapping_neg() & 63;
        if n < head + BLOCK {
            dst.copy_from_slice(src);
            return;
        }
        dst[..head].copy_from_slice(&src[..head]);
        let body_end = head + (n - head) / BLOCK * BLOCK;
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut o = head;
        while o < body_end {
            // SAFETY: `o + BLOCK <= body_end <= n` for both slices (equal lengths, asserted),
            // so every load and store is in bounds; `d + o` is 64-byte aligned (`o - head` is a
            // multiple of 64 and `d + head` is aligned), so each of the four 16-byte stores is
            // 16-byte aligned as `_mm_stream_si128` requires;
            // unaligned loads need no alignment. SSE2 is part of the x86_64 baseline.
            unsafe {
                let a = _mm_loadu_si128(s.add(o).cast::<__m128i>());
                let b = _mm_loadu_si128(s.add(o + 16).cast::<__m128i>());
                let c = _mm_loadu_si128(s.add(o + 32).cast::<__m128i>());
                let e = _mm_loadu_si128(s.add(o + 48).cast::<__m128i>());
                _mm_stream_si128(d.add(o).cast::<__m128i>(), a);
                _mm_stream_si128(d.add(o + 16).cast::<__m128i>(), b);
                _mm_stream_si128(d.add(o + 32).cast::<__m128i>(), c);
                _mm_stream_si128(d.add(o + 48).cast::<__m128i>(), e);
            }
            o += BLOCK;
        }
        dst[body_end..].copy_from_slice(&src[body_end..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Orders the non-temporal stores of [`copy_streaming`] before every later store and before
/// the buffer is handed to the kernel.
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no preconditions; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(frames: &[Vec<u8>]) -> (Vec<u8>, u32) {
        // An independent implementation (the `crc32c` crate's) as the reference.
        let all: Vec<u8> = frames.concat();
        let crc = crc32c::crc32c(&all);
        (all, crc)
    }

    #[test]
    fn every_alignment_and_length_copies_exactly() {
        // Destination offsets 0..130 (every misalignment within a line, twice over) and lengths
        // around the 16-byte and 64-byte edges, with sentinel bytes before and after that must
        // survive.
        let lens = [
            0usize, 1, 15, 16, 17, 63, 64, 65, 79, 80, 127, 128, 129, 191, 4095, 4096, 20_011,
        ];
        for off in 0..130 {
            for &len in &lens {
                let src: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                let mut buf = vec![0xAAu8; off + len + 40];
                let crc = stage_frames([&src[..]], &mut buf[off..]);
                assert_eq!(&buf[off..off + len], &src[..], "off {off} len {len}");
                assert!(
                    buf[..off].iter().all(|&b| b == 0xAA),
                    "before: off {off} len {len}"
                );
                assert!(
                    buf[off + len..].iter().all(|&b| b == 0xAA),
                    "after: off {off} len {len}"
                );
                assert_eq!(crc, reference(&[src]).1, "crc: off {off} len {len}");
            }
        }
    }

    #[test]
    fn frames_are_concatenated_and_checksummed_as_one() {
        let frames: Vec<Vec<u8>> = [3usize, 100, 0, 4097, 65, 20_000]
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| (i ^ (k * 31)) as u8).collect())
            .collect();
        let (all, crc) = reference(&frames);
        let mut dst = vec![0u8; all.len() + 5];
        let got = stage_frames(frames.iter().map(|f| &f[..]), &mut dst[5..]);
        assert_eq!(&dst[5..], &all[..]);
        assert_eq!(got, crc);
        // The segment format's CRC32C (Castagnoli): the standard check value.
        assert_eq!(
            stage_frames([&b"123456789"[..]], &mut [0u8; 9]),
            0xE306_9283
        );
    }

    #[test]
    #[should_panic]
    fn a_short_destination_panics_rather_than_truncating() {
        stage_frames([&[1u8; 100][..]], &mut [0u8; 99]);
    }
}

//! Staging a segment's payload into the writer's direct-write buffer: one pass that checksums
//! the frames and copies them, built for the case the writer is in.
//!
//! The frames were received seconds ago (a segment is buffered whole per camera), so at 200
//! cameras they are far out of every cache, and so is the staging slot (16 MiB slots, reused
//! only after their write completed). Whatever reads the frames first pays for bringing them in
//! from memory; after that, a plain `copy_from_slice` would read each destination line before
//! writing it (read-for-ownership) and leave the copy in the cache, where nothing reads it again:
//! the disk's DMA reads memory. So [`stage_frames`] reads each frame once and does both jobs
//! on the bytes it loaded:
//! - on x86_64 with PCLMULQDQ and SSE4.2 (Intel since Westmere, AMD since Bulldozer; checked at
//!   run time), one loop per frame loads, for every whole 64-byte line of the slot, the 64
//!   bytes of the frame that go there, writes them with non-temporal stores (`movntdq`, whole
//!   lines to memory, without reading them first and without evicting anything) and folds them
//!   into four CRC accumulators with carry-less multiplication; the bytes before the slot's
//!   first 64-byte boundary and after its last one go through SSE4.2's `crc32` and plain
//!   stores. The folding is the method of Intel's "Fast CRC Computation for Generic Polynomials
//!   Using PCLMULQDQ" (Gopal et al., 2009) in its bit-reflected form, with the constants of the
//!   Castagnoli polynomial (derived in `tests::folding_constants_are_the_castagnoli_ones`).
//!   Where the CPU also has AVX-512F and VPCLMULQDQ (Intel since Ice Lake, AMD since Zen 4),
//!   the same loop runs on 512-bit registers: one load, one non-temporal store (`vmovntdq`)
//!   and one fold of all four accumulators (one per 128-bit lane) per line. Where 512-bit work
//!   lowers the core's clock (Intel before Sapphire Rapids) the loop is short and the rest of
//!   the daemon is scalar or narrower code; it was measured only on a Sapphire Rapids-class VM
//!   (design/performance.md);
//! - elsewhere ([`stage_frames_portable`]), the CRC32C of each frame is computed on the source
//!   first (`crc-fast`), and the frame, now in cache, is copied with non-temporal stores.
//!
//! One `sfence` at the end (also when a short destination panics) makes the stores visible
//! before the buffer is handed to the kernel.
//!
//! Measured on the development VM (benches/staging.rs, 200 cameras x 50 frames of 15-25 kB, a
//! 64 MiB destination): see design/performance.md, "Staging in one pass (session 13)" and
//! "The one-pass loop on AVX-512 (session 14)".

/// Copies `frames` one after the other into the start of `dst` and returns the CRC32C
/// (Castagnoli, as in the segment format) of their concatenation. `dst` must hold at least
/// their total length; bytes after it are left alone.
///
/// # Panics
/// If `dst` is shorter than the frames together.
pub fn stage_frames<'a>(frames: impl IntoIterator<Item = &'a [u8]>, dst: &mut [u8]) -> u32 {
    stage_with(frames, dst, true)
}

/// The one-pass loop where the CPU can run it (its 512-bit form if `allow_wide` and the CPU
/// has it), else [`stage_frames_portable`].
fn stage_with<'a>(
    frames: impl IntoIterator<Item = &'a [u8]>,
    dst: &mut [u8],
    allow_wide: bool,
) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: `available()` checked that the CPU has the features `stage` needs, and
        // `wide()` those of its 512-bit loop.
        return unsafe { x86::stage(frames, dst, allow_wide && x86::wide()) };
    }
    let _ = allow_wide;
    stage_frames_portable(frames, dst)
}

/// Whether [`stage_frames`] runs its one-pass loop on this machine (x86_64 with PCLMULQDQ and
/// SSE4.2) rather than [`stage_frames_portable`]; the staging bench says which it measured.
pub fn one_pass() -> bool {
    #[cfg(target_arch = "x86_64")]
    return x86::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the one-pass loop of [`stage_frames`] runs with 512-bit registers here (AVX-512F and
/// VPCLMULQDQ) rather than 128-bit ones.
pub fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    return x86::wide();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`stage_frames`] with the one-pass loop's 128-bit registers even where the 512-bit loop
/// could run (where neither can: [`stage_frames_portable`]). For the staging bench, which
/// compares the two loops in one run; not for the writer.
#[doc(hidden)]
pub fn stage_frames_128<'a>(frames: impl IntoIterator<Item = &'a [u8]>, dst: &mut [u8]) -> u32 {
    stage_with(frames, dst, false)
}

/// What [`stage_frames`] does where its one-pass loop cannot run (another architecture, or an
/// x86_64 CPU without PCLMULQDQ or SSE4.2): the CRC32C of each frame on the source (`crc-fast`),
/// then a non-temporal copy of the frame from the cache. Same contract and result; public so
/// that the staging bench can compare the two.
///
/// # Panics
/// If `dst` is shorter than the frames together.
pub fn stage_frames_portable<'a>(
    frames: impl IntoIterator<Item = &'a [u8]>,
    dst: &mut [u8],
) -> u32 {
    let _fence = FenceOnDrop;
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    let mut at = 0;
    for f in frames {
        let to = &mut dst[at..at + f.len()];
        crc.update(f);
        copy_streaming(to, f);
        at += f.len();
    }
    crc.finalize() as u32
}

/// The one-pass copy and CRC32C of [`stage_frames`] on x86_64.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m512i, _mm512_broadcast_i32x4, _mm512_clmulepi64_epi128,
        _mm512_extracti32x4_epi32, _mm512_loadu_si512, _mm512_stream_si512,
        _mm512_ternarylogic_epi64, _mm512_xor_si512, _mm512_zextsi128_si512, _mm_and_si128,
        _mm_clmulepi64_si128, _mm_crc32_u64, _mm_crc32_u8, _mm_cvtsi128_si32, _mm_cvtsi32_si128,
        _mm_loadu_si128, _mm_set_epi64x, _mm_setr_epi32, _mm_srli_si128, _mm_stream_si128,
        _mm_xor_si128,
    };

    /// The folding constants for CRC32C (Castagnoli, 0x1EDC6F41), bit-reflected and shifted as
    /// the reflected algorithm uses them: `x^n mod P` for the distances of a fold.
    /// Fold by 512 bits (four accumulators): `x^(512+32) mod P`, `x^(512-32) mod P`.
    pub(super) const K1: i64 = 0x740e_ef02;
    /// See [`K1`].
    pub(super) const K2: i64 = 0x9e4a_ddf8;
    /// Fold by 128 bits: `x^(128+32) mod P`, `x^(128-32) mod P`.
    pub(super) const K3: i64 = 0xf20c_0dfe;
    /// See [`K3`].
    pub(super) const K4: i64 = 0x1_4cd0_0bd6;
    /// 64 to 32 bits: `x^64 mod P`.
    pub(super) const K5: i64 = 0xdd45_aab8;
    /// Barrett reduction: the polynomial itself (33 bits, reflected) and `floor(x^64 / P)`.
    pub(super) const POLY: i64 = 0x1_05ec_76f1;
    /// See [`POLY`].
    pub(super) const MU: i64 = 0xdea7_13f1;

    /// Whether this CPU can run [`stage`] (the result is cached by `std`).
    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("pclmulqdq") && std::is_x86_feature_detected!("sse4.2")
    }

    /// Whether this CPU can also run [`stage`]'s 512-bit loop (AVX-512F and VPCLMULQDQ: Intel
    /// since Ice Lake, AMD since Zen 4).
    pub(super) fn wide() -> bool {
        available()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("vpclmulqdq")
    }

    /// [`super::stage_frames`] by the one-pass loop: every frame through [`copy_crc`] (its
    /// 512-bit loop when `wide`), one `sfence`, the finished CRC.
    ///
    /// # Safety
    /// The CPU must have PCLMULQDQ and SSE4.2 ([`available`]), and AVX-512F and VPCLMULQDQ
    /// if `wide` ([`wide`]).
    pub(super) unsafe fn stage<'a>(
        frames: impl IntoIterator<Item = &'a [u8]>,
        dst: &mut [u8],
        wide: bool,
    ) -> u32 {
        let _fence = super::FenceOnDrop;
        let mut state = !0u32;
        let mut at = 0;
        for f in frames {
            let to = &mut dst[at..at + f.len()];
            // SAFETY: the caller promised the CPU features `copy_crc` is compiled for.
            state = unsafe { copy_crc(state, f, to, wide) };
            at += f.len();
        }
        !state
    }

    /// Copies `src` into `dst` (equal lengths) and returns the CRC32C register after `src`,
    /// starting from `state` (the register, not the finished CRC: start from `!0` and invert
    /// at the end). Non-temporal stores for every whole 64-byte line of `dst`; they are not
    /// ordered with later stores until an `sfence`.
    ///
    /// # Safety
    /// The CPU must have PCLMULQDQ and SSE4.2 ([`available`]), and AVX-512F and VPCLMULQDQ
    /// if `wide` ([`wide`]).
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    unsafe fn copy_crc(state: u32, src: &[u8], dst: &mut [u8], wide: bool) -> u32 {
        assert_eq!(dst.len(), src.len(), "copy_crc: lengths differ");
        let n = src.len();
        let head = super::to_line(dst).min(n);
        let blocks = (n - head) / 64;
        let body_end = head + blocks * 64;
        let mut state = crc_bytes(state, &src[..head]);
        dst[..head].copy_from_slice(&src[..head]);
        if blocks > 0 {
            // SAFETY: `head + 64 * blocks = body_end <= n` bytes of both slices, and
            // `dst + head` is 64-byte aligned (or `head == n` and `blocks == 0`); the caller
            // promised the features of the loop chosen.
            let (s, d) = unsafe { (src.as_ptr().add(head), dst.as_mut_ptr().add(head)) };
            state = if wide {
                // SAFETY: as above; `wide` means the caller checked AVX-512F and VPCLMULQDQ.
                unsafe { fold_copy_512(state, s, d, blocks) }
            } else {
                // SAFETY: as above; this function's own features are the loop's.
                unsafe { fold_copy(state, s, d, blocks) }
            };
        }
        state = crc_bytes(state, &src[body_end..]);
        dst[body_end..].copy_from_slice(&src[body_end..]);
        state
    }

    /// The CRC32C register after `bytes` with SSE4.2's `crc32` (8 bytes at a time).
    #[target_feature(enable = "sse4.2")]
    fn crc_bytes(mut state: u32, bytes: &[u8]) -> u32 {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let v = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
            state = _mm_crc32_u64(u64::from(state), v) as u32;
        }
        for &b in words.remainder() {
            state = _mm_crc32_u8(state, b);
        }
        state
    }

    /// Copies `blocks` 64-byte blocks from `src` to `dst` with non-temporal stores, folding
    /// them into the CRC32C register `state`.
    ///
    /// # Safety
    /// `src` must be readable and `dst` writable for `64 * blocks` bytes, `dst` 16-byte
    /// aligned (64 for whole lines), `blocks >= 1`, and the CPU must have PCLMULQDQ.
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    unsafe fn fold_copy(state: u32, src: *const u8, dst: *mut u8, blocks: usize) -> u32 {
        // SAFETY (whole body): every load is of a 16-byte piece of `src[..64 * blocks]`, every
        // store of a 16-byte aligned piece of `dst[..64 * blocks]`, as the caller promised.
        unsafe {
            let load = |o: usize| _mm_loadu_si128(src.add(o).cast::<__m128i>());
            let store = |o: usize, v: __m128i| _mm_stream_si128(dst.add(o).cast::<__m128i>(), v);
            // The 64 bytes at `o` copied, and returned for folding.
            let block = |o: usize| {
                let v = (load(o), load(o + 16), load(o + 32), load(o + 48));
                store(o, v.0);
                store(o + 16, v.1);
                store(o + 32, v.2);
                store(o + 48, v.3);
                v
            };
            let (mut x1, mut x2, mut x3, mut x4) = block(0);
            // The register goes into the first 32 bits of the message (reflected CRC).
            x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128(state as i32));
            let k1k2 = _mm_set_epi64x(K2, K1);
            for b in 1..blocks {
                let (y1, y2, y3, y4) = block(64 * b);
                x1 = fold(x1, k1k2, y1);
                x2 = fold(x2, k1k2, y2);
                x3 = fold(x3, k1k2, y3);
                x4 = fold(x4, k1k2, y4);
            }
            reduce(x1, x2, x3, x4)
        }
    }

    /// [`fold_copy`] with 512-bit registers: each 64-byte block is one load, one non-temporal
    /// store and one fold of all four accumulators at once (`vpclmulqdq` works on each 128-bit
    /// lane, so lane `i` is the 128-bit loop's accumulator `i`, with the same constants).
    ///
    /// # Safety
    /// As [`fold_copy`], with `dst` 64-byte aligned, and the CPU must have AVX-512F and
    /// VPCLMULQDQ.
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.2")]
    unsafe fn fold_copy_512(state: u32, src: *const u8, dst: *mut u8, blocks: usize) -> u32 {
        // SAFETY (whole body): every load is of a 64-byte piece of `src[..64 * blocks]`, every
        // store of a 64-byte aligned piece of `dst[..64 * blocks]`, as the caller promised.
        unsafe {
            let block = |o: usize| {
                let v = _mm512_loadu_si512(src.add(o).cast::<__m512i>());
                _mm512_stream_si512(dst.add(o).cast::<__m512i>(), v);
                v
            };
            // The register goes into the first 32 bits of the message (reflected CRC).
            let first = _mm512_zextsi128_si512(_mm_cvtsi32_si128(state as i32));
            let mut x = _mm512_xor_si512(block(0), first);
            let k1k2 = _mm512_broadcast_i32x4(_mm_set_epi64x(K2, K1));
            for b in 1..blocks {
                let y = block(64 * b);
                let lo = _mm512_clmulepi64_epi128(x, k1k2, 0x00);
                let hi = _mm512_clmulepi64_epi128(x, k1k2, 0x11);
                // lo ^ hi ^ y (truth table 0x96: the three-way exclusive or).
                x = _mm512_ternarylogic_epi64(lo, hi, y, 0x96);
            }
            reduce(
                _mm512_extracti32x4_epi32(x, 0),
                _mm512_extracti32x4_epi32(x, 1),
                _mm512_extracti32x4_epi32(x, 2),
                _mm512_extracti32x4_epi32(x, 3),
            )
        }
    }

    /// The CRC32C register from the four 128-bit accumulators of a fold loop (the last 64
    /// bytes' four adjacent 16-byte pieces, in order): folded into one with the 128-bit
    /// constants, then 128 bits to 64, then Barrett's reduction to 32.
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    fn reduce(x1: __m128i, x2: __m128i, x3: __m128i, x4: __m128i) -> u32 {
        let k3k4 = _mm_set_epi64x(K4, K3);
        let mut x1 = fold(x1, k3k4, x2);
        x1 = fold(x1, k3k4, x3);
        x1 = fold(x1, k3k4, x4);
        // 128 bits to 64.
        let low32 = _mm_setr_epi32(!0, 0, !0, 0);
        let t = _mm_clmulepi64_si128(x1, k3k4, 0x10);
        x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), t);
        let k5 = _mm_set_epi64x(0, K5);
        let t = _mm_srli_si128(x1, 4);
        x1 = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5, 0x00);
        x1 = _mm_xor_si128(x1, t);
        // Barrett reduction to 32 bits.
        let poly = _mm_set_epi64x(MU, POLY);
        let t = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), poly, 0x10);
        let t = _mm_clmulepi64_si128(_mm_and_si128(t, low32), poly, 0x00);
        x1 = _mm_xor_si128(x1, t);
        _mm_cvtsi128_si32(_mm_srli_si128(x1, 4)) as u32
    }

    /// One fold: `acc` moved forward by the distance `k` encodes, plus `data`.
    #[target_feature(enable = "pclmulqdq")]
    fn fold(acc: __m128i, k: __m128i, data: __m128i) -> __m128i {
        let lo = _mm_clmulepi64_si128(acc, k, 0x00);
        let hi = _mm_clmulepi64_si128(acc, k, 0x11);
        _mm_xor_si128(_mm_xor_si128(lo, hi), data)
    }
}

/// The bytes from the start of `dst` up to its first 64-byte (cache-line) boundary: the
/// streaming stores start there, so that they fill whole lines (a line partly written by plain
/// stores would be read in first, and flushed twice).
#[cfg(target_arch = "x86_64")]
fn to_line(dst: &[u8]) -> usize {
    (dst.as_ptr() as usize).wrapping_neg() & 63
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
        let head = to_line(dst);
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

/// Calls [`store_fence`] when dropped: at the end of staging, and also when it panics (a short
/// destination) after some non-temporal stores, before the buffer can be freed or reused.
struct FenceOnDrop;

impl Drop for FenceOnDrop {
    fn drop(&mut self) {
        store_fence();
    }
}

/// Orders the non-temporal stores of [`copy_streaming`] and of the one-pass loop before every
/// later store and before the buffer is handed to the kernel.
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
    use proptest::prelude::*;

    /// Every path: what `stage_frames` runs here (the 512-bit loop where the CPU has it), the
    /// 128-bit loop (`stage_frames_128`), the portable one, and the 512-bit loop called
    /// directly where the CPU can run it (so that it stays tested should `stage_frames` stop
    /// choosing it); stderr says once which loop this CPU cannot run.
    type Stage = fn(&[&[u8]], &mut [u8]) -> u32;
    fn paths() -> Vec<(&'static str, Stage)> {
        #[allow(unused_mut)]
        let mut p: Vec<(&'static str, Stage)> = vec![
            ("stage_frames", |f, d| stage_frames(f.iter().copied(), d)),
            ("stage_frames_128", |f, d| {
                stage_frames_128(f.iter().copied(), d)
            }),
            ("portable", |f, d| {
                stage_frames_portable(f.iter().copied(), d)
            }),
        ];
        #[cfg(target_arch = "x86_64")]
        if x86::wide() {
            // SAFETY: `wide()` was checked above.
            p.push(("one pass, 512-bit", |f, d| unsafe {
                x86::stage(f.iter().copied(), d, true)
            }));
        }
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            if !one_pass() {
                eprintln!(
                    "this CPU cannot run the one-pass loop: only the portable path is tested"
                );
            } else if !wide() {
                eprintln!("this CPU cannot run the 512-bit one-pass loop: it is not tested");
            }
        });
        p
    }

    /// `len` bytes that do not repeat with any short period (xorshift), so that a block
    /// copied to or checksummed at the wrong place cannot come out right by accident.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn reference(frames: &[Vec<u8>]) -> (Vec<u8>, u32) {
        // An independent implementation (the `crc32c` crate's) as the reference.
        let all: Vec<u8> = frames.concat();
        let crc = crc32c::crc32c(&all);
        (all, crc)
    }

    #[test]
    fn every_alignment_and_length_copies_exactly() {
        // Destination offsets 0..130 (every misalignment within a line, twice over) and lengths
        // around the 16-byte and 64-byte edges and the first whole blocks, with sentinel bytes
        // before and after that must survive.
        let lens = [
            0usize, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 79, 80, 127, 128, 129, 191, 192, 255, 256,
            257, 4095, 4096, 20_011,
        ];
        for (name, stage) in paths() {
            for off in 0..130 {
                for &len in &lens {
                    // The source misaligned too, by 0..16 bytes.
                    let soff = off % 17;
                    let backing = noise(soff + len, (off * 1000 + len) as u64);
                    let src = backing[soff..].to_vec();
                    let mut buf = vec![0xAAu8; off + len + 40];
                    let crc = stage(&[&backing[soff..]], &mut buf[off..]);
                    assert_eq!(
                        &buf[off..off + len],
                        &src[..],
                        "{name}: off {off} len {len}"
                    );
                    assert!(
                        buf[..off].iter().all(|&b| b == 0xAA),
                        "{name}: before: off {off} len {len}"
                    );
                    assert!(
                        buf[off + len..].iter().all(|&b| b == 0xAA),
                        "{name}: after: off {off} len {len}"
                    );
                    assert_eq!(crc, reference(&[src]).1, "{name}: crc: off {off} len {len}");
                }
            }
        }
    }

    #[test]
    fn frames_are_concatenated_and_checksummed_as_one() {
        let frames: Vec<Vec<u8>> = [3usize, 100, 0, 4097, 65, 20_000]
            .iter()
            .enumerate()
            .map(|(k, &n)| noise(n, k as u64 + 7))
            .collect();
        let (all, crc) = reference(&frames);
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        for (name, stage) in paths() {
            let mut dst = vec![0u8; all.len() + 5];
            let got = stage(&refs, &mut dst[5..]);
            assert_eq!(&dst[5..], &all[..], "{name}");
            assert_eq!(got, crc, "{name}");
            // The segment format's CRC32C (Castagnoli): the standard check value.
            assert_eq!(
                stage(&[&b"123456789"[..]], &mut [0u8; 9]),
                0xE306_9283,
                "{name}"
            );
        }
    }

    proptest! {
        /// Any frames (lengths 0 to 5,000, any bytes), any destination offset: the copy is
        /// exact and the CRC is the `crc32c` crate's, on both paths.
        #[test]
        fn any_frames_at_any_offset(
            frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..5_000), 0..8),
            off in 0usize..64,
        ) {
            let (all, crc) = reference(&frames);
            let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            for (name, stage) in paths() {
                let mut dst = vec![0x55u8; off + all.len() + 7];
                let got = stage(&refs, &mut dst[off..off + all.len()]);
                prop_assert_eq!(got, crc, "{}", name);
                prop_assert_eq!(&dst[off..off + all.len()], &all[..], "{}", name);
                prop_assert!(dst[..off].iter().chain(&dst[off + all.len()..]).all(|&b| b == 0x55));
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn folding_constants_are_the_castagnoli_ones() {
        // Derived here from the polynomial, so that a typo in a constant cannot hide behind a
        // test input that happens not to reach the fold that uses it.
        const P: u64 = 0x1_1EDC_6F41; // x^32 + the Castagnoli polynomial
        fn x_pow_mod(n: u32) -> u64 {
            let mut r = 1u64;
            for _ in 0..n {
                r <<= 1;
                if r & (1 << 32) != 0 {
                    r ^= P;
                }
            }
            r
        }
        // Reflected into 32 bits, then shifted left by one (the 33-bit form pclmul uses).
        let k = |n: u32| i64::from((x_pow_mod(n) as u32).reverse_bits()) << 1;
        assert_eq!(x86::K1, k(4 * 128 + 32));
        assert_eq!(x86::K2, k(4 * 128 - 32));
        assert_eq!(x86::K3, k(128 + 32));
        assert_eq!(x86::K4, k(128 - 32));
        assert_eq!(x86::K5, k(64));
        // floor(x^64 / P) by long division, reflected into 33 bits.
        let (mut num, mut q) = (1u128 << 64, 0u64);
        for i in (32..=64).rev() {
            if num & (1 << i) != 0 {
                q |= 1 << (i - 32);
                num ^= u128::from(P) << (i - 32);
            }
        }
        assert_eq!(x86::MU, (q.reverse_bits() >> 31) as i64);
        assert_eq!(x86::POLY, (P.reverse_bits() >> 31) as i64);
    }

    #[test]
    #[should_panic]
    fn a_short_destination_panics_rather_than_truncating() {
        stage_frames([&[1u8; 100][..]], &mut [0u8; 99]);
    }

    #[test]
    #[should_panic]
    fn a_short_destination_panics_on_the_portable_path_too() {
        stage_frames_portable([&[1u8; 100][..]], &mut [0u8; 99]);
    }
}

//! The segmenter does no per-frame allocation of its own: with a counting global allocator (per
//! thread, so the test harness's other threads do not count), a camera's steady stream of frames
//! costs one allocation per segment (its frame list, sized once from the segment before), not
//! one or more per frame or a doubling series per segment.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use holdfast::ingest::segmenter::{FrameIn, Segmenter};
use holdfast::store::segment::CodecConfig;
use holdfast::time::{Time90k, TICKS_PER_SEC};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

const T0: Time90k = Time90k(1_795_000_000 * TICKS_PER_SEC);

#[test]
fn steady_frames_cost_one_allocation_per_segment() {
    let mut s = Segmenter::new("cam".into(), "p".into(), 2 * TICKS_PER_SEC);
    s.set_codec(Arc::new(CodecConfig::new(Bytes::from(vec![
        1, 0x64, 0, 0x1f, 0xff,
    ]))));
    // The frames' payloads exist before they are pushed (retina hands over its own buffers).
    let payloads: Vec<Bytes> = (0..4000)
        .map(|i| Bytes::from(vec![i as u8; 100 + i % 50]))
        .collect();
    let mut payloads = payloads.into_iter();
    let mut push = |s: &mut Segmenter, i: i64| {
        s.push(FrameIn {
            rtp: 10_000 + i * 3600,
            arrival: T0.add_ticks(i * 3600),
            key: i % 25 == 0,
            data: payloads.next().unwrap(),
        })
    };
    // Warm-up: the first segment's list is sized from nothing.
    let mut warm = Vec::new();
    for i in 0..200 {
        warm.extend(push(&mut s, i));
    }
    assert!(!warm.is_empty());
    drop(warm);
    let before = allocs();
    let mut segments = 0u64;
    for i in 200..3200 {
        if let Some(seg) = push(&mut s, i) {
            assert_eq!(seg.frames.len(), 50, "2 s segments of 25 fps");
            segments += 1;
            drop(seg);
        }
    }
    let n = allocs() - before;
    assert_eq!(segments, 60);
    // Every segment's frame list is one allocation the counter must see (so it counts at all).
    assert!(
        n >= segments,
        "{n} allocations counted for {segments} segments"
    );
    assert!(
        n <= segments,
        "{n} allocations for 3000 frames in {segments} segments: the segmenter allocates per frame \
         or grows its frame lists"
    );
}

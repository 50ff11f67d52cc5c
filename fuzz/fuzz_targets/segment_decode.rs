//! The segment record decoder on arbitrary bytes, CRC-fixed bytes and built headers.
//! The properties checked are in `holdfast::fuzz_checks::segment_decode`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| holdfast::fuzz_checks::segment_decode(data));

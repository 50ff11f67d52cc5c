//! The recovery scanner on arbitrary bucket-file bytes, CRC-fixed bytes and built files with holes.
//! The properties checked are in `holdfast::fuzz_checks::recovery_scan`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| holdfast::fuzz_checks::recovery_scan(data));

//! The key-tag batch parser (NDJSON or a JSON array) on arbitrary text.
//! The properties checked are in `holdfast::fuzz_checks::keytag_batch`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| holdfast::fuzz_checks::keytag_batch(data));

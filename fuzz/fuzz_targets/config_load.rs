//! The TOML config loader and its validation on arbitrary text.
//! The properties checked are in `holdfast::fuzz_checks::config_load`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| holdfast::fuzz_checks::config_load(data));

//! `splice_fuzz::targets::upgrade_response` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| splice_fuzz::targets::upgrade_response(data));

//! `splice_fuzz::targets::client_request` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| splice_fuzz::targets::client_request(data));

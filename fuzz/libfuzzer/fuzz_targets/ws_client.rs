//! `splice_fuzz::targets::ws_client` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| splice_fuzz::targets::ws_client(data));

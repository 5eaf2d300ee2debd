//! `splice_fuzz::targets::tunnel_message` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| splice_fuzz::targets::tunnel_message(data));

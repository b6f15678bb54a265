#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mlprune_fuzz::entry::kernels(data));

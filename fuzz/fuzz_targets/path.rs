#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ficus_sidecar::fuzz::path(data);
});

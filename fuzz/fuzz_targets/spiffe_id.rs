#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ficus_identity::fuzz::spiffe_id(data);
});

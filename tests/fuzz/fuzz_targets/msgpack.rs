#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| merak_fuzz::msgpack(data));

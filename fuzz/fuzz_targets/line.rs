//! Any bytes through the line decoder (see `decode_all`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wheel_server_fuzz::decode_all(
    wheel_server::protocol::Protocol::Line,
    data
));

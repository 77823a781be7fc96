//! Any bytes as the payload of every message in every protocol (see
//! `encode_round_trip`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wheel_server_fuzz::encode_round_trip(data));

//! Any bytes through the pub/sub command parser (see `parse_command`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wheel_server_fuzz::parse_command(data));

//! Any bytes as a WebSocket upgrade request (see `upgrade`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wheel_server_fuzz::upgrade(data));

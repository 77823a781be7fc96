//! Any bytes through the WebSocket decoder, as a server reads them (see
//! `decode_all`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wheel_server_fuzz::decode_all(wheel_server::protocol::Protocol::Ws, data)
});

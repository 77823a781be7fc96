//! Any bytes as a request head to the admin endpoint (see
//! `wheel_server::server::check_request_head`): no panic, a head within the
//! bytes, and a body length only when every `Content-Length` agrees.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wheel_server::server::check_request_head(data));

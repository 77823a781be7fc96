//! The admin endpoint on its own: request heads, routes, the lane and
//! its refusals.

use super::*;
use proptest::prelude::*;

proptest! {
    /// Any bytes, and requests built with any mix of length headers.
    #[test]
    fn any_bytes_are_a_head_a_refusal_or_incomplete(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_request_head(&data);
    }

    #[test]
    fn only_unambiguous_lengths_are_accepted(
        lengths in proptest::collection::vec(prop_oneof![
            Just("5".to_owned()), Just("+5".to_owned()), Just("05".to_owned()),
            Just("5, 5".to_owned()), Just("5,100".to_owned()), Just(" 7 ".to_owned()),
            Just("0x5".to_owned()), Just("".to_owned()), "[0-9]{1,3}",
        ], 0..4),
        chunked in any::<bool>(),
    ) {
        let mut request = String::from("POST /publish/t HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for l in &lengths {
            request.push_str(&format!("Content-Length: {l}\r\n"));
        }
        if chunked {
            request.push_str("Transfer-Encoding: chunked\r\n");
        }
        request.push_str("\r\n");
        check_request_head(request.as_bytes());
    }
}

#[test]
fn the_lengths_rfc_9112_refuses() {
    let refused = |lengths: &[&str]| {
        let mut request = String::from("POST / HTTP/1.1\r\n");
        for l in lengths {
            request.push_str(&format!("Content-Length: {l}\r\n"));
        }
        request.push_str("\r\n");
        match parse_head(request.as_bytes()) {
            Some(HeadRead::Head(head)) => head.bad_length,
            _ => panic!("not a head"),
        }
    };
    for bad in [
        &["5", "100"][..],
        &["+5"],
        &["5, 100"],
        &["-1"],
        &["5 5"],
        &[""],
    ] {
        assert!(refused(bad), "{bad:?}");
    }
    for good in [&["5"][..], &["5", "5"], &["5, 5"], &["0"]] {
        assert!(!refused(good), "{good:?}");
    }
}

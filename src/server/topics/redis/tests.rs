//! The Redis backend without a Redis: replies parsed, scripts and
//! numbering checked against what they are given.

use super::follower::split_announcement;
use super::target::client;
use super::*;

#[test]
fn keys_and_announcements() {
    let keys = Keys::of("chat:1/a");
    assert_eq!(keys.seq, "wheel:{chat:1/a}:seq");
    assert_eq!(keys.log, "wheel:{chat:1/a}:log");
    assert_eq!(Keys::topic_of(&keys.channel), Some("chat:1/a"));
    assert_eq!(Keys::topic_of("other"), None);
    assert_eq!(
        split_announcement(b"12 e1 a b"),
        Some((12, "e1", &b"a b"[..]))
    );
    assert_eq!(split_announcement(b"7 e "), Some((7, "e", &b""[..])));
    assert_eq!(split_announcement(b"x e y"), None);
    assert_eq!(split_announcement(b"12 e"), None);
    assert_eq!(split_announcement(b"12"), None);
}

proptest::proptest! {
    /// Whatever Redis sends on a channel: an announcement or nothing,
    /// never a panic; a well-formed one comes back whole.
    #[test]
    fn any_announcement_parses_or_is_ignored(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        seq in proptest::prelude::any::<u64>(),
    ) {
        if let Some((_, _, payload)) = split_announcement(&body) {
            proptest::prop_assert!(body.ends_with(payload));
        }
        let wire = [seq.to_string().as_bytes(), b" 0123abcd ", &body].concat();
        proptest::prop_assert_eq!(split_announcement(&wire), Some((seq, "0123abcd", &body[..])));
    }
}

#[test]
fn bad_urls_are_refused() {
    let refused = client("http://secret@x", None).unwrap_err();
    assert!(refused.starts_with("invalid URL"), "{refused}");
    assert!(!refused.contains("secret"), "{refused}");
    // The password of its own overrides the URL's.
    let password = |url, own| {
        client(url, own)
            .unwrap()
            .get_connection_info()
            .redis_settings()
            .password()
            .map(str::to_owned)
    };
    assert_eq!(
        password("redis://:inurl@127.0.0.1:1/0", None),
        Some("inurl".into())
    );
    assert_eq!(
        password("redis://:inurl@127.0.0.1:1/0", Some("own")),
        Some("own".into())
    );
    assert_eq!(password("redis://127.0.0.1:1/0", None), None);
}

//! The WebSocket upgrade: the HTTP request a `ws` connection opens with,
//! and the answer to it.
//!
//! `tungstenite` parses the request and checks what RFC 6455 asks of it
//! (method, version, `Upgrade`, `Connection`, `Sec-WebSocket-Version`,
//! `Sec-WebSocket-Key`), and computes the accept key. What is ours is the
//! server's policy on top: the listener's path, the allowed origins, the
//! size bound, the token a client may carry in the request, and which
//! HTTP status each refusal gets.
//!
//! Public so that embedders and the fuzz targets can check a request
//! without a socket; the server runs it as an admission stage.
//!
//! ```
//! use wheel_server::server::upgrade::{Policy, Upgrade, upgrade};
//!
//! let request = b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
//!     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!     Sec-WebSocket-Version: 13\r\n\r\n";
//! let policy = Policy { path: Some("/chat"), origins: &[] };
//! assert!(matches!(upgrade(request, policy), Upgrade::Accept { .. }));
//! let elsewhere = Policy { path: Some("/other"), origins: &[] };
//! assert!(matches!(upgrade(request, elsewhere), Upgrade::Refuse(r) if r.status == 404));
//! ```

use tungstenite::error::{Error, ProtocolError};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{Request, create_response, write_response};
use tungstenite::http::header::{AUTHORIZATION, ORIGIN};

/// The largest upgrade request, headers included: a longer one is refused
/// (431) before it is complete.
pub const MAX_REQUEST: usize = 8 * 1024;

/// What a listener accepts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy<'a> {
    /// The path upgrades must ask for; `None`: any.
    pub path: Option<&'a str>,
    /// The `Origin`s a browser's upgrade may come from; empty: any.
    pub origins: &'a [String],
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Not a whole request yet, and not too long to become one.
    Incomplete,
    /// A valid upgrade: send `response` (101), then WebSocket frames.
    Accept {
        /// The encoded 101 response.
        response: Vec<u8>,
        /// The request's length: bytes after it are the first frames.
        len: usize,
        /// Credentials the request carried: its `token` query parameter,
        /// or an `Authorization: Bearer` header.
        token: Option<Vec<u8>>,
    },
    /// Refused: send `response`, then close.
    Refuse(Refusal),
}

/// A refused upgrade.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status sent.
    pub status: u16,
    /// The metric label (`wheel_ws_upgrades_total{result}`).
    pub label: &'static str,
    /// Why, for the log and the response body.
    pub why: String,
    /// The encoded response.
    pub response: Vec<u8>,
}

/// Every `result` label of `wheel_ws_upgrades_total`.
pub const RESULTS: [&str; 6] = [
    "ok",
    "bad_request",
    "upgrade_required",
    "not_found",
    "forbidden",
    "too_large",
];

/// Reads the upgrade request at the front of `buf` and decides.
pub fn upgrade(buf: &[u8], policy: Policy<'_>) -> Upgrade {
    let (len, request) = match Request::try_parse(buf) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if buf.len() >= MAX_REQUEST => {
            return refuse(
                431,
                "too_large",
                format!("upgrade request over {MAX_REQUEST} bytes"),
                &[],
            );
        }
        Ok(None) => return Upgrade::Incomplete,
        Err(e) => return refuse(400, "bad_request", format!("not an HTTP request: {e}"), &[]),
    };
    if len > MAX_REQUEST {
        return refuse(
            431,
            "too_large",
            format!("upgrade request over {MAX_REQUEST} bytes"),
            &[],
        );
    }
    if let Some(path) = policy.path
        && request.uri().path() != path
    {
        return refuse(
            404,
            "not_found",
            format!("no WebSocket endpoint at {}", request.uri().path()),
            &[],
        );
    }
    if !policy.origins.is_empty()
        && let Some(origin) = request.headers().get(ORIGIN)
        && !policy
            .origins
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    {
        return refuse(
            403,
            "forbidden",
            format!(
                "origin {} not allowed",
                String::from_utf8_lossy(origin.as_bytes())
            ),
            &[],
        );
    }
    let response = match create_response(&request) {
        Ok(response) => response,
        Err(Error::Protocol(
            e @ (ProtocolError::MissingConnectionUpgradeHeader
            | ProtocolError::MissingUpgradeWebSocketHeader),
        )) => {
            return refuse(
                426,
                "upgrade_required",
                format!("a WebSocket endpoint: {e}"),
                &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
            );
        }
        Err(Error::Protocol(e @ ProtocolError::MissingSecWebSocketVersionHeader)) => {
            return refuse(
                426,
                "upgrade_required",
                format!("{e} (version 13)"),
                &[("Sec-WebSocket-Version", "13")],
            );
        }
        Err(e) => return refuse(400, "bad_request", e.to_string(), &[]),
    };
    let mut encoded = Vec::with_capacity(160);
    if let Err(e) = write_response(&mut encoded, &response) {
        return refuse(400, "bad_request", e.to_string(), &[]);
    }
    Upgrade::Accept {
        response: encoded,
        len,
        token: token(&request),
    }
}

/// The credentials an upgrade request carries: the `token` query parameter
/// (browsers cannot set headers), else an `Authorization: Bearer` header.
fn token(request: &Request) -> Option<Vec<u8>> {
    let from_query = request.uri().query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned().into_bytes())
    });
    from_query.or_else(|| {
        let value = request.headers().get(AUTHORIZATION)?.as_bytes();
        let scheme = value.get(..7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| value[7..].trim_ascii().to_vec())
    })
}

fn refuse(status: u16, label: &'static str, why: String, headers: &[(&str, &str)]) -> Upgrade {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    Upgrade::Refuse(Refusal {
        status,
        label,
        response: response(status, reason, &why, headers),
        why,
    })
}

/// A plain-text HTTP response that ends the connection.
pub fn response(status: u16, reason: &str, body: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len() + 1
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.push('\n');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(path: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn status(outcome: &Upgrade) -> u16 {
        match outcome {
            Upgrade::Accept { .. } => 101,
            Upgrade::Refuse(r) => r.status,
            Upgrade::Incomplete => 0,
        }
    }

    #[test]
    fn accepts_the_rfc_example_with_its_accept_key() {
        let mut wire = request("/chat", "");
        wire.extend_from_slice(b"\x81");
        let Upgrade::Accept {
            response,
            len,
            token,
        } = upgrade(&wire, Policy::default())
        else {
            panic!("refused");
        };
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 101"), "{response}");
        // RFC 6455 section 1.3's worked example.
        assert!(
            response.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{response}"
        );
        assert_eq!(
            len,
            wire.len() - 1,
            "the byte after the request is a frame's"
        );
        assert_eq!(token, None);
    }

    #[test]
    fn waits_for_the_rest_of_a_request_until_it_is_too_long() {
        let wire = request("/", "");
        assert_eq!(
            upgrade(&wire[..wire.len() - 3], Policy::default()),
            Upgrade::Incomplete
        );
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_REQUEST, b'a');
        assert_eq!(status(&upgrade(&long, Policy::default())), 431);
    }

    #[test]
    fn each_refusal_has_its_status() {
        let any = Policy::default();
        let chat = Policy {
            path: Some("/chat"),
            origins: &[],
        };
        assert_eq!(status(&upgrade(&request("/other", ""), chat)), 404);
        assert_eq!(status(&upgrade(&request("/chat?x=1", ""), chat)), 101);
        assert_eq!(
            status(&upgrade(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", any)),
            426
        );
        assert_eq!(
            status(&upgrade(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", any)),
            400
        );
        assert_eq!(status(&upgrade(b"\x16\x03\x01\x02\x00\r\n\r\n", any)), 400);
        let no_version = request("/", "").len();
        let wire = String::from_utf8(request("/", ""))
            .unwrap()
            .replace("Sec-WebSocket-Version: 13\r\n", "");
        assert!(wire.len() < no_version);
        assert_eq!(status(&upgrade(wire.as_bytes(), any)), 426);
        let bad_key = String::from_utf8(request("/", ""))
            .unwrap()
            .replace(KEY, "short");
        assert_eq!(status(&upgrade(bad_key.as_bytes(), any)), 400);
    }

    #[test]
    fn origins_are_checked_only_when_listed_and_only_if_sent() {
        let origins = ["https://app.example".to_owned()];
        let policy = Policy {
            path: None,
            origins: &origins,
        };
        let from = |origin: &str| request("/", &format!("Origin: {origin}\r\n"));
        assert_eq!(status(&upgrade(&from("https://app.example"), policy)), 101);
        assert_eq!(status(&upgrade(&from("HTTPS://APP.EXAMPLE"), policy)), 101);
        assert_eq!(status(&upgrade(&from("https://evil.example"), policy)), 403);
        assert_eq!(status(&upgrade(&request("/", ""), policy)), 101);
        assert_eq!(
            status(&upgrade(&from("https://evil.example"), Policy::default())),
            101
        );
    }

    #[test]
    fn a_token_comes_from_the_query_or_a_bearer_header() {
        let token_of = |wire: Vec<u8>| match upgrade(&wire, Policy::default()) {
            Upgrade::Accept { token, .. } => token,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            token_of(request("/?a=1&token=abc%2Edef", "")),
            Some(b"abc.def".to_vec())
        );
        assert_eq!(
            token_of(request("/", "Authorization: Bearer xyz \r\n")),
            Some(b"xyz".to_vec())
        );
        assert_eq!(token_of(request("/", "Authorization: Basic xyz\r\n")), None);
    }
}

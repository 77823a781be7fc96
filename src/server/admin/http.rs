//! The HTTP/1.1 the admin endpoint speaks: request heads read and checked
//! (one Host, one Content-Length, no cross-site POST), bodies, responses.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use super::{HEAD_TIMEOUT, MAX_HEAD, MAX_HEADERS, WRITE_TIMEOUT};

/// An answer.
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: String,
    /// `Allow`, for a 405.
    pub(super) allow: Option<&'static str>,
    /// `WWW-Authenticate: Bearer`, for a 401.
    pub(super) www_authenticate: bool,
}

impl Response {
    pub(super) fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            allow: None,
            www_authenticate: false,
        }
    }

    /// One of the built-in pages.
    pub(super) fn page(content_type: &'static str, body: &str) -> Response {
        Response {
            content_type,
            ..Response::text(200, body)
        }
    }

    pub(super) fn json(status: u16, body: String) -> Response {
        Response {
            content_type: "application/json",
            body,
            ..Response::text(status, "")
        }
    }
}

/// The parts of a request head the endpoint uses.
pub(super) struct Head {
    pub(super) method: String,
    pub(super) target: String,
    /// HTTP/1.1 (keep-alive by default) rather than 1.0.
    pub(super) http11: bool,
    /// `Connection: close` (or, for 1.0, no `Connection: keep-alive`).
    pub(super) close: bool,
    /// The request announced a body of unknown length (chunked), which the
    /// endpoint does not read.
    pub(super) chunked: bool,
    /// `Content-Length`, if given (a bad value counts as 0 with `bad_length`).
    pub(super) content_length: usize,
    /// `Content-Length` was not a number, or several disagreed.
    pub(super) bad_length: bool,
    /// The `Host` header, lower-cased.
    pub(super) host: Option<String>,
    /// The `Origin` header (browsers send it with a POST), lower-cased.
    pub(super) origin: Option<String>,
    /// `Sec-Fetch-Site: cross-site`: a browser says another site's page
    /// made this request.
    pub(super) cross_site: bool,
    /// `Idempotency-Key`: a publish safe to retry (as `PUBONCE`).
    pub(super) idempotency_key: Option<String>,
    /// The `Authorization` header.
    pub(super) authorization: Option<String>,
    /// The `Accept` header.
    pub(super) accept: Option<String>,
    /// Its length in bytes.
    pub(super) len: usize,
}

impl Head {
    /// Whether it asks `GET` or `HEAD` of `/healthz` or `/readyz`: what a
    /// load balancer checks, answered even when every worker is busy.
    pub(super) fn is_probe(&self) -> bool {
        let path = self.target.split('?').next().unwrap_or_default();
        matches!(path, "/healthz" | "/readyz") && matches!(self.method.as_str(), "GET" | "HEAD")
    }
}

/// What reading a request head came to.
pub(super) enum HeadRead {
    Head(Head),
    /// The peer closed, or the endpoint is stopping.
    Gone,
    /// No whole head within the deadline.
    TimedOut,
    /// A response to send before closing (400, 431).
    Refuse(Response),
}

/// Reads until `buf` holds `len` body bytes, within [`HEAD_TIMEOUT`].
pub(super) fn read_body(stream: &TcpStream, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut chunk = [0u8; 8192];
    while buf.len() < len {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let want = chunk.len().min(len - buf.len());
        match (&*stream).read(&mut chunk[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until `buf` holds a whole request head, within [`HEAD_TIMEOUT`]
/// and [`MAX_HEAD`].
pub(super) fn read_head(stream: &TcpStream, buf: &mut Vec<u8>) -> HeadRead {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(read) = parse_head(buf) {
            return read;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return HeadRead::TimedOut;
        }
        let room = chunk.len().min(MAX_HEAD - buf.len());
        match (&*stream).read(&mut chunk[..room]) {
            Ok(0) => return HeadRead::Gone,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return HeadRead::TimedOut;
            }
            Err(_) => return HeadRead::Gone,
        }
    }
}

/// The head at the start of `buf`, a refusal, or `None` while it is
/// incomplete.
pub(super) fn parse_head(buf: &[u8]) -> Option<HeadRead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Some(HeadRead::Head(head(&request, len))),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Some(HeadRead::Refuse(
            Response::text(431, "request head too large\n"),
        )),
        Ok(httparse::Status::Partial) => None,
        Err(e) => Some(HeadRead::Refuse(Response::text(
            400,
            &format!("bad request: {e}\n"),
        ))),
    }
}

/// Reads `data` as the admin endpoint reads a request head, and checks
/// what must hold for any bytes: no panic; a whole head lies within the
/// bytes; a body length is given only when every `Content-Length` agrees,
/// all digits. For the fuzz target `http_head` (`fuzz/`) and the property
/// test below.
#[doc(hidden)]
pub fn check_request_head(data: &[u8]) {
    match parse_head(data) {
        Some(HeadRead::Head(head)) => {
            assert!(head.len <= data.len(), "a head past the bytes");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            let _ = request.parse(data);
            let lengths: Vec<&[u8]> = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| h.value)
                .collect();
            if !head.bad_length && !lengths.is_empty() {
                let text = |v: &[u8]| String::from_utf8_lossy(v).replace([' ', '\t'], "");
                let mut values = lengths
                    .iter()
                    .flat_map(|v| text(v).split(',').map(str::to_owned).collect::<Vec<_>>());
                assert!(
                    values.all(|v| v.bytes().all(|b| b.is_ascii_digit())
                        && v.parse::<usize>() == Ok(head.content_length)),
                    "an ambiguous length accepted: {lengths:?}"
                );
            }
        }
        Some(HeadRead::Refuse(response)) => assert!(matches!(response.status, 400 | 431)),
        Some(HeadRead::Gone | HeadRead::TimedOut) => unreachable!("parsing reads nothing"),
        None => assert!(data.len() < MAX_HEAD, "an incomplete head past the limit"),
    }
}

/// After a refusal, reads and discards what the client still sends, for a
/// moment: closing with unread input sends RST, which can destroy the
/// response before the client reads it.
pub(super) fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut sink = [0u8; 4096];
    let mut discarded = 0;
    while discarded < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// The parts of a parsed request the endpoint uses.
pub(super) fn head(request: &httparse::Request<'_, '_>, len: usize) -> Head {
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let http11 = request.version == Some(1);
    let connection = header("connection");
    let close = match connection.as_deref() {
        Some("close") => true,
        Some("keep-alive") => false,
        _ => !http11,
    };
    let content_length = content_length(request.headers);
    Head {
        method: request.method.unwrap_or("").to_owned(),
        target: request.path.unwrap_or("").to_owned(),
        http11,
        close,
        chunked: header("transfer-encoding").is_some(),
        content_length: content_length.unwrap_or(Some(0)).unwrap_or(0),
        bad_length: content_length.is_err(),
        host: header("host"),
        origin: header("origin"),
        cross_site: header("sec-fetch-site").is_some_and(|site| site == "cross-site"),
        idempotency_key: request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("idempotency-key"))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned()),
        authorization: request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("authorization"))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned()),
        accept: request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("accept"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned()),
        len,
    }
}

/// Whether a request's `Host` names this endpoint: an IP address (any: DNS
/// rebinding needs a name), `localhost`, or a name allowed by
/// `--admin-allowed-host`; with or without a port.
pub(super) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    if host.starts_with('[') {
        return true; // an IPv6 literal
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Whether `origin` (`scheme://host[:port]`, lower-cased) is the origin of
/// a page served with `host`.
pub(super) fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o == host)
}

/// The body length the `Content-Length` headers give (`None`: no header),
/// or an error for what RFC 9112 section 6.3 says to refuse with 400: a
/// value that is not all digits (`+5`, `0x10`, ` 5 `), or several headers
/// (or a list) that disagree, which a proxy in front might read otherwise
/// (request smuggling). Identical repeats are one length.
pub(super) fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<usize>, ()> {
    let mut length = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let value = std::str::from_utf8(h.value).map_err(|_| ())?;
        for item in value.split(',') {
            let item = item.trim_matches([' ', '\t']);
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let n: usize = item.parse().map_err(|_| ())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// The bytes of a response.
pub(super) fn encode(response: &Response, head_only: bool, close: bool) -> Vec<u8> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        if close { "close" } else { "keep-alive" },
    );
    if let Some(allow) = response.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    if response.www_authenticate {
        out.push_str("WWW-Authenticate: Bearer\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    out
}

/// Writes all of `bytes` within [`WRITE_TIMEOUT`]; `TimedOut` if the peer
/// does not take them in time.
pub(super) fn write_all(stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut rest = bytes;
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match (&*stream).write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

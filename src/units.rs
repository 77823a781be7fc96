//! Parsing durations and sizes given on the command line or in the
//! environment.

use std::time::Duration;

/// Parses a duration such as `250ms`, `1s`, `2m` or `1h 30m`
/// ([`humantime`] syntax). A bare `0` is accepted as zero, the value the
/// command-line tools use for "off".
///
/// # Errors
///
/// A message naming the problem, for the command line to print.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use wheel_server::parse_duration;
///
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
/// assert!(parse_duration("5").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 250ms, 5s, 2m)"))
}

/// Parses a size in bytes: a whole number, optionally followed by a binary
/// unit, `KiB`, `MiB` or `GiB` (`K`, `M`, `G` alone mean the same; there
/// are no decimal units, so `1MB` is refused rather than guessed).
///
/// # Errors
///
/// A message naming the problem, for the command line to print.
///
/// # Examples
///
/// ```
/// use wheel_server::parse_bytes;
///
/// assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
/// assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
/// assert_eq!(parse_bytes("4k"), Ok(4096));
/// assert!(parse_bytes("1.5MiB").is_err());
/// ```
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => {
            return Err(format!(
                "invalid size {s:?} (expected bytes, or a number with KiB, MiB or GiB)"
            ));
        }
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| {
            format!("invalid size {s:?} (expected bytes, or a number with KiB, MiB or GiB)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_their_refusals() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("16 KiB"), Ok(16 << 10));
        for bad in [
            "",
            "MiB",
            "-1",
            "1MB",
            "1e6",
            "99999999999999999999",
            "9999999999999GiB",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }
}

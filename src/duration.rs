//! Parsing durations given on the command line or in the environment.

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

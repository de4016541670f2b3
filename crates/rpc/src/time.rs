//! Wall-clock helpers: unix milliseconds and RFC 3339 with milliseconds, the only two time forms on the wire.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-21T06:04:00.123Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The current time in RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339_ms(now_ms())
}

/// Parses RFC 3339 into unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let text = super::rfc3339_ms(1_700_000_000_123);
        assert_eq!(text, "2023-11-14T22:13:20.123Z");
        assert_eq!(super::parse_rfc3339_ms(&text), Some(1_700_000_000_123));
    }
}

//! Wall-clock helpers: the journal stores Unix milliseconds; people read
//! RFC 3339 (JSON) or local time (tables).

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Local, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-21T08:15:02.120Z`.
pub fn rfc3339(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The operator's local time, for tables: `2026-11-21 09:15:02`.
pub fn local(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .with_timezone(&Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Parses a TIME argument: RFC 3339, or a duration back from `now_ms`
/// (`2h`, `30m`, `7d`). Returns Unix milliseconds.
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, BadTime> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis().max(0) as u64);
    }
    match humantime::parse_duration(text) {
        Ok(d) => Ok(now_ms.saturating_sub(d.as_millis() as u64)),
        Err(_) => Err(BadTime(text.to_string())),
    }
}

/// A TIME argument that is neither form [`parse_since`] takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is neither an RFC 3339 time (2026-11-21T08:00:00Z) nor a duration back from now (2h, 30m, 7d)"
)]
pub struct BadTime(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_rfc3339_and_durations() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z", 0), Ok(1000));
        assert_eq!(parse_since("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert!(parse_since("yesterday", 0).is_err());
    }

    #[test]
    fn rfc3339_round_trips() {
        let s = rfc3339(1_614_265_330_123);
        assert_eq!(s, "2021-02-25T15:02:10.123Z");
        assert_eq!(parse_since(&s, 0), Ok(1_614_265_330_123));
    }
}

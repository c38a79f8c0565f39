//! Times as people and scripts write them: RFC 3339 in and out, and the
//! `SEQ|RFC3339` form that names a point in the log's history.

use crate::replay::AsOf;

/// A commit time as RFC 3339, UTC, with nanoseconds when there are any.
pub fn rfc3339(time_unix_ns: u64) -> String {
    jiff::Timestamp::from_nanosecond(time_unix_ns as i128)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("@{time_unix_ns}ns"))
}

/// Parses an RFC 3339 time (any offset) into nanoseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let t: jiff::Timestamp = s
        .parse()
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2025-11-27T09:00:00Z: {e}"))?;
    u64::try_from(t.as_nanosecond()).map_err(|_| format!("{s:?} is before 1970"))
}

/// Parses `SEQ` (a sequence number) or an RFC 3339 time.
pub fn parse_as_of(s: &str) -> Result<AsOf, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(AsOf::Seq)
            .map_err(|_| format!("{s:?} is too large for a sequence number"));
    }
    parse_rfc3339(s).map(AsOf::TimeUnixNs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forms() {
        let t = parse_rfc3339("2026-11-28T04:14:48.5Z").unwrap();
        assert_eq!(rfc3339(t), "2026-11-28T04:14:48.5Z");
        assert_eq!(parse_rfc3339("2026-11-28T05:14:48.5+01:00").unwrap(), t);
        assert_eq!(parse_as_of("42"), Ok(AsOf::Seq(42)));
        assert_eq!(
            parse_as_of("2026-11-28T04:14:48.5Z"),
            Ok(AsOf::TimeUnixNs(t))
        );
        assert!(parse_as_of("yesterday").is_err());
        assert!(parse_as_of("99999999999999999999999").is_err());
        assert!(parse_as_of("1960-01-01T00:00:00Z").is_err());
    }
}

//! Parsers for the two range headers: `Range` on blob GET (RFC 9110, a
//! single byte range) and `Content-Range` on upload PATCH (the spec's
//! `<start>-<end>`, inclusive; the RFC form `bytes <start>-<end>/<len>` is
//! accepted too).

/// What a `Range` header asks of a blob of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// No usable range: send the whole blob (RFC 9110 says to ignore a
    /// range header that does not parse, and we serve one range only).
    Full,
    /// `[start, end]`, inclusive, within the blob.
    Partial { start: u64, end: u64 },
    /// A well-formed range that does not overlap the blob: 416.
    Unsatisfiable,
}

pub fn parse_range(header: &str, size: u64) -> ByteRange {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    match (number(a), number(b)) {
        // bytes=-N: the last N bytes.
        (None, Some(n)) if a.is_empty() => {
            if n == 0 || size == 0 {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Partial {
                    start: size.saturating_sub(n),
                    end: size - 1,
                }
            }
        }
        // bytes=S-
        (Some(start), None) if b.is_empty() => {
            if start >= size {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Partial {
                    start,
                    end: size - 1,
                }
            }
        }
        (Some(start), Some(end)) if start <= end => {
            if start >= size {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Partial {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
        _ => ByteRange::Full,
    }
}

/// A decimal number of at most 19 digits (so it fits a u64), no sign.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an upload `Content-Range` into `(start, end)`, inclusive.
pub fn parse_content_range(header: &str) -> Option<(u64, u64)> {
    let s = header.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = match s.split_once('/') {
        Some((range, total)) => {
            if total != "*" && number(total).is_none() {
                return None;
            }
            range
        }
        None => s,
    };
    let (a, b) = s.split_once('-')?;
    let (start, end) = (number(a)?, number(b)?);
    (start <= end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ByteRange::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range("bytes=90-200", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=10-", 100),
            Partial { start: 10, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-1000", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        for ignored in [
            "",
            "bytes=",
            "bytes=a-b",
            "bytes=5-1",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=--1",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(parse_range(ignored, 100), Full, "{ignored}");
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-1023"), Some((0, 1023)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19)));
        assert_eq!(parse_content_range("bytes 10-19/100"), Some((10, 19)));
        for bad in [
            "",
            "a-b",
            "10",
            "10-",
            "-5",
            "5-1",
            "bytes 1-2/x",
            "1-2-3",
            "+1-2",
            "1 -2",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}

//! The range header parsers (`ferro::api::ranges`): never panic; a
//! `Range` answer lies within the blob (`start <= end < size`) and agrees
//! with the numbers in the header; an accepted `Content-Range` has
//! `start <= end` and its numbers print back in every accepted form.
//!
//! Input: eight bytes of blob size (little-endian; sizes near zero and near
//! `u64::MAX` are the interesting ones), then the header text.

#![no_main]

use ferro::api::ranges::{parse_content_range, parse_range, ByteRange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (size, header) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (u64::from_le_bytes(*size), rest),
        None => (data.len() as u64, data),
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };

    for size in [size, size % 1024, 0, 1, u64::MAX] {
        check_range(header, size);
    }

    if let Some((start, end)) = parse_content_range(header) {
        assert!(start <= end);
        for form in [
            format!("{start}-{end}"),
            format!("bytes {start}-{end}/*"),
            format!("bytes={start}-{end}"),
        ] {
            assert_eq!(parse_content_range(&form), Some((start, end)), "{form:?}");
        }
    }
});

fn check_range(header: &str, size: u64) {
    let r = parse_range(header, size);
    if !header.trim().starts_with("bytes=") {
        assert_eq!(r, ByteRange::Full, "{header:?}");
    }
    let ByteRange::Partial { start, end } = r else {
        return;
    };
    assert!(start <= end, "{header:?} of {size}: {r:?}");
    assert!(end < size, "{header:?} of {size}: {r:?}");
    // The numbers the header names, where it names a first byte.
    let spec = header.trim()["bytes=".len()..].trim();
    let (first, last) = spec.split_once('-').expect("a partial range has a dash");
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let n: u64 = last.parse().expect("suffix length");
        assert_eq!(end - start + 1, n.min(size), "suffix of {n}");
        assert_eq!(end, size - 1);
    } else {
        assert_eq!(start, first.parse::<u64>().expect("first byte"));
        match last.parse::<u64>() {
            Ok(l) => assert_eq!(end, l.min(size - 1)),
            Err(_) => assert_eq!(end, size - 1),
        }
    }
}

//! The record and segment-header decoders (`ferro::log::format`) on
//! arbitrary bytes: they never panic, and whatever they accept encodes back
//! to the same bytes (header, record framing) or the same entry (payload).
//!
//! Random bytes almost never carry a valid CRC-32, so each input is also
//! tried with its checksums fixed up: that is what lets the fuzzer reach the
//! code behind the checksum (reserved fields, payload decoding).

#![no_main]

use ferro::limits::RECORD_PAYLOAD_BYTES_MAX;
use ferro::log::format::{
    decode_payload, encode_payload, encode_record, read_record, SegmentHeader, FORMAT_VERSION,
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_header(data);
    check_record(data);
    check_payload(data);

    // The same bytes with valid checksums.
    if data.len() >= SEGMENT_HEADER_BYTES {
        let mut h = data[..SEGMENT_HEADER_BYTES].to_vec();
        h[..8].copy_from_slice(b"FERROLOG");
        let crc = crc32(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        check_header(&h);
    }
    if data.len() >= RECORD_HEADER_BYTES {
        let mut r = data.to_vec();
        let payload_len = (r.len() - RECORD_HEADER_BYTES) as u32;
        r[4..8].copy_from_slice(&payload_len.to_le_bytes());
        let crc = crc32(&r[4..]);
        r[..4].copy_from_slice(&crc.to_le_bytes());
        let reserved_zero = r[12..16] == [0; 4];
        match read_record(&r) {
            Ok(_) => assert!(reserved_zero, "a non-zero reserved field was accepted"),
            Err(e) => assert!(
                !reserved_zero,
                "a record with a valid checksum refused: {e}"
            ),
        }
        check_record(&r);
    }
});

fn check_header(b: &[u8]) {
    if let Ok(h) = SegmentHeader::decode(b) {
        assert!(h.version >= 1 && h.version <= FORMAT_VERSION);
        let again = h.encode();
        // Bytes 10..16 are reserved and written as zeros; the reader does
        // not look at them, so compare everything else.
        assert_eq!(again[..10], b[..10]);
        assert_eq!(again[16..28], b[16..28]);
        assert_eq!(SegmentHeader::decode(&again), Ok(h));
    }
}

fn check_record(b: &[u8]) {
    let Ok(r) = read_record(b) else { return };
    let h = r.header;
    assert!(h.payload_len <= RECORD_PAYLOAD_BYTES_MAX);
    assert_eq!(r.payload.len(), h.payload_len as usize);
    assert_eq!(r.len_bytes(), RECORD_HEADER_BYTES + r.payload.len());
    assert!(r.len_bytes() <= b.len());
    let mut again = Vec::new();
    let crc = encode_record(&mut again, h.seq, h.time_unix_ns, h.prev_crc, r.payload);
    assert_eq!(crc, h.crc);
    assert_eq!(again[..], b[..r.len_bytes()]);
    check_payload(r.payload);
}

fn check_payload(b: &[u8]) {
    let Ok(entry) = decode_payload(b) else { return };
    // Varints may be written longer than needed, so the bytes may differ;
    // the entry may not.
    let again = encode_payload(&entry).expect("a decoded entry encodes");
    assert!(again.len() <= b.len(), "re-encoding grew the payload");
    assert_eq!(
        decode_payload(&again).expect("re-encoded entry decodes"),
        entry
    );
}

fn crc32(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

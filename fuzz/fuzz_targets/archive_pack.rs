//! The archive's pack reader (`ferro::archive::pack`) on arbitrary bytes,
//! and on the same bytes with the index checksum fixed up: never panics,
//! never allocates from an unchecked count; a pack `verify` accepts has
//! entries that tile it exactly, each blob matching its digest.

#![no_main]

use ferro::archive::pack::{index_end, read_index, verify, HEAD_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= HEAD_BYTES {
        if let Ok(end) = index_end(data) {
            let end = end as usize;
            if end <= data.len() && end >= HEAD_BYTES + 4 {
                let mut fixed = data.to_vec();
                let crc = crc32fast::hash(&fixed[..end - 4]);
                fixed[end - 4..end].copy_from_slice(&crc.to_le_bytes());
                check(&fixed);
            }
        }
    }
});

fn check(bytes: &[u8]) {
    let _ = read_index(bytes);
    if let Ok(entries) = verify(bytes, &mut |_, _| Ok(())) {
        let mut at = index_end(bytes).unwrap();
        for e in &entries {
            assert_eq!(e.range.start, at, "entries are back to back");
            at = e.range.end;
            let blob = &bytes[e.range.start as usize..e.range.end as usize];
            assert_eq!(e.digest.recompute(blob), e.digest);
        }
        assert_eq!(at, bytes.len() as u64, "entries cover the pack");
    }
}

//! The notification cursor decoder (`ferro::notify::cursor::Cursor::decode`)
//! on arbitrary bytes, and on the same bytes with the checksum fixed up:
//! never panics; an accepted file is exactly what `encode` writes for the
//! values it decoded to.

#![no_main]

use std::path::Path;

use ferro::notify::cursor::{Cursor, CURSOR_FILE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() == CURSOR_FILE_BYTES {
        let mut fixed = data.to_vec();
        let crc = crc32fast::hash(&fixed[..CURSOR_FILE_BYTES - 4]);
        fixed[CURSOR_FILE_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        check(&fixed);
    }
});

fn check(bytes: &[u8]) {
    if let Ok(cursor) = Cursor::decode(Path::new("fuzz.cursor"), bytes) {
        assert_eq!(cursor.encode().as_slice(), bytes, "accepted bytes re-encode");
    }
}

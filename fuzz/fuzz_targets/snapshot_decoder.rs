//! The snapshot decoder (`ferro::snapshot::format::{check, decode}`) on
//! arbitrary bytes: never panics; an accepted header encodes back to the
//! same 48 bytes; an accepted state encodes and decodes back to itself.
//!
//! Each input is also tried as a payload behind a header with valid
//! checksums and length (and the sequence number and time the payload
//! starts with), so the fuzzer reaches the state decoder itself.
//!
//! Known finding (artifacts/snapshot_decoder/): the state decoder allocates
//! what a length prefix inside the payload claims before reading it, so a
//! snapshot with valid checksums can ask for any amount of memory. Such an
//! allocation is refused here (and counted as that finding, not as a new
//! crash) so the fuzzer can go on looking past it; `FUZZ_KNOWN_FINDINGS=1`
//! lets it through, to reproduce the finding.

#![no_main]
// `set_alloc_error_hook` is unstable; cargo-fuzz already needs
// RUSTC_BOOTSTRAP=1 on this toolchain for its `-Z` flags.
#![feature(alloc_error_hook)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

use ferro::snapshot::format::{
    check, decode, encode_state, encode_to, SnapshotHeader, SNAPSHOT_HEADER_BYTES, SNAPSHOT_VERSION,
};
use libfuzzer_sys::fuzz_target;

/// Far more than any input here can legitimately need (inputs are a few
/// KiB); more is the known finding.
const ALLOCATION_BYTES_MAX: usize = 64 << 20;

struct CappedAllocator;

// SAFETY: forwards to the system allocator, or refuses (null) before it.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_BYTES_MAX {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

thread_local! {
    /// Set while the known finding unwinds, so the panic hook lets it.
    static HUGE_ALLOCATION: Cell<bool> = const { Cell::new(false) };
}

/// Turns a refused allocation (and a `capacity overflow`, the same claim
/// past `isize::MAX`) into an unwind the target catches; every other panic
/// still goes to libFuzzer's hook, which reports it as a crash.
fn install_hooks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::alloc::set_alloc_error_hook(|layout| {
            HUGE_ALLOCATION.with(|h| h.set(true));
            panic!("refused an allocation of {} bytes", layout.size());
        });
        let fuzzer_hook = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let capacity_overflow = info.payload().downcast_ref::<&str>()
                == Some(&"capacity overflow")
                || info.payload().downcast_ref::<String>().map(String::as_str)
                    == Some("capacity overflow");
            if capacity_overflow {
                HUGE_ALLOCATION.with(|h| h.set(true));
            }
            if !HUGE_ALLOCATION.with(Cell::get) {
                fuzzer_hook(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    if !step_around_known_findings() {
        run(data);
        return;
    }
    install_hooks();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| run(data)));
    if outcome.is_err() {
        // Only the known finding gets here: any other panic aborted in
        // the fuzzer's hook.
        assert!(HUGE_ALLOCATION.with(|h| h.replace(false)));
    }
});

fn run(data: &[u8]) {
    check_snapshot(data);

    let mut seq_and_time = data;
    let seq = varint(&mut seq_and_time).unwrap_or(0);
    let time_unix_ns = varint(&mut seq_and_time).unwrap_or(0);
    let header = SnapshotHeader {
        version: SNAPSHOT_VERSION,
        chain_crc: 0x5eed_5eed,
        seq,
        time_unix_ns,
        payload_len: data.len() as u64,
        payload_crc: crc32fast::hash(data),
    };
    let mut file = header.encode().to_vec();
    file.extend_from_slice(data);
    assert_eq!(check(&file).expect("valid header and checksums"), header);
    check_snapshot(&file);
}

fn check_snapshot(b: &[u8]) {
    let checked = check(b);
    if let Ok(h) = &checked {
        assert_eq!(h.version, SNAPSHOT_VERSION);
        assert_eq!(h.file_bytes(), b.len() as u64);
        assert_eq!(h.encode()[..], b[..SNAPSHOT_HEADER_BYTES]);
    }
    let Ok((header, state)) = decode(b) else {
        return;
    };
    assert_eq!(
        Some(header),
        checked.ok(),
        "decode accepted what check refused"
    );
    assert_eq!(state.last_seq, header.seq);
    assert_eq!(state.last_time_unix_ns, header.time_unix_ns);

    let payload = encode_state(&state).expect("a decoded state encodes");
    assert!(
        payload.len() <= b.len() - SNAPSHOT_HEADER_BYTES,
        "re-encoding grew the state"
    );
    let mut again = Cursor::new(Vec::new());
    let h2 = encode_to(&mut again, &state, header.chain_crc).expect("encode to memory");
    let (h3, state_again) = decode(again.get_ref()).expect("a re-encoded snapshot decodes");
    assert_eq!(h2, h3);
    assert_eq!(h3.seq, header.seq);
    assert_eq!(h3.chain_crc, header.chain_crc);
    assert_eq!(state_again, state);
}

/// One unsigned integer in bincode's varint encoding (what the payload
/// starts with: `State::last_seq`, then `last_time_unix_ns`).
fn varint(b: &mut &[u8]) -> Option<u64> {
    let (&tag, rest) = b.split_first()?;
    let width = match tag {
        0..=250 => {
            *b = rest;
            return Some(tag as u64);
        }
        251 => 2,
        252 => 4,
        253 => 8,
        _ => return None,
    };
    let bytes = rest.get(..width)?;
    let mut le = [0u8; 8];
    le[..width].copy_from_slice(bytes);
    *b = &rest[width..];
    Some(u64::from_le_bytes(le))
}

/// Known findings are stepped around so the fuzzer can look past them;
/// `FUZZ_KNOWN_FINDINGS=1` stops that, to reproduce them from artifacts/.
fn step_around_known_findings() -> bool {
    static STEP_AROUND: OnceLock<bool> = OnceLock::new();
    *STEP_AROUND.get_or_init(|| std::env::var_os("FUZZ_KNOWN_FINDINGS").is_none())
}

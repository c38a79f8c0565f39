//! Every limit in one place. Fixed limits are constants (they are part of the
//! grammar or the on-disk format); tunable ones live in [`Limits`], each with
//! a default, a config key of the same name and a command-line flag.

use serde::{Deserialize, Serialize};

/// Longest repository name accepted, in bytes (distribution's limit).
pub const REPO_NAME_BYTES_MAX: usize = 255;
/// Longest tag, in bytes (the spec grammar allows 128 characters).
pub const TAG_BYTES_MAX: usize = 128;
/// Largest record payload the log format allows. A record larger than this
/// is corrupt by definition, which keeps a reader's memory bounded.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Most commands the writer puts into one group commit.
pub const GROUP_COMMIT_COMMANDS_MAX: usize = 1024;
/// Depth of the queue between request handlers and the log writer.
pub const WRITER_QUEUE_COMMANDS_MAX: usize = 4096;

/// Limits an operator may tune.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest manifest body accepted (413 above it).
    pub manifest_bytes_max: u64,
    /// Largest single PATCH/PUT/POST body of a blob upload.
    pub chunk_bytes_max: u64,
    /// Largest blob an upload may grow to.
    pub blob_bytes_max: u64,
    /// Most entries a tag list, catalog or referrers page returns.
    pub page_entries_max: usize,
    /// Most tags one manifest PUT may set with `?tag=`.
    pub tags_per_put_max: usize,
    /// Segment files roll over after reaching this size.
    pub segment_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            manifest_bytes_max: 4 * 1024 * 1024,
            chunk_bytes_max: 16 * 1024 * 1024 * 1024,
            blob_bytes_max: 64 * 1024 * 1024 * 1024,
            page_entries_max: 10_000,
            tags_per_put_max: 100,
            segment_bytes_max: 64 * 1024 * 1024,
        }
    }
}

const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX as u64 > 4 * 1024 * 1024 + 64 * 1024);

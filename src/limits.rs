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
/// hyper refuses a read buffer smaller than this; `header_bytes_max` may
/// not go below it.
pub const HEADER_BYTES_MIN: usize = 8192;
/// Most credentials kept verified in memory (bcrypt is slow by design; a
/// client sending Basic on every request would pay it each time).
pub const CREDENTIAL_CACHE_ENTRIES_MAX: usize = 1024;
/// How long a verified credential stays cached, in seconds.
pub const CREDENTIAL_CACHE_SECS: u64 = 300;
/// Most `scope` values one token request may name.
pub const TOKEN_SCOPES_MAX: usize = 32;
/// Locks the small-blob cache is split over.
pub const SMALL_BLOB_CACHE_SHARDS: usize = 16;

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
    /// Largest request head (request line and headers); a larger one is
    /// answered 431 and the connection closed. At least 8192.
    pub header_bytes_max: usize,
    /// How long a client may take to send a request head once it started
    /// (and a TLS handshake), in milliseconds; then the connection closes.
    pub header_read_timeout_ms: u64,
    /// How long a request body may stall between two pieces, in
    /// milliseconds: a client that stops sending mid-body fails with
    /// BLOB_UPLOAD_INVALID and releases the upload session it held.
    pub body_read_timeout_ms: u64,
    /// Most upload requests carrying bytes (`POST ?digest=`, `PATCH`, `PUT`
    /// on a session) served at once; more get 429 TOOMANYREQUESTS.
    pub uploads_concurrent_max: usize,
    /// Most upload sessions open at once; a `POST` that would open one more
    /// gets 429 TOOMANYREQUESTS.
    pub upload_sessions_max: usize,
    /// An upload with no acknowledged chunk for this long, in seconds, is
    /// cancelled on the record (reason `Expired`) and its staging file
    /// removed. 0: never.
    pub upload_idle_expiry_secs: u64,
    /// On shutdown, how long in-flight requests may take to finish, in
    /// seconds, before their connections are closed.
    pub shutdown_drain_timeout_secs: u64,
    /// Memory for whole small blobs (up to 64 KiB each: configs, small
    /// layers) kept to serve pulls without opening their files
    /// (`blobs::cache::SmallBlobCache`). 0: no cache.
    pub blob_cache_bytes_max: usize,
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
            header_bytes_max: 64 * 1024,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 60_000,
            uploads_concurrent_max: 256,
            upload_sessions_max: 10_000,
            upload_idle_expiry_secs: 24 * 3600,
            shutdown_drain_timeout_secs: 30,
            blob_cache_bytes_max: 32 * 1024 * 1024,
        }
    }
}

const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX as u64 > 4 * 1024 * 1024 + 64 * 1024);

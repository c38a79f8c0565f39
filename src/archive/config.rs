//! `[archive]`: where the log is shipped and how. Plain values and the
//! checks that need nothing else; the store is built from them by
//! `archive::store`.

use serde::{Deserialize, Serialize};

use crate::blobs::object::StorageConfig;

/// When a write is acknowledged with the archive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveDurability {
    /// Acknowledge once the record is durable in the local log (the
    /// top-level `durability`); shipping trails by about
    /// `ship_interval_ms` and never holds a write back. The default.
    #[default]
    Local,
    /// Acknowledge only once the record is also in the archive: a lost
    /// machine loses no acknowledged write. Every write waits for one
    /// shipment (waiting writers share it).
    Archived,
}

/// `[archive]`: the log shipped to object storage (off while `url` is
/// empty).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `s3://bucket/prefix` or `file:///absolute/path`; empty: off.
    pub url: String,
    /// The S3 endpoint; empty: `[storage]`'s.
    pub endpoint: String,
    /// Empty: `[storage]`'s.
    pub region: String,
    /// Empty: `[storage]`'s, then `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// Empty: `[storage]`'s, then `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// Allow a plain-HTTP endpoint (also on when `[storage]` allows it).
    pub allow_http: bool,
    /// New records are shipped at least this often.
    pub ship_interval_ms: u64,
    /// ... and as soon as this many record bytes are waiting.
    pub ship_max_bytes: u64,
    pub durability: ArchiveDurability,
    /// Under `durability = "archived"`: a write whose record is not in the
    /// archive after this long is answered with an error (the record stays
    /// in the local log and is shipped when the store is back).
    pub ack_timeout_ms: u64,
}

impl std::fmt::Debug for ArchiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("ship_interval_ms", &self.ship_interval_ms)
            .field("ship_max_bytes", &self.ship_max_bytes)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// Default of `archive.ship_interval_ms`.
pub const SHIP_INTERVAL_MS_DEFAULT: u64 = 1000;
/// Default of `archive.ship_max_bytes`.
pub const SHIP_MAX_BYTES_DEFAULT: u64 = 1024 * 1024;

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            url: String::new(),
            endpoint: String::new(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            allow_http: false,
            ship_interval_ms: SHIP_INTERVAL_MS_DEFAULT,
            ship_max_bytes: SHIP_MAX_BYTES_DEFAULT,
            durability: ArchiveDurability::Local,
            ack_timeout_ms: 30_000,
        }
    }
}

/// Where an archive URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveLocation {
    /// `s3://bucket/prefix`: `prefix` is `""` or ends in `/`.
    S3 { bucket: String, prefix: String },
    /// `file:///path`: a directory (object_store's local file system).
    File { path: std::path::PathBuf },
}

impl ArchiveLocation {
    pub fn parse(url: &str) -> Result<ArchiveLocation, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("archive url {url:?} names no bucket"));
            }
            let prefix = match prefix.trim_matches('/') {
                "" => String::new(),
                p => {
                    object_store::path::Path::parse(p)
                        .map_err(|e| format!("archive url {url:?}: not a valid key prefix: {e}"))?;
                    format!("{p}/")
                }
            };
            return Ok(ArchiveLocation::S3 {
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "archive url {url:?}: a file URL needs an absolute path (file:///…)"
                ));
            }
            return Ok(ArchiveLocation::File {
                path: std::path::PathBuf::from(path),
            });
        }
        Err(format!(
            "archive url {url:?}: expected s3://bucket/prefix or file:///path"
        ))
    }
}

impl ArchiveConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks what the types alone cannot; an empty `url` checks nothing.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        ArchiveLocation::parse(&self.url)?;
        if self.ship_interval_ms == 0 {
            return Err("archive.ship_interval_ms must be at least 1".into());
        }
        if self.ship_max_bytes == 0 {
            return Err("archive.ship_max_bytes must be at least 1".into());
        }
        if self.ack_timeout_ms == 0 {
            return Err("archive.ack_timeout_ms must be at least 1".into());
        }
        Ok(())
    }

    /// The S3 settings for an archive in `bucket`: this section's keys,
    /// each empty one taken from `[storage]` (so an archive beside the
    /// blobs needs only its URL), with `[storage]`'s timeout and retries.
    pub fn s3_settings(&self, storage: &StorageConfig, bucket: &str) -> StorageConfig {
        let pick = |own: &str, theirs: &str| match own {
            "" => theirs.to_owned(),
            o => o.to_owned(),
        };
        StorageConfig {
            endpoint: pick(&self.endpoint, &storage.endpoint),
            region: pick(&self.region, &storage.region),
            bucket: bucket.to_owned(),
            prefix: String::new(),
            access_key_id: pick(&self.access_key_id, &storage.access_key_id),
            secret_access_key: pick(&self.secret_access_key, &storage.secret_access_key),
            allow_http: self.allow_http || storage.allow_http,
            ..storage.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_refused() {
        assert_eq!(
            ArchiveLocation::parse("s3://b/some/prefix/").unwrap(),
            ArchiveLocation::S3 {
                bucket: "b".into(),
                prefix: "some/prefix/".into()
            }
        );
        assert_eq!(
            ArchiveLocation::parse("s3://b").unwrap(),
            ArchiveLocation::S3 {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            ArchiveLocation::parse("file:///tmp/a").unwrap(),
            ArchiveLocation::File {
                path: "/tmp/a".into()
            }
        );
        for bad in ["s3:///x", "file://rel/path", "http://x/y", "b/prefix"] {
            assert!(ArchiveLocation::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_keys_come_from_storage() {
        let storage = StorageConfig {
            endpoint: "http://127.0.0.1:3900".into(),
            access_key_id: "GK1".into(),
            allow_http: true,
            ..StorageConfig::default()
        };
        let archive = ArchiveConfig {
            url: "s3://logs/x".into(),
            secret_access_key: "mine".into(),
            ..ArchiveConfig::default()
        };
        let s = archive.s3_settings(&storage, "logs");
        assert_eq!(s.endpoint, "http://127.0.0.1:3900");
        assert_eq!(s.access_key_id, "GK1");
        assert_eq!(s.secret_access_key, "mine");
        assert_eq!(s.bucket, "logs");
        assert!(s.allow_http);
        archive.validate().unwrap();
        let zero = ArchiveConfig {
            ship_interval_ms: 0,
            ..archive
        };
        assert!(zero.validate().is_err());
    }
}

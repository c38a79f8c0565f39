//! The server's configuration: defaults that need no file, an optional TOML
//! file with the same keys, and flags that override both.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compaction::{CompactedSegments, Retention};
use crate::limits::{Limits, RECORD_PAYLOAD_BYTES_MAX};
use crate::log::recovery::RecoveryMode;
use crate::log::Durability;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityMode {
    /// Acknowledge a write after fdatasync (default).
    #[default]
    Always,
    /// Acknowledge after write; fdatasync every `fsync_interval_ms`.
    Interval,
    /// Never fsync: tests and benchmarks only.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the log, snapshots and blobs live (created on first run).
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: String,
    pub durability: DurabilityMode,
    /// fsync period under `durability = "interval"`.
    pub fsync_interval_ms: u64,
    /// What to do with a torn log tail at startup.
    pub recovery: RecoveryMode,
    /// Whether clients may DELETE manifests, tags and blobs.
    pub delete_enabled: bool,
    pub limits: Limits,
    pub snapshots: SnapshotConfig,
    pub history: HistoryConfig,
}

/// When the server snapshots its state (see `snapshot::scheduler`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Take a snapshot once this many log records (one per command, each
    /// holding that command's events) were written since the last one.
    /// 0: never by count.
    pub every_records: u64,
    /// Take a snapshot once this many bytes were appended to the log since
    /// the last one. 0: never by size.
    pub every_bytes: u64,
    /// Snapshots kept, newest first (the base snapshot that the log starts
    /// after, once compacted, is kept besides).
    pub keep: usize,
    /// Take a snapshot on clean shutdown, once the writer has drained.
    pub on_shutdown: bool,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            every_records: 100_000,
            every_bytes: 256 * 1024 * 1024,
            keep: 2,
            on_shutdown: true,
        }
    }
}

/// How long the log keeps history (see `compaction`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// `"forever"` (the default), or a duration such as `"30d"`: segments
    /// whose records are all older than that, and covered by a snapshot,
    /// leave the live log after each snapshot.
    pub retention: Retention,
    /// Where they go: `"archive"` (`<data>/archive/log/`, the default) or
    /// `"delete"`.
    pub compacted_segments: CompactedSegments,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./ferro-data"),
            listen: "127.0.0.1:5000".into(),
            durability: DurabilityMode::Always,
            fsync_interval_ms: 100,
            recovery: RecoveryMode::TolerateTornTail,
            delete_enabled: true,
            limits: Limits::default(),
            snapshots: SnapshotConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks values that the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        // A manifest travels in one log record, with its entry around it.
        let manifest_cap = RECORD_PAYLOAD_BYTES_MAX as u64 / 2;
        if l.manifest_bytes_max == 0 || l.manifest_bytes_max > manifest_cap {
            return Err(ConfigError::Invalid(format!(
                "limits.manifest_bytes_max must be in 1..={manifest_cap}"
            )));
        }
        if l.page_entries_max == 0 {
            return Err(ConfigError::Invalid(
                "limits.page_entries_max must be at least 1".into(),
            ));
        }
        if l.segment_bytes_max < 4096 {
            return Err(ConfigError::Invalid(
                "limits.segment_bytes_max must be at least 4096".into(),
            ));
        }
        if self.snapshots.keep == 0 {
            return Err(ConfigError::Invalid(
                "snapshots.keep must be at least 1".into(),
            ));
        }
        if self.durability == DurabilityMode::Interval && self.fsync_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "fsync_interval_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn log_durability(&self) -> Durability {
        match self.durability {
            DurabilityMode::Always => Durability::Always,
            DurabilityMode::Interval => Durability::Interval {
                interval_ms: self.fsync_interval_ms,
            },
            DurabilityMode::Never => Durability::Never,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let c = Config::default();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        c.validate().unwrap();
    }

    #[test]
    fn partial_file_and_unknown_keys() {
        let c: Config =
            toml::from_str("listen = \"127.0.0.1:9\"\n[limits]\nmanifest_bytes_max = 10\n")
                .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.limits.manifest_bytes_max, 10);
        assert_eq!(
            c.limits.page_entries_max,
            Limits::default().page_entries_max
        );
        assert!(toml::from_str::<Config>("nope = 1").is_err());
        let mut bad = Config::default();
        bad.limits.manifest_bytes_max = u64::MAX;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn snapshot_and_history_settings() {
        let c: Config = toml::from_str(
            "[snapshots]\nevery_records = 10\n[history]\nretention = \"30d\"\ncompacted_segments = \"delete\"\n",
        )
        .unwrap();
        assert_eq!(c.snapshots.every_records, 10);
        assert_eq!(c.snapshots.keep, SnapshotConfig::default().keep);
        assert_eq!(
            c.history.retention,
            Retention::For(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(c.history.compacted_segments, CompactedSegments::Delete);
        assert!(Config::default()
            .to_toml()
            .contains("retention = \"forever\""));
        assert!(toml::from_str::<Config>("[history]\nretention = \"soon\"").is_err());
        let mut bad = Config::default();
        bad.snapshots.keep = 0;
        assert!(bad.validate().is_err());
    }
}

//! The server's configuration: defaults that need no file, an optional TOML
//! file with the same keys, environment variables (`FERRO_<KEY>`, see
//! [`Config::apply_env`]) over the file, and flags over both.

use std::collections::BTreeMap;
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
    /// `"text"` (the default) or `"json"` (one object per line).
    pub log_format: LogFormat,
    /// One log line per request (method, path, status, latency), with its
    /// request id. Off by default: every write is already in the event
    /// log with its actor, and the line costs about a quarter of the CPU
    /// of a small read (a HEAD by tag: ~10 µs without, ~13 µs with).
    pub access_log: bool,
    /// Large blob GETs over plain HTTP sent with `sendfile(2)` from the
    /// page cache rather than written from a memory map (see `sendfile`;
    /// never over TLS). Off by default: it cuts the server's CPU per GiB
    /// sent by about a third, but a client on the same host (loopback)
    /// then pays more than that to receive, and the load benchmark's
    /// downloads measured slower (benches/RESULTS.md).
    pub sendfile: bool,
    pub limits: Limits,
    pub snapshots: SnapshotConfig,
    pub history: HistoryConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    /// Garbage collection (see `gc`).
    pub gc: crate::gc::GcConfig,
    /// Where blob bytes live (see `blobs::object`).
    pub storage: crate::blobs::object::StorageConfig,
    /// The web UI at `/ui/` (see `api::ui`).
    pub ui: UiConfig,
    /// The log shipped to object storage (see `archive`); off by default.
    pub archive: crate::archive::ArchiveConfig,
    /// Serve as a read replica of an archive (see `replica`); off by
    /// default.
    pub replica: crate::replica::ReplicaConfig,
    /// Events sent to HTTP endpoints from the log (see `notify`). Last:
    /// its endpoints are an array of tables.
    pub notifications: crate::notify::config::NotificationsConfig,
    /// Pull-through caches of other registries (see `mirror`);
    /// `[[mirrors]]`, one per prefix.
    pub mirrors: Vec<crate::mirror::config::MirrorConfig>,
}

/// The web UI served at `/ui/` on the registry's own listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// Serve `/ui/` (and redirect browsers from `/`).
    pub enabled: bool,
    /// With `auth.scheme = "none"` on an address other than loopback the
    /// UI is read-only (anyone who reaches the port could restore or
    /// delete); this lets it write anyway.
    pub allow_writes_without_auth: bool,
    /// How long a login lasts, in seconds.
    pub session_lifetime_secs: u64,
    /// Most UI sessions kept at once; past it the oldest is dropped.
    pub sessions_max: usize,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            enabled: true,
            allow_writes_without_auth: false,
            session_lifetime_secs: 8 * 3600,
            sessions_max: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// HTTPS with rustls. Both files set: TLS; both empty: plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    /// No authentication: everyone may do everything (the default).
    #[default]
    None,
    /// HTTP Basic against the htpasswd file; challenge `Basic realm=…`.
    Basic,
    /// Bearer tokens from the built-in token endpoint (`/auth/token`, which
    /// takes the htpasswd users) or an external issuer; challenge
    /// `Bearer realm=…,service=…,scope=…`. Basic credentials are accepted
    /// on the API too.
    Token,
}

/// Access control (see `auth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub scheme: AuthScheme,
    /// htpasswd file of bcrypt hashes (`htpasswd -B`).
    pub htpasswd: PathBuf,
    /// The Basic challenge's realm.
    pub realm: String,
    /// Unauthenticated clients may pull every repository (not list the
    /// catalog, not read the event feed).
    pub anonymous_pull: bool,
    /// Named groups of users, for rules: `dev = ["alice", "bob"]`.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Who may do what where. With no rule, every authenticated user may
    /// do everything; with rules, only what a rule grants.
    pub rules: Vec<AccessRule>,
    pub token: TokenConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            scheme: AuthScheme::None,
            htpasswd: PathBuf::new(),
            realm: "ferro".into(),
            anonymous_pull: false,
            groups: BTreeMap::new(),
            rules: Vec::new(),
            token: TokenConfig::default(),
        }
    }
}

/// One rule: these users and groups may do these actions on repositories
/// matching these patterns. Patterns are globs over repository names:
/// `*` stays within one path component, `**` crosses `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AccessRule {
    /// User names; `"*"` is any authenticated user.
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub repositories: Vec<String>,
    /// `"pull"`, `"push"`, `"delete"`, or `"*"` for all three.
    pub actions: Vec<String>,
}

/// The token flow (`scheme = "token"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Where clients get tokens (the challenge's `realm`). Empty: the
    /// built-in endpoint on this server, `<scheme>://<Host>/auth/token`.
    pub realm: String,
    /// The challenge's `service`, and the audience of issued tokens.
    pub service: String,
    /// The `iss` of issued tokens.
    pub issuer: String,
    /// Lifetime of an issued token.
    pub lifetime_secs: u64,
    /// PEM file with the ES256 (P-256) signing key, PKCS#8. Empty: a key
    /// generated at startup (tokens then end with the process).
    pub signing_key: PathBuf,
    /// Tokens of an external issuer accepted besides ours.
    pub external: ExternalIssuerConfig,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            realm: String::new(),
            service: "ferro".into(),
            issuer: "ferro".into(),
            lifetime_secs: 300,
            signing_key: PathBuf::new(),
            external: ExternalIssuerConfig::default(),
        }
    }
}

/// An external token issuer (docker_auth and the like): its public key,
/// and the `iss` and `aud` its tokens must carry. Unused when `public_key`
/// is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalIssuerConfig {
    /// PEM public key (EC, RSA or Ed25519).
    pub public_key: PathBuf,
    pub issuer: String,
    /// Expected `aud`; empty: `token.service`.
    pub audience: String,
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
            log_format: LogFormat::Text,
            access_log: false,
            sendfile: false,
            limits: Limits::default(),
            snapshots: SnapshotConfig::default(),
            history: HistoryConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            gc: crate::gc::GcConfig::default(),
            storage: crate::blobs::object::StorageConfig::default(),
            ui: UiConfig::default(),
            archive: crate::archive::ArchiveConfig::default(),
            replica: crate::replica::ReplicaConfig::default(),
            notifications: Default::default(),
            mirrors: Vec::new(),
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
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
}

/// Prefix of the environment variables that set config keys.
pub const ENV_PREFIX: &str = "FERRO_";

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

    /// Checks values that the types alone cannot. The `[auth]` section is
    /// checked by access control, which knows what its rules and schemes
    /// need; `server::check_config` runs both.
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
        if self.ui.session_lifetime_secs == 0 || self.ui.sessions_max == 0 {
            return Err(ConfigError::Invalid(
                "ui.session_lifetime_secs and ui.sessions_max must be at least 1".into(),
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
        if l.header_bytes_max < crate::limits::HEADER_BYTES_MIN {
            return Err(ConfigError::Invalid(format!(
                "limits.header_bytes_max must be at least {}",
                crate::limits::HEADER_BYTES_MIN
            )));
        }
        for (key, value) in [
            ("limits.header_read_timeout_ms", l.header_read_timeout_ms),
            ("limits.body_read_timeout_ms", l.body_read_timeout_ms),
            (
                "limits.uploads_concurrent_max",
                l.uploads_concurrent_max as u64,
            ),
            ("limits.upload_sessions_max", l.upload_sessions_max as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        self.archive.validate().map_err(ConfigError::Invalid)?;
        self.replica
            .validate(&self.archive)
            .map_err(ConfigError::Invalid)?;
        if self.tls.cert.as_os_str().is_empty() != self.tls.key.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "tls.cert and tls.key go together: set both or neither".into(),
            ));
        }
        Ok(())
    }

    /// Sets keys from `FERRO_<KEY>` variables: the key's TOML path in
    /// capitals, sections joined by `__` (`FERRO_LISTEN`,
    /// `FERRO_LIMITS__MANIFEST_BYTES_MAX`, `FERRO_AUTH__TOKEN__SERVICE`).
    /// A value is taken as the key's type: strings as they are, numbers and
    /// booleans parsed, lists and tables as TOML (`FERRO_AUTH__RULES=[{…}]`).
    /// Variables naming no key are ignored (`FERRO_CONFIG` is the file).
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let mut tree = toml::Value::try_from(&*self).expect("the config serializes");
        let mut changed = false;
        for (var, value) in vars {
            let Some(path) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            let Some(slot) = keys
                .iter()
                .try_fold(&mut tree, |node, k| node.get_mut(k.as_str()))
            else {
                continue;
            };
            let env_error = |reason: String| ConfigError::Env {
                var: var.clone(),
                reason,
            };
            *slot = match slot {
                toml::Value::String(_) => toml::Value::String(value.clone()),
                toml::Value::Integer(_) => toml::Value::Integer(
                    value
                        .trim()
                        .parse()
                        .map_err(|e| env_error(format!("{e}")))?,
                ),
                toml::Value::Boolean(_) => toml::Value::Boolean(
                    value
                        .trim()
                        .parse()
                        .map_err(|e| env_error(format!("{e}")))?,
                ),
                _ => {
                    let doc: toml::Table = toml::from_str(&format!("v = {value}"))
                        .map_err(|e| env_error(e.to_string()))?;
                    doc["v"].clone()
                }
            };
            changed = true;
        }
        if changed {
            *self = tree
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Env {
                    var: "FERRO_*".into(),
                    reason: e.to_string(),
                })?;
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

    /// The defaults as `ferro config --print-defaults` shows them: with a
    /// commented notification endpoint in place of the empty list, and a
    /// commented mirror at the end (arrays of tables go last).
    pub fn defaults_text() -> String {
        let text = Config::default()
            .to_toml()
            .replacen("mirrors = []\n", "", 1);
        let example = crate::notify::config::EXAMPLE;
        let text = match text.rfind("endpoints = []\n") {
            Some(at) => format!(
                "{}{example}{}",
                &text[..at],
                &text[at + "endpoints = []\n".len()..]
            ),
            None => format!("{text}\n{example}"),
        };
        format!("{text}\n{}", crate::mirror::config::EXAMPLE)
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
    fn ui_settings_are_checked() {
        let mut c = Config::default();
        assert!(c.ui.enabled && !c.ui.allow_writes_without_auth);
        c.ui.session_lifetime_secs = 0;
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("[ui]\nenabled = false\nsessions_max = 5\n").unwrap();
        assert!(!c.ui.enabled);
        assert_eq!(c.ui.sessions_max, 5);
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
    fn environment_overrides() {
        let mut c = Config::default();
        c.apply_env([
            ("FERRO_LISTEN".to_owned(), "0.0.0.0:5000".to_owned()),
            ("FERRO_LIMITS__MANIFEST_BYTES_MAX".into(), "1234".into()),
            ("FERRO_AUTH__SCHEME".into(), "basic".into()),
            ("FERRO_AUTH__ANONYMOUS_PULL".into(), "true".into()),
            (
                "FERRO_AUTH__TOKEN__SERVICE".into(),
                "registry.example".into(),
            ),
            (
                "FERRO_AUTH__RULES".into(),
                r#"[{users = ["a"], repositories = ["**"], actions = ["pull"]}]"#.into(),
            ),
            ("FERRO_AUTH__GROUPS".into(), r#"{dev = ["a", "b"]}"#.into()),
            ("FERRO_REQUIRE_INTEROP".into(), "1".into()),
            ("HOME".into(), "/root".into()),
        ])
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:5000");
        assert_eq!(c.limits.manifest_bytes_max, 1234);
        assert_eq!(c.auth.scheme, AuthScheme::Basic);
        assert!(c.auth.anonymous_pull);
        assert_eq!(c.auth.token.service, "registry.example");
        assert_eq!(c.auth.rules[0].users, ["a"]);
        assert_eq!(c.auth.groups["dev"], ["a", "b"]);
        let mut c = Config::default();
        assert!(c
            .apply_env([("FERRO_LIMITS__PAGE_ENTRIES_MAX".into(), "many".into())])
            .is_err());
        assert!(c
            .apply_env([("FERRO_AUTH__SCHEME".into(), "kerberos".into())])
            .is_err());
    }

    #[test]
    fn every_setting_is_printed() {
        let text = Config::default().to_toml();
        for key in [
            "log_format",
            "access_log",
            "sendfile",
            "header_bytes_max",
            "header_read_timeout_ms",
            "body_read_timeout_ms",
            "uploads_concurrent_max",
            "upload_sessions_max",
            "upload_idle_expiry_secs",
            "shutdown_drain_timeout_secs",
            "blob_cache_bytes_max",
            "[tls]",
            "[auth]",
            "anonymous_pull",
            "rules",
            "[auth.token]",
            "lifetime_secs",
            "[auth.token.external]",
            "[gc]",
            "untagged_manifests_older_than = \"off\"",
            "[storage]",
            "backend = \"filesystem\"",
            "endpoint",
            "region",
            "bucket",
            "prefix",
            "access_key_id",
            "secret_access_key",
            "allow_http",
            "part_size_bytes",
            "allow_small_parts",
            "request_timeout_ms",
            "retries_max",
            "retry_timeout_ms",
            "redirect = false",
            "redirect_url_lifetime_secs",
        ] {
            assert!(text.contains(key), "{key} missing from:\n{text}");
        }
    }

    #[test]
    fn mirrors_from_the_file_and_the_environment() {
        let c: Config = toml::from_str(
            "[[mirrors]]\nprefix = \"hub/\"\n[[mirrors.upstreams]]\nurl = \"https://registry-1.docker.io\"\n",
        )
        .unwrap();
        assert_eq!(c.mirrors[0].prefix, "hub/");
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let mut c = Config::default();
        c.apply_env([(
            "FERRO_MIRRORS".to_owned(),
            r#"[{prefix = "hub/", tag_ttl = "1m", upstreams = [{url = "http://127.0.0.1:9"}], sync_interval = "1h", sync = [{repository = "library/alpine", tags = ["3.*"]}]}]"#
                .to_owned(),
        )])
        .unwrap();
        assert_eq!(c.mirrors[0].tag_ttl, std::time::Duration::from_secs(60));
        assert_eq!(
            c.mirrors[0].sync_interval,
            std::time::Duration::from_secs(3600)
        );
        assert_eq!(c.mirrors[0].sync[0].tags, ["3.*"]);
        let text = Config::defaults_text();
        assert!(text.contains("# [[mirrors]]"), "{text}");
        assert!(text.contains("# [[notifications.endpoints]]"));
        let parsed: Config = toml::from_str(&text).unwrap();
        assert!(parsed.mirrors.is_empty());
    }

    #[test]
    fn archive_settings_from_variables() {
        let mut c = Config::default();
        assert!(!c.archive.enabled());
        c.apply_env([
            (
                "FERRO_ARCHIVE__URL".to_owned(),
                "s3://logs/ferro".to_owned(),
            ),
            ("FERRO_ARCHIVE__DURABILITY".into(), "archived".into()),
            ("FERRO_ARCHIVE__SHIP_INTERVAL_MS".into(), "250".into()),
        ])
        .unwrap();
        assert_eq!(c.archive.url, "s3://logs/ferro");
        assert_eq!(
            c.archive.durability,
            crate::archive::ArchiveDurability::Archived
        );
        assert_eq!(c.archive.ship_interval_ms, 250);
        c.validate().unwrap();
        c.archive.url = "ftp://x".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn replica_settings_from_variables_and_defaults() {
        let text = Config::defaults_text();
        assert!(text.contains("[replica]"), "{text}");
        assert!(text.contains("poll_interval_ms = 200"), "{text}");
        let mut c = Config::default();
        assert!(!c.replica.enabled());
        c.apply_env([
            ("FERRO_REPLICA__OF".to_owned(), "s3://logs/ferro".to_owned()),
            (
                "FERRO_REPLICA__PRIMARY".into(),
                "http://10.0.0.1:5000".into(),
            ),
            ("FERRO_REPLICA__POLL_INTERVAL_MS".into(), "50".into()),
        ])
        .unwrap();
        assert_eq!(c.replica.of, "s3://logs/ferro");
        assert_eq!(c.replica.primary, "http://10.0.0.1:5000");
        assert_eq!(c.replica.poll_interval_ms, 50);
        c.validate().unwrap();
        c.archive.url = "s3://logs/other".into();
        assert!(
            c.validate().is_err(),
            "a replica ships, once promoted, where it follows"
        );
    }

    #[test]
    fn storage_settings() {
        use crate::blobs::object::StorageBackend;
        let c: Config = toml::from_str(
            "[storage]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"b\"\nallow_http = true\n",
        )
        .unwrap();
        assert_eq!(c.storage.backend, StorageBackend::S3);
        c.storage.validate().unwrap();
        let mut c = Config::default();
        c.apply_env([
            ("FERRO_STORAGE__BACKEND".to_owned(), "s3".to_owned()),
            ("FERRO_STORAGE__BUCKET".into(), "registry".into()),
            ("FERRO_STORAGE__PART_SIZE_BYTES".into(), "1048576".into()),
            ("FERRO_STORAGE__LOCAL_CACHE_BYTES_MAX".into(), "0".into()),
            (
                "FERRO_STORAGE__LOCAL_CACHE_BLOB_BYTES_MAX".into(),
                "65536".into(),
            ),
        ])
        .unwrap();
        assert_eq!(c.storage.backend, StorageBackend::S3);
        assert_eq!(c.storage.bucket, "registry");
        assert_eq!(c.storage.part_size_bytes, 1 << 20);
        assert_eq!(c.storage.local_cache_bytes_max, 0);
        assert_eq!(c.storage.local_cache_blob_bytes_max, 65536);
        let defaults = Config::defaults_text();
        assert!(
            defaults.contains("local_cache_bytes_max = 1073741824"),
            "{defaults}"
        );
        // Parts under 5 MiB only for stores that take them.
        let err = c.storage.validate().unwrap_err();
        assert!(err.contains("5 MiB"), "{err}");
        c.storage.allow_small_parts = true;
        c.storage.validate().unwrap();
        c.storage.bucket.clear();
        assert!(c.storage.validate().is_err());
    }

    #[test]
    fn notification_endpoints_from_file_and_environment() {
        let text = Config::defaults_text();
        assert!(text.contains("# [[notifications.endpoints]]"), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|_| {
                        // The example only, up to the blank line after it.
                        text.find("# [[notifications.endpoints]]")
                            .is_some_and(|at| {
                                text[at..]
                                    .split("\n\n")
                                    .next()
                                    .is_some_and(|e| e.contains(l))
                            })
                    })
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c: Config = toml::from_str(&uncommented).unwrap();
        assert_eq!(c.notifications.endpoints[0].name, "ci");
        assert_eq!(c.notifications.endpoints[0].actions, ["push", "delete"]);
        let mut c = Config::default();
        c.apply_env([(
            "FERRO_NOTIFICATIONS__ENDPOINTS".to_owned(),
            r#"[{name = "ci", url = "http://127.0.0.1:9/h", format = "cloudevents", secret = "s"}]"#
                .to_owned(),
        )])
        .unwrap();
        assert_eq!(c.notifications.endpoints[0].secret, "s");
        c.validate().unwrap();
        c.apply_env([(
            "FERRO_NOTIFICATIONS__HOLD".to_owned(),
            "retention".to_owned(),
        )])
        .unwrap();
        assert_eq!(
            c.notifications.hold,
            crate::notify::config::LogHold::Retention
        );
    }

    #[test]
    fn untagged_manifest_policy_setting() {
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(Config::default().gc.untagged_manifests_older_than, None);
        let c: Config = toml::from_str("[gc]\nuntagged_manifests_older_than = \"30d\"\n").unwrap();
        assert_eq!(c.gc.untagged_manifests_older_than, Some(30 * day));
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let c: Config = toml::from_str("[gc]\nuntagged_manifests_older_than = \"off\"\n").unwrap();
        assert_eq!(c.gc.untagged_manifests_older_than, None);
        assert!(toml::from_str::<Config>("[gc]\nuntagged_manifests_older_than = \"old\"").is_err());
        let mut c = Config::default();
        c.apply_env([(
            "FERRO_GC__UNTAGGED_MANIFESTS_OLDER_THAN".to_owned(),
            "1s".to_owned(),
        )])
        .unwrap();
        assert_eq!(
            c.gc.untagged_manifests_older_than,
            Some(std::time::Duration::from_secs(1))
        );
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

//! `[replica]`: which archive a read replica follows, and how.

use serde::{Deserialize, Serialize};

use crate::archive::config::{ArchiveConfig, ArchiveLocation};

/// Default of `replica.poll_interval_ms`.
pub const POLL_INTERVAL_MS_DEFAULT: u64 = 200;

/// `[replica]`: serve reads from another server's archived log (off while
/// `of` is empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaConfig {
    /// The archive to follow: `s3://bucket/prefix` or `file:///path`
    /// (the primary's `archive.url`); empty: not a replica. The S3
    /// endpoint and credentials are `[archive]`'s, then `[storage]`'s.
    pub of: String,
    /// The primary's URL (`http://host:port`): named in the answer to a
    /// write, and its event feed long-polled to learn of new records
    /// early. Empty: the archive is polled alone.
    pub primary: String,
    /// HTTP Basic credentials for the primary's feed, when the primary
    /// has auth on: a user whose rules let it pull every repository (the
    /// feed names them all). Both or neither; the password is best set
    /// as `FERRO_REPLICA__PRIMARY_PASSWORD` rather than in the file.
    /// Without them, a primary with auth refuses the feed and the
    /// replica polls the archive alone.
    pub primary_username: String,
    pub primary_password: String,
    /// How often the archive is listed for new pieces.
    pub poll_interval_ms: u64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            of: String::new(),
            primary: String::new(),
            primary_username: String::new(),
            primary_password: String::new(),
            poll_interval_ms: POLL_INTERVAL_MS_DEFAULT,
        }
    }
}

impl ReplicaConfig {
    pub fn enabled(&self) -> bool {
        !self.of.is_empty()
    }

    /// Checks what the types alone cannot; `archive` is the server's
    /// `[archive]`, which a replica may name only with the same URL (it
    /// ships nothing while a replica; after promotion it does).
    pub fn validate(&self, archive: &ArchiveConfig) -> Result<(), String> {
        if !self.enabled() {
            if !self.primary.is_empty() {
                return Err("replica.primary needs replica.of".into());
            }
            return Ok(());
        }
        ArchiveLocation::parse(&self.of).map_err(|e| format!("replica.of: {e}"))?;
        if self.poll_interval_ms == 0 {
            return Err("replica.poll_interval_ms must be at least 1".into());
        }
        if !self.primary.is_empty() {
            crate::notify::client::Target::parse(&self.primary)
                .map_err(|e| format!("replica.primary: {e}"))?;
        }
        if self.primary_username.is_empty() != self.primary_password.is_empty() {
            return Err("replica.primary_username and replica.primary_password go together".into());
        }
        if !self.primary_username.is_empty() && self.primary.is_empty() {
            return Err("replica.primary_username needs replica.primary".into());
        }
        if archive.enabled() && archive.url != self.of {
            return Err(format!(
                "replica.of is {:?} but archive.url is {:?}: a replica follows the archive it would ship to once promoted",
                self.of, archive.url
            ));
        }
        Ok(())
    }

    /// The `[archive]` settings to read the followed archive with.
    pub fn archive_settings(&self, archive: &ArchiveConfig) -> ArchiveConfig {
        ArchiveConfig {
            url: self.of.clone(),
            ..archive.clone()
        }
    }

    /// What a refused write says: where writes go.
    pub fn write_refusal(&self) -> String {
        if self.primary.is_empty() {
            format!(
                "this registry is a read replica of {}: it does not accept writes; push to the primary that ships to that archive",
                self.of
            )
        } else {
            format!(
                "this registry is a read replica: push to the primary at {}",
                self.primary
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_settings_are_checked() {
        let archive = ArchiveConfig::default();
        let mut c = ReplicaConfig::default();
        c.validate(&archive).unwrap();
        c.primary = "http://127.0.0.1:5000".into();
        assert!(
            c.validate(&archive).is_err(),
            "a primary without an archive"
        );
        c.of = "file:///tmp/archive".into();
        c.validate(&archive).unwrap();
        c.primary = "ftp://x".into();
        assert!(c.validate(&archive).is_err());
        c.primary = "http://127.0.0.1:5000".into();
        c.primary_username = "replica".into();
        assert!(c.validate(&archive).is_err(), "a user without a password");
        c.primary_password = "pw".into();
        c.validate(&archive).unwrap();
        c.primary.clear();
        assert!(
            c.validate(&archive).is_err(),
            "credentials without a primary"
        );
        c.primary_username.clear();
        c.primary_password.clear();
        c.poll_interval_ms = 0;
        assert!(c.validate(&archive).is_err());
        c.poll_interval_ms = 100;
        let mut other = ArchiveConfig {
            url: "file:///tmp/other".into(),
            ..ArchiveConfig::default()
        };
        assert!(c.validate(&other).is_err(), "another archive than followed");
        other.url = c.of.clone();
        c.validate(&other).unwrap();
        assert!(c.write_refusal().contains("file:///tmp/archive"));
        c.primary = "http://primary:5000".into();
        assert!(c.write_refusal().contains("http://primary:5000"));
    }
}

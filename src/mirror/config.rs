//! The `[[mirrors]]` settings: which repository prefix is a cache of which
//! upstream registries, how long a tag is trusted, whether clients may push
//! there, how large the cache may grow and how long an upstream may take.
//! Checked once at startup ([`validate`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::gc::duration_text;

/// One mirror: repositories under `prefix` are the upstream's
/// repositories without it (`hub/library/alpine` is `library/alpine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// Repository name prefix, ending in `/` (`"hub/"`).
    pub prefix: String,
    /// Tried in order: the next is asked when one fails (down, timeout,
    /// 5xx, 429); a definite answer (200, 404) ends the search.
    pub upstreams: Vec<UpstreamConfig>,
    /// How long a tag is served without asking the upstream again.
    #[serde(with = "duration_text")]
    pub tag_ttl: Duration,
    /// Whether clients may push under the prefix (off: `405 UNSUPPORTED`).
    pub allow_push: bool,
    /// Most bytes of blobs cached under the prefix; past it the least
    /// recently pulled manifests are evicted with their blobs. 0: no cap.
    pub max_bytes: u64,
    /// Time allowed to connect to an upstream.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// Time allowed for an upstream's answer to start (its status and
    /// headers), and for a whole manifest or token.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Longest pause within a blob's body before the fill is abandoned.
    #[serde(with = "duration_text")]
    pub read_timeout: Duration,
    /// Repositories kept up to date on a schedule (see `sync_interval`).
    pub sync: Vec<SyncRule>,
    /// How often the `sync` list is pre-fetched from the upstreams (and
    /// once at start). 0: no schedule.
    #[serde(with = "duration_text")]
    pub sync_interval: Duration,
}

/// One repository the schedule keeps cached, and which of its tags: those
/// matching any glob of `tags` and, if `semver` is set, inside that
/// range (a tag that is not a version never is). Neither: every tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SyncRule {
    /// The repository's name upstream (`library/alpine`).
    pub repository: String,
    /// Globs over tag names (`3.*`); empty: any.
    pub tags: Vec<String>,
    /// A version range (`>=3.19`, `~1.2`); empty: none.
    pub semver: String,
}

/// A [`SyncRule`] compiled: which tags it keeps.
pub struct TagFilter {
    globs: Option<globset::GlobSet>,
    range: Option<semver::VersionReq>,
}

impl TagFilter {
    pub fn new(rule: &SyncRule) -> Result<TagFilter, String> {
        let globs = match rule.tags.is_empty() {
            true => None,
            false => {
                let mut set = globset::GlobSetBuilder::new();
                for g in &rule.tags {
                    set.add(globset::Glob::new(g).map_err(|e| format!("tags {g:?}: {e}"))?);
                }
                Some(set.build().map_err(|e| e.to_string())?)
            }
        };
        let range = match rule.semver.trim() {
            "" => None,
            r => Some(semver::VersionReq::parse(r).map_err(|e| format!("semver {r:?}: {e}"))?),
        };
        Ok(TagFilter { globs, range })
    }

    /// Whether the rule keeps `tag`.
    pub fn matches(&self, tag: &str) -> bool {
        self.globs.as_ref().is_none_or(|g| g.is_match(tag))
            && self
                .range
                .as_ref()
                .is_none_or(|r| tag_version(tag).is_some_and(|v| r.matches(&v)))
    }
}

/// A tag read as a version: `v` prefix allowed, missing minor or patch
/// taken as 0 (`3.19` is 3.19.0, as image tags are usually written).
pub fn tag_version(tag: &str) -> Option<semver::Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    if let Ok(v) = semver::Version::parse(t) {
        return Some(v);
    }
    let parts: Vec<&str> = t.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() > 2 || !parts.iter().all(numeric) {
        return None;
    }
    let n = |i: usize| parts.get(i).map_or(Some(0), |p| p.parse().ok());
    Some(semver::Version::new(n(0)?, n(1)?, n(2)?))
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            prefix: String::new(),
            upstreams: Vec::new(),
            tag_ttl: Duration::from_secs(300),
            allow_push: false,
            max_bytes: 0,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            sync: Vec::new(),
            sync_interval: Duration::ZERO,
        }
    }
}

/// One upstream registry and how to sign in to it: `username` and
/// `password` (Basic, or the token flow's credentials), a `token` (sent as
/// `Bearer`), or neither (anonymous, with the token flow when asked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `https://registry-1.docker.io` or `http://127.0.0.1:5001`.
    pub url: String,
    pub username: String,
    pub password: String,
    pub token: String,
    /// PEM file of the CA certificates an `https` upstream is checked
    /// against. Empty: the system's.
    pub ca: PathBuf,
}

/// The commented example `ferro config --print-defaults` shows.
pub const EXAMPLE: &str = r#"# Pull-through caches of other registries (none by default); one table
# per prefix. A pull under the prefix that ferro lacks is fetched from the
# upstreams, in order, and committed to the log with the upstream as actor.
# [[mirrors]]
# prefix = "hub/"                  # hub/library/alpine is library/alpine upstream
# tag_ttl = "5m"                   # a tag is re-checked (HEAD) after this long
# allow_push = false               # off: pushes under the prefix answer 405
# max_bytes = 0                    # cache size cap, LRU eviction; 0: none
# connect_timeout = "10s"
# timeout = "30s"                  # until an answer starts
# read_timeout = "1m"              # longest pause within a blob
# sync_interval = "6h"             # pre-fetch the sync list this often; 0 (default): never
# sync = [                         # tags matching the globs and the range
#   { repository = "library/alpine", tags = ["3.*"], semver = ">=3.19" },
# ]
# [[mirrors.upstreams]]
# url = "https://registry-1.docker.io"
# username = ""                    # or token = "…"; none: anonymous
# password = ""
# ca = ""                          # PEM roots of an https upstream; empty: the system's
"#;

/// Checks every mirror: prefixes well formed and not overlapping, at
/// least one upstream each, URLs and credentials that make sense.
pub fn validate(mirrors: &[MirrorConfig]) -> Result<(), String> {
    for (i, m) in mirrors.iter().enumerate() {
        let p = &m.prefix;
        let what = |s: String| format!("mirrors {p:?}: {s}");
        let name = p.strip_suffix('/').unwrap_or("");
        if name.is_empty() || crate::oci::RepoName::parse(name).is_err() {
            return Err(what(
                "prefix must be a repository name followed by '/' (\"hub/\")".into(),
            ));
        }
        for other in &mirrors[..i] {
            if other.prefix.starts_with(p.as_str()) || p.starts_with(other.prefix.as_str()) {
                return Err(what(format!("overlaps mirror {:?}", other.prefix)));
            }
        }
        if m.upstreams.is_empty() {
            return Err(what("needs at least one [[mirrors.upstreams]]".into()));
        }
        for (key, value) in [
            ("connect_timeout", m.connect_timeout),
            ("timeout", m.timeout),
            ("read_timeout", m.read_timeout),
        ] {
            if value.is_zero() {
                return Err(what(format!("{key} must be positive")));
            }
        }
        for rule in &m.sync {
            crate::oci::RepoName::parse(&rule.repository)
                .map_err(|e| what(format!("sync repository {:?}: {e}", rule.repository)))?;
            TagFilter::new(rule).map_err(|e| what(format!("sync {:?}: {e}", rule.repository)))?;
        }
        if !m.sync.is_empty() && m.sync_interval.is_zero() {
            return Err(what("sync needs a sync_interval".into()));
        }
        for u in &m.upstreams {
            crate::notify::client::Target::parse(&u.url).map_err(what)?;
            if !u.token.is_empty() && !u.username.is_empty() {
                return Err(what(format!(
                    "upstream {:?}: set username/password or token, not both",
                    u.url
                )));
            }
            if u.username.is_empty() != u.password.is_empty() {
                return Err(what(format!(
                    "upstream {:?}: username and password go together",
                    u.url
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors(text: &str) -> Vec<MirrorConfig> {
        #[derive(Deserialize)]
        struct Doc {
            mirrors: Vec<MirrorConfig>,
        }
        toml::from_str::<Doc>(text).unwrap().mirrors
    }

    #[test]
    fn settings_parse_with_defaults() {
        let m = mirrors(
            "[[mirrors]]\nprefix = \"hub/\"\ntag_ttl = \"1s\"\n[[mirrors.upstreams]]\nurl = \"http://127.0.0.1:9\"\n",
        );
        assert_eq!(m[0].tag_ttl, Duration::from_secs(1));
        assert_eq!(m[0].timeout, Duration::from_secs(30));
        assert!(!m[0].allow_push);
        validate(&m).unwrap();
    }

    #[test]
    fn bad_mirrors_are_refused() {
        let up = "[[mirrors.upstreams]]\nurl = \"http://h\"\n";
        for bad in [
            format!("[[mirrors]]\nprefix = \"hub\"\n{up}"),
            format!("[[mirrors]]\nprefix = \"/\"\n{up}"),
            format!("[[mirrors]]\nprefix = \"Hub/\"\n{up}"),
            "[[mirrors]]\nprefix = \"hub/\"\n".to_owned(),
            "[[mirrors]]\nprefix = \"hub/\"\n[[mirrors.upstreams]]\nurl = \"ftp://h\"\n".to_owned(),
            "[[mirrors]]\nprefix = \"hub/\"\n[[mirrors.upstreams]]\nurl = \"http://h\"\nusername = \"a\"\n".to_owned(),
            "[[mirrors]]\nprefix = \"hub/\"\n[[mirrors.upstreams]]\nurl = \"http://h\"\nusername = \"a\"\npassword = \"b\"\ntoken = \"c\"\n".to_owned(),
            format!("[[mirrors]]\nprefix = \"hub/\"\ntimeout = \"0s\"\n{up}"),
            format!("[[mirrors]]\nprefix = \"a/\"\n{up}[[mirrors]]\nprefix = \"a/b/\"\n{up}"),
            format!("[[mirrors]]\nprefix = \"a/\"\nsync_interval = \"1h\"\nsync = [{{ repository = \"x\", semver = \">=>1\" }}]\n{up}"),
            format!("[[mirrors]]\nprefix = \"a/\"\nsync_interval = \"1h\"\nsync = [{{ repository = \"x\", tags = [\"a[\"] }}]\n{up}"),
            format!("[[mirrors]]\nprefix = \"a/\"\nsync_interval = \"1h\"\nsync = [{{ repository = \"X\" }}]\n{up}"),
            format!("[[mirrors]]\nprefix = \"a/\"\nsync = [{{ repository = \"x\" }}]\n{up}"),
        ] {
            assert!(validate(&mirrors(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_commented_example_is_valid() {
        let start = EXAMPLE.find("# [[mirrors]]").unwrap();
        let text: String = EXAMPLE[start..]
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        let m = mirrors(&text);
        validate(&m).unwrap();
        assert_eq!(m[0].sync[0].repository, "library/alpine");
        assert!(TagFilter::new(&m[0].sync[0]).unwrap().matches("3.20"));
    }

    #[test]
    fn sync_filters_keep_matching_tags() {
        let m = mirrors(
            "[[mirrors]]\nprefix = \"hub/\"\nsync_interval = \"1h\"\nsync = [{ repository = \"library/alpine\", tags = [\"3.*\"], semver = \">=3.19\" }, { repository = \"app\", semver = \">=1.2\" }, { repository = \"all\" }]\n[[mirrors.upstreams]]\nurl = \"http://h\"\n",
        );
        validate(&m).unwrap();
        assert_eq!(m[0].sync_interval, Duration::from_secs(3600));
        let keep = |i: usize, tags: &[&str]| {
            let f = TagFilter::new(&m[0].sync[i]).unwrap();
            tags.iter()
                .filter(|t| f.matches(t))
                .map(|t| t.to_string())
                .collect::<Vec<String>>()
        };
        let tags = ["3.18", "3.19", "3.20.1", "latest", "4.0", "3.x", "v3.21"];
        assert_eq!(keep(0, &tags), ["3.19", "3.20.1"]);
        assert_eq!(
            keep(1, &["1.1", "1.2", "v1.3.0", "1.4-rc1", "edge"]),
            ["1.2", "v1.3.0"]
        );
        assert_eq!(keep(2, &tags), tags);
        assert_eq!(tag_version("3"), Some(semver::Version::new(3, 0, 0)));
        assert_eq!(tag_version("3.1.2.4"), None);
    }
}

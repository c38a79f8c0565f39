//! The `[notifications]` settings: the endpoints, what each is sent and
//! how, and whether unacknowledged entries hold back compaction. Checked
//! once at startup ([`NotificationsConfig::validate`]) and compiled into
//! [`EndpointFilter`]s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::feed::EventFilter;
use crate::gc::duration_text;

/// Longest endpoint name: it names the cursor file.
pub const ENDPOINT_NAME_BYTES_MAX: usize = 64;
/// Most events in one request to an endpoint.
pub const BATCH_MAX_LIMIT: usize = 1000;
/// Longest `batch_window`: a delivery is never held back longer.
pub const BATCH_WINDOW_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Whether compaction waits for every enabled endpoint to acknowledge
    /// an entry before it leaves the live log (`"until_acknowledged"`, the
    /// default), or history retention alone decides (`"retention"`; an
    /// endpoint then behind the log's start is sent a gap event).
    pub hold: LogHold,
    /// The registry as receivers see it: CloudEvents' `source`, the
    /// distribution envelope's `source.addr` and target URLs. Empty: the
    /// URL the server listens on.
    pub source: String,
    /// An endpoint's acknowledged cursor is written to its file at most
    /// this often (and once it is idle). After a crash, what was
    /// acknowledged within the last interval is sent again; `"0s"`: after
    /// every acknowledged batch (two fsyncs each, beside the log's own).
    #[serde(with = "duration_text")]
    pub cursor_write_interval: Duration,
    /// Where to send events; `[[notifications.endpoints]]`, one per table.
    pub endpoints: Vec<EndpointConfig>,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            hold: LogHold::UntilAcknowledged,
            source: String::new(),
            cursor_write_interval: Duration::from_millis(100),
            endpoints: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogHold {
    #[default]
    UntilAcknowledged,
    Retention,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// distribution's envelope, `application/vnd.docker.distribution.events.v1+json`.
    #[default]
    Distribution,
    /// CloudEvents 1.0, structured JSON.
    Cloudevents,
}

/// Where a new endpoint (one with no cursor file yet) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// After the last entry committed when it is first seen.
    #[default]
    End,
    /// At the log's first entry.
    Beginning,
    /// At this sequence number (the first entry sent).
    Seq(u64),
}

impl Serialize for Start {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Start::End => s.serialize_str("end"),
            Start::Beginning => s.serialize_str("beginning"),
            Start::Seq(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Seq(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Seq(n) => Ok(Start::Seq(n.max(1))),
            Raw::Word(w) => match w.as_str() {
                "end" => Ok(Start::End),
                "beginning" => Ok(Start::Beginning),
                other => other
                    .parse::<u64>()
                    .map(|n| Start::Seq(n.max(1)))
                    .map_err(|_| {
                        serde::de::Error::custom(format!(
                            "start = {other:?}: \"end\", \"beginning\" or a sequence number"
                        ))
                    }),
            },
        }
    }
}

/// One receiver of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// Unique; letters, digits, `-` and `_`. Names the cursor file.
    pub name: String,
    /// `http://` or `https://` (verified with rustls against `ca`).
    pub url: String,
    /// Paused endpoints keep their cursor and hold nothing back.
    pub enabled: bool,
    /// Extra request headers (`Authorization`, …).
    pub headers: BTreeMap<String, String>,
    pub format: Format,
    /// Repository globs (`*` within a path component, `**` across);
    /// empty: every repository, and events that name none.
    pub repositories: Vec<String>,
    /// Event kinds (`manifest_put`, `tag_set`, …); empty: all.
    pub kinds: Vec<String>,
    /// distribution actions (`push`, `delete`, `mount`); empty: all.
    pub actions: Vec<String>,
    /// One request's time limit, connection included.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Wait after a first failure; doubled on each next one, with jitter.
    #[serde(with = "duration_text")]
    pub backoff_min: Duration,
    #[serde(with = "duration_text")]
    pub backoff_max: Duration,
    /// Failing for this long marks the endpoint failing (metric, log
    /// line); it keeps retrying at `backoff_max`.
    #[serde(with = "duration_text")]
    pub failing_after: Duration,
    /// Most events in one request.
    pub batch_max: usize,
    /// After a delivery, the next one waits this long for more entries
    /// to gather (unless a full batch is already waiting): under a push
    /// load an endpoint gets a few requests a second carrying many events
    /// each, not one request per commit. An entry after a quiet spell of
    /// at least the window goes at once. Zero: every commit is sent as it
    /// comes.
    #[serde(with = "duration_text")]
    pub batch_window: Duration,
    /// When set, each body is signed: `Ferro-Signature: sha256=<hex>`,
    /// HMAC-SHA256 of the body with this key.
    pub secret: String,
    /// `"end"` (default), `"beginning"` or a sequence number.
    pub start: Start,
    /// PEM file of the CA certificates an `https` endpoint is checked
    /// against. Empty: the system's bundle.
    pub ca: PathBuf,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            name: String::new(),
            url: String::new(),
            enabled: true,
            headers: BTreeMap::new(),
            format: Format::Distribution,
            repositories: Vec::new(),
            kinds: Vec::new(),
            actions: Vec::new(),
            timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            failing_after: Duration::from_secs(600),
            batch_max: 100,
            batch_window: Duration::from_millis(50),
            secret: String::new(),
            start: Start::End,
            ca: PathBuf::new(),
        }
    }
}

/// The distribution actions an endpoint's `actions` may name.
pub const ACTIONS: [&str; 3] = ["push", "delete", "mount"];

/// The commented example `ferro config --print-defaults` shows.
pub const EXAMPLE: &str = r#"# One table per receiver (none by default). Each has its own durable
# cursor: events reach it at least once, in log order.
# [[notifications.endpoints]]
# name = "ci"
# url = "https://ci.example/hooks/registry"
# enabled = true
# headers = { Authorization = "Bearer …" }
# format = "distribution"          # or "cloudevents"
# repositories = ["team/**"]       # globs; empty: all
# kinds = []                       # event kinds; empty: all
# actions = ["push", "delete"]     # push, delete, mount; empty: all
# timeout = "5s"
# backoff_min = "500ms"
# backoff_max = "5m"
# failing_after = "10m"
# batch_max = 100
# batch_window = "50ms"            # after a delivery, gather for this long
# secret = ""                      # set: Ferro-Signature: sha256=<HMAC-SHA256 hex>
# start = "end"                    # "beginning" or a sequence number
# ca = ""                          # PEM roots for https; empty: the system's
"#;

impl NotificationsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for e in &self.endpoints {
            let n = &e.name;
            if n.is_empty()
                || n.len() > ENDPOINT_NAME_BYTES_MAX
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "notifications.endpoints: name {n:?} must be 1 to {ENDPOINT_NAME_BYTES_MAX} letters, digits, '-' or '_'"
                ));
            }
            if !names.insert(n.as_str()) {
                return Err(format!("notifications.endpoints: name {n:?} is used twice"));
            }
            let what = |s: String| format!("notifications.endpoints {n:?}: {s}");
            crate::notify::client::Target::parse(&e.url).map_err(what)?;
            if e.batch_max == 0 || e.batch_max > BATCH_MAX_LIMIT {
                return Err(what(format!("batch_max must be in 1..={BATCH_MAX_LIMIT}")));
            }
            if e.batch_window > BATCH_WINDOW_MAX {
                return Err(what(format!(
                    "batch_window must be at most {}s",
                    BATCH_WINDOW_MAX.as_secs()
                )));
            }
            if e.timeout.is_zero() || e.backoff_min.is_zero() || e.backoff_max < e.backoff_min {
                return Err(what(
                    "timeout and backoff_min must be positive, backoff_max at least backoff_min"
                        .into(),
                ));
            }
            for k in &e.kinds {
                if !Event::KINDS.contains(&k.as_str()) {
                    return Err(what(format!(
                        "unknown event kind {k:?}; one of {}",
                        Event::KINDS.join(", ")
                    )));
                }
            }
            for a in &e.actions {
                if !ACTIONS.contains(&a.as_str()) {
                    return Err(what(format!(
                        "unknown action {a:?}; one of {}",
                        ACTIONS.join(", ")
                    )));
                }
            }
            for (k, v) in &e.headers {
                if axum::http::HeaderName::try_from(k.as_str()).is_err()
                    || axum::http::HeaderValue::try_from(v.as_str()).is_err()
                {
                    return Err(what(format!("header {k:?} is not a valid HTTP header")));
                }
            }
            EndpointFilter::new(e).map_err(what)?;
        }
        Ok(())
    }
}

/// An endpoint's filters, compiled.
#[derive(Debug, Clone)]
pub struct EndpointFilter {
    repositories: Option<GlobSet>,
    kinds: Vec<String>,
    actions: Vec<String>,
    /// distribution's format has no event without an action.
    needs_action: bool,
}

impl EndpointFilter {
    pub fn new(e: &EndpointConfig) -> Result<EndpointFilter, String> {
        let repositories = if e.repositories.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for g in &e.repositories {
                set.add(
                    GlobBuilder::new(g)
                        .literal_separator(true)
                        .build()
                        .map_err(|err| format!("repository glob {g:?}: {err}"))?,
                );
            }
            Some(set.build().map_err(|err| err.to_string())?)
        };
        Ok(EndpointFilter {
            repositories,
            kinds: e.kinds.clone(),
            actions: e.actions.clone(),
            needs_action: e.format == Format::Distribution,
        })
    }

    fn repo_matches(&self, event: &Event) -> Option<bool> {
        let set = self.repositories.as_ref()?;
        event.repo().map(|r| set.is_match(r.as_str()))
    }
}

impl EventFilter for EndpointFilter {
    /// Like the feed's filter: an event that names no repository passes a
    /// repository filter when its entry names a matching repository.
    fn keep(&self, event: &Event, entry: &[Event]) -> bool {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == event.kind()) {
            return false;
        }
        if self.needs_action && crate::notify::format::action(event).is_none() {
            return false;
        }
        if !self.actions.is_empty() {
            match crate::notify::format::action(event) {
                Some(a) if self.actions.iter().any(|x| x == a) => {}
                _ => return false,
            }
        }
        match self.repo_matches(event) {
            Some(m) => m,
            None if self.repositories.is_none() => true,
            None => entry.iter().any(|e| self.repo_matches(e) == Some(true)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, RepoName};

    fn endpoint(toml_text: &str) -> Result<EndpointConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn settings_parse_with_defaults() {
        let e = endpoint(
            "name = \"ci\"\nurl = \"http://127.0.0.1:9/h\"\nstart = \"beginning\"\ntimeout = \"2s\"",
        )
        .unwrap();
        assert_eq!(e.start, Start::Beginning);
        assert_eq!(e.timeout, Duration::from_secs(2));
        assert_eq!(e.batch_max, 100);
        assert_eq!(endpoint("start = 42").unwrap().start, Start::Seq(42));
        assert_eq!(endpoint("start = \"end\"").unwrap().start, Start::End);
        assert!(endpoint("start = \"later\"").is_err());
        assert!(endpoint("colour = 1").is_err());
        let c = NotificationsConfig {
            endpoints: vec![e.clone(), e],
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("twice"));
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for bad in [
            "name = \"a/b\"\nurl = \"http://h/\"",
            "name = \"a\"\nurl = \"ftp://h/\"",
            "name = \"a\"\nurl = \"http://h/\"\nbatch_max = 0",
            "name = \"a\"\nurl = \"http://h/\"\nkinds = [\"nope\"]",
            "name = \"a\"\nurl = \"http://h/\"\nactions = [\"pull\"]",
            "name = \"a\"\nurl = \"http://h/\"\nrepositories = [\"[\"]",
        ] {
            let c = NotificationsConfig {
                endpoints: vec![endpoint(bad).unwrap()],
                ..Default::default()
            };
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_match_like_the_feed() {
        let e = endpoint("repositories = [\"team/*\"]\nactions = [\"push\"]").unwrap();
        let f = EndpointFilter::new(&e).unwrap();
        let repo = |s: &str| RepoName::parse(s).unwrap();
        let d = Digest::sha256_of(b"x");
        let tag_set = |r: &str| Event::TagSet {
            repo: repo(r),
            tag: crate::oci::Tag::parse("v1").unwrap(),
            digest: d.clone(),
            previous: None,
        };
        assert!(f.keep(&tag_set("team/app"), &[]));
        assert!(!f.keep(&tag_set("team/app/deep"), &[]));
        assert!(!f.keep(&tag_set("other"), &[]));
        let deleted = Event::ManifestDeleted {
            repo: repo("team/app"),
            digest: d,
        };
        assert!(!f.keep(&deleted, &[]), "not a push");
    }
}

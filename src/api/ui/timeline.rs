//! When each log entry was committed and by whom, and how many entries
//! each day: what the UI shows beside sequence numbers (a manifest's push
//! time and pusher, the overview's chart). The projection keeps sequence
//! numbers only, so this is built from the event feed's reader, once, and
//! then caught up from where it stopped on each use (a few entries at a
//! time in steady state).
//!
//! It also keeps the latest events as lines of the overview's live list,
//! so neither the overview nor its long-poll reads the log per viewer.
//!
//! Memory: 12 bytes per live log entry (time and an interned user), and
//! the last `RECENT_LINES_MAX` event lines; built only once the UI is used.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::view;
use crate::api::App;
use crate::events::Event;
use crate::feed::{read_page, FeedEntry, RepoKindFilter};
use crate::oci::RepoName;

/// Entries read per page while catching up.
const CATCH_UP_PAGE_ENTRIES: usize = 8192;

/// Event lines kept for the overview's live list.
const RECENT_LINES_MAX: usize = 500;

const NS_PER_DAY: u64 = 86_400 * 1_000_000_000;

#[derive(Default)]
pub struct Timeline {
    inner: tokio::sync::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The sequence number of `times[0]`.
    first_seq: u64,
    /// Read up to here.
    upto: u64,
    /// The log position just after `upto`.
    resume: Option<crate::log::recovery::ResumeAt>,
    times_unix_ns: Vec<u64>,
    users: Vec<u32>,
    /// Interned user names; 0 is anonymous.
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
    /// Entries per day (days since the epoch, UTC).
    days: BTreeMap<u64, u64>,
    /// The latest event lines, oldest first.
    recent: VecDeque<Line>,
}

/// One line of the live event list: what happened, where, by whom, when.
#[derive(Debug, Clone)]
pub struct Line {
    pub seq: u64,
    pub time_unix_ns: u64,
    pub user: Arc<str>,
    pub kind: &'static str,
    /// `None` for registry-wide events (a garbage collection).
    pub repo: Option<RepoName>,
    pub text: String,
}

/// The lines of one entry worth listing: pushes, tag changes, deletes,
/// collections (not blob links and uploads).
fn describe(entry: &FeedEntry, user: &Arc<str>) -> Vec<Line> {
    let line = |kind, repo: Option<&RepoName>, text: String| Line {
        seq: entry.seq,
        time_unix_ns: entry.time_unix_ns,
        user: user.clone(),
        kind,
        repo: repo.cloned(),
        text,
    };
    // Only a restore sets a tag without a manifest put in the same entry.
    let restore = !entry
        .events
        .iter()
        .any(|e| matches!(e, Event::ManifestPut { .. }));
    entry
        .events
        .iter()
        .filter_map(|e| {
            Some(match e {
                Event::ManifestPut {
                    repo,
                    digest,
                    artifact_type,
                    ..
                } => line(
                    "push",
                    Some(repo),
                    match view::artifact_type(artifact_type.as_deref()) {
                        Some(t) => format!("{} ({t})", view::short_digest(digest.as_str())),
                        None => view::short_digest(digest.as_str()),
                    },
                ),
                Event::TagSet {
                    repo,
                    tag,
                    digest,
                    previous,
                } => line(
                    match (restore, previous.is_some()) {
                        (true, _) => "restore",
                        (false, true) => "move",
                        (false, false) => "tag",
                    },
                    Some(repo),
                    format!("{tag} → {}", view::short_digest(digest.as_str())),
                ),
                Event::TagDeleted { repo, tag, .. } => {
                    line("untag", Some(repo), format!("{tag} deleted"))
                }
                Event::ManifestDeleted { repo, digest } => {
                    line("delete", Some(repo), view::short_digest(digest.as_str()))
                }
                Event::GcCompleted {
                    blobs_deleted,
                    bytes_freed,
                    ..
                } => line(
                    "gc",
                    None,
                    format!(
                        "garbage collected: {blobs_deleted} blobs, {}",
                        view::bytes(*bytes_freed)
                    ),
                ),
                _ => return None,
            })
        })
        .collect()
}

/// A look-up of one entry.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub time_unix_ns: u64,
    pub user: Arc<str>,
}

/// What a page asks of the timeline, taken under its lock.
pub struct View<'a> {
    inner: tokio::sync::MutexGuard<'a, Inner>,
}

impl View<'_> {
    pub fn stamp(&self, seq: u64) -> Option<Stamp> {
        let i = usize::try_from(seq.checked_sub(self.inner.first_seq)?).ok()?;
        let t = *self.inner.times_unix_ns.get(i)?;
        if t == 0 {
            return None;
        }
        let user = self.inner.names[self.inner.users[i] as usize].clone();
        Some(Stamp {
            time_unix_ns: t,
            user,
        })
    }

    /// The latest event lines, oldest first.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &Line> {
        self.inner.recent.iter()
    }

    /// The last sequence number read.
    pub fn upto(&self) -> u64 {
        self.inner.upto
    }

    /// Entries per day for the `days` days up to `today`, oldest first.
    pub fn per_day(&self, today: u64, days: u64) -> Vec<(u64, u64)> {
        (today.saturating_sub(days - 1)..=today)
            .map(|d| (d, self.inner.days.get(&d).copied().unwrap_or(0)))
            .collect()
    }
}

pub fn day_of(time_unix_ns: u64) -> u64 {
    time_unix_ns / NS_PER_DAY
}

impl Timeline {
    /// The timeline, caught up with what is committed now.
    pub async fn view(&self, app: &Arc<App>) -> View<'_> {
        let mut inner = self.inner.lock().await;
        let target = app.state.read().last_seq;
        while inner.upto < target {
            let log_dir = app.layout.log_dir();
            let after = inner.upto;
            let resume = inner.resume;
            let page = tokio::task::spawn_blocking(move || {
                let everything = RepoKindFilter {
                    repo: None,
                    kinds: &[],
                };
                read_page(
                    &log_dir,
                    after,
                    target,
                    CATCH_UP_PAGE_ENTRIES,
                    &everything,
                    resume,
                )
            })
            .await;
            let page = match page {
                Ok(Ok(p)) => p,
                // The UI shows sequence numbers without times rather than
                // failing the page; the next view tries again.
                _ => break,
            };
            if page.last_examined <= inner.upto {
                break;
            }
            for entry in page.entries {
                let user = inner.push(entry.seq, entry.time_unix_ns, entry.actor.user.as_deref());
                for line in describe(&entry, &user) {
                    if inner.recent.len() == RECENT_LINES_MAX {
                        inner.recent.pop_front();
                    }
                    inner.recent.push_back(line);
                }
            }
            inner.upto = page.last_examined;
            inner.resume = page.resume;
        }
        View { inner }
    }
}

impl Inner {
    /// Records one entry; answers its user's interned name.
    fn push(&mut self, seq: u64, time_unix_ns: u64, user: Option<&str>) -> Arc<str> {
        if self.times_unix_ns.is_empty() {
            self.first_seq = seq;
            self.names.push(Arc::from("anonymous"));
        }
        let index = seq.saturating_sub(self.first_seq) as usize;
        // Entries come in order; a gap (none expected) reads as unknown.
        while self.times_unix_ns.len() < index {
            self.times_unix_ns.push(0);
            self.users.push(0);
        }
        let id = match user {
            None => 0,
            Some(u) => match self.ids.get(u) {
                Some(&id) => id,
                None => {
                    let id = self.names.len() as u32;
                    let name: Arc<str> = Arc::from(u);
                    self.names.push(name.clone());
                    self.ids.insert(name, id);
                    id
                }
            },
        };
        self.times_unix_ns.push(time_unix_ns);
        self.users.push(id);
        *self.days.entry(day_of(time_unix_ns)).or_default() += 1;
        self.names[id as usize].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_days() {
        let mut inner = Inner::default();
        inner.push(5, NS_PER_DAY + 1, Some("alice"));
        inner.push(6, NS_PER_DAY + 2, None);
        inner.push(7, 3 * NS_PER_DAY, Some("alice"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let timeline = Timeline {
            inner: tokio::sync::Mutex::new(inner),
        };
        rt.block_on(async {
            let view = View {
                inner: timeline.inner.lock().await,
            };
            assert!(view.stamp(4).is_none());
            assert_eq!(&*view.stamp(5).unwrap().user, "alice");
            assert_eq!(&*view.stamp(6).unwrap().user, "anonymous");
            assert_eq!(view.stamp(7).unwrap().time_unix_ns, 3 * NS_PER_DAY);
            assert!(view.stamp(8).is_none());
            assert_eq!(view.per_day(3, 3), vec![(1, 2), (2, 0), (3, 1)]);
        });
    }
}

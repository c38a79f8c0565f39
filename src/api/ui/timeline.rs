//! When each log entry was committed and by whom, and how many entries
//! each day: what the UI shows beside sequence numbers (a manifest's push
//! time and pusher, the overview's chart). The projection keeps sequence
//! numbers only, so this is built from the event feed's reader, once, and
//! then caught up from where it stopped on each use (a few entries at a
//! time in steady state).
//!
//! Memory: 12 bytes per live log entry (time and an interned user), built
//! only once the UI is used.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::api::App;
use crate::feed::{read_page, RepoKindFilter};

/// Entries read per page while catching up.
const CATCH_UP_PAGE_ENTRIES: usize = 8192;

const NS_PER_DAY: u64 = 86_400 * 1_000_000_000;

#[derive(Default)]
pub struct Timeline {
    inner: tokio::sync::Mutex<Inner>,
}

#[derive(Default, Clone)]
struct Inner {
    /// The sequence number of `times[0]`.
    first_seq: u64,
    /// Read up to here.
    upto: u64,
    times_unix_ns: Vec<u64>,
    users: Vec<u32>,
    /// Interned user names; 0 is anonymous.
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
    /// Entries per day (days since the epoch, UTC).
    days: BTreeMap<u64, u64>,
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
            let page = tokio::task::spawn_blocking(move || {
                let everything = RepoKindFilter {
                    repo: None,
                    kinds: &[],
                };
                read_page(&log_dir, after, target, CATCH_UP_PAGE_ENTRIES, &everything)
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
                inner.push(entry.seq, entry.time_unix_ns, entry.actor.user.as_deref());
            }
            inner.upto = page.last_examined;
        }
        View { inner }
    }
}

impl Inner {
    fn push(&mut self, seq: u64, time_unix_ns: u64, user: Option<&str>) {
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

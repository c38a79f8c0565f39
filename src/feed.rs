//! The event feed's reader: committed log entries after a cursor, in
//! order, filtered event by event. The `_ferro/events/feed` endpoint and
//! the notification endpoints both read the log through it, so a receiver
//! that deduplicates by event sees exactly what the feed serves for the
//! same filter.

use std::ops::ControlFlow;
use std::path::Path;

use serde::Serialize;

use crate::events::{Actor, Event};
use parking_lot::Mutex;

use crate::log::recovery::{self, ReadOptions, RecoveryError, RecoveryMode, ResumeAt};
use crate::oci::RepoName;
use crate::timefmt::rfc3339;

/// One entry as the feed (and `ferroctl dump`) writes it.
#[derive(Debug, Clone, Serialize)]
pub struct FeedEntry {
    pub seq: u64,
    pub time: String,
    pub time_unix_ns: u64,
    pub actor: Actor,
    pub events: Vec<Event>,
    /// The position of each of `events` in its record's entry (the stable
    /// part of a notification's event id). Not part of the feed's JSON.
    #[serde(skip)]
    pub indexes: Vec<u32>,
}

/// A page of the log.
#[derive(Debug)]
pub struct Page {
    /// Entries with at least one event that passed the filter.
    pub entries: Vec<FeedEntry>,
    /// The last sequence number examined, matched or not (`after` when
    /// none was): the cursor for the next page.
    pub last_examined: u64,
    /// The live log's first sequence number, when it has a segment: a
    /// cursor before it means compaction took entries away.
    pub log_first_seq: Option<u64>,
    /// Where the log stands just after `last_examined`: the next page's
    /// `resume` (`None` when nothing was examined).
    pub resume: Option<ResumeAt>,
}

/// The last few page ends, for readers that only carry a sequence number
/// from one page to the next (the feed endpoint's `after=`): a follower's
/// next request finds its position here and reads only what is new.
#[derive(Debug, Default)]
pub struct Positions {
    recent: Mutex<std::collections::VecDeque<ResumeAt>>,
}

/// How many page ends [`Positions`] keeps: a few dozen followers.
const POSITIONS_KEPT: usize = 64;

impl Positions {
    /// A position just after record `seq`, if one is kept.
    pub fn get(&self, seq: u64) -> Option<ResumeAt> {
        self.recent
            .lock()
            .iter()
            .rev()
            .find(|p| p.seq == seq)
            .copied()
    }

    pub fn put(&self, position: ResumeAt) {
        let mut recent = self.recent.lock();
        if recent.iter().any(|p| *p == position) {
            return;
        }
        if recent.len() == POSITIONS_KEPT {
            recent.pop_front();
        }
        recent.push_back(position);
    }
}

/// Which events of an entry pass: `keep(event, entry_events)`.
pub trait EventFilter {
    fn keep(&self, event: &Event, entry: &[Event]) -> bool;
}

/// The feed's filter: one repository (exactly), event kinds. Upload events
/// name no repository: they go with an entry that names the one asked for.
pub struct RepoKindFilter<'a> {
    pub repo: Option<&'a RepoName>,
    pub kinds: &'a [String],
}

impl EventFilter for RepoKindFilter<'_> {
    fn keep(&self, event: &Event, entry: &[Event]) -> bool {
        let names_repo = |e: &Event| self.repo.is_none_or(|r| e.repo() == Some(r));
        let kind_ok = self.kinds.is_empty() || self.kinds.iter().any(|k| k == event.kind());
        kind_ok
            && match event.repo() {
                Some(_) => names_repo(event),
                None => {
                    self.repo.is_none() || entry.iter().any(|e| e.repo().is_some() && names_repo(e))
                }
            }
    }
}

/// Reads at most `n` matching entries after `after`, up to `upto` (the
/// last committed sequence number: never an entry whose fsync is pending).
/// `resume`, the previous page's [`Page::resume`] (its `seq` must be
/// `after`), lets the read start there rather than at the start of the
/// segment that holds `after`.
pub fn read_page(
    log_dir: &Path,
    after: u64,
    upto: u64,
    n: usize,
    filter: &dyn EventFilter,
    resume: Option<ResumeAt>,
) -> Result<Page, RecoveryError> {
    let mut entries = Vec::new();
    let mut last_examined = after;
    let resume = resume.filter(|r| r.seq == after);
    if n == 0 || after >= upto {
        return Ok(Page {
            entries,
            last_examined,
            log_first_seq: None,
            resume,
        });
    }
    let mut position = resume;
    let options = ReadOptions {
        mode: RecoveryMode::TolerateTornTail,
        replay_after: after,
        skip_covered_segments: true,
    };
    let report = recovery::read_log_resuming(log_dir, &options, resume, &mut |record| {
        if record.seq > upto {
            return Ok(ControlFlow::Break(()));
        }
        let entry = record
            .decode()
            .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
        last_examined = record.seq;
        position = Some(ResumeAt::after(record));
        let mut events = Vec::new();
        let mut indexes = Vec::new();
        for (i, e) in entry.events.iter().enumerate() {
            if filter.keep(e, &entry.events) {
                events.push(e.clone());
                indexes.push(i as u32);
            }
        }
        if !events.is_empty() {
            entries.push(FeedEntry {
                seq: record.seq,
                time: rfc3339(record.time_unix_ns),
                time_unix_ns: record.time_unix_ns,
                actor: entry.actor,
                events,
                indexes,
            });
        }
        Ok(if entries.len() >= n {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    Ok(Page {
        entries,
        last_examined,
        log_first_seq: report.first_seq,
        resume: position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> ResumeAt {
        ResumeAt {
            segment_first_seq: 1,
            offset: 32 + seq * 100,
            seq,
            crc: seq as u32,
        }
    }

    #[test]
    fn positions_keep_the_latest_page_ends() {
        let positions = Positions::default();
        assert_eq!(positions.get(5), None);
        for seq in 1..=(POSITIONS_KEPT as u64 + 10) {
            positions.put(at(seq));
            positions.put(at(seq)); // twice: kept once
        }
        assert_eq!(positions.get(10), None, "the oldest were dropped");
        assert_eq!(positions.get(11), Some(at(11)));
        assert_eq!(positions.get(POSITIONS_KEPT as u64 + 10), Some(at(74)));
        assert_eq!(positions.recent.lock().len(), POSITIONS_KEPT);
    }
}

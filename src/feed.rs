//! The event feed's reader: committed log entries after a cursor, in
//! order, filtered event by event. The `_ferro/events/feed` endpoint and
//! the notification endpoints both read the log through it, so a receiver
//! that deduplicates by event sees exactly what the feed serves for the
//! same filter.

use std::ops::ControlFlow;
use std::path::Path;

use serde::Serialize;

use crate::events::{Actor, Event};
use crate::log::recovery::{self, ReadOptions, RecoveryError, RecoveryMode};
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
pub fn read_page(
    log_dir: &Path,
    after: u64,
    upto: u64,
    n: usize,
    filter: &dyn EventFilter,
) -> Result<Page, RecoveryError> {
    let mut entries = Vec::new();
    let mut last_examined = after;
    if n == 0 || after >= upto {
        return Ok(Page {
            entries,
            last_examined,
            log_first_seq: None,
        });
    }
    let options = ReadOptions {
        mode: RecoveryMode::TolerateTornTail,
        replay_after: after,
        skip_covered_segments: true,
    };
    let report = recovery::read_log(log_dir, &options, &mut |record| {
        if record.seq > upto {
            return Ok(ControlFlow::Break(()));
        }
        let entry = record
            .decode()
            .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
        last_examined = record.seq;
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
    })
}

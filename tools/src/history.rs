//! `ferroctl history REPO[:TAG]`: the life of a repository or a tag, from
//! the log. Read-only.

use std::path::Path;

use ferro::history::{self, Change, HistoryQuery};
use serde::Serialize;

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::{read_only_layout, rfc3339, say, short, LogProgress, Out};

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// A repository (`library/app`) or a tag of one (`library/app:v1`).
    #[arg(value_name = "REPO[:TAG]", value_parser = HistoryQuery::parse)]
    pub target: HistoryQuery,
}

#[derive(Serialize)]
struct Item<'a> {
    seq: u64,
    time: String,
    time_unix_ns: u64,
    actor: &'a ferro::events::Actor,
    changes: &'a [Change],
}

#[derive(Serialize)]
struct Output<'a> {
    repository: &'a str,
    tag: Option<&'a str>,
    /// The live log's first record: earlier history was compacted.
    log_first_seq: Option<u64>,
    log_last_seq: u64,
    items: Vec<Item<'a>>,
}

pub fn run(data_dir: &Path, args: &HistoryArgs, out: &Out) -> CtlResult<Exit> {
    let layout = read_only_layout(data_dir)?;
    let progress = LogProgress::new(out, &layout, "reading");
    let found = history::read(&layout.log_dir(), &args.target, &mut |r| progress.record(r));
    progress.bar.finish_and_clear();
    let found = found?;
    let name = match &args.target.tag {
        Some(tag) => format!("{}:{tag}", args.target.repo),
        None => args.target.repo.to_string(),
    };
    if found.items.is_empty() {
        let compacted = match found.log_first_seq {
            Some(first) if first > 1 => {
                format!(" (the log starts at sequence {first}: older history was compacted)")
            }
            _ => String::new(),
        };
        return Err(CtlError::new(
            Exit::NotFound,
            format!("{name} has no history in the log{compacted}"),
        ));
    }
    if out.json {
        let output = Output {
            repository: args.target.repo.as_str(),
            tag: args.target.tag.as_ref().map(|t| t.as_str()),
            log_first_seq: found.log_first_seq,
            log_last_seq: found.log_last_seq,
            items: found
                .items
                .iter()
                .map(|i| Item {
                    seq: i.seq,
                    time: rfc3339(i.time_unix_ns),
                    time_unix_ns: i.time_unix_ns,
                    actor: &i.actor,
                    changes: &i.changes,
                })
                .collect(),
        };
        out.json(&output)?;
        return Ok(Exit::Ok);
    }
    say!("history of {name}");
    if let Some(first) = found.log_first_seq.filter(|&f| f > 1) {
        say!("(the log starts at sequence {first}: older history was compacted)");
    }
    for item in &found.items {
        let actor = match (&item.actor.user, &item.actor.peer) {
            (Some(u), Some(p)) => format!("{u} ({p})"),
            (Some(u), None) => u.clone(),
            (None, Some(p)) => format!("anonymous ({p})"),
            (None, None) => "anonymous".into(),
        };
        for change in &item.changes {
            say!(
                "{}  seq {:>8}  {:<28}  {}",
                rfc3339(item.time_unix_ns),
                item.seq,
                actor,
                describe(change)
            );
        }
    }
    Ok(Exit::Ok)
}

fn describe(change: &Change) -> String {
    match change {
        Change::ManifestPushed {
            digest,
            media_type,
            size,
            ..
        } => format!("pushed     {digest} ({media_type}, {size} bytes)"),
        Change::Tagged { tag, digest } => format!("tagged     {tag} -> {digest}"),
        Change::TagMoved {
            tag,
            digest,
            previous,
        } => format!("moved      {tag} -> {digest} (was {})", short(previous)),
        Change::TagDeleted { tag, digest } => format!("untagged   {tag} (was {digest})"),
        Change::ManifestDeleted { digest } => format!("deleted    {digest}"),
        Change::BlobLinked {
            digest,
            size,
            source,
        } => {
            let how = match source {
                ferro::events::LinkSource::Upload { .. } => "uploaded".to_owned(),
                ferro::events::LinkSource::Mount { from: Some(f) } => format!("mounted from {f}"),
                ferro::events::LinkSource::Mount { from: None } => "mounted".to_owned(),
            };
            format!("blob       {digest} ({size} bytes, {how})")
        }
        Change::BlobUnlinked { digest } => format!("blob gone  {digest}"),
        Change::ReferrerRegistered { subject, referrer } => {
            format!("referrer   {referrer} -> subject {}", short(subject))
        }
    }
}

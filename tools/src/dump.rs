//! `ferroctl dump`: the log's records as JSON lines, one per record:
//! `{"seq", "time", "time_unix_ns", "actor", "events"}`, filtered by
//! sequence range, time range, repository and event kind. Read-only.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::Path;

use ferro::events::{Actor, Event};
use ferro::log::recovery::{self, ReadOptions, RecoveryMode};
use ferro::oci::RepoName;
use serde::Serialize;

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::{parse_time, read_only_layout, rfc3339, LogProgress, Out};

#[derive(clap::Args)]
pub struct DumpArgs {
    /// First sequence number to print.
    #[arg(long, value_name = "SEQ")]
    pub from_seq: Option<u64>,
    /// Last sequence number to print.
    #[arg(long, value_name = "SEQ")]
    pub to_seq: Option<u64>,
    /// Only records committed at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<u64>,
    /// Only records committed at or before this RFC 3339 time.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<u64>,
    /// Only events about this repository (upload progress included).
    #[arg(long, value_name = "NAME", value_parser = parse_repo)]
    pub repo: Option<RepoName>,
    /// Only events of this kind (repeatable): manifest_put, tag_set,
    /// tag_deleted, manifest_deleted, blob_linked, blob_unlinked,
    /// blob_deleted, upload_started, upload_chunk, upload_completed,
    /// upload_cancelled, referrer_registered, gc_completed.
    #[arg(long = "kind", value_name = "KIND", value_parser = parse_kind)]
    pub kinds: Vec<&'static str>,
}

fn parse_repo(s: &str) -> Result<RepoName, String> {
    RepoName::parse(s).map_err(|e| e.to_string())
}

fn parse_kind(s: &str) -> Result<&'static str, String> {
    Event::KINDS
        .iter()
        .copied()
        .find(|k| *k == s)
        .ok_or_else(|| {
            format!(
                "unknown event kind {s:?}; one of {}",
                Event::KINDS.join(", ")
            )
        })
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    time: String,
    time_unix_ns: u64,
    actor: &'a Actor,
    events: Vec<&'a Event>,
}

pub fn run(data_dir: &Path, args: &DumpArgs, out: &Out) -> CtlResult<Exit> {
    let layout = read_only_layout(data_dir)?;
    let from = args.from_seq.unwrap_or(1).max(1);
    // Upload events name no repository: following uploads of one needs the
    // records where they started, so a repository filter reads from the
    // start (records before `from` are decoded, not printed).
    let replay_after = if args.repo.is_some() { 0 } else { from - 1 };
    let options = ReadOptions {
        mode: RecoveryMode::TolerateTornTail,
        replay_after,
        skip_covered_segments: false,
    };
    let progress = LogProgress::new(out, &layout, "dumping");
    let stdout = std::io::stdout();
    let mut sink = BufWriter::new(stdout.lock());
    let mut uploads_of_repo: HashMap<String, bool> = HashMap::new();
    let mut write_error: Option<std::io::Error> = None;
    let mut printed = 0u64;
    let result = recovery::read_log(&layout.log_dir(), &options, &mut |record| {
        progress.record(record);
        if args.to_seq.is_some_and(|to| record.seq > to)
            || args.until.is_some_and(|until| record.time_unix_ns > until)
        {
            return Ok(ControlFlow::Break(()));
        }
        let entry = record
            .decode()
            .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
        if let Some(repo) = &args.repo {
            for event in &entry.events {
                if let Event::UploadStarted { repo: r, upload } = event {
                    uploads_of_repo.insert(upload.clone(), r == repo);
                }
            }
        }
        if record.seq < from || args.since.is_some_and(|since| record.time_unix_ns < since) {
            return Ok(ControlFlow::Continue(()));
        }
        let events: Vec<&Event> = entry
            .events
            .iter()
            .filter(|e| args.kinds.is_empty() || args.kinds.contains(&e.kind()))
            .filter(|e| match &args.repo {
                None => true,
                Some(repo) => match e.repo() {
                    Some(r) => r == repo,
                    None => upload_of(e).is_some_and(|u| uploads_of_repo.get(u) == Some(&true)),
                },
            })
            .collect();
        if events.is_empty() {
            return Ok(ControlFlow::Continue(()));
        }
        let line = Line {
            seq: record.seq,
            time: rfc3339(record.time_unix_ns),
            time_unix_ns: record.time_unix_ns,
            actor: &entry.actor,
            events,
        };
        let written = serde_json::to_writer(&mut sink, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| sink.write_all(b"\n"));
        if let Err(e) = written {
            write_error = Some(e);
            return Ok(ControlFlow::Break(()));
        }
        printed += 1;
        Ok(ControlFlow::Continue(()))
    });
    progress.bar.finish_and_clear();
    let flushed = sink.flush();
    if let Some(e) = write_error {
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(Exit::Ok);
        }
        return Err(CtlError::failure(format!("cannot write the dump: {e}")));
    }
    let report = result?;
    if let Err(e) = flushed {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(CtlError::failure(format!("cannot write the dump: {e}")));
        }
    }
    if let Some(torn) = &report.torn_tail {
        eprintln!(
            "note: the log ends in a torn tail at {} offset {} ({}); records after it are not in the dump",
            torn.path.display(),
            torn.offset,
            torn.reason
        );
    }
    if !out.json && printed == 0 {
        eprintln!("no record matched");
    }
    Ok(Exit::Ok)
}

fn upload_of(event: &Event) -> Option<&String> {
    match event {
        Event::UploadChunk { upload, .. }
        | Event::UploadCompleted { upload, .. }
        | Event::UploadCancelled { upload, .. }
        | Event::UploadStarted { upload, .. } => Some(upload),
        _ => None,
    }
}

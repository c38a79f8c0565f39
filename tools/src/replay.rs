//! `ferroctl replay --at SEQ|TIME`: the state as of a point in the log,
//! summarised; with `--export-oci DIR REPO:TAG`, that image as it was then,
//! as an OCI image layout. Read-only without the export; the export takes
//! the data directory's lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferro::datadir::Layout;
use ferro::history::HistoryQuery;
use ferro::replay::{self, AsOf, Base, SkippedSnapshot};
use serde::Serialize;

use crate::error::{CtlError, CtlResult, Exit};
use crate::export;
use crate::output::{locked_data_dir, read_only_layout, rfc3339, say, LogProgress, Out};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// A sequence number, an RFC 3339 time (2025-11-27T09:00:00Z), or
    /// "end".
    #[arg(long, value_name = "SEQ|TIME", value_parser = parse_at, default_value = "end")]
    pub at: AsOf,
    /// Write REPO:TAG as it was then as an OCI image layout in DIR (empty
    /// or absent). Needs the server stopped.
    #[arg(long, num_args = 2, value_names = ["DIR", "REPO:TAG"])]
    pub export_oci: Option<Vec<String>>,
}

pub fn parse_at(s: &str) -> Result<AsOf, String> {
    if s.eq_ignore_ascii_case("end") || s.eq_ignore_ascii_case("latest") {
        return Ok(AsOf::End);
    }
    ferro::timefmt::parse_as_of(s)
}

#[derive(Serialize)]
struct RepoSummary {
    tags: BTreeMap<String, String>,
    manifests: usize,
    blobs: usize,
}

#[derive(Serialize)]
struct Output {
    at: AsOf,
    seq: u64,
    time: Option<String>,
    rebuilt_from: Base,
    records_replayed: u64,
    skipped_snapshots: Vec<SkippedSnapshot>,
    summary: ferro::projection::StateSummary,
    repositories: BTreeMap<String, RepoSummary>,
    export: Option<export::ExportReport>,
}

pub fn run(data_dir: &Path, args: &ReplayArgs, out: &Out) -> CtlResult<Exit> {
    let export_target = match &args.export_oci {
        Some(v) => {
            let [dir, reference] = v.as_slice() else {
                return Err(CtlError::new(
                    Exit::Usage,
                    "--export-oci takes DIR REPO:TAG",
                ));
            };
            let query = HistoryQuery::parse(reference)
                .map_err(|e| CtlError::new(Exit::Usage, format!("--export-oci: {e}")))?;
            let Some(tag) = query.tag else {
                return Err(CtlError::new(
                    Exit::Usage,
                    "--export-oci needs REPO:TAG, with a tag",
                ));
            };
            Some((PathBuf::from(dir), query.repo, tag))
        }
        None => None,
    };
    // Exporting reads blob files that a running server's clean-up may
    // remove, so it wants the server stopped.
    let _lock = match export_target {
        Some(_) => Some(locked_data_dir(data_dir)?),
        None => {
            read_only_layout(data_dir)?;
            None
        }
    };
    let layout = Layout::new(data_dir);
    let progress = LogProgress::new(out, &layout, "replaying");
    let replayed = replay::state_as_of(&layout, args.at, &mut |r| progress.record(r));
    progress.bar.finish_and_clear();
    let replayed = replayed?;
    let state = &replayed.state;
    let export = match &export_target {
        Some((dir, repo, tag)) => Some(export::write_layout(&layout, state, repo, tag, dir, out)?),
        None => None,
    };
    let output = Output {
        at: args.at,
        seq: state.last_seq,
        time: (state.last_seq > 0).then(|| rfc3339(state.last_time_unix_ns)),
        rebuilt_from: replayed.base.clone(),
        records_replayed: replayed.records_replayed,
        skipped_snapshots: replayed.skipped_snapshots.clone(),
        summary: state.summary(),
        repositories: state
            .repos
            .iter()
            .map(|(name, r)| {
                (
                    name.to_string(),
                    RepoSummary {
                        tags: r
                            .tags
                            .iter()
                            .map(|(t, d)| (t.to_string(), d.to_string()))
                            .collect(),
                        manifests: r.manifests.len(),
                        blobs: r.blobs.len(),
                    },
                )
            })
            .collect(),
        export,
    };
    if out.json {
        out.json(&output)?;
    } else {
        print_human(&output);
    }
    match &output.export {
        Some(e) if !e.missing.is_empty() => Ok(Exit::Problems),
        _ => Ok(Exit::Ok),
    }
}

fn print_human(o: &Output) {
    say!(
        "state as of sequence {}{}",
        o.seq,
        o.time
            .as_ref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default()
    );
    match &o.rebuilt_from {
        Base::Empty => say!(
            "rebuilt from the start of the log: {} records",
            o.records_replayed
        ),
        Base::Snapshot { path, seq } => say!(
            "rebuilt from snapshot {} (sequence {seq}) and {} records",
            path.display(),
            o.records_replayed
        ),
    }
    for s in &o.skipped_snapshots {
        say!("skipped snapshot {}: {}", s.path.display(), s.reason);
    }
    let s = &o.summary;
    say!(
        "{} repositories, {} tags, {} manifests, {} blobs, {} uploads in progress",
        s.repositories,
        s.tags,
        s.manifests,
        s.blobs,
        s.uploads
    );
    for (name, r) in &o.repositories {
        say!("{name}  ({} manifests, {} blobs)", r.manifests, r.blobs);
        for (tag, digest) in &r.tags {
            say!("  {tag:<24} {digest}");
        }
    }
    if let Some(e) = &o.export {
        say!(
            "exported {} as it was then to {}: {} files, {} bytes",
            e.reference,
            e.dir.display(),
            e.written.len(),
            e.bytes
        );
        for m in &e.missing {
            say!("  missing {}: {}", m.digest, m.reason);
        }
    }
}

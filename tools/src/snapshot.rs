//! `ferroctl snapshot` and `ferroctl compact`: offline, with the data
//! directory's lock held.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ferro::compaction::{self, CompactOptions, CompactedSegments, Retention};
use ferro::datadir::Layout;
use ferro::log::segment::list_segments;
use ferro::replay::{self, AsOf, Base, Replayed};
use ferro::snapshot::{self, format::encode_state};
use serde::Serialize;

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::{locked_data_dir, rfc3339, say, LogProgress, Out};

#[derive(clap::Args)]
pub struct SnapshotArgs {
    /// Snapshots to keep after this one is written (the base snapshot of a
    /// compacted log is kept besides).
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
}

#[derive(clap::Args)]
pub struct CompactArgs {
    /// Keep this much history in the live log: "forever" or a duration
    /// such as 30d, 12h, "1w 2d". Older segments leave the log.
    #[arg(long, value_name = "DURATION", default_value = "forever")]
    pub retain: Retention,
    /// Delete the segments that leave the log instead of moving them to
    /// <data-dir>/archive/log/.
    #[arg(long)]
    pub delete: bool,
    /// Snapshots to keep (the base snapshot is kept besides).
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
}

#[derive(Serialize)]
struct SnapshotOutput {
    path: PathBuf,
    seq: u64,
    time: String,
    bytes: u64,
    rebuilt_from: Base,
    records_replayed: u64,
    snapshots_removed: Vec<PathBuf>,
}

pub fn run_snapshot(data_dir: &Path, args: &SnapshotArgs, out: &Out) -> CtlResult<Exit> {
    if args.keep == 0 {
        return Err(CtlError::new(Exit::Usage, "--keep must be at least 1"));
    }
    let _lock = locked_data_dir(data_dir)?;
    let layout = Layout::new(data_dir);
    let dir = layout.snapshots_dir();
    snapshot::remove_leftover_temp_files(&dir)?;
    let replayed = current_state(&layout, out)?;
    if replayed.state.last_seq == 0 {
        if !out.json {
            say!("the log is empty: nothing to snapshot");
        }
        return Ok(Exit::Ok);
    }
    let spinner = out.spinner("writing the snapshot");
    let written = snapshot::write(&dir, &replayed.state, replayed.crc);
    spinner.finish_and_clear();
    let written = written.map_err(CtlError::failure)?;
    let removed = snapshot::prune(&dir, args.keep, log_first_seq(&layout))?;
    let output = SnapshotOutput {
        path: written.path.clone(),
        seq: written.header.seq,
        time: rfc3339(written.header.time_unix_ns),
        bytes: written.header.file_bytes(),
        rebuilt_from: replayed.base,
        records_replayed: replayed.records_replayed,
        snapshots_removed: removed.into_iter().map(|f| f.path).collect(),
    };
    if out.json {
        out.json(&output)?;
    } else {
        say!(
            "wrote {} (sequence {}, {}, {} bytes)",
            output.path.display(),
            output.seq,
            output.time,
            output.bytes
        );
        for p in &output.snapshots_removed {
            say!("removed {}", p.display());
        }
    }
    Ok(Exit::Ok)
}

#[derive(Serialize)]
struct CompactOutput {
    retention: String,
    snapshot_written: Option<PathBuf>,
    report: compaction::CompactionReport,
    /// The state rebuilt after compaction equals, byte for byte, the state
    /// before it.
    state_identical: bool,
    last_seq: u64,
}

pub fn run_compact(data_dir: &Path, args: &CompactArgs, out: &Out) -> CtlResult<Exit> {
    if args.keep == 0 {
        return Err(CtlError::new(Exit::Usage, "--keep must be at least 1"));
    }
    let _lock = locked_data_dir(data_dir)?;
    let layout = Layout::new(data_dir);
    let dir = layout.snapshots_dir();
    snapshot::remove_leftover_temp_files(&dir)?;
    let before = current_state(&layout, out)?;
    let before_bytes = encode_state(&before.state).map_err(CtlError::failure)?;
    // Compaction stops at the newest snapshot: take one at the end of the
    // log first, so only the retention limits it.
    let mut snapshot_written = None;
    let newest = snapshot::list(&dir)?
        .into_iter()
        .rev()
        .find(|f| snapshot::check(f).is_ok())
        .map(|f| f.seq);
    if args.retain != Retention::Forever
        && before.state.last_seq > 0
        && newest != Some(before.state.last_seq)
    {
        let written =
            snapshot::write(&dir, &before.state, before.crc).map_err(CtlError::failure)?;
        snapshot_written = Some(written.path);
    }
    let options = CompactOptions {
        retention: args.retain,
        now_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        compacted_segments: if args.delete {
            CompactedSegments::Delete
        } else {
            CompactedSegments::Archive
        },
        snapshots_keep: args.keep,
        // Offline, the configuration is not known: every cursor file
        // holds the log (remove the file of an endpoint taken out).
        keep_after_seq: ferro::notify::cursor::min_acked(&layout.notifications_dir()),
    };
    let spinner = out.spinner("compacting");
    let report = compaction::compact(&layout, &options);
    spinner.finish_and_clear();
    let report = report.map_err(CtlError::failure)?;
    let after = current_state(&layout, out)?;
    let after_bytes = encode_state(&after.state).map_err(CtlError::failure)?;
    let output = CompactOutput {
        retention: args.retain.to_string(),
        snapshot_written,
        state_identical: before_bytes == after_bytes,
        last_seq: after.state.last_seq,
        report,
    };
    if out.json {
        out.json(&output)?;
    } else {
        print_compaction(&output);
    }
    if !output.state_identical {
        eprintln!("ferroctl: the state rebuilt after compaction differs from the state before it; the moved segments are in archive/log/ (unless --delete)");
        return Ok(Exit::Problems);
    }
    Ok(Exit::Ok)
}

fn print_compaction(o: &CompactOutput) {
    say!("history retention: {}", o.retention);
    if let Some(p) = &o.snapshot_written {
        say!("wrote snapshot {}", p.display());
    }
    let plan = &o.report.plan;
    if plan.segments.is_empty() {
        say!("nothing left the log: {}", plan.limited_by);
    } else {
        for (from, to) in &o.report.moved {
            match to {
                Some(to) => say!("archived {} -> {}", from.display(), to.display()),
                None => say!("deleted  {}", from.display()),
            }
        }
        say!(
            "the log now starts after sequence {} (base snapshot {}); stopped because {}",
            plan.horizon_seq,
            o.report
                .base_snapshot
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            plan.limited_by
        );
    }
    for f in &o.report.snapshots_removed {
        say!("removed snapshot {}", f.path.display());
    }
    say!(
        "state at sequence {}: {}",
        o.last_seq,
        if o.state_identical {
            "identical before and after (byte for byte)"
        } else {
            "DIFFERS"
        }
    );
}

fn current_state(layout: &Layout, out: &Out) -> CtlResult<Replayed> {
    let progress = LogProgress::new(out, layout, "replaying");
    let replayed = replay::state_as_of(layout, AsOf::End, &mut |r| progress.record(r));
    progress.bar.finish_and_clear();
    let replayed = replayed?;
    for s in &replayed.skipped_snapshots {
        eprintln!(
            "warning: skipped snapshot {}: {}",
            s.path.display(),
            s.reason
        );
    }
    Ok(replayed)
}

fn log_first_seq(layout: &Layout) -> Option<u64> {
    list_segments(&layout.log_dir())
        .ok()
        .and_then(|s| s.first().map(|(seq, _)| *seq))
}

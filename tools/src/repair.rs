//! `ferroctl repair`: the explicit operator action for a corrupt log. Cuts
//! the log back to its last good record so the server can start:
//!
//! 1. the damaged segment is cut at the first bad record (a copy of the cut
//!    bytes kept as `<segment>.<offset>.broken`), or moved aside whole when
//!    its header is the damage;
//! 2. every later segment is moved aside;
//! 3. snapshots after the last good record are moved aside (the log no
//!    longer reaches them).
//!
//! Everything goes to `<data>/repair/<UTC time>/` together with
//! `report.json`, which records what was cut and why. Nothing is deleted.
//! Order: copies and moves first (fsynced), the truncation last, so a
//! crash during repair loses nothing and repair can simply run again.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ferro::datadir::Layout;
use ferro::fsutil::{create_dir_all_durable, fsync_dir};
use ferro::log::format::SEGMENT_HEADER_BYTES;
use ferro::log::recovery::{self, ReadOptions, RecoveryError, RecoveryMode};
use ferro::log::segment::list_segments;
use ferro::snapshot;
use serde::Serialize;

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::{locked_data_dir, say, LogProgress, Out};

#[derive(clap::Args)]
pub struct RepairArgs {
    /// Show what would be cut, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct Cut {
    pub segment: PathBuf,
    pub offset: u64,
    /// Bytes removed from the segment (the whole file when its header is
    /// the damage).
    pub bytes: u64,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Moved {
    pub from: PathBuf,
    pub to: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    /// `None`: the log verified, nothing to repair.
    pub cut: Option<Cut>,
    /// The log's last record after the repair.
    pub last_good_seq: u64,
    /// Copies of the cut bytes, and the files moved aside.
    pub kept_aside: Vec<Moved>,
    pub repair_dir: Option<PathBuf>,
}

pub fn run(data_dir: &Path, args: &RepairArgs, out: &Out) -> CtlResult<Exit> {
    let _lock = locked_data_dir(data_dir)?;
    let layout = Layout::new(data_dir);
    let log_dir = layout.log_dir();
    let progress = LogProgress::new(out, &layout, "checking");
    let mut last_good_seq = list_segments(&log_dir)?
        .first()
        .map(|(seq, _)| seq - 1)
        .unwrap_or(0);
    let options = ReadOptions {
        mode: RecoveryMode::TolerateTornTail,
        replay_after: 0,
        skip_covered_segments: false,
    };
    let result = recovery::read_log(&log_dir, &options, &mut |record| {
        progress.record(record);
        record
            .decode()
            .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
        last_good_seq = record.seq;
        Ok(ControlFlow::Continue(()))
    });
    progress.bar.finish_and_clear();
    let damage = match result {
        Ok(report) => report
            .torn_tail
            .map(|t| (t.path, t.offset, format!("torn tail: {}", t.reason))),
        Err(RecoveryError::Corrupt {
            path,
            offset,
            reason,
        }) => Some((path, offset, reason)),
        Err(e) => return Err(CtlError::failure(e)),
    };
    let mut report = RepairReport {
        dry_run: args.dry_run,
        cut: None,
        last_good_seq,
        kept_aside: Vec::new(),
        repair_dir: None,
    };
    if let Some((segment, offset, reason)) = damage {
        let file_bytes = fs::metadata(&segment)?.len();
        // A damaged header takes the whole segment: a segment file always
        // starts with a whole, valid header.
        let offset = if offset < SEGMENT_HEADER_BYTES as u64 {
            0
        } else {
            offset
        };
        report.cut = Some(Cut {
            segment,
            offset,
            bytes: file_bytes.saturating_sub(offset),
            reason,
        });
    }
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let repair_dir = layout.root.join("repair").join(stamp);
    let plan = plan_moves(&layout, &report, &repair_dir)?;
    if report.cut.is_none() && plan.is_empty() {
        print(out, &report)?;
        return Ok(Exit::Ok);
    }
    report.repair_dir = Some(repair_dir.clone());
    if args.dry_run {
        report.kept_aside = plan;
        print(out, &report)?;
        return Ok(Exit::Ok);
    }
    create_dir_all_durable(&repair_dir)?;
    if let Some(cut) = &report.cut {
        if cut.offset > 0 {
            let name = file_name(&cut.segment);
            let aside = repair_dir.join(format!("{name}.{}.broken", cut.offset));
            copy_tail(&cut.segment, cut.offset, &aside)?;
            report.kept_aside.push(Moved {
                from: cut.segment.clone(),
                to: aside,
            });
        }
    }
    for m in plan {
        fs::rename(&m.from, &m.to)?;
        report.kept_aside.push(m);
    }
    fsync_dir(&repair_dir)?;
    fsync_dir(&log_dir)?;
    fsync_dir(&layout.snapshots_dir())?;
    if let Some(cut) = report.cut.as_ref().filter(|c| c.offset > 0) {
        let f = OpenOptions::new().write(true).open(&cut.segment)?;
        f.set_len(cut.offset)?;
        f.sync_all()?;
    }
    let json = serde_json::to_vec_pretty(&report).map_err(CtlError::failure)?;
    let mut f = File::create(repair_dir.join("report.json"))?;
    f.write_all(&json)?;
    f.sync_all()?;
    fsync_dir(&repair_dir)?;
    // The log must now verify to its end.
    let check = recovery::read_log(&log_dir, &options, &mut |_| Ok(ControlFlow::Continue(())));
    if let Err(e) = check {
        return Err(CtlError::new(
            Exit::Corrupt,
            format!("the log still does not verify after the repair: {e}"),
        ));
    }
    print(out, &report)?;
    Ok(Exit::Ok)
}

/// Later segments (and the damaged one when cut whole) and snapshots
/// after the last good record go to the repair directory.
fn plan_moves(layout: &Layout, report: &RepairReport, repair_dir: &Path) -> CtlResult<Vec<Moved>> {
    let mut moves = Vec::new();
    if let Some(cut) = &report.cut {
        let mut after = false;
        for (_, path) in list_segments(&layout.log_dir())? {
            if path == cut.segment {
                after = true;
                if cut.offset > 0 {
                    continue;
                }
            }
            if after {
                moves.push(Moved {
                    to: repair_dir.join(file_name(&path)),
                    from: path,
                });
            }
        }
    }
    for file in snapshot::list(&layout.snapshots_dir())? {
        if file.seq > report.last_good_seq {
            moves.push(Moved {
                to: repair_dir.join(file_name(&file.path)),
                from: file.path,
            });
        }
    }
    Ok(moves)
}

fn copy_tail(segment: &Path, offset: u64, aside: &Path) -> CtlResult<()> {
    let mut src = File::open(segment)?;
    src.seek(SeekFrom::Start(offset))?;
    let mut tail = Vec::new();
    src.read_to_end(&mut tail)?;
    let mut dst = File::create(aside)?;
    dst.write_all(&tail)?;
    dst.sync_all()?;
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn print(out: &Out, report: &RepairReport) -> CtlResult<()> {
    if out.json {
        return out.json(report);
    }
    let Some(cut) = &report.cut else {
        if report.kept_aside.is_empty() {
            say!(
                "the log verifies to its end (sequence {}): nothing to repair",
                report.last_good_seq
            );
        }
        return Ok(());
    };
    let verb = if report.dry_run { "would cut" } else { "cut" };
    if cut.offset == 0 {
        say!(
            "{verb} all of {} ({} bytes): {}",
            cut.segment.display(),
            cut.bytes,
            cut.reason
        );
    } else {
        say!(
            "{verb} {} at offset {} ({} bytes): {}",
            cut.segment.display(),
            cut.offset,
            cut.bytes,
            cut.reason
        );
    }
    let verb = if report.dry_run { "would keep" } else { "kept" };
    for m in &report.kept_aside {
        say!("{verb} {} as {}", m.from.display(), m.to.display());
    }
    say!(
        "the log {} at sequence {}",
        if report.dry_run {
            "would end"
        } else {
            "now ends"
        },
        report.last_good_seq
    );
    if let Some(dir) = &report.repair_dir {
        if !report.dry_run {
            say!("report and copies: {}", dir.display());
        }
    }
    Ok(())
}

//! `ferroctl gc`: garbage collection on a stopped registry, with the data
//! directory's lock held. The same collector the server runs (see
//! `ferro::gc`), so the deletions are events on the record.

use std::path::Path;
use std::time::Duration;

use ferro::compaction::Retention;
use ferro::datadir::Layout;
use ferro::gc::{self, GcOptions, GcReport};
use ferro::log::RecoveryMode;

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::{locked_data_dir, say, Out};

#[derive(clap::Args)]
pub struct GcArgs {
    /// The history retention window: blobs of every manifest live at any
    /// time inside it are kept. "forever" (every manifest ever pushed) or
    /// a duration such as 30d; use the server's `history.retention`.
    #[arg(long, value_name = "DURATION", default_value = "forever")]
    pub retain: Retention,
    /// Blobs uploaded or mounted this recently are kept even when no
    /// manifest references them.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = gc::parse_duration)]
    pub grace: Duration,
    /// Also delete untagged manifests put at least this long ago (those no
    /// tag reaches through an index or a referrer); "off" keeps them all.
    /// Use the server's `gc.untagged_manifests_older_than`.
    // Spelled out so that clap takes the whole `Option` from the parser
    // ("off" is `None`) instead of making the flag optional.
    #[arg(long, value_name = "DURATION", default_value = "off", value_parser = gc::parse_optional_duration)]
    pub untagged_older_than: std::option::Option<Duration>,
    /// List what would be deleted and how many bytes it frees; change
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(data_dir: &Path, args: &GcArgs, out: &Out) -> CtlResult<Exit> {
    let _lock = locked_data_dir(data_dir)?;
    let layout = Layout::new(data_dir);
    let options = GcOptions {
        retention: args.retain,
        grace: args.grace,
        untagged_older_than: args.untagged_older_than,
        dry_run: args.dry_run,
    };
    let spinner = out.spinner(if args.dry_run {
        "finding what garbage collection would delete"
    } else {
        "collecting garbage"
    });
    let report = gc::run_offline(&layout, RecoveryMode::TolerateTornTail, &options);
    spinner.finish_and_clear();
    let report = report.map_err(CtlError::failure)?;
    if out.json {
        out.json(&report)?;
    } else {
        print_text(&report);
    }
    Ok(Exit::Ok)
}

fn print_text(r: &GcReport) {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    for m in &r.manifests {
        say!("{verb} manifest {}@{}", m.repo, m.digest);
    }
    if r.manifests_listed_truncated {
        say!("(list cut at {} manifests)", r.manifests.len());
    }
    for b in &r.blobs {
        say!("{verb} {} ({} bytes)", b.digest, b.size);
    }
    if r.blobs_listed_truncated {
        say!("(list cut at {} blobs)", r.blobs.len());
    }
    if r.untagged_manifests_older_than != "off" {
        say!(
            "{verb} {} untagged manifests older than {}; {} kept by the re-check",
            r.manifests_deleted,
            r.untagged_manifests_older_than,
            r.manifests_kept_by_recheck
        );
    }
    say!(
        "{verb} {} of {} blobs, {} bytes; {} orphan files, {} bytes; {} kept by the re-check; \
         {} manifests retained (retention {}, grace {} s); mark at sequence {}, {} ms in all",
        r.blobs_deleted,
        r.blobs_examined,
        r.bytes_freed,
        r.orphans_removed,
        r.orphan_bytes_freed,
        r.blobs_kept_by_recheck,
        r.manifests_retained,
        r.retention,
        r.grace_s,
        r.mark_seq,
        r.total_ms
    );
}

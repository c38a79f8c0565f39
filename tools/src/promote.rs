//! `ferroctl promote`: a stopped read replica's data directory made a
//! writer's (see the server's `replica` module): caught up to the end of
//! the archive it follows, then unmarked. `ferro serve` with `[archive]`
//! on that URL then takes the next writer epoch, which fences the old
//! primary at its next shipment.

use std::path::{Path, PathBuf};

use clap::Args;
use ferro::replica::ReplicaError;

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::{say, Out};

#[derive(Args)]
pub struct PromoteArgs {
    /// The server's config file: the archive's S3 endpoint and
    /// credentials (`[archive]`, then `[storage]`), `[storage]` for where
    /// blobs go, the segment size. `FERRO_*` variables apply.
    #[arg(long, env = "FERRO_CONFIG")]
    pub config: Option<PathBuf>,
}

pub fn run(data_dir: &Path, args: &PromoteArgs, out: &Out) -> CtlResult<Exit> {
    let mut config = crate::verify::settings(args.config.as_deref())?;
    config.data_dir = data_dir.to_owned();
    if !ferro::datadir::Layout::new(data_dir).log_dir().is_dir() {
        return Err(CtlError::new(
            Exit::NoDataDir,
            format!("{} is not a ferro data directory", data_dir.display()),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CtlError::failure)?;
    let report = runtime
        .block_on(ferro::replica::promote(&config))
        .map_err(|e| match e {
            ReplicaError::DataDir(ferro::datadir::DataDirError::Locked(_)) => CtlError::new(
                Exit::Locked,
                format!("{e}: stop the replica before promoting it"),
            ),
            ReplicaError::Refused(_) => CtlError::new(Exit::Problems, e.to_string()),
            ReplicaError::Follow(
                ferro::replica::follower::FollowError::Corrupt(_)
                | ferro::replica::follower::FollowError::Hole(_),
            ) => CtlError::new(Exit::Corrupt, e.to_string()),
            e => CtlError::failure(e),
        })?;
    if out.json {
        out.json(&serde_json::to_value(&report).map_err(CtlError::failure)?)?;
    } else {
        say!(
            "promoted: caught up {} records; the log ends at the archive's last record, {}",
            report.records_applied,
            report.last_seq
        );
        say!(
            "next: stop the old primary (or let the new epoch fence it), then run `ferro serve --data-dir {} --archive-url {}`",
            data_dir.display(),
            report.archive
        );
    }
    Ok(Exit::Ok)
}

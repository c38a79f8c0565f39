//! `ferroctl restore-from URL` and `ferroctl archive status|verify URL`:
//! the log archive (see the server's `archive` module) from the
//! operator's side. Restore writes a new data directory; status and
//! verify only read the archive (and, for status, the data directory's
//! shipping cursor).

use std::path::Path;

use clap::{Args, Subcommand};
use ferro::archive::{ArchiveConfig, ArchiveStore};
use ferro::blobs::object::StorageConfig;

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::{say, Out};
use ferro::timefmt::rfc3339;

/// How to reach the archive (S3 keys left empty come from the
/// environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
#[derive(Args, Clone)]
pub struct ArchiveAccess {
    /// The archive: s3://bucket/prefix or file:///path.
    pub url: String,
    /// The S3 endpoint (path-style), e.g. http://127.0.0.1:3900.
    #[arg(long, env = "FERRO_ARCHIVE__ENDPOINT")]
    pub endpoint: Option<String>,
    /// The S3 region.
    #[arg(long, env = "FERRO_ARCHIVE__REGION", default_value = "us-east-1")]
    pub region: String,
    /// Allow a plain-HTTP endpoint.
    #[arg(long)]
    pub allow_http: bool,
}

impl ArchiveAccess {
    fn open(&self) -> CtlResult<ArchiveStore> {
        let config = ArchiveConfig {
            url: self.url.clone(),
            endpoint: self.endpoint.clone().unwrap_or_default(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            ..ArchiveConfig::default()
        };
        config
            .validate()
            .map_err(|e| CtlError::new(Exit::Usage, e))?;
        ArchiveStore::open(&config, &StorageConfig::default()).map_err(CtlError::failure)
    }
}

#[derive(Args)]
pub struct RestoreFromArgs {
    #[command(flatten)]
    pub access: ArchiveAccess,
    /// Restore as of this sequence number or RFC 3339 time (default: the
    /// archive's end).
    #[arg(long)]
    pub at: Option<String>,
    /// Size at which restored segments roll, in bytes.
    #[arg(long, default_value_t = ferro::limits::Limits::default().segment_bytes_max)]
    pub segment_bytes_max: u64,
}

#[derive(Subcommand)]
pub enum ArchiveCommand {
    /// What the archive holds: pieces, last record, snapshots, blobs, the
    /// writer epoch; with --data-dir, that directory's shipping cursor.
    Status(ArchiveAccess),
    /// Download every object once and check it: pieces' checksums and
    /// chain, snapshots, epochs, blobs' digests. Exit code 1 on problems.
    Verify(ArchiveAccess),
}

#[derive(Args)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    pub command: ArchiveCommand,
}

fn runtime() -> CtlResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::failure)
}

pub fn run_restore(data_dir: &Path, args: &RestoreFromArgs, out: &Out) -> CtlResult<Exit> {
    let at = args
        .at
        .as_deref()
        .map(ferro::timefmt::parse_as_of)
        .transpose()
        .map_err(|e| CtlError::new(Exit::Usage, e))?;
    let store = args.access.open()?;
    let started = std::time::Instant::now();
    let report = runtime()?
        .block_on(ferro::archive::restore::restore(
            &store,
            data_dir,
            at,
            args.segment_bytes_max,
            &mut |what, n| {
                if !out.json {
                    eprintln!("restored {n} {what}");
                }
            },
        ))
        .map_err(|e| match e {
            ferro::archive::restore::RestoreError::Read(_) => {
                CtlError::new(Exit::Corrupt, e.to_string())
            }
            ferro::archive::restore::RestoreError::Refused(_) => {
                CtlError::new(Exit::Problems, e.to_string())
            }
            e => CtlError::failure(e),
        })?;
    let secs = started.elapsed().as_secs_f64();
    if out.json {
        let mut value = serde_json::to_value(&report).map_err(CtlError::failure)?;
        value["seconds"] = serde_json::json!(secs);
        out.json(&value)?;
    } else {
        say!(
            "restored {} records (sequence {}..{}, last at {}) from {} pieces into {} segments in {secs:.1} s",
            report.records,
            report.first_seq,
            report.last_seq,
            rfc3339(report.last_time_unix_ns),
            report.pieces,
            report.segments
        );
        match report.snapshot_seq {
            Some(seq) => say!("snapshot at sequence {seq}"),
            None => say!("no snapshot: the server replays the whole log"),
        }
        if report.blobs > 0 {
            say!("{} blobs, {} bytes", report.blobs, report.blob_bytes);
        }
    }
    Ok(Exit::Ok)
}

pub fn run(data_dir: &Path, args: &ArchiveArgs, out: &Out) -> CtlResult<Exit> {
    match &args.command {
        ArchiveCommand::Status(access) => status(data_dir, access, out),
        ArchiveCommand::Verify(access) => verify(access, out),
    }
}

fn status(data_dir: &Path, access: &ArchiveAccess, out: &Out) -> CtlResult<Exit> {
    let store = access.open()?;
    let status = runtime()?
        .block_on(ferro::archive::inspect::status(&store))
        .map_err(CtlError::failure)?;
    let layout = ferro::datadir::Layout::new(data_dir);
    let cursor = ferro::archive::cursor::read(&ferro::archive::shipper::shipping_dir(&layout))
        .ok()
        .flatten();
    if out.json {
        let mut value = serde_json::to_value(&status).map_err(CtlError::failure)?;
        value["local_cursor"] = match cursor {
            Some(c) => serde_json::json!({
                "shipped_seq": c.shipped_seq,
                "epoch": c.epoch,
                "written": rfc3339(c.written_unix_ns),
            }),
            None => serde_json::Value::Null,
        };
        out.json(&value)?;
        return Ok(Exit::Ok);
    }
    say!("archive {}", status.url);
    match (status.first_seq, status.last_seq) {
        (Some(first), Some(last)) => say!(
            "log: sequence {first}..{last} in {} pieces, {} bytes; last record at {}",
            status.pieces,
            status.piece_bytes,
            rfc3339(status.last_time_unix_ns.unwrap_or(0))
        ),
        _ => say!("log: empty"),
    }
    say!(
        "snapshots: {}",
        if status.snapshots.is_empty() {
            "none".to_owned()
        } else {
            status
                .snapshots
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    say!(
        "blobs: {} objects of their own, {} packs of small blobs",
        status.blobs,
        status.packs
    );
    match &status.epoch {
        Some(e) => say!(
            "writer epoch {} (writer {}), taken at {} from sequence {}",
            e.epoch,
            e.writer,
            rfc3339(e.taken_unix_ns),
            e.from_seq
        ),
        None => say!("writer epoch: none"),
    }
    if let Some(c) = cursor {
        let lag = status.last_seq.map(|l| c.shipped_seq.saturating_sub(l));
        say!(
            "{}: shipped to {} under epoch {} (cursor written {}){}",
            data_dir.display(),
            c.shipped_seq,
            c.epoch,
            rfc3339(c.written_unix_ns),
            match lag {
                Some(n) if n > 0 => format!("; the archive lacks {n} records the cursor names"),
                _ => String::new(),
            }
        );
        say!("(a running server's lag and last error: its /readyz and ferro_archive_* metrics)");
    }
    Ok(Exit::Ok)
}

fn verify(access: &ArchiveAccess, out: &Out) -> CtlResult<Exit> {
    let store = access.open()?;
    let verified = runtime()?
        .block_on(ferro::archive::inspect::verify(&store))
        .map_err(CtlError::failure)?;
    if out.json {
        out.json(&verified)?;
    } else {
        say!(
            "{} pieces, {} records (sequence {}..{}), {} bytes; {} snapshots, {} epochs, {} blobs ({} packs)",
            verified.pieces,
            verified.records,
            verified.first_seq.unwrap_or(0),
            verified.last_seq,
            verified.bytes,
            verified.snapshots,
            verified.epochs,
            verified.blobs,
            verified.packs
        );
        for p in &verified.problems {
            say!("problem: {p}");
        }
        if verified.problems.is_empty() {
            say!("ok");
        }
    }
    Ok(if verified.problems.is_empty() {
        Exit::Ok
    } else {
        Exit::Problems
    })
}

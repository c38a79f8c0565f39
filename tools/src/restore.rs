//! `ferroctl restore`: point a tag back at a past manifest, or bring back a
//! deleted manifest, as a new entry in the log (so the restore is on the
//! record, by the operator). Offline, with the data directory's lock held;
//! over HTTP the same is `POST /v2/<name>/_ferro/restore/...`.

use std::path::Path;

use ferro::datadir::Layout;
use ferro::events::Actor;
use ferro::history::HistoryQuery;
use ferro::log::{RecoveryMode, WriterOptions};
use ferro::oci::Digest;
use ferro::replay::AsOf;
use ferro::restore::{self, RestoreError};
use serde::Serialize;

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::{locked_data_dir, say, short, Out};
use crate::replay::parse_at;

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// `REPO:TAG` to move a tag, or `REPO` with --manifest.
    #[arg(value_name = "REPO[:TAG]")]
    pub target: String,
    /// Point the tag at this manifest digest.
    #[arg(long, value_name = "DIGEST", conflicts_with_all = ["at", "manifest"])]
    pub digest: Option<String>,
    /// Point the tag where it pointed at this sequence number or RFC 3339 time.
    #[arg(long, value_name = "SEQ|RFC3339", value_parser = parse_at, conflicts_with = "manifest")]
    pub at: Option<AsOf>,
    /// Bring back this deleted manifest (its last pushed body, from the log).
    #[arg(long, value_name = "DIGEST")]
    pub manifest: Option<String>,
}

#[derive(Serialize)]
struct RestoreOutput {
    /// The new entry's sequence number; none when nothing had to change.
    seq: Option<u64>,
    digest: String,
    events: Vec<ferro::events::Event>,
}

fn not_found(e: RestoreError) -> CtlError {
    match e {
        RestoreError::Replay(e) => e.into(),
        RestoreError::Log(e) => e.into(),
        other => CtlError::new(Exit::NotFound, other.to_string()),
    }
}

fn parse_digest(s: &str) -> CtlResult<Digest> {
    Digest::parse(s).map_err(|e| CtlError::new(Exit::Usage, format!("{s:?}: {e}")))
}

pub fn run(data_dir: &Path, args: &RestoreArgs, out: &Out) -> CtlResult<Exit> {
    let target = HistoryQuery::parse(&args.target).map_err(|e| CtlError::new(Exit::Usage, e))?;
    let _lock = locked_data_dir(data_dir)?;
    let layout = Layout::new(data_dir);
    let started = ferro::startup::open(
        &layout,
        RecoveryMode::TolerateTornTail,
        WriterOptions {
            durability: ferro::log::Durability::Always,
            segment_bytes_max: ferro::limits::Limits::default().segment_bytes_max,
        },
    )
    .map_err(CtlError::failure)?;
    let opened = started.log;
    let repo = target.repo;
    let (digest, command) = match (&target.tag, &args.manifest, &args.digest, args.at) {
        (None, Some(m), None, None) => {
            let digest = parse_digest(m)?;
            let upto = opened.state.read().last_seq;
            let m = restore::manifest_from_log(&layout, &repo, &digest, upto).map_err(not_found)?;
            let command = restore::put_again(&repo, &digest, m, Vec::new());
            (digest, command)
        }
        (Some(tag), None, Some(d), None) => {
            let digest = parse_digest(d)?;
            let command = restore::restore_tag(&layout, &opened.state.read(), &repo, tag, &digest)
                .map_err(not_found)?;
            (digest, command)
        }
        (Some(tag), None, None, Some(at)) => {
            let digest = restore::tag_value_at(&layout, &repo, tag, at).map_err(not_found)?;
            let command = restore::restore_tag(&layout, &opened.state.read(), &repo, tag, &digest)
                .map_err(not_found)?;
            (digest, command)
        }
        _ => {
            return Err(CtlError::new(
                Exit::Usage,
                "give REPO:TAG with --digest or --at, or REPO with --manifest",
            ))
        }
    };
    let actor = Actor {
        user: Some(format!(
            "{} (ferroctl)",
            std::env::var("USER").unwrap_or_else(|_| "operator".into())
        )),
        peer: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(CtlError::failure)?;
    let committed = runtime
        .block_on(opened.writer.submit(actor, command))
        .map_err(|e| match e {
            ferro::log::SubmitError::Rejected(r) => CtlError::new(
                Exit::NotFound,
                format!("the registry refused the restore: {r}"),
            ),
            other => CtlError::failure(other),
        })?;
    let output = RestoreOutput {
        seq: committed.seq,
        digest: digest.to_string(),
        events: committed.events,
    };
    if out.json {
        say!(
            "{}",
            serde_json::to_string(&output).map_err(CtlError::failure)?
        );
    } else if let Some(seq) = output.seq {
        say!(
            "restored {} to {} as entry {seq}",
            args.target,
            short(&digest)
        );
    } else {
        say!(
            "{} is already {}: nothing to do",
            args.target,
            short(&digest)
        );
    }
    drop(opened.writer);
    let _ = opened.writer_thread.join();
    Ok(Exit::Ok)
}

//! `ferroctl`: the operator's tool for a ferro data directory.
//!
//! Read-only commands (verify, dump, history, replay without an export)
//! never take the data directory's lock and never write to it, so they run
//! beside a live server. Commands that modify it (snapshot, compact,
//! repair, replay --export-oci) take the lock and refuse, with exit code 3,
//! while a server holds it.

mod archive;
mod dump;
mod error;
mod export;
mod gc;
mod history;
mod mirror;
mod output;
mod promote;
mod repair;
mod replay;
mod restore;
mod snapshot;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{Exit, EXIT_CODES_HELP};
use crate::output::{say, Out};

#[derive(Parser)]
#[command(
    name = "ferroctl",
    version,
    about = "Operator tool for a ferro data directory: verify, dump, history, snapshot, compact, replay, repair",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    /// The data directory.
    #[arg(
        long,
        global = true,
        env = "FERRO_DATA_DIR",
        default_value = "./ferro-data"
    )]
    data_dir: PathBuf,
    /// Print results as JSON (for scripts) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every record and snapshot checksum, sequence continuity, the
    /// blobs the state references, and list orphan files. Read-only.
    Verify(verify::VerifyArgs),
    /// Print the log's records as JSON lines, filtered. Read-only.
    Dump(dump::DumpArgs),
    /// The life of a repository or a tag: every push, move and delete.
    /// Read-only.
    History(history::HistoryArgs),
    /// Write a snapshot of the current state. Needs the server stopped.
    Snapshot(snapshot::SnapshotArgs),
    /// Take log segments older than the retention out of the live log
    /// (to <data-dir>/archive/log/). Needs the server stopped.
    Compact(snapshot::CompactArgs),
    /// Rebuild the state as of a sequence number or time and summarise it,
    /// or export an image as it was then. Read-only without --export-oci.
    Replay(replay::ReplayArgs),
    /// Cut a corrupt log back to its last good record, keeping a copy of
    /// everything cut. Needs the server stopped.
    Repair(repair::RepairArgs),
    /// Point a tag back at a past manifest, or bring back a deleted one, as
    /// a new entry on the record. Needs the server stopped.
    Restore(restore::RestoreArgs),
    /// Delete blobs no retained manifest references (garbage collection),
    /// each deletion an event on the record; --dry-run lists them. Needs
    /// the server stopped (a running server: POST /v2/_ferro/gc/run).
    Gc(gc::GcArgs),
    /// Pre-fetch images into a running server's pull-through cache.
    #[command(subcommand)]
    Mirror(mirror::MirrorCommand),
    /// Rebuild a new data directory (--data-dir) from a log archive, as of
    /// its end or --at SEQ|TIME, every checksum and the chain verified.
    RestoreFrom(archive::RestoreFromArgs),
    /// The log archive: status, verify.
    Archive(archive::ArchiveArgs),
    /// Make a stopped read replica's data directory (--data-dir) a
    /// writer's: catch up to the end of its archive, remove its replica
    /// marker. Needs the replica stopped.
    Promote(promote::PromoteArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return code.into();
        }
    };
    let out = Out { json: cli.json };
    let data_dir = cli.data_dir.as_path();
    let result = match &cli.command {
        Command::Verify(args) => verify::run(data_dir, args, &out),
        Command::Dump(args) => dump::run(data_dir, args, &out),
        Command::History(args) => history::run(data_dir, args, &out),
        Command::Snapshot(args) => snapshot::run_snapshot(data_dir, args, &out),
        Command::Compact(args) => snapshot::run_compact(data_dir, args, &out),
        Command::Replay(args) => replay::run(data_dir, args, &out),
        Command::Repair(args) => repair::run(data_dir, args, &out),
        Command::Restore(args) => restore::run(data_dir, args, &out),
        Command::Gc(args) => gc::run(data_dir, args, &out),
        Command::Mirror(command) => mirror::run(command, &out),
        Command::RestoreFrom(args) => archive::run_restore(data_dir, args, &out),
        Command::Archive(args) => archive::run(data_dir, args, &out),
        Command::Promote(args) => promote::run(data_dir, args, &out),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            if out.json {
                let body = serde_json::json!({ "error": e.message, "exit_code": e.exit as u8 });
                say!("{body}");
            }
            eprintln!("ferroctl: {}", e.message);
            e.exit.into()
        }
    }
}

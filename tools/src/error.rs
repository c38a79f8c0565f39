//! Exit codes and the one error type of the tool. Every failure maps to a
//! code a script can act on; `ferroctl --help` lists them.

use std::fmt;
use std::process::ExitCode;

/// What the process exit code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; nothing wrong found.
    Ok = 0,
    /// Done, but problems were found (verify), or the work was partial
    /// (an export with missing blobs).
    Problems = 1,
    /// Bad command line.
    Usage = 2,
    /// The data directory is in use: a server (or another ferroctl) holds
    /// its LOCK, and this command would modify it.
    Locked = 3,
    /// No ferro data directory there.
    NoDataDir = 4,
    /// The log is corrupt: run `ferroctl verify`, then `ferroctl repair`.
    Corrupt = 5,
    /// The repository, tag, sequence number or time is not in the kept
    /// history.
    NotFound = 6,
    /// Any other failure (I/O, permissions).
    Failure = 7,
}

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done, nothing wrong found
  1  done, but problems were found (verify) or the work was partial (export with missing blobs)
  2  bad command line
  3  the data directory is in use (its LOCK is held, e.g. by a running server) and the command would modify it
  4  no ferro data directory at --data-dir
  5  the log is corrupt: run `ferroctl verify`, then `ferroctl repair`
  6  not found: the repository, tag, sequence number or time is not in the kept history
  7  any other failure (I/O, permissions)

Read-only commands (verify, dump, history, replay without --export-oci) never take the
lock and never write to the data directory: they are safe while the server runs.";

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub struct CtlError {
    pub exit: Exit,
    pub message: String,
}

impl CtlError {
    pub fn new(exit: Exit, message: impl Into<String>) -> CtlError {
        CtlError {
            exit,
            message: message.into(),
        }
    }

    pub fn failure(message: impl fmt::Display) -> CtlError {
        CtlError::new(Exit::Failure, message.to_string())
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ferro::log::RecoveryError> for CtlError {
    fn from(e: ferro::log::RecoveryError) -> CtlError {
        match e {
            ferro::log::RecoveryError::Io { .. } => CtlError::failure(e),
            _ => CtlError::new(
                Exit::Corrupt,
                format!("{e}\n(run `ferroctl verify` for the full picture, `ferroctl repair` to cut the log back to its last good record)"),
            ),
        }
    }
}

impl From<ferro::replay::ReplayError> for CtlError {
    fn from(e: ferro::replay::ReplayError) -> CtlError {
        use ferro::replay::ReplayError as R;
        match e {
            R::Log(e) => e.into(),
            R::PastEnd { .. } | R::Compacted { .. } => CtlError::new(Exit::NotFound, e.to_string()),
            _ => CtlError::failure(e),
        }
    }
}

impl From<std::io::Error> for CtlError {
    fn from(e: std::io::Error) -> CtlError {
        CtlError::failure(e)
    }
}

pub type CtlResult<T> = Result<T, CtlError>;

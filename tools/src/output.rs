//! Output helpers: human text or JSON, times in RFC 3339, and progress
//! bars that only draw on a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferro::datadir::Layout;
use ferro::log::segment::list_segments;
use ferro::log::RecordView;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::error::{CtlError, CtlResult, Exit};

/// `println!` for results: a reader that closed the pipe (`| head`) ends
/// the program quietly instead of a panic; any other write error is a
/// failure (exit code 7).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::say_line(format_args!($($arg)*))
    };
}
pub(crate) use say;

pub fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(Exit::Ok as i32);
        }
        eprintln!("ferroctl: cannot write the output: {e}");
        std::process::exit(Exit::Failure as i32);
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints `value` as one JSON document (with `--json`).
    pub fn json<T: Serialize>(&self, value: &T) -> CtlResult<()> {
        let text = serde_json::to_string_pretty(value).map_err(CtlError::failure)?;
        say!("{text}");
        Ok(())
    }

    /// A progress bar over `total` bytes, drawn on stderr only when it is a
    /// terminal and the output is for humans.
    pub fn bytes_bar(&self, total: u64, message: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(total), self.draw_target());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(message.to_owned());
        bar
    }

    /// A spinner for work whose size is unknown.
    pub fn spinner(&self, message: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(None, self.draw_target());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
        );
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    fn draw_target(&self) -> ProgressDrawTarget {
        if self.json || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        }
    }
}

/// Progress over the whole log, in bytes: where a record is, given the
/// sizes of the segments before it.
pub struct LogProgress {
    pub bar: ProgressBar,
    starts: HashMap<PathBuf, u64>,
}

impl LogProgress {
    pub fn new(out: &Out, layout: &Layout, message: &str) -> LogProgress {
        let mut starts = HashMap::new();
        let mut total = 0u64;
        for (_, path) in list_segments(&layout.log_dir()).unwrap_or_default() {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            starts.insert(path, total);
            total += len;
        }
        LogProgress {
            bar: out.bytes_bar(total, message),
            starts,
        }
    }

    pub fn record(&self, record: &RecordView<'_>) {
        let start = self.starts.get(record.segment).copied().unwrap_or(0);
        self.bar
            .set_position(start + record.offset + record.len_bytes());
    }
}

// Times are written and read as the server does.
pub use ferro::timefmt::{parse_rfc3339 as parse_time, rfc3339};

/// The data directory for a read-only command: it must exist; nothing is
/// created and the lock is not taken.
pub fn read_only_layout(data_dir: &Path) -> CtlResult<Layout> {
    let layout = Layout::new(data_dir);
    if !layout.log_dir().is_dir() {
        return Err(CtlError::new(
            Exit::NoDataDir,
            format!(
                "{} is not a ferro data directory (it has no log/ directory)",
                data_dir.display()
            ),
        ));
    }
    Ok(layout)
}

/// The data directory for a command that modifies it: it must exist, and
/// its lock must be free (the server stopped). The lock is held until the
/// returned value is dropped.
pub fn locked_data_dir(data_dir: &Path) -> CtlResult<ferro::datadir::DataDir> {
    read_only_layout(data_dir)?;
    ferro::datadir::DataDir::open(data_dir).map_err(|e| match e {
        ferro::datadir::DataDirError::Locked(path) => CtlError::new(
            Exit::Locked,
            format!(
                "{} is in use: its LOCK is held (is the server running?). Stop the server first; \
                 verify, dump, history and replay without --export-oci work while it runs.",
                path.display()
            ),
        ),
        other => CtlError::failure(other),
    })
}

/// A digest shortened for tables (`sha256:0123456789ab`).
pub fn short(digest: &impl std::fmt::Display) -> String {
    let s = digest.to_string();
    match s.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}", &hex[..12]),
        _ => s,
    }
}

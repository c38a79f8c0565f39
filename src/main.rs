//! The `ferro` binary: `ferro serve` runs the registry; `ferro config
//! --print-defaults` prints every setting with its default.
//!
//! Settings come from, in rising precedence: the defaults, the TOML file
//! of `--config` (or `FERRO_CONFIG`), `FERRO_<KEY>` environment variables
//! (`FERRO_LIMITS__MANIFEST_BYTES_MAX`: see `Config::apply_env`), and
//! flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferro::blobs::object::StorageBackend;
use ferro::config::{AuthScheme, Config, DurabilityMode, LogFormat};
use ferro::log::RecoveryMode;

#[derive(Parser)]
#[command(
    name = "ferro",
    version,
    about = "An OCI registry on an append-only event log"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry (the default when no command is given).
    Serve(Box<ServeArgs>),
    /// Configuration helpers.
    Config {
        /// Print the default configuration as TOML.
        #[arg(long)]
        print_defaults: bool,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Serve the registry read-only, as it was at `--at` (default: now),
    /// without taking the data directory's lock: a second server, on
    /// another port, for clients to pull the past.
    #[arg(long)]
    read_only: bool,
    /// With --read-only: the point to serve, a sequence number or an
    /// RFC 3339 time.
    #[arg(long, value_name = "SEQ|RFC3339", requires = "read_only", value_parser = ferro::timefmt::parse_as_of)]
    at: Option<ferro::replay::AsOf>,
    /// TOML config file; flags override its values.
    #[arg(long, env = "FERRO_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./ferro-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:5000].
    #[arg(long)]
    listen: Option<String>,
    /// When a write is acknowledged [default: always].
    #[arg(long, value_enum)]
    durability: Option<DurabilityMode>,
    /// Log lines as text or as JSON objects [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// One log line per request (the access log; off by default).
    #[arg(long, conflicts_with = "no_access_log")]
    access_log: bool,
    /// No log line per request (the default; overrides the config file).
    #[arg(long)]
    no_access_log: bool,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Authentication: none, basic or token [default: none].
    #[arg(long, value_enum)]
    auth_scheme: Option<AuthScheme>,
    /// htpasswd file (bcrypt) of the users.
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// Let unauthenticated clients pull.
    #[arg(long)]
    anonymous_pull: bool,
    /// Largest request head, in bytes [default: 65536].
    #[arg(long)]
    header_bytes_max: Option<usize>,
    /// Time allowed to send a request head, in ms [default: 30000].
    #[arg(long)]
    header_read_timeout_ms: Option<u64>,
    /// Time a request body may stall, in ms [default: 60000].
    #[arg(long)]
    body_read_timeout_ms: Option<u64>,
    /// Most upload requests carrying bytes at once [default: 256].
    #[arg(long)]
    uploads_concurrent_max: Option<usize>,
    /// Most upload sessions open at once [default: 10000].
    #[arg(long)]
    upload_sessions_max: Option<usize>,
    /// Cancel uploads idle this long, in seconds; 0: never [default: 86400].
    #[arg(long)]
    upload_idle_expiry_secs: Option<u64>,
    /// On shutdown, time for in-flight requests, in seconds [default: 30].
    #[arg(long)]
    shutdown_drain_timeout_secs: Option<u64>,
    /// Memory for small blobs kept to serve pulls, in bytes; 0: none
    /// [default: 33554432].
    #[arg(long)]
    blob_cache_bytes_max: Option<usize>,
    /// Torn-tail policy at startup [default: tolerate-torn-tail].
    #[arg(long, value_enum)]
    recovery: Option<RecoveryArg>,
    /// Largest manifest accepted, in bytes [default: 4194304].
    #[arg(long)]
    manifest_bytes_max: Option<u64>,
    /// Largest single upload request body, in bytes.
    #[arg(long)]
    chunk_bytes_max: Option<u64>,
    /// Largest blob, in bytes.
    #[arg(long)]
    blob_bytes_max: Option<u64>,
    /// Most entries per tag list / catalog / referrers page.
    #[arg(long)]
    page_entries_max: Option<usize>,
    /// Log segment size before rolling, in bytes.
    #[arg(long)]
    segment_bytes_max: Option<u64>,
    /// Snapshot after this many log records since the last one (0: never
    /// by count) [default: 100000].
    #[arg(long)]
    snapshot_every_records: Option<u64>,
    /// Snapshot after this many bytes of log since the last one (0: never
    /// by size) [default: 268435456].
    #[arg(long)]
    snapshot_every_bytes: Option<u64>,
    /// Snapshots kept [default: 2].
    #[arg(long)]
    snapshots_keep: Option<usize>,
    /// How long the log keeps history: "forever" or a duration such as
    /// 30d or 12h [default: forever].
    #[arg(long)]
    history_retention: Option<ferro::compaction::Retention>,
    /// Where blob bytes live: filesystem or s3 [default: filesystem].
    #[arg(long, value_enum)]
    storage_backend: Option<StorageBackend>,
    /// S3 endpoint URL (path-style addressing).
    #[arg(long)]
    storage_endpoint: Option<String>,
    /// S3 region [default: us-east-1].
    #[arg(long)]
    storage_region: Option<String>,
    /// S3 bucket.
    #[arg(long)]
    storage_bucket: Option<String>,
    /// Prefix of every object key.
    #[arg(long)]
    storage_prefix: Option<String>,
    /// Allow a plain-HTTP S3 endpoint.
    #[arg(long)]
    storage_allow_http: bool,
    /// Size of the parts uploads are sent in, in bytes [default: 8388608].
    #[arg(long)]
    storage_part_size_bytes: Option<u64>,
    /// Accept parts under 5 MiB (stores that take any size, as Garage).
    #[arg(long)]
    storage_allow_small_parts: bool,
    /// Time allowed for one request to the store, in ms [default: 30000].
    #[arg(long)]
    storage_request_timeout_ms: Option<u64>,
    /// Blob GETs answer 307 to a presigned URL of the object.
    #[arg(long)]
    storage_redirect: bool,
    /// Bytes of small blobs kept on the local disk and served from there
    /// instead of the store; 0: none [default: 1073741824].
    #[arg(long)]
    storage_local_cache_bytes_max: Option<u64>,
    /// Largest blob kept on the local disk, in bytes [default: 16777216].
    #[arg(long)]
    storage_local_cache_blob_bytes_max: Option<u64>,
    /// Ship the log to this archive: s3://bucket/prefix or file:///path
    /// [default: off].
    #[arg(long)]
    archive_url: Option<String>,
    /// The archive's S3 endpoint [default: the storage endpoint].
    #[arg(long)]
    archive_endpoint: Option<String>,
    /// Allow a plain-HTTP archive endpoint.
    #[arg(long)]
    archive_allow_http: bool,
    /// Ship new records at least this often, in ms [default: 1000].
    #[arg(long)]
    archive_ship_interval_ms: Option<u64>,
    /// Ship as soon as this many record bytes wait [default: 1048576].
    #[arg(long)]
    archive_ship_max_bytes: Option<u64>,
    /// Acknowledge writes once durable locally (local) or only once in
    /// the archive (archived) [default: local].
    #[arg(long, value_enum)]
    archive_durability: Option<ferro::archive::ArchiveDurability>,
    /// Serve as a read replica of this archive (s3://bucket/prefix or
    /// file:///path, the primary's archive URL): restore from it, follow
    /// it, answer every write with 405 [default: off].
    #[arg(long, value_name = "URL")]
    replica_of: Option<String>,
    /// With --replica-of: the primary's URL, named to clients that try
    /// to write and long-polled for new records.
    #[arg(long, value_name = "URL")]
    primary: Option<String>,
    /// With --replica-of: how often the archive is listed, in ms
    /// [default: 200].
    #[arg(long)]
    replica_poll_interval_ms: Option<u64>,
    #[arg(long, value_enum)]
    notifications_hold: Option<ferro::notify::config::LogHold>,
    #[arg(long, value_parser = humantime::parse_duration)]
    notifications_cursor_write_interval: Option<std::time::Duration>,
    /// A pull-through cache: PREFIX=URL (`hub/=https://registry-1.docker.io`),
    /// anonymous, other settings at their defaults; repeatable. Added to
    /// the file's `[[mirrors]]`.
    #[arg(long = "mirror", value_name = "PREFIX=URL")]
    mirrors: Vec<String>,
    /// Do not serve the web UI at /ui/ (on by default).
    #[arg(long)]
    no_ui: bool,
    /// Let the web UI write (restore, delete, collect) with auth off on an
    /// address other than loopback.
    #[arg(long)]
    ui_allow_writes_without_auth: bool,
    /// How long a web UI login lasts, in seconds [default: 28800].
    #[arg(long)]
    ui_session_lifetime_secs: Option<u64>,
    /// Most web UI sessions kept at once [default: 10000].
    #[arg(long)]
    ui_sessions_max: Option<usize>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RecoveryArg {
    TolerateTornTail,
    Strict,
}

fn build_config(args: ServeArgs) -> Result<Config, String> {
    let mut c = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    c.apply_env(std::env::vars()).map_err(|e| e.to_string())?;
    if let Some(v) = args.log_format {
        c.log_format = v;
    }
    if args.access_log {
        c.access_log = true;
    }
    if args.no_access_log {
        c.access_log = false;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        c.tls.cert = cert;
        c.tls.key = key;
    }
    if let Some(v) = args.auth_scheme {
        c.auth.scheme = v;
    }
    if let Some(v) = args.htpasswd {
        c.auth.htpasswd = v;
    }
    if args.anonymous_pull {
        c.auth.anonymous_pull = true;
    }
    let l = &mut c.limits;
    for (flag, slot) in [
        (args.header_read_timeout_ms, &mut l.header_read_timeout_ms),
        (args.body_read_timeout_ms, &mut l.body_read_timeout_ms),
        (args.upload_idle_expiry_secs, &mut l.upload_idle_expiry_secs),
        (
            args.shutdown_drain_timeout_secs,
            &mut l.shutdown_drain_timeout_secs,
        ),
    ] {
        if let Some(v) = flag {
            *slot = v;
        }
    }
    for (flag, slot) in [
        (args.header_bytes_max, &mut l.header_bytes_max),
        (args.uploads_concurrent_max, &mut l.uploads_concurrent_max),
        (args.upload_sessions_max, &mut l.upload_sessions_max),
        (args.blob_cache_bytes_max, &mut l.blob_cache_bytes_max),
    ] {
        if let Some(v) = flag {
            *slot = v;
        }
    }
    if args.no_ui {
        c.ui.enabled = false;
    }
    if args.ui_allow_writes_without_auth {
        c.ui.allow_writes_without_auth = true;
    }
    if let Some(v) = args.ui_session_lifetime_secs {
        c.ui.session_lifetime_secs = v;
    }
    if let Some(v) = args.ui_sessions_max {
        c.ui.sessions_max = v;
    }
    if let Some(v) = args.data_dir {
        c.data_dir = v;
    }
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if let Some(v) = args.durability {
        c.durability = v;
    }
    if let Some(v) = args.recovery {
        c.recovery = match v {
            RecoveryArg::TolerateTornTail => RecoveryMode::TolerateTornTail,
            RecoveryArg::Strict => RecoveryMode::Strict,
        };
    }
    if let Some(v) = args.manifest_bytes_max {
        c.limits.manifest_bytes_max = v;
    }
    if let Some(v) = args.chunk_bytes_max {
        c.limits.chunk_bytes_max = v;
    }
    if let Some(v) = args.blob_bytes_max {
        c.limits.blob_bytes_max = v;
    }
    if let Some(v) = args.page_entries_max {
        c.limits.page_entries_max = v;
    }
    if let Some(v) = args.segment_bytes_max {
        c.limits.segment_bytes_max = v;
    }
    if let Some(v) = args.snapshot_every_records {
        c.snapshots.every_records = v;
    }
    if let Some(v) = args.snapshot_every_bytes {
        c.snapshots.every_bytes = v;
    }
    if let Some(v) = args.snapshots_keep {
        c.snapshots.keep = v;
    }
    if let Some(v) = args.history_retention {
        c.history.retention = v;
    }
    let s = &mut c.storage;
    if let Some(v) = args.storage_backend {
        s.backend = v;
    }
    for (flag, slot) in [
        (args.storage_endpoint, &mut s.endpoint),
        (args.storage_region, &mut s.region),
        (args.storage_bucket, &mut s.bucket),
        (args.storage_prefix, &mut s.prefix),
    ] {
        if let Some(v) = flag {
            *slot = v;
        }
    }
    if let Some(v) = args.storage_part_size_bytes {
        s.part_size_bytes = v;
    }
    if let Some(v) = args.storage_request_timeout_ms {
        s.request_timeout_ms = v;
    }
    if let Some(v) = args.storage_local_cache_bytes_max {
        s.local_cache_bytes_max = v;
    }
    if let Some(v) = args.storage_local_cache_blob_bytes_max {
        s.local_cache_blob_bytes_max = v;
    }
    s.allow_http |= args.storage_allow_http;
    s.allow_small_parts |= args.storage_allow_small_parts;
    s.redirect |= args.storage_redirect;
    let a = &mut c.archive;
    for (flag, slot) in [
        (args.archive_url, &mut a.url),
        (args.archive_endpoint, &mut a.endpoint),
    ] {
        if let Some(v) = flag {
            *slot = v;
        }
    }
    a.allow_http |= args.archive_allow_http;
    if let Some(v) = args.archive_ship_interval_ms {
        a.ship_interval_ms = v;
    }
    if let Some(v) = args.archive_ship_max_bytes {
        a.ship_max_bytes = v;
    }
    if let Some(v) = args.archive_durability {
        a.durability = v;
    }
    let r = &mut c.replica;
    for (flag, slot) in [(args.replica_of, &mut r.of), (args.primary, &mut r.primary)] {
        if let Some(v) = flag {
            *slot = v;
        }
    }
    if let Some(v) = args.replica_poll_interval_ms {
        r.poll_interval_ms = v;
    }
    if let Some(v) = args.notifications_hold {
        c.notifications.hold = v;
    }
    if let Some(v) = args.notifications_cursor_write_interval {
        c.notifications.cursor_write_interval = v;
    }
    for m in &args.mirrors {
        let (prefix, url) = m
            .split_once('=')
            .ok_or_else(|| format!("--mirror {m:?}: expected PREFIX=URL"))?;
        c.mirrors.push(ferro::mirror::config::MirrorConfig {
            prefix: prefix.to_owned(),
            upstreams: vec![ferro::mirror::config::UpstreamConfig {
                url: url.to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    ferro::server::check_config(&c).map_err(|e| e.to_string())?;
    Ok(c)
}

/// Log lines to stderr, as text or JSON; `RUST_LOG` filters (default
/// `info`). Every line of a request names it (request id, method, path;
/// `ferro::logline`).
///
/// Lines are written by a thread of their own through a buffer, so a
/// request never waits for a `write(2)` to stderr (the access log wrote
/// one per request), and lines that arrive together go out in one write.
/// It blocks rather than drops when 16k lines are waiting (the queue's
/// slots are allocated up front: 128k, the crate's default, cost 4 MiB
/// of resident memory for nothing). The guard
/// flushes what is left when it is dropped, at the end of `main`.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(16 * 1024)
        .thread_name("ferro-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(writer);
    match format {
        LogFormat::Text if std::io::IsTerminal::is_terminal(&std::io::stderr()) => builder
            .with_ansi(true)
            .event_format(ferro::logline::TextLines)
            .init(),
        // Not a terminal: no colours, and the cheaper field format that
        // writes the same text.
        LogFormat::Text => builder
            .with_ansi(false)
            .fmt_fields(ferro::logfields::PlainFields)
            .event_format(ferro::logline::TextLines)
            .init(),
        LogFormat::Json => builder
            .json()
            .event_format(ferro::logline::JsonLines::new())
            .init(),
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Config { print_defaults }) => {
            if print_defaults {
                print!("{}", Config::defaults_text());
                return ExitCode::SUCCESS;
            }
            eprintln!("nothing to do: try `ferro config --print-defaults`");
            return ExitCode::from(2);
        }
        Some(Command::Serve(args)) => *args,
        None => ServeArgs::default(),
    };
    let read_only = args
        .read_only
        .then(|| args.at.unwrap_or(ferro::replay::AsOf::End));
    let config = match build_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferro: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_flushed_at_exit = init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferro: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = ferro::server::shutdown_signal();
    let served = match read_only {
        Some(at) => runtime.block_on(ferro::server::run_read_only(config, at, shutdown)),
        None => runtime.block_on(ferro::server::run(config, shutdown)),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ferro: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `ferro-load`: the load benchmark of ferro against the registries users
//! would pick instead — CNCF distribution (Debian's `docker-registry`) and
//! the published `ferro-oci-server` 1.0.0 — on loopback, with the
//! machine's own ceilings measured in the same run.
//!
//! ```text
//! cargo build --release                      # ferro itself, at the repo root
//! cargo run --release --manifest-path benches/load/Cargo.toml -- --all
//! cargo run --release --manifest-path benches/load/Cargo.toml -- --quick
//! cargo run --release --manifest-path benches/load/Cargo.toml -- --push --pull --servers ferro
//! ```
//!
//! Each server is started in turn on a free 127.0.0.1 port with a fresh
//! data directory (ferro with `--durability always`), gets the same
//! workloads with the same content, and is stopped. Every response is
//! verified; a wrong answer fails the run. A peer that refuses a workload
//! (an error status, say 413 for a large body) is reported as such.

mod bigblob;
mod ceilings;
mod content;
mod garage;
mod http;
mod ops;
mod report;
mod servers;
mod stats;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::content::{BigBlob, Image};
use crate::http::{BoxError, Client};
use crate::report::{Machine, Run, ServerResults, Settings};
use crate::servers::{Kind, Server};
use crate::workloads::{Outcome, Pushed};

/// The repository root, where `target/release/ferro` is built.
const REPO_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Load benchmark: ferro against distribution and ferro-oci-server on loopback"
)]
struct Args {
    /// Run every workload and the ceilings (the default when none is picked).
    #[arg(long)]
    all: bool,
    /// Small sizes and short durations: a smoke run of everything picked.
    #[arg(long)]
    quick: bool,
    /// Push of many small images at concurrency 1 and --push-concurrency.
    #[arg(long)]
    push: bool,
    /// Pull of the pushed images (manifest by tag + both blobs).
    #[arg(long)]
    pull: bool,
    /// HEAD of the pushed manifests by tag.
    #[arg(long)]
    head: bool,
    /// One large blob up (monolithic and chunked) and down.
    #[arg(long)]
    blob: bool,
    /// Tag listing with pagination.
    #[arg(long)]
    tags: bool,
    /// 90% pull / 10% push for a fixed time.
    #[arg(long)]
    mixed: bool,
    /// The machine's ceilings: sha256, loopback TCP, nginx with wrk.
    #[arg(long)]
    ceilings: bool,

    /// Servers to measure, in order (ferro, ferro-oci-server, distribution;
    /// ferro-s3 and distribution-s3 keep blobs in a Garage the run starts).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ferro,ferro-oci-server,distribution"
    )]
    servers: Vec<String>,

    /// Images pushed at concurrency 1 [default: 300; --quick 30].
    #[arg(long)]
    push_images_c1: Option<usize>,
    /// Images pushed at --push-concurrency [default: 2000; --quick 200].
    #[arg(long)]
    push_images: Option<usize>,
    #[arg(long, default_value_t = 16)]
    push_concurrency: usize,
    #[arg(long, default_value_t = 32)]
    pull_concurrency: usize,
    #[arg(long, default_value_t = 64)]
    head_concurrency: usize,
    /// Seconds each of pull and HEAD runs [default: 10; --quick 2].
    #[arg(long)]
    read_seconds: Option<u64>,
    /// Size of the large blob in MiB [default: 1024; --quick 64].
    #[arg(long)]
    blob_mib: Option<u64>,
    /// How a downloaded blob is checked as it arrives: its sha256, as a
    /// registry client does (the client then takes no more than sha256 on
    /// one core), or every byte against the bytes pushed (cheap).
    #[arg(long, value_enum, default_value = "sha256")]
    download_check: content::Check,
    /// PATCH chunk size in MiB for the chunked upload [default: 16; --quick 8].
    #[arg(long)]
    chunk_mib: Option<u64>,
    /// Tags to list [default: 10000; --quick 300].
    #[arg(long)]
    tags_count: Option<usize>,
    /// Tags per page (`n`) [default: 1000; --quick 100].
    #[arg(long)]
    tags_page: Option<usize>,
    #[arg(long, default_value_t = 16)]
    mixed_concurrency: usize,
    /// Seconds the mixed workload runs [default: 20; --quick 3].
    #[arg(long)]
    mixed_seconds: Option<u64>,
    /// Seconds each HTTP ceiling is measured [default: 5; --quick 2].
    #[arg(long)]
    ceiling_seconds: Option<u64>,
    /// Client runtime worker threads [default: the number of cores].
    #[arg(long)]
    client_threads: Option<usize>,

    /// Longest a push phase or the tag setup may run before it stops and
    /// reports what it did in that time.
    #[arg(long, default_value_t = 300)]
    write_phase_seconds: u64,

    /// ferro binary [default: target/release/ferro, built if missing].
    #[arg(long)]
    ferro_bin: Option<PathBuf>,
    /// How to name the ferro measured [default: the repository's commit].
    #[arg(long)]
    ferro_label: Option<String>,
    /// ferro-oci-server peer binary [default: built from benches/peers/ferro-oci-server].
    #[arg(long)]
    ferro_oci_server_bin: Option<PathBuf>,
    /// distribution binary [default: docker-registry on PATH].
    #[arg(long)]
    distribution_bin: Option<PathBuf>,
    /// Do not apt-get install missing Debian packages (docker-registry, nginx, wrk).
    #[arg(long)]
    no_install: bool,
    /// Where the servers' data directories go [default: the temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Save the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Picked {
    push: bool,
    pull: bool,
    head: bool,
    blob: bool,
    tags: bool,
    mixed: bool,
    ceilings: bool,
}

fn main() {
    let args = Args::parse();
    let threads = args
        .client_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(run(args, threads));
    servers::remove_kept_dirs();
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("ferro-load: FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// Runs `command`, failing with its output if it does not succeed.
fn run_command(command: &mut Command, what: &str) -> Result<(), BoxError> {
    eprintln!("ferro-load: {what}");
    let status = command.status().map_err(|e| format!("{what}: {e}"))?;
    if !status.success() {
        return Err(format!("{what}: {status}").into());
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Installs Debian `packages` whose `program` is missing, unless told not to.
fn ensure_debian(program: &str, package: &str, no_install: bool) -> Result<(), BoxError> {
    if on_path(program) {
        return Ok(());
    }
    if no_install {
        return Err(format!("{program} not found: apt-get install -y {package}").into());
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install() {
        run_command(
            Command::new("apt-get").args(["update", "-q"]),
            "apt-get update",
        )?;
        if !install() {
            return Err(format!("apt-get install {package} failed").into());
        }
    }
    if on_path(program) {
        Ok(())
    } else {
        Err(format!("{program} still missing after installing {package}").into())
    }
}

fn binary_for(kind: Kind, args: &Args) -> Result<PathBuf, BoxError> {
    let root = Path::new(REPO_ROOT);
    match kind {
        Kind::Ferro | Kind::FerroS3 => {
            let bin = args
                .ferro_bin
                .clone()
                .unwrap_or_else(|| root.join("target/release/ferro"));
            if !bin.is_file() {
                run_command(
                    Command::new("cargo")
                        .args(["build", "--release", "--bin", "ferro"])
                        .current_dir(root),
                    "building ferro (cargo build --release --bin ferro)",
                )?;
            }
            Ok(bin)
        }
        Kind::FerroOciServer => {
            let project = root.join("benches/peers/ferro-oci-server");
            let bin = args
                .ferro_oci_server_bin
                .clone()
                .unwrap_or_else(|| project.join("target/release/ferro-oci-server-peer"));
            if !bin.is_file() {
                run_command(
                    Command::new("cargo")
                        .args(["build", "--release", "--manifest-path"])
                        .arg(project.join("Cargo.toml")),
                    "building the ferro-oci-server peer",
                )?;
            }
            Ok(bin)
        }
        Kind::Distribution | Kind::DistributionS3 => {
            if let Some(bin) = &args.distribution_bin {
                return Ok(bin.clone());
            }
            ensure_debian("docker-registry", "docker-registry", args.no_install)?;
            Ok(PathBuf::from("docker-registry"))
        }
    }
}

fn version_of(kind: Kind, bin: &Path, args: &Args) -> String {
    let output = |c: &mut Command| {
        c.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match kind {
        Kind::Ferro | Kind::FerroS3 => args.ferro_label.clone().unwrap_or_else(|| {
            output(Command::new("git").args(["-C", REPO_ROOT, "describe", "--always", "--dirty"]))
                .map_or("unknown commit".into(), |c| format!("commit {c}"))
        }),
        Kind::FerroOciServer => "1.0.0 (crates.io)".into(),
        Kind::Distribution | Kind::DistributionS3 => {
            output(Command::new(bin).arg("--version")).unwrap_or_else(|| "unknown".into())
        }
    }
}

async fn run(args: Args, client_threads: usize) -> Result<bool, BoxError> {
    let any = args.push
        || args.pull
        || args.head
        || args.blob
        || args.tags
        || args.mixed
        || args.ceilings;
    let all = args.all || !any;
    let picked = Picked {
        push: all || args.push,
        pull: all || args.pull,
        head: all || args.head,
        blob: all || args.blob,
        tags: all || args.tags,
        mixed: all || args.mixed,
        ceilings: all || args.ceilings,
    };
    let q = args.quick;
    let pick = |v: Option<u64>, full: u64, quick: u64| v.unwrap_or(if q { quick } else { full });
    let settings = Settings {
        push_images_c1: pick(args.push_images_c1.map(|v| v as u64), 300, 30) as usize,
        push_images_cn: pick(args.push_images.map(|v| v as u64), 2000, 200) as usize,
        push_concurrency: args.push_concurrency,
        pull_concurrency: args.pull_concurrency,
        head_concurrency: args.head_concurrency,
        read_seconds: pick(args.read_seconds, 10, 2),
        blob_mib: pick(args.blob_mib, 1024, 64),
        chunk_mib: pick(args.chunk_mib, 16, 8),
        tags: pick(args.tags_count.map(|v| v as u64), 10_000, 300) as usize,
        tags_page: pick(args.tags_page.map(|v| v as u64), 1000, 100) as usize,
        mixed_concurrency: args.mixed_concurrency,
        mixed_seconds: pick(args.mixed_seconds, 20, 3),
        client_threads,
        download_check: args.download_check,
    };
    if settings.push_images_cn == 0
        || settings.tags == 0
        || settings.tags_page == 0
        || settings.chunk_mib == 0
    {
        return Err("image, tag, page and chunk counts must be positive".into());
    }
    let ceiling_seconds = pick(args.ceiling_seconds, 5, 2);
    let kinds: Vec<Kind> = args
        .servers
        .iter()
        .map(|s| {
            Kind::parse(s).ok_or_else(|| {
                format!(
                    "unknown server {s:?} (ferro, ferro-oci-server, distribution, \
                     ferro-s3, distribution-s3)"
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let work_root = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&work_root)?;

    // Everything that can fail before measuring, first.
    let binaries: Vec<(Kind, PathBuf)> = kinds
        .iter()
        .map(|k| binary_for(*k, &args).map(|b| (*k, b)))
        .collect::<Result<_, _>>()?;
    // One Garage for every server on object storage, each with a bucket.
    let mut garage = if kinds.iter().any(|k| k.on_garage()) {
        eprintln!("ferro-load: starting Garage");
        Some(garage::Garage::start(&work_root)?)
    } else {
        None
    };
    if picked.ceilings {
        ensure_debian("nginx", "nginx-light", args.no_install)?;
        ensure_debian("wrk", "wrk", args.no_install)?;
    }

    // Content: the same for every server. Mixed pushes draw from a pool
    // large enough for ~1,000 pushes per second; running out ends the
    // phase early (its count bound), which the JSON records.
    let mixed_pool = if picked.mixed {
        (settings.mixed_seconds as usize * 1000).max(500)
    } else {
        0
    };
    let c1_range = 0..settings.push_images_c1;
    let cn_range = c1_range.end..c1_range.end + settings.push_images_cn;
    let mixed_range = cn_range.end..cn_range.end + mixed_pool;
    eprintln!("ferro-load: making {} images", mixed_range.end);
    let images: Arc<Vec<Image>> = Arc::new(content::images(mixed_range.end, 0x00c0_ffee));
    let big = if picked.blob {
        eprintln!(
            "ferro-load: making two {} MiB blobs (patterns, hashed once)",
            settings.blob_mib
        );
        Some((
            BigBlob::new(settings.blob_mib, 1),
            BigBlob::new(settings.blob_mib, 2),
        ))
    } else {
        None
    };

    let command = format!(
        "ferro-load {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let mut run = Run {
        command,
        machine: Machine::describe(),
        settings: settings.clone(),
        ceilings: None,
        servers: Vec::new(),
    };

    if picked.ceilings {
        eprintln!("ferro-load: measuring the machine's ceilings");
        run.ceilings = Some(
            ceilings::measure(
                &work_root,
                Duration::from_secs(ceiling_seconds),
                settings.head_concurrency,
                settings.blob_mib.min(1024) * 1024 * 1024,
                big.as_ref()
                    .map(|(mono, _)| (mono, settings.download_check)),
            )
            .await,
        );
    }

    let d = |s: u64| Duration::from_secs(s);
    let write_phase_limit = d(args.write_phase_seconds);
    let any_server_workload =
        picked.push || picked.pull || picked.head || picked.blob || picked.tags || picked.mixed;
    for (kind, bin) in binaries.iter().filter(|_| any_server_workload) {
        let kind = *kind;
        let mut results = ServerResults::new(kind, version_of(kind, bin, &args));
        eprintln!(
            "ferro-load: {} ({}): starting {}",
            kind.name(),
            results.version,
            bin.display()
        );
        let mut server = Server::start(kind, bin, &work_root, garage.as_mut()).await?;
        let (addr, pid) = (server.addr, server.pid());
        let fail = |e: BoxError, server: &Server| -> BoxError {
            format!(
                "{}: {e}\nserver log tail:\n{}",
                kind.name(),
                server.log_tail()
            )
            .into()
        };
        let strict = |what: &str, why: &str| -> Result<(), BoxError> {
            if matches!(kind, Kind::Ferro | Kind::FerroS3) {
                Err(format!("{} could not do {what}: {why}", kind.name()).into())
            } else {
                Ok(())
            }
        };

        let needs_images = picked.pull || picked.head || picked.mixed;
        let mut pushed: Vec<Pushed> = Vec::new();
        if picked.push {
            eprintln!("ferro-load: {}: push c=1", kind.name());
            let (r, p) = workloads::push(
                addr,
                pid,
                &images,
                c1_range.clone(),
                "bench/push-c1",
                1,
                write_phase_limit,
            )
            .await
            .map_err(|e| fail(e, &server))?;
            results.push_c1 = Some(r);
            pushed.extend(p);
        }
        if picked.push || needs_images {
            eprintln!(
                "ferro-load: {}: push c={}",
                kind.name(),
                settings.push_concurrency
            );
            let (r, p) = workloads::push(
                addr,
                pid,
                &images,
                cn_range.clone(),
                "bench/push",
                settings.push_concurrency,
                write_phase_limit,
            )
            .await
            .map_err(|e| fail(e, &server))?;
            if picked.push {
                results.push_cn = Some(r);
            }
            pushed.extend(p);
        }
        server.check_alive()?;
        let pushed = Arc::new(pushed);

        if picked.pull {
            eprintln!(
                "ferro-load: {}: pull c={}",
                kind.name(),
                settings.pull_concurrency
            );
            let r = workloads::pull(
                addr,
                pid,
                &images,
                &pushed,
                settings.pull_concurrency,
                d(settings.read_seconds),
                10_000_000,
            )
            .await
            .map_err(|e| fail(e, &server))?;
            results.pull = Some(r);
            server.check_alive()?;
        }
        if picked.head {
            eprintln!(
                "ferro-load: {}: HEAD c={}",
                kind.name(),
                settings.head_concurrency
            );
            let r = workloads::head(
                addr,
                pid,
                &images,
                &pushed,
                settings.head_concurrency,
                d(settings.read_seconds),
                50_000_000,
            )
            .await
            .map_err(|e| fail(e, &server))?;
            results.head = Some(r);
            server.check_alive()?;
        }
        if picked.tags {
            eprintln!("ferro-load: {}: {} tags", kind.name(), settings.tags);
            let r = workloads::tags(
                addr,
                images.clone(),
                settings.tags,
                settings.tags_page,
                3,
                settings.push_concurrency,
                write_phase_limit,
            )
            .await
            .map_err(|e| fail(e, &server))?;
            if let Outcome::Unable(why) = &r {
                strict("the tag listing", why)?;
            }
            results.tags = Some(r);
            server.check_alive()?;
        }
        if picked.mixed {
            eprintln!(
                "ferro-load: {}: mixed 90/10 for {} s",
                kind.name(),
                settings.mixed_seconds
            );
            let r = workloads::mixed(
                addr,
                pid,
                &images,
                &pushed,
                mixed_range.clone(),
                settings.mixed_concurrency,
                d(settings.mixed_seconds),
                50_000_000,
            )
            .await
            .map_err(|e| fail(e, &server))?;
            for e in &r.first_errors {
                eprintln!("ferro-load: {}: mixed: error: {e}", kind.name());
            }
            results.mixed = Some(r);
            server.check_alive()?;
        }
        if let Some((mono, chunked)) = &big {
            eprintln!(
                "ferro-load: {}: {} MiB blob up and down",
                kind.name(),
                settings.blob_mib
            );
            let mut client = Client::new(addr);
            let r = bigblob::run(
                &mut client,
                pid,
                mono,
                chunked,
                settings.chunk_mib * 1024 * 1024,
                settings.download_check,
            )
            .await
            .map_err(|e| fail(e, &server))?;
            for o in [
                &r.upload_monolithic,
                &r.upload_chunked,
                &r.download_after_upload,
                &r.download,
            ] {
                if let Outcome::Unable(why) = o {
                    strict("the large blob", why)?;
                }
            }
            results.blob = Some(r);
            server.check_alive()?;
        }
        drop(server);
        run.servers.push(results);
        // Let the previous server's dirty pages and sockets settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let table = report::table(&run);
    let checks = report::checks(&run);
    println!("\n## Results\n\n{}", machine_line(&run));
    println!("```\n{}\n```\n", run.command);
    if let Some(c) = &run.ceilings {
        println!(
            "### Ceilings\n\n{}",
            report::ceilings_table(c, &run.settings)
        );
    }
    if !run.servers.is_empty() {
        println!("### Registries\n\n{table}");
        println!(
            "Servers: {}",
            run.servers
                .iter()
                .map(|s| format!("{} {}", s.kind.name(), s.version))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    if !checks.is_empty() {
        println!("\n### Targets\n\n{}", report::checks_table(&checks));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&run)?)?;
        eprintln!("ferro-load: results saved to {}", path.display());
    }
    let mixed_errors: Vec<String> = run
        .servers
        .iter()
        .filter_map(|s| {
            s.mixed
                .as_ref()
                .filter(|m| m.errors > 0)
                .map(|m| format!("{}: {} errors", s.kind.name(), m.errors))
        })
        .collect();
    if !mixed_errors.is_empty() {
        eprintln!(
            "ferro-load: FAILED: the mixed workload had errors: {}",
            mixed_errors.join(", ")
        );
        return Ok(false);
    }
    Ok(true)
}

fn machine_line(run: &Run) -> String {
    let m = &run.machine;
    format!(
        "Machine: {} cores ({}), {} RAM, Linux {}; client: {} tokio worker threads on the same cores.",
        m.nproc, m.cpu_model, m.memory, m.kernel, run.settings.client_threads
    )
}

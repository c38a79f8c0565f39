//! Read replicas' figures (see README, "Backups, restore and replicas"):
//!
//! - catch-up rate: an archive of `--records` (default 100,000) records
//!   in ~1 MiB pieces in a `file://` directory, followed from nothing by
//!   `replica::Follower` (list, download, verify every checksum and the
//!   chain, decode, append to the local log with an fdatasync per run,
//!   apply to the state), in records per second; and the first start of
//!   a real `ferro serve --replica-of` on that archive (restore, replay),
//!   until it listens;
//! - follow lag under a push load: a real primary shipping to a `file://`
//!   archive (and a real Garage, with a `garage` binary) at
//!   `--ship-interval-ms` (default 1000, the setting's), a real replica at the default
//!   `poll_interval_ms` (200), with and without `--primary`; `--clients`
//!   clients push small images for `--seconds`, and a reader long-polls
//!   the replica's event feed: for each record, the time from its commit
//!   on the primary (the record's own time; one machine, one clock) to
//!   its appearance on the replica. p50, p99 and max per set-up.
//!
//! ```text
//! cargo bench --bench replica
//! cargo bench --bench replica -- --records 20000 --seconds 5   # quicker
//! cargo bench --bench replica -- --ship-interval-ms 200        # a primary shipping more often
//! ```

#[path = "../tests/common/garage.rs"]
#[allow(dead_code)] // the tests use the rest of it
mod garage;
#[allow(dead_code)] // the other benchmarks use the rest of it
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{build_archive, image_config, image_manifest, spawn_ferro_with, OCI_MANIFEST};

struct Args {
    records: u64,
    clients: usize,
    seconds: u64,
    /// Pause between two pushes of one client.
    pause_ms: u64,
    /// The primary's `archive.ship_interval_ms`.
    ship_interval_ms: u64,
}

fn args() -> Args {
    Args {
        records: support::arg("--records", 100_000),
        clients: support::arg("--clients", 4),
        seconds: support::arg("--seconds", 20),
        pause_ms: support::arg("--pause-ms", 20),
        ship_interval_ms: support::arg("--ship-interval-ms", 1000),
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

/// The follower alone, in process: from an empty log to the archive's
/// end.
fn catch_up(rt: &tokio::runtime::Runtime, archive: &std::path::Path, records: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = ferro::datadir::DataDir::open(dir.path()).unwrap();
    let started = ferro::startup::open(
        &data.layout(),
        ferro::log::RecoveryMode::TolerateTornTail,
        ferro::log::WriterOptions {
            durability: ferro::log::Durability::Always,
            segment_bytes_max: ferro::limits::Limits::default().segment_bytes_max,
        },
    )
    .unwrap();
    let writer = started.log.writer.clone();
    writer.follow_only("a replica".into());
    let config = ferro::replica::ReplicaConfig {
        of: format!("file://{}", archive.display()),
        ..Default::default()
    };
    let store = ferro::archive::ArchiveStore::open(
        &config.archive_settings(&Default::default()),
        &Default::default(),
    )
    .unwrap();
    let follower = ferro::replica::Follower::new(
        store,
        config,
        writer.clone(),
        started.log.state.clone(),
        None,
        tokio_util::sync::CancellationToken::new(),
    );
    let began = Instant::now();
    let mut applied_piece = None;
    let mut applied = 0;
    rt.block_on(async {
        loop {
            let n = follower.poll_once(&mut applied_piece).await.unwrap();
            applied += n;
            if n == 0 {
                break;
            }
        }
    });
    let took = began.elapsed().as_secs_f64();
    assert_eq!(applied, records);
    assert_eq!(writer.tip().seq(), records);
    println!(
        "catch-up (follower, in process) of {records} records from a file:// archive: {took:.2} s, {:.0} records/s",
        records as f64 / took
    );
}

/// Pushes small images from `clients` clients until `stop`.
async fn push_load(base: String, clients: usize, pause: Duration, stop: Arc<AtomicBool>) -> u64 {
    let http = reqwest::Client::new();
    let layer = b"one layer, shared by every image".to_vec();
    let layer_digest = ferro::oci::Digest::sha256_of(&layer);
    let r = http
        .post(format!(
            "{base}/v2/bench/app/blobs/uploads/?digest={layer_digest}"
        ))
        .body(layer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut tasks = Vec::new();
    for c in 0..clients as u64 {
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        let layers = vec![(layer_digest.clone(), layer.len() as u64)];
        tasks.push(tokio::spawn(async move {
            let mut pushed = 0u64;
            let mut i = c * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let config = image_config(i);
                let config_digest = ferro::oci::Digest::sha256_of(config.as_bytes());
                let r = http
                    .post(format!(
                        "{base}/v2/bench/app/blobs/uploads/?digest={config_digest}"
                    ))
                    .body(config.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let manifest = image_manifest(i, (&config_digest, config.len()), &layers);
                let r = http
                    .put(format!("{base}/v2/bench/app/manifests/t{i}"))
                    .header("Content-Type", OCI_MANIFEST)
                    .body(manifest)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                pushed += 1;
                i += 1;
                tokio::time::sleep(pause).await;
            }
            pushed
        }));
    }
    let mut pushed = 0;
    for t in tasks {
        pushed += t.await.unwrap();
    }
    pushed
}

/// Follows the replica's feed from `after` until `stop` and a quiet
/// second: for each record, seconds from its commit to its arrival.
async fn watch(base: String, after: u64, stop: Arc<AtomicBool>) -> Vec<f64> {
    let http = reqwest::Client::new();
    let mut after = after;
    let mut lags = Vec::new();
    let mut quiet_since = None;
    loop {
        let page: serde_json::Value = http
            .get(format!(
                "{base}/v2/_ferro/events/feed?after={after}&n=1000&wait=1"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let seen = now_unix_ns();
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            let committed = e["time_unix_ns"].as_u64().unwrap();
            lags.push(seen.saturating_sub(committed) as f64 / 1e9);
        }
        after = page["next"].as_u64().unwrap();
        if entries.is_empty() && stop.load(Ordering::Relaxed) {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(3) {
                return lags;
            }
        } else {
            quiet_since = None;
        }
    }
}

/// One primary and one replica under the push load; the lags.
fn follow_lag(
    rt: &tokio::runtime::Runtime,
    a: &Args,
    name: &str,
    archive_url: &str,
    config: Option<&std::path::Path>,
    hint: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut common: Vec<String> = Vec::new();
    if let Some(c) = config {
        common.extend(["--config".into(), c.display().to_string()]);
    }
    let mut primary_args = vec![
        "--archive-url".to_owned(),
        archive_url.to_owned(),
        "--archive-ship-interval-ms".to_owned(),
        a.ship_interval_ms.to_string(),
    ];
    primary_args.extend(common.clone());
    let primary_args: Vec<&str> = primary_args.iter().map(|s| s.as_str()).collect();
    let (mut primary, primary_addr) = spawn_ferro_with(&dir.path().join("primary"), &primary_args);
    let mut replica_args = vec!["--replica-of".to_owned(), archive_url.to_owned()];
    if hint {
        replica_args.extend(["--primary".into(), format!("http://{primary_addr}")]);
    }
    replica_args.extend(common);
    let replica_args: Vec<&str> = replica_args.iter().map(|s| s.as_str()).collect();
    let (mut replica, replica_addr) = spawn_ferro_with(&dir.path().join("replica"), &replica_args);
    let stop = Arc::new(AtomicBool::new(false));
    let (pushed, mut lags) = rt.block_on(async {
        let watcher = tokio::spawn(watch(format!("http://{replica_addr}"), 0, stop.clone()));
        let load = tokio::spawn(push_load(
            format!("http://{primary_addr}"),
            a.clients,
            Duration::from_millis(a.pause_ms),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(a.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let pushed = load.await.unwrap();
        (pushed, watcher.await.unwrap())
    });
    for child in [&mut primary, &mut replica] {
        let _ = child.kill();
        let _ = child.wait();
    }
    lags.sort_by(|x, y| x.total_cmp(y));
    println!(
        "follow lag, {name}, ship_interval_ms {}: {} images pushed in {} s by {} clients, {} records seen on the replica: p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        a.ship_interval_ms,
        pushed,
        a.seconds,
        a.clients,
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN)
    );
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let bytes = build_archive(&archive, a.records);
    println!("built an archive of {} records, {bytes} bytes", a.records);
    catch_up(&rt, &archive, a.records);
    let began = Instant::now();
    let (mut child, _) = spawn_ferro_with(
        &dir.path().join("replica"),
        &["--replica-of", &format!("file://{}", archive.display())],
    );
    println!(
        "first start of ferro serve --replica-of on it (restore, replay) until it listens: {:.2} s",
        began.elapsed().as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(dir);

    for hint in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("archive").display());
        let name = format!("file:// archive{}", if hint { ", --primary" } else { "" });
        follow_lag(&rt, &a, &name, &url, None, hint);
    }
    if garage::binary().is_some() {
        let g = garage::Garage::start();
        let config =
            std::env::temp_dir().join(format!("ferro-bench-replica-{}.toml", std::process::id()));
        std::fs::write(&config, g.archive_toml()).unwrap();
        for hint in [false, true] {
            let url = format!("s3://{}/bench-replica-{hint}/", garage::BUCKET);
            let name = format!("Garage archive{}", if hint { ", --primary" } else { "" });
            follow_lag(&rt, &a, &name, &url, Some(&config), hint);
        }
        let _ = std::fs::remove_file(&config);
    }
}

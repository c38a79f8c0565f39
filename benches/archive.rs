//! The log archive's costs (see README, "Backups, restore and replicas"):
//!
//! - shipping's cost on small-image pushes at `--clients` (default 16):
//!   the real server with no archive, with a `file://` archive under the
//!   default durability, and under `durability = "archived"`; with a
//!   `garage` binary, the two archive modes again against a real Garage.
//!   Images per second over the push phase and the server's CPU time per
//!   1,000 images; rounds alternate the set-ups, medians are reported;
//! - restore time for `--records` (default 1,000,000) records: an archive
//!   of that many records written in ~1 MiB pieces (what the shipper
//!   makes under load) into a `file://` directory, then
//!   `archive::restore::restore` into a new data directory (download,
//!   verify every checksum and the chain, write segments).
//!
//! ```text
//! cargo bench --bench archive
//! cargo bench --bench archive -- --images 500 --rounds 1 --records 200000   # quicker
//! ```

#[path = "../tests/common/garage.rs"]
#[allow(dead_code)] // the tests use the rest of it
mod garage;
#[allow(dead_code)] // the other benchmarks use the rest of it
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    build_archive, image_config, image_manifest, median, process_cpu, spawn_ferro_with,
    OCI_MANIFEST,
};

struct Args {
    images: usize,
    clients: usize,
    rounds: usize,
    records: u64,
}

fn args() -> Args {
    Args {
        images: support::arg("--images", 1000),
        clients: support::arg("--clients", 16),
        rounds: support::arg("--rounds", 3),
        records: support::arg("--records", 1_000_000),
    }
}

/// Pushes `images` small images (a config blob of its own, one shared
/// layer, the manifest by tag) from `clients` clients; the push phase's
/// wall time.
async fn push_load(base: &str, images: usize, clients: usize) -> Duration {
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
        .expect("push the layer");
    assert_eq!(r.status(), 201);
    let layers = Arc::new([(layer_digest, layer.len() as u64)]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, base, layers) = (http.clone(), base.to_owned(), layers.clone());
        tasks.push(tokio::spawn(async move {
            for i in (c..images).step_by(clients) {
                let config = image_config(i as u64);
                let digest = ferro::oci::Digest::sha256_of(config.as_bytes());
                let r = http
                    .post(format!(
                        "{base}/v2/bench/app/blobs/uploads/?digest={digest}"
                    ))
                    .body(config.clone())
                    .send()
                    .await
                    .expect("push a config");
                assert_eq!(r.status(), 201);
                let manifest = image_manifest(i as u64, (&digest, config.len()), &layers[..]);
                let r = http
                    .put(format!("{base}/v2/bench/app/manifests/t{i}"))
                    .header("Content-Type", OCI_MANIFEST)
                    .body(manifest)
                    .send()
                    .await
                    .expect("push a manifest");
                assert_eq!(r.status(), 201);
            }
        }));
    }
    for t in tasks {
        t.await.expect("a client");
    }
    started.elapsed()
}

struct Run {
    per_second: f64,
    cpu_ms_per_1000: f64,
    /// The run's data directory and archive, removed only when the whole
    /// benchmark ends: on ext4 without a journal, creating files within
    /// 30 s of deleting many (`recently_deleted` in the inode allocator)
    /// costs several times more, which would tax whichever set-up runs
    /// after a removal.
    dir: tempfile::TempDir,
}

/// One server, `extra` flags, the push load.
async fn run(a: &Args, extra: &[String]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args: Vec<String> = extra.to_vec();
    if args.iter().any(|x| x == "file://ARCHIVE") {
        let url = format!("file://{}", dir.path().join("archive").display());
        for x in args.iter_mut() {
            if x == "file://ARCHIVE" {
                *x = url.clone();
            }
        }
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (mut child, addr) = spawn_ferro_with(&data, &args);
    let base = format!("http://{addr}");
    let cpu_before = process_cpu(child.id());
    let took = push_load(&base, a.images, a.clients).await;
    let cpu = process_cpu(child.id()) - cpu_before;
    let _ = child.kill();
    let _ = child.wait();
    Run {
        per_second: a.images as f64 / took.as_secs_f64(),
        cpu_ms_per_1000: cpu.as_secs_f64() * 1e3 * 1000.0 / a.images as f64,
        dir,
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut setups: Vec<(String, Vec<String>)> = vec![
        ("no archive".into(), vec![]),
        (
            "file:// archive, default".into(),
            vec!["--archive-url".into(), "file://ARCHIVE".into()],
        ),
        (
            "file:// archive, archived".into(),
            vec![
                "--archive-url".into(),
                "file://ARCHIVE".into(),
                "--archive-durability".into(),
                "archived".into(),
            ],
        ),
    ];
    let garage = garage::binary().map(|_| garage::Garage::start());
    if let Some(g) = &garage {
        let config =
            std::env::temp_dir().join(format!("ferro-bench-archive-{}.toml", std::process::id()));
        std::fs::write(&config, g.archive_toml()).unwrap();
        for (name, durability) in [("default", "local"), ("archived", "archived")] {
            setups.push((
                format!("Garage archive, {name}"),
                vec![
                    "--config".into(),
                    config.display().to_string(),
                    "--archive-url".into(),
                    format!("s3://{}/bench-{name}-ROUND/", garage::BUCKET),
                    "--archive-durability".into(),
                    durability.into(),
                ],
            ));
        }
    }
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); setups.len()];
    let mut kept = Vec::new();
    for round in 0..a.rounds {
        for (i, (name, extra)) in setups.iter().enumerate() {
            let extra: Vec<String> = extra
                .iter()
                .map(|x| x.replace("ROUND", &round.to_string()))
                .collect();
            let r = rt.block_on(run(&a, &extra));
            kept.push(r.dir);
            println!(
                "round {round}: {name}: {:.0} images/s, {:.0} ms server CPU per 1,000 images",
                r.per_second, r.cpu_ms_per_1000
            );
            results[i].0.push(r.per_second);
            results[i].1.push(r.cpu_ms_per_1000);
        }
    }
    let base = median(results[0].0.clone());
    let base_cpu = median(results[0].1.clone());
    for ((name, _), (rate, cpu)) in setups.iter().zip(results) {
        let (rate, cpu) = (median(rate), median(cpu));
        println!(
            "{name}: {rate:.0} images/s ({:+.1}%), {cpu:.0} ms CPU per 1,000 images ({:+.1}%) — median of {} rounds, {} images, {} clients",
            (rate / base - 1.0) * 100.0,
            (cpu / base_cpu - 1.0) * 100.0,
            a.rounds,
            a.images,
            a.clients
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let started = Instant::now();
    let bytes = build_archive(&archive, a.records);
    println!(
        "built an archive of {} records, {bytes} bytes, in {:.1} s",
        a.records,
        started.elapsed().as_secs_f64()
    );
    let config = ferro::archive::ArchiveConfig {
        url: format!("file://{}", archive.display()),
        ..Default::default()
    };
    let store = ferro::archive::ArchiveStore::open(&config, &Default::default()).unwrap();
    let target = dir.path().join("restored");
    let started = Instant::now();
    let report = rt
        .block_on(ferro::archive::restore::restore(
            &store,
            &target,
            None,
            ferro::limits::Limits::default().segment_bytes_max,
            &mut |_, _| {},
        ))
        .unwrap();
    let took = started.elapsed().as_secs_f64();
    println!(
        "restore of {} records ({} pieces, {} bytes) from a file:// archive: {took:.2} s, {:.0} records/s",
        report.records,
        report.pieces,
        report.piece_bytes,
        report.records as f64 / took
    );
}

//! Notifications under push load: manifest push throughput of the real
//! server with three notification endpoints enabled against none, and
//! the delivery lag (receiver arrival minus commit time) under that load.
//!
//! ```text
//! cargo bench --bench notifications
//! cargo bench --bench notifications -- --pushes 500 --rounds 1   # quicker
//! cargo bench --bench notifications -- --cursor-write-interval 0s # a cursor write per batch
//! ```
//!
//! Each round starts `ferro serve` twice on a fresh data directory
//! (durability `always`): once with no endpoint, once with three (two
//! CloudEvents, one distribution, no filter, batches of up to 100
//! events) pointing at receivers on 127.0.0.1 that accept everything.
//! `--clients` concurrent clients (default 16) push `--pushes` manifests
//! (default 2,000) by tag, over one shared config and layer; throughput
//! is manifests per second over the push phase. The endpoints' lag is
//! each manifest event's arrival at a receiver minus its commit time
//! (the event's `time` / `timestamp`), over all three receivers, once
//! every endpoint has caught up. Rounds alternate the two set-ups so
//! drift on a shared machine hits both; the medians are reported. Beside
//! throughput, the server's own CPU time (user + system, from
//! `/proc/PID/stat`) per 1,000 pushes, counted until every endpoint has
//! caught up, so delivery's whole cost is in it: on a shared machine
//! other processes move wall-clock throughput far more than they move a
//! process's CPU time.

#[path = "../tests/support/receiver.rs"]
mod receiver;
#[allow(dead_code)] // the other benchmarks use the rest of it
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use receiver::{Behaviour, Receiver};
use serde_json::Value;
use support::{image_config, image_manifest, median, process_cpu, spawn_ferro_with, OCI_MANIFEST};

struct Args {
    pushes: usize,
    clients: usize,
    rounds: usize,
    /// `notifications.cursor_write_interval`, when not the default.
    cursor_write_interval: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        pushes: 2000,
        clients: 16,
        rounds: 3,
        cursor_write_interval: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = || argv.get(i + 1).and_then(|v| v.parse().ok());
        match argv[i].as_str() {
            "--pushes" => a.pushes = value().expect("--pushes N"),
            "--clients" => a.clients = value().expect("--clients N"),
            "--rounds" => a.rounds = value().expect("--rounds N"),
            "--cursor-write-interval" => {
                let v = argv.get(i + 1).expect("--cursor-write-interval 100ms");
                a.cursor_write_interval = Some(v.clone());
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// Pushes the manifests; the push phase's wall time.
async fn push_load(base: &str, pushes: usize, clients: usize) -> Duration {
    let http = reqwest::Client::new();
    let config = image_config(0);
    let layer = b"one layer, shared by every image".to_vec();
    let config_digest = ferro::oci::Digest::sha256_of(config.as_bytes());
    let layer_digest = ferro::oci::Digest::sha256_of(&layer);
    for (digest, bytes) in [
        (&config_digest, config.as_bytes().to_vec()),
        (&layer_digest, layer.clone()),
    ] {
        let r = http
            .post(format!(
                "{base}/v2/bench/app/blobs/uploads/?digest={digest}"
            ))
            .body(bytes)
            .send()
            .await
            .expect("push a blob");
        assert_eq!(r.status(), 201);
    }
    let layers = [(layer_digest, layer.len() as u64)];
    let manifests: Arc<Vec<String>> = Arc::new(
        (0..pushes as u64)
            .map(|i| image_manifest(i, (&config_digest, config.len()), &layers))
            .collect(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, manifests, base) = (http.clone(), manifests.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            for i in (c..manifests.len()).step_by(clients) {
                let r = http
                    .put(format!("{base}/v2/bench/app/manifests/t{i}"))
                    .header("Content-Type", OCI_MANIFEST)
                    .body(manifests[i].clone())
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

/// Lags of the manifest events a receiver accepted, in milliseconds.
fn lags_ms(receiver: &Receiver) -> Vec<f64> {
    let mut out = Vec::new();
    for r in receiver.accepted() {
        let arrival_ns = r.at_system.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128;
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let events = match v {
            Value::Array(events) => events,
            Value::Object(ref o) if o.contains_key("events") => {
                v["events"].as_array().unwrap().clone()
            }
            single => vec![single],
        };
        for e in events {
            let is_manifest = e["type"] == "dev.ferro.manifest.pushed"
                || (e["action"] == "push"
                    && e["target"]["tag"].is_null()
                    && e["target"]["mediaType"] == OCI_MANIFEST);
            if !is_manifest {
                continue;
            }
            let time = e["time"].as_str().or(e["timestamp"].as_str()).unwrap();
            let committed: jiff::Timestamp = time.parse().unwrap();
            out.push((arrival_ns - committed.as_nanosecond()) as f64 / 1e6);
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Run {
    per_second: f64,
    /// Server CPU milliseconds per 1,000 pushes.
    cpu_ms_per_1000: f64,
    lags_ms: Vec<f64>,
}

async fn run(a: &Args, endpoints: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let receivers = if endpoints {
        vec![
            Receiver::start(Behaviour::Accept, None).await,
            Receiver::start(Behaviour::Accept, None).await,
            Receiver::start(Behaviour::Accept, Some("bench-secret")).await,
        ]
    } else {
        Vec::new()
    };
    let mut config = String::new();
    for (i, (r, format)) in receivers
        .iter()
        .zip(["cloudevents", "distribution", "cloudevents"])
        .enumerate()
    {
        config += &format!(
            "[[notifications.endpoints]]\nname = \"e{i}\"\nurl = \"{}\"\nformat = \"{format}\"\n{}\n",
            r.url(),
            if i == 2 { "secret = \"bench-secret\"" } else { "" }
        );
    }
    let path = dir.path().join("ferro.toml");
    std::fs::write(&path, config).unwrap();
    let data = dir.path().join("data");
    let mut ferro_args = vec!["--config", path.to_str().unwrap()];
    if let Some(interval) = &a.cursor_write_interval {
        ferro_args.extend(["--notifications-cursor-write-interval", interval.as_str()]);
    }
    let (mut child, addr) = spawn_ferro_with(&data, &ferro_args);
    let base = format!("http://{addr}");
    let cpu_before = process_cpu(child.id());
    let took = push_load(&base, a.pushes, a.clients).await;
    let mut lags = Vec::new();
    if endpoints {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s: Value = reqwest::get(format!("{base}/v2/_ferro/notifications"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let last = s["last_seq"].as_u64().unwrap();
            if s["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["cursor"].as_u64() == Some(last))
            {
                break;
            }
            assert!(Instant::now() < deadline, "endpoints did not catch up: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for r in &receivers {
            let l = lags_ms(r);
            assert!(
                l.len() >= a.pushes,
                "{} manifest events of {}",
                l.len(),
                a.pushes
            );
            lags.extend(l);
        }
    }
    let cpu = process_cpu(child.id()) - cpu_before;
    // SIGTERM: a graceful stop, so a wrapper (callgrind) writes its
    // figures.
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    Run {
        per_second: a.pushes as f64 / took.as_secs_f64(),
        cpu_ms_per_1000: cpu.as_secs_f64() * 1e3 * 1000.0 / a.pushes as f64,
        lags_ms: lags,
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut none = Vec::new();
    let mut three = Vec::new();
    let (mut none_cpu, mut three_cpu) = (Vec::new(), Vec::new());
    let mut lags = Vec::new();
    for round in 0..a.rounds {
        let n = rt.block_on(run(&a, false));
        let t = rt.block_on(run(&a, true));
        println!(
            "round {round}: no endpoint {:.0} manifests/s ({:.0} ms CPU per 1,000), three endpoints {:.0} manifests/s ({:.0} ms CPU per 1,000)",
            n.per_second, n.cpu_ms_per_1000, t.per_second, t.cpu_ms_per_1000
        );
        none.push(n.per_second);
        three.push(t.per_second);
        none_cpu.push(n.cpu_ms_per_1000);
        three_cpu.push(t.cpu_ms_per_1000);
        lags.extend(t.lags_ms);
    }
    lags.sort_by(|x, y| x.total_cmp(y));
    let (n, t) = (median(none), median(three));
    println!(
        "push throughput, median of {} rounds ({} manifests, {} clients): no endpoint {n:.0}/s, three endpoints {t:.0}/s ({:+.1}%)",
        a.rounds,
        a.pushes,
        a.clients,
        (t / n - 1.0) * 100.0
    );
    let (nc, tc) = (median(none_cpu), median(three_cpu));
    println!(
        "server CPU per 1,000 pushes, median: no endpoint {nc:.0} ms, three endpoints {tc:.0} ms ({:+.1}%)",
        (tc / nc - 1.0) * 100.0
    );
    println!(
        "delivery lag over {} manifest events: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN)
    );
}

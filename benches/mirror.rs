//! A pull through a mirror against the same pull from its upstream: an
//! uncached large layer (time to first byte and throughput, while the
//! mirror fetches, writes and hashes it), the same layer once cached, and
//! the rate of cached manifest pulls against plain ferro pulls.
//!
//! ```text
//! cargo bench --bench mirror                  # a 1 GiB layer
//! cargo bench --bench mirror -- --mib 256     # quicker
//! ```
//!
//! Two `ferro serve` processes on loopback: the upstream, where the layer
//! is pushed, and the mirror (`--mirror hub/=<upstream>`). The direct pull
//! reads the layer from the upstream first, so the upstream's copy is in
//! the page cache for both. Manifest rates: `--clients` concurrent clients
//! (default 8) GET one tag `--requests` times (default 4,000), from the
//! upstream (a plain pull) and through the mirror (a cached tag within
//! `tag_ttl`).

#[allow(dead_code)] // the other benchmarks use the rest of it
mod support;

use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use support::{spawn_ferro_with, OCI_MANIFEST};

const CHUNK: usize = 1 << 20;

/// Chunk `i` of the layer: bytes that do not compress.
fn chunk(i: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(CHUNK);
    while out.len() < CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Time to the first body byte and MiB/s over the whole body.
async fn timed_get(http: &reqwest::Client, url: &str) -> (Duration, f64, String) {
    let started = Instant::now();
    let mut r = http.get(url).send().await.expect("GET");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    let mut first = None;
    let mut bytes = 0usize;
    let mut hash = Sha256::new();
    while let Some(c) = r.chunk().await.expect("body") {
        first.get_or_insert_with(|| started.elapsed());
        bytes += c.len();
        hash.update(&c);
    }
    let secs = started.elapsed().as_secs_f64();
    let digest = format!("sha256:{}", hex::encode(hash.finalize()));
    (
        first.unwrap_or_default(),
        bytes as f64 / (1 << 20) as f64 / secs,
        digest,
    )
}

async fn manifest_rate(url: &str, clients: usize, requests: usize) -> f64 {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url) = (http.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            for _ in 0..requests / clients {
                let r = http
                    .get(&url)
                    .header("Accept", OCI_MANIFEST)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (requests / clients * clients) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let mib: usize = support::arg("--mib", 1024);
    let clients: usize = support::arg("--clients", 8);
    let requests: usize = support::arg("--requests", 4000);
    let dir = tempfile::tempdir().unwrap();
    let (mut upstream, up_addr) = spawn_ferro_with(&dir.path().join("upstream"), &[]);
    let up = format!("http://{up_addr}");
    let mirror_flag = format!("hub/={up}");
    let (mut mirror, mirror_addr) =
        spawn_ferro_with(&dir.path().join("mirror"), &["--mirror", &mirror_flag]);
    let mirror_url = format!("http://{mirror_addr}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let mut hash = Sha256::new();
        for i in 0..mib {
            hash.update(chunk(i));
        }
        let digest = format!("sha256:{}", hex::encode(hash.finalize()));
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
            (0..mib).map(|i| Ok::<_, std::io::Error>(chunk(i))),
        ));
        let r = http
            .post(format!("{up}/v2/bench/big/blobs/uploads/?digest={digest}"))
            .header("Content-Length", (mib * CHUNK).to_string())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let config = b"{}".to_vec();
        let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        let r = http
            .post(format!("{up}/v2/bench/big/blobs/uploads/?digest={config_digest}"))
            .body(config.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest, "size": mib * CHUNK}],
        });
        let r = http
            .put(format!("{up}/v2/bench/big/manifests/v1"))
            .header("Content-Type", OCI_MANIFEST)
            .body(serde_json::to_vec(&manifest).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);

        println!("layer of {mib} MiB; busy shared machine: figures are indicative");
        let (ttfb, rate, d) = timed_get(&http, &format!("{up}/v2/bench/big/blobs/{digest}")).await;
        assert_eq!(d, digest);
        println!("direct from the upstream:    first byte {:>8.1} ms, {rate:>7.0} MiB/s", ttfb.as_secs_f64() * 1e3);
        let r = http
            .get(format!("{mirror_url}/v2/hub/bench/big/manifests/v1"))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let blob = format!("{mirror_url}/v2/hub/bench/big/blobs/{digest}");
        let (ttfb, rate, d) = timed_get(&http, &blob).await;
        assert_eq!(d, digest);
        println!("through the mirror, uncached: first byte {:>8.1} ms, {rate:>7.0} MiB/s", ttfb.as_secs_f64() * 1e3);
        // The fill commits after the last byte; wait for the link.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ttfb, rate, d) = timed_get(&http, &blob).await;
        assert_eq!(d, digest);
        println!("through the mirror, cached:   first byte {:>8.1} ms, {rate:>7.0} MiB/s", ttfb.as_secs_f64() * 1e3);
        let (_, rate, _) = timed_get(&http, &format!("{up}/v2/bench/big/blobs/{digest}")).await;
        println!("direct again:                                    {rate:>7.0} MiB/s");

        let plain = manifest_rate(&format!("{up}/v2/bench/big/manifests/v1"), clients, requests).await;
        let cached = manifest_rate(&format!("{mirror_url}/v2/hub/bench/big/manifests/v1"), clients, requests).await;
        println!("manifest GET by tag, {clients} clients: plain ferro {plain:>7.0}/s, mirror (cached tag) {cached:>7.0}/s");
    });
    let _ = mirror.kill();
    let _ = upstream.kill();
    let _ = mirror.wait();
    let _ = upstream.wait();
}

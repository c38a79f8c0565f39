//! Server time of the web UI's two heaviest pages on a large registry:
//! the repository list with 10,000 repositories (sorted by last push, the
//! costlier sort) and the tag table of a repository with 10,000 tags
//! (sorted by time).
//!
//! ```text
//! cargo bench --bench ui
//! cargo bench --bench ui -- --repos 1000 --tags 1000 --samples 50   # quicker
//! ```
//!
//! The data set is pushed through the API to the real `ferro serve` (this
//! build's binary, `--durability never`, on a loopback port): `--repos`
//! repositories of one tagged image each, and one repository holding
//! `--tags` tags, each on its own manifest. Then each page is requested
//! `--samples` times, walking its pages (`page=1,2,…`), and the server's
//! own figure is read from the `Server-Timing: render;dur=` header (from
//! the viewer's session to the rendered HTML, the timeline look-ups
//! included); the client's round trip is reported beside it. Medians and
//! 99th percentiles, in milliseconds.

#[allow(dead_code)] // the other benchmarks use the rest of it
mod support;

use std::time::{Duration, Instant};

use ferro::oci::Digest;
use futures_util::stream::{self, StreamExt as _};

/// Requests in flight while the data set is pushed.
const PUSH_CONCURRENCY: usize = 16;

struct Args {
    repos: u64,
    tags: u64,
    samples: usize,
}

fn args() -> Args {
    let mut a = Args {
        repos: 10_000,
        tags: 10_000,
        samples: 200,
    };
    let argv: Vec<String> = std::env::args().collect();
    for pair in argv.windows(2) {
        match pair[0].as_str() {
            "--repos" => a.repos = pair[1].parse().expect("--repos N"),
            "--tags" => a.tags = pair[1].parse().expect("--tags N"),
            "--samples" => a.samples = pair[1].parse().expect("--samples N"),
            _ => {}
        }
    }
    a
}

async fn push_image(http: &reqwest::Client, base: &str, repo: &str, tag: &str, i: u64) {
    let config = support::image_config(i % 16);
    let digest = Digest::sha256_of(config.as_bytes());
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .body(config.clone())
        .send()
        .await
        .expect("POST blob");
    assert_eq!(r.status(), 201, "blob into {repo}");
    let manifest = support::image_manifest(i, (&digest, config.len()), &[]);
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", support::OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(r.status(), 201, "manifest {repo}:{tag}");
}

/// (server ms, round trip ms) of each request.
async fn sample(http: &reqwest::Client, urls: &[String]) -> (Vec<f64>, Vec<f64>) {
    let (mut server, mut client) = (Vec::new(), Vec::new());
    for url in urls {
        let started = Instant::now();
        let r = http.get(url).send().await.expect("GET page");
        assert_eq!(r.status(), 200, "{url}");
        let timing = r.headers()["server-timing"]
            .to_str()
            .expect("ascii")
            .to_owned();
        let body = r.bytes().await.expect("body");
        client.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(body.len() > 1000, "a page");
        let ms: f64 = timing
            .strip_prefix("render;dur=")
            .and_then(|v| v.parse().ok())
            .expect("render;dur=MS");
        server.push(ms);
    }
    (server, client)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

fn report(name: &str, (mut server, mut client): (Vec<f64>, Vec<f64>)) {
    println!(
        "{name:<44} server median {:7.2} ms  p99 {:7.2} ms   round trip median {:7.2} ms  p99 {:7.2} ms  ({} requests)",
        quantile(&mut server, 0.5),
        quantile(&mut server, 0.99),
        quantile(&mut client, 0.5),
        quantile(&mut client, 0.99),
        server.len(),
    );
}

fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("temporary directory");
    let (mut child, addr) = support::spawn_ferro_with(dir.path(), &["--durability", "never"]);
    let base = format!("http://{addr}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(PUSH_CONCURRENCY)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        let started = Instant::now();
        stream::iter(0..a.repos)
            .map(|i| {
                let (http, base) = (&http, &base);
                async move { push_image(http, base, &format!("bench/r{i:05}"), "v1", i).await }
            })
            .buffer_unordered(PUSH_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        stream::iter(0..a.tags)
            .map(|i| {
                let (http, base) = (&http, &base);
                async move { push_image(http, base, "bench/tags", &format!("t{i:05}"), i).await }
            })
            .buffer_unordered(PUSH_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        println!(
            "pushed {} repositories and {} tags in {:.1} s",
            a.repos,
            a.tags,
            started.elapsed().as_secs_f64()
        );
        // The first view builds the UI's timeline from the log: timed
        // apart, not in the samples.
        let first = Instant::now();
        let (s, _) = sample(&http, &[format!("{base}/ui/repositories")]).await;
        println!(
            "first page view (timeline built from the whole log): server {:.1} ms, round trip {:.1} ms",
            s[0],
            first.elapsed().as_secs_f64() * 1000.0
        );
        let pages = |path: &str, total: u64| -> Vec<String> {
            let pages = total.div_ceil(50).max(1);
            (0..a.samples as u64)
                .map(|k| format!("{base}{path}&page={}", k % pages + 1))
                .collect()
        };
        let repos_total = a.repos + 1;
        report(
            &format!("repositories ({repos_total}), sort=push"),
            sample(&http, &pages("/ui/repositories?sort=push", repos_total)).await,
        );
        report(
            &format!("repositories ({repos_total}), sort=name"),
            sample(&http, &pages("/ui/repositories?sort=name", repos_total)).await,
        );
        report(
            &format!("repositories ({repos_total}), search q=r09"),
            sample(&http, &pages("/ui/repositories?q=r09", 1)).await,
        );
        report(
            &format!("tags of bench/tags ({}), sort=time", a.tags),
            sample(&http, &pages("/ui/r/bench/tags?sort=time", a.tags)).await,
        );
        report(
            &format!("tags of bench/tags ({}), sort=name", a.tags),
            sample(&http, &pages("/ui/r/bench/tags?sort=name", a.tags)).await,
        );
        report(
            "overview",
            sample(&http, &pages("/ui/?x=", 1)).await,
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}

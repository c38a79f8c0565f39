//! The measured small-object workloads: push of many small images, pull
//! of them, HEAD of their manifests, tag listing with pagination, and a
//! 90/10 pull/push mix. Each takes the server's address and pid (for its
//! CPU time) and returns its figures; a failed check is an error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::content::Image;
use crate::http::{BoxError, Client};
use crate::ops;
use crate::stats::{run_workers, Latencies, Spent, Ticket, Window};

/// What a workload could not do on a server, with the reason shown in the
/// table instead of a figure ("refused (413 ...)").
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome<T> {
    Done(T),
    Unable(String),
}

/// An image pushed under `repo:tag`, for the reads that follow.
#[derive(Clone)]
pub struct Pushed {
    pub repo: String,
    pub tag: String,
    pub image: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PushResult {
    pub concurrency: usize,
    pub images: usize,
    pub requests: u64,
    pub images_per_second: f64,
    /// Median latency of each kind of request, in ms.
    pub post_p50_ms: f64,
    pub put_blob_p50_ms: f64,
    pub put_manifest_p50_ms: f64,
    pub time_capped: bool,
    pub spent: Spent,
}

pub async fn push(
    addr: SocketAddr,
    pid: u32,
    images: &Arc<Vec<Image>>,
    range: std::ops::Range<usize>,
    repo: &str,
    concurrency: usize,
    time_limit: Duration,
) -> Result<(PushResult, Vec<Pushed>), BoxError> {
    let ticket = Ticket::new(range.len(), time_limit);
    let window = Window::open(pid);
    let per_worker = run_workers(concurrency, |_| {
        let (ticket, images, repo, first) =
            (ticket.clone(), images.clone(), repo.to_owned(), range.start);
        async move {
            let mut client = Client::new(addr);
            let mut done = Vec::new();
            let mut requests = 0u64;
            let mut steps = ops::PushSteps::default();
            while let Some(i) = ticket.take() {
                let index = first + i;
                let tag = format!("i{index}");
                requests += u64::from(
                    ops::push_image(&mut client, &repo, &tag, &images[index], &mut steps).await?,
                );
                done.push(Pushed {
                    repo: repo.clone(),
                    tag,
                    image: index,
                });
            }
            Ok((done, requests, steps))
        }
    })
    .await?;
    let spent = window.close();
    let requests = per_worker.iter().map(|(_, r, _)| r).sum();
    let (mut pushed, mut post, mut put_blob, mut put_manifest) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (d, _, steps) in per_worker {
        pushed.extend(d);
        post.push(steps.post);
        put_blob.push(steps.put_blob);
        put_manifest.push(steps.put_manifest);
    }
    let p50 = |l: Vec<Latencies>| Latencies::merge(l).quantile_ms(0.5);
    Ok((
        PushResult {
            concurrency,
            images: pushed.len(),
            requests,
            images_per_second: pushed.len() as f64 / spent.seconds,
            post_p50_ms: p50(post),
            put_blob_p50_ms: p50(put_blob),
            put_manifest_p50_ms: p50(put_manifest),
            time_capped: ticket.time_capped(),
            spent,
        },
        pushed,
    ))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadResult {
    pub concurrency: usize,
    pub requests: u64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub time_capped: bool,
    pub spent: Spent,
}

/// Pulls random pushed images (manifest by tag, config, layer) until
/// `duration` is over or `max_images` are pulled.
pub async fn pull(
    addr: SocketAddr,
    pid: u32,
    images: &Arc<Vec<Image>>,
    pushed: &Arc<Vec<Pushed>>,
    concurrency: usize,
    duration: Duration,
    max_images: usize,
) -> Result<ReadResult, BoxError> {
    reads(
        addr,
        pid,
        images,
        pushed,
        concurrency,
        duration,
        max_images,
        ReadKind::Pull,
    )
    .await
}

/// HEADs random pushed manifests by tag.
pub async fn head(
    addr: SocketAddr,
    pid: u32,
    images: &Arc<Vec<Image>>,
    pushed: &Arc<Vec<Pushed>>,
    concurrency: usize,
    duration: Duration,
    max_requests: usize,
) -> Result<ReadResult, BoxError> {
    reads(
        addr,
        pid,
        images,
        pushed,
        concurrency,
        duration,
        max_requests,
        ReadKind::Head,
    )
    .await
}

#[derive(Clone, Copy)]
enum ReadKind {
    Pull,
    Head,
}

#[allow(clippy::too_many_arguments)] // one private helper behind two public entry points
async fn reads(
    addr: SocketAddr,
    pid: u32,
    images: &Arc<Vec<Image>>,
    pushed: &Arc<Vec<Pushed>>,
    concurrency: usize,
    duration: Duration,
    max_ops: usize,
    kind: ReadKind,
) -> Result<ReadResult, BoxError> {
    if pushed.is_empty() {
        return Err("nothing was pushed to read back".into());
    }
    let ticket = Ticket::new(max_ops, duration);
    let window = Window::open(pid);
    let per_worker = run_workers(concurrency, |w| {
        let (ticket, images, pushed) = (ticket.clone(), images.clone(), pushed.clone());
        async move {
            let mut client = Client::new(addr);
            let mut rng = SmallRng::seed_from_u64(0x5eed_0000 + w as u64);
            let mut latencies = Latencies::default();
            while ticket.take().is_some() {
                let p = &pushed[rng.gen_range(0..pushed.len())];
                let image = &images[p.image];
                match kind {
                    ReadKind::Pull => {
                        let t = Instant::now();
                        ops::get_manifest(&mut client, &p.repo, &p.tag, image).await?;
                        latencies.record(t);
                        let t = Instant::now();
                        ops::get_blob(&mut client, &p.repo, &image.config_digest).await?;
                        latencies.record(t);
                        let t = Instant::now();
                        ops::get_blob(&mut client, &p.repo, &image.layer_digest).await?;
                        latencies.record(t);
                    }
                    ReadKind::Head => {
                        let t = Instant::now();
                        ops::head_manifest(&mut client, &p.repo, &p.tag, image).await?;
                        latencies.record(t);
                    }
                }
            }
            Ok(latencies)
        }
    })
    .await?;
    let spent = window.close();
    let latencies = Latencies::merge(per_worker);
    Ok(ReadResult {
        concurrency,
        requests: latencies.len() as u64,
        requests_per_second: latencies.len() as f64 / spent.seconds,
        p50_ms: latencies.quantile_ms(0.50),
        p99_ms: latencies.quantile_ms(0.99),
        time_capped: ticket.time_capped(),
        spent,
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TagsResult {
    pub tags: usize,
    pub page_entries: usize,
    pub setup_seconds: f64,
    pub repetitions: usize,
    /// Median time to list every tag, following `Link`.
    pub list_seconds: f64,
    pub list_seconds_best: f64,
    pub requests_per_listing: u64,
    /// Every page within `n` entries.
    pub honours_page_size: bool,
    /// The tags came in lexical order, as the spec asks.
    pub sorted: bool,
}

impl TagsResult {
    /// What the server did that the spec does not ask for, if anything.
    pub fn deviations(&self) -> Option<String> {
        let mut d = Vec::new();
        if !self.honours_page_size {
            d.push("ignores n");
        }
        if !self.sorted {
            d.push("unsorted");
        }
        (!d.is_empty()).then(|| d.join(", "))
    }
}

/// Tags one manifest `count` times, then lists the tags page by page
/// (`n = page_entries`, following `Link`) `repetitions` times.
#[allow(clippy::too_many_arguments)]
pub async fn tags(
    addr: SocketAddr,
    image: Arc<Vec<Image>>,
    count: usize,
    page_entries: usize,
    repetitions: usize,
    setup_concurrency: usize,
    setup_limit: Duration,
) -> Result<Outcome<TagsResult>, BoxError> {
    const REPO: &str = "bench/tags";
    let mut client = Client::new(addr);
    let first = &image[0];
    ops::upload_blob(&mut client, REPO, &first.config, &first.config_digest).await?;
    ops::upload_blob(&mut client, REPO, &first.layer, &first.layer_digest).await?;
    let expected: Vec<String> = (0..count).map(|i| format!("t{i:06}")).collect();
    let expected = Arc::new(expected);

    let started = Instant::now();
    let ticket = Ticket::new(count, setup_limit);
    let done = Arc::new(AtomicUsize::new(0));
    run_workers(setup_concurrency, |_| {
        let (ticket, image, expected, done) = (
            ticket.clone(),
            image.clone(),
            expected.clone(),
            done.clone(),
        );
        async move {
            let mut client = Client::new(addr);
            while let Some(i) = ticket.take() {
                ops::put_manifest(&mut client, REPO, &expected[i], &image[0]).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    })
    .await?;
    let setup_seconds = started.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    if done < count {
        return Ok(Outcome::Unable(format!(
            "too slow: tagged {done} of {count} in {setup_seconds:.0} s"
        )));
    }

    let requests_max = (count / page_entries.max(1)) as u64 * 2 + 10;
    let mut times = Vec::new();
    let mut requests_per_listing = 0;
    let (mut honours_page_size, mut sorted_all) = (true, true);
    for _ in 0..repetitions {
        let t = Instant::now();
        let mut listed: Vec<String> = Vec::with_capacity(count);
        let mut path = Some(format!("/v2/{REPO}/tags/list?n={page_entries}"));
        let mut requests = 0u64;
        while let Some(p) = path.take() {
            requests += 1;
            if requests > requests_max {
                return Err(format!(
                    "tag listing: still following Link after {requests_max} pages"
                )
                .into());
            }
            let reply = client.call(hyper::Method::GET, &p, &[], None).await?;
            ops::expect_status(&reply, hyper::StatusCode::OK, &format!("GET {p}"))?;
            let page: serde_json::Value = serde_json::from_slice(&reply.body)
                .map_err(|e| format!("GET {p}: body is not JSON: {e}"))?;
            let tags = page["tags"]
                .as_array()
                .ok_or_else(|| format!("GET {p}: no tags array"))?;
            honours_page_size &= tags.len() <= page_entries;
            listed.extend(tags.iter().filter_map(|t| t.as_str().map(str::to_owned)));
            path = ops::next_link(&reply);
        }
        times.push(t.elapsed().as_secs_f64());
        requests_per_listing = requests;
        if listed.len() != count {
            return Ok(Outcome::Unable(format!(
                "incomplete: listed {} of {count} tags in {requests} requests",
                listed.len()
            )));
        }
        let mut sorted = listed.clone();
        sorted.sort();
        if sorted != *expected {
            return Err("tag listing: the tags listed are not the tags pushed".into());
        }
        sorted_all &= listed == sorted;
    }
    times.sort_by(f64::total_cmp);
    Ok(Outcome::Done(TagsResult {
        tags: count,
        page_entries,
        setup_seconds,
        repetitions,
        list_seconds: times[times.len() / 2],
        list_seconds_best: times[0],
        requests_per_listing,
        honours_page_size,
        sorted: sorted_all,
    }))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MixedResult {
    pub concurrency: usize,
    pub ops: u64,
    pub pulls: u64,
    pub pushes: u64,
    pub ops_per_second: f64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub time_capped: bool,
    pub spent: Spent,
}

/// 90% pulls of pushed images, 10% pushes of new ones (from
/// `fresh`), for `duration` or `max_ops`. Errors are counted, not fatal,
/// so one bad answer does not hide the rest; the run still fails at the
/// end if any occurred.
#[allow(clippy::too_many_arguments)]
pub async fn mixed(
    addr: SocketAddr,
    pid: u32,
    images: &Arc<Vec<Image>>,
    pushed: &Arc<Vec<Pushed>>,
    fresh: std::ops::Range<usize>,
    concurrency: usize,
    duration: Duration,
    max_ops: usize,
) -> Result<MixedResult, BoxError> {
    const FIRST_ERRORS_MAX: usize = 5;
    if pushed.is_empty() {
        return Err("nothing was pushed to read back".into());
    }
    let ticket = Ticket::new(max_ops, duration);
    let next_fresh = Arc::new(AtomicUsize::new(fresh.start));
    let window = Window::open(pid);
    let per_worker = run_workers(concurrency, |w| {
        let (ticket, images, pushed, next_fresh, fresh_end) = (
            ticket.clone(),
            images.clone(),
            pushed.clone(),
            next_fresh.clone(),
            fresh.end,
        );
        async move {
            let mut client = Client::new(addr);
            let mut rng = SmallRng::seed_from_u64(0x3142_0000 + w as u64);
            let (mut pulls, mut pushes, mut errors) = (0u64, 0u64, 0u64);
            let mut first_errors = Vec::new();
            while ticket.take().is_some() {
                let result = if rng.gen_range(0..10) == 0 {
                    let index = next_fresh.fetch_add(1, Ordering::Relaxed);
                    if index >= fresh_end {
                        break; // out of fresh images: the count bound
                    }
                    pushes += 1;
                    ops::push_image(
                        &mut client,
                        "bench/mixed",
                        &format!("m{index}"),
                        &images[index],
                        &mut ops::PushSteps::default(),
                    )
                    .await
                    .map(|_| ())
                } else {
                    pulls += 1;
                    let p = &pushed[rng.gen_range(0..pushed.len())];
                    let image = &images[p.image];
                    pull_image(&mut client, p, image).await
                };
                if let Err(e) = result {
                    errors += 1;
                    if first_errors.len() < FIRST_ERRORS_MAX {
                        first_errors.push(e.to_string());
                    }
                }
            }
            Ok((pulls, pushes, errors, first_errors))
        }
    })
    .await?;
    let spent = window.close();
    let (mut pulls, mut pushes, mut errors, mut first_errors) = (0, 0, 0, Vec::new());
    for (pl, ps, e, fe) in per_worker {
        pulls += pl;
        pushes += ps;
        errors += e;
        first_errors.extend(fe);
    }
    first_errors.truncate(FIRST_ERRORS_MAX);
    let ops = pulls + pushes - errors;
    Ok(MixedResult {
        concurrency,
        ops,
        pulls,
        pushes,
        ops_per_second: ops as f64 / spent.seconds,
        errors,
        first_errors,
        time_capped: ticket.time_capped(),
        spent,
    })
}

async fn pull_image(client: &mut Client, p: &Pushed, image: &Image) -> Result<(), BoxError> {
    ops::get_manifest(client, &p.repo, &p.tag, image).await?;
    ops::get_blob(client, &p.repo, &image.config_digest).await?;
    ops::get_blob(client, &p.repo, &image.layer_digest).await
}

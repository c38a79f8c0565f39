//! Kill test: concurrent clients push (monolithic and chunked uploads,
//! manifests by tag and by digest, tag moves, deletes) while the server is
//! SIGKILLed at random moments and restarted. After every restart:
//! - everything that was acknowledged is there, with identical bytes;
//! - what was in flight at the kill is either wholly there or wholly absent;
//! - nothing half-done is visible: every tagged manifest's blobs exist and
//!   hash to their digests;
//! - a chunked upload interrupted by the kill resumes from the offset the
//!   server reports, which is one the client sent, and completes.
//!
//! Short mode runs in the test suite; `FERRO_KILL_ROUNDS=300 cargo test
//! --release --test kill -- --nocapture` is the long mode.
mod common;

use ferro::storage::sim::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, sha256, TestServer};
use parking_lot::Mutex;
use reqwest::StatusCode;

const CLIENTS: usize = 6;
const TAGS: usize = 4;

/// What one client knows its repository must hold.
#[derive(Default)]
struct Model {
    /// Acknowledged blobs: digest → bytes.
    blobs: BTreeMap<String, Vec<u8>>,
    /// Acknowledged, not deleted manifests: digest → body.
    manifests: BTreeMap<String, Vec<u8>>,
    /// Tag → digest, for acknowledged tag states.
    tags: BTreeMap<String, String>,
    /// The operation in flight when the server died, if any.
    in_flight: Option<InFlight>,
    /// A chunked upload cut by the kill: location, bytes, offsets the
    /// server acknowledged, and the end of the chunk in flight.
    interrupted_upload: Option<InterruptedUpload>,
}

#[derive(Debug, Clone)]
enum InFlight {
    Blob {
        digest: String,
        bytes: Vec<u8>,
    },
    PutManifest {
        digest: String,
        body: Vec<u8>,
        tags: Vec<String>,
    },
    DeleteTag {
        tag: String,
    },
    DeleteManifest {
        digest: String,
    },
}

#[derive(Debug, Clone)]
struct InterruptedUpload {
    location: String,
    bytes: Vec<u8>,
    digest: String,
    acked: Vec<u64>,
    sent_to: u64,
}

fn repo(i: usize) -> String {
    format!("kill/c{i}")
}

/// An error means the server went away mid-request.
type Step<T> = Result<T, ()>;

async fn send(req: reqwest::RequestBuilder) -> Step<reqwest::Response> {
    req.timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|_| ())
}

fn expect(status: StatusCode, want: u16, what: &str) {
    assert_eq!(status.as_u16(), want, "{what}");
}

async fn push_blob_monolithic(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
) -> Step<String> {
    let digest = sha256(bytes);
    let r = send(
        c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .body(bytes.to_vec()),
    )
    .await?;
    expect(r.status(), 201, "monolithic upload");
    Ok(digest)
}

/// Chunked upload in 3 PATCHes + PUT. On a kill, leaves the interrupted
/// state in `model` and returns Err.
async fn push_blob_chunked(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
    model: &Mutex<Model>,
) -> Step<String> {
    let digest = sha256(bytes);
    let r = send(c.post(format!("{base}/v2/{repo}/blobs/uploads/"))).await?;
    expect(r.status(), 202, "start upload");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let cut = [0, bytes.len() / 3, 2 * bytes.len() / 3, bytes.len()];
    let mut acked = vec![0u64];
    for w in cut.windows(2) {
        let (a, b) = (w[0], w[1]);
        let interrupted = InterruptedUpload {
            location: location.clone(),
            bytes: bytes.to_vec(),
            digest: digest.clone(),
            acked: acked.clone(),
            sent_to: b as u64,
        };
        let r = send(
            c.patch(format!("{base}{location}"))
                .header("Content-Range", format!("{a}-{}", b - 1))
                .header("Content-Type", "application/octet-stream")
                .body(bytes[a..b].to_vec()),
        )
        .await;
        let Ok(r) = r else {
            model.lock().interrupted_upload = Some(interrupted);
            return Err(());
        };
        expect(r.status(), 202, "patch");
        assert_eq!(
            r.headers()["range"].to_str().unwrap(),
            format!("0-{}", b - 1)
        );
        acked.push(b as u64);
    }
    let r = send(c.put(format!("{base}{location}?digest={digest}"))).await;
    let Ok(r) = r else {
        // The closing PUT may or may not have landed: treat the blob as in flight.
        model.lock().in_flight = Some(InFlight::Blob {
            digest: digest.clone(),
            bytes: bytes.to_vec(),
        });
        return Err(());
    };
    expect(r.status(), 201, "closing put");
    Ok(digest)
}

fn image_manifest(config: &(String, usize), layer: &(String, usize), note: u64) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}],"annotations":{{"n":"{note}"}}}}"#,
        config.0, config.1, layer.0, layer.1
    )
    .into_bytes()
}

/// One client's work until the server dies or `stop` is set.
async fn client_loop(
    i: usize,
    base: String,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let c = client();
    let repo = repo(i);
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let op = rng.below(10);
        let result: Step<()> = async {
            match op {
                0..=5 => {
                    // A new image: config (monolithic) + layer (chunked or
                    // monolithic) + manifest by tag or by digest with ?tag=.
                    let config_len = 64 + rng.below(512) as usize;
                    let config = rng.bytes(config_len);
                    let layer_len = 1024 + rng.below(96 * 1024) as usize;
                    let layer = rng.bytes(layer_len);
                    model.lock().in_flight = Some(InFlight::Blob {
                        digest: sha256(&config),
                        bytes: config.clone(),
                    });
                    let cd = push_blob_monolithic(&c, &base, &repo, &config).await?;
                    model.lock().blobs.insert(cd.clone(), config.clone());
                    model.lock().in_flight = None;
                    let ld = if rng.below(2) == 0 {
                        model.lock().in_flight = Some(InFlight::Blob {
                            digest: sha256(&layer),
                            bytes: layer.clone(),
                        });
                        push_blob_monolithic(&c, &base, &repo, &layer).await?
                    } else {
                        push_blob_chunked(&c, &base, &repo, &layer, &model).await?
                    };
                    {
                        let mut m = model.lock();
                        m.blobs.insert(ld.clone(), layer.clone());
                        m.in_flight = None;
                    }
                    let body = image_manifest(&(cd, config.len()), &(ld, layer.len()), rng.next());
                    let digest = sha256(&body);
                    let tag = format!("t{}", rng.below(TAGS as u64));
                    let by_digest = rng.below(2) == 0;
                    let mut tags = vec![tag.clone()];
                    if by_digest && rng.below(2) == 0 {
                        tags.push(format!("t{}", rng.below(TAGS as u64)));
                    }
                    tags.sort();
                    tags.dedup();
                    model.lock().in_flight = Some(InFlight::PutManifest {
                        digest: digest.clone(),
                        body: body.clone(),
                        tags: tags.clone(),
                    });
                    let url = if by_digest {
                        let q: Vec<String> = tags.iter().map(|t| format!("tag={t}")).collect();
                        format!("{base}/v2/{repo}/manifests/{digest}?{}", q.join("&"))
                    } else {
                        format!("{base}/v2/{repo}/manifests/{tag}")
                    };
                    let r = send(
                        c.put(url)
                            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                            .body(body.clone()),
                    )
                    .await?;
                    expect(r.status(), 201, "manifest put");
                    let mut m = model.lock();
                    m.manifests.insert(digest.clone(), body);
                    for t in tags {
                        m.tags.insert(t, digest.clone());
                    }
                    m.in_flight = None;
                }
                6 | 7 => {
                    let tag = format!("t{}", rng.below(TAGS as u64));
                    let exists = model.lock().tags.contains_key(&tag);
                    if !exists {
                        return Ok(());
                    }
                    model.lock().in_flight = Some(InFlight::DeleteTag { tag: tag.clone() });
                    let r = send(c.delete(format!("{base}/v2/{repo}/manifests/{tag}"))).await?;
                    expect(r.status(), 202, "delete tag");
                    let mut m = model.lock();
                    m.tags.remove(&tag);
                    m.in_flight = None;
                }
                _ => {
                    let victim = {
                        let m = model.lock();
                        let keys: Vec<&String> = m.manifests.keys().collect();
                        if keys.is_empty() {
                            return Ok(());
                        }
                        keys[rng.below(keys.len() as u64) as usize].clone()
                    };
                    model.lock().in_flight = Some(InFlight::DeleteManifest {
                        digest: victim.clone(),
                    });
                    let r = send(c.delete(format!("{base}/v2/{repo}/manifests/{victim}"))).await?;
                    expect(r.status(), 202, "delete manifest");
                    let mut m = model.lock();
                    m.manifests.remove(&victim);
                    m.tags.retain(|_, d| *d != victim);
                    m.in_flight = None;
                }
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            return;
        }
    }
}

async fn get_bytes(c: &reqwest::Client, url: String) -> Option<Vec<u8>> {
    let r = c.get(url).send().await.expect("server is up during checks");
    match r.status().as_u16() {
        200 => Some(r.bytes().await.unwrap().to_vec()),
        404 => None,
        s => panic!("unexpected status {s}"),
    }
}

async fn tag_value(c: &reqwest::Client, base: &str, repo: &str, tag: &str) -> Option<String> {
    let r = c
        .head(format!("{base}/v2/{repo}/manifests/{tag}"))
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        200 => Some(
            r.headers()["docker-content-digest"]
                .to_str()
                .unwrap()
                .to_owned(),
        ),
        404 => None,
        s => panic!("unexpected status {s} for tag {tag}"),
    }
}

/// Checks one client's repository against its model after a restart, and
/// folds what was in flight into the model as observed.
async fn check(c: &reqwest::Client, base: &str, i: usize, model: &Mutex<Model>) {
    let repo = repo(i);
    let (in_flight, interrupted) = {
        let mut m = model.lock();
        (m.in_flight.take(), m.interrupted_upload.take())
    };
    // Resolve the operation in flight: wholly there or wholly absent.
    match in_flight {
        Some(InFlight::Blob { digest, bytes }) => {
            if let Some(got) = get_bytes(c, format!("{base}/v2/{repo}/blobs/{digest}")).await {
                assert_eq!(got, bytes, "in-flight blob present with wrong bytes");
                model.lock().blobs.insert(digest, bytes);
            }
        }
        Some(InFlight::PutManifest { digest, body, tags }) => {
            let present = get_bytes(c, format!("{base}/v2/{repo}/manifests/{digest}")).await;
            let mut observed = Vec::new();
            for t in &tags {
                observed.push(tag_value(c, base, &repo, t).await);
            }
            let mut m = model.lock();
            if let Some(got) = present {
                assert_eq!(got, body, "in-flight manifest present with wrong bytes");
                // All its tags moved in one entry, or none did.
                let all = observed.iter().all(|o| o.as_deref() == Some(&digest));
                let none = tags
                    .iter()
                    .zip(&observed)
                    .all(|(t, o)| o.as_ref() == m.tags.get(t));
                assert!(
                    all || (none && m.manifests.contains_key(&digest)),
                    "tags of one PUT moved partly"
                );
                if all {
                    m.manifests.insert(digest.clone(), body);
                    for t in tags {
                        m.tags.insert(t, digest.clone());
                    }
                }
            } else {
                for (t, o) in tags.iter().zip(&observed) {
                    assert_eq!(
                        o.as_ref(),
                        m.tags.get(t),
                        "tag moved to a manifest that is absent"
                    );
                }
            }
        }
        Some(InFlight::DeleteTag { tag }) => {
            let v = tag_value(c, base, &repo, &tag).await;
            let mut m = model.lock();
            match v {
                None => {
                    m.tags.remove(&tag);
                }
                Some(d) => assert_eq!(Some(&d), m.tags.get(&tag)),
            }
        }
        Some(InFlight::DeleteManifest { digest }) => {
            let present = get_bytes(c, format!("{base}/v2/{repo}/manifests/{digest}")).await;
            if present.is_none() {
                let mut m = model.lock();
                m.manifests.remove(&digest);
                m.tags.retain(|_, d| *d != digest);
            }
        }
        None => {}
    }
    // Everything acknowledged is there, byte for byte.
    let (blobs, manifests, tags) = {
        let m = model.lock();
        (m.blobs.clone(), m.manifests.clone(), m.tags.clone())
    };
    for (digest, bytes) in &blobs {
        let got = get_bytes(c, format!("{base}/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(
            got.as_ref(),
            Some(bytes),
            "acknowledged blob {digest} lost or changed"
        );
    }
    for (digest, body) in &manifests {
        let got = get_bytes(c, format!("{base}/v2/{repo}/manifests/{digest}")).await;
        assert_eq!(
            got.as_ref(),
            Some(body),
            "acknowledged manifest {digest} lost or changed"
        );
    }
    for t in 0..TAGS {
        let tag = format!("t{t}");
        let v = tag_value(c, base, &repo, &tag).await;
        assert_eq!(v.as_ref(), tags.get(&tag), "tag {tag} of {repo}");
    }
    // Nothing half-done: every tagged manifest's blobs are whole.
    for digest in tags.values().collect::<BTreeSet<_>>() {
        let body = manifests.get(digest).expect("tags point at live manifests");
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let mut refs = vec![v["config"]["digest"].as_str().unwrap().to_owned()];
        refs.extend(
            v["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_owned()),
        );
        for d in refs {
            let got = get_bytes(c, format!("{base}/v2/{repo}/blobs/{d}"))
                .await
                .expect("referenced blob exists");
            assert_eq!(sha256(&got), d, "blob bytes match their digest");
        }
    }
    // An interrupted chunked upload resumes from an offset the client sent.
    if let Some(u) = interrupted {
        let r = c.get(format!("{base}{}", u.location)).send().await.unwrap();
        if r.status() == 404 {
            // Only possible when not even the first PATCH... the session was
            // logged before any PATCH, so it must still exist.
            panic!("interrupted upload session vanished");
        }
        expect(r.status(), 204, "upload status after restart");
        let range = r.headers()["range"].to_str().unwrap().to_owned();
        let end: u64 = range.split('-').nth(1).unwrap().parse().unwrap();
        let offset = if range == "0-0" { 0 } else { end + 1 };
        assert!(
            u.acked.contains(&offset) || offset == u.sent_to,
            "resumed offset {offset} is neither acknowledged {:?} nor the chunk in flight (to {})",
            u.acked,
            u.sent_to
        );
        if (offset as usize) < u.bytes.len() {
            let r = c
                .patch(format!("{base}{}", u.location))
                .header("Content-Range", format!("{offset}-{}", u.bytes.len() - 1))
                .body(u.bytes[offset as usize..].to_vec())
                .send()
                .await
                .unwrap();
            expect(r.status(), 202, "resume patch");
        }
        let r = c
            .put(format!("{base}{}?digest={}", u.location, u.digest))
            .send()
            .await
            .unwrap();
        expect(r.status(), 201, "resume close");
        let got = get_bytes(c, format!("{base}/v2/{repo}/blobs/{}", u.digest)).await;
        assert_eq!(got.as_ref(), Some(&u.bytes));
        model.lock().blobs.insert(u.digest, u.bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let rounds: u64 = std::env::var("FERRO_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let models: Vec<Arc<Mutex<Model>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let mut rng = Rng(0x5eed);
    let c = client();
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let base = format!("http://{}", server.addr);
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                tokio::spawn(client_loop(
                    i,
                    base.clone(),
                    models[i].clone(),
                    stop.clone(),
                    rng.next(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("client task");
        }
        server = server.restart();
        let base = format!("http://{}", server.addr);
        for (i, m) in models.iter().enumerate() {
            check(&c, &base, i, m).await;
        }
        if round % 10 == 0 {
            eprintln!("round {round}: ok");
        }
    }
    let total: usize = models
        .iter()
        .map(|m| {
            let m = m.lock();
            m.blobs.len() + m.manifests.len()
        })
        .sum();
    eprintln!("{rounds} kills survived; {total} acknowledged objects verified");
    assert!(total > 0, "the clients got work acknowledged");
}

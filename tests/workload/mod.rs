//! The kill tests' workload and checker, shared by the SIGKILL test
//! (`tests/kill.rs`) and the power-loss test over LazyFS
//! (`tests/powerloss_lazyfs.rs`): concurrent clients, each on its own
//! repository, push images (monolithic, single-POST and chunked uploads,
//! manifests by tag and by digest with `?tag=`), move and delete tags,
//! delete manifests, mount blobs into a second repository and run garbage
//! collections, and remember what the server acknowledged; after a restart
//! [`check`] verifies every acknowledged operation byte for byte, resolves
//! the one in flight (wholly there or wholly absent) and resumes an
//! interrupted chunked upload from the offset the server reports.
//!
//! The checks panic with a message naming what failed; a harness that
//! must tell its instrument's failures apart runs them in a task.
#![allow(dead_code)] // each test binary uses a different part of it

use ferro::storage::sim::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reqwest::StatusCode;

use crate::common::sha256;

pub const CLIENTS: usize = 6;
const TAGS: usize = 4;

/// What one client knows its repository must hold.
#[derive(Default)]
pub struct Model {
    /// Acknowledged blobs: digest → bytes.
    blobs: BTreeMap<String, Vec<u8>>,
    /// Acknowledged, not deleted manifests: digest → body.
    manifests: BTreeMap<String, Vec<u8>>,
    /// Tag → digest, for acknowledged tag states.
    tags: BTreeMap<String, String>,
    /// Blobs acknowledged as mounted into the mirror repository.
    mounted: BTreeMap<String, Vec<u8>>,
    /// Operations acknowledged (uploads, manifest puts, deletes, mounts,
    /// collections), for reports.
    pub acknowledged: u64,
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
    Mount {
        digest: String,
        bytes: Vec<u8>,
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

/// Where client `i` mounts its blobs.
fn mirror(i: usize) -> String {
    format!("kill/c{i}/mirror")
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

/// `POST` then one `PUT` with the whole blob (the spec's monolithic push).
async fn push_blob_post_put(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
) -> Step<String> {
    let digest = sha256(bytes);
    let r = send(c.post(format!("{base}/v2/{repo}/blobs/uploads/"))).await?;
    expect(r.status(), 202, "start upload");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = send(
        c.put(format!("{base}{location}?digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec()),
    )
    .await?;
    expect(r.status(), 201, "monolithic put");
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
        // The closing PUT may or may not have landed: the blob is in
        // flight, and the upload, whose chunks were all acknowledged, must
        // be completed or resumable.
        let mut m = model.lock();
        m.in_flight = Some(InFlight::Blob {
            digest: digest.clone(),
            bytes: bytes.to_vec(),
        });
        m.interrupted_upload = Some(InterruptedUpload {
            location,
            bytes: bytes.to_vec(),
            digest,
            acked,
            sent_to: bytes.len() as u64,
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
pub async fn client_loop(
    i: usize,
    base: String,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let c = client_with_timeout(Duration::from_secs(30));
    let repo = repo(i);
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let op = rng.below(12);
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
                    let ld = match rng.below(3) {
                        0 => {
                            model.lock().in_flight = Some(InFlight::Blob {
                                digest: sha256(&layer),
                                bytes: layer.clone(),
                            });
                            push_blob_monolithic(&c, &base, &repo, &layer).await?
                        }
                        1 => {
                            model.lock().in_flight = Some(InFlight::Blob {
                                digest: sha256(&layer),
                                bytes: layer.clone(),
                            });
                            push_blob_post_put(&c, &base, &repo, &layer).await?
                        }
                        _ => push_blob_chunked(&c, &base, &repo, &layer, &model).await?,
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
                    m.acknowledged += 3;
                }
                9 => {
                    // Mount one of this client's blobs into its mirror.
                    let picked = {
                        let m = model.lock();
                        let keys: Vec<(&String, &Vec<u8>)> = m.blobs.iter().collect();
                        if keys.is_empty() {
                            return Ok(());
                        }
                        let (d, b) = keys[rng.below(keys.len() as u64) as usize];
                        (d.clone(), b.clone())
                    };
                    let (digest, bytes) = picked;
                    model.lock().in_flight = Some(InFlight::Mount {
                        digest: digest.clone(),
                        bytes: bytes.clone(),
                    });
                    let r = send(c.post(format!(
                        "{base}/v2/{}/blobs/uploads/?mount={digest}&from={repo}",
                        mirror(i)
                    )))
                    .await?;
                    expect(r.status(), 201, "mount");
                    let mut m = model.lock();
                    m.mounted.insert(digest, bytes);
                    m.in_flight = None;
                    m.acknowledged += 1;
                }
                10 => {
                    // A garbage collection now (its grace period keeps
                    // every blob of this workload; it logs its run).
                    let r = send(c.post(format!("{base}/v2/_ferro/gc/run"))).await?;
                    assert!(
                        matches!(r.status().as_u16(), 200 | 409),
                        "gc run: {}",
                        r.status()
                    );
                    if r.status() == 200 {
                        model.lock().acknowledged += 1;
                    }
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
                    m.acknowledged += 1;
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
                    m.acknowledged += 1;
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
pub async fn check(c: &reqwest::Client, base: &str, i: usize, model: &Mutex<Model>) {
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
        Some(InFlight::Mount { digest, bytes }) => {
            let url = format!("{base}/v2/{}/blobs/{digest}", mirror(i));
            if let Some(got) = get_bytes(c, url).await {
                assert_eq!(got, bytes, "in-flight mount present with wrong bytes");
                model.lock().mounted.insert(digest, bytes);
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
    let (blobs, manifests, tags, mounted) = {
        let m = model.lock();
        (
            m.blobs.clone(),
            m.manifests.clone(),
            m.tags.clone(),
            m.mounted.clone(),
        )
    };
    for (digest, bytes) in &mounted {
        let got = get_bytes(c, format!("{base}/v2/{}/blobs/{digest}", mirror(i))).await;
        assert_eq!(
            got.as_ref(),
            Some(bytes),
            "acknowledged mount of {digest} lost or changed"
        );
    }
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
            // The session was logged before any PATCH: gone, it must have
            // been completed (its closing PUT landed before the cut).
            let got = get_bytes(c, format!("{base}/v2/{repo}/blobs/{}", u.digest)).await;
            assert_eq!(
                got.as_ref(),
                Some(&u.bytes),
                "an upload with acknowledged chunks ({:?}) is neither resumable nor completed",
                u.acked
            );
            model.lock().blobs.insert(u.digest, u.bytes);
            return;
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
        assert_eq!(got.as_ref(), Some(&u.bytes), "resumed upload's blob");
        model.lock().blobs.insert(u.digest, u.bytes);
    }
}

impl Model {
    /// Whether a chunked upload was cut (the next check resumes it).
    pub fn has_interrupted_upload(&self) -> bool {
        self.interrupted_upload.is_some()
    }
}

/// What `model` holds that a check verifies: blobs, manifests, tags, mounts.
pub fn objects(model: &Mutex<Model>) -> usize {
    let m = model.lock();
    m.blobs.len() + m.manifests.len() + m.tags.len() + m.mounted.len()
}

/// A client that gives up on a request after `timeout` (a request to a
/// server whose file system hangs must not hang the test).
pub fn client_with_timeout(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .expect("client")
}

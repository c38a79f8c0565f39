//! Harness of the mirror tests: a fault proxy in front of a real upstream
//! (it counts blob GETs, and can answer a status of its choosing, hold an
//! answer back or send a body slowly: faults a real registry cannot be
//! made to produce), Debian's `docker-registry` started on loopback, and
//! helpers to push layered images to an upstream.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::json;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// What the proxy does, changed by the test as it goes.
#[derive(Default)]
pub struct ProxyState {
    pub upstream: Mutex<String>,
    /// Non-zero: every request is answered with this status.
    pub fault: AtomicU16,
    /// Blob GETs seen (forwarded or not).
    pub blob_gets: AtomicUsize,
    /// Held back this long before a blob GET is forwarded.
    pub blob_delay_ms: AtomicU64,
    /// Blob bodies sent 64 KiB at a time, 5 ms apart.
    pub throttle: AtomicBool,
}

/// A fault proxy on a loopback port.
pub struct Proxy {
    pub url: String,
    pub state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let state = Arc::new(ProxyState::default());
        *state.upstream.lock().unwrap() = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy { url, state, task }
    }

    pub fn fault(&self, status: u16) {
        self.state.fault.store(status, Ordering::SeqCst);
    }

    pub fn blob_gets(&self) -> usize {
        self.state.blob_gets.load(Ordering::SeqCst)
    }
}

async fn forward(State(state): State<Arc<ProxyState>>, req: Request) -> Response {
    let is_blob_get =
        req.method() == axum::http::Method::GET && req.uri().path().contains("/blobs/");
    if is_blob_get {
        state.blob_gets.fetch_add(1, Ordering::SeqCst);
    }
    let fault = state.fault.load(Ordering::SeqCst);
    if fault != 0 {
        let status = StatusCode::from_u16(fault).unwrap();
        let body = json!({"errors": [{"code": "TOOMANYREQUESTS", "message": "injected fault"}]});
        return (status, axum::Json(body)).into_response();
    }
    if is_blob_get {
        let delay = state.blob_delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let upstream = state.upstream.lock().unwrap().clone();
    let url = format!(
        "{upstream}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
    let mut out = http.request(method, url);
    for (k, v) in req.headers() {
        if k != "host" {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap();
    let answer = match out.body(body).send().await {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut r = Response::builder().status(answer.status().as_u16());
    for (k, v) in answer.headers() {
        if k != "transfer-encoding" && k != "connection" {
            r = r.header(k.as_str(), HeaderValue::from_bytes(v.as_bytes()).unwrap());
        }
    }
    let throttle = is_blob_get && state.throttle.load(Ordering::SeqCst);
    let stream = answer.bytes_stream().flat_map(move |chunk| {
        let pieces: Vec<Result<bytes::Bytes, reqwest::Error>> = match chunk {
            Ok(c) if throttle => (0..c.len())
                .step_by(64 * 1024)
                .map(|i| Ok(c.slice(i..(i + 64 * 1024).min(c.len()))))
                .collect(),
            other => vec![other],
        };
        futures_util::stream::iter(pieces).then(move |p| async move {
            if throttle {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            p
        })
    });
    r.body(Body::from_stream(stream)).unwrap()
}

pub fn sha256(bytes: &[u8]) -> String {
    ferro::oci::Digest::sha256_of(bytes).to_string()
}

/// Pushes `layers` and a config as blobs, then an image manifest over
/// them as `repo:tag`; returns the manifest's digest. `basic` signs the
/// requests (ferro accepts Basic on the API under token auth too).
pub async fn push_image(
    base: &str,
    repo: &str,
    tag: &str,
    layers: &[&[u8]],
    basic: Option<(&str, &str)>,
) -> String {
    let http = reqwest::Client::new();
    let sign = |r: reqwest::RequestBuilder| match basic {
        Some((u, p)) => r.basic_auth(u, Some(p)),
        None => r,
    };
    let config = format!("{{\"tag\":\"{tag}\",\"layers\":{}}}", layers.len()).into_bytes();
    let mut blobs: Vec<&[u8]> = vec![&config];
    blobs.extend_from_slice(layers);
    for b in &blobs {
        // POST then PUT: docker-registry takes no `POST ?digest=`.
        let r = sign(http.post(format!("{base}/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "upload start: {}", r.text().await.unwrap());
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("{base}{location}")
        };
        let join = if location.contains('?') { '&' } else { '?' };
        let r = sign(
            http.put(format!("{location}{join}digest={}", sha256(b)))
                .header("Content-Type", "application/octet-stream")
                .body(b.to_vec()),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 201, "blob put: {}", r.text().await.unwrap());
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(l), "size": l.len()})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let r = sign(
        http.put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest.clone()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201, "manifest put: {}", r.text().await.unwrap());
    sha256(&manifest)
}

/// Bytes that do not compress and differ by seed.
pub fn layer(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A free loopback port (for programs that cannot be told to pick one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's `docker-registry` (distribution 2.8) on loopback, with an
/// htpasswd file: its clients sign in with Basic. Killed on drop.
pub struct DockerRegistry {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

impl DockerRegistry {
    pub fn available() -> bool {
        std::path::Path::new(DOCKER_REGISTRY).exists()
    }

    pub fn start(user: &str, password: &str) -> DockerRegistry {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(
            &htpasswd,
            format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap()),
        )
        .unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("data").display(),
                htpasswd.display()
            ),
        )
        .unwrap();
        let child = Command::new(DOCKER_REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        DockerRegistry {
            child,
            url,
            _dir: dir,
        }
    }
}

/// A mirror's config file: `prefix` mirrors `upstream` (with `extra`
/// lines in the `[[mirrors]]` table and `upstream_extra` in its upstream).
pub fn mirror_config(
    dir: &std::path::Path,
    upstream: &str,
    extra: &str,
    upstream_extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("mirror.toml");
    std::fs::write(
        &path,
        format!(
            "[[mirrors]]\nprefix = \"hub/\"\n{extra}\n[[mirrors.upstreams]]\nurl = \"{upstream}\"\n{upstream_extra}\n"
        ),
    )
    .unwrap();
    path
}

//! Harness for the access-control, TLS and operations tests: the real
//! `ferro` binary started with a config file (and flags, and environment
//! variables), over plain HTTP or TLS, text or JSON logs; helpers to push
//! with credentials and to make htpasswd files and certificates.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

pub const FERRO: &str = env!("CARGO_BIN_EXE_ferro");
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A running `ferro serve`, killed on drop.
pub struct Ferro {
    pub child: Child,
    /// `http://127.0.0.1:port` or `https://…`.
    pub url: String,
    pub addr: String,
    pub data_dir: PathBuf,
    /// Every line the server wrote to stderr so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

/// The URL in a "listening on <url>" line, text or JSON.
fn listening_url(line: &str) -> Option<String> {
    let i = line.find("listening on ")?;
    let rest = &line[i + "listening on ".len()..];
    let end = rest
        .find(|c: char| c == '"' || c.is_whitespace())
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

impl Ferro {
    /// Starts a server on `data_dir` with the config file `config` (if
    /// any), extra flags and environment variables, on a free port.
    pub fn start(
        data_dir: &Path,
        config: Option<&Path>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Ferro {
        let mut all: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        if let Some(c) = config {
            all.push("--config".into());
            all.push(c.display().to_string());
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn(data_dir, all, envs)
    }

    fn spawn(data_dir: &Path, args: Vec<String>, envs: Vec<(String, String)>) -> Ferro {
        let mut child = Command::new(FERRO)
            .args(&args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferro");
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = listening_url(&line) {
                    let _ = tx.send(url);
                }
                keep.lock().unwrap().push(line);
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ferro did not start; its output:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        let addr = url.split("://").nth(1).expect("scheme://addr").to_owned();
        Ferro {
            child,
            url,
            addr,
            data_dir: data_dir.to_owned(),
            lines,
            args,
            envs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn log_text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM; waits for the exit (at most `timeout`), returns its status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ferro did not exit within {timeout:?} of SIGTERM; its output:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again, same data directory, flags and environment (on a new
    /// port: the old one may still be in TIME_WAIT).
    pub fn restart(mut self) -> Ferro {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let args = std::mem::take(&mut self.args);
        let envs = std::mem::take(&mut self.envs);
        Self::spawn(&self.data_dir.clone(), args, envs)
    }
}

impl Drop for Ferro {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An htpasswd file line per user, bcrypt (cost 4: tests, not security).
pub fn htpasswd(users: &[(&str, &str)]) -> String {
    users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).expect("bcrypt")))
        .collect()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn sha256(bytes: &[u8]) -> String {
    ferro::oci::Digest::sha256_of(bytes).to_string()
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Cred<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

pub fn with_cred(req: reqwest::RequestBuilder, cred: Cred) -> reqwest::RequestBuilder {
    match cred {
        Cred::None => req,
        Cred::Basic(u, p) => req.basic_auth(u, Some(p)),
        Cred::Bearer(t) => req.bearer_auth(t),
    }
}

pub async fn send(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    cred: Cred<'_>,
) -> reqwest::Response {
    with_cred(http.request(method, format!("{base}{path}")), cred)
        .send()
        .await
        .expect("request")
}

/// Pushes a blob with `POST ?digest=`; returns the response.
pub async fn push_blob(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
    cred: Cred<'_>,
) -> reqwest::Response {
    let digest = sha256(bytes);
    with_cred(
        http.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec()),
        cred,
    )
    .send()
    .await
    .expect("POST blob")
}

/// A small image manifest over a config and one layer, both pushed first;
/// returns (status of the manifest PUT, manifest digest).
pub async fn push_image(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    seed: &str,
    cred: Cred<'_>,
) -> (StatusCode, String) {
    let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer of {seed}").into_bytes();
    for b in [&config, &layer] {
        let r = push_blob(http, base, repo, b, cred).await;
        if r.status() != StatusCode::CREATED {
            return (r.status(), String::new());
        }
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let r = with_cred(
        http.put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest.clone()),
        cred,
    )
    .send()
    .await
    .expect("PUT manifest");
    (r.status(), sha256(&manifest))
}

/// The spec error body's first code.
pub async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.expect("JSON error body");
    v["errors"][0]["code"]
        .as_str()
        .expect("code is a string")
        .to_owned()
}

pub fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

/// A CA and a server certificate it signed, for 127.0.0.1 and localhost,
/// written to `dir` as ca.crt, server.crt and server.key.
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ferro test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server = params
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server certificate");
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, server.pem()).unwrap();
    std::fs::write(&key_path, server_key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

/// Whether a program runs (`program args` exits 0).
pub fn available(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `FERRO_REQUIRE_INTEROP=1` turns a missing real client into a failure.
pub fn interop_required() -> bool {
    std::env::var_os("FERRO_REQUIRE_INTEROP").is_some_and(|v| v == "1")
}

pub fn skip_or_fail(what: &str) {
    assert!(
        !interop_required(),
        "{what} is not installed but FERRO_REQUIRE_INTEROP=1"
    );
    eprintln!("skipping: {what} is not installed");
}

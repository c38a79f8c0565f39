//! TLS with a certificate generated here (a test CA and a server
//! certificate signed by it, rcgen): a verified HTTPS handshake, a large
//! blob pushed and pulled over it (TLS copies through rustls, where plain
//! HTTP sends large blobs with `sendfile`), and skopeo
//! pushing and pulling with `--creds` over TLS, verifying the server with
//! the CA through `--dest-cert-dir`/`--src-cert-dir` (no
//! `--tls-verify=false`), under both Basic and token authentication.
//! skopeo tests skip when it is missing unless FERRO_REQUIRE_INTEROP=1.
mod auth_support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use auth_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn start(dir: &Path, scheme: &str) -> Ferro {
    let (_, cert, key) = make_certificates(dir);
    let htpasswd = dir.join("htpasswd");
    std::fs::write(
        &htpasswd,
        auth_support::htpasswd(&[("alice", "a-pass"), ("bob", "b-pass")]),
    )
    .unwrap();
    let config = dir.join("ferro.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[tls]
cert = "{}"
key = "{}"

[auth]
scheme = "{scheme}"
htpasswd = "{}"

[[auth.rules]]
users = ["alice"]
repositories = ["**"]
actions = ["*"]

[[auth.rules]]
users = ["bob"]
repositories = ["**"]
actions = ["pull"]
"#,
            cert.display(),
            key.display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    Ferro::start(&dir.join("data"), Some(&config), &[], &[])
}

/// One HTTPS request, verifying the server against `ca`.
async fn https_get(addr: &str, ca: &Path, path: &str) -> String {
    let out = https_request(addr, ca, "GET", path, &[], &[]).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One HTTPS request with extra header lines and a body, verifying the
/// server against `ca`: the whole answer, head and body, as sent.
async fn https_request(
    addr: &str,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_file_iter(ca).unwrap() {
        let cert: rustls_pki_types::CertificateDer = cert.unwrap();
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("verified handshake");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    out
}

/// The head (as text) and the body of an answer.
fn split_answer(answer: &[u8]) -> (String, &[u8]) {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    (
        String::from_utf8_lossy(&answer[..end]).into_owned(),
        &answer[end + 4..],
    )
}

/// A blob of several 4 MiB pieces and an odd length, pushed and pulled
/// over TLS, whole and by range: the mapped pieces go through rustls.
#[tokio::test]
async fn a_large_blob_over_tls() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "basic");
    let ca = dir.path().join("ca.crt");
    let auth = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:a-pass")
    );
    let mut bytes = vec![0u8; 3 * 4 * 1024 * 1024 + 4321];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let digest = ferro::oci::Digest::sha256_of(&bytes).to_string();
    let pushed = https_request(
        &server.addr,
        &ca,
        "POST",
        &format!("/v2/big/blobs/uploads/?digest={digest}"),
        &[&auth, "Content-Type: application/octet-stream"],
        &bytes,
    )
    .await;
    let (head, _) = split_answer(&pushed);
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let path = format!("/v2/big/blobs/{digest}");
    let answer = https_request(&server.addr, &ca, "GET", &path, &[&auth], &[]).await;
    let (head, body) = split_answer(&answer);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), bytes.len());
    assert!(body == bytes, "every byte over TLS");
    assert_eq!(ferro::oci::Digest::sha256_of(body).to_string(), digest);
    let (start, end) = (4 * 1024 * 1024 - 3, 2 * 4 * 1024 * 1024 + 5);
    let range = format!("Range: bytes={start}-{end}");
    let answer = https_request(&server.addr, &ca, "GET", &path, &[&auth, &range], &[]).await;
    let (head, body) = split_answer(&answer);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(body == &bytes[start..=end], "a range over TLS");
}

#[tokio::test]
async fn https_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "basic");
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let ca = dir.path().join("ca.crt");
    let answer = https_get(&server.addr, &ca, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = https_get(&server.addr, &ca, "/v2/").await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("www-authenticate: Basic realm=\"ferro\""),
        "{answer}"
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = client()
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// skopeo with the common flags: no host policy file needed.
fn skopeo(args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo")
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn skopeo_round_trip(scheme: &str) {
    if !available("skopeo", &["--version"]) {
        return skip_or_fail("skopeo");
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), scheme);
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(dir.path().join("ca.crt"), certs.join("ca.crt")).unwrap();
    let certs = certs.display().to_string();
    let layouts = dir.path().join("layouts");
    let made = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/make_layouts.py"
        ))
        .arg(&layouts)
        .output()
        .unwrap();
    ok(&made, "make_layouts.py");
    let digests: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    let single = digests["single"]["manifest"].as_str().unwrap().to_owned();
    let src = format!("oci:{}/single:latest", layouts.display());
    let dest = format!("docker://{}/team/app:v1", server.addr);

    // Wrong password: refused. Pull-only user: refused.
    let out = skopeo(&[
        "copy",
        "-q",
        "--dest-cert-dir",
        &certs,
        "--dest-creds",
        "alice:wrong",
        &src,
        &dest,
    ]);
    assert!(!out.status.success(), "a wrong password must not push");
    let out = skopeo(&[
        "copy",
        "-q",
        "--dest-cert-dir",
        &certs,
        "--dest-creds",
        "bob:b-pass",
        &src,
        &dest,
    ]);
    assert!(!out.status.success(), "a pull-only user must not push");
    // No --creds at all: refused too.
    let out = skopeo(&["copy", "-q", "--dest-cert-dir", &certs, &src, &dest]);
    assert!(!out.status.success(), "an anonymous client must not push");

    let out = skopeo(&[
        "copy",
        "-q",
        "--preserve-digests",
        "--dest-cert-dir",
        &certs,
        "--dest-creds",
        "alice:a-pass",
        &src,
        &dest,
    ]);
    ok(&out, "skopeo copy to the registry over TLS");
    let out = skopeo(&[
        "inspect",
        "--cert-dir",
        &certs,
        "--creds",
        "bob:b-pass",
        &dest,
    ]);
    ok(&out, "skopeo inspect");
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["Digest"], single.as_str());
    let back = dir.path().join("back");
    let out = skopeo(&[
        "copy",
        "-q",
        "--preserve-digests",
        "--src-cert-dir",
        &certs,
        "--src-creds",
        "bob:b-pass",
        &dest,
        &format!("oci:{}:v1", back.display()),
    ]);
    ok(&out, "skopeo copy from the registry over TLS");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], single.as_str());
    let out = skopeo(&[
        "list-tags",
        "--cert-dir",
        &certs,
        "--creds",
        "bob:b-pass",
        &format!("docker://{}/team/app", server.addr),
    ]);
    ok(&out, "skopeo list-tags");
    assert!(String::from_utf8_lossy(&out.stdout).contains("v1"));
    // The log records alice as the pusher.
    let feed = Command::new("curl")
        .args([
            "-sf",
            "--cacert",
            &format!("{}/ca.crt", dir.path().display()),
            "-u",
            "alice:a-pass",
        ])
        .arg(format!(
            "{}/v2/team/app/_ferro/history/repository",
            server.url
        ))
        .output();
    if let Ok(feed) = feed {
        if scheme == "basic" && feed.status.success() {
            let text = String::from_utf8_lossy(&feed.stdout);
            assert!(text.contains("\"alice\""), "{text}");
        }
    }
}

#[test]
fn skopeo_with_creds_over_tls_and_tokens() {
    skopeo_round_trip("token");
}

#[test]
fn skopeo_with_creds_over_tls_and_basic() {
    skopeo_round_trip("basic");
}

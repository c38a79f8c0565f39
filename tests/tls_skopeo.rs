//! TLS with a certificate generated here (a test CA and a server
//! certificate signed by it, rcgen): a verified HTTPS handshake, and skopeo
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
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
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

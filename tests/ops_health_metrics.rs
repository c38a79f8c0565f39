//! Health, readiness and metrics with real values; request ids in and
//! out and in the log lines of their request; JSON logs; settings from
//! FERRO_* variables; `ferro config --print-defaults` complete.
mod auth_support;
mod common;

use std::time::Duration;

use auth_support::*;
use common::metrics_sample as sample;
use reqwest::{Method, StatusCode};

async fn metrics(http: &reqwest::Client, server: &Ferro) -> String {
    let r = send(http, &server.url, Method::GET, "/metrics", Cred::None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "content-type").starts_with("text/plain"));
    r.text().await.unwrap()
}

#[tokio::test]
async fn health_readiness_and_metrics_move_with_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(dir.path(), None, &[], &[]);
    let http = client();
    let r = send(&http, &server.url, Method::GET, "/healthz", Cred::None).await;
    assert_eq!(
        (r.status(), r.text().await.unwrap().as_str()),
        (StatusCode::OK, "ok")
    );
    let r = send(&http, &server.url, Method::GET, "/readyz", Cred::None).await;
    assert_eq!(
        (r.status(), r.text().await.unwrap().as_str()),
        (StatusCode::OK, "ready")
    );

    let before = metrics(&http, &server).await;
    assert_eq!(sample(&before, "ferro_ready", &[]), Some(1.0));
    assert_eq!(sample(&before, "ferro_state_repositories", &[]), Some(0.0));
    assert!(sample(&before, "ferro_startup_replay_seconds", &[]).is_some());
    assert!(sample(&before, "ferro_startup_seconds", &[]).is_some());
    let records_before = sample(&before, "ferro_log_records_total", &[]).unwrap();
    let fsyncs_before = sample(&before, "ferro_log_fsync_seconds_count", &[]).unwrap();

    let (status, _) = push_image(&http, &server.url, "app", "v1", "m", Cred::None).await;
    assert_eq!(status, StatusCode::CREATED);
    let big = vec![7u8; 300_000];
    assert_eq!(
        push_blob(&http, &server.url, "app", &big, Cred::None)
            .await
            .status(),
        StatusCode::CREATED
    );
    for _ in 0..3 {
        let r = send(
            &http,
            &server.url,
            Method::GET,
            &format!("/v2/app/blobs/{}", sha256(&big)),
            Cred::None,
        )
        .await;
        assert_eq!(r.bytes().await.unwrap().len(), big.len());
    }
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/app/manifests/nope",
        Cred::None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let after = metrics(&http, &server).await;
    assert_eq!(sample(&after, "ferro_state_repositories", &[]), Some(1.0));
    assert_eq!(sample(&after, "ferro_state_tags", &[]), Some(1.0));
    assert_eq!(sample(&after, "ferro_state_manifests", &[]), Some(1.0));
    assert_eq!(sample(&after, "ferro_state_blobs", &[]), Some(3.0));
    assert!(sample(&after, "ferro_log_records_total", &[]).unwrap() >= records_before + 4.0);
    assert!(sample(&after, "ferro_log_fsync_seconds_count", &[]).unwrap() > fsyncs_before);
    assert!(sample(&after, "ferro_log_fsync_seconds_sum", &[]).unwrap() > 0.0);
    assert!(sample(&after, "ferro_log_group_commits_total", &[]).unwrap() >= 4.0);
    assert!(sample(&after, "ferro_log_group_commit_records_max", &[]).unwrap() >= 1.0);
    // Histograms: every group commit of at most 1024 records, and each
    // fsync under a minute, are in the top bucket.
    assert!(sample(&after, "ferro_log_group_commit_records_count", &[]).unwrap() >= 4.0);
    assert_eq!(
        sample(
            &after,
            "ferro_log_group_commit_records_bucket",
            &["le=\"1024\""]
        ),
        sample(&after, "ferro_log_group_commit_records_count", &[])
    );
    assert!(
        sample(&after, "ferro_log_fsync_seconds_bucket", &["le=\"+Inf\""]).unwrap() > fsyncs_before
    );
    assert!(sample(&after, "ferro_log_appended_bytes_total", &[]).unwrap() > 0.0);
    assert_eq!(
        sample(
            &after,
            "ferro_http_requests_total",
            &["route=\"manifest\"", "method=\"PUT\"", "status=\"201\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "ferro_http_requests_total",
            &["route=\"manifest\"", "method=\"GET\"", "status=\"404\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "ferro_http_requests_total",
            &["route=\"blob\"", "method=\"GET\"", "status=\"200\""]
        ),
        Some(3.0)
    );
    assert!(sample(&after, "ferro_http_requests_total", &["route=\"metrics\""]).unwrap() >= 1.0);
    assert!(sample(&after, "ferro_http_request_bytes_total", &[]).unwrap() >= big.len() as f64);
    assert!(
        sample(&after, "ferro_http_response_bytes_total", &[]).unwrap() >= 3.0 * big.len() as f64
    );
    assert!(
        sample(
            &after,
            "ferro_http_request_duration_seconds_count",
            &["route=\"blob\"", "method=\"GET\""]
        )
        .unwrap()
            >= 3.0
    );
    assert!(
        after.contains("ferro_http_request_duration_seconds_bucket{"),
        "a histogram"
    );
    // The in-flight gauge counts this very scrape at most.
    assert!(sample(&after, "ferro_http_requests_in_flight", &[]).unwrap() <= 1.0);
}

#[tokio::test]
async fn request_ids_in_and_out_and_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(dir.path(), None, &["--access-log"], &[]);
    let http = client();
    let r = http
        .get(server.url("/v2/nothing/manifests/here"))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&r, "x-request-id"), "req-abc-123");
    let r = http.get(server.url("/v2/")).send().await.unwrap();
    let made = header(&r, "x-request-id");
    let next = header(
        &client().get(server.url("/v2/")).send().await.unwrap(),
        "x-request-id",
    );
    assert!(
        !made.is_empty() && made != next,
        "ids are made, and differ: {made} {next}"
    );
    assert!(server.wait_for_log("req-abc-123", Duration::from_secs(5)));
    let line = server
        .log_text()
        .lines()
        .find(|l| l.contains("req-abc-123"))
        .unwrap()
        .to_owned();
    assert!(line.contains("status=404"), "{line}");
    assert!(line.contains("path=/v2/nothing/manifests/here"), "{line}");
}

#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(
        dir.path(),
        None,
        &["--log-format", "json", "--access-log"],
        &[],
    );
    let http = client();
    let r = http
        .put(server.url("/v2/app/manifests/v1"))
        .header("x-request-id", "json-req-7")
        .header("content-type", OCI_MANIFEST)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(server.wait_for_log("json-req-7", Duration::from_secs(5)));
    for line in server.log_text().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if line.contains("json-req-7") {
            assert_eq!(v["span"]["id"], "json-req-7", "{line}");
            assert_eq!(v["span"]["method"], "PUT", "{line}");
        }
    }
}

#[tokio::test]
async fn settings_from_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("users");
    std::fs::write(&htpasswd, auth_support::htpasswd(&[("ops", "pw")])).unwrap();
    let server = Ferro::start(
        &dir.path().join("data"),
        None,
        &[],
        &[
            ("FERRO_AUTH__SCHEME", "basic"),
            ("FERRO_AUTH__HTPASSWD", htpasswd.to_str().unwrap()),
            ("FERRO_LIMITS__MANIFEST_BYTES_MAX", "100"),
            ("FERRO_REQUIRE_INTEROP", "1"),
        ],
    );
    let http = client();
    let r = send(&http, &server.url, Method::GET, "/v2/", Cred::None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/",
        Cred::Basic("ops", "pw"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = with_cred(
        http.put(server.url("/v2/app/manifests/v1"))
            .header("content-type", OCI_MANIFEST)
            .body(vec![b' '; 200]),
        Cred::Basic("ops", "pw"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn bad_settings_stop_the_server_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    for (envs, wanted) in [
        (vec![("FERRO_AUTH__SCHEME", "basic")], "needs auth.htpasswd"),
        (
            vec![("FERRO_LIMITS__HEADER_BYTES_MAX", "100")],
            "header_bytes_max",
        ),
        (
            vec![("FERRO_LIMITS__PAGE_ENTRIES_MAX", "lots")],
            "FERRO_LIMITS__PAGE_ENTRIES_MAX",
        ),
        (
            vec![("FERRO_TLS__CERT", "/nonexistent.pem")],
            "tls.cert and tls.key",
        ),
    ] {
        let out = std::process::Command::new(FERRO)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .envs(envs.clone())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{envs:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(wanted), "{envs:?}: {err}");
    }
}

#[test]
fn print_defaults_lists_every_setting() {
    let out = std::process::Command::new(FERRO)
        .args(["config", "--print-defaults"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: ferro::config::Config = toml::from_str(&text).expect("defaults parse back");
    assert_eq!(parsed, ferro::config::Config::default());
    for key in [
        "log_format = \"text\"",
        "header_read_timeout_ms",
        "body_read_timeout_ms",
        "uploads_concurrent_max",
        "upload_idle_expiry_secs",
        "shutdown_drain_timeout_secs",
        "[tls]",
        "scheme = \"none\"",
        "anonymous_pull = false",
        "[auth.token]",
        "[auth.token.external]",
        "untagged_manifests_older_than = \"off\"",
        "[archive]",
        "ship_interval_ms = 1000",
        "durability = \"local\"",
        "[replica]",
        "poll_interval_ms = 200",
    ] {
        assert!(text.contains(key), "{key} missing:\n{text}");
    }
}

#[tokio::test]
async fn the_access_log_is_off_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(dir.path(), None, &[], &[]);
    let r = client()
        .get(server.url("/v2/"))
        .header("x-request-id", "quiet-1")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-request-id"), "quiet-1");
    // An error inside a request is still logged with its id.
    let r = client()
        .put(server.url("/v2/app/blobs/uploads/not-an-upload?digest=sha256:00"))
        .header("x-request-id", "quiet-2")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !server.log_text().contains("answered"),
        "{}",
        server.log_text()
    );
}

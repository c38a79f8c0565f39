//! The server starts on an empty data directory and answers `/v2/`.
mod common;

#[tokio::test]
async fn base_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(dir.path(), &[]);
    let r = common::client()
        .get(server.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

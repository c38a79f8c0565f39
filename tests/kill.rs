//! Kill test: concurrent clients push (monolithic and chunked uploads,
//! manifests by tag and by digest, tag moves, deletes, mounts, garbage
//! collections; the workload is `tests/workload`) while the server is
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

mod workload;

use ferro::storage::sim::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, TestServer};
use parking_lot::Mutex;
use workload::{check, client_loop, Model, CLIENTS};

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
    let total: usize = models.iter().map(|m| workload::objects(m)).sum();
    eprintln!("{rounds} kills survived; {total} acknowledged objects verified");
    assert!(total > 0, "the clients got work acknowledged");
}

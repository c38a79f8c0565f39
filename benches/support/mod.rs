//! What the benchmarks that run the real server share.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};

/// Spawns `ferro serve` on `dir` on a loopback port, with threshold
/// snapshots off (a benchmark's data set stays as it was built; the
/// shutdown snapshot stays on), and waits until it listens: the child and
/// its address. Its log is drained from then on, so it never blocks on a
/// full pipe.
pub fn spawn_ferro(dir: &Path) -> (Child, SocketAddr) {
    let mut child = Process::new(env!("CARGO_BIN_EXE_ferro"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args([
            "--snapshot-every-records",
            "0",
            "--snapshot-every-bytes",
            "0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferro");
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("ferro exited before listening")
            .expect("read ferro's log");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect();
            break addr.parse().expect("a socket address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

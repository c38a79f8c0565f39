//! The published `ferro-oci-server` 1.0.0 as a standalone registry, wired
//! the way its own binary wires its durable deployment: a filesystem blob
//! store plus the metadata plane persisted under the same directory
//! (`build_app_persisted`), with its tracing set up, served by
//! `axum::serve`. Only the configuration differs: flags instead of
//! environment variables.
//!
//! ```text
//! ferro-oci-server-peer --data-dir DIR --listen 127.0.0.1:PORT
//! ```
//!
//! Prints `listening on http://ADDR` on stderr once the socket is bound,
//! like ferro, so the load benchmark can wait for it the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ferro_blob_store::FsBlobStore;

struct Args {
    data_dir: PathBuf,
    listen: SocketAddr,
}

fn parse_args() -> Result<Args, String> {
    let mut data_dir = None;
    let mut listen = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--data-dir" => data_dir = Some(PathBuf::from(value)),
            "--listen" => {
                listen = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {value}: {e}"))?,
                )
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        data_dir: data_dir.ok_or("--data-dir is required")?,
        listen: listen.ok_or("--listen is required")?,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()
        .map_err(|e| format!("{e}\nusage: ferro-oci-server-peer --data-dir DIR --listen ADDR"))?;
    // As the crate's own binary does: `RUST_LOG`, default `info`.
    ferro_oci_server::init_tracing();
    std::fs::create_dir_all(&args.data_dir)?;
    let blobs = Arc::new(FsBlobStore::new(args.data_dir.clone())?);
    let app = ferro_oci_server::build_app_persisted(blobs, &args.data_dir);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

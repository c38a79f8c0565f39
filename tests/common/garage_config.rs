//! The one Garage configuration ferro's tests and its load benchmark run
//! (single node, SQLite metadata, both fsyncs on, loopback only), so the
//! two harnesses never drift apart on what "a Garage" means.

use std::path::Path;

/// `garage.toml` for a node keeping its files under `dir`.
pub fn garage_toml(
    dir: &Path,
    rpc_port: u16,
    s3_port: u16,
    rpc_secret: &str,
    region: &str,
) -> String {
    format!(
        r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 1
metadata_fsync = true
data_fsync = true
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
        dir = dir.display()
    )
}

//! `ferroctl verify` on a registry whose blobs are in a real Garage: every
//! blob the state references is an object of the right size (and, with
//! `--blobs`, the right digest); objects no event names are listed; a
//! missing object is a problem.
#[path = "../../tests/common/garage.rs"]
#[allow(dead_code)] // the harness serves the server's tests too
mod garage;
mod support;

use garage::Garage;
use object_store::ObjectStoreExt as _;
use support::*;

#[test]
fn verify_checks_the_objects_in_the_store() {
    if !garage::available("verify_checks_the_objects_in_the_store") {
        return;
    }
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferro.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nregion = \"{}\"\nbucket = \"{}\"\nprefix = \"verify/\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\nallow_http = true\n",
            g.endpoint(),
            garage::REGION,
            garage::BUCKET,
            garage::KEY_ID,
            garage::SECRET
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--config", &config]);
    let image = push_image(&server, "app", "v1", "s3");
    server.stop();

    let v = ctl(&data, &["--json", "verify", "--blobs", "--config", &config])
        .expect(0)
        .json();
    assert_eq!(v["blobs"]["referenced"], 2, "{v}");
    assert_eq!(v["blobs"]["present"], 2, "{v}");
    assert_eq!(v["orphans"]["objects"].as_array().unwrap().len(), 0, "{v}");

    // An object no event names is listed (not a problem: an upload cut
    // short by a crash leaves one).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s3 = g.client();
    let orphan = "verify/blobs/0123456789abcdef0123456789abcdef";
    rt.block_on(s3.put(
        &object_store::path::Path::from(orphan),
        b"orphan".to_vec().into(),
    ))
    .unwrap();
    let v = ctl(&data, &["--json", "verify", "--config", &config])
        .expect(0)
        .json();
    assert_eq!(v["orphans"]["objects"][0], orphan, "{v}");

    // A referenced object gone is a problem.
    let keys = rt.block_on(g.objects("verify/"));
    let layer_key = keys
        .iter()
        .find(|(k, _)| {
            k != orphan && {
                let got = rt
                    .block_on(s3.get(&object_store::path::Path::from(k.as_str())))
                    .unwrap();
                let bytes = rt.block_on(got.bytes()).unwrap();
                sha256(&bytes) == image.layer
            }
        })
        .map(|(k, _)| k.clone())
        .expect("the layer's object");
    rt.block_on(s3.delete(&object_store::path::Path::from(layer_key.as_str())))
        .unwrap();
    let v = ctl(&data, &["--json", "verify", "--config", &config])
        .expect(1)
        .json();
    let problems = v["problems"].to_string();
    assert!(problems.contains(&image.layer), "{v}");
    assert!(problems.contains("missing"), "{v}");
}

//! Micro-benchmarks of the pieces every push goes through: manifest
//! parsing and validation (`ferro::manifest::parse`) and the sha256 digest
//! of a large buffer (`ferro::oci::Digest::sha256_of`), whose throughput
//! bounds how fast a blob upload can be verified.
//!
//! ```text
//! cargo bench --bench pieces                    # everything
//! cargo bench --bench pieces -- manifest_parse  # one group
//! cargo bench --bench pieces -- digest_small_blob
//! ```
//!
//! Figures are bytes per second of input.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use ferro::manifest::{self, OCI_INDEX, OCI_MANIFEST};
use ferro::oci::Digest;

const DIGEST_BUFFER_BYTES: usize = 64 * 1024 * 1024;

fn digest_of(seed: usize) -> Digest {
    Digest::sha256_of(&seed.to_le_bytes())
}

/// An OCI image manifest with `layers` layers, shaped as real clients
/// push them (annotations included).
fn image_manifest(layers: usize) -> Vec<u8> {
    let layers: Vec<String> = (0..layers)
        .map(|i| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}"#,
                digest_of(i + 1),
                1_000_000 + i
            )
        })
        .collect();
    format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"{mt}","#,
            r#""config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":1469}},"#,
            r#""layers":[{layers}],"#,
            r#""annotations":{{"org.opencontainers.image.created":"2025-11-27T09:00:00Z","org.opencontainers.image.source":"https://example.com/app"}}}}"#
        ),
        mt = OCI_MANIFEST,
        cfg = digest_of(0),
        layers = layers.join(","),
    )
    .into_bytes()
}

/// An OCI index of `children` platform manifests.
fn image_index(children: usize) -> Vec<u8> {
    let manifests: Vec<String> = (0..children)
        .map(|i| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"arch{i}","os":"linux"}}}}"#,
                digest_of(1000 + i),
                500 + i
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        manifests.join(",")
    )
    .into_bytes()
}

fn manifest_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("manifest_parse");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let cases = [
        ("image_1_layer", image_manifest(1), OCI_MANIFEST),
        ("image_10_layers", image_manifest(10), OCI_MANIFEST),
        ("image_100_layers", image_manifest(100), OCI_MANIFEST),
        ("index_8_manifests", image_index(8), OCI_INDEX),
    ];
    for (name, body, media_type) in &cases {
        // The case must be a manifest the registry accepts, or the figure
        // measures an error path.
        let parsed = manifest::parse(body, Some(media_type)).expect("a valid manifest");
        assert_eq!(parsed.media_type, *media_type);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), body, |b, body| {
            b.iter(|| manifest::parse(black_box(body), Some(media_type)))
        });
    }
    group.finish();
}

fn digest_large_buffer(c: &mut Criterion) {
    let mut group = c.benchmark_group("digest_sha256");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(DIGEST_BUFFER_BYTES as u64));
    let buffer: Vec<u8> = (0..DIGEST_BUFFER_BYTES)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    group.bench_function("64MiB", |b| {
        b.iter(|| Digest::sha256_of(black_box(&buffer)))
    });
    group.finish();
}

/// The sha256 of a small blob: what the object backend's local-disk
/// cache spends checking a whole blob of up to 64 KiB on every read from
/// its file (`blobs::local_cache`).
fn digest_small_blob(c: &mut Criterion) {
    let mut group = c.benchmark_group("digest_small_blob");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for len in [1024usize, 16 * 1024, 64 * 1024] {
        let buffer: Vec<u8> = (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
            .collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &buffer, |b, buffer| {
            b.iter(|| Digest::sha256_of(black_box(buffer)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    manifest_parse,
    digest_large_buffer,
    digest_small_blob
);
criterion_main!(benches);

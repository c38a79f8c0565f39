#!/usr/bin/env python3
"""Generate deterministic OCI image layouts for registry interop tests.

Creates two OCI image layouts (image-spec v1.1 "oci-layout" directories, stdlib
only): OUTDIR/single holds one linux/amd64 image (3 gzip'd tar layers: a tiny
text file, ~256 KiB of compressible text, and >= 3 MiB of random bytes so
clients must stream a large blob; a real config JSON whose rootfs.diff_ids are
the sha256 of the uncompressed tars), tagged "latest" in index.json.
OUTDIR/multi holds an image index (tagged "latest") referencing a linux/amd64
and a linux/arm64 image of the same shape (they share the tiny base layer).
The same --seed always yields byte-identical blobs, so digests are stable.
Prints JSON with the manifest / index digests on stdout.

Usage: python3 make_layouts.py OUTDIR [--seed N]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "2024-01-01T00:00:00Z"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def blob(self, data, media_type, **extra):
        """Store bytes as a blob and return its descriptor."""
        digest = sha256(data)
        with open(os.path.join(self.path, "blobs", "sha256", digest[7:]), "wb") as f:
            f.write(data)
        return dict(mediaType=media_type, digest=digest, size=len(data), **extra)

    def write_index(self, descriptor, tag="latest"):
        desc = dict(descriptor, annotations={REF_NAME: tag})
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [desc]}
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(canonical(index))


def make_tar(files):
    """Deterministic uncompressed tar from {name: bytes}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def layer_contents(rng, arch):
    """Three layers of different sizes; the first is the same for every arch."""
    words = [b"ferro", b"oci", b"registry", b"blob", b"manifest", b"layer", b"tag"]
    text = b" ".join(rng.choice(words) for _ in range(40000))  # ~256 KiB, compressible
    return [
        {"etc/os-release": b'NAME="ferro-interop"\nID=ferro\n'},
        {"usr/share/doc/%s/words.txt" % arch: text},
        {"opt/data/%s.bin" % arch: rng.randbytes(3 * 1024 * 1024 + 12345)},  # random, > 3 MiB
    ]


def write_image(layout, rng, os_name, arch):
    """Write layers, config and manifest blobs; return the manifest descriptor."""
    layers, diff_ids = [], []
    for files in layer_contents(rng, arch):
        tar = make_tar(files)
        diff_ids.append(sha256(tar))
        layers.append(layout.blob(gzip.compress(tar, mtime=0), MT_LAYER_GZ))
    config = {
        "created": CREATED,
        "architecture": arch,
        "os": os_name,
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": "make_layouts.py layer %d" % i}
                    for i in range(len(layers))],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": layout.blob(canonical(config), MT_CONFIG),
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": CREATED},
    }
    return layout.blob(canonical(manifest), MT_MANIFEST,
                       platform={"architecture": arch, "os": os_name})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    single = Layout(os.path.join(args.outdir, "single"))
    desc = write_image(single, random.Random(args.seed), "linux", "amd64")
    desc.pop("platform")
    single.write_index(desc)

    multi = Layout(os.path.join(args.outdir, "multi"))
    rng = random.Random(args.seed + 1)
    children = [write_image(multi, rng, "linux", a) for a in ("amd64", "arm64")]
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": children}
    idx_desc = multi.blob(canonical(index), MT_INDEX)
    multi.write_index(idx_desc)

    json.dump({
        "single": {"manifest": desc["digest"], "size": desc["size"]},
        "multi": {"index": idx_desc["digest"], "size": idx_desc["size"],
                  "manifests": {"linux/" + c["platform"]["architecture"]: c["digest"]
                                for c in children}},
    }, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

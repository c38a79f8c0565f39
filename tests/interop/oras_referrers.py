#!/usr/bin/env python3
"""Artifact + referrers interop check with the oras Python client (oras-py).

Against REGISTRY_HOSTPORT over plain HTTP, in repository interop/artifact:
pushes an artifact with oras-py's high-level Registry.push() (a ~100 KiB file
uploaded in several PATCH chunks, artifact type carried as the config
mediaType, tag v1); then two referrers whose `subject` is that manifest: one
via push(subject=...) (no artifactType field, so the registry must report its
config mediaType), one hand-built with an explicit `artifactType` and the
empty config, PUT by digest through oras-py's lower-level upload_blob() /
do_request(); and a manifest whose subject does not exist (must be accepted).
It checks manifest digests, the OCI-Subject response header, GET
/v2/<name>/referrers/<digest> (index content type, one descriptor per
referrer with artifactType and annotations, empty list for a manifest without
referrers), the ?artifactType= filter with `OCI-Filters-Applied:
artifactType`, and pulls the artifact back comparing bytes. Exit status: 0
all passed; 1 a failure; 3 everything passed except that the registry has no
referrers API (referrers endpoint 404 / no OCI-Subject), as with distribution 2.8.

Usage: python3 oras_referrers.py REGISTRY_HOSTPORT
"""
import hashlib
import json
import os
import random
import sys
import tempfile

import oras.oci
import oras.provider

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
SUBJECT_TYPE = "application/vnd.ferro.interop.artifact.v1+json"
SBOM_TYPE = "application/vnd.ferro.interop.sbom.v1+json"
SIG_TYPE = "application/vnd.ferro.interop.signature.v1"


class Unsupported(Exception):
    """The registry has no referrers API."""


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main(host):
    # do_request is wrapped in a retry decorator that sleeps 3+5+11+29+83 s on a
    # 500 or connection error; unwrap it so a broken registry fails fast.
    oras.provider.Registry.do_request = oras.provider.Registry.do_request.__wrapped__
    reg = oras.provider.Registry(hostname=host, insecure=True)  # insecure => http://
    repo = f"{host}/interop/artifact"
    base = f"http://{host}/v2/interop/artifact"
    tmp = tempfile.mkdtemp(prefix="oras-interop-")

    def write(name, data):
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def get_raw_manifest(ref):
        r = reg.do_request(f"{base}/manifests/{ref}", "GET", headers={"Accept": MT_MANIFEST})
        check(r.status_code == 200, f"GET manifest {ref}: HTTP {r.status_code} {r.text[:200]}")
        return r.content

    # 1. the subject artifact, via the high-level push() with chunked blob upload
    payload = random.Random(7).randbytes(100 * 1024 + 17)
    pfile = write("payload.bin", payload)
    cfg = write("config.json", b'{"ferro":"interop"}')
    r = reg.push(target=f"{repo}:v1", files=[f"{pfile}:application/octet-stream"],
                 manifest_config=f"{cfg}:{SUBJECT_TYPE}", disable_path_validation=True,
                 manifest_annotations={"org.example.role": "subject"},
                 do_chunked=True, chunk_size=32 * 1024)
    subj_digest = r.headers.get("Docker-Content-Digest")
    raw = get_raw_manifest("v1")
    check(sha256(raw) == subj_digest, f"subject: GET by tag hashes to {sha256(raw)}, "
          f"PUT returned Docker-Content-Digest {subj_digest}")
    check(get_raw_manifest(subj_digest) == raw, "subject: GET by digest differs from GET by tag")
    subject = oras.oci.Subject(mediaType=MT_MANIFEST, digest=subj_digest, size=len(raw))
    print("pushed subject", subj_digest)

    # 2. pull it back and compare bytes
    files = reg.pull(target=f"{repo}:v1", outdir=os.path.join(tmp, "pulled"))
    check(len(files) == 1, f"pull returned {files}")
    with open(files[0], "rb") as f:
        check(f.read() == payload, "pulled artifact bytes differ from pushed bytes")
    print("pulled artifact back, bytes identical")

    # 3. referrer A: push(subject=...), artifact type only as the config mediaType
    sbom = write("sbom.json", b'{"packages":[]}')
    r = reg.push(target=f"{repo}:sbom", files=[f"{sbom}:application/json"],
                 manifest_config=f"{cfg}:{SBOM_TYPE}", disable_path_validation=True,
                 manifest_annotations={"org.example.role": "sbom"}, subject=subject)
    sbom_digest, subject_hdrs = r.headers.get("Docker-Content-Digest"), [r.headers.get("OCI-Subject")]
    sbom_manifest = json.loads(get_raw_manifest(sbom_digest))
    check(sbom_manifest.get("subject", {}).get("digest") == subj_digest, "referrer A lost its subject field")

    # 4. referrer B: explicit artifactType + empty config, PUT by digest
    container = reg.get_container(repo)
    empty = {"mediaType": MT_EMPTY, "digest": sha256(b"{}"), "size": 2}
    sig = b"not-really-a-signature"
    sig_layer = {"mediaType": "application/octet-stream", "digest": sha256(sig), "size": len(sig)}
    for path, desc in ((write("empty.json", b"{}"), empty), (write("sig.bin", sig), sig_layer)):
        r = reg.upload_blob(path, container, desc)
        check(r.status_code in (200, 201), f"blob upload {desc['digest']}: HTTP {r.status_code}")
    sig_annotations = {"org.example.role": "signature", "org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    body = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST, "artifactType": SIG_TYPE,
                       "config": empty, "layers": [sig_layer], "subject": subject.__dict__,
                       "annotations": sig_annotations}, separators=(",", ":")).encode()
    sig_digest = sha256(body)
    r = reg.do_request(f"{base}/manifests/{sig_digest}", "PUT", data=body,
                       headers={"Content-Type": MT_MANIFEST})
    check(r.status_code == 201, f"PUT referrer B by digest: HTTP {r.status_code} {r.text[:300]}")
    check(r.headers.get("Docker-Content-Digest") == sig_digest, "referrer B: wrong Docker-Content-Digest")
    subject_hdrs.append(r.headers.get("OCI-Subject"))

    # 5. a subject that does not exist (yet) must be accepted
    dangling = dict(subject.__dict__, digest=sha256(b"no such manifest"))
    body = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST, "artifactType": SIG_TYPE,
                       "config": empty, "layers": [sig_layer], "subject": dangling}).encode()
    r = reg.do_request(f"{base}/manifests/dangling", "PUT", data=body, headers={"Content-Type": MT_MANIFEST})
    check(r.status_code == 201, f"PUT manifest with non-existent subject: HTTP {r.status_code} {r.text[:300]}")
    print("pushed referrers", sbom_digest, sig_digest, "and one with a dangling subject")
    check(sorted(reg.get_tags(repo)) == ["dangling", "sbom", "v1"], f"tags: {reg.get_tags(repo)}")

    # 6. referrers API
    r = reg.do_request(f"{base}/referrers/{subj_digest}", "GET")
    if r.status_code == 404 or subject_hdrs == [None, None]:
        raise Unsupported(f"GET /v2/interop/artifact/referrers/{subj_digest} -> HTTP {r.status_code}, "
                          f"OCI-Subject headers on referrer PUTs: {subject_hdrs}")
    check(subject_hdrs == [subj_digest] * 2, f"OCI-Subject headers {subject_hdrs}, want {subj_digest}")
    check(r.status_code == 200, f"referrers: HTTP {r.status_code} {r.text[:300]}")
    check(r.headers.get("Content-Type", "").split(";")[0] == MT_INDEX,
          f"referrers Content-Type {r.headers.get('Content-Type')!r}, want {MT_INDEX}")
    idx = r.json()
    check(idx.get("schemaVersion") == 2 and idx.get("mediaType") == MT_INDEX, f"referrers body not an index: {idx}")
    got = {d["digest"]: d for d in idx.get("manifests", [])}
    want = {sbom_digest: (SBOM_TYPE, sbom_manifest["annotations"]), sig_digest: (SIG_TYPE, sig_annotations)}
    check(set(got) == set(want), f"referrers list {sorted(got)}, want {sorted(want)}")
    for digest, (atype, annotations) in want.items():
        d = got[digest]
        check(d.get("mediaType") == MT_MANIFEST and d.get("size") == len(get_raw_manifest(digest)),
              f"referrer descriptor {d}: wrong mediaType/size")
        check(d.get("artifactType") == atype, f"referrer {digest}: artifactType {d.get('artifactType')!r}, want {atype!r}")
        check(d.get("annotations") == annotations, f"referrer {digest}: annotations {d.get('annotations')}, want {annotations}")
    print("referrers list OK:", len(got), "descriptors")

    r = reg.do_request(f"{base}/referrers/{subj_digest}?artifactType={SIG_TYPE}", "GET")
    check(r.status_code == 200, f"filtered referrers: HTTP {r.status_code}")
    check("artifactType" in r.headers.get("OCI-Filters-Applied", ""),
          f"filtered referrers: OCI-Filters-Applied header is {r.headers.get('OCI-Filters-Applied')!r}")
    check([d["digest"] for d in r.json()["manifests"]] == [sig_digest],
          f"filtered referrers: {r.json()['manifests']}, want only {sig_digest}")
    print("artifactType filter OK")

    r = reg.do_request(f"{base}/referrers/{sig_digest}", "GET")
    check(r.status_code == 200 and r.json().get("manifests") == [],
          f"referrers of a manifest without referrers: HTTP {r.status_code} {r.text[:200]}, want 200 + empty list")
    print("empty referrers list OK")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        main(sys.argv[1])
    except Unsupported as e:
        print(f"FAIL (referrers API unsupported; all artifact push/pull checks before it passed): {e}",
              file=sys.stderr)
        sys.exit(3)
    except Exception as e:  # noqa: BLE001 - any client error is a test failure
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print("OK: oras artifact + referrers checks passed")

#!/usr/bin/env bash
# Real-client round trip through a registry with skopeo (plain HTTP, no auth).
# Generates deterministic OCI layouts (make_layouts.py), pushes the single-arch
# image and the multi-arch index (--all --preserve-digests) to
# REGISTRY/interop/{single,multi}:v1, then checks: the raw manifests served back
# hash to the pushed digests (tag and by-digest, incl. each platform child);
# `skopeo inspect` reports the right digest/arch (also --override-arch arm64 on
# the index); `skopeo list-tags` lists v1; a registry-to-registry copy to
# interop/copy:v1 (blob reuse / cross-repo mount path) keeps the digest; pulling
# both back into fresh oci: layouts gives the same index.json digests and
# byte-identical blobs; `skopeo delete` by digest removes the manifest (a later
# fetch by digest fails). Exits non-zero with a FAIL: message on the first problem.
#
# Usage: skopeo_roundtrip.sh REGISTRY_HOSTPORT WORKDIR
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 REGISTRY_HOSTPORT WORKDIR" >&2; exit 2; }
REG=$1 WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
SK=(skopeo --insecure-policy)       # don't depend on the host's /etc/containers/policy.json
PUSH=(--dest-tls-verify=false)
PULL=(--src-tls-verify=false)

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }
# expect_eq WHAT GOT WANT
expect_eq() { [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"; }
raw_digest() { "${SK[@]}" inspect --tls-verify=false --raw "$1" | sha256sum | awk '{print "sha256:"$1}'; }
json_get() { python3 -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1].split("."): d=d[int(k) if k.isdigit() else k]
print(d)' "$1"; }
index_digest() { json_get manifests.0.digest < "$1/index.json"; }

rm -rf "$WORK"; mkdir -p "$WORK/out"
step "generate layouts"
python3 "$HERE/make_layouts.py" "$WORK/src" > "$WORK/digests.json"
SINGLE=$(json_get single.manifest < "$WORK/digests.json")
INDEX=$(json_get multi.index < "$WORK/digests.json")
AMD64=$(json_get multi.manifests.linux/amd64 < "$WORK/digests.json")
ARM64=$(json_get multi.manifests.linux/arm64 < "$WORK/digests.json")

step "push single -> docker://$REG/interop/single:v1"
"${SK[@]}" copy -q "${PUSH[@]}" --preserve-digests \
  "oci:$WORK/src/single:latest" "docker://$REG/interop/single:v1" || fail "push of single image"
step "push multi (--all) -> docker://$REG/interop/multi:v1"
"${SK[@]}" copy -q "${PUSH[@]}" --all --preserve-digests \
  "oci:$WORK/src/multi:latest" "docker://$REG/interop/multi:v1" || fail "push of multi-arch index"

step "raw manifests hash to the pushed digests"
expect_eq "single by tag" "$(raw_digest "docker://$REG/interop/single:v1")" "$SINGLE"
expect_eq "single by digest" "$(raw_digest "docker://$REG/interop/single@$SINGLE")" "$SINGLE"
expect_eq "index by tag" "$(raw_digest "docker://$REG/interop/multi:v1")" "$INDEX"
expect_eq "amd64 child" "$(raw_digest "docker://$REG/interop/multi@$AMD64")" "$AMD64"
expect_eq "arm64 child" "$(raw_digest "docker://$REG/interop/multi@$ARM64")" "$ARM64"

step "skopeo inspect"
OUT=$("${SK[@]}" inspect --tls-verify=false "docker://$REG/interop/single:v1") || fail "inspect single"
expect_eq "inspect single Digest" "$(json_get Digest <<<"$OUT")" "$SINGLE"
expect_eq "inspect single Architecture" "$(json_get Architecture <<<"$OUT")" amd64
expect_eq "inspect single layer count" "$(json_get Layers <<<"$OUT" | tr -cd , | wc -c)" 2
OUT=$("${SK[@]}" --override-arch arm64 inspect --tls-verify=false "docker://$REG/interop/multi:v1") \
  || fail "inspect multi (arm64)"
expect_eq "inspect multi Digest" "$(json_get Digest <<<"$OUT")" "$INDEX"
expect_eq "inspect multi Architecture" "$(json_get Architecture <<<"$OUT")" arm64
CFG=$(json_get config.digest < "$WORK/src/single/blobs/sha256/${SINGLE#sha256:}")
"${SK[@]}" inspect --tls-verify=false --config --raw "docker://$REG/interop/single:v1" \
  | cmp -s - "$WORK/src/single/blobs/sha256/${CFG#sha256:}" \
  || fail "inspect --config --raw: config blob differs from the pushed one"

step "skopeo list-tags"
OUT=$("${SK[@]}" list-tags --tls-verify=false "docker://$REG/interop/single") || fail "list-tags"
expect_eq "list-tags single" "$(json_get Tags <<<"$OUT")" "['v1']"

step "registry-to-registry copy -> interop/copy:v1"
"${SK[@]}" copy -q "${PULL[@]}" "${PUSH[@]}" --preserve-digests \
  "docker://$REG/interop/single:v1" "docker://$REG/interop/copy:v1" || fail "copy between repos"
expect_eq "copied manifest" "$(raw_digest "docker://$REG/interop/copy:v1")" "$SINGLE"

step "pull both back into fresh oci: layouts"
"${SK[@]}" copy -q "${PULL[@]}" --preserve-digests \
  "docker://$REG/interop/single:v1" "oci:$WORK/out/single:latest" || fail "pull of single image"
"${SK[@]}" copy -q "${PULL[@]}" --all --preserve-digests \
  "docker://$REG/interop/multi:v1" "oci:$WORK/out/multi:latest" || fail "pull of multi-arch index"
for l in single multi; do
  expect_eq "$l index.json digest" "$(index_digest "$WORK/out/$l")" "$(index_digest "$WORK/src/$l")"
  diff -r "$WORK/src/$l/blobs" "$WORK/out/$l/blobs" >/dev/null \
    || fail "$l: pulled blobs differ from pushed blobs (diff -r $WORK/src/$l/blobs $WORK/out/$l/blobs)"
done

step "skopeo delete by digest"
"${SK[@]}" delete --tls-verify=false "docker://$REG/interop/copy@$SINGLE" || fail "delete by digest"
if "${SK[@]}" inspect --tls-verify=false --raw "docker://$REG/interop/copy@$SINGLE" >/dev/null 2>&1; then
  fail "manifest interop/copy@$SINGLE still served after delete"
fi
expect_eq "single still present in its own repo" "$(raw_digest "docker://$REG/interop/single:v1")" "$SINGLE"

echo "OK: skopeo round trip against $REG"

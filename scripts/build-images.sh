#!/usr/bin/env bash
# Builds the container images without Docker, as OCI archives a node's containerd imports:
#   elasticserving/runtime-lac:latest (+ elasticserving/runtime:latest), elasticserving/runtime-image:latest
#   (+ elasticserving/runtime-ocr:latest), elasticserving/control-plane:latest,
#   elasticserving/pause:3.10, and when named, elasticserving/runtime-tf:latest (TensorFlow; heavy, and
#   nothing in deploy/ or examples/ uses it)
# from the Dockerfiles under images/ with `buildah bud --layers` (vfs storage, chroot isolation); their
# FROM images are made with mmdebstrap. Prints `IMAGE TARBALL` per image on stdout.
#
#   scripts/build-images.sh [--import] [NAME...]     NAME: runtime-lac|runtime|runtime-models|runtime-tf|control-plane|pause
#
# --import also runs `ctr -n k8s.io --address "${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
# images import` for each archive. Everything is cached under ~/.cache/elasticserving/images
# (ELASTICSERVING_IMAGE_CACHE overrides): buildah's storage and layer cache, the archives. A second run
# takes seconds, a code change rebuilds only the code layers. Needs root; as root, installs the Debian
# packages it needs (buildah, mmdebstrap).
set -euo pipefail
cd "$(dirname "$0")/.."

do_import=""
names=()
for arg in "$@"; do
  case "$arg" in
    --import) do_import=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-images: unknown option $arg" >&2; exit 2 ;;
    *) names+=("$arg") ;;
  esac
done

# target -> Dockerfile, its stage (--target; none: the last one) and the names of its image (the first
# one is the `IMAGE` of the output line). The runtime images are stages of one Dockerfile that share
# its dependency layers (paddle, onnxruntime: built, compressed and imported once).
declare -A dockerfile=([runtime-lac]=images/runtime/Dockerfile [runtime-models]=images/runtime/Dockerfile
                       [runtime-tf]=images/runtime/Dockerfile [control-plane]=images/control-plane/Dockerfile [pause]=images/pause/Dockerfile)
declare -A stage=([runtime-lac]=lac [runtime-models]=models [runtime-tf]=tf)
declare -A tags=([runtime-lac]="elasticserving/runtime-lac:latest elasticserving/runtime:latest"
                 [runtime-models]="elasticserving/runtime-image:latest elasticserving/runtime-ocr:latest"
                 [runtime-tf]="elasticserving/runtime-tf:latest"
                 [control-plane]="elasticserving/control-plane:latest" [pause]="elasticserving/pause:3.10")
all=(runtime-lac runtime-models control-plane pause)  # built when no NAME is given

targets=()
for name in ${names[@]+"${names[@]}"}; do
  short="${name##*/}"   # elasticserving/runtime-lac:latest -> runtime-lac
  short="${short%%:*}"
  [ "$short" != runtime ] || short=runtime-lac
  if [ -z "${dockerfile[$short]:-}" ]; then
    echo "build-images: unknown image '$name' (known: ${!dockerfile[*]})" >&2
    exit 2
  fi
  [[ " ${targets[*]-} " == *" $short "* ]] || targets+=("$short")
done
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

if [ "$(id -u)" -ne 0 ]; then
  echo "build-images: must run as root (buildah's chroot isolation, files owned by root)" >&2
  exit 2
fi

# tool -> Debian package
declare -A pkg=([buildah]=buildah [mmdebstrap]=mmdebstrap [python3]=python3 [tar]=tar [flock]=util-linux
                [sha256sum]=coreutils)
[ -z "$do_import" ] || pkg[ctr]=containerd
need=()
for tool in "${!pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || need+=("${pkg[$tool]}")
done
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "build-images: missing Debian packages: ${need[*]} (and no apt-get to install them)" >&2
    exit 1
  fi
  echo "build-images: installing ${need[*]}" >&2
  apt-get update -qq
  # shellcheck disable=SC2046
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

cache="${ELASTICSERVING_IMAGE_CACHE:-$HOME/.cache/elasticserving/images}"
mkdir -p "$cache/out" "$cache/bases" "$cache/work"
exec 9>"$cache/.lock"
flock 9   # one build at a time per cache

start=$SECONDS
log() { echo "build-images: [$((SECONDS - start))s] $*" >&2; }

# vfs works on any filesystem (also inside a container, where overlay-on-overlay does not); chroot
# isolation needs no user namespaces. STORAGE_DRIVER=overlay is faster where the kernel allows it.
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}" BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
bh() { buildah --root "$cache/buildah/storage" --runroot "$cache/buildah/run" "$@"; }
# Each layer is gzipped once, when it is committed, into this cache (buildah's --blob-cache): writing an
# archive again after a code change then compresses only the new layers.
compress=(--blob-cache "$cache/buildah/blobs" --disable-compression=false)
mkdir -p "$cache/buildah/blobs"

# A TLS-intercepting egress proxy's CA is trusted in the host's bundle, not in the image's: RUN steps
# (pip) see the host's bundle in its place. Mounted only while a step runs, never in a layer.
run_opts=()
for ca in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}" /etc/ssl/certs/ca-certificates.crt; do
  if [ -n "$ca" ] && [ -f "$ca" ]; then
    run_opts+=(--volume "$(readlink -f "$ca"):/etc/ssl/certs/ca-certificates.crt:ro")
    break
  fi
done

# ---- the FROM images, made with mmdebstrap ------------------------------------------------------------
# base_image NAME PACKAGES CMD ENV...: Debian bookworm (minbase + PACKAGES, no manuals, docs or
# translations, apt set up like Debian's Docker images) committed into buildah's storage as
# docker.io/library/NAME, the image the Dockerfiles' FROM names. Made again only when this recipe
# changes (its hash covers this function), so the layers built on it stay cached.
base_image() {
  local name="$1" include="$2" cmd="$3" key stamp ctr tmp hook env=()
  shift 3
  key="$({ declare -f base_image; printf '%s\n' "$name" "$include" "$cmd" "$@"; } | sha256sum | cut -d' ' -f1)"
  stamp="$cache/bases/${name//[:\/]/_}"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && bh inspect --type image "docker.io/library/$name" >/dev/null 2>&1; then
    return 0
  fi
  log "FROM $name: mmdebstrap bookworm${include:+ with $include}"
  tmp="$(mktemp -d "$cache/work/base.XXXXXX")"
  # shellcheck disable=SC2016  # $1 is mmdebstrap's: the root being made
  hook='set -e
    clean="rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"
    printf "DPkg::Post-Invoke { \"%s\"; };\nAPT::Update::Post-Invoke { \"%s\"; };\n" "$clean" "$clean" \
      >"$1/etc/apt/apt.conf.d/docker-clean"
    printf "Dir::Cache::pkgcache \"\";\nDir::Cache::srcpkgcache \"\";\n" >>"$1/etc/apt/apt.conf.d/docker-clean"
    echo "Acquire::Languages \"none\";" >"$1/etc/apt/apt.conf.d/docker-no-languages"
    echo "Apt::AutoRemove::SuggestsImportant \"false\";" >"$1/etc/apt/apt.conf.d/docker-autoremove-suggests"
    : >"$1/etc/resolv.conf"; : >"$1/etc/hostname"
    rm -rf "$1"/var/lib/apt/lists/*; mkdir -p "$1/var/lib/apt/lists/partial"
    if [ -x "$1/usr/bin/python3" ]; then chroot "$1" python3 -m venv /opt/venv; fi'
  mmdebstrap --quiet --variant=minbase ${include:+"--include=$include"} \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook="$hook" bookworm "$tmp/rootfs.tar" >&2
  for e in "$@"; do env+=(--env "$e"); done
  ctr="$(bh from --quiet scratch)"
  bh add --quiet "$ctr" "$tmp/rootfs.tar" / >/dev/null
  bh config "${env[@]}" --cmd "$cmd" --created-by "mmdebstrap bookworm${include:+ with $include}" "$ctr"
  bh commit --quiet --rm "${compress[@]}" "$ctr" "docker.io/library/$name" >/dev/null
  rm -rf "$tmp"
  echo "$key" >"$stamp"
}

path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
declare -A base_made=()
ensure_base() {  # the base a Dockerfile's FROM lines name (what Docker Hub has, made here)
  local from
  while read -r from; do
    [ -z "${base_made[$from]:-}" ] || continue
    case "$from" in
      scratch) ;;
      # Debian's python3.11 in a venv at /opt/venv, first on PATH: python, python3 and pip as the
      # Docker Hub image has them (Debian's own python3 refuses `pip install` outside a venv, PEP 668).
      python:3.11-slim-bookworm)
        base_image "$from" python3,python3-venv,ca-certificates python3 \
          "PATH=/opt/venv/bin:$path" LANG=C.UTF-8 </dev/null ;;
      debian:bookworm-slim) base_image "$from" "" bash "PATH=$path" </dev/null ;;
      *) echo "build-images: $1: no Docker-less recipe for FROM $from" >&2; exit 1 ;;
    esac
    base_made[$from]=1
  done < <(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/Ip' "$1" \
             | grep -vxF -f <(sed -n 's/^FROM[[:space:]].*[[:space:]]AS[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/Ip' "$1"))
}

# ---- the images -----------------------------------------------------------------------------------------
# archive NAME IMAGE-ID TAG...: the image as an OCI archive (index.json + blobs/) in $cache/out, one
# index entry per name with `io.containerd.image.name` (what `ctr images import` names the image by).
archive() {
  local name="$1" id="$2" out="$cache/out/$1.tar" layout="$cache/work/$1.oci"
  shift 2
  local want="$id $*"
  # the stamp also holds the archive's size and mtime: an archive written by anything else is replaced
  if [ -f "$out" ] && [ "$(cat "$cache/out/$name.id" 2>/dev/null)" = "$want $(stat -c %s.%Y "$out")" ]; then
    return 0
  fi
  log "$name: writing $out"
  rm -rf "$layout"
  bh push --quiet --blob-cache "$cache/buildah/blobs" "$id" "oci:$layout:docker.io/$1" >&2
  python3 - "$layout/index.json" "$@" <<'EOF'
import json, sys
path, names = sys.argv[1], sys.argv[2:]
index = json.load(open(path))
manifest = index["manifests"][0]
index["manifests"] = [dict(manifest, annotations={"io.containerd.image.name": "docker.io/" + n,
                                                  "org.opencontainers.image.ref.name": "docker.io/" + n})
                      for n in names]
json.dump(index, open(path, "w"), separators=(",", ":"))
EOF
  tar -C "$layout" --owner=0 --group=0 --numeric-owner -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$layout"
  echo "$want $(stat -c %s.%Y "$out")" >"$cache/out/$name.id"
}

lines=()
for name in "${targets[@]}"; do
  t0=$SECONDS
  ensure_base "${dockerfile[$name]}"
  read -r -a image_tags <<<"${tags[$name]}"
  tag_opts=()
  for tag in "${image_tags[@]}"; do tag_opts+=(--tag "docker.io/$tag"); done
  target_opts=()
  [ -z "${stage[$name]:-}" ] || target_opts=(--target "${stage[$name]}")
  log "$name: buildah bud -f ${dockerfile[$name]}${stage[$name]:+ --target ${stage[$name]}}"
  # stdout carries only the `IMAGE TARBALL` lines: the build's output goes to stderr
  bh bud --layers --pull=never --format oci "${compress[@]}" --iidfile "$cache/work/$name.iid" ${run_opts[@]+"${run_opts[@]}"} \
    -f "${dockerfile[$name]}" ${target_opts[@]+"${target_opts[@]}"} "${tag_opts[@]}" . >&2
  archive "$name" "$(cat "$cache/work/$name.iid")" "${image_tags[@]}"
  log "$name: $(du -m "$cache/out/$name.tar" | cut -f1) MB in $((SECONDS - t0))s"
  lines+=("${image_tags[0]} $cache/out/$name.tar")
  echo "${lines[-1]}"
done

# Keep the cache to what the images built now need (each code change commits new layers): images no
# name and no current build uses any more, then the blob cache's copies of layers none of the remaining
# images has. Without this the cache grew by several GB a day of edits.
bh rmi --prune >/dev/null 2>&1 || true
python3 - "$cache/buildah" <<'EOF'
import glob, json, os, sys
root = sys.argv[1]
live = set()
for path in glob.glob(f"{root}/storage/*-layers/layers.json"):
    for layer in json.load(open(path)):
        live.update(d for d in (layer.get("diff-digest"), layer.get("compressed-diff-digest")) if d)
blobs = f"{root}/blobs"
for digest in list(live):  # a live layer's gzipped copy is named by its own digest
    try:
        live.add(open(f"{blobs}/{digest}.compressed").read().strip())
    except OSError:
        pass
for name in os.listdir(blobs):
    base, _, suffix = name.partition(".")
    if suffix != "config" and base not in live:
        os.remove(f"{blobs}/{name}")
EOF

if [ -n "$do_import" ]; then
  address="${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
  for line in "${lines[@]}"; do
    read -r image tarball <<<"$line"
    echo "build-images: importing $image into $address" >&2
    ctr -n k8s.io --address "$address" images import "$tarball" >&2
  done
fi

#!/usr/bin/env bash
# Builds the container images without Docker, as OCI archives a node's containerd imports:
#   elasticserving/runtime-lac:latest (+ elasticserving/runtime:latest), elasticserving/runtime-image:latest
#   (+ elasticserving/runtime-ocr:latest), elasticserving/control-plane:latest,
#   elasticserving/pause:3.10
# from the Dockerfiles under images/ (python3 -m imagebuild executes them: mmdebstrap for the base,
# chroot for RUN, one OCI layer per COPY/RUN). Prints `IMAGE TARBALL` per image on stdout.
#
#   scripts/build-images.sh [--import] [NAME...]     NAME: runtime-lac|runtime|runtime-models|control-plane|pause
#
# --import also runs `ctr -n k8s.io --address "${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
# images import` for each archive. Everything is cached under ~/.cache/elasticserving/images
# (ELASTICSERVING_IMAGE_CACHE overrides) by a hash of the inputs: a second run takes seconds, a code
# change rebuilds only the code layers. Needs root (chroot, mounts); as root, installs the Debian
# packages it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

do_import=""
names=()
for arg in "$@"; do
  case "$arg" in
    --import) do_import=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-images: unknown option $arg" >&2; exit 2 ;;
    *) names+=("$arg") ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "build-images: must run as root (it builds root filesystems with chroot and mounts)" >&2
  exit 2
fi

# tool -> Debian package
declare -A pkg=([mmdebstrap]=mmdebstrap [python3]=python3 [gcc]=gcc [strip]=binutils [unshare]=util-linux
                [chroot]=coreutils [tar]=tar)
[ -z "$do_import" ] || pkg[ctr]=containerd
need=()
for tool in "${!pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || need+=("${pkg[$tool]}")
done
# a static binary needs libc.a
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/libc.a ] || need+=(libc6-dev)
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

out="$(PYTHONPATH="$PWD/images" PYTHONDONTWRITEBYTECODE=1 python3 -m imagebuild --context "$PWD" \
  ${names[@]+"${names[@]}"})"
printf '%s\n' "$out"

if [ -n "$do_import" ]; then
  address="${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
  while read -r image tarball; do
    echo "build-images: importing $image into $address" >&2
    ctr -n k8s.io --address "$address" images import "$tarball" >&2
  done <<<"$out"
fi

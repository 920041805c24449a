#!/usr/bin/env bash
# Installs the external servers the tests run on loopback: Prometheus (+ promtool), etcd, openssl
# and kubectl from Debian, then builds kube-apiserver from source (scripts/build-kube-apiserver.sh)
# and a Prometheus with kubernetes discovery (scripts/build-prometheus.sh), and SeaweedFS's weed, the
# S3-compatible server of the storage tests (scripts/build-seaweedfs.sh), and Jaeger, the trace collector
# and query API of the tracing tests (scripts/build-jaeger.sh). As root (the cluster suite runs), also
# the node's Kubernetes components and, in the background meanwhile, the images (scripts/build-images.sh).
# Idempotent: skips what is already installed; the Go builds are cached (.cache/bin and
# $HOME/.cache/elasticserving/bin). SKIP_KUBE_APISERVER=1 skips the kube-apiserver and Prometheus
# builds (no Go toolchain), SKIP_SEAWEEDFS=1 the weed build (~7 min the first time), SKIP_JAEGER=1 the jaeger build (~5 min).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Debian's kubernetes-client is old but enough for apply/get; a newer kubectl on PATH wins.
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2046
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
# As root the cluster suite runs (tests/cluster/), on images scripts/build-images.sh makes: they build in
# the background while the Go tools below compile (the image build waits mostly on the network and the
# disk, the Go builds on the CPU: together ~5 min shorter on a fresh 2-core machine). Started after the
# apt-get above (both take the dpkg lock); awaited at the end. SKIP_IMAGES=1 leaves them to `up`.
images_pid=""
images_log=.cache/logs/build-images.log
if [ "$(id -u)" -eq 0 ] && [ -z "${SKIP_IMAGES:-}" ]; then
  mkdir -p .cache/logs
  scripts/build-images.sh >/dev/null 2>"$images_log" &
  images_pid=$!
fi

echo "test tools: $(prometheus --version 2>&1 | head -1)"
echo "test tools: $(etcd --version 2>&1 | head -1)"
echo "test tools: kubectl $(kubectl version --client 2>/dev/null | head -1)"

if [ -z "${SKIP_KUBE_APISERVER:-}" ]; then
  if command -v go >/dev/null 2>&1 || [ -x .cache/bin/kube-apiserver ] \
     || [ -x "$HOME/.cache/elasticserving/bin/kube-apiserver" ]; then
    if [ -n "$images_pid" ]; then
      # the cluster suite will want the node's components too: one `go build` of all of them now
      bin="$(scripts/build-kube.sh)/kube-apiserver"
    else
      bin="$(scripts/build-kube-apiserver.sh)"
    fi
    echo "test tools: $("$bin" --version 2>&1 | head -1) ($bin)"
    # Prometheus with kubernetes discovery, for the cluster suite (Debian's has none).
    if prom="$(scripts/build-prometheus.sh)"; then
      echo "test tools: $("$prom" --version 2>&1 | head -1) ($prom)"
    else
      echo "test tools: Prometheus with kubernetes discovery not built (the cluster monitoring test fails)" >&2
    fi
  else
    echo "test tools: no Go toolchain: kube-apiserver not built (kubernetes tests skip, or fail with CI set)" >&2
  fi
fi

# SeaweedFS (weed) for the S3 tests (tests/s3_server.py). Without it those tests fail in CI, skip outside.
if [ -z "${SKIP_SEAWEEDFS:-}" ]; then
  if weed="$(scripts/build-seaweedfs.sh)"; then
    echo "test tools: SeaweedFS $("$weed" version 2>&1 | head -1) ($weed)"
  else
    echo "test tools: SeaweedFS (weed) not built (the S3 storage tests fail with CI set, skip without)" >&2
  fi
fi

# Jaeger (all-in-one, in memory) for the tracing tests (tests/tracing/). Without it they fail in CI, skip outside.
if [ -z "${SKIP_JAEGER:-}" ]; then
  if jaeger="$(scripts/build-jaeger.sh)"; then
    echo "test tools: Jaeger $(cat "$jaeger.version") ($jaeger)"
  else
    echo "test tools: Jaeger not built (the tracing tests fail with CI set, skip without)" >&2
  fi
fi

if [ -n "$images_pid" ]; then
  if wait "$images_pid"; then
    echo "test tools: the cluster suite's images are built (log: $images_log)"
  else
    echo "test tools: scripts/build-images.sh failed (tail of $images_log below); the cluster suite tries again" >&2
    tail -20 "$images_log" >&2
  fi
fi

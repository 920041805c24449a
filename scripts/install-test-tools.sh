#!/usr/bin/env bash
# Installs the external servers the tests run on loopback: Prometheus (+ promtool), etcd, openssl
# and kubectl from Debian, then builds kube-apiserver from source (scripts/build-kube-apiserver.sh)
# and a Prometheus with kubernetes discovery (scripts/build-prometheus.sh), and SeaweedFS's weed, the
# S3-compatible server of the storage tests (scripts/build-seaweedfs.sh), and Jaeger, the trace collector
# and query API of the tracing tests (scripts/build-jaeger.sh).
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
echo "test tools: $(prometheus --version 2>&1 | head -1)"
echo "test tools: $(etcd --version 2>&1 | head -1)"
echo "test tools: kubectl $(kubectl version --client 2>/dev/null | head -1)"

if [ -z "${SKIP_KUBE_APISERVER:-}" ]; then
  if command -v go >/dev/null 2>&1 || [ -x .cache/bin/kube-apiserver ] \
     || [ -x "$HOME/.cache/elasticserving/bin/kube-apiserver" ]; then
    bin="$(scripts/build-kube-apiserver.sh)"
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

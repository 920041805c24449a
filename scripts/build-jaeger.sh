#!/usr/bin/env bash
# Builds Jaeger's all-in-one `jaeger` binary (v1.75.0) and prints its path: the real trace collector
# and query API the tracing tests run on loopback (tests/tracing/jaeger_server.py). As
# scripts/build-seaweedfs.sh does for weed, a throwaway module (outside the repo) adds the command as
# a Go tool (`go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@v1.75.0`, which resolves
# upstream's own dependency versions) and `go build`s it: ~5 min on 2 cores the first time.
# Idempotent: cached in .cache/bin/ of the repo and in $HOME/.cache/elasticserving/bin/ (a version
# stamp next to each binary); GOPATH/GOMODCACHE live under $HOME/.cache/elasticserving/go and
# GOCACHE under $HOME/.cache/go-build unless set.
#
#   scripts/build-jaeger.sh                    # build once, print the binary path
#   JAEGER_VERSION=v1.75.0 FORCE=1 scripts/build-jaeger.sh
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
# Pinned: newer tags (2.x) are a different module layout; this one is known to build and serve.
VERSION="${JAEGER_VERSION:-v1.75.0}"
MODULE=github.com/jaegertracing/jaeger
HOME_CACHE="${ELASTICSERVING_CACHE:-$HOME/.cache/elasticserving}"
NAME=jaeger

log() { echo "build-jaeger: $*" >&2; }

# shellcheck source=lib/cached-bin.sh
. "$REPO/scripts/lib/cached-bin.sh"
cached_bin

go_workdir "jaeger-$VERSION"
log "building jaeger ($MODULE/cmd/jaeger@$VERSION) in $work"

if [ ! -f go.mod ]; then
  echo "module elasticserving.local/jaeger-build" > go.mod
  echo >> go.mod
  echo "go 1.25" >> go.mod
fi
go get -tool "$MODULE/cmd/jaeger@$VERSION" >&2

start=$(date +%s)
go build -ldflags "-s -w" -o "$work/$NAME" "$MODULE/cmd/jaeger" >&2
log "built in $(( $(date +%s) - start ))s"
"$work/$NAME" version >&2 || true
install_copy "$work/$NAME" "$home_bin"
install_copy "$work/$NAME" "$repo_bin"
echo "$repo_bin"

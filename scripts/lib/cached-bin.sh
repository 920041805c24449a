# Sourced by the scripts that build a Go program once (build-prometheus.sh, build-seaweedfs.sh, build-jaeger.sh): the
# binary is kept in the repo's .cache/bin/ and in $HOME_CACHE/bin/, each beside a stamp of the VERSION it
# was built at. The caller sets REPO, HOME_CACHE, NAME and VERSION, then calls `cached_bin`, which prints
# the binary's path and exits when this VERSION is already built (unless FORCE is set).

have() { [ -x "$1" ] && [ -f "$1.version" ] && [ "$(cat "$1.version")" = "$VERSION" ]; }

install_copy() {
  mkdir -p "$(dirname "$2")"
  cp -f "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"
  echo "$VERSION" > "$2.version"
}

repo_bin="$REPO/.cache/bin/$NAME"
home_bin="$HOME_CACHE/bin/$NAME"

cached_bin() {
  [ -z "${FORCE:-}" ] || return 0
  if have "$repo_bin"; then
    have "$home_bin" || install_copy "$repo_bin" "$home_bin" || true
    echo "$repo_bin"
    exit 0
  fi
  if have "$home_bin"; then
    install_copy "$home_bin" "$repo_bin"
    echo "$repo_bin"
    exit 0
  fi
}

go_workdir() {  # go_workdir DIR: Go's environment for a static, reproducible build; cd to $HOME_CACHE/build/DIR
  command -v go >/dev/null 2>&1 || { log "go is not installed"; exit 1; }
  export GOPATH="${GOPATH:-$HOME_CACHE/go}"
  export GOMODCACHE="${GOMODCACHE:-$GOPATH/pkg/mod}"
  export GOCACHE="${GOCACHE:-$HOME/.cache/go-build}"
  export GOFLAGS="-trimpath -mod=mod -buildvcs=false"
  export CGO_ENABLED=0
  work="$HOME_CACHE/build/$1"
  mkdir -p "$work"
  cd "$work"
}

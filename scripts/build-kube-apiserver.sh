#!/usr/bin/env bash
# Builds kube-apiserver for the kubernetes tests (tests/kubernetes/) and prints the binary path.
# A thin wrapper of scripts/build-kube.sh (which builds every component from one cached module):
# cached in .cache/bin/ of the repo and in $HOME/.cache/elasticserving/bin/.
#
#   scripts/build-kube-apiserver.sh            # build once, print the binary path
#   K8S_VERSION=v1.32.13 scripts/build-kube-apiserver.sh
#   FORCE=1 scripts/build-kube-apiserver.sh    # rebuild
set -euo pipefail
bin_dir="$("$(dirname "$0")/build-kube.sh" kube-apiserver)"
echo "$bin_dir/kube-apiserver"

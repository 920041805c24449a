#!/usr/bin/env bash
# The README's second command: set up .venv with test tools, install the external test servers
# (etcd, kube-apiserver built from source, prometheus), lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
if [ -x scripts/install-test-tools.sh ]; then
  scripts/install-test-tools.sh
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -ra "$@"

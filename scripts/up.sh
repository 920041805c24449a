#!/usr/bin/env bash
# The README's first command: set up .venv, then serve examples/lac.yaml on the local platform
# (activator on 127.0.0.1:8080), replicas forked from a pre-warmed launcher (`--prewarm`: sub-second
# scale from zero). On a finished setup, setup.sh only checks its stamp and returns at once. Extra
# arguments go to `elasticserving up` (e.g. `--no-prewarm`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/elasticserving up -f examples/lac.yaml --prewarm "$@"

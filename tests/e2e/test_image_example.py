"""The manual's image-classification example as a user runs it: `elasticserving up -f examples/image.yaml`
(the Paddle export as default, the ONNX export as a 50% canary), the manual's curl with a photo the model
was never tuned on, from zero replicas."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, start_stack, wait_for

HOST = "paddleservice-image.paddleservice-system.example.com"
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # ImageNet 281-285


def jpeg(name: str) -> str:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buf, format="JPEG", quality=95)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def built_model():
    out = subprocess.run([sys.executable, "-m", "runtime.models", "build", "efficientnet-lite0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.timeout(300)
def test_image_example_answers_like_the_manual_from_both_sides(tmp_path, built_model):
    s = start_stack(tmp_path, [ROOT / "examples" / "image.yaml"], extra=["--prewarm"])
    try:
        # A new canary starts one replica to prove itself and takes its 50 % once ready (Knative's
        # initial scale); the default side stays at zero until the first request.
        key = "paddleservice-system/paddleservice-image"
        wait_for(lambda: s.service(key)["status"]["canary"]["percent"] == 50, 120, 0.1, "the canary in the split")
        assert s.service(key)["autoscaler"]["default"]["ready"] == 0
        cat = {"feed": [{"image": jpeg("chelsea")}], "fetch": ["score"]}
        answers = []
        for _ in range(10):  # the first one wakes the default side from zero
            status, headers, data = s.request(HOST, "/image/prediction", cat, timeout=120)
            assert status == 200, data
            answers.append((headers.get("x-paddleservice-side"), data))
        by_side: dict[str, list[dict]] = {}
        for side, data in answers:
            by_side.setdefault(side, []).append(json.loads(data))
        assert set(by_side) == {"default", "canary"} and len(by_side["canary"]) == 5  # exactly 50 %
        for side, results in by_side.items():
            for r in results:
                res = r["result"]
                assert res["label"][0] in CATS and 0.3 < res["prob"][0] <= 1.0, (side, res)
                # The manual's shape, field for field: the canary's answers carry isCanary first.
                if side == "canary":
                    assert list(res) == ["isCanary", "label", "prob"] and res["isCanary"] == ["true"]
                else:
                    assert list(res) == ["label", "prob"]
        # Paddle and ONNX exports agree on the same photo.
        assert abs(by_side["default"][0]["result"]["prob"][0] - by_side["canary"][0]["result"]["prob"][0]) < 1e-4

        # Several images in one feed: one label and prob each; a rocket is a missile or a projectile.
        two = {"feed": [{"image": jpeg("chelsea")}, {"image": jpeg("rocket")}], "fetch": ["score"]}
        status, _, data = s.request(HOST, "/image/prediction", two, headers={"x-paddleservice-canary": "false"})
        assert status == 200, data
        res = json.loads(data)["result"]
        assert res["label"][0] in CATS and res["label"][1] in {"missile", "projectile"}, res

        # A bad image is a 400 with a reason, not a crash.
        status, _, data = s.request(HOST, "/image/prediction", {"feed": [{"image": base64.b64encode(
            b"not an image").decode()}], "fetch": ["score"]})
        assert status == 400 and b"image" in data.lower(), data
    finally:
        assert s.stop() == 0
